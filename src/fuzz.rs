//! The entry points of the fuzz targets (`fuzz/`, run with `scripts/fuzz` on nightly). Each takes
//! arbitrary bytes, feeds them to one parser of untrusted input exactly as the controller does,
//! and must never panic. `tests/fuzz_corpus.rs` replays every seed and every reproducer kept in
//! `fuzz/` through these on stable, so a fixed crash can never come back.

use std::collections::BTreeMap;

use crate::aliyun::http::Reply;

/// A fuzz target: its name (the directory of its corpus) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("config_map", config_map),
    ("configmap_manifest", configmap_manifest),
    ("duration", duration),
    ("addon_token", addon_token),
    ("sts_answer", sts_answer),
    ("cr_answer", cr_answer),
    ("metadata_answer", metadata_answer),
    ("error_document", error_document),
    ("admission_review", admission_review),
    ("dockerconfigjson", dockerconfigjson),
    ("provider_request", provider_request),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A ConfigMap's `data`: NUL-separated keys and values (values hold the nested YAML strings).
pub fn config_map(data: &[u8]) {
    let parts: Vec<String> = data.split(|b| *b == 0).map(text).collect();
    let map: BTreeMap<String, String> = parts
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
        .collect();
    let _ = crate::config::parse(&map, Some("cn-hangzhou"));
    let _ = crate::config::parse(&map, None);
}

/// A ConfigMap manifest, as `check-config` reads it.
pub fn configmap_manifest(data: &[u8]) {
    if let Ok(map) = crate::config::manifest_data(&text(data)) {
        let _ = crate::config::parse(&map, Some("cn-hangzhou"));
    }
}

pub fn duration(data: &[u8]) {
    let _ = crate::duration::parse_duration(&text(data));
}

/// ACK's managed-role token (JSON with AES-CBC encrypted fields).
pub fn addon_token(data: &[u8]) {
    let _ = crate::aliyun::addon_token::parse(data);
}

fn reply(data: &[u8]) -> Reply {
    // The first byte picks the status the body came with.
    let (status, body) = match data.split_first() {
        Some((s, rest)) if *s < 128 => (200, rest),
        Some((_, rest)) => (400, rest),
        None => (200, data),
    };
    Reply {
        status,
        body: body.to_vec(),
    }
}

pub fn sts_answer(data: &[u8]) {
    let _ = crate::aliyun::sts::parse_credentials("AssumeRole", &reply(data));
}

pub fn cr_answer(data: &[u8]) {
    let r = reply(data);
    let _ = crate::aliyun::cr::parse_enterprise_token(&r);
    if let Ok(endpoints) = crate::aliyun::cr::parse_endpoints(&r) {
        let _ = crate::aliyun::cr::enabled_domains(&endpoints);
    }
    let _ = crate::aliyun::cr::parse_personal_token(&r);
}

pub fn metadata_answer(data: &[u8]) {
    let _ = crate::aliyun::metadata::parse_role_credentials("role", &reply(data));
}

pub fn error_document(data: &[u8]) {
    let _ = crate::aliyun::http::service_error("AssumeRole", 400, "https://sts.aliyuncs.com", data)
        .to_string();
}

/// An AdmissionReview as the API server sends it to the webhook.
pub fn admission_review(data: &[u8]) {
    // The configuration is the same for every input: parsed once, so executions go to decoding.
    static CONFIG: std::sync::OnceLock<Option<crate::config::Config>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let map: BTreeMap<String, String> = [
            ("watch-namespace", "all"),
            ("service-account", "*"),
            ("webhook-configuration", "enable: true\npod-injection: true"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        crate::config::parse(&map, Some("cn-hangzhou"))
            .ok()
            .map(|p| p.config)
    });
    let Some(config) = config.as_ref() else {
        return;
    };
    let index = crate::index::Index::new("ours");
    // The same bytes as a ServiceAccount review and as a Pod review.
    if let Ok(review) = serde_json::from_slice(data) {
        let answer = crate::webhook::review(review, Some(config), "ours", &index);
        let _ = serde_json::to_vec(&answer);
    }
    if let Ok(review) = serde_json::from_slice(data) {
        let answer =
            crate::webhook::review_pod(review, Some(config), "ours", "kube-system", &index);
        let _ = serde_json::to_vec(&answer);
    }
}

/// A pull Secret's `.dockerconfigjson`, as adopting the logins in place reads it.
pub fn dockerconfigjson(data: &[u8]) {
    let _ = crate::render::parse_logins(data);
}

/// A kubelet `CredentialProviderRequest`, and the routing of its image.
pub fn provider_request(data: &[u8]) {
    if let Ok(r) = crate::provider::api::parse_request(data) {
        let cfg = crate::provider::ProviderConfig::default();
        let _ = crate::provider::route(&r.image, &cfg);
        let _ = crate::provider::role_arn(
            &r.service_account_annotations,
            crate::provider::ROLE_ANNOTATION,
            "acs:ram::1:oidc-provider/x",
        );
    }
}
