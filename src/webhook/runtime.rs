//! The webhook at run time. Every replica serves it, from the configuration in force, its own
//! index and its own watch of the TLS Secret; the leader keeps the certificate Secret and the
//! MutatingWebhookConfiguration in line with the configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::certs::{self, Bundle};
use super::server::ReloadingCert;
use crate::config;
use crate::config_source::ConfigView;
use crate::index::SharedIndex;
use crate::leader::Leadership;
use crate::render::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Where and how the webhook is served and registered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: std::net::SocketAddr,
    /// The Service in front of the replicas (in the configuration namespace).
    pub service: String,
    pub service_port: i32,
    /// Registers this URL instead of the Service (out-of-cluster runs, tests).
    pub url: Option<String>,
    pub extra_sans: Vec<String>,
    pub configuration_name: String,
    pub tls_secret: String,
    /// How long a client may take for the TLS handshake, and then for its request headers.
    pub client_timeout: Duration,
}

/// The name of the one webhook in the configuration.
pub const WEBHOOK_NAME: &str = "serviceaccounts.aliyun-acr-credential-helper.io";

impl WebhookSettings {
    fn sans(&self, namespace: &str) -> Vec<String> {
        let s = &self.service;
        let mut sans = vec![
            format!("{s}.{namespace}.svc"),
            format!("{s}.{namespace}.svc.cluster.local"),
            format!("{s}.{namespace}"),
            s.clone(),
        ];
        sans.extend(self.extra_sans.iter().cloned());
        sans
    }
}

#[derive(Clone)]
struct ServeState {
    view: watch::Receiver<Arc<ConfigView>>,
    index: Arc<SharedIndex>,
    secret_name: String,
}

async fn mutate(
    State(s): State<ServeState>,
    Json(review): Json<AdmissionReview<ServiceAccount>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let view = s.view.borrow().clone();
    let index = s.index.read();
    Json(super::review(
        review,
        view.config().map(|c| &**c),
        &s.secret_name,
        &index,
    ))
}

/// Serves the webhook on this replica until `shutdown`: loads the certificate from the Secret
/// (and again whenever it changes) and answers from the configuration in force and the index.
pub async fn serve(
    client: Client,
    settings: WebhookSettings,
    namespace: String,
    view: watch::Receiver<Arc<ConfigView>>,
    index: Arc<SharedIndex>,
    secret_name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cert = Arc::new(ReloadingCert::default());
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let tls_watch = watcher(
        secrets,
        watcher::Config::default().fields(&format!("metadata.name={}", settings.tls_secret)),
    )
    .default_backoff()
    .applied_objects();
    let loader = cert.clone();
    let tls_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(tls_watch);
        while let Some(event) = events.next().await {
            match event {
                Ok(secret) => match Bundle::from_secret(&secret) {
                    Some(b) => match loader.load(&b.cert, &b.key) {
                        Ok(()) => {
                            tracing::info!(expires_at = %b.expires_at, "webhook certificate loaded")
                        }
                        Err(e) => tracing::warn!(error = %e, "webhook certificate unusable"),
                    },
                    None => tracing::warn!("webhook certificate Secret is incomplete"),
                },
                Err(e) => tracing::warn!(error = %e, "webhook certificate watch failed; retrying"),
            }
        }
    });

    let router = axum::Router::new()
        .route("/mutate", post(mutate))
        .with_state(ServeState {
            view,
            index,
            secret_name,
        });
    let result = super::server::serve(
        settings.addr,
        cert,
        router,
        settings.client_timeout,
        shutdown,
    )
    .await;
    tls_task.abort();
    result
}

/// Why the webhook could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    #[error("this replica is not the leader (any more); it writes nothing")]
    NotLeader,
}

fn guard(leadership: &Leadership) -> Result<(), RegisterError> {
    if leadership.is_leader() {
        Ok(())
    } else {
        Err(RegisterError::NotLeader)
    }
}

/// Leader duty: the certificate Secret exists and is fresh, and the MutatingWebhookConfiguration
/// matches `webhook` (deleted when disabled). Writes only what differs.
pub async fn reconcile(
    client: &Client,
    leadership: &Leadership,
    settings: &WebhookSettings,
    namespace: &str,
    webhook: &config::WebhookConfig,
) -> Result<(), RegisterError> {
    let mwcs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    if !webhook.enable {
        if mwcs.get_opt(&settings.configuration_name).await?.is_some() {
            guard(leadership)?;
            mwcs.delete(&settings.configuration_name, &DeleteParams::default())
                .await?;
            tracing::info!(name = %settings.configuration_name, "webhook disabled: removed its MutatingWebhookConfiguration");
        }
        return Ok(());
    }
    let bundle = ensure_certificate(client, leadership, settings, namespace).await?;
    let desired = webhook_configuration(settings, namespace, webhook, &bundle.ca_cert);
    let current = mwcs.get_opt(&settings.configuration_name).await?;
    if current.as_ref().map(|c| &c.webhooks) == Some(&desired.webhooks) {
        return Ok(());
    }
    guard(leadership)?;
    let pp = PatchParams::apply(crate::controller::writes::FIELD_MANAGER).force();
    mwcs.patch(&settings.configuration_name, &pp, &Patch::Apply(&desired))
        .await?;
    tracing::info!(name = %settings.configuration_name, failure_policy = webhook.failure_policy.as_str(), timeout_s = webhook.timeout_seconds, "webhook registered");
    Ok(())
}

async fn ensure_certificate(
    client: &Client,
    leadership: &Leadership,
    settings: &WebhookSettings,
    namespace: &str,
) -> Result<Bundle, RegisterError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
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
    guard(leadership)?;
    match existing {
        None => api.create(&PostParams::default(), &secret).await?,
        Some(_) => {
            api.replace(&settings.tls_secret, &PostParams::default(), &secret)
                .await?
        }
    };
    tracing::info!(secret = %settings.tls_secret, expires_at = %issued.expires_at, renewed = old.is_some(), "webhook certificate issued");
    Ok(issued)
}

const SANS_ANNOTATION: &str = "aliyun-acr-credential-helper/webhook-cert-sans";

fn webhook_configuration(
    settings: &WebhookSettings,
    namespace: &str,
    webhook: &config::WebhookConfig,
    ca_cert: &str,
) -> MutatingWebhookConfiguration {
    let client_config = match &settings.url {
        Some(url) => serde_json::json!({"url": url, "caBundle": base64_encode(ca_cert)}),
        None => serde_json::json!({
            "service": {"name": settings.service, "namespace": namespace, "path": "/mutate", "port": settings.service_port},
            "caBundle": base64_encode(ca_cert),
        }),
    };
    let value = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": settings.configuration_name,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        },
        "webhooks": [{
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
            "clientConfig": client_config,
        }],
    });
    serde_json::from_value(value).unwrap_or_default()
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Removes the MutatingWebhookConfiguration (uninstall).
pub async fn remove(client: &Client, name: &str) -> Result<bool, kube::Error> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
