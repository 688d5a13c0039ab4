//! ACK's managed-role addon token: the Secret `kube-system/addon.aliyuncsmanagedacrrole.token`
//! whose key `addon.token.config` holds JSON with AES-CBC-encrypted STS credentials.
//!
//! Each encrypted field is base64(IV[16] ‖ AES-CBC(plaintext, PKCS#7)), the key being the bytes of
//! `keyring` (16, 24 or 32 bytes: AES-128/192/256).

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Credential;

/// The Secret's key that holds the token.
pub const CONFIG_KEY: &str = "addon.token.config";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AddonTokenError {
    #[error("the addon token is not valid JSON ({0})")]
    Json(String),
    #[error("the addon token has no {0}")]
    Missing(&'static str),
    #[error("ACK reports an error for the managed role {role_name}: {code}: {message}")]
    Reported {
        role_name: String,
        code: String,
        message: String,
    },
    #[error("the addon token's keyring is {0} bytes long; AES needs 16, 24 or 32")]
    KeyLength(usize),
    #[error("{0} of the addon token is not base64")]
    Base64(&'static str),
    #[error("{0} of the addon token is too short or not a whole number of AES blocks")]
    Length(&'static str),
    #[error("{0} of the addon token does not decrypt (bad padding: wrong keyring or corrupt data)")]
    Padding(&'static str),
    #[error("{0} of the addon token decrypts to something that is not UTF-8")]
    Utf8(&'static str),
    #[error("the addon token's expiration {0:?} is not a UTC time")]
    Expiration(String),
}

/// The `addon.token.config` document. No `Debug` (see `redaction_tests`): the fields are
/// encrypted with the keyring it carries.
#[derive(Deserialize)]
pub(super) struct TokenConfig {
    #[serde(rename = "access.key.id")]
    access_key_id: Option<String>,
    #[serde(rename = "access.key.secret")]
    access_key_secret: Option<String>,
    #[serde(rename = "security.token")]
    security_token: Option<String>,
    expiration: Option<String>,
    keyring: Option<SecretString>,
    error: Option<ReportedError>,
}

#[derive(Deserialize)]
struct ReportedError {
    #[serde(default, rename = "roleName")]
    role_name: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Decrypts one field: base64(IV ‖ ciphertext) with `key`.
pub fn decrypt_field(
    field: &'static str,
    key: &[u8],
    encoded: &str,
) -> Result<String, AddonTokenError> {
    let raw = BASE64
        .decode(encoded.trim())
        .map_err(|_| AddonTokenError::Base64(field))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(AddonTokenError::Length(field));
    }
    let (iv, ciphertext) = raw.split_at(16);
    let plain = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(key.len()))?
            .decrypt_padded_vec::<Pkcs7>(ciphertext),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(key.len()))?
            .decrypt_padded_vec::<Pkcs7>(ciphertext),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(key.len()))?
            .decrypt_padded_vec::<Pkcs7>(ciphertext),
        n => return Err(AddonTokenError::KeyLength(n)),
    }
    .map_err(|_| AddonTokenError::Padding(field))?;
    String::from_utf8(plain).map_err(|_| AddonTokenError::Utf8(field))
}

/// Reads the STS credentials out of the `addon.token.config` value.
pub fn parse(config: &[u8]) -> Result<Credential, AddonTokenError> {
    let t: TokenConfig = serde_json::from_slice(config)
        .map_err(|e| AddonTokenError::Json(crate::aliyun::error::describe_json_error(&e)))?;
    if let Some(e) = t.error {
        return Err(AddonTokenError::Reported {
            role_name: e.role_name,
            code: e.code,
            message: crate::aliyun::error::sanitize_message(&e.message),
        });
    }
    let keyring = t.keyring.ok_or(AddonTokenError::Missing("keyring"))?;
    let key = keyring.expose_secret().as_bytes();
    if ![16, 24, 32].contains(&key.len()) {
        return Err(AddonTokenError::KeyLength(key.len()));
    }
    let field = |name: &'static str, v: Option<String>| {
        v.ok_or(AddonTokenError::Missing(name))
            .and_then(|v| decrypt_field(name, key, &v))
    };
    let access_key_id = field("access.key.id", t.access_key_id)?;
    let access_key_secret = SecretString::from(field("access.key.secret", t.access_key_secret)?);
    let security_token = SecretString::from(field("security.token", t.security_token)?);
    let expiration = t.expiration.ok_or(AddonTokenError::Missing("expiration"))?;
    let expiration = expiration
        .parse()
        .map_err(|_| AddonTokenError::Expiration(expiration.clone()))?;
    Ok(Credential {
        access_key_id,
        access_key_secret,
        security_token: Some(security_token),
        expiration: Some(expiration),
    })
}

/// Encrypts `plain` as ACK does (for tests and the fake cloud's demo set-up).
pub fn encrypt_field(key: &[u8], iv: &[u8; 16], plain: &str) -> Result<String, AddonTokenError> {
    use aes::cipher::BlockModeEncrypt;
    let ct = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(16))?
            .encrypt_padded_vec::<Pkcs7>(plain.as_bytes()),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(24))?
            .encrypt_padded_vec::<Pkcs7>(plain.as_bytes()),
        32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| AddonTokenError::KeyLength(32))?
            .encrypt_padded_vec::<Pkcs7>(plain.as_bytes()),
        n => return Err(AddonTokenError::KeyLength(n)),
    };
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    Ok(BASE64.encode(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"1234567890ABCDEF";
    const VECTOR: &str = "MDAwMDAwMDAwMDAwMDAwMGnt+3/1BPCxHsEwd2btB6EVzQU/Ukkx2n12s0kqV8ud";

    #[test]
    fn the_published_vector_decrypts() {
        assert_eq!(
            decrypt_field("access.key.id", KEY, VECTOR).as_deref(),
            Ok("STS.NTestAccessKeyId")
        );
    }

    #[test]
    fn encryption_reproduces_the_vector() {
        assert_eq!(
            encrypt_field(KEY, b"0000000000000000", "STS.NTestAccessKeyId").as_deref(),
            Ok(VECTOR)
        );
    }

    #[test]
    fn a_wrong_key_fails_on_padding_or_utf8_never_silently() {
        // A wrong key yields garbage; PKCS#7 validation rejects it (or, rarely, the bytes are not
        // UTF-8). It never yields the plaintext.
        let r = decrypt_field("access.key.id", b"FEDCBA0987654321", VECTOR);
        assert!(
            matches!(
                r,
                Err(AddonTokenError::Padding(_)) | Err(AddonTokenError::Utf8(_))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn bad_padding_is_reported() {
        // Encrypt 16 bytes whose last byte is 0x00 without padding: decrypting then finds an
        // invalid PKCS#7 pad.
        use aes::cipher::BlockModeEncrypt;
        use aes::cipher::block_padding::NoPadding;
        let iv = [b'0'; 16];
        let ct = cbc::Encryptor::<aes::Aes128>::new_from_slices(KEY, &iv)
            .unwrap_or_else(|e| panic!("{e}"))
            .encrypt_padded_vec::<NoPadding>(b"ABCDEFGHIJKLMNO\x00");
        let mut blob = iv.to_vec();
        blob.extend_from_slice(&ct);
        assert_eq!(
            decrypt_field("security.token", KEY, &BASE64.encode(blob)),
            Err(AddonTokenError::Padding("security.token"))
        );
    }

    #[test]
    fn malformed_fields() {
        assert_eq!(
            decrypt_field("f", KEY, "not base64!"),
            Err(AddonTokenError::Base64("f"))
        );
        assert_eq!(
            decrypt_field("f", KEY, &BASE64.encode([0u8; 16])),
            Err(AddonTokenError::Length("f"))
        );
        assert_eq!(
            decrypt_field("f", KEY, &BASE64.encode([0u8; 40])),
            Err(AddonTokenError::Length("f"))
        );
        assert_eq!(
            decrypt_field("f", b"short", VECTOR),
            Err(AddonTokenError::KeyLength(5))
        );
    }

    fn config(keyring: &str, expiration: &str) -> String {
        let iv = b"abcdefghijklmnop";
        let enc =
            |s: &str| encrypt_field(keyring.as_bytes(), iv, s).unwrap_or_else(|e| panic!("{e}"));
        serde_json::json!({
            "access.key.id": enc("STS.NManaged"),
            "access.key.secret": enc("managed-secret"),
            "security.token": enc("CAISmanaged"),
            "expiration": expiration,
            "keyring": keyring,
        })
        .to_string()
    }

    #[test]
    fn a_whole_token_parses_with_each_key_size() {
        for keyring in [
            "0123456789abcdef",
            "0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef",
        ] {
            let c = parse(config(keyring, "2026-11-22T12:00:00Z").as_bytes())
                .unwrap_or_else(|e| panic!("{keyring}: {e}"));
            assert_eq!(c.access_key_id, "STS.NManaged");
            assert_eq!(c.access_key_secret.expose_secret(), "managed-secret");
            assert_eq!(
                c.security_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_owned())
                    .as_deref(),
                Some("CAISmanaged")
            );
            assert_eq!(
                c.expiration.map(|e| e.to_string()).as_deref(),
                Some("2026-11-22T12:00:00Z")
            );
        }
    }

    #[test]
    fn an_error_object_is_reported_with_its_code() {
        let doc = br#"{"error":{"roleName":"AliyunCSManagedAcrRole","code":"EntityNotExist.Role","message":"The role not exists"}}"#;
        assert_eq!(
            parse(doc).err(),
            Some(AddonTokenError::Reported {
                role_name: "AliyunCSManagedAcrRole".into(),
                code: "EntityNotExist.Role".into(),
                message: "The role not exists".into(),
            })
        );
    }

    #[test]
    fn malformed_documents() {
        assert!(matches!(parse(b"{"), Err(AddonTokenError::Json(_))));
        assert_eq!(
            parse(b"{}").err(),
            Some(AddonTokenError::Missing("keyring"))
        );
        assert_eq!(
            parse(br#"{"keyring":"0123456789abcdef"}"#).err(),
            Some(AddonTokenError::Missing("access.key.id"))
        );
        assert_eq!(
            parse(config("0123456789abcdef", "tomorrow").as_bytes()).err(),
            Some(AddonTokenError::Expiration("tomorrow".into()))
        );
        assert_eq!(
            parse(br#"{"keyring":"short"}"#).err(),
            Some(AddonTokenError::KeyLength(5))
        );
    }

    #[test]
    fn errors_never_contain_the_plaintext_or_keyring() {
        let cfg = config("0123456789abcdef", "bad-time");
        let e = parse(cfg.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for secret in ["managed-secret", "CAISmanaged", "0123456789abcdef"] {
            assert!(!e.contains(secret), "{e}");
        }
    }
}
