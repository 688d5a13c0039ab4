//! Credentials → the Secret content. One task on the leader keeps a registry login for every
//! configured instance (one `GetAuthorizationToken` per instance and refresh, however many
//! namespaces), and publishes the content every selected namespace's Secret should hold. The
//! namespaces never call the cloud: when the content changes, every one whose Secret differs is
//! queued.
//!
//! Refresh timing is decided here, as pure functions: a login is fetched again
//! `expiring-threshold` before it stops working; a failed fetch is retried with a backoff that is
//! capped by a quarter of the time the current content has left, so no retry is ever scheduled
//! after the passwords in the Secrets expire and retries get frequent as expiry nears; once they
//! have expired, retries come every few seconds, so a recovered cloud is used at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use crate::aliyun::cr::RegistryToken;
use crate::config::{Config, Instance, InstanceSet};
use crate::config_source::ConfigView;
use crate::credentials::cache::refresh_point;
use crate::credentials::{CredentialError, Edition, Registry, UsableToken};
use crate::index::SharedIndex;
use crate::metrics::{InstanceCategoryLabels, InstanceLabel, Metrics};
use crate::record::{DigestKey, Record, RecordedLogin};
use crate::render::{self, Login, SecretContent};

use super::Error;
use super::events::{Events, Reason};
use super::spread;
use super::state::StateStore;
use super::writes::Writer;

/// How often the domains of an Enterprise instance are listed again.
pub const DOMAINS_TTL: SignedDuration = SignedDuration::from_mins(10);
/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Retries never come closer together than this.
pub const MIN_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between retries once the passwords in the Secrets have expired (or none was
/// ever obtained).
pub const EXPIRED_RETRY: Duration = Duration::from_secs(3);

/// When to try again after `failures` consecutive failures, given until when the content in the
/// Secrets works (`valid_until`). `jitter` in [0, 1) spreads retries of several replicas.
pub fn retry_delay(
    failures: u32,
    now: Timestamp,
    valid_until: Option<Timestamp>,
    jitter: f64,
) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let backoff = FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    let backoff = backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let cap = match valid_until {
        Some(v) if v > now => {
            let left = Duration::try_from(v.duration_since(now)).unwrap_or(Duration::ZERO);
            left / 4
        }
        _ => EXPIRED_RETRY,
    };
    backoff.min(cap).max(MIN_RETRY)
}

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

/// One instance's login and domains, and its failures.
#[derive(Debug, Clone)]
pub struct Slot {
    pub instance: Instance,
    pub token: Option<UsableToken>,
    pub obtained_at: Option<Timestamp>,
    /// The login was obtained under the identity a previous configuration gave this registry:
    /// it is due for replacement now, and kept only until a login of the new identity comes
    /// (no Secret loses a working password over a credentials edit).
    pub superseded: bool,
    pub domains: Option<Vec<String>>,
    pub domains_due: Option<Timestamp>,
    pub failures: u32,
    pub retry_at: Option<Timestamp>,
}

impl Slot {
    pub fn new(instance: Instance) -> Slot {
        Slot {
            instance,
            token: None,
            obtained_at: None,
            superseded: false,
            domains: None,
            domains_due: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// A slot for `instance` that keeps what `old` (the same registry, configured differently:
    /// other domains or credentials) obtained. With the same identity its login stays good until
    /// its refresh point; with another one it is replaced at once, and kept until then.
    pub fn carried_over(instance: Instance, old: &Slot) -> Slot {
        let superseded = old.superseded || old.instance.identity() != instance.identity();
        Slot {
            token: old.token.clone(),
            obtained_at: old.obtained_at,
            superseded,
            ..Slot::new(instance)
        }
    }

    /// Who the slot's login was issued to, for the Secret's identity fingerprint.
    fn login_identity(&self) -> String {
        if self.superseded {
            "superseded".to_owned()
        } else {
            self.instance.identity()
        }
    }

    /// When the login must be fetched again under `threshold`, `window` ahead of its refresh
    /// point so a refresh of many Secrets can be spread (see [`spread`]).
    pub fn token_due(&self, threshold: Duration, window: Duration) -> Option<Timestamp> {
        let (token, at) = (self.token.as_ref()?, self.obtained_at?);
        if self.superseded {
            return Some(at);
        }
        let refresh = refresh_point(at, token.usable_until, threshold);
        Some(spread::fetch_at(at, refresh, window))
    }

    /// When this slot next needs a fetch (`None`: now), never before a pending retry.
    pub fn next_fetch(&self, threshold: Duration, window: Duration) -> Option<Timestamp> {
        let need = match (
            self.token_due(threshold, window),
            self.domains_due,
            &self.domains,
        ) {
            (Some(t), Some(d), Some(_)) => Some(t.min(d)),
            (Some(t), None, Some(_)) => Some(t),
            _ => None,
        };
        match (need, self.retry_at) {
            (Some(n), Some(r)) => Some(n.max(r)),
            (None, Some(r)) => Some(r),
            (n, None) => n,
        }
    }

    fn due(&self, now: Timestamp, threshold: Duration, window: Duration) -> bool {
        self.next_fetch(threshold, window).is_none_or(|t| t <= now)
    }

    fn needs_domains(&self, now: Timestamp) -> bool {
        self.domains.is_none() || self.domains_due.is_some_and(|d| d <= now)
    }

    /// Has a login and somewhere to write it.
    fn ready(&self) -> bool {
        self.token.is_some() && self.domains.as_ref().is_some_and(|d| !d.is_empty())
    }
}

/// The logins of one configuration's instances, from which the content of every namespace's
/// Secret is made: a namespace gets the logins of the instances that serve it
/// ([`Content::for_set`]; all of them unless instances are scoped).
pub struct Content {
    /// Per configured instance, in order: its login and domains, if any.
    slots: Vec<Slot>,
    /// The instances whose recorded logins no content may drop (see [`content_of`]).
    must_hold: BTreeSet<String>,
    /// The earliest expiry of the logins it holds.
    pub expires_at: Timestamp,
    /// The configured instances it was made for: a worker only writes it while the
    /// configuration in force lists exactly these.
    pub configured: Vec<Instance>,
    /// A refresh of what the Secrets hold (still valid): the namespaces may be written at a
    /// steady pace until then rather than all at once.
    pub spread_until: Option<Timestamp>,
    /// The key the content is digested with, which tells the Secrets the controller wrote from
    /// those somebody else wrote or edited.
    pub key: DigestKey,
    /// No key was stored before this term (a first install or an upgrade): a Secret without a
    /// digest is then one an earlier version wrote, not an edit to report.
    pub fresh_key: bool,
    /// The content of each set of instances asked for so far.
    made: std::sync::Mutex<std::collections::HashMap<InstanceSet, Option<Arc<SecretContent>>>>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field(
                "instances",
                &self
                    .slots
                    .iter()
                    .filter(|s| s.ready())
                    .map(|s| s.instance.label())
                    .collect::<Vec<_>>(),
            )
            .field("expires_at", &self.expires_at)
            .field("spread_until", &self.spread_until)
            .finish_non_exhaustive()
    }
}

impl Content {
    /// The logins of `slots` (one per configured instance, in order), if any has one.
    pub fn new(
        slots: &[Slot],
        must_hold: BTreeSet<String>,
        configured: Vec<Instance>,
        key: DigestKey,
        fresh_key: bool,
    ) -> Option<Content> {
        let expires_at = slots
            .iter()
            .filter(|s| s.ready())
            .filter_map(|s| s.token.as_ref().map(|t| t.usable_until))
            .min()?;
        Some(Content {
            slots: slots.to_vec(),
            must_hold,
            expires_at,
            configured,
            spread_until: None,
            key,
            fresh_key,
            made: Default::default(),
        })
    }

    /// The Secret content of the instances in `set`: `None` when none of them has a login, or
    /// when it would drop a login the Secrets hold.
    pub fn for_set(&self, set: InstanceSet) -> Option<Arc<SecretContent>> {
        let mut made = self
            .made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        made.entry(set)
            .or_insert_with(|| {
                let slots: Vec<Slot> = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| set.contains(*i))
                    .map(|(_, s)| s.clone())
                    .collect();
                content_of(&slots, &self.must_hold, &self.key).map(Arc::new)
            })
            .clone()
    }

    /// The content of every configured instance (what a configuration without scoping writes
    /// everywhere).
    pub fn all(&self) -> Option<Arc<SecretContent>> {
        self.for_set(InstanceSet::first(self.slots.len()))
    }

    /// Whether `other` holds the same logins, domains and rules for the same configuration: no
    /// namespace's content differs.
    fn same_as(&self, other: &Content) -> bool {
        self.configured == other.configured
            && self.must_hold == other.must_hold
            && self.key == other.key
            && record_of(&self.slots).same_as(&record_of(&other.slots))
            && self
                .slots
                .iter()
                .map(|s| (s.domains.as_ref(), s.superseded))
                .eq(other
                    .slots
                    .iter()
                    .map(|s| (s.domains.as_ref(), s.superseded)))
    }
}

/// Takes over the logins the controller recorded (see [`crate::record`]) for the slots that
/// have none: a login of exactly the instance's configured identity that still works. Nothing is
/// ever taken from a pull Secret: those are in namespaces that tenants write. Returns how many
/// were taken.
pub fn adopt(slots: &mut [Slot], record: &Record, now: Timestamp) -> usize {
    let mut taken = 0;
    for slot in slots.iter_mut().filter(|s| s.token.is_none()) {
        let Some(login) = record
            .login(&slot.instance.label())
            .filter(|l| l.identity == slot.instance.identity() && l.usable_until > now)
        else {
            continue;
        };
        slot.token = Some(UsableToken {
            token: RegistryToken {
                username: login.username.clone(),
                password: login.password.clone(),
                expires_at: login.usable_until,
            },
            usable_until: login.usable_until,
            refresh_at: login.usable_until,
        });
        slot.obtained_at = Some(login.obtained_at);
        slot.superseded = false;
        taken += 1;
    }
    taken
}

/// The record of the logins the slots hold (what the Secrets will hold once published).
pub fn record_of(slots: &[Slot]) -> Record {
    Record {
        logins: slots
            .iter()
            .filter_map(|s| {
                let (token, obtained_at) = (s.token.as_ref()?, s.obtained_at?);
                Some(RecordedLogin {
                    instance: s.instance.label(),
                    identity: s.login_identity(),
                    username: token.token.username.clone(),
                    password: token.token.password.clone(),
                    obtained_at,
                    usable_until: token.usable_until,
                })
            })
            .collect(),
    }
}

/// The configured instances whose recorded logins still work: the Secrets hold them, and no
/// content may drop them (see [`content_of`]).
pub fn held(record: &Record, configured: &[Instance], now: Timestamp) -> BTreeSet<String> {
    let labels: BTreeSet<String> = configured.iter().map(Instance::label).collect();
    record
        .logins
        .iter()
        .filter(|l| l.usable_until > now && labels.contains(&l.instance))
        .map(|l| l.instance.clone())
        .collect()
}

/// The content the ready slots give, digested with `key`. An instance without a login (its
/// credentials fail) or without domains is left out, but only if `must_hold` (the instances the
/// Secrets hold now) does not name it: no content ever drops a login the Secrets have. `None`
/// when there is nothing to write, or when it would drop one.
pub fn content_of(
    slots: &[Slot],
    must_hold: &BTreeSet<String>,
    key: &DigestKey,
) -> Option<SecretContent> {
    let ready: Vec<&Slot> = slots.iter().filter(|s| s.ready()).collect();
    if ready.is_empty() {
        return None;
    }
    let missing = slots
        .iter()
        .filter(|s| !s.ready())
        .any(|s| must_hold.contains(&s.instance.label()));
    if missing {
        return None;
    }
    let mut logins = Vec::new();
    for s in &ready {
        let (Some(token), Some(domains)) = (&s.token, &s.domains) else {
            continue;
        };
        for d in domains {
            logins.push(Login {
                domain: d,
                username: &token.token.username,
                password: &token.token.password,
            });
        }
    }
    Some(SecretContent::new(
        render::dockerconfigjson(&logins),
        ready
            .iter()
            .filter_map(|s| s.token.as_ref().map(|t| t.usable_until))
            .min()
            .unwrap_or(Timestamp::MAX),
        ready.iter().map(|s| s.instance.label()).collect(),
        identity_of(&ready),
        key,
    ))
}

/// The identity fingerprint of the logins of `slots`.
fn identity_of(slots: &[&Slot]) -> String {
    let parts: Vec<(String, String)> = slots
        .iter()
        .map(|s| (s.instance.label(), s.login_identity()))
        .collect();
    render::identity_fingerprint(parts.iter().map(|(l, i)| (l.as_str(), i.as_str())))
}

/// The slots for a new list of instances: the same instance keeps its slot; the same registry
/// configured differently keeps its login.
pub fn reslot(old: Vec<Slot>, instances: &[Instance]) -> (Vec<Slot>, Vec<Slot>) {
    let mut old = old;
    let mut next = Vec::new();
    for inst in instances {
        let slot = match old.iter().position(|s| s.instance == *inst) {
            Some(i) => old.swap_remove(i),
            None => match old.iter().position(|s| s.instance.label() == inst.label()) {
                Some(i) => Slot::carried_over(inst.clone(), &old.swap_remove(i)),
                None => Slot::new(inst.clone()),
            },
        };
        next.push(slot);
    }
    (next, old)
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

/// What one fetch of a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Domains,
    Login,
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
    async fn fetch_domains(&self, slot: &mut Slot, now: Timestamp) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let listed = match &inst.edition {
            _ if !inst.domains.is_empty() => Ok(inst.domains.clone()),
            Edition::Personal => Ok(render::personal_domains(&inst.region)),
            Edition::Enterprise { instance_id } => self
                .registry
                .enterprise_domains(&inst.auth, &inst.region, instance_id)
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
                slot.domains_due = relisted.then(|| now + DOMAINS_TTL);
                Ok(())
            }
            // Listing again failed: the domains known stay, and the login is still refreshed;
            // the listing is tried again in a minute.
            Err(e) if slot.domains.is_some() => {
                tracing::warn!(error = %e, "could not list the instance's domains again; keeping the known ones");
                self.failed(slot, &e);
                slot.domains_due = Some(now + SignedDuration::from_mins(1));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_login(&self, slot: &mut Slot, now: Timestamp) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let t = self
            .registry
            .fetch_token(&inst.instance_ref())
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

    /// Fetches `phase` for the due slots at once; failures schedule their retries.
    async fn fetch_due(
        &self,
        slots: &mut [Slot],
        due: Vec<usize>,
        phase: Phase,
        valid_until: Option<Timestamp>,
        cm_ref: Option<&k8s_openapi::api::core::v1::ObjectReference>,
    ) {
        let now = Timestamp::now();
        let fetched = futures::future::join_all(due.iter().map(|&i| {
            let mut slot = slots[i].clone();
            async move {
                let r = match phase {
                    Phase::Domains => self.fetch_domains(&mut slot, now).await,
                    Phase::Login => self.fetch_login(&mut slot, now).await,
                };
                (i, slot, r)
            }
        }))
        .await;
        for (i, mut slot, result) in fetched {
            match result {
                Ok(()) => {
                    if phase == Phase::Login {
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
                }
                Err(e) => {
                    slot.failures = slot.failures.saturating_add(1);
                    let delay =
                        retry_delay(slot.failures, Timestamp::now(), valid_until, rand::random());
                    slot.retry_at = Timestamp::now()
                        .checked_add(
                            SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO),
                        )
                        .ok();
                    self.failed(&slot, &e);
                    tracing::warn!(error = %e, category = e.category(), failures = slot.failures, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), valid_until = ?valid_until, "could not refresh credentials");
                    if slot.failures == 1
                        && let Some(r) = cm_ref
                    {
                        let until =
                            valid_until.map_or("no password was obtained yet".to_owned(), |v| {
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
            }
            slots[i] = slot;
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
                    tokio::time::sleep(retry_delay(
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

    /// Runs until the task is dropped: follows the configuration in force, fetches what is due,
    /// records the logins, and publishes the content on `content`.
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
            match current.config() {
                // Nothing in force (missing, being cleaned up): no cloud calls, no content.
                None => {
                    if config.take().is_some() {
                        slots.clear();
                        self.metrics.token_expiry.clear();
                        content.send_replace(None);
                    }
                    if view.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(cfg) if config.as_ref() != Some(cfg) => {
                    self.registry.chain().set_threshold(cfg.expiring_threshold);
                    let (next, gone) = reslot(std::mem::take(&mut slots), &cfg.instances);
                    for g in gone.iter().filter(|g| {
                        !next
                            .iter()
                            .any(|n| n.instance.label() == g.instance.label())
                    }) {
                        self.metrics.token_expiry.remove(&InstanceLabel {
                            acr_instance: g.instance.label(),
                        });
                    }
                    slots = next;
                    config = Some(cfg.clone());
                }
                Some(_) => {}
            }
            let Some(cfg) = config.clone() else { continue };
            let store = match &mut store {
                Some(s) => s,
                None => {
                    let loaded = self.load_state(cm_ref.as_ref()).await;
                    store.insert(loaded)
                }
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
            let threshold = cfg.expiring_threshold;
            let window = spread::window(
                self.index.read().managed_secrets(),
                self.refresh_rate,
                threshold,
            );
            let previous = content.borrow().clone();
            let valid_until = previous.as_ref().map(|c| c.expires_at);

            let now = Timestamp::now();
            let due = |slots: &[Slot], phase: Phase| -> Vec<usize> {
                (0..slots.len())
                    .filter(|&i| {
                        let s = &slots[i];
                        s.due(now, threshold, window)
                            && match phase {
                                Phase::Domains => s.needs_domains(now),
                                Phase::Login => s.domains.is_some(),
                            }
                    })
                    .collect()
            };
            let need_domains = due(&slots, Phase::Domains);
            self.fetch_due(
                &mut slots,
                need_domains,
                Phase::Domains,
                valid_until,
                cm_ref.as_ref(),
            )
            .await;
            let need_login = due(&slots, Phase::Login)
                .into_iter()
                .filter(|&i| {
                    slots[i]
                        .token_due(threshold, window)
                        .is_none_or(|t| t <= now)
                })
                .collect();
            self.fetch_due(
                &mut slots,
                need_login,
                Phase::Login,
                valid_until,
                cm_ref.as_ref(),
            )
            .await;

            self.report_expiry(&slots);
            // The record first: a leader that takes over after this point finds the logins the
            // Secrets are about to hold. Should the write fail, the content is still published (a
            // password must never expire for want of a record) and the write is tried again soon.
            let record_retry = match store.save(record_of(&slots)).await {
                Ok(()) => None,
                Err(Error::NotLeader) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the published logins; retrying");
                    Some(Duration::from_secs(2))
                }
            };
            let must_hold = if slots.iter().all(Slot::ready) {
                BTreeSet::new()
            } else {
                held(&store.record, &cfg.instances, Timestamp::now())
            };
            if let Some(mut next) = Content::new(
                &slots,
                must_hold,
                cfg.instances.clone(),
                store.key.clone(),
                store.fresh,
            ) {
                let now = Timestamp::now();
                // A refresh of what the Secrets hold may be spread over the window it was
                // fetched ahead by; anything else is written at once.
                let refresh = previous
                    .as_ref()
                    .is_some_and(|p| p.configured == cfg.instances && p.expires_at > now);
                next.spread_until = (refresh && !window.is_zero())
                    .then(|| {
                        now.checked_add(
                            SignedDuration::try_from(window).unwrap_or(SignedDuration::ZERO),
                        )
                        .ok()
                    })
                    .flatten();
                content.send_if_modified(|old| {
                    if old.as_ref().is_some_and(|o| o.same_as(&next)) {
                        return false;
                    }
                    let instances: Vec<String> = slots.iter().filter(|s| s.ready()).map(|s| s.instance.label()).collect();
                    tracing::info!(expires_at = %next.expires_at, ?instances, spread_until = ?next.spread_until, "new Secret content");
                    *old = Some(Arc::new(next));
                    true
                });
            }
            let next = slots
                .iter()
                .filter_map(|s| s.next_fetch(threshold, window))
                .min()
                .map(|t| t.duration_since(Timestamp::now()))
                .map(|d| Duration::try_from(d).unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600))
                .min(record_retry.unwrap_or(Duration::MAX))
                .clamp(Duration::from_millis(50), Duration::from_secs(3600));
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(next) => {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliyun::cr::RegistryToken;
    use crate::credentials::InstanceAuth;
    use secrecy::SecretString;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn retries_back_off_but_never_past_a_quarter_of_the_time_left() {
        let now = ts("2026-11-24T10:00:00Z");
        let far = Some(ts("2026-11-24T11:00:00Z"));
        // Far from expiry: plain exponential backoff (jitter 1 = the ceiling).
        assert_eq!(retry_delay(1, now, far, 1.0), S(1));
        assert_eq!(retry_delay(4, now, far, 1.0), S(8));
        assert_eq!(retry_delay(30, now, far, 1.0), MAX_BACKOFF);
        assert_eq!(retry_delay(4, now, far, 0.0), S(4));
        // 100 s left: never more than 25 s, however many failures.
        let soon = Some(ts("2026-11-24T10:01:40Z"));
        assert_eq!(retry_delay(30, now, soon, 1.0), S(25));
        // As expiry nears the retries get frequent, down to the floor.
        let close = Some(ts("2026-11-24T10:00:01Z"));
        assert_eq!(retry_delay(30, now, close, 1.0), MIN_RETRY);
        // Expired, or nothing obtained yet: every few seconds at most.
        assert_eq!(retry_delay(30, now, Some(now), 1.0), EXPIRED_RETRY);
        assert_eq!(retry_delay(30, now, None, 1.0), EXPIRED_RETRY);
        assert_eq!(
            retry_delay(1, now, None, 0.0),
            MIN_RETRY.max(Duration::from_millis(500))
        );
    }

    #[test]
    fn no_retry_is_scheduled_after_expiry_while_a_password_is_valid() {
        let now = ts("2026-11-24T10:00:00Z");
        for left in [1u64, 2, 5, 10, 30, 60, 300, 900, 3600] {
            let until = now + SignedDuration::from_secs(i64::try_from(left).unwrap_or(0));
            let mut t = now;
            let mut retries = 0;
            for failures in 1..200 {
                let d = retry_delay(failures, t, Some(until), 1.0);
                t += SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO);
                if t >= until {
                    break;
                }
                retries += 1;
                assert!(
                    t < until || d <= MIN_RETRY,
                    "left {left}: a retry after expiry"
                );
            }
            // Bounded: at most one a minute far from expiry, then a geometric shrink of the time
            // left down to the floor.
            let bound = left / MAX_BACKOFF.as_secs() + 30;
            assert!(
                retries <= bound,
                "left {left}: {retries} retries before expiry (bound {bound})"
            );
        }
    }

    fn slot(token_life: i64, obtained: &str) -> Slot {
        let at = ts(obtained);
        let mut s = Slot::new(Instance {
            edition: Edition::Enterprise {
                instance_id: "cri-a".into(),
            },
            region: "cn-hangzhou".into(),
            domains: vec![],
            auth: InstanceAuth::default(),
            scope: crate::config::Scope::default(),
        });
        s.token = Some(UsableToken {
            token: RegistryToken {
                username: "u".into(),
                password: SecretString::from("p"),
                expires_at: at + SignedDuration::from_secs(token_life),
            },
            usable_until: at + SignedDuration::from_secs(token_life),
            refresh_at: at,
        });
        s.obtained_at = Some(at);
        s.domains = Some(vec!["a.example.com".into()]);
        s.domains_due = Some(at + DOMAINS_TTL);
        s
    }

    #[test]
    fn a_slot_is_due_at_the_refresh_point_or_its_retry() {
        let z = Duration::ZERO;
        let s = slot(3600, "2026-11-24T10:00:00Z");
        assert_eq!(
            s.next_fetch(S(900), z),
            Some(ts("2026-11-24T10:10:00Z")),
            "domains first"
        );
        let mut s = slot(3600, "2026-11-24T10:00:00Z");
        s.domains_due = None;
        assert_eq!(s.next_fetch(S(900), z), Some(ts("2026-11-24T10:45:00Z")));
        // A refresh spread over 200 s is fetched 200 s ahead.
        assert_eq!(
            s.next_fetch(S(900), S(200)),
            Some(ts("2026-11-24T10:41:40Z"))
        );
        // A pending retry is never overtaken.
        s.retry_at = Some(ts("2026-11-24T10:50:00Z"));
        assert_eq!(s.next_fetch(S(900), z), Some(ts("2026-11-24T10:50:00Z")));
        // Nothing obtained yet: due now.
        assert_eq!(Slot::new(s.instance.clone()).next_fetch(S(900), z), None);
    }

    fn key() -> DigestKey {
        DigestKey::from_bytes(&[9; 32]).unwrap_or_else(|| panic!("key"))
    }

    #[test]
    fn only_the_recorded_logins_of_the_configured_identity_that_still_work_are_taken_over() {
        let now = ts("2026-11-24T10:00:00Z");
        let a = slot(3600, "2026-11-24T09:50:00Z");
        let mut b = slot(3600, "2026-11-24T09:50:00Z");
        b.instance.edition = Edition::Enterprise {
            instance_id: "cri-b".into(),
        };
        b.domains = Some(vec!["b.example.com".into(), "b-vpc.example.com".into()]);
        let record = record_of(&[a.clone(), b.clone()]);
        assert_eq!(record.logins.len(), 2);
        let written = content_of(&[a.clone(), b.clone()], &BTreeSet::new(), &key())
            .unwrap_or_else(|| panic!("no content"));
        let fresh = |s: &Slot| {
            let mut s = s.clone();
            s.token = None;
            s.obtained_at = None;
            s
        };
        let mut slots = vec![fresh(&a), fresh(&b)];
        assert_eq!(adopt(&mut slots, &record, now), 2);
        // Rebuilt from the recorded logins, the content is byte for byte what the Secrets hold
        // (nothing to write), and the logins are refreshed when their fetcher planned.
        let rebuilt =
            content_of(&slots, &BTreeSet::new(), &key()).unwrap_or_else(|| panic!("no content"));
        assert_eq!(rebuilt, written);
        assert_eq!(slots[0].obtained_at, a.obtained_at);
        assert_eq!(
            slots[0].token_due(S(900), Duration::ZERO),
            a.token_due(S(900), Duration::ZERO)
        );
        // A slot that has a login keeps it.
        let mut kept = vec![a.clone()];
        let mut other = record.clone();
        other.logins[0].password = SecretString::from("another");
        assert_eq!(adopt(&mut kept, &other, now), 0);
        // Another identity (an edit while no leader ran), or an expired login: not taken.
        let mut assumed = fresh(&a);
        assumed.instance.auth.assume_role = Some(crate::credentials::AssumedRole {
            role_arn: "acs:ram::1:role/x".into(),
            duration_seconds: 900,
        });
        let mut slots = vec![assumed];
        assert_eq!(adopt(&mut slots, &record, now), 0);
        assert!(slots[0].token.is_none());
        let mut slots = vec![fresh(&a)];
        assert_eq!(adopt(&mut slots, &record, ts("2026-11-24T10:50:00Z")), 0);
        // A superseded login is recorded as such and never taken as the new identity's.
        let mut superseded = a.clone();
        superseded.superseded = true;
        let mut slots = vec![fresh(&a)];
        assert_eq!(adopt(&mut slots, &record_of(&[superseded]), now), 0);
        // What the record holds is what no content may drop, while it works.
        let labels = |s: &[Slot]| s.iter().map(|s| s.instance.clone()).collect::<Vec<_>>();
        let configured = labels(&[a.clone(), b.clone()]);
        assert_eq!(
            held(&record, &configured, now),
            BTreeSet::from(["cri-a".to_owned(), "cri-b".to_owned()])
        );
        assert_eq!(
            held(&record, &labels(std::slice::from_ref(&a)), now),
            BTreeSet::from(["cri-a".to_owned()])
        );
        assert!(held(&record, &configured, ts("2026-11-24T10:50:00Z")).is_empty());
    }

    #[test]
    fn content_leaves_out_an_instance_without_a_login_only_if_the_secrets_lack_it_too() {
        let a = slot(3600, "2026-11-24T10:00:00Z");
        let mut b = slot(1800, "2026-11-24T10:00:00Z");
        b.instance.edition = Edition::Enterprise {
            instance_id: "cri-b".into(),
        };
        b.domains = Some(vec!["b.example.com".into()]);
        let none = BTreeSet::new();
        let c = content_of(&[a.clone(), b.clone()], &none, &key())
            .unwrap_or_else(|| panic!("no content"));
        assert_eq!(c.instances, vec!["cri-a", "cri-b"]);
        assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
        let doc: serde_json::Value =
            serde_json::from_slice(&c.dockerconfigjson).unwrap_or_default();
        assert_eq!(doc["auths"].as_object().map(|m| m.len()), Some(2));
        // A new instance whose credentials fail: the others' logins are still written...
        let mut no_token = b.clone();
        no_token.token = None;
        let only_a = content_of(&[a.clone(), no_token.clone()], &none, &key())
            .unwrap_or_else(|| panic!("no content"));
        assert_eq!(only_a.instances, vec!["cri-a"]);
        // ...but never instead of a login the Secrets hold.
        let held: BTreeSet<String> = ["cri-b".to_owned()].into();
        assert!(content_of(&[a.clone(), no_token], &held, &key()).is_none());
        // No domain is no login either.
        let mut no_domain = b;
        no_domain.domains = Some(vec![]);
        assert!(content_of(&[a.clone(), no_domain.clone()], &held, &key()).is_none());
        assert_eq!(
            content_of(&[a, no_domain], &none, &key()).map(|c| c.instances),
            Some(vec!["cri-a".to_owned()])
        );
        assert!(content_of(&[], &none, &key()).is_none());
    }

    #[test]
    fn a_reconfigured_registry_keeps_its_login_until_a_new_one_comes() {
        let a = slot(3600, "2026-11-24T10:00:00Z");
        let mut changed = a.instance.clone();
        changed.domains = vec!["custom.example.com".into()];
        let other = Instance {
            edition: Edition::Personal,
            ..a.instance.clone()
        };
        let (next, gone) = reslot(vec![a.clone()], &[changed.clone(), other]);
        assert!(gone.is_empty());
        assert_eq!(next[0].instance, changed);
        assert!(next[0].token.is_some(), "the login carries over");
        assert!(next[0].domains.is_none(), "the domains are derived again");
        assert!(next[1].token.is_none());
        assert!(
            !next[0].superseded,
            "same identity: no refetch before the refresh point"
        );
        let (next, gone) = reslot(vec![a.clone()], std::slice::from_ref(&a.instance));
        assert!(gone.is_empty() && next[0].domains.is_some());
        let (next, gone) = reslot(vec![a], &[]);
        assert!(next.is_empty() && gone.len() == 1);
    }

    #[test]
    fn a_registry_given_another_identity_is_logged_in_again_at_once() {
        let a = slot(3600, "2026-11-24T10:00:00Z");
        let threshold = Duration::from_secs(900);
        let z = Duration::ZERO;
        let mut assumed = a.instance.clone();
        assumed.auth.assume_role = Some(crate::credentials::AssumedRole {
            role_arn: "acs:ram::1:role/x".into(),
            duration_seconds: 900,
        });
        let (next, _) = reslot(vec![a.clone()], std::slice::from_ref(&assumed));
        let s = &next[0];
        assert!(
            s.superseded && s.token.is_some(),
            "kept until a new login comes"
        );
        assert_eq!(s.token_due(threshold, z), s.obtained_at, "due at once");
        // Its content says the login is of another identity than the configured one, so a
        // restarted controller does not take it over either.
        let mut ready = s.clone();
        ready.domains = a.domains.clone();
        let held = BTreeSet::new();
        let before = content_of(std::slice::from_ref(&a), &held, &key()).map(|c| c.identity);
        let carried = content_of(std::slice::from_ref(&ready), &held, &key()).map(|c| c.identity);
        ready.superseded = false;
        let fresh = content_of(std::slice::from_ref(&ready), &held, &key()).map(|c| c.identity);
        assert!(before.is_some() && carried.is_some() && fresh.is_some());
        assert_ne!(before, fresh);
        assert_ne!(carried, fresh);
        // Superseded twice is still superseded (another edit before the new login came).
        let (again, _) = reslot(next, std::slice::from_ref(&assumed));
        assert!(again[0].superseded);
    }

    #[test]
    fn a_namespace_gets_only_the_logins_of_the_instances_that_serve_it() {
        let a = slot(3600, "2026-11-24T10:00:00Z");
        let mut b = slot(1800, "2026-11-24T10:00:00Z");
        b.instance.edition = Edition::Enterprise {
            instance_id: "cri-b".into(),
        };
        b.domains = Some(vec!["b.example.com".into()]);
        b.token = b.token.map(|mut t| {
            t.token.password = SecretString::from("password-of-b");
            t
        });
        let configured = vec![a.instance.clone(), b.instance.clone()];
        let c = Content::new(
            &[a.clone(), b.clone()],
            BTreeSet::new(),
            configured,
            key(),
            false,
        )
        .unwrap_or_else(|| panic!("content"));
        let only = |i: usize| {
            let mut s = InstanceSet::EMPTY;
            s.insert(i);
            s
        };
        let of_a = c.for_set(only(0)).unwrap_or_else(|| panic!("a's content"));
        assert_eq!(of_a.instances, vec!["cri-a"]);
        let doc = String::from_utf8_lossy(&of_a.dockerconfigjson).into_owned();
        assert!(doc.contains("a.example.com") && !doc.contains("b.example.com"));
        assert!(
            !doc.contains("password-of-b"),
            "team A's Secret never holds B's password"
        );
        let both = c.all().unwrap_or_else(|| panic!("all"));
        assert_eq!(both.instances, vec!["cri-a", "cri-b"]);
        assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
        // The same set is made once; an empty set makes nothing.
        assert!(Arc::ptr_eq(
            &of_a,
            &c.for_set(only(0)).unwrap_or_else(|| panic!("again"))
        ));
        assert!(c.for_set(InstanceSet::EMPTY).is_none());
        // A held login of B that B cannot renew keeps B's namespaces as they are, not A's.
        let mut b_failing = b.clone();
        b_failing.token = None;
        let held = BTreeSet::from(["cri-b".to_owned()]);
        let c = Content::new(
            &[a.clone(), b_failing],
            held,
            vec![a.instance.clone(), b.instance.clone()],
            key(),
            false,
        )
        .unwrap_or_else(|| panic!("content"));
        assert!(c.for_set(only(0)).is_some());
        assert!(c.for_set(only(1)).is_none() && c.all().is_none());
    }
}
