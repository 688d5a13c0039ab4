//! The webhook at run time. Every replica serves it, from the configuration in force, its own
//! index and its own watch of the TLS Secret; the leader keeps the certificate Secret and the
//! MutatingWebhookConfiguration in line with the configuration.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::certs::Bundle;
use super::server::ReloadingCert;
use crate::config_source::ConfigView;
use crate::index::SharedIndex;

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
    /// What one client may hold of the webhook.
    pub limits: super::server::Limits,
}

/// The name of the ServiceAccount webhook in the configuration.
pub const WEBHOOK_NAME: &str = "serviceaccounts.aliyun-acr-credential-helper.io";
/// The name of the Pod webhook (`pod-injection`).
pub const POD_WEBHOOK_NAME: &str = "pods.aliyun-acr-credential-helper.io";
/// The paths they are served at.
pub const SERVICE_ACCOUNT_PATH: &str = "/mutate";
pub const POD_PATH: &str = "/mutate-pods";

impl WebhookSettings {
    /// The names the serving certificate must hold.
    pub fn sans(&self, namespace: &str) -> Vec<String> {
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
    own_namespace: Arc<str>,
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

async fn mutate_pod(
    State(s): State<ServeState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let view = s.view.borrow().clone();
    let index = s.index.read();
    Json(super::review_pod(
        review,
        view.config().map(|c| &**c),
        &s.secret_name,
        &s.own_namespace,
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
        .route(SERVICE_ACCOUNT_PATH, post(mutate))
        .route(POD_PATH, post(mutate_pod))
        .with_state(ServeState {
            view,
            index,
            secret_name,
            own_namespace: Arc::from(namespace.as_str()),
        });
    let result = super::server::serve(settings.addr, cert, router, settings.limits, shutdown).await;
    tls_task.abort();
    result
}
