//! The watches that feed the [index](crate::index): Namespaces (metadata only), ServiceAccounts
//! (trimmed as they are parsed), and the Secrets of our name (a field selector on
//! `metadata.name`, so no other Secret of the cluster is ever sent to us). Initial lists are
//! streamed one object at a time; each event is reduced to what the index keeps at once.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::index::{Index, Kind, ServiceAccountView, SharedIndex};

/// Objects per page when the API server cannot stream the initial list (it refuses
/// `sendInitialEvents`, as Kubernetes 1.33 does by default): at most this many objects, each at
/// most 1.5 MiB, are held at once.
pub const FALLBACK_PAGE: u32 = 25;

/// Starts the three watches; they run until aborted. Each delivers its initial list as a stream
/// of single objects (`sendInitialEvents`, Kubernetes' streaming lists), so no page of objects is
/// ever held at once, and each object is reduced to what the index keeps as it is parsed
/// (ServiceAccounts as [`ServiceAccountView`], Namespaces as metadata only).
pub fn spawn(
    client: Client,
    index: Arc<SharedIndex>,
    secret_name: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(run(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
            index.clone(),
            Kind::Namespace,
            |i, ns| i.apply_namespace(ns),
            |i, ns| i.delete_namespace(&ns.name_any()),
        )),
        tokio::spawn(run(
            Api::<ServiceAccountView>::all(client.clone()),
            watcher::Config::default(),
            index.clone(),
            Kind::ServiceAccount,
            |i, sa| i.apply_service_account(sa),
            |i, sa| i.delete_service_account(&sa.namespace().unwrap_or_default(), &sa.name_any()),
        )),
        tokio::spawn(run(
            Api::<Secret>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={secret_name}")),
            index,
            Kind::Secret,
            |i, s| i.apply_secret(s),
            |i, s| {
                i.delete_secret(
                    &s.namespace().unwrap_or_default(),
                    s.metadata.uid.as_deref(),
                )
            },
        )),
    ]
}

/// Whether a watch error says the API server does not stream initial lists: it refuses the
/// request's `sendInitialEvents` as invalid (422) or bad (400).
pub fn streaming_unsupported(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    code == 422 || code == 400
}

/// Follows `api` with streaming lists, or with small pages once the API server says it cannot
/// stream them.
async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    index: Arc<SharedIndex>,
    kind: Kind,
    apply: impl Fn(&mut Index, &K) -> bool + Copy,
    delete: impl Fn(&mut Index, &K) -> bool + Copy,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let streaming = watcher(api.clone(), config.clone().streaming_lists()).default_backoff();
    if follow(streaming, &index, kind, true, apply, delete).await == Ended::StreamingUnsupported {
        tracing::warn!(
            ?kind,
            page = FALLBACK_PAGE,
            "the API server does not stream initial lists (sendInitialEvents); listing in small pages instead"
        );
        let paged = watcher(api, config.page_size(FALLBACK_PAGE)).default_backoff();
        follow(paged, &index, kind, false, apply, delete).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stream,
    StreamingUnsupported,
}

/// Lists `api` in pages of `page_size` (whatever `lp` says) and hands each page to `f`: a page
/// at a time is all that is held (one-shot commands: `plan`, `cleanup`).
pub async fn list_pages<K>(
    api: &Api<K>,
    lp: kube::api::ListParams,
    page_size: u32,
    mut f: impl FnMut(Vec<K>),
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + Debug,
{
    let mut lp = lp.limit(page_size);
    loop {
        let page = api.list(&lp).await?;
        f(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(()),
        }
    }
}

/// The namespace an object's change concerns (a Namespace concerns itself).
fn concerned<K: kube::Resource>(obj: &K, kind: Kind) -> Option<Arc<str>> {
    match kind {
        Kind::Namespace => obj.meta().name.as_deref().map(Arc::from),
        _ => obj.meta().namespace.as_deref().map(Arc::from),
    }
}

async fn follow<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    index: &SharedIndex,
    kind: Kind,
    streaming: bool,
    apply: impl Fn(&mut Index, &K) -> bool,
    delete: impl Fn(&mut Index, &K) -> bool,
) -> Ended
where
    K: kube::Resource + Clone + Debug + Send + 'static,
{
    let mut stream = std::pin::pin!(stream);
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) if streaming && !listed && streaming_unsupported(&e) => {
                return Ended::StreamingUnsupported;
            }
            Err(e) => {
                tracing::warn!(?kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        let synced = matches!(event, watcher::Event::InitDone);
        index.update(|i| match event {
            watcher::Event::Init => {
                i.begin_relist(kind);
                ((), Vec::new())
            }
            watcher::Event::InitDone => ((), i.end_relist(kind)),
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let dirty = apply(i, &obj).then(|| concerned(&obj, kind)).flatten();
                ((), dirty.into_iter().collect())
            }
            watcher::Event::Delete(obj) => {
                let dirty = delete(i, &obj).then(|| concerned(&obj, kind)).flatten();
                ((), dirty.into_iter().collect())
            }
        });
        if synced {
            listed = true;
            index.set_synced(kind);
            tracing::info!(
                ?kind,
                namespaces = index.read().len(),
                streaming,
                "watch listed"
            );
        }
    }
    Ended::Stream
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::core::Status {
        kube::core::Status {
            code,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_refused_streaming_request_falls_back_to_pages() {
        let start =
            |code| watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status(code))));
        assert!(streaming_unsupported(&start(422)));
        assert!(streaming_unsupported(&start(400)));
        assert!(streaming_unsupported(&watcher::Error::WatchError(
            Box::new(status(422))
        )));
        // Forbidden, gone, or the server down: retried as they are, never a reason to page.
        for code in [403, 410, 500, 503] {
            assert!(!streaming_unsupported(&start(code)), "{code}");
        }
        assert!(!streaming_unsupported(&watcher::Error::NoResourceVersion));
    }
}
