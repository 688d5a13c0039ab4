//! What `status` prints: per namespace the configuration selects, whether it is served (its pull
//! Secret is there and is the controller's), until when its passwords work, which ServiceAccounts
//! carry the reference and which are still pending, and the last Warning about it. Pure: built
//! from the same index the watches keep and the controller's own planner, plus the Warning Events
//! and the digest key the command could read.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::index::Index;
use crate::plan::{Desired, SecretStep, authentic, plan_namespace};
use crate::record::DigestKey;

/// The state of one selected namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceStatus {
    pub namespace: String,
    /// `served`, `pending` (no Secret yet), `blocked` (a Secret of our name that is not ours) or
    /// `edited` (somebody else changed the Secret: the controller rewrites it).
    pub state: &'static str,
    /// The instances it gets the logins of.
    pub instances: Vec<String>,
    /// Until when the passwords in its Secret work, as the controller wrote it.
    #[serde(rename = "expiresAt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(rename = "serviceAccountsPatched")]
    pub patched: Vec<String>,
    #[serde(rename = "serviceAccountsPending")]
    pub pending: Vec<String>,
    /// The last Warning Event about the namespace, its ServiceAccounts or its Secret.
    #[serde(rename = "lastWarning", skip_serializing_if = "Option::is_none")]
    pub last_warning: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusSummary {
    pub selected: usize,
    pub served: usize,
    pub pending: usize,
    pub blocked: usize,
    pub edited: usize,
    #[serde(rename = "serviceAccountsPending")]
    pub service_accounts_pending: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub namespaces: Vec<NamespaceStatus>,
    pub summary: StatusSummary,
    /// What could not be read (the report is partial there).
    pub notes: Vec<String>,
}

impl StatusReport {
    /// The status of every namespace `cfg` selects in `index`. `key` (the controller's digest
    /// key, when readable) tells edited Secrets apart; `warnings` is the last Warning per
    /// namespace.
    pub fn build(
        index: &Index,
        cfg: &Config,
        key: Option<&DigestKey>,
        warnings: &BTreeMap<String, String>,
        notes: Vec<String>,
    ) -> StatusReport {
        let mut report = StatusReport {
            notes,
            ..StatusReport::default()
        };
        let mut names: Vec<_> = index.namespaces().filter(|(_, s)| s.exists).collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, ns) in names {
            let plan = plan_namespace(name, ns, cfg, Desired::Assumed);
            if plan.instances.is_empty() {
                continue;
            }
            let secret = ns.secret.as_ref();
            let state = match plan.secret {
                SecretStep::Blocked => "blocked",
                SecretStep::Create => "pending",
                _ if key.is_some_and(|k| secret.is_some_and(|s| !authentic(s, k))) => "edited",
                _ if ns.has_ours() => "served",
                _ => "pending",
            };
            let mut pending: Vec<String> = plan
                .references
                .iter()
                .filter(|r| r.add)
                .map(|r| r.service_account.to_string())
                .collect();
            pending.sort();
            let patched: Vec<String> = ns
                .service_accounts
                .iter()
                .filter(|(_, sa)| sa.ours > 0)
                .map(|(n, _)| n.to_string())
                .collect();
            let s = &mut report.summary;
            s.selected += 1;
            match state {
                "served" => s.served += 1,
                "blocked" => s.blocked += 1,
                "edited" => s.edited += 1,
                _ => s.pending += 1,
            }
            s.service_accounts_pending += pending.len();
            report.namespaces.push(NamespaceStatus {
                namespace: name.to_string(),
                state,
                instances: cfg.labels_of(plan.instances),
                expires_at: secret
                    .filter(|s| key.is_none_or(|k| authentic(s, k)))
                    .and_then(|s| s.expires_at.as_deref())
                    .map(str::to_owned),
                patched,
                pending,
                last_warning: warnings.get(&name.to_string()).cloned(),
            });
        }
        report
    }

    /// Whether every selected namespace is served with every ServiceAccount patched.
    pub fn healthy(&self) -> bool {
        let s = &self.summary;
        s.served == s.selected && s.service_accounts_pending == 0
    }

    /// One line per namespace, then the summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for n in &self.namespaces {
            out.push_str(&format!("namespace {}: {}", n.namespace, n.state));
            if let Some(e) = &n.expires_at {
                out.push_str(&format!(", passwords valid until {e}"));
            }
            out.push_str(&format!(", {} ServiceAccount(s) patched", n.patched.len()));
            if !n.pending.is_empty() {
                out.push_str(&format!(", pending: {}", n.pending.join(", ")));
            }
            if let Some(w) = &n.last_warning {
                out.push_str(&format!("; last warning: {w}"));
            }
            out.push('\n');
        }
        let s = &self.summary;
        out.push_str(&format!(
            "summary: {} namespace(s) selected: {} served, {} pending, {} blocked, {} edited; {} ServiceAccount(s) pending\n",
            s.selected, s.served, s.pending, s.blocked, s.edited, s.service_accounts_pending
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Index {
        let mut i = Index::new("ours");
        for ns in ["a", "b", "c", "d"] {
            let n: kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> =
                serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                }))
                .unwrap_or_else(|e| panic!("{e}"));
            i.apply_namespace(&n);
            let refs = if ns == "a" {
                json!([{"name": "ours"}])
            } else {
                json!([])
            };
            let sa: crate::index::ServiceAccountView = serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": "default", "resourceVersion": "1"},
                "imagePullSecrets": refs,
            }))
            .unwrap_or_else(|e| panic!("{e}"));
            i.apply_service_account(&sa);
        }
        let secret = |ns: &str, managed: bool| -> k8s_openapi::api::core::v1::Secret {
            let labels = if managed {
                json!({crate::render::MANAGED_BY_LABEL: crate::render::MANAGED_BY_VALUE})
            } else {
                json!({})
            };
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": "ours", "uid": ns, "resourceVersion": "1",
                             "labels": labels,
                             "annotations": {crate::render::EXPIRES_AT: "2026-12-03T12:00:00Z"}},
                "type": crate::render::DOCKER_CONFIG_TYPE,
            }))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        i.apply_secret(&secret("a", true));
        i.apply_secret(&secret("b", true));
        i.apply_secret(&secret("c", false));
        i
    }

    #[test]
    fn every_selected_namespace_is_reported_with_what_is_left_to_do() {
        let cfg = crate::config::for_test(&[("watch-namespace", "a,b,c,d")]);
        let warnings = BTreeMap::from([("c".to_owned(), "SecretNameTaken: ...".to_owned())]);
        let r = StatusReport::build(&index(), &cfg, None, &warnings, Vec::new());
        let states: Vec<(&str, &str)> = r
            .namespaces
            .iter()
            .map(|n| (n.namespace.as_str(), n.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a", "served"),
                ("b", "served"),
                ("c", "blocked"),
                ("d", "pending")
            ]
        );
        assert_eq!(r.namespaces[1].pending, ["default"]);
        assert_eq!(r.namespaces[0].patched, ["default"]);
        assert_eq!(
            r.namespaces[0].expires_at.as_deref(),
            Some("2026-12-03T12:00:00Z")
        );
        assert_eq!(
            r.namespaces[2].last_warning.as_deref(),
            Some("SecretNameTaken: ...")
        );
        assert!(!r.healthy());
        assert!(r.text().contains(
            "summary: 4 namespace(s) selected: 2 served, 1 pending, 1 blocked, 0 edited; 2 ServiceAccount(s) pending"
        ), "{}", r.text());
        // With the key, a Secret whose content the controller did not write is `edited`, and its
        // expiry (somebody else's) is not shown.
        let key = DigestKey::from_bytes(&[5; 32]).unwrap_or_else(|| panic!("key"));
        let r = StatusReport::build(&index(), &cfg, Some(&key), &BTreeMap::new(), Vec::new());
        assert_eq!(r.namespaces[0].state, "edited");
        assert!(r.namespaces[0].expires_at.is_none());
        // Only what is selected; all served and patched is healthy.
        let only_a = crate::config::for_test(&[("watch-namespace", "a")]);
        let r = StatusReport::build(&index(), &only_a, None, &BTreeMap::new(), Vec::new());
        assert_eq!(r.namespaces.len(), 1);
        assert!(r.healthy());
    }
}
