//! `acr-registry-info`: the list of instances, each item → an [`Instance`] or the one field that
//! makes it unusable. Each field is read by one function that either gives its value or refuses
//! the item, naming the field and what was expected.

use std::collections::BTreeSet;

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::parse::{Errors, integer, shown, string, yaml};
use super::validate::{is_instance_id, is_oidc_provider_arn, is_registry_domain, is_role_arn};
use super::{DEFAULT_EXPIRE_DURATION, Instance, KEY_REGISTRY_INFO, MAX_INSTANCES, scope};
use crate::aliyun::is_region_id;
use crate::credentials::{AccessKey, AssumedRole, Edition, InstanceAuth, RrsaRole};

const KEY: &str = KEY_REGISTRY_INFO;

/// The fields an item may have; any other is warned about and ignored.
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

/// Why an item is not used: the field, and what was expected of it.
struct Refused(&'static str, String);

fn refuse<T>(field: &'static str, expected: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(field, expected.into()))
}

/// What an item is read with.
struct Item<'a> {
    index: usize,
    map: &'a Map<String, Value>,
    cluster_region: Option<&'a str>,
    rrsa_enabled: bool,
}

impl Item<'_> {
    fn field(&self, name: &str) -> Option<String> {
        self.map.get(name).and_then(string)
    }
}

/// The instances `text` lists. Refused items are reported in `errors` and left out.
pub(super) fn parse(
    text: &str,
    cluster_region: Option<&str>,
    rrsa_enabled: bool,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Vec<Instance> {
    let items = match list(text) {
        Ok(items) => items,
        Err(expected) => {
            errors.push(KEY, None, None, expected);
            return Vec::new();
        }
    };
    let mut out: Vec<Instance> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, value) in items.iter().enumerate() {
        let Value::Object(map) = value else {
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
        let item = Item {
            index: i,
            map,
            cluster_region,
            rrsa_enabled,
        };
        let (edition, region, domains, auth) = match identity(&item, warnings) {
            Ok(v) => v,
            Err(Refused(field, expected)) => {
                errors.push(KEY, Some(i), Some(field), expected);
                continue;
            }
        };
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

/// The items of the list, or what was expected instead.
fn list(text: &str) -> Result<Vec<Value>, String> {
    match yaml(text) {
        Ok(Value::Array(items)) if !items.is_empty() => Ok(items),
        // `[]`, or items that are all commented out: an explicit "no registries" would empty every
        // pull Secret, which is never what an edit means.
        Ok(Value::Array(_) | Value::Null) => Err("at least one instance; the list is empty (or every item is commented out). To serve the Personal Edition instance of the cluster's region, remove the key or leave its value empty".to_owned()),
        Ok(Value::Object(_)) => Err(
            "a YAML list of instances (each item starting with `- `), got a single mapping"
                .to_owned(),
        ),
        Ok(_) => Err("a YAML list of instances".to_owned()),
        Err(e) => Err(format!("a YAML list of instances ({e})")),
    }
}

/// Which registry the item is, where, and with what identity.
fn identity(
    item: &Item<'_>,
    warnings: &mut Vec<String>,
) -> Result<(Edition, String, Vec<String>, InstanceAuth), Refused> {
    let edition = edition(item)?;
    let region = region(item)?;
    let domains = domains(item)?;
    let auth = InstanceAuth {
        custom_access_key: custom_access_key(item)?,
        rrsa: rrsa(item, warnings)?,
        assume_role: assume_role(item, warnings)?,
    };
    Ok((edition, region, domains, auth))
}

/// `instanceId`: an Enterprise Edition instance, or none for the Personal Edition.
fn edition(item: &Item<'_>) -> Result<Edition, Refused> {
    match item.field("instanceId") {
        None => Ok(Edition::Personal),
        Some(id) if is_instance_id(&id) => Ok(Edition::Enterprise { instance_id: id }),
        Some(id) => refuse(
            "instanceId",
            format!(
                "an Enterprise Edition instance id like cri-xxxxxxxx (empty for Personal Edition), got {}",
                shown(&id)
            ),
        ),
    }
}

/// `regionId`, else the cluster's region.
fn region(item: &Item<'_>) -> Result<String, Refused> {
    match (item.field("regionId"), item.cluster_region) {
        (Some(r), _) if is_region_id(&r) => Ok(r),
        (Some(r), _) => refuse(
            "regionId",
            format!("a region id like cn-hangzhou, got {}", shown(&r)),
        ),
        (None, Some(r)) => Ok(r.to_owned()),
        (None, None) => refuse(
            "regionId",
            "a region id: none is given and the cluster region (--region) is unknown",
        ),
    }
}

/// `domains`: a comma-separated string or a list of registry host names, lower-cased.
fn domains(item: &Item<'_>) -> Result<Vec<String>, Refused> {
    let domains: Vec<String> = match item.map.get("domains") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(list)) => list.iter().filter_map(string).collect(),
        Some(_) => {
            return refuse(
                "domains",
                "a comma-separated string or a YAML list of registry domains",
            );
        }
    };
    let domains: Vec<String> = domains
        .into_iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    if let Some(bad) = domains.iter().find(|d| !is_registry_domain(d)) {
        return refuse(
            "domains",
            format!(
                "registry host names like xxx-registry.cn-hangzhou.cr.aliyuncs.com, got {}",
                shown(bad)
            ),
        );
    }
    Ok(domains)
}

/// `customAccessKey` and `customAccessKeySecret`: both or neither.
fn custom_access_key(item: &Item<'_>) -> Result<Option<AccessKey>, Refused> {
    match (
        item.field("customAccessKey"),
        item.field("customAccessKeySecret"),
    ) {
        (None, None) => Ok(None),
        (Some(id), Some(_)) if !id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            refuse("customAccessKey", "an AccessKey ID (letters and digits)")
        }
        (Some(id), Some(secret)) => Ok(Some(AccessKey {
            id,
            secret: SecretString::from(secret),
        })),
        (Some(_), None) => refuse(
            "customAccessKeySecret",
            "the AccessKey secret that goes with customAccessKey (both or neither)",
        ),
        (None, Some(_)) => refuse(
            "customAccessKey",
            "the AccessKey ID that goes with customAccessKeySecret (both or neither)",
        ),
    }
}

/// `rrsaRoleARN` and `rrsaOIDCProviderRoleARN`: both or neither; used only with `rrsa` enabled.
fn rrsa(item: &Item<'_>, warnings: &mut Vec<String>) -> Result<Option<RrsaRole>, Refused> {
    match (
        item.field("rrsaRoleARN"),
        item.field("rrsaOIDCProviderRoleARN"),
    ) {
        (None, None) => Ok(None),
        (Some(role), Some(_)) if !is_role_arn(&role) => refuse(
            "rrsaRoleARN",
            format!(
                "a role ARN like acs:ram::<account-id>:role/<name>, got {}",
                shown(&role)
            ),
        ),
        (Some(_), Some(provider)) if !is_oidc_provider_arn(&provider) => refuse(
            "rrsaOIDCProviderRoleARN",
            format!(
                "an OIDC provider ARN like acs:ram::<account-id>:oidc-provider/<name>, got {}",
                shown(&provider)
            ),
        ),
        (Some(role), Some(provider)) => {
            if item.rrsa_enabled {
                Ok(Some(RrsaRole {
                    role_arn: role,
                    oidc_provider_arn: provider,
                }))
            } else {
                warnings.push(format!("{KEY}[{}]: rrsaRoleARN is set but `rrsa` is not enabled; the instance uses the cluster's identity", item.index));
                Ok(None)
            }
        }
        (Some(_), None) => refuse(
            "rrsaOIDCProviderRoleARN",
            "the OIDC provider ARN that goes with rrsaRoleARN (both or neither)",
        ),
        (None, Some(_)) => refuse(
            "rrsaRoleARN",
            "the role ARN that goes with rrsaOIDCProviderRoleARN (both or neither)",
        ),
    }
}

/// `assumeRoleARN`, with `expireDuration` (seconds, 900 to 43200) as its session's length.
fn assume_role(
    item: &Item<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<AssumedRole>, Refused> {
    let expire = match item.map.get("expireDuration") {
        None | Some(Value::Null) => None,
        Some(v) => match integer(v) {
            Some(d @ 900..=43200) => u32::try_from(d).ok(),
            _ => {
                return refuse(
                    "expireDuration",
                    "a whole number of seconds from 900 to 43200",
                );
            }
        },
    };
    match item.field("assumeRoleARN") {
        None => {
            if expire.is_some() {
                warnings.push(format!(
                    "{KEY}[{}]: expireDuration without assumeRoleARN is ignored",
                    item.index
                ));
            }
            Ok(None)
        }
        Some(arn) if is_role_arn(&arn) => Ok(Some(AssumedRole {
            role_arn: arn,
            duration_seconds: expire.unwrap_or(DEFAULT_EXPIRE_DURATION),
        })),
        Some(arn) => refuse(
            "assumeRoleARN",
            format!(
                "a role ARN like acs:ram::<account-id>:role/<name>, got {}",
                shown(&arn)
            ),
        ),
    }
}
