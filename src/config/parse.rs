//! The ConfigMap's `data` → a validated [`Config`], or every reason it cannot be used (each
//! naming its key, item and field). Each key is read by one function here; the instance list by
//! [`super::instances`], the scoping fields by [`super::scope`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::validate::{is_dns_label, is_dns_subdomain};
use super::*;
use crate::credentials::{Edition, InstanceAuth};
use crate::duration::parse_duration;

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

pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(
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
pub(super) fn shown(value: &str) -> String {
    let short: String = value.chars().take(80).collect();
    if short.len() < value.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// The keys of the ConfigMap this version reads.
const KNOWN_KEYS: [&str; 10] = [
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
];

/// Parses the ConfigMap's `data`. `cluster_region` is the default region of instances.
pub fn parse(
    data: &BTreeMap<String, String>,
    cluster_region: Option<&str>,
) -> Result<Parsed, ConfigErrors> {
    let mut errors = Errors(Vec::new());
    let mut warnings = Vec::new();
    let get = |k: &str| data.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

    for key in data.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) && !LEGACY_KEYS.contains(&key.as_str()) {
            warnings.push(format!("unknown key {} is ignored", shown(key)));
        }
    }
    let namespace_selector = namespace_selector(get(KEY_NAMESPACE_SELECTOR), &mut errors);
    let exclude_namespaces = exclude_namespaces(get(KEY_EXCLUDE_NAMESPACES), &mut errors);
    let namespaces = namespaces(
        get(KEY_WATCH_NAMESPACE),
        namespace_selector.is_some(),
        &mut errors,
        &mut warnings,
    );
    let service_accounts = selection(
        get(KEY_SERVICE_ACCOUNT),
        "*",
        KEY_SERVICE_ACCOUNT,
        is_dns_subdomain,
        "a ServiceAccount name (a DNS-1123 subdomain)",
        &mut errors,
    );
    let patch_service_accounts = flag(
        KEY_PATCH_SERVICE_ACCOUNTS,
        get(KEY_PATCH_SERVICE_ACCOUNTS),
        &mut errors,
    );
    let namespace_opt_in = flag(KEY_NAMESPACE_OPT_IN, get(KEY_NAMESPACE_OPT_IN), &mut errors);
    let expiring_threshold = expiring_threshold(get(KEY_EXPIRING_THRESHOLD), &mut errors);
    let rrsa_enabled = rrsa_enabled(get(KEY_RRSA), &mut errors, &mut warnings);
    let webhook = match get(KEY_WEBHOOK) {
        None => WebhookConfig::default(),
        Some(v) => webhook_config(v, &mut errors, &mut warnings),
    };
    let instances = match get(KEY_REGISTRY_INFO) {
        None => default_instances(cluster_region, &mut errors),
        Some(v) => {
            super::instances::parse(v, cluster_region, rrsa_enabled, &mut errors, &mut warnings)
        }
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

/// `namespace-selector`: a label selector.
fn namespace_selector(value: Option<&str>, errors: &mut Errors) -> Option<LabelSelector> {
    match selector::parse(value?) {
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
    }
}

/// `exclude-namespaces`: namespace names, comma-separated.
fn exclude_namespaces(value: Option<&str>, errors: &mut Errors) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, item) in value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, item)| !item.is_empty())
    {
        if is_dns_label(item) {
            names.insert(item.to_owned());
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
    names
}

/// `watch-namespace`. With a selector and no `watch-namespace`, the selector alone decides (the
/// `default` namespace is not added behind the operator's back).
fn namespaces(
    watch: Option<&str>,
    has_selector: bool,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Selection {
    if watch.is_none() && has_selector {
        return Selection::Names(BTreeSet::new());
    }
    let namespaces = selection(
        watch,
        "all",
        KEY_WATCH_NAMESPACE,
        is_dns_label,
        "a namespace name (a DNS-1123 label)",
        errors,
    );
    if namespaces == Selection::All && has_selector {
        warnings.push(format!(
            "{KEY_NAMESPACE_SELECTOR} adds nothing: {KEY_WATCH_NAMESPACE} is all"
        ));
    }
    namespaces
}

/// A `true`/`false` key; true when absent.
fn flag(key: &'static str, value: Option<&str>, errors: &mut Errors) -> bool {
    match value {
        None => true,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            errors.push(key, None, None, format!("true or false, got {}", shown(v)));
            true
        }
    }
}

/// `expiring-threshold`: a positive duration.
fn expiring_threshold(value: Option<&str>, errors: &mut Errors) -> Duration {
    let Some(v) = value else {
        return DEFAULT_THRESHOLD;
    };
    match parse_duration(v) {
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
    }
}

/// `rrsa`: YAML `enable: true|false`.
fn rrsa_enabled(value: Option<&str>, errors: &mut Errors, warnings: &mut Vec<String>) -> bool {
    let Some(v) = value else {
        return false;
    };
    match yaml_mapping(v) {
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
    }
}

/// No `acr-registry-info`: the Personal Edition instance of the cluster's region.
fn default_instances(cluster_region: Option<&str>, errors: &mut Errors) -> Vec<Instance> {
    match cluster_region {
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
    }
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

/// Parses YAML into a JSON value tree.
pub(super) fn yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        // The first line of the parser's message names the problem and its position.
        e.to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_owned()
    })
}

pub(super) fn yaml_mapping(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match yaml(text)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(serde_json::Map::new()),
        _ => Err("not a mapping".to_owned()),
    }
}

pub(super) fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

pub(super) fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string field: strings as they are (trimmed), numbers as written; `null` is absent.
pub(super) fn string(v: &Value) -> Option<String> {
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
