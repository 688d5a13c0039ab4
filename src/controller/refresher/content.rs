//! The content of the Secrets: made from the slots' logins, per set of instances that serve a
//! namespace, never dropping a login the Secrets hold.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;

use crate::config::{Instance, InstanceSet};
use crate::record::DigestKey;
use crate::render::{self, Login, SecretContent};

use super::slot::{Slot, record_of};

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
    pub(super) fn same_as(&self, other: &Content) -> bool {
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
