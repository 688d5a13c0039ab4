//! Errors of the Alibaba Cloud clients. They carry the cloud's `Code` and `RequestId` and never a
//! secret: URLs are reduced to scheme, host and port, JSON errors to their position, and the
//! cloud's own messages are cut before any echo of the string it signed (which holds the
//! SecurityToken).

/// Which API a call was for; used in errors, logs and metric labels.
pub type ApiName = &'static str;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The service answered with an error document.
    #[error(
        "{api}: Alibaba Cloud answered {code} (HTTP {status}, RequestId {request_id}): {message}"
    )]
    Service {
        api: ApiName,
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// A non-success HTTP status without an error document (metadata service, proxies).
    #[error("{api}: HTTP {status} from {endpoint}")]
    Http {
        api: ApiName,
        status: u16,
        endpoint: String,
    },
    #[error("{api}: no answer from {endpoint} within the timeout")]
    Timeout { api: ApiName, endpoint: String },
    #[error("{api}: cannot reach {endpoint}: {detail}")]
    Unreachable {
        api: ApiName,
        endpoint: String,
        detail: String,
    },
    /// An answer that is not what the API documents (bad JSON, a missing field).
    #[error("{api}: unexpected answer: {detail}")]
    InvalidResponse { api: ApiName, detail: String },
    #[error("endpoint {endpoint:?} is not usable: {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl CloudError {
    /// The cloud's error code, if the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the cloud may never have answered (the connection failed or timed out): the only
    /// failures the HTTP client tries again within one call. Everything the cloud answered goes
    /// back to the caller, whose refresh timing (`timing`, above this layer) schedules the next
    /// attempt.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            CloudError::Timeout { .. } | CloudError::Unreachable { .. }
        )
    }

    /// Whether trying again later may help: server errors, throttling and timeouts. Authentication and
    /// permission errors are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Service { status, code, .. } => {
                *status >= 500
                    || code.starts_with("Throttling")
                    || code == "ServiceUnavailable"
                    || code == "InternalError"
            }
            CloudError::Http { status, .. } => *status >= 500 || *status == 429,
            CloudError::Timeout { .. } | CloudError::Unreachable { .. } => true,
            CloudError::InvalidResponse { .. }
            | CloudError::Endpoint { .. }
            | CloudError::Client(_) => false,
        }
    }

    /// A stable, low-cardinality category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            CloudError::Service { code, .. } if is_auth_code(code) => "cloud_auth",
            CloudError::Service { .. } if self.is_retryable() => "cloud_unavailable",
            CloudError::Service { .. } => "cloud_rejected",
            CloudError::Http { .. } if self.is_retryable() => "cloud_unavailable",
            CloudError::Http { .. } => "cloud_rejected",
            CloudError::Timeout { .. } | CloudError::Unreachable { .. } => "cloud_unreachable",
            CloudError::InvalidResponse { .. } => "cloud_invalid_response",
            CloudError::Endpoint { .. } | CloudError::Client(_) => "configuration",
        }
    }
}

fn is_auth_code(code: &str) -> bool {
    code.starts_with("InvalidAccessKeyId")
        || code.starts_with("InvalidSecurityToken")
        || code.starts_with("SignatureDoesNotMatch")
        || code.starts_with("NoPermission")
        || code.starts_with("AuthenticationFail")
        || code.starts_with("Forbidden")
        || code == "EntityNotExist.Role"
}

/// The scheme, host and port of a URL: what an error may name of an endpoint.
pub fn endpoint_of(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => url.scheme().to_owned(),
    }
}

/// A cloud error message made safe to show: Alibaba Cloud's `SignatureDoesNotMatch` messages echo
/// the server's string to sign, which contains the SecurityToken; everything from there on is
/// dropped, and the rest is bounded in length.
pub fn sanitize_message(message: &str) -> String {
    const MAX: usize = 300;
    let lower = message.to_ascii_lowercase();
    let cut = ["string to sign", "stringtosign"]
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(message.len());
    let mut out: String = message[..cut].trim_end().chars().take(MAX).collect();
    if out.len() < message.trim_end().len() {
        out.push_str(" [...]");
    }
    out
}

/// A JSON decoding error described by position only: serde's own messages may quote the value
/// they could not read, which may be a secret.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_messages_lose_the_echoed_string_to_sign() {
        let m = "Specified signature is not matched with our calculation. server string to sign is:POST&%2F&AccessKeyId%3DSTS.x%26SecurityToken%3DCAISsecret";
        let s = sanitize_message(m);
        assert!(!s.contains("CAISsecret"), "{s}");
        assert!(!s.contains("SecurityToken"), "{s}");
        assert!(s.starts_with("Specified signature is not matched"), "{s}");
        assert!(s.ends_with("[...]"), "{s}");
    }

    #[test]
    fn ordinary_messages_are_kept_and_long_ones_bounded() {
        assert_eq!(
            sanitize_message("You are not authorized."),
            "You are not authorized."
        );
        let long = "x".repeat(1000);
        let s = sanitize_message(&long);
        assert!(s.len() < 320, "{}", s.len());
        assert!(s.ends_with("[...]"));
    }

    #[test]
    fn json_errors_do_not_quote_values() {
        let err = serde_json::from_str::<u64>("\"hunter2-secret\"").err();
        let text = err.as_ref().map(describe_json_error).unwrap_or_default();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(text, "JSON of the wrong shape at line 1 column 16");
    }

    #[test]
    fn endpoints_are_reduced_to_scheme_host_port() {
        let url = url::Url::parse("https://u:p@sts.aliyuncs.com:8443/a/b?SecurityToken=secret")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(endpoint_of(&url), "https://sts.aliyuncs.com:8443");
    }

    #[test]
    fn retryability_and_categories() {
        let svc = |status, code: &str| CloudError::Service {
            api: "AssumeRole",
            status,
            code: code.to_owned(),
            message: String::new(),
            request_id: "r".to_owned(),
        };
        assert!(svc(500, "InternalError").is_retryable());
        assert!(svc(400, "Throttling").is_retryable());
        assert!(svc(400, "Throttling.User").is_retryable());
        assert!(svc(503, "ServiceUnavailable").is_retryable());
        assert!(!svc(403, "NoPermission").is_retryable());
        assert!(!svc(400, "SignatureDoesNotMatch").is_retryable());
        assert!(!svc(400, "InvalidSecurityToken.Expired").is_retryable());
        assert_eq!(svc(403, "NoPermission").category(), "cloud_auth");
        assert_eq!(svc(400, "Throttling").category(), "cloud_unavailable");
        assert_eq!(
            svc(400, "InvalidParameter.DurationSeconds").category(),
            "cloud_rejected"
        );
        let timeout = CloudError::Timeout {
            api: "GetAuthorizationToken",
            endpoint: "http://127.0.0.1:1".to_owned(),
        };
        assert!(timeout.is_retryable() && timeout.is_transport());
        assert!(!svc(500, "InternalError").is_transport());
        assert!(!svc(400, "Throttling").is_transport());
        assert_eq!(timeout.category(), "cloud_unreachable");
        let invalid = CloudError::InvalidResponse {
            api: "AssumeRole",
            detail: "x".to_owned(),
        };
        assert!(!invalid.is_retryable());
    }
}
