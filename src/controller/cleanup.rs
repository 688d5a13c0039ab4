//! `cleanup`: removes everything the controller wrote, and works while replicas run.
//!
//! 1. It marks the ConfigMap (annotation [`CLEANUP_ANNOTATION`]): every replica then stands down,
//!    as with a missing ConfigMap, and the mark outlives this command, so no replica starts
//!    writing again afterwards (uninstall deletes the ConfigMap with it; to resume without
//!    uninstalling, remove the annotation).
//! 2. It takes the leader Lease, whoever holds it, and waits until the previous holder's right to
//!    write has surely run out (the Lease's duration): from then on it is the only writer.
//! 3. It removes the webhook registration first (so no new ServiceAccount gets a reference
//!    meanwhile), then every reference to the pull Secret, every pull Secret of ours, the
//!    webhook's certificate and the persisted configuration. It does not give the Lease back: it
//!    runs out by itself, by which time every replica has seen the mark.
//!    The state Secret (digest key and recorded logins) goes last with the other two.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::writes::Writer;
use super::{Error, kube_error, registration};
use crate::config_source::CLEANUP_ANNOTATION;
use crate::index::{Rv, SaState, ServiceAccountView};
use crate::leader::{Elector, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::render::is_managed;

/// What `cleanup` removes, and the Lease it takes.
#[derive(Debug, Clone)]
pub struct CleanupSettings {
    pub config_namespace: String,
    pub config_name: String,
    pub secret_name: String,
    pub last_config_secret: String,
    pub state_secret: String,
    pub webhook_configuration: String,
    pub webhook_tls_secret: String,
    pub lease: LeaseConfig,
    /// Remove the mark once everything is removed (see `cleanup --unmark-when-done`).
    pub unmark_when_done: bool,
}

/// What `cleanup` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub references: usize,
    pub secrets: usize,
    pub webhook: bool,
}

/// Writes at once while cleaning up.
const CONCURRENCY: usize = 16;
/// Objects per page when listing.
const LIST_PAGE: u32 = 50;

/// How long `cleanup` may take at most (the chart's hook Job allows a little more).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs the whole cleanup. `lease_client` should be a client of its own.
pub async fn cleanup(
    client: Client,
    lease_client: Client,
    s: &CleanupSettings,
    metrics: Arc<Metrics>,
) -> Result<Report, Error> {
    // 1. The mark: replicas stand down and stay down.
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &s.config_namespace);
    let mark = json!({"metadata": {"annotations": {CLEANUP_ANNOTATION: jiff::Timestamp::now().to_string()}}});
    match cms
        .patch(
            &s.config_name,
            &Writer::patch_params(),
            &Patch::Merge(&mark),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(configmap = %s.config_name, "marked the ConfigMap: every replica stands down")
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!(configmap = %s.config_name, "no ConfigMap: the replicas do nothing already")
        }
        Err(e) => return Err(kube_error("patch", "ConfigMap", &s.config_name, &e)),
    }

    // 2. The Lease: the previous leader stops writing before this command starts.
    let leadership = Leadership::new();
    let mut elector = Elector::new(lease_client.clone(), s.lease.clone(), leadership.clone());
    let wait = elector.preempt().await?;
    let term = leadership.term().ok_or(Error::NotLeader)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(
        Elector::new(lease_client, s.lease.clone(), leadership.clone()).run(
            async {
                let _ = stop_rx.await;
            },
            false,
        ),
    );
    if !wait.is_zero() {
        tracing::info!(
            wait_s = wait.as_secs(),
            "took the leader Lease; waiting until the previous leader has surely stopped writing"
        );
        tokio::time::sleep(wait).await;
    }
    let writer = Writer::new(client.clone(), leadership, term, metrics);
    let mut result = remove_everything(&client, &writer, s).await;
    // 4. (The uninstall hook.) The mark goes again: the ConfigMap is the operator's and outlives
    //    the release. No replica can lead before the Lease, taken above and no longer renewed,
    //    runs out, by when Helm has deleted them.
    if result.is_ok() && s.unmark_when_done {
        let unmark = json!({"metadata": {"annotations": {CLEANUP_ANNOTATION: null}}});
        match cms
            .patch(
                &s.config_name,
                &Writer::patch_params(),
                &Patch::Merge(&unmark),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(configmap = %s.config_name, "removed the cleanup mark; the ConfigMap is kept")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => result = Err(kube_error("patch", "ConfigMap", &s.config_name, &e)),
        }
    }
    let _ = stop_tx.send(());
    let _ = keeper.await;
    result
}

async fn remove_everything(
    client: &Client,
    writer: &Writer,
    s: &CleanupSettings,
) -> Result<Report, Error> {
    let webhook = registration::remove(writer, &s.webhook_configuration)
        .await
        .map_err(|e| Error::Registration(e.to_string()))?;
    let references = remove_references(client, writer, s).await?;
    let secrets = delete_pull_secrets(client, writer, s).await?;
    delete_own_secrets(client, writer, s).await?;
    Ok(Report {
        webhook,
        references,
        secrets,
    })
}

/// Removes this controller's reference from every ServiceAccount; how many were patched.
async fn remove_references(
    client: &Client,
    writer: &Writer,
    s: &CleanupSettings,
) -> Result<usize, Error> {
    // ServiceAccounts are listed trimmed, a small page at a time: a tenant's megabyte
    // annotations never reach this process's memory (the hook Job has the controller's limit).
    let mut referencing: Vec<(String, String, SaState)> = Vec::new();
    crate::watches::list_pages(
        &Api::<ServiceAccountView>::all(client.clone()),
        ListParams::default(),
        LIST_PAGE,
        |page| {
            referencing.extend(page.into_iter().filter_map(|sa| {
                let (ns, name) = (sa.namespace().unwrap_or_default(), sa.name_any());
                let known = SaState::new(
                    Rv::from(sa.metadata.resource_version.as_ref()),
                    sa.image_pull_secrets,
                    &s.secret_name,
                );
                (known.ours > 0).then_some((ns, name, known))
            }));
        },
    )
    .await
    .map_err(|e| kube_error("list", "ServiceAccount", "all namespaces", &e))?;
    let removed: Vec<bool> = futures::stream::iter(referencing)
        .map(|(ns, name, known)| async move {
            writer
                .ensure_reference(&ns, &name, &known, &s.secret_name, false)
                .await
                .map(|patched| patched.is_some())
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(removed.into_iter().filter(|r| *r).count())
}

/// Deletes every pull Secret this controller manages; how many were deleted.
async fn delete_pull_secrets(
    client: &Client,
    writer: &Writer,
    s: &CleanupSettings,
) -> Result<usize, Error> {
    let secrets = Api::<Secret>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={}", s.secret_name)))
        .await
        .map_err(|e| kube_error("list", "Secret", "all namespaces", &e))?;
    let deleted: Vec<bool> = futures::stream::iter(
        secrets
            .items
            .into_iter()
            .filter(|x| is_managed(&x.metadata)),
    )
    .map(|secret| async move {
        let ns = secret.namespace().unwrap_or_default();
        writer
            .delete_secret(&ns, &s.secret_name, &secret.uid().unwrap_or_default())
            .await
    })
    .buffer_unordered(CONCURRENCY)
    .try_collect()
    .await?;
    Ok(deleted.into_iter().filter(|d| *d).count())
}

/// Deletes the controller's own Secrets in its namespace (webhook TLS, last configuration, state).
async fn delete_own_secrets(
    client: &Client,
    writer: &Writer,
    s: &CleanupSettings,
) -> Result<(), Error> {
    let own = Api::<Secret>::namespaced(client.clone(), &s.config_namespace);
    for name in [
        &s.webhook_tls_secret,
        &s.last_config_secret,
        &s.state_secret,
    ] {
        let found = own
            .get_opt(name)
            .await
            .map_err(|e| kube_error("get", "Secret", name, &e))?;
        if let Some(secret) = found.filter(|x| is_managed(&x.metadata)) {
            writer
                .delete_secret(&s.config_namespace, name, &secret.uid().unwrap_or_default())
                .await?;
        }
    }
    Ok(())
}
