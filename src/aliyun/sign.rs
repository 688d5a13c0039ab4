//! Alibaba Cloud request signatures, as pure functions: RPC signature v1 (HMAC-SHA1, used by STS
//! and Container Registry 2018-12-01) and ROA (used by Container Registry 2016-06-07, the Personal
//! Edition's `GET /tokens`).
//!
//! The unit tests hold the published ECS vector and vectors computed by the official Python SDK
//! (`tests/data/signature-vectors.json`); `tests/sdk_vectors.rs` recomputes them with the SDK.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Percent-encodes UTF-8 bytes as Alibaba Cloud signs them: `A-Z a-z 0-9 - _ . ~` stay, every other
/// byte becomes `%XY` with upper-case hex (so a space is `%20`, `*` is `%2A`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The canonicalized query of RPC v1: every parameter except `Signature`, sorted by name (byte
/// order), `k=v` with both encoded, joined by `&`.
pub fn rpc_canonical_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RPC v1 StringToSign: `METHOD&%2F&percentEncode(canonical query)`.
pub fn rpc_string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    format!(
        "{method}&%2F&{}",
        percent_encode(&rpc_canonical_query(params))
    )
}

/// RPC v1 signature: base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign)).
pub fn rpc_signature(secret: &str, method: &str, params: &BTreeMap<String, String>) -> String {
    hmac_sha1_base64(
        format!("{secret}&").as_bytes(),
        rpc_string_to_sign(method, params).as_bytes(),
    )
}

/// The parts of a ROA request that its signature covers. `Debug` shows the names of headers and
/// query parameters, not their values (`x-acs-security-token` is one).
#[derive(Clone)]
pub struct RoaRequest<'a> {
    pub method: &'a str,
    /// The path, e.g. `/tokens`.
    pub resource: &'a str,
    /// Header names in any case; values as sent.
    pub headers: &'a BTreeMap<String, String>,
    /// Query parameters, unencoded.
    pub query: &'a BTreeMap<String, String>,
}

impl std::fmt::Debug for RoaRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::RedactedValues;
        f.debug_struct("RoaRequest")
            .field("method", &self.method)
            .field("resource", &self.resource)
            .field("headers", &RedactedValues(self.headers.keys()))
            .field("query", &RedactedValues(self.query.keys()))
            .finish()
    }
}

/// ROA StringToSign: `METHOD\nAccept\nContent-MD5\nContent-Type\nDate\n`, then every `x-acs-*`
/// header (lower-case name, sorted) as `name:value\n`, then the resource with its query (`?`,
/// sorted `k=v` joined by `&`, unencoded; a key with an empty value stands alone).
pub fn roa_string_to_sign(req: &RoaRequest<'_>) -> String {
    let lower: BTreeMap<String, &str> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    let header = |name: &str| lower.get(name).copied().unwrap_or("");
    let mut out = format!(
        "{}\n{}\n{}\n{}\n{}\n",
        req.method,
        header("accept"),
        header("content-md5"),
        header("content-type"),
        header("date"),
    );
    for (name, value) in lower.range("x-acs-".to_owned()..) {
        if !name.starts_with("x-acs-") {
            break;
        }
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
    out.push_str(req.resource);
    if !req.query.is_empty() {
        let query: Vec<String> = req
            .query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        out.push('?');
        out.push_str(&query.join("&"));
    }
    out
}

/// ROA signature: base64(HMAC-SHA1(AccessKeySecret, StringToSign)) — no `&` on the key.
pub fn roa_signature(secret: &str, req: &RoaRequest<'_>) -> String {
    hmac_sha1_base64(secret.as_bytes(), roa_string_to_sign(req).as_bytes())
}

fn hmac_sha1_base64(key: &[u8], data: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Vectors computed by the official Python SDKs (tests/sdk/signature_vectors.py).
    const VECTORS: &str = include_str!("../../tests/data/signature-vectors.json");

    #[derive(Deserialize)]
    struct Vectors {
        rpc: Vec<RpcVector>,
        roa: Vec<RoaVector>,
    }

    #[derive(Deserialize)]
    struct RpcVector {
        name: String,
        method: String,
        secret: String,
        params: BTreeMap<String, String>,
        signature: String,
    }

    #[derive(Deserialize)]
    struct RoaVector {
        name: String,
        method: String,
        secret: String,
        resource: String,
        headers: BTreeMap<String, String>,
        query: BTreeMap<String, String>,
        string_to_sign: String,
        signature: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).unwrap_or_else(|e| panic!("signature-vectors.json: {e}"))
    }

    #[test]
    fn percent_encoding_follows_the_rules() {
        assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(percent_encode(" "), "%20");
        assert_eq!(percent_encode("*"), "%2A");
        assert_eq!(percent_encode("+/=:"), "%2B%2F%3D%3A");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn the_published_ecs_vector() {
        let params: BTreeMap<String, String> = [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            rpc_signature("testsecret", "GET", &params),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    #[test]
    fn rpc_vectors_from_the_sdk() {
        let v = vectors();
        assert!(v.rpc.len() >= 4);
        for case in v.rpc {
            assert_eq!(
                rpc_signature(&case.secret, &case.method, &case.params),
                case.signature,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_signature_parameter_itself_is_not_signed() {
        let v = vectors();
        let mut case = v
            .rpc
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no vector"));
        case.params.insert("Signature".into(), "whatever".into());
        assert_eq!(
            rpc_signature(&case.secret, &case.method, &case.params),
            case.signature
        );
    }

    #[test]
    fn roa_vectors_from_the_sdk() {
        let v = vectors();
        assert!(v.roa.len() >= 3);
        for case in v.roa {
            let req = RoaRequest {
                method: &case.method,
                resource: &case.resource,
                headers: &case.headers,
                query: &case.query,
            };
            assert_eq!(
                roa_string_to_sign(&req),
                case.string_to_sign,
                "{}",
                case.name
            );
            assert_eq!(
                roa_signature(&case.secret, &req),
                case.signature,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn roa_header_names_are_case_insensitive() {
        let v = vectors();
        let case = v
            .roa
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no vector"));
        let upper: BTreeMap<String, String> = case
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect();
        let req = RoaRequest {
            method: &case.method,
            resource: &case.resource,
            headers: &upper,
            query: &case.query,
        };
        assert_eq!(roa_signature(&case.secret, &req), case.signature);
    }
}
