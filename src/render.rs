//! Pure rendering: registry logins into a `kubernetes.io/dockerconfigjson` Secret, and the
//! `imagePullSecrets` a ServiceAccount should have.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use secrecy::{ExposeSecret, SecretString};

use crate::record::{DIGEST, DigestKey, Digested};

/// The default name of the pull Secret in every watched namespace (`--secret-name`).
pub const DEFAULT_SECRET_NAME: &str = "aliyun-acr-credential-helper";
/// The label on everything the controller owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "aliyun-acr-credential-helper";
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const ANNOTATION_PREFIX: &str = "aliyun-acr-credential-helper/";
/// When the earliest of the Secret's passwords stops working (RFC 3339).
pub const EXPIRES_AT: &str = "aliyun-acr-credential-helper/expires-at";
/// The instances the Secret holds logins for, comma-separated.
pub const INSTANCES: &str = "aliyun-acr-credential-helper/instances";
/// A fingerprint of who the logins were issued to (see [`identity_fingerprint`]): a restarted
/// controller only takes over logins of the identities configured now.
pub const IDENTITY: &str = "aliyun-acr-credential-helper/identity";

/// A short fingerprint of `(instance, identity)` pairs: 16 hex digits of a SHA-1 over them. The
/// identities hold no secret (AccessKey ids and role ARNs); the fingerprint only tells whether
/// they changed.
pub fn identity_fingerprint<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    for (label, identity) in parts {
        h.update(label.as_bytes());
        h.update([0]);
        h.update(identity.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A login for one registry domain.
pub struct Login<'a> {
    pub domain: &'a str,
    pub username: &'a str,
    pub password: &'a SecretString,
}

/// The `.dockerconfigjson` document: `{"auths": {domain: {username, password, auth}}}`, with
/// `auth` = base64(`username:password`). Domains sorted, so equal logins give equal bytes.
pub fn dockerconfigjson(logins: &[Login<'_>]) -> Vec<u8> {
    let auths: BTreeMap<&str, serde_json::Value> = logins
        .iter()
        .map(|l| {
            let password = l.password.expose_secret();
            (
                l.domain,
                serde_json::json!({
                    "username": l.username,
                    "password": password,
                    "auth": BASE64.encode(format!("{}:{password}", l.username)),
                }),
            )
        })
        .collect();
    // Serializing a map of strings cannot fail.
    serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap_or_default()
}

/// The logins a `.dockerconfigjson` holds: domain -> (username, password). `None` when it is not
/// one (passwords stay wrapped; nothing is logged).
pub fn parse_logins(doc: &[u8]) -> Option<BTreeMap<String, (String, SecretString)>> {
    #[derive(serde::Deserialize)]
    struct Doc {
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: String,
        password: SecretString,
    }
    let doc: Doc = serde_json::from_slice(doc).ok()?;
    Some(
        doc.auths
            .into_iter()
            .map(|(d, e)| (d, (e.username, e.password)))
            .collect(),
    )
}

/// The Personal Edition's registry domains in a region.
pub fn personal_domains(region: &str) -> Vec<String> {
    vec![
        format!("registry.{region}.aliyuncs.com"),
        format!("registry-vpc.{region}.aliyuncs.com"),
        format!("registry-intl.{region}.aliyuncs.com"),
        format!("registry-intl-vpc.{region}.aliyuncs.com"),
    ]
}

/// The Secret's desired content.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretContent {
    pub dockerconfigjson: Vec<u8>,
    pub expires_at: Timestamp,
    pub instances: Vec<String>,
    /// [`identity_fingerprint`] of the logins' identities.
    pub identity: String,
    /// The [`DIGEST`] annotation: the content's digest under the controller's key, which tells
    /// a Secret the controller wrote from one somebody else wrote.
    pub digest: String,
}

impl std::fmt::Debug for SecretContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretContent")
            .field("dockerconfigjson", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("instances", &self.instances)
            .field("identity", &self.identity)
            .field("digest", &self.digest)
            .finish()
    }
}

impl SecretContent {
    /// The content of these logins, authenticated with `key`.
    pub fn new(
        dockerconfigjson: Vec<u8>,
        expires_at: Timestamp,
        instances: Vec<String>,
        identity: String,
        key: &DigestKey,
    ) -> SecretContent {
        let digest = key.digest(Digested {
            dockerconfigjson: &dockerconfigjson,
            expires_at: &expires_at.to_string(),
            instances: &instances.join(","),
            identity: &identity,
        });
        SecretContent {
            dockerconfigjson,
            expires_at,
            instances,
            identity,
            digest,
        }
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (EXPIRES_AT.to_owned(), self.expires_at.to_string()),
            (INSTANCES.to_owned(), self.instances.join(",")),
            (IDENTITY.to_owned(), self.identity.clone()),
            (DIGEST.to_owned(), self.digest.clone()),
        ])
    }

    /// The whole Secret object for `namespace`.
    pub fn secret(&self, name: &str, namespace: &str) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY_VALUE.to_owned(),
                )])),
                annotations: Some(self.annotations()),
                ..Default::default()
            },
            type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                DOCKER_CONFIG_KEY.to_owned(),
                k8s_openapi::ByteString(self.dockerconfigjson.clone()),
            )])),
            ..Default::default()
        }
    }
}

/// Whether an object carries the controller's managed-by label.
pub fn is_managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// Whether a ServiceAccount whose `imagePullSecrets` hold `names` needs a change to have exactly
/// one reference to `ours` (`want`) or none: [`desired_pull_secrets`] would return `Some`.
pub fn reference_needs_change<'a>(
    names: impl IntoIterator<Item = &'a str>,
    ours: &str,
    want: bool,
) -> bool {
    references_need_change(names.into_iter().filter(|name| *name == ours).count(), want)
}

/// The same rule, from the number of entries that name our Secret: exactly one is wanted, or
/// none.
pub fn references_need_change(ours: usize, want: bool) -> bool {
    if want { ours != 1 } else { ours != 0 }
}

/// The `imagePullSecrets` a ServiceAccount should have: `current` with a reference to `ours`
/// appended (`want`) or removed (`!want`). Entries that are not ours keep their order. `None`
/// when nothing needs to change.
pub fn desired_pull_secrets(
    current: &[LocalObjectReference],
    ours: &str,
    want: bool,
) -> Option<Vec<LocalObjectReference>> {
    let is_ours = |r: &LocalObjectReference| r.name == ours;
    let present = current.iter().filter(|r| is_ours(r)).count();
    match (want, present) {
        (true, 1) | (false, 0) => None,
        (true, 0) => {
            let mut next = current.to_vec();
            next.push(LocalObjectReference {
                name: ours.to_owned(),
            });
            Some(next)
        }
        // Duplicates of ours collapse to the first; removal drops all of ours.
        (true, _) => {
            let mut seen = false;
            Some(
                current
                    .iter()
                    .filter(|r| {
                        if !is_ours(r) {
                            return true;
                        }
                        !std::mem::replace(&mut seen, true)
                    })
                    .cloned()
                    .collect(),
            )
        }
        (false, _) => Some(current.iter().filter(|r| !is_ours(r)).cloned().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<LocalObjectReference> {
        names
            .iter()
            .map(|n| LocalObjectReference {
                name: (*n).to_owned(),
            })
            .collect()
    }

    #[test]
    fn dockerconfigjson_has_username_password_and_auth_per_domain() {
        let pw = SecretString::from("p@ss:word");
        let doc = dockerconfigjson(&[
            Login {
                domain: "b.example.com",
                username: "cr_temp_user",
                password: &pw,
            },
            Login {
                domain: "a.example.com",
                username: "cr_temp_user",
                password: &pw,
            },
        ]);
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap_or_default();
        let a = &v["auths"]["a.example.com"];
        assert_eq!(a["username"], "cr_temp_user");
        assert_eq!(a["password"], "p@ss:word");
        assert_eq!(a["auth"], BASE64.encode("cr_temp_user:p@ss:word"));
        assert!(v["auths"]["b.example.com"].is_object());
        // Deterministic: domains sorted whatever the input order.
        let again = dockerconfigjson(&[
            Login {
                domain: "a.example.com",
                username: "cr_temp_user",
                password: &pw,
            },
            Login {
                domain: "b.example.com",
                username: "cr_temp_user",
                password: &pw,
            },
        ]);
        assert_eq!(doc, again);
    }

    #[test]
    fn pull_secret_references() {
        let ours = "aliyun-acr-credential-helper";
        assert_eq!(desired_pull_secrets(&[], ours, false), None);
        assert_eq!(desired_pull_secrets(&[], ours, true), Some(refs(&[ours])));
        assert_eq!(
            desired_pull_secrets(&refs(&["x", "y"]), ours, true),
            Some(refs(&["x", "y", ours]))
        );
        assert_eq!(
            desired_pull_secrets(&refs(&["x", ours, "y"]), ours, true),
            None
        );
        assert_eq!(
            desired_pull_secrets(&refs(&["x", ours, "y"]), ours, false),
            Some(refs(&["x", "y"]))
        );
        assert_eq!(
            desired_pull_secrets(&refs(&[ours, "x", ours]), ours, true),
            Some(refs(&[ours, "x"]))
        );
        assert_eq!(
            desired_pull_secrets(&refs(&[ours, "x", ours]), ours, false),
            Some(refs(&["x"]))
        );
        // The cheap check agrees with the full computation.
        for list in [
            &[][..],
            &["x"],
            &[ours],
            &["x", ours],
            &[ours, ours],
            &[ours, "x", ours],
        ] {
            for want in [true, false] {
                assert_eq!(
                    reference_needs_change(list.iter().copied(), ours, want),
                    desired_pull_secrets(&refs(list), ours, want).is_some(),
                    "{list:?} want={want}"
                );
            }
        }
        // Entries with an empty name are someone else's and kept.
        let odd = vec![LocalObjectReference {
            name: String::new(),
        }];
        assert_eq!(desired_pull_secrets(&odd, ours, false), None);
    }

    #[test]
    fn secret_content_carries_its_digest_and_never_prints_a_password() {
        let pw = SecretString::from("pw");
        let key = DigestKey::from_bytes(&[1; 32]).unwrap_or_else(|| panic!("key"));
        let content = SecretContent::new(
            dockerconfigjson(&[Login {
                domain: "a.example.com",
                username: "u",
                password: &pw,
            }]),
            "2026-11-22T11:00:00Z"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            vec!["cri-a".into()],
            "0123456789abcdef".into(),
            &key,
        );
        let s = content.secret("n", "ns");
        assert_eq!(s.metadata.name.as_deref(), Some("n"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ns"));
        assert!(is_managed(&s.metadata));
        let annotations = s.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.get(DIGEST), Some(&content.digest));
        assert!(key.verifies(
            Digested {
                dockerconfigjson: &content.dockerconfigjson,
                expires_at: "2026-11-22T11:00:00Z",
                instances: "cri-a",
                identity: "0123456789abcdef",
            },
            &content.digest
        ));
        assert_eq!(s.type_.as_deref(), Some(DOCKER_CONFIG_TYPE));
        assert!(!format!("{content:?}").contains("pw"));
    }

    #[test]
    fn logins_read_back_what_was_rendered() {
        let pw = SecretString::from("p@ss:word");
        let doc = dockerconfigjson(&[Login {
            domain: "a.example.com",
            username: "u",
            password: &pw,
        }]);
        let logins = parse_logins(&doc).unwrap_or_default();
        assert_eq!(logins.len(), 1);
        let (user, pass) = &logins["a.example.com"];
        assert_eq!((user.as_str(), pass.expose_secret()), ("u", "p@ss:word"));
        assert!(parse_logins(b"{}").is_none());
        assert!(parse_logins(b"not json").is_none());
    }

    #[test]
    fn secret_content_debugs_its_annotations_but_never_its_logins() {
        let pw = SecretString::from("s3cr3t-in-debug".to_owned());
        let key = crate::record::DigestKey::from_bytes(&[1; 32]).unwrap_or_else(|| panic!("key"));
        let c = SecretContent::new(
            dockerconfigjson(&[Login {
                domain: "r.example.com",
                username: "u",
                password: &pw,
            }]),
            Timestamp::UNIX_EPOCH,
            vec!["cri-a".into()],
            "fingerprint".into(),
            &key,
        );
        let text = format!("{c:?}");
        assert!(
            text.starts_with("SecretContent")
                && text.contains("cri-a")
                && text.contains("fingerprint")
                && text.contains("1970-01-01")
                && text.contains("[REDACTED]"),
            "{text}"
        );
        assert!(
            !text.contains("s3cr3t-in-debug") && !text.contains("auths"),
            "{text}"
        );
    }

    #[test]
    fn personal_domains_cover_public_vpc_and_intl() {
        assert_eq!(
            personal_domains("cn-shanghai"),
            vec![
                "registry.cn-shanghai.aliyuncs.com",
                "registry-vpc.cn-shanghai.aliyuncs.com",
                "registry-intl.cn-shanghai.aliyuncs.com",
                "registry-intl-vpc.cn-shanghai.aliyuncs.com",
            ]
        );
    }
}
