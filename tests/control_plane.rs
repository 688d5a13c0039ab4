//! The local control plane is a real Kubernetes API server: objects round-trip through etcd,
//! TokenRequest issues tokens signed with the keys it publishes, and RBAC is enforced.

mod support;

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use support::{TestNamespace, control_plane};

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app".to_owned(), "builder".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn token_for(client: &Client, ns: &str, sa: &str, audiences: Vec<String>) -> String {
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    support::service_account_token(client, ns, sa, &audiences, 3600).await
}

#[tokio::test]
async fn namespace_and_service_account_round_trip_through_the_api_server() {
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "roundtrip").await;

    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name);
    let created = sas
        .create(&PostParams::default(), &service_account("builder"))
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount: {e}"));
    let read = sas
        .get("builder")
        .await
        .unwrap_or_else(|e| panic!("get ServiceAccount: {e}"));

    assert_eq!(read.metadata.namespace.as_deref(), Some(ns.name.as_str()));
    assert_eq!(read.metadata.uid, created.metadata.uid);
    assert!(read.metadata.uid.is_some(), "the server assigns a uid");
    assert_eq!(
        read.metadata.labels,
        Some(BTreeMap::from([("app".to_owned(), "builder".to_owned())]))
    );
    // kube-controller-manager gave the namespace its "default" ServiceAccount, as in a real
    // cluster; TestNamespace::create waited for it.
    let names: Vec<String> = sas
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list ServiceAccounts: {e}"))
        .items
        .into_iter()
        .filter_map(|sa| sa.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_owned()), "{names:?}");
    assert!(names.contains(&"builder".to_owned()), "{names:?}");
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: u64,
    iat: u64,
}

#[tokio::test]
async fn token_request_for_sts_audience_verifies_against_the_published_jwks() {
    const AUDIENCE: &str = "sts.aliyuncs.com";
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "tokenreq").await;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service_account("rrsa"))
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount: {e}"));
    let token = token_for(&client, &ns.name, "rrsa", vec![AUDIENCE.to_owned()]).await;

    // The discovery documents are read anonymously, as Alibaba Cloud's STS reads an RRSA issuer.
    let mut anon = control_plane().config().await;
    anon.auth_info = Default::default();
    let anon = Client::try_from(anon).unwrap_or_else(|e| panic!("anonymous client: {e}"));
    let get = |path: String| {
        let anon = anon.clone();
        async move {
            let req = http::Request::get(&path)
                .body(Vec::new())
                .unwrap_or_else(|e| panic!("request {path}: {e}"));
            anon.request_text(req)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        }
    };
    let discovery: Discovery =
        serde_json::from_str(&get("/.well-known/openid-configuration".to_owned()).await)
            .unwrap_or_else(|e| panic!("openid-configuration: {e}"));
    assert!(
        discovery.jwks_uri.ends_with("/openid/v1/jwks"),
        "{discovery:?}"
    );
    let jwks: JwkSet = serde_json::from_str(&get("/openid/v1/jwks".to_owned()).await)
        .unwrap_or_else(|e| panic!("jwks: {e}"));

    let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|e| panic!("header: {e}"));
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.unwrap_or_else(|| panic!("token has no kid"));
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).unwrap_or_else(|e| panic!("jwk: {e}"));

    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[discovery.issuer.as_str()]);
    let claims = jsonwebtoken::decode::<Claims>(&token, &key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify: {e}"))
        .claims;
    assert_eq!(claims.iss, discovery.issuer);
    assert_eq!(claims.aud, vec![AUDIENCE.to_owned()]);
    assert_eq!(
        claims.sub,
        format!("system:serviceaccount:{}:rrsa", ns.name)
    );
    assert!(
        (3500..=3700).contains(&(claims.exp - claims.iat)),
        "{claims:?}"
    );

    // The same checks reject what they must: another audience, and a token with a changed payload.
    let mut other_aud = validation.clone();
    other_aud.set_audience(&["kubernetes"]);
    assert!(jsonwebtoken::decode::<Claims>(&token, &key, &other_aud).is_err());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = parts[1].clone();
    let flipped = if payload.ends_with('A') { 'B' } else { 'A' };
    parts[1] = format!("{}{flipped}", &payload[..payload.len() - 1]);
    assert!(jsonwebtoken::decode::<Claims>(&parts.join("."), &key, &validation).is_err());
}

#[tokio::test]
async fn rbac_is_enforced_for_service_account_tokens() {
    let client = control_plane().client().await;
    let ns = TestNamespace::create(&client, "rbac").await;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service_account("nobody"))
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount: {e}"));
    // No audiences: the token is for the API server itself.
    let token = token_for(&client, &ns.name, "nobody", Vec::new()).await;
    let as_sa = control_plane().client_with_token(&token).await;
    let secrets = Api::<Secret>::namespaced(as_sa, &ns.name);

    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a ServiceAccount without permissions listed Secrets: {other:?}"),
    }

    // Granting exactly that permission makes the same call succeed, so the 403 above came from
    // RBAC and not from a broken token.
    let role = Role {
        metadata: ObjectMeta {
            name: Some("list-secrets".to_owned()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".to_owned()]),
            verbs: vec!["list".to_owned()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("create Role: {e}"));
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("list-secrets".to_owned()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: "list-secrets".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "nobody".to_owned(),
            namespace: Some(ns.name.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding: {e}"));
    support::wait_until(
        std::time::Duration::from_secs(10),
        "the RoleBinding to take effect",
        || {
            let secrets = secrets.clone();
            async move { secrets.list(&ListParams::default()).await.is_ok() }
        },
    )
    .await;
}
