//! The `acr-configuration` ConfigMap, parsed and validated into a typed [`Config`]. Pure: no I/O.
//!
//! Values are trimmed; the keywords `all`, `*` and `default` compare case-insensitively; unknown
//! keys are warnings. A configuration that cannot be used is rejected with messages naming the
//! key, the item index and what was expected, and never quoting a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::credentials::{Edition, InstanceAuth};

mod instances;
mod parse;
pub mod scope;
pub mod selector;
mod validate;
#[cfg(test)]
pub(crate) use parse::for_test;
pub use parse::{ConfigError, ConfigErrors, Parsed, manifest_data, parse};
pub use scope::{InstanceSet, MAX_INSTANCES, Scope};
pub use selector::LabelSelector;

pub const KEY_WATCH_NAMESPACE: &str = "watch-namespace";
pub const KEY_SERVICE_ACCOUNT: &str = "service-account";
pub const KEY_EXPIRING_THRESHOLD: &str = "expiring-threshold";
pub const KEY_REGISTRY_INFO: &str = "acr-registry-info";
pub const KEY_RRSA: &str = "rrsa";
pub const KEY_WEBHOOK: &str = "webhook-configuration";
/// Beyond the original: namespaces selected by their labels (Kubernetes selector syntax).
pub const KEY_NAMESPACE_SELECTOR: &str = "namespace-selector";
/// Beyond the original: namespaces never served, whatever else selects them.
pub const KEY_EXCLUDE_NAMESPACES: &str = "exclude-namespaces";
/// Beyond the original: `"false"` ignores the opt-in label on Namespaces, for clusters where
/// tenants may label their own namespaces (an opt-out still counts).
pub const KEY_NAMESPACE_OPT_IN: &str = "namespace-opt-in";
/// Beyond the original: `"false"` leaves every ServiceAccount alone (no patch by the controller,
/// no mutation by the ServiceAccount webhook): for GitOps users who rely on Pod injection.
pub const KEY_PATCH_SERVICE_ACCOUNTS: &str = "patch-service-accounts";
/// Beyond the original: a label on a Namespace or a ServiceAccount, `"true"` to opt in and
/// `"false"` to opt out (other values are ignored). See [`Config::selects_namespace`].
pub const OPT_LABEL: &str = "aliyun-acr-credential-helper/pull-secret";
/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Accepted and kept, never an error (the original add-on's legacy keys).
pub const LEGACY_KEYS: [&str; 3] = ["notify-email", "acr-api-version", "acr-registry"];

pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_EXPIRE_DURATION: u32 = 3600;

/// Which namespaces, or which ServiceAccounts in each of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Names(BTreeSet<String>),
}

impl Selection {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Names(names) => names.contains(name),
        }
    }
}

/// One registry instance to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub edition: Edition,
    pub region: String,
    /// Registry domains to write; empty means all of the instance's domains.
    pub domains: Vec<String>,
    pub auth: InstanceAuth,
    /// The namespaces and ServiceAccounts it serves (default: what the ConfigMap selects).
    pub scope: Scope,
}

impl Instance {
    /// A short name for logs, Events and metric labels (never a secret).
    pub fn label(&self) -> String {
        match &self.edition {
            Edition::Enterprise { instance_id } => instance_id.clone(),
            Edition::Personal => format!("personal/{}", self.region),
        }
    }

    /// Who its logins are issued to, without any secret: the AccessKey id, the RRSA and
    /// assumed role ARNs. Two configurations with the same identity get interchangeable logins.
    pub fn identity(&self) -> String {
        let a = &self.auth;
        let mut out = String::new();
        if let Some(ak) = &a.custom_access_key {
            out.push_str("ak=");
            out.push_str(&ak.id);
        }
        if let Some(r) = &a.rrsa {
            out.push_str(";rrsa=");
            out.push_str(&r.role_arn);
            out.push('@');
            out.push_str(&r.oidc_provider_arn);
        }
        if let Some(r) = &a.assume_role {
            out.push_str(";assume=");
            out.push_str(&r.role_arn);
        }
        out
    }

    pub fn instance_ref(&self) -> crate::credentials::InstanceRef {
        crate::credentials::InstanceRef {
            edition: self.edition.clone(),
            region: self.region.clone(),
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The ServiceAccount webhook (`enable`).
    pub enable: bool,
    pub failure_policy: FailurePolicy,
    pub timeout_seconds: u8,
    /// Beyond the original: the Pod webhook (`pod-injection`), with its own failure policy and
    /// timeout (`pod-failure-policy`, default Ignore; `pod-timeout-seconds`, default 3).
    pub pod_injection: bool,
    pub pod_failure_policy: FailurePolicy,
    pub pod_timeout_seconds: u8,
}

impl WebhookConfig {
    /// Whether any webhook is registered.
    pub fn any(&self) -> bool {
        self.enable || self.pod_injection
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            enable: false,
            failure_policy: FailurePolicy::Ignore,
            timeout_seconds: 10,
            pod_injection: false,
            pod_failure_policy: FailurePolicy::Ignore,
            pod_timeout_seconds: 3,
        }
    }
}

/// A usable configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub namespaces: Selection,
    /// Namespaces whose labels match are selected too (`namespace-selector`).
    pub namespace_selector: Option<LabelSelector>,
    /// Never selected (`exclude-namespaces`).
    pub exclude_namespaces: BTreeSet<String>,
    pub service_accounts: Selection,
    /// `patch-service-accounts` (default true).
    pub patch_service_accounts: bool,
    /// `namespace-opt-in` (default true): whether the opt-in label on a Namespace selects it.
    pub namespace_opt_in: bool,
    pub expiring_threshold: Duration,
    pub instances: Vec<Instance>,
    pub rrsa_enabled: bool,
    pub webhook: WebhookConfig,
    /// Legacy keys, kept as given.
    pub legacy: BTreeMap<String, String>,
}

/// What an [`OPT_LABEL`] value says: `Some(true)` opt in, `Some(false)` opt out.
pub fn opt(value: Option<&str>) -> Option<bool> {
    match value {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

impl Config {
    /// Whether namespace `name` (with `labels`) is selected by the ConfigMap's own keys. In order,
    /// the first rule that applies decides:
    /// 1. named in `exclude-namespaces`: never (`None`, for every instance);
    /// 2. labelled [`OPT_LABEL`]`=false`: never (`None`); `=true`: yes, unless
    ///    `namespace-opt-in` is false (then the label is ignored);
    /// 3. named by `watch-namespace` (or it is `all`), or matched by `namespace-selector`: yes;
    /// 4. otherwise no.
    fn namespace_rule(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<bool> {
        if self.exclude_namespaces.contains(name) {
            return None;
        }
        match opt(labels.get(OPT_LABEL).map(String::as_str)) {
            Some(false) => return None,
            Some(true) if self.namespace_opt_in => return Some(true),
            _ => {}
        }
        Some(
            self.namespaces.contains(name)
                || self.namespace_selector.as_ref().is_some_and(|s| {
                    s.matches_with(|k| {
                        if k == NAMESPACE_NAME_LABEL {
                            Some(name)
                        } else {
                            labels.get(k).map(String::as_str)
                        }
                    })
                }),
        )
    }

    /// The instances namespace `name` (with `labels`) gets the logins of: none if it is excluded
    /// or opted out; else an instance that names its own namespaces (`namespaces`,
    /// `namespaceSelector`) where it names this one, and every other instance where the
    /// ConfigMap's keys select it ([`Config::namespace_rule`]). The opt-in label never brings
    /// in an instance that names its own namespaces: a tenant who labels its namespace cannot
    /// get another team's registry.
    pub fn instances_for(&self, name: &str, labels: &BTreeMap<String, String>) -> InstanceSet {
        let Some(selected) = self.namespace_rule(name, labels) else {
            return InstanceSet::EMPTY;
        };
        let mut set = InstanceSet::EMPTY;
        for (i, inst) in self.instances.iter().enumerate() {
            let serves = if inst.scope.restricts_namespaces() {
                inst.scope.selects_namespace(name, labels)
            } else {
                selected
            };
            if serves {
                set.insert(i);
            }
        }
        set
    }

    /// Whether namespace `name` gets the pull Secret: some instance serves it.
    pub fn selects_namespace(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        !self.instances_for(name, labels).is_empty()
    }

    /// Whether ServiceAccount `name` of a namespace served by `instances` gets the reference,
    /// given its [`OPT_LABEL`] (see [`opt`]): an opt-in or opt-out decides, else one of the
    /// instances selects it by name (its `serviceAccounts`, or else `service-account`). `None`
    /// for a name not known yet (a `generateName`): only `*` selects it.
    pub fn selects_service_account(
        &self,
        instances: InstanceSet,
        name: Option<&str>,
        opted: Option<bool>,
    ) -> bool {
        if instances.is_empty() {
            return false;
        }
        opted.unwrap_or_else(|| {
            instances.iter().any(|i| {
                let selection = self
                    .instances
                    .get(i)
                    .and_then(|inst| inst.scope.service_accounts.as_ref())
                    .unwrap_or(&self.service_accounts);
                match name {
                    Some(name) => selection.contains(name),
                    None => *selection == Selection::All,
                }
            })
        })
    }

    /// Whether any instance names its own namespaces or ServiceAccounts.
    pub fn scoped(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.scope.restricts_namespaces() || i.scope.service_accounts.is_some())
    }

    /// One line per instance for `check-config`: what it serves.
    pub fn describe_instances(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .instances
            .iter()
            .map(|i| format!("instance {}: {}", i.label(), i.scope.describe()))
            .collect();
        if !self.namespace_opt_in {
            lines.push(format!(
                "{KEY_NAMESPACE_OPT_IN}: false: the label {OPT_LABEL}=true on a Namespace selects nothing"
            ));
        }
        lines
    }

    /// The labels of the instances in `set`, in configuration order.
    pub fn labels_of(&self, set: InstanceSet) -> Vec<String> {
        set.iter()
            .filter_map(|i| self.instances.get(i).map(Instance::label))
            .collect()
    }
}

#[cfg(test)]
mod tests;
