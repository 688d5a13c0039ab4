//! No secret in `Debug`: every type that can hold a credential (in `aliyun`, `credentials` and
//! `provider`) is built with a known secret in each field that can hold one, formatted with `{:?}`
//! and `{:#?}`, and searched for the secret, as text, as bytes and in base64. Types without
//! `Debug` are listed and checked to stay so: whoever adds a `Debug` must add the type here.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use secrecy::SecretString;

use super::cr::{Cr, RegistryToken};
use super::http::{Http, HttpOptions, Reply, RetryPolicy};
use super::metadata::Metadata;
use super::rpc::RpcCall;
use super::sign::{RoaRequest, percent_encode};
use super::sts::Sts;
use super::{CloudError, Credential};
use crate::credentials::cache::Cache;
use crate::credentials::{
    AccessKey, AssumedRole, BaseIdentity, Chain, CredentialError, Edition, InstanceAuth,
    InstanceRef, Registry, UsableToken,
};

/// The forms a secret may take in `Debug` output, whitespace removed: itself, percent-encoded,
/// the decimal list of its bytes (a derived `Debug` of a `Vec<u8>`), and the part of its base64
/// fixed by the secret alone at each of the three offsets (so it is found inside the base64 of
/// `user:secret` too).
fn forms(secret: &str) -> Vec<String> {
    let mut out = vec![
        secret.to_owned(),
        percent_encode(secret),
        secret
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ];
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        let encoded = BASE64.encode(&bytes);
        let start = (offset * 8).div_ceil(6);
        let end = bytes.len() * 8 / 6;
        out.push(encoded[start..end].to_owned());
    }
    out
}

/// Formats `value` both ways and asserts no form of any of `secrets` shows; returns `{:?}`.
#[track_caller]
fn assert_hidden(value: &dyn Debug, secrets: &[&str]) -> String {
    let compact = format!("{value:?}");
    for text in [compact.clone(), format!("{value:#?}")] {
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        for secret in secrets {
            for form in forms(secret) {
                assert!(
                    !squeezed.contains(&form),
                    "{form:?} of {secret:?} in {text}"
                );
            }
        }
    }
    compact
}

/// Whether `T` implements `Debug`: the inherent method, bounded on `Debug`, is chosen over the
/// trait's when the bound holds.
struct Probe<T: ?Sized>(PhantomData<T>);

trait NotDebug {
    fn implements_debug(&self) -> bool {
        false
    }
}

impl<T: ?Sized> NotDebug for Probe<T> {}

impl<T: Debug + ?Sized> Probe<T> {
    fn implements_debug(&self) -> bool {
        true
    }
}

macro_rules! implements_debug {
    ($t:ty) => {
        Probe::<$t>(PhantomData).implements_debug()
    };
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn reply(body: serde_json::Value) -> Reply {
    Reply {
        status: 200,
        body: body.to_string().into_bytes(),
    }
}

fn registry_token(password: &str) -> RegistryToken {
    RegistryToken {
        username: "cr_temp_user".into(),
        password: SecretString::from(password),
        expires_at: ts("2026-11-22T12:00:00Z"),
    }
}

fn access_key(secret: &str) -> AccessKey {
    AccessKey {
        id: "LTAI5tRedaction".into(),
        secret: SecretString::from(secret),
    }
}

#[test]
fn the_probe_tells_debug_types_apart() {
    assert!(implements_debug!(Credential));
    assert!(implements_debug!(Reply));
    assert!(!implements_debug!(dyn Fn()));
}

#[test]
fn answer_and_request_types_without_debug_stay_without() {
    let without = [
        ("sts::StsAnswer", implements_debug!(super::sts::StsAnswer)),
        (
            "sts::StsCredentials",
            implements_debug!(super::sts::StsCredentials),
        ),
        (
            "sts::AssumeRoleWithOidc",
            implements_debug!(super::sts::AssumeRoleWithOidc<'static>),
        ),
        (
            "cr::EnterpriseToken",
            implements_debug!(super::cr::EnterpriseToken),
        ),
        (
            "cr::PersonalAnswer",
            implements_debug!(super::cr::PersonalAnswer),
        ),
        (
            "cr::PersonalToken",
            implements_debug!(super::cr::PersonalToken),
        ),
        (
            "metadata::RoleCredentials",
            implements_debug!(super::metadata::RoleCredentials),
        ),
        (
            "addon_token::TokenConfig",
            implements_debug!(super::addon_token::TokenConfig),
        ),
        (
            "http::ErrorDocument",
            implements_debug!(super::http::ErrorDocument),
        ),
        (
            "provider::api::AuthConfig",
            implements_debug!(crate::provider::api::AuthConfig),
        ),
    ];
    for (name, has_debug) in without {
        assert!(
            !has_debug,
            "{name} now implements Debug: make it redacting and format it in this module's tests"
        );
    }
}

#[test]
fn credentials_hide_secret_and_token() {
    let sts = Credential {
        access_key_id: "STS.NRedaction".into(),
        access_key_secret: SecretString::from("s3cr3t-Credential-secret"),
        security_token: Some(SecretString::from("s3cr3t-Credential-token")),
        expiration: Some(ts("2026-11-22T12:00:00Z")),
    };
    let text = assert_hidden(
        &sts,
        &["s3cr3t-Credential-secret", "s3cr3t-Credential-token"],
    );
    assert!(text.contains("STS.NRedaction"), "{text}");
    let ak = Credential {
        security_token: None,
        ..sts
    };
    assert_hidden(&ak, &["s3cr3t-Credential-secret"]);
}

#[test]
fn replies_show_their_length_not_their_body() {
    let secrets = ["s3cr3t-Reply-AccessKeySecret", "s3cr3t-Reply-SecurityToken"];
    let r = reply(serde_json::json!({
        "RequestId": "R1",
        "Credentials": {
            "AccessKeyId": "STS.NReply",
            "AccessKeySecret": secrets[0],
            "SecurityToken": secrets[1],
            "Expiration": "2026-11-22T12:00:00Z",
        },
    }));
    let text = assert_hidden(&r, &secrets);
    assert!(text.contains("200") && text.contains("bytes"), "{text}");
    let c = super::sts::parse_credentials("AssumeRole", &r).unwrap_or_else(|e| panic!("{e}"));
    assert!(assert_hidden(&c, &secrets).contains("STS.NReply"));
}

#[test]
fn signed_requests_show_names_not_values() {
    let call = RpcCall {
        api: "AssumeRoleWithOIDC",
        version: "2015-04-01",
        params: vec![
            ("RoleArn", "acs:ram::1:role/r".to_owned()),
            ("OIDCToken", "s3cr3t-RpcCall".to_owned()),
        ],
    };
    let text = assert_hidden(&call, &["s3cr3t-RpcCall"]);
    assert!(
        text.contains("AssumeRoleWithOIDC") && text.contains("OIDCToken"),
        "{text}"
    );

    let headers: BTreeMap<String, String> = [
        ("date", "Sun, 22 Nov 2026 10:00:00 GMT"),
        ("x-acs-security-token", "s3cr3t-RoaRequest-token"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let query = BTreeMap::from([("auth".to_owned(), "s3cr3t-RoaRequest-query".to_owned())]);
    let roa = RoaRequest {
        method: "GET",
        resource: "/tokens",
        headers: &headers,
        query: &query,
    };
    let text = assert_hidden(
        &roa,
        &["s3cr3t-RoaRequest-token", "s3cr3t-RoaRequest-query"],
    );
    assert!(
        text.contains("/tokens") && text.contains("x-acs-security-token"),
        "{text}"
    );
}

#[test]
fn registry_tokens_from_every_answer_hide_the_password() {
    let t = registry_token("s3cr3t-RegistryToken");
    assert!(assert_hidden(&t, &["s3cr3t-RegistryToken"]).contains("cr_temp_user"));

    let enterprise = reply(serde_json::json!({
        "IsSuccess": true,
        "RequestId": "R2",
        "AuthorizationToken": "s3cr3t-EnterpriseToken",
        "TempUsername": "cr_temp_user",
        "ExpireTime": 1_795_000_000_000_i64,
    }));
    let t = super::cr::parse_enterprise_token(&enterprise).unwrap_or_else(|e| panic!("{e}"));
    assert_hidden(&t, &["s3cr3t-EnterpriseToken"]);
    assert_hidden(&enterprise, &["s3cr3t-EnterpriseToken"]);

    let personal = reply(serde_json::json!({
        "data": {
            "authorizationToken": "s3cr3t-PersonalToken",
            "tempUserName": "cr_temp_user",
            "expireDate": 1_795_000_000_000_i64,
        },
    }));
    let t = super::cr::parse_personal_token(&personal).unwrap_or_else(|e| panic!("{e}"));
    assert_hidden(&t, &["s3cr3t-PersonalToken"]);
}

#[test]
fn metadata_and_addon_token_credentials_hide_their_secrets() {
    let secrets = [
        "s3cr3t-RoleCredentials-secret",
        "s3cr3t-RoleCredentials-token",
    ];
    let r = reply(serde_json::json!({
        "Code": "Success",
        "AccessKeyId": "STS.NMetadata",
        "AccessKeySecret": secrets[0],
        "SecurityToken": secrets[1],
        "Expiration": "2026-11-22T12:00:00Z",
    }));
    let c = super::metadata::parse_role_credentials("Worker", &r).unwrap_or_else(|e| panic!("{e}"));
    assert_hidden(&c, &secrets);

    let keyring = "s3cr3t-keyring16";
    let iv = b"abcdefghijklmnop";
    let enc = |s: &str| {
        super::addon_token::encrypt_field(keyring.as_bytes(), iv, s)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (secret, token) = ("s3cr3t-TokenConfig-secret", "s3cr3t-TokenConfig-token");
    let config = |expiration: &str| {
        serde_json::json!({
            "access.key.id": enc("STS.NManaged"),
            "access.key.secret": enc(secret),
            "security.token": enc(token),
            "expiration": expiration,
            "keyring": keyring,
        })
        .to_string()
    };
    let c = super::addon_token::parse(config("2026-11-22T12:00:00Z").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_hidden(&c, &[secret, token, keyring]);
    let e = super::addon_token::parse(config("soon").as_bytes()).err();
    assert_hidden(&e.map(CredentialError::from), &[secret, token, keyring]);
}

#[test]
fn errors_about_answers_that_carry_secrets_hide_them() {
    // The right fields, one of the wrong type: serde's message would quote its neighbours.
    let wrong = reply(serde_json::json!({
        "Credentials": {
            "AccessKeyId": "STS.N",
            "AccessKeySecret": "s3cr3t-CloudError-secret",
            "SecurityToken": 42,
            "Expiration": "2026-11-22T12:00:00Z",
        },
    }));
    let e = super::sts::parse_credentials("AssumeRole", &wrong).err();
    assert_hidden(&e, &["s3cr3t-CloudError-secret"]);

    // SignatureDoesNotMatch echoes the string to sign, SecurityToken included.
    let body = serde_json::json!({
        "Code": "SignatureDoesNotMatch",
        "Message": "Specified signature is not matched with our calculation. server string to sign is:POST&%2F&SecurityToken%3Ds3cr3t-ErrorDocument",
        "RequestId": "R3",
    })
    .to_string();
    let e = super::http::service_error("AssumeRole", 400, "https://sts", body.as_bytes());
    assert!(matches!(e, CloudError::Service { .. }), "{e:?}");
    let text = assert_hidden(&CredentialError::from(e), &["s3cr3t-ErrorDocument"]);
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");

    let file = r#"{"AccessKeyId": 7, "AccessKeySecret": "s3cr3t-AccessKeyFile"}"#;
    let e = crate::provider::parse_access_key_file(file).err();
    assert_hidden(&e, &["s3cr3t-AccessKeyFile"]);
    let file = r#"{"AccessKeyId": "LTAI5t", "AccessKeySecret": "s3cr3t-AccessKeyFile"}"#;
    let c = crate::provider::parse_access_key_file(file).unwrap_or_else(|e| panic!("{e}"));
    assert_hidden(&c, &["s3cr3t-AccessKeyFile"]);
}

#[test]
fn instance_configuration_and_tokens_in_use_hide_their_secrets() {
    let auth = InstanceAuth {
        custom_access_key: Some(access_key("s3cr3t-AccessKey")),
        rrsa: None,
        assume_role: None,
    };
    let ak = auth.custom_access_key.clone();
    assert!(assert_hidden(&ak, &["s3cr3t-AccessKey"]).contains("LTAI5tRedaction"));
    assert_hidden(&auth, &["s3cr3t-AccessKey"]);
    let inst = InstanceRef {
        edition: Edition::Enterprise {
            instance_id: "cri-redaction".into(),
        },
        region: "cn-hangzhou".into(),
        auth,
    };
    assert_hidden(&inst, &["s3cr3t-AccessKey"]);
    let usable = UsableToken {
        token: registry_token("s3cr3t-UsableToken"),
        usable_until: ts("2026-11-22T12:00:00Z"),
    };
    assert_hidden(&usable, &["s3cr3t-UsableToken"]);
}

#[tokio::test]
async fn caches_hide_what_they_hold() {
    let cache: Cache<InstanceRef, UsableToken, CredentialError> = Cache::default();
    let inst = InstanceRef {
        edition: Edition::Personal,
        region: "cn-hangzhou".into(),
        auth: InstanceAuth {
            custom_access_key: Some(access_key("s3cr3t-Cache-key")),
            rrsa: None,
            assume_role: None,
        },
    };
    let usable = UsableToken {
        token: registry_token("s3cr3t-Cache-password"),
        usable_until: ts("2099-01-01T00:00:00Z"),
    };
    let got = cache
        .get(&inst, || async { Ok((usable, ts("2099-01-01T00:00:00Z"))) })
        .await;
    assert!(got.is_ok());
    let text = assert_hidden(&cache, &["s3cr3t-Cache-key", "s3cr3t-Cache-password"]);
    assert!(text.contains("cr_temp_user"), "{text}");
}

#[tokio::test]
async fn the_credential_chain_and_registry_hide_keys_and_their_fingerprints() {
    use std::hash::{DefaultHasher, Hash, Hasher};
    super::http::install_crypto_provider();
    let http = Http::new(&HttpOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Nothing listens there: every cloud call fails, after the caches recorded their keys.
    let nowhere = url::Url::parse("http://127.0.0.1:1/").unwrap_or_else(|e| panic!("{e}"));
    let chain = Chain::new(
        BaseIdentity::WorkerRole(Metadata::new(http.clone(), nowhere.clone(), true)),
        Sts::new(http.clone(), nowhere),
        PathBuf::from("/nonexistent/token"),
    );
    let auth = InstanceAuth {
        custom_access_key: Some(access_key("s3cr3t-Chain")),
        rrsa: None,
        assume_role: Some(AssumedRole {
            role_arn: "acs:ram::1:role/cross".into(),
            duration_seconds: 3600,
        }),
    };
    assert!(
        chain
            .credential(&auth, Duration::from_secs(600))
            .await
            .is_err()
    );
    let mut h = DefaultHasher::new();
    "s3cr3t-Chain".hash(&mut h);
    let fingerprint = h.finish().to_string();
    let registry = Registry::new(
        Arc::new(chain),
        Cr::new(http, "http://127.0.0.1:1/{region}".into()),
    );
    let inst = InstanceRef {
        edition: Edition::Personal,
        region: "cn-hangzhou".into(),
        auth,
    };
    assert!(
        registry
            .fetch_token(&inst, Duration::from_secs(600))
            .await
            .is_err()
    );
    let text = assert_hidden(&registry, &["s3cr3t-Chain", &fingerprint]);
    assert!(
        text.contains("Custom") && text.contains("LTAI5tRedaction"),
        "{text}"
    );
}

#[test]
fn kubelet_plugin_requests_and_responses_hide_tokens_and_passwords() {
    let request = serde_json::json!({
        "apiVersion": crate::provider::api::API_VERSION,
        "kind": "CredentialProviderRequest",
        "image": "registry.cn-hangzhou.aliyuncs.com/ns/app:1",
        "serviceAccountToken": "s3cr3t-Request",
        "serviceAccountAnnotations": {"pod-identity.alibabacloud.com/role-name": "puller"},
    })
    .to_string();
    let r =
        crate::provider::api::parse_request(request.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(assert_hidden(&r, &["s3cr3t-Request"]).contains("registry.cn-hangzhou"));
    let response = crate::provider::api::Response::login(
        "registry.cn-hangzhou.aliyuncs.com",
        "cr_temp_user".into(),
        SecretString::from("s3cr3t-Response"),
        Duration::from_secs(600),
    );
    // The JSON for the kubelet carries the password; its Debug does not.
    assert!(response.to_json().contains("s3cr3t-Response"));
    assert_hidden(&response, &["s3cr3t-Response"]);
}
