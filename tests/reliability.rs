//! The promises that must hold through restarts, outages, bad edits and uninstall, tried as an
//! operator would: the real binary against the local API server and the fake cloud. Every wait
//! has a deadline; samples are taken at fixed intervals and every sample must pass.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::fake_cloud::*;
use support::harness::{
    BINARY, Harness, TLS_SECRET, dockerconfig, domains, free_port, scrape_metric,
};
use support::{TestNamespace, wait_until};

const ENTERPRISE: &str = "- instanceId: cri-fakeinstance0001\n";
const LAST_CONFIG: &str = "aliyun-acr-credential-helper-last-config";

/// The logins of the Secret in `ns`: domain -> (username, password).
async fn logins(h: &Harness, ns: &str) -> Option<BTreeMap<String, (String, String)>> {
    let s = h
        .secrets(ns)
        .get_opt(&h.secret_name)
        .await
        .unwrap_or_else(|e| panic!("get {ns}/{}: {e}", h.secret_name))?;
    let doc = dockerconfig(&s);
    let map = doc["auths"].as_object()?;
    Some(
        map.iter()
            .map(|(d, l)| {
                (
                    d.clone(),
                    (
                        l["username"].as_str().unwrap_or_default().to_owned(),
                        l["password"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect(),
    )
}

/// Whether every login in the Secret of `ns` works at the fake registry now.
async fn works(h: &Harness, ns: &str) -> bool {
    let Some(logins) = logins(h, ns).await else {
        return false;
    };
    if logins.is_empty() {
        return false;
    }
    let distinct: BTreeSet<&(String, String)> = logins.values().collect();
    for (user, pass) in distinct {
        if h.fake.registry_login(user, pass).await["valid"] != json!(true) {
            return false;
        }
    }
    true
}

async fn create_sa(client: &Client, ns: &str, name: &str, pull_secrets: &[&str]) {
    support::create_service_account(client, ns, name, pull_secrets).await;
}

/// Deletes the named cluster-scoped objects when the test ends, whatever happens.
struct Remove(Vec<(&'static str, String)>);
impl Drop for Remove {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = std::process::Command::new(support::control_plane().binary("kubectl"))
                .args(["delete", kind, name, "--ignore-not-found"])
                .env("KUBECONFIG", &support::control_plane().kubeconfig)
                .output();
        }
    }
}

/// Everything of ours that still exists in `namespaces` and cluster-wide.
async fn leftovers(h: &Harness, namespaces: &[&str], webhook: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ns in namespaces {
        let sas = h
            .service_accounts(ns)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for sa in sas.items {
            if sa
                .image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == h.secret_name)
            {
                found.push(format!("reference on {ns}/{:?}", sa.metadata.name));
            }
        }
    }
    let ours = Api::<Secret>::all(h.client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={}", h.secret_name)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for s in ours.items {
        found.push(format!(
            "Secret {:?}/{:?}",
            s.metadata.namespace, s.metadata.name
        ));
    }
    for name in [LAST_CONFIG, TLS_SECRET] {
        if !support::is_absent(&h.secrets(&h.config_ns.name), name).await {
            found.push(format!("Secret {}/{name}", h.config_ns.name));
        }
    }
    if !support::is_absent(
        &Api::<MutatingWebhookConfiguration>::all(h.client.clone()),
        webhook,
    )
    .await
    {
        found.push(format!("MutatingWebhookConfiguration {webhook}"));
    }
    found
}

#[tokio::test]
async fn cleanup_while_two_replicas_run_leaves_nothing_behind() {
    let h = Harness::new("cleanup", &default_config(), "cluster-admin").await;
    let a = TestNamespace::create(&h.client, "cl-a").await;
    let b = TestNamespace::create(&h.client, "cl-b").await;
    create_sa(&h.client, &a.name, "app", &["mine"]).await;
    let port = free_port();
    let webhook = format!("acr-helper-{}", h.config_ns.name);
    let _remove = Remove(vec![("mutatingwebhookconfiguration", webhook.clone())]);
    let url = format!("https://127.0.0.1:{port}/mutate");
    let replica = |id: &str, addr: &str| {
        h.start_as(
            id,
            &[
                "--token-mode",
                "workerRole",
                "--webhook-addr",
                addr,
                "--webhook-url",
                &url,
                "--webhook-cert-sans",
                "127.0.0.1",
                "--webhook-configuration",
                &webhook,
            ],
        )
    };
    let one = replica("replica-one", &format!("127.0.0.1:{port}"));
    let two = replica("replica-two", "127.0.0.1:0");
    let list = format!("{},{}", a.name, b.name);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
        ("webhook-configuration", "enable: true\n"),
    ])
    .await;
    h.wait_reference(&a.name, "app", true).await;
    h.wait_reference(&a.name, "default", true).await;
    h.wait_reference(&b.name, "default", true).await;
    wait_until(
        Duration::from_secs(30),
        "the webhook and the persisted configuration",
        || async {
            let left = leftovers(&h, &[], &webhook).await;
            ["MutatingWebhookConfiguration", LAST_CONFIG, TLS_SECRET]
                .iter()
                .all(|what| left.iter().any(|l| l.contains(what)))
        },
    )
    .await;

    // cleanup while both replicas run.
    let mut flags = h.cleanup_flags();
    flags.extend(["--webhook-configuration", &webhook].map(String::from));
    let started = Instant::now();
    support::run_cleanup(&flags);
    let cleaned = Instant::now();
    let cleaned_at = jiff::Timestamp::now();
    eprintln!("cleanup took {:?}", started.elapsed());
    // Nothing of ours, at every sample (the replicas must not put it back): for at least 10 s,
    // and until the replicas have had every chance to: both have seen the mark (they say they
    // stand down), one of them holds the Lease again (cleanup's, no longer renewed, ran out), and
    // 3 s more.
    let mut chance: Option<Instant> = None;
    loop {
        let left = leftovers(&h, &[&a.name, &b.name], &webhook).await;
        assert!(left.is_empty(), "left behind: {left:?}");
        if chance.is_none()
            && [&one, &two].iter().all(|r| {
                r.log_text()
                    .contains("no configuration in force state=StandingDown")
            })
            && ["replica-one", "replica-two"]
                .iter()
                .any(|r| h.lease_updates(r).iter().any(|t| *t > cleaned_at))
        {
            chance = Some(Instant::now());
            eprintln!(
                "both replicas stand down and one holds the Lease again {:?} after cleanup",
                cleaned.elapsed()
            );
        }
        let enough = cleaned.elapsed() >= Duration::from_secs(10);
        match chance {
            Some(t) if enough && t.elapsed() >= Duration::from_secs(3) => break,
            None => assert!(
                cleaned.elapsed() < Duration::from_secs(60),
                "60 s after cleanup, the replicas have not both seen the mark and retaken the Lease"
            ),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        h.pull_secrets(&a.name, "app").await,
        Some(vec!["mine".to_owned()])
    );
    // Both replicas still run (and stand down).
    for r in [&one, &two] {
        assert!(
            r.metrics().await.contains("acr_helper_leader"),
            "a replica exited"
        );
    }

    // Removing the mark resumes: nothing was lost but our own objects.
    let unmark =
        json!({"metadata": {"annotations": {"aliyun-acr-credential-helper/cleanup": null}}});
    Api::<ConfigMap>::namespaced(h.client.clone(), &h.config_ns.name)
        .patch(
            "acr-configuration",
            &PatchParams::default(),
            &Patch::Merge(&unmark),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.wait_reference(&a.name, "app", true).await;
    drop(one);
    drop(two);
    support::run_cleanup(&flags);
}

/// Samples every namespace each second for `span`: returns the longest time one held a password
/// the fake rejects, and the distinct passwords seen per namespace.
async fn watch_freshness(
    h: &Harness,
    namespaces: &[&str],
    span: Duration,
) -> (Duration, BTreeMap<String, BTreeSet<String>>) {
    let mut worst = Duration::ZERO;
    let mut bad_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let until = Instant::now() + span;
    while Instant::now() < until {
        for ns in namespaces {
            let ok = works(h, ns).await;
            if let Some(l) = logins(h, ns).await {
                seen.entry((*ns).to_owned())
                    .or_default()
                    .extend(l.values().map(|(_, p)| p.clone()));
            }
            match (ok, bad_since.get(*ns)) {
                (false, None) => {
                    bad_since.insert((*ns).to_owned(), Instant::now());
                }
                (true, Some(since)) => {
                    worst = worst.max(since.elapsed());
                    bad_since.remove(*ns);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for since in bad_since.values() {
        worst = worst.max(since.elapsed());
    }
    (worst, seen)
}

#[tokio::test]
async fn a_new_leader_keeps_secrets_fresh_with_the_last_accepted_configuration() {
    let mut cfg = default_config();
    cfg["lifetimes"] = json!({"registry_seconds": 20});
    let h = Harness::new("lastgood", &cfg, "cluster-admin").await;
    let n1 = TestNamespace::create(&h.client, "lg-a").await;
    let n2 = TestNamespace::create(&h.client, "lg-b").await;
    let list = format!("{},{}", n1.name, n2.name);
    let mut a = h.start_as("replica-a", &["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "10s"),
    ])
    .await;
    h.wait_secret(&n1.name).await;
    h.wait_secret(&n2.name).await;
    wait_until(
        Duration::from_secs(20),
        "the persisted configuration",
        || async { !support::is_absent(&h.secrets(&h.config_ns.name), LAST_CONFIG).await },
    )
    .await;

    // A bad edit. Then a new replica starts (it never saw the good configuration) and the leader
    // is killed: the new replica leads with only the persisted copy to go on.
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "soon"),
    ])
    .await;
    wait_until(Duration::from_secs(20), "the rejection Event", || async {
        h.config_warnings()
            .await
            .iter()
            .any(|n| n.contains("expiring-threshold"))
    })
    .await;
    let b = h.start_as("replica-b", &["--token-mode", "workerRole"]);
    wait_until(
        Duration::from_secs(20),
        "replica-b serving the persisted configuration",
        || async { b.metric("acr_helper_config_last_accepted").await == Some(1.0) },
    )
    .await;
    a.kill();
    wait_until(Duration::from_secs(20), "replica-b to lead", || async {
        b.metric("acr_helper_leader").await == Some(1.0)
    })
    .await;
    let namespaces = [n1.name.as_str(), n2.name.as_str()];
    let (worst, seen) = watch_freshness(&h, &namespaces, Duration::from_secs(45)).await;
    eprintln!(
        "REPORT failover with a bad edit: longest time a namespace held an expired password: {worst:?}; passwords seen: {:?}",
        seen.values().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert_eq!(
        worst,
        Duration::ZERO,
        "a namespace held an expired password"
    );
    for (ns, passwords) in &seen {
        assert!(
            passwords.len() >= 3,
            "{ns}: only {} passwords in 45 s: not refreshed twice",
            passwords.len()
        );
    }
    wait_until(
        Duration::from_secs(10),
        "an Event naming the last accepted configuration",
        || async {
            h.config_warnings().await.iter().any(|n| {
                n.contains("the last accepted configuration (persisted in Secret")
                    && n.contains("soon")
            })
        },
    )
    .await;
}

async fn check_config_exit(info: &str) -> Option<i32> {
    let file = std::env::temp_dir().join(format!("acr-check-{:08x}.yaml", rand::random::<u32>()));
    let doc = json!({"data": {"acr-registry-info": info}});
    std::fs::write(&file, doc.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(BINARY)
        .args(["check-config", "--region", "cn-hangzhou"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&file);
    out.status.code()
}

/// For `span`, every sample of the Secret in `ns` holds at least `want`'s domains, all working.
async fn keeps_logins(h: &Harness, ns: &str, want: &[String], span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let have = logins(h, ns)
            .await
            .map(|l| l.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        for d in want {
            assert!(have.contains(d), "{ns} lost the login for {d}: {have:?}");
        }
        assert!(works(h, ns).await, "{ns}: a login stopped working");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_empty_instance_list_or_an_instance_without_domains_never_empties_a_secret() {
    let h = Harness::new("empty", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "empty-ws").await;
    let c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    let before = domains(&h.wait_secret(&ns.name).await);
    assert_eq!(before.len(), 2);

    for (i, empty) in [
        "[]",
        "# - instanceId: cri-fakeinstance0001\n#   regionId: cn-hangzhou\n",
    ]
    .iter()
    .enumerate()
    {
        h.apply_config(&[
            ("watch-namespace", ns.name.as_str()),
            ("acr-registry-info", empty),
        ])
        .await;
        wait_until(Duration::from_secs(20), "the rejection", || async {
            h.config_warnings()
                .await
                .iter()
                .filter(|n| n.contains("at least one instance"))
                .count()
                > i
        })
        .await;
        keeps_logins(&h, &ns.name, &before, Duration::from_secs(3)).await;
        assert_eq!(
            check_config_exit(empty).await,
            Some(1),
            "check-config accepted {empty:?}"
        );
    }
    assert_eq!(c.metric("acr_helper_config_valid").await, Some(0.0));

    // An instance whose endpoints are all disabled yields no domain: its reconcile fails, and the
    // Secret keeps every login it had.
    let mut instances = default_config()["instances"].clone();
    instances["cri-noendpoint00"] = json!({"region": "cn-hangzhou", "endpoints": [
        {"EndpointType": "internet", "Enable": false, "Status": "STOPPED",
         "Domains": [{"Domain": "off.example.com", "Type": "USER"}]}
    ]});
    h.fake.configure(json!({"instances": instances})).await;
    let info = format!("{ENTERPRISE}- instanceId: cri-noendpoint00\n");
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", info.as_str()),
    ])
    .await;
    wait_until(Duration::from_secs(20), "the failure in a metric and an Event", || async {
        c.metrics().await.contains(r#"acr_helper_credential_errors_total{acr_instance="cri-noendpoint00",category="no_domains"}"#)
            && h.config_warnings().await.iter().any(|n| n.contains("no enabled endpoint"))
    })
    .await;
    keeps_logins(&h, &ns.name, &before, Duration::from_secs(3)).await;
    assert_eq!(c.metric("acr_helper_config_valid").await, Some(1.0));
}

#[tokio::test]
async fn outages_around_the_refresh_point_never_leave_an_expired_password_once_the_cloud_answers() {
    let mut cfg = default_config();
    cfg["lifetimes"] = json!({"registry_seconds": 20});
    let h = Harness::new("outage", &cfg, "cluster-admin").await;
    let mut spaces = Vec::new();
    for _ in 0..20 {
        spaces.push(TestNamespace::create(&h.client, "out").await);
    }
    let names: Vec<&str> = spaces.iter().map(|n| n.name.as_str()).collect();
    let list = names.join(",");
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "10s"),
    ])
    .await;
    for ns in &names {
        h.wait_secret(ns).await;
    }
    // When the outage ends, relative to the passwords' expiry (refresh point = expiry - 10 s).
    for (shape, end_after_expiry) in [
        ("before expiry", -5i64),
        ("at expiry", 0),
        ("after expiry", 6),
    ] {
        let expiry = secret_expiry(&h, names[0]).await;
        let refresh_point = expiry - jiff::SignedDuration::from_secs(10);
        sleep_until(refresh_point - jiff::SignedDuration::from_secs(1)).await;
        let calls_before = h.fake.calls("GetAuthorizationToken").await;
        h.fake
            .fault(
                "GetAuthorizationToken",
                json!({"kind": "http500", "count": -1}),
            )
            .await;
        sleep_until(expiry + jiff::SignedDuration::from_secs(end_after_expiry)).await;
        let during = h.fake.calls("GetAuthorizationToken").await - calls_before;
        h.fake.clear_faults().await;
        let answered = Instant::now();
        // Until 5 s after the cloud answers again: the time any namespace still held an expired
        // password is measured. From then on, every sample must pass.
        let mut worst = Duration::ZERO;
        while answered.elapsed() < Duration::from_secs(5) {
            for ns in &names {
                if !works(&h, ns).await {
                    worst = worst.max(answered.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            for ns in &names {
                assert!(
                    works(&h, ns).await,
                    "{shape}: {ns} holds a password the fake rejects"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!(
            "REPORT outage ending {shape}: {during} GetAuthorizationToken requests reached the cloud during the outage; longest time a namespace held an expired password after the cloud answered: {worst:?}"
        );
        assert!(during < 200, "{shape}: {during} calls: not bounded");
        assert!(
            worst < Duration::from_secs(5),
            "{shape}: an expired password for {worst:?} after the cloud answered"
        );
    }
}

async fn secret_expiry(h: &Harness, ns: &str) -> jiff::Timestamp {
    let s = h
        .secrets(ns)
        .get(&h.secret_name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.metadata
        .annotations
        .and_then(|a| a.get("aliyun-acr-credential-helper/expires-at").cloned())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no expiry on {ns}"))
}

async fn sleep_until(t: jiff::Timestamp) {
    let d = t.duration_since(jiff::Timestamp::now());
    if let Ok(d) = Duration::try_from(d) {
        tokio::time::sleep(d).await;
    }
}

/// A ValidatingAdmissionPolicy (and its binding) that denies what `expression` rejects.
async fn deny(
    client: &Client,
    name: &str,
    resource: (&str, &str),
    namespace: &str,
    expression: &str,
) {
    let policy: k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceRules": [{
                    "apiGroups": [resource.0], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": [resource.1],
                }],
            },
            "validations": [{"expression": expression, "message": "denied by the test"}],
        }
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let binding: k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding =
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    Api::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Api::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing_and_the_other_takes_over() {
    let mut cfg = default_config();
    cfg["lifetimes"] = json!({"registry_seconds": 30});
    let h = Harness::new("renew", &cfg, "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "renew-ws").await;
    let policy = format!("deny-lease-{}", h.config_ns.name);
    let _remove = Remove(vec![
        ("validatingadmissionpolicybinding", policy.clone()),
        ("validatingadmissionpolicy", policy.clone()),
    ]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "15s"),
    ])
    .await;
    let a = h.start_as("replica-a", &["--token-mode", "workerRole"]);
    wait_until(Duration::from_secs(20), "replica-a to lead", || async {
        a.metric("acr_helper_leader").await == Some(1.0)
    })
    .await;
    let b = h.start_as("replica-b", &["--token-mode", "workerRole"]);
    h.wait_reference(&ns.name, "default", true).await;

    // Writes keep coming: another client keeps taking our reference away.
    let churn = {
        let sas = h.service_accounts(&ns.name);
        tokio::spawn(async move {
            loop {
                let _ = sas
                    .patch(
                        "default",
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"imagePullSecrets": null})),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Sample both replicas' leader gauge all along.
    let sampler = {
        let (a_url, b_url) = (a.metrics_url.clone(), b.metrics_url.clone());
        tokio::spawn(async move {
            let mut both = 0;
            let http = reqwest::Client::new();
            let leader = |url| scrape_metric(&http, url, "acr_helper_leader");
            for _ in 0..300 {
                if leader(&a_url).await == Some(1.0) && leader(&b_url).await == Some(1.0) {
                    both += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            both
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let denied_at = jiff::Timestamp::now();
    deny(
        &h.client,
        &policy,
        ("coordination.k8s.io", "leases"),
        &h.config_ns.name,
        "!has(object.spec.holderIdentity) || object.spec.holderIdentity != 'replica-a'",
    )
    .await;
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "replica-a to stop leading",
        || async { a.metric("acr_helper_leader").await == Some(0.0) },
    )
    .await;
    let stopped = t0.elapsed();
    wait_until(Duration::from_secs(20), "replica-b to lead", || async {
        b.metric("acr_helper_leader").await == Some(1.0)
    })
    .await;
    let took_over = t0.elapsed();
    h.wait_reference(&ns.name, "default", true).await;
    let both = sampler.await.unwrap_or_else(|e| panic!("{e}"));
    churn.abort();
    let writes = h.audited_product_writes();
    let b_first = writes
        .iter()
        .filter(|w| w.replica == "replica-b")
        .map(|w| w.at)
        .min()
        .unwrap_or_else(|| panic!("replica-b never wrote"));
    let a_last = writes
        .iter()
        .filter(|w| w.replica == "replica-a")
        .map(|w| w.at)
        .max()
        .unwrap_or_else(|| panic!("replica-a never wrote"));
    eprintln!(
        "REPORT renewals denied: replica-a stopped leading after {stopped:?}, replica-b led after {took_over:?}; replica-a's last write {:?} after the denial, replica-b's first {:?} after; samples with two leaders: {both}",
        a_last.duration_since(denied_at),
        b_first.duration_since(denied_at)
    );
    assert!(
        a_last < b_first,
        "two writers: replica-a wrote at {a_last} after replica-b's first write at {b_first}"
    );
    // replica-a wrote nothing later than the lease duration (4 s; its renew deadline is 2 s) after
    // its last successful renewal.
    let last_renewal = h
        .lease_updates("replica-a")
        .into_iter()
        .filter(|t| *t < b_first)
        .max()
        .unwrap_or_else(|| panic!("replica-a never renewed"));
    let after_renewal = a_last.duration_since(last_renewal);
    eprintln!(
        "REPORT replica-a's last write came {after_renewal:?} after its last renewal (renew deadline 2 s)"
    );
    assert!(
        after_renewal < jiff::SignedDuration::from_secs(4),
        "replica-a wrote {after_renewal:?} after its last renewal"
    );
    assert_eq!(both, 0, "both replicas reported leading at once");
    assert!(
        stopped < Duration::from_secs(10),
        "replica-a led for {stopped:?} without renewing"
    );
    // A replica that does not lead reports no token expiry (the alert must not fire from it).
    assert!(
        !a.metrics()
            .await
            .contains("acr_helper_token_expiry_timestamp_seconds{"),
        "{}",
        a.metrics().await
    );
    assert!(
        b.metrics()
            .await
            .contains("acr_helper_token_expiry_timestamp_seconds{")
    );
    drop((a, b));
}

#[tokio::test]
async fn one_service_account_that_cannot_be_patched_does_not_stop_the_others() {
    let h = Harness::new("denied", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "denied-ws").await;
    for sa in ["a-first", "denied", "z-last"] {
        create_sa(&h.client, &ns.name, sa, &[]).await;
    }
    let policy = format!("deny-sa-{}", ns.name);
    let _remove = Remove(vec![
        ("validatingadmissionpolicybinding", policy.clone()),
        ("validatingadmissionpolicy", policy.clone()),
    ]);
    deny(
        &h.client,
        &policy,
        ("", "serviceaccounts"),
        &ns.name,
        "object.metadata.name != 'denied'",
    )
    .await;
    // The policy is in force once it denies an update of our own.
    wait_until(Duration::from_secs(20), "the policy", || async {
        denied_by_the_policy(
            h.service_accounts(&ns.name)
                .patch(
                    "denied",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})),
                )
                .await,
        )
    })
    .await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    for sa in ["a-first", "default", "z-last"] {
        h.wait_reference(&ns.name, sa, true).await;
    }
    // The controller tried the denied one (it says so), and it holds no reference.
    wait_until(
        Duration::from_secs(20),
        "a PatchFailed Event on the denied ServiceAccount",
        || async {
            events_about(&h.client, &ns.name, "ServiceAccount", "denied")
                .await
                .iter()
                .any(|(_, reason)| reason == "PatchFailed")
        },
    )
    .await;
    assert!(!h.has_reference(&ns.name, "denied").await);
}

/// Whether a write was refused by a policy of [`deny`] (403 or 422 with its message); a write
/// that failed for another reason fails the test.
fn denied_by_the_policy<T>(r: Result<T, kube::Error>) -> bool {
    match r {
        Ok(_) => false,
        Err(kube::Error::Api(s))
            if (s.code == 403 || s.code == 422) && s.message.contains("denied by the test") =>
        {
            true
        }
        Err(e) => panic!("a write failed, not by the policy: {e}"),
    }
}

/// Events recorded in `namespace` about the object `kind`/`name`, as (type, reason).
async fn events_about(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Vec<(String, String)> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list Events in {namespace}: {e}"))
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

async fn has_event(
    h: &Harness,
    namespace: &str,
    kind: &str,
    name: &str,
    want: (&str, &str),
) -> bool {
    events_about(&h.client, namespace, kind, name)
        .await
        .iter()
        .any(|(t, r)| t == want.0 && r == want.1)
}

async fn readyz(c: &support::harness::ControllerProcess) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", c.metrics_url))
        .await
        .unwrap_or_else(|e| panic!("/readyz: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_cloud_outage_is_degraded_not_not_ready_and_recovery_is_recorded() {
    let h = Harness::new("degraded", &default_config(), "cluster-admin").await;
    let open = TestNamespace::create(&h.client, "deg-open").await;
    let shut = TestNamespace::create(&h.client, "deg-shut").await;
    // No Secret may be written in `shut` until the policy goes.
    let policy = format!("deny-secrets-{}", shut.name);
    let remove = Remove(vec![
        ("validatingadmissionpolicybinding", policy.clone()),
        ("validatingadmissionpolicy", policy.clone()),
    ]);
    deny(&h.client, &policy, ("", "secrets"), &shut.name, "false").await;
    wait_until(Duration::from_secs(20), "the policy", || async {
        let probe: Secret = serde_json::from_value(json!({"metadata": {"name": "probe"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        // A dry run: admission decides as for a real write, and nothing is left behind.
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        denied_by_the_policy(h.secrets(&shut.name).create(&dry, &probe).await)
    })
    .await;
    h.fake
        .fault(
            "GetAuthorizationToken",
            json!({"kind": "http500", "count": -1}),
        )
        .await;
    let c = h.start(&["--token-mode", "workerRole"]);
    let list = format!("{},{}", open.name, shut.name);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    let cm = ("ConfigMap", "acr-configuration");
    let config_ns = h.config_ns.name.clone();
    wait_until(
        Duration::from_secs(30),
        "CredentialsUnavailable on the ConfigMap",
        || async {
            has_event(
                &h,
                &config_ns,
                cm.0,
                cm.1,
                ("Warning", "CredentialsUnavailable"),
            )
            .await
        },
    )
    .await;
    // The leader is retrying the cloud: Ready (it serves and its watches are synced), and says
    // it is degraded.
    let (status, body) = readyz(&c).await;
    assert_eq!(status, 200, "NotReady during a cloud outage: {body}");
    assert!(body.contains("degraded"), "{body}");
    assert_eq!(c.metric("acr_helper_degraded").await, Some(1.0));
    assert!(!has_event(&h, &config_ns, cm.0, cm.1, ("Normal", "Refreshed")).await);

    h.fake.clear_faults().await;
    h.wait_secret(&open.name).await;
    wait_until(
        Duration::from_secs(30),
        "Refreshed on the ConfigMap",
        || async { has_event(&h, &config_ns, cm.0, cm.1, ("Normal", "Refreshed")).await },
    )
    .await;
    wait_until(Duration::from_secs(10), "not degraded", || async {
        c.metric("acr_helper_degraded").await == Some(0.0)
    })
    .await;
    assert_eq!(readyz(&c).await, (200, "ready".to_owned()));

    // Events about a Namespace (cluster-scoped) land in `default`.
    wait_until(
        Duration::from_secs(30),
        "ReconcileFailed on the shut namespace",
        || async {
            has_event(
                &h,
                "default",
                "Namespace",
                &shut.name,
                ("Warning", "ReconcileFailed"),
            )
            .await
        },
    )
    .await;
    assert!(!has_event(&h, "default", "Namespace", &shut.name, ("Normal", "Served")).await);
    assert!(
        !has_event(&h, "default", "Namespace", &open.name, ("Normal", "Served")).await,
        "a namespace that never failed is not reported as recovered"
    );
    drop(remove);
    h.wait_secret(&shut.name).await;
    wait_until(
        Duration::from_secs(30),
        "Served on the shut namespace",
        || async { has_event(&h, "default", "Namespace", &shut.name, ("Normal", "Served")).await },
    )
    .await;
}
