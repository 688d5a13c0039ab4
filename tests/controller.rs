//! The controller end to end: the real binary against the local API server and the fake cloud.
//! Every wait has a deadline; nothing sleeps for a fixed time to let something happen.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::fake_cloud::*;
use support::harness::{BINARY, Harness, domains, is_marker};
use support::{TestNamespace, wait_until};

const ENTERPRISE: &str = "- instanceId: cri-fakeinstance0001\n";
const ENTERPRISE_DOMAINS: [&str; 2] = [
    "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
    "fake-registry.cn-hangzhou.cr.aliyuncs.com",
];

async fn create_sa(client: &Client, ns: &str, name: &str, pull_secrets: &[&str]) {
    support::create_service_account(client, ns, name, pull_secrets).await;
}

/// Every login in the Secret works at the fake registry right now.
async fn assert_logins_valid(h: &Harness, doc: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let auths = doc["auths"].as_object().cloned().unwrap_or_default();
    assert!(!auths.is_empty(), "no logins in {doc}");
    for (domain, login) in auths {
        let user = login["username"].as_str().unwrap_or_default();
        let pass = login["password"].as_str().unwrap_or_default();
        let r = h.fake.registry_login(user, pass).await;
        assert_eq!(r["valid"], json!(true), "{domain}: {r}");
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        assert_eq!(
            login["auth"],
            json!(auth),
            "{domain}: auth = base64(username:password)"
        );
        out.push(r);
    }
    out
}

#[tokio::test]
async fn selection_of_namespaces_and_service_accounts_follows_the_config() {
    let h = Harness::new("sel", &default_config(), "cluster-admin").await;
    let a = TestNamespace::create(&h.client, "sel-a").await;
    let b = TestNamespace::create(&h.client, "sel-b").await;
    for ns in [&a.name, &b.name] {
        create_sa(&h.client, ns, "builder", &[]).await;
        create_sa(&h.client, ns, "other", &[]).await;
    }
    let _c = h.start(&["--token-mode", "workerRole"]);

    // A list of namespaces; service-account defaults to the SA named default.
    let list = format!("{}, {}", a.name, b.name);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    for ns in [&a.name, &b.name] {
        h.wait_reference(ns, "default", true).await;
        let doc = h.wait_secret(ns).await;
        assert_eq!(domains(&doc), ENTERPRISE_DOMAINS);
        assert_logins_valid(&h, &doc).await;
        assert!(!h.has_reference(ns, "builder").await);
    }

    // A list of ServiceAccounts: builder gains the reference, default loses it.
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("service-account", "builder"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&a.name, "builder", true).await;
    h.wait_reference(&a.name, "default", false).await;
    assert!(!h.has_reference(&a.name, "other").await);

    // `*`: every ServiceAccount, including one created later.
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    for sa in ["default", "builder", "other"] {
        h.wait_reference(&b.name, sa, true).await;
    }
    create_sa(&h.client, &a.name, "late", &[]).await;
    h.wait_reference(&a.name, "late", true).await;

    // `all`: every namespace, including one created later.
    h.apply_config(&[
        ("watch-namespace", "ALL"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    let c = TestNamespace::create(&h.client, "sel-late").await;
    h.wait_reference(&c.name, "default", true).await;
    h.wait_secret(&c.name).await;
    h.wait_secret("default").await;

    // The default: only the namespace named default.
    h.apply_config(&[("acr-registry-info", ENTERPRISE)]).await;
    h.wait_reference("default", "default", true).await;
    wait_until(
        Duration::from_secs(30),
        "the late namespace to be cleaned",
        || async { !h.secret_exists(&c.name).await && !h.has_reference(&c.name, "default").await },
    )
    .await;
    assert!(!h.has_reference(&a.name, "late").await);

    // Leave nothing behind in the shared namespace.
    support::run_cleanup(&h.cleanup_flags());
}

#[tokio::test]
async fn several_instances_personal_edition_and_another_region_in_one_secret() {
    let h = Harness::new("multi", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "multi-ws").await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    let info = format!(
        "{ENTERPRISE}- instanceId: {OTHER_INSTANCE_ID}\n  regionId: {OTHER_REGION}\n- regionId: {OTHER_REGION}\n- instanceId: \"\"\n  domains: custom.example.com\n"
    );
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", info.as_str()),
    ])
    .await;
    let doc = h.wait_secret(&ns.name).await;
    let mut want: Vec<String> = ENTERPRISE_DOMAINS.iter().map(|s| (*s).to_owned()).collect();
    want.push("other-registry.ap-southeast-1.cr.aliyuncs.com".into());
    want.extend(acr_helper::render::personal_domains(OTHER_REGION));
    want.push("custom.example.com".into());
    want.sort();
    assert_eq!(domains(&doc), want);
    let logins = assert_logins_valid(&h, &doc).await;
    let instances: std::collections::BTreeSet<String> = logins
        .iter()
        .filter_map(|l| l["instance"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        instances.into_iter().collect::<Vec<_>>(),
        vec![
            INSTANCE_ID.to_owned(),
            OTHER_INSTANCE_ID.to_owned(),
            format!("personal/{OTHER_REGION}"),
            format!("personal/{INSTANCE_REGION}"),
        ]
    );
    // Each instance was asked at its own region's endpoint, once.
    assert_eq!(
        h.fake
            .calls_in_region("GetAuthorizationToken", OTHER_REGION)
            .await,
        1
    );
    assert_eq!(
        h.fake
            .calls_in_region("GetAuthorizationToken", INSTANCE_REGION)
            .await,
        1
    );
    assert_eq!(
        h.fake
            .calls_in_region("GetPersonalAuthorizationToken", OTHER_REGION)
            .await,
        1
    );
    // The disabled endpoint's domain is not there.
    assert!(!domains(&doc).contains(&"disabled.example.com".to_owned()));
    let secret = h
        .secrets(&ns.name)
        .get(&h.secret_name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("aliyun-acr-credential-helper")
    );
    let ann = secret.metadata.annotations.unwrap_or_default();
    assert!(
        ann.contains_key("aliyun-acr-credential-helper/expires-at"),
        "{ann:?}"
    );
    assert_eq!(
        ann.get("aliyun-acr-credential-helper/instances")
            .map(String::as_str),
        Some(
            "cri-fakeinstance0001,cri-fakeinstance0002,personal/ap-southeast-1,personal/cn-hangzhou"
        )
    );
}

/// One namespace served with `info` under `mode`; returns the login the Secret holds.
async fn serve_one(h: &Harness, extra: &[&str], data: &[(&str, &str)]) -> (TestNamespace, Value) {
    let ns = TestNamespace::create(&h.client, "cred").await;
    let mut data: Vec<(&str, &str)> = data.to_vec();
    data.push(("watch-namespace", ns.name.as_str()));
    let c = h.start(extra);
    h.apply_config(&data).await;
    let doc = h.wait_secret(&ns.name).await;
    h.wait_reference(&ns.name, "default", true).await;
    let logins = assert_logins_valid(h, &doc).await;
    drop(c);
    (ns, logins.into_iter().next().unwrap_or(Value::Null))
}

#[tokio::test]
async fn custom_access_key_and_assume_role_on_it() {
    let h = Harness::new("ak", &default_config(), "cluster-admin").await;
    let info = format!(
        "- instanceId: {INSTANCE_ID}\n  customAccessKey: {ACCESS_KEY_ID}\n  customAccessKeySecret: {ACCESS_KEY_SECRET}\n"
    );
    let (_ns, login) = serve_one(
        &h,
        &["--token-mode", "workerRole"],
        &[("acr-registry-info", info.as_str())],
    )
    .await;
    assert_eq!(login["principal"], "user/ci");
    assert_eq!(
        h.fake.calls("MetadataCredentials").await,
        0,
        "a custom AccessKey needs no base identity"
    );

    let info = format!("{info}  assumeRoleARN: {ROLE_ARN}\n  expireDuration: 900\n");
    let (_ns, login) = serve_one(
        &h,
        &["--token-mode", "workerRole"],
        &[("acr-registry-info", info.as_str())],
    )
    .await;
    assert!(
        login["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(ROLE_ARN),
        "{login}"
    );
    assert_eq!(h.fake.calls("MetadataCredentials").await, 0);
}

/// The principal the first login of `ns`'s Secret was issued to.
async fn principal_of(h: &Harness, ns: &str) -> String {
    let doc = h.wait_secret(ns).await;
    let logins = assert_logins_valid(h, &doc).await;
    logins
        .first()
        .and_then(|l| l["principal"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Polls until `ns`'s Secret holds a login issued to a principal for which `want` holds.
async fn wait_principal(h: &Harness, ns: &str, what: &str, want: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let p = principal_of(h, ns).await;
        if want(&p) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ns}: after 30 s the Secret's login is still of {p}, not {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_new_identity_takes_effect_at_once_and_a_restart_never_adopts_another_identity() {
    // Long-lived passwords: nothing here may wait for a refresh point.
    let h = Harness::new("ident", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "ident").await;
    let plain = format!(
        "- instanceId: {INSTANCE_ID}\n  customAccessKey: {ACCESS_KEY_ID}\n  customAccessKeySecret: {ACCESS_KEY_SECRET}\n"
    );
    let assumed = format!("{plain}  assumeRoleARN: {ROLE_ARN}\n  expireDuration: 3600\n");
    let h = &h;
    let ns_name = ns.name.clone();
    let apply = |info: String| {
        let ns_name = ns_name.clone();
        async move {
            h.apply_config(&[
                ("acr-registry-info", info.as_str()),
                ("watch-namespace", ns_name.as_str()),
            ])
            .await;
        }
    };
    apply(plain.clone()).await;
    let c = h.start(&["--token-mode", "workerRole"]);
    wait_principal(h, &ns.name, "user/ci", |p| p == "user/ci").await;

    // An edit that changes who the logins are issued to: the Secret gets a login of the new
    // identity now, not at the old login's refresh point (an hour away).
    apply(assumed.clone()).await;
    wait_principal(h, &ns.name, ROLE_ARN, |p| p.starts_with(ROLE_ARN)).await;
    drop(c);

    // Back to the plain AccessKey while no controller runs: the new process finds a fresh Secret
    // in place, but of another identity, and must not take it over.
    apply(plain.clone()).await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    wait_principal(h, &ns.name, "user/ci", |p| p == "user/ci").await;
}

#[tokio::test]
async fn worker_role_hardened_and_plain_fallback_and_assume_role_on_it() {
    let mut cfg = default_config();
    cfg["metadata"]["require_token"] = json!(true);
    let h = Harness::new("worker", &cfg, "cluster-admin").await;
    let (_ns, login) = serve_one(
        &h,
        &["--token-mode", "workerRole"],
        &[("acr-registry-info", ENTERPRISE)],
    )
    .await;
    assert_eq!(login["principal"], format!("worker-role/{WORKER_ROLE}"));
    assert!(h.fake.calls("MetadataToken").await >= 1, "hardened mode");

    // A metadata service without hardened mode: the plain fallback.
    h.fake
        .configure(json!({"metadata": {"role": WORKER_ROLE, "region": INSTANCE_REGION, "hardened_supported": false, "require_token": false}}))
        .await;
    let before = h.fake.calls("MetadataCredentials").await;
    let info = format!("{ENTERPRISE}  assumeRoleARN: {ROLE_ARN}\n");
    let (_ns, login) = serve_one(
        &h,
        &["--token-mode", "workerRole"],
        &[("acr-registry-info", info.as_str())],
    )
    .await;
    assert!(
        login["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(ROLE_ARN),
        "{login}"
    );
    assert_eq!(h.fake.calls("MetadataCredentials").await, before + 1);
}

fn addon_secret(creds: &Value) -> Secret {
    addon_token_secret(creds, "0123456789abcdef")
}

#[tokio::test]
async fn managed_role_follows_the_rotated_addon_token_and_auto_picks_it() {
    let h = Harness::new("managed", &default_config(), "cluster-admin").await;
    let secrets = h.secrets(&h.config_ns.name);
    // Short-lived credentials, so the controller re-reads the Secret soon.
    let first = h.fake.mint_sts("managed-role-1", 20).await;
    secrets
        .create(&PostParams::default(), &addon_secret(&first))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addon = format!("{}/addon.aliyuncsmanagedacrrole.token", h.config_ns.name);
    let ns = TestNamespace::create(&h.client, "managed-ws").await;
    // `auto` on a cluster created today resolves to managedRole.
    let _c = h.start(&["--token-mode", "auto", "--addon-token-secret", &addon]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "15s"),
    ])
    .await;
    let doc = h.wait_secret(&ns.name).await;
    let logins = assert_logins_valid(&h, &doc).await;
    assert_eq!(logins[0]["principal"], "managed-role-1");
    assert_eq!(h.fake.calls("MetadataCredentials").await, 0);

    // ACK rotates the token Secret; the next refresh uses the new credentials.
    let second = h.fake.mint_sts("managed-role-2", 3600).await;
    secrets
        .replace(
            "addon.aliyuncsmanagedacrrole.token",
            &PostParams::default(),
            &addon_secret(&second),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        Duration::from_secs(40),
        "a password obtained with the rotated credentials",
        || async {
            let Ok(s) = h.secrets(&ns.name).get(&h.secret_name).await else {
                return false;
            };
            let doc = support::harness::dockerconfig(&s);
            let Some((_, login)) = doc["auths"]
                .as_object()
                .and_then(|m| m.iter().next().map(|(k, v)| (k.clone(), v.clone())))
            else {
                return false;
            };
            let r = h
                .fake
                .registry_login(
                    login["username"].as_str().unwrap_or_default(),
                    login["password"].as_str().unwrap_or_default(),
                )
                .await;
            r["valid"] == json!(true) && r["principal"] == "managed-role-2"
        },
    )
    .await;
}

#[tokio::test]
async fn rrsa_with_a_projected_token_and_assume_role_on_it() {
    let cp = support::control_plane();
    let issuer = cp
        .config()
        .await
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let mut cfg = default_config();
    cfg["oidc_providers"] = json!({
        OIDC_PROVIDER_ARN: {
            "issuer": issuer,
            "jwks_url": format!("{issuer}/openid/v1/jwks"),
            "ca_file": cp.dir.as_ref().map(|d| d.join("pki/ca.crt")),
            "audience": "sts.aliyuncs.com"
        }
    });
    // The role trusts the helper's ServiceAccount; the harness's namespace is only known once it
    // exists, so trust is set right after.
    let h = Harness::new("rrsa", &cfg, "cluster-admin").await;
    let subject = format!(
        "system:serviceaccount:{}:aliyun-acr-credential-helper",
        h.config_ns.name
    );
    let mut roles = default_config()["roles"].clone();
    roles[RRSA_ROLE_ARN]["oidc_trust"]["subjects"] = json!([subject]);
    h.fake.configure(json!({"roles": roles})).await;

    // The projected token the chart mounts: audience sts.aliyuncs.com.
    let token = support::service_account_token(
        &h.client,
        &h.config_ns.name,
        "aliyun-acr-credential-helper",
        &["sts.aliyuncs.com"],
        3600,
    )
    .await;
    let token_file = std::env::temp_dir().join(format!("rrsa-token-{}", h.config_ns.name));
    std::fs::write(&token_file, token).unwrap_or_else(|e| panic!("{e}"));
    let token_path = token_file.display().to_string();

    let info = format!(
        "{ENTERPRISE}  rrsaRoleARN: {RRSA_ROLE_ARN}\n  rrsaOIDCProviderRoleARN: {OIDC_PROVIDER_ARN}\n"
    );
    let args = [
        "--token-mode",
        "workerRole",
        "--oidc-token-file",
        token_path.as_str(),
    ];
    let (_ns, login) = serve_one(
        &h,
        &args,
        &[
            ("acr-registry-info", info.as_str()),
            ("rrsa", "enable: true"),
        ],
    )
    .await;
    assert!(
        login["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(RRSA_ROLE_ARN),
        "{login}"
    );
    assert_eq!(h.fake.calls("MetadataCredentials").await, 0);

    let chained = format!("{info}  assumeRoleARN: {ROLE_ARN}\n");
    let (_ns, login) = serve_one(
        &h,
        &args,
        &[
            ("acr-registry-info", chained.as_str()),
            ("rrsa", "enable: true"),
        ],
    )
    .await;
    assert!(
        login["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(ROLE_ARN),
        "{login}"
    );
    assert!(h.fake.calls("AssumeRoleWithOIDC").await >= 2);
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test]
async fn refresh_rewrites_before_expiry_and_nothing_is_written_when_nothing_changes() {
    let mut cfg = default_config();
    cfg["lifetimes"] = json!({"registry_seconds": 20});
    let h = Harness::new("refresh", &cfg, "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "refresh-ws").await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "15s"),
    ])
    .await;
    h.wait_secret(&ns.name).await;
    // Several refresh cycles. The password the Secret holds is checked every 250 ms and must
    // always work: a refresh that came late would leave an expired one there.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} passwords in 90 s",
            seen.len()
        );
        let s = h
            .secrets(&ns.name)
            .get(&h.secret_name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let doc = support::harness::dockerconfig(&s);
        let login = &doc["auths"][ENTERPRISE_DOMAINS[0]];
        let user = login["username"].as_str().unwrap_or_default().to_owned();
        let pass = login["password"].as_str().unwrap_or_default().to_owned();
        let r = h.fake.registry_login(&user, &pass).await;
        assert_eq!(
            r["valid"],
            json!(true),
            "the Secret held an unusable password: {r}"
        );
        seen.insert(pass);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Now long-lived tokens: after the next refresh nothing changes, so nothing is written.
    h.fake.configure(json!({"lifetimes": {}})).await;
    wait_until(Duration::from_secs(40), "a long-lived password", || async {
        let s = h
            .secrets(&ns.name)
            .get_opt(&h.secret_name)
            .await
            .unwrap_or_else(|e| panic!("get {}/{}: {e}", ns.name, h.secret_name));
        s.and_then(|s| s.metadata.annotations)
            .and_then(|a| a.get("aliyun-acr-credential-helper/expires-at").cloned())
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .is_some_and(|e| e.duration_since(jiff::Timestamp::now()).as_secs() > 600)
    })
    .await;
    let before = h.audited_writes().len();
    // Trigger reconciles without a change: touch an unrelated label on the namespace and the SA.
    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(h.client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.service_accounts(&ns.name)
        .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The controller has seen both touches once it has acted on later changes of both kinds;
    // then (and for a short margin, for a reconcile already under way) nothing was written but
    // the marker's own writes.
    let _marker = h.marker().await;
    support::holds_for(Duration::from_secs(2), || async {
        let writes: Vec<Value> = h
            .audited_writes()
            .into_iter()
            .skip(before)
            .filter(|e| !is_marker(e["objectRef"]["namespace"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            writes.is_empty(),
            "the controller wrote although nothing changed: {writes:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn foreign_image_pull_secrets_survive_including_a_concurrent_writer() {
    let h = Harness::new("foreign", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "foreign-ws").await;
    create_sa(&h.client, &ns.name, "app", &["first", "second"]).await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("service-account", "app"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&ns.name, "app", true).await;
    assert_eq!(
        h.pull_secrets(&ns.name, "app").await,
        Some(vec!["first".into(), "second".into(), h.secret_name.clone()])
    );

    // Another client keeps adding entries while the controller removes and re-adds its own.
    let sas = h.service_accounts(&ns.name);
    let writer = {
        let sas = sas.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                loop {
                    let Ok(sa) = sas.get("app").await else { break };
                    let mut refs = sa.image_pull_secrets.clone().unwrap_or_default();
                    refs.push(LocalObjectReference {
                        name: format!("extra-{i}"),
                    });
                    let patch = json!({"metadata": {"resourceVersion": sa.metadata.resource_version}, "imagePullSecrets": refs});
                    match sas
                        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    for round in 0..3 {
        let sa_list = if round % 2 == 0 { "default" } else { "app" };
        h.apply_config(&[
            ("watch-namespace", ns.name.as_str()),
            ("service-account", sa_list),
            ("acr-registry-info", ENTERPRISE),
        ])
        .await;
        h.wait_reference(&ns.name, "app", round % 2 == 1).await;
    }
    writer.await.unwrap_or_else(|e| panic!("{e}"));
    // The last round selected `default`: app must not carry ours, and keeps every foreign entry.
    h.wait_reference(&ns.name, "default", true).await;
    h.wait_reference(&ns.name, "app", false).await;
    let refs = h.pull_secrets(&ns.name, "app").await.unwrap_or_default();
    let foreign: Vec<&String> = refs.iter().filter(|r| **r != h.secret_name).collect();
    let mut want = vec!["first".to_owned(), "second".to_owned()];
    want.extend((0..30).map(|i| format!("extra-{i}")));
    assert_eq!(
        foreign,
        want.iter().collect::<Vec<_>>(),
        "foreign entries lost or reordered"
    );
}

#[tokio::test]
async fn narrowing_cleanup_and_deleting_the_config() {
    let h = Harness::new("narrow", &default_config(), "cluster-admin").await;
    let a = TestNamespace::create(&h.client, "narrow-a").await;
    let b = TestNamespace::create(&h.client, "narrow-b").await;
    create_sa(&h.client, &a.name, "app", &["mine"]).await;
    // A Secret of someone else's with our label's neighbour name must stay.
    let c = h.start(&["--token-mode", "workerRole"]);
    let list = format!("{},{}", a.name, b.name);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("service-account", "default,app"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&a.name, "app", true).await;
    h.wait_reference(&b.name, "default", true).await;

    // Narrow the namespaces: b loses our Secret and reference.
    h.apply_config(&[
        ("watch-namespace", a.name.as_str()),
        ("service-account", "default,app"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    wait_until(Duration::from_secs(30), "b cleaned", || async {
        !h.secret_exists(&b.name).await && !h.has_reference(&b.name, "default").await
    })
    .await;
    // Narrow the ServiceAccounts: app loses our reference, keeps its own.
    h.apply_config(&[
        ("watch-namespace", a.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&a.name, "app", false).await;
    assert_eq!(
        h.pull_secrets(&a.name, "app").await,
        Some(vec!["mine".into()])
    );
    assert!(h.has_reference(&a.name, "default").await);

    // Deleting the ConfigMap: nothing more is written; what exists stays (README).
    h.delete_config().await;
    wait_until(Duration::from_secs(10), "config_present 0", || async {
        c.metric("acr_helper_config_present").await == Some(0.0)
    })
    .await;
    let writes = h.audited_writes().len();
    let late = TestNamespace::create(&h.client, "narrow-late").await;
    create_sa(&h.client, &a.name, "after-delete", &[]).await;
    // With no configuration the controller acts on nothing, so nothing it does can show it has
    // seen these. The same configuration again, then a marker it serves: by then it has seen
    // the deletion, the namespace and the ServiceAccount (each watch delivers in order), and
    // nothing may have been written but the marker's writes: none while the ConfigMap was gone,
    // and none for them once it is back (it selects neither, and `a` is as it wants it).
    let restored = jiff::Timestamp::now();
    h.apply_config(&[
        ("watch-namespace", a.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    let _marker = h.marker().await;
    support::holds_for(Duration::from_secs(2), || async {
        let since: Vec<Value> = h.audited_writes().into_iter().skip(writes).collect();
        let early: Vec<&Value> = since
            .iter()
            .filter(|e| {
                e["stageTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_none_or(|t| t < restored)
            })
            .collect();
        assert!(
            early.is_empty(),
            "written while the ConfigMap was gone: {early:?}"
        );
        let elsewhere: Vec<&Value> = since
            .iter()
            .filter(|e| !is_marker(e["objectRef"]["namespace"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            elsewhere.is_empty(),
            "written for what the ConfigMap's deletion or the new objects changed: {elsewhere:?}"
        );
    })
    .await;
    assert!(h.secret_exists(&a.name).await && h.has_reference(&a.name, "default").await);
    assert!(!h.secret_exists(&late.name).await);
    assert!(!h.has_reference(&a.name, "after-delete").await);
    drop(c);

    // cleanup removes everything of ours and nothing else.
    support::run_cleanup(&h.cleanup_flags());
    assert!(!h.secret_exists(&a.name).await);
    assert!(!h.has_reference(&a.name, "default").await);
    let labeled = Api::<Secret>::all(h.client.clone())
        .list(
            &kube::api::ListParams::default()
                .labels("app.kubernetes.io/managed-by=aliyun-acr-credential-helper"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        labeled
            .items
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some(h.secret_name.as_str()))
    );
}

#[tokio::test]
async fn a_malformed_edit_keeps_the_previous_config_and_is_reported() {
    let h = Harness::new("malformed", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "malformed-ws").await;
    let c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&ns.name, "default", true).await;

    let bad = "- instanceId: cri-fakeinstance0001\n  assumeRoleARN: not-an-arn\n";
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", bad),
    ])
    .await;
    wait_until(Duration::from_secs(20), "the Warning Event", || async {
        h.config_warnings()
            .await
            .iter()
            .any(|n| n.contains("acr-registry-info[0].assumeRoleARN"))
    })
    .await;
    assert_eq!(c.metric("acr_helper_config_valid").await, Some(0.0));
    // The previous configuration is still in force: take our reference away by hand, and the
    // controller puts it back.
    let patch = json!({"imagePullSecrets": null});
    h.service_accounts(&ns.name)
        .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.wait_reference(&ns.name, "default", true).await;
    assert!(h.secret_exists(&ns.name).await);
    create_sa(&h.client, &ns.name, "default2", &[]).await;

    // check-config says the same.
    let note = h
        .config_warnings()
        .await
        .into_iter()
        .find(|n| n.contains("assumeRoleARN"))
        .unwrap_or_default();
    let file = std::env::temp_dir().join(format!("{}-cm.yaml", ns.name));
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: acr-configuration\ndata:\n  watch-namespace: {}\n  acr-registry-info: |\n    - instanceId: cri-fakeinstance0001\n      assumeRoleARN: not-an-arn\n",
            ns.name
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(BINARY)
        .args(["--region", "cn-hangzhou", "check-config"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    support::leaks::text("errors", &stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        note.contains(line),
        "Event {note:?} and check-config {line:?} differ"
    );

    // Fixing the edit applies it.
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&ns.name, "default2", true).await;
    assert_eq!(c.metric("acr_helper_config_valid").await, Some(1.0));
}

#[tokio::test]
async fn a_cloud_failure_keeps_the_valid_secret_and_recovers() {
    let mut cfg = default_config();
    cfg["lifetimes"] = json!({"registry_seconds": 30});
    let h = Harness::new("outage", &cfg, "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "outage-ws").await;
    let c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
        ("expiring-threshold", "20s"),
    ])
    .await;
    let doc = h.wait_secret(&ns.name).await;
    let first = doc["auths"][ENTERPRISE_DOMAINS[0]]["password"].clone();
    // The cloud fails from now on.
    h.fake
        .fault(
            "GetAuthorizationToken",
            json!({"kind": "http500", "count": -1}),
        )
        .await;
    wait_until(
        Duration::from_secs(40),
        "the failure in a metric",
        || async {
            c.metrics().await.contains(
                "acr_helper_credential_errors_total{acr_instance=\"cri-fakeinstance0001\",category=\"cloud_unavailable\"}",
            )
        },
    )
    .await;
    // The still-valid Secret is kept as it was.
    let kept = h.wait_secret(&ns.name).await;
    assert_eq!(kept["auths"][ENTERPRISE_DOMAINS[0]]["password"], first);
    // One Warning Event on the ConfigMap (not one per namespace: the cause is the same for all).
    wait_until(
        Duration::from_secs(20),
        "a Warning Event on the ConfigMap",
        || async {
            h.config_warnings().await.iter().any(|n| {
                n.contains("GetAuthorizationToken") && n.contains("keep their current passwords")
            })
        },
    )
    .await;
    // The cloud recovers; the controller retries with backoff and writes a fresh password.
    h.fake.configure(json!({"lifetimes": {}})).await;
    reqwest::Client::new()
        .put(format!("{}/_fake/faults", h.fake.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        Duration::from_secs(60),
        "a fresh password after recovery",
        || async {
            let doc = h.wait_secret(&ns.name).await;
            doc["auths"][ENTERPRISE_DOMAINS[0]]["password"] != first
        },
    )
    .await;
    assert_logins_valid(&h, &h.wait_secret(&ns.name).await).await;
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let h = Harness::new("leader", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "leader-ws").await;
    h.apply_config(&[
        ("watch-namespace", &format!("{},{}-b", ns.name, ns.name)),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    let mut one = h.start(&["--token-mode", "workerRole"]);
    let mut two = h.start(&["--token-mode", "workerRole"]);
    h.wait_reference(&ns.name, "default", true).await;
    wait_until(Duration::from_secs(20), "exactly one leader", || async {
        let a = one.metric("acr_helper_leader").await;
        let b = two.metric("acr_helper_leader").await;
        matches!((a, b), (Some(x), Some(y)) if x + y == 1.0)
    })
    .await;
    let one_leads = one.metric("acr_helper_leader").await == Some(1.0);
    let (leader, standby) = if one_leads {
        (&mut one, &mut two)
    } else {
        (&mut two, &mut one)
    };
    // The standby wrote nothing: no cloud call, no write, though it is ready (its watches have
    // listed, it has the configuration: it would have acted by now).
    wait_until(Duration::from_secs(20), "the standby ready", || async {
        reqwest::get(format!("{}/readyz", standby.metrics_url))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(
        !standby
            .metrics()
            .await
            .contains("acr_helper_api_writes_total")
    );
    assert!(
        !standby
            .metrics()
            .await
            .contains("acr_helper_cloud_calls_total")
    );

    leader.kill();
    let killed = std::time::Instant::now();
    wait_until(Duration::from_secs(15), "the standby to lead", || async {
        standby.metric("acr_helper_leader").await == Some(1.0)
    })
    .await;
    let took = killed.elapsed();
    eprintln!("takeover after {took:?} (lease 4 s)");
    // And it does the job: a namespace that appears now is served.
    let b = format!("{}-b", ns.name);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(h.client.clone())
        .create(
            &PostParams::default(),
            &k8s_openapi::api::core::v1::Namespace {
                metadata: ObjectMeta {
                    name: Some(b.clone()),
                    labels: Some([(support::TEST_LABEL.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.wait_secret(&b).await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(h.client.clone())
        .delete(&b, &Default::default())
        .await;
}

#[tokio::test]
async fn expiry_metrics_follow_the_configured_instances() {
    let h = Harness::new("expmetric", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "expmetric-ws").await;
    let c = h.start(&["--token-mode", "workerRole"]);
    let series =
        |id: &str| format!("acr_helper_token_expiry_timestamp_seconds{{acr_instance=\"{id}\"}}");
    let two =
        format!("{ENTERPRISE}- instanceId: {OTHER_INSTANCE_ID}\n  regionId: {OTHER_REGION}\n");
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", two.as_str()),
    ])
    .await;
    wait_until(
        Duration::from_secs(30),
        "both instances' expiry",
        || async {
            c.metric(&series(INSTANCE_ID)).await.is_some()
                && c.metric(&series(OTHER_INSTANCE_ID)).await.is_some()
        },
    )
    .await;
    // An instance that leaves the configuration leaves the metrics too: an alert on its expiry
    // must not fire for a registry nobody serves any more.
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    wait_until(
        Duration::from_secs(30),
        "the removed instance's expiry to go",
        || async { c.metric(&series(OTHER_INSTANCE_ID)).await.is_none() },
    )
    .await;
    assert!(c.metric(&series(INSTANCE_ID)).await.is_some());
}

#[tokio::test]
async fn a_restart_with_fresh_secrets_in_place_writes_nothing() {
    let h = Harness::new("adopt", &default_config(), "cluster-admin").await;
    let mut spaces = Vec::new();
    for _ in 0..3 {
        let ns = TestNamespace::create(&h.client, "adopt-ws").await;
        create_sa(&h.client, &ns.name, "app", &["theirs"]).await;
        spaces.push(ns);
    }
    let late = format!("adopt-late-{:08x}", rand::random::<u32>());
    let mut list: Vec<&str> = spaces.iter().map(|n| n.name.as_str()).collect();
    list.push(&late);
    let list = list.join(",");
    let mut first = h.start_as("first", &["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", list.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    for ns in &spaces {
        h.wait_reference(&ns.name, "app", true).await;
        h.wait_reference(&ns.name, "default", true).await;
    }
    wait_until(
        Duration::from_secs(20),
        "the persisted configuration",
        || async {
            !support::is_absent(
                &h.secrets(&h.config_ns.name),
                "aliyun-acr-credential-helper-last-config",
            )
            .await
        },
    )
    .await;
    let password =
        h.wait_secret(&spaces[0].name).await["auths"][ENTERPRISE_DOMAINS[0]]["password"].clone();
    first.kill();

    // The new process takes over the passwords in place: no cloud token call, no write.
    let tokens_before = h.fake.calls("GetAuthorizationToken").await;
    let second = h.start_as("second", &["--token-mode", "workerRole"]);
    wait_until(
        Duration::from_secs(30),
        "the new process to lead",
        || async { second.metric("acr_helper_leader").await == Some(1.0) },
    )
    .await;
    // It serves with them: a namespace that appears now gets the same, still valid, password.
    // That is also the sign it has taken over: it has its content and has planned every
    // namespace with it (those with work were queued no later than this one).
    let _late = TestNamespace::create_named(&h.client, &late).await;
    let doc = h.wait_secret(&late).await;
    assert_eq!(doc["auths"][ENTERPRISE_DOMAINS[0]]["password"], password);
    assert_logins_valid(&h, &doc).await;
    support::holds_for(Duration::from_secs(2), || async {
        let writes: Vec<_> = h
            .audited_product_writes()
            .into_iter()
            .filter(|w| w.replica == "second" && w.namespace != late && !is_marker(&w.namespace))
            .collect();
        assert!(
            writes.is_empty(),
            "a restart rewrote what was fresh: {writes:?}"
        );
    })
    .await;
    assert_eq!(
        h.fake.calls("GetAuthorizationToken").await,
        tokens_before,
        "a new password was fetched"
    );
}

/// Sets (`Some`) or removes (`None`) one label of a Namespace (`sa` = None) or a ServiceAccount.
async fn set_label(client: &Client, ns: &str, sa: Option<&str>, key: &str, value: Option<&str>) {
    let patch = Patch::Merge(json!({"metadata": {"labels": {key: value}}}));
    let pp = PatchParams::default();
    match sa {
        None => Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(ns, &pp, &patch)
            .await
            .map(drop),
        Some(sa) => {
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
                .patch(sa, &pp, &patch)
                .await
                .map(drop)
        }
    }
    .unwrap_or_else(|e| panic!("label {ns}/{sa:?} {key}={value:?}: {e}"));
}

/// Polls until `check` holds; returns how long it took (the test prints it, never asserts it).
async fn took(what: &str, check: impl AsyncFn() -> bool) -> f64 {
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(30), what, || check()).await;
    t.elapsed().as_secs_f64()
}

#[tokio::test]
async fn label_selection_follows_label_changes_both_ways() {
    const OPT: &str = "aliyun-acr-credential-helper/pull-secret";
    let h = Harness::new("labels", &default_config(), "cluster-admin").await;
    let x = TestNamespace::create(&h.client, "lbl-x").await;
    let y = TestNamespace::create(&h.client, "lbl-y").await;
    for ns in [&x.name, &y.name] {
        create_sa(&h.client, ns, "builder", &[]).await;
    }
    // A unique label, so other tests' namespaces are not selected.
    let team = format!("team-{}", &h.config_ns.name);
    set_label(&h.client, &y.name, None, "e2e-team", Some(&team)).await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    let selector = format!("e2e-team={team}");
    h.apply_config(&[
        ("acr-registry-info", ENTERPRISE),
        ("namespace-selector", selector.as_str()),
        ("service-account", "default"),
    ])
    .await;
    h.wait_secret(&y.name).await;
    h.wait_reference(&y.name, "default", true).await;
    h.wait_reference(&y.name, "builder", false).await;
    assert!(!h.secret_exists(&x.name).await, "x is not selected");

    let mut report = Vec::new();
    // Namespace in by its label.
    set_label(&h.client, &x.name, None, "e2e-team", Some(&team)).await;
    let s = took("x selected by its label", async || {
        h.has_reference(&x.name, "default").await
    })
    .await;
    report.push(format!("namespace labelled in: {s:.2}s"));
    assert!(h.secret_exists(&x.name).await);
    // A ServiceAccount opts in, another opts out.
    set_label(&h.client, &x.name, Some("builder"), OPT, Some("true")).await;
    let s = took("builder opted in", async || {
        h.has_reference(&x.name, "builder").await
    })
    .await;
    report.push(format!("ServiceAccount opted in: {s:.2}s"));
    set_label(&h.client, &x.name, Some("default"), OPT, Some("false")).await;
    let s = took("default opted out", async || {
        !h.has_reference(&x.name, "default").await
    })
    .await;
    report.push(format!("ServiceAccount opted out: {s:.2}s"));
    // The opt-out removed: `service-account` decides again.
    set_label(&h.client, &x.name, Some("default"), OPT, None).await;
    let s = took("default back", async || {
        h.has_reference(&x.name, "default").await
    })
    .await;
    report.push(format!("ServiceAccount opt-out removed: {s:.2}s"));
    // Namespace out: its Secret and every reference go.
    set_label(&h.client, &x.name, None, "e2e-team", None).await;
    let s = took("x cleaned up", async || {
        !h.secret_exists(&x.name).await
            && !h.has_reference(&x.name, "default").await
            && !h.has_reference(&x.name, "builder").await
    })
    .await;
    report.push(format!("namespace label removed (cleaned up): {s:.2}s"));
    // A namespace that matches opts out, then in again.
    set_label(&h.client, &y.name, None, OPT, Some("false")).await;
    let s = took("y opted out", async || {
        !h.secret_exists(&y.name).await && !h.has_reference(&y.name, "default").await
    })
    .await;
    report.push(format!("namespace opted out (cleaned up): {s:.2}s"));
    set_label(&h.client, &x.name, None, OPT, Some("true")).await;
    let s = took("x opted in", async || {
        h.has_reference(&x.name, "default").await && h.has_reference(&x.name, "builder").await
    })
    .await;
    report.push(format!("namespace opted in: {s:.2}s"));
    eprintln!("REPORT label changes take effect in: {}", report.join(", "));
}

#[tokio::test]
async fn a_server_side_apply_by_another_manager_keeps_our_reference() {
    let h = Harness::new("gitops", &default_config(), "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "gitops").await;
    let sas =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(h.client.clone(), &ns.name);
    // A GitOps tool owns the ServiceAccount, without declaring imagePullSecrets.
    let apply = |team: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "app", "labels": {"team": team}},
        })
    };
    let gitops = PatchParams::apply("gitops-tool").force();
    sas.patch("app", &gitops, &Patch::Apply(&apply("a")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("acr-registry-info", ENTERPRISE),
        ("watch-namespace", ns.name.as_str()),
        ("service-account", "app"),
    ])
    .await;
    h.wait_reference(&ns.name, "app", true).await;
    // The tool applies again (and changes what it owns): our reference stays.
    for team in ["a", "b"] {
        let after = sas
            .patch("app", &gitops, &Patch::Apply(&apply(team)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let refs = support::reference_names(after.image_pull_secrets);
        assert_eq!(
            refs,
            vec![h.secret_name.clone()],
            "after the tool's apply ({team})"
        );
        // Our write is ours in managedFields, under the documented field manager.
        let managers: Vec<String> = after
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            managers.iter().any(|m| m == "aliyun-acr-credential-helper"),
            "{managers:?}"
        );
    }
    // And the controller did not have to write it again: once it has seen later changes (it
    // has seen the tool's applies), still one patch.
    let _marker = h.marker().await;
    support::holds_for(Duration::from_secs(1), || async {
        let patches = h
            .audited_product_writes()
            .into_iter()
            .filter(|w| w.resource == "serviceaccounts" && w.name == "app")
            .count();
        assert_eq!(patches, 1, "one patch of ours, never repeated");
    })
    .await;
}

/// A ServiceAccount `planner` in the configuration namespace that may only read what `plan`
/// reads (Secrets and the MutatingWebhookConfiguration by name), and a kubeconfig for it.
async fn read_only_planner(h: &Harness, kubeconfig: &std::path::Path, mwc: &str) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let ns = &h.config_ns.name;
    create_sa(&h.client, ns, "planner", &[]).await;
    let name = format!("planner-{ns}");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"], "resourceNames": [h.secret_name]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["acr-configuration"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "verbs": ["get"], "resourceNames": [mwc]},
        ],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "planner", "namespace": ns}],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let pp = PatchParams::apply("e2e-test").force();
    Api::<ClusterRole>::all(h.client.clone())
        .patch(&name, &pp, &Patch::Apply(&role))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Api::<ClusterRoleBinding>::all(h.client.clone())
        .patch(&name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    support::service_account_kubeconfig(ns, "planner", kubeconfig).await;
}

#[tokio::test]
async fn plan_predicts_exactly_what_the_controller_then_writes() {
    let h = Harness::new("plan", &default_config(), "cluster-admin").await;
    let a = TestNamespace::create(&h.client, "plan-a").await;
    let b = TestNamespace::create(&h.client, "plan-b").await;
    let c = TestNamespace::create(&h.client, "plan-c").await;
    for ns in [&a.name, &b.name, &c.name] {
        create_sa(&h.client, ns, "builder", &[]).await;
    }
    let mwc = format!("acr-helper-{}", h.config_ns.name);
    let _c = h.start(&[
        "--token-mode",
        "workerRole",
        "--webhook-configuration",
        &mwc,
    ]);
    let served = format!("{},{}", a.name, b.name);
    h.apply_config(&[
        ("acr-registry-info", ENTERPRISE),
        ("watch-namespace", served.as_str()),
        ("service-account", "default"),
    ])
    .await;
    for ns in [&a.name, &b.name] {
        h.wait_reference(ns, "default", true).await;
    }

    // The edit: `a` narrowed away, `c` widened in, `b` left alone but one more ServiceAccount.
    let next = format!("{},{}", b.name, c.name);
    let dir = std::env::temp_dir().join(format!("plan-{}", h.config_ns.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("cm.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: acr-configuration\ndata:\n  acr-registry-info: |\n    - instanceId: cri-fakeinstance0001\n  watch-namespace: {next}\n  service-account: default,builder\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("kubeconfig");
    read_only_planner(&h, &kubeconfig, &mwc).await;
    let run_plan = |output: &str| {
        let out = std::process::Command::new(BINARY)
            .arg("plan")
            .arg(&file)
            .args(["-o", output])
            .args(["--config-namespace", &h.config_ns.name])
            .args(["--secret-name", &h.secret_name])
            .args(["--webhook-configuration", &mwc])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("ACR_HELPER_LOG_LEVEL")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.status.code(),
            Some(0),
            "plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run_plan("text");
    eprintln!("plan output:\n{text}");
    let report: Value = serde_json::from_str(&run_plan("json")).unwrap_or_else(|e| panic!("{e}"));
    let planned_at = jiff::Timestamp::now();
    // What the plan says, as the writes it implies.
    let mut planned = std::collections::BTreeSet::new();
    for n in report["namespaces"].as_array().cloned().unwrap_or_default() {
        let ns = n["namespace"].as_str().unwrap_or_default().to_owned();
        match n["secret"].as_str() {
            Some("create") => planned.insert(format!("create secrets {ns}/{}", h.secret_name)),
            Some("delete") => planned.insert(format!("delete secrets {ns}/{}", h.secret_name)),
            Some(other) => panic!("unexpected {other} in {n}"),
            None => false,
        };
        for key in ["addReference", "removeReference"] {
            for sa in n[key].as_array().cloned().unwrap_or_default() {
                planned.insert(format!(
                    "patch serviceaccounts {ns}/{}",
                    sa.as_str().unwrap_or_default()
                ));
            }
        }
    }
    let expected: std::collections::BTreeSet<String> = [
        format!("delete secrets {}/{}", a.name, h.secret_name),
        format!("patch serviceaccounts {}/default", a.name),
        format!("patch serviceaccounts {}/builder", b.name),
        format!("create secrets {}/{}", c.name, h.secret_name),
        format!("patch serviceaccounts {}/default", c.name),
        format!("patch serviceaccounts {}/builder", c.name),
    ]
    .into_iter()
    .collect();
    assert_eq!(planned, expected, "the plan");
    assert!(
        text.contains("summary: 1 namespace(s) gain the Secret, 1 lose it, 0 blocked; 3 ServiceAccount(s) gain the reference, 1 lose it; webhook unchanged"),
        "{text}"
    );

    // Apply the same edit: the writes the audit log shows are exactly the plan.
    h.apply_config(&[
        ("acr-registry-info", ENTERPRISE),
        ("watch-namespace", next.as_str()),
        ("service-account", "default,builder"),
    ])
    .await;
    wait_until(Duration::from_secs(30), "the edit applied", || async {
        !h.secret_exists(&a.name).await
            && h.has_reference(&c.name, "builder").await
            && h.has_reference(&c.name, "default").await
            && h.has_reference(&b.name, "builder").await
            && !h.has_reference(&a.name, "default").await
    })
    .await;
    // Nothing more either: not once it has seen later changes (the marker), nor a moment after.
    let _marker = h.marker().await;
    let ours = [&a.name, &b.name, &c.name];
    support::holds_for(Duration::from_secs(1), || async {
        let done: std::collections::BTreeSet<String> = h
            .audited_product_writes()
            .into_iter()
            .filter(|w| w.at > planned_at && ours.contains(&&w.namespace) && w.code < 300)
            .filter(|w| w.resource == "serviceaccounts" || w.name == h.secret_name)
            .map(|w| format!("{} {} {}/{}", w.verb, w.resource, w.namespace, w.name))
            .collect();
        assert_eq!(
            done, planned,
            "what the controller wrote (audit log) vs the plan"
        );
    })
    .await;

    // A rejected edit: the errors, nothing would change, exit 1.
    std::fs::write(&file, "data:\n  expiring-threshold: soon\n").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(BINARY)
        .arg("plan")
        .arg(&file)
        .args([
            "--config-namespace",
            &h.config_ns.name,
            "--secret-name",
            &h.secret_name,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("error: expiring-threshold") && stdout.contains("nothing would change"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
