//! The webhook's certificates: a CA (10 years) and a serving certificate (1 year) signed by it,
//! kept in a Secret that every replica reads. The leader creates them, re-issues the serving
//! certificate 30 days before it expires (same CA, so the caBundle stays valid), and every replica
//! reloads it without a restart.

use std::collections::BTreeMap;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// When the serving certificate expires (RFC 3339), on the Secret.
pub const EXPIRES_ANNOTATION: &str = "aliyun-acr-credential-helper/webhook-cert-expires-at";

const CA_NAME: &str = "aliyun-acr-credential-helper webhook CA";
const SERVING_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;
const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
#[error("webhook certificate: {0}")]
pub struct CertError(String);

/// PEM-encoded certificates and keys, as the Secret holds them.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> CertError {
    CertError(e.to_string())
}

fn ca_params(now: time::OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(CA_DAYS);
    p
}

fn now_odt(now: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(now.as_second()).map_err(err)
}

fn serving(
    sans: &[String],
    issuer: &Issuer<'_, KeyPair>,
    ca_cert: String,
    ca_key: String,
    now: Timestamp,
) -> Result<Bundle, CertError> {
    let odt = now_odt(now)?;
    let mut p = CertificateParams::new(sans.to_vec()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first()
            .cloned()
            .unwrap_or_else(|| "webhook".to_owned()),
    );
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.not_before = odt - time::Duration::hours(1);
    p.not_after = odt + time::Duration::days(SERVING_DAYS);
    let key = KeyPair::generate().map_err(err)?;
    let cert = p.signed_by(&key, issuer).map_err(err)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert: cert.pem(),
        key: key.serialize_pem(),
        expires_at: now + jiff::SignedDuration::from_hours(24 * SERVING_DAYS),
    })
}

/// A new CA and a serving certificate for `sans` (DNS names or IP addresses).
pub fn generate(sans: &[String], now: Timestamp) -> Result<Bundle, CertError> {
    let params = ca_params(now_odt(now)?);
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = params.self_signed(&ca_key).map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(params, ca_key);
    serving(sans, &issuer, ca_cert.pem(), ca_key_pem, now)
}

/// A new serving certificate from the existing CA of `old` (the caBundle stays valid).
pub fn renew(old: &Bundle, sans: &[String], now: Timestamp) -> Result<Bundle, CertError> {
    let ca_key = KeyPair::from_pem(&old.ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params(now_odt(now)?), ca_key);
    serving(sans, &issuer, old.ca_cert.clone(), old.ca_key.clone(), now)
}

/// Whether the serving certificate is due for renewal.
pub fn needs_renewal(b: &Bundle, now: Timestamp) -> bool {
    b.expires_at <= now + jiff::SignedDuration::from_hours(24 * RENEW_BEFORE_DAYS)
}

impl Bundle {
    pub fn data(&self) -> BTreeMap<String, k8s_openapi::ByteString> {
        [
            (CA_CERT, &self.ca_cert),
            (CA_KEY, &self.ca_key),
            (TLS_CERT, &self.cert),
            (TLS_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
        .collect()
    }

    /// Reads a bundle back from a Secret; `None` if anything is missing.
    pub fn from_secret(s: &k8s_openapi::api::core::v1::Secret) -> Option<Bundle> {
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let expires_at = s
            .metadata
            .annotations
            .as_ref()?
            .get(EXPIRES_ANNOTATION)?
            .parse()
            .ok()?;
        Some(Bundle {
            ca_cert: get(CA_CERT)?,
            ca_key: get(CA_KEY)?,
            cert: get(TLS_CERT)?,
            key: get(TLS_KEY)?,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bundles_hold_pem_and_renew_with_the_same_ca() {
        let now = Timestamp::now();
        let sans = vec!["svc.kube-system.svc".to_owned(), "127.0.0.1".to_owned()];
        let b = generate(&sans, now).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.key.contains("PRIVATE KEY"));
        assert!(!needs_renewal(&b, now));
        assert!(needs_renewal(
            &b,
            now + jiff::SignedDuration::from_hours(24 * 340)
        ));
        let r = renew(&b, &sans, now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.ca_cert, b.ca_cert);
        assert_ne!(r.cert, b.cert);
        assert!(!format!("{b:?}").contains("PRIVATE"));
    }
}
