//! The ECS metadata service: the node's RAM role credentials (worker role) and its region. Hardened
//! mode first (a session token from `PUT /latest/api/token`), plain GETs as fallback unless
//! disabled.

use secrecy::SecretString;
use serde::Deserialize;

use super::Credential;
use super::error::{ApiName, CloudError};
use super::http::{Http, Reply, decode};
use super::sts::parse_expiration;

const TOKEN_TTL_SECONDS: u32 = 300;

/// An ECS metadata client.
#[derive(Debug, Clone)]
pub struct Metadata {
    http: Http,
    endpoint: url::Url,
    /// Refuse plain GETs when the hardened-mode token cannot be had.
    hardened_only: bool,
}

/// What the metadata service answers for a role. Answer types have no `Debug` (see
/// `redaction_tests`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RoleCredentials {
    code: Option<String>,
    access_key_id: Option<String>,
    access_key_secret: Option<SecretString>,
    security_token: Option<SecretString>,
    expiration: Option<String>,
}

impl Metadata {
    pub fn new(http: Http, endpoint: url::Url, hardened_only: bool) -> Metadata {
        Metadata {
            http,
            endpoint,
            hardened_only,
        }
    }

    fn url(&self, path: &str) -> url::Url {
        let mut url = self.endpoint.clone();
        url.set_path(&format!(
            "{}{path}",
            self.endpoint.path().trim_end_matches('/')
        ));
        url
    }

    /// A hardened-mode session token, or `None` to fall back to plain GETs.
    async fn session_token(&self) -> Result<Option<SecretString>, CloudError> {
        const API: ApiName = "MetadataToken";
        let url = self.url("/latest/api/token");
        let result = self
            .http
            .send(API, || {
                self.http
                    .client()
                    .put(url.clone())
                    .header(
                        "X-aliyun-ecs-metadata-token-ttl-seconds",
                        TOKEN_TTL_SECONDS.to_string(),
                    )
                    .build()
                    .map_err(|e| CloudError::Client(e.without_url().to_string()))
            })
            .await;
        match result {
            Ok(reply) => match String::from_utf8(reply.body) {
                Ok(token) if !token.trim().is_empty() => {
                    Ok(Some(SecretString::from(token.trim().to_owned())))
                }
                _ => Err(CloudError::InvalidResponse {
                    api: API,
                    detail: "empty or non-UTF-8 token".to_owned(),
                }),
            },
            Err(e) if !self.hardened_only => {
                tracing::warn!(error = %e, "ECS metadata hardened mode unavailable; falling back to plain requests");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn get(
        &self,
        api: ApiName,
        path: &str,
        token: Option<&SecretString>,
    ) -> Result<Reply, CloudError> {
        use secrecy::ExposeSecret;
        let url = self.url(path);
        self.http
            .send(api, || {
                let mut req = self.http.client().get(url.clone());
                if let Some(t) = token {
                    req = req.header("X-aliyun-ecs-metadata-token", t.expose_secret());
                }
                req.build()
                    .map_err(|e| CloudError::Client(e.without_url().to_string()))
            })
            .await
    }

    fn text(api: ApiName, reply: Reply) -> Result<String, CloudError> {
        match String::from_utf8(reply.body) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(CloudError::InvalidResponse {
                api,
                detail: "empty or non-UTF-8 answer".to_owned(),
            }),
        }
    }

    /// The credentials of the node's RAM role.
    pub async fn role_credentials(&self) -> Result<Credential, CloudError> {
        let token = self.session_token().await?;
        let role = Self::text(
            "MetadataRoleName",
            self.get(
                "MetadataRoleName",
                "/latest/meta-data/ram/security-credentials/",
                token.as_ref(),
            )
            .await?,
        )?;
        // One role per instance; a listing with several lines names the first.
        let role = role.lines().next().unwrap_or_default().trim().to_owned();
        const API: ApiName = "MetadataCredentials";
        let reply = self
            .get(
                API,
                &format!("/latest/meta-data/ram/security-credentials/{role}"),
                token.as_ref(),
            )
            .await?;
        parse_role_credentials(&role, &reply)
    }

    /// The node's region id.
    pub async fn region(&self) -> Result<String, CloudError> {
        let token = self.session_token().await?;
        Self::text(
            "MetadataRegion",
            self.get(
                "MetadataRegion",
                "/latest/meta-data/region-id",
                token.as_ref(),
            )
            .await?,
        )
    }
}

/// The metadata service's answer for the credentials of `role`: `Code` must say `Success`.
pub fn parse_role_credentials(role: &str, reply: &Reply) -> Result<Credential, CloudError> {
    const API: ApiName = "MetadataCredentials";
    let c: RoleCredentials = decode(API, reply)?;
    if c.code.as_deref() != Some("Success") {
        return Err(CloudError::Service {
            api: API,
            status: reply.status,
            code: c.code.unwrap_or_else(|| "Missing".to_owned()),
            message: format!("the metadata service has no usable credentials for role {role}"),
            request_id: "-".to_owned(),
        });
    }
    let missing = |f: &str| CloudError::InvalidResponse {
        api: API,
        detail: format!("{f} is missing"),
    };
    let expiration = c.expiration.ok_or_else(|| missing("Expiration"))?;
    Ok(Credential {
        access_key_id: c.access_key_id.ok_or_else(|| missing("AccessKeyId"))?,
        access_key_secret: c
            .access_key_secret
            .ok_or_else(|| missing("AccessKeySecret"))?,
        security_token: Some(c.security_token.ok_or_else(|| missing("SecurityToken"))?),
        expiration: Some(parse_expiration(API, &expiration)?),
    })
}
