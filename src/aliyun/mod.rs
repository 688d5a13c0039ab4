//! Alibaba Cloud: request signing, the HTTP clients of STS, Container Registry and the ECS
//! metadata service, and ACK's managed-role addon token. Every endpoint can be overridden, so the
//! same code runs against the project's fake cloud.

pub mod addon_token;
pub mod cr;
pub mod error;
pub mod http;
pub mod metadata;
pub mod rpc;
pub mod sign;
pub mod sts;

use std::fmt;

use jiff::Timestamp;
use secrecy::SecretString;

pub use error::CloudError;

/// An AccessKey pair, or temporary STS credentials. `Debug` shows the AccessKeyId and the expiry,
/// never the secret or the token.
#[derive(Clone)]
pub struct Credential {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    /// Present for STS credentials.
    pub security_token: Option<SecretString>,
    /// When the credential stops working; `None` for a RAM user's AccessKey.
    pub expiration: Option<Timestamp>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"[REDACTED]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// `Debug` of a map whose values may be secrets (signed form fields, headers): its keys, each
/// with `[REDACTED]`.
pub(crate) struct RedactedValues<I>(pub(crate) I);

impl<K: fmt::Debug, I: Iterator<Item = K> + Clone> fmt::Debug for RedactedValues<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.clone().map(|k| (k, "[REDACTED]")))
            .finish()
    }
}

/// Where the cloud APIs are. Defaults are Alibaba Cloud's public endpoints.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// STS, e.g. `https://sts.aliyuncs.com`.
    pub sts: url::Url,
    /// Container Registry, a URL template in which `{region}` is replaced by the instance's region.
    pub cr_template: String,
    /// The ECS metadata service.
    pub metadata: url::Url,
}

pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.aliyuncs.com";
pub const DEFAULT_CR_ENDPOINT: &str = "https://cr.{region}.aliyuncs.com";
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://100.100.100.200";

/// Whether `s` looks like an Alibaba Cloud region id (`cn-hangzhou`, `ap-southeast-1`, ...).
pub fn is_region_id(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    (2..=4).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod redaction_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn credential_debug_hides_secrets() {
        let c = Credential {
            access_key_id: "STS.NId".to_owned(),
            access_key_secret: SecretString::from("very-secret-value"),
            security_token: Some(SecretString::from("CAIS-token-value")),
            expiration: None,
        };
        let text = format!("{c:?}");
        assert!(text.contains("STS.NId"));
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!text.contains("CAIS-token-value"), "{text}");
    }

    #[test]
    fn region_ids() {
        for ok in [
            "cn-hangzhou",
            "ap-southeast-1",
            "us-west-1",
            "cn-north-2-gov-1",
            "eu-central-1",
        ] {
            assert!(is_region_id(ok), "{ok}");
        }
        for bad in [
            "",
            "cn",
            "hangzhou",
            "CN-hangzhou",
            "cn_hangzhou",
            "cn-",
            "-cn",
            "cn--x",
            "cn-hang zhou",
            "https://x",
        ] {
            assert!(!is_region_id(bad), "{bad}");
        }
    }
}
