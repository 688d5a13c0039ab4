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

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use crate::config::{Config, Instance};
use crate::config_source::ConfigView;
use crate::credentials::cache::refresh_point;
use crate::credentials::{CredentialError, Edition, Registry, UsableToken};
use crate::metrics::{InstanceCategoryLabels, InstanceLabel, Metrics};
use crate::render::{self, Login, SecretContent};

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
}

/// The content the slots give, when every instance has a login and at least one domain.
pub fn content_of(slots: &[Slot]) -> Option<SecretContent> {
    let mut logins = Vec::new();
    for s in slots {
        let token = s.token.as_ref()?;
        let domains = s.domains.as_ref().filter(|d| !d.is_empty())?;
        for d in domains {
            logins.push(Login {
                domain: d,
                username: &token.token.username,
                password: &token.token.password,
            });
        }
    }
    if slots.is_empty() {
        return None;
    }
    Some(SecretContent {
        dockerconfigjson: render::dockerconfigjson(&logins),
        expires_at: slots
            .iter()
            .filter_map(|s| s.token.as_ref().map(|t| t.usable_until))
            .min()
            .unwrap_or(Timestamp::MAX),
        instances: slots.iter().map(|s| s.instance.label()).collect(),
    })
}

/// Keeps the published content fresh for the configuration in force.
pub struct Refresher {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub events: Events,
}

impl Refresher {
    async fn fetch(&self, slot: &mut Slot, now: Timestamp) -> Result<(), RefreshError> {
        let inst = slot.instance.clone();
        let err = |source| RefreshError::Credentials {
            instance: inst.label(),
            source,
        };
        if slot.needs_domains(now) {
            let domains = match &inst.edition {
                _ if !inst.domains.is_empty() => inst.domains.clone(),
                Edition::Personal => render::personal_domains(&inst.region),
                Edition::Enterprise { instance_id } => self
                    .registry
                    .enterprise_domains(&inst.auth, &inst.region, instance_id)
                    .await
                    .map_err(err)?,
            };
            if domains.is_empty() {
                return Err(RefreshError::NoDomains {
                    instance: inst.label(),
                });
            }
            slot.domains = Some(domains);
            // Listed domains are listed again now and then; configured ones never change.
            let listed =
                matches!(inst.edition, Edition::Enterprise { .. }) && inst.domains.is_empty();
            slot.domains_due = listed.then(|| now + DOMAINS_TTL);
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

    /// Runs until the task is dropped: follows the configuration in force, fetches what is due,
    /// and publishes the content on `content`.
    pub async fn run(
        &self,
        mut view: watch::Receiver<Arc<ConfigView>>,
        content: watch::Sender<Option<Arc<SecretContent>>>,
    ) {
        let mut slots: Vec<Slot> = Vec::new();
        let mut config: Option<Arc<Config>> = None;
        loop {
            let current = view.borrow_and_update().clone();
            let cm_ref = current.configmap.clone();
            if let Some(cfg) = current.config()
                && config.as_ref() != Some(cfg)
            {
                self.registry.chain().set_threshold(cfg.expiring_threshold);
                let mut next = Vec::new();
                for inst in &cfg.instances {
                    let kept = slots
                        .iter()
                        .position(|s| s.instance == *inst)
                        .map(|i| slots.swap_remove(i));
                    next.push(kept.unwrap_or_else(|| Slot::new(inst.clone())));
                }
                for gone in &slots {
                    self.metrics.token_expiry.remove(&InstanceLabel {
                        instance: gone.instance.label(),
                    });
                }
                let keep: Vec<_> = cfg.instances.iter().map(Instance::instance_ref).collect();
                self.registry.retain(|r| keep.contains(r));
                slots = next;
                config = Some(cfg.clone());
                // Content of other instances is no content for these.
                content.send_if_modified(|c| {
                    let stale = c.as_ref().is_some_and(|c| {
                        c.instances
                            != cfg
                                .instances
                                .iter()
                                .map(Instance::label)
                                .collect::<Vec<_>>()
                    });
                    if stale {
                        *c = None;
                    }
                    stale
                });
            }
            let Some(cfg) = config.clone() else {
                if view.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let threshold = cfg.expiring_threshold;
            let now = Timestamp::now();
            let valid_until = content.borrow().as_ref().map(|c| c.expires_at);
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
                        self.metrics
                            .credential_errors
                            .get_or_create(&InstanceCategoryLabels {
                                instance: slot.instance.label(),
                                category: e.category().to_owned(),
                            })
                            .inc();
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
            if let Some(c) = content_of(&slots) {
                content.send_if_modified(|old| {
                    if old.as_deref() == Some(&c) {
                        return false;
                    }
                    tracing::info!(expires_at = %c.expires_at, instances = ?c.instances, "new Secret content");
                    *old = Some(Arc::new(c));
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
    fn content_needs_every_instance_with_a_domain() {
        let a = slot(3600, "2026-11-24T10:00:00Z");
        let mut b = slot(1800, "2026-11-24T10:00:00Z");
        b.instance.edition = Edition::Enterprise {
            instance_id: "cri-b".into(),
        };
        b.domains = Some(vec!["b.example.com".into()]);
        let c = content_of(&[a.clone(), b.clone()]).unwrap_or_else(|| panic!("no content"));
        assert_eq!(c.instances, vec!["cri-a", "cri-b"]);
        assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
        let doc: serde_json::Value =
            serde_json::from_slice(&c.dockerconfigjson).unwrap_or_default();
        assert_eq!(doc["auths"].as_object().map(|m| m.len()), Some(2));
        // One instance without a login, or without any domain: no content at all.
        let mut no_token = b.clone();
        no_token.token = None;
        assert!(content_of(&[a.clone(), no_token]).is_none());
        let mut no_domain = b;
        no_domain.domains = Some(vec![]);
        assert!(content_of(&[a, no_domain]).is_none());
        assert!(content_of(&[]).is_none());
    }
}
