//! Credentials → the Secret content. One task on the leader keeps a registry login for every
//! configured instance (one `GetAuthorizationToken` per instance and refresh, however many
//! namespaces), and publishes the content every selected namespace's Secret should hold. The
//! namespaces never call the cloud: when the content changes, every one whose Secret differs is
//! queued.
//!
//! When a login is fetched and a failure retried is [`crate::timing`]'s decision; this module
//! keeps the slots, asks it, and does the I/O.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::watch;

use crate::config::Config;
use crate::config_source::ConfigView;
use crate::credentials::{CredentialError, Edition, Registry};
use crate::index::SharedIndex;
use crate::metrics::{InstanceCategoryLabels, InstanceLabel, Metrics};
use crate::render;
use crate::timing::{self, Schedule};

use super::Error;
use super::events::{Events, Reason};
use super::state::StateStore;
use super::writes::Writer;

mod content;
mod slot;
#[cfg(test)]
mod tests;

pub use content::{Content, content_of};
pub use slot::{Phase, Slot, adopt, held, record_of, reslot};

/// Why an instance has no usable login.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("instance {instance}: {source}")]
    Credentials {
        instance: String,
        #[source]
        source: CredentialError,
    },
    #[error(
        "instance {instance}: no enabled endpoint has a registry domain (ListInstanceEndpoint); set `domains` or enable an endpoint. The Secrets keep their previous logins"
    )]
    NoDomains { instance: String },
}

impl RefreshError {
    pub fn category(&self) -> &'static str {
        match self {
            RefreshError::Credentials { source, .. } => source.category(),
            RefreshError::NoDomains { .. } => "no_domains",
        }
    }
}

/// Keeps the published content fresh for the configuration in force.
pub struct Refresher {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    pub index: Arc<SharedIndex>,
    /// Secrets written per second during a refresh (the spread window follows from it).
    pub refresh_rate: u32,
    /// The term's writer, for the state Secret.
    pub writer: Writer,
    /// Where the state Secret is: the release namespace and its name.
    pub state_namespace: String,
    pub state_secret: String,
}

impl Refresher {
    fn failed(&self, slot: &Slot, e: &RefreshError) {
        self.metrics
            .credential_errors
            .get_or_create(&InstanceCategoryLabels {
                acr_instance: slot.instance.label(),
                category: e.category().to_owned(),
            })
            .inc();
    }

    /// `acr_helper_token_expiry_timestamp_seconds` of every instance with a login.
    fn report_expiry(&self, slots: &[Slot]) {
        for s in slots {
            if let Some(t) = &s.token {
                self.metrics
                    .token_expiry
                    .get_or_create(&InstanceLabel {
                        acr_instance: s.instance.label(),
                    })
                    .set(t.usable_until.as_second());
            }
        }
    }

    /// The registry domains of the slot's instance: as configured, else all of an Enterprise
    /// instance's enabled endpoints (listed again every 10 minutes), else the Personal Edition's.
    async fn fetch_domains(
        &self,
        slot: &mut Slot,
        now: Timestamp,
        threshold: Duration,
    ) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let listed = match &inst.edition {
            _ if !inst.domains.is_empty() => Ok(inst.domains.clone()),
            Edition::Personal => Ok(render::personal_domains(&inst.region)),
            Edition::Enterprise { instance_id } => self
                .registry
                .enterprise_domains(&inst.auth, &inst.region, instance_id, threshold)
                .await
                .map_err(|source| RefreshError::Credentials {
                    instance: inst.label(),
                    source,
                }),
        };
        let listed = listed.and_then(|d| {
            if d.is_empty() {
                Err(RefreshError::NoDomains {
                    instance: inst.label(),
                })
            } else {
                Ok(d)
            }
        });
        // Listed domains are listed again now and then; configured ones never change.
        let relisted =
            matches!(inst.edition, Edition::Enterprise { .. }) && inst.domains.is_empty();
        match listed {
            Ok(d) => {
                slot.domains = Some(d);
                slot.domains_due = relisted.then(|| now + timing::DOMAINS_TTL);
                Ok(())
            }
            // Listing again failed: the domains known stay, and the login is still refreshed;
            // the listing is tried again in a minute.
            Err(e) if slot.domains.is_some() => {
                tracing::warn!(error = %e, "could not list the instance's domains again; keeping the known ones");
                self.failed(slot, &e);
                slot.domains_due = Some(now + timing::DOMAINS_RETRY);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_login(
        &self,
        slot: &mut Slot,
        now: Timestamp,
        threshold: Duration,
    ) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let t = self
            .registry
            .fetch_token(&inst.instance_ref(), threshold)
            .await
            .map_err(|source| RefreshError::Credentials {
                instance: inst.label(),
                source,
            })?;
        slot.token = Some(t);
        slot.obtained_at = Some(now);
        slot.superseded = false;
        Ok(())
    }

    /// Fetches `phase` for the slots due for it at once; failures schedule their retries.
    async fn fetch_due(
        &self,
        slots: &mut [Slot],
        phase: Phase,
        schedule: &Schedule,
        valid_until: Option<Timestamp>,
        cm_ref: Option<&ObjectReference>,
    ) {
        let now = Timestamp::now();
        let due: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].due_for(phase, now, schedule))
            .collect();
        let fetched = futures::future::join_all(due.iter().map(|&i| {
            let mut slot = slots[i].clone();
            async move {
                let r = match phase {
                    Phase::Domains => self.fetch_domains(&mut slot, now, schedule.threshold).await,
                    Phase::Login => self.fetch_login(&mut slot, now, schedule.threshold).await,
                };
                (i, slot, r)
            }
        }))
        .await;
        for (i, mut slot, result) in fetched {
            match result {
                Ok(()) if phase == Phase::Login => self.recovered(&mut slot, cm_ref).await,
                Ok(()) => {}
                Err(e) => self.retry_later(&mut slot, &e, valid_until, cm_ref).await,
            }
            slots[i] = slot;
        }
    }

    /// A login was obtained: the failures are over (and, after some, a `Normal` Event says so).
    async fn recovered(&self, slot: &mut Slot, cm_ref: Option<&ObjectReference>) {
        if slot.failures > 0 {
            tracing::info!(instance = %slot.instance.label(), after_failures = slot.failures, "credentials obtained again");
            if let Some(r) = cm_ref {
                let until = slot.token.as_ref().map_or(String::new(), |t| {
                    format!("; usable until {}", t.usable_until)
                });
                self.events
                    .record(
                        r,
                        Reason::Refreshed,
                        format!(
                            "credentials for {} obtained again after {} failed attempt(s){until}",
                            slot.instance.label(),
                            slot.failures
                        ),
                    )
                    .await;
            }
        }
        slot.failures = 0;
        slot.retry_at = None;
    }

    /// A fetch failed: counted, logged, reported at the first failure, and retried when
    /// [`timing::retry_delay`] says.
    async fn retry_later(
        &self,
        slot: &mut Slot,
        e: &RefreshError,
        valid_until: Option<Timestamp>,
        cm_ref: Option<&ObjectReference>,
    ) {
        let delay = slot.failed_at(Timestamp::now(), valid_until, rand::random());
        self.failed(slot, e);
        tracing::warn!(error = %e, category = e.category(), failures = slot.failures, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), valid_until = ?valid_until, "could not refresh credentials");
        if slot.failures == 1
            && let Some(r) = cm_ref
        {
            let until = valid_until.map_or("no password was obtained yet".to_owned(), |v| {
                format!("the Secrets keep their current passwords, valid until {v}")
            });
            self.events
                .record(
                    r,
                    Reason::CredentialsUnavailable,
                    format!("{e}; {until}; retrying"),
                )
                .await;
        }
    }

    /// The state Secret, read again until it can be (the term cannot write without its key).
    async fn load_state(
        &self,
        cm_ref: Option<&k8s_openapi::api::core::v1::ObjectReference>,
    ) -> StateStore {
        let mut failures = 0u32;
        loop {
            match StateStore::load(
                self.writer.clone(),
                &self.state_namespace,
                &self.state_secret,
            )
            .await
            {
                Ok(store) => {
                    tracing::info!(
                        secret = %format!("{}/{}", self.state_namespace, self.state_secret),
                        recorded_logins = store.record.logins.len(),
                        new_key = store.fresh,
                        "read the controller's state"
                    );
                    return store;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "could not read the controller's state Secret; retrying");
                    if failures == 1
                        && let Some(r) = cm_ref
                    {
                        self.events
                            .record(
                                r,
                                Reason::StateUnavailable,
                                format!("{e}; no pull Secret is written until it can be read"),
                            )
                            .await;
                    }
                    tokio::time::sleep(timing::retry_delay(
                        failures,
                        Timestamp::now(),
                        None,
                        rand::random(),
                    ))
                    .await;
                }
            }
        }
    }

    /// Follows a new configuration: its instances get slots (keeping what the same registry
    /// obtained), and the metrics of instances gone are removed. `false` when nothing is in
    /// force, once the slots and the published content were cleared.
    fn follow(
        &self,
        cfg: Option<&Arc<Config>>,
        config: &mut Option<Arc<Config>>,
        slots: &mut Vec<Slot>,
        content: &watch::Sender<Option<Arc<Content>>>,
    ) -> bool {
        let Some(cfg) = cfg else {
            // Nothing in force (missing, being cleaned up): no cloud calls, no content.
            if config.take().is_some() {
                slots.clear();
                self.metrics.token_expiry.clear();
                content.send_replace(None);
            }
            return false;
        };
        if config.as_ref() != Some(cfg) {
            let (next, gone) = reslot(std::mem::take(slots), &cfg.instances);
            for g in gone.iter().filter(|g| {
                !next
                    .iter()
                    .any(|n| n.instance.label() == g.instance.label())
            }) {
                self.metrics.token_expiry.remove(&InstanceLabel {
                    acr_instance: g.instance.label(),
                });
            }
            *slots = next;
            *config = Some(cfg.clone());
        }
        true
    }

    /// Publishes the content the slots give, unless it is what is published already. A refresh
    /// of what the Secrets hold (still valid) may be spread over the window it was fetched ahead
    /// by; anything else is written at once.
    fn publish(
        &self,
        slots: &[Slot],
        store: &StateStore,
        cfg: &Config,
        schedule: &Schedule,
        content: &watch::Sender<Option<Arc<Content>>>,
    ) {
        let now = Timestamp::now();
        let must_hold = if slots.iter().all(Slot::ready) {
            BTreeSet::new()
        } else {
            held(&store.record, &cfg.instances, now)
        };
        let Some(mut next) = Content::new(
            slots,
            must_hold,
            cfg.instances.clone(),
            store.key.clone(),
            store.fresh,
        ) else {
            return;
        };
        let refresh = content
            .borrow()
            .as_ref()
            .is_some_and(|p| p.configured == cfg.instances && p.expires_at > now);
        next.spread_until = schedule.spread_until(now).filter(|_| refresh);
        content.send_if_modified(|old| {
            if old.as_ref().is_some_and(|o| o.same_as(&next)) {
                return false;
            }
            let instances: Vec<String> = slots
                .iter()
                .filter(|s| s.ready())
                .map(|s| s.instance.label())
                .collect();
            tracing::info!(expires_at = %next.expires_at, ?instances, spread_until = ?next.spread_until, "new Secret content");
            *old = Some(Arc::new(next));
            true
        });
    }

    /// Runs until the task is dropped: follows the configuration in force, fetches what is due,
    /// records the logins, publishes the content on `content`, and sleeps until the next fetch.
    pub async fn run(
        &self,
        mut view: watch::Receiver<Arc<ConfigView>>,
        content: watch::Sender<Option<Arc<Content>>>,
    ) {
        let mut slots: Vec<Slot> = Vec::new();
        let mut config: Option<Arc<Config>> = None;
        let mut store: Option<StateStore> = None;
        loop {
            let current = view.borrow_and_update().clone();
            let cm_ref = current.configmap.clone();
            if !self.follow(current.config(), &mut config, &mut slots, &content) {
                if view.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Some(cfg) = config.clone() else { continue };
            let store = match &mut store {
                Some(s) => s,
                None => store.insert(self.load_state(cm_ref.as_ref()).await),
            };
            // A new term (a restart, a failover) or an instance added back: take over what the
            // controller recorded, so the Secrets in place stay as they are until their refresh
            // point instead of all being rewritten with new passwords.
            let taken = adopt(&mut slots, &store.record, Timestamp::now());
            if taken > 0 {
                tracing::info!(
                    logins = taken,
                    "took over the recorded logins; no rewrite until their refresh point"
                );
                self.report_expiry(&slots);
            }
            let schedule = Schedule::new(
                cfg.expiring_threshold,
                self.index.read().managed_secrets(),
                self.refresh_rate,
            );
            let valid_until = content.borrow().as_ref().map(|c| c.expires_at);
            for phase in [Phase::Domains, Phase::Login] {
                self.fetch_due(&mut slots, phase, &schedule, valid_until, cm_ref.as_ref())
                    .await;
            }
            self.report_expiry(&slots);
            // The record first: a leader that takes over after this point finds the logins the
            // Secrets are about to hold. Should the write fail, the content is still published (a
            // password must never expire for want of a record) and the write is tried again soon.
            let record_retry = match store.save(record_of(&slots)).await {
                Ok(()) => None,
                Err(Error::NotLeader) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the published logins; retrying");
                    Some(timing::RECORD_RETRY)
                }
            };
            self.publish(&slots, store, &cfg, &schedule, &content);
            let next = timing::sleep_until_next(
                Timestamp::now(),
                slots.iter().filter_map(|s| s.next_fetch(&schedule)),
                record_retry,
            );
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(next) => {},
            }
        }
    }
}
