//! The controller's own state Secret in the release namespace (see [`crate::record`]): the
//! digest key and the record of the published logins. Read once per leadership term, written by
//! the refresher whenever the logins change (before the new content is published), always
//! through the term's [`Writer`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ObjectMeta;

use super::writes::Writer;
use super::{Error, kube_error};
use crate::kube_errors::is_conflict;
use crate::record::{DIGEST_KEY_FIELD, DigestKey, RECORD_FIELD, Record};
use crate::render::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, is_managed};

/// The state as loaded, and where it lives.
pub struct StateStore {
    writer: Writer,
    api: Api<Secret>,
    object: String,
    name: String,
    namespace: String,
    resource_version: Option<String>,
    pub key: DigestKey,
    /// No key was stored when the term began (a first install, or an upgrade from a version
    /// without one): pull Secrets without a digest are then not reported as edited by others.
    pub fresh: bool,
    /// The key is not stored yet.
    unsaved_key: bool,
    pub record: Record,
}

impl StateStore {
    /// Reads the state Secret `namespace/name`. Absent: a new key and an empty record (written with
    /// the first logins). A Secret of that name without our label is an error: nothing of it is
    /// trusted or overwritten.
    pub async fn load(writer: Writer, namespace: &str, name: &str) -> Result<StateStore, Error> {
        let api = Api::<Secret>::namespaced(writer.client().clone(), namespace);
        let object = format!("{namespace}/{name}");
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error("get", "Secret", &object, &e))?;
        let mut store = StateStore {
            writer,
            api,
            object: object.clone(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            resource_version: None,
            key: DigestKey::generate().map_err(Error::Internal)?,
            fresh: true,
            unsaved_key: true,
            record: Record::default(),
        };
        if let Some(secret) = found {
            store.adopt(&secret)?;
        }
        Ok(store)
    }

    /// Takes the key and the record of `secret` (as read).
    fn adopt(&mut self, secret: &Secret) -> Result<(), Error> {
        if !is_managed(&secret.metadata) {
            return Err(Error::ForeignSecret {
                object: self.object.clone(),
            });
        }
        self.resource_version = secret.metadata.resource_version.clone();
        let data = secret.data.clone().unwrap_or_default();
        match data
            .get(DIGEST_KEY_FIELD)
            .and_then(|k| DigestKey::from_bytes(&k.0))
        {
            Some(key) => {
                self.key = key;
                self.fresh = false;
                self.unsaved_key = false;
            }
            None => {
                tracing::warn!(secret = %self.object, "the state Secret holds no usable digest key; a new one is made")
            }
        }
        self.record = match data.get(RECORD_FIELD).map(|r| Record::parse(&r.0)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(secret = %self.object, error = %e, "the state Secret's record is unreadable; no login is taken over");
                Record::default()
            }
            None => Record::default(),
        };
        Ok(())
    }

    fn secret(&self, record: &Record) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY_VALUE.to_owned(),
                )])),
                resource_version: self.resource_version.clone(),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([
                (
                    DIGEST_KEY_FIELD.to_owned(),
                    k8s_openapi::ByteString(self.key.bytes().to_vec()),
                ),
                (
                    RECORD_FIELD.to_owned(),
                    k8s_openapi::ByteString(record.to_json()),
                ),
            ])),
            ..Default::default()
        }
    }

    /// Makes the state Secret hold the key and `record` (nothing is sent when it already does).
    /// A conflict (somebody changed it since it was read) is read again and overwritten: only the
    /// leader writes it, and its key is the one the Secrets it writes are digested with.
    pub async fn save(&mut self, record: Record) -> Result<(), Error> {
        if !self.unsaved_key && record.same_as(&self.record) {
            return Ok(());
        }
        for _ in 0..3 {
            let pp = Writer::post();
            let secret = self.secret(&record);
            let written = match self.resource_version {
                None => self.writer.write(self.api.create(&pp, &secret)).await?,
                Some(_) => {
                    self.writer
                        .write(self.api.replace(&self.name, &pp, &secret))
                        .await?
                }
            };
            match written {
                Ok(s) => {
                    self.resource_version = s.metadata.resource_version;
                    self.unsaved_key = false;
                    self.record = record;
                    self.writer.metrics().write("state");
                    tracing::info!(secret = %self.object, logins = self.record.logins.len(), "recorded the published logins");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    let fresh = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .map_err(|e| kube_error("get", "Secret", &self.object, &e))?;
                    if let Some(s) = &fresh
                        && !is_managed(&s.metadata)
                    {
                        return Err(Error::ForeignSecret {
                            object: self.object.clone(),
                        });
                    }
                    self.resource_version = fresh.and_then(|s| s.metadata.resource_version);
                }
                Err(e) => return Err(kube_error("write", "Secret", &self.object, &e)),
            }
        }
        Err(Error::Conflicts {
            object: format!("Secret {}", self.object),
        })
    }
}
