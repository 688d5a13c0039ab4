use super::*;
use kube::api::ObjectMeta;

fn cm(data: &[(&str, &str)], cleanup: bool) -> ConfigMap {
    cm_at(data, cleanup, "5")
}

fn cm_at(data: &[(&str, &str)], cleanup: bool, version: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("acr-configuration".into()),
            namespace: Some("kube-system".into()),
            resource_version: Some(version.into()),
            annotations: cleanup.then(|| [(CLEANUP_ANNOTATION.to_owned(), "x".to_owned())].into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn persisted(data: &[(&str, &str)]) -> Secret {
    persisted_at(data, "1")
}

fn persisted_at(data: &[(&str, &str)], version: &str) -> Secret {
    let map: BTreeMap<&str, &str> = data.iter().copied().collect();
    Secret {
        metadata: ObjectMeta {
            annotations: Some(
                [
                    (
                        ACCEPTED_AT_ANNOTATION.to_owned(),
                        "2026-11-24T10:00:00Z".to_owned(),
                    ),
                    (CONFIGMAP_VERSION_ANNOTATION.to_owned(), version.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [(
                LAST_CONFIG_KEY.to_owned(),
                k8s_openapi::ByteString(serde_json::to_vec(&map).unwrap_or_default()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

const GOOD: &[(&str, &str)] = &[("watch-namespace", "a,b")];
const OTHER: &[(&str, &str)] = &[("watch-namespace", "c")];
const BAD: &[(&str, &str)] = &[("expiring-threshold", "soon")];

fn namespaces(view: &ConfigView) -> Option<String> {
    view.config().map(|c| format!("{:?}", c.namespaces))
}

#[test]
fn nothing_is_in_force_until_both_watches_listed() {
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.configmap(Some(&cm(GOOD, false)), true);
    assert_eq!(s.view().state.err(), Some(Idle::Syncing));
    s.last_config(None, true);
    assert_eq!(s.view().config().map(|c| c.instances.len()), Some(1));
}

#[test]
fn a_missing_or_marked_config_map_means_do_nothing_even_with_a_persisted_copy() {
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.last_config(Some(&persisted(GOOD)), true);
    s.configmap(None, true);
    assert_eq!(s.view().state.err(), Some(Idle::Absent));
    s.configmap(Some(&cm(GOOD, true)), true);
    assert_eq!(s.view().state.err(), Some(Idle::StandingDown));
}

#[test]
fn a_bad_edit_keeps_the_previous_configuration_then_the_persisted_one() {
    // This process accepted GOOD, then a bad edit: GOOD stays, as "previous".
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.last_config(None, true);
    s.configmap(Some(&cm(GOOD, false)), true);
    let good = s.view();
    assert!(matches!(&good.state, Ok(f) if f.origin == Origin::Live));
    s.configmap(Some(&cm(BAD, false)), true);
    let v = s.view();
    assert!(matches!(&v.state, Ok(f) if f.origin == Origin::Previous));
    assert_eq!(namespaces(&v), namespaces(&good));
    assert!(
        v.rejected
            .as_ref()
            .is_some_and(|e| e.to_string().contains("expiring-threshold"))
    );

    // A new process (restart, failover) that only ever saw the bad edit: the persisted copy.
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.configmap(Some(&cm(BAD, false)), true);
    s.last_config(Some(&persisted(GOOD)), true);
    let v = s.view();
    match &v.state {
        Ok(f) => {
            assert_eq!(f.origin, Origin::LastAccepted);
            assert!(f.accepted_at.is_some());
        }
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(namespaces(&v), namespaces(&good));

    // Without a persisted copy there is nothing usable.
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.configmap(Some(&cm(BAD, false)), true);
    s.last_config(None, true);
    assert_eq!(s.view().state.err(), Some(Idle::NothingUsable));
    // Nor with a persisted copy that no longer parses.
    s.last_config(Some(&persisted(BAD)), true);
    assert_eq!(s.view().state.err(), Some(Idle::NothingUsable));
    // A good edit is in force at once.
    s.configmap(Some(&cm(OTHER, false)), true);
    assert!(matches!(&s.view().state, Ok(f) if f.origin == Origin::Live));
}

#[test]
fn a_persisted_copy_of_a_newer_edit_wins_over_what_this_replica_saw() {
    // This replica accepted GOOD at version 5; the leader accepted OTHER at version 7 (this
    // replica's watch missed it) and persisted it; then an edit at version 9 is rejected.
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.last_config(None, true);
    s.configmap(Some(&cm_at(GOOD, false, "5")), true);
    let _ = s.view();
    s.last_config(Some(&persisted_at(OTHER, "7")), true);
    s.configmap(Some(&cm_at(BAD, false, "9")), true);
    let v = s.view();
    assert!(
        matches!(&v.state, Ok(f) if f.origin == Origin::LastAccepted),
        "{:?}",
        v.state
    );
    assert!(
        namespaces(&v).is_some_and(|n| n.contains('c')),
        "{:?}",
        namespaces(&v)
    );
    // An older persisted copy does not.
    let mut s = Source::new(Some("cn-hangzhou".into()));
    s.last_config(Some(&persisted_at(OTHER, "3")), true);
    s.configmap(Some(&cm_at(GOOD, false, "5")), true);
    let _ = s.view();
    s.configmap(Some(&cm_at(BAD, false, "9")), true);
    assert!(matches!(&s.view().state, Ok(f) if f.origin == Origin::Previous));
}

#[test]
fn raw_configurations_never_print_their_values() {
    let raw = RawConfig(
        [(
            "acr-registry-info".to_owned(),
            "customAccessKeySecret: s3cr3t".to_owned(),
        )]
        .into(),
    );
    let text = format!("{raw:?}");
    assert!(
        text.contains("acr-registry-info") && !text.contains("s3cr3t"),
        "{text}"
    );
}
