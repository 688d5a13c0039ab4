//! Container Registry: Enterprise Edition `GetAuthorizationToken` and `ListInstanceEndpoint`
//! (2018-12-01, RPC), and the Personal Edition's `GET /tokens` (2016-06-07, ROA).

use std::collections::BTreeMap;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::{ApiName, CloudError};
use super::http::{Http, Reply, decode};
use super::rpc::RpcCall;
use super::sign::{RoaRequest, roa_signature};
use super::{Credential, is_region_id};

const VERSION: &str = "2018-12-01";
const PERSONAL_VERSION: &str = "2016-06-07";

/// A temporary registry login.
#[derive(Clone)]
pub struct RegistryToken {
    pub username: String,
    pub password: SecretString,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryToken")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One endpoint of an Enterprise instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceEndpoint {
    #[serde(default)]
    pub endpoint_type: String,
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub domains: Vec<EndpointDomain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointDomain {
    pub domain: String,
    #[serde(default, rename = "Type")]
    pub domain_type: String,
}

/// The registry domains of the enabled endpoints, in the order given, without duplicates.
pub fn enabled_domains(endpoints: &[InstanceEndpoint]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in endpoints.iter().filter(|e| e.enable) {
        for d in &e.domains {
            if !d.domain.is_empty() && !out.contains(&d.domain) {
                out.push(d.domain.clone());
            }
        }
    }
    out
}

/// A Container Registry client.
#[derive(Debug, Clone)]
pub struct Cr {
    http: Http,
    endpoint_template: String,
}

/// What GetAuthorizationToken answers. Answer types have no `Debug` (see `redaction_tests`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EnterpriseToken {
    is_success: Option<bool>,
    code: Option<String>,
    request_id: Option<String>,
    authorization_token: Option<SecretString>,
    temp_username: Option<String>,
    expire_time: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoints {
    is_success: Option<bool>,
    code: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    endpoints: Vec<InstanceEndpoint>,
}

/// What the Personal Edition's `GET /tokens` answers.
#[derive(Deserialize)]
pub(super) struct PersonalAnswer {
    data: PersonalToken,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PersonalToken {
    authorization_token: SecretString,
    temp_user_name: String,
    expire_date: i64,
}

impl Cr {
    /// `endpoint_template` is a URL in which `{region}` stands for the instance's region.
    pub fn new(http: Http, endpoint_template: String) -> Cr {
        Cr {
            http,
            endpoint_template,
        }
    }

    /// The API endpoint for `region`.
    pub fn endpoint(&self, region: &str) -> Result<url::Url, CloudError> {
        if !is_region_id(region) {
            return Err(CloudError::Endpoint {
                endpoint: self.endpoint_template.clone(),
                detail: format!("{region:?} is not a region id"),
            });
        }
        let url = self.endpoint_template.replace("{region}", region);
        url::Url::parse(&url).map_err(|e| CloudError::Endpoint {
            endpoint: url.clone(),
            detail: e.to_string(),
        })
    }

    /// A temporary login for an Enterprise Edition instance.
    pub async fn enterprise_token(
        &self,
        caller: &Credential,
        region: &str,
        instance_id: &str,
    ) -> Result<RegistryToken, CloudError> {
        const API: ApiName = "GetAuthorizationToken";
        let endpoint = self.endpoint(region)?;
        let call = RpcCall {
            api: API,
            version: VERSION,
            params: vec![("InstanceId", instance_id.to_owned())],
        };
        let reply = self
            .http
            .send(API, || {
                call.request(self.http.client(), &endpoint, Some(caller))
            })
            .await?;
        parse_enterprise_token(&reply)
    }

    /// The endpoints (and so the registry domains) of an Enterprise Edition instance.
    pub async fn list_instance_endpoints(
        &self,
        caller: &Credential,
        region: &str,
        instance_id: &str,
    ) -> Result<Vec<InstanceEndpoint>, CloudError> {
        const API: ApiName = "ListInstanceEndpoint";
        let endpoint = self.endpoint(region)?;
        let call = RpcCall {
            api: API,
            version: VERSION,
            params: vec![
                ("InstanceId", instance_id.to_owned()),
                ("ModuleName", "Registry".to_owned()),
            ],
        };
        let reply = self
            .http
            .send(API, || {
                call.request(self.http.client(), &endpoint, Some(caller))
            })
            .await?;
        parse_endpoints(&reply)
    }

    /// A temporary login for the Personal Edition instance of `region`.
    pub async fn personal_token(
        &self,
        caller: &Credential,
        region: &str,
    ) -> Result<RegistryToken, CloudError> {
        const API: ApiName = "GetPersonalAuthorizationToken";
        let endpoint = self.endpoint(region)?;
        let url = join_path(&endpoint, "tokens");
        let reply = self
            .http
            .send(API, || {
                let headers = roa_headers(caller, Timestamp::now());
                let empty = BTreeMap::new();
                let signature = roa_signature(
                    caller.access_key_secret.expose_secret(),
                    &RoaRequest {
                        method: "GET",
                        resource: "/tokens",
                        headers: &headers,
                        query: &empty,
                    },
                );
                let mut req = self.http.client().get(url.clone()).header(
                    "authorization",
                    format!("acs {}:{signature}", caller.access_key_id),
                );
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                req.build()
                    .map_err(|e| CloudError::Client(e.without_url().to_string()))
            })
            .await?;
        parse_personal_token(&reply)
    }
}

/// `GetAuthorizationToken`'s answer (Enterprise Edition): `IsSuccess` is checked even on HTTP 200.
pub fn parse_enterprise_token(reply: &Reply) -> Result<RegistryToken, CloudError> {
    const API: ApiName = "GetAuthorizationToken";
    let t: EnterpriseToken = decode(API, reply)?;
    if t.is_success != Some(true) {
        return Err(unsuccessful(API, reply.status, t.code, t.request_id));
    }
    let missing = |field: &str| CloudError::InvalidResponse {
        api: API,
        detail: format!("{field} is missing"),
    };
    Ok(RegistryToken {
        username: t.temp_username.ok_or_else(|| missing("TempUsername"))?,
        password: t
            .authorization_token
            .ok_or_else(|| missing("AuthorizationToken"))?,
        expires_at: from_millis(API, t.expire_time.ok_or_else(|| missing("ExpireTime"))?)?,
    })
}

/// `ListInstanceEndpoint`'s answer.
pub fn parse_endpoints(reply: &Reply) -> Result<Vec<InstanceEndpoint>, CloudError> {
    const API: ApiName = "ListInstanceEndpoint";
    let e: Endpoints = decode(API, reply)?;
    if e.is_success != Some(true) {
        return Err(unsuccessful(API, reply.status, e.code, e.request_id));
    }
    Ok(e.endpoints)
}

/// The Personal Edition's `GET /tokens` answer.
pub fn parse_personal_token(reply: &Reply) -> Result<RegistryToken, CloudError> {
    const API: ApiName = "GetPersonalAuthorizationToken";
    let answer: PersonalAnswer = decode(API, reply)?;
    Ok(RegistryToken {
        username: answer.data.temp_user_name,
        password: answer.data.authorization_token,
        expires_at: from_millis(API, answer.data.expire_date)?,
    })
}

/// The signed headers of a ROA request, lower-case names.
fn roa_headers(caller: &Credential, now: Timestamp) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    h.insert(
        "date".to_owned(),
        now.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string(),
    );
    h.insert("accept".to_owned(), "application/json".to_owned());
    h.insert(
        "x-acs-signature-nonce".to_owned(),
        uuid::Uuid::new_v4().to_string(),
    );
    h.insert("x-acs-signature-method".to_owned(), "HMAC-SHA1".to_owned());
    h.insert("x-acs-signature-version".to_owned(), "1.0".to_owned());
    h.insert("x-acs-version".to_owned(), PERSONAL_VERSION.to_owned());
    h.insert(
        "x-acs-action".to_owned(),
        "GetAuthorizationToken".to_owned(),
    );
    if let Some(token) = &caller.security_token {
        h.insert(
            "x-acs-security-token".to_owned(),
            token.expose_secret().to_owned(),
        );
    }
    h
}

/// `base` with `segment` appended to its path (keeping any path prefix of an override).
fn join_path(base: &url::Url, segment: &str) -> url::Url {
    let mut url = base.clone();
    let path = format!("{}/{segment}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn unsuccessful(
    api: ApiName,
    status: u16,
    code: Option<String>,
    request_id: Option<String>,
) -> CloudError {
    CloudError::Service {
        api,
        status,
        code: code.unwrap_or_else(|| "IsSuccessFalse".to_owned()),
        message: "the answer says IsSuccess is not true".to_owned(),
        request_id: request_id.unwrap_or_else(|| "-".to_owned()),
    }
}

fn from_millis(api: ApiName, ms: i64) -> Result<Timestamp, CloudError> {
    Timestamp::from_millisecond(ms).map_err(|_| CloudError::InvalidResponse {
        api,
        detail: format!("expiry {ms} is not a time in epoch milliseconds"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(enable: bool, domains: &[&str]) -> InstanceEndpoint {
        InstanceEndpoint {
            endpoint_type: "internet".into(),
            enable,
            status: "RUNNING".into(),
            domains: domains
                .iter()
                .map(|d| EndpointDomain {
                    domain: (*d).to_owned(),
                    domain_type: "SYSTEM".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn enabled_domains_skip_disabled_endpoints_and_duplicates() {
        let eps = vec![
            ep(true, &["a.example", "b.example"]),
            ep(false, &["off.example"]),
            ep(true, &["b.example", "c.example", ""]),
        ];
        assert_eq!(
            enabled_domains(&eps),
            vec!["a.example", "b.example", "c.example"]
        );
    }

    #[test]
    fn endpoint_templates() {
        crate::aliyun::http::install_crypto_provider();
        let http = Http::new(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let cr = Cr::new(http.clone(), super::super::DEFAULT_CR_ENDPOINT.to_owned());
        assert_eq!(
            cr.endpoint("cn-shanghai").map(|u| u.to_string()).ok(),
            Some("https://cr.cn-shanghai.aliyuncs.com/".to_owned())
        );
        assert!(cr.endpoint("not a region").is_err());
        let fake = Cr::new(http, "http://127.0.0.1:9/r/{region}".to_owned());
        let url = fake.endpoint("us-west-1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            join_path(&url, "tokens").as_str(),
            "http://127.0.0.1:9/r/us-west-1/tokens"
        );
        let root = url::Url::parse("https://cr.cn-hangzhou.aliyuncs.com")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            join_path(&root, "tokens").as_str(),
            "https://cr.cn-hangzhou.aliyuncs.com/tokens"
        );
    }

    #[test]
    fn roa_headers_carry_the_token_only_for_sts_credentials() {
        let mut c = Credential {
            access_key_id: "AK".into(),
            access_key_secret: SecretString::from("s"),
            security_token: None,
            expiration: None,
        };
        let now: Timestamp = "2026-11-22T10:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let h = roa_headers(&c, now);
        assert_eq!(h["date"], "Sun, 22 Nov 2026 10:00:00 GMT");
        assert!(!h.contains_key("x-acs-security-token"));
        c.security_token = Some(SecretString::from("tok"));
        assert_eq!(roa_headers(&c, now)["x-acs-security-token"], "tok");
    }
}
