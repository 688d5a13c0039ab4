//! How to read the API server's answers: the status codes the writers act on.

/// 409: the object changed since it was read (or exists already).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// 404: the object (or its namespace) is gone.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What an error may say in logs and Events about a write that carried secret data: the status
/// code and reason only. An admission webhook's message could quote the object it rejected.
pub fn without_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        other => other.to_string(),
    }
}
