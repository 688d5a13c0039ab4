//! Leader duty: the webhook's registration. The certificate Secret exists and is fresh, and the
//! MutatingWebhookConfiguration matches `webhook-configuration` (deleted when disabled). Every
//! write goes through the term's [`Writer`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};

use super::writes::{FIELD_MANAGER, Writer};
use crate::config;
use crate::render::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::webhook::certs::{self, Bundle};
use crate::webhook::runtime::{
    POD_PATH, POD_WEBHOOK_NAME, SERVICE_ACCOUNT_PATH, WEBHOOK_NAME, WebhookSettings,
};

/// Why the webhook could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    #[error(transparent)]
    Write(#[from] super::Error),
    #[error(
        "the MutatingWebhookConfiguration {0} does not exist and this ServiceAccount may not create one; the chart creates it: run `helm upgrade` (or apply deploy/) to bring it back"
    )]
    Missing(String),
    /// Writing the certificate Secret failed: the status only, never the API's message (an
    /// admission webhook's or policy's message may quote the object, private key included).
    #[error("write Secret {secret}: {detail}")]
    CertificateSecret { secret: String, detail: String },
}

fn certificate_write_error(secret: &str, e: &kube::Error) -> RegisterError {
    RegisterError::CertificateSecret {
        secret: secret.to_owned(),
        detail: crate::kube_errors::without_message(e),
    }
}

/// What the registration depends on in the configuration in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub webhook: config::WebhookConfig,
    /// Namespaces the Pod webhook is never called for (`exclude-namespaces`).
    pub excluded: std::collections::BTreeSet<String>,
    pub secret_name: String,
}

impl Registration {
    pub fn of(cfg: &config::Config, secret_name: &str) -> Registration {
        Registration {
            webhook: cfg.webhook.clone(),
            excluded: cfg.exclude_namespaces.clone(),
            secret_name: secret_name.to_owned(),
        }
    }
}

/// Leader duty: the certificate Secret exists and is fresh, and the MutatingWebhookConfiguration
/// matches `registration` (deleted when no webhook is enabled). Writes only what differs.
pub async fn reconcile(
    writer: &Writer,
    settings: &WebhookSettings,
    namespace: &str,
    registration: &Registration,
) -> Result<(), RegisterError> {
    let webhook = &registration.webhook;
    let client = writer.client();
    let mwcs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let current = mwcs.get_opt(&settings.configuration_name).await?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    if !webhook.any() {
        // The registration is the chart's (the controller may not create one): disabling empties
        // it rather than deleting it, so enabling again works. `cleanup` removes it.
        if current
            .as_ref()
            .is_some_and(|c| c.webhooks.as_ref().is_some_and(|w| !w.is_empty()))
        {
            let empty = webhook_configuration(settings, namespace, registration, None);
            writer
                .write(mwcs.patch(&settings.configuration_name, &pp, &Patch::Apply(&empty)))
                .await??;
            tracing::info!(name = %settings.configuration_name, "webhooks disabled: emptied the MutatingWebhookConfiguration");
        }
        return Ok(());
    }
    let bundle = ensure_certificate(writer, settings, namespace).await?;
    let desired = webhook_configuration(settings, namespace, registration, Some(&bundle.ca_cert));
    if current.as_ref().map(|c| &c.webhooks) == Some(&desired.webhooks) {
        return Ok(());
    }
    match writer
        .write(mwcs.patch(&settings.configuration_name, &pp, &Patch::Apply(&desired)))
        .await?
    {
        Ok(_) => {}
        // Applying an object that does not exist creates it, which the chart's RBAC does not
        // allow: the chart creates the registration (and `helm upgrade` brings it back).
        Err(kube::Error::Api(e)) if current.is_none() && e.code == 403 => {
            return Err(RegisterError::Missing(settings.configuration_name.clone()));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        name = %settings.configuration_name,
        service_accounts = webhook.enable,
        pods = webhook.pod_injection,
        failure_policy = webhook.failure_policy.as_str(),
        timeout_s = webhook.timeout_seconds,
        pod_failure_policy = webhook.pod_failure_policy.as_str(),
        pod_timeout_s = webhook.pod_timeout_seconds,
        "webhook registered"
    );
    Ok(())
}

async fn ensure_certificate(
    writer: &Writer,
    settings: &WebhookSettings,
    namespace: &str,
) -> Result<Bundle, RegisterError> {
    let api = Api::<Secret>::namespaced(writer.client().clone(), namespace);
    let sans = settings.sans(namespace);
    let sans_text = sans.join(",");
    let now = Timestamp::now();
    let existing = api.get_opt(&settings.tls_secret).await?;
    let old = existing.as_ref().and_then(Bundle::from_secret);
    let same_sans = existing
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(SANS_ANNOTATION))
        .is_some_and(|s| *s == sans_text);
    if let Some(b) = &old
        && same_sans
        && !certs::needs_renewal(b, now)
    {
        return Ok(b.clone());
    }
    let issued = match &old {
        Some(b) => certs::renew(b, &sans, now),
        None => certs::generate(&sans, now),
    }?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.tls_secret.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (
                    certs::EXPIRES_ANNOTATION.to_owned(),
                    issued.expires_at.to_string(),
                ),
                (SANS_ANNOTATION.to_owned(), sans_text),
            ])),
            resource_version: existing
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(issued.data()),
        ..Default::default()
    };
    let pp = Writer::post();
    match existing {
        None => writer.write(api.create(&pp, &secret)).await?,
        Some(_) => {
            writer
                .write(api.replace(&settings.tls_secret, &pp, &secret))
                .await?
        }
    }
    .map_err(|e| certificate_write_error(&settings.tls_secret, &e))?;
    tracing::info!(secret = %settings.tls_secret, expires_at = %issued.expires_at, renewed = old.is_some(), "webhook certificate issued");
    Ok(issued)
}

const SANS_ANNOTATION: &str = "aliyun-acr-credential-helper/webhook-cert-sans";

/// Where the API server calls the webhook at `path`: the Service, or `--webhook-url` (the
/// ServiceAccount webhook's URL; the Pod webhook's is the same with its last path segment
/// replaced by `mutate-pods`).
fn client_config(
    settings: &WebhookSettings,
    namespace: &str,
    path: &str,
    ca_cert: &str,
) -> serde_json::Value {
    match &settings.url {
        Some(url) => {
            let url = if path == SERVICE_ACCOUNT_PATH {
                url.clone()
            } else {
                let base = url.trim_end_matches('/');
                let base = base.strip_suffix(SERVICE_ACCOUNT_PATH).unwrap_or(base);
                format!("{base}{path}")
            };
            serde_json::json!({"url": url, "caBundle": base64_encode(ca_cert)})
        }
        None => serde_json::json!({
            "service": {"name": settings.service, "namespace": namespace, "path": path, "port": settings.service_port},
            "caBundle": base64_encode(ca_cert),
        }),
    }
}

/// The registration the configuration asks for; with no CA (no webhook enabled), no webhooks.
fn webhook_configuration(
    settings: &WebhookSettings,
    namespace: &str,
    registration: &Registration,
    ca_cert: Option<&str>,
) -> MutatingWebhookConfiguration {
    let webhook = &registration.webhook;
    let mut webhooks = Vec::new();
    if let Some(ca_cert) = ca_cert {
        if webhook.enable {
            webhooks.push(service_account_webhook(
                settings, namespace, webhook, ca_cert,
            ));
        }
        if webhook.pod_injection {
            webhooks.push(pod_webhook(settings, namespace, registration, ca_cert));
        }
    }
    // No labels: the object's metadata is the chart's (Helm labels it), only `webhooks` is ours.
    let value = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": settings.configuration_name},
        "webhooks": webhooks,
    });
    serde_json::from_value(value).unwrap_or_default()
}

/// The webhook that adds the reference to a new ServiceAccount.
fn service_account_webhook(
    settings: &WebhookSettings,
    namespace: &str,
    webhook: &config::WebhookConfig,
    ca_cert: &str,
) -> serde_json::Value {
    serde_json::json!({
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": webhook.failure_policy.as_str(),
        "timeoutSeconds": webhook.timeout_seconds,
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "Never",
        // Never the controller's own namespace: with `failure-policy: Fail` an unreachable
        // webhook could otherwise block the ServiceAccounts of its own pods.
        "namespaceSelector": {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace],
        }]},
        "objectSelector": {},
        "rules": [{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["serviceaccounts"],
            "scope": "Namespaced",
        }],
        "clientConfig": client_config(settings, namespace, SERVICE_ACCOUNT_PATH, ca_cert),
    })
}

/// The webhook that adds the reference to a new Pod.
fn pod_webhook(
    settings: &WebhookSettings,
    namespace: &str,
    registration: &Registration,
    ca_cert: &str,
) -> serde_json::Value {
    let webhook = &registration.webhook;
    // The API server does not call it at all for the controller's own namespace, excluded
    // namespaces, namespaces that opted out, mirror Pods and Pods that already have the
    // reference. The name list is sorted, so an equal configuration is an equal object.
    let mut skipped: Vec<&str> = registration.excluded.iter().map(String::as_str).collect();
    skipped.push(namespace);
    skipped.sort_unstable();
    skipped.dedup();
    let has_ours = format!(
        "!has(object.spec.imagePullSecrets) || !object.spec.imagePullSecrets.exists(s, has(s.name) && s.name == '{}')",
        registration.secret_name
    );
    serde_json::json!({
        "name": POD_WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": webhook.pod_failure_policy.as_str(),
        "timeoutSeconds": webhook.pod_timeout_seconds,
        "matchPolicy": "Equivalent",
        // Another webhook that adds or replaces imagePullSecrets after ours runs again.
        "reinvocationPolicy": "IfNeeded",
        "namespaceSelector": {"matchExpressions": [
            {"key": config::NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": skipped},
            {"key": config::OPT_LABEL, "operator": "NotIn", "values": ["false"]},
        ]},
        "objectSelector": {},
        "matchConditions": [
            {"name": "not-a-mirror-pod", "expression": format!(
                "!has(object.metadata.annotations) || !('{}' in object.metadata.annotations)",
                crate::webhook::MIRROR_ANNOTATION
            )},
            {"name": "lacks-the-reference", "expression": has_ours},
        ],
        "rules": [{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }],
        "clientConfig": client_config(settings, namespace, POD_PATH, ca_cert),
    })
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The annotation Helm puts on every object of a release.
const HELM_RELEASE_ANNOTATION: &str = "meta.helm.sh/release-name";

/// Whether the chart made this registration: a Helm release's (Helm's annotation), or the chart
/// rendered for `kubectl apply` (`deploy/`: `helm template` sets the chart's `managed-by: Helm`
/// label but no annotation). Such a registration is the installer's to delete, and the
/// controller may not (its RBAC has no `delete` for it).
fn chart_made(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(HELM_RELEASE_ANNOTATION))
        || meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == "Helm")
}

/// Takes the webhooks out of service (uninstall, `cleanup`): a registration the chart made is
/// emptied (Helm or `kubectl delete -f deploy/` deletes it, and it is there again should the
/// controller resume), any other is deleted. Returns whether there was one.
pub async fn remove(writer: &Writer, name: &str) -> Result<bool, RegisterError> {
    let api = Api::<MutatingWebhookConfiguration>::all(writer.client().clone());
    let Some(current) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let written = if chart_made(&current.metadata) {
        let empty = serde_json::json!({"webhooks": null});
        writer
            .write(api.patch(name, &Writer::patch_params(), &Patch::Merge(&empty)))
            .await?
            .map(|_| ())
    } else {
        writer
            .write(api.delete(name, &DeleteParams::default()))
            .await?
            .map(|_| ())
    };
    match written {
        Ok(()) => Ok(true),
        Err(e) if crate::kube_errors::is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_registration_the_chart_rendered_is_emptied_not_deleted() {
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        // helm install / upgrade
        assert!(chart_made(&meta(
            &[(MANAGED_BY_LABEL, "Helm")],
            &[(HELM_RELEASE_ANNOTATION, "r")]
        )));
        // deploy/ (helm template, then kubectl apply)
        assert!(chart_made(&meta(&[(MANAGED_BY_LABEL, "Helm")], &[])));
        // made by the controller itself
        assert!(!chart_made(&meta(
            &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE)],
            &[]
        )));
        assert!(!chart_made(&ObjectMeta::default()));
    }

    use super::*;

    #[test]
    fn a_refused_certificate_write_never_quotes_the_api_message() {
        let quoted = "admission webhook \"x\" denied the request: data.tls.key: -----BEGIN PRIVATE KEY----- MIIEvQ...";
        let e = kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: quoted.into(),
            ..Default::default()
        }));
        let text = certificate_write_error("webhook-tls", &e).to_string();
        assert_eq!(text, "write Secret webhook-tls: HTTP 403 Forbidden");
        assert!(!text.contains("PRIVATE KEY"));
    }
}
