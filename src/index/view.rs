//! The ServiceAccount view the watch delivers: trimmed while it is parsed, so nothing a tenant
//! puts in a ServiceAccount besides its name, version, opt label and `imagePullSecrets` is ever
//! held.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;

/// A ServiceAccount as its watch delivers it, trimmed while it is parsed: name, namespace,
/// resourceVersion, uid, the opt label and the names in `imagePullSecrets`. Annotations, other
/// labels and every other field are skipped by the parser and never held, so a tenant's
/// ServiceAccounts with megabyte annotations cost the controller nothing.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountView {
    #[serde(deserialize_with = "slim::metadata")]
    pub metadata: kube::api::ObjectMeta,
    #[serde(default, deserialize_with = "slim::reference_names")]
    pub image_pull_secrets: Vec<String>,
}

impl kube::Resource for ServiceAccountView {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ServiceAccount".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "serviceaccounts".into()
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}

impl From<&ServiceAccount> for ServiceAccountView {
    fn from(sa: &ServiceAccount) -> ServiceAccountView {
        let m = &sa.metadata;
        let labels = m
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::config::OPT_LABEL))
            .map(|v| BTreeMap::from([(crate::config::OPT_LABEL.to_owned(), v.clone())]));
        ServiceAccountView {
            metadata: kube::api::ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                resource_version: m.resource_version.clone(),
                uid: m.uid.clone(),
                labels,
                ..Default::default()
            },
            image_pull_secrets: sa
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect(),
        }
    }
}

/// The trimming parsers of [`ServiceAccountView`].
mod slim {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    pub fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<kube::api::ObjectMeta, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            uid: Option<String>,
            #[serde(default, deserialize_with = "opt_label")]
            labels: Option<BTreeMap<String, String>>,
        }
        let m = Meta::deserialize(d)?;
        Ok(kube::api::ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            uid: m.uid,
            labels: m.labels,
            ..Default::default()
        })
    }

    /// Of the labels, only the opt label; the others are skipped unread.
    fn opt_label<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BTreeMap<String, String>>, D::Error> {
        struct Only;
        impl<'de> Visitor<'de> for Only {
            type Value = Option<BTreeMap<String, String>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == crate::config::OPT_LABEL {
                        let value: String = map.next_value()?;
                        kept = Some(BTreeMap::from([(key.into_owned(), value)]));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(kept)
            }
        }
        d.deserialize_any(Only)
    }

    /// The names of `imagePullSecrets` (`null` or absent: none).
    pub fn reference_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        struct Reference {
            #[serde(default)]
            name: String,
        }
        let refs: Option<Vec<Reference>> = Option::deserialize(d)?;
        Ok(refs.into_iter().flatten().map(|r| r.name).collect())
    }
}
