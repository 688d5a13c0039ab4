//! The HTTP layer shared by the cloud clients: connect and read timeouts, retries with exponential
//! backoff and full jitter of transport failures only (a connection that failed or timed out,
//! within one call's attempt budget), and decoding of Alibaba Cloud error documents. A server
//! error or throttling answer is returned at once: when to call again is the refresh timing's
//! decision, not this layer's.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::error::{ApiName, CloudError, endpoint_of, sanitize_message};

/// How often and how patiently a call is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry; it doubles each time.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 for the first retry): a uniformly random
    /// duration up to `min(max_delay, base_delay * 2^(retry-1))` ("full jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=millis))
    }
}

/// Timeouts and retries of the cloud clients.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    /// The whole request, from sending to the last byte of the answer.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// The largest answer read from any cloud API, error answers included. The largest legitimate
/// one, ListInstanceEndpoint of an instance with many domains, is a few KiB: anything past this
/// is a broken or hostile endpoint, and reading it whole would let it exhaust the memory.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A successful answer.
pub struct Reply {
    pub status: u16,
    /// May hold AccessKeySecrets, SecurityTokens or registry passwords: `Debug` shows its length.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field(
                "body",
                &format_args!("[REDACTED, {} bytes]", self.body.len()),
            )
            .finish()
    }
}

/// Told of every attempt of every cloud call: the API, and `ok` or the error's category.
pub type CallObserver = Arc<dyn Fn(ApiName, &'static str) + Send + Sync>;

/// The HTTP client of every cloud call. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    retry: RetryPolicy,
    observer: Option<CallObserver>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Installs the process's one rustls crypto provider (ring) if none is installed yet.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Http {
    /// Needs the process's crypto provider ([`install_crypto_provider`]) for HTTPS endpoints.
    pub fn new(options: &HttpOptions) -> Result<Http, CloudError> {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // A signed request (or the Personal Edition's security-token header) is never re-sent
            // to wherever a redirect points: a 3xx answer is an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "aliyun-acr-credential-helper/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| CloudError::Client(e.without_url().to_string()))?;
        Ok(Http {
            client,
            retry: options.retry.clone(),
            observer: None,
        })
    }

    /// Reports every attempt to `observer` (metrics).
    pub fn with_observer(mut self, observer: CallObserver) -> Http {
        self.observer = Some(observer);
        self
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request `build` makes, retrying transport failures as the policy says. `build` is called for every
    /// attempt, so each is signed afresh (a new nonce and timestamp).
    pub(crate) async fn send<F>(&self, api: ApiName, mut build: F) -> Result<Reply, CloudError>
    where
        F: FnMut() -> Result<reqwest::Request, CloudError>,
    {
        let mut attempt = 1;
        loop {
            let request = build()?;
            let result = self.send_once(api, request).await;
            if let Some(observe) = &self.observer {
                observe(
                    api,
                    result.as_ref().map_or_else(CloudError::category, |_| "ok"),
                );
            }
            match result {
                Err(e) if e.is_transport() && attempt < self.retry.max_attempts => {
                    let delay = self.retry.backoff(attempt);
                    tracing::warn!(
                        api,
                        attempt,
                        error = %e,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "cloud call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once(
        &self,
        api: ApiName,
        request: reqwest::Request,
    ) -> Result<Reply, CloudError> {
        let endpoint = endpoint_of(request.url());
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                CloudError::Timeout {
                    api,
                    endpoint: endpoint.clone(),
                }
            } else {
                CloudError::Unreachable {
                    api,
                    endpoint: endpoint.clone(),
                    detail: error_chain(&e.without_url()),
                }
            }
        };
        let mut response = self.client.execute(request).await.map_err(transport)?;
        let status = response.status().as_u16();
        let too_large = || CloudError::InvalidResponse {
            api,
            detail: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes; refused"),
        };
        // The declared length refuses an oversized answer before any of it is read; the count of
        // what arrives refuses one that declares nothing (chunked) or too little.
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            return Ok(Reply { status, body });
        }
        Err(service_error(api, status, &endpoint, &body))
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Alibaba Cloud's error document: RPC APIs use PascalCase keys, ROA APIs lower camel case. No
/// `Debug`: the raw message may echo the signed string, SecurityToken included.
#[derive(Deserialize)]
pub(super) struct ErrorDocument {
    #[serde(alias = "code")]
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(alias = "message")]
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(alias = "requestId")]
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

/// An error answer: the service's error document (either style) if it sent one.
pub fn service_error(api: ApiName, status: u16, endpoint: &str, body: &[u8]) -> CloudError {
    match serde_json::from_slice::<ErrorDocument>(body) {
        Ok(ErrorDocument {
            code: Some(code),
            message,
            request_id,
        }) => CloudError::Service {
            api,
            status,
            code,
            message: sanitize_message(message.as_deref().unwrap_or("")),
            request_id: request_id.unwrap_or_else(|| "-".to_owned()),
        },
        _ => CloudError::Http {
            api,
            status,
            endpoint: endpoint.to_owned(),
        },
    }
}

/// Decodes a JSON answer; errors name the position, never the content.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    api: ApiName,
    reply: &Reply,
) -> Result<T, CloudError> {
    serde_json::from_slice(&reply.body).map_err(|e| CloudError::InvalidResponse {
        api,
        detail: super::error::describe_json_error(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_the_ceiling() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(100));
            assert!(p.backoff(2) <= Duration::from_millis(200));
            assert!(p.backoff(3) <= Duration::from_millis(400));
            assert!(p.backoff(30) <= Duration::from_millis(1000));
        }
        // Jitter: not every draw is the same.
        let draws: std::collections::BTreeSet<Duration> = (0..50).map(|_| p.backoff(4)).collect();
        assert!(draws.len() > 5, "{draws:?}");
    }

    /// A one-answer-per-connection HTTP server on 127.0.0.1 that sends `head` then `body` to
    /// every request, whatever it asks.
    async fn serve(head: String, body: Vec<u8>) -> url::Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    // The client hangs up on an oversized answer: write errors are expected.
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        url::Url::parse(&format!("http://{addr}/")).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn get(url: &url::Url) -> Result<Reply, CloudError> {
        install_crypto_provider();
        let http = Http::new(&HttpOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        http.send("AssumeRole", || {
            http.client()
                .get(url.clone())
                .build()
                .map_err(|e| CloudError::Client(e.to_string()))
        })
        .await
    }

    /// An answer of `len` bytes of a marker that must never show in an error.
    fn big_body(len: usize) -> Vec<u8> {
        b"s3cr3t-body-".iter().copied().cycle().take(len).collect()
    }

    fn assert_refused_as_too_large(result: Result<Reply, CloudError>) {
        match result {
            Err(e @ CloudError::InvalidResponse { .. }) => {
                assert_eq!(e.category(), "cloud_invalid_response");
                let text = e.to_string();
                assert!(text.starts_with("AssumeRole: "), "{text}");
                assert!(text.contains(&MAX_ANSWER_BYTES.to_string()), "{text}");
                assert!(!text.contains("s3cr3t"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_declaring_more_than_the_cap_is_refused_unread() {
        // Only a few bytes follow the declaration: reading on would fail as a broken transfer.
        let len = 2 * MAX_ANSWER_BYTES;
        let url = serve(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            ),
            big_body(16),
        )
        .await;
        assert_refused_as_too_large(get(&url).await);
    }

    #[tokio::test]
    async fn a_chunked_answer_growing_past_the_cap_is_refused() {
        let mut body = Vec::new();
        for chunk in big_body(2 * MAX_ANSWER_BYTES).chunks(64 * 1024) {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let url = serve(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
            body,
        )
        .await;
        assert_refused_as_too_large(get(&url).await);
    }

    #[tokio::test]
    async fn answers_up_to_the_cap_are_read_whole() {
        for len in [2, MAX_ANSWER_BYTES] {
            let url = serve(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n"),
                big_body(len),
            )
            .await;
            let reply = get(&url).await.unwrap_or_else(|e| panic!("{len}: {e}"));
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, big_body(len));
        }
    }

    #[tokio::test]
    async fn an_oversized_error_answer_is_refused_too() {
        let len = MAX_ANSWER_BYTES + 1;
        let url = serve(
            format!("HTTP/1.1 403 Forbidden\r\ncontent-length: {len}\r\n\r\n"),
            big_body(len),
        )
        .await;
        assert_refused_as_too_large(get(&url).await);
    }

    #[test]
    fn error_documents_of_both_styles_are_read() {
        let rpc = br#"{"RequestId":"R1","HostId":"h","Code":"NoPermission","Message":"You are not authorized"}"#;
        match service_error("AssumeRole", 403, "https://sts", rpc) {
            CloudError::Service {
                code, request_id, ..
            } => {
                assert_eq!(code, "NoPermission");
                assert_eq!(request_id, "R1");
            }
            other => panic!("{other:?}"),
        }
        let roa = br#"{"code":"USER_NOT_EXIST","message":"no","requestId":"R2"}"#;
        match service_error("GetPersonalAuthorizationToken", 404, "https://cr", roa) {
            CloudError::Service {
                code, request_id, ..
            } => {
                assert_eq!(code, "USER_NOT_EXIST");
                assert_eq!(request_id, "R2");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            service_error("MetadataCredentials", 404, "http://md", b"Not Found"),
            CloudError::Http { status: 404, .. }
        ));
    }
}
