//! The controller: what the leader does during its term.
//!
//! Every replica keeps the [`index`](crate::index) and the [configuration in
//! force](crate::config_source) from its own watches. The leader, for as long as its Lease is
//! renewed, runs:
//! - the [refresher](refresher): one registry login per instance, turned into the Secret content;
//! - workers that take namespaces from a [queue](queue), [plan](crate::plan) them from the index
//!   and the content (pure), and execute the plan's [writes](writes);
//! - the configuration duties: persisting the last accepted configuration, Events about it, and
//!   the webhook's registration.
//!
//! A namespace is queued when the index says something that matters changed there, and every
//! namespace whose plan is not empty is queued when the configuration or the content changes.

pub mod cleanup;
pub mod events;
pub mod queue;
pub mod refresher;
pub mod registration;
pub mod spread;
pub mod state;
mod term;
pub mod writes;

use term::Term;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::ObjectMeta;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::config::Config;
use crate::config_source::{
    ACCEPTED_AT_ANNOTATION, CONFIGMAP_VERSION_ANNOTATION, ConfigView, Idle, InForce,
    LAST_CONFIG_KEY, Origin, RawConfig,
};
use crate::credentials::Registry;
use crate::index::{NsState, SharedIndex};
use crate::leader::Leadership;
use crate::metrics::{CategoryLabel, Metrics, ResultLabel};
use crate::plan::{Desired, NamespacePlan, SecretStep, plan_namespace};
use crate::render::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretContent};
use crate::timing::retry_delay;
use events::{Events, Reason};
use queue::WorkQueue;
use refresher::Content;
use refresher::Refresher;
use writes::Writer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed. The `kube::Error` itself is not kept: about a Secret its message
    /// could quote the data an admission webhook rejected; its category and status are.
    #[error("{action} {kind} {object}: {detail} ({category})")]
    Kube {
        action: &'static str,
        kind: &'static str,
        object: String,
        detail: String,
        category: crate::kube_errors::Category,
    },
    #[error(
        "Secret {object} exists and is not managed by aliyun-acr-credential-helper; it is left alone and no ServiceAccount there is patched"
    )]
    ForeignSecret { object: String },
    #[error("{object} kept changing under us; will try again")]
    Conflicts { object: String },
    #[error("this replica's leadership term is over; it writes nothing more")]
    NotLeader,
    #[error("{failed} of {total} writes failed in namespace {namespace}; the first: {first}")]
    Several {
        namespace: String,
        failed: usize,
        total: usize,
        first: Box<Error>,
    },
    #[error("{0}")]
    Lease(#[from] crate::leader::LeaseError),
    #[error("admission webhook: {0}")]
    Registration(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A stable category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { category, .. } => category.label(),
            Error::Lease(crate::leader::LeaseError::Kube { source, .. }) => {
                crate::kube_errors::Category::of(source).label()
            }
            Error::Lease(crate::leader::LeaseError::Timeout { .. }) => {
                crate::kube_errors::Category::Unavailable.label()
            }
            Error::Registration(_) => "webhook_registration",
            Error::Internal(_) => "internal",
            Error::ForeignSecret { .. } => "foreign_secret",
            Error::Conflicts { .. } => "conflict",
            Error::NotLeader => "not_leader",
            Error::Several { first, .. } => first.category(),
        }
    }
}

/// An API error of a write, as logs and Events may show it: about a Secret, the status only
/// (an admission webhook's message could quote the data it rejected).
pub fn kube_error(
    action: &'static str,
    kind: &'static str,
    object: &str,
    e: &kube::Error,
) -> Error {
    let detail = if kind == "Secret" {
        crate::kube_errors::without_message(e)
    } else {
        e.to_string()
    };
    Error::Kube {
        action,
        kind,
        object: object.to_owned(),
        detail,
        category: crate::kube_errors::Category::of(e),
    }
}

/// ServiceAccounts of one namespace patched at once.
const PATCHES_PER_NAMESPACE: usize = 8;

/// Names the controller works with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_namespace: String,
    pub config_name: String,
    pub secret_name: String,
    /// The Secret (in the configuration namespace) holding the last accepted configuration.
    pub last_config_secret: String,
    /// The Secret (in the configuration namespace) holding the digest key and the record of the
    /// published logins ([`crate::record`]).
    pub state_secret: String,
    /// Namespaces reconciled at once.
    pub workers: usize,
    /// Secrets written per second during a refresh (spread over a window before the refresh
    /// point).
    pub refresh_rate: u32,
}

/// Readiness, as `/readyz` reports it.
#[derive(Debug)]
pub struct Readiness {
    pub index: Arc<SharedIndex>,
    pub view: watch::Receiver<Arc<ConfigView>>,
    /// The webhook's serving certificate (loaded by the webhook server).
    pub webhook_cert: Arc<crate::webhook::server::ReloadingCert>,
    pub leading: AtomicBool,
    /// The leader obtained credentials for the configuration in force.
    pub content_ok: AtomicBool,
}

impl Readiness {
    pub fn new(
        index: Arc<SharedIndex>,
        view: watch::Receiver<Arc<ConfigView>>,
        webhook_cert: Arc<crate::webhook::server::ReloadingCert>,
    ) -> Readiness {
        Readiness {
            index,
            view,
            webhook_cert,
            leading: AtomicBool::new(false),
            content_ok: AtomicBool::new(false),
        }
    }

    /// Ready once the watches have listed and, when the configuration in force registers a
    /// webhook, the serving certificate is loaded: what the replica needs to answer. The cloud
    /// is not part of it: a cloud outage is [`Readiness::degraded`], Events and metrics, so
    /// `helm install --wait` and rollouts do not stall on what a restart cannot fix.
    pub fn ready(&self) -> bool {
        let view = self.view.borrow();
        self.index.synced()
            && view.synced()
            && (!view.config().is_some_and(|c| c.webhook.any()) || self.webhook_cert.is_loaded())
    }

    /// The leader holds no credentials for the configuration in force (it is retrying; the
    /// ConfigMap's Events say why).
    pub fn degraded(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
            && self.view.borrow().config().is_some()
            && !self.content_ok.load(Ordering::Relaxed)
    }
}

/// What a leadership term works with; every replica has one.
pub struct Shared {
    /// The client of writes (the watches have their own).
    pub client: Client,
    pub index: Arc<SharedIndex>,
    pub view: watch::Receiver<Arc<ConfigView>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub webhook: crate::webhook::runtime::WebhookSettings,
    pub readiness: Arc<Readiness>,
    pub reporter: Reporter,
}

/// Why a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermEnd {
    /// Leadership was lost or ran out.
    Lost,
    /// The process is stopping.
    Stopped,
    /// A component the term needs is gone (a channel closed): the process should exit.
    Broken,
}

/// Leads term `term` until it is over or `stop` resolves: runs the refresher, the workers and
/// the configuration duties, and queues namespaces as the index, the configuration and the
/// content change. Returns only once every task of the term has ended, so nothing of it writes
/// afterwards.
pub async fn lead(
    shared: Arc<Shared>,
    leadership: Leadership,
    term_number: u64,
    stop: impl Future<Output = ()>,
) -> TermEnd {
    tracing::info!(term = term_number, "leading");
    shared.readiness.leading.store(true, Ordering::Relaxed);
    shared.metrics.leader.set(1);
    let Started {
        term,
        content: content_rx,
        tasks,
    } = start_term(&shared, &leadership, term_number);
    let mut view = shared.view.clone();
    let mut content = content_rx;
    // Everything is looked at once now; what changed before is part of that.
    shared.index.take_dirty();
    term.enqueue_all();
    let mut stop = std::pin::pin!(stop);
    let end = loop {
        tokio::select! {
            _ = &mut stop => break TermEnd::Stopped,
            _ = leadership.lost(term_number) => break TermEnd::Lost,
            changed = view.changed() => {
                if changed.is_err() { break TermEnd::Broken }
                view.borrow_and_update();
                term.enqueue_all();
            }
            changed = content.changed() => {
                if changed.is_err() { break TermEnd::Broken }
                let current = content.borrow_and_update().clone();
                shared.readiness.content_ok.store(current.is_some(), Ordering::Relaxed);
                term.enqueue_all_until(current.and_then(|c| c.spread_until));
            }
            _ = shared.index.changed() => {
                for ns in shared.index.take_dirty() {
                    term.enqueue_if_needed(ns);
                }
            }
        }
    };
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // A replica that does not lead reports no expiry: the leader's figures are the truth.
    shared.metrics.token_expiry.clear();
    shared.metrics.leader.set(0);
    shared.readiness.leading.store(false, Ordering::Relaxed);
    shared.readiness.content_ok.store(false, Ordering::Relaxed);
    tracing::info!(term = term_number, reason = ?end, "term ended");
    end
}

/// A term just begun: its state, the refresher's content as it publishes it, and its tasks.
struct Started {
    term: Arc<Term>,
    content: watch::Receiver<Option<Arc<Content>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The term's state and its tasks: the refresher, the configuration duties and the workers.
fn start_term(shared: &Arc<Shared>, leadership: &Leadership, term_number: u64) -> Started {
    let (content_tx, content_rx) = watch::channel(None);
    let events = Events::new(
        shared.client.clone(),
        shared.reporter.clone(),
        leadership.clone(),
        term_number,
    );
    let term = Arc::new(Term {
        writer: Writer::new(
            shared.client.clone(),
            leadership.clone(),
            term_number,
            shared.metrics.clone(),
        ),
        events: events.clone(),
        content: content_rx.clone(),
        queue: WorkQueue::default(),
        failures: Mutex::default(),
        blocked: Mutex::default(),
        shared: shared.clone(),
    });
    let refresher = Refresher {
        registry: shared.registry.clone(),
        metrics: shared.metrics.clone(),
        events,
        index: shared.index.clone(),
        refresh_rate: shared.settings.refresh_rate,
        writer: term.writer.clone(),
        state_namespace: shared.settings.config_namespace.clone(),
        state_secret: shared.settings.state_secret.clone(),
    };
    let view_rx = shared.view.clone();
    let mut tasks = vec![tokio::spawn(async move {
        refresher.run(view_rx, content_tx).await
    })];
    tasks.push(tokio::spawn(term.clone().configuration_duties()));
    for _ in 0..shared.settings.workers.max(1) {
        tasks.push(tokio::spawn(term.clone().work()));
    }
    Started {
        term,
        content: content_rx,
        tasks,
    }
}
