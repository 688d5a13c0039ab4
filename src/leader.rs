//! Leader election on a `coordination.k8s.io` Lease, with a renew deadline.
//!
//! The protocol is client-go's: every replica reads the Lease every `retry` period. The holder
//! renews it; another replica takes it over only once it has seen the same record, unrenewed, for
//! the whole `leaseDurationSeconds` by its own clock. The holder counts as leader only until
//! `renew deadline = duration - grace` after the start of its last successful renewal: a holder
//! that cannot renew (API server unreachable, its Lease updates denied) stops writing at that
//! moment, `grace` before anyone else may take over. [`Leadership::is_leader`] checks that
//! deadline on every call, so a writer never relies on this loop being scheduled in time.
//!
//! The Lease traffic uses a client of its own, so a connection pool saturated by reconcile writes
//! cannot delay a renewal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::kube_errors::is_conflict;

/// Where the Lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a record stays valid without renewal (what others wait before taking over).
    pub duration: Duration,
    /// How long before others may take over the holder stops writing.
    pub grace: Duration,
    /// How often the Lease is read (and renewed by its holder).
    pub retry: Duration,
}

impl LeaseConfig {
    /// How long after the start of its last successful renewal the holder may still write.
    pub fn renew_deadline(&self) -> Duration {
        self.duration
            .saturating_sub(self.grace)
            .max(Duration::from_millis(500))
    }

    /// The retry period, at most a quarter of the renew deadline: a leader gets several tries to
    /// renew before its deadline passes.
    pub fn with_sane_retry(mut self) -> LeaseConfig {
        self.retry = self.retry.min(self.renew_deadline() / 4);
        self
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// The part of a Lease the protocol looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub duration_seconds: i32,
    pub renew_time: Option<Timestamp>,
    pub acquire_time: Option<Timestamp>,
    pub transitions: i32,
}

impl Record {
    pub fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            renew_time: spec.renew_time.map(|t| t.0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// Whether `me` may write the Lease: it is free, ours, or its record has not changed for its
/// whole duration as seen by this replica (`unchanged_for`, measured by the local clock, never
/// by comparing timestamps written by another machine).
pub fn may_take(record: Option<&Record>, me: &str, unchanged_for: Duration) -> bool {
    let Some(r) = record else { return true };
    match r.holder.as_deref() {
        None => true,
        Some(h) if h == me => true,
        Some(_) => {
            let secs = u64::try_from(r.duration_seconds.max(1)).unwrap_or(1);
            unchanged_for >= Duration::from_secs(secs)
        }
    }
}

/// The spec `me` writes when taking or renewing the Lease over `previous`.
pub fn next_spec(
    previous: Option<&Record>,
    me: &str,
    cfg: &LeaseConfig,
    now: Timestamp,
) -> LeaseSpec {
    let ours = previous.is_some_and(|r| r.holder.as_deref() == Some(me));
    let transitions = previous.map_or(0, |r| r.transitions);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(cfg.duration_seconds()),
        acquire_time: Some(MicroTime(if ours {
            previous.and_then(|r| r.acquire_time).unwrap_or(now)
        } else {
            now
        })),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct TermState {
    /// The current (or last) term; a new one starts whenever leadership is taken after it was
    /// lost or ran out.
    number: u64,
    valid_until: Option<Instant>,
}

/// Whether this replica leads, in which term, and until when at the latest. Shared with every
/// writer: a write checks that its own term is still the current one and not over.
#[derive(Debug, Clone)]
pub struct Leadership {
    term: Arc<Mutex<TermState>>,
    /// `Some(term)` while leading.
    state: watch::Sender<Option<u64>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::new()
    }
}

impl Leadership {
    /// Not leading (yet).
    pub fn new() -> Leadership {
        Leadership {
            term: Arc::default(),
            state: watch::channel(None).0,
        }
    }

    /// Leading for ever: `--leader-elect=false`, and tests of single writers.
    pub fn always() -> Leadership {
        let l = Leadership::new();
        l.extend(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        l
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TermState> {
        self.term
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The term being led now, if any.
    pub fn term(&self) -> Option<u64> {
        let t = self.lock();
        t.valid_until
            .is_some_and(|v| Instant::now() < v)
            .then_some(t.number)
    }

    /// True while the last renewal is recent enough.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// True while term `term` goes on. Checked before every write.
    pub fn leads_in(&self, term: u64) -> bool {
        self.term() == Some(term)
    }

    /// How long term `term` lasts at most without another renewal.
    pub fn remaining_in(&self, term: u64) -> Option<Duration> {
        let t = self.lock();
        match t.valid_until {
            Some(v) if t.number == term => v
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero()),
            _ => None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().valid_until
    }

    fn extend(&self, until: Instant) {
        let number = {
            let mut t = self.lock();
            // Taken again after the last term ended or ran out: a new term.
            if t.valid_until.is_none_or(|v| Instant::now() >= v) {
                t.number += 1;
            }
            t.valid_until = Some(until);
            t.number
        };
        self.state
            .send_if_modified(|s| s.replace(number) != Some(number));
    }

    fn end(&self) {
        self.lock().valid_until = None;
        self.state.send_if_modified(|s| s.take().is_some());
    }

    /// Changes of leadership: `Some(term)` when a term starts, `None` when it ends.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.state.subscribe()
    }

    /// Resolves once term `term` is over: lost, or its deadline passed unrenewed.
    pub async fn lost(&self, term: u64) {
        let mut rx = self.subscribe();
        loop {
            let Some(left) = self.remaining_in(term) else {
                return;
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(left) => {},
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Lease {namespace}/{name}: no answer within {seconds}s")]
    Timeout {
        namespace: String,
        name: String,
        seconds: u64,
    },
}

/// One replica's view of the Lease over time.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    leadership: Leadership,
    /// The record last seen, and when it was first seen as it is.
    observed: Option<(Record, Instant)>,
    /// The Lease as this replica last wrote it: the holder renews over it without reading first.
    written: Option<Lease>,
}

impl Elector {
    /// `client` should be one of its own (a connection pool not shared with other traffic).
    pub fn new(client: Client, cfg: LeaseConfig, leadership: Leadership) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            leadership,
            observed: None,
            written: None,
        }
    }

    fn err(&self, e: kube::Error) -> LeaseError {
        LeaseError::Kube {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source: Box::new(e),
        }
    }

    fn observe(&mut self, record: Option<Record>) -> Duration {
        match (record, &self.observed) {
            (None, _) => {
                self.observed = None;
                Duration::ZERO
            }
            (Some(r), Some((seen, at))) if *seen == r => at.elapsed(),
            (Some(r), _) => {
                self.observed = Some((r, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Writes the Lease as held by this replica over `current` (as read). `Ok(None)`: someone
    /// else wrote it first.
    async fn take(&mut self, current: Option<&Lease>) -> Result<Option<Lease>, LeaseError> {
        let record = current.map(Record::of);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.cfg.name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
                // The Lease may be the chart's: its labels and annotations (Helm's ownership
                // among them) stay as they are; only the spec is the replicas'.
                labels: current.and_then(|l| l.metadata.labels.clone()),
                annotations: current.and_then(|l| l.metadata.annotations.clone()),
                ..Default::default()
            },
            spec: Some(next_spec(
                record.as_ref(),
                &self.cfg.identity,
                &self.cfg,
                Timestamp::now(),
            )),
        };
        let pp = PostParams::default();
        let written = match current {
            None => self.api.create(&pp, &lease).await,
            Some(_) => self.api.replace(&self.cfg.name, &pp, &lease).await,
        };
        match written {
            Ok(l) => {
                self.observe(Some(Record::of(&l)));
                self.written = Some(l.clone());
                Ok(Some(l))
            }
            Err(e) if is_conflict(&e) => {
                self.written = None;
                Ok(None)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// One round of the protocol. `Ok(true)`: this replica holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        // The leader renews over the Lease it wrote last (one request, not two); if anyone
        // changed it meanwhile the write conflicts and the round reads it as everyone does.
        if self.leadership.is_leader()
            && let Some(last) = self.written.clone()
            && self.take(Some(&last)).await?.is_some()
        {
            return Ok(true);
        }
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?;
        let record = current.as_ref().map(Record::of);
        let unchanged_for = self.observe(record.clone());
        if !may_take(record.as_ref(), &self.cfg.identity, unchanged_for) {
            return Ok(false);
        }
        Ok(self.take(current.as_ref()).await?.is_some())
    }

    /// Takes the Lease whoever holds it (for `cleanup`). Returns how long the previous holder
    /// may still believe it leads: wait that long before acting as the only writer.
    pub async fn preempt(&mut self) -> Result<Duration, LeaseError> {
        loop {
            let current = self
                .api
                .get_opt(&self.cfg.name)
                .await
                .map_err(|e| self.err(e))?;
            let record = current.as_ref().map(Record::of);
            let wait = match &record {
                Some(r) if r.holder.as_deref().is_some_and(|h| h != self.cfg.identity) => {
                    Duration::from_secs(u64::try_from(r.duration_seconds.max(1)).unwrap_or(1))
                }
                _ => Duration::ZERO,
            };
            let started = Instant::now();
            if self.take(current.as_ref()).await?.is_some() {
                self.leadership.extend(started + self.cfg.renew_deadline());
                return Ok(wait);
            }
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        self.leadership.end();
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Takes part in the election until `stop` resolves, then releases the Lease if held and
    /// `release` says so (otherwise it runs out by itself).
    pub async fn run(mut self, stop: impl Future<Output = ()>, release: bool) {
        let mut stop = std::pin::pin!(stop);
        let per_call = self.cfg.renew_deadline().min(Duration::from_secs(10));
        loop {
            let started = Instant::now();
            let was_leader = self.leadership.is_leader();
            let deadline = self.leadership.deadline();
            let attempt = tokio::time::timeout(per_call, self.try_acquire_or_renew());
            let outcome = tokio::select! {
                _ = &mut stop => break,
                // A renewal that hangs must not keep a leader past its deadline.
                _ = async {
                    match deadline {
                        Some(d) if was_leader => tokio::time::sleep_until(d).await,
                        _ => std::future::pending().await,
                    }
                } => None,
                r = attempt => Some(r),
            };
            match outcome {
                Some(Ok(Ok(true))) => {
                    // Renewed after the deadline passed: that term is over and a new one starts
                    // (extend() counts it).
                    let new_term = !self.leadership.is_leader();
                    self.leadership.extend(started + self.cfg.renew_deadline());
                    if new_term {
                        tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, term = ?self.leadership.term(), "became the leader");
                    }
                }
                Some(Ok(Ok(false))) if was_leader || self.leadership.deadline().is_some() => {
                    tracing::warn!(identity = %self.cfg.identity, "another replica holds the Lease; standing by");
                    self.leadership.end();
                }
                Some(Ok(Ok(false))) => {}
                Some(Ok(Err(e))) => {
                    tracing::warn!(error = %e, leader = was_leader, "could not read or renew the Lease");
                }
                Some(Err(_)) => {
                    tracing::warn!(
                        leader = was_leader,
                        "{}",
                        LeaseError::Timeout {
                            namespace: self.cfg.namespace.clone(),
                            name: self.cfg.name.clone(),
                            seconds: per_call.as_secs(),
                        }
                    );
                }
                None => {}
            }
            if self.leadership.deadline().is_some() && !self.leadership.is_leader() {
                tracing::error!(identity = %self.cfg.identity, "the Lease was not renewed within the renew deadline; stopped writing");
                self.leadership.end();
            }
            // The next round: at once after a renewal that hung, else after the retry period.
            let next = started + self.cfg.retry;
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next) => {},
            }
        }
        if release && self.leadership.deadline().is_some() {
            match tokio::time::timeout(Duration::from_secs(5), self.release()).await {
                Ok(Ok(())) => tracing::info!("released the Lease"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not release the Lease"),
                Err(_) => tracing::warn!("could not release the Lease in time"),
            }
        }
        self.leadership.end();
    }
}

#[cfg(test)]
mod tests;
