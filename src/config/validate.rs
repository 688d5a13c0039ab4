//! The syntax of the names and identifiers a configuration holds: pure predicates, no messages.

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(super) fn is_registry_domain(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    host.contains('.')
        && is_dns_subdomain(host)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn is_role_arn(s: &str) -> bool {
    arn_parts(s, "role").is_some()
}

pub(super) fn is_oidc_provider_arn(s: &str) -> bool {
    arn_parts(s, "oidc-provider").is_some()
}

fn arn_parts<'a>(s: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = s.strip_prefix("acs:ram::")?;
    let (account, resource) = rest.split_once(':')?;
    let name = resource.strip_prefix(kind)?.strip_prefix('/')?;
    let ok_account = !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
    let ok_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'/'));
    (ok_account && ok_name).then_some((account, name))
}

pub(super) fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("cri-").is_some_and(|id| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}
