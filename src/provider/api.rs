//! The kubelet's exec plugin API, `credentialprovider.kubelet.k8s.io/v1`: the request the kubelet
//! writes and the response it decodes strictly (so the response carries exactly its fields).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// `CredentialProviderRequest`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub api_version: String,
    pub kind: String,
    pub image: String,
    /// KEP-4412: a token of the Pod's ServiceAccount, for the configured audience.
    #[serde(default)]
    pub service_account_token: Option<SecretString>,
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("image", &self.image)
            .field(
                "service_account_token",
                &self.service_account_token.is_some(),
            )
            .finish_non_exhaustive()
    }
}

/// Decodes and checks a request; the error is one line naming the problem (never the token).
pub fn parse_request(bytes: &[u8]) -> Result<Request, String> {
    let r: Request = serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "it ends too early",
            serde_json::error::Category::Syntax => "it is not JSON",
            serde_json::error::Category::Data => "a field is missing or of the wrong type",
            serde_json::error::Category::Io => "it could not be read",
        };
        // serde names a missing or duplicate field; its other messages may quote a value (which
        // could be a token), so only those two are passed on.
        let detail = e.to_string();
        let detail = detail.split(" at line").next().unwrap_or_default();
        if detail.starts_with("missing field") || detail.starts_with("duplicate field") {
            format!("not a CredentialProviderRequest: {what} ({detail})")
        } else {
            format!("not a CredentialProviderRequest: {what}")
        }
    })?;
    if r.api_version != API_VERSION {
        return Err(format!(
            "apiVersion {:?} is not {API_VERSION}",
            r.api_version
        ));
    }
    if r.kind != "CredentialProviderRequest" {
        return Err(format!(
            "kind {:?} is not CredentialProviderRequest",
            r.kind
        ));
    }
    if r.image.trim().is_empty() {
        return Err("image is empty".into());
    }
    Ok(r)
}

/// One registry login in a response.
#[derive(Serialize)]
pub struct AuthConfig {
    pub username: String,
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

/// `CredentialProviderResponse`: exactly the fields of the v1 type.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub cache_key_type: &'static str,
    pub cache_duration: String,
    pub auth: BTreeMap<String, AuthConfig>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("cache_duration", &self.cache_duration)
            .field("registries", &self.auth.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Response {
    /// No credentials for this registry (cached per registry for `cache`).
    pub fn empty(cache: Duration) -> Response {
        Response {
            api_version: API_VERSION,
            kind: "CredentialProviderResponse",
            cache_key_type: "Registry",
            cache_duration: super::go_duration(cache),
            auth: BTreeMap::new(),
        }
    }

    /// A login for `host`, cached per registry for `cache`.
    pub fn login(
        host: &str,
        username: String,
        password: SecretString,
        cache: Duration,
    ) -> Response {
        let mut r = Response::empty(cache);
        r.auth
            .insert(host.to_owned(), AuthConfig { username, password });
        r
    }

    pub fn to_json(&self) -> String {
        // Serializing strings and maps of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
