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
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

use crate::aliyun::cr::RegistryToken;
use crate::config::{Config, Instance};
use crate::config_source::ConfigView;
use crate::credentials::cache::refresh_point;
use crate::credentials::{CredentialError, Edition, Registry, UsableToken};
use crate::index::SharedIndex;
use crate::metrics::{InstanceCategoryLabels, InstanceLabel, Metrics};
use crate::render::{self, Login, SecretContent};

use super::events::Events;
use super::spread;

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
    /// The login was taken over from the Secrets in the cluster (a restart, a new leader), not
    /// fetched: it is refreshed `threshold` before it expires, as its fetcher planned.
    pub adopted: bool,
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
            adopted: false,
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
            adopted: old.adopted,
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
        let refresh = if self.adopted {
            let t = SignedDuration::try_from(threshold).unwrap_or(SignedDuration::MAX);
            token.usable_until.checked_sub(t).unwrap_or(at).max(at)
        } else {
            refresh_point(at, token.usable_until, threshold)
        };
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

/// The content every selected namespace's Secret should hold, for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub secret: SecretContent,
    /// The configured instances it was made for: a worker only writes it while the
    /// configuration in force lists exactly these.
    pub configured: Vec<Instance>,
    /// A refresh of what the Secrets hold (still valid): the namespaces may be written at a
    /// steady pace until then rather than all at once.
    pub spread_until: Option<Timestamp>,
}

/// Takes the logins of `slots` over from a Secret's `.dockerconfigjson` when it holds, for every
/// instance, the same login on each of its domains, and nothing else: after a restart or a
/// failover the Secrets in place stay as they are until their refresh point, instead of all
/// being rewritten with new passwords. Returns whether it did.
pub fn adopt(
    slots: &mut [Slot],
    dockerconfigjson: &[u8],
    expires_at: Timestamp,
    now: Timestamp,
) -> bool {
    let Some(logins) = render::parse_logins(dockerconfigjson) else {
        return false;
    };
    let mut tokens = Vec::new();
    let mut covered = 0;
    for slot in slots.iter() {
        let Some(domains) = slot.domains.as_ref().filter(|d| !d.is_empty()) else {
            return false;
        };
        let mut login: Option<&(String, SecretString)> = None;
        for d in domains {
            let Some(l) = logins.get(d) else { return false };
            match login {
                None => login = Some(l),
                Some(first) if first.0 == l.0 && first.1.expose_secret() == l.1.expose_secret() => {
                }
                Some(_) => return false,
            }
        }
        covered += domains.len();
        let Some((username, password)) = login else {
            return false;
        };
        tokens.push(UsableToken {
            token: RegistryToken {
                username: username.clone(),
                password: password.clone(),
                expires_at,
            },
            usable_until: expires_at,
            refresh_at: expires_at,
        });
    }
    // Domains the configuration no longer has would be dropped: that is a change to write.
    if covered != logins.len() {
        return false;
    }
    for (slot, token) in slots.iter_mut().zip(tokens) {
        slot.token = Some(token);
        slot.obtained_at = Some(now);
        slot.adopted = true;
    }
    true
}

/// The content the ready slots give. An instance without a login (its credentials fail) or
/// without domains is left out, but only if `must_hold` (the instances the Secrets hold now)
/// does not name it: no content ever drops a login the Secrets have. `None` when there is
/// nothing to write, or when it would drop one.
pub fn content_of(slots: &[Slot], must_hold: &BTreeSet<String>) -> Option<SecretContent> {
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
    Some(SecretContent {
        dockerconfigjson: render::dockerconfigjson(&logins),
        expires_at: ready
            .iter()
            .filter_map(|s| s.token.as_ref().map(|t| t.usable_until))
            .min()
            .unwrap_or(Timestamp::MAX),
        instances: ready.iter().map(|s| s.instance.label()).collect(),
        identity: identity_of(&ready),
    })
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
                instance: slot.instance.label(),
                category: e.category().to_owned(),
            })
            .inc();
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
        self.metrics
            .token_expiry
            .get_or_create(&InstanceLabel {
                instance: inst.label(),
            })
            .set(t.usable_until.as_second());
        slot.token = Some(t);
        slot.obtained_at = Some(now);
        slot.adopted = false;
        slot.superseded = false;
        Ok(())
    }

    /// The configured instances whose logins the Secrets in the cluster hold now.
    fn held(&self, configured: &[Instance]) -> BTreeSet<String> {
        let labels: BTreeSet<String> = configured.iter().map(Instance::label).collect();
        let index = self.index.read();
        let mut held = BTreeSet::new();
        for (_, ns) in index.namespaces() {
            let Some(s) = ns.secret.as_ref().filter(|s| s.managed) else {
                continue;
            };
            if let Some(list) = s.instances.as_deref() {
                held.extend(
                    list.split(',')
                        .filter(|l| labels.contains(*l))
                        .map(str::to_owned),
                );
            }
        }
        held
    }

    /// The freshest content of ours in the cluster made for exactly `labels` under `identity`
    /// and not yet due for refresh: its `.dockerconfigjson` and expiry.
    fn adoptable(
        &self,
        labels: &str,
        identity: &str,
        threshold: Duration,
        now: Timestamp,
    ) -> Option<(Arc<[u8]>, Timestamp)> {
        let margin = SignedDuration::try_from(threshold).unwrap_or(SignedDuration::MAX);
        let index = self.index.read();
        index
            .namespaces()
            .filter_map(|(_, ns)| ns.secret.as_ref())
            .filter(|s| {
                s.managed
                    && s.instances.as_deref() == Some(labels)
                    && s.identity.as_deref() == Some(identity)
            })
            .filter_map(|s| {
                let expires: Timestamp = s.expires_at.as_deref()?.parse().ok()?;
                Some((s.dockerconfigjson.clone()?, expires))
            })
            .filter(|(_, expires)| expires.checked_sub(margin).is_ok_and(|due| due > now))
            .max_by_key(|(_, expires)| *expires)
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
                            .warn(
                                r,
                                "CredentialsUnavailable",
                                format!("{e}; {until}; retrying"),
                            )
                            .await;
                    }
                }
            }
            slots[i] = slot;
        }
    }

    /// Runs until the task is dropped: follows the configuration in force, fetches what is due,
    /// and publishes the content on `content`.
    pub async fn run(
        &self,
        mut view: watch::Receiver<Arc<ConfigView>>,
        content: watch::Sender<Option<Arc<Content>>>,
    ) {
        let mut slots: Vec<Slot> = Vec::new();
        let mut config: Option<Arc<Config>> = None;
        // Once per term and configuration: take over the logins the Secrets hold.
        let mut adoption_tried = false;
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
                            instance: g.instance.label(),
                        });
                    }
                    slots = next;
                    config = Some(cfg.clone());
                    adoption_tried = slots.iter().any(|s| s.token.is_some());
                }
                Some(_) => {}
            }
            let Some(cfg) = config.clone() else { continue };
            let threshold = cfg.expiring_threshold;
            let window = spread::window(
                self.index.read().managed_secrets(),
                self.refresh_rate,
                threshold,
            );
            let previous = content.borrow().clone();
            let valid_until = previous.as_ref().map(|c| c.secret.expires_at);

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
            if !adoption_tried && slots.iter().all(|s| s.domains.is_some()) {
                adoption_tried = true;
                let labels: Vec<String> = slots.iter().map(|s| s.instance.label()).collect();
                let identity = identity_of(&slots.iter().collect::<Vec<_>>());
                if let Some((bytes, expires)) =
                    self.adoptable(&labels.join(","), &identity, threshold, now)
                    && adopt(&mut slots, &bytes, expires, now)
                {
                    tracing::info!(expires_at = %expires, "took over the passwords the Secrets hold; no rewrite until their refresh point");
                }
            }
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

            let must_hold = if slots.iter().all(Slot::ready) {
                BTreeSet::new()
            } else {
                self.held(&cfg.instances)
            };
            if let Some(c) = content_of(&slots, &must_hold) {
                let now = Timestamp::now();
                // A refresh of what the Secrets hold may be spread over the window it was
                // fetched ahead by; anything else is written at once.
                let refresh = previous
                    .as_ref()
                    .is_some_and(|p| p.configured == cfg.instances && p.secret.expires_at > now);
                let spread_until = (refresh && !window.is_zero())
                    .then(|| {
                        now.checked_add(
                            SignedDuration::try_from(window).unwrap_or(SignedDuration::ZERO),
                        )
                        .ok()
                    })
                    .flatten();
                let next = Content {
                    secret: c,
                    configured: cfg.instances.clone(),
                    spread_until,
                };
                content.send_if_modified(|old| {
                    if old.as_ref().is_some_and(|o| o.secret == next.secret && o.configured == next.configured) {
                        return false;
                    }
                    tracing::info!(expires_at = %next.secret.expires_at, instances = ?next.secret.instances, spread_until = ?next.spread_until, "new Secret content");
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
        // An adopted login is refreshed the threshold before it expires, as planned by whoever
        // fetched it (not at half of what is left of it).
        let mut adopted = slot(1200, "2026-11-24T10:00:00Z");
        adopted.domains_due = None;
        adopted.adopted = true;
        assert_eq!(
            adopted.next_fetch(S(900), z),
            Some(ts("2026-11-24T10:05:00Z"))
        );
        adopted.adopted = false;
        assert_eq!(
            adopted.next_fetch(S(900), z),
            Some(ts("2026-11-24T10:10:00Z"))
        );
    }

    #[test]
    fn the_logins_a_secret_holds_are_adopted_only_when_they_match_the_configuration() {
        let now = ts("2026-11-24T10:00:00Z");
        let expires = ts("2026-11-24T10:50:00Z");
        let a = slot(3600, "2026-11-24T09:50:00Z");
        let mut b = slot(3600, "2026-11-24T09:50:00Z");
        b.instance.edition = Edition::Enterprise {
            instance_id: "cri-b".into(),
        };
        b.domains = Some(vec!["b.example.com".into(), "b-vpc.example.com".into()]);
        let written = content_of(&[a.clone(), b.clone()], &BTreeSet::new())
            .unwrap_or_else(|| panic!("no content"));
        let fresh = |s: &Slot| {
            let mut s = s.clone();
            s.token = None;
            s.obtained_at = None;
            s
        };
        let mut slots = vec![fresh(&a), fresh(&b)];
        assert!(adopt(&mut slots, &written.dockerconfigjson, expires, now));
        assert!(slots.iter().all(|s| s.adopted && s.token.is_some()));
        // Rebuilt from the adopted logins, the content is byte for byte what the Secret holds,
        // with the expiry its annotation says: nothing to write.
        let rebuilt = content_of(&slots, &BTreeSet::new()).unwrap_or_else(|| panic!("no content"));
        assert_eq!(rebuilt.dockerconfigjson, written.dockerconfigjson);
        assert_eq!(rebuilt.expires_at, expires);
        // A domain the configuration no longer has, one it has newly, or another login on one of
        // an instance's domains: not adoptable.
        let mut fewer = vec![fresh(&a)];
        assert!(!adopt(&mut fewer, &written.dockerconfigjson, expires, now));
        let mut more = vec![fresh(&a), fresh(&b)];
        more[1].domains = Some(vec![
            "b.example.com".into(),
            "b-vpc.example.com".into(),
            "new.example.com".into(),
        ]);
        assert!(!adopt(&mut more, &written.dockerconfigjson, expires, now));
        let pw = SecretString::from("other");
        let mixed = render::dockerconfigjson(&[
            Login {
                domain: "a.example.com",
                username: "u",
                password: &SecretString::from("p"),
            },
            Login {
                domain: "b.example.com",
                username: "u",
                password: &pw,
            },
            Login {
                domain: "b-vpc.example.com",
                username: "u",
                password: &SecretString::from("p"),
            },
        ]);
        let mut slots = vec![fresh(&a), fresh(&b)];
        assert!(!adopt(&mut slots, &mixed, expires, now));
        assert!(
            slots.iter().all(|s| s.token.is_none()),
            "nothing adopted halfway"
        );
        assert!(!adopt(&mut slots, b"not json", expires, now));
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
        let c = content_of(&[a.clone(), b.clone()], &none).unwrap_or_else(|| panic!("no content"));
        assert_eq!(c.instances, vec!["cri-a", "cri-b"]);
        assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
        let doc: serde_json::Value =
            serde_json::from_slice(&c.dockerconfigjson).unwrap_or_default();
        assert_eq!(doc["auths"].as_object().map(|m| m.len()), Some(2));
        // A new instance whose credentials fail: the others' logins are still written...
        let mut no_token = b.clone();
        no_token.token = None;
        let only_a = content_of(&[a.clone(), no_token.clone()], &none)
            .unwrap_or_else(|| panic!("no content"));
        assert_eq!(only_a.instances, vec!["cri-a"]);
        // ...but never instead of a login the Secrets hold.
        let held: BTreeSet<String> = ["cri-b".to_owned()].into();
        assert!(content_of(&[a.clone(), no_token], &held).is_none());
        // No domain is no login either.
        let mut no_domain = b;
        no_domain.domains = Some(vec![]);
        assert!(content_of(&[a.clone(), no_domain.clone()], &held).is_none());
        assert_eq!(
            content_of(&[a, no_domain], &none).map(|c| c.instances),
            Some(vec!["cri-a".to_owned()])
        );
        assert!(content_of(&[], &none).is_none());
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
        let before = content_of(std::slice::from_ref(&a), &held).map(|c| c.identity);
        let carried = content_of(std::slice::from_ref(&ready), &held).map(|c| c.identity);
        ready.superseded = false;
        let fresh = content_of(std::slice::from_ref(&ready), &held).map(|c| c.identity);
        assert!(before.is_some() && carried.is_some() && fresh.is_some());
        assert_ne!(before, fresh);
        assert_ne!(carried, fresh);
        // Superseded twice is still superseded (another edit before the new login came).
        let (again, _) = reslot(next, std::slice::from_ref(&assumed));
        assert!(again[0].superseded);
    }
}
