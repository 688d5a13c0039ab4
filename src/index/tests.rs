use super::*;
use serde_json::json;

fn sa(ns: &str, name: &str, rv: &str, refs: &[&str]) -> ServiceAccountView {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "resourceVersion": rv},
        "imagePullSecrets": refs.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn namespace(name: &str, labels: serde_json::Value) -> PartialObjectMeta<Namespace> {
    serde_json::from_value(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn secret(ns: &str, uid: &str, rv: &str, managed: bool, data: &[u8]) -> Secret {
    let mut labels = json!({});
    if managed {
        labels = json!({"app.kubernetes.io/managed-by": "aliyun-acr-credential-helper"});
    }
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": "s", "uid": uid, "resourceVersion": rv, "labels": labels,
                     "annotations": {"aliyun-acr-credential-helper/expires-at": "x", "other/thing": "y"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64_encode(data)},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn service_accounts_are_indexed_by_namespace_and_only_relevant_changes_count() {
    let mut i = Index::new("ours");
    assert!(i.apply_service_account(&sa("a", "default", "10", &[])));
    assert!(i.apply_service_account(&sa("b", "default", "11", &["x"])));
    // A new resourceVersion with the same imagePullSecrets (labels changed, say): no work.
    assert!(!i.apply_service_account(&sa("a", "default", "12", &[])));
    assert_eq!(
        i.namespace("a")
            .and_then(|n| n.service_accounts.get("default"))
            .map(|s| s.resource_version.to_string()),
        Some("12".to_owned())
    );
    // imagePullSecrets changed: work.
    assert!(i.apply_service_account(&sa("a", "default", "13", &["ours"])));
    // An event older than what our own write recorded is ignored.
    assert!(!i.apply_service_account(&sa("a", "default", "12", &[])));
    assert_eq!(
        i.namespace("a")
            .and_then(|n| n.service_accounts.get("default"))
            .map(|s| s.pull_secrets.clone()),
        Some(Some(vec!["ours".to_owned()]))
    );
    assert_eq!(i.namespace("b").map(|n| n.service_accounts.len()), Some(1));
    assert!(i.delete_service_account("b", "default"));
    assert!(i.namespace("b").is_none(), "an empty entry is dropped");
    assert!(!i.delete_service_account("b", "default"));
}

#[test]
fn namespaces_track_existence_labels_and_termination() {
    let mut i = Index::new("ours");
    assert!(i.apply_service_account(&sa("a", "default", "1", &[])));
    assert!(
        !i.namespace("a").is_some_and(|n| n.exists),
        "an SA can arrive first"
    );
    assert!(i.apply_namespace(&namespace("a", json!({"team": "x"}))));
    assert!(!i.apply_namespace(&namespace("a", json!({"team": "x"}))));
    assert!(i.apply_namespace(&namespace("a", json!({"team": "y"}))));
    assert_eq!(
        i.namespace("a")
            .and_then(|n| n.labels.get("team"))
            .map(String::as_str),
        Some("y")
    );
    assert!(i.delete_namespace("a"));
    assert!(
        i.namespace("a").is_some(),
        "its ServiceAccount is still known"
    );
}

#[test]
fn secrets_share_equal_contents_and_changes_of_ours_count() {
    let mut i = Index::new("ours");
    assert!(i.apply_secret(&secret("a", "u1", "5", true, b"{\"auths\":{}}")));
    assert!(i.apply_secret(&secret("b", "u2", "6", true, b"{\"auths\":{}}")));
    let a = i
        .namespace("a")
        .and_then(|n| n.secret.clone())
        .and_then(|s| s.dockerconfigjson);
    let b = i
        .namespace("b")
        .and_then(|n| n.secret.clone())
        .and_then(|s| s.dockerconfigjson);
    assert!(matches!((&a, &b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
    // Only our annotations are kept.
    assert_eq!(
        i.namespace("a")
            .and_then(|n| n.secret.as_ref())
            .and_then(|s| s.expires_at.as_deref()),
        Some("x")
    );
    // The same content at a new version: no work. Older version: ignored.
    assert!(!i.apply_secret(&secret("a", "u1", "7", true, b"{\"auths\":{}}")));
    assert!(!i.apply_secret(&secret("a", "u1", "6", true, b"{\"other\":1}")));
    assert!(i.apply_secret(&secret("a", "u1", "8", true, b"{\"other\":1}")));
    // A foreign Secret of our name.
    assert!(i.apply_secret(&secret("c", "u3", "9", false, b"{}")));
    assert_eq!(i.managed_secrets(), 2);
    // Deleting another object (uid) than the one we know does nothing.
    assert!(!i.delete_secret("a", Some("other-uid")));
    assert!(i.delete_secret("a", Some("u1")));
    assert_eq!(i.managed_secrets(), 1);
}

#[test]
fn a_secret_we_deleted_does_not_come_back_with_a_late_event() {
    let mut i = Index::new("ours");
    assert!(i.apply_secret(&secret("a", "u1", "5", true, b"{}")));
    i.deleted_secret("a", "u1");
    // A MODIFIED event from before our delete arrives late: ignored.
    assert!(!i.apply_secret(&secret("a", "u1", "6", true, b"{}")));
    assert!(i.namespace("a").is_none_or(|n| n.secret.is_none()));
    // Its DELETED event ends the tombstone; a new Secret of the name is seen.
    i.delete_secret("a", Some("u1"));
    assert!(i.apply_secret(&secret("a", "u2", "8", true, b"{}")));
    assert!(!format!("{i:?}").contains("auths"));
}

#[test]
fn a_relist_forgets_what_it_did_not_see() {
    let mut i = Index::new("ours");
    i.apply_namespace(&namespace("a", json!({})));
    i.apply_namespace(&namespace("b", json!({})));
    i.apply_service_account(&sa("a", "one", "1", &[]));
    i.apply_service_account(&sa("a", "two", "2", &[]));
    i.apply_secret(&secret("b", "u", "3", true, b"{}"));
    i.begin_relist(Kind::ServiceAccount);
    i.apply_service_account(&sa("a", "one", "1", &[]));
    assert_eq!(
        i.end_relist(Kind::ServiceAccount),
        vec![Arc::<str>::from("a")]
    );
    assert_eq!(i.namespace("a").map(|n| n.service_accounts.len()), Some(1));
    i.begin_relist(Kind::Secret);
    assert_eq!(i.end_relist(Kind::Secret), vec![Arc::<str>::from("b")]);
    i.begin_relist(Kind::Namespace);
    i.apply_namespace(&namespace("a", json!({})));
    let gone = i.end_relist(Kind::Namespace);
    assert_eq!(gone, vec![Arc::<str>::from("b")]);
    assert!(i.namespace("b").is_none());
    assert!(i.namespace("a").is_some_and(|n| n.exists));
}
