//! The ServiceAccount admission webhook, called over TLS by the real API server.

mod support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::fake_cloud::default_config;
use support::harness::{Harness, free_port};
use support::{TestNamespace, wait_until};

fn sa(name: &str) -> ServiceAccount {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap_or_else(|e| panic!("{e}"))
}

/// Deletes the MutatingWebhookConfiguration when the test ends, whatever happens.
struct RemoveWebhook(String);
impl Drop for RemoveWebhook {
    fn drop(&mut self) {
        let name = self.0.clone();
        let kubeconfig = support::control_plane().kubeconfig.clone();
        let _ = std::process::Command::new(support::control_plane().binary("kubectl"))
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &name,
                "--ignore-not-found",
            ])
            .env("KUBECONFIG", kubeconfig)
            .output();
    }
}

#[tokio::test]
async fn new_service_accounts_are_created_with_the_reference() {
    let h = Harness::new("webhook", &default_config(), "cluster-admin").await;
    let watched = TestNamespace::create(&h.client, "wh-watched").await;
    let other = TestNamespace::create(&h.client, "wh-other").await;
    let port = free_port();
    let name = format!("acr-helper-{}", h.config_ns.name);
    let _remove = RemoveWebhook(name.clone());
    let url = format!("https://127.0.0.1:{port}/mutate");
    let addr = format!("127.0.0.1:{port}");
    let tls_secret = "webhook-tls";
    // A replica serving the webhook on `addr`; every replica registers the same URL.
    let replica = |addr: &str| {
        h.start(&[
            "--token-mode",
            "workerRole",
            "--webhook-addr",
            addr,
            "--webhook-url",
            &url,
            "--webhook-cert-sans",
            "127.0.0.1",
            "--webhook-configuration",
            &name,
            "--webhook-tls-secret",
            tls_secret,
        ])
    };
    let mut leader = replica(&addr);
    h.apply_config(&[
        ("watch-namespace", watched.name.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", "- instanceId: cri-fakeinstance0001\n"),
        (
            "webhook-configuration",
            "enable: true\nfailure-policy: Ignore\ntimeout-seconds: 5\n",
        ),
    ])
    .await;

    // Registered with the settings from the ConfigMap and a caBundle.
    let mwcs = Api::<MutatingWebhookConfiguration>::all(h.client.clone());
    wait_until(
        Duration::from_secs(30),
        "the MutatingWebhookConfiguration",
        || async { mwcs.get_opt(&name).await.ok().flatten().is_some() },
    )
    .await;
    let mwc = mwcs.get(&name).await.unwrap_or_else(|e| panic!("{e}"));
    let hook = &mwc.webhooks.unwrap_or_default()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.timeout_seconds, Some(5));
    assert!(
        hook.client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty())
    );

    // The API server calls it over TLS: the ServiceAccount comes back from create already carrying
    // the reference (the first attempts may race the certificate being loaded).
    let sas = Api::<ServiceAccount>::namespaced(h.client.clone(), &watched.name);
    let mut n = 0;
    wait_until(Duration::from_secs(30), "the webhook to answer", || {
        n += 1;
        let sas = sas.clone();
        let probe = format!("probe-{n}");
        let ours = h.secret_name.clone();
        async move {
            let created = sas.create(&PostParams::default(), &sa(&probe)).await;
            created
                .ok()
                .and_then(|s| s.image_pull_secrets)
                .is_some_and(|r| r.iter().any(|r| r.name == ours))
        }
    })
    .await;
    let created = sas
        .create(&PostParams::default(), &sa("fresh"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refs: Vec<String> = created
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        refs,
        vec![h.secret_name.clone()],
        "created with the reference already"
    );

    // A ServiceAccount in a namespace the configuration does not watch is untouched.
    let untouched = Api::<ServiceAccount>::namespaced(h.client.clone(), &other.name)
        .create(&PostParams::default(), &sa("fresh"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(untouched.image_pull_secrets.unwrap_or_default().is_empty());

    // Every replica serves it, not only the leader: ask a standby directly over TLS.
    let standby_port = free_port();
    let standby_addr = format!("127.0.0.1:{standby_port}");
    let _standby = replica(&standby_addr);
    let tls = Api::<Secret>::namespaced(h.client.clone(), &h.config_ns.name)
        .get(tls_secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = tls
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .map(|b| b.0.clone())
        .unwrap_or_default();
    acr_helper::aliyun::http::install_crypto_provider();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap_or_else(|e| panic!("{e}")))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "name": "direct", "namespace": watched.name, "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "direct", "namespace": watched.name}}
        }
    });
    let standby_url = format!("https://127.0.0.1:{standby_port}/mutate");
    wait_until(
        Duration::from_secs(30),
        "the standby's webhook to answer with a patch",
        || {
            let https = https.clone();
            let review = review.clone();
            let standby_url = standby_url.clone();
            async move {
                let Ok(r) = https.post(&standby_url).json(&review).send().await else {
                    return false;
                };
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                body["response"]["allowed"] == true && body["response"]["patchType"] == "JSONPatch"
            }
        },
    )
    .await;

    // A new certificate in the Secret (here from a new CA, as a full rotation would be) is picked
    // up by the running replica without a restart: a client trusting only the new CA connects.
    let rotated =
        acr_helper::webhook::certs::generate(&["127.0.0.1".to_owned()], jiff::Timestamp::now())
            .unwrap_or_else(|e| panic!("{e}"));
    let secrets = Api::<Secret>::namespaced(h.client.clone(), &h.config_ns.name);
    let mut tls = secrets
        .get(tls_secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.data = Some(rotated.data());
    secrets
        .replace(tls_secret, &PostParams::default(), &tls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let trusts_new_ca = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(rotated.ca_cert.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        Duration::from_secs(30),
        "the standby to serve the rotated certificate",
        || {
            let client = trusts_new_ca.clone();
            let review = review.clone();
            let standby_url = standby_url.clone();
            async move { client.post(&standby_url).json(&review).send().await.is_ok() }
        },
    )
    .await;

    // With the webhook process gone and failurePolicy Ignore, creation still succeeds.
    leader.kill();
    drop(_standby);
    Api::<ServiceAccount>::namespaced(h.client.clone(), &watched.name)
        .create(&PostParams::default(), &sa("while-down"))
        .await
        .unwrap_or_else(|e| panic!("ServiceAccount creation failed with the webhook down: {e}"));

    // cleanup removes the registration too.
    support::run_cleanup(&[
        "--secret-name",
        &h.secret_name,
        "--webhook-configuration",
        &name,
    ]);
    assert!(mwcs.get_opt(&name).await.ok().flatten().is_none());
    let _ = mwcs.delete(&name, &DeleteParams::default()).await;
}
