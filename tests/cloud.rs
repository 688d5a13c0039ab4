//! The project's own cloud clients and credential chain against the fake cloud (which the official
//! SDKs prove faithful in tests/sdk): round trips, single-flight caching, retries, and errors that
//! carry the cloud's code and never a secret.

mod support;

use std::sync::Arc;
use std::time::Duration;

use acr_helper::aliyun::cr::Cr;
use acr_helper::aliyun::http::{Http, HttpOptions, RetryPolicy};
use acr_helper::aliyun::metadata::Metadata;
use acr_helper::aliyun::sts::{AssumeRole, AssumeRoleWithOidc, Sts};
use acr_helper::aliyun::{CloudError, Credential, addon_token};
use acr_helper::credentials::{
    AccessKey, AssumedRole, BaseIdentity, Chain, CredentialError, Edition, InstanceAuth,
    InstanceRef, Registry, RrsaRole,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use support::fake_cloud::*;

/// The `expiring-threshold` the chain's cached credentials are refreshed under.
const THRESHOLD: Duration = Duration::from_secs(15 * 60);

fn http() -> Http {
    acr_helper::aliyun::http::install_crypto_provider();
    Http::new(&HttpOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        },
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn user_key() -> Credential {
    Credential {
        access_key_id: ACCESS_KEY_ID.to_owned(),
        access_key_secret: SecretString::from(ACCESS_KEY_SECRET),
        security_token: None,
        expiration: None,
    }
}

fn custom_auth() -> InstanceAuth {
    InstanceAuth {
        custom_access_key: Some(AccessKey {
            id: ACCESS_KEY_ID.to_owned(),
            secret: SecretString::from(ACCESS_KEY_SECRET),
        }),
        ..Default::default()
    }
}

fn enterprise(auth: InstanceAuth) -> InstanceRef {
    InstanceRef {
        edition: Edition::Enterprise {
            instance_id: INSTANCE_ID.to_owned(),
        },
        region: INSTANCE_REGION.to_owned(),
        auth,
    }
}

fn worker_chain(fake: &FakeCloud) -> Arc<Chain> {
    Arc::new(Chain::new(
        BaseIdentity::WorkerRole(Metadata::new(http(), fake.url(), false)),
        Sts::new(http(), fake.url()),
        "/nonexistent/token".into(),
    ))
}

async fn assert_login_valid(fake: &FakeCloud, username: &str, password: &SecretString) {
    let login = fake
        .registry_login(username, password.expose_secret())
        .await;
    assert_eq!(login["valid"], json!(true), "{login}");
}

#[tokio::test]
async fn sts_and_cr_round_trips_with_an_access_key_and_chained_sts_credentials() {
    let fake = FakeCloud::start(&default_config());
    let sts = Sts::new(http(), fake.url());
    let cr = Cr::new(http(), fake.cr_template());

    let role = AssumeRole {
        role_arn: ROLE_ARN,
        session_name: "test-session",
        duration_seconds: 3600,
    };
    let assumed = sts
        .assume_role(&user_key(), &role)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(assumed.access_key_id.starts_with("STS."));
    let expires = assumed.expiration.unwrap_or_else(|| panic!("no expiry"));
    let life = expires.duration_since(Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&life), "{life}");
    // Chaining from STS credentials sends the SecurityToken.
    let chained = sts
        .assume_role(&assumed, &role)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(chained.access_key_id, assumed.access_key_id);

    let token = cr
        .enterprise_token(&chained, INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(token.username, "cr_temp_user");
    assert_login_valid(&fake, &token.username, &token.password).await;

    let endpoints = cr
        .list_instance_endpoints(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        acr_helper::aliyun::cr::enabled_domains(&endpoints),
        vec![
            "fake-registry.cn-hangzhou.cr.aliyuncs.com",
            "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
        ]
    );

    // Personal Edition (ROA), with an AccessKey and with STS credentials.
    for caller in [user_key(), chained.clone()] {
        let personal = cr
            .personal_token(&caller, OTHER_REGION)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_login_valid(&fake, &personal.username, &personal.password).await;
    }
    assert_eq!(
        fake.calls_in_region("GetPersonalAuthorizationToken", OTHER_REGION)
            .await,
        2
    );

    // The instance in another region is reached at that region's endpoint.
    cr.enterprise_token(&user_key(), OTHER_REGION, OTHER_INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fake.calls_in_region("GetAuthorizationToken", OTHER_REGION)
            .await,
        1
    );
    // ... and not found at another region's.
    let wrong = cr
        .enterprise_token(&user_key(), INSTANCE_REGION, OTHER_INSTANCE_ID)
        .await;
    assert_eq!(
        wrong.err().as_ref().and_then(CloudError::code),
        Some("INSTANCE_NOT_EXIST")
    );
}

#[tokio::test]
async fn registry_password_expires_no_later_than_the_sts_credential() {
    let fake = FakeCloud::start(&default_config());
    fake.configure(json!({"lifetimes": {"sts_seconds": 1000}}))
        .await;
    let chain = worker_chain(&fake);
    let registry = Registry::new(chain, Cr::new(http(), fake.cr_template()));
    let auth = InstanceAuth {
        assume_role: Some(AssumedRole {
            role_arn: ROLE_ARN.to_owned(),
            duration_seconds: 3600,
        }),
        ..Default::default()
    };
    let t = registry
        .fetch_token(&enterprise(auth), THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left = t.usable_until.duration_since(Timestamp::now()).as_secs();
    assert!(left <= 1000, "{left}");
    assert!(
        t.token.expires_at > t.usable_until,
        "the STS credential, not the token, bounds the login"
    );
}

#[tokio::test]
async fn worker_role_from_metadata_in_hardened_mode_and_with_the_plain_fallback() {
    let fake = FakeCloud::start(&default_config());
    let hardened = Metadata::new(http(), fake.url(), true);
    let c = hardened
        .role_credentials()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.access_key_id.starts_with("STS."));
    assert_eq!(fake.calls("MetadataToken").await, 1);
    assert_eq!(
        hardened.region().await.ok().as_deref(),
        Some(INSTANCE_REGION)
    );
    // The credentials work.
    Cr::new(http(), fake.cr_template())
        .enterprise_token(&c, INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A metadata service without hardened mode: the fallback uses plain GETs; hardened-only
    // refuses.
    fake.configure(json!({"metadata": {"role": WORKER_ROLE, "hardened_supported": false}}))
        .await;
    let fallback = Metadata::new(http(), fake.url(), false);
    let c = fallback
        .role_credentials()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.access_key_id.starts_with("STS."));
    assert!(matches!(
        hardened.role_credentials().await,
        Err(CloudError::Http { status: 404, .. })
    ));

    // A service that demands the token is not fooled by the fallback.
    fake.configure(json!({"metadata": {"role": WORKER_ROLE, "hardened_supported": false, "require_token": true}}))
        .await;
    assert!(matches!(
        fallback.role_credentials().await,
        Err(CloudError::Http { status: 401, .. })
    ));
}

#[tokio::test]
async fn rrsa_with_a_real_service_account_token_from_the_api_server() {
    let cp = support::control_plane();
    let client = cp.client().await;
    let dir = cp
        .dir
        .clone()
        .unwrap_or_else(|| panic!("needs our control plane's pki"));
    let config = cp.config().await;
    let issuer = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();

    let mut fake_config = default_config();
    fake_config["oidc_providers"] = json!({
        OIDC_PROVIDER_ARN: {
            "issuer": issuer,
            "jwks_url": format!("{issuer}/openid/v1/jwks"),
            "ca_file": dir.join("pki/ca.crt"),
            "audience": "sts.aliyuncs.com"
        }
    });
    // The token the helper's pod would have: its own ServiceAccount, audience sts.aliyuncs.com;
    // the role trusts exactly that subject.
    let ns = support::TestNamespace::create(&client, "rrsa").await;
    let subject = format!(
        "system:serviceaccount:{}:aliyun-acr-credential-helper",
        ns.name
    );
    fake_config["roles"][RRSA_ROLE_ARN]["oidc_trust"]["subjects"] = json!([subject]);
    let fake = FakeCloud::start(&fake_config);
    support::create_service_account(&client, &ns.name, "aliyun-acr-credential-helper", &[]).await;
    let token = |aud: &'static str| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            support::service_account_token(
                &client,
                &ns,
                "aliyun-acr-credential-helper",
                &[aud],
                3600,
            )
            .await
        }
    };
    let token_dir = std::env::temp_dir().join(format!("rrsa-{}", ns.name));
    std::fs::create_dir_all(&token_dir).unwrap_or_else(|e| panic!("{e}"));
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, token("sts.aliyuncs.com").await).unwrap_or_else(|e| panic!("{e}"));

    let chain = Arc::new(Chain::new(
        BaseIdentity::WorkerRole(Metadata::new(http(), fake.url(), false)),
        Sts::new(http(), fake.url()),
        token_file.clone(),
    ));
    let auth = InstanceAuth {
        rrsa: Some(RrsaRole {
            role_arn: RRSA_ROLE_ARN.to_owned(),
            oidc_provider_arn: OIDC_PROVIDER_ARN.to_owned(),
        }),
        ..Default::default()
    };
    let c = chain
        .credential(&auth, THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.access_key_id.starts_with("STS."));
    assert_eq!(fake.calls("AssumeRoleWithOIDC").await, 1);
    assert_eq!(
        fake.calls("MetadataCredentials").await,
        0,
        "RRSA replaces the base identity"
    );

    // RRSA with AssumeRole chained on top.
    let chained = InstanceAuth {
        assume_role: Some(AssumedRole {
            role_arn: ROLE_ARN.to_owned(),
            duration_seconds: 900,
        }),
        ..auth.clone()
    };
    chain
        .credential(&chained, THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.calls("AssumeRole").await, 1);

    // A token for another audience is refused by the fake, as by Alibaba Cloud's STS: the file is
    // read on every call.
    let sts = Sts::new(http(), fake.url());
    let wrong = SecretString::from(token("kubernetes").await);
    let err = sts
        .assume_role_with_oidc(&AssumeRoleWithOidc {
            role_arn: RRSA_ROLE_ARN,
            oidc_provider_arn: OIDC_PROVIDER_ARN,
            oidc_token: &wrong,
            session_name: "test",
            duration_seconds: 3600,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a token for another audience was accepted"));
    assert_eq!(
        err.code(),
        Some("AuthenticationFail.OIDCToken.InvalidAudience")
    );
    support::leaks::text("errors", &format!("{err} {err:?}"));
    assert!(!err.to_string().contains(wrong.expose_secret()));
    let _ = std::fs::remove_dir_all(&token_dir);
}

#[tokio::test]
async fn managed_role_from_the_addon_token_secret_follows_its_rotation() {
    let cp = support::control_plane();
    let client = cp.client().await;
    let ns = support::TestNamespace::create(&client, "managed").await;
    let fake = FakeCloud::start(&default_config());
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);

    let keyring = "0123456789abcdef0123456789abcdef";
    let addon_secret = |creds: serde_json::Value| addon_token_secret(&creds, keyring);
    let first = fake.mint_sts("managed-role", 3600).await;
    secrets
        .create(&PostParams::default(), &addon_secret(first.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let chain = Chain::new(
        BaseIdentity::ManagedRole {
            secrets: secrets.clone(),
            name: "addon.aliyuncsmanagedacrrole.token".into(),
            // Re-read on every use, so the test sees the rotation at once.
            reread: Duration::ZERO,
        },
        Sts::new(http(), fake.url()),
        "/nonexistent".into(),
    );
    let base = InstanceAuth::default();
    let c = chain
        .credential(&base, THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.access_key_id,
        first["AccessKeyId"].as_str().unwrap_or_default()
    );
    // The decrypted credentials work at the fake.
    Cr::new(http(), fake.cr_template())
        .enterprise_token(&c, INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // ACK rotates the Secret.
    let second = fake.mint_sts("managed-role", 3600).await;
    secrets
        .replace(
            "addon.aliyuncsmanagedacrrole.token",
            &PostParams::default(),
            &addon_secret(second.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c = chain
        .credential(&base, THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.access_key_id,
        second["AccessKeyId"].as_str().unwrap_or_default()
    );

    // A token carrying ACK's error object surfaces its code.
    let mut broken = addon_secret(second);
    broken.string_data = Some(
        [(
            addon_token::CONFIG_KEY.to_owned(),
            json!({"error": {"roleName": "AliyunCSManagedAcrRole", "code": "EntityNotExist.Role", "message": "The role does not exist"}}).to_string(),
        )]
        .into(),
    );
    secrets
        .replace(
            "addon.aliyuncsmanagedacrrole.token",
            &PostParams::default(),
            &broken,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = chain.credential(&base, THRESHOLD).await.err();
    assert_eq!(
        err.as_ref().and_then(CredentialError::code),
        Some("EntityNotExist.Role")
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_share_one_credential_fetch() {
    // Many instances under one identity are refreshed at once: their credential calls overlap,
    // and the chain's single-flight cache makes them one STS and one metadata call.
    let fake = FakeCloud::start(&default_config());
    // A slow answer makes sure the requests really overlap.
    fake.fault("AssumeRole", json!({"kind": "slow", "delay_seconds": 0.5}))
        .await;
    let chain = worker_chain(&fake);
    let auth = InstanceAuth {
        assume_role: Some(AssumedRole {
            role_arn: ROLE_ARN.to_owned(),
            duration_seconds: 3600,
        }),
        ..Default::default()
    };
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let chain = chain.clone();
            let auth = auth.clone();
            tokio::spawn(async move { chain.credential(&auth, THRESHOLD).await })
        })
        .collect();
    let mut keys = std::collections::BTreeSet::new();
    for t in tasks {
        let c = t
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        keys.insert(c.access_key_id);
    }
    assert_eq!(keys.len(), 1, "every caller shares one credential");
    assert_eq!(fake.calls("AssumeRole").await, 1);
    assert_eq!(fake.calls("MetadataCredentials").await, 1);
}

#[tokio::test]
async fn only_transport_failures_are_retried_within_a_call() {
    let fake = FakeCloud::start(&default_config());
    let cr = Cr::new(http(), fake.cr_template());

    // The cloud answered: the error comes back at once, for the caller to schedule a retry.
    fake.fault(
        "GetAuthorizationToken",
        json!({"kind": "http500", "count": 1}),
    )
    .await;
    let err = cr
        .enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .err();
    assert_eq!(
        err.as_ref().and_then(CloudError::code),
        Some("InternalError")
    );
    assert_eq!(
        err.as_ref().map(CloudError::category),
        Some("cloud_unavailable")
    );
    assert_eq!(fake.calls("GetAuthorizationToken").await, 1);

    fake.fault(
        "GetAuthorizationToken",
        json!({"kind": "throttling", "count": 1}),
    )
    .await;
    let err = cr
        .enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .err();
    assert_eq!(err.as_ref().and_then(CloudError::code), Some("Throttling"));
    assert_eq!(fake.calls("GetAuthorizationToken").await, 2);
    cr.enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("the next call succeeds: {e}"));
    assert_eq!(fake.calls("GetAuthorizationToken").await, 3);

    // No answer: tried again within the call. The test client gives up after 2 s; the fault
    // answers after 4 s.
    fake.fault(
        "GetAuthorizationToken",
        json!({"kind": "timeout", "count": 1, "delay_seconds": 4}),
    )
    .await;
    cr.enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .unwrap_or_else(|e| panic!("a timeout then success must succeed: {e}"));
    assert_eq!(fake.calls("GetAuthorizationToken").await, 5);

    // Nobody listening: every attempt of the budget is used, then the error surfaces.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = closed
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    drop(closed);
    let nowhere = Cr::new(http(), format!("http://127.0.0.1:{port}/{{region}}"));
    let err = nowhere
        .enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .err();
    assert!(
        matches!(err, Some(CloudError::Unreachable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn permission_errors_and_malformed_answers_are_not_retried() {
    let fake = FakeCloud::start(&default_config());
    let cr = Cr::new(http(), fake.cr_template());
    fake.fault(
        "GetAuthorizationToken",
        json!({"kind": "error", "status": 403, "code": "NoPermission", "message": "You are not authorized to do this action."}),
    )
    .await;
    let err = cr
        .enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .err()
        .unwrap_or_else(|| panic!("NoPermission must fail"));
    support::leaks::text("errors", &format!("{err} {err:?}"));
    assert_eq!(err.code(), Some("NoPermission"));
    assert_eq!(err.category(), "cloud_auth");
    assert!(err.to_string().contains("RequestId"), "{err}");
    assert_eq!(fake.calls("GetAuthorizationToken").await, 1);

    fake.fault("GetAuthorizationToken", json!({"kind": "malformed"}))
        .await;
    let err = cr
        .enterprise_token(&user_key(), INSTANCE_REGION, INSTANCE_ID)
        .await
        .err();
    assert!(
        matches!(err, Some(CloudError::InvalidResponse { .. })),
        "{err:?}"
    );
    assert_eq!(fake.calls("GetAuthorizationToken").await, 2);
}

#[tokio::test]
async fn expired_and_forged_credentials_are_rejected_without_leaking_them() {
    let fake = FakeCloud::start(&default_config());
    let cr = Cr::new(http(), fake.cr_template());
    let sts = Sts::new(http(), fake.url());

    // An STS credential that has expired.
    fake.configure(json!({"lifetimes": {"sts_seconds": 1}}))
        .await;
    let short = sts
        .assume_role(
            &user_key(),
            &AssumeRole {
                role_arn: ROLE_ARN,
                session_name: "short",
                duration_seconds: 900,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = cr
        .enterprise_token(&short, INSTANCE_REGION, INSTANCE_ID)
        .await
        .err()
        .unwrap_or_else(|| panic!("an expired SecurityToken was accepted"));
    support::leaks::text("errors", &format!("{err} {err:?}"));
    assert_eq!(err.code(), Some("InvalidSecurityToken.Expired"));

    // A wrong secret with a valid token: the fake, like Alibaba Cloud, echoes its string to sign
    // (which holds the SecurityToken) in the message; the error must not carry it.
    fake.configure(json!({"lifetimes": {}})).await;
    let good = sts
        .assume_role(
            &user_key(),
            &AssumeRole {
                role_arn: ROLE_ARN,
                session_name: "good",
                duration_seconds: 900,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let forged = Credential {
        access_key_secret: SecretString::from("wrong-secret-value"),
        ..good.clone()
    };
    let err = cr
        .enterprise_token(&forged, INSTANCE_REGION, INSTANCE_ID)
        .await
        .err()
        .unwrap_or_else(|| panic!("a forged signature was accepted"));
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"));
    let text = format!("{err} {err:?}");
    support::leaks::text("errors", &text);
    for secret in [
        good.security_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default(),
        good.access_key_secret.expose_secret().to_owned(),
        "wrong-secret-value".to_owned(),
    ] {
        assert!(!text.contains(&secret), "{text}");
    }
    // The Personal Edition (ROA) path rejects it too.
    let err = cr.personal_token(&forged, INSTANCE_REGION).await.err();
    assert_eq!(
        err.as_ref().and_then(CloudError::code),
        Some("SignatureDoesNotMatch")
    );
}

#[tokio::test]
async fn no_error_text_carries_a_secret() {
    // Every error variant, built from secret-bearing inputs where the variant takes any input.
    const SECRET: &str = "S3cr3t-V4lue-That-Must-Not-Leak";
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(CloudError::Service {
            api: "AssumeRole",
            status: 400,
            code: "SignatureDoesNotMatch".into(),
            message: acr_helper::aliyun::error::sanitize_message(&format!(
                "Specified signature is not matched. server string to sign is:POST&%2F&SecurityToken%3D{SECRET}"
            )),
            request_id: "R".into(),
        }),
        Box::new(CloudError::InvalidResponse {
            api: "AssumeRole",
            detail: acr_helper::aliyun::error::describe_json_error(
                &serde_json::from_str::<u32>(&format!("\"{SECRET}\""))
                    .err()
                    .unwrap_or_else(|| panic!("must fail")),
            ),
        }),
        Box::new(CloudError::Http {
            api: "MetadataCredentials",
            status: 404,
            endpoint: acr_helper::aliyun::error::endpoint_of(
                &url::Url::parse(&format!(
                    "http://u:{SECRET}@127.0.0.1/?SecurityToken={SECRET}"
                ))
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        }),
        Box::new(
            addon_token::parse(
                json!({"keyring": SECRET[..16].to_owned(), "access.key.id": SECRET})
                    .to_string()
                    .as_bytes(),
            )
            .err()
            .unwrap_or_else(|| panic!("must fail")),
        ),
        Box::new(
            addon_token::decrypt_field("security.token", &SECRET.as_bytes()[..16], SECRET)
                .err()
                .unwrap_or_else(|| panic!("must fail")),
        ),
    ];
    // Transport errors, from a real failed request whose form carries the secret.
    let fake = FakeCloud::start(&default_config());
    fake.fault(
        "GetAuthorizationToken",
        json!({"kind": "timeout", "count": -1, "delay_seconds": 4}),
    )
    .await;
    let leaky = Credential {
        access_key_id: ACCESS_KEY_ID.into(),
        access_key_secret: SecretString::from(SECRET),
        security_token: Some(SecretString::from(SECRET)),
        expiration: None,
    };
    acr_helper::aliyun::http::install_crypto_provider();
    let no_retry = Http::new(&HttpOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let timeout = Cr::new(no_retry.clone(), fake.cr_template())
        .enterprise_token(&leaky, INSTANCE_REGION, INSTANCE_ID)
        .await
        .err()
        .unwrap_or_else(|| panic!("must time out"));
    assert!(matches!(timeout, CloudError::Timeout { .. }), "{timeout:?}");
    let unreachable = Cr::new(no_retry, "http://127.0.0.1:1/{region}".into())
        .enterprise_token(&leaky, INSTANCE_REGION, INSTANCE_ID)
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(
        matches!(unreachable, CloudError::Unreachable { .. }),
        "{unreachable:?}"
    );
    let mut all: Vec<Box<dyn std::error::Error>> = errors;
    // Every way an addon token can be wrong, each document full of the secret.
    let enc = |plain: &str| {
        addon_token::encrypt_field(&SECRET.as_bytes()[..16], &[7u8; 16], plain)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let key16 = &SECRET[..16];
    let addon_docs = [
        format!("{{\"keyring\": \"{SECRET}"),
        json!({"keyring": key16}).to_string(),
        json!({"keyring": SECRET, "access.key.id": enc(SECRET)}).to_string(),
        json!({"keyring": key16, "access.key.id": SECRET}).to_string(),
        json!({"keyring": key16, "access.key.id": "QUJD"}).to_string(),
        json!({"keyring": key16, "access.key.id": enc(SECRET)[..44].to_owned() + "AAAAAAAAAAAAAAAAAAAAAA=="}).to_string(),
        json!({"keyring": key16, "access.key.id": enc(SECRET), "access.key.secret": enc(SECRET),
               "security.token": enc(SECRET), "expiration": "never"}).to_string(),
        json!({"error": {"roleName": "r", "code": "c",
               "message": format!("denied; string to sign is {SECRET}")}}).to_string(),
    ];
    for doc in addon_docs {
        let e = addon_token::parse(doc.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{doc} must not parse"));
        all.push(Box::new(CredentialError::AddonToken(e)));
    }
    all.push(Box::new(timeout));
    all.push(Box::new(unreachable));
    all.push(Box::new(CredentialError::OidcTokenFile {
        path: "/var/run/token".into(),
        detail: std::io::ErrorKind::NotFound.to_string(),
    }));
    for e in &all {
        let text = format!("{e} | {e:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(&SECRET[..16]), "{text}");
    }
    // And credentials themselves never print their secrets.
    let text = format!("{leaky:?}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn custom_access_key_needs_no_base_identity_and_chains_assume_role() {
    let fake = FakeCloud::start(&default_config());
    let registry = Registry::new(worker_chain(&fake), Cr::new(http(), fake.cr_template()));
    let t = registry
        .fetch_token(&enterprise(custom_auth()), THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_login_valid(&fake, &t.token.username, &t.token.password).await;
    assert_eq!(fake.calls("MetadataCredentials").await, 0);
    assert_eq!(fake.calls("AssumeRole").await, 0);

    let chained = InstanceAuth {
        assume_role: Some(AssumedRole {
            role_arn: ROLE_ARN.to_owned(),
            duration_seconds: 900,
        }),
        ..custom_auth()
    };
    let c = registry
        .chain()
        .credential(&chained, THRESHOLD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.security_token.is_some());
    assert_eq!(fake.calls("AssumeRole").await, 1);
    assert_eq!(fake.calls("MetadataCredentials").await, 0);
}

/// A server that answers every request with a redirect to `target`, and one that counts what
/// reaches it.
fn redirector(target: &str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let target = target.to_owned();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {target}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, handle)
}

#[tokio::test]
async fn redirects_are_never_followed() {
    // Whatever reaches this listener would be a signed request (or a security token) re-sent to
    // another host.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    elsewhere
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("{e}"));
    let target = format!(
        "http://{}",
        elsewhere.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (url, _server) = redirector(&target);
    let endpoint = url::Url::parse(&url).unwrap_or_else(|e| panic!("{e}"));
    let sts = Sts::new(http(), endpoint);
    let role = AssumeRole {
        role_arn: ROLE_ARN,
        session_name: "t",
        duration_seconds: 900,
    };
    let err = sts.assume_role(&user_key(), &role).await.err();
    assert!(
        matches!(err, Some(CloudError::Http { status: 302, .. })),
        "{err:?}"
    );
    let caller = Credential {
        access_key_id: "STS.id".into(),
        access_key_secret: SecretString::from("s"),
        security_token: Some(SecretString::from("a-security-token")),
        expiration: None,
    };
    let cr = Cr::new(http(), format!("{url}/r/{{region}}"));
    let err = cr.personal_token(&caller, INSTANCE_REGION).await.err();
    assert!(
        matches!(err, Some(CloudError::Http { status: 302, .. })),
        "{err:?}"
    );
    assert!(
        elsewhere.accept().is_err(),
        "a request followed the redirect"
    );
}
