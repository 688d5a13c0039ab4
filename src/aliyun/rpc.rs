//! RPC-style requests (STS and Container Registry 2018-12-01): the common parameters, signature
//! v1, and a form-encoded POST, so no secret ever travels in a URL.

use std::collections::BTreeMap;

use jiff::Timestamp;
use secrecy::ExposeSecret;

use super::Credential;
use super::error::{ApiName, CloudError};
use super::sign::rpc_signature;

/// The parameters of one RPC call, before signing.
#[derive(Clone)]
pub struct RpcCall<'a> {
    pub api: ApiName,
    pub version: &'a str,
    /// Values may be secrets (AssumeRoleWithOIDC's `OIDCToken`): `Debug` shows the names only.
    pub params: Vec<(&'a str, String)>,
}

impl std::fmt::Debug for RpcCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcCall")
            .field("api", &self.api)
            .field("version", &self.version)
            .field(
                "params",
                &super::RedactedValues(self.params.iter().map(|(k, _)| *k)),
            )
            .finish()
    }
}

impl RpcCall<'_> {
    /// The signed form: common parameters, a fresh nonce and timestamp, and the signature of
    /// `caller`. Without a caller (AssumeRoleWithOIDC) the request is anonymous: no AccessKeyId,
    /// no signature.
    pub fn form(&self, caller: Option<&Credential>, now: Timestamp) -> BTreeMap<String, String> {
        let mut form: BTreeMap<String, String> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        form.insert("Action".into(), self.api.to_owned());
        form.insert("Version".into(), self.version.to_owned());
        form.insert("Format".into(), "JSON".into());
        form.insert(
            "Timestamp".into(),
            now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        let Some(caller) = caller else {
            return form;
        };
        form.insert("AccessKeyId".into(), caller.access_key_id.clone());
        if let Some(token) = &caller.security_token {
            form.insert("SecurityToken".into(), token.expose_secret().to_owned());
        }
        form.insert("SignatureMethod".into(), "HMAC-SHA1".into());
        form.insert("SignatureVersion".into(), "1.0".into());
        form.insert("SignatureNonce".into(), uuid::Uuid::new_v4().to_string());
        let signature = rpc_signature(caller.access_key_secret.expose_secret(), "POST", &form);
        form.insert("Signature".into(), signature);
        form
    }

    /// A signed POST to `endpoint`.
    pub fn request(
        &self,
        client: &reqwest::Client,
        endpoint: &url::Url,
        caller: Option<&Credential>,
    ) -> Result<reqwest::Request, CloudError> {
        client
            .post(endpoint.clone())
            .header("accept", "application/json")
            .form(&self.form(caller, Timestamp::now()))
            .build()
            .map_err(|e| CloudError::Client(e.without_url().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliyun::sign::rpc_signature;
    use secrecy::SecretString;

    fn caller(token: Option<&str>) -> Credential {
        Credential {
            access_key_id: "AKID".into(),
            access_key_secret: SecretString::from("secret"),
            security_token: token.map(SecretString::from),
            expiration: None,
        }
    }

    fn call() -> RpcCall<'static> {
        RpcCall {
            api: "GetAuthorizationToken",
            version: "2018-12-01",
            params: vec![("InstanceId", "cri-x".to_owned())],
        }
    }

    #[test]
    fn signed_form_has_the_common_parameters_and_a_valid_signature() {
        let now: Timestamp = "2026-11-22T10:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let form = call().form(Some(&caller(Some("tok"))), now);
        assert_eq!(form["Action"], "GetAuthorizationToken");
        assert_eq!(form["Version"], "2018-12-01");
        assert_eq!(form["Format"], "JSON");
        assert_eq!(form["Timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(form["AccessKeyId"], "AKID");
        assert_eq!(form["SecurityToken"], "tok");
        assert_eq!(form["SignatureMethod"], "HMAC-SHA1");
        assert_eq!(form["SignatureVersion"], "1.0");
        assert_eq!(form["InstanceId"], "cri-x");
        assert_eq!(form["Signature"], rpc_signature("secret", "POST", &form));
    }

    #[test]
    fn nonces_are_unique_and_access_keys_send_no_token() {
        let now = Timestamp::now();
        let a = call().form(Some(&caller(None)), now);
        let b = call().form(Some(&caller(None)), now);
        assert_ne!(a["SignatureNonce"], b["SignatureNonce"]);
        assert!(!a.contains_key("SecurityToken"));
    }

    #[test]
    fn anonymous_calls_carry_no_key_and_no_signature() {
        let form = call().form(None, Timestamp::now());
        for absent in [
            "AccessKeyId",
            "Signature",
            "SignatureNonce",
            "SecurityToken",
        ] {
            assert!(!form.contains_key(absent), "{absent}");
        }
    }
}
