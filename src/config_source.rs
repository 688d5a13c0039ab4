//! The one source of configuration truth. Every replica runs it: it watches the
//! `acr-configuration` ConfigMap and the Secret holding the last accepted configuration, validates
//! the ConfigMap once per change, and publishes the configuration in force to the controller, the
//! webhook and the readiness probe through a `watch` channel.
//!
//! A usable ConfigMap is in force. An unusable one leaves the previous configuration in force: the
//! one this process accepted before, else the last accepted one persisted in a Secret (so a bad
//! edit survives restarts and leader changes without breaking what works). A missing ConfigMap
//! means "do nothing", and so does a ConfigMap that `cleanup` marked: uninstall is in progress.
//! Writing the persisted copy, and Events, are the leader's (see the controller).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;

/// On the ConfigMap: `cleanup` ran; the controller stands down until it is removed.
pub const CLEANUP_ANNOTATION: &str = "aliyun-acr-credential-helper/cleanup";
/// The key of the last accepted configuration in its Secret (the ConfigMap's `data`, as JSON).
pub const LAST_CONFIG_KEY: &str = "config.json";
/// When the persisted configuration was accepted (RFC 3339), on its Secret.
pub const ACCEPTED_AT_ANNOTATION: &str = "aliyun-acr-credential-helper/accepted-at";
/// The resourceVersion of the ConfigMap the persisted configuration was accepted from.
pub const CONFIGMAP_VERSION_ANNOTATION: &str =
    "aliyun-acr-credential-helper/configmap-resource-version";

/// A ConfigMap's `data`. It may hold an AccessKey secret: `Debug` shows the keys only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawConfig(pub BTreeMap<String, String>);

impl std::fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Where the configuration in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The live ConfigMap.
    Live,
    /// The live ConfigMap is unusable; the configuration this process accepted before stays.
    Previous,
    /// The live ConfigMap is unusable and this process accepted none: the last accepted
    /// configuration, from its Secret.
    LastAccepted,
}

/// Why no configuration is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// The watches have not listed yet.
    Syncing,
    /// No ConfigMap: do nothing yet.
    Absent,
    /// `cleanup` marked the ConfigMap: uninstall is in progress.
    StandingDown,
    /// The ConfigMap is unusable and no configuration was ever accepted.
    NothingUsable,
}

/// The configuration in force.
#[derive(Debug, Clone)]
pub struct InForce {
    pub config: Arc<Config>,
    pub origin: Origin,
    /// What was accepted, as written (persisted by the leader when it came from the live
    /// ConfigMap).
    pub data: Arc<RawConfig>,
    /// When it was accepted, for a configuration loaded from its Secret.
    pub accepted_at: Option<Timestamp>,
    /// The resourceVersion of the ConfigMap it was accepted from.
    pub resource_version: Option<String>,
}

/// The last accepted configuration as its Secret holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub data: Arc<RawConfig>,
    pub accepted_at: Option<Timestamp>,
    pub resource_version: Option<String>,
}

/// What every consumer sees.
#[derive(Debug, Clone)]
pub struct ConfigView {
    pub state: Result<InForce, Idle>,
    /// Why the live ConfigMap is unusable, if it is.
    pub rejected: Option<Arc<ConfigErrors>>,
    /// What the live ConfigMap holds that is ignored.
    pub warnings: Arc<Vec<String>>,
    /// The live ConfigMap, for Events.
    pub configmap: Option<ObjectReference>,
    /// The persisted copy, as the Secret holds it now.
    pub persisted: Option<Persisted>,
}

impl ConfigView {
    pub fn syncing() -> ConfigView {
        ConfigView {
            state: Err(Idle::Syncing),
            rejected: None,
            warnings: Arc::default(),
            configmap: None,
            persisted: None,
        }
    }

    /// The configuration to act on, if any.
    pub fn config(&self) -> Option<&Arc<Config>> {
        self.state.as_ref().ok().map(|f| &f.config)
    }

    pub fn synced(&self) -> bool {
        self.state.as_ref().err() != Some(&Idle::Syncing)
    }
}

/// Where the source looks.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub namespace: String,
    pub configmap: String,
    pub last_config_secret: String,
    /// The cluster's region, the default region of instances.
    pub region: Option<String>,
}

/// The last accepted configuration a Secret holds, if it holds one.
pub fn persisted_data(secret: &Secret) -> Option<Persisted> {
    let bytes = secret.data.as_ref()?.get(LAST_CONFIG_KEY)?;
    let map: BTreeMap<String, String> = serde_json::from_slice(&bytes.0).ok()?;
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    Some(Persisted {
        data: Arc::new(RawConfig(map)),
        accepted_at: annotation(ACCEPTED_AT_ANNOTATION).and_then(|t| t.parse().ok()),
        resource_version: annotation(CONFIGMAP_VERSION_ANNOTATION),
    })
}

/// Whether ConfigMap version `a` is newer than `b` (see the index on comparing versions; when
/// they do not compare, `a` is not newer).
fn newer(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a.map(str::parse::<u64>), b.map(str::parse::<u64>)), (Some(Ok(a)), Some(Ok(b))) if a > b)
}

/// The live ConfigMap as far as the source cares.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    data: RawConfig,
    cleanup: bool,
    reference: ObjectReference,
}

/// A parse of the live data: the configuration and its warnings, or why it is rejected.
type LiveParse = Result<(Arc<Config>, Arc<Vec<String>>), Arc<ConfigErrors>>;

/// The pure state machine behind the source.
#[derive(Debug, Default)]
pub struct Source {
    region: Option<String>,
    live: Option<Live>,
    live_synced: bool,
    /// The live data's parse, done once per change.
    parsed: Option<LiveParse>,
    /// What this process accepted last, with the ConfigMap version it came from.
    previous: Option<(Arc<Config>, Arc<RawConfig>, Option<String>)>,
    persisted: Option<Persisted>,
    persisted_parsed: Option<Result<Arc<Config>, Arc<ConfigErrors>>>,
    persisted_synced: bool,
}

impl Source {
    pub fn new(region: Option<String>) -> Source {
        Source {
            region,
            ..Source::default()
        }
    }

    fn set_live(&mut self, cm: Option<&ConfigMap>) {
        let live = cm.map(|cm| Live {
            data: RawConfig(cm.data.clone().unwrap_or_default()),
            cleanup: cm
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CLEANUP_ANNOTATION)),
            reference: {
                // With its version: an Event is about one edit, and a new edit gets Events of its own.
                let mut r = cm.object_ref(&());
                r.resource_version = cm.metadata.resource_version.clone();
                r
            },
        });
        if live.as_ref().map(|l| &l.data) != self.live.as_ref().map(|l| &l.data) {
            self.parsed = live.as_ref().map(|l| {
                config::parse(&l.data.0, self.region.as_deref())
                    .map(|p| (Arc::new(p.config), Arc::new(p.warnings)))
                    .map_err(Arc::new)
            });
            if let Some(Ok((_, warnings))) = &self.parsed {
                for w in warnings.iter() {
                    tracing::warn!(warning = %w, "acr-configuration");
                }
            }
            if let Some(Err(errors)) = &self.parsed {
                tracing::error!(%errors, "acr-configuration rejected");
            }
        }
        self.live = live;
    }

    fn set_persisted(&mut self, secret: Option<&Secret>) {
        let next = secret.and_then(persisted_data);
        if next.as_ref().map(|p| &p.data) != self.persisted.as_ref().map(|p| &p.data) {
            self.persisted_parsed = next.as_ref().map(|p| {
                config::parse(&p.data.0, self.region.as_deref())
                    .map(|p| Arc::new(p.config))
                    .map_err(Arc::new)
            });
        }
        self.persisted = next;
    }

    /// A ConfigMap watch event.
    pub fn configmap(&mut self, cm: Option<&ConfigMap>, synced: bool) {
        self.set_live(cm);
        self.live_synced |= synced;
    }

    /// A watch event of the last-accepted-configuration Secret.
    pub fn last_config(&mut self, secret: Option<&Secret>, synced: bool) {
        self.set_persisted(secret);
        self.persisted_synced |= synced;
    }

    /// What is in force now.
    pub fn view(&mut self) -> ConfigView {
        let mut view = ConfigView {
            persisted: self.persisted.clone(),
            configmap: self.live.as_ref().map(|l| l.reference.clone()),
            ..ConfigView::syncing()
        };
        if !(self.live_synced && self.persisted_synced) {
            return view;
        }
        let Some(live) = &self.live else {
            view.state = Err(Idle::Absent);
            return view;
        };
        if live.cleanup {
            view.state = Err(Idle::StandingDown);
            return view;
        }
        match &self.parsed {
            Some(Ok((config, warnings))) => {
                let data = Arc::new(live.data.clone());
                let version = live.reference.resource_version.clone();
                self.previous = Some((config.clone(), data.clone(), version.clone()));
                view.warnings = warnings.clone();
                view.state = Ok(InForce {
                    config: config.clone(),
                    origin: Origin::Live,
                    data,
                    accepted_at: None,
                    resource_version: version,
                });
            }
            Some(Err(errors)) => {
                view.rejected = Some(errors.clone());
                let persisted = match (&self.persisted, &self.persisted_parsed) {
                    (Some(p), Some(Ok(config))) => Some((p, config)),
                    _ => None,
                };
                // What this replica accepted, unless the persisted copy is of a newer edit (the
                // leader saw one this replica's watch skipped).
                let previous = self.previous.as_ref().filter(|(_, _, v)| {
                    persisted
                        .is_none_or(|(p, _)| !newer(p.resource_version.as_deref(), v.as_deref()))
                });
                view.state = match (previous, persisted) {
                    (Some((config, data, version)), _) => Ok(InForce {
                        config: config.clone(),
                        origin: Origin::Previous,
                        data: data.clone(),
                        accepted_at: None,
                        resource_version: version.clone(),
                    }),
                    (None, Some((p, config))) => Ok(InForce {
                        config: config.clone(),
                        origin: Origin::LastAccepted,
                        data: p.data.clone(),
                        accepted_at: p.accepted_at,
                        resource_version: p.resource_version.clone(),
                    }),
                    (None, None) => Err(Idle::NothingUsable),
                };
            }
            None => view.state = Err(Idle::Absent),
        }
        view
    }
}

/// Folds the events of a watch on one named object into "the object, if it exists".
#[derive(Debug)]
struct OneObject<K> {
    current: Option<K>,
    /// Seen during a relist in progress.
    relisted: Option<Option<K>>,
    synced: bool,
}

impl<K: Clone> OneObject<K> {
    fn new() -> Self {
        OneObject {
            current: None,
            relisted: None,
            synced: false,
        }
    }

    /// Returns true when `current` may have changed.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(None);
                false
            }
            watcher::Event::InitApply(k) => {
                self.relisted = Some(Some(k));
                false
            }
            watcher::Event::InitDone => {
                self.current = self.relisted.take().flatten();
                self.synced = true;
                true
            }
            watcher::Event::Apply(k) => {
                self.current = Some(k);
                true
            }
            watcher::Event::Delete(_) => {
                self.current = None;
                true
            }
        }
    }
}

/// Runs the source until the returned channel's receivers are all gone or the task is aborted.
pub fn spawn(
    client: Client,
    settings: SourceSettings,
    metrics: Arc<Metrics>,
) -> (
    watch::Receiver<Arc<ConfigView>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Arc::new(ConfigView::syncing()));
    let task = tokio::spawn(async move {
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let cms = watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &settings.namespace),
            by_name(&settings.configmap),
        )
        .default_backoff();
        let secrets = watcher(
            Api::<Secret>::namespaced(client, &settings.namespace),
            by_name(&settings.last_config_secret),
        )
        .default_backoff();
        let mut cms = std::pin::pin!(cms);
        let mut secrets = std::pin::pin!(secrets);
        let mut source = Source::new(settings.region.clone());
        let mut cm = OneObject::<ConfigMap>::new();
        let mut last = OneObject::<Secret>::new();
        loop {
            let changed = tokio::select! {
                e = cms.next() => match e {
                    Some(Ok(e)) => {
                        let changed = cm.apply(e);
                        if changed { source.configmap(cm.current.as_ref(), cm.synced) }
                        changed
                    }
                    Some(Err(e)) => { tracing::warn!(error = %e, "ConfigMap watch failed; retrying"); false }
                    None => break,
                },
                e = secrets.next() => match e {
                    Some(Ok(e)) => {
                        let changed = last.apply(e);
                        if changed { source.last_config(last.current.as_ref(), last.synced) }
                        changed
                    }
                    Some(Err(e)) => { tracing::warn!(error = %e, "last accepted configuration watch failed; retrying"); false }
                    None => break,
                },
            };
            if !changed {
                continue;
            }
            let view = source.view();
            metrics.config_present.set(i64::from(cm.current.is_some()));
            metrics.config_valid.set(i64::from(view.rejected.is_none()));
            let fallback = matches!(&view.state, Ok(f) if f.origin != Origin::Live);
            metrics.config_last_accepted.set(i64::from(fallback));
            let same = {
                let old = tx.borrow();
                same_view(&old, &view)
            };
            if !same {
                log_view(&view);
                if tx.send(Arc::new(view)).is_err() {
                    break;
                }
            }
        }
    });
    (rx, task)
}

fn same_view(a: &ConfigView, b: &ConfigView) -> bool {
    let state_eq = match (&a.state, &b.state) {
        (Ok(x), Ok(y)) => x.origin == y.origin && x.config == y.config && x.data == y.data,
        (Err(x), Err(y)) => x == y,
        _ => false,
    };
    state_eq
        && a.rejected == b.rejected
        && a.persisted == b.persisted
        && a.configmap.as_ref().map(|r| &r.resource_version)
            == b.configmap.as_ref().map(|r| &r.resource_version)
}

fn log_view(view: &ConfigView) {
    match &view.state {
        Ok(f) => tracing::info!(
            origin = ?f.origin,
            instances = f.config.instances.len(),
            namespaces = ?f.config.namespaces,
            namespace_selector = f.config.namespace_selector.as_ref().map(ToString::to_string),
            exclude_namespaces = ?f.config.exclude_namespaces,
            service_accounts = ?f.config.service_accounts,
            threshold_s = f.config.expiring_threshold.as_secs(),
            "configuration in force"
        ),
        Err(idle) => tracing::info!(state = ?idle, "no configuration in force"),
    }
}

#[cfg(test)]
mod tests;
