//! Starts the fake Alibaba Cloud (`tests/fake-cloud/fake_cloud.py`) for one test and talks to its
//! control API. The process is killed when the handle is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::repo_root;

pub const ACCESS_KEY_ID: &str = "LTAI5tFakeUserKey01";
pub const ACCESS_KEY_SECRET: &str = "fake-user-secret-01";
pub const ROLE_ARN: &str = "acs:ram::1234567890123456:role/acr-puller";
pub const RRSA_ROLE_ARN: &str = "acs:ram::1234567890123456:role/rrsa-role";
pub const OIDC_PROVIDER_ARN: &str = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-test";
pub const INSTANCE_ID: &str = "cri-fakeinstance0001";
pub const INSTANCE_REGION: &str = "cn-hangzhou";
pub const OTHER_INSTANCE_ID: &str = "cri-fakeinstance0002";
pub const OTHER_REGION: &str = "ap-southeast-1";
pub const WORKER_ROLE: &str = "worker-role";

/// The Python interpreter of the project's virtual environment (`scripts/python-env`).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ACR_HELPER_PYTHON") {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/python-env"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("scripts/python-env: {e}"));
    assert!(out.status.success(), "scripts/python-env failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The default configuration: one AccessKey, an assumable role, an RRSA role trusting the helper's
/// ServiceAccount, two Enterprise instances in two regions, Personal Edition in both regions,
/// and a worker role on the metadata service.
pub fn default_config() -> Value {
    json!({
        "default_region": INSTANCE_REGION,
        "access_keys": {ACCESS_KEY_ID: {"secret": ACCESS_KEY_SECRET, "principal": "user/ci"}},
        "roles": {
            ROLE_ARN: {"max_session_seconds": 43200, "trusted_principals": ["*"]},
            RRSA_ROLE_ARN: {
                "max_session_seconds": 3600,
                "oidc_trust": {
                    "provider_arn": OIDC_PROVIDER_ARN,
                    "subjects": ["system:serviceaccount:kube-system:aliyun-acr-credential-helper"]
                }
            }
        },
        "oidc_providers": {},
        "instances": {
            INSTANCE_ID: {
                "region": INSTANCE_REGION,
                "endpoints": [
                    {"EndpointType": "internet", "Enable": true, "Status": "RUNNING",
                     "Domains": [{"Domain": "fake-registry.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"}]},
                    {"EndpointType": "vpc", "Enable": true, "Status": "RUNNING",
                     "Domains": [{"Domain": "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"}]},
                    {"EndpointType": "internet", "Enable": false, "Status": "STOPPED",
                     "Domains": [{"Domain": "disabled.example.com", "Type": "USER"}]}
                ]
            },
            OTHER_INSTANCE_ID: {
                "region": OTHER_REGION,
                "endpoints": [
                    {"EndpointType": "internet", "Enable": true, "Status": "RUNNING",
                     "Domains": [{"Domain": "other-registry.ap-southeast-1.cr.aliyuncs.com", "Type": "SYSTEM"}]}
                ]
            }
        },
        "personal_regions": [INSTANCE_REGION, OTHER_REGION],
        "metadata": {"role": WORKER_ROLE, "region": INSTANCE_REGION, "require_token": false,
                     "hardened_supported": true}
    })
}

/// A running fake cloud.
pub struct FakeCloud {
    pub url: String,
    child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FakeCloud {
    /// Starts the fake with `config` on a free loopback port.
    pub fn start(config: &Value) -> FakeCloud {
        let dir = std::env::temp_dir().join(format!(
            "acr-helper-fake-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let dir = TempDir(dir);
        let config_path = dir.0.join("config.json");
        let port_file = dir.0.join("port");
        std::fs::write(&config_path, config.to_string())
            .unwrap_or_else(|e| panic!("write fake config: {e}"));
        let mut cmd = Command::new(python());
        if let Some(secrets) = super::leaks::secrets_file() {
            cmd.env("ACR_HELPER_LEAK_SECRETS", secrets);
        }
        let child = cmd
            .arg(repo_root().join("tests/fake-cloud/fake_cloud.py"))
            .arg("--config")
            .arg(&config_path)
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the fake cloud: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(Instant::now() < deadline, "the fake cloud did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        FakeCloud {
            url: format!("http://127.0.0.1:{}", port.trim()),
            child,
            _dir: dir,
        }
    }

    /// The CR endpoint template for this fake (`{region}` becomes a path prefix it records).
    pub fn cr_template(&self) -> String {
        format!("{}/r/{{region}}", self.url)
    }

    /// The flags that point our binary at this fake: every cloud endpoint and its region.
    pub fn cloud_args(&self) -> Vec<String> {
        let cr = self.cr_template();
        [
            "--sts-endpoint",
            &self.url,
            "--cr-endpoint",
            &cr,
            "--metadata-endpoint",
            &self.url,
            "--region",
            "cn-hangzhou",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        acr_helper::aliyun::http::install_crypto_provider();
        let client = reqwest::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("fake control {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("fake control {path}: {e}"))
    }

    /// How often each API was called.
    pub async fn calls(&self, api: &str) -> u64 {
        self.control(reqwest::Method::GET, "/_fake/calls", None)
            .await["calls"][api]
            .as_u64()
            .unwrap_or(0)
    }

    /// Calls per region of the CR endpoint, for one API.
    pub async fn calls_in_region(&self, api: &str, region: &str) -> u64 {
        self.control(reqwest::Method::GET, "/_fake/calls", None)
            .await["regions"][api][region]
            .as_u64()
            .unwrap_or(0)
    }

    /// Queues a fault for `api` (see fake_cloud.py: kind, count, delay_seconds, status, code).
    pub async fn fault(&self, api: &str, spec: Value) {
        let mut body = spec;
        body["api"] = json!(api);
        self.control(reqwest::Method::POST, "/_fake/faults", Some(body))
            .await;
    }

    /// Removes every queued fault: the cloud answers again.
    pub async fn clear_faults(&self) {
        self.control(reqwest::Method::PUT, "/_fake/faults", None)
            .await;
    }

    /// Merges top-level keys into the fake's configuration.
    pub async fn configure(&self, patch: Value) {
        self.control(reqwest::Method::POST, "/_fake/config", Some(patch))
            .await;
    }

    /// STS credentials for `principal`, as ACK's managed-role token would carry.
    pub async fn mint_sts(&self, principal: &str, seconds: u64) -> Value {
        self.control(
            reqwest::Method::POST,
            "/_fake/mint-sts",
            Some(json!({"principal": principal, "seconds": seconds})),
        )
        .await
    }

    /// Whether a registry would accept this login now.
    pub async fn registry_login(&self, username: &str, password: &str) -> Value {
        self.control(
            reqwest::Method::POST,
            "/_fake/registry-login",
            Some(json!({"username": username, "password": password})),
        )
        .await
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ACK's managed-role token Secret (`addon.aliyuncsmanagedacrrole.token`) carrying `creds` (as
/// `mint_sts` returns them), encrypted with `keyring` as ACK does.
pub fn addon_token_secret(creds: &Value, keyring: &str) -> k8s_openapi::api::core::v1::Secret {
    use acr_helper::aliyun::addon_token;
    let iv: [u8; 16] = rand::random();
    let enc = |field: &str| {
        addon_token::encrypt_field(
            keyring.as_bytes(),
            &iv,
            creds[field].as_str().unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let config = json!({
        "access.key.id": enc("AccessKeyId"),
        "access.key.secret": enc("AccessKeySecret"),
        "security.token": enc("SecurityToken"),
        "expiration": creds["Expiration"],
        "keyring": keyring,
    });
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("addon.aliyuncsmanagedacrrole.token".into()),
            ..Default::default()
        },
        string_data: Some([(addon_token::CONFIG_KEY.to_owned(), config.to_string())].into()),
        ..Default::default()
    }
}
