//! Kubernetes Events, written by the leader only.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::leader::Leadership;

/// The API server refuses Event notes longer than 1 KiB.
const MAX_NOTE: usize = 1000;

/// Why an Event is recorded: every reason the controller uses, with its type. The README's
/// troubleshooting table lists the same set (a test keeps them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// On the ConfigMap: an edit was rejected.
    InvalidConfiguration,
    /// On the ConfigMap: an instance's credentials could not be obtained (first failure).
    CredentialsUnavailable,
    /// On the ConfigMap: credentials were obtained again after failures.
    Refreshed,
    /// On the ConfigMap: the state Secret cannot be read.
    StateUnavailable,
    /// On the ConfigMap: the webhook could not be registered.
    WebhookFailed,
    /// On a Namespace: the pull Secret's name is held by a Secret the controller did not write.
    SecretNameTaken,
    /// On a Namespace: a reconcile failed (first failure).
    ReconcileFailed,
    /// On a Namespace: served again after failures.
    Served,
    /// On a ServiceAccount: the imagePullSecrets patch failed.
    PatchFailed,
    /// On a pull Secret: content somebody else wrote was replaced.
    SecretRepaired,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::InvalidConfiguration,
        Reason::CredentialsUnavailable,
        Reason::Refreshed,
        Reason::StateUnavailable,
        Reason::WebhookFailed,
        Reason::SecretNameTaken,
        Reason::ReconcileFailed,
        Reason::Served,
        Reason::PatchFailed,
        Reason::SecretRepaired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidConfiguration => "InvalidConfiguration",
            Reason::CredentialsUnavailable => "CredentialsUnavailable",
            Reason::Refreshed => "Refreshed",
            Reason::StateUnavailable => "StateUnavailable",
            Reason::WebhookFailed => "WebhookFailed",
            Reason::SecretNameTaken => "SecretNameTaken",
            Reason::ReconcileFailed => "ReconcileFailed",
            Reason::Served => "Served",
            Reason::PatchFailed => "PatchFailed",
            Reason::SecretRepaired => "SecretRepaired",
        }
    }

    /// Recovery is `Normal`; everything else needs a look.
    pub fn is_warning(self) -> bool {
        !matches!(self, Reason::Refreshed | Reason::Served)
    }
}

/// Records Events while this replica leads.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    leadership: Leadership,
    term: u64,
}

fn bounded(note: String) -> String {
    if note.len() <= MAX_NOTE {
        return note;
    }
    let mut cut = MAX_NOTE;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &note[..cut])
}

impl Events {
    pub fn new(client: Client, reporter: Reporter, leadership: Leadership, term: u64) -> Events {
        Events {
            recorder: Recorder::new(client, reporter),
            leadership,
            term,
        }
    }

    /// Records `reason` on `reference` (only while this term leads; a failure is logged).
    pub async fn record(&self, reference: &ObjectReference, reason: Reason, note: String) {
        if !self.leadership.leads_in(self.term) {
            return;
        }
        let event = Event {
            type_: if reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().to_owned(),
            note: Some(bounded(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason = reason.as_str(), "could not record an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_and_documented() {
        let names: std::collections::HashSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        let readme = include_str!("../../README.md");
        for r in Reason::ALL {
            assert!(
                readme.contains(&format!("`{}`", r.as_str())),
                "README does not document Event reason {}",
                r.as_str()
            );
        }
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(800);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_NOTE + 3 && cut.ends_with("..."));
        assert_eq!(bounded("short".into()), "short");
    }
}
