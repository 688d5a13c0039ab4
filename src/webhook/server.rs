//! HTTPS serving with a certificate that can be replaced at any time (no restart).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The current serving certificate; swapped when the Secret changes.
#[derive(Debug, Default)]
pub struct ReloadingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ReloadingCert {
    /// Replaces the certificate with PEM `cert` (chain) and `key`.
    pub fn load(&self, cert: &str, key: &str) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("key: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }

    /// Forgets the certificate (the server stopped).
    pub fn clear(&self) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Connections served at once, from all peers together.
const MAX_CONNECTIONS: usize = 1024;
/// The largest request body read. The API server takes objects of at most 3 MiB
/// (`--max-request-bytes`), and the AdmissionReview of a CREATE holds one object and a few KiB
/// around it.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// HTTP/2 streams one connection may have open at once (the API server multiplexes its admission
/// calls over one connection per replica).
const MAX_CONCURRENT_STREAMS: u32 = 64;
/// The largest HTTP/2 header list, and the most HTTP/1 headers, a request may carry.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// How much any one client may hold of the webhook.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The TLS handshake, then each request's headers, and each whole request (body included)
    /// must be done within this.
    pub client_timeout: Duration,
    /// Connections one peer address may hold at once; more are closed at once.
    pub connections_per_peer: usize,
}

/// Connections held, per peer and in all.
#[derive(Debug, Default)]
struct Peers {
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A connection's place, given back when it ends.
struct Held {
    peers: Arc<Peers>,
    ip: std::net::IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .peers
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

impl Peers {
    /// A place for a new connection from `ip`, unless that peer, or everyone together, holds as
    /// many as allowed.
    fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        per_peer: usize,
    ) -> Result<Held, &'static str> {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.values().sum::<usize>() >= MAX_CONNECTIONS {
            return Err("all connections are taken");
        }
        let n = held.entry(ip).or_insert(0);
        if *n >= per_peer {
            return Err("this peer holds its share of connections");
        }
        *n += 1;
        Ok(Held {
            peers: self.clone(),
            ip,
        })
    }
}

/// Answers 413 to a request announcing a body over [`MAX_BODY_BYTES`], and 408 to one not done
/// (body included) within `deadline`; the connection is then closed, so a client that trickles
/// its body holds nothing for long.
async fn whole_request_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    // A body announced larger than the cap is refused before a byte of it is read (one sent
    // without a length is cut off at the cap while it is read).
    let announced = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (
            http::StatusCode::PAYLOAD_TOO_LARGE,
            [(http::header::CONNECTION, "close")],
            "request body too large",
        )
            .into_response();
    }
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            http::StatusCode::REQUEST_TIMEOUT,
            [(http::header::CONNECTION, "close")],
            "request not received in time",
        )
            .into_response(),
    }
}

/// HTTP/1 and HTTP/2 with every client-side limit: header read time and count, pings, streams,
/// header list size, and resets.
fn connection_builder(client_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(client_timeout)
        .keep_alive_timeout(client_timeout)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256));
    builder
}

/// Serves `router` over TLS on `addr` until `shutdown` resolves. No client can hold the webhook:
/// the TLS handshake, each request's headers and each whole request (body included) have
/// `limits.client_timeout`; bodies are capped at [`MAX_BODY_BYTES`]; one peer address holds at
/// most `limits.connections_per_peer` connections (more are closed as they come, never queued
/// before another peer's), all together [`MAX_CONNECTIONS`]; HTTP/2 connections are pinged and
/// have at most [`MAX_CONCURRENT_STREAMS`] streams.
pub async fn serve(
    addr: std::net::SocketAddr,
    cert: Arc<ReloadingCert>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let client_timeout = limits.client_timeout;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving the admission webhook (TLS)");
    let router = router
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            client_timeout,
            whole_request_deadline,
        ));
    let peers = Arc::new(Peers::default());
    let builder = Arc::new(connection_builder(client_timeout));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let held = match peers.admit(peer.ip(), limits.connections_per_peer) {
            Ok(h) => h,
            Err(why) => {
                tracing::debug!(%peer, why, "webhook connection refused");
                drop(stream);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let _held = held;
            let tls = match tokio::time::timeout(client_timeout, acceptor.accept(stream)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_take_every_connection() {
        let peers = Arc::new(Peers::default());
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let held: Vec<Held> = (0..4).filter_map(|_| peers.admit(a, 4).ok()).collect();
        assert_eq!(held.len(), 4);
        assert!(peers.admit(a, 4).is_err(), "a fifth from the same peer");
        // The same address as an IPv4-mapped IPv6 one counts as that peer.
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(peers.admit(mapped, 4).is_err());
        let other = peers.admit(b, 4);
        assert!(other.is_ok(), "another peer still gets in");
        drop(held);
        assert!(peers.admit(a, 4).is_ok(), "places are given back");
        // All together, never more than the global limit.
        let many: Vec<Held> = (0..MAX_CONNECTIONS as u32)
            .filter_map(|i| peers.admit(std::net::IpAddr::from(i.to_be_bytes()), 1).ok())
            .collect();
        assert!(many.len() < MAX_CONNECTIONS);
        assert!(
            peers
                .admit("10.9.9.9".parse().unwrap_or_else(|e| panic!("{e}")), 1)
                .is_err()
        );
    }
}
