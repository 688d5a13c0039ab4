//! The admission webhooks. The ServiceAccount webhook: a new ServiceAccount that the
//! configuration selects is created already carrying the pull Secret reference. The Pod webhook
//! (`pod-injection`, beyond the original): a new Pod whose namespace and ServiceAccount are
//! selected gets the reference in its own `imagePullSecrets`, whether or not its ServiceAccount
//! has been patched yet and whether or not it lists Secrets of its own. Both answer from cached
//! state (the configuration in force and the index), never wait on the cloud or the API server,
//! and never reject a request.

pub mod certs;
pub mod runtime;
pub mod server;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::config::Config;
use crate::index::{Index, NsState};

/// The JSON patch that adds our reference to a ServiceAccount being created, if the
/// configuration selects it and it lacks the reference.
pub fn patch_for(
    sa: &ServiceAccount,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    config: &Config,
    secret_name: &str,
) -> Option<json_patch::Patch> {
    let instances = config.instances_for(namespace, labels);
    let opted = crate::config::opt(
        sa.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::config::OPT_LABEL))
            .map(String::as_str),
    );
    // A generateName'd ServiceAccount's final name is unknown here (`None`): only its label or
    // `*` selects it.
    if !config.selects_service_account(instances, sa.metadata.name.as_deref(), opted) {
        return None;
    }
    let reference = serde_json::json!({ "name": secret_name });
    let op = match &sa.image_pull_secrets {
        Some(refs) if refs.iter().any(|r| r.name == secret_name) => return None,
        Some(_) => serde_json::json!([
            {"op": "add", "path": "/imagePullSecrets/-", "value": reference}
        ]),
        None => serde_json::json!([
            {"op": "add", "path": "/imagePullSecrets", "value": [reference]}
        ]),
    };
    serde_json::from_value(op).ok()
}

/// Whether a Secret of our name that is not ours stands in namespace `ns` (then no
/// ServiceAccount there gets the reference, as the controller does).
fn name_taken(index: &Index, ns: &str) -> bool {
    index.namespace(ns).is_some_and(NsState::name_taken)
}

/// The annotation of mirror Pods (the API server's copy of a static Pod): never changed.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The JSON patch that adds our reference to a Pod being created in `namespace`, if Pod
/// injection is on, the Pod is not a mirror Pod nor in the controller's own namespace, its
/// namespace and ServiceAccount are selected, no foreign Secret holds our name there, and the
/// Pod lacks the reference. Every entry the Pod has stays, in order; ours goes last.
pub fn pod_patch_for(
    pod: &Pod,
    namespace: &str,
    own_namespace: &str,
    config: &Config,
    secret_name: &str,
    index: &Index,
) -> Option<json_patch::Patch> {
    if !config.webhook.pod_injection || namespace == own_namespace {
        return None;
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return None;
    }
    let ns = index.namespace(namespace);
    if ns.is_some_and(NsState::name_taken) {
        return None;
    }
    let empty = std::collections::BTreeMap::new();
    let labels = ns.map_or(&empty, |n| &n.labels);
    let instances = config.instances_for(namespace, labels);
    let spec = pod.spec.as_ref()?;
    let sa = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let opted = ns
        .and_then(|n| n.service_accounts.get(sa))
        .and_then(|s| s.opted);
    if !config.selects_service_account(instances, Some(sa), opted) {
        return None;
    }
    let reference = serde_json::json!({ "name": secret_name });
    let op = match &spec.image_pull_secrets {
        Some(refs) if refs.iter().any(|r| r.name == secret_name) => return None,
        Some(refs) if !refs.is_empty() => serde_json::json!([
            {"op": "add", "path": "/spec/imagePullSecrets/-", "value": reference}
        ]),
        _ => serde_json::json!([
            {"op": "add", "path": "/spec/imagePullSecrets", "value": [reference]}
        ]),
    };
    serde_json::from_value(op).ok()
}

/// Answers one Pod AdmissionReview (see [`pod_patch_for`]). Always allows.
pub fn review_pod(
    review: AdmissionReview<Pod>,
    config: Option<&Config>,
    secret_name: &str,
    own_namespace: &str,
    index: &Index,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let patch = match (&request.operation, &request.object, config) {
        (Operation::Create, Some(pod), Some(cfg)) => pod_patch_for(
            pod,
            request.namespace.as_deref().unwrap_or_default(),
            own_namespace,
            cfg,
            secret_name,
            index,
        ),
        _ => None,
    };
    respond(&request, patch, "Pod")
}

/// Allows `request`, with `patch` when there is one.
fn respond<T: kube::Resource>(
    request: &AdmissionRequest<T>,
    patch: Option<json_patch::Patch>,
    kind: &str,
) -> AdmissionReview<DynamicObject> {
    let response = AdmissionResponse::from(request);
    match patch {
        Some(p) => match response.clone().with_patch(p) {
            Ok(patched) => {
                tracing::debug!(kind, namespace = ?request.namespace, name = ?request.name, "webhook added the pull Secret reference");
                patched.into_review()
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "could not serialize the webhook patch; allowing unchanged");
                response.into_review()
            }
        },
        None => response.into_review(),
    }
}

/// Answers one AdmissionReview from the configuration in force and the index. Always allows;
/// adds the patch when one applies.
pub fn review(
    review: AdmissionReview<ServiceAccount>,
    config: Option<&Config>,
    secret_name: &str,
    index: &Index,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<ServiceAccount> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let patch = match (&request.operation, &request.object, config) {
        (Operation::Create, Some(sa), Some(cfg))
            if cfg.webhook.enable && cfg.patch_service_accounts =>
        {
            let ns = request.namespace.as_deref().unwrap_or_default();
            let labels = index
                .namespace(ns)
                .map(|n| n.labels.clone())
                .unwrap_or_default();
            if name_taken(index, ns) {
                None
            } else {
                patch_for(sa, ns, &labels, cfg, secret_name)
            }
        }
        _ => None,
    };
    respond(&request, patch, "ServiceAccount")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(ns: &str, sa: &str, enable: bool) -> Config {
        let webhook = if enable {
            "enable: true"
        } else {
            "enable: false"
        };
        crate::config::for_test(&[
            ("watch-namespace", ns),
            ("service-account", sa),
            ("webhook-configuration", webhook),
        ])
    }

    fn sa(name: Option<&str>, refs: Option<&[&str]>) -> ServiceAccount {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "generateName": name.is_none().then_some("gen-")},
            "imagePullSecrets": refs.map(|r| r.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>()),
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn apply(sa: &ServiceAccount, patch: &json_patch::Patch) -> Vec<String> {
        let mut doc = serde_json::to_value(sa).unwrap_or_default();
        json_patch::patch(&mut doc, patch).unwrap_or_else(|e| panic!("{e}"));
        doc["imagePullSecrets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn selected_service_accounts_get_the_reference_appended() {
        let cfg = config("team-a", "default,builder", true);
        let p = patch_for(&sa(Some("builder"), None), "team-a", &none(), &cfg, "ours");
        assert_eq!(
            apply(
                &sa(Some("builder"), None),
                &p.unwrap_or_else(|| panic!("no patch"))
            ),
            vec!["ours"]
        );
        let existing = sa(Some("default"), Some(&["theirs"]));
        let p = patch_for(&existing, "team-a", &none(), &cfg, "ours")
            .unwrap_or_else(|| panic!("no patch"));
        assert_eq!(apply(&existing, &p), vec!["theirs", "ours"]);
    }

    #[test]
    fn unselected_or_already_referenced_service_accounts_are_untouched() {
        let cfg = config("team-a", "default", true);
        assert!(patch_for(&sa(Some("default"), None), "team-b", &none(), &cfg, "ours").is_none());
        assert!(patch_for(&sa(Some("other"), None), "team-a", &none(), &cfg, "ours").is_none());
        assert!(
            patch_for(
                &sa(Some("default"), Some(&["ours"])),
                "team-a",
                &none(),
                &cfg,
                "ours"
            )
            .is_none()
        );
        // generateName: only `*` can select a name not known yet.
        assert!(patch_for(&sa(None, None), "team-a", &none(), &cfg, "ours").is_none());
        let all = config("all", "*", true);
        assert!(patch_for(&sa(None, None), "any", &none(), &all, "ours").is_some());
    }

    fn admission(sa_name: &str, ns: &str, op: &str) -> AdmissionReview<ServiceAccount> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
                "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
                "requestKind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
                "requestResource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
                "name": sa_name,
                "namespace": ns,
                "operation": op,
                "userInfo": {"username": "admin"},
                "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa_name, "namespace": ns}},
                "dryRun": false
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn response(r: &AdmissionReview<DynamicObject>) -> serde_json::Value {
        serde_json::to_value(r).unwrap_or_default()["response"].clone()
    }

    #[test]
    fn reviews_always_allow_and_patch_only_when_enabled_and_selected() {
        let on = config("team-a", "default", true);
        let off = config("team-a", "default", false);
        let index = Index::new("ours");
        let r = response(&review(
            admission("default", "team-a", "CREATE"),
            Some(&on),
            "ours",
            &index,
        ));
        assert_eq!(r["allowed"], true);
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["patchType"], "JSONPatch");
        for (cfg, ns, op) in [
            (Some(&on), "team-b", "CREATE"),
            (Some(&off), "team-a", "CREATE"),
            (None, "team-a", "CREATE"),
            (Some(&on), "team-a", "UPDATE"),
        ] {
            let r = response(&review(admission("default", ns, op), cfg, "ours", &index));
            assert_eq!(r["allowed"], true);
            assert!(r.get("patch").is_none_or(serde_json::Value::is_null), "{r}");
        }
    }

    #[test]
    fn no_reference_where_a_foreign_secret_holds_the_name() {
        let on = config("team-a", "default", true);
        let mut index = Index::new("ours");
        let foreign: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "team-a", "name": "ours", "uid": "u", "resourceVersion": "1"},
            "type": crate::render::DOCKER_CONFIG_TYPE,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        index.apply_secret(&foreign);
        let r = response(&review(
            admission("default", "team-a", "CREATE"),
            Some(&on),
            "ours",
            &index,
        ));
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none_or(serde_json::Value::is_null), "{r}");
        // Our own Secret there is no obstacle.
        let mut ours = foreign;
        ours.metadata.labels = Some(
            [(
                crate::render::MANAGED_BY_LABEL.to_owned(),
                crate::render::MANAGED_BY_VALUE.to_owned(),
            )]
            .into(),
        );
        ours.metadata.resource_version = Some("2".into());
        index.apply_secret(&ours);
        let r = response(&review(
            admission("default", "team-a", "CREATE"),
            Some(&on),
            "ours",
            &index,
        ));
        assert_eq!(r["patchType"], "JSONPatch");
    }

    fn pod(sa: Option<&str>, refs: &[&str], mirror: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": if mirror {
                serde_json::json!({MIRROR_ANNOTATION: "x"})
            } else {
                serde_json::json!({})
            }},
            "spec": {
                "serviceAccountName": sa,
                "imagePullSecrets": refs.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
                "containers": [],
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod_config(ns: &str, sa: &str, injection: bool) -> Config {
        let mut c = config(ns, sa, false);
        c.webhook.pod_injection = injection;
        c
    }

    fn pod_refs(p: &Pod, patch: Option<json_patch::Patch>) -> Option<Vec<String>> {
        let mut doc = serde_json::to_value(p).unwrap_or_default();
        json_patch::patch(&mut doc, &patch?).unwrap_or_else(|e| panic!("{e}"));
        Some(
            doc["spec"]["imagePullSecrets"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    #[test]
    fn pods_get_the_reference_only_when_injection_is_on_and_everything_is_selected() {
        let on = pod_config("team-a", "default,builder", true);
        let index = Index::new("ours");
        let patch = |p: &Pod, ns: &str, cfg: &Config| {
            pod_refs(p, pod_patch_for(p, ns, "kube-system", cfg, "ours", &index))
        };
        let mine = pod(Some("builder"), &["mine", "also"], false);
        assert_eq!(
            patch(&mine, "team-a", &on),
            Some(vec!["mine".into(), "also".into(), "ours".into()]),
            "appended, in order"
        );
        // No serviceAccountName means `default`.
        assert_eq!(
            patch(&pod(None, &[], false), "team-a", &on),
            Some(vec!["ours".into()])
        );
        for (p, ns, cfg, why) in [
            (
                pod(Some("builder"), &[], false),
                "team-a",
                pod_config("team-a", "*", false),
                "injection off",
            ),
            (
                pod(Some("other"), &[], false),
                "team-a",
                on.clone(),
                "ServiceAccount not selected",
            ),
            (
                pod(Some("builder"), &[], false),
                "team-b",
                on.clone(),
                "namespace not selected",
            ),
            (
                pod(Some("builder"), &[], false),
                "kube-system",
                pod_config("all", "*", true),
                "own namespace",
            ),
            (
                pod(Some("builder"), &[], true),
                "team-a",
                on.clone(),
                "mirror Pod",
            ),
            (
                pod(Some("builder"), &["ours"], false),
                "team-a",
                on.clone(),
                "already there",
            ),
        ] {
            assert_eq!(patch(&p, ns, &cfg), None, "{why}");
        }
        // The ServiceAccount's opt label, as the index holds it, decides over `service-account`.
        let mut index = Index::new("ours");
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "team-a", "name": "builder", "resourceVersion": "1",
                         "labels": {crate::config::OPT_LABEL: "false"}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        index.apply_service_account(&crate::index::ServiceAccountView::from(&sa));
        let p = pod(Some("builder"), &[], false);
        assert!(pod_patch_for(&p, "team-a", "kube-system", &on, "ours", &index).is_none());
    }
}
