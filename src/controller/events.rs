//! Kubernetes Events, written by the leader only.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::leader::Leadership;

/// The API server refuses Event notes longer than 1 KiB.
const MAX_NOTE: usize = 1000;

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

    async fn publish(
        &self,
        type_: EventType,
        reference: &ObjectReference,
        reason: &str,
        note: String,
    ) {
        if !self.leadership.leads_in(self.term) {
            return;
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(bounded(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "could not record an Event");
        }
    }

    pub async fn warn(&self, reference: &ObjectReference, reason: &str, note: String) {
        self.publish(EventType::Warning, reference, reason, note)
            .await;
    }

    pub async fn normal(&self, reference: &ObjectReference, reason: &str, note: String) {
        self.publish(EventType::Normal, reference, reason, note)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(800);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_NOTE + 3 && cut.ends_with("..."));
        assert_eq!(bounded("short".into()), "short");
    }
}
