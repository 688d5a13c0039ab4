//! The `acr-configuration` ConfigMap, parsed and validated into a typed [`Config`]. Pure: no I/O.
//!
//! Values are trimmed; the keywords `all`, `*` and `default` compare case-insensitively; unknown
//! keys are warnings. A configuration that cannot be used is rejected with messages naming the
//! key, the item index and what was expected, and never quoting a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::aliyun::is_region_id;
use crate::credentials::{AccessKey, AssumedRole, Edition, InstanceAuth, RrsaRole};
use crate::duration::parse_duration;

pub mod scope;
pub mod selector;
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

/// A parsed configuration and what was ignored in it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// One reason a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub item: Option<usize>,
    pub field: Option<String>,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(i) = self.item {
            write!(f, "[{i}]")?;
        }
        if let Some(field) = &self.field {
            write!(f, ".{field}")?;
        }
        write!(f, ": {}", self.expected)
    }
}

/// Every reason a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(
        &mut self,
        key: &'static str,
        item: Option<usize>,
        field: Option<&str>,
        expected: impl Into<String>,
    ) {
        self.0.push(ConfigError {
            key,
            item,
            field: field.map(str::to_owned),
            expected: expected.into(),
        });
    }
}

/// Shows a user-supplied (non-secret) value in a message, bounded in length.
fn shown(value: &str) -> String {
    let short: String = value.chars().take(80).collect();
    if short.len() < value.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// Parses the ConfigMap's `data`. `cluster_region` is the default region of instances.
pub fn parse(
    data: &BTreeMap<String, String>,
    cluster_region: Option<&str>,
) -> Result<Parsed, ConfigErrors> {
    let mut errors = Errors(Vec::new());
    let mut warnings = Vec::new();
    let get = |k: &str| data.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

    for key in data.keys() {
        let known = [
            KEY_WATCH_NAMESPACE,
            KEY_SERVICE_ACCOUNT,
            KEY_EXPIRING_THRESHOLD,
            KEY_REGISTRY_INFO,
            KEY_RRSA,
            KEY_WEBHOOK,
            KEY_NAMESPACE_SELECTOR,
            KEY_EXCLUDE_NAMESPACES,
            KEY_PATCH_SERVICE_ACCOUNTS,
            KEY_NAMESPACE_OPT_IN,
        ]
        .contains(&key.as_str())
            || LEGACY_KEYS.contains(&key.as_str());
        if !known {
            warnings.push(format!("unknown key {} is ignored", shown(key)));
        }
    }

    let namespace_selector = get(KEY_NAMESPACE_SELECTOR).and_then(|v| match selector::parse(v) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(
                KEY_NAMESPACE_SELECTOR,
                None,
                None,
                format!("a label selector such as `team=a,env in (prod,staging),!legacy`: {e}"),
            );
            None
        }
    });
    let mut exclude_namespaces = BTreeSet::new();
    for (i, item) in get(KEY_EXCLUDE_NAMESPACES)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, item)| !item.is_empty())
    {
        if is_dns_label(item) {
            exclude_namespaces.insert(item.to_owned());
        } else {
            errors.push(
                KEY_EXCLUDE_NAMESPACES,
                Some(i),
                None,
                format!(
                    "a comma-separated list of namespace names; item {} is not a DNS-1123 label",
                    shown(item)
                ),
            );
        }
    }
    // With a selector and no `watch-namespace`, the selector alone decides (the `default`
    // namespace is not added behind the operator's back).
    let watch = get(KEY_WATCH_NAMESPACE);
    let namespaces = if watch.is_none() && namespace_selector.is_some() {
        Selection::Names(BTreeSet::new())
    } else {
        selection(
            watch,
            "all",
            KEY_WATCH_NAMESPACE,
            is_dns_label,
            "a namespace name (a DNS-1123 label)",
            &mut errors,
        )
    };
    if namespaces == Selection::All && namespace_selector.is_some() {
        warnings.push(format!(
            "{KEY_NAMESPACE_SELECTOR} adds nothing: {KEY_WATCH_NAMESPACE} is all"
        ));
    }
    let service_accounts = selection(
        get(KEY_SERVICE_ACCOUNT),
        "*",
        KEY_SERVICE_ACCOUNT,
        is_dns_subdomain,
        "a ServiceAccount name (a DNS-1123 subdomain)",
        &mut errors,
    );

    let flag = |key: &'static str, errors: &mut Errors| match get(key) {
        None => true,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            errors.push(key, None, None, format!("true or false, got {}", shown(v)));
            true
        }
    };
    let patch_service_accounts = flag(KEY_PATCH_SERVICE_ACCOUNTS, &mut errors);
    let namespace_opt_in = flag(KEY_NAMESPACE_OPT_IN, &mut errors);
    let expiring_threshold = match get(KEY_EXPIRING_THRESHOLD) {
        None => DEFAULT_THRESHOLD,
        Some(v) => match parse_duration(v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errors.push(
                    KEY_EXPIRING_THRESHOLD,
                    None,
                    None,
                    "a positive duration such as 15m, 1h30m or 90s, got 0",
                );
                DEFAULT_THRESHOLD
            }
            Err(_) => {
                errors.push(
                    KEY_EXPIRING_THRESHOLD,
                    None,
                    None,
                    format!("a duration such as 15m, 1h30m or 90s, got {}", shown(v)),
                );
                DEFAULT_THRESHOLD
            }
        },
    };

    let rrsa_enabled = match get(KEY_RRSA) {
        None => false,
        Some(v) => match yaml_mapping(v) {
            Ok(map) => {
                for k in map.keys().filter(|k| k.as_str() != "enable") {
                    warnings.push(format!("{KEY_RRSA}: unknown field {} is ignored", shown(k)));
                }
                match map.get("enable").map(boolean) {
                    None => false,
                    Some(Some(b)) => b,
                    Some(None) => {
                        errors.push(KEY_RRSA, None, Some("enable"), "true or false");
                        false
                    }
                }
            }
            Err(e) => {
                errors.push(
                    KEY_RRSA,
                    None,
                    None,
                    format!("YAML such as `enable: true` ({e})"),
                );
                false
            }
        },
    };

    let webhook = match get(KEY_WEBHOOK) {
        None => WebhookConfig::default(),
        Some(v) => webhook_config(v, &mut errors, &mut warnings),
    };

    let instances = match get(KEY_REGISTRY_INFO) {
        None => match cluster_region {
            Some(region) => vec![Instance {
                edition: Edition::Personal,
                region: region.to_owned(),
                domains: Vec::new(),
                auth: InstanceAuth::default(),
                scope: Scope::default(),
            }],
            None => {
                errors.push(
                    KEY_REGISTRY_INFO,
                    None,
                    None,
                    "a list of instances: it is empty and the cluster region (--region) is unknown, so the default Personal Edition instance cannot be chosen",
                );
                Vec::new()
            }
        },
        Some(v) => instances(v, cluster_region, rrsa_enabled, &mut errors, &mut warnings),
    };

    let legacy = LEGACY_KEYS
        .iter()
        .filter_map(|k| data.get(*k).map(|v| ((*k).to_owned(), v.trim().to_owned())))
        .collect();

    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    Ok(Parsed {
        config: Config {
            namespaces,
            namespace_selector,
            exclude_namespaces,
            service_accounts,
            patch_service_accounts,
            namespace_opt_in,
            expiring_threshold,
            instances,
            rrsa_enabled,
            webhook,
            legacy,
        },
        warnings,
    })
}

fn selection(
    value: Option<&str>,
    all_keyword: &str,
    key: &'static str,
    valid: fn(&str) -> bool,
    what: &str,
    errors: &mut Errors,
) -> Selection {
    let Some(value) = value else {
        return Selection::Names(BTreeSet::from(["default".to_owned()]));
    };
    let mut names = BTreeSet::new();
    let mut invalid = false;
    for (i, raw) in value.split(',').enumerate() {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        if item.eq_ignore_ascii_case(all_keyword) {
            return Selection::All;
        }
        let name = if item.eq_ignore_ascii_case("default") {
            "default".to_owned()
        } else {
            item.to_owned()
        };
        if valid(&name) {
            names.insert(name);
        } else {
            invalid = true;
            errors.push(
                key,
                Some(i),
                None,
                format!(
                    "`{all_keyword}` or a comma-separated list; item {} is not {what}",
                    shown(item)
                ),
            );
        }
    }
    if names.is_empty() && !invalid {
        errors.push(
            key,
            None,
            None,
            format!("`{all_keyword}` or a comma-separated list of names, got an empty list"),
        );
    }
    Selection::Names(names)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_registry_domain(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    host.contains('.')
        && is_dns_subdomain(host)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_role_arn(s: &str) -> bool {
    arn_parts(s, "role").is_some()
}

fn is_oidc_provider_arn(s: &str) -> bool {
    arn_parts(s, "oidc-provider").is_some()
}

fn arn_parts<'a>(s: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = s.strip_prefix("acs:ram::")?;
    let (account, resource) = rest.split_once(':')?;
    let name = resource.strip_prefix(kind)?.strip_prefix('/')?;
    let ok_account = !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'/'));
    (ok_account && ok_name).then_some((account, name))
}

fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("cri-").is_some_and(|id| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Parses YAML into a JSON value tree.
fn yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        // The first line of the parser's message names the problem and its position.
        e.to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_owned()
    })
}

fn yaml_mapping(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match yaml(text)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(serde_json::Map::new()),
        _ => Err("not a mapping".to_owned()),
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string field: strings as they are (trimmed), numbers as written; `null` is absent.
fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn webhook_config(text: &str, errors: &mut Errors, warnings: &mut Vec<String>) -> WebhookConfig {
    let mut w = WebhookConfig::default();
    let map = match yaml_mapping(text) {
        Ok(m) => m,
        Err(e) => {
            errors.push(
                KEY_WEBHOOK,
                None,
                None,
                format!("YAML with enable, failure-policy and timeout-seconds ({e})"),
            );
            return w;
        }
    };
    let policy =
        |v: &serde_json::Value, field: &str, errors: &mut Errors| match v.as_str().map(str::trim) {
            Some(p) if p.eq_ignore_ascii_case("ignore") => Some(FailurePolicy::Ignore),
            Some(p) if p.eq_ignore_ascii_case("fail") => Some(FailurePolicy::Fail),
            _ => {
                errors.push(KEY_WEBHOOK, None, Some(field), "Ignore or Fail");
                None
            }
        };
    let seconds = |v: &serde_json::Value, field: &str, errors: &mut Errors| match integer(v) {
        Some(t @ 1..=30) => u8::try_from(t).ok(),
        _ => {
            errors.push(
                KEY_WEBHOOK,
                None,
                Some(field),
                "a whole number of seconds from 1 to 30",
            );
            None
        }
    };
    let flag = |v: &serde_json::Value, field: &str, errors: &mut Errors| {
        let b = boolean(v);
        if b.is_none() {
            errors.push(KEY_WEBHOOK, None, Some(field), "true or false");
        }
        b
    };
    for (k, v) in &map {
        match k.as_str() {
            "enable" => w.enable = flag(v, "enable", errors).unwrap_or(w.enable),
            "failure-policy" => {
                w.failure_policy = policy(v, "failure-policy", errors).unwrap_or(w.failure_policy);
            }
            "timeout-seconds" => {
                w.timeout_seconds =
                    seconds(v, "timeout-seconds", errors).unwrap_or(w.timeout_seconds);
            }
            "pod-injection" => {
                w.pod_injection = flag(v, "pod-injection", errors).unwrap_or(w.pod_injection);
            }
            "pod-failure-policy" => {
                w.pod_failure_policy =
                    policy(v, "pod-failure-policy", errors).unwrap_or(w.pod_failure_policy);
            }
            "pod-timeout-seconds" => {
                w.pod_timeout_seconds =
                    seconds(v, "pod-timeout-seconds", errors).unwrap_or(w.pod_timeout_seconds);
            }
            other => warnings.push(format!(
                "{KEY_WEBHOOK}: unknown field {} is ignored",
                shown(other)
            )),
        }
    }
    w
}

const INSTANCE_FIELDS: [&str; 13] = [
    "instanceId",
    "regionId",
    "domains",
    "assumeRoleARN",
    "expireDuration",
    "rrsaRoleARN",
    "rrsaOIDCProviderRoleARN",
    "customAccessKey",
    "customAccessKeySecret",
    "instanceName",
    "namespaces",
    "namespaceSelector",
    "serviceAccounts",
];

fn instances(
    text: &str,
    cluster_region: Option<&str>,
    rrsa_enabled: bool,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Vec<Instance> {
    const KEY: &str = KEY_REGISTRY_INFO;
    let items = match yaml(text) {
        Ok(Value::Array(items)) if !items.is_empty() => items,
        // `[]`, or items that are all commented out: an explicit "no registries" would empty every
        // pull Secret, which is never what an edit means.
        Ok(Value::Array(_) | Value::Null) => {
            errors.push(
                KEY,
                None,
                None,
                "at least one instance; the list is empty (or every item is commented out). To serve the Personal Edition instance of the cluster's region, remove the key or leave its value empty",
            );
            return Vec::new();
        }
        Ok(Value::Object(_)) => {
            errors.push(
                KEY,
                None,
                None,
                "a YAML list of instances (each item starting with `- `), got a single mapping",
            );
            return Vec::new();
        }
        Ok(_) => {
            errors.push(KEY, None, None, "a YAML list of instances");
            return Vec::new();
        }
        Err(e) => {
            errors.push(KEY, None, None, format!("a YAML list of instances ({e})"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            errors.push(
                KEY,
                Some(i),
                None,
                "a mapping with instanceId, regionId, domains, ...",
            );
            continue;
        };
        for k in map
            .keys()
            .filter(|k| !INSTANCE_FIELDS.contains(&k.as_str()))
        {
            warnings.push(format!("{KEY}[{i}]: unknown field {} is ignored", shown(k)));
        }
        let field = |name: &str| map.get(name).and_then(string);

        let edition = match field("instanceId") {
            None => Edition::Personal,
            Some(id) if is_instance_id(&id) => Edition::Enterprise { instance_id: id },
            Some(id) => {
                errors.push(KEY, Some(i), Some("instanceId"), format!("an Enterprise Edition instance id like cri-xxxxxxxx (empty for Personal Edition), got {}", shown(&id)));
                continue;
            }
        };
        let region = match (field("regionId"), cluster_region) {
            (Some(r), _) if is_region_id(&r) => r,
            (Some(r), _) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("regionId"),
                    format!("a region id like cn-hangzhou, got {}", shown(&r)),
                );
                continue;
            }
            (None, Some(r)) => r.to_owned(),
            (None, None) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("regionId"),
                    "a region id: none is given and the cluster region (--region) is unknown",
                );
                continue;
            }
        };
        let domains: Vec<String> = match map.get("domains") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::Array(list)) => list.iter().filter_map(string).collect(),
            Some(_) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("domains"),
                    "a comma-separated string or a YAML list of registry domains",
                );
                continue;
            }
        };
        let domains: Vec<String> = domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        if let Some(bad) = domains.iter().find(|d| !is_registry_domain(d)) {
            errors.push(
                KEY,
                Some(i),
                Some("domains"),
                format!(
                    "registry host names like xxx-registry.cn-hangzhou.cr.aliyuncs.com, got {}",
                    shown(bad)
                ),
            );
            continue;
        }

        let mut auth = InstanceAuth::default();
        match (field("customAccessKey"), field("customAccessKeySecret")) {
            (None, None) => {}
            (Some(id), Some(secret)) => {
                if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    errors.push(
                        KEY,
                        Some(i),
                        Some("customAccessKey"),
                        "an AccessKey ID (letters and digits)",
                    );
                    continue;
                }
                auth.custom_access_key = Some(AccessKey {
                    id,
                    secret: SecretString::from(secret),
                });
            }
            (Some(_), None) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("customAccessKeySecret"),
                    "the AccessKey secret that goes with customAccessKey (both or neither)",
                );
                continue;
            }
            (None, Some(_)) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("customAccessKey"),
                    "the AccessKey ID that goes with customAccessKeySecret (both or neither)",
                );
                continue;
            }
        }
        match (field("rrsaRoleARN"), field("rrsaOIDCProviderRoleARN")) {
            (None, None) => {}
            (Some(role), Some(provider)) => {
                if !is_role_arn(&role) {
                    errors.push(
                        KEY,
                        Some(i),
                        Some("rrsaRoleARN"),
                        format!(
                            "a role ARN like acs:ram::<account-id>:role/<name>, got {}",
                            shown(&role)
                        ),
                    );
                    continue;
                }
                if !is_oidc_provider_arn(&provider) {
                    errors.push(KEY, Some(i), Some("rrsaOIDCProviderRoleARN"), format!("an OIDC provider ARN like acs:ram::<account-id>:oidc-provider/<name>, got {}", shown(&provider)));
                    continue;
                }
                if rrsa_enabled {
                    auth.rrsa = Some(RrsaRole {
                        role_arn: role,
                        oidc_provider_arn: provider,
                    });
                } else {
                    warnings.push(format!("{KEY}[{i}]: rrsaRoleARN is set but `rrsa` is not enabled; the instance uses the cluster's identity"));
                }
            }
            (Some(_), None) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("rrsaOIDCProviderRoleARN"),
                    "the OIDC provider ARN that goes with rrsaRoleARN (both or neither)",
                );
                continue;
            }
            (None, Some(_)) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("rrsaRoleARN"),
                    "the role ARN that goes with rrsaOIDCProviderRoleARN (both or neither)",
                );
                continue;
            }
        }
        let expire = match map.get("expireDuration") {
            None | Some(Value::Null) => None,
            Some(v) => match integer(v) {
                Some(d @ 900..=43200) => u32::try_from(d).ok(),
                _ => {
                    errors.push(
                        KEY,
                        Some(i),
                        Some("expireDuration"),
                        "a whole number of seconds from 900 to 43200",
                    );
                    continue;
                }
            },
        };
        match field("assumeRoleARN") {
            None => {
                if expire.is_some() {
                    warnings.push(format!(
                        "{KEY}[{i}]: expireDuration without assumeRoleARN is ignored"
                    ));
                }
            }
            Some(arn) if is_role_arn(&arn) => {
                auth.assume_role = Some(AssumedRole {
                    role_arn: arn,
                    duration_seconds: expire.unwrap_or(DEFAULT_EXPIRE_DURATION),
                });
            }
            Some(arn) => {
                errors.push(
                    KEY,
                    Some(i),
                    Some("assumeRoleARN"),
                    format!(
                        "a role ARN like acs:ram::<account-id>:role/<name>, got {}",
                        shown(&arn)
                    ),
                );
                continue;
            }
        }
        let Some(scope) = scope::parse(map, i, errors) else {
            continue;
        };
        let instance = Instance {
            edition,
            region,
            domains,
            auth,
            scope,
        };
        if !seen.insert(instance.label()) {
            errors.push(
                KEY,
                Some(i),
                Some("instanceId"),
                format!("each instance once; {} is listed twice", instance.label()),
            );
            continue;
        }
        out.push(instance);
    }
    if out.len() > MAX_INSTANCES {
        errors.push(
            KEY,
            None,
            None,
            format!("at most {MAX_INSTANCES} instances, got {}", out.len()),
        );
    }
    out
}

/// The string data of a ConfigMap manifest, or of a bare mapping.
pub fn manifest_data(text: &str) -> Result<BTreeMap<String, String>, String> {
    let doc: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("not YAML: {}", e.to_string().lines().next().unwrap_or("")))?;
    let map = match &doc {
        serde_json::Value::Object(m)
            if m.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") =>
        {
            match m.get("data") {
                Some(serde_json::Value::Object(d)) => d.clone(),
                None | Some(serde_json::Value::Null) => serde_json::Map::new(),
                Some(_) => return Err("`data` is not a mapping".into()),
            }
        }
        serde_json::Value::Object(m) if m.contains_key("data") && !m.contains_key("kind") => {
            match m.get("data") {
                Some(serde_json::Value::Object(d)) => d.clone(),
                _ => return Err("`data` is not a mapping".into()),
            }
        }
        serde_json::Value::Object(m) if m.contains_key("kind") => {
            return Err(format!("kind {} is not a ConfigMap", m["kind"]));
        }
        serde_json::Value::Object(m) => m.clone(),
        _ => return Err("expected a ConfigMap manifest".into()),
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => Ok((k, v.to_string())),
            _ => Err(format!(
                "data.{k} is not a string (ConfigMap values are strings; quote it or use `|`)"
            )),
        })
        .collect()
}

/// The configuration of `pairs` (ConfigMap keys and values), for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn for_test(pairs: &[(&str, &str)]) -> Config {
    let data: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse(&data, Some("cn-hangzhou"))
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

#[cfg(test)]
mod tests;
