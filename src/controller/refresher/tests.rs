use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::aliyun::cr::RegistryToken;
use crate::config::{Instance, InstanceSet};
use crate::credentials::{Edition, InstanceAuth, UsableToken};
use crate::record::DigestKey;
use secrecy::SecretString;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

const S: fn(u64) -> Duration = Duration::from_secs;

fn sched(threshold: Duration, window: Duration) -> Schedule {
    Schedule { threshold, window }
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
        scope: crate::config::Scope::default(),
    });
    s.token = Some(UsableToken {
        token: RegistryToken {
            username: "u".into(),
            password: SecretString::from("p"),
            expires_at: at + SignedDuration::from_secs(token_life),
        },
        usable_until: at + SignedDuration::from_secs(token_life),
    });
    s.obtained_at = Some(at);
    s.domains = Some(vec!["a.example.com".into()]);
    s.domains_due = Some(at + timing::DOMAINS_TTL);
    s
}

#[test]
fn a_slot_is_due_at_the_refresh_point_or_its_retry() {
    let z = Duration::ZERO;
    let s = slot(3600, "2026-11-24T10:00:00Z");
    assert_eq!(
        s.next_fetch(&sched(S(900), z)),
        Some(ts("2026-11-24T10:10:00Z")),
        "domains first"
    );
    let mut s = slot(3600, "2026-11-24T10:00:00Z");
    s.domains_due = None;
    assert_eq!(
        s.next_fetch(&sched(S(900), z)),
        Some(ts("2026-11-24T10:45:00Z"))
    );
    // A refresh spread over 200 s is fetched 200 s ahead.
    assert_eq!(
        s.next_fetch(&sched(S(900), S(200))),
        Some(ts("2026-11-24T10:41:40Z"))
    );
    // A pending retry is never overtaken.
    s.retry_at = Some(ts("2026-11-24T10:50:00Z"));
    assert_eq!(
        s.next_fetch(&sched(S(900), z)),
        Some(ts("2026-11-24T10:50:00Z"))
    );
    // Nothing obtained yet: due now.
    assert_eq!(
        Slot::new(s.instance.clone()).next_fetch(&sched(S(900), z)),
        None
    );
}

fn key() -> DigestKey {
    DigestKey::from_bytes(&[9; 32]).unwrap_or_else(|| panic!("key"))
}

#[test]
fn only_the_recorded_logins_of_the_configured_identity_that_still_work_are_taken_over() {
    let now = ts("2026-11-24T10:00:00Z");
    let a = slot(3600, "2026-11-24T09:50:00Z");
    let mut b = slot(3600, "2026-11-24T09:50:00Z");
    b.instance.edition = Edition::Enterprise {
        instance_id: "cri-b".into(),
    };
    b.domains = Some(vec!["b.example.com".into(), "b-vpc.example.com".into()]);
    let record = record_of(&[a.clone(), b.clone()]);
    assert_eq!(record.logins.len(), 2);
    let written = content_of(&[a.clone(), b.clone()], &BTreeSet::new(), &key())
        .unwrap_or_else(|| panic!("no content"));
    let fresh = |s: &Slot| {
        let mut s = s.clone();
        s.token = None;
        s.obtained_at = None;
        s
    };
    let mut slots = vec![fresh(&a), fresh(&b)];
    assert_eq!(adopt(&mut slots, &record, now), 2);
    // Rebuilt from the recorded logins, the content is byte for byte what the Secrets hold
    // (nothing to write), and the logins are refreshed when their fetcher planned.
    let rebuilt =
        content_of(&slots, &BTreeSet::new(), &key()).unwrap_or_else(|| panic!("no content"));
    assert_eq!(rebuilt, written);
    assert_eq!(slots[0].obtained_at, a.obtained_at);
    assert_eq!(
        slots[0].token_due(&sched(S(900), Duration::ZERO)),
        a.token_due(&sched(S(900), Duration::ZERO))
    );
    // A slot that has a login keeps it.
    let mut kept = vec![a.clone()];
    let mut other = record.clone();
    other.logins[0].password = SecretString::from("another");
    assert_eq!(adopt(&mut kept, &other, now), 0);
    // Another identity (an edit while no leader ran), or an expired login: not taken.
    let mut assumed = fresh(&a);
    assumed.instance.auth.assume_role = Some(crate::credentials::AssumedRole {
        role_arn: "acs:ram::1:role/x".into(),
        duration_seconds: 900,
    });
    let mut slots = vec![assumed];
    assert_eq!(adopt(&mut slots, &record, now), 0);
    assert!(slots[0].token.is_none());
    let mut slots = vec![fresh(&a)];
    assert_eq!(adopt(&mut slots, &record, ts("2026-11-24T10:50:00Z")), 0);
    // A superseded login is recorded as such and never taken as the new identity's.
    let mut superseded = a.clone();
    superseded.superseded = true;
    let mut slots = vec![fresh(&a)];
    assert_eq!(adopt(&mut slots, &record_of(&[superseded]), now), 0);
    // What the record holds is what no content may drop, while it works.
    let labels = |s: &[Slot]| s.iter().map(|s| s.instance.clone()).collect::<Vec<_>>();
    let configured = labels(&[a.clone(), b.clone()]);
    assert_eq!(
        held(&record, &configured, now),
        BTreeSet::from(["cri-a".to_owned(), "cri-b".to_owned()])
    );
    assert_eq!(
        held(&record, &labels(std::slice::from_ref(&a)), now),
        BTreeSet::from(["cri-a".to_owned()])
    );
    assert!(held(&record, &configured, ts("2026-11-24T10:50:00Z")).is_empty());
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
    let c =
        content_of(&[a.clone(), b.clone()], &none, &key()).unwrap_or_else(|| panic!("no content"));
    assert_eq!(c.instances, vec!["cri-a", "cri-b"]);
    assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
    let doc: serde_json::Value = serde_json::from_slice(&c.dockerconfigjson).unwrap_or_default();
    assert_eq!(doc["auths"].as_object().map(|m| m.len()), Some(2));
    // A new instance whose credentials fail: the others' logins are still written...
    let mut no_token = b.clone();
    no_token.token = None;
    let only_a = content_of(&[a.clone(), no_token.clone()], &none, &key())
        .unwrap_or_else(|| panic!("no content"));
    assert_eq!(only_a.instances, vec!["cri-a"]);
    // ...but never instead of a login the Secrets hold.
    let held: BTreeSet<String> = ["cri-b".to_owned()].into();
    assert!(content_of(&[a.clone(), no_token], &held, &key()).is_none());
    // No domain is no login either.
    let mut no_domain = b;
    no_domain.domains = Some(vec![]);
    assert!(content_of(&[a.clone(), no_domain.clone()], &held, &key()).is_none());
    assert_eq!(
        content_of(&[a, no_domain], &none, &key()).map(|c| c.instances),
        Some(vec!["cri-a".to_owned()])
    );
    assert!(content_of(&[], &none, &key()).is_none());
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
    assert_eq!(
        s.token_due(&sched(threshold, z)),
        s.obtained_at,
        "due at once"
    );
    // Its content says the login is of another identity than the configured one, so a
    // restarted controller does not take it over either.
    let mut ready = s.clone();
    ready.domains = a.domains.clone();
    let held = BTreeSet::new();
    let before = content_of(std::slice::from_ref(&a), &held, &key()).map(|c| c.identity);
    let carried = content_of(std::slice::from_ref(&ready), &held, &key()).map(|c| c.identity);
    ready.superseded = false;
    let fresh = content_of(std::slice::from_ref(&ready), &held, &key()).map(|c| c.identity);
    assert!(before.is_some() && carried.is_some() && fresh.is_some());
    assert_ne!(before, fresh);
    assert_ne!(carried, fresh);
    // Superseded twice is still superseded (another edit before the new login came).
    let (again, _) = reslot(next, std::slice::from_ref(&assumed));
    assert!(again[0].superseded);
}

#[test]
fn a_namespace_gets_only_the_logins_of_the_instances_that_serve_it() {
    let a = slot(3600, "2026-11-24T10:00:00Z");
    let mut b = slot(1800, "2026-11-24T10:00:00Z");
    b.instance.edition = Edition::Enterprise {
        instance_id: "cri-b".into(),
    };
    b.domains = Some(vec!["b.example.com".into()]);
    b.token = b.token.map(|mut t| {
        t.token.password = SecretString::from("password-of-b");
        t
    });
    let configured = vec![a.instance.clone(), b.instance.clone()];
    let c = Content::new(
        &[a.clone(), b.clone()],
        BTreeSet::new(),
        configured,
        key(),
        false,
    )
    .unwrap_or_else(|| panic!("content"));
    let only = |i: usize| {
        let mut s = InstanceSet::EMPTY;
        s.insert(i);
        s
    };
    let of_a = c.for_set(only(0)).unwrap_or_else(|| panic!("a's content"));
    assert_eq!(of_a.instances, vec!["cri-a"]);
    let doc = String::from_utf8_lossy(&of_a.dockerconfigjson).into_owned();
    assert!(doc.contains("a.example.com") && !doc.contains("b.example.com"));
    assert!(
        !doc.contains("password-of-b"),
        "team A's Secret never holds B's password"
    );
    let both = c.all().unwrap_or_else(|| panic!("all"));
    assert_eq!(both.instances, vec!["cri-a", "cri-b"]);
    assert_eq!(c.expires_at, ts("2026-11-24T10:30:00Z"));
    // The same set is made once; an empty set makes nothing.
    assert!(Arc::ptr_eq(
        &of_a,
        &c.for_set(only(0)).unwrap_or_else(|| panic!("again"))
    ));
    assert!(c.for_set(InstanceSet::EMPTY).is_none());
    // A held login of B that B cannot renew keeps B's namespaces as they are, not A's.
    let mut b_failing = b.clone();
    b_failing.token = None;
    let held = BTreeSet::from(["cri-b".to_owned()]);
    let c = Content::new(
        &[a.clone(), b_failing],
        held,
        vec![a.instance.clone(), b.instance.clone()],
        key(),
        false,
    )
    .unwrap_or_else(|| panic!("content"));
    assert!(c.for_set(only(0)).is_some());
    assert!(c.for_set(only(1)).is_none() && c.all().is_none());
}
