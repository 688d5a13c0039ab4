//! The attacks of the threat model (README, *Threat model*), each against the real binary on the
//! real API server: what a namespace owner, any pod on the network, or a holder of the
//! controller's own ServiceAccount token tries, and what must come of it.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::fake_cloud::*;
use support::harness::{Harness, dockerconfig};
use support::{TestNamespace, control_plane, wait_until};

const ENTERPRISE: &str = "- instanceId: cri-fakeinstance0001\n";
const PLANTED: &str = "planted-by-the-tenant";

/// A client acting as the owner of namespace `ns`: a ServiceAccount there bound to the built-in
/// ClusterRole `edit` in that namespace only (the usual tenant).
async fn tenant_client(admin: &Client, ns: &str) -> Client {
    support::create_service_account(admin, ns, "owner", &[]).await;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("owner-edit".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: "edit".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "owner".into(),
                    namespace: Some(ns.to_owned()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("bind edit in {ns}: {e}"));
    let token = support::service_account_token(admin, ns, "owner", &[], 3600).await;
    control_plane().client_with_token(&token).await
}

/// What a tenant who reads the pull Secret of their namespace writes back: the same labels and
/// annotations (instances, identity, digest), a password of their own on every registry domain,
/// and an expiry far in the future.
fn poisoned(ours: &Secret) -> Secret {
    let mut doc = dockerconfig(ours);
    if let Some(auths) = doc["auths"].as_object_mut() {
        for login in auths.values_mut() {
            let user = login["username"].as_str().unwrap_or_default().to_owned();
            use base64::Engine as _;
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PLANTED}"));
            *login = json!({"username": user, "password": PLANTED, "auth": auth});
        }
    }
    let mut s = ours.clone();
    s.metadata.managed_fields = None;
    s.metadata.annotations.get_or_insert_default().insert(
        "aliyun-acr-credential-helper/expires-at".into(),
        "2099-01-01T00:00:00Z".into(),
    );
    s.data = Some(
        [(
            ".dockerconfigjson".to_owned(),
            k8s_openapi::ByteString(doc.to_string().into_bytes()),
        )]
        .into(),
    );
    s
}

fn holds_planted(s: &Secret) -> bool {
    dockerconfig(s).to_string().contains(PLANTED)
}

/// Reads a Secret that must be there: any error (403, 500) fails the test, not only "absent".
async fn must_get(api: &Api<Secret>, name: &str) -> Secret {
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("get Secret {name}: {e}"))
}

/// Warning Events with `reason` recorded on the Secret `ns/name`.
async fn warnings_on_secret(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list Events in {ns}: {e}"))
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Secret") && r.name.as_deref() == Some(name)
            })
        })
        .filter_map(|e| e.note)
        .inspect(|n| support::leaks::text("events", n))
        .collect()
}

#[tokio::test]
async fn a_tenant_cannot_plant_a_password_in_other_namespaces_even_across_a_leader_change() {
    let h = Harness::new("poison", &default_config(), "cluster-admin").await;
    let tenant_ns = TestNamespace::create(&h.client, "poison-tenant").await;
    let others = [
        TestNamespace::create(&h.client, "poison-other").await,
        TestNamespace::create(&h.client, "poison-other").await,
    ];
    let list = format!("{},{},{}", tenant_ns.name, others[0].name, others[1].name);
    let mut first = h.start_as("first", &["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    for ns in [&tenant_ns.name, &others[0].name, &others[1].name] {
        h.wait_secret(ns).await;
    }
    let tenant = tenant_client(&h.client, &tenant_ns.name).await;
    let as_tenant = Api::<Secret>::namespaced(tenant.clone(), &tenant_ns.name);
    let admin_tenant_ns = h.secrets(&tenant_ns.name);

    // 1. While the leader runs: the tenant's edit is repaired within seconds, with a Warning on
    //    the Secret, and goes nowhere else.
    let ours = must_get(&as_tenant, &h.secret_name).await;
    as_tenant
        .replace(&h.secret_name, &PostParams::default(), &poisoned(&ours))
        .await
        .unwrap_or_else(|e| panic!("the tenant may write its own namespace's Secret: {e}"));
    let edited = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the edited Secret repaired",
        || async { !holds_planted(&must_get(&admin_tenant_ns, &h.secret_name).await) },
    )
    .await;
    eprintln!(
        "repaired {:.2}s after the edit (leader running)",
        edited.elapsed().as_secs_f64()
    );
    wait_until(
        Duration::from_secs(10),
        "a SecretRepaired Warning",
        || async {
            !warnings_on_secret(&h.client, &tenant_ns.name, &h.secret_name, "SecretRepaired")
                .await
                .is_empty()
        },
    )
    .await;

    // 2. Across a leader change: the tenant plants its password while no leader runs, then a
    //    new leader takes over. It must not take the planted login over (nor its expiry), must
    //    repair the tenant's Secret, and no other namespace may ever hold the planted password.
    first.kill();
    let ours = must_get(&as_tenant, &h.secret_name).await;
    as_tenant
        .replace(&h.secret_name, &PostParams::default(), &poisoned(&ours))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(holds_planted(
        &must_get(&admin_tenant_ns, &h.secret_name).await
    ));
    let second = h.start_as("second", &["--token-mode", "workerRole"]);
    wait_until(
        Duration::from_secs(30),
        "the new process to lead",
        || async { second.metric("acr_helper_leader").await == Some(1.0) },
    )
    .await;
    let leading = Instant::now();
    let mut repaired_after = None;
    // Sampled for 20 s from the takeover, as the attack was measured.
    while leading.elapsed() < Duration::from_secs(20) {
        for other in &others {
            let s = must_get(&h.secrets(&other.name), &h.secret_name).await;
            assert!(
                !holds_planted(&s),
                "{} holds the tenant's password {:.2}s after the leader change",
                other.name,
                leading.elapsed().as_secs_f64()
            );
        }
        if repaired_after.is_none()
            && !holds_planted(&must_get(&admin_tenant_ns, &h.secret_name).await)
        {
            repaired_after = Some(leading.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let repaired_after = repaired_after.unwrap_or_else(|| {
        panic!("the tenant's Secret still holds the planted password 20 s after the leader change")
    });
    eprintln!(
        "repaired {:.2}s after the new leader took over",
        repaired_after.as_secs_f64()
    );
    assert!(
        repaired_after <= Duration::from_secs(10),
        "repaired only after {repaired_after:?}"
    );
    // Every Secret holds a login that works, and the refresh follows the real expiry, not 2099.
    for ns in [&tenant_ns.name, &others[0].name, &others[1].name] {
        let s = must_get(&h.secrets(ns), &h.secret_name).await;
        for login in dockerconfig(&s)["auths"]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .values()
        {
            let r = h
                .fake
                .registry_login(
                    login["username"].as_str().unwrap_or_default(),
                    login["password"].as_str().unwrap_or_default(),
                )
                .await;
            assert_eq!(r["valid"], Value::Bool(true), "{ns}: {r}");
        }
        let expires: jiff::Timestamp = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("aliyun-acr-credential-helper/expires-at"))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{ns}: no expiry"));
        assert!(
            expires < jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
            "{ns}: expiry {expires} is not the cloud's"
        );
    }
    let series =
        format!("acr_helper_token_expiry_timestamp_seconds{{acr_instance=\"{INSTANCE_ID}\"}}");
    let expiry = second
        .metric(&series)
        .await
        .unwrap_or_else(|| panic!("the new leader reports no expiry for {INSTANCE_ID}"));
    assert!(
        expiry < (jiff::Timestamp::now().as_second() + 24 * 3600) as f64,
        "the new leader plans its refresh from {expiry}"
    );
}

/// The answer to a write the chart's policies or RBAC must refuse: 403 (RBAC, or a policy) or
/// 422 (a policy). Anything else (success, 404, 500) fails the test.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
            support::leaks::text("errors", &s.message);
            s.message
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// The chart installed as release `release` into `ns` (nothing runs: there is no kubelet), and a
/// client holding its ServiceAccount's token, as an attacker who took it from a controller pod.
async fn chart_service_account(admin: &Client, release: &str, ns: &str, set: &[&str]) -> Client {
    let mut args = vec![
        "install",
        release,
        "charts/aliyun-acr-credential-helper",
        "-n",
        ns,
        "--wait=false",
        "--set",
        "tokenMode=workerRole",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    support::ok(support::helm(&args), "helm install");
    let token =
        support::service_account_token(admin, ns, "aliyun-acr-credential-helper", &[], 3600).await;
    let client = control_plane().client_with_token(&token).await;
    // The API server takes new policies up through its watches: first a sign they are in force,
    // a dry-run write they refuse (a Secret of another name).
    let probe: Secret = serde_json::from_value(json!({
        "metadata": {"name": "policy-probe", "labels": {"app.kubernetes.io/managed-by": "aliyun-acr-credential-helper"}},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    wait_until(Duration::from_secs(30), "the chart's policies in force", || async {
        matches!(api.create(&dry, &probe).await, Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422)
    })
    .await;
    client
}

#[tokio::test]
async fn the_controllers_own_token_cannot_mint_tokens_register_webhooks_or_rewrite_service_accounts()
 {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use kube::api::{Patch, PatchParams};

    let admin = control_plane().client().await;
    let release_ns = TestNamespace::create(&admin, "sec-release").await;
    let tenant_ns = TestNamespace::create(&admin, "sec-tenant").await;
    let victim_ns = TestNamespace::create(&admin, "sec-victim").await;
    let release = format!("acr-sec-{:08x}", rand::random::<u32>());
    let full = format!("{release}-aliyun-acr-credential-helper");
    let stolen = chart_service_account(&admin, &release, &release_ns.name, &[]).await;
    let pull = "aliyun-acr-credential-helper";

    // A privileged ServiceAccount whose token the attacker wants.
    support::create_service_account(&admin, &victim_ns.name, "deployer", &[]).await;
    let binding = format!("sec-victim-admin-{}", victim_ns.name);
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": victim_ns.name}],
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // 1. Minting: a service-account-token Secret under the pull Secret's name (the one name it
    //    may read back), labelled as ours, is refused, and so is any other name or type.
    let token_secret = |ns: &str, name: &str, type_: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "aliyun-acr-credential-helper"},
                "annotations": {"kubernetes.io/service-account.name": "deployer"},
            },
            "type": type_,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let victims = Api::<Secret>::namespaced(stolen.clone(), &victim_ns.name);
    let why = refused(
        "minting a token Secret",
        victims
            .create(
                &PostParams::default(),
                &token_secret(&victim_ns.name, pull, "kubernetes.io/service-account-token"),
            )
            .await,
    );
    eprintln!("minting refused: {why}");
    match Api::<Secret>::namespaced(admin.clone(), &victim_ns.name)
        .get_opt(pull)
        .await
    {
        Ok(None) => {}
        other => panic!("the token Secret must not exist: {other:?}"),
    }
    refused(
        "a Secret of another name",
        victims
            .create(
                &PostParams::default(),
                &token_secret(&victim_ns.name, "exfil", "Opaque"),
            )
            .await,
    );
    refused(
        "an Opaque Secret under the pull Secret's name",
        victims
            .create(
                &PostParams::default(),
                &token_secret(&victim_ns.name, pull, "Opaque"),
            )
            .await,
    );
    refused(
        "a token Secret under its own state Secret's name",
        Api::<Secret>::namespaced(stolen.clone(), &release_ns.name)
            .create(
                &PostParams::default(),
                &token_secret(
                    &release_ns.name,
                    "aliyun-acr-credential-helper-state",
                    "kubernetes.io/service-account-token",
                ),
            )
            .await,
    );
    // What the controller does write is still allowed (the policy is no blanket denial).
    let pull_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": pull, "labels": {"app.kubernetes.io/managed-by": "aliyun-acr-credential-helper"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "eyJhdXRocyI6e319"},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(stolen.clone(), &tenant_ns.name)
        .create(&PostParams::default(), &pull_secret)
        .await
        .unwrap_or_else(|e| panic!("the pull Secret itself must be allowed: {e}"));
    // A tenant's own Secret that happens to hold the pull Secret's name (no label of ours) cannot
    // be deleted with the controller's token either.
    let theirs: Secret =
        serde_json::from_value(json!({"metadata": {"name": pull}, "stringData": {"k": "v"}}))
            .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(admin.clone(), &victim_ns.name)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    refused(
        "deleting a Secret that is not ours",
        victims.delete(pull, &Default::default()).await,
    );

    // 2. Webhooks: none of another name can be created, and its own registration can only hold
    //    its two webhooks, calling its own Service, on CREATE of ServiceAccounts or Pods.
    let mwcs = Api::<MutatingWebhookConfiguration>::all(stolen.clone());
    let evil = |name: &str, resources: &str, target: Value| -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.aliyun-acr-credential-helper.io",
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": [resources]}],
                "clientConfig": target,
            }],
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let elsewhere = json!({"url": "https://attacker.example.com/mutate"});
    refused(
        "registering a webhook of another name",
        mwcs.create(
            &PostParams::default(),
            &evil("evil-pods", "pods", elsewhere.clone()),
        )
        .await,
    );
    let apply = PatchParams::apply("attacker").force();
    refused(
        "pointing its registration at another server",
        mwcs.patch(
            &full,
            &apply,
            &Patch::Apply(&evil(&full, "pods", elsewhere)),
        )
        .await,
    );
    let own_service = json!({"service": {"name": "aliyun-acr-credential-helper", "namespace": release_ns.name, "path": "/mutate-pods"}});
    refused(
        "widening its registration to every resource",
        mwcs.patch(
            &full,
            &apply,
            &Patch::Apply(&evil(&full, "*", own_service.clone())),
        )
        .await,
    );
    mwcs.patch(
        &full,
        &apply,
        &Patch::Apply(&evil(&full, "pods", own_service)),
    )
    .await
    .unwrap_or_else(|e| panic!("its own Pod webhook must be allowed: {e}"));
    refused(
        "creating a Lease",
        Api::<Lease>::namespaced(stolen.clone(), &release_ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "other"}}))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await,
    );

    // 3. ServiceAccounts: only its own imagePullSecrets entry may come or go.
    support::create_service_account(&admin, &tenant_ns.name, "app", &["theirs"]).await;
    let sas = Api::<ServiceAccount>::namespaced(stolen.clone(), &tenant_ns.name);
    let merge = |v: Value| Patch::Merge(v);
    let pp = PatchParams::default();
    for (what, patch) in [
        (
            "automountServiceAccountToken",
            json!({"automountServiceAccountToken": true}),
        ),
        ("secrets", json!({"secrets": [{"name": "exfil"}]})),
        (
            "a foreign imagePullSecrets entry",
            json!({"imagePullSecrets": [{"name": pull}]}),
        ),
        ("labels", json!({"metadata": {"labels": {"owned": "yes"}}})),
        (
            "annotations",
            json!({"metadata": {"annotations": {"eks.amazonaws.com/role-arn": "x"}}}),
        ),
    ] {
        refused(what, sas.patch("app", &pp, &merge(patch)).await);
    }
    sas.patch(
        "app",
        &pp,
        &merge(json!({"imagePullSecrets": [{"name": "theirs"}, {"name": pull}]})),
    )
    .await
    .unwrap_or_else(|e| panic!("adding its own reference must be allowed: {e}"));
    let after = Api::<ServiceAccount>::namespaced(admin.clone(), &tenant_ns.name)
        .get("app")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        support::reference_names(after.image_pull_secrets),
        ["theirs", pull]
    );
    assert_eq!(after.automount_service_account_token, None);

    // 4. The configuration: only cleanup's mark, never the data.
    let cms = Api::<ConfigMap>::namespaced(stolen.clone(), &release_ns.name);
    refused(
        "rewriting acr-configuration",
        cms.patch(
            "acr-configuration",
            &pp,
            &merge(json!({"data": {"watch-namespace": "all"}})),
        )
        .await,
    );
    cms.patch(
        "acr-configuration",
        &pp,
        &merge(
            json!({"metadata": {"annotations": {"aliyun-acr-credential-helper/cleanup": "now"}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("cleanup's mark must be allowed: {e}"));

    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .delete(&binding, &Default::default())
        .await;
    support::ok(
        support::helm(&["uninstall", &release, "-n", &release_ns.name, "--no-hooks"]),
        "helm uninstall",
    );
}

#[tokio::test]
async fn metrics_can_stay_on_localhost_while_the_probes_answer_on_the_pod_address() {
    let h = Harness::new("health", &default_config(), "cluster-admin").await;
    let port = support::harness::free_port();
    let health = format!("127.0.0.1:{port}");
    let c = h.start(&["--health-addr", &health, "--token-mode", "workerRole"]);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    wait_until(
        Duration::from_secs(30),
        "/livez on --health-addr",
        || async { get(format!("http://{health}/livez")).await == Some(200) },
    )
    .await;
    assert!(matches!(
        get(format!("http://{health}/readyz")).await,
        Some(200 | 503)
    ));
    assert_eq!(
        get(format!("http://{health}/metrics")).await,
        Some(404),
        "/metrics is not served there"
    );
    assert_eq!(get(format!("{}/metrics", c.metrics_url)).await, Some(200));
}

/// The registry domains a pull Secret holds logins for.
fn domains_of(s: &Secret) -> Vec<String> {
    support::harness::domains(&dockerconfig(s))
}

#[tokio::test]
async fn a_namespace_scoped_to_one_team_never_holds_another_teams_password() {
    use kube::api::{Patch, PatchParams};
    const A_DOMAINS: [&str; 2] = [
        "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        "fake-registry.cn-hangzhou.cr.aliyuncs.com",
    ];
    const B_DOMAIN: &str = "other-registry.ap-southeast-1.cr.aliyuncs.com";
    let h = Harness::new("scope", &default_config(), "cluster-admin").await;
    let team_a = TestNamespace::create(&h.client, "scope-a").await;
    let team_b = TestNamespace::create(&h.client, "scope-b").await;
    let label = |ns: &str, value: Option<&str>| {
        let client = h.client.clone();
        let ns = ns.to_owned();
        let value = value.map(str::to_owned);
        async move {
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
                .patch(
                    &ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"team": value}}})),
                )
                .await
                .unwrap_or_else(|e| panic!("label {ns}: {e}"));
        }
    };
    label(&team_b.name, Some("b")).await;
    support::create_service_account(&h.client, &team_b.name, "builder", &[]).await;
    let registry_info = format!(
        "- instanceId: {INSTANCE_ID}\n  namespaces: {}\n- instanceId: {OTHER_INSTANCE_ID}\n  regionId: {OTHER_REGION}\n  namespaceSelector: team=b\n  serviceAccounts: builder\n",
        team_a.name
    );
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", "scope-nothing-else"),
        ("acr-registry-info", registry_info.as_str()),
    ])
    .await;
    // Team A's namespace: only A's logins; its default ServiceAccount (the global default).
    h.wait_secret(&team_a.name).await;
    h.wait_reference(&team_a.name, "default", true).await;
    let a = must_get(&h.secrets(&team_a.name), &h.secret_name).await;
    assert_eq!(domains_of(&a), A_DOMAINS);
    // Team B's: only B's login, and only `builder` (B's own serviceAccounts) is patched.
    h.wait_secret(&team_b.name).await;
    h.wait_reference(&team_b.name, "builder", true).await;
    let b = must_get(&h.secrets(&team_b.name), &h.secret_name).await;
    assert_eq!(domains_of(&b), [B_DOMAIN]);
    assert!(!h.has_reference(&team_b.name, "default").await);
    let b_password = dockerconfig(&b)["auths"][B_DOMAIN]["password"].clone();
    assert!(
        !dockerconfig(&a)
            .to_string()
            .contains(b_password.as_str().unwrap_or("-"))
    );
    for (s, domains) in [(&a, &A_DOMAINS[..]), (&b, &[B_DOMAIN][..])] {
        for d in domains {
            let login = &dockerconfig(s)["auths"][*d];
            let r = h
                .fake
                .registry_login(
                    login["username"].as_str().unwrap_or_default(),
                    login["password"].as_str().unwrap_or_default(),
                )
                .await;
            assert_eq!(r["valid"], Value::Bool(true), "{d}: {r}");
        }
    }
    // Labelling team A's namespace `team=b` adds B's login there too; unlabelling team B's
    // takes its Secret and reference away.
    label(&team_a.name, Some("b")).await;
    wait_until(
        Duration::from_secs(30),
        "team A's Secret with B's login added",
        || async {
            domains_of(&must_get(&h.secrets(&team_a.name), &h.secret_name).await).len() == 3
        },
    )
    .await;
    label(&team_b.name, None).await;
    h.wait_reference(&team_b.name, "builder", false).await;
    wait_until(
        Duration::from_secs(30),
        "team B's Secret removed",
        || async { support::is_absent(&h.secrets(&team_b.name), &h.secret_name).await },
    )
    .await;
}

/// A control plane of the test's own, with `ACR_HELPER_APISERVER_FLAGS` set to `flags`; stopped
/// when dropped.
struct OwnControlPlane(std::path::PathBuf);

impl OwnControlPlane {
    fn up(flags: &str) -> OwnControlPlane {
        let out =
            std::process::Command::new(support::repo_root().join("tests/cluster/control-plane.sh"))
                .args(["up", "--owner-pid", &std::process::id().to_string()])
                .env("ACR_HELPER_APISERVER_FLAGS", flags)
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("control-plane.sh: {e}"));
        assert!(out.status.success(), "control-plane.sh up failed");
        OwnControlPlane(std::path::PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        ))
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(support::repo_root().join("tests/cluster/control-plane.sh"))
                .arg("down")
                .arg(&self.0)
                .output();
    }
}

#[tokio::test]
async fn an_api_server_that_cannot_stream_lists_is_listed_in_small_pages() {
    // The API server of Kubernetes 1.33 (WatchList off by default) refuses sendInitialEvents.
    let cp = OwnControlPlane::up("--feature-gates=WatchList=false");
    let kubeconfig = cp.0.join("kubeconfig");
    let client = {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Client::try_from(cfg).unwrap_or_else(|e| panic!("{e}"))
    };
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "paged"}}))
            .unwrap_or_else(|e| panic!("{e}"));
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sas =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "paged");
    wait_until(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { !support::is_absent(&sas, "default").await },
    )
    .await;
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
        "data": {"watch-namespace": "paged", "acr-registry-info": ENTERPRISE},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fake = FakeCloud::start(&default_config());
    let log = cp.0.join("logs/controller.log");
    let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let mut controller = std::process::Command::new(support::harness::BINARY)
        .args(fake.cloud_args())
        .args(["--token-mode", "workerRole", "--log-format", "plain"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(out.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = Api::<Secret>::namespaced(client.clone(), "paged");
    wait_until(
        Duration::from_secs(60),
        "the pull Secret and the reference",
        || async {
            !support::is_absent(&secrets, "aliyun-acr-credential-helper").await
                && sas.get("default").await.is_ok_and(|sa| {
                    support::reference_names(sa.image_pull_secrets)
                        .contains(&"aliyun-acr-credential-helper".to_owned())
                })
        },
    )
    .await;
    let _ = controller.kill();
    let _ = controller.wait();
    support::leaks::file("controller", &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("does not stream initial lists"),
        "the fallback was not taken:\n{text}"
    );
    // The audit log shows the paged lists (LIST with limit=25), never a page of 500.
    let audit = std::fs::read_to_string(cp.0.join("audit.log")).unwrap_or_default();
    let lists: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("aliyun-acr-credential-helper/"))
        })
        .filter(|e| e["verb"] == "list" && e["objectRef"]["resource"] == "serviceaccounts")
        .filter_map(|e| e["requestURI"].as_str().map(str::to_owned))
        .collect();
    assert!(!lists.is_empty(), "no ServiceAccount list in the audit log");
    assert!(lists.iter().all(|u| u.contains("limit=25")), "{lists:?}");
}
