//! Migration from ACK's add-on: its objects seeded as it writes them (a dockerconfigjson Secret
//! `acr-credential-<hash>` per watched namespace, referenced from the ServiceAccounts), then
//! `migrate` run as an operator would, with a sampler reading the ServiceAccounts all along.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::fake_cloud::*;
use support::harness::{BINARY, Harness};
use support::{TestNamespace, control_plane};

const ENTERPRISE: &str = "- instanceId: cri-fakeinstance0001\n";
const ADDON: &str = "acr-credential-3f2a9c0d1b8e4f6a7c5d2e1f0a9b8c7d";

/// A dockerconfigjson Secret `name` in `ns` with a login for each of `domains`.
async fn addon_secret(client: &Client, ns: &str, name: &str, type_: &str, domains: &[&str]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let auths: serde_json::Map<String, Value> = domains
        .iter()
        .map(|d| {
            (
                (*d).to_owned(),
                json!({"username": "cr_temp_user", "password": "addon-password", "auth": b64.encode("cr_temp_user:addon-password")}),
            )
        })
        .collect();
    let doc = json!({"auths": auths}).to_string();
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": type_,
        "data": {".dockerconfigjson": b64.encode(doc)},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap_or_else(|e| panic!("seed Secret {ns}/{name}: {e}"));
}

/// Runs `migrate` with the admin kubeconfig and `flags`; returns its JSON answer.
fn migrate(h: &Harness, flags: &[&str]) -> Value {
    let out = std::process::Command::new(BINARY)
        .args([
            "--config-namespace",
            &h.config_ns.name,
            "--secret-name",
            &h.secret_name,
        ])
        .arg("migrate")
        .args(["-o", "json"])
        .args(flags)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    support::leaks::text("errors", &stderr);
    assert!(out.status.success(), "migrate failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("migrate's JSON: {e}"))
}

fn deleted(m: &Value) -> Vec<String> {
    m["delete"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            format!(
                "{}/{}",
                d["namespace"].as_str().unwrap_or(""),
                d["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

// Two workers: `migrate` runs as a blocking child process while the sampler keeps reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_removes_the_addons_references_after_ours_and_its_secrets_once_unused() {
    let h = Harness::new("migrate", &default_config(), "cluster-admin").await;
    let served = TestNamespace::create(&h.client, "mig-served").await;
    let other = TestNamespace::create(&h.client, "mig-other").await;
    let domains = [
        "fake-registry.cn-hangzhou.cr.aliyuncs.com",
        "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
    ];
    // As the add-on left them: its Secret in both namespaces, referenced by `default`.
    for ns in [&served.name, &other.name] {
        addon_secret(
            &h.client,
            ns,
            ADDON,
            "kubernetes.io/dockerconfigjson",
            &domains,
        )
        .await;
    }
    let sas_served = Api::<ServiceAccount>::namespaced(h.client.clone(), &served.name);
    let sas_other = Api::<ServiceAccount>::namespaced(h.client.clone(), &other.name);
    let set_refs = |api: Api<ServiceAccount>, refs: Vec<&'static str>| async move {
        let refs: Vec<Value> = refs.iter().map(|r| json!({"name": r})).collect();
        api.patch(
            "default",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"imagePullSecrets": refs})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    };
    set_refs(sas_served.clone(), vec!["theirs", ADDON]).await;
    set_refs(sas_other.clone(), vec![ADDON]).await;
    // Look-alikes that are not the add-on's: another type, another registry.
    addon_secret(
        &h.client,
        &served.name,
        "acr-credential-0a1b2c3d",
        "Opaque",
        &domains,
    )
    .await;
    addon_secret(
        &h.client,
        &served.name,
        "acr-credential-4e5f6a7b",
        "kubernetes.io/dockerconfigjson",
        &["docker.io"],
    )
    .await;
    support::create_service_account(
        &h.client,
        &served.name,
        "builder",
        &["acr-credential-4e5f6a7b"],
    )
    .await;
    // A Pod created before the migration names the add-on's Secret (no kubelet runs it here).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "old"},
        "spec": {"containers": [{"name": "c", "image": "fake-registry.cn-hangzhou.cr.aliyuncs.com/team/app:1"}],
                 "imagePullSecrets": [{"name": ADDON}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let pods = Api::<Pod>::namespaced(h.client.clone(), &served.name);
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", served.name.as_str()),
        ("service-account", "default,builder"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&served.name, "default", true).await;
    h.wait_reference(&served.name, "builder", true).await;

    // A sampler: no ServiceAccount ever holds neither Secret.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (api, stop, ours) = (sas_served.clone(), stop.clone(), h.secret_name.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let sa = api.get("default").await.unwrap_or_else(|e| panic!("{e}"));
                let refs = support::reference_names(sa.image_pull_secrets);
                assert!(
                    refs.iter().any(|r| *r == ours || r == ADDON),
                    "default held neither Secret: {refs:?}"
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };

    // 1. The dry run says what would happen and changes nothing.
    let planned = migrate(&h, &["--dry-run"]);
    assert_eq!(
        planned["unlink"].as_array().map(Vec::len),
        Some(1),
        "{planned}"
    );
    assert_eq!(planned["unlink"][0]["serviceAccount"], "default");
    assert!(
        deleted(&planned).is_empty(),
        "the old Pod still names it: {planned}"
    );
    let refs = support::reference_names(
        sas_served
            .get("default")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .image_pull_secrets,
    );
    assert!(refs.contains(&ADDON.to_owned()), "the dry run wrote");

    // 2. The migration: the reference goes (every other entry stays, in order); the Secret stays
    //    while the Pod names it; the unserved namespace and the look-alikes are untouched.
    let done = migrate(&h, &[]);
    assert_eq!(done["unlink"].as_array().map(Vec::len), Some(1), "{done}");
    let refs = support::reference_names(
        sas_served
            .get("default")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .image_pull_secrets,
    );
    assert_eq!(refs, ["theirs".to_owned(), h.secret_name.clone()]);
    assert!(!support::is_absent(&h.secrets(&served.name), ADDON).await);
    let kept = done["kept"].to_string();
    assert!(
        kept.contains("a Pod") && kept.contains("does not serve namespace"),
        "{kept}"
    );
    assert_eq!(
        support::reference_names(
            sas_other
                .get("default")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .image_pull_secrets
        ),
        [ADDON]
    );
    let builder = support::reference_names(
        sas_served
            .get("builder")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .image_pull_secrets,
    );
    assert!(
        builder.contains(&"acr-credential-4e5f6a7b".to_owned()),
        "a look-alike was unlinked"
    );
    for name in ["acr-credential-0a1b2c3d", "acr-credential-4e5f6a7b"] {
        assert!(
            !support::is_absent(&h.secrets(&served.name), name).await,
            "{name} deleted"
        );
    }

    // 3. Once the old Pod is replaced, running it again deletes the Secret; a third run has
    //    nothing left to do.
    pods.delete(
        "old",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    support::wait_until(Duration::from_secs(30), "the old Pod gone", || async {
        support::is_absent(&pods, "old").await
    })
    .await;
    let again = migrate(&h, &[]);
    assert_eq!(
        deleted(&again),
        [format!("{}/{ADDON}", served.name)],
        "{again}"
    );
    assert!(support::is_absent(&h.secrets(&served.name), ADDON).await);
    assert!(
        !support::is_absent(&h.secrets(&other.name), ADDON).await,
        "the unserved one stays"
    );
    let last = migrate(&h, &[]);
    assert!(
        last["unlink"].as_array().is_some_and(Vec::is_empty) && deleted(&last).is_empty(),
        "{last}"
    );
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_else(|e| panic!("the sampler: {e}"));
    eprintln!("{samples} samples of the ServiceAccount: never without a Secret");
    assert!(samples > 10);
}
