//! The ServiceAccount admission webhook, called over TLS by the real API server.

mod support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::fake_cloud::default_config;
use support::harness::{Harness, RemoveWebhook, Served, TLS_SECRET, free_port};
use support::{TestNamespace, wait_until};

fn sa(name: &str) -> ServiceAccount {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap_or_else(|e| panic!("{e}"))
}

/// Deletes the MutatingWebhookConfiguration when the test ends, whatever happens.
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
    let tls_secret = TLS_SECRET;
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
        || async { !support::is_absent(&mwcs, &name).await },
    )
    .await;
    let mwc = mwcs.get(&name).await.unwrap_or_else(|e| panic!("{e}"));
    let hook = &mwc.webhooks.unwrap_or_default()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.timeout_seconds, Some(5));
    // Never the controller's own namespace: a `Fail` webhook cannot block its own pods.
    let excluded = hook
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .and_then(|e| {
            e.iter()
                .find(|r| r.key == "kubernetes.io/metadata.name" && r.operator == "NotIn")
        })
        .and_then(|r| r.values.clone())
        .unwrap_or_default();
    assert_eq!(excluded, vec![h.config_ns.name.clone()]);
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
    let refs = support::reference_names(created.image_pull_secrets);
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
    let mut flags = h.cleanup_flags();
    flags.extend(["--webhook-configuration".to_owned(), name.clone()]);
    support::run_cleanup(&flags);
    assert!(support::is_absent(&mwcs, &name).await);
    let _ = mwcs.delete(&name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn no_reference_where_a_foreign_secret_holds_the_name() {
    let h = Harness::new("whforeign", &default_config(), "cluster-admin").await;
    let watched = TestNamespace::create(&h.client, "wh-foreign").await;
    // A selected namespace without a foreign Secret: proof that the webhook answers at all.
    let control = TestNamespace::create(&h.client, "wh-control").await;
    let served = Served::new(&h);
    let name = served.name.clone();
    let _c = h.start(&served.flags());
    // Someone else's Secret holds our name in the namespace.
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": h.secret_name},
        "stringData": {"token": "theirs"},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(h.client.clone(), &watched.name)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let both = format!("{},{}", watched.name, control.name);
    h.apply_config(&[
        ("watch-namespace", both.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", "- instanceId: cri-fakeinstance0001\n"),
        ("webhook-configuration", "enable: true\n"),
    ])
    .await;
    // The controller has seen the foreign Secret once it says so on the namespace.
    wait_until(
        Duration::from_secs(30),
        "the SecretNameTaken Event",
        || async {
            let events = Api::<k8s_openapi::api::events::v1::Event>::all(h.client.clone())
                .list(&kube::api::ListParams::default().fields("type=Warning"))
                .await
                .map(|l| l.items)
                .unwrap_or_else(|e| panic!("list Events: {e}"));
            events.iter().any(|e| {
                e.reason.as_deref() == Some("SecretNameTaken")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some(watched.name.as_str())
            })
        },
    )
    .await;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(h.client.clone());
    wait_until(Duration::from_secs(30), "the registration", || async {
        !support::is_absent(&mwcs, &name).await
    })
    .await;
    // The webhook answers: a new ServiceAccount of the control namespace is created with the
    // reference...
    let control_sas = Api::<ServiceAccount>::namespaced(h.client.clone(), &control.name);
    let mut n = 0;
    wait_until(Duration::from_secs(30), "the webhook to answer", || {
        n += 1;
        let control_sas = control_sas.clone();
        let ours = h.secret_name.clone();
        async move {
            control_sas
                .create(&PostParams::default(), &sa(&format!("probe-{n}")))
                .await
                .ok()
                .and_then(|s| s.image_pull_secrets)
                .is_some_and(|r| r.iter().any(|r| r.name == ours))
        }
    })
    .await;
    // ...and next to the foreign Secret it answers without a patch, at every attempt.
    let sas = Api::<ServiceAccount>::namespaced(h.client.clone(), &watched.name);
    for i in 0..5 {
        let created = sas
            .create(&PostParams::default(), &sa(&format!("new-{i}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            created.image_pull_secrets.unwrap_or_default().is_empty(),
            "the webhook added a reference to a Secret that is not ours"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And the controller never patched the existing one, nor wrote anything there, though it has
    // seen every ServiceAccount above (it has acted on later changes: the marker).
    let _marker = h.marker().await;
    support::holds_for(Duration::from_secs(1), || async {
        assert!(!h.has_reference(&watched.name, "default").await);
        let writes: Vec<_> = h
            .audited_product_writes()
            .into_iter()
            .filter(|w| w.namespace == watched.name)
            .collect();
        assert!(
            writes.is_empty(),
            "the controller wrote next to a foreign Secret: {writes:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stalls_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new("whstall", &default_config(), "cluster-admin").await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let name = format!("acr-helper-{}", h.config_ns.name);
    let _remove = RemoveWebhook(name.clone());
    let _c = h.start(&[
        "--token-mode",
        "workerRole",
        "--webhook-addr",
        &addr,
        "--webhook-url",
        &format!("https://{addr}/mutate"),
        "--webhook-cert-sans",
        "127.0.0.1",
        "--webhook-configuration",
        &name,
        "--webhook-client-timeout",
        "1s",
    ]);
    h.apply_config(&[
        ("acr-registry-info", "- instanceId: cri-fakeinstance0001\n"),
        ("webhook-configuration", "enable: true\n"),
    ])
    .await;
    let tls = Api::<Secret>::namespaced(h.client.clone(), &h.config_ns.name);
    wait_until(Duration::from_secs(30), "the certificate", || async {
        !support::is_absent(&tls, TLS_SECRET).await
    })
    .await;
    // Connects and sends nothing: closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client was not disconnected: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "disconnected only after {:?}",
        started.elapsed()
    );

    // Completes the handshake, then sends half a request: closed after the header timeout.
    let ca = tls
        .get(TLS_SECRET)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let connector = tokio_rustls::TlsConnector::from(support::tls_client(&ca, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let server_name =
        rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let mut stream = connector
        .connect(server_name.clone(), tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a client that stalls in its headers was not disconnected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "disconnected only after {:?}",
        started.elapsed()
    );

    // Sends whole headers, then its body a byte at a time: the whole request has the same
    // deadline, so it is answered 408 and closed (a header timeout alone never ends it).
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        connector
            .connect(server_name.clone(), tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake: {e}"))
    };
    let mut stream = connect().await;
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            let mut chunk = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    assert!(
        ended.is_ok(),
        "a client trickling its body was never cut off"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body larger than the API server's own request limit is refused unread.
    let mut stream = connect().await;
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 8388608\r\n\r\n{")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
        .await
        .unwrap_or_else(|_| panic!("an oversized body got no answer"))
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

/// A Pod of `sa` with `pull_secrets` of its own and `annotations`.
fn pod(name: &str, sa: &str, pull_secrets: &[&str], annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "imagePullSecrets": pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "containers": [{"name": "c", "image": "fake-registry.cn-hangzhou.cr.aliyuncs.com/ns/app:1"}],
        },
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Creates the Pod and returns the `imagePullSecrets` it was stored with.
async fn stored(client: &kube::Client, ns: &str, p: &Pod) -> Vec<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await
        .unwrap_or_else(|e| panic!("create Pod in {ns}: {e}"));
    support::reference_names(pod.spec.and_then(|s| s.image_pull_secrets))
}

#[tokio::test]
async fn pods_get_the_reference_at_admission_without_any_service_account_write() {
    let h = Harness::new("whpods", &default_config(), "cluster-admin").await;
    let watched = TestNamespace::create(&h.client, "wh-pods").await;
    let other = TestNamespace::create(&h.client, "wh-pods-other").await;
    for ns in [&watched.name, &other.name] {
        support::create_service_account(&h.client, ns, "builder", &[]).await;
        support::create_service_account(&h.client, ns, "unselected", &[]).await;
    }
    let served = Served::new(&h);
    let name = served.name.clone();
    let mut c = h.start(&served.flags());
    // GitOps mode: no ServiceAccount is ever written; Pods carry the reference instead.
    h.apply_config(&[
        ("watch-namespace", watched.name.as_str()),
        ("service-account", "default,builder"),
        ("acr-registry-info", "- instanceId: cri-fakeinstance0001\n"),
        ("patch-service-accounts", "false"),
        ("webhook-configuration", "pod-injection: true\n"),
    ])
    .await;
    h.wait_secret(&watched.name).await;

    // Registered: only the Pod webhook, Ignore, IfNeeded, a short timeout, and the API server
    // never calls it for the controller's namespace or for opted-out namespaces.
    let mwcs = Api::<MutatingWebhookConfiguration>::all(h.client.clone());
    wait_until(Duration::from_secs(30), "the registration", || async {
        !support::is_absent(&mwcs, &name).await
    })
    .await;
    let hooks = mwcs
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .webhooks
        .unwrap_or_default();
    assert_eq!(hooks.len(), 1, "only the Pod webhook");
    let hook = &hooks[0];
    assert_eq!(hook.name, "pods.aliyun-acr-credential-helper.io");
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.timeout_seconds, Some(3));
    assert_eq!(hook.match_conditions.as_ref().map(Vec::len), Some(2));

    // A Pod of a selected ServiceAccount that was never patched: stored with our reference (the
    // first attempts may race the certificate being loaded).
    let mut n = 0;
    wait_until(Duration::from_secs(30), "the Pod webhook to answer", || {
        n += 1;
        let p = pod(&format!("probe-{n}"), "builder", &[], json!({}));
        let (client, ns, ours) = (
            h.client.clone(),
            watched.name.clone(),
            h.secret_name.clone(),
        );
        async move { stored(&client, &ns, &p).await == vec![ours] }
    })
    .await;
    let ours = h.secret_name.clone();
    let sa = Api::<ServiceAccount>::namespaced(h.client.clone(), &watched.name)
        .get("builder")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sa.image_pull_secrets.unwrap_or_default().is_empty(),
        "patch-service-accounts: false writes no ServiceAccount"
    );
    // Its own entries stay, in order, ours last.
    assert_eq!(
        stored(
            &h.client,
            &watched.name,
            &pod("mine", "default", &["mine", "also"], json!({}))
        )
        .await,
        vec!["mine".to_owned(), "also".to_owned(), ours.clone()]
    );
    // Unselected ServiceAccount, unselected namespace, mirror Pod: unchanged.
    assert!(
        stored(
            &h.client,
            &watched.name,
            &pod("unsel", "unselected", &[], json!({}))
        )
        .await
        .is_empty()
    );
    assert!(
        stored(
            &h.client,
            &other.name,
            &pod("elsewhere", "builder", &[], json!({}))
        )
        .await
        .is_empty()
    );
    // A mirror Pod may not reference a ServiceAccount or Secret (the API server refuses it): had
    // the webhook added our reference, its creation would fail.
    let mut mirror = pod(
        "mirror",
        "",
        &[],
        json!({"kubernetes.io/config.mirror": "abc123"}),
    );
    if let Some(spec) = mirror.spec.as_mut() {
        spec.service_account_name = None;
        spec.image_pull_secrets = None;
        spec.node_name = Some("node-a".into());
    }
    assert!(stored(&h.client, &watched.name, &mirror).await.is_empty());

    // The webhook process gone, `Ignore`: Pods are still created (without the reference).
    c.kill();
    assert!(
        stored(
            &h.client,
            &watched.name,
            &pod("no-webhook", "builder", &[], json!({}))
        )
        .await
        .is_empty()
    );
    // No ServiceAccount write by the controller, from the audit log.
    let sa_writes: Vec<String> = h
        .audited_product_writes()
        .into_iter()
        .filter(|w| w.resource == "serviceaccounts")
        .map(|w| format!("{} {}/{}", w.verb, w.namespace, w.name))
        .collect();
    assert!(sa_writes.is_empty(), "{sa_writes:?}");
}

/// An attacker on the pod network: `connections` connections from `source` (another loopback
/// address, as another pod is another address) that complete TLS, send a request's headers, and
/// then one body byte every `every`, each reconnecting as soon as it is closed. Runs until
/// dropped; counts the connections the server accepted into a request.
struct Trickler {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Trickler {
    fn start(
        addr: std::net::SocketAddr,
        source: std::net::IpAddr,
        tls: std::sync::Arc<rustls::ClientConfig>,
        connections: usize,
        every: Duration,
    ) -> Trickler {
        use tokio::io::AsyncWriteExt;
        let tasks = (0..connections)
            .map(|_| {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let connector = tokio_rustls::TlsConnector::from(tls);
                    loop {
                        let attempt = async {
                            let socket = tokio::net::TcpSocket::new_v4().ok()?;
                            socket.bind(std::net::SocketAddr::new(source, 0)).ok()?;
                            let tcp = socket.connect(addr).await.ok()?;
                            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
                            let mut s = connector.connect(name, tcp).await.ok()?;
                            s.write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{").await.ok()?;
                            loop {
                                tokio::time::sleep(every).await;
                                s.write_all(b" ").await.ok()?;
                                s.flush().await.ok()?;
                            }
                            #[allow(unreachable_code)]
                            Some(())
                        };
                        let _ = attempt.await;
                        // Closed: at once again (a second later, so that 1,100 of them do not
                        // spend the shared test machine's CPU on connects alone).
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            })
            .collect();
        Trickler { tasks }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A ServiceAccount AdmissionReview for `ns/name` (CREATE), as the API server sends it.
fn sa_review(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("review-{name}"),
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "namespace": ns, "name": name, "operation": "CREATE",
            "userInfo": {"username": "someone"},
            "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
            "oldObject": null, "dryRun": false,
        },
    })
}

#[tokio::test]
async fn connections_that_trickle_their_bodies_cannot_starve_the_webhook() {
    let h = Harness::new("whslow", &default_config(), "cluster-admin").await;
    let watched = TestNamespace::create(&h.client, "whslow-ws").await;
    let served = Served::new(&h);
    let flags = served.flags();
    let _c = h.start(&flags);
    h.apply_config(&[
        ("watch-namespace", watched.name.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", "- instanceId: cri-fakeinstance0001\n"),
        ("webhook-configuration", "enable: true\n"),
    ])
    .await;
    let secrets = Api::<Secret>::namespaced(h.client.clone(), &h.config_ns.name);
    wait_until(Duration::from_secs(30), "the certificate", || async {
        !support::is_absent(&secrets, TLS_SECRET).await
    })
    .await;
    h.wait_secret(&watched.name).await;
    let ca = secrets
        .get(TLS_SECRET)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let addr: std::net::SocketAddr = served.args[3].parse().unwrap_or_else(|e| panic!("{e}"));
    // A fresh connection each time, from the API server's address, with a proper review.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*support::tls_client(&ca, &[b"http/1.1"])).clone())
        .pool_max_idle_per_host(0)
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let review = |n: usize| {
        let client = client.clone();
        let body = sa_review(&watched.name, &format!("probe-{n}"));
        async move {
            let started = std::time::Instant::now();
            let answer = client
                .post(format!("https://{addr}/mutate"))
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            // `patch` is the JSON patch's bytes (kube writes them as an array, which the API
            // server reads as well as base64).
            let patched = match answer {
                Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| {
                    v["response"]["allowed"] == true && !v["response"]["patch"].is_null()
                }),
                Err(_) => false,
            };
            (started.elapsed(), patched)
        }
    };
    // It serves once its certificate is loaded.
    wait_until(
        Duration::from_secs(30),
        "a proper review answered",
        || async { review(0).await.1 },
    )
    .await;
    let (before, ok) = review(0).await;
    assert!(ok, "the webhook answers a proper review");
    eprintln!(
        "a proper review before the attack: {:.1} ms",
        before.as_secs_f64() * 1e3
    );

    // 1,100 connections from another address trickle their bodies, reconnecting when closed.
    let attacker = Trickler::start(
        addr,
        std::net::IpAddr::from([127, 0, 0, 2]),
        support::tls_client(&ca, &[b"http/1.1"]),
        1100,
        Duration::from_secs(3),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut worst = Duration::ZERO;
    for n in 1..=10 {
        let (took, ok) = review(n).await;
        assert!(
            ok,
            "review {n} went unanswered while the attack ran ({took:?})"
        );
        worst = worst.max(took);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "10 proper reviews during the attack: worst {:.1} ms",
        worst.as_secs_f64() * 1e3
    );
    assert!(
        worst < Duration::from_secs(2),
        "answered only after {worst:?}"
    );
    // And through the API server: a ServiceAccount is created with the reference, at once.
    let started = std::time::Instant::now();
    let sa = support::create_service_account(&h.client, &watched.name, "during-attack", &[]).await;
    let took = started.elapsed();
    assert!(
        support::reference_names(sa.image_pull_secrets).contains(&h.secret_name),
        "created without the webhook's reference ({took:?})"
    );
    eprintln!(
        "a ServiceAccount created through the API server during the attack: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(2));
    drop(attacker);
}
