//! `migrate`: from ACK's aliyun-acr-credential-helper add-on. Once this controller's pull Secret
//! is attached to a ServiceAccount, the add-on's Secrets (`acr-credential-<hash>`) and their
//! references are dead weight; this removes them, and nothing else. Pure: the decisions from what
//! the cluster holds; `app` reads the cluster and carries them out.
//!
//! What is known of the add-on, and what is assumed (the README says so too): it writes one
//! `kubernetes.io/dockerconfigjson` Secret per watched namespace named `acr-credential-` and a
//! hash, and references it from the selected ServiceAccounts' `imagePullSecrets`. Assumed: the
//! hash is 6 to 64 lowercase letters and digits, and such a Secret holds logins for ACR registry
//! domains only. A Secret is taken for the add-on's only if all of that holds.
//!
//! The rules, so that no ServiceAccount is ever without a working Secret and nothing else is
//! touched:
//! - a reference to an add-on Secret is removed only from a ServiceAccount that already carries
//!   this controller's reference, in a namespace where its pull Secret exists (attach before
//!   remove); every other entry stays, in order;
//! - an add-on Secret is deleted only when, after those removals, no ServiceAccount and no Pod of
//!   its namespace refers to it any more (a Pod's `imagePullSecrets` cannot change: a Pod created
//!   before the migration keeps pulling with the add-on's Secret until it is replaced);
//! - everything is decided again from the cluster on every run: running it twice, or after an
//!   interruption, does what is left and nothing more.

pub mod apply;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// What `migrate` needs to know of an add-on-looking Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateSecret {
    pub namespace: String,
    pub name: String,
    pub type_: Option<String>,
    /// The registry domains its `.dockerconfigjson` has logins for (`None`: unreadable).
    pub domains: Option<Vec<String>>,
}

/// A ServiceAccount and the Secrets it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub namespace: String,
    pub name: String,
    pub pull_secrets: Vec<String>,
}

/// One step of the migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unlink {
    pub namespace: String,
    #[serde(rename = "serviceAccount")]
    pub service_account: String,
    /// The add-on Secrets whose references go.
    pub remove: Vec<String>,
}

/// A Secret, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub namespace: String,
    pub secret: String,
    pub why: String,
}

/// Everything `migrate` would do, and what it leaves and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub unlink: Vec<Unlink>,
    /// The add-on Secrets deleted after the unlinks.
    pub delete: Vec<SecretRef>,
    pub kept: Vec<Kept>,
}

/// Whether `name` is of the add-on's pattern: `acr-credential-` and 6 to 64 lowercase letters and
/// digits.
pub fn addon_secret_name(name: &str) -> bool {
    name.strip_prefix("acr-credential-").is_some_and(|h| {
        (6..=64).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Whether `domain` is an ACR registry domain: Enterprise `*.cr.aliyuncs.com` (including
/// `-vpc`), Personal `registry[-vpc|-intl|-intl-vpc].<region>.aliyuncs.com`, or one of the
/// configured instances' own domains (custom domains).
pub fn acr_domain(domain: &str, configured: &BTreeSet<String>) -> bool {
    let host = domain
        .split(':')
        .next()
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if configured.contains(&host) {
        return true;
    }
    if host.ends_with(".cr.aliyuncs.com") {
        return true;
    }
    let labels: Vec<&str> = host.split('.').collect();
    matches!(
        labels.as_slice(),
        [first, _region, "aliyuncs", "com"]
            if matches!(*first, "registry" | "registry-vpc" | "registry-intl" | "registry-intl-vpc")
    )
}

/// Whether a Secret is the add-on's: its name, its type, and only ACR domains.
fn is_addon(s: &CandidateSecret, configured: &BTreeSet<String>) -> Result<(), String> {
    if !addon_secret_name(&s.name) {
        return Err("its name is not of the add-on's pattern".into());
    }
    if s.type_.as_deref() != Some(crate::render::DOCKER_CONFIG_TYPE) {
        return Err(format!(
            "its type is {}, not kubernetes.io/dockerconfigjson",
            s.type_.as_deref().unwrap_or("unset")
        ));
    }
    match &s.domains {
        None => Err("its .dockerconfigjson cannot be read".into()),
        Some(d) if d.is_empty() => Err("it holds no login".into()),
        Some(d) => match d.iter().find(|d| !acr_domain(d, configured)) {
            Some(other) => Err(format!("it holds a login for {other}, not an ACR registry")),
            None => Ok(()),
        },
    }
}

/// The migration of a cluster that holds `candidates` (Secrets whose names start with
/// `acr-credential-`), `accounts`, and Pods naming `pod_refs` ((namespace, Secret) pairs).
/// `ours` is this controller's Secret name; `served` the namespaces where it exists and is ours;
/// `configured` the configured instances' domains.
pub fn plan(
    candidates: &[CandidateSecret],
    accounts: &[Account],
    pod_refs: &BTreeSet<(String, String)>,
    ours: &str,
    served: &BTreeSet<String>,
    configured: &BTreeSet<String>,
) -> Migration {
    let mut m = Migration::default();
    let addon = addon_secrets(candidates, configured, &mut m.kept);
    // Who refers to each add-on Secret once the unlinks are done.
    let mut still: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for a in accounts {
        let theirs: Vec<String> = a
            .pull_secrets
            .iter()
            .filter(|n| addon.contains(&(a.namespace.clone(), (*n).clone())))
            .cloned()
            .collect();
        if theirs.is_empty() {
            continue;
        }
        let attached = a.pull_secrets.iter().any(|n| n == ours) && served.contains(&a.namespace);
        if attached {
            let mut remove = theirs;
            remove.dedup();
            m.unlink.push(Unlink {
                namespace: a.namespace.clone(),
                service_account: a.name.clone(),
                remove,
            });
        } else {
            for t in theirs {
                still
                    .entry((a.namespace.clone(), t))
                    .or_default()
                    .push(format!("ServiceAccount {}", a.name));
            }
        }
    }
    for (ns, secret) in pod_refs {
        let key = (ns.clone(), secret.clone());
        if addon.contains(&key) {
            still.entry(key).or_default().push("a Pod".into());
        }
    }
    for (ns, name) in addon {
        match still.get(&(ns.clone(), name.clone())) {
            None => m.delete.push(SecretRef {
                namespace: ns,
                name,
            }),
            Some(by) => m.kept.push(Kept {
                why: still_referred(by, &ns, served),
                namespace: ns,
                secret: name,
            }),
        }
    }
    m
}

/// The add-on's Secrets among `candidates`; the others go to `kept`, saying why they are not.
fn addon_secrets(
    candidates: &[CandidateSecret],
    configured: &BTreeSet<String>,
    kept: &mut Vec<Kept>,
) -> BTreeSet<(String, String)> {
    let mut addon = BTreeSet::new();
    for s in candidates {
        match is_addon(s, configured) {
            Ok(()) => {
                addon.insert((s.namespace.clone(), s.name.clone()));
            }
            Err(why) => kept.push(Kept {
                namespace: s.namespace.clone(),
                secret: s.name.clone(),
                why: format!("not the add-on's: {why}"),
            }),
        }
    }
    addon
}

/// Why an add-on Secret in `ns` that `by` still refer to is kept.
fn still_referred(by: &[String], ns: &str, served: &BTreeSet<String>) -> String {
    let mut by = by.to_vec();
    by.sort();
    by.dedup();
    if served.contains(ns) {
        format!(
            "still referred to by {} (a ServiceAccount without this controller's reference, or a Pod created before it; replace the Pods, e.g. `kubectl rollout restart`, and run migrate again)",
            by.join(", ")
        )
    } else {
        format!(
            "still referred to by {}, and this controller does not serve namespace {ns}",
            by.join(", ")
        )
    }
}

/// The `imagePullSecrets` after removing `remove` from `current`: every other entry, in order.
/// `None`: nothing to remove (already done).
pub fn without(current: &[String], remove: &[String]) -> Option<Vec<String>> {
    let next: Vec<String> = current
        .iter()
        .filter(|n| !remove.contains(n))
        .cloned()
        .collect();
    (next.len() != current.len()).then_some(next)
}

impl Migration {
    /// One line per step, then a summary.
    pub fn text(&self, applied: bool) -> String {
        let verb = |done: &str, planned: &str| {
            if applied {
                done.to_owned()
            } else {
                planned.to_owned()
            }
        };
        let mut out = String::new();
        for u in &self.unlink {
            out.push_str(&format!(
                "ServiceAccount {}/{}: {} the reference to {}\n",
                u.namespace,
                u.service_account,
                verb("removed", "would remove"),
                u.remove.join(", ")
            ));
        }
        for d in &self.delete {
            out.push_str(&format!(
                "Secret {}/{}: {}\n",
                d.namespace,
                d.name,
                verb("deleted", "would be deleted")
            ));
        }
        for k in &self.kept {
            out.push_str(&format!(
                "Secret {}/{}: kept, {}\n",
                k.namespace, k.secret, k.why
            ));
        }
        out.push_str(&format!(
            "summary: {} reference(s) {}, {} Secret(s) {}, {} kept\n",
            self.unlink.iter().map(|u| u.remove.len()).sum::<usize>(),
            verb("removed", "to remove"),
            self.delete.len(),
            verb("deleted", "to delete"),
            self.kept.len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "aliyun-acr-credential-helper";
    const ADDON: &str = "acr-credential-0f1e2d3c4b5a6978";

    fn secret(ns: &str, name: &str, type_: &str, domains: &[&str]) -> CandidateSecret {
        CandidateSecret {
            namespace: ns.into(),
            name: name.into(),
            type_: Some(type_.into()),
            domains: Some(domains.iter().map(|d| (*d).to_owned()).collect()),
        }
    }

    fn account(ns: &str, name: &str, refs: &[&str]) -> Account {
        Account {
            namespace: ns.into(),
            name: name.into(),
            pull_secrets: refs.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    const DOCKER: &str = "kubernetes.io/dockerconfigjson";

    #[test]
    fn only_the_addons_secrets_are_recognised() {
        let none = BTreeSet::new();
        assert!(addon_secret_name(ADDON));
        for bad in [
            "acr-credential-",
            "acr-credential-ABCDEF12",
            "acr-credential-x",
            "my-acr-credential-0f1e2d3c",
            "acr-credential-0f1e2d3c-extra",
        ] {
            assert!(!addon_secret_name(bad), "{bad}");
        }
        for acr in [
            "xxx-registry.cn-hangzhou.cr.aliyuncs.com",
            "xxx-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "registry.cn-beijing.aliyuncs.com",
            "registry-intl-vpc.ap-southeast-1.aliyuncs.com",
        ] {
            assert!(acr_domain(acr, &none), "{acr}");
        }
        for other in [
            "docker.io",
            "index.docker.io",
            "sts.aliyuncs.com",
            "registry.example.com",
            "images.example.com",
        ] {
            assert!(!acr_domain(other, &none), "{other}");
        }
        let custom: BTreeSet<String> = ["images.example.com".to_owned()].into();
        assert!(acr_domain("images.example.com", &custom));
    }

    #[test]
    fn references_go_only_after_ours_is_attached_and_secrets_only_once_nothing_names_them() {
        let served: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let acr = ["x-registry.cn-hangzhou.cr.aliyuncs.com"];
        let candidates = vec![
            secret("a", ADDON, DOCKER, &acr),
            secret("b", ADDON, DOCKER, &acr),
            secret("c", ADDON, DOCKER, &acr),
            // Not the add-on's: another type, another registry, unreadable.
            secret("a", "acr-credential-0000aaaa", "Opaque", &acr),
            secret("a", "acr-credential-1111bbbb", DOCKER, &["docker.io"]),
            CandidateSecret {
                domains: None,
                ..secret("a", "acr-credential-2222cccc", DOCKER, &[])
            },
        ];
        let accounts = vec![
            // Ours is attached: the add-on's goes, "theirs" and order stay.
            account("a", "default", &["theirs", ADDON, OURS]),
            account("a", "builder", &[ADDON, OURS, ADDON]),
            // Not attached yet: kept, and so is b's Secret.
            account("b", "default", &[ADDON]),
            // c is not served at all.
            account("c", "default", &[ADDON, OURS]),
            // The look-alikes are never unlinked.
            account("a", "other", &["acr-credential-0000aaaa", OURS]),
        ];
        let m = plan(
            &candidates,
            &accounts,
            &BTreeSet::new(),
            OURS,
            &served,
            &BTreeSet::new(),
        );
        assert_eq!(
            m.unlink,
            vec![
                Unlink {
                    namespace: "a".into(),
                    service_account: "default".into(),
                    remove: vec![ADDON.into()]
                },
                Unlink {
                    namespace: "a".into(),
                    service_account: "builder".into(),
                    remove: vec![ADDON.into()]
                },
            ]
        );
        assert_eq!(
            m.delete,
            vec![SecretRef {
                namespace: "a".into(),
                name: ADDON.into()
            }]
        );
        let kept: Vec<(&str, &str)> = m
            .kept
            .iter()
            .map(|k| (k.namespace.as_str(), k.secret.as_str()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("a", "acr-credential-0000aaaa"),
                ("a", "acr-credential-1111bbbb"),
                ("a", "acr-credential-2222cccc"),
                ("b", ADDON),
                ("c", ADDON),
            ]
        );
        assert!(m.kept[1].why.contains("docker.io"));
        assert!(m.kept[4].why.contains("does not serve namespace c"));
        // A Pod still naming a's Secret keeps it (its imagePullSecrets cannot change).
        let pods: BTreeSet<(String, String)> = [("a".to_owned(), ADDON.to_owned())].into();
        let with_pod = plan(
            &candidates,
            &accounts,
            &pods,
            OURS,
            &served,
            &BTreeSet::new(),
        );
        assert!(with_pod.delete.is_empty());
        assert!(
            with_pod
                .kept
                .iter()
                .any(|k| k.namespace == "a" && k.secret == ADDON && k.why.contains("a Pod"))
        );
        assert_eq!(with_pod.unlink.len(), 2, "the references still go");
        // After the unlinks, a second run only deletes (resumable, idempotent).
        let after: Vec<Account> = accounts
            .iter()
            .map(|a| {
                match m
                    .unlink
                    .iter()
                    .find(|u| u.namespace == a.namespace && u.service_account == a.name)
                {
                    Some(u) => Account {
                        pull_secrets: without(&a.pull_secrets, &u.remove).unwrap_or_default(),
                        ..a.clone()
                    },
                    None => a.clone(),
                }
            })
            .collect();
        let again = plan(
            &candidates,
            &after,
            &BTreeSet::new(),
            OURS,
            &served,
            &BTreeSet::new(),
        );
        assert!(again.unlink.is_empty());
        assert_eq!(again.delete, m.delete);
        assert!(
            m.text(false)
                .contains("summary: 2 reference(s) to remove, 1 Secret(s) to delete, 5 kept")
        );
    }

    #[test]
    fn removing_keeps_every_other_entry_in_order() {
        let refs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            without(&refs(&["x", ADDON, OURS, ADDON, "y"]), &refs(&[ADDON])),
            Some(refs(&["x", OURS, "y"]))
        );
        assert_eq!(without(&refs(&["x", OURS]), &refs(&[ADDON])), None);
    }
}
