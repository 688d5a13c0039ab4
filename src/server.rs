//! `/metrics` (Prometheus text format), `/livez` and `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::Readiness;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    health_router()
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, readiness })
}

/// `/livez` and `/readyz` only (`--health-addr`).
pub fn health_only(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    health_router().with_state(AppState { metrics, readiness })
}

fn health_router() -> Router<AppState> {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // Gauges of the index are counted when scraped, not on every change.
    let managed = s.readiness.index.read().managed_secrets();
    s.metrics
        .secrets_managed
        .set(i64::try_from(managed).unwrap_or(i64::MAX));
    s.metrics.degraded.set(i64::from(s.readiness.degraded()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if !s.readiness.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: watches not synced, or the webhook's certificate not loaded yet",
        )
    } else if s.readiness.degraded() {
        (
            StatusCode::OK,
            "ready, degraded: no credentials yet for the configuration in force (retrying; see the ConfigMap's Events)",
        )
    } else {
        (StatusCode::OK, "ready")
    }
}

/// Serves the router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving HTTP (metrics and probes)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
