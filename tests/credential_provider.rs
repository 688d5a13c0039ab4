//! The kubelet credential provider (`credential-provider`) and the pull Secrets the controller
//! writes, judged by the kubelet's own code: tests/cluster/k8s/credprovider drives
//! k8s.io/kubernetes/pkg/credentialprovider/plugin (exec plugins, with KEP-4412 ServiceAccount
//! tokens from the real API server) and .../credentialprovider/secrets (a Pod's imagePullSecrets),
//! then logs in at the fake registry with what it found.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::TestNamespace;
use support::fake_cloud::*;
use support::harness::{BINARY, Harness};

const ENTERPRISE_HOST: &str = "fake-registry.cn-hangzhou.cr.aliyuncs.com";
const ENTERPRISE_VPC_HOST: &str = "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com";
const PERSONAL_HOST: &str = "registry.cn-hangzhou.aliyuncs.com";
const UNMATCHED_HOST: &str = "unknown-registry.cn-hangzhou.cr.aliyuncs.com";
const ROLE_ANNOTATION: &str = "pod-identity.alibabacloud.com/role-name";
/// Registry passwords live this long at the fake, so expiry is seen within the test.
const PASSWORD_SECONDS: u64 = 20;

fn image(host: &str) -> String {
    format!("{host}/team/app:1")
}

fn images(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|h| image(h)).collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// A fake cloud whose RRSA provider is the local API server and whose RRSA role trusts `subject`.
fn fake_with_rrsa(subject: &str) -> FakeCloud {
    let mut config = support::provider::rrsa_config(subject);
    config["lifetimes"] = json!({"registry_seconds": PASSWORD_SECONDS});
    FakeCloud::start(&config)
}

fn plugin_args(fake: &FakeCloud) -> Vec<String> {
    support::provider::plugin_args(fake, &[ENTERPRISE_HOST, ENTERPRISE_VPC_HOST])
}

fn kubelet_files(
    dir: &Path,
    fake: &FakeCloud,
    token_attributes: Option<Value>,
) -> (PathBuf, PathBuf) {
    support::provider::kubelet_files(dir, &plugin_args(fake), token_attributes)
}

/// Runs the kubelet-code judge; one result per image.
fn judge(args: &[String], images: &[String]) -> Vec<Value> {
    let cp = support::control_plane();
    let out = Command::new(cp.binary("credprovider"))
        .args(args)
        .args(images)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("credprovider: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    support::leaks::text("credential-provider", &stderr);
    assert!(out.status.success(), "credprovider failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("acr-credprov-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    d
}

/// Asserts a result found exactly one login the fake accepts, of `principal` (prefix), for
/// `instance`; and, if rechecked, that it was rejected after expiry.
fn assert_login(r: &Value, principal: &str, instance: &str) {
    assert_eq!(r["found"], true, "{r}");
    let logins = r["logins"].as_array().cloned().unwrap_or_default();
    assert_eq!(logins.len(), 1, "{r}");
    let l = &logins[0];
    assert_eq!(l["valid"], true, "{r}");
    assert!(
        l["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(principal),
        "{r}"
    );
    assert_eq!(l["instance"], instance, "{r}");
    if let Some(after) = l.get("validAfter") {
        assert_eq!(after, &json!(false), "accepted after expiry: {r}");
    }
}

#[tokio::test]
async fn the_kubelet_gets_node_credentials_from_the_plugin() {
    let fake = fake_with_rrsa("system:serviceaccount:none:none");
    let dir = scratch("node");
    let (bin_dir, config) = kubelet_files(&dir, &fake, None);
    let images = images(&[
        ENTERPRISE_HOST,
        ENTERPRISE_VPC_HOST,
        PERSONAL_HOST,
        UNMATCHED_HOST,
    ]);
    let args = strings(&[
        "plugin",
        "--fake",
        &fake.url,
        "--config",
        &config.display().to_string(),
        "--bin-dir",
        &bin_dir.display().to_string(),
        "--namespace",
        "default",
        "--service-account",
        "default",
        "--pod",
        "static",
        "--pod-uid",
        "00000000-0000-0000-0000-000000000001",
        "--recheck-after",
        &format!("{}s", PASSWORD_SECONDS + 2),
    ]);
    let results = judge(&args, &images);
    assert_eq!(results.len(), 4);
    // The node's RAM role (the fake's metadata service), each registry its own instance.
    assert_login(&results[0], "", INSTANCE_ID);
    assert_login(&results[1], "", INSTANCE_ID);
    assert_login(&results[2], "", "personal/cn-hangzhou");
    assert_eq!(results[3]["found"], false, "unmatched: {}", results[3]);
    assert!(fake.calls("MetadataCredentials").await >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pods_service_account_token_pulls_as_its_own_role() {
    let cp = support::control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::create(&client, "credprov").await;
    let fake = fake_with_rrsa(&format!("system:serviceaccount:{}:puller", ns.name));
    // The ServiceAccount names its role (ACK's RRSA annotation); a Pod runs as it.
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "puller", "annotations": {ROLE_ANNOTATION: "rrsa-role"}},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"serviceAccountName": "puller", "containers": [{"name": "c", "image": image(PERSONAL_HOST)}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let uid = pod.metadata.uid.unwrap_or_default();
    let dir = scratch("token");
    let (bin_dir, config) = kubelet_files(
        &dir,
        &fake,
        Some(json!({
            "serviceAccountTokenAudience": "sts.aliyuncs.com",
            "cacheType": "ServiceAccount",
            "requireServiceAccount": true,
            "requiredServiceAccountAnnotationKeys": [ROLE_ANNOTATION],
        })),
    );
    let images = images(&[ENTERPRISE_HOST, PERSONAL_HOST, UNMATCHED_HOST]);
    let args = strings(&[
        "plugin",
        "--fake",
        &fake.url,
        "--config",
        &config.display().to_string(),
        "--bin-dir",
        &bin_dir.display().to_string(),
        "--namespace",
        &ns.name,
        "--service-account",
        "puller",
        "--pod",
        "app",
        "--pod-uid",
        &uid,
    ]);
    let results = judge(&args, &images);
    assert_login(&results[0], RRSA_ROLE_ARN, INSTANCE_ID);
    assert_login(&results[1], RRSA_ROLE_ARN, "personal/cn-hangzhou");
    assert_eq!(results[2]["found"], false, "{}", results[2]);
    assert!(fake.calls("AssumeRoleWithOIDC").await >= 1);
    assert_eq!(
        fake.calls("MetadataCredentials").await,
        0,
        "the Pod's identity, not the node's"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_pull_secrets_the_controller_writes_are_what_the_kubelet_uses() {
    let mut fake_config = default_config();
    fake_config["lifetimes"] = json!({"registry_seconds": PASSWORD_SECONDS});
    let h = Harness::new("kubeletkeys", &fake_config, "cluster-admin").await;
    let ns = TestNamespace::create(&h.client, "kubelet-keys").await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    let info =
        format!("- instanceId: {INSTANCE_ID}\n- instanceId: \"\"\n  regionId: {INSTANCE_REGION}\n");
    h.apply_config(&[
        ("acr-registry-info", info.as_str()),
        ("watch-namespace", ns.name.as_str()),
        ("expiring-threshold", "5s"),
    ])
    .await;
    h.wait_secret(&ns.name).await;
    let images = images(&[
        ENTERPRISE_HOST,
        ENTERPRISE_VPC_HOST,
        PERSONAL_HOST,
        UNMATCHED_HOST,
    ]);
    let args = strings(&[
        "secrets",
        "--fake",
        &h.fake.url,
        "--namespace",
        &ns.name,
        "--secret",
        &h.secret_name,
        "--recheck-after",
        &format!("{}s", PASSWORD_SECONDS + 2),
    ]);
    let results = judge(&args, &images);
    assert_login(&results[0], "", INSTANCE_ID);
    assert_login(&results[1], "", INSTANCE_ID);
    assert_login(&results[2], "", "personal/cn-hangzhou");
    assert_eq!(results[3]["found"], false, "{}", results[3]);
}

/// Runs the plugin once on `request`; (exit code, stdout, stderr).
/// `ACR_HELPER_PLUGIN_BIN` runs another build (a release binary, for the latency figures).
fn exec_plugin(fake: &FakeCloud, request: &[u8]) -> (Option<i32>, String, String) {
    exec_plugin_with(fake, request, &[])
}

fn exec_plugin_with(
    fake: &FakeCloud,
    request: &[u8],
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let bin = std::env::var("ACR_HELPER_PLUGIN_BIN").unwrap_or_else(|_| BINARY.to_owned());
    let mut child = Command::new(bin)
        .args(plugin_args(fake))
        .args(extra)
        .env("ACR_HELPER_LOG_LEVEL", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(request);
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    support::leaks::text("credential-provider", &stderr);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn request(host: &str, token: Option<&str>) -> Vec<u8> {
    let mut r = json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": image(host),
    });
    if let Some(t) = token {
        r["serviceAccountToken"] = json!(t);
        r["serviceAccountAnnotations"] = json!({ROLE_ANNOTATION: "rrsa-role"});
    }
    r.to_string().into_bytes()
}

#[tokio::test]
async fn the_plugin_never_prints_a_secret_and_rejects_malformed_requests_in_one_line() {
    let fake = fake_with_rrsa("system:serviceaccount:none:none");
    // A good answer, with debug logging: the password is on stdout only.
    let (code, stdout, stderr) = exec_plugin(&fake, &request(PERSONAL_HOST, None));
    assert_eq!(code, Some(0), "{stderr}");
    let response: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}"));
    let password = response["auth"][PERSONAL_HOST]["password"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(password.len() > 8, "{response}");
    assert!(!stderr.contains(&password), "the password reached stderr");
    assert!(
        stderr.contains("registry login obtained"),
        "progress is logged: {stderr}"
    );
    // Cross-account: a role assumed on top of the node's identity.
    let (code, stdout, stderr) = exec_plugin_with(
        &fake,
        &request(ENTERPRISE_HOST, None),
        &["--assume-role-arn", ROLE_ARN],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let response: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}"));
    let login = &response["auth"][ENTERPRISE_HOST];
    let checked = fake
        .registry_login(
            login["username"].as_str().unwrap_or_default(),
            login["password"].as_str().unwrap_or_default(),
        )
        .await;
    assert_eq!(checked["valid"], true, "{checked}");
    assert!(
        checked["principal"]
            .as_str()
            .unwrap_or_default()
            .starts_with(ROLE_ARN),
        "{checked}"
    );
    // A token the fake rejects (not a JWT of the API server): a one-line error without it.
    let token = "eyJhbGciOiJSUzI1NiJ9.not-a-real-token-but-secret.c2lnbmF0dXJl";
    let (code, stdout, stderr) = exec_plugin(&fake, &request(PERSONAL_HOST, Some(token)));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.is_empty());
    assert!(
        !stderr.contains("not-a-real-token"),
        "the token reached stderr: {stderr}"
    );
    // Malformed requests: non-zero, one line naming the problem.
    for (req, says) in [
        (&b"{\"kind\":"[..], "ends too early"),
        (b"[]", "CredentialProviderRequest"),
        (
            br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest"}"#,
            "missing field `image`",
        ),
    ] {
        let (code, stdout, stderr) = exec_plugin(&fake, req);
        assert_eq!(code, Some(1), "{stdout}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("aliyun-acr-credential-helper credential-provider: request:")
                && last.contains(says),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn plugin_latency_and_cloud_calls_are_reported() {
    let fake = fake_with_rrsa("system:serviceaccount:none:none");
    let runs: usize = std::env::var("ACR_HELPER_PLUGIN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut times = Vec::new();
    let before = fake.calls("GetAuthorizationToken").await
        + fake.calls("MetadataCredentials").await
        + fake.calls("MetadataRoleName").await
        + fake.calls("MetadataToken").await;
    for _ in 0..runs {
        let t = Instant::now();
        let (code, _, stderr) = exec_plugin(&fake, &request(ENTERPRISE_HOST, None));
        times.push(t.elapsed());
        assert_eq!(code, Some(0), "{stderr}");
    }
    let mut calls = Vec::new();
    for api in [
        "MetadataToken",
        "MetadataRoleName",
        "MetadataCredentials",
        "GetAuthorizationToken",
    ] {
        calls.push(format!("{api} {}", fake.calls(api).await));
    }
    let after = fake.calls("GetAuthorizationToken").await
        + fake.calls("MetadataCredentials").await
        + fake.calls("MetadataRoleName").await
        + fake.calls("MetadataToken").await;
    // The same exec for an image no instance serves: the process alone, no cloud call.
    let mut alone = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (code, _, stderr) = exec_plugin(&fake, &request(UNMATCHED_HOST, None));
        alone.push(t.elapsed());
        assert_eq!(code, Some(0), "{stderr}");
    }
    times.sort();
    alone.sort();
    let at = |v: &[std::time::Duration], p: f64| {
        let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
        v[i].as_secs_f64() * 1000.0
    };
    let pct = |p: f64| at(&times, p);
    eprintln!(
        "REPORT credential-provider exec for an unmatched image (no cloud call) over {runs} runs: p50 {:.1} ms, p99 {:.1} ms",
        at(&alone, 0.5),
        at(&alone, 0.99)
    );
    eprintln!(
        "REPORT credential-provider cold exec ({}) over {runs} runs: p50 {:.1} ms, p99 {:.1} ms; cloud calls per cold lookup {:.1} ({}); a warm lookup is the kubelet's cache: none",
        std::env::var("ACR_HELPER_PLUGIN_BIN").unwrap_or_else(|_| "debug build".to_owned()),
        pct(0.5),
        pct(0.99),
        (after - before) as f64 / runs as f64,
        calls.join(", ")
    );
}
