//! The binary's commands: `run` (the controller, with leader election, metrics and probes),
//! `cleanup`, and `check-config`. Process-wide set-up (the TLS crypto provider, logging) is done
//! by the binary's entry point before any of these runs.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::aliyun::cr::Cr;
use crate::aliyun::http::{CallObserver, Http};
use crate::aliyun::metadata::Metadata;
use crate::aliyun::sts::Sts;
use crate::aliyun::{CloudError, is_region_id};
use crate::cli::{Args, Command, PlanOutput};
use crate::config;
use crate::config_source::{self, SourceSettings};
use crate::controller::cleanup::{CLEANUP_TIMEOUT, CleanupSettings};
use crate::controller::{self, Readiness, Settings, Shared, TermEnd};
use crate::credentials::{BaseIdentity, Chain, Registry, TokenMode};
use crate::index::SharedIndex;
use crate::leader::{Elector, Leadership, LeaseConfig};
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
    #[error("serving probes and metrics: {0}")]
    Server(#[from] std::io::Error),
    #[error(transparent)]
    Controller(#[from] controller::Error),
    #[error("cleanup did not finish within {0:?}")]
    CleanupTimeout(Duration),
}

mod commands;
pub use commands::check_config;
use commands::{cleanup, credential_provider, migrate, plan, status};

/// Runs the command the arguments name; returns the process exit code.
pub async fn main(args: Args) -> Result<i32, AppError> {
    match args.command.clone().unwrap_or(Command::Run) {
        Command::CheckConfig { file } => Ok(check_config(&file, args.kube.region.as_deref())),
        Command::Cleanup { unmark_when_done } => cleanup(args, unmark_when_done).await,
        Command::Plan { file, output } => plan(&args, file.as_deref(), output).await,
        Command::CredentialProvider(p) => Ok(credential_provider(&args, &p).await),
        Command::Migrate { dry_run, output } => migrate(&args, dry_run, output).await,
        Command::Status { output } => status(&args, output).await,
        Command::Run => {
            run(args).await?;
            Ok(0)
        }
    }
}

/// The controller name every Event reports (`reportingController`).
pub const REPORTER: &str = "aliyun-acr-credential-helper";

/// The user agent of every request to the API server (it shows in audit logs): the version and
/// the replica's identity, so the audit log tells replicas apart.
pub fn user_agent(identity: &str) -> String {
    format!(
        "aliyun-acr-credential-helper/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )
}

async fn kube_config() -> Result<kube::Config, AppError> {
    kube::Config::infer()
        .await
        .map_err(|e| AppError::KubeConfig(e.to_string()))
}

/// A client with a connection pool of its own.
fn client(
    config: &kube::Config,
    identity: &str,
    read_timeout: Option<Duration>,
) -> Result<Client, AppError> {
    let mut config = config.clone();
    let ua = http::HeaderValue::from_str(&user_agent(identity))
        .map_err(|e| AppError::Usage(format!("--identity {identity:?}: {e}")))?;
    config.headers.push((http::header::USER_AGENT, ua));
    if read_timeout.is_some() {
        config.read_timeout = read_timeout;
    }
    Client::try_from(config).map_err(AppError::Kube)
}

fn identity(args: &Args) -> String {
    args.run.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "aliyun-acr-credential-helper".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    })
}

fn lease_config(args: &Args, identity: String) -> LeaseConfig {
    LeaseConfig {
        namespace: args
            .run
            .lease_namespace
            .clone()
            .unwrap_or_else(|| args.kube.config_namespace.clone()),
        name: args.run.lease_name.clone(),
        identity,
        duration: args.run.lease_duration.max(Duration::from_secs(2)),
        grace: args.run.lease_grace.max(Duration::from_secs(1)),
        retry: args.run.lease_retry_period.max(Duration::from_millis(200)),
    }
    .with_sane_retry()
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

// Not an `async fn`: a shutdown trigger must be `Sync`, which only this form states.
#[allow(clippy::manual_async_fn)]
fn until_true(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// A channel that turns true once the process is asked to terminate (SIGTERM, Ctrl-C).
fn stop_on_termination() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        tracing::info!("terminating");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// What every replica watches: the index of the cluster and the configuration in force, kept
/// up to date by `tasks`.
struct Watching {
    index: Arc<SharedIndex>,
    view: watch::Receiver<Arc<config_source::ConfigView>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn watch_cluster(
    watches: &Client,
    settings: &Settings,
    region: Option<String>,
    metrics: &Arc<Metrics>,
) -> Watching {
    let index = Arc::new(SharedIndex::new(&settings.secret_name));
    let mut tasks = crate::watches::spawn(watches.clone(), index.clone(), &settings.secret_name);
    let (view, source_task) = config_source::spawn(
        watches.clone(),
        SourceSettings {
            namespace: settings.config_namespace.clone(),
            configmap: settings.config_name.clone(),
            last_config_secret: settings.last_config_secret.clone(),
            region,
        },
        metrics.clone(),
    );
    tasks.push(source_task);
    Watching { index, view, tasks }
}

/// The controller: every replica watches, serves the webhook, probes and metrics; the leader
/// (or the only replica, without leader election) writes.
async fn run(args: Args) -> Result<(), AppError> {
    let kube = kube_config().await?;
    let identity = identity(&args);
    let lease_cfg = lease_config(&args, identity.clone());
    // Watches, writes and the Lease each have a connection pool of their own: a burst of writes
    // never delays a renewal, and a write never waits behind a watch.
    let watches = client(&kube, &identity, None)?;
    let writes = client(
        &kube,
        &identity,
        Some(lease_cfg.grace.max(Duration::from_secs(2))),
    )?;
    let lease_client = client(&kube, &identity, Some(lease_cfg.renew_deadline()))?;

    let metrics = Arc::new(Metrics::new());
    let (registry, region) = cloud(&args, &watches, &writes, &metrics).await?;
    let settings = settings(&args);

    // Every replica: the index, the configuration in force, the webhook, probes and metrics.
    let Watching {
        index,
        view,
        tasks: background,
    } = watch_cluster(&watches, &settings, region, &metrics);
    let webhook_cert = Arc::new(crate::webhook::server::ReloadingCert::default());
    let readiness = Arc::new(Readiness::new(
        index.clone(),
        view.clone(),
        webhook_cert.clone(),
    ));

    let stop_rx = stop_on_termination();
    let servers = Servers::spawn(
        &args,
        &watches,
        crate::webhook::runtime::Sources {
            view: view.clone(),
            index: index.clone(),
            secret_name: settings.secret_name.clone(),
            metrics: metrics.clone(),
            cert: webhook_cert,
        },
        &settings.config_namespace,
        &readiness,
        &stop_rx,
    );

    let shared = Arc::new(Shared {
        client: writes,
        index,
        view,
        registry,
        metrics,
        settings,
        webhook: args.webhook.settings(),
        readiness,
        reporter: Reporter {
            controller: REPORTER.into(),
            instance: Some(identity.clone()),
        },
    });
    let broken = if args.run.leader_elect {
        lead_when_elected(shared, lease_client, lease_cfg, &identity, &stop_rx).await
    } else {
        let leadership = Leadership::always();
        let term = leadership.term().unwrap_or_default();
        controller::lead(shared, leadership, term, until_true(stop_rx.clone())).await
            == TermEnd::Broken
    };
    for t in background {
        t.abort();
    }
    servers.join().await;
    if broken {
        return Err(AppError::Usage(
            "a part of the controller stopped unexpectedly; exiting so the pod restarts".into(),
        ));
    }
    Ok(())
}

/// The cloud side: the registry logins' source (the token mode's base identity, STS and
/// Container Registry clients, every call observed by the metrics), and the cluster's region.
async fn cloud(
    args: &Args,
    watches: &Client,
    writes: &Client,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Registry>, Option<String>), AppError> {
    let endpoints = args.cloud.endpoints()?;
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
    let region = cluster_region(args, &metadata).await?;
    let base = base_identity(args, watches, writes, metadata).await?;
    let chain = Arc::new(Chain::new(
        base,
        Sts::new(http.clone(), endpoints.sts.clone()),
        args.cloud.oidc_token_file.clone(),
    ));
    let registry = Arc::new(Registry::new(
        chain,
        Cr::new(http, endpoints.cr_template.clone()),
    ));
    Ok((registry, region))
}

/// `--region`, else the metadata service's; `None` (instances must name theirs) when neither
/// says.
async fn cluster_region(args: &Args, metadata: &Metadata) -> Result<Option<String>, AppError> {
    match &args.kube.region {
        Some(r) if is_region_id(r) => Ok(Some(r.clone())),
        Some(r) => Err(AppError::Usage(format!(
            "--region {r:?} is not a region id like cn-hangzhou"
        ))),
        None => match metadata.region().await {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(error = %e, "the cluster region is unknown (set --region); instances must name their regionId");
                Ok(None)
            }
        },
    }
}

/// The identity of `--token-mode` (`auto`: by the cluster's creation date).
async fn base_identity(
    args: &Args,
    watches: &Client,
    writes: &Client,
    metadata: Metadata,
) -> Result<BaseIdentity, AppError> {
    let mode = match args.run.token_mode {
        TokenMode::Auto => {
            let created = Api::<Namespace>::all(watches.clone())
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
    if mode == TokenMode::WorkerRole {
        return Ok(BaseIdentity::WorkerRole(metadata));
    }
    let (ns, name) = args
        .run
        .addon_token_secret
        .split_once('/')
        .ok_or_else(|| AppError::Usage("--addon-token-secret must be namespace/name".into()))?;
    Ok(BaseIdentity::ManagedRole {
        secrets: Api::<Secret>::namespaced(writes.clone(), ns),
        name: name.to_owned(),
        reread: Duration::from_secs(300),
    })
}

fn settings(args: &Args) -> Settings {
    Settings {
        config_namespace: args.kube.config_namespace.clone(),
        config_name: args.kube.config_name.clone(),
        secret_name: args.kube.secret_name.clone(),
        last_config_secret: args.kube.last_config_secret.clone(),
        state_secret: args.kube.state_secret.clone(),
        workers: usize::from(args.run.workers),
        refresh_rate: args.run.refresh_rate,
    }
}

/// What every replica serves until it stops: metrics and probes, the health port, the
/// admission webhook.
struct Servers {
    metrics: tokio::task::JoinHandle<std::io::Result<()>>,
    health: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    webhook: tokio::task::JoinHandle<()>,
}

impl Servers {
    fn spawn(
        args: &Args,
        watches: &Client,
        sources: crate::webhook::runtime::Sources,
        own_namespace: &str,
        readiness: &Arc<Readiness>,
        stop_rx: &watch::Receiver<bool>,
    ) -> Servers {
        let metrics = sources.metrics.clone();
        let server = tokio::spawn(crate::server::serve(
            args.run.metrics_addr,
            crate::server::router(metrics.clone(), readiness.clone()),
            until_true(stop_rx.clone()),
        ));
        let health = args.run.health_addr.map(|addr| {
            tokio::spawn(crate::server::serve(
                addr,
                crate::server::health_only(metrics.clone(), readiness.clone()),
                until_true(stop_rx.clone()),
            ))
        });
        let serving = crate::webhook::runtime::serve(
            watches.clone(),
            args.webhook.settings(),
            own_namespace.to_owned(),
            sources,
            until_true(stop_rx.clone()),
        );
        let addr = args.webhook.webhook_addr;
        let webhook = tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(%addr, error = %e, "cannot serve the admission webhook");
            }
        });
        Servers {
            metrics: server,
            health,
            webhook,
        }
    }

    async fn join(self) {
        if let Err(e) = self.webhook.await {
            tracing::warn!(error = %e, "the webhook task failed");
        }
        let _ = self.metrics.await;
        if let Some(h) = self.health {
            let _ = h.await;
        }
    }
}

/// Leads each term this replica is elected for, until it stops. The elector stops (and gives the
/// Lease back) only after the last term has ended, so nothing of this replica writes once
/// another may lead. Whether a part of the controller broke.
async fn lead_when_elected(
    shared: Arc<Shared>,
    lease_client: Client,
    lease_cfg: LeaseConfig,
    identity: &str,
    stop_rx: &watch::Receiver<bool>,
) -> bool {
    let leadership = Leadership::new();
    let mut terms = leadership.subscribe();
    let mut stop = stop_rx.clone();
    tracing::info!(lease = %lease_cfg.name, namespace = %lease_cfg.namespace, %identity, "waiting for leadership");
    let (elector_stop_tx, elector_stop_rx) = watch::channel(false);
    let elector = tokio::spawn(
        Elector::new(lease_client, lease_cfg, leadership.clone())
            .run(until_true(elector_stop_rx), true),
    );
    let mut broken = false;
    let mut last = 0;
    loop {
        let term = tokio::select! {
            _ = stop.wait_for(|v| *v) => break,
            started = terms.wait_for(|t| t.is_some_and(|n| n > last)) => match started {
                Ok(t) => t.unwrap_or_default(),
                Err(_) => break,
            },
        };
        last = term;
        if !leadership.leads_in(term) {
            continue;
        }
        match controller::lead(
            shared.clone(),
            leadership.clone(),
            term,
            until_true(stop_rx.clone()),
        )
        .await
        {
            TermEnd::Lost => tracing::warn!(%identity, "lost leadership; standing by"),
            TermEnd::Stopped => break,
            TermEnd::Broken => {
                broken = true;
                break;
            }
        }
    }
    let _ = elector_stop_tx.send(true);
    if let Err(e) = elector.await {
        tracing::warn!(error = %e, "leader election task failed");
    }
    broken
}
