//! Writes to the API server: idempotent, conflict-safe (every write carries a resourceVersion or
//! uid precondition; a 409 makes it read the object again and decide again), never sent when
//! nothing would change, and never sent by a replica that is not (or no longer) the leader.
//! Each returns what the server answered, so the index learns of our own writes at once and
//! their watch events make no work.

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;

use super::Error;
use crate::index::{SaState, SecretState};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::render::{
    DOCKER_CONFIG_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretContent, desired_pull_secrets,
    is_managed,
};

/// The field manager of every write (stable: GitOps tools are told to ignore it, see the README).
pub const FIELD_MANAGER: &str = "aliyun-acr-credential-helper";

/// Attempts before a write that keeps conflicting is given up (and retried later).
const MAX_CONFLICTS: usize = 5;

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn kube_err(
    action: &'static str,
    kind: &'static str,
    ns: &str,
    name: &str,
    e: kube::Error,
) -> Error {
    Error::Kube {
        action,
        kind,
        object: format!("{ns}/{name}"),
        source: Box::new(e),
    }
}

/// What a write to the Secret did.
#[derive(Debug)]
pub enum SecretWrite {
    Unchanged,
    Written(Box<Secret>),
}

/// Writes to the cluster on behalf of the leader.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    leadership: Leadership,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(client: Client, leadership: Leadership, metrics: Arc<Metrics>) -> Writer {
        Writer {
            client,
            leadership,
            metrics,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Every write asks first: a replica whose leadership ran out writes nothing.
    fn guard(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    fn post() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        }
    }

    fn patch_params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    /// Makes Secret `ns/name` hold `content`, starting from what the index knows of it.
    pub async fn ensure_secret(
        &self,
        ns: &str,
        name: &str,
        content: &SecretContent,
        known: Option<&SecretState>,
    ) -> Result<SecretWrite, Error> {
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        let mut current: Option<(String, bool)> =
            known.map(|s| (s.resource_version.clone(), s.managed));
        for _ in 0..MAX_CONFLICTS {
            self.guard()?;
            let result = match &current {
                None => {
                    let created = api.create(&Self::post(), &content.secret(name, ns)).await;
                    if created.is_ok() {
                        self.metrics.write("secret_create");
                        tracing::info!(namespace = ns, secret = name, expires_at = %content.expires_at, "created pull Secret");
                    }
                    created
                }
                Some((_, false)) => {
                    return Err(Error::ForeignSecret {
                        object: format!("{ns}/{name}"),
                    });
                }
                Some((rv, true)) => {
                    // A strategic merge patch keeps labels and annotations others added, and
                    // replaces `data` whole, so nothing but our key stays in it.
                    let data =
                        base64::engine::general_purpose::STANDARD.encode(&content.dockerconfigjson);
                    let patch = json!({
                        "metadata": {
                            "resourceVersion": rv,
                            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
                            "annotations": content.annotations(),
                        },
                        "data": {"$patch": "replace", DOCKER_CONFIG_KEY: data},
                    });
                    let patched = api
                        .patch(name, &Self::patch_params(), &Patch::Strategic(&patch))
                        .await;
                    if patched.is_ok() {
                        self.metrics.write("secret_update");
                        tracing::info!(namespace = ns, secret = name, expires_at = %content.expires_at, "updated pull Secret");
                    }
                    patched
                }
            };
            match result {
                Ok(s) => return Ok(SecretWrite::Written(Box::new(s))),
                // Someone changed, created or deleted it meanwhile: read again, decide again.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    let fresh = api
                        .get_opt(name)
                        .await
                        .map_err(|e| kube_err("get", "Secret", ns, name, e))?;
                    match fresh {
                        Some(s) if is_managed(&s.metadata) && content.matches(&s) => {
                            return Ok(SecretWrite::Written(Box::new(s)));
                        }
                        Some(s) => {
                            let managed = is_managed(&s.metadata);
                            current =
                                Some((s.metadata.resource_version.unwrap_or_default(), managed));
                        }
                        None => current = None,
                    }
                }
                Err(e) => return Err(kube_err("write", "Secret", ns, name, e)),
            }
        }
        Err(Error::Conflicts {
            object: format!("Secret {ns}/{name}"),
        })
    }

    /// Adds (`want`) or removes our reference on ServiceAccount `ns/name`, keeping every other
    /// entry in order. Returns the ServiceAccount as patched, or `None` when nothing was needed.
    pub async fn ensure_reference(
        &self,
        ns: &str,
        name: &str,
        known: &SaState,
        secret_name: &str,
        want: bool,
    ) -> Result<Option<ServiceAccount>, Error> {
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), ns);
        let mut rv = known.resource_version.clone();
        let mut refs: Vec<k8s_openapi::api::core::v1::LocalObjectReference> = known
            .pull_secrets
            .iter()
            .map(|n| k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() })
            .collect();
        for _ in 0..MAX_CONFLICTS {
            let Some(next) = desired_pull_secrets(&refs, secret_name, want) else {
                return Ok(None);
            };
            self.guard()?;
            let patch = json!({
                // A precondition: the server refuses (409) if the object changed since we read it.
                "metadata": {"resourceVersion": rv},
                "imagePullSecrets": if next.is_empty() { serde_json::Value::Null } else { json!(next) },
            });
            match api
                .patch(name, &Self::patch_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(sa) => {
                    self.metrics.write(if want {
                        "sa_add_reference"
                    } else {
                        "sa_remove_reference"
                    });
                    tracing::info!(namespace = %ns, service_account = %name, added = want, "patched imagePullSecrets");
                    return Ok(Some(sa));
                }
                Err(e) if is_conflict(&e) => match api.get_opt(name).await {
                    Ok(Some(fresh)) => {
                        rv = fresh.metadata.resource_version.clone().unwrap_or_default();
                        refs = fresh.image_pull_secrets.clone().unwrap_or_default();
                        if desired_pull_secrets(&refs, secret_name, want).is_none() {
                            return Ok(Some(fresh));
                        }
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(kube_err("get", "ServiceAccount", ns, name, e)),
                },
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(kube_err("patch", "ServiceAccount", ns, name, e)),
            }
        }
        Err(Error::Conflicts {
            object: format!("ServiceAccount {ns}/{name}"),
        })
    }

    /// Deletes Secret `ns/name` if it still is the object `uid`. Returns whether it deleted.
    pub async fn delete_secret(&self, ns: &str, name: &str, uid: &str) -> Result<bool, Error> {
        self.guard()?;
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                self.metrics.write("secret_delete");
                tracing::info!(namespace = %ns, secret = %name, "deleted pull Secret");
                Ok(true)
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_err("delete", "Secret", ns, name, e)),
        }
    }
}
