//! The kubelet image credential provider (`credential-provider`, beyond the original): the kubelet
//! runs the binary for an image, writes a `CredentialProviderRequest`
//! (`credentialprovider.kubelet.k8s.io/v1`) on its stdin and reads a `CredentialProviderResponse`
//! from its stdout. No Secret, no ServiceAccount patch: the node (or, with KEP-4412, the Pod's own
//! ServiceAccount through RRSA) obtains a registry login itself.
//!
//! The decisions ([`route`], [`role_arn`], [`cache_duration`], the wire types in [`api`]) are pure;
//! [`run`] does the I/O: stdin, the cloud, stdout.

pub mod api;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::SecretString;

use crate::aliyun::cr::Cr;
use crate::aliyun::is_region_id;
use crate::aliyun::metadata::Metadata;
use crate::aliyun::sts::{AssumeRole, AssumeRoleWithOidc, Sts};
use crate::aliyun::{CloudError, Credential};

/// ACK's RRSA annotation on a ServiceAccount: the RAM role (a name, or a whole ARN) its Pods act
/// as. The default of `--role-annotation`.
pub const ROLE_ANNOTATION: &str = "pod-identity.alibabacloud.com/role-name";
/// What a kubelet plugin's RRSA token is issued for.
pub const STS_AUDIENCE: &str = "sts.aliyuncs.com";
/// The session name of every role the plugin assumes (shows in ActionTrail).
pub const SESSION_NAME: &str = "acr-credential-provider";
/// How long an unmatched image's empty answer is cached.
pub const UNMATCHED_CACHE: Duration = Duration::from_secs(3600);
/// The longest a login is cached.
pub const MAX_CACHE: Duration = Duration::from_secs(12 * 3600);
/// The shortest, unless the login has less than twice this left.
pub const MIN_CACHE: Duration = Duration::from_secs(60);

/// What the plugin is configured with (its `args` / `env` in the `CredentialProviderConfig`).
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// Registry host -> Enterprise instance (and its region, when the host does not say).
    pub instances: BTreeMap<String, (String, Option<String>)>,
    /// The region of hosts that do not name one (custom domains).
    pub region: Option<String>,
    /// The OIDC provider ARN of the cluster (RRSA); needed with a ServiceAccount token.
    pub oidc_provider_arn: Option<String>,
    /// The ServiceAccount annotation naming the role (default [`ROLE_ANNOTATION`]).
    pub role_annotation: String,
    /// A role assumed on top of whatever identity was obtained (cross-account).
    pub assume_role_arn: Option<String>,
    pub duration_seconds: u32,
}

/// Why the plugin could not answer. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("request: {0}")]
    Request(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Cloud(#[from] CloudError),
}

/// Where an image's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Enterprise {
        host: String,
        instance_id: String,
        region: String,
    },
    Personal {
        host: String,
        region: String,
    },
    /// Not an ACR registry this plugin knows: an empty answer.
    Unmatched {
        host: String,
    },
}

/// The registry host of an image reference (`host[:port]/path[:tag][@digest]`); images without
/// one are Docker Hub's.
pub fn image_host(image: &str) -> String {
    let image = image
        .strip_prefix("https://")
        .or_else(|| image.strip_prefix("http://"))
        .unwrap_or(image);
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".to_owned(),
    }
}

/// The region of a Personal Edition host `registry[-vpc|-intl|-intl-vpc].<region>.aliyuncs.com`.
pub fn personal_region(host: &str) -> Option<String> {
    let rest = host.strip_suffix(".aliyuncs.com")?;
    let (prefix, region) = rest.split_once('.')?;
    let known = [
        "registry",
        "registry-vpc",
        "registry-intl",
        "registry-intl-vpc",
    ];
    (known.contains(&prefix) && is_region_id(region)).then(|| region.to_owned())
}

/// The region an Enterprise host names: `<name>-registry[-vpc].<region>.cr.aliyuncs.com`.
fn enterprise_region(host: &str) -> Option<String> {
    let rest = host.strip_suffix(".cr.aliyuncs.com")?;
    let (_, region) = rest.rsplit_once('.')?;
    is_region_id(region).then(|| region.to_owned())
}

/// Which instance answers for `image`.
pub fn route(image: &str, cfg: &ProviderConfig) -> Result<Route, ProviderError> {
    let host = image_host(image);
    let bare = host.split(':').next().unwrap_or_default().to_owned();
    if let Some((instance_id, region)) = cfg.instances.get(&bare).or(cfg.instances.get(&host)) {
        let region = region
            .clone()
            .or_else(|| enterprise_region(&bare))
            .or_else(|| cfg.region.clone())
            .ok_or_else(|| {
                ProviderError::Config(format!(
                    "--instance {bare}={instance_id} names no region, the host does not either, and no --region is given"
                ))
            })?;
        return Ok(Route::Enterprise {
            host,
            instance_id: instance_id.clone(),
            region,
        });
    }
    if let Some(region) = personal_region(&bare) {
        return Ok(Route::Personal { host, region });
    }
    Ok(Route::Unmatched { host })
}

/// The role a Pod's ServiceAccount names in `annotation` (a name, or a whole ARN), as an ARN in
/// the account of the OIDC provider.
pub fn role_arn(
    annotations: &BTreeMap<String, String>,
    annotation: &str,
    oidc_provider_arn: &str,
) -> Result<String, ProviderError> {
    let value = annotations
        .get(annotation)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ProviderError::Request(format!(
                "the ServiceAccount has no {annotation} annotation (the RAM role its Pods pull as)"
            ))
        })?;
    if value.starts_with("acs:ram::") {
        return Ok(value.to_owned());
    }
    let account = oidc_provider_arn
        .strip_prefix("acs:ram::")
        .and_then(|r| r.split_once(':'))
        .map(|(account, _)| account)
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ProviderError::Config(format!(
                "--oidc-provider-arn {oidc_provider_arn:?} is not acs:ram::<account>:oidc-provider/<name>"
            ))
        })?;
    Ok(format!("acs:ram::{account}:role/{value}"))
}

/// What a cached login must still have left when the cache ends.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// How long the kubelet may keep a login that works until `expires`: half of what is left, at
/// most [`MAX_CACHE`]; at least [`MIN_CACHE`] when that still ends [`EXPIRY_MARGIN`] before the
/// expiry (so a short-lived login is not asked for on every pull), never past it.
pub fn cache_duration(now: Timestamp, expires: Timestamp) -> Duration {
    let left = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
    let floor = MIN_CACHE.min(left.saturating_sub(EXPIRY_MARGIN));
    (left / 2).max(floor).min(MAX_CACHE)
}

/// Go's `time.Duration` text (what `metav1.Duration` parses): `1h2m3s`, `45s`, `0s`.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m{sec}s"),
        _ => format!("{h}h{m}m{sec}s"),
    }
}

/// How the plugin authenticates when no ServiceAccount token comes with the request.
pub enum NodeIdentity {
    AccessKey(Credential),
    Metadata(Metadata),
}

/// The cloud clients.
pub struct Clients {
    pub sts: Sts,
    pub cr: Cr,
    pub node: NodeIdentity,
}

/// Answers one request: its identity, the registry login, the response.
pub async fn answer(
    request: &api::Request,
    cfg: &ProviderConfig,
    clients: &Clients,
) -> Result<api::Response, ProviderError> {
    // The instance to ask: an Enterprise instance id (and region), or the Personal Edition of a
    // region (`None`).
    let (host, instance, region) = match route(&request.image, cfg)? {
        Route::Unmatched { host } => {
            tracing::debug!(%host, "not an ACR registry this plugin serves");
            return Ok(api::Response::empty(UNMATCHED_CACHE));
        }
        Route::Enterprise {
            host,
            instance_id,
            region,
        } => (host, Some(instance_id), region),
        Route::Personal { host, region } => (host, None, region),
    };
    let identity = match &request.service_account_token {
        Some(token) => {
            let provider = cfg.oidc_provider_arn.as_deref().ok_or_else(|| {
                ProviderError::Config(
                    "a ServiceAccount token came but no --oidc-provider-arn is configured".into(),
                )
            })?;
            let role = role_arn(
                &request.service_account_annotations,
                &cfg.role_annotation,
                provider,
            )?;
            clients
                .sts
                .assume_role_with_oidc(&AssumeRoleWithOidc {
                    role_arn: &role,
                    oidc_provider_arn: provider,
                    oidc_token: token,
                    session_name: SESSION_NAME,
                    duration_seconds: cfg.duration_seconds,
                })
                .await?
        }
        None => match &clients.node {
            NodeIdentity::AccessKey(c) => c.clone(),
            NodeIdentity::Metadata(m) => m.role_credentials().await?,
        },
    };
    let identity = match &cfg.assume_role_arn {
        Some(role) => {
            clients
                .sts
                .assume_role(
                    &identity,
                    &AssumeRole {
                        role_arn: role,
                        session_name: SESSION_NAME,
                        duration_seconds: cfg.duration_seconds,
                    },
                )
                .await?
        }
        None => identity,
    };
    let token = match &instance {
        Some(id) => clients.cr.enterprise_token(&identity, &region, id).await?,
        None => clients.cr.personal_token(&identity, &region).await?,
    };
    let expires = match identity.expiration {
        Some(c) => token.expires_at.min(c),
        None => token.expires_at,
    };
    let cache = cache_duration(Timestamp::now(), expires);
    tracing::info!(%host, expires_at = %expires, cache_s = cache.as_secs(), "registry login obtained");
    Ok(api::Response::login(
        &host,
        token.username,
        token.password,
        cache,
    ))
}

/// Reads an AccessKey file: JSON `{"AccessKeyId": "...", "AccessKeySecret": "..."}` (the
/// `alibabacloud-credentials` profile field names; camelCase is accepted too).
pub fn parse_access_key_file(text: &str) -> Result<Credential, ProviderError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(alias = "accessKeyId", alias = "access_key_id")]
        #[serde(rename = "AccessKeyId")]
        id: String,
        #[serde(alias = "accessKeySecret", alias = "access_key_secret")]
        #[serde(rename = "AccessKeySecret")]
        secret: SecretString,
    }
    let f: File = serde_json::from_str(text).map_err(|e| {
        ProviderError::Config(format!(
            "--access-key-file: expected JSON with AccessKeyId and AccessKeySecret (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(Credential {
        access_key_id: f.id,
        access_key_secret: f.secret,
        security_token: None,
        expiration: None,
    })
}

#[cfg(test)]
mod tests;
