//! The I/O of `migrate`: reads the cluster a small page at a time, plans with [`super::plan`],
//! and carries the plan out, checking every step again against a fresh read: a reference is
//! removed only while this controller's is still there (a merge patch with a resourceVersion
//! precondition, retried on conflict), and a Secret is deleted (with a uid precondition) only if
//! a plan made after the removals still says so.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{Account, CandidateSecret, Migration, plan, without};
use crate::index::ServiceAccountView;
use crate::kube_errors::{is_conflict, is_not_found};
use crate::watches::list_pages;

/// Objects per page when listing.
const PAGE: u32 = 50;

/// What `migrate` works with.
#[derive(Debug, Clone)]
pub struct Target {
    pub config_namespace: String,
    pub config_name: String,
    pub secret_name: String,
    pub region: Option<String>,
}

/// A failed read or write, naming what it was about (the status only for Secrets).
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {detail}")]
pub struct MigrateError {
    action: &'static str,
    object: String,
    detail: String,
}

fn error(action: &'static str, object: impl Into<String>, e: &kube::Error) -> MigrateError {
    MigrateError {
        action,
        object: object.into(),
        detail: crate::kube_errors::without_message(e),
    }
}

/// The registry domains a `.dockerconfigjson` has logins for (`None`: not one).
fn domains_of(secret: &Secret) -> Option<Vec<String>> {
    let bytes = secret
        .data
        .as_ref()?
        .get(crate::render::DOCKER_CONFIG_KEY)?;
    #[derive(serde::Deserialize)]
    struct Doc {
        auths: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    }
    let doc: Doc = serde_json::from_slice(&bytes.0).ok()?;
    Some(doc.auths.into_keys().collect())
}

/// Reads what the plan needs and makes it.
pub async fn read_and_plan(client: &Client, t: &Target) -> Result<Migration, MigrateError> {
    let configured = configured_domains(client, t).await?;
    let candidates = candidate_secrets(client).await?;
    let served = served_namespaces(client, &t.secret_name).await?;
    let accounts = service_accounts(client).await?;
    let pod_refs = pod_references(client).await?;
    Ok(plan(
        &candidates,
        &accounts,
        &pod_refs,
        &t.secret_name,
        &served,
        &configured,
    ))
}

/// The configured instances' own domains: they count as ACR domains (custom domains).
async fn configured_domains(client: &Client, t: &Target) -> Result<BTreeSet<String>, MigrateError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &t.config_namespace)
        .get_opt(&t.config_name)
        .await
        .map_err(|e| {
            error(
                "get",
                format!("ConfigMap {}/{}", t.config_namespace, t.config_name),
                &e,
            )
        })?;
    Ok(cm
        .and_then(|cm| cm.data)
        .and_then(|d| {
            crate::config::parse(&d, Some(t.region.as_deref().unwrap_or("cn-hangzhou"))).ok()
        })
        .map(|p| {
            p.config
                .instances
                .iter()
                .flat_map(|i| i.domains.iter().cloned())
                .collect()
        })
        .unwrap_or_default())
}

/// Every Secret named like the add-on's (`acr-credential-*`), with the domains it holds logins for.
async fn candidate_secrets(client: &Client) -> Result<Vec<CandidateSecret>, MigrateError> {
    let mut candidates = Vec::new();
    list_pages(
        &Api::<Secret>::all(client.clone()),
        ListParams::default(),
        PAGE,
        |page| {
            candidates.extend(
                page.into_iter()
                    .filter(|s| s.name_any().starts_with("acr-credential-"))
                    .map(|s| CandidateSecret {
                        namespace: s.namespace().unwrap_or_default(),
                        name: s.name_any(),
                        type_: s.type_.clone(),
                        domains: domains_of(&s),
                    }),
            );
        },
    )
    .await
    .map_err(|e| error("list", "Secrets", &e))?;
    Ok(candidates)
}

/// The namespaces where this controller's own Secret (`secret_name`, managed by us) exists.
async fn served_namespaces(
    client: &Client,
    secret_name: &str,
) -> Result<BTreeSet<String>, MigrateError> {
    let mut served = BTreeSet::new();
    let ours = ListParams::default().fields(&format!("metadata.name={secret_name}"));
    list_pages(&Api::<Secret>::all(client.clone()), ours, PAGE, |page| {
        served.extend(
            page.into_iter()
                .filter(|s| crate::index::SecretState::of(s).managed)
                .filter_map(|s| s.namespace()),
        );
    })
    .await
    .map_err(|e| error("list", "Secrets", &e))?;
    Ok(served)
}

/// Every ServiceAccount's pull-Secret references.
async fn service_accounts(client: &Client) -> Result<Vec<Account>, MigrateError> {
    let mut accounts = Vec::new();
    list_pages(
        &Api::<ServiceAccountView>::all(client.clone()),
        ListParams::default(),
        PAGE,
        |page| {
            accounts.extend(page.into_iter().map(|sa| Account {
                namespace: sa.namespace().unwrap_or_default(),
                name: sa.name_any(),
                pull_secrets: sa.image_pull_secrets,
            }));
        },
    )
    .await
    .map_err(|e| error("list", "ServiceAccounts", &e))?;
    Ok(accounts)
}

/// Every (namespace, Secret) a Pod names in `imagePullSecrets`: those Secrets stay.
async fn pod_references(client: &Client) -> Result<BTreeSet<(String, String)>, MigrateError> {
    let mut pod_refs = BTreeSet::new();
    list_pages(
        &Api::<Pod>::all(client.clone()),
        ListParams::default(),
        PAGE,
        |page| {
            for p in page {
                let ns = p.namespace().unwrap_or_default();
                for r in p
                    .spec
                    .and_then(|s| s.image_pull_secrets)
                    .unwrap_or_default()
                {
                    pod_refs.insert((ns.clone(), r.name));
                }
            }
        },
    )
    .await
    .map_err(|e| error("list", "Pods", &e))?;
    Ok(pod_refs)
}

/// Removes `remove` from ServiceAccount `ns/name`, keeping every other entry in order, while
/// this controller's reference is there. Returns whether it wrote.
async fn unlink(
    client: &Client,
    ns: &str,
    name: &str,
    remove: &[String],
    ours: &str,
) -> Result<bool, MigrateError> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let object = format!("ServiceAccount {ns}/{name}");
    for _ in 0..5 {
        let Some(sa) = api
            .get_opt(name)
            .await
            .map_err(|e| error("get", &object, &e))?
        else {
            return Ok(false);
        };
        let current = crate::index::ServiceAccountView::from(&sa).image_pull_secrets;
        if !current.iter().any(|n| n == ours) {
            return Ok(false);
        }
        let Some(next) = without(&current, remove) else {
            return Ok(false);
        };
        let refs: Vec<serde_json::Value> = next.iter().map(|n| json!({"name": n})).collect();
        let patch = json!({
            "metadata": {"resourceVersion": sa.metadata.resource_version},
            "imagePullSecrets": refs,
        });
        let pp = PatchParams {
            field_manager: Some(crate::controller::writes::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api.patch(name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, service_account = %name, removed = ?remove, "removed the add-on's reference");
                return Ok(true);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(error("patch", &object, &e)),
        }
    }
    Err(MigrateError {
        action: "patch",
        object,
        detail: "it kept changing; run migrate again".into(),
    })
}

/// Carries `m` out; returns what was done (a plan made after the removals decides the deletes).
pub async fn apply(client: &Client, t: &Target, m: &Migration) -> Result<Migration, MigrateError> {
    let mut done = Migration::default();
    for u in &m.unlink {
        if unlink(
            client,
            &u.namespace,
            &u.service_account,
            &u.remove,
            &t.secret_name,
        )
        .await?
        {
            done.unlink.push(u.clone());
        }
    }
    let fresh = read_and_plan(client, t).await?;
    for d in &fresh.delete {
        let (ns, name) = (&d.namespace, &d.name);
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        let object = format!("Secret {ns}/{name}");
        let Some(s) = api
            .get_opt(name)
            .await
            .map_err(|e| error("get", &object, &e))?
        else {
            continue;
        };
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: s.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, secret = %name, "deleted the add-on's Secret");
                done.delete.push(d.clone());
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => return Err(error("delete", &object, &e)),
        }
    }
    done.kept = fresh.kept;
    Ok(done)
}
