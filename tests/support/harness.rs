//! End-to-end harness: a fake cloud, a configuration namespace of the test's own, and the real
//! controller binary running against the local API server with an identity of its own (so the
//! audit log tells its requests apart), isolated from other tests by its own ConfigMap namespace,
//! Lease and Secret name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use super::fake_cloud::FakeCloud;
use super::{TestNamespace, control_plane, wait_until};

pub const BINARY: &str = env!("CARGO_BIN_EXE_aliyun-acr-credential-helper");

/// The label by which a Namespace or a ServiceAccount opts in (`true`) or out (`false`).
pub const OPT_LABEL: &str = "aliyun-acr-credential-helper/pull-secret";
/// The ServiceAccount of [`Harness::marker`]'s namespace that the controller patches.
pub const MARKER_SA: &str = "acr-marker";
/// How the names of [`Harness::marker`]'s namespaces begin.
const MARKER_PREFIX: &str = "opted-in-marker-";

/// Whether `ns` is a namespace of [`Harness::marker`]: this test's, or a concurrent test's (every
/// controller serves an opted-in namespace), so writes there are never what a test is about.
pub fn is_marker(ns: &str) -> bool {
    ns.starts_with(MARKER_PREFIX)
}

/// The API server's audit log; one that cannot be read fails the test ("no write" must not be
/// an unreadable file).
fn read_audit_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the audit log {}: {e}", path.display()))
}

/// One write the audit log recorded.
#[derive(Debug, Clone)]
pub struct AuditedWrite {
    pub at: jiff::Timestamp,
    pub replica: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: u64,
}

pub struct Harness {
    pub client: Client,
    pub fake: FakeCloud,
    /// Holds the ConfigMap, the Lease and the controller's ServiceAccount.
    pub config_ns: TestNamespace,
    pub secret_name: String,
    pub identity: String,
    kubeconfig: PathBuf,
    binding: String,
    /// The chart's admission policies for this controller (names of the policies and bindings).
    policies: Vec<String>,
    dir: PathBuf,
}

/// The webhook's certificate Secret: the controller's default name, which the chart's policies
/// (installed by every [`Harness`]) let it write.
pub const TLS_SECRET: &str = "aliyun-acr-credential-helper-webhook-tls";

/// The ValidatingAdmissionPolicies (and bindings) the chart ships, rendered for a release `release`
/// in `namespace` whose pull Secret is `secret_name`, with more `--set` values; only those whose
/// names end with one of `kinds` (`-secrets`, `-serviceaccounts`, `-configmap`, `-webhook`).
pub fn chart_policies(
    release: &str,
    namespace: &str,
    secret_name: &str,
    set: &[&str],
    kinds: &[&str],
) -> Vec<Value> {
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        "charts/aliyun-acr-credential-helper".to_owned(),
        "-n".to_owned(),
        namespace.to_owned(),
        "--kube-version".to_owned(),
        "1.37.1".to_owned(),
        "--api-versions".to_owned(),
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy".to_owned(),
        "--show-only".to_owned(),
        "templates/admission-policies.yaml".to_owned(),
        "--set".to_owned(),
        format!("pullSecretName={secret_name}"),
    ];
    for s in set {
        args.extend(["--set".to_owned(), (*s).to_owned()]);
    }
    let out = Command::new(control_plane().binary("helm"))
        .args(&args)
        .current_dir(super::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    assert!(
        out.status.success(),
        "helm template of the policies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("the rendered policies: {e}"));
    docs.into_iter()
        .filter(|d| d.is_object())
        .filter(|d| {
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            kinds.iter().any(|k| name.ends_with(k))
        })
        .collect()
}

/// The API of a ValidatingAdmissionPolicy or its binding (`kind`).
pub fn policy_api(client: &Client, kind: &str) -> Api<kube::core::DynamicObject> {
    let gvk = kube::core::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let plural = if kind == "ValidatingAdmissionPolicy" {
        "validatingadmissionpolicies"
    } else {
        "validatingadmissionpolicybindings"
    };
    Api::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// Creates `docs` (policies and bindings); returns "kind/name" of each, for [`delete_policies`].
pub async fn create_policies(client: &Client, docs: &[Value]) -> Vec<String> {
    let mut made = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default().to_owned();
        let obj: kube::core::DynamicObject =
            serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        policy_api(client, &kind)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
        made.push(format!(
            "{kind}/{}",
            d["metadata"]["name"].as_str().unwrap_or_default()
        ));
    }
    made
}

/// Deletes what [`create_policies`] made.
pub async fn delete_policies(client: &Client, made: &[String]) {
    for m in made {
        if let Some((kind, name)) = m.split_once('/') {
            let _ = policy_api(client, kind)
                .delete(name, &DeleteParams::default())
                .await;
        }
    }
}

/// A running controller process, killed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The controller's log so far. A log that cannot be read fails the test: a line looked for
    /// must not read as absent because the file was not there.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| panic!("read the controller's log {}: {e}", self.log.display()))
    }

    /// The `/metrics` page. A replica that is starting may not listen yet: a failed scrape is
    /// tried again for up to 20 s, then fails the test. It never reads as an empty page, so a
    /// series asserted absent is absent from an answer.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.metrics_url);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = match reqwest::get(&url).await.and_then(|r| r.error_for_status()) {
                Ok(r) => r.text().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(text) => {
                    super::leaks::text("metrics", &text);
                    return text;
                }
                Err(e) if Instant::now() >= deadline => panic!("scrape {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The value of one metric line (exact name with labels), if the page has it (see
    /// [`ControllerProcess::metrics`]: an unanswered scrape fails the test).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }
}

/// The value of one series (exact name with labels) in a `/metrics` page, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes one series from the replica serving `metrics_url`, giving up after 2 s (a replica
/// may be dead or stopped: that reads as absent).
pub async fn scrape_metric(http: &reqwest::Client, metrics_url: &str, series: &str) -> Option<f64> {
    let response = http
        .get(format!("{metrics_url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    metric_value(&response.text().await.ok()?, series)
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        super::leaks::file("controller", &self.log);
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- controller log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

impl Harness {
    /// A fake cloud with `fake_config`, a configuration namespace, and an identity for the
    /// controller bound to `cluster_role`.
    pub async fn new(prefix: &str, fake_config: &Value, cluster_role: &str) -> Harness {
        let cp = control_plane();
        let client = cp.client().await;
        let config_ns = TestNamespace::create(&client, prefix).await;
        let fake = FakeCloud::start(fake_config);
        super::create_service_account(
            &client,
            &config_ns.name,
            "aliyun-acr-credential-helper",
            &[],
        )
        .await;
        let binding = format!("acr-helper-test-{}", config_ns.name);
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(
                &PostParams::default(),
                &ClusterRoleBinding {
                    metadata: ObjectMeta {
                        name: Some(binding.clone()),
                        ..Default::default()
                    },
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "ClusterRole".into(),
                        name: cluster_role.into(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: "aliyun-acr-credential-helper".into(),
                        namespace: Some(config_ns.name.clone()),
                        ..Default::default()
                    }]),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("acr-helper-e2e-{}", config_ns.name));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let kubeconfig = dir.join("kubeconfig");
        super::service_account_kubeconfig(
            &config_ns.name,
            "aliyun-acr-credential-helper",
            &kubeconfig,
        )
        .await;
        // Whatever role the test binds, the controller runs confined by the chart's policies for
        // Secrets, ServiceAccounts and the ConfigMap, as an installed chart is. (The webhook
        // policy names the registered URL, which the tests choose per process: tests/chart.rs
        // covers it.)
        let secret_name = format!("acr-{}", config_ns.name);
        let docs = chart_policies(
            &config_ns.name,
            &config_ns.name,
            &secret_name,
            &[],
            &["-secrets", "-serviceaccounts", "-configmap"],
        );
        let policies = create_policies(&client, &docs).await;
        Harness {
            client,
            fake,
            secret_name,
            identity: format!(
                "system:serviceaccount:{}:aliyun-acr-credential-helper",
                config_ns.name
            ),
            config_ns,
            kubeconfig,
            binding,
            policies,
            dir,
        }
    }

    /// Arguments that point the controller at this harness.
    pub fn base_args(&self) -> Vec<String> {
        let mut args = self.fake.cloud_args();
        args.extend(
            [
                "--config-namespace",
                &self.config_ns.name,
                "--secret-name",
                &self.secret_name,
                "--lease-duration",
                "4s",
                "--lease-grace",
                "2s",
                "--log-format",
                "plain",
                "--log-level",
                "info,kube=warn",
                "--cloud-request-timeout",
                "2s",
                "--webhook-addr",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        args
    }

    /// Starts a replica named `identity` (as the Lease and the audit log's user agent show it).
    pub fn start_as(&self, identity: &str, extra: &[&str]) -> ControllerProcess {
        let mut args = vec!["--identity", identity];
        args.extend_from_slice(extra);
        self.start(&args)
    }

    /// The flags that point `cleanup` at this harness's names.
    pub fn cleanup_flags(&self) -> Vec<String> {
        [
            "--config-namespace",
            &self.config_ns.name,
            "--secret-name",
            &self.secret_name,
            "--lease-duration",
            "4s",
            "--lease-grace",
            "2s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Starts the controller with the base arguments and `extra`.
    pub fn start(&self, extra: &[&str]) -> ControllerProcess {
        let port = free_port();
        let log = self.dir.join(format!("controller-{port}.log"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut args = self.base_args();
        // A flag given in `extra` replaces the base one.
        for flag in extra.iter().filter(|a| a.starts_with("--")) {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new(BINARY)
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start the controller: {e}"));
        ControllerProcess {
            child,
            metrics_url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Creates or replaces the ConfigMap with `data`.
    pub async fn apply_config(&self, data: &[(&str, &str)]) {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "acr-configuration"},
            "data": data,
        });
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.config_ns.name)
            .patch(
                "acr-configuration",
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap_or_else(|e| panic!("apply ConfigMap: {e}"));
    }

    pub async fn delete_config(&self) {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.config_ns.name)
            .delete("acr-configuration", &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete ConfigMap: {e}"));
    }

    pub fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn service_accounts(&self, ns: &str) -> Api<ServiceAccount> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The names in a ServiceAccount's imagePullSecrets, or None if it does not exist (a 404);
    /// any other error fails the test, so "no reference" is never a refused read.
    pub async fn pull_secrets(&self, ns: &str, sa: &str) -> Option<Vec<String>> {
        self.service_accounts(ns)
            .get_opt(sa)
            .await
            .unwrap_or_else(|e| panic!("get ServiceAccount {ns}/{sa}: {e}"))
            .map(|sa| super::reference_names(sa.image_pull_secrets))
    }

    pub async fn has_reference(&self, ns: &str, sa: &str) -> bool {
        self.pull_secrets(ns, sa)
            .await
            .is_some_and(|r| r.contains(&self.secret_name))
    }

    /// Waits until `ns/sa` carries (or, with `want` false, lacks) our reference.
    pub async fn wait_reference(&self, ns: &str, sa: &str, want: bool) {
        wait_until(
            Duration::from_secs(30),
            &format!("{ns}/{sa} reference = {want}"),
            || async move { self.has_reference(ns, sa).await == want },
        )
        .await;
    }

    /// Waits for our Secret in `ns` and returns its parsed `.dockerconfigjson`.
    pub async fn wait_secret(&self, ns: &str) -> Value {
        let api = self.secrets(ns);
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while found.is_none() {
            let got = api
                .get_opt(&self.secret_name)
                .await
                .unwrap_or_else(|e| panic!("get Secret {ns}/{}: {e}", self.secret_name));
            if let Some(s) = got {
                found = Some(s);
                break;
            }
            assert!(Instant::now() < deadline, "no Secret in {ns} after 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dockerconfig(found.as_ref().unwrap_or_else(|| unreachable!()))
    }

    /// Whether our Secret is in `ns`: absent only on a 404 (see [`super::is_absent`]).
    pub async fn secret_exists(&self, ns: &str) -> bool {
        !super::is_absent(&self.secrets(ns), &self.secret_name).await
    }

    /// Proof that the controller has seen every Namespace and ServiceAccount change made before
    /// this call: a later change of each kind that it visibly acts on. A namespace created now
    /// with the opt-in label gets our Secret; a ServiceAccount there, created opted out and then
    /// opted in (an update: the admission webhook, which sees creations only, cannot add the
    /// reference), gets our reference. Only the leader writes either. Each watch delivers its
    /// events in order, so once both are done the controller has applied every earlier event of
    /// those kinds to its index, and planned the namespaces they concern.
    ///
    /// Needs a configuration in force that serves an opted-in namespace (`namespace-opt-in` on, an
    /// instance that names no namespaces of its own) and patches ServiceAccounts. Returns the
    /// namespace; writes there (and in any other test's marker, see [`is_marker`]) are the
    /// markers', not the tested change's.
    pub async fn marker(&self) -> TestNamespace {
        let name = format!("{MARKER_PREFIX}{:08x}", rand::random::<u32>());
        let ns = TestNamespace::create_labelled(&self.client, &name, &[(OPT_LABEL, "true")]).await;
        let sas = self.service_accounts(&ns.name);
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": MARKER_SA, "labels": {OPT_LABEL: "false"}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        sas.create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {}/{MARKER_SA}: {e}", ns.name));
        sas.patch(
            MARKER_SA,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {OPT_LABEL: "true"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("opt {}/{MARKER_SA} in: {e}", ns.name));
        wait_until(
            Duration::from_secs(30),
            &format!("the marker {} served (Secret and reference)", ns.name),
            || async {
                self.secret_exists(&ns.name).await && self.has_reference(&ns.name, MARKER_SA).await
            },
        )
        .await;
        ns
    }

    /// Write requests (create, update, patch, delete) the controller's identity made, from the
    /// API server's audit log.
    pub fn audited_writes(&self) -> Vec<Value> {
        let path = control_plane()
            .audit_log
            .clone()
            .unwrap_or_else(|| panic!("needs the audit log of our control plane"));
        let text = read_audit_log(&path);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == self.identity.as_str())
            .filter(|e| {
                matches!(
                    e["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete" | "deletecollection")
                )
            })
            // Events and the Lease are bookkeeping, not the controller's product.
            .filter(|e| {
                !matches!(
                    e["objectRef"]["resource"].as_str(),
                    Some("events" | "leases")
                )
            })
            .collect()
    }

    /// Every write (create, update, patch, delete) of Secrets and ServiceAccounts the
    /// controller's identity made, as (when the API server finished it, the replica named in the
    /// user agent, verb, resource, namespace, name, response code).
    pub fn audited_product_writes(&self) -> Vec<AuditedWrite> {
        self.audited_writes()
            .into_iter()
            .filter(|e| {
                matches!(
                    e["objectRef"]["resource"].as_str(),
                    Some("secrets" | "serviceaccounts")
                )
            })
            .map(|e| AuditedWrite {
                at: e["stageTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                replica: e["userAgent"]
                    .as_str()
                    .and_then(|ua| {
                        ua.rsplit_once('(')
                            .map(|(_, r)| r.trim_end_matches(')').to_owned())
                    })
                    .unwrap_or_default(),
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                resource: e["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                namespace: e["objectRef"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: e["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0),
            })
            .collect()
    }

    /// When the API server accepted each Lease update `replica` made (renewals and takeovers).
    pub fn lease_updates(&self, replica: &str) -> Vec<jiff::Timestamp> {
        let path = control_plane()
            .audit_log
            .clone()
            .unwrap_or_else(|| panic!("needs the audit log of our control plane"));
        let text = read_audit_log(&path);
        let agent = format!("({replica})");
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == self.identity.as_str())
            .filter(|e| {
                e["userAgent"]
                    .as_str()
                    .is_some_and(|ua| ua.ends_with(&agent))
            })
            .filter(|e| e["objectRef"]["resource"] == "leases")
            .filter(|e| matches!(e["verb"].as_str(), Some("update" | "create")))
            .filter(|e| {
                e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| c < 300)
            })
            .filter_map(|e| e["stageTimestamp"].as_str().and_then(|t| t.parse().ok()))
            .collect()
    }

    /// Warning Events recorded on the ConfigMap.
    pub async fn config_warnings(&self) -> Vec<String> {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(
            self.client.clone(),
            &self.config_ns.name,
        )
        .list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        events
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ConfigMap"))
            .filter_map(|e| e.note)
            .inspect(|n| super::leaks::text("events", n))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let binding = self.binding.clone();
        let policies = std::mem::take(&mut self.policies);
        let kubeconfig = control_plane().kubeconfig.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(kc) = kube::config::Kubeconfig::read_from(&kubeconfig) else {
                    return;
                };
                let Ok(cfg) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
                else {
                    return;
                };
                let Ok(client) = Client::try_from(cfg) else {
                    return;
                };
                let _ = Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(&binding, &DeleteParams::default())
                    .await;
                delete_policies(&client, &policies).await;
            });
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes the MutatingWebhookConfiguration of this name when dropped.
pub struct RemoveWebhook(pub String);
impl Drop for RemoveWebhook {
    fn drop(&mut self) {
        let name = self.0.clone();
        let kubeconfig = super::control_plane().kubeconfig.clone();
        let _ = std::process::Command::new(super::control_plane().binary("kubectl"))
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

/// A webhook served on a free loopback port and registered under this test's own name (removed
/// when the test ends): the name and the controller flags that say so.
pub struct Served {
    pub name: String,
    pub args: Vec<String>,
    _remove: RemoveWebhook,
}

impl Served {
    pub fn new(h: &Harness) -> Served {
        let port = free_port();
        let name = format!("acr-helper-{}", h.config_ns.name);
        let args = [
            "--token-mode",
            "workerRole",
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-url",
            &format!("https://127.0.0.1:{port}/mutate"),
            "--webhook-cert-sans",
            "127.0.0.1",
            "--webhook-configuration",
            &name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Served {
            _remove: RemoveWebhook(name.clone()),
            name,
            args,
        }
    }

    pub fn flags(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

/// The parsed `.dockerconfigjson` of a Secret.
pub fn dockerconfig(s: &Secret) -> Value {
    s.data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .and_then(|b| serde_json::from_slice(&b.0).ok())
        .unwrap_or(Value::Null)
}

/// The sorted registry domains of a `.dockerconfigjson`.
pub fn domains(doc: &Value) -> Vec<String> {
    doc["auths"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}
