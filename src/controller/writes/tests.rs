//! The writer against a mock API server (`tower-test`): every request it sends is checked for its
//! method, path, body and precondition, and answered as the test says; a request the test does
//! not expect fails it, and so does one it expects that never comes.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::index::{Rv, SaState, SecretState};
use crate::kube_errors::Category;
use crate::record::DigestKey;

type Server = Handle<Request<Body>, Response<Body>>;

fn writer(leadership: Leadership) -> (Writer, Server) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let term = leadership.term().unwrap_or(0);
    (
        Writer::new(client, leadership, term, Arc::new(Metrics::new())),
        handle,
    )
}

fn content() -> SecretContent {
    let key = DigestKey::from_bytes(&[7; 32]).unwrap_or_else(|| panic!("key"));
    SecretContent::new(
        br#"{"auths":{"r.example.com":{"auth":"dTpw"}}}"#.to_vec(),
        "2026-12-04T12:00:00Z"
            .parse::<Timestamp>()
            .unwrap_or_else(|e| panic!("{e}")),
        vec!["cri-a".into()],
        "id".into(),
        &key,
    )
}

/// The Secret as the server would hold it, with `content` and resourceVersion `rv`.
fn stored(content: &SecretContent, rv: &str) -> Value {
    let mut s = content.secret("acr-credential", "team-a");
    s.metadata.resource_version = Some(rv.into());
    s.metadata.uid = Some("uid-1".into());
    serde_json::to_value(&s).unwrap_or_else(|e| panic!("{e}"))
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "m", "reason": reason, "code": code})
}

/// Waits for the next request, checks it, and answers `code` with `body`. Returns the request's
/// body.
async fn expect(server: &mut Server, method: &str, path: &str, code: u16, body: Value) -> Value {
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} was sent"));
    let (request, send) = next.unwrap_or_else(|| panic!("the client went away"));
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let sent = request
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent: Value = if sent.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&sent).unwrap_or_else(|e| panic!("{e}"))
    };
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    sent
}

/// `call` once it has finished. A writer that sent a request the test does not answer would wait
/// forever: it fails the test after 5 s instead.
async fn finish<T>(call: tokio::task::JoinHandle<T>) -> T {
    within(call).await.unwrap_or_else(|e| panic!("{e}"))
}

/// `f`'s output, or a failed test if it takes over 5 s (the writer waits for an answer to a
/// request the test did not expect).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| {
            panic!("the writer is still waiting: it sent a request the test did not expect")
        })
}

/// Asserts that nothing more was sent.
fn nothing_more(server: &mut Server) {
    use futures::FutureExt as _;
    if let Some(Some((r, _))) = server.next_request().now_or_never() {
        panic!("unexpected {} {}", r.method(), r.uri());
    }
}

/// Starts `ensure_secret` of [`content`] over what the index knew (`known`), to be answered by
/// the test's mock server.
fn ensure(w: Writer, known: Option<SecretState>) -> tokio::task::JoinHandle<Result<Secret, Error>> {
    tokio::spawn(async move {
        w.ensure_secret("team-a", "acr-credential", &content(), known.as_ref())
            .await
    })
}

const SECRETS: &str = "/api/v1/namespaces/team-a/secrets";
const SECRET: &str = "/api/v1/namespaces/team-a/secrets/acr-credential";
const SA: &str = "/api/v1/namespaces/team-a/serviceaccounts/builder";

fn known(rv: &str, managed: bool) -> SecretState {
    let mut s: Secret = serde_json::from_value(stored(&content(), rv)).unwrap_or_default();
    if !managed {
        s.metadata.labels = None;
    }
    let mut state = SecretState::of(&s);
    // What the index knew: an older content, so there is something to write.
    state.dockerconfigjson = Some(Arc::from(&b"{}"[..]));
    state
}

#[tokio::test]
async fn a_missing_secret_is_created_with_our_label() {
    let (w, mut server) = writer(Leadership::always());
    let call = ensure(w, None);
    let body = expect(&mut server, "POST", SECRETS, 201, stored(&content(), "1")).await;
    assert_eq!(body["metadata"]["name"], "acr-credential");
    assert_eq!(body["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        body["metadata"]["labels"][MANAGED_BY_LABEL],
        MANAGED_BY_VALUE
    );
    let r = finish(call).await;
    assert!(r.is_ok(), "{r:?}");
    nothing_more(&mut server);
}

#[tokio::test]
async fn an_update_carries_the_resource_version_it_was_decided_on() {
    let (w, mut server) = writer(Leadership::always());
    let call = ensure(w, Some(known("41", true)));
    let body = expect(&mut server, "PATCH", SECRET, 200, stored(&content(), "42")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    assert_eq!(body["data"]["$patch"], "replace", "data is replaced whole");
    assert!(body["data"][DOCKER_CONFIG_KEY].is_string());
    assert!(finish(call).await.is_ok());
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_conflict_reads_again_and_stops_when_the_secret_already_holds_the_content() {
    let (w, mut server) = writer(Leadership::always());
    let call = ensure(w, Some(known("41", true)));
    expect(&mut server, "PATCH", SECRET, 409, status(409, "Conflict")).await;
    // Another replica (or our own earlier write) got there first: nothing left to write.
    expect(&mut server, "GET", SECRET, 200, stored(&content(), "43")).await;
    let r = finish(call).await;
    assert_eq!(
        r.ok().and_then(|s| s.metadata.resource_version).as_deref(),
        Some("43")
    );
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_conflict_with_other_content_is_patched_again_over_the_new_version() {
    let (w, mut server) = writer(Leadership::always());
    let call = ensure(w, Some(known("41", true)));
    expect(&mut server, "PATCH", SECRET, 409, status(409, "Conflict")).await;
    let mut edited = stored(&content(), "44");
    edited["data"][DOCKER_CONFIG_KEY] = json!("e30=");
    expect(&mut server, "GET", SECRET, 200, edited).await;
    let body = expect(&mut server, "PATCH", SECRET, 200, stored(&content(), "45")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "44");
    assert!(finish(call).await.is_ok());
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_secret_deleted_meanwhile_is_created_again() {
    let (w, mut server) = writer(Leadership::always());
    let call = ensure(w, Some(known("41", true)));
    expect(&mut server, "PATCH", SECRET, 404, status(404, "NotFound")).await;
    expect(&mut server, "GET", SECRET, 404, status(404, "NotFound")).await;
    expect(&mut server, "POST", SECRETS, 201, stored(&content(), "50")).await;
    assert!(finish(call).await.is_ok());
    nothing_more(&mut server);
}

#[tokio::test]
async fn forbidden_and_unavailable_are_told_apart_and_not_retried_here() {
    for (code, reason, category) in [
        (403, "Forbidden", Category::Forbidden),
        (503, "ServiceUnavailable", Category::Unavailable),
        (422, "Invalid", Category::Invalid),
    ] {
        let (w, mut server) = writer(Leadership::always());
        let call = ensure(w, None);
        expect(&mut server, "POST", SECRETS, code, status(code, reason)).await;
        let r = finish(call).await;
        match r {
            Err(e @ Error::Kube { category: got, .. }) => {
                assert_eq!(got, category, "{code}");
                assert_eq!(e.category(), category.label());
                let text = e.to_string();
                assert!(
                    text.contains(&format!("HTTP {code}")) && !text.contains("\"m\""),
                    "about a Secret, the status only: {text}"
                );
            }
            other => panic!("{code}: {other:?}"),
        }
        // The queue retries with a backoff; the writer sends nothing more.
        nothing_more(&mut server);
    }
}

#[tokio::test]
async fn a_foreign_secret_of_our_name_is_never_written() {
    let (w, mut server) = writer(Leadership::always());
    let k = known("41", false);
    let r = within(w.ensure_secret("team-a", "acr-credential", &content(), Some(&k))).await;
    assert!(matches!(r, Err(Error::ForeignSecret { .. })), "{r:?}");
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_replica_that_does_not_lead_sends_nothing() {
    let (w, mut server) = writer(Leadership::new());
    let r = within(w.ensure_secret("team-a", "acr-credential", &content(), None)).await;
    assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");
    let sa = SaState::new(Rv::from(Some(&"1".to_owned())), vec![], "acr-credential");
    let r = within(w.ensure_reference("team-a", "builder", &sa, "acr-credential", true)).await;
    assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");
    nothing_more(&mut server);
}

fn sa(rv: &str, names: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "builder", "namespace": "team-a", "resourceVersion": rv},
        "imagePullSecrets": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn a_reference_already_there_is_nothing_to_write_and_nothing_is_sent() {
    let (w, mut server) = writer(Leadership::always());
    let known = SaState::new(
        Rv::from(Some(&"7".to_owned())),
        vec!["other".into(), "acr-credential".into()],
        "acr-credential",
    );
    let r = within(w.ensure_reference("team-a", "builder", &known, "acr-credential", true)).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    let none = SaState::new(
        Rv::from(Some(&"7".to_owned())),
        vec!["other".into()],
        "acr-credential",
    );
    let r = within(w.ensure_reference("team-a", "builder", &none, "acr-credential", false)).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_reference_is_added_after_the_others_under_a_precondition_and_a_conflict_decides_again() {
    let (w, mut server) = writer(Leadership::always());
    let known = SaState::new(
        Rv::from(Some(&"7".to_owned())),
        vec!["other".into()],
        "acr-credential",
    );
    let call = tokio::spawn(async move {
        w.ensure_reference("team-a", "builder", &known, "acr-credential", true)
            .await
    });
    let body = expect(&mut server, "PATCH", SA, 409, status(409, "Conflict")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert_eq!(
        body["imagePullSecrets"],
        json!([{"name": "other"}, {"name": "acr-credential"}])
    );
    // Someone added a reference of their own meanwhile: kept, ours after it.
    expect(&mut server, "GET", SA, 200, sa("8", &["other", "theirs"])).await;
    let body = expect(
        &mut server,
        "PATCH",
        SA,
        200,
        sa("9", &["other", "theirs", "acr-credential"]),
    )
    .await;
    assert_eq!(body["metadata"]["resourceVersion"], "8");
    assert_eq!(
        body["imagePullSecrets"],
        json!([{"name": "other"}, {"name": "theirs"}, {"name": "acr-credential"}])
    );
    let r = finish(call).await;
    assert!(matches!(r, Ok(Some(_))), "{r:?}");
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_service_account_deleted_before_the_patch_needs_nothing() {
    let (w, mut server) = writer(Leadership::always());
    let known = SaState::new(Rv::from(Some(&"7".to_owned())), vec![], "acr-credential");
    let call = tokio::spawn(async move {
        w.ensure_reference("team-a", "builder", &known, "acr-credential", true)
            .await
    });
    expect(&mut server, "PATCH", SA, 404, status(404, "NotFound")).await;
    let r = finish(call).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    nothing_more(&mut server);
}

#[tokio::test]
async fn a_delete_names_the_uid_it_means_and_a_changed_object_is_left() {
    let (w, mut server) = writer(Leadership::always());
    let w2 = w.clone();
    let call =
        tokio::spawn(async move { w2.delete_secret("team-a", "acr-credential", "uid-1").await });
    let body = expect(&mut server, "DELETE", SECRET, 409, status(409, "Conflict")).await;
    assert_eq!(body["preconditions"]["uid"], "uid-1");
    let r = finish(call).await;
    assert!(matches!(r, Ok(false)), "{r:?}");
    let call =
        tokio::spawn(async move { w.delete_secret("team-a", "acr-credential", "uid-1").await });
    expect(
        &mut server,
        "DELETE",
        SECRET,
        500,
        status(500, "InternalError"),
    )
    .await;
    let r = finish(call).await;
    assert!(
        matches!(
            r,
            Err(Error::Kube {
                category: Category::Unavailable,
                ..
            })
        ),
        "{r:?}"
    );
    nothing_more(&mut server);
}
