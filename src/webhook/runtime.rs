//! The webhook at run time. Every replica serves it, from the configuration in force, its own
//! index and its own watch of the TLS Secret; the leader keeps the certificate Secret and the
//! MutatingWebhookConfiguration in line with the configuration.

use std::sync::Arc;
use std::time::Duration;

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
use crate::metrics::{Metrics, OutcomeLabel, WebhookLabel, WebhookLabels};

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
    metrics: Arc<Metrics>,
}

/// The longest a webhook that adds the reference waits for the namespace's pull Secret to appear
/// (a brand-new namespace, whose Secret the leader writes a few tens of milliseconds after it is
/// created): the kubelet reads a Pod's pull Secrets when it starts pulling, and one that comes a
/// moment later costs the Pod a 10 s back-off. Half the webhook's timeout, at most 2 s; after it
/// the request is answered anyway (the Secret comes later, as without the wait).
pub fn secret_wait(timeout_seconds: u8) -> Duration {
    (Duration::from_secs(u64::from(timeout_seconds)) / 2).min(Duration::from_secs(2))
}

/// Whether the pull Secret of ours is in `ns` (as this replica's index knows it).
fn secret_in(index: &SharedIndex, ns: &str) -> bool {
    index
        .read()
        .namespace(ns)
        .is_some_and(crate::index::NsState::has_ours)
}

/// Waits up to `budget` for our pull Secret to be in `ns`; whether it came.
async fn wait_for_secret(index: &SharedIndex, ns: &str, budget: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        if secret_in(index, ns) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts and times an answer; with the reference added where the Secret is not there yet,
/// waits for it first (see [`secret_wait`]).
async fn answer(
    s: &ServeState,
    webhook: &str,
    started: std::time::Instant,
    namespace: Option<String>,
    review: AdmissionReview<DynamicObject>,
    timeout_seconds: u8,
) -> Json<AdmissionReview<DynamicObject>> {
    let result = match &review.response {
        Some(r) if r.patch.is_some() => "patched",
        Some(r) if r.allowed && r.result.code == 0 => "unchanged",
        _ => "invalid",
    };
    if let Some(ns) = namespace.filter(|ns| result == "patched" && !secret_in(&s.index, ns)) {
        let came = wait_for_secret(&s.index, &ns, secret_wait(timeout_seconds)).await;
        let outcome = if came { "appeared" } else { "timed_out" };
        tracing::debug!(namespace = %ns, webhook, outcome, waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "waited for the new namespace's pull Secret");
        s.metrics
            .webhook_secret_waits
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
    s.metrics
        .webhook_requests
        .get_or_create(&WebhookLabels {
            webhook: webhook.to_owned(),
            result: result.to_owned(),
        })
        .inc();
    s.metrics
        .webhook_duration
        .get_or_create(&WebhookLabel {
            webhook: webhook.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    Json(review)
}

async fn mutate(
    State(s): State<ServeState>,
    Json(review): Json<AdmissionReview<ServiceAccount>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let namespace = review.request.as_ref().and_then(|r| r.namespace.clone());
    let view = s.view.borrow().clone();
    let config = view.config().map(|c| &**c);
    let timeout = config.map_or(0, |c| c.webhook.timeout_seconds);
    let reviewed = {
        let index = s.index.read();
        super::review(review, config, &s.secret_name, &index)
    };
    answer(&s, "serviceaccounts", started, namespace, reviewed, timeout).await
}

async fn mutate_pod(
    State(s): State<ServeState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = std::time::Instant::now();
    let namespace = review.request.as_ref().and_then(|r| r.namespace.clone());
    let view = s.view.borrow().clone();
    let config = view.config().map(|c| &**c);
    let timeout = config.map_or(0, |c| c.webhook.pod_timeout_seconds);
    let reviewed = {
        let index = s.index.read();
        super::review_pod(review, config, &s.secret_name, &s.own_namespace, &index)
    };
    answer(&s, "pods", started, namespace, reviewed, timeout).await
}

/// What every replica's webhook answers from.
pub struct Sources {
    /// The configuration in force.
    pub view: watch::Receiver<Arc<ConfigView>>,
    pub index: Arc<SharedIndex>,
    /// The pull Secret's name.
    pub secret_name: String,
    pub metrics: Arc<Metrics>,
    /// The serving certificate, loaded here; readiness looks at it.
    pub cert: Arc<ReloadingCert>,
}

/// Serves the webhook on this replica until `shutdown`: loads the certificate from the Secret
/// (and again whenever it changes) and answers from the configuration in force and the index.
pub async fn serve(
    client: Client,
    settings: WebhookSettings,
    namespace: String,
    sources: Sources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Sources {
        view,
        index,
        secret_name,
        metrics,
        cert,
    } = sources;
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
            metrics,
        });
    let result = super::server::serve(
        settings.addr,
        cert.clone(),
        router,
        settings.limits,
        shutdown,
    )
    .await;
    tls_task.abort();
    // Not serving: not ready either.
    cert.clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(ns: &str) -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": "ours", "uid": "u", "resourceVersion": "1",
                         "labels": {crate::render::MANAGED_BY_LABEL: crate::render::MANAGED_BY_VALUE}},
            "type": crate::render::DOCKER_CONFIG_TYPE,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_wait_is_half_the_webhook_timeout_and_at_most_two_seconds() {
        assert_eq!(secret_wait(3), Duration::from_millis(1500));
        assert_eq!(secret_wait(10), Duration::from_secs(2));
        assert_eq!(secret_wait(1), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_namespaces_secret_is_waited_for_until_it_comes_or_the_budget_ends() {
        let index = Arc::new(SharedIndex::new("ours"));
        // The Secret comes 60 ms after the request: the answer waits for it.
        let writer = index.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            writer.record(|i| {
                i.apply_secret(&ours("fresh"));
            });
        });
        let started = tokio::time::Instant::now();
        assert!(wait_for_secret(&index, "fresh", Duration::from_secs(2)).await);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(60) && waited < Duration::from_millis(100),
            "{waited:?}"
        );
        // One that never comes: the budget, then no.
        let started = tokio::time::Instant::now();
        assert!(!wait_for_secret(&index, "never", Duration::from_millis(1500)).await);
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // There already: no wait at all.
        let started = tokio::time::Instant::now();
        assert!(wait_for_secret(&index, "fresh", Duration::from_secs(2)).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
