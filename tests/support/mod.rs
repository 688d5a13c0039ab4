//! Test support for the integration tests: a real local control plane (etcd + kube-apiserver +
//! kube-controller-manager, started by `tests/cluster/control-plane.sh`), kube clients for it, and
//! per-test namespaces that are removed when the test ends.
//!
//! One control plane serves every test of a test binary. It is started on first use and stopped by
//! the script's watcher when the test binary exits. If `ACR_HELPER_TEST_KUBECONFIG` names the
//! kubeconfig of a running control plane (as `scripts/test` arranges), the tests attach to it
//! instead of starting their own.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fake_cloud;
pub mod harness;
pub mod leaks;
pub mod provider;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The environment variable naming the kubeconfig of a control plane to attach to.
pub const KUBECONFIG_ENV: &str = "ACR_HELPER_TEST_KUBECONFIG";
/// The label every namespace made by a test carries, so leftovers can be found.
pub const TEST_LABEL: &str = "acr-helper.test/namespace";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The directory `control-plane.sh up` wrote (pki, logs, env), when known.
    pub dir: Option<PathBuf>,
    pub kubeconfig: PathBuf,
    /// The API server's audit log, when known.
    pub audit_log: Option<PathBuf>,
    /// Where kubectl, helm and the control-plane binaries are, when known.
    pub bin: Option<PathBuf>,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The repository root.
/// The names in an `imagePullSecrets` list (of a ServiceAccount or a Pod), in order.
pub fn reference_names(
    refs: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>,
) -> Vec<String> {
    refs.unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane for this test binary; starts it on first call.
pub fn control_plane() -> &'static ControlPlane {
    let cp = CONTROL_PLANE.get_or_init(|| match std::env::var_os(KUBECONFIG_ENV) {
        Some(path) => attach(Path::new(&path)),
        None => start(),
    });
    match cp {
        Ok(cp) => cp,
        Err(e) => panic!("local control plane unavailable: {e}"),
    }
}

fn attach(kubeconfig: &Path) -> Result<ControlPlane, String> {
    if !kubeconfig.is_file() {
        return Err(format!(
            "{KUBECONFIG_ENV}={} is not a file",
            kubeconfig.display()
        ));
    }
    // A control plane of ours keeps its env file beside the kubeconfig.
    let dir = kubeconfig
        .parent()
        .filter(|d| d.join(".control-plane").exists());
    Ok(from_dir(dir, kubeconfig.to_path_buf()))
}

fn from_dir(dir: Option<&Path>, kubeconfig: PathBuf) -> ControlPlane {
    let env = dir
        .and_then(|d| std::fs::read_to_string(d.join("env")).ok())
        .unwrap_or_default();
    let var = |name: &str| {
        env.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
    };
    ControlPlane {
        dir: dir.map(Path::to_path_buf),
        kubeconfig,
        audit_log: var("AUDIT_LOG"),
        bin: var("CLUSTER_BIN"),
    }
}

fn start() -> Result<ControlPlane, String> {
    let script = repo_root().join("tests/cluster/control-plane.sh");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg("up")
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} up failed: {}", script.display(), out.status));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "control plane up in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(from_dir(Some(&dir), dir.join("kubeconfig")))
}

impl ControlPlane {
    /// The admin kube client configuration.
    pub async fn config(&self) -> Config {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", self.kubeconfig.display()))
    }

    /// An admin (system:masters) client. A client is bound to the runtime that made it, so each
    /// test makes its own.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).unwrap_or_else(|e| panic!("kube client: {e}"))
    }

    /// A client that authenticates with a bearer token instead of the admin certificate.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut config = self.config().await;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        };
        Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
    }

    /// The path of one of the control plane's binaries (kubectl, helm, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(bin) => bin.join(name),
            None => panic!(
                "{name}: this control plane's binaries are unknown (attached without its env file)"
            ),
        }
    }
}

/// A namespace for one test, deleted (with everything in it) when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates a namespace named `<prefix>-<random suffix>` and waits until its "default"
    /// ServiceAccount exists, as a workload would find it in a real cluster.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        Self::create_named(client, &name).await
    }

    /// Creates the namespace `name` and returns at once, without waiting for its ServiceAccount
    /// (a test of what happens in a brand-new namespace's first milliseconds).
    pub async fn create_now(client: &Client, name: &str) -> TestNamespace {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name: name.to_owned(),
            kubeconfig: control_plane().kubeconfig.clone(),
        }
    }

    /// Creates the namespace `name` (see [`TestNamespace::create`]).
    pub async fn create_named(client: &Client, name: &str) -> TestNamespace {
        Self::create_labelled(client, name, &[]).await
    }

    /// Creates the namespace `name` with `labels` besides the test label (see
    /// [`TestNamespace::create`]).
    pub async fn create_labelled(
        client: &Client,
        name: &str,
        labels: &[(&str, &str)],
    ) -> TestNamespace {
        let name = name.to_owned();
        let mut all: std::collections::BTreeMap<String, String> =
            [(TEST_LABEL.to_owned(), "true".to_owned())].into();
        all.extend(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sas =
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &name);
        wait_until(
            Duration::from_secs(30),
            "the default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { !is_absent(&sas, "default").await }
            },
        )
        .await;
        TestNamespace {
            name,
            kubeconfig: control_plane().kubeconfig.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's own runtime is busy dropping us: delete from a thread
        // with its own runtime and client.
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let kc = Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
                let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!(
                "warning: could not delete test namespace {}: {e}",
                self.name
            );
        }
    }
}

/// A TLS client configuration that trusts the PEM CA `ca` (the webhook's), speaking `alpn`.
pub fn tls_client(ca: &[u8], alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    acr_helper::aliyun::http::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(ca)
    {
        roots
            .add(cert.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// Runs the control plane's helm with `args` from the repository root, with a cache and
/// configuration of the tests' own.
pub fn helm(args: &[&str]) -> std::process::Output {
    let cp = control_plane();
    let home = std::env::temp_dir().join("acr-helper-helm");
    Command::new(cp.binary("helm"))
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("helm {args:?}: {e}"))
}

/// The standard output of a command that must have succeeded (else the test fails with both
/// outputs).
pub fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `name` is absent: only a 404 says so; any other error (403, 500) fails the test, so a
/// "nothing is left" check cannot pass because the read was refused.
pub async fn is_absent<K>(api: &kube::Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(found) => found.is_none(),
        Err(e) => panic!("get {name}: {e}"),
    }
}

/// Runs `sample` (which asserts what must hold) now and every 200 ms until `margin` has passed.
/// The bounded extra time a "nothing happened" check gives the controller *after* a positive
/// signal that it has seen the change (work it may already have had under way), never a wait
/// in place of that signal.
pub async fn holds_for<F, Fut>(margin: Duration, mut sample: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let until = Instant::now() + margin;
    loop {
        sample().await;
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token for `ns/sa` from the TokenRequest API (`audiences` empty: the API server's own).
pub async fn service_account_token(
    client: &Client,
    ns: &str,
    sa: &str,
    audiences: &[&str],
    seconds: i64,
) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            expiration_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("TokenRequest for {ns}/{sa} returned no token"));
    leaks::secret(&token);
    token
}

/// A kubeconfig at `path` that authenticates as `ns/sa` with a TokenRequest token: how the
/// controller runs with a ServiceAccount's own permissions (and shows as that user in the audit
/// log).
pub async fn service_account_kubeconfig(ns: &str, sa: &str, path: &Path) {
    let cp = control_plane();
    let client = cp.client().await;
    let token = service_account_token(&client, ns, sa, &[], 3 * 3600).await;
    let cfg = cp.config().await;
    let ca = cp
        .dir
        .as_ref()
        .map(|d| d.join("pki/ca.crt"))
        .unwrap_or_else(|| panic!("needs our control plane's CA"));
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: {sa}\ncurrent-context: local\n",
            cfg.cluster_url.to_string().trim_end_matches('/'),
            ca.display()
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Runs the binary's `cleanup` as admin with `flags` before it; panics unless it succeeds.
pub fn run_cleanup<S: AsRef<std::ffi::OsStr>>(flags: &[S]) {
    let out = Command::new(env!("CARGO_BIN_EXE_aliyun-acr-credential-helper"))
        .args(flags)
        .arg("cleanup")
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("cleanup: {e}"));
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates the ServiceAccount `ns/name` with the given `imagePullSecrets` and returns it as the
/// API server answered (after any admission webhook).
pub async fn create_service_account(
    client: &Client,
    ns: &str,
    name: &str,
    pull_secrets: &[&str],
) -> k8s_openapi::api::core::v1::ServiceAccount {
    use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .iter()
                .map(|n| LocalObjectReference {
                    name: (*n).to_owned(),
                })
                .collect()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount {ns}/{name}: {e}"))
}
