use std::collections::BTreeMap;

use jiff::Timestamp;
use secrecy::SecretString;

use super::*;
use crate::index::{Rv, SaState};
use crate::record::DigestKey;
use crate::render::{self, Login, MANAGED_BY_VALUE};

const OURS: &str = "acr";

fn config(namespaces: &str, service_accounts: &str) -> Config {
    crate::config::for_test(&[
        ("watch-namespace", namespaces),
        ("service-account", service_accounts),
    ])
}

fn key() -> DigestKey {
    DigestKey::from_bytes(&[3; 32]).unwrap_or_else(|| panic!("key"))
}

fn content(password: &str) -> SecretContent {
    let pw = SecretString::from(password.to_owned());
    SecretContent::new(
        render::dockerconfigjson(&[Login {
            domain: "r.example.com",
            username: "u",
            password: &pw,
        }]),
        Timestamp::UNIX_EPOCH,
        vec!["cri-a".into()],
        "0123456789abcdef".into(),
        &key(),
    )
}

fn secret_state(managed: bool, of: Option<&SecretContent>) -> SecretState {
    SecretState {
        uid: "uid".into(),
        resource_version: Rv::Number(1),
        managed,
        dockerconfigjson: of.map(|c| Arc::from(c.dockerconfigjson.as_slice())),
        expires_at: of.map(|c| c.expires_at.to_string().into()),
        instances: of.map(|c| c.instances.join(",").into()),
        identity: of.map(|c| c.identity.as_str().into()),
        digest: of.map(|c| c.digest.as_str().into()),
        seen: 0,
    }
}

fn sa(refs: &[&str]) -> SaState {
    SaState::new(
        Rv::Number(1),
        refs.iter().map(|r| (*r).to_owned()).collect(),
        OURS,
    )
}

fn opted(refs: &[&str], opted: bool) -> SaState {
    SaState {
        opted: Some(opted),
        ..sa(refs)
    }
}

/// The Secret of a namespace in every state the index can hold.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SecretCase {
    Absent,
    Current,
    Stale,
    Foreign,
}

fn namespace(
    exists: bool,
    terminating: bool,
    secret: SecretCase,
    current: &SecretContent,
) -> NsState {
    let secret = match secret {
        SecretCase::Absent => None,
        SecretCase::Current => Some(secret_state(true, Some(current))),
        SecretCase::Stale => Some(secret_state(true, Some(&content("old")))),
        SecretCase::Foreign => Some(secret_state(false, None)),
    };
    NsState {
        exists,
        terminating,
        labels: BTreeMap::new(),
        service_accounts: [
            ("default", sa(&[])),
            ("with-ours", sa(&["theirs", OURS])),
            ("builder", sa(&["theirs"])),
            ("twice", sa(&[OURS, "theirs", OURS])),
            ("opted-in", opted(&["theirs"], true)),
            ("opted-out", opted(&[OURS, "theirs"], false)),
        ]
        .into_iter()
        .map(|(n, s)| (Arc::from(n), s))
        .collect(),
        secret,
        seen: 0,
    }
}

#[test]
fn every_combination_keeps_the_rules() {
    let current = content("pw");
    let configs = [
        (
            "ns selected, default+with-ours+twice",
            config("ns", "default,with-ours,twice"),
        ),
        ("ns selected, every SA", config("ns", "*")),
        ("ns selected, no SA of these", config("ns", "nobody")),
        ("other namespace selected", config("other", "*")),
        ("ns selected, ServiceAccounts never patched", {
            let mut c = config("ns", "*");
            c.patch_service_accounts = false;
            c
        }),
    ];
    let fixed = |_| Some(Arc::new(current.clone()));
    for (what, cfg) in &configs {
        for exists in [true, false] {
            for terminating in [false, true] {
                for case in [
                    SecretCase::Absent,
                    SecretCase::Current,
                    SecretCase::Stale,
                    SecretCase::Foreign,
                ] {
                    for desired in [
                        Desired::Unavailable,
                        Desired::Content(&fixed),
                        Desired::Assumed,
                    ] {
                        let ns = namespace(exists, terminating, case, &current);
                        let plan = plan_namespace("ns", &ns, cfg, desired);
                        let ctx = format!(
                            "{what}, exists={exists} terminating={terminating} {case:?} {desired:?}: {plan:?}"
                        );
                        check(&plan, &ns, cfg, case, desired, &ctx);
                    }
                }
            }
        }
    }
}

fn check(
    plan: &NamespacePlan,
    ns: &NsState,
    cfg: &Config,
    case: SecretCase,
    desired: Desired<'_>,
    ctx: &str,
) {
    if !ns.exists || ns.terminating {
        assert!(plan.is_empty() && plan.secret == SecretStep::Keep, "{ctx}");
        return;
    }
    let selected = cfg.selects_namespace("ns", &ns.labels);
    // The Secret.
    let want_secret = match (case, selected, desired) {
        (SecretCase::Foreign, true, _) => SecretStep::Blocked,
        (SecretCase::Foreign, false, _) => SecretStep::Keep,
        (SecretCase::Absent, false, _) => SecretStep::Keep,
        (_, false, _) => SecretStep::Delete,
        (SecretCase::Absent, true, Desired::Unavailable) => SecretStep::Keep,
        (SecretCase::Absent, true, _) => SecretStep::Create,
        (SecretCase::Stale, true, Desired::Content(_)) => SecretStep::Update,
        (_, true, _) => SecretStep::Keep,
    };
    assert_eq!(plan.secret, want_secret, "{ctx}");
    // References: never touched next to a foreign Secret.
    if case == SecretCase::Foreign || !cfg.patch_service_accounts {
        assert!(plan.references.is_empty(), "{ctx}");
        return;
    }
    let secret_there = want_secret == SecretStep::Create
        || (selected && matches!(case, SecretCase::Current | SecretCase::Stale));
    for (name, state) in &ns.service_accounts {
        let instances = cfg.instances_for("ns", &ns.labels);
        let want = cfg.selects_service_account(instances, Some(name), state.opted);
        let ours = usize::try_from(state.ours).unwrap_or(usize::MAX);
        let step = plan.references.iter().find(|s| s.service_account == *name);
        let expected = match (want, ours) {
            (true, 1) | (false, 0) => None,
            (true, _) if !secret_there => None,
            (true, _) => Some(true),
            (false, _) => Some(false),
        };
        assert_eq!(step.map(|s| s.add), expected, "{name} in {ctx}");
    }
}

#[test]
fn a_new_selected_namespace_gets_the_secret_then_references() {
    let current = content("pw");
    let ns = namespace(true, false, SecretCase::Absent, &current);
    let plan = plan_namespace(
        "ns",
        &ns,
        &config("ns", "default,builder"),
        Desired::Content(&|_| Some(Arc::new(current.clone()))),
    );
    assert_eq!(plan.secret, SecretStep::Create);
    let adds: Vec<&str> = plan
        .references
        .iter()
        .filter(|s| s.add)
        .map(|s| &*s.service_account)
        .collect();
    let removes: Vec<&str> = plan
        .references
        .iter()
        .filter(|s| !s.add)
        .map(|s| &*s.service_account)
        .collect();
    // The opt-in label adds a ServiceAccount `service-account` does not name; the opt-out label
    // removes one whatever `service-account` says.
    assert_eq!(adds, vec!["builder", "default", "opted-in"]);
    assert_eq!(removes, vec!["opted-out", "twice", "with-ours"]);
}

#[test]
fn a_converged_namespace_needs_nothing() {
    let current = content("pw");
    let mut ns = namespace(true, false, SecretCase::Current, &current);
    ns.service_accounts.retain(|n, _| &**n == "with-ours");
    let plan = plan_namespace(
        "ns",
        &ns,
        &config("ns", "with-ours"),
        Desired::Content(&|_| Some(Arc::new(current.clone()))),
    );
    assert!(plan.is_empty(), "{plan:?}");
    // Our annotations are part of the content: a changed expiry is an update.
    let mut later = current.clone();
    later.expires_at = Timestamp::MAX;
    let plan = plan_namespace(
        "ns",
        &ns,
        &config("ns", "with-ours"),
        Desired::Content(&|_| Some(Arc::new(later.clone()))),
    );
    assert_eq!(plan.secret, SecretStep::Update);
    // A Secret that lost our label is no longer ours.
    assert!(!holds(&secret_state(false, Some(&current)), &current));
    assert!(holds(&secret_state(true, Some(&current)), &current));
    assert_eq!(MANAGED_BY_VALUE, "aliyun-acr-credential-helper");
}

#[test]
fn only_content_the_controller_wrote_is_authentic() {
    let ours = content("pw");
    let written = secret_state(true, Some(&ours));
    assert!(authentic(&written, &key()));
    assert!(holds(&written, &ours));
    // A tenant rewrites the password, or only the expiry, keeping every annotation of ours.
    let planted = content("planted");
    let mut tampered = written.clone();
    tampered.dockerconfigjson = Some(Arc::from(planted.dockerconfigjson.as_slice()));
    assert!(!authentic(&tampered, &key()));
    assert!(!holds(&tampered, &ours));
    let mut later = written.clone();
    later.expires_at = Some("2099-01-01T00:00:00Z".into());
    assert!(!authentic(&later, &key()));
    assert!(!holds(&later, &ours));
    // Without a digest, under another key, or not ours at all: not authentic.
    let mut bare = written.clone();
    bare.digest = None;
    assert!(!authentic(&bare, &key()));
    let other = DigestKey::from_bytes(&[4; 32]).unwrap_or_else(|| panic!("key"));
    assert!(!authentic(&written, &other));
    let mut foreign = written.clone();
    foreign.managed = false;
    assert!(!authentic(&foreign, &key()));
    // An older content of ours is authentic (just stale): it is updated, not reported as repaired.
    let old = secret_state(true, Some(&content("old")));
    assert!(authentic(&old, &key()) && !holds(&old, &ours));
}

#[test]
fn a_plan_is_empty_only_when_it_writes_nothing() {
    let reference = ReferenceStep {
        service_account: "builder".into(),
        add: true,
    };
    for (secret, references, empty) in [
        (SecretStep::Keep, vec![], true),
        (SecretStep::Blocked, vec![], true),
        (SecretStep::Create, vec![], false),
        (SecretStep::Update, vec![], false),
        (SecretStep::Delete, vec![], false),
        (SecretStep::Keep, vec![reference.clone()], false),
        (SecretStep::Blocked, vec![reference.clone()], false),
        (SecretStep::Create, vec![reference.clone()], false),
    ] {
        let plan = NamespacePlan {
            secret,
            references,
            ..NamespacePlan::default()
        };
        assert_eq!(plan.is_empty(), empty, "{plan:?}");
    }
}

#[test]
fn what_the_content_will_be_debugs_as_its_kind_only() {
    let f = |_: crate::config::InstanceSet| None;
    assert_eq!(format!("{:?}", Desired::Unavailable), "Unavailable");
    assert_eq!(format!("{:?}", Desired::Assumed), "Assumed");
    assert_eq!(format!("{:?}", Desired::Content(&f)), "Content");
}
