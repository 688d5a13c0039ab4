//! STS (2015-04-01): `AssumeRole` (signed) and `AssumeRoleWithOIDC` (anonymous), for
//! cross-account roles and RRSA.

use jiff::Timestamp;
use secrecy::SecretString;
use serde::Deserialize;

use super::Credential;
use super::error::{ApiName, CloudError};
use super::http::{Http, Reply, decode};
use super::rpc::RpcCall;

const VERSION: &str = "2015-04-01";

/// An STS client.
#[derive(Debug, Clone)]
pub struct Sts {
    http: Http,
    endpoint: url::Url,
}

/// What to assume.
#[derive(Debug, Clone)]
pub struct AssumeRole<'a> {
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub duration_seconds: u32,
}

/// What to assume with an OIDC token (RRSA).
pub struct AssumeRoleWithOidc<'a> {
    pub role_arn: &'a str,
    pub oidc_provider_arn: &'a str,
    pub oidc_token: &'a SecretString,
    pub session_name: &'a str,
    pub duration_seconds: u32,
}

/// What AssumeRole and AssumeRoleWithOIDC answer. Answer types have no `Debug` (see
/// `redaction_tests`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StsAnswer {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StsCredentials {
    access_key_id: String,
    access_key_secret: SecretString,
    security_token: SecretString,
    expiration: String,
}

impl Sts {
    pub fn new(http: Http, endpoint: url::Url) -> Sts {
        Sts { http, endpoint }
    }

    /// AssumeRole, signed with `caller` (an AccessKey or STS credentials: chaining is allowed).
    pub async fn assume_role(
        &self,
        caller: &Credential,
        req: &AssumeRole<'_>,
    ) -> Result<Credential, CloudError> {
        const API: ApiName = "AssumeRole";
        let call = RpcCall {
            api: API,
            version: VERSION,
            params: vec![
                ("RoleArn", req.role_arn.to_owned()),
                ("RoleSessionName", req.session_name.to_owned()),
                ("DurationSeconds", req.duration_seconds.to_string()),
            ],
        };
        let reply = self
            .http
            .send(API, || {
                call.request(self.http.client(), &self.endpoint, Some(caller))
            })
            .await?;
        parse_credentials(API, &reply)
    }

    /// AssumeRoleWithOIDC: anonymous, authenticated by the OIDC token alone.
    pub async fn assume_role_with_oidc(
        &self,
        req: &AssumeRoleWithOidc<'_>,
    ) -> Result<Credential, CloudError> {
        use secrecy::ExposeSecret;
        const API: ApiName = "AssumeRoleWithOIDC";
        let call = RpcCall {
            api: API,
            version: VERSION,
            params: vec![
                ("RoleArn", req.role_arn.to_owned()),
                ("OIDCProviderArn", req.oidc_provider_arn.to_owned()),
                ("OIDCToken", req.oidc_token.expose_secret().to_owned()),
                ("RoleSessionName", req.session_name.to_owned()),
                ("DurationSeconds", req.duration_seconds.to_string()),
            ],
        };
        let reply = self
            .http
            .send(API, || {
                call.request(self.http.client(), &self.endpoint, None)
            })
            .await?;
        parse_credentials(API, &reply)
    }
}

/// The answer of AssumeRole or AssumeRoleWithOIDC (`api`): the STS credentials.
pub fn parse_credentials(api: ApiName, reply: &Reply) -> Result<Credential, CloudError> {
    let c = decode::<StsAnswer>(api, reply)?.credentials;
    let expiration = parse_expiration(api, &c.expiration)?;
    Ok(Credential {
        access_key_id: c.access_key_id,
        access_key_secret: c.access_key_secret,
        security_token: Some(c.security_token),
        expiration: Some(expiration),
    })
}

/// Parses the `YYYY-MM-DDTHH:MM:SSZ` expiry of STS credentials.
pub(crate) fn parse_expiration(api: ApiName, value: &str) -> Result<Timestamp, CloudError> {
    value
        .parse::<Timestamp>()
        .map_err(|_| CloudError::InvalidResponse {
            api,
            detail: format!("Expiration {value:?} is not a UTC timestamp"),
        })
}
