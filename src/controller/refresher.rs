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

use crate::config::{Config, Instance};
use crate::config_source::ConfigView;
use crate::credentials::cache::refresh_point;
use crate::credentials::{CredentialError, Edition, Registry, UsableToken};
use crate::index::SharedIndex;
use crate::metrics::{InstanceCategoryLabels, InstanceLabel, Metrics};
use crate::render::{self, INSTANCES, Login, SecretContent};

use super::events::Events;

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
            domains: None,
            domains_due: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// A slot for `instance` that keeps what `old` (the same registry, configured differently:
    /// other domains or credentials) obtained: its login stays good until it expires.
    pub fn carried_over(instance: Instance, old: &Slot) -> Slot {
        Slot {
            token: old.token.clone(),
            obtained_at: old.obtained_at,
            ..Slot::new(instance)
        }
    }

    /// When the login must be fetched again under `threshold`.
    pub fn token_due(&self, threshold: Duration) -> Option<Timestamp> {
        match (&self.token, self.obtained_at) {
            (Some(t), Some(at)) => Some(refresh_point(at, t.usable_until, threshold)),
            _ => None,
        }
    }

    /// When this slot next needs a fetch (`None`: now), never before a pending retry.
    pub fn next_fetch(&self, threshold: Duration) -> Option<Timestamp> {
        let need = match (self.token_due(threshold), self.domains_due, &self.domains) {
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

    fn due(&self, now: Timestamp, threshold: Duration) -> bool {
        self.next_fetch(threshold).is_none_or(|t| t <= now)
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
    })
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

    async fn fetch(&self, slot: &mut Slot, now: Timestamp) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let err = |source| RefreshError::Credentials {
            instance: inst.label(),
            source,
        };
        if slot.needs_domains(now) {
            let listed = match &inst.edition {
                _ if !inst.domains.is_empty() => Ok(inst.domains.clone()),
                Edition::Personal => Ok(render::personal_domains(&inst.region)),
                Edition::Enterprise { instance_id } => self
                    .registry
                    .enterprise_domains(&inst.auth, &inst.region, instance_id)
                    .await
                    .map_err(err),
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
                }
                // Listing again failed: the domains known stay, and the login is still
                // refreshed; the listing is tried again in a minute.
                Err(e) if slot.domains.is_some() => {
                    tracing::warn!(error = %e, "could not list the instance's domains again; keeping the known ones");
                    self.failed(slot, &e);
                    slot.domains_due = Some(now + SignedDuration::from_mins(1));
                }
                Err(e) => return Err(e),
            }
        }
        let threshold = self.registry.chain().threshold();
        if slot.token_due(threshold).is_none_or(|t| t <= now) {
            let t = self
                .registry
                .fetch_token(&inst.instance_ref())
                .await
                .map_err(err)?;
            self.metrics
                .token_expiry
                .get_or_create(&InstanceLabel {
                    instance: inst.label(),
                })
                .set(t.usable_until.as_second());
            slot.token = Some(t);
            slot.obtained_at = Some(now);
        }
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
            if let Some(list) = s.annotations.get(INSTANCES) {
                held.extend(
                    list.split(',')
                        .filter(|l| labels.contains(*l))
                        .map(str::to_owned),
                );
            }
        }
        held
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
                }
                Some(_) => {}
            }
            let Some(cfg) = config.clone() else { continue };
            let threshold = cfg.expiring_threshold;
            let now = Timestamp::now();
            let valid_until = content.borrow().as_ref().map(|c| c.secret.expires_at);
            let due: Vec<usize> = (0..slots.len())
                .filter(|i| slots[*i].due(now, threshold))
                .collect();
            let fetched = futures::future::join_all(due.iter().map(|&i| {
                let mut slot = slots[i].clone();
                let this = &self;
                async move {
                    let r = this.fetch(&mut slot, now).await;
                    (i, slot, r)
                }
            }))
            .await;
            for (i, mut slot, result) in fetched {
                match result {
                    Ok(()) => {
                        if slot.failures > 0 {
                            tracing::info!(instance = %slot.instance.label(), after_failures = slot.failures, "credentials obtained again");
                        }
                        slot.failures = 0;
                        slot.retry_at = None;
                    }
                    Err(e) => {
                        slot.failures = slot.failures.saturating_add(1);
                        let delay = retry_delay(
                            slot.failures,
                            Timestamp::now(),
                            valid_until,
                            rand::random(),
                        );
                        slot.retry_at = Timestamp::now()
                            .checked_add(
                                SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO),
                            )
                            .ok();
                        self.failed(&slot, &e);
                        tracing::warn!(error = %e, category = e.category(), failures = slot.failures, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), valid_until = ?valid_until, "could not refresh credentials");
                        if slot.failures == 1
                            && let Some(r) = &cm_ref
                        {
                            let until = valid_until.map_or(
                                "no password was obtained yet".to_owned(),
                                |v| {
                                    format!(
                                        "the Secrets keep their current passwords, valid until {v}"
                                    )
                                },
                            );
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
            let must_hold = if slots.iter().all(Slot::ready) {
                BTreeSet::new()
            } else {
                self.held(&cfg.instances)
            };
            if let Some(c) = content_of(&slots, &must_hold) {
                let next = Content {
                    secret: c,
                    configured: cfg.instances.clone(),
                };
                content.send_if_modified(|old| {
                    if old.as_deref() == Some(&next) {
                        return false;
                    }
                    tracing::info!(expires_at = %next.secret.expires_at, instances = ?next.secret.instances, "new Secret content");
                    *old = Some(Arc::new(next));
                    true
                });
            }
            let next = slots
                .iter()
                .filter_map(|s| s.next_fetch(threshold))
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
        let s = slot(3600, "2026-11-24T10:00:00Z");
        assert_eq!(
            s.next_fetch(S(900)),
            Some(ts("2026-11-24T10:10:00Z")),
            "domains first"
        );
        let mut s = slot(3600, "2026-11-24T10:00:00Z");
        s.domains_due = None;
        assert_eq!(s.next_fetch(S(900)), Some(ts("2026-11-24T10:45:00Z")));
        // A pending retry is never overtaken.
        s.retry_at = Some(ts("2026-11-24T10:50:00Z"));
        assert_eq!(s.next_fetch(S(900)), Some(ts("2026-11-24T10:50:00Z")));
        // Nothing obtained yet: due now.
        assert_eq!(Slot::new(s.instance.clone()).next_fetch(S(900)), None);
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
        let (next, gone) = reslot(vec![a.clone()], std::slice::from_ref(&a.instance));
        assert!(gone.is_empty() && next[0].domains.is_some());
        let (next, gone) = reslot(vec![a], &[]);
        assert!(next.is_empty() && gone.len() == 1);
    }
}
