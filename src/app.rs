//! The binary's commands: `run` (the controller, with leader election, metrics and probes),
//! `cleanup`, and `check-config`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::aliyun::cr::Cr;
use crate::aliyun::http::{CallObserver, Http};
use crate::aliyun::metadata::Metadata;
use crate::aliyun::sts::Sts;
use crate::aliyun::{CloudError, is_region_id};
use crate::cli::{Args, Command};
use crate::config;
use crate::controller::{self, Readiness, Settings, Wiring};
use crate::credentials::{BaseIdentity, Chain, Registry, TokenMode};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Usage(String),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("serving probes and metrics: {0}")]
    Server(#[from] std::io::Error),
    #[error(transparent)]
    Controller(#[from] controller::Error),
}

/// Runs the command the arguments name; returns the process exit code.
pub async fn main(args: Args) -> Result<i32, AppError> {
    match args.command.clone().unwrap_or(Command::Run) {
        Command::CheckConfig { file } => Ok(check_config(&file, args.kube.region.as_deref())),
        Command::Cleanup => {
            crate::telemetry::init(&args.log).map_err(AppError::Usage)?;
            let client = kube_client().await?;
            let webhook =
                crate::webhook::runtime::remove(&client, &args.webhook.webhook_configuration)
                    .await?;
            let (refs, secrets) =
                controller::cleanup(client, &args.kube.secret_name, &Metrics::new()).await?;
            println!(
                "removed {refs} imagePullSecrets reference(s), {secrets} Secret(s){}",
                if webhook {
                    " and the MutatingWebhookConfiguration"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        Command::Run => {
            crate::telemetry::init(&args.log).map_err(AppError::Usage)?;
            run(args).await?;
            Ok(0)
        }
    }
}

/// The user agent of every request to the API server (it shows in audit logs).
pub const USER_AGENT: &str = concat!("aliyun-acr-credential-helper/", env!("CARGO_PKG_VERSION"));

async fn kube_client() -> Result<Client, AppError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| AppError::KubeConfig(e.to_string()))?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(AppError::Kube)
}

/// A future that resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

// Not an `async fn`: the controller's shutdown trigger must be `Sync`, which only this form states.
#[allow(clippy::manual_async_fn)]
fn until_true(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

async fn run(args: Args) -> Result<(), AppError> {
    let client = kube_client().await?;
    let endpoints = args.cloud.endpoints()?;
    let metrics = Arc::new(Metrics::new());
    let observer: CallObserver = {
        let m = metrics.clone();
        Arc::new(move |api, result| m.cloud_call(api, result))
    };
    let http = Http::new(&args.cloud.http_options())?.with_observer(observer);
    let metadata = Metadata::new(
        http.clone(),
        endpoints.metadata.clone(),
        args.cloud.metadata_hardened_only,
    );

    let region = match &args.kube.region {
        Some(r) if is_region_id(r) => Some(r.clone()),
        Some(r) => {
            return Err(AppError::Usage(format!(
                "--region {r:?} is not a region id like cn-hangzhou"
            )));
        }
        None => match metadata.region().await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "the cluster region is unknown (set --region); instances must name their regionId");
                None
            }
        },
    };

    let mode = match args.run.token_mode {
        TokenMode::Auto => {
            let created = Api::<Namespace>::all(client.clone())
                .get("kube-system")
                .await?
                .metadata
                .creation_timestamp
                .map(|t| t.0);
            let mode = TokenMode::Auto.resolve(created);
            tracing::info!(?mode, cluster_created = ?created, "token mode auto resolved");
            mode
        }
        m => m,
    };
    let base = match mode {
        TokenMode::WorkerRole => BaseIdentity::WorkerRole(metadata),
        _ => {
            let (ns, name) = args.run.addon_token_secret.split_once('/').ok_or_else(|| {
                AppError::Usage("--addon-token-secret must be namespace/name".into())
            })?;
            BaseIdentity::ManagedRole {
                secrets: Api::<Secret>::namespaced(client.clone(), ns),
                name: name.to_owned(),
                reread: Duration::from_secs(300),
            }
        }
    };
    let chain = Arc::new(Chain::new(
        base,
        Sts::new(http.clone(), endpoints.sts.clone()),
        args.cloud.oidc_token_file.clone(),
        config::DEFAULT_THRESHOLD,
    ));
    let registry = Arc::new(Registry::new(
        chain,
        Cr::new(http, endpoints.cr_template.clone()),
    ));

    let identity = args.run.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "aliyun-acr-credential-helper".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let settings = Settings {
        config_namespace: args.kube.config_namespace.clone(),
        config_name: args.kube.config_name.clone(),
        secret_name: args.kube.secret_name.clone(),
        region,
    };
    let readiness = Arc::new(Readiness::default());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        tracing::info!("terminating");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(crate::server::serve(
        args.run.metrics_addr,
        crate::server::router(metrics.clone(), readiness.clone()),
        until_true(stop_rx.clone()),
    ));

    let wiring = || Wiring {
        client: client.clone(),
        registry: registry.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: "aliyun-acr-credential-helper".into(),
            instance: Some(identity.clone()),
        },
        webhook: args.webhook.settings(),
    };
    // Every replica serves the webhook, from its own watches.
    let webhook = tokio::spawn({
        let serving = crate::webhook::runtime::serve(
            client.clone(),
            args.webhook.settings(),
            settings.config_namespace.clone(),
            settings.config_name.clone(),
            settings.region.clone(),
            settings.secret_name.clone(),
            until_true(stop_rx.clone()),
        );
        let addr = args.webhook.webhook_addr;
        async move {
            if let Err(e) = serving.await {
                tracing::error!(%addr, error = %e, "cannot serve the admission webhook");
            }
        }
    });

    if !args.run.leader_elect {
        metrics.leader.set(1);
        controller::run(wiring(), readiness.clone(), until_true(stop_rx.clone())).await;
    } else {
        let lease_ns = args
            .run
            .lease_namespace
            .clone()
            .unwrap_or_else(|| args.kube.config_namespace.clone());
        let manager = LeaseManagerBuilder::new(client.clone(), &args.run.lease_name)
            .with_namespace(&lease_ns)
            .with_identity(&identity)
            .with_duration(args.run.lease_duration.as_secs().max(2))
            .with_grace(args.run.lease_grace.as_secs().max(1))
            .build()
            .await
            .map_err(|e| AppError::Lease(e.to_string()))?;
        let (mut leader_rx, lease_task) = manager.watch().await;
        tracing::info!(lease = %args.run.lease_name, namespace = %lease_ns, %identity, "waiting for leadership");
        readiness.standby.store(true, Ordering::Relaxed);
        let mut stop = stop_rx.clone();
        loop {
            tokio::select! {
                _ = stop.wait_for(|v| *v) => break,
                changed = leader_rx.wait_for(|l| *l) => if changed.is_err() { break },
            }
            tracing::info!(%identity, "became the leader");
            metrics.leader.set(1);
            readiness.standby.store(false, Ordering::Relaxed);
            let (lost_tx, lost_rx) = watch::channel(false);
            let mut watch_leader = leader_rx.clone();
            let mut watch_stop = stop_rx.clone();
            let watcher = tokio::spawn(async move {
                tokio::select! {
                    _ = watch_leader.wait_for(|l| !*l) => {},
                    _ = watch_stop.wait_for(|v| *v) => {},
                }
                let _ = lost_tx.send(true);
            });
            controller::run(wiring(), readiness.clone(), until_true(lost_rx)).await;
            watcher.abort();
            metrics.leader.set(0);
            readiness.standby.store(true, Ordering::Relaxed);
            if *stop_rx.borrow() {
                break;
            }
            tracing::warn!(%identity, "lost leadership; standing by");
        }
        drop(leader_rx);
        match lease_task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the Lease");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
        }
    }
    if let Err(e) = webhook.await {
        tracing::warn!(error = %e, "the webhook task failed");
    }
    let _ = server.await;
    Ok(())
}

/// Reads a ConfigMap manifest (or a bare `data` mapping) and validates it; prints what it finds.
/// Returns the exit code: 0 usable, 1 not usable, 2 unreadable.
pub fn check_config(path: &std::path::Path, region: Option<&str>) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 2;
        }
    };
    let data = match config_data(&text) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 2;
        }
    };
    let assumed = "cn-hangzhou";
    if region.is_none() {
        eprintln!(
            "note: no --region given; instances without regionId are checked as if the cluster were in {assumed}"
        );
    }
    match config::parse(&data, Some(region.unwrap_or(assumed))) {
        Ok(parsed) => {
            for w in &parsed.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: usable ({} instance(s))",
                path.display(),
                parsed.config.instances.len()
            );
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            println!(
                "{}: rejected ({} problem(s))",
                path.display(),
                errors.0.len()
            );
            1
        }
    }
}

/// The string data of a ConfigMap manifest, or of a bare mapping.
fn config_data(text: &str) -> Result<BTreeMap<String, String>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_data_from_manifests_and_bare_maps() {
        let m = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: acr-configuration\ndata:\n  watch-namespace: all\n  expiring-threshold: 15m\n";
        let d = config_data(m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.get("watch-namespace").map(String::as_str), Some("all"));
        let d = config_data("service-account: \"*\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.get("service-account").map(String::as_str), Some("*"));
        assert!(config_data("kind: Secret\ndata: {}\n").is_err());
        assert!(config_data("data:\n  acr-registry-info:\n    - a\n").is_err());
        assert!(config_data("[1, 2]").is_err());
    }
}
