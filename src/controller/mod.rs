//! The controller: watches the `acr-configuration` ConfigMap, Namespaces, ServiceAccounts and its
//! own Secrets; reconciles one namespace at a time; fetches each instance's token once (shared
//! through the single-flight caches) and fans it out; refreshes before `expiring-threshold`.

pub mod writes;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret, ServiceAccount};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::config::{self, Config, Instance};
use crate::credentials::cache::Cache;
use crate::credentials::{CredentialError, Edition, Registry};
use crate::metrics::{CategoryLabel, InstanceLabel, Metrics, ResultLabel};
use crate::render::{self, Login, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretContent};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("instance {instance}: {source}")]
    Credentials {
        instance: String,
        #[source]
        source: CredentialError,
    },
    #[error("{action} {kind} {object}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "Secret {object} exists and is not managed by aliyun-acr-credential-helper; it is left alone and no ServiceAccount there is patched"
    )]
    ForeignSecret { object: String },
    #[error("{object} kept changing under us; will try again")]
    Conflicts { object: String },
}

impl Error {
    /// A stable category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Credentials { source, .. } => source.category(),
            Error::Kube { .. } => "kube_api",
            Error::ForeignSecret { .. } => "foreign_secret",
            Error::Conflicts { .. } => "conflict",
        }
    }
}

/// Names the controller works with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_namespace: String,
    pub config_name: String,
    pub secret_name: String,
    /// The cluster's region: the default region of instances.
    pub region: Option<String>,
}

/// The logins of every configured instance, ready to be written.
#[derive(Debug, Clone)]
struct Resolved {
    content: SecretContent,
    refresh_at: Timestamp,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub webhook: crate::webhook::runtime::WebhookSettings,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    config: RwLock<Option<Arc<Config>>>,
    domains: Cache<crate::credentials::InstanceRef, Vec<String>, CredentialError>,
    service_accounts: Store<ServiceAccount>,
    secrets: Store<Secret>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// ServiceAccounts we patched, with the resourceVersion the patch replaced: while the watch
    /// cache still shows that version it is stale, and the SA is left alone until it catches up
    /// (its watch event reconciles the namespace again).
    patched_from: Mutex<HashMap<(String, String), String>>,
    /// Set once credentials were obtained for a complete configuration.
    credentials_ok: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The configuration in force, if any.
    pub fn config(&self) -> Option<Arc<Config>> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_config(&self, config: Option<Arc<Config>>) {
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }

    pub fn credentials_ok(&self) -> bool {
        self.credentials_ok.load(Ordering::Relaxed)
    }

    async fn warn(&self, reference: &ObjectReference, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "could not record an Event");
        }
    }

    /// The registry domains of an instance: as configured, else all of an Enterprise instance's
    /// enabled endpoints (ListInstanceEndpoint, re-read every 10 minutes), else the Personal
    /// Edition's domains of its region.
    async fn domains_of(&self, inst: &Instance) -> Result<Vec<String>, CredentialError> {
        if !inst.domains.is_empty() {
            return Ok(inst.domains.clone());
        }
        match &inst.edition {
            Edition::Personal => Ok(render::personal_domains(&inst.region)),
            Edition::Enterprise { instance_id } => {
                self.domains
                    .get(&inst.instance_ref(), || async {
                        let d = self
                            .registry
                            .enterprise_domains(&inst.auth, &inst.region, instance_id)
                            .await?;
                        Ok((d, Timestamp::now() + jiff::SignedDuration::from_mins(10)))
                    })
                    .await
            }
        }
    }

    /// Every instance's login, from the shared caches: N namespaces asking at once cause one
    /// fetch per instance.
    async fn resolve(&self, cfg: &Config) -> Result<Resolved, Error> {
        let mut tokens = Vec::new();
        for inst in &cfg.instances {
            let err = |source| Error::Credentials {
                instance: inst.label(),
                source,
            };
            let token = self
                .registry
                .token(&inst.instance_ref())
                .await
                .map_err(err)?;
            let domains = self.domains_of(inst).await.map_err(err)?;
            self.metrics
                .token_expiry
                .get_or_create(&InstanceLabel {
                    instance: inst.label(),
                })
                .set(token.usable_until.as_second());
            tokens.push((inst.label(), token, domains));
        }
        let mut logins = Vec::new();
        for (_, t, domains) in &tokens {
            for d in domains {
                logins.push(Login {
                    domain: d,
                    username: &t.token.username,
                    password: &t.token.password,
                });
            }
        }
        let content = SecretContent {
            dockerconfigjson: render::dockerconfigjson(&logins),
            expires_at: tokens
                .iter()
                .map(|(_, t, _)| t.usable_until)
                .min()
                .unwrap_or(Timestamp::MAX),
            instances: tokens.iter().map(|(l, _, _)| l.clone()).collect(),
        };
        let refresh_at = tokens
            .iter()
            .map(|(_, t, _)| t.refresh_at)
            .min()
            .unwrap_or(Timestamp::MAX);
        self.credentials_ok.store(true, Ordering::Relaxed);
        Ok(Resolved {
            content,
            refresh_at,
        })
    }

    fn cached_secret(&self, ns: &str) -> Option<Arc<Secret>> {
        self.secrets
            .get(&ObjectRef::new(&self.settings.secret_name).within(ns))
    }

    fn service_accounts_in(&self, ns: &str) -> Vec<Arc<ServiceAccount>> {
        self.service_accounts
            .state()
            .into_iter()
            .filter(|sa| sa.namespace().as_deref() == Some(ns))
            .collect()
    }

    /// Adds or removes our reference on a cached ServiceAccount, unless the cache is known stale.
    async fn reference(&self, sa: &ServiceAccount, want: bool) -> Result<(), Error> {
        let key = (sa.namespace().unwrap_or_default(), sa.name_any());
        let rv = sa.resource_version().unwrap_or_default();
        {
            let mut patched = self
                .patched_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match patched.get(&key) {
                Some(from) if *from == rv => return Ok(()),
                Some(_) => {
                    patched.remove(&key);
                }
                None => {}
            }
        }
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &key.0);
        let wrote =
            writes::ensure_reference(&api, sa, &self.settings.secret_name, want, &self.metrics)
                .await?;
        if let Some(from) = wrote {
            self.patched_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, from);
        }
        Ok(())
    }

    /// Removes our references and our Secret from a namespace.
    async fn clean_namespace(&self, ns: &str) -> Result<(), Error> {
        for sa in self.service_accounts_in(ns) {
            self.reference(&sa, false).await?;
        }
        if let Some(secret) = self.cached_secret(ns) {
            let api = Api::<Secret>::namespaced(self.client.clone(), ns);
            writes::delete_secret(&api, &secret, &self.metrics).await?;
        }
        Ok(())
    }
}

fn namespace_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_inner(&ns, &ctx).await;
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel {
            result: label.to_owned(),
        })
        .inc();
    // Only pull Secrets: the webhook's certificate Secret carries the label too.
    let managed = ctx
        .secrets
        .state()
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some(ctx.settings.secret_name.as_str()))
        .count();
    ctx.metrics
        .secrets_managed
        .set(i64::try_from(managed).unwrap_or(i64::MAX));
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&ns.name_any());
    }
    result
}

async fn reconcile_inner(ns: &Namespace, ctx: &Context) -> Result<Action, Error> {
    let Some(cfg) = ctx.config() else {
        // No ConfigMap: do nothing yet.
        return Ok(Action::await_change());
    };
    let name = ns.name_any();
    if ns.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !cfg.namespaces.contains(&name) {
        ctx.clean_namespace(&name).await?;
        return Ok(Action::await_change());
    }
    let resolved = ctx.resolve(&cfg).await?;
    let secret_api = Api::<Secret>::namespaced(ctx.client.clone(), &name);
    let cached = ctx.cached_secret(&name);
    writes::ensure_secret(
        &secret_api,
        &name,
        &ctx.settings.secret_name,
        &resolved.content,
        cached.as_deref(),
        &ctx.metrics,
    )
    .await?;
    for sa in ctx.service_accounts_in(&name) {
        let want = cfg.service_accounts.contains(&sa.name_any());
        if let Err(e) = ctx.reference(&sa, want).await {
            let reference = sa.object_ref(&());
            ctx.warn(&reference, "PatchFailed", e.to_string()).await;
            return Err(e);
        }
    }
    let wait = resolved
        .refresh_at
        .duration_since(Timestamp::now())
        .as_secs_f64()
        .clamp(1.0, 24.0 * 3600.0);
    Ok(Action::requeue(Duration::from_secs_f64(wait)))
}

fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = ns.name_any();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&CategoryLabel {
            category: error.category().to_owned(),
        })
        .inc();
    let failures = {
        let mut f = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = f.entry(name.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    // Exponential backoff with jitter: 2 s, 4 s, ... up to 5 minutes.
    let ceiling = 2f64
        .powi(i32::try_from(failures.min(9)).unwrap_or(9))
        .min(300.0);
    let delay = rand::random_range(ceiling / 2.0..=ceiling);
    tracing::warn!(namespace = %name, error = %error, category = error.category(), retry_in_s = delay, "reconcile failed");
    let note = error.to_string();
    let reason = match error {
        Error::Credentials { .. } => "CredentialsUnavailable",
        Error::ForeignSecret { .. } => "SecretNameTaken",
        _ => "ReconcileFailed",
    };
    let reference = namespace_reference(&name);
    let ctx2 = ctx.clone();
    tokio::spawn(async move { ctx2.warn(&reference, reason, note).await });
    Action::requeue(Duration::from_secs_f64(delay))
}

/// Applies a ConfigMap event: a usable configuration replaces the one in force and triggers a
/// reconcile of every namespace; an unusable one is reported and the last good one stays.
async fn apply_config(ctx: &Context, cm: Option<&ConfigMap>, trigger: &mpsc::UnboundedSender<()>) {
    let Some(cm) = cm else {
        ctx.metrics.config_present.set(0);
        if ctx.config().is_some() {
            tracing::warn!(
                "ConfigMap {}/{} was deleted: nothing more is written or refreshed until it exists again (existing Secrets and references stay; run `cleanup` to remove them)",
                ctx.settings.config_namespace,
                ctx.settings.config_name
            );
        }
        ctx.set_config(None);
        return;
    };
    ctx.metrics.config_present.set(1);
    let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
    match config::parse(&data, ctx.settings.region.as_deref()) {
        Ok(parsed) => {
            ctx.metrics.config_valid.set(1);
            for w in &parsed.warnings {
                tracing::warn!(warning = %w, "acr-configuration");
            }
            let next = Arc::new(parsed.config);
            if ctx.config().as_deref() == Some(&*next) {
                return;
            }
            ctx.registry.chain().set_threshold(next.expiring_threshold);
            let keep: Vec<_> = next.instances.iter().map(Instance::instance_ref).collect();
            ctx.registry.retain(|r| keep.contains(r));
            ctx.domains.retain(|r| keep.contains(r));
            tracing::info!(
                instances = next.instances.len(),
                namespaces = ?next.namespaces,
                service_accounts = ?next.service_accounts,
                threshold_s = next.expiring_threshold.as_secs(),
                "applied acr-configuration"
            );
            ctx.set_config(Some(next.clone()));
            let _ = trigger.unbounded_send(());
            reconcile_webhook(ctx, &next, cm).await;
        }
        Err(errors) => {
            ctx.metrics.config_valid.set(0);
            let message = format!(
                "acr-configuration rejected, the previous configuration stays in force: {errors}"
            );
            tracing::error!(%errors, "acr-configuration rejected; the previous configuration stays in force");
            ctx.warn(&cm.object_ref(&()), "InvalidConfiguration", message)
                .await;
        }
    }
}

/// Leader duty: the webhook registration follows `webhook-configuration`.
async fn reconcile_webhook(ctx: &Context, cfg: &Config, cm: &ConfigMap) {
    if let Err(e) = crate::webhook::runtime::reconcile(
        &ctx.client,
        &ctx.webhook,
        &ctx.settings.config_namespace,
        &cfg.webhook,
    )
    .await
    {
        tracing::warn!(error = %e, "could not register the admission webhook");
        ctx.warn(
            &cm.object_ref(&()),
            "WebhookFailed",
            format!("admission webhook: {e}"),
        )
        .await;
    }
}

/// What `run` needs besides the client.
pub struct Wiring {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    pub webhook: crate::webhook::runtime::WebhookSettings,
}

/// Readiness, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    /// A replica that waits for leadership is ready: it has nothing to obtain.
    pub standby: AtomicBool,
    pub synced: AtomicBool,
    pub context: RwLock<Option<Arc<Context>>>,
}

impl Readiness {
    /// Ready once the watches are synced and, if a configuration is in force, credentials were
    /// obtained for it.
    pub fn ready(&self) -> bool {
        if self.standby.load(Ordering::Relaxed) {
            return true;
        }
        if !self.synced.load(Ordering::Relaxed) {
            return false;
        }
        match &*self
            .context
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(ctx) => ctx.config().is_none() || ctx.credentials_ok(),
            None => false,
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    w: Wiring,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = w.client;
    let (sa_store, sa_writer) = reflector::store();
    let sa_stream = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(sa_writer)
    .touched_objects();
    let (secret_store, secret_writer) = reflector::store();
    let secret_stream = watcher(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .reflect(secret_writer)
    .touched_objects();

    let ctx = Arc::new(Context {
        client: client.clone(),
        webhook: w.webhook.clone(),
        registry: w.registry,
        settings: w.settings.clone(),
        metrics: w.metrics,
        config: RwLock::new(None),
        domains: Cache::default(),
        service_accounts: sa_store.clone(),
        secrets: secret_store.clone(),
        recorder: Recorder::new(client.clone(), w.reporter),
        failures: Mutex::new(HashMap::new()),
        patched_from: Mutex::new(HashMap::new()),
        credentials_ok: AtomicBool::new(false),
    });
    *readiness
        .context
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ctx.clone());

    let (trigger, triggers) = mpsc::unbounded();
    let cm_api = Api::<ConfigMap>::namespaced(client.clone(), &w.settings.config_namespace);
    let cm_watch = watcher(
        cm_api,
        watcher::Config::default().fields(&format!("metadata.name={}", w.settings.config_name)),
    )
    .default_backoff();
    let config_ctx = ctx.clone();
    let config_synced = Arc::new(AtomicBool::new(false));
    let config_synced_w = config_synced.clone();
    let config_task = tokio::spawn(async move {
        let mut seen = false;
        let mut last: Option<ConfigMap> = None;
        let mut events = std::pin::pin!(cm_watch);
        // Re-checks the webhook certificate for renewal every hour.
        let mut renewal = tokio::time::interval(Duration::from_secs(3600));
        renewal.tick().await;
        loop {
            let event = tokio::select! {
                event = events.next() => match event {
                    Some(e) => e,
                    None => break,
                },
                _ = renewal.tick() => {
                    if let (Some(cfg), Some(cm)) = (config_ctx.config(), last.as_ref()) {
                        reconcile_webhook(&config_ctx, &cfg, cm).await;
                    }
                    continue;
                }
            };
            if let Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = &event {
                last = Some(cm.clone());
            }
            match event {
                Ok(watcher::Event::Apply(cm)) | Ok(watcher::Event::InitApply(cm)) => {
                    seen = true;
                    apply_config(&config_ctx, Some(&cm), &trigger).await;
                }
                Ok(watcher::Event::Delete(_)) => {
                    seen = false;
                    apply_config(&config_ctx, None, &trigger).await;
                }
                Ok(watcher::Event::Init) => seen = false,
                Ok(watcher::Event::InitDone) => {
                    if !seen {
                        apply_config(&config_ctx, None, &trigger).await;
                    }
                    config_synced_w.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "ConfigMap watch failed; retrying"),
            }
        }
    });

    let sync_readiness = readiness.clone();
    let (sa_ready, secret_ready) = (sa_store.clone(), secret_store.clone());
    tokio::spawn(async move {
        let _ = sa_ready.wait_until_ready().await;
        let _ = secret_ready.wait_until_ready().await;
        while !config_synced.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sync_readiness.synced.store(true, Ordering::Relaxed);
        tracing::info!("watches synced");
    });

    let to_namespace = |obj_ns: Option<String>| obj_ns.map(|ns| ObjectRef::<Namespace>::new(&ns));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_stream(sa_stream, move |sa: ServiceAccount| {
        to_namespace(sa.namespace())
    })
    .watches_stream(secret_stream, move |s: Secret| to_namespace(s.namespace()))
    .reconcile_all_on(triggers)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "controller");
        }
    })
    .await;
    config_task.abort();
}

/// Removes every reference and Secret the controller owns, in every namespace (for uninstall).
/// Returns (references removed, Secrets deleted).
pub async fn cleanup(
    client: Client,
    secret_name: &str,
    metrics: &Metrics,
) -> Result<(usize, usize), Error> {
    let sa_api = Api::<ServiceAccount>::all(client.clone());
    let sas = sa_api
        .list(&Default::default())
        .await
        .map_err(|e| Error::Kube {
            action: "list",
            kind: "ServiceAccount",
            object: "all namespaces".into(),
            source: Box::new(e),
        })?;
    let mut refs = 0;
    for sa in sas.items {
        let ns = sa.namespace().unwrap_or_default();
        let api = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
        if writes::ensure_reference(&api, &sa, secret_name, false, metrics)
            .await?
            .is_some()
        {
            refs += 1;
        }
    }
    let secrets = Api::<Secret>::all(client.clone())
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .await
        .map_err(|e| Error::Kube {
            action: "list",
            kind: "Secret",
            object: "all namespaces".into(),
            source: Box::new(e),
        })?;
    let mut deleted = 0;
    for s in secrets.items {
        let api = Api::<Secret>::namespaced(client.clone(), &s.namespace().unwrap_or_default());
        if writes::delete_secret(&api, &s, metrics).await? {
            deleted += 1;
        }
    }
    Ok((refs, deleted))
}
