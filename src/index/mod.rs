//! What the controller knows of the cluster: per namespace, whether it exists, its ServiceAccounts'
//! `imagePullSecrets`, and the Secret that holds our name. Only those fields are kept (not whole
//! objects), indexed by namespace, so a namespace is planned in O(its ServiceAccounts) and 10,000
//! namespaces fit in a few MiB.
//!
//! Every replica keeps an index from its own watches (the webhook answers from it, and a standby
//! that takes over starts warm). The index also says which namespaces changed in a way that can
//! change a decision ("dirty"): a watch event that only repeats what a write of ours already put
//! here, or that changes nothing we look at, makes no work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use tokio::sync::Notify;

use crate::record::DIGEST;
use crate::render::{
    DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE, EXPIRES_AT, IDENTITY, INSTANCES, is_managed,
};

/// The label every namespace carries with its own name: not worth keeping.
mod view;
pub use view::ServiceAccountView;

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A resourceVersion, kept without an allocation when it is a number (as etcd's are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rv {
    Number(u64),
    Text(Box<str>),
}

impl Rv {
    pub fn parse(s: &str) -> Rv {
        match s.parse::<u64>() {
            Ok(n) if n.to_string() == s => Rv::Number(n),
            _ => Rv::Text(s.into()),
        }
    }

    /// Whether this version is older than `other`. resourceVersions are opaque to clients, but
    /// every API server backed by etcd issues increasing integers; when both are numbers, an older
    /// event is one our own write has already superseded. Only an optimisation: every write still
    /// carries a precondition, so a wrong answer costs a conflict and a re-read, never a lost
    /// update.
    pub fn is_older_than(&self, other: &Rv) -> bool {
        matches!((self, other), (Rv::Number(a), Rv::Number(b)) if a < b)
    }
}

impl std::fmt::Display for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rv::Number(n) => write!(f, "{n}"),
            Rv::Text(t) => f.write_str(t),
        }
    }
}

impl From<Option<&String>> for Rv {
    fn from(s: Option<&String>) -> Rv {
        Rv::parse(s.map_or("", String::as_str))
    }
}

/// A namespace as far as the controller's decisions go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsState {
    /// The Namespace object has been seen (ServiceAccounts can arrive first).
    pub exists: bool,
    pub terminating: bool,
    /// Its labels, but `kubernetes.io/metadata.name`.
    pub labels: BTreeMap<String, String>,
    pub service_accounts: BTreeMap<Arc<str>, SaState>,
    /// The Secret that holds our name here, ours or not.
    pub secret: Option<SecretState>,
    /// The relist generation that last saw the namespace.
    pub(crate) seen: u32,
}

impl NsState {
    /// A Secret of our name that is not ours stands here: then nothing in the namespace is
    /// touched, no ServiceAccount or Pod gets our reference. The one place this rule is written
    /// (the planner, the webhooks and the writer ask it).
    pub fn name_taken(&self) -> bool {
        self.secret.as_ref().is_some_and(SecretState::is_foreign)
    }

    /// Our pull Secret is here (as far as its label and type go).
    pub fn has_ours(&self) -> bool {
        self.secret.as_ref().is_some_and(|s| !s.is_foreign())
    }
}

/// The longest `imagePullSecrets` list the index keeps whole. A longer one (a tenant can make it
/// a megabyte) is kept as the count of our entries only; the writer reads the ServiceAccount
/// before it patches one.
pub const MAX_KEPT_REFERENCES: usize = 32;

/// A ServiceAccount: what we may change, and the version we saw it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaState {
    pub resource_version: Rv,
    /// The names in `imagePullSecrets`, in order, when there are at most
    /// [`MAX_KEPT_REFERENCES`]; `None`: too many to keep.
    pub pull_secrets: Option<Vec<String>>,
    /// How many of those entries name our Secret.
    pub ours: u32,
    /// Its opt-in or opt-out label ([`crate::config::OPT_LABEL`]), if any.
    pub opted: Option<bool>,
    pub(crate) seen: u32,
}

impl SaState {
    /// The state of a ServiceAccount whose `imagePullSecrets` hold `names`, for our Secret
    /// `secret_name`.
    pub fn new(resource_version: Rv, names: Vec<String>, secret_name: &str) -> SaState {
        let ours = names.iter().filter(|n| *n == secret_name).count();
        SaState {
            resource_version,
            ours: u32::try_from(ours).unwrap_or(u32::MAX),
            pull_secrets: (names.len() <= MAX_KEPT_REFERENCES).then_some(names),
            opted: None,
            seen: 0,
        }
    }
}

/// The Secret of our name in a namespace.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretState {
    pub uid: Box<str>,
    pub resource_version: Rv,
    /// Carries our managed-by label and is a `kubernetes.io/dockerconfigjson` Secret: one the
    /// controller may claim as its own. (A label is no proof that the controller wrote it: see
    /// `plan::authentic`.) Any other Secret of our name is foreign.
    pub managed: bool,
    /// `.dockerconfigjson` when it is the Secret's only key (shared between equal Secrets).
    pub dockerconfigjson: Option<Arc<[u8]>>,
    /// Our annotations as found (outputs of ours, or whatever somebody wrote there): only ever
    /// compared with what the controller would write, never acted upon.
    pub expires_at: Option<Box<str>>,
    pub instances: Option<Box<str>>,
    pub identity: Option<Box<str>>,
    pub digest: Option<Box<str>>,
    /// The relist generation that last saw it.
    pub(crate) seen: u32,
}

impl SecretState {
    /// Not a Secret the controller may claim: it lacks our label, or is of another type.
    pub fn is_foreign(&self) -> bool {
        !self.managed
    }

    /// What the controller keeps of a Secret of its name.
    pub fn of(secret: &Secret) -> SecretState {
        let annotation = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(|v| Box::<str>::from(v.as_str()))
        };
        let dockerconfigjson = match secret.data.as_ref() {
            Some(d) if d.len() == 1 => d.get(DOCKER_CONFIG_KEY).map(|b| Arc::from(b.0.as_slice())),
            _ => None,
        };
        SecretState {
            uid: secret.metadata.uid.as_deref().unwrap_or_default().into(),
            resource_version: Rv::from(secret.metadata.resource_version.as_ref()),
            managed: is_managed(&secret.metadata)
                && secret.type_.as_deref() == Some(DOCKER_CONFIG_TYPE),
            dockerconfigjson,
            expires_at: annotation(EXPIRES_AT),
            instances: annotation(INSTANCES),
            identity: annotation(IDENTITY),
            digest: annotation(DIGEST),
            seen: 0,
        }
    }
}

impl std::fmt::Debug for SecretState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretState")
            .field("uid", &self.uid)
            .field("resource_version", &self.resource_version)
            .field("managed", &self.managed)
            .field("expires_at", &self.expires_at)
            .field("instances", &self.instances)
            .field("identity", &self.identity)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Which watch a relist is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Secret,
}

impl Kind {
    fn slot(self) -> usize {
        match self {
            Kind::Namespace => 0,
            Kind::ServiceAccount => 1,
            Kind::Secret => 2,
        }
    }
}

/// The index proper: plain data, no I/O.
pub struct Index {
    /// The pull Secret's name (`--secret-name`): what "our entry" of `imagePullSecrets` is.
    secret_name: Box<str>,
    namespaces: HashMap<Arc<str>, NsState>,
    /// Equal `.dockerconfigjson` values share one allocation.
    contents: HashSet<Arc<[u8]>>,
    /// Per kind, the generation of the relist in progress (`None`: none), and the last one. An
    /// entry seen by the relist carries its generation; what does not is gone.
    relist: [Option<u32>; 3],
    generation: [u32; 3],
    /// Secrets we deleted (namespace, uid) whose deletion the watch has not shown yet: a late
    /// event of theirs must not bring them back.
    deleted: HashSet<(Arc<str>, Box<str>)>,
}

/// Holds registry passwords: shows counts only.
impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("namespaces", &self.namespaces.len())
            .field("contents", &self.contents.len())
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An empty index for the pull Secret `secret_name`.
    pub fn new(secret_name: &str) -> Index {
        Index {
            secret_name: secret_name.into(),
            namespaces: HashMap::new(),
            contents: HashSet::new(),
            relist: [None; 3],
            generation: [0; 3],
            deleted: HashSet::new(),
        }
    }

    pub fn namespace(&self, name: &str) -> Option<&NsState> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&Arc<str>, &NsState)> {
        self.namespaces.iter()
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Pull Secrets of ours (managed Secrets of our name).
    pub fn managed_secrets(&self) -> usize {
        self.namespaces.values().filter(|n| n.has_ours()).count()
    }

    fn key(&self, ns: &str) -> Arc<str> {
        match self.namespaces.get_key_value(ns) {
            Some((k, _)) => k.clone(),
            None => Arc::from(ns),
        }
    }

    /// The generation a relist of `kind` marks what it sees with (0 outside a relist).
    fn marking(&self, kind: Kind) -> u32 {
        self.relist[kind.slot()].unwrap_or(0)
    }

    /// Drops a namespace entry that holds nothing any more.
    fn tidy(&mut self, ns: &str) {
        if self
            .namespaces
            .get(ns)
            .is_some_and(|n| !n.exists && n.service_accounts.is_empty() && n.secret.is_none())
        {
            self.namespaces.remove(ns);
        }
    }

    fn intern(&mut self, value: Arc<[u8]>) -> Arc<[u8]> {
        if let Some(existing) = self.contents.get(&*value) {
            return existing.clone();
        }
        // Forget values no Secret holds any more before adding one.
        if self.contents.len() >= 8 {
            self.contents.retain(|c| Arc::strong_count(c) > 1);
        }
        self.contents.insert(value.clone());
        value
    }

    /// A Namespace was added or changed. Returns whether a decision may change.
    pub fn apply_namespace(&mut self, ns: &PartialObjectMeta<Namespace>) -> bool {
        let Some(name) = ns.metadata.name.as_deref() else {
            return false;
        };
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.remove(NAME_LABEL);
        let terminating = ns.metadata.deletion_timestamp.is_some();
        let seen = self.marking(Kind::Namespace);
        let key = self.key(name);
        let state = self.namespaces.entry(key).or_default();
        let changed = !state.exists || state.terminating != terminating || state.labels != labels;
        state.exists = true;
        state.terminating = terminating;
        state.labels = labels;
        state.seen = seen;
        changed
    }

    pub fn delete_namespace(&mut self, name: &str) -> bool {
        let Some(state) = self.namespaces.get_mut(name) else {
            return false;
        };
        let was = state.exists;
        state.exists = false;
        state.terminating = false;
        state.labels.clear();
        self.tidy(name);
        was
    }

    /// A ServiceAccount was added or changed (a watch event, or the answer to our own write).
    pub fn apply_service_account(&mut self, sa: &ServiceAccountView) -> bool {
        let (Some(ns), Some(name)) = (
            sa.metadata.namespace.as_deref(),
            sa.metadata.name.as_deref(),
        ) else {
            return false;
        };
        let seen = self.marking(Kind::ServiceAccount);
        let mut next = SaState::new(
            Rv::from(sa.metadata.resource_version.as_ref()),
            sa.image_pull_secrets.clone(),
            &self.secret_name,
        );
        next.seen = seen;
        next.opted = crate::config::opt(
            sa.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::config::OPT_LABEL))
                .map(String::as_str),
        );
        let key = self.key(ns);
        let state = self.namespaces.entry(key).or_default();
        let (name, changed) = match state.service_accounts.get_key_value(name) {
            Some((k, old)) if next.resource_version.is_older_than(&old.resource_version) => {
                let k = k.clone();
                if let Some(old) = state.service_accounts.get_mut(&k) {
                    old.seen = seen;
                }
                return false;
            }
            Some((k, old)) => (
                k.clone(),
                old.pull_secrets != next.pull_secrets
                    || old.ours != next.ours
                    || old.opted != next.opted,
            ),
            None => (Arc::from(name), true),
        };
        state.service_accounts.insert(name, next);
        changed
    }

    pub fn delete_service_account(&mut self, ns: &str, name: &str) -> bool {
        let removed = self
            .namespaces
            .get_mut(ns)
            .and_then(|s| s.service_accounts.remove(name))
            .is_some();
        self.tidy(ns);
        removed
    }

    /// The Secret of our name was added or changed.
    pub fn apply_secret(&mut self, secret: &Secret) -> bool {
        let Some(ns) = secret.metadata.namespace.as_deref() else {
            return false;
        };
        let key = self.key(ns);
        let mut next = SecretState::of(secret);
        if self.deleted.contains(&(key.clone(), next.uid.clone())) {
            return false;
        }
        next.dockerconfigjson = next.dockerconfigjson.map(|b| self.intern(b));
        let seen = self.marking(Kind::Secret);
        next.seen = seen;
        let state = self.namespaces.entry(key).or_default();
        let changed = match &mut state.secret {
            Some(old)
                if old.uid == next.uid
                    && next.resource_version.is_older_than(&old.resource_version) =>
            {
                old.seen = seen;
                return false;
            }
            Some(old) => {
                let same = SecretState {
                    resource_version: old.resource_version.clone(),
                    seen: old.seen,
                    ..next.clone()
                } == *old;
                !same
            }
            None => true,
        };
        state.secret = Some(next);
        changed
    }

    /// We deleted the Secret `uid` of `ns`: forget it, and ignore late events of it.
    pub fn deleted_secret(&mut self, ns: &str, uid: &str) {
        self.delete_secret(ns, Some(uid));
        self.deleted.insert((Arc::from(ns), uid.into()));
    }

    /// The watch says the Secret of our name is gone from `ns` (only if it still is the object
    /// `uid`, when given).
    pub fn delete_secret(&mut self, ns: &str, uid: Option<&str>) -> bool {
        if let Some(uid) = uid {
            self.deleted.remove(&(Arc::from(ns), uid.into()));
        }
        let Some(state) = self.namespaces.get_mut(ns) else {
            return false;
        };
        let matches = match (&state.secret, uid) {
            (Some(s), Some(uid)) => &*s.uid == uid,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if matches {
            state.secret = None;
        }
        self.tidy(ns);
        matches
    }

    /// A watch starts listing everything again: what it does not list by [`Index::end_relist`]
    /// is gone. (A first list has nothing to forget and marks nothing.)
    pub fn begin_relist(&mut self, kind: Kind) {
        let slot = kind.slot();
        if self.namespaces.is_empty() && self.generation[slot] == 0 {
            return;
        }
        self.generation[slot] = self.generation[slot].wrapping_add(1).max(1);
        self.relist[slot] = Some(self.generation[slot]);
    }

    /// Ends a relist; returns the namespaces where something disappeared.
    pub fn end_relist(&mut self, kind: Kind) -> Vec<Arc<str>> {
        let Some(generation) = self.relist[kind.slot()].take() else {
            return Vec::new();
        };
        let mut dirty = Vec::new();
        let names: Vec<Arc<str>> = self.namespaces.keys().cloned().collect();
        for ns in names {
            let Some(state) = self.namespaces.get_mut(&ns) else {
                continue;
            };
            let changed = match kind {
                Kind::Namespace => {
                    let gone = state.exists && state.seen != generation;
                    if gone {
                        state.exists = false;
                        state.terminating = false;
                        state.labels.clear();
                    }
                    gone
                }
                Kind::Secret => {
                    let gone = state.secret.as_ref().is_some_and(|s| s.seen != generation);
                    if gone {
                        state.secret = None;
                    }
                    gone
                }
                Kind::ServiceAccount => {
                    let before = state.service_accounts.len();
                    state.service_accounts.retain(|_, sa| sa.seen == generation);
                    before != state.service_accounts.len()
                }
            };
            if changed {
                dirty.push(ns.clone());
            }
            self.tidy(&ns);
        }
        dirty
    }
}

/// The index shared by the watches (writers), the controller and the webhook (readers), with
/// the set of namespaces that changed since the controller last looked.
pub struct SharedIndex {
    index: RwLock<Index>,
    dirty: Mutex<HashSet<Arc<str>>>,
    changed: Notify,
    synced: [AtomicBool; 3],
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex")
            .field("index", &*self.read())
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

impl SharedIndex {
    /// An empty index for the pull Secret `secret_name`.
    pub fn new(secret_name: &str) -> SharedIndex {
        SharedIndex {
            index: RwLock::new(Index::new(secret_name)),
            dirty: Mutex::default(),
            changed: Notify::new(),
            synced: Default::default(),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the index; `f` returns the namespaces whose decisions may have changed.
    pub fn update<R>(&self, f: impl FnOnce(&mut Index) -> (R, Vec<Arc<str>>)) -> R {
        let (result, dirty) = {
            let mut index = self
                .index
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut index)
        };
        if !dirty.is_empty() {
            self.dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(dirty);
            self.changed.notify_one();
        }
        result
    }

    /// Records the answer to one of our own writes: never makes work.
    pub fn record(&self, f: impl FnOnce(&mut Index)) {
        self.update(|i| {
            f(i);
            ((), Vec::new())
        })
    }

    /// The namespaces that changed since the last call.
    pub fn take_dirty(&self) -> Vec<Arc<str>> {
        std::mem::take(
            &mut *self
                .dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect()
    }

    /// Resolves when namespaces became dirty (or at once if some are).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn set_synced(&self, kind: Kind) {
        self.synced[kind.slot()].store(true, Ordering::Relaxed);
    }

    /// Every watch has listed once.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trimming_tests;
