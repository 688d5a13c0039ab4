//! How to read the API server's answers: the status codes the writers act on, and the category of
//! every failure, which metrics label and Events name (so "RBAC forbids this" is told from
//! "conflict, retried" and from "API server down").

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

/// What kind of failure an API call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// 401: the controller's credentials are not accepted.
    Unauthorized,
    /// 403: RBAC or an admission policy refuses the call.
    Forbidden,
    /// 404: the object or its namespace is gone.
    NotFound,
    /// 409: the object changed since it was read; retried.
    Conflict,
    /// 400/422: the API server (or an admission webhook) refuses the object as invalid.
    Invalid,
    /// 429: the API server asks to slow down.
    Throttled,
    /// 5xx, or no answer: the API server is unavailable.
    Unavailable,
    /// Anything else (a client-side error).
    Other,
}

impl Category {
    /// The category of `e`.
    pub fn of(e: &kube::Error) -> Category {
        match e {
            kube::Error::Api(s) => Category::of_status(s.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                Category::Unavailable
            }
            _ => Category::Other,
        }
    }

    /// The category of an HTTP status of the API server.
    pub fn of_status(code: u16) -> Category {
        match code {
            401 => Category::Unauthorized,
            403 => Category::Forbidden,
            404 | 410 => Category::NotFound,
            409 => Category::Conflict,
            400 | 422 => Category::Invalid,
            429 => Category::Throttled,
            500..=599 => Category::Unavailable,
            _ => Category::Other,
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Category::Unauthorized => "kube_unauthorized",
            Category::Forbidden => "kube_forbidden",
            Category::NotFound => "kube_not_found",
            Category::Conflict => "kube_conflict",
            Category::Invalid => "kube_invalid",
            Category::Throttled => "kube_throttled",
            Category::Unavailable => "kube_unavailable",
            Category::Other => "kube_other",
        }
    }

    /// What an operator reads in an Event: what is likely wrong.
    pub fn hint(self) -> &'static str {
        match self {
            Category::Unauthorized => "the API server does not accept the controller's token",
            Category::Forbidden => "RBAC or an admission policy forbids it",
            Category::NotFound => "the object or its namespace is gone",
            Category::Conflict => "the object changed meanwhile; retried",
            Category::Invalid => "the API server or an admission webhook refused the object",
            Category::Throttled => "the API server asks to slow down; retried",
            Category::Unavailable => "the API server is unavailable; retried",
            Category::Other => "retried",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("m", "r")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn every_status_has_its_category_and_label() {
        let table = [
            (401, Category::Unauthorized, "kube_unauthorized"),
            (403, Category::Forbidden, "kube_forbidden"),
            (404, Category::NotFound, "kube_not_found"),
            (410, Category::NotFound, "kube_not_found"),
            (409, Category::Conflict, "kube_conflict"),
            (400, Category::Invalid, "kube_invalid"),
            (422, Category::Invalid, "kube_invalid"),
            (429, Category::Throttled, "kube_throttled"),
            (500, Category::Unavailable, "kube_unavailable"),
            (503, Category::Unavailable, "kube_unavailable"),
            (599, Category::Unavailable, "kube_unavailable"),
            (418, Category::Other, "kube_other"),
        ];
        for (code, category, label) in table {
            assert_eq!(Category::of(&api(code)), category, "{code}");
            assert_eq!(category.label(), label);
        }
        assert!(is_conflict(&api(409)) && !is_conflict(&api(404)));
        assert!(is_not_found(&api(404)) && !is_not_found(&api(403)));
        assert_eq!(without_message(&api(403)), "HTTP 403 r");
    }
}
