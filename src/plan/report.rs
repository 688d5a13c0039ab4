//! What `plan` prints: the controller's own decisions ([`plan_namespace`]) for every namespace the
//! cluster holds, under a configuration, with the Secret content assumed to come (`plan` never
//! calls the cloud), and what would change in the webhook registration. Pure: the command reads
//! the cluster into an [`Index`] and hands it here.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Desired, SecretStep, plan_namespace};
use crate::config::{Config, WebhookConfig};
use crate::index::{Index, NsState};

/// One webhook of a MutatingWebhookConfiguration, as far as `plan` compares them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WebhookSummary {
    pub name: String,
    #[serde(rename = "failurePolicy")]
    pub failure_policy: String,
    #[serde(rename = "timeoutSeconds")]
    pub timeout_seconds: i32,
}

/// The webhooks `webhook` registers.
pub fn desired_webhooks(webhook: &WebhookConfig) -> Vec<WebhookSummary> {
    let mut out = Vec::new();
    if webhook.enable {
        out.push(WebhookSummary {
            name: crate::webhook::runtime::WEBHOOK_NAME.to_owned(),
            failure_policy: webhook.failure_policy.as_str().to_owned(),
            timeout_seconds: i32::from(webhook.timeout_seconds),
        });
    }
    if webhook.pod_injection {
        out.push(WebhookSummary {
            name: crate::webhook::runtime::POD_WEBHOOK_NAME.to_owned(),
            failure_policy: webhook.pod_failure_policy.as_str().to_owned(),
            timeout_seconds: i32::from(webhook.pod_timeout_seconds),
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct NamespaceChange {
    pub namespace: String,
    /// `create`, `delete`, or `blocked` (a foreign Secret holds our name: nothing is touched).
    pub secret: Option<&'static str>,
    #[serde(rename = "addReference")]
    pub add_reference: Vec<String>,
    #[serde(rename = "removeReference")]
    pub remove_reference: Vec<String>,
    /// The instances whose logins the namespace's Secret holds (when instances are scoped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookChange {
    /// `register`, `update`, `remove` or `unchanged`.
    pub action: &'static str,
    pub current: Vec<WebhookSummary>,
    pub desired: Vec<WebhookSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "namespacesGainingSecret")]
    pub gain_secret: usize,
    #[serde(rename = "namespacesLosingSecret")]
    pub lose_secret: usize,
    #[serde(rename = "namespacesBlocked")]
    pub blocked: usize,
    #[serde(rename = "serviceAccountsGainingReference")]
    pub gain_reference: usize,
    #[serde(rename = "serviceAccountsLosingReference")]
    pub lose_reference: usize,
}

/// Everything `plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// Whether the configuration would be accepted; when it is not, nothing changes (the
    /// controller keeps the configuration in force) and `errors` says why.
    pub accepted: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub namespaces: Vec<NamespaceChange>,
    pub webhook: Option<WebhookChange>,
    pub summary: Summary,
}

impl PlanReport {
    /// A configuration that would be rejected: its errors, and no change.
    pub fn rejected(errors: Vec<String>, warnings: Vec<String>) -> PlanReport {
        PlanReport {
            accepted: false,
            errors,
            warnings,
            namespaces: Vec::new(),
            webhook: None,
            summary: Summary::default(),
        }
    }

    /// The changes `cfg` makes to the cluster `index` describes, whose registration is
    /// `current_webhooks` (`None`: no MutatingWebhookConfiguration).
    pub fn build(
        index: &Index,
        cfg: &Config,
        warnings: Vec<String>,
        current_webhooks: Option<Vec<WebhookSummary>>,
    ) -> PlanReport {
        let mut namespaces = Vec::new();
        let mut summary = Summary::default();
        let mut names: Vec<_> = index.namespaces().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, state) in names {
            let (step, change) = namespace_change(name, state, cfg);
            match step {
                SecretStep::Create => summary.gain_secret += 1,
                SecretStep::Delete => summary.lose_secret += 1,
                SecretStep::Blocked => summary.blocked += 1,
                _ => {}
            }
            summary.gain_reference += change.add_reference.len();
            summary.lose_reference += change.remove_reference.len();
            if change.secret.is_some()
                || !change.add_reference.is_empty()
                || !change.remove_reference.is_empty()
            {
                namespaces.push(change);
            }
        }
        PlanReport {
            accepted: true,
            errors: Vec::new(),
            warnings,
            namespaces,
            webhook: Some(webhook_change(&cfg.webhook, current_webhooks)),
            summary,
        }
    }

    /// The human-readable form: one line per change, then a summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if !self.accepted {
            for e in &self.errors {
                out.push_str(&format!("error: {e}\n"));
            }
            out.push_str(&format!(
                "summary: the configuration would be rejected ({} problem(s)); nothing would change (the configuration in force stays)\n",
                self.errors.len()
            ));
            return out;
        }
        for n in &self.namespaces {
            match n.secret {
                Some("blocked") => out.push_str(&format!(
                    "namespace {}: blocked (a Secret of our name that is not ours; nothing is touched)\n",
                    n.namespace
                )),
                Some(step) => match &n.instances {
                    Some(i) => out.push_str(&format!(
                        "namespace {}: {step} Secret (logins of {})\n",
                        n.namespace,
                        i.join(", ")
                    )),
                    None => out.push_str(&format!("namespace {}: {step} Secret\n", n.namespace)),
                },
                None => {}
            }
            for sa in &n.add_reference {
                out.push_str(&format!(
                    "namespace {}: ServiceAccount {sa} gains the reference\n",
                    n.namespace
                ));
            }
            for sa in &n.remove_reference {
                out.push_str(&format!(
                    "namespace {}: ServiceAccount {sa} loses the reference\n",
                    n.namespace
                ));
            }
        }
        if let Some(w) = &self.webhook
            && w.action != "unchanged"
        {
            let names = |v: &[WebhookSummary]| {
                v.iter()
                    .map(|w| format!("{} ({}, {}s)", w.name, w.failure_policy, w.timeout_seconds))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "webhook: {} [{}] -> [{}]\n",
                w.action,
                names(&w.current),
                names(&w.desired)
            ));
        }
        let s = &self.summary;
        out.push_str(&format!(
            "summary: {} namespace(s) gain the Secret, {} lose it, {} blocked; {} ServiceAccount(s) gain the reference, {} lose it; webhook {}\n",
            s.gain_secret,
            s.lose_secret,
            s.blocked,
            s.gain_reference,
            s.lose_reference,
            self.webhook.as_ref().map_or("unchanged", |w| w.action),
        ));
        out
    }
}

/// The plan's step for the Secret of namespace `name` and what `plan` shows of it.
fn namespace_change(name: &str, state: &NsState, cfg: &Config) -> (SecretStep, NamespaceChange) {
    let plan = plan_namespace(name, state, cfg, Desired::Assumed);
    let instances = cfg.labels_of(plan.instances);
    // With the logins assumed, a Secret of ours is only known to change when it is to
    // hold the logins of other instances (scoping).
    let regroup = plan.secret == SecretStep::Keep
        && !instances.is_empty()
        && state.secret.as_ref().is_some_and(|s| {
            !s.is_foreign() && s.instances.as_deref() != Some(instances.join(",").as_str())
        });
    let secret = match plan.secret {
        SecretStep::Create => Some("create"),
        SecretStep::Delete => Some("delete"),
        SecretStep::Update => Some("update"),
        SecretStep::Blocked => Some("blocked"),
        SecretStep::Keep if regroup => Some("update"),
        SecretStep::Keep => None,
    };
    let (add, remove): (Vec<_>, Vec<_>) = plan.references.iter().partition(|r| r.add);
    let names = |v: Vec<&super::ReferenceStep>| -> Vec<String> {
        let set: BTreeSet<String> = v.iter().map(|r| r.service_account.to_string()).collect();
        set.into_iter().collect()
    };
    let change = NamespaceChange {
        namespace: name.to_string(),
        secret,
        add_reference: names(add),
        remove_reference: names(remove),
        instances: (cfg.scoped() && !instances.is_empty()).then_some(instances),
    };
    (plan.secret, change)
}

/// What changes in the registration, from `current` (`None`: no MutatingWebhookConfiguration).
fn webhook_change(webhook: &WebhookConfig, current: Option<Vec<WebhookSummary>>) -> WebhookChange {
    let mut desired = desired_webhooks(webhook);
    desired.sort();
    let action = match &current {
        None if desired.is_empty() => "unchanged",
        None => "register",
        Some(_) if desired.is_empty() => "remove",
        Some(c) => {
            let mut c = c.clone();
            c.sort();
            if c == desired { "unchanged" } else { "update" }
        }
    };
    WebhookChange {
        action,
        current: current.unwrap_or_default(),
        desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::for_test as cfg;

    fn index() -> Index {
        let mut i = Index::new("ours");
        for ns in ["a", "b", "c"] {
            let n: kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> =
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "resourceVersion": "1"},
                }))
                .unwrap_or_else(|e| panic!("{e}"));
            i.apply_namespace(&n);
            let sa: k8s_openapi::api::core::v1::ServiceAccount =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": ns, "name": "default", "resourceVersion": "1"},
                    "imagePullSecrets": if ns == "a" { serde_json::json!([{"name": "ours"}]) } else { serde_json::json!([]) },
                }))
                .unwrap_or_else(|e| panic!("{e}"));
            i.apply_service_account(&crate::index::ServiceAccountView::from(&sa));
        }
        let ours: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "a", "name": "ours", "uid": "u", "resourceVersion": "1",
                         "labels": {crate::render::MANAGED_BY_LABEL: crate::render::MANAGED_BY_VALUE}},
            "type": crate::render::DOCKER_CONFIG_TYPE,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        i.apply_secret(&ours);
        i
    }

    #[test]
    fn narrowing_and_widening_are_reported_with_counts() {
        // `a` is served now; the edit moves to `b`.
        let r = PlanReport::build(
            &index(),
            &cfg(&[
                ("watch-namespace", "b"),
                ("webhook-configuration", "pod-injection: true"),
            ]),
            Vec::new(),
            None,
        );
        let text = r.text();
        assert!(text.contains("namespace a: delete Secret\n"), "{text}");
        assert!(
            text.contains("namespace a: ServiceAccount default loses the reference\n"),
            "{text}"
        );
        assert!(text.contains("namespace b: create Secret\n"), "{text}");
        assert!(
            text.contains("namespace b: ServiceAccount default gains the reference\n"),
            "{text}"
        );
        assert!(!text.contains("namespace c"), "{text}");
        assert!(
            text.contains(
                "webhook: register [] -> [pods.aliyun-acr-credential-helper.io (Ignore, 3s)]"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("summary: 1 namespace(s) gain the Secret, 1 lose it, 0 blocked; 1 ServiceAccount(s) gain the reference, 1 lose it; webhook register\n"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["summary"]["namespacesGainingSecret"], 1);
        assert_eq!(json["namespaces"][0]["removeReference"][0], "default");
    }

    #[test]
    fn a_rejected_configuration_changes_nothing() {
        let r = PlanReport::rejected(vec!["expiring-threshold: a duration".into()], Vec::new());
        assert!(r.text().contains("nothing would change"), "{}", r.text());
        assert!(r.namespaces.is_empty());
    }
}
