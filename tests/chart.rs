//! The Helm chart: lint, the committed rendering in deploy/, and install / upgrade / uninstall on
//! the real API server with the controller running under the chart's own ServiceAccount and RBAC.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::fake_cloud::{FakeCloud, default_config};
use support::harness::BINARY;
use support::{TestNamespace, control_plane, repo_root, wait_until};

const CHART: &str = "charts/aliyun-acr-credential-helper";
const RENDERED: &str = "deploy/aliyun-acr-credential-helper.yaml";

fn helm(args: &[&str]) -> Output {
    let cp = control_plane();
    Command::new(cp.binary("helm"))
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("acr-helper-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("acr-helper-helm/config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("acr-helper-helm/data"),
        )
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("helm {args:?}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn helm_lint_strict_passes() {
    ok(helm(&["lint", "--strict", CHART]), "helm lint --strict");
}

#[test]
fn deploy_holds_the_chart_rendered_with_default_values() {
    let rendered = ok(
        helm(&[
            "template",
            "aliyun-acr-credential-helper",
            CHART,
            "-n",
            "kube-system",
            "--no-hooks",
        ]),
        "helm template",
    );
    let committed = std::fs::read_to_string(repo_root().join(RENDERED)).unwrap_or_default();
    assert!(
        committed == rendered,
        "{RENDERED} is out of date; regenerate it with scripts/render-deploy"
    );
}

/// One template of the chart rendered as release `x` in kube-system, with extra helm arguments.
fn template(show_only: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "x",
        CHART,
        "-n",
        "kube-system",
        "--show-only",
        show_only,
    ];
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
fn rrsa_enabled_mounts_the_token_and_turns_rrsa_on_and_extra_env_reaches_the_container() {
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
    let extra: Vec<&str> = set.iter().flat_map(|s| ["--set", *s]).collect();
    let file = std::env::temp_dir().join(format!("acr-helper-dep-{}.yaml", rand::random::<u32>()));
    std::fs::write(&file, template("templates/deployment.yaml", &extra))
        .unwrap_or_else(|e| panic!("{e}"));
    let cp = control_plane();
    let out = Command::new(cp.binary("kubectl"))
        .args(["create", "--dry-run=server", "-o", "name", "-f"])
        .arg(&file)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&file);
    ok(
        out,
        "kubectl create --dry-run=server of the rendered Deployment",
    );
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
    let webhook_name = format!("{release}-aliyun-acr-credential-helper");
    let set_ns = format!("acrConfiguration.watchNamespace={}", ws.name);
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
    let extra: Vec<&String> = granted.difference(&baseline).collect();
    let documented = [
        "namespaces [] [] [get list watch]".to_owned(),
        "serviceaccounts [] [] [get list watch patch]".to_owned(),
        "secrets [] [aliyun-acr-credential-helper] [get list watch patch delete]".to_owned(),
        "secrets [] [] [create]".to_owned(),
        "events.events.k8s.io [] [] [create patch]".to_owned(),
        format!(
            "mutatingwebhookconfigurations.admissionregistration.k8s.io [] [{webhook_name}] [get patch delete]"
        ),
        "mutatingwebhookconfigurations.admissionregistration.k8s.io [] [] [create]".to_owned(),
        // The release namespace (kube-system here, which also holds the managed-role token).
        "configmaps [] [acr-configuration] [get list watch patch]".to_owned(),
        "secrets [] [aliyun-acr-credential-helper-webhook-tls] [get list watch update delete]"
            .to_owned(),
        "secrets [] [aliyun-acr-credential-helper-last-config] [get list watch update delete]"
            .to_owned(),
        "leases.coordination.k8s.io [] [aliyun-acr-credential-helper] [get update]".to_owned(),
        "leases.coordination.k8s.io [] [] [create]".to_owned(),
        "secrets [] [addon.aliyuncsmanagedacrrole.token] [get]".to_owned(),
    ];
    assert_eq!(
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        documented
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        "the chart's ServiceAccount may do exactly what the chart documents"
    );

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
    let webhook_port = support::harness::free_port();
    let webhook_addr = format!("127.0.0.1:{webhook_port}");
    let webhook_url = format!("https://127.0.0.1:{webhook_port}/mutate");
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
    let referenced = |sa: &'static str| {
        let sas = sas.clone();
        async move {
            sas.get_opt(sa).await.ok().flatten().is_some_and(|s| {
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
            secrets
                .get_opt("aliyun-acr-credential-helper")
                .await
                .ok()
                .flatten()
                .is_some()
                && referenced("default").await
        },
    )
    .await;

    // helm upgrade with changed values changes the ConfigMap, and the running controller follows
    // (including registering the webhook, under the chart's RBAC).
    ok(
        helm(&[
            "upgrade",
            &release,
            CHART,
            "-n",
            &release_ns_name,
            "--reuse-values",
            "--set",
            "acrConfiguration.serviceAccount=builder",
            "--set",
            "acrConfiguration.webhook.enable=true",
        ]),
        "helm upgrade",
    );
    support::create_service_account(&client, &ws.name, "builder", &[]).await;
    let mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        );
    wait_until(
        Duration::from_secs(30),
        "the webhook registration",
        || async { mwcs.get_opt(&webhook_name).await.ok().flatten().is_some() },
    )
    .await;
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
        || async { jobs.get_opt(hook).await.ok().flatten().is_some() },
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
    // certificate or persisted configuration, while the controller process still runs.
    for _ in 0..2 {
        assert!(
            mwcs.get_opt(&webhook_name).await.ok().flatten().is_none(),
            "uninstall left the webhook"
        );
        for sa in ["default", "builder"] {
            assert!(
                !referenced(sa).await,
                "uninstall left the reference on {sa}"
            );
        }
        assert!(
            secrets
                .get_opt("aliyun-acr-credential-helper")
                .await
                .ok()
                .flatten()
                .is_none()
        );
        let own =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &release_ns_name);
        for name in [
            "aliyun-acr-credential-helper-webhook-tls",
            "aliyun-acr-credential-helper-last-config",
        ] {
            assert!(
                own.get_opt(name).await.ok().flatten().is_none(),
                "uninstall left Secret {name}"
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let _ = controller.kill();
    let _ = controller.wait();
    support::leaks::file("controller", &dir.join("controller.log"));
    let _ = std::fs::remove_dir_all(&dir);
}
