use super::*;

fn record(holder: Option<&str>, secs: i32) -> Record {
    Record {
        holder: holder.map(str::to_owned),
        duration_seconds: secs,
        renew_time: Some(Timestamp::UNIX_EPOCH),
        acquire_time: Some(Timestamp::UNIX_EPOCH),
        transitions: 3,
    }
}

fn cfg() -> LeaseConfig {
    LeaseConfig {
        namespace: "kube-system".into(),
        name: "l".into(),
        identity: "me".into(),
        duration: Duration::from_secs(15),
        grace: Duration::from_secs(5),
        retry: Duration::from_secs(2),
    }
}

#[test]
fn a_lease_is_taken_when_free_ours_or_unrenewed_for_its_duration() {
    let s = Duration::from_secs;
    assert!(may_take(None, "me", s(0)));
    assert!(may_take(Some(&record(None, 15)), "me", s(0)));
    assert!(may_take(Some(&record(Some("me"), 15)), "me", s(0)));
    assert!(!may_take(Some(&record(Some("other"), 15)), "me", s(14)));
    assert!(may_take(Some(&record(Some("other"), 15)), "me", s(15)));
    // A record without a duration counts as one second.
    assert!(!may_take(
        Some(&record(Some("other"), 0)),
        "me",
        Duration::from_millis(900)
    ));
    assert!(may_take(Some(&record(Some("other"), 0)), "me", s(1)));
}

#[test]
fn the_renew_deadline_leaves_the_grace_before_takeover() {
    assert_eq!(cfg().renew_deadline(), Duration::from_secs(10));
    let odd = LeaseConfig {
        grace: Duration::from_secs(20),
        ..cfg()
    };
    assert_eq!(odd.renew_deadline(), Duration::from_millis(500));
}

#[test]
fn the_leader_tries_several_times_before_its_deadline() {
    assert_eq!(cfg().with_sane_retry().retry, Duration::from_secs(2));
    let short = LeaseConfig {
        duration: Duration::from_secs(4),
        grace: Duration::from_secs(2),
        ..cfg()
    };
    assert_eq!(short.with_sane_retry().retry, Duration::from_millis(500));
}

#[test]
fn renewing_keeps_the_acquire_time_and_taking_over_counts_a_transition() {
    let now: Timestamp = "2026-11-24T10:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let renewed = next_spec(Some(&record(Some("me"), 15)), "me", &cfg(), now);
    assert_eq!(
        renewed.acquire_time.map(|t| t.0),
        Some(Timestamp::UNIX_EPOCH)
    );
    assert_eq!(renewed.renew_time.map(|t| t.0), Some(now));
    assert_eq!(renewed.lease_transitions, Some(3));
    assert_eq!(renewed.lease_duration_seconds, Some(15));
    let taken = next_spec(Some(&record(Some("other"), 15)), "me", &cfg(), now);
    assert_eq!(taken.acquire_time.map(|t| t.0), Some(now));
    assert_eq!(taken.lease_transitions, Some(4));
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    let first = next_spec(None, "me", &cfg(), now);
    assert_eq!(first.lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn leadership_ends_at_its_deadline_without_anyone_saying_so() {
    let l = Leadership::new();
    assert!(!l.is_leader());
    let mut changes = l.subscribe();
    l.extend(Instant::now() + Duration::from_secs(10));
    assert!(l.is_leader());
    assert!(changes.has_changed().unwrap_or(false));
    let term = changes.borrow_and_update().unwrap_or_default();
    assert!(l.leads_in(term));
    // Renewed in time: the same term.
    l.extend(Instant::now() + Duration::from_secs(10));
    assert_eq!(l.term(), Some(term));
    let started = tokio::time::Instant::now();
    l.lost(term).await;
    assert_eq!(started.elapsed().as_secs(), 10);
    assert!(!l.is_leader());
    assert!(!l.leads_in(term));
    // Renewed after the deadline passed: a new term, and the old one stays over.
    l.extend(Instant::now() + Duration::from_secs(10));
    assert_eq!(l.term(), Some(term + 1));
    assert!(!l.leads_in(term));
    l.end();
    assert_eq!(*changes.borrow_and_update(), None);
}
