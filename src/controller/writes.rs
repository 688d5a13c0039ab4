//! Writes to the API server: idempotent, conflict-safe (resourceVersion preconditions, retried on
//! 409 with a fresh read), and skipped when nothing would change.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Error;
use crate::metrics::Metrics;
use crate::render::{SecretContent, desired_pull_secrets, is_managed};

/// Attempts before a write that keeps conflicting is given up (and retried by the controller).
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

/// Makes the pull Secret `ns/name` hold `content`. `cached` is the controller's cached copy, if
/// any: when it already matches, nothing is sent to the API server. Returns whether it wrote.
pub async fn ensure_secret(
    api: &Api<Secret>,
    ns: &str,
    name: &str,
    content: &SecretContent,
    cached: Option<&Secret>,
    metrics: &Metrics,
) -> Result<bool, Error> {
    match cached {
        Some(s) if content.matches(s) => return Ok(false),
        // Not in the (synced) cache: most likely absent, so create without reading first.
        None => match api
            .create(&PostParams::default(), &content.secret(name, ns))
            .await
        {
            Ok(_) => {
                metrics.write("secret_create");
                tracing::info!(namespace = ns, secret = name, "created pull Secret");
                return Ok(true);
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(kube_err("create", "Secret", ns, name, e)),
        },
        Some(_) => {}
    }
    for _ in 0..MAX_CONFLICTS {
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| kube_err("get", "Secret", ns, name, e))?;
        let result = match current {
            None => {
                let created = api
                    .create(&PostParams::default(), &content.secret(name, ns))
                    .await;
                if created.is_ok() {
                    metrics.write("secret_create");
                    tracing::info!(namespace = ns, secret = name, "created pull Secret");
                }
                created
            }
            Some(existing) if !is_managed(&existing.metadata) => {
                return Err(Error::ForeignSecret {
                    object: format!("{ns}/{name}"),
                });
            }
            Some(existing) if content.matches(&existing) => return Ok(false),
            Some(existing) => {
                let mut desired = content.secret(name, ns);
                // Keep what others added to the metadata; replace only what is ours.
                desired.metadata.resource_version = existing.metadata.resource_version.clone();
                let mut labels = existing.metadata.labels.clone().unwrap_or_default();
                labels.extend(desired.metadata.labels.take().unwrap_or_default());
                desired.metadata.labels = Some(labels);
                let mut annotations = existing.metadata.annotations.clone().unwrap_or_default();
                annotations.extend(desired.metadata.annotations.take().unwrap_or_default());
                desired.metadata.annotations = Some(annotations);
                let replaced = api.replace(name, &PostParams::default(), &desired).await;
                if replaced.is_ok() {
                    metrics.write("secret_update");
                    tracing::info!(namespace = ns, secret = name, expires_at = %content.expires_at, "updated pull Secret");
                }
                replaced
            }
        };
        match result {
            Ok(_) => return Ok(true),
            // Someone changed or created it meanwhile: read again and decide again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(kube_err("write", "Secret", ns, name, e)),
        }
    }
    Err(Error::Conflicts {
        object: format!("Secret {ns}/{name}"),
    })
}

/// Adds (`want`) or removes our reference on a ServiceAccount, keeping every other entry in order.
/// Starts from `cached` and re-reads on conflict. Returns, when it wrote, the resourceVersion the
/// write replaced (a cache still showing it is stale).
pub async fn ensure_reference(
    api: &Api<ServiceAccount>,
    cached: &ServiceAccount,
    secret_name: &str,
    want: bool,
    metrics: &Metrics,
) -> Result<Option<String>, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let mut current = cached.clone();
    for _ in 0..MAX_CONFLICTS {
        let refs = current.image_pull_secrets.clone().unwrap_or_default();
        let Some(next) = desired_pull_secrets(&refs, secret_name, want) else {
            return Ok(None);
        };
        let patch = json!({
            // A precondition: the server refuses (409) if the object changed since we read it.
            "metadata": {"resourceVersion": current.resource_version()},
            "imagePullSecrets": if next.is_empty() { serde_json::Value::Null } else { json!(next) },
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                metrics.write(if want {
                    "sa_add_reference"
                } else {
                    "sa_remove_reference"
                });
                tracing::info!(namespace = %ns, service_account = %name, added = want, "patched imagePullSecrets");
                return Ok(Some(current.resource_version().unwrap_or_default()));
            }
            Err(e) if is_conflict(&e) => {
                current = match api.get_opt(&name).await {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(kube_err("get", "ServiceAccount", &ns, &name, e)),
                };
            }
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(kube_err("patch", "ServiceAccount", &ns, &name, e)),
        }
    }
    Err(Error::Conflicts {
        object: format!("ServiceAccount {ns}/{name}"),
    })
}

/// Deletes our Secret `ns/name` if it still is the object we know (`uid`) and still ours.
pub async fn delete_secret(
    api: &Api<Secret>,
    cached: &Secret,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    if !is_managed(&cached.metadata) {
        return Ok(false);
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: cached.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            metrics.write("secret_delete");
            tracing::info!(namespace = %ns, secret = %name, "deleted pull Secret");
            Ok(true)
        }
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(false),
        Err(e) => Err(kube_err("delete", "Secret", &ns, &name, e)),
    }
}
