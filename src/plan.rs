//! What to write in a namespace: a pure function of the configuration in force, what the index
//! knows of the namespace, and the Secret content the credentials give. The controller executes
//! it; the `plan` command prints it ([`report`]). No I/O here.

use std::sync::Arc;

use crate::config::{Config, InstanceSet};
use crate::index::{NsState, SecretState};
use crate::record::{DigestKey, Digested};
use crate::render::{SecretContent, references_need_change};

/// The content a set of instances gives (`None`: not available for that set yet).
pub type ContentFor<'a> = &'a dyn Fn(InstanceSet) -> Option<Arc<SecretContent>>;

/// What the Secret content will be.
#[derive(Clone, Copy)]
pub enum Desired<'a> {
    /// No credentials yet: nothing can be created or refreshed; what exists stays.
    Unavailable,
    /// The content a namespace's Secret should hold, for the instances that serve it.
    Content(ContentFor<'a>),
    /// Credentials are assumed to come: a missing Secret would be created, an existing one kept
    /// (used when planning without calling the cloud).
    Assumed,
}

impl std::fmt::Debug for Desired<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Desired::Unavailable => "Unavailable",
            Desired::Content(_) => "Content",
            Desired::Assumed => "Assumed",
        })
    }
}

/// What happens to the Secret of our name in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretStep {
    /// Nothing to write (it is right, or absent and not wanted, or cannot be made yet).
    #[default]
    Keep,
    Create,
    Update,
    Delete,
    /// A Secret of our name that is not ours: nothing in this namespace is touched.
    Blocked,
}

/// One ServiceAccount gains (`add`) or loses our reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceStep {
    pub service_account: Arc<str>,
    pub add: bool,
}

/// Everything to write in one namespace. Execution order: the Secret is created or updated first,
/// then references are added, then removed, and the Secret is deleted last, so no reference we
/// add ever points at a Secret we have not written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespacePlan {
    pub secret: SecretStep,
    pub references: Vec<ReferenceStep>,
    /// The instances that serve the namespace.
    pub instances: InstanceSet,
    /// The content the Secret is created or updated with (with [`SecretStep::Create`] or
    /// [`SecretStep::Update`] under [`Desired::Content`]).
    pub content: Option<Arc<SecretContent>>,
}

impl NamespacePlan {
    /// Whether nothing needs writing (a blocked namespace writes nothing either).
    pub fn is_empty(&self) -> bool {
        matches!(self.secret, SecretStep::Keep | SecretStep::Blocked) && self.references.is_empty()
    }
}

/// Whether the Secret the index holds already has exactly `content`: our label, the type, the
/// one `.dockerconfigjson` key with the same bytes, and the same expiry, instances, identity and
/// digest annotations. The one rule of "nothing to write" (the planner and the writer's conflict
/// path both ask it).
pub fn holds(secret: &SecretState, content: &SecretContent) -> bool {
    secret.managed
        && secret.dockerconfigjson.as_deref() == Some(content.dockerconfigjson.as_slice())
        && secret.expires_at.as_deref() == Some(content.expires_at.to_string().as_str())
        && secret.instances.as_deref() == Some(content.instances.join(",").as_str())
        && secret.identity.as_deref() == Some(content.identity.as_str())
        && secret.digest.as_deref() == Some(content.digest.as_str())
}

/// Whether the controller wrote the content of this Secret of its name, as far as `key` can
/// tell: its digest annotation is the key's digest of its content. A Secret anybody else wrote or
/// edited (a tenant rewriting the pull Secret of their namespace, say) is not, whatever its labels
/// and annotations say.
pub fn authentic(secret: &SecretState, key: &DigestKey) -> bool {
    let (Some(doc), Some(expires_at), Some(instances), Some(identity), Some(digest)) = (
        secret.dockerconfigjson.as_deref(),
        secret.expires_at.as_deref(),
        secret.instances.as_deref(),
        secret.identity.as_deref(),
        secret.digest.as_deref(),
    ) else {
        return false;
    };
    secret.managed
        && key.verifies(
            Digested {
                dockerconfigjson: doc,
                expires_at,
                instances,
                identity,
            },
            digest,
        )
}

/// The writes that bring namespace `name` in line with `cfg`.
pub fn plan_namespace(
    name: &str,
    ns: &NsState,
    cfg: &Config,
    desired: Desired<'_>,
) -> NamespacePlan {
    // A namespace not seen yet or being deleted: nothing to do (its deletion removes ours).
    if !ns.exists || ns.terminating {
        return NamespacePlan::default();
    }
    let instances = cfg.instances_for(name, &ns.labels);
    let selected = !instances.is_empty();
    let content = match desired {
        Desired::Content(f) if selected => f(instances),
        _ => None,
    };
    let secret = match (&ns.secret, selected) {
        (Some(_), _) if ns.name_taken() => {
            return NamespacePlan {
                secret: if selected {
                    SecretStep::Blocked
                } else {
                    SecretStep::Keep
                },
                instances,
                ..NamespacePlan::default()
            };
        }
        (Some(_), false) => SecretStep::Delete,
        (None, false) => SecretStep::Keep,
        (Some(s), true) => match &content {
            Some(c) if !holds(s, c) => SecretStep::Update,
            _ => SecretStep::Keep,
        },
        (None, true) => match (desired, &content) {
            (Desired::Content(_), Some(_)) | (Desired::Assumed, _) => SecretStep::Create,
            _ => SecretStep::Keep,
        },
    };
    // A reference is only added where our Secret exists or is about to.
    let secret_there = matches!(secret, SecretStep::Create) || (selected && ns.has_ours());
    // With `patch-service-accounts: false` no ServiceAccount is ever written (Pod injection
    // carries the reference instead).
    let references = ns
        .service_accounts
        .iter()
        .filter(|_| cfg.patch_service_accounts)
        .filter_map(|(sa, state)| {
            let want = cfg.selects_service_account(instances, Some(sa), state.opted);
            if want && !secret_there {
                return None;
            }
            let ours = usize::try_from(state.ours).unwrap_or(usize::MAX);
            references_need_change(ours, want).then(|| ReferenceStep {
                service_account: sa.clone(),
                add: want,
            })
        })
        .collect();
    let content = content.filter(|_| matches!(secret, SecretStep::Create | SecretStep::Update));
    NamespacePlan {
        secret,
        references,
        instances,
        content,
    }
}

pub mod report;

#[cfg(test)]
mod tests;
