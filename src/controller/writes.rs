//! Writes to the API server: idempotent, conflict-safe (every write carries a resourceVersion or
//! uid precondition; a 409 makes it read the object again and decide again), never sent when
//! nothing would change, and never sent outside the leadership term they belong to.
//! Each returns what the server answered, so the index learns of our own writes at once and
//! their watch events make no work.

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;

use super::{Error, kube_error};
use crate::index::{SaState, SecretState};
use crate::kube_errors::{is_conflict, is_not_found};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::plan::holds;
use crate::render::{
    DOCKER_CONFIG_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretContent, desired_pull_secrets,
};

/// The field manager of every write (stable: GitOps tools are told to ignore it, see the README).
pub const FIELD_MANAGER: &str = "aliyun-acr-credential-helper";

/// Attempts before a write that keeps conflicting is given up (and retried later).
const MAX_CONFLICTS: usize = 5;

fn object(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Writes to the cluster on behalf of the leader, in one leadership term.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    leadership: Leadership,
    term: u64,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(client: Client, leadership: Leadership, term: u64, metrics: Arc<Metrics>) -> Writer {
        Writer {
            client,
            leadership,
            term,
            metrics,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether this writer's term goes on.
    pub fn may_write(&self) -> bool {
        self.leadership.leads_in(self.term)
    }

    /// Sends a write if this writer's term goes on, and stops waiting for the answer if the
    /// term ends meanwhile (renewals extend it). Every write of the controller goes through here.
    pub async fn write<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, Error> {
        if !self.may_write() {
            return Err(Error::NotLeader);
        }
        tokio::select! {
            answer = request => Ok(answer),
            _ = self.leadership.lost(self.term) => Err(Error::NotLeader),
        }
    }

    pub fn post() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        }
    }

    pub fn patch_params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    /// Makes Secret `ns/name` hold `content`, starting from what the index knows of it. Returns
    /// the Secret as the server holds it.
    pub async fn ensure_secret(
        &self,
        ns: &str,
        name: &str,
        content: &SecretContent,
        known: Option<&SecretState>,
    ) -> Result<Secret, Error> {
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        // (resourceVersion, foreign)
        let mut current: Option<(String, bool)> =
            known.map(|s| (s.resource_version.to_string(), s.is_foreign()));
        for _ in 0..MAX_CONFLICTS {
            let result = match &current {
                None => {
                    let created = self
                        .write(api.create(&Self::post(), &content.secret(name, ns)))
                        .await?;
                    if created.is_ok() {
                        self.metrics.write("secret_create");
                        tracing::info!(namespace = ns, secret = name, expires_at = %content.expires_at, "created pull Secret");
                    }
                    created
                }
                Some((_, true)) => {
                    return Err(Error::ForeignSecret {
                        object: object(ns, name),
                    });
                }
                Some((rv, false)) => {
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
                    let patched = self
                        .write(api.patch(name, &Self::patch_params(), &Patch::Strategic(&patch)))
                        .await?;
                    if patched.is_ok() {
                        self.metrics.write("secret_update");
                        tracing::info!(namespace = ns, secret = name, expires_at = %content.expires_at, "updated pull Secret");
                    }
                    patched
                }
            };
            match result {
                Ok(s) => return Ok(s),
                // Someone changed, created or deleted it meanwhile: read again, decide again.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    let fresh = api
                        .get_opt(name)
                        .await
                        .map_err(|e| kube_error("get", "Secret", &object(ns, name), &e))?;
                    match fresh {
                        Some(s) => {
                            let state = SecretState::of(&s);
                            if holds(&state, content) {
                                return Ok(s);
                            }
                            current =
                                Some((state.resource_version.to_string(), state.is_foreign()));
                        }
                        None => current = None,
                    }
                }
                Err(e) => return Err(kube_error("write", "Secret", &object(ns, name), &e)),
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
        // The patch restates every entry; a list too long for the index is read first.
        let (mut rv, mut refs) = match &known.pull_secrets {
            Some(names) => (
                known.resource_version.to_string(),
                names
                    .iter()
                    .map(|n| k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() })
                    .collect::<Vec<_>>(),
            ),
            None => match api.get_opt(name).await {
                Ok(Some(fresh)) => (
                    fresh.metadata.resource_version.unwrap_or_default(),
                    fresh.image_pull_secrets.unwrap_or_default(),
                ),
                Ok(None) => return Ok(None),
                Err(e) => return Err(kube_error("get", "ServiceAccount", &object(ns, name), &e)),
            },
        };
        for _ in 0..MAX_CONFLICTS {
            let Some(next) = desired_pull_secrets(&refs, secret_name, want) else {
                return Ok(None);
            };
            let patch = json!({
                // A precondition: the server refuses (409) if the object changed since we read it.
                "metadata": {"resourceVersion": rv},
                "imagePullSecrets": if next.is_empty() { serde_json::Value::Null } else { json!(next) },
            });
            let sent = self
                .write(api.patch(name, &Self::patch_params(), &Patch::Merge(&patch)))
                .await?;
            match sent {
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
                    Err(e) => {
                        return Err(kube_error("get", "ServiceAccount", &object(ns, name), &e));
                    }
                },
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(kube_error("patch", "ServiceAccount", &object(ns, name), &e));
                }
            }
        }
        Err(Error::Conflicts {
            object: format!("ServiceAccount {ns}/{name}"),
        })
    }

    /// Deletes Secret `ns/name` if it still is the object `uid`. Returns whether it deleted.
    pub async fn delete_secret(&self, ns: &str, name: &str, uid: &str) -> Result<bool, Error> {
        let api = Api::<Secret>::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.write(api.delete(name, &dp)).await? {
            Ok(_) => {
                self.metrics.write("secret_delete");
                tracing::info!(namespace = %ns, secret = %name, "deleted Secret");
                Ok(true)
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_error("delete", "Secret", &object(ns, name), &e)),
        }
    }
}

#[cfg(test)]
mod tests;
