//! One leadership term: the workers that carry out each namespace's plan, the queueing of
//! namespaces as the index, the configuration and the content change, and the configuration
//! duties (Events about the ConfigMap, the last accepted configuration).

use super::*;

/// One leadership term.
pub(super) struct Term {
    pub(super) shared: Arc<Shared>,
    pub(super) writer: Writer,
    pub(super) events: Events,
    pub(super) content: watch::Receiver<Option<Arc<Content>>>,
    pub(super) queue: WorkQueue,
    pub(super) failures: Mutex<HashMap<Arc<str>, u32>>,
    /// Namespaces reported as blocked by a foreign Secret (reported once).
    pub(super) blocked: Mutex<HashSet<Arc<str>>>,
}

pub(super) fn namespace_reference(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn service_account_reference(ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ServiceAccount".into()),
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

/// Runs `f` with what `content` (the logins in force, if any) makes of each namespace.
fn with_desired<R>(content: Option<&Content>, f: impl FnOnce(Desired<'_>) -> R) -> R {
    match content {
        Some(c) => f(Desired::Content(&|set| c.for_set(set))),
        None => f(Desired::Unavailable),
    }
}

/// Whether a pull Secret of ours that is about to be rewritten was edited by somebody else: its
/// content is not one the controller wrote (see [`crate::plan::authentic`]). Right after a first
/// install or an upgrade (`fresh_key`), a Secret without any digest is one an earlier version
/// wrote, not an edit.
fn edited_by_others(secret: &crate::index::SecretState, content: &Content) -> bool {
    if !secret.managed || crate::plan::authentic(secret, &content.key) {
        return false;
    }
    !(content.fresh_key && secret.digest.is_none())
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Term {
    /// The content to write under `cfg`: only content made for exactly its instances (right
    /// after an edit the refresher may not have caught up yet).
    fn desired(&self, cfg: &Config) -> Option<Arc<Content>> {
        self.content
            .borrow()
            .clone()
            .filter(|c| c.configured == cfg.instances)
    }

    /// The plan of one namespace now, with the state and the content it was made from.
    fn plan(
        &self,
        ns: &str,
    ) -> Option<(NamespacePlan, crate::index::NsState, Option<Arc<Content>>)> {
        let view = self.shared.view.borrow().clone();
        let cfg = view.config()?;
        let content = self.desired(cfg);
        let index = self.shared.index.read();
        let state = index.namespace(ns)?;
        let plan = with_desired(content.as_deref(), |d| plan_namespace(ns, state, cfg, d));
        Some((plan, state.clone(), content))
    }

    /// The namespaces with work: a plan that is not empty, or a foreign Secret on our name not
    /// reported yet.
    fn due(&self, cfg: &Config, desired: Desired<'_>) -> Vec<Arc<str>> {
        let blocked = lock(&self.blocked);
        let index = self.shared.index.read();
        index
            .namespaces()
            .filter(|(name, state)| {
                let plan = plan_namespace(name, state, cfg, desired);
                !plan.is_empty() || (plan.secret == SecretStep::Blocked && !blocked.contains(*name))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Queues every namespace whose plan is not empty, at once, or (a refresh) at evenly spaced
    /// instants until `spread_until`.
    pub(super) fn enqueue_all_until(&self, spread_until: Option<Timestamp>) {
        let Some(until) = spread_until.filter(|u| *u > Timestamp::now()) else {
            self.enqueue_all();
            return;
        };
        let view = self.shared.view.borrow().clone();
        let Some(cfg) = view.config() else { return };
        let content = self.desired(cfg);
        let mut due = with_desired(content.as_deref(), |d| self.due(cfg, d));
        due.sort();
        let now = Timestamp::now();
        let at = tokio::time::Instant::now();
        tracing::info!(namespaces = due.len(), until = %until, "refresh spread over the window");
        let slots = spread::slots(now, until, due.len());
        for (ns, slot) in due.into_iter().zip(slots) {
            let offset = Duration::try_from(slot.duration_since(now)).unwrap_or(Duration::ZERO);
            self.queue.add_at(ns, at + offset);
        }
    }

    /// Queues every namespace whose plan is not empty (after a configuration or content change).
    pub(super) fn enqueue_all(&self) {
        let view = self.shared.view.borrow().clone();
        let Some(cfg) = view.config() else { return };
        let content = self.desired(cfg);
        let due = with_desired(content.as_deref(), |d| self.due(cfg, d));
        if !due.is_empty() {
            tracing::debug!(namespaces = due.len(), "queued for reconcile");
        }
        for ns in due {
            self.queue.add(ns);
        }
    }

    pub(super) fn enqueue_if_needed(&self, ns: Arc<str>) {
        match self.plan(&ns) {
            Some((plan, _, _)) if !plan.is_empty() => self.queue.add(ns),
            Some((plan, _, _)) if plan.secret == SecretStep::Blocked => self.queue.add(ns),
            _ => {
                lock(&self.blocked).remove(&ns);
            }
        }
    }

    /// Carries out the plan of namespace `ns`: the Secret first, then references added, then
    /// removed, and the Secret deleted last, once nothing of ours refers to it.
    async fn reconcile(&self, ns: &Arc<str>) -> Result<(), Error> {
        let Some((plan, state, content)) = self.plan(ns) else {
            return Ok(());
        };
        if plan.secret == SecretStep::Blocked {
            self.report_blocked(ns).await;
            return Ok(());
        }
        lock(&self.blocked).remove(ns);
        if plan.is_empty() {
            return Ok(());
        }
        // The Secret first: without it no reference may be added. The plan only creates or
        // updates with content (the same snapshot it was made with).
        if let (Some(secret), Some(content)) = (&plan.content, &content) {
            self.write_secret(ns, secret, content, &state).await?;
        }
        let total = plan.references.len() + usize::from(plan.secret == SecretStep::Delete);
        let mut errors = self.write_references(ns, &plan, &state).await?;
        if plan.secret == SecretStep::Delete
            && let Some(secret) = &state.secret
            // Only once no reference of ours is left behind in this namespace.
            && errors.is_empty()
        {
            match self
                .writer
                .delete_secret(ns, &self.shared.settings.secret_name, &secret.uid)
                .await
            {
                Ok(_) => self
                    .shared
                    .index
                    .record(|i| i.deleted_secret(ns, &secret.uid)),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            failed => Err(Error::Several {
                namespace: ns.to_string(),
                failed,
                total,
                first: Box::new(errors.remove(0)),
            }),
        }
    }

    /// A Secret of our name that is not ours: said once (an Event on the namespace) until it
    /// goes.
    async fn report_blocked(&self, ns: &Arc<str>) {
        if lock(&self.blocked).insert(ns.clone()) {
            let e = Error::ForeignSecret {
                object: format!("{ns}/{}", self.shared.settings.secret_name),
            };
            tracing::warn!(namespace = %ns, "{e}");
            self.events
                .record(
                    &namespace_reference(ns),
                    Reason::SecretNameTaken,
                    e.to_string(),
                )
                .await;
        }
    }

    /// Writes the pull Secret, teaches the index what the server answered, and reports a repair
    /// of a Secret somebody else edited.
    async fn write_secret(
        &self,
        ns: &Arc<str>,
        secret: &SecretContent,
        content: &Content,
        state: &NsState,
    ) -> Result<(), Error> {
        let written = self
            .writer
            .ensure_secret(
                ns,
                &self.shared.settings.secret_name,
                secret,
                state.secret.as_ref(),
            )
            .await?;
        self.shared.index.record(|i| {
            i.apply_secret(&written);
        });
        if let Some(edited) = state
            .secret
            .as_ref()
            .filter(|s| edited_by_others(s, content))
        {
            self.report_repair(ns, edited).await;
        }
        Ok(())
    }

    /// The plan's reference steps, additions first, a few ServiceAccounts at once: one that
    /// cannot be patched does not stop the others (its failure is an Event on it, and among the
    /// errors returned). Only the end of the term stops them all.
    async fn write_references(
        &self,
        ns: &Arc<str>,
        plan: &NamespacePlan,
        state: &NsState,
    ) -> Result<Vec<Error>, Error> {
        let settings = &self.shared.settings;
        let index = &self.shared.index;
        let mut steps = plan.references.clone();
        steps.sort_by_key(|s| !s.add);
        let outcomes: Vec<(Arc<str>, Result<(), Error>)> = futures::stream::iter(steps)
            .map(|step| {
                let known = state.service_accounts.get(&step.service_account).cloned();
                async move {
                    let Some(known) = known else {
                        return (step.service_account, Ok(()));
                    };
                    let result = self
                        .writer
                        .ensure_reference(
                            ns,
                            &step.service_account,
                            &known,
                            &settings.secret_name,
                            step.add,
                        )
                        .await
                        .map(|patched| {
                            if let Some(sa) = patched {
                                index.record(|i| {
                                    i.apply_service_account(
                                        &crate::index::ServiceAccountView::from(&sa),
                                    );
                                });
                            }
                        });
                    (step.service_account, result)
                }
            })
            .buffer_unordered(PATCHES_PER_NAMESPACE)
            .collect()
            .await;
        let mut errors = Vec::new();
        for (sa, outcome) in outcomes {
            match outcome {
                Ok(()) => {}
                Err(Error::NotLeader) => return Err(Error::NotLeader),
                Err(e) => {
                    tracing::warn!(namespace = %ns, service_account = %sa, error = %e, "could not patch imagePullSecrets");
                    self.events
                        .record(
                            &service_account_reference(ns, &sa),
                            Reason::PatchFailed,
                            e.to_string(),
                        )
                        .await;
                    errors.push(e);
                }
            }
        }
        Ok(errors)
    }

    /// Until when the passwords in namespace `ns`'s Secret work: its expiry annotation, when the
    /// controller wrote that Secret (somebody else's annotation decides nothing).
    fn valid_until(&self, ns: &str) -> Option<Timestamp> {
        let content = self.content.borrow().clone()?;
        let index = self.shared.index.read();
        index
            .namespace(ns)
            .and_then(|n| n.secret.as_ref())
            .filter(|s| crate::plan::authentic(s, &content.key))
            .and_then(|s| s.expires_at.as_deref())
            .and_then(|t| t.parse().ok())
    }

    /// A Warning Event on a pull Secret that somebody else had edited and the controller has just
    /// rewritten.
    async fn report_repair(&self, ns: &str, edited: &crate::index::SecretState) {
        let name = &self.shared.settings.secret_name;
        tracing::warn!(namespace = %ns, secret = %name, "the pull Secret was edited by someone else; rewritten with the controller's content");
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            namespace: Some(ns.to_owned()),
            name: Some(name.clone()),
            uid: Some(edited.uid.to_string()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        self.events
            .record(
                &reference,
                Reason::SecretRepaired,
                format!("Secret {ns}/{name} held content the controller did not write (edited by someone else); it was rewritten with the controller's, and nothing of the edit was kept or copied anywhere"),
            )
            .await;
    }

    pub(super) async fn work(self: Arc<Self>) {
        let metrics = self.shared.metrics.clone();
        loop {
            let ns = self.queue.next().await;
            let result = self.reconcile(&ns).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics
                .reconciles
                .get_or_create(&ResultLabel {
                    result: label.to_owned(),
                })
                .inc();
            match result {
                Ok(()) => {
                    let failed = lock(&self.failures).remove(&ns);
                    if let Some(n) = failed {
                        tracing::info!(namespace = %ns, after_failures = n, "served again");
                        self.events
                            .record(
                                &namespace_reference(&ns),
                                Reason::Served,
                                format!("served again after {n} failed attempt(s): the pull Secret and the ServiceAccounts' references are as configured"),
                            )
                            .await;
                    }
                }
                // The term is over (the queue goes with it); should it go on after all, the
                // namespace is tried again.
                Err(Error::NotLeader) => {
                    if self.writer.may_write() {
                        self.queue.add_at(
                            ns.clone(),
                            tokio::time::Instant::now() + Duration::from_secs(1),
                        );
                    }
                }
                Err(e) => {
                    let failures = {
                        let mut f = lock(&self.failures);
                        let n = f.entry(ns.clone()).or_insert(0);
                        *n = n.saturating_add(1);
                        *n
                    };
                    metrics
                        .reconcile_errors
                        .get_or_create(&CategoryLabel {
                            category: e.category().to_owned(),
                        })
                        .inc();
                    let delay = retry_delay(
                        failures,
                        Timestamp::now(),
                        self.valid_until(&ns),
                        rand::random(),
                    );
                    tracing::warn!(namespace = %ns, error = %e, category = e.category(), retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "reconcile failed");
                    if failures == 1 {
                        let reason = match &e {
                            Error::ForeignSecret { .. } => Reason::SecretNameTaken,
                            _ => Reason::ReconcileFailed,
                        };
                        self.events
                            .record(&namespace_reference(&ns), reason, e.to_string())
                            .await;
                    }
                    self.queue
                        .add_at(ns.clone(), tokio::time::Instant::now() + delay);
                }
            }
            self.queue.done(&ns);
        }
    }

    /// The leader's duties about the configuration itself: persisting the accepted one, the
    /// webhook's registration, Events on rejected edits. What fails is tried again soon.
    pub(super) async fn configuration_duties(self: Arc<Self>) {
        let mut view = self.shared.view.clone();
        let mut reported: Option<String> = None;
        let mut registered: Option<registration::Registration> = None;
        let mut persisted_ok = false;
        // The webhook certificate is checked for renewal every hour.
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        hourly.tick().await;
        let mut force = false;
        loop {
            let v = view.borrow_and_update().clone();
            let mut retry = false;
            if let Ok(in_force) = &v.state {
                match self.persist(&v, in_force).await {
                    Ok(()) => persisted_ok = true,
                    Err(Error::NotLeader) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not persist the accepted configuration; retrying");
                        persisted_ok = false;
                        retry = true;
                    }
                }
                let wanted = registration::Registration::of(
                    &in_force.config,
                    &self.shared.settings.secret_name,
                );
                if force || registered.as_ref() != Some(&wanted) {
                    match registration::reconcile(
                        &self.writer,
                        &self.shared.webhook,
                        &self.shared.settings.config_namespace,
                        &wanted,
                    )
                    .await
                    {
                        Ok(()) => registered = Some(wanted),
                        Err(registration::RegisterError::Write(Error::NotLeader)) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not register the admission webhook");
                            if let Some(cm) = &v.configmap {
                                self.events
                                    .record(
                                        cm,
                                        Reason::WebhookFailed,
                                        format!("admission webhook: {e}"),
                                    )
                                    .await;
                            }
                            retry = true;
                        }
                    }
                }
            }
            self.report(&v, &mut reported).await;
            let backoff = if retry {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(24 * 3600)
            };
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() { return }
                    force = false;
                }
                _ = hourly.tick() => force = true,
                _ = tokio::time::sleep(backoff) => force = !persisted_ok || registered.is_none(),
            }
        }
    }

    /// A Warning Event when the live ConfigMap is rejected, once per ConfigMap version.
    async fn report(&self, v: &ConfigView, reported: &mut Option<String>) {
        let (Some(errors), Some(cm)) = (&v.rejected, &v.configmap) else {
            *reported = None;
            return;
        };
        let key = format!("{:?}:{errors}", cm.resource_version);
        if reported.as_deref() == Some(key.as_str()) {
            return;
        }
        let s = &self.shared.settings;
        let consequence = match &v.state {
            Ok(InForce {
                origin: Origin::Previous,
                ..
            }) => "the last accepted configuration (accepted by this replica before the edit) stays in force".to_owned(),
            Ok(InForce {
                origin: Origin::LastAccepted,
                accepted_at,
                ..
            }) => format!(
                "the last accepted configuration (persisted in Secret {}/{}{}) stays in force",
                s.config_namespace,
                s.last_config_secret,
                accepted_at.map(|t| format!(", accepted at {t}")).unwrap_or_default()
            ),
            Ok(InForce { origin: Origin::Live, .. }) => return,
            Err(Idle::NothingUsable) => {
                "no configuration was ever accepted, so nothing is written until the ConfigMap is fixed".to_owned()
            }
            Err(_) => return,
        };
        self.events
            .record(
                cm,
                Reason::InvalidConfiguration,
                format!("acr-configuration rejected, {consequence}: {errors}"),
            )
            .await;
        *reported = Some(key);
    }

    /// Keeps the Secret of the last accepted configuration equal to the configuration this
    /// replica accepted (the live ConfigMap, or the one it accepted before a rejected edit).
    async fn persist(&self, v: &ConfigView, in_force: &InForce) -> Result<(), Error> {
        if in_force.origin == Origin::LastAccepted
            || v.persisted.as_ref().map(|p| &*p.data) == Some(&*in_force.data)
        {
            return Ok(());
        }
        self.write_last_config(&in_force.data, in_force.resource_version.as_deref())
            .await
    }

    async fn write_last_config(
        &self,
        data: &RawConfig,
        cm_version: Option<&str>,
    ) -> Result<(), Error> {
        let s = &self.shared.settings;
        let api = Api::<Secret>::namespaced(self.writer.client().clone(), &s.config_namespace);
        let name = &s.last_config_secret;
        let object = format!("{}/{name}", s.config_namespace);
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error("get", "Secret", &object, &e))?;
        if let Some(e) = &existing
            && !crate::render::is_managed(&e.metadata)
        {
            return Err(Error::ForeignSecret { object });
        }
        let mut annotations = std::collections::BTreeMap::from([(
            ACCEPTED_AT_ANNOTATION.to_owned(),
            Timestamp::now().to_string(),
        )]);
        if let Some(rv) = cm_version {
            annotations.insert(CONFIGMAP_VERSION_ANNOTATION.to_owned(), rv.to_owned());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(s.config_namespace.clone()),
                labels: Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())].into()),
                annotations: Some(annotations),
                resource_version: existing
                    .as_ref()
                    .and_then(|e| e.metadata.resource_version.clone()),
                ..Default::default()
            },
            data: Some(
                [(
                    LAST_CONFIG_KEY.to_owned(),
                    k8s_openapi::ByteString(serde_json::to_vec(&data.0).unwrap_or_default()),
                )]
                .into(),
            ),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        let pp = Writer::post();
        let written = match existing {
            None => self.writer.write(api.create(&pp, &secret)).await?,
            Some(_) => self.writer.write(api.replace(name, &pp, &secret)).await?,
        };
        written.map_err(|e| kube_error("write", "Secret", &object, &e))?;
        self.shared.metrics.write("last_config");
        tracing::info!(secret = %name, "persisted the accepted configuration");
        Ok(())
    }
}
