//! Proof on a real node: a kubelet and containerd (tests/cluster/node/node.sh) pull the project's
//! own image from a private registry that checks every login with the fake cloud, using what
//! the controller wrote, or the credential provider, and nothing else. All on the loopback;
//! Pods name their node and use the host network (there is no scheduler and no CNI).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::fake_cloud::*;
use support::harness::{Harness, Served};
use support::{TestNamespace, control_plane, wait_until};

const DOMAIN: &str = "fake-registry.cn-hangzhou.cr.aliyuncs.com";
const VPC_DOMAIN: &str = "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com";
const ENTERPRISE: &str = "- instanceId: cri-fakeinstance0001\n";
const ROLE_ANNOTATION: &str = "pod-identity.alibabacloud.com/role-name";

/// One node test at a time: each runs a kubelet and a containerd of its own on a shared
/// two-core machine.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running node (kubelet, containerd, registry), stopped when dropped.
struct Node {
    dir: PathBuf,
    name: String,
    image: String,
    registry_log: PathBuf,
    push_user: String,
}

impl Node {
    /// A node whose registry asks `fake` about every login, serving the Enterprise instance's
    /// domains; `provider`: a CredentialProviderConfig and its bin dir for the kubelet.
    fn up(fake: &FakeCloud, provider: Option<(&std::path::Path, &std::path::Path)>) -> Node {
        let cp = control_plane();
        let cp_dir = cp
            .dir
            .clone()
            .unwrap_or_else(|| panic!("needs our control plane's dir"));
        let name = format!("node-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut cmd = Command::new(support::repo_root().join("tests/cluster/node/node.sh"));
        cmd.arg("up")
            .arg(&cp_dir)
            .args([
                "--fake-url",
                &fake.url,
                "--domain",
                DOMAIN,
                "--domain",
                VPC_DOMAIN,
            ])
            .args([
                "--name",
                &name,
                "--owner-pid",
                &std::process::id().to_string(),
            ]);
        if let Some((config, bin_dir)) = provider {
            cmd.arg("--credential-provider")
                .arg(config)
                .arg("--provider-bin-dir")
                .arg(bin_dir);
        }
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("node.sh: {e}"));
        assert!(out.status.success(), "node.sh up failed");
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let env = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
        let var = |k: &str| {
            env.lines()
                .filter_map(|l| l.strip_prefix("export "))
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('\'').trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("{k} missing in {}/env", dir.display()))
        };
        Node {
            name: var("NODE_NAME"),
            image: var("IMAGE"),
            registry_log: PathBuf::from(var("REGISTRY_LOG")),
            push_user: var("PUSH_USER"),
            dir,
        }
    }

    /// The registry's requests so far (one JSON object each).
    fn registry_requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.registry_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Manifest pulls of the test image the registry answered with `status`, by whom.
    fn manifest_pulls(&self, status: u64) -> Vec<String> {
        self.registry_requests()
            .into_iter()
            .filter(|r| r["path"] == "/v2/team/app/manifests/1" && r["status"] == status)
            .map(|r| r["username"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// A Pod on this node running the image's `--version` (exits 0) as ServiceAccount `sa`.
    fn pod(&self, name: &str, sa: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": self.pod_spec(sa, "Never"),
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod_spec(&self, sa: &str, restart: &str) -> Value {
        json!({
            "nodeName": self.name,
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "serviceAccountName": sa,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": self.image,
                "imagePullPolicy": "Always",
                "command": ["/aliyun-acr-credential-helper", "--version"],
            }],
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.join("logs/kubelet.log")).unwrap_or_default();
            eprintln!("--- kubelet log (last lines) ---");
            for l in log
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!("{l}");
            }
        }
        support::leaks::file("kubelet", &self.dir.join("logs/kubelet.log"));
        support::leaks::file("registry", &self.registry_log);
        let _ = Command::new(support::repo_root().join("tests/cluster/node/node.sh"))
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

/// Waits until Pod `ns/name`'s container has exited; returns its exit code.
async fn exit_code(client: &Client, ns: &str, name: &str) -> i32 {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let mut code = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while code.is_none() {
        let pod = pods
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get Pod {ns}/{name}: {e}"));
        let status = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next());
        code = status.as_ref().and_then(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or(c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
                .map(|t| t.exit_code)
        });
        if code.is_none() {
            assert!(
                Instant::now() < deadline,
                "Pod {ns}/{name} never ran: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    code.unwrap_or(-1)
}

/// Waits until Pod `ns/name` is waiting on its image with `ErrImagePull` or `ImagePullBackOff`.
async fn pull_refused(client: &Client, ns: &str, name: &str) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let seen = std::cell::RefCell::new(String::new());
    wait_until(Duration::from_secs(60), "ErrImagePull", || async {
        let pod = pods.get(name).await.unwrap_or_else(|e| panic!("{e}"));
        let reason = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason)
            .unwrap_or_default();
        let refused = matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff");
        *seen.borrow_mut() = reason;
        refused
    })
    .await;
    seen.into_inner()
}

/// The kubelet's Events about Pod `ns/name` with `reason`.
async fn pod_events(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create Pod in {ns}: {e}"))
}

/// The username of the one login the pull Secret of `ns` holds for the test image's registry.
async fn secret_login(h: &Harness, ns: &str) -> (String, String, String) {
    let s: Secret = h
        .secrets(ns)
        .get(&h.secret_name)
        .await
        .unwrap_or_else(|e| panic!("the pull Secret of {ns}: {e}"));
    let doc = support::harness::dockerconfig(&s);
    let login = &doc["auths"][DOMAIN];
    (
        login["username"].as_str().unwrap_or_default().to_owned(),
        login["password"].as_str().unwrap_or_default().to_owned(),
        s.metadata.uid.unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_deployment_pulls_the_private_image_with_the_controllers_secret_and_an_unselected_namespace_cannot()
 {
    let _one = ONE_NODE.lock().await;
    let h = Harness::new("node", &default_config(), "cluster-admin").await;
    let node = Node::up(&h.fake, None);
    let selected = TestNamespace::create(&h.client, "node-sel").await;
    let other = TestNamespace::create(&h.client, "node-unsel").await;
    for ns in [&selected, &other] {
        support::create_service_account(&h.client, &ns.name, "builder", &[]).await;
    }
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", selected.name.as_str()),
        ("service-account", "builder"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&selected.name, "builder", true).await;
    let (user, _, _) = secret_login(&h, &selected.name).await;

    // A Deployment (the Deployment and ReplicaSet controllers make its Pod) of ServiceAccount
    // builder: the kubelet pulls with the Secret the ServiceAccount names, the container runs.
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": node.pod_spec("builder", "Always")},
        },
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(h.client.clone(), &selected.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pods = Api::<Pod>::namespaced(h.client.clone(), &selected.name);
    let made = std::cell::RefCell::new(String::new());
    wait_until(Duration::from_secs(60), "the Deployment's Pod", || async {
        let list = pods
            .list(&ListParams::default().labels("app=app"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match list.items.first().and_then(|p| p.metadata.name.clone()) {
            Some(n) => {
                *made.borrow_mut() = n;
                true
            }
            None => false,
        }
    })
    .await;
    let pod_name = made.into_inner();
    let code = exit_code(&h.client, &selected.name, &pod_name).await;
    assert_eq!(code, 0, "the container's --version");
    eprintln!(
        "Deployment created -> its container ran and exited 0: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pod = pods.get(&pod_name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        support::reference_names(pod.spec.and_then(|s| s.image_pull_secrets)),
        std::slice::from_ref(&h.secret_name),
        "the ServiceAccount's reference, copied at admission"
    );
    let pulled_by = node.manifest_pulls(200);
    assert!(
        pulled_by.contains(&user),
        "no pull by {user}: {pulled_by:?}"
    );
    assert!(
        !pulled_by.contains(&node.push_user),
        "pulled with the push credential"
    );

    // The same Pod in a namespace the configuration does not select: no Secret, the registry
    // answers 401, the Pod waits on ErrImagePull.
    let refused_before = node.manifest_pulls(401).len();
    create_pod(&h.client, &other.name, &node.pod("app", "builder")).await;
    let reason = pull_refused(&h.client, &other.name, "app").await;
    eprintln!("unselected namespace: {reason}");
    assert!(
        node.manifest_pulls(401).len() > refused_before,
        "no 401 at the registry"
    );
    assert!(support::is_absent(&h.secrets(&other.name), &h.secret_name).await);
}

#[tokio::test]
async fn after_a_rotation_a_new_pod_pulls_with_the_new_password_from_the_same_secret() {
    let _one = ONE_NODE.lock().await;
    // Passwords of 60 s, renewed 20 s before they expire (the fake's STS credentials last
    // longer): the second one comes 40 s in, the first expires at 60 s.
    let mut config = default_config();
    config["lifetimes"] = json!({"registry_seconds": 60});
    let h = Harness::new("noderot", &config, "cluster-admin").await;
    let node = Node::up(&h.fake, None);
    let ns = TestNamespace::create(&h.client, "node-rot").await;
    let _c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("expiring-threshold", "20s"),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&ns.name, "default", true).await;
    let (user, first, uid) = secret_login(&h, &ns.name).await;
    create_pod(&h.client, &ns.name, &node.pod("before", "default")).await;
    assert_eq!(exit_code(&h.client, &ns.name, "before").await, 0);
    // The rotation: a new password in the same Secret (same UID: an update in place, so the
    // kubelet's records of which Secret pulled an image stay valid).
    wait_until(Duration::from_secs(90), "the rotated password", || async {
        let (_, pw, now_uid) = secret_login(&h, &ns.name).await;
        assert_eq!(now_uid, uid, "the pull Secret was recreated");
        pw != first
    })
    .await;
    // Until the first password has expired at the registry.
    wait_until(
        Duration::from_secs(90),
        "the first password expired",
        || async { h.fake.registry_login(&user, &first).await["valid"] == json!(false) },
    )
    .await;
    let pulls = node.manifest_pulls(200).len();
    create_pod(&h.client, &ns.name, &node.pod("after", "default")).await;
    assert_eq!(
        exit_code(&h.client, &ns.name, "after").await,
        0,
        "pulled after the rotation"
    );
    assert!(
        node.manifest_pulls(200).len() > pulls,
        "imagePullPolicy Always: a new pull"
    );
    let (_, third, end_uid) = secret_login(&h, &ns.name).await;
    assert_eq!(end_uid, uid, "the same Secret after every rotation");
    assert_eq!(
        h.fake.registry_login(&user, &third).await["valid"],
        json!(true)
    );
}

#[tokio::test]
async fn a_pod_created_with_its_namespace_pulls_at_once_through_pod_injection() {
    let _one = ONE_NODE.lock().await;
    let h = Harness::new("noderace", &default_config(), "cluster-admin").await;
    let node = Node::up(&h.fake, None);
    let served = Served::new(&h);
    let mut flags = served.flags();
    flags.extend(["--lease-retry-period", "200ms"]);
    let c = h.start(&flags);
    let probe = TestNamespace::create(&h.client, "node-probe").await;
    let name = format!("node-race-{:08x}", rand::random::<u32>());
    let watched = format!("{},{name}", probe.name);
    h.apply_config(&[
        ("watch-namespace", watched.as_str()),
        ("service-account", "*"),
        ("acr-registry-info", ENTERPRISE),
        // 10 s: the Pod webhook may wait up to 2 s for a new namespace's Secret.
        (
            "webhook-configuration",
            "pod-injection: true\npod-timeout-seconds: 10\n",
        ),
        // No ServiceAccount is ever patched: the reference can only come from the Pod webhook.
        ("patch-service-accounts", "false"),
    ])
    .await;
    // A sign the Pod webhook is in force (registered, its certificate loaded): a dry-run Pod in
    // another selected namespace comes back with the reference.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let probes = Api::<Pod>::namespaced(h.client.clone(), &probe.name);
    wait_until(
        Duration::from_secs(30),
        "the Pod webhook in force",
        || async {
            probes
                .create(&dry, &node.pod("probe", "default"))
                .await
                .is_ok_and(|p| {
                    support::reference_names(p.spec.and_then(|s| s.image_pull_secrets))
                        .contains(&h.secret_name)
                })
        },
    )
    .await;
    // The race, made certain: the namespace, a ServiceAccount and the Pod are created while no
    // replica leads (the test holds the Lease), so the Pod reaches admission before anyone can
    // write the namespace's Secret; 300 ms into the admission the Lease is let go, the controller
    // takes over and writes it. Its ServiceAccount holds no reference.
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        h.client.clone(),
        &h.config_ns.name,
    );
    let hold = |holder: Option<&str>| {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        json!({"spec": {"holderIdentity": holder, "leaseDurationSeconds": 4, "renewTime": now, "acquireTime": now}})
    };
    leases
        .patch(
            "aliyun-acr-credential-helper",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(hold(Some("the-test"))),
        )
        .await
        .unwrap_or_else(|e| panic!("take the Lease: {e}"));
    wait_until(
        Duration::from_secs(30),
        "the controller to stand down",
        || async { c.metric("acr_helper_leader").await == Some(0.0) },
    )
    .await;
    let waits = "acr_helper_webhook_secret_waits_total{outcome=\"appeared\"}";
    let waited_before = c.metric(waits).await.unwrap_or(0.0);
    let started = Instant::now();
    let ns = TestNamespace::create_now(&h.client, &name).await;
    support::create_service_account(&h.client, &ns.name, "fresh", &[]).await;
    let release = {
        let leases = leases.clone();
        let released = hold(None);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            leases
                .patch(
                    "aliyun-acr-credential-helper",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(released),
                )
                .await
                .unwrap_or_else(|e| panic!("release the Lease: {e}"));
        })
    };
    let pod = create_pod(&h.client, &ns.name, &node.pod("first", "fresh")).await;
    release.await.unwrap_or_else(|e| panic!("{e}"));
    // The webhook held the Pod until the Secret was there, so the kubelet finds it.
    assert!(
        !support::is_absent(&h.secrets(&ns.name), &h.secret_name).await,
        "the Pod was admitted before its namespace's Secret existed"
    );
    assert!(
        c.metric(waits).await.unwrap_or(0.0) > waited_before,
        "the webhook did not wait for the new namespace's Secret"
    );
    assert_eq!(
        support::reference_names(pod.spec.and_then(|s| s.image_pull_secrets)),
        std::slice::from_ref(&h.secret_name),
        "the Pod webhook's reference"
    );
    assert_eq!(exit_code(&h.client, &ns.name, "first").await, 0);
    eprintln!(
        "namespace + Pod created together -> container exited 0: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Its first pull succeeded: no failed pull, no back-off.
    for reason in ["Failed", "BackOff"] {
        let events = pod_events(&h.client, &ns.name, "first", reason).await;
        assert!(events.is_empty(), "{reason}: {events:?}");
    }
    assert!(
        !pod_events(&h.client, &ns.name, "first", "Pulled")
            .await
            .is_empty()
    );
    assert!(
        !h.has_reference(&ns.name, "fresh").await,
        "the ServiceAccount was patched"
    );
}

/// A node whose kubelet runs the credential provider: `token_attributes` for KEP-4412.
fn provider_node(fake: &FakeCloud, token_attributes: Option<Value>) -> (Node, PathBuf) {
    let dir = std::env::temp_dir().join(format!("acr-node-provider-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let args = support::provider::plugin_args(fake, &[DOMAIN, VPC_DOMAIN]);
    let (bin_dir, config) = support::provider::kubelet_files(&dir, &args, token_attributes);
    (Node::up(fake, Some((&config, &bin_dir))), dir)
}

#[tokio::test]
async fn the_credential_provider_pulls_with_no_secret_at_all_as_the_node_and_as_the_pods_service_account()
 {
    let _one = ONE_NODE.lock().await;
    let admin = control_plane().client().await;
    let ns = TestNamespace::create(&admin, "node-prov").await;
    support::create_service_account(&admin, &ns.name, "puller", &[]).await;
    let fake = FakeCloud::start(&support::provider::rrsa_config(&format!(
        "system:serviceaccount:{}:puller",
        ns.name
    )));

    // 1. The node's RAM role (the fake metadata service): any Pod of the node pulls.
    let (node, dir) = provider_node(&fake, None);
    create_pod(&admin, &ns.name, &node.pod("as-node", "default")).await;
    assert_eq!(exit_code(&admin, &ns.name, "as-node").await, 0);
    let pulled_by = node.manifest_pulls(200);
    assert!(
        pulled_by
            .iter()
            .any(|u| !u.is_empty() && *u != node.push_user),
        "no pull with a temporary login: {pulled_by:?}"
    );
    assert!(
        support::is_absent(
            &Api::<Secret>::namespaced(admin.clone(), &ns.name),
            "aliyun-acr-credential-helper"
        )
        .await
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);

    // 2. KEP-4412: the kubelet hands the plugin a token of the Pod's ServiceAccount, which names
    //    an RRSA role; the login is that role's (AssumeRoleWithOIDC at the fake).
    let (node, dir) = provider_node(
        &fake,
        Some(json!({
            "serviceAccountTokenAudience": "sts.aliyuncs.com",
            "cacheType": "ServiceAccount",
            "requireServiceAccount": true,
            "requiredServiceAccountAnnotationKeys": [ROLE_ANNOTATION],
        })),
    );
    let sas =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), &ns.name);
    sas.patch(
        "puller",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {ROLE_ANNOTATION: RRSA_ROLE_ARN}}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let calls = fake.calls("AssumeRoleWithOIDC").await;
    create_pod(&admin, &ns.name, &node.pod("as-sa", "puller")).await;
    assert_eq!(exit_code(&admin, &ns.name, "as-sa").await, 0);
    assert!(
        fake.calls("AssumeRoleWithOIDC").await > calls,
        "the Pod's own identity was not used"
    );
    // A ServiceAccount without the annotation: the kubelet does not call the plugin, no login.
    create_pod(&admin, &ns.name, &node.pod("no-role", "default")).await;
    pull_refused(&admin, &ns.name, "no-role").await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_cleanup_a_new_pod_cannot_pull_and_nothing_of_ours_remains() {
    let _one = ONE_NODE.lock().await;
    let h = Harness::new("nodeclean", &default_config(), "cluster-admin").await;
    let node = Node::up(&h.fake, None);
    let ns = TestNamespace::create(&h.client, "node-clean").await;
    let mut c = h.start(&["--token-mode", "workerRole"]);
    h.apply_config(&[
        ("watch-namespace", ns.name.as_str()),
        ("acr-registry-info", ENTERPRISE),
    ])
    .await;
    h.wait_reference(&ns.name, "default", true).await;
    create_pod(&h.client, &ns.name, &node.pod("before", "default")).await;
    assert_eq!(exit_code(&h.client, &ns.name, "before").await, 0);
    support::run_cleanup(&h.cleanup_flags());
    c.kill();
    assert!(!h.has_reference(&ns.name, "default").await);
    assert!(support::is_absent(&h.secrets(&ns.name), &h.secret_name).await);
    for own in [
        "aliyun-acr-credential-helper-last-config",
        "aliyun-acr-credential-helper-state",
    ] {
        assert!(
            support::is_absent(&h.secrets(&h.config_ns.name), own).await,
            "{own}"
        );
    }
    create_pod(&h.client, &ns.name, &node.pod("after", "default")).await;
    pull_refused(&h.client, &ns.name, "after").await;
}
