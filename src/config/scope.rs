//! Per-instance scoping (beyond the original): an `acr-registry-info` item may name the
//! namespaces (`namespaces`, `namespaceSelector`) and the ServiceAccounts (`serviceAccounts`) it
//! serves, so that in a cluster shared by teams a namespace receives only the logins of the
//! instances selected for it: team A's namespaces never hold team B's registry password. Without
//! these fields an instance serves every namespace the ConfigMap's own keys select, as in the
//! original. Pure: the model, its rules, and the parser of the three fields.

use std::collections::BTreeSet;

use serde_json::Value;

use super::parse::{Errors, shown, string};
use super::selector::{self, LabelSelector};
use super::validate::{is_dns_label, is_dns_subdomain};
use super::{KEY_REGISTRY_INFO, Selection};

/// At most this many instances: a namespace's instances are a bit set.
pub const MAX_INSTANCES: usize = 64;

/// Which namespaces and ServiceAccounts one instance serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `namespaces`: these names (and no namespace the ConfigMap's keys select, unless named).
    pub namespaces: Option<BTreeSet<String>>,
    /// `namespaceSelector`: namespaces whose labels match.
    pub namespace_selector: Option<LabelSelector>,
    /// `serviceAccounts`: in its namespaces, these ServiceAccounts (else `service-account`).
    pub service_accounts: Option<Selection>,
}

impl Scope {
    /// Whether the instance names its own namespaces (else it serves those the ConfigMap's keys
    /// select).
    pub fn restricts_namespaces(&self) -> bool {
        self.namespaces.is_some() || self.namespace_selector.is_some()
    }

    /// Whether a namespace of this name and these labels is one of its own.
    pub fn selects_namespace(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.namespaces.as_ref().is_some_and(|n| n.contains(name))
            || self.namespace_selector.as_ref().is_some_and(|s| {
                s.matches_with(|k| {
                    if k == super::NAMESPACE_NAME_LABEL {
                        Some(name)
                    } else {
                        labels.get(k).map(String::as_str)
                    }
                })
            })
    }

    /// One line for `check-config`: what the instance serves.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.namespaces {
            parts.push(format!(
                "namespaces {}",
                n.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(s) = &self.namespace_selector {
            parts.push(format!("namespaces matching `{s}`"));
        }
        if parts.is_empty() {
            parts.push("every namespace the ConfigMap selects".to_owned());
        }
        let sas = match &self.service_accounts {
            None => "the ServiceAccounts `service-account` selects".to_owned(),
            Some(Selection::All) => "every ServiceAccount".to_owned(),
            Some(Selection::Names(n)) => format!(
                "ServiceAccounts {}",
                n.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        format!("{}; {sas}", parts.join(" and "))
    }
}

/// A set of instances, by their index in [`super::Config::instances`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceSet(u64);

impl InstanceSet {
    pub const EMPTY: InstanceSet = InstanceSet(0);

    /// The first `n` instances (all of a configuration's).
    pub fn first(n: usize) -> InstanceSet {
        match n {
            0 => InstanceSet(0),
            n if n >= MAX_INSTANCES => InstanceSet(u64::MAX),
            n => InstanceSet((1u64 << n) - 1),
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i < MAX_INSTANCES {
            self.0 |= 1 << i;
        }
    }

    pub fn contains(self, i: usize) -> bool {
        i < MAX_INSTANCES && self.0 & (1 << i) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_INSTANCES).filter(move |i| self.contains(*i))
    }
}

/// The scope of `acr-registry-info[i]` from its item's fields.
pub(super) fn parse(
    map: &serde_json::Map<String, Value>,
    i: usize,
    errors: &mut Errors,
) -> Option<Scope> {
    const NAMESPACES: NameField = NameField {
        field: "namespaces",
        valid: is_dns_label,
        what: "namespace name",
        all: None,
    };
    const SERVICE_ACCOUNTS: NameField = NameField {
        field: "serviceAccounts",
        valid: is_dns_subdomain,
        what: "ServiceAccount name",
        all: Some("*"),
    };
    // Each field reports its own error; all three are read so that one edit shows every mistake.
    let namespaces = NAMESPACES.parse(map, i, errors);
    let service_accounts = SERVICE_ACCOUNTS.parse(map, i, errors);
    let namespace_selector = namespace_selector(map, i, errors);
    Some(Scope {
        namespaces: match namespaces? {
            Some(Selection::Names(n)) => Some(n),
            _ => None,
        },
        namespace_selector: namespace_selector?,
        service_accounts: service_accounts?,
    })
}

/// A field of an item that names namespaces or ServiceAccounts.
struct NameField {
    field: &'static str,
    valid: fn(&str) -> bool,
    what: &'static str,
    /// The word that selects every name (`*`), where the field has one.
    all: Option<&'static str>,
}

impl NameField {
    /// `Some(None)` when the field is absent, `None` when it is wrong (reported in `errors`).
    fn parse(
        &self,
        map: &serde_json::Map<String, Value>,
        i: usize,
        errors: &mut Errors,
    ) -> Option<Option<Selection>> {
        let (field, what) = (self.field, self.what);
        let items: Vec<String> = match map.get(field) {
            None | Some(Value::Null) => return Some(None),
            Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_owned()).collect(),
            Some(Value::Array(list)) => {
                list.iter().map(|v| string(v).unwrap_or_default()).collect()
            }
            Some(_) => {
                errors.push(
                    KEY_REGISTRY_INFO,
                    Some(i),
                    Some(field),
                    format!("a comma-separated string or a YAML list of {what}s"),
                );
                return None;
            }
        };
        let mut set = BTreeSet::new();
        for item in items.iter().filter(|x| !x.is_empty()) {
            if self.all.is_some_and(|a| item.eq_ignore_ascii_case(a)) {
                return Some(Some(Selection::All));
            }
            if !(self.valid)(item) {
                errors.push(
                    KEY_REGISTRY_INFO,
                    Some(i),
                    Some(field),
                    format!("{what}s; {} is not one", shown(item)),
                );
                return None;
            }
            set.insert(item.clone());
        }
        if set.is_empty() {
            errors.push(
                KEY_REGISTRY_INFO,
                Some(i),
                Some(field),
                format!("at least one {what} (remove the field to serve every one)"),
            );
            return None;
        }
        Some(Some(Selection::Names(set)))
    }
}

/// `namespaceSelector`: `Some(None)` when absent or blank, `None` when wrong (reported).
fn namespace_selector(
    map: &serde_json::Map<String, Value>,
    i: usize,
    errors: &mut Errors,
) -> Option<Option<LabelSelector>> {
    const FIELD: Option<&str> = Some("namespaceSelector");
    match map.get("namespaceSelector") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) if s.trim().is_empty() => Some(None),
        Some(Value::String(s)) => match selector::parse(s.trim()) {
            Ok(sel) => Some(Some(sel)),
            Err(e) => {
                errors.push(
                    KEY_REGISTRY_INFO,
                    Some(i),
                    FIELD,
                    format!("a label selector such as `team=a,env in (prod)`: {e}"),
                );
                None
            }
        },
        Some(_) => {
            errors.push(
                KEY_REGISTRY_INFO,
                Some(i),
                FIELD,
                "a label selector string such as `team=a`",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_sets_hold_up_to_sixty_four() {
        let mut s = InstanceSet::EMPTY;
        assert!(s.is_empty());
        s.insert(0);
        s.insert(63);
        s.insert(64);
        assert!(s.contains(0) && s.contains(63) && !s.contains(64) && !s.contains(1));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63]);
        assert_eq!(
            InstanceSet::first(3).iter().collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(InstanceSet::first(64).iter().count(), 64);
        assert!(InstanceSet::first(0).is_empty());
    }
}
