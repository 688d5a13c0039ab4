//! The Helm chart: lint, the committed rendering in deploy/, and install / upgrade / uninstall on
//! the real API server with the controller running under the chart's own ServiceAccount and RBAC.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::fake_cloud::{FakeCloud, default_config};
use support::harness::BINARY;
use support::{TestNamespace, control_plane, helm, ok, repo_root, wait_until};

const CHART: &str = "charts/aliyun-acr-credential-helper";
/// What an offline rendering is told of the target cluster (scripts/render-deploy says the same).
const TARGET: [&str; 4] = [
    "--kube-version",
    "1.37.1",
    "--api-versions",
    "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
];

#[test]
fn helm_lint_strict_passes() {
    ok(helm(&["lint", "--strict", CHART]), "helm lint --strict");
}

#[test]
fn deploy_holds_the_chart_rendered_with_default_values() {
    let dir = std::env::temp_dir().join(format!("acr-helper-deploy-{}", rand::random::<u32>()));
    let out = Command::new(repo_root().join("scripts/render-deploy"))
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("scripts/render-deploy: {e}"));
    ok(out, "scripts/render-deploy");
    for file in [
        "aliyun-acr-credential-helper.yaml",
        "acr-configuration.yaml",
    ] {
        let rendered = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let committed =
            std::fs::read_to_string(repo_root().join("deploy").join(file)).unwrap_or_default();
        assert!(
            !rendered.is_empty() && committed == rendered,
            "deploy/{file} is out of date; regenerate it with scripts/render-deploy"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One template of the chart rendered as release `x` in kube-system, with extra helm arguments.
fn template(show_only: &str, extra: &[&str]) -> String {
    template_in("kube-system", show_only, extra)
}

/// The same, rendered for release namespace `ns`.
fn template_in(ns: &str, show_only: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", "x", CHART, "-n", ns, "--show-only", show_only];
    args.extend(TARGET);
    args.extend_from_slice(extra);
    ok(helm(&args), "helm template")
}

/// One template rendered with `--set` values, parsed.
fn render(show_only: &str, set: &[&str]) -> serde_json::Value {
    let extra: Vec<&str> = set.iter().flat_map(|s| ["--set", *s]).collect();
    let out = template(show_only, &extra);
    serde_saphyr::from_str(&out).unwrap_or_else(|e| panic!("{show_only}: {e}\n{out}"))
}

#[test]
fn the_rendered_config_map_passes_check_config() {
    // The chart's ConfigMap, for default values and for a full set of values.
    let values = repo_root().join("tests/data/chart-values-full.yaml");
    let values = values.display().to_string();
    for extra in [&[][..], &["-f", values.as_str()]] {
        let cm = template("templates/configmap.yaml", extra);
        let file =
            std::env::temp_dir().join(format!("acr-helper-cm-{}.yaml", rand::random::<u32>()));
        std::fs::write(&file, cm).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(BINARY)
            .args(["--region", "cn-hangzhou", "check-config"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&file);
        ok(out, "check-config of the rendered ConfigMap");
    }
}

#[test]
fn a_command_run_in_the_controllers_container_acts_on_the_release_it_belongs_to() {
    // `kubectl exec deploy/... -- status` (or plan, cleanup) takes no flags: the container's
    // variables must name what the controller's own flags name, for any release and values.
    for set in [
        &[][..],
        &[
            "pullSecretName=team-pull",
            "leaderElection.leaseDuration=30s",
            "leaderElection.leaseGrace=7s",
        ][..],
    ] {
        let d = render("templates/deployment.yaml", set);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap_or_else(|| panic!("no args"))
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let env: std::collections::BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap_or_else(|| panic!("no env"))
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        for flag in [
            "config-namespace",
            "secret-name",
            "webhook-configuration",
            "webhook-tls-secret",
            "last-config-secret",
            "state-secret",
            "lease-name",
            "lease-duration",
            "lease-grace",
        ] {
            let prefix = format!("--{flag}=");
            let arg = args
                .iter()
                .find_map(|a| a.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("{set:?}: the controller has no --{flag}"));
            let var = format!("ACR_HELPER_{}", flag.to_uppercase().replace('-', "_"));
            assert_eq!(
                env.get(var.as_str()).copied(),
                Some(arg),
                "{set:?}: {var} differs from --{flag}"
            );
        }
    }
}

/// Creates the rendered `template` with `--dry-run=server` on the real API server: it must take
/// the object as rendered. (Rendered into a namespace of its own: the install test's release in
/// kube-system has objects of the same names.)
async fn server_accepts(show_only: &str, set: &[&str]) {
    let cp = control_plane();
    let ns = TestNamespace::create(&cp.client().await, "chart-dry").await;
    let extra: Vec<&str> = set.iter().flat_map(|s| ["--set", *s]).collect();
    let file = std::env::temp_dir().join(format!("acr-helper-obj-{}.yaml", rand::random::<u32>()));
    std::fs::write(&file, template_in(&ns.name, show_only, &extra))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(cp.binary("kubectl"))
        .args(["create", "--dry-run=server", "-o", "name", "-f"])
        .arg(&file)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&file);
    ok(
        out,
        &format!("kubectl create --dry-run=server of {show_only}"),
    );
}

#[tokio::test]
async fn metrics_bind_to_the_pod_ip_or_localhost_and_only_two_ports_are_reachable() {
    let container = |set: &[&str]| {
        render("templates/deployment.yaml", set)["spec"]["template"]["spec"]["containers"][0]
            .clone()
    };
    let args = |c: &serde_json::Value| -> Vec<String> {
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    // Default: the pod's own address (never 0.0.0.0), probes on it.
    let c = container(&[]);
    assert!(
        args(&c).contains(&"--metrics-addr=$(POD_IP):8080".to_owned()),
        "{c}"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    // localhost: /metrics only for a sidecar, the probes on their own port of the pod's address.
    let c = container(&["metrics.bind=localhost"]);
    let a = args(&c);
    assert!(
        a.contains(&"--metrics-addr=127.0.0.1:8080".to_owned()),
        "{a:?}"
    );
    assert!(
        a.contains(&"--health-addr=$(POD_IP):8081".to_owned()),
        "{a:?}"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "health");
    assert!(
        args(&container(&["metrics.bind=all"])).contains(&"--metrics-addr=0.0.0.0:8080".to_owned())
    );
    server_accepts("templates/deployment.yaml", &["metrics.bind=localhost"]).await;
    // The NetworkPolicy admits the webhook and metrics ports of the controller's pods only.
    let np = render("templates/networkpolicy.yaml", &[]);
    let ports: Vec<String> = np["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ports, ["webhook", "metrics", "health"]);
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    server_accepts("templates/networkpolicy.yaml", &[]).await;
}

#[tokio::test]
async fn rrsa_enabled_mounts_the_token_and_turns_rrsa_on_and_extra_env_reaches_the_container() {
    let set = [
        "rrsa.enabled=true",
        "extraEnv[0].name=ACR_HELPER_WORKERS",
        "extraEnv[0].value=32",
        "extraEnv[1].name=ACR_HELPER_REGION",
        "extraEnv[1].valueFrom.configMapKeyRef.name=cluster-info",
        "extraEnv[1].valueFrom.configMapKeyRef.key=region",
        "extraEnv[2].name=ACR_HELPER_METADATA_HARDENED_ONLY",
        "extraEnv[2].value=false",
        "extraEnv[3].name=EMPTY",
    ];
    let cm = render("templates/configmap.yaml", &set);
    assert_eq!(
        cm["data"]["rrsa"].as_str().map(str::trim),
        Some("enable: true")
    );
    let off = render("templates/configmap.yaml", &[]);
    assert_eq!(
        off["data"]["rrsa"].as_str().map(str::trim),
        Some("enable: false")
    );

    let deploy = render("templates/deployment.yaml", &set);
    // The real API server takes the Deployment as rendered (every variable a string).
    server_accepts("templates/deployment.yaml", &set).await;
    let pod = &deploy["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    // `--set` makes 32 a number; the container's variable must still be the string "32".
    assert_eq!(value("ACR_HELPER_WORKERS"), Some("32".into()), "{env:?}");
    assert_eq!(
        value("ACR_HELPER_METADATA_HARDENED_ONLY"),
        Some("false".into()),
        "{env:?}"
    );
    assert_eq!(value("EMPTY"), Some("".into()), "{env:?}");
    let region = env.iter().find(|e| e["name"] == "ACR_HELPER_REGION");
    assert_eq!(
        region.map(|e| e["valueFrom"]["configMapKeyRef"]["key"].clone()),
        Some("region".into()),
        "{env:?}"
    );
    assert_eq!(
        value("ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
        Some("/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token".into())
    );
    let token = &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "sts.aliyuncs.com", "{pod}");

    // The schema refuses an extra variable without a name.
    let out = helm(&["template", "x", CHART, "--set", "extraEnv[0].value=1"]);
    assert!(
        !out.status.success(),
        "an unnamed extraEnv entry was accepted"
    );
}

/// One row of the README's RBAC table (*RBAC (least privilege, by name) and the admission
/// policies*): the rules the chart's ServiceAccount has, as `kubectl auth can-i --list` prints
/// them, and the policy that confines its writes.
#[derive(Debug)]
struct RbacRow {
    group: String,
    resource: String,
    /// Empty: any name.
    names: Vec<String>,
    verbs: Vec<String>,
    policy: Option<String>,
}

impl RbacRow {
    fn can_i_lines(&self) -> Vec<String> {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let verbs = self.verbs.join(" ");
        if self.names.is_empty() {
            return vec![format!("{resource} [] [] [{verbs}]")];
        }
        self.names
            .iter()
            .map(|n| format!("{resource} [] [{n}] [{verbs}]"))
            .collect()
    }

    /// The admission operations its write verbs are.
    fn operations(&self) -> Vec<&'static str> {
        let mut ops: Vec<&'static str> = self
            .verbs
            .iter()
            .filter_map(|v| match v.as_str() {
                "create" => Some("CREATE"),
                "update" | "patch" => Some("UPDATE"),
                "delete" => Some("DELETE"),
                _ => None,
            })
            .collect();
        ops.dedup();
        ops
    }
}

/// The README's RBAC table, with `<release>` as the release's cluster-scoped name `full`.
fn readme_rbac_rows(full: &str) -> Vec<RbacRow> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let section = readme
        .split("### RBAC (least privilege, by name) and the admission policies")
        .nth(1)
        .unwrap_or_else(|| panic!("the README has no RBAC section"));
    let ticks = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|n| n.replace("<release>", full))
            .collect()
    };
    let rows: Vec<RbacRow> = section
        .lines()
        .skip_while(|l| !l.starts_with("| scope |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let resource = ticks(cells[1]).pop().unwrap_or_default();
            let (group, resource) = match resource.rsplit_once('/') {
                Some((g, r)) => (g.to_owned(), r.to_owned()),
                None => (String::new(), resource),
            };
            RbacRow {
                group,
                resource,
                names: ticks(cells[2]),
                verbs: cells[3].split(',').map(|v| v.trim().to_owned()).collect(),
                policy: ticks(cells[4]).pop(),
            }
        })
        .collect();
    assert!(
        rows.len() >= 8,
        "the README's RBAC table is not where expected: {rows:?}"
    );
    rows
}

#[tokio::test]
async fn install_upgrade_uninstall_and_the_chart_rbac_suffices() {
    let cp = control_plane();
    let client = cp.client().await;
    // Installed into kube-system, as operators do. Only this test uses kube-system's
    // acr-configuration; a release left by an interrupted earlier run is removed first.
    let release_ns_name = "kube-system".to_owned();
    let ws = TestNamespace::create(&client, "chart-ws").await;
    let fake = FakeCloud::start(&default_config());
    let release = "acr-e2e".to_owned();
    let _ = helm(&[
        "uninstall",
        &release,
        "-n",
        &release_ns_name,
        "--ignore-not-found",
        "--no-hooks",
    ]);
    // ...and the ConfigMap it kept (uninstall keeps the operator's configuration).
    let _ = Api::<ConfigMap>::namespaced(client.clone(), &release_ns_name)
        .delete("acr-configuration", &Default::default())
        .await;
    let webhook_name = format!("{release}-aliyun-acr-credential-helper");
    let set_ns = format!("acrConfiguration.watchNamespace={}", ws.name);
    // No Service reaches a process of the test: the webhook is registered with a loopback URL,
    // which the chart's webhook policy is told to allow.
    let webhook_port = support::harness::free_port();
    let webhook_addr = format!("127.0.0.1:{webhook_port}");
    let webhook_url = format!("https://127.0.0.1:{webhook_port}/mutate");
    let set_url = format!("webhook.url={webhook_url}");
    ok(
        helm(&[
            "install",
            &release,
            CHART,
            "-n",
            &release_ns_name,
            "--wait=false",
            "--set",
            &set_ns,
            "--set",
            "acrConfiguration.acrRegistryInfo[0].instanceId=cri-fakeinstance0001",
            "--set",
            &set_url,
        ]),
        "helm install",
    );

    // `kubectl auth can-i --list` for the chart's ServiceAccount shows the documented rules and
    // nothing more than what any ServiceAccount without bindings has.
    let can_i = |sa_name: &str| {
        let sa = format!("system:serviceaccount:{}:{sa_name}", release_ns_name);
        let out = Command::new(cp.binary("kubectl"))
            .args([
                "auth",
                "can-i",
                "--list",
                "--as",
                &sa,
                "-n",
                &release_ns_name,
            ])
            .env("KUBECONFIG", &cp.kubeconfig)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        ok(out, "kubectl auth can-i --list")
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let nobody = format!("nobody-{:08x}", rand::random::<u32>());
    support::create_service_account(&client, &release_ns_name, &nobody, &[]).await;
    let baseline = can_i(&nobody);
    let _ = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        client.clone(),
        &release_ns_name,
    )
    .delete(&nobody, &Default::default())
    .await;
    let granted = can_i("aliyun-acr-credential-helper");
    let extra: std::collections::BTreeSet<String> =
        granted.difference(&baseline).cloned().collect();
    let rows = readme_rbac_rows(&webhook_name);
    let documented: std::collections::BTreeSet<String> =
        rows.iter().flat_map(RbacRow::can_i_lines).collect();
    assert_eq!(
        extra, documented,
        "the chart's ServiceAccount may do exactly what the README's RBAC table says"
    );
    // Every write a row grants is confined by the policy the row names, as rendered.
    let policies: Vec<serde_json::Value> = support::harness::chart_policies(
        &release,
        &release_ns_name,
        "aliyun-acr-credential-helper",
        &[&format!("webhook.url={webhook_url}")],
        &["-secrets", "-serviceaccounts", "-configmap", "-webhook"],
    );
    for row in &rows {
        let Some(policy) = &row.policy else { continue };
        let p = policies
            .iter()
            .find(|p| {
                p["kind"] == "ValidatingAdmissionPolicy" && p["metadata"]["name"] == policy.as_str()
            })
            .unwrap_or_else(|| panic!("the README names policy {policy}, the chart has none"));
        assert!(
            policies
                .iter()
                .any(|b| b["kind"] == "ValidatingAdmissionPolicyBinding"
                    && b["spec"]["policyName"] == policy.as_str()
                    && b["spec"]["validationActions"] == serde_json::json!(["Deny"])),
            "{policy} has no Deny binding"
        );
        for op in row.operations() {
            let covered = p["spec"]["matchConstraints"]["resourceRules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    r["resources"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == row.resource.as_str()))
                        && r["apiGroups"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == row.group.as_str()))
                        && r["operations"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == op))
                });
            assert!(covered, "{policy} does not cover {op} of {}", row.resource);
        }
    }

    // What the rules do not grant is refused: another Secret (read or list), another product's
    // webhook registration (read, patch, delete).
    let dir = std::env::temp_dir().join(format!("acr-helper-chart-{}", release_ns_name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let chart_token = support::service_account_token(
        &client,
        &release_ns_name,
        "aliyun-acr-credential-helper",
        &[],
        3600,
    )
    .await;
    let as_chart = cp.client_with_token(&chart_token).await;
    let other_secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "someone-elses"}, "stringData": {"k": "v"},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ws.name)
        .create(&Default::default(), &other_secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    let theirs = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_chart.clone(), &ws.name);
    assert!(
        forbidden(theirs.get("someone-elses").await.map(|_| ())),
        "read another Secret"
    );
    assert!(
        forbidden(theirs.list(&Default::default()).await.map(|_| ())),
        "listed Secrets"
    );
    assert!(
        forbidden(
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                as_chart.clone(),
                &release_ns_name
            )
            .get("addon-something-else")
            .await
            .map(|_| ())
        ),
        "read another Secret of the release namespace"
    );
    let foreign_webhook = format!("foreign-{:08x}", rand::random::<u32>());
    let mwc: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": foreign_webhook}, "webhooks": []}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let admin_mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        );
    admin_mwcs
        .create(&Default::default(), &mwc)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let chart_mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            as_chart.clone(),
        );
    let touch = serde_json::json!({"metadata": {"labels": {"taken": "over"}}});
    assert!(
        forbidden(chart_mwcs.get(&foreign_webhook).await.map(|_| ())),
        "read another webhook"
    );
    assert!(
        forbidden(
            chart_mwcs
                .patch(
                    &foreign_webhook,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&touch)
                )
                .await
                .map(|_| ())
        ),
        "patched another product's webhook"
    );
    assert!(
        forbidden(
            chart_mwcs
                .delete(&foreign_webhook, &Default::default())
                .await
                .map(|_| ())
        ),
        "deleted another product's webhook"
    );
    let _ = admin_mwcs
        .delete(&foreign_webhook, &Default::default())
        .await;

    // The controller, run with the chart's ServiceAccount token (not admin), does its whole job.
    let kubeconfig = dir.join("kubeconfig");
    support::service_account_kubeconfig(
        &release_ns_name,
        "aliyun-acr-credential-helper",
        &kubeconfig,
    )
    .await;
    let log = std::fs::File::create(dir.join("controller.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut controller = Command::new(BINARY)
        .args(fake.cloud_args())
        .args([
            "--config-namespace",
            &release_ns_name,
            "--token-mode",
            "workerRole",
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            &webhook_addr,
            "--webhook-url",
            &webhook_url,
            "--webhook-cert-sans",
            "127.0.0.1",
            "--webhook-configuration",
            &webhook_name,
            "--log-format",
            "plain",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ws.name);
    let sas =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ws.name);
    // Whether `sa` holds our reference; a read that fails (other than a 404) fails the test.
    let referenced = |sa: &'static str| {
        let sas = sas.clone();
        async move {
            let got = sas
                .get_opt(sa)
                .await
                .unwrap_or_else(|e| panic!("get ServiceAccount {sa}: {e}"));
            got.is_some_and(|s| {
                s.image_pull_secrets
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.name == "aliyun-acr-credential-helper")
            })
        }
    };
    wait_until(
        Duration::from_secs(30),
        "the Secret and the reference",
        || async {
            !support::is_absent(&secrets, "aliyun-acr-credential-helper").await
                && referenced("default").await
        },
    )
    .await;

    // `helm test`: its Pod runs `status` with the chart's ServiceAccount. No kubelet runs it here,
    // so the test does: it runs exactly the Pod's arguments as that ServiceAccount, then records
    // the Pod's phase, as the kubelet would.
    let tester = {
        let release = release.clone();
        let ns = release_ns_name.clone();
        std::thread::spawn(move || helm(&["test", &release, "-n", &ns, "--timeout", "2m"]))
    };
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &release_ns_name);
    let test_pod = "aliyun-acr-credential-helper-test";
    wait_until(Duration::from_secs(60), "the helm test Pod", || async {
        !support::is_absent(&pods, test_pod).await
    })
    .await;
    let spec = pods
        .get(test_pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .spec
        .unwrap_or_default();
    let test_args = spec.containers[0].args.clone().unwrap_or_default();
    assert_eq!(
        test_args.first().map(String::as_str),
        Some("status"),
        "{test_args:?}"
    );
    let test_kubeconfig = dir.join("test-kubeconfig");
    support::service_account_kubeconfig(
        &release_ns_name,
        &spec.service_account_name.clone().unwrap_or_default(),
        &test_kubeconfig,
    )
    .await;
    let out = Command::new(BINARY)
        .args(&test_args)
        .env("KUBECONFIG", &test_kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "status failed with the chart's ServiceAccount:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("namespace {}: served", ws.name))
            && stdout.contains("0 ServiceAccount(s) pending"),
        "{stdout}"
    );
    pods.patch_status(
        test_pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap_or_else(|e| panic!("record the test Pod's phase: {e}"));
    ok(
        tester
            .join()
            .unwrap_or_else(|_| panic!("helm test panicked")),
        "helm test",
    );

    // The operator's workflow: `kubectl edit cm acr-configuration`. A `helm upgrade` (even one
    // that sets acrConfiguration values) keeps the edit, and the running controller follows it
    // (including registering the webhook, under the chart's RBAC).
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &release_ns_name);
    cms.patch(
        "acr-configuration",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"data": {
            "service-account": "builder",
            "webhook-configuration": "enable: true\n",
        }})),
    )
    .await
    .unwrap_or_else(|e| panic!("edit the ConfigMap: {e}"));
    let edited = cms
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .data;
    ok(
        helm(&[
            "upgrade",
            &release,
            CHART,
            "-n",
            &release_ns_name,
            "--reuse-values",
            "--set",
            "acrConfiguration.serviceAccount=not-this",
        ]),
        "helm upgrade",
    );
    assert_eq!(
        cms.get("acr-configuration")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .data,
        edited,
        "helm upgrade reverted a kubectl edit of the ConfigMap"
    );
    support::create_service_account(&client, &ws.name, "builder", &[]).await;
    let mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        );
    let webhooks = |m: Option<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    >| { m.and_then(|m| m.webhooks).unwrap_or_default() };
    // The chart made the registration (the controller may not create one), empty until the
    // leader fills it under the chart's RBAC and webhook policy.
    wait_until(
        Duration::from_secs(30),
        "the webhook registration",
        || async {
            let m = mwcs
                .get_opt(&webhook_name)
                .await
                .unwrap_or_else(|e| panic!("get the registration: {e}"));
            !webhooks(m).is_empty()
        },
    )
    .await;
    // An upgrade that changes nothing the controller reads keeps the leader's webhooks: the chart
    // never sets them.
    let before = webhooks(
        mwcs.get_opt(&webhook_name)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    ok(
        helm(&[
            "upgrade",
            &release,
            CHART,
            "-n",
            &release_ns_name,
            "--reuse-values",
            "--set",
            "podAnnotations.upgraded=again",
        ]),
        "helm upgrade",
    );
    assert_eq!(
        webhooks(
            mwcs.get_opt(&webhook_name)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        ),
        before,
        "helm upgrade changed the leader's webhooks"
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &release_ns_name)
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("service-account")
            .map(String::as_str),
        Some("builder")
    );
    wait_until(
        Duration::from_secs(30),
        "the controller to follow the upgrade",
        || async { referenced("builder").await && !referenced("default").await },
    )
    .await;
    // Plain `helm uninstall`, with the controller still running: the pre-delete hook runs
    // `cleanup`. No kubelet or Job controller runs here, so the test does their part: it runs
    // exactly the hook Job's arguments with the Job's ServiceAccount, then records the Job as
    // complete, as the Job controller would.
    let uninstall = {
        let release = release.clone();
        let ns = release_ns_name.clone();
        std::thread::spawn(move || helm(&["uninstall", &release, "-n", &ns, "--timeout", "3m"]))
    };
    let jobs =
        Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &release_ns_name);
    let hook = "aliyun-acr-credential-helper-cleanup";
    wait_until(
        Duration::from_secs(60),
        "the pre-delete hook Job",
        || async { !support::is_absent(&jobs, hook).await },
    )
    .await;
    let job = jobs.get(hook).await.unwrap_or_else(|e| panic!("{e}"));
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("cleanup"),
        "{args:?}"
    );
    let hook_sa = pod.service_account_name.clone().unwrap_or_default();
    let hook_kubeconfig = dir.join("hook-kubeconfig");
    support::service_account_kubeconfig(&release_ns_name, &hook_sa, &hook_kubeconfig).await;
    let out = Command::new(BINARY)
        .args(&args)
        .env("KUBECONFIG", &hook_kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "the hook's cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = jiff::Timestamp::now().to_string();
    let condition = |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": t, "message": t});
    let status = serde_json::json!({"status": {
        "startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
        "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
    }});
    jobs.patch_status(
        hook,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .unwrap_or_else(|e| panic!("complete the hook Job: {e}"));
    ok(
        uninstall
            .join()
            .unwrap_or_else(|_| panic!("helm uninstall panicked")),
        "helm uninstall",
    );

    // Nothing of ours is left: no reference, no pull Secret, no webhook registration, no
    // certificate or persisted configuration, while the controller process still runs: at once,
    // and again once it has had its chance to put something back (and for 3 s more). It could
    // only as the leader, so it must have tried for the Lease since (its log says so: uninstall
    // took its ServiceAccount, and the API server refuses it).
    let own =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &release_ns_name);
    let nothing_left = || async {
        assert!(
            support::is_absent(&mwcs, &webhook_name).await,
            "uninstall left the webhook"
        );
        for sa in ["default", "builder"] {
            assert!(
                !referenced(sa).await,
                "uninstall left the reference on {sa}"
            );
        }
        assert!(
            support::is_absent(&secrets, "aliyun-acr-credential-helper").await,
            "uninstall left the pull Secret"
        );
        for name in [
            "aliyun-acr-credential-helper-webhook-tls",
            "aliyun-acr-credential-helper-last-config",
            "aliyun-acr-credential-helper-state",
        ] {
            assert!(
                support::is_absent(&own, name).await,
                "uninstall left Secret {name}"
            );
        }
    };
    nothing_left().await;
    // Uninstall deletes the Lease with the release (the chart owns it: the controller may not
    // create one); were one left, the one cleanup took would first have to run out.
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        &release_ns_name,
    )
    .get_opt("aliyun-acr-credential-helper")
    .await
    .unwrap_or_else(|e| panic!("the Lease: {e}"))
    .map(|l| l.spec.unwrap_or_default());
    if let Some(lease) = &lease {
        let runs_out = lease
            .renew_time
            .as_ref()
            .or(lease.acquire_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(|| panic!("a Lease never renewed: {lease:?}"))
            + jiff::SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.unwrap_or(0)));
        if let Ok(left) = Duration::try_from(runs_out.duration_since(jiff::Timestamp::now())) {
            tokio::time::sleep(left).await;
        }
    }
    let controller_log = dir.join("controller.log");
    let read_log = || {
        std::fs::read_to_string(&controller_log)
            .unwrap_or_else(|e| panic!("read {}: {e}", controller_log.display()))
    };
    let seen = read_log().len();
    wait_until(
        Duration::from_secs(30),
        "the controller to try for the Lease after uninstall",
        || async {
            let log = read_log();
            let since = log.get(seen..).unwrap_or_default();
            since.contains("could not read or renew the Lease")
                || since.contains("became the leader")
        },
    )
    .await;
    let log = read_log();
    let tried = log
        .get(seen..)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("the Lease") || l.contains("became the leader"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "after uninstall (Lease left: {:?}), the controller: {tried}",
        lease.map(|l| l.holder_identity)
    );
    support::holds_for(Duration::from_secs(3), nothing_left).await;
    // The configuration is the operator's: uninstall keeps it, without the cleanup mark, so a
    // new install serves it at once.
    let kept = cms
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("uninstall removed the ConfigMap: {e}"));
    assert_eq!(kept.data, edited, "uninstall changed the configuration");
    assert!(
        !kept
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("aliyun-acr-credential-helper/cleanup"),
        "uninstall left the cleanup mark"
    );
    let _ = cms.delete("acr-configuration", &Default::default()).await;
    let _ = controller.kill();
    let _ = controller.wait();
    support::leaks::file("controller", &dir.join("controller.log"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cluster_with_an_acr_configuration_keeps_it_unchanged_and_is_served_from_it() {
    let cp = control_plane();
    let client = cp.client().await;
    let release_ns = TestNamespace::create(&client, "chart-orig").await;
    let ws = TestNamespace::create(&client, "chart-orig-ws").await;
    // The ConfigMap as ACK's add-on left it, in the seeds' shape (notify-email, a domains string).
    let existing: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "acr-configuration", "namespace": release_ns.name},
        "data": {
            "service-account": "default",
            "watch-namespace": ws.name,
            "expiring-threshold": "15m",
            "notify-email": "c*@example.com",
            "acr-registry-info": "- instanceId: \"cri-fakeinstance0001\"\n  regionId: \"cn-hangzhou\"\n  domains: \"fake-registry.cn-hangzhou.cr.aliyuncs.com\"\n",
        },
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &release_ns.name);
    let before = cms
        .create(&Default::default(), &existing)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let release = format!("acr-orig-{:08x}", rand::random::<u32>());
    // Default values (acrConfiguration.create=true): helm install succeeds and writes nothing.
    ok(
        helm(&[
            "install",
            &release,
            CHART,
            "-n",
            &release_ns.name,
            "--wait=false",
            "--set",
            "tokenMode=workerRole",
            "--set",
            "acrConfiguration.watchNamespace=somewhere-else",
        ]),
        "helm install over an existing acr-configuration",
    );
    let after = cms
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.data, before.data, "the install changed the ConfigMap");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the install wrote the ConfigMap"
    );
    // The controller, with the chart's ServiceAccount, serves what that ConfigMap says.
    let fake = FakeCloud::start(&default_config());
    let dir = std::env::temp_dir().join(format!("acr-helper-orig-{}", release_ns.name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("kubeconfig");
    support::service_account_kubeconfig(
        &release_ns.name,
        "aliyun-acr-credential-helper",
        &kubeconfig,
    )
    .await;
    let log = std::fs::File::create(dir.join("controller.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut controller = Command::new(BINARY)
        .args(fake.cloud_args())
        .args([
            "--config-namespace",
            &release_ns.name,
            "--token-mode",
            "workerRole",
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--webhook-configuration",
            &format!("{release}-aliyun-acr-credential-helper"),
        ])
        .args(["--log-format", "plain"])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ws.name);
    wait_until(
        Duration::from_secs(30),
        "the pull Secret from the kept ConfigMap",
        || async {
            secrets
                .get_opt("aliyun-acr-credential-helper")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some_and(|s| {
                    support::harness::domains(&support::harness::dockerconfig(&s))
                        == ["fake-registry.cn-hangzhou.cr.aliyuncs.com"]
                })
        },
    )
    .await;
    let _ = controller.kill();
    let _ = controller.wait();
    support::leaks::file("controller", &dir.join("controller.log"));
    // Removing the release without its hook (`helm uninstall --no-hooks`, like `kubectl delete
    // -f deploy/`) removes what the chart rendered, the webhook registration included, and
    // leaves the ConfigMap as it was; what the controller wrote (pull Secrets, references)
    // stays until `cleanup` runs, which works with the replicas gone.
    let webhook = format!("{release}-aliyun-acr-credential-helper");
    let mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        );
    assert!(
        !support::is_absent(&mwcs, &webhook).await,
        "the chart did not create the webhook registration"
    );
    ok(
        helm(&["uninstall", &release, "-n", &release_ns.name, "--no-hooks"]),
        "helm uninstall",
    );
    assert!(
        support::is_absent(&mwcs, &webhook).await,
        "helm uninstall --no-hooks left the webhook registration"
    );
    let kept = cms
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("uninstall removed the ConfigMap: {e}"));
    assert_eq!(kept.data, before.data);
    assert!(
        !support::is_absent(&secrets, "aliyun-acr-credential-helper").await,
        "without the hook, the pull Secret stays until cleanup"
    );
    let out = Command::new(BINARY)
        .args([
            "cleanup",
            "--config-namespace",
            &release_ns.name,
            "--webhook-configuration",
            &webhook,
            "--unmark-when-done",
            "--log-format",
            "plain",
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "cleanup after helm uninstall --no-hooks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        support::is_absent(&secrets, "aliyun-acr-credential-helper").await,
        "cleanup left the pull Secret"
    );
    let sa =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ws.name)
            .get("default")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !sa.image_pull_secrets
            .unwrap_or_default()
            .iter()
            .any(|r| r.name == "aliyun-acr-credential-helper"),
        "cleanup left the reference"
    );
    let kept = cms
        .get("acr-configuration")
        .await
        .unwrap_or_else(|e| panic!("cleanup removed the ConfigMap: {e}"));
    assert_eq!(kept.data, before.data, "cleanup changed the configuration");
    let _ = std::fs::remove_dir_all(&dir);
}
