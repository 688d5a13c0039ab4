//! The watches that feed the [index](crate::index): Namespaces (metadata only), ServiceAccounts,
//! and the Secrets of our name (a field selector on `metadata.name`, so no other Secret of the
//! cluster is ever sent to us). Each event is reduced to what the index keeps at once.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::index::{Index, Kind, SharedIndex};

/// Starts the three watches; they run until aborted.
pub fn spawn(
    client: Client,
    index: Arc<SharedIndex>,
    secret_name: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let service_accounts = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let secrets = watcher(
        Api::<Secret>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={secret_name}")),
    )
    .default_backoff();
    vec![
        tokio::spawn(follow(
            namespaces,
            index.clone(),
            Kind::Namespace,
            |i, ns| i.apply_namespace(ns),
            |i, ns| i.delete_namespace(&ns.name_any()),
        )),
        tokio::spawn(follow(
            service_accounts,
            index.clone(),
            Kind::ServiceAccount,
            |i, sa| i.apply_service_account(sa),
            |i, sa| i.delete_service_account(&sa.namespace().unwrap_or_default(), &sa.name_any()),
        )),
        tokio::spawn(follow(
            secrets,
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

/// The namespace an object's change concerns (a Namespace concerns itself).
fn concerned<K: kube::Resource>(obj: &K, kind: Kind) -> Option<Arc<str>> {
    match kind {
        Kind::Namespace => obj.meta().name.as_deref().map(Arc::from),
        _ => obj.meta().namespace.as_deref().map(Arc::from),
    }
}

async fn follow<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    index: Arc<SharedIndex>,
    kind: Kind,
    apply: impl Fn(&mut Index, &K) -> bool,
    delete: impl Fn(&mut Index, &K) -> bool,
) where
    K: kube::Resource + Clone + Debug + Send + 'static,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
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
            index.set_synced(kind);
            tracing::info!(?kind, namespaces = index.read().len(), "watch listed");
        }
    }
}
