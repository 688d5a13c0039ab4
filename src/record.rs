//! What only the controller itself writes, kept where tenants cannot write: a Secret in the
//! release namespace (`--state-secret`) that holds
//! - the **digest key**: 32 random bytes; every pull Secret the controller writes carries
//!   [`DIGEST`], an HMAC-SHA256 of its content under this key, so the controller can tell a Secret
//!   it wrote from one that anybody else wrote or edited (labels and annotations are no proof of
//!   authorship: whoever can write a Secret can write those);
//! - the **record of the logins** it published, per instance: the login, who it was issued to, and
//!   when it was obtained and stops working. A new leader (a restart, a failover) takes logins over
//!   from this record only, never from a pull Secret in a namespace a tenant can write.
//!
//! Pure: no I/O. The controller's refresher reads and writes the Secret.

use std::fmt;

use jiff::Timestamp;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The default name of the state Secret in the release namespace.
pub const DEFAULT_STATE_SECRET: &str = "aliyun-acr-credential-helper-state";
/// The annotation on every pull Secret the controller writes: [`DigestKey::digest`] of its content.
pub const DIGEST: &str = "aliyun-acr-credential-helper/digest";
/// The state Secret's keys.
pub const DIGEST_KEY_FIELD: &str = "digest-key";
pub const RECORD_FIELD: &str = "record.json";
/// The largest record read (the controller writes a few hundred bytes per instance).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
const KEY_LEN: usize = 32;

/// The key that authenticates the pull Secrets' content. `Debug` never shows it.
#[derive(Clone)]
pub struct DigestKey {
    bytes: [u8; KEY_LEN],
    key: hmac::Key,
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey([REDACTED])")
    }
}

impl PartialEq for DigestKey {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.bytes, &other.bytes)
    }
}

impl Eq for DigestKey {}

/// What a pull Secret's digest covers: everything the controller decides from it.
#[derive(Debug, Clone, Copy)]
pub struct Digested<'a> {
    pub dockerconfigjson: &'a [u8],
    pub expires_at: &'a str,
    pub instances: &'a str,
    pub identity: &'a str,
}

impl DigestKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<DigestKey, String> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; KEY_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system's random generator failed".to_owned())?;
        Ok(DigestKey::from_array(bytes))
    }

    fn from_array(bytes: [u8; KEY_LEN]) -> DigestKey {
        DigestKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            bytes,
        }
    }

    /// The key as stored; `None` unless it has exactly the key's length.
    pub fn from_bytes(bytes: &[u8]) -> Option<DigestKey> {
        <[u8; KEY_LEN]>::try_from(bytes)
            .ok()
            .map(DigestKey::from_array)
    }

    /// The raw key, to store in the state Secret.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The digest of a pull Secret's content: 32 hex digits of HMAC-SHA256 over its fields, each
    /// length-prefixed so that no two contents share an input.
    pub fn digest(&self, d: Digested<'_>) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"acr-helper-pull-secret-v1");
        for part in [
            d.dockerconfigjson,
            d.expires_at.as_bytes(),
            d.instances.as_bytes(),
            d.identity.as_bytes(),
        ] {
            ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            ctx.update(part);
        }
        ctx.sign()
            .as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `digest` is this key's digest of `d` (compared in constant time).
    pub fn verifies(&self, d: Digested<'_>, digest: &str) -> bool {
        let want = self.digest(d);
        constant_time_eq(want.as_bytes(), digest.as_bytes())
    }
}

/// Equal bytes, compared without an early exit (how long it takes tells nothing of where they
/// differ).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One login the controller published, as it recorded it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedLogin {
    /// The instance's label (`cri-...` or `personal/<region>`).
    pub instance: String,
    /// Who the login was issued to ([`crate::config::Instance::identity`]; no secret).
    pub identity: String,
    pub username: String,
    #[serde(with = "secret_string")]
    pub password: SecretString,
    pub obtained_at: Timestamp,
    /// The earlier of the password's own expiry and the STS credential's behind it.
    pub usable_until: Timestamp,
}

impl fmt::Debug for RecordedLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedLogin")
            .field("instance", &self.instance)
            .field("identity", &self.identity)
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("obtained_at", &self.obtained_at)
            .field("usable_until", &self.usable_until)
            .finish()
    }
}

mod secret_string {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SecretString, D::Error> {
        String::deserialize(de).map(SecretString::from)
    }
}

/// The logins the controller published, one per instance.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub logins: Vec<RecordedLogin>,
}

impl Record {
    /// The record as stored. Too large or not a record: an error that names no value.
    pub fn parse(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_RECORD_BYTES} a record can hold",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not a record (line {} column {}: {:?})",
                e.line(),
                e.column(),
                e.classify()
            )
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and timestamps always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The login recorded for `instance`.
    pub fn login(&self, instance: &str) -> Option<&RecordedLogin> {
        self.logins.iter().find(|l| l.instance == instance)
    }

    /// Whether both record the same logins (passwords compared too).
    pub fn same_as(&self, other: &Record) -> bool {
        self.logins.len() == other.logins.len()
            && self.logins.iter().zip(&other.logins).all(|(a, b)| {
                a.instance == b.instance
                    && a.identity == b.identity
                    && a.username == b.username
                    && a.password.expose_secret() == b.password.expose_secret()
                    && a.obtained_at == b.obtained_at
                    && a.usable_until == b.usable_until
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DigestKey {
        DigestKey::from_bytes(&[7u8; KEY_LEN]).unwrap_or_else(|| panic!("key"))
    }

    fn content<'a>(doc: &'a [u8], expires: &'a str) -> Digested<'a> {
        Digested {
            dockerconfigjson: doc,
            expires_at: expires,
            instances: "cri-a",
            identity: "0123456789abcdef",
        }
    }

    #[test]
    fn a_digest_verifies_only_the_content_and_key_it_was_made_with() {
        let k = key();
        let d = k.digest(content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z"));
        assert_eq!(d.len(), 32);
        assert!(k.verifies(content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z"), &d));
        // Any field changed, or another key: no longer ours.
        assert!(!k.verifies(content(b"{\"auths\":{}} ", "2026-12-03T10:00:00Z"), &d));
        assert!(!k.verifies(content(b"{\"auths\":{}}", "2099-12-03T10:00:00Z"), &d));
        let mut other = content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z");
        other.instances = "cri-a,cri-b";
        assert!(!k.verifies(other, &d));
        other = content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z");
        other.identity = "fedcba9876543210";
        assert!(!k.verifies(other, &d));
        let another = DigestKey::from_bytes(&[8u8; KEY_LEN]).unwrap_or_else(|| panic!("key"));
        assert!(!another.verifies(content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z"), &d));
        assert!(!k.verifies(content(b"{\"auths\":{}}", "2026-12-03T10:00:00Z"), ""));
        // Fields are length-prefixed: moving a byte from one field to the next changes it.
        let a = k.digest(Digested {
            dockerconfigjson: b"ab",
            expires_at: "c",
            instances: "",
            identity: "",
        });
        let b = k.digest(Digested {
            dockerconfigjson: b"a",
            expires_at: "bc",
            instances: "",
            identity: "",
        });
        assert_ne!(a, b);
    }

    #[test]
    fn keys_are_random_and_round_trip_and_never_print() {
        let a = DigestKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let b = DigestKey::generate().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert_eq!(DigestKey::from_bytes(a.bytes()), Some(a.clone()));
        assert!(DigestKey::from_bytes(&[1, 2, 3]).is_none());
        let hex: String = a.bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{a:?}").contains(&hex));
    }

    #[test]
    fn a_record_round_trips_and_never_prints_a_password() {
        let login = RecordedLogin {
            instance: "cri-a".into(),
            identity: "ak=LTAI".into(),
            username: "cr_temp_user".into(),
            password: SecretString::from("s3cret-password"),
            obtained_at: "2026-12-03T10:00:00Z"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            usable_until: "2026-12-03T11:00:00Z"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        };
        let record = Record {
            logins: vec![login.clone()],
        };
        let back = Record::parse(&record.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.same_as(&record));
        assert_eq!(
            back.login("cri-a").map(|l| l.username.as_str()),
            Some("cr_temp_user")
        );
        assert!(back.login("cri-b").is_none());
        let mut changed = record.clone();
        changed.logins[0].password = SecretString::from("other");
        assert!(!changed.same_as(&record));
        assert!(!format!("{record:?}").contains("s3cret-password"));
        // Not a record, or too large: errors that quote nothing of the input.
        let e = Record::parse(b"{\"logins\": \"s3cret-password\"}").err();
        assert!(e.is_some_and(|e| !e.contains("s3cret")));
        assert!(Record::parse(&vec![b' '; MAX_RECORD_BYTES + 1]).is_err());
    }
}
