//! One instance's login and domains, and its failures: the refresher's state, and the pure rules
//! over it (what is due, what a new configuration keeps, what the record holds).

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use crate::aliyun::cr::RegistryToken;
use crate::config::Instance;
use crate::credentials::UsableToken;
use crate::record::{Record, RecordedLogin};
use crate::timing::{self, Schedule};

/// What one fetch of a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Domains,
    Login,
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
    pub(super) fn login_identity(&self) -> String {
        if self.superseded {
            "superseded".to_owned()
        } else {
            self.instance.identity()
        }
    }

    /// When the login must be fetched again under `schedule` (`None`: now); a superseded one at
    /// once.
    pub fn token_due(&self, schedule: &Schedule) -> Option<Timestamp> {
        let (token, at) = (self.token.as_ref()?, self.obtained_at?);
        if self.superseded {
            return Some(at);
        }
        Some(schedule.login_due(at, token.usable_until))
    }

    /// When this slot next needs a fetch (`None`: now), never before a pending retry.
    pub fn next_fetch(&self, schedule: &Schedule) -> Option<Timestamp> {
        let need = match (self.token_due(schedule), self.domains_due, &self.domains) {
            (Some(t), Some(d), Some(_)) => Some(t.min(d)),
            (Some(t), None, Some(_)) => Some(t),
            _ => None,
        };
        timing::not_before_retry(need, self.retry_at)
    }

    pub(super) fn due(&self, now: Timestamp, schedule: &Schedule) -> bool {
        self.next_fetch(schedule).is_none_or(|t| t <= now)
    }

    /// Whether `phase` of this slot is to be fetched at `now`.
    pub(super) fn due_for(&self, phase: Phase, now: Timestamp, schedule: &Schedule) -> bool {
        self.due(now, schedule)
            && match phase {
                Phase::Domains => self.needs_domains(now),
                Phase::Login => {
                    self.domains.is_some() && self.token_due(schedule).is_none_or(|t| t <= now)
                }
            }
    }

    /// Counts a failure and schedules its retry.
    pub(super) fn failed_at(
        &mut self,
        now: Timestamp,
        valid_until: Option<Timestamp>,
        jitter: f64,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = timing::retry_delay(self.failures, now, valid_until, jitter);
        self.retry_at = Some(timing::after(now, delay));
        delay
    }

    pub(super) fn needs_domains(&self, now: Timestamp) -> bool {
        self.domains.is_none() || self.domains_due.is_some_and(|d| d <= now)
    }

    /// Has a login and somewhere to write it.
    pub(super) fn ready(&self) -> bool {
        self.token.is_some() && self.domains.as_ref().is_some_and(|d| !d.is_empty())
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
