//! The kubelet credential provider's side of the tests: a fake cloud configuration whose RRSA
//! provider is the local API server, the plugin's command line, and the bin dir and
//! CredentialProviderConfig a kubelet is given.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::fake_cloud::{FakeCloud, INSTANCE_ID, OIDC_PROVIDER_ARN, RRSA_ROLE_ARN, default_config};
use super::harness::BINARY;

/// The fake cloud's default configuration, with the local API server as the RRSA OIDC provider
/// and the RRSA role trusting `subject` (`system:serviceaccount:<ns>:<name>`).
pub fn rrsa_config(subject: &str) -> Value {
    let cp = super::control_plane();
    let dir = cp
        .dir
        .clone()
        .unwrap_or_else(|| panic!("needs our control plane's pki"));
    let env = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
    let issuer = env
        .lines()
        .find_map(|l| l.strip_prefix("export APISERVER_URL="))
        .unwrap_or_default()
        .to_owned();
    let mut config = default_config();
    config["oidc_providers"] = json!({
        OIDC_PROVIDER_ARN: {
            "issuer": issuer,
            "jwks_url": format!("{issuer}/openid/v1/jwks"),
            "ca_file": dir.join("pki/ca.crt"),
            "audience": "sts.aliyuncs.com"
        }
    });
    config["roles"][RRSA_ROLE_ARN]["oidc_trust"]["subjects"] = json!([subject]);
    config
}

/// The plugin's command line after the binary: `fake`'s endpoints, `hosts` as the Enterprise
/// instance's, and the OIDC provider for KEP-4412 tokens.
pub fn plugin_args(fake: &FakeCloud, hosts: &[&str]) -> Vec<String> {
    let mut args = vec!["credential-provider".to_owned()];
    args.extend(fake.cloud_args());
    for h in hosts {
        args.extend(["--instance".to_owned(), format!("{h}={INSTANCE_ID}")]);
    }
    args.extend([
        "--oidc-provider-arn".to_owned(),
        OIDC_PROVIDER_ARN.to_owned(),
    ]);
    args
}

/// A bin dir in `dir` holding the binary under the provider's name, and a
/// CredentialProviderConfig running it with `args` (with `token_attributes` for KEP-4412).
pub fn kubelet_files(
    dir: &Path,
    args: &[String],
    token_attributes: Option<Value>,
) -> (PathBuf, PathBuf) {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap_or_else(|e| panic!("{e}"));
    let plugin = bin_dir.join("aliyun-acr-credential-helper");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(BINARY, &plugin).unwrap_or_else(|e| panic!("{e}"));
    let mut provider = json!({
        "name": "aliyun-acr-credential-helper",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        // Each `*` is one DNS label: Enterprise `<name>-registry[-vpc].<region>.cr.aliyuncs.com`,
        // Personal `registry[-vpc|-intl|-intl-vpc].<region>.aliyuncs.com`.
        "matchImages": [
            "*.*.cr.aliyuncs.com",
            "registry.*.aliyuncs.com",
            "registry-vpc.*.aliyuncs.com",
            "registry-intl.*.aliyuncs.com",
            "registry-intl-vpc.*.aliyuncs.com"
        ],
        "defaultCacheDuration": "1m",
        "args": args,
        "env": [{"name": "ACR_HELPER_LOG_LEVEL", "value": "info"}],
    });
    if let Some(t) = token_attributes {
        provider["tokenAttributes"] = t;
    }
    let config = dir.join("credential-provider-config.json");
    std::fs::write(
        &config,
        json!({
            "apiVersion": "kubelet.config.k8s.io/v1",
            "kind": "CredentialProviderConfig",
            "providers": [provider],
        })
        .to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (bin_dir, config)
}
