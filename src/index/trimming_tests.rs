use super::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::json;

#[test]
fn a_service_account_is_trimmed_while_it_is_parsed() {
    let huge = "x".repeat(200 * 1024);
    let raw = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {
            "namespace": "t", "name": "a", "resourceVersion": "7", "uid": "u",
            "annotations": {"big": huge},
            "labels": {"team": "x", crate::config::OPT_LABEL: "true", "other": huge.clone()},
            "managedFields": [{"manager": "m", "fieldsV1": {"f:metadata": {}}}],
        },
        "secrets": [{"name": "s"}],
        "imagePullSecrets": [{"name": "theirs"}, {"name": "ours"}],
    });
    let v: ServiceAccountView = serde_json::from_value(raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.metadata.name.as_deref(), Some("a"));
    assert_eq!(v.metadata.namespace.as_deref(), Some("t"));
    assert_eq!(v.metadata.resource_version.as_deref(), Some("7"));
    assert!(v.metadata.annotations.is_none() && v.metadata.managed_fields.is_none());
    assert_eq!(
        v.metadata.labels,
        Some(BTreeMap::from([(
            crate::config::OPT_LABEL.to_owned(),
            "true".to_owned()
        )]))
    );
    assert_eq!(v.image_pull_secrets, ["theirs", "ours"]);
    assert!(format!("{v:?}").len() < 1024, "nothing large is held");
    // Absent and null lists and labels are fine.
    let bare: ServiceAccountView = serde_json::from_value(json!({
        "metadata": {"namespace": "t", "name": "b", "labels": null}, "imagePullSecrets": null,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(bare.image_pull_secrets.is_empty() && bare.metadata.labels.is_none());
    // The view of a full object (an answer to our own write) keeps the same fields.
    let full: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"namespace": "t", "name": "a", "resourceVersion": "7",
                     "annotations": {"big": "x"}, "labels": {"team": "x"}},
        "imagePullSecrets": [{"name": "ours"}],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let v = ServiceAccountView::from(&full);
    assert!(v.metadata.annotations.is_none() && v.metadata.labels.is_none());
    assert_eq!(v.image_pull_secrets, ["ours"]);
}

#[test]
fn a_long_reference_list_is_kept_as_the_count_of_ours() {
    let mut i = Index::new("ours");
    let mut refs: Vec<serde_json::Value> = (0..5000)
        .map(|n| json!({"name": format!("theirs-{n}")}))
        .collect();
    refs.push(json!({"name": "ours"}));
    let long: ServiceAccountView = serde_json::from_value(json!({
        "metadata": {"namespace": "t", "name": "a", "resourceVersion": "1"},
        "imagePullSecrets": refs,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(i.apply_service_account(&long));
    let state = i
        .namespace("t")
        .and_then(|n| n.service_accounts.get("a"))
        .cloned()
        .unwrap_or_else(|| panic!("indexed"));
    assert_eq!(state.pull_secrets, None);
    assert_eq!(state.ours, 1);
    let short = SaState::new(
        Rv::Number(1),
        vec!["ours".into(), "x".into(), "ours".into()],
        "ours",
    );
    assert_eq!(short.ours, 2);
    assert_eq!(short.pull_secrets.map(|p| p.len()), Some(3));
}
