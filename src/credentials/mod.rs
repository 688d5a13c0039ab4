//! The credential chain of behaviour.md §3, and the registry-token cache built on it.
//!
//! Per instance, in order: the instance's own `customAccessKey` pair; else RRSA (AssumeRoleWithOIDC
//! with the token file, re-read on every call); else the cluster's base identity (`managedRole`:
//! ACK's addon token Secret; `workerRole`: the node's RAM role from ECS metadata). Then, if
//! `assumeRoleARN` is set, AssumeRole into it. Every credential and registry token is cached until
//! shortly before it expires and fetched single-flight, so N namespaces never cause N cloud calls.

pub mod cache;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};

use crate::aliyun::addon_token::{self, AddonTokenError};
use crate::aliyun::cr::{Cr, RegistryToken};
use crate::aliyun::metadata::Metadata;
use crate::aliyun::sts::{AssumeRole, AssumeRoleWithOidc, Sts};
use crate::aliyun::{CloudError, Credential};
use cache::Cache;

use crate::timing::credential_refresh_at;

/// `--token-mode`: how the cluster's own identity is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenMode {
    /// ACK's managed role, from the encrypted addon token Secret.
    #[value(name = "managedRole")]
    ManagedRole,
    /// The node's RAM role, from the ECS metadata service.
    #[value(name = "workerRole")]
    WorkerRole,
    /// workerRole for clusters created before 2023-04-03, managedRole after.
    #[value(name = "auto")]
    Auto,
}

/// The day from which ACK clusters use the managed role (2023-04-03, taken as 00:00 UTC).
pub const MANAGED_ROLE_SINCE: &str = "2023-04-03T00:00:00Z";

impl TokenMode {
    /// Resolves `auto` by the cluster's creation time (the creationTimestamp of kube-system).
    pub fn resolve(self, cluster_created: Option<Timestamp>) -> TokenMode {
        match self {
            TokenMode::Auto => {
                let cutoff: Timestamp = MANAGED_ROLE_SINCE.parse().unwrap_or(Timestamp::UNIX_EPOCH);
                match cluster_created {
                    Some(created) if created < cutoff => TokenMode::WorkerRole,
                    _ => TokenMode::ManagedRole,
                }
            }
            other => other,
        }
    }
}

/// A RAM user's AccessKey pair from the configuration.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl PartialEq for AccessKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.secret.expose_secret() == other.secret.expose_secret()
    }
}
impl Eq for AccessKey {}
impl Hash for AccessKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.secret.expose_secret().hash(state);
    }
}

/// An RRSA role: assumed with the pod's OIDC token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RrsaRole {
    pub role_arn: String,
    pub oidc_provider_arn: String,
}

/// A cross-account role assumed on top of the instance's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssumedRole {
    pub role_arn: String,
    pub duration_seconds: u32,
}

/// How one instance authenticates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct InstanceAuth {
    pub custom_access_key: Option<AccessKey>,
    /// Only set when `rrsa.enable` is true and both RRSA ARNs are given.
    pub rrsa: Option<RrsaRole>,
    pub assume_role: Option<AssumedRole>,
}

/// Where the credentials of the chain come from.
#[derive(Clone, PartialEq, Eq, Hash)]
enum CredKey {
    Base,
    /// `fingerprint` is a hash of the AccessKeySecret: `Debug` leaves it out.
    Custom {
        id: String,
        fingerprint: u64,
    },
    Rrsa(RrsaRole),
    Assumed(Box<CredKey>, AssumedRole),
}

impl std::fmt::Debug for CredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredKey::Base => f.write_str("Base"),
            CredKey::Custom { id, .. } => f
                .debug_struct("Custom")
                .field("id", id)
                .finish_non_exhaustive(),
            CredKey::Rrsa(role) => f.debug_tuple("Rrsa").field(role).finish(),
            CredKey::Assumed(key, role) => f.debug_tuple("Assumed").field(key).field(role).finish(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("managed role: {0}")]
    AddonToken(#[from] AddonTokenError),
    #[error("managed role: cannot read Secret {secret}: {detail}")]
    AddonSecret { secret: String, detail: String },
    #[error("RRSA: cannot read the OIDC token file {path}: {detail}")]
    OidcTokenFile { path: String, detail: String },
}

impl CredentialError {
    /// A stable category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            CredentialError::Cloud(e) => e.category(),
            CredentialError::AddonToken(_) | CredentialError::AddonSecret { .. } => "managed_role",
            CredentialError::OidcTokenFile { .. } => "rrsa_token",
        }
    }

    /// The cloud's error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CredentialError::Cloud(e) => e.code(),
            CredentialError::AddonToken(AddonTokenError::Reported { code, .. }) => Some(code),
            _ => None,
        }
    }
}

/// The cluster's base identity.
#[derive(Clone)]
pub enum BaseIdentity {
    /// ACK's managed role: the addon token Secret, re-read at least every `reread` (ACK rotates it
    /// before it expires).
    ManagedRole {
        secrets: kube::Api<Secret>,
        name: String,
        reread: Duration,
    },
    /// The node's RAM role.
    WorkerRole(Metadata),
}

impl std::fmt::Debug for BaseIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BaseIdentity::ManagedRole { name, .. } => write!(f, "ManagedRole({name})"),
            BaseIdentity::WorkerRole(_) => write!(f, "WorkerRole"),
        }
    }
}

/// The default path of the RRSA OIDC token.
pub const DEFAULT_OIDC_TOKEN_FILE: &str = "/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token";

/// The provider chain, with its cache. Share it (in an `Arc`) between everything that needs
/// credentials.
#[derive(Debug)]
pub struct Chain {
    base: BaseIdentity,
    sts: Sts,
    oidc_token_file: PathBuf,
    session_name: String,
    creds: Cache<CredKey, Credential, CredentialError>,
}

impl Chain {
    pub fn new(base: BaseIdentity, sts: Sts, oidc_token_file: PathBuf) -> Chain {
        Chain {
            base,
            sts,
            oidc_token_file,
            session_name: "aliyun-acr-credential-helper".to_owned(),
            creds: Cache::default(),
        }
    }

    /// The credentials to call Container Registry with for an instance; a cached one is used
    /// until `threshold` before it expires (see [`crate::timing`]).
    pub async fn credential(
        &self,
        auth: &InstanceAuth,
        threshold: Duration,
    ) -> Result<Credential, CredentialError> {
        let (key, source) = self.source(auth, threshold).await?;
        let Some(role) = &auth.assume_role else {
            return Ok(source);
        };
        let assumed_key = CredKey::Assumed(Box::new(key), role.clone());
        self.creds
            .get(&assumed_key, || async {
                let c = self
                    .sts
                    .assume_role(
                        &source,
                        &AssumeRole {
                            role_arn: &role.role_arn,
                            session_name: &self.session_name,
                            duration_seconds: role.duration_seconds,
                        },
                    )
                    .await?;
                tracing::info!(role = %role.role_arn, expires = ?c.expiration, "assumed role");
                let at = credential_refresh_at(Timestamp::now(), c.expiration, threshold, None);
                Ok((c, at))
            })
            .await
    }

    /// The instance's identity before any AssumeRole.
    async fn source(
        &self,
        auth: &InstanceAuth,
        threshold: Duration,
    ) -> Result<(CredKey, Credential), CredentialError> {
        if let Some(ak) = &auth.custom_access_key {
            let mut h = DefaultHasher::new();
            ak.secret.expose_secret().hash(&mut h);
            let key = CredKey::Custom {
                id: ak.id.clone(),
                fingerprint: h.finish(),
            };
            let c = Credential {
                access_key_id: ak.id.clone(),
                access_key_secret: ak.secret.clone(),
                security_token: None,
                expiration: None,
            };
            return Ok((key, c));
        }
        if let Some(rrsa) = &auth.rrsa {
            let key = CredKey::Rrsa(rrsa.clone());
            let c = self
                .creds
                .get(&key, || async {
                    let token = self.read_oidc_token().await?;
                    let c = self
                        .sts
                        .assume_role_with_oidc(&AssumeRoleWithOidc {
                            role_arn: &rrsa.role_arn,
                            oidc_provider_arn: &rrsa.oidc_provider_arn,
                            oidc_token: &token,
                            session_name: &self.session_name,
                            duration_seconds: 3600,
                        })
                        .await?;
                    tracing::info!(role = %rrsa.role_arn, expires = ?c.expiration, "assumed RRSA role");
                    let at = credential_refresh_at(Timestamp::now(), c.expiration, threshold, None);
                    Ok((c, at))
                })
                .await?;
            return Ok((key, c));
        }
        let c = self
            .creds
            .get(&CredKey::Base, || async {
                let (c, reread) = self.fetch_base().await?;
                let at = credential_refresh_at(Timestamp::now(), c.expiration, threshold, reread);
                Ok((c, at))
            })
            .await?;
        Ok((CredKey::Base, c))
    }

    async fn read_oidc_token(&self) -> Result<SecretString, CredentialError> {
        let path = &self.oidc_token_file;
        let err = |detail: String| CredentialError::OidcTokenFile {
            path: path.display().to_string(),
            detail,
        };
        let token = tokio::fs::read_to_string(path).await.map_err(|e| {
            // `rrsa: enable: true` in the ConfigMap alone (as ACK's RRSA steps do) mounts no
            // token: say what does.
            if e.kind() == std::io::ErrorKind::NotFound {
                err("no such file: no projected ServiceAccount token is mounted there. With the chart, set rrsa.enabled=true (helm upgrade --reuse-values --set rrsa.enabled=true), which mounts one with audience sts.aliyuncs.com; elsewhere, mount one at --oidc-token-file".to_owned())
            } else {
                err(e.kind().to_string())
            }
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(err("the file is empty".to_owned()));
        }
        Ok(SecretString::from(token.to_owned()))
    }

    async fn fetch_base(&self) -> Result<(Credential, Option<Duration>), CredentialError> {
        match &self.base {
            BaseIdentity::WorkerRole(md) => {
                let c = md.role_credentials().await?;
                tracing::info!(expires = ?c.expiration, "obtained worker role credentials");
                Ok((c, None))
            }
            BaseIdentity::ManagedRole {
                secrets,
                name,
                reread,
            } => {
                let qualified = format!("{}/{name}", secrets.namespace().unwrap_or("kube-system"));
                let secret = secrets
                    .get_opt(name)
                    .await
                    .map_err(|e| CredentialError::AddonSecret {
                        secret: qualified.clone(),
                        detail: e.to_string(),
                    })?
                    .ok_or_else(|| CredentialError::AddonSecret {
                        secret: qualified.clone(),
                        detail: "not found (is the managed role authorized for this cluster?)"
                            .to_owned(),
                    })?;
                let data = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(addon_token::CONFIG_KEY))
                    .ok_or_else(|| CredentialError::AddonSecret {
                        secret: qualified.clone(),
                        detail: format!("has no key {}", addon_token::CONFIG_KEY),
                    })?;
                let c = addon_token::parse(&data.0)?;
                if c.expiration.is_some_and(|e| e <= Timestamp::now()) {
                    return Err(CredentialError::AddonSecret {
                        secret: qualified,
                        detail: "holds expired credentials (ACK has not rotated it)".to_owned(),
                    });
                }
                tracing::info!(expires = ?c.expiration, "read managed role credentials");
                Ok((c, Some(*reread)))
            }
        }
    }
}

/// Which registry an instance is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Edition {
    Enterprise { instance_id: String },
    Personal,
}

/// An instance as the token cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    pub edition: Edition,
    pub region: String,
    pub auth: InstanceAuth,
}

/// A registry login and how long it can be used: until the earlier of the token's and the
/// underlying STS credential's expiry.
#[derive(Debug, Clone)]
pub struct UsableToken {
    pub token: RegistryToken,
    pub usable_until: Timestamp,
}

/// Registry tokens per instance, over a shared [`Chain`].
#[derive(Debug)]
pub struct Registry {
    chain: Arc<Chain>,
    cr: Cr,
}

impl Registry {
    pub fn new(chain: Arc<Chain>, cr: Cr) -> Registry {
        Registry { chain, cr }
    }

    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// A new registry login for the instance (the credentials behind it come from the chain's
    /// caches, refreshed under `threshold`). Tokens are not cached here: the refresher holds
    /// each instance's login and [`crate::timing`] says when it is fetched again.
    pub async fn fetch_token(
        &self,
        inst: &InstanceRef,
        threshold: Duration,
    ) -> Result<UsableToken, CredentialError> {
        let cred = self.chain.credential(&inst.auth, threshold).await?;
        let token = match &inst.edition {
            Edition::Enterprise { instance_id } => {
                self.cr
                    .enterprise_token(&cred, &inst.region, instance_id)
                    .await?
            }
            Edition::Personal => self.cr.personal_token(&cred, &inst.region).await?,
        };
        let usable_until = match cred.expiration {
            Some(c) => token.expires_at.min(c),
            None => token.expires_at,
        };
        tracing::info!(instance = ?inst.edition, region = %inst.region, %usable_until, "obtained registry token");
        Ok(UsableToken {
            token,
            usable_until,
        })
    }

    /// The registry domains of an Enterprise instance's enabled endpoints.
    pub async fn enterprise_domains(
        &self,
        auth: &InstanceAuth,
        region: &str,
        instance_id: &str,
        threshold: Duration,
    ) -> Result<Vec<String>, CredentialError> {
        let cred = self.chain.credential(auth, threshold).await?;
        let eps = self
            .cr
            .list_instance_endpoints(&cred, region, instance_id)
            .await?;
        Ok(crate::aliyun::cr::enabled_domains(&eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_follows_the_cluster_creation_date() {
        let ts = |s: &str| s.parse::<Timestamp>().ok();
        assert_eq!(
            TokenMode::Auto.resolve(ts("2023-04-02T23:59:59Z")),
            TokenMode::WorkerRole
        );
        assert_eq!(
            TokenMode::Auto.resolve(ts("2023-04-03T00:00:00Z")),
            TokenMode::ManagedRole
        );
        assert_eq!(TokenMode::Auto.resolve(None), TokenMode::ManagedRole);
        assert_eq!(
            TokenMode::WorkerRole.resolve(ts("2030-01-01T00:00:00Z")),
            TokenMode::WorkerRole
        );
    }

    #[test]
    fn access_keys_debug_without_their_secret() {
        let ak = AccessKey {
            id: "LTAI5tX".into(),
            secret: SecretString::from("the-secret"),
        };
        let text = format!("{ak:?}");
        assert!(
            text.contains("LTAI5tX") && !text.contains("the-secret"),
            "{text}"
        );
    }
}
