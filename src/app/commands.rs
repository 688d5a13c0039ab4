//! The commands other than `run`: `check-config`, `plan`, `status`, `migrate`, `cleanup` and
//! `credential-provider`. Each reads what it needs; only `cleanup` and `migrate` write.

use super::*;

pub(super) async fn cleanup(args: Args, unmark_when_done: bool) -> Result<i32, AppError> {
    let config = kube_config().await?;
    // Never a replica's own identity (run from inside a pod, POD_NAME names that replica).
    let identity = format!("cleanup-{}-{:08x}", identity(&args), rand::random::<u32>());
    let writes = client(&config, &identity, None)?;
    let lease = client(&config, &identity, Some(Duration::from_secs(5)))?;
    let settings = CleanupSettings {
        config_namespace: args.kube.config_namespace.clone(),
        config_name: args.kube.config_name.clone(),
        secret_name: args.kube.secret_name.clone(),
        last_config_secret: args.kube.last_config_secret.clone(),
        state_secret: args.kube.state_secret.clone(),
        webhook_configuration: args.webhook.webhook_configuration.clone(),
        webhook_tls_secret: args.webhook.webhook_tls_secret.clone(),
        lease: lease_config(&args, identity),
        unmark_when_done,
    };
    let work = controller::cleanup::cleanup(writes, lease, &settings, Arc::new(Metrics::new()));
    let report = tokio::time::timeout(CLEANUP_TIMEOUT, work)
        .await
        .map_err(|_| AppError::CleanupTimeout(CLEANUP_TIMEOUT))??;
    println!(
        "removed {} imagePullSecrets reference(s), {} Secret(s){}",
        report.references,
        report.secrets,
        if report.webhook {
            " and the MutatingWebhookConfiguration"
        } else {
            ""
        }
    );
    Ok(0)
}

/// `credential-provider`: one request on stdin, one response on stdout; exit 1 with a one-line
/// message on stderr (never a secret) when it cannot answer.
pub(super) async fn credential_provider(args: &Args, p: &crate::cli::ProviderArgs) -> i32 {
    match credential_provider_answer(args, p).await {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("aliyun-acr-credential-helper credential-provider: {e}");
            1
        }
    }
}

async fn credential_provider_answer(
    args: &Args,
    p: &crate::cli::ProviderArgs,
) -> Result<String, crate::provider::ProviderError> {
    use crate::provider::{self, ProviderConfig, ProviderError};
    let mut instances = std::collections::BTreeMap::new();
    for item in &p.instances {
        let (host, target) = item.split_once('=').ok_or_else(|| {
            ProviderError::Config(format!(
                "--instance {item:?} is not HOST=INSTANCE_ID[@REGION]"
            ))
        })?;
        let (id, region) = match target.split_once('@') {
            Some((id, r)) => (id, Some(r.to_owned())),
            None => (target, None),
        };
        if !id.starts_with("cri-") || region.as_deref().is_some_and(|r| !is_region_id(r)) {
            return Err(ProviderError::Config(format!(
                "--instance {item:?}: expected HOST=cri-...[@region-id]"
            )));
        }
        instances.insert(host.trim().to_ascii_lowercase(), (id.to_owned(), region));
    }
    let cfg = ProviderConfig {
        instances,
        region: args.kube.region.clone(),
        oidc_provider_arn: p.oidc_provider_arn.clone(),
        role_annotation: p.role_annotation.clone(),
        assume_role_arn: p.assume_role_arn.clone(),
        duration_seconds: p.duration_seconds,
    };
    // One small JSON document; the kubelet closes stdin after it.
    let mut input = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), 1 << 20),
        &mut input,
    )
    .map_err(|e| ProviderError::Request(format!("reading stdin: {e}")))?;
    let request = provider::api::parse_request(&input).map_err(ProviderError::Request)?;
    let endpoints = args.cloud.endpoints()?;
    let http = Http::new(&args.cloud.http_options())?;
    let node = match &p.access_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ProviderError::Config(format!("--access-key-file {}: {e}", path.display()))
            })?;
            provider::NodeIdentity::AccessKey(provider::parse_access_key_file(&text)?)
        }
        None => provider::NodeIdentity::Metadata(Metadata::new(
            http.clone(),
            endpoints.metadata.clone(),
            args.cloud.metadata_hardened_only,
        )),
    };
    let clients = provider::Clients {
        sts: Sts::new(http.clone(), endpoints.sts.clone()),
        cr: Cr::new(http, endpoints.cr_template.clone()),
        node,
    };
    Ok(provider::answer(&request, &cfg, &clients).await?.to_json())
}

/// Reads the cluster into an index as the watches would: Namespaces (metadata), ServiceAccounts
/// (trimmed), the Secrets of our name; a page at a time.
async fn read_index(client: &Client, secret_name: &str) -> Result<crate::index::Index, AppError> {
    let mut index = crate::index::Index::new(secret_name);
    let lp = kube::api::ListParams::default;
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut page_params = lp().limit(500);
    loop {
        let page = namespaces.list_metadata(&page_params).await?;
        for ns in &page.items {
            index.apply_namespace(ns);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => page_params = page_params.continue_token(&c),
            None => break,
        }
    }
    crate::watches::list_pages(
        &Api::<crate::index::ServiceAccountView>::all(client.clone()),
        lp(),
        50,
        |page| {
            for sa in &page {
                index.apply_service_account(sa);
            }
        },
    )
    .await?;
    let by_name = lp().fields(&format!("metadata.name={secret_name}"));
    crate::watches::list_pages(&Api::<Secret>::all(client.clone()), by_name, 50, |page| {
        for s in &page {
            index.apply_secret(s);
        }
    })
    .await?;
    Ok(index)
}

/// `status`: every selected namespace, served or not and why (see [`crate::status`]).
pub(super) async fn status(args: &Args, output: PlanOutput) -> Result<i32, AppError> {
    use crate::status::StatusReport;
    use k8s_openapi::api::core::v1::ConfigMap;
    let client = client(&kube_config().await?, "status", None)?;
    let k = &args.kube;
    let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), &k.config_namespace)
        .get_opt(&k.config_name)
        .await?
    else {
        println!(
            "summary: no ConfigMap {}/{}: the controller does nothing",
            k.config_namespace, k.config_name
        );
        return Ok(1);
    };
    let data = cm.data.unwrap_or_default();
    let cfg = match config::parse(&data, Some(k.region.as_deref().unwrap_or("cn-hangzhou"))) {
        Ok(p) => p.config,
        Err(e) => {
            println!(
                "summary: the live configuration is rejected ({e}); the last accepted one is in force, see `kubectl describe cm {}`",
                k.config_name
            );
            return Ok(1);
        }
    };
    let index = read_index(&client, &k.secret_name).await?;
    let mut notes = Vec::new();
    let key = digest_key(&client, &k.config_namespace, &k.state_secret, &mut notes).await;
    let warnings = last_warnings(&client, &mut notes).await;
    let report = StatusReport::build(&index, &cfg, key.as_ref(), &warnings, notes);
    match output {
        PlanOutput::Text => print!("{}", report.text()),
        PlanOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
    }
    Ok(if report.healthy() { 0 } else { 1 })
}

/// The digest key from the state Secret, which tells edited Secrets apart (`None` when it
/// cannot be read: a note says why).
async fn digest_key(
    client: &Client,
    namespace: &str,
    state_secret: &str,
    notes: &mut Vec<String>,
) -> Option<crate::record::DigestKey> {
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(state_secret)
        .await
    {
        Ok(Some(s)) => s
            .data
            .and_then(|d| d.get(crate::record::DIGEST_KEY_FIELD).cloned())
            .and_then(|b| crate::record::DigestKey::from_bytes(&b.0)),
        Ok(None) => None,
        Err(e) => {
            notes.push(format!(
                "the state Secret cannot be read ({}): edited Secrets are not told apart",
                crate::kube_errors::without_message(&e)
            ));
            None
        }
    }
}

/// The last Warning Event this controller reported about each namespace (or an object in it).
async fn last_warnings(
    client: &Client,
    notes: &mut Vec<String>,
) -> std::collections::BTreeMap<String, String> {
    let mut warnings = std::collections::BTreeMap::new();
    let events = Api::<k8s_openapi::api::events::v1::Event>::all(client.clone());
    let list = match events
        .list(&kube::api::ListParams::default().fields("type=Warning"))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            notes.push(format!(
                "Events cannot be read ({}): no last warnings",
                crate::kube_errors::without_message(&e)
            ));
            return warnings;
        }
    };
    let mut items: Vec<_> = list
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(REPORTER))
        .collect();
    items.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
    });
    for e in items {
        let Some(r) = &e.regarding else { continue };
        let ns = if r.kind.as_deref() == Some("Namespace") {
            r.name.clone()
        } else {
            r.namespace.clone()
        };
        if let Some(ns) = ns {
            let text = format!(
                "{} on {} {}: {}",
                e.reason.unwrap_or_default(),
                r.kind.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
                e.note.unwrap_or_default()
            );
            warnings.insert(ns, text);
        }
    }
    warnings
}

/// `migrate`: from ACK's add-on (see [`crate::migrate`]).
pub(super) async fn migrate(
    args: &Args,
    dry_run: bool,
    output: PlanOutput,
) -> Result<i32, AppError> {
    use crate::migrate::apply::{Target, apply, read_and_plan};
    let client = client(&kube_config().await?, "migrate", None)?;
    let target = Target {
        config_namespace: args.kube.config_namespace.clone(),
        config_name: args.kube.config_name.clone(),
        secret_name: args.kube.secret_name.clone(),
        region: args.kube.region.clone(),
    };
    let result = match read_and_plan(&client, &target).await {
        Ok(planned) if dry_run => Ok(planned),
        Ok(planned) => apply(&client, &target, &planned).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(m) => {
            match output {
                PlanOutput::Text => print!("{}", m.text(!dry_run)),
                PlanOutput::Json => {
                    println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default())
                }
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("migrate: {e}; nothing after it was done, run migrate again");
            Ok(1)
        }
    }
}

/// `plan`: reads the cluster into an index as the watches would, and prints what the
/// controller's planner decides under the configuration of `file` (or the live one).
pub(super) async fn plan(
    args: &Args,
    file: Option<&std::path::Path>,
    output: PlanOutput,
) -> Result<i32, AppError> {
    use crate::plan::report::{PlanReport, WebhookSummary};
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::ConfigMap;
    let client = client(&kube_config().await?, "plan", None)?;
    let k = &args.kube;
    let data = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AppError::Usage(format!("{}: {e}", path.display())))?;
            config::manifest_data(&text)
                .map_err(|e| AppError::Usage(format!("{}: {e}", path.display())))?
        }
        None => {
            let cms = Api::<ConfigMap>::namespaced(client.clone(), &k.config_namespace);
            match cms.get_opt(&k.config_name).await? {
                Some(cm) => cm.data.unwrap_or_default(),
                None => {
                    println!(
                        "summary: no ConfigMap {}/{}: the controller does nothing",
                        k.config_namespace, k.config_name
                    );
                    return Ok(0);
                }
            }
        }
    };
    let report = match config::parse(&data, Some(k.region.as_deref().unwrap_or("cn-hangzhou"))) {
        Err(errors) => PlanReport::rejected(
            errors.0.iter().map(ToString::to_string).collect(),
            Vec::new(),
        ),
        Ok(parsed) => {
            let index = read_index(&client, &k.secret_name).await?;
            let current = Api::<MutatingWebhookConfiguration>::all(client.clone())
                .get_opt(&args.webhook.webhook_configuration)
                .await?
                .map(|m| {
                    m.webhooks
                        .unwrap_or_default()
                        .into_iter()
                        .map(|w| WebhookSummary {
                            name: w.name,
                            failure_policy: w.failure_policy.unwrap_or_default(),
                            timeout_seconds: w.timeout_seconds.unwrap_or_default(),
                        })
                        .collect()
                });
            PlanReport::build(&index, &parsed.config, parsed.warnings, current)
        }
    };
    match output {
        PlanOutput::Text => print!("{}", report.text()),
        PlanOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
    }
    Ok(if report.accepted { 0 } else { 1 })
}

/// Reads a ConfigMap manifest (or a bare `data` mapping) and validates it; prints what it finds.
/// Returns the exit code: 0 usable, 1 not usable, 2 unreadable.
pub fn check_config(path: &std::path::Path, region: Option<&str>) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 2;
        }
    };
    let data = match config::manifest_data(&text) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 2;
        }
    };
    let assumed = "cn-hangzhou";
    if region.is_none() {
        eprintln!(
            "note: no --region given; instances without regionId are checked as if the cluster were in {assumed}"
        );
    }
    match config::parse(&data, Some(region.unwrap_or(assumed))) {
        Ok(parsed) => {
            for w in &parsed.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: usable ({} instance(s))",
                path.display(),
                parsed.config.instances.len()
            );
            for line in parsed.config.describe_instances() {
                println!("  {line}");
            }
            if parsed.config.rrsa_enabled
                && parsed
                    .config
                    .instances
                    .iter()
                    .any(|i| i.auth.rrsa.is_some())
            {
                println!(
                    "  rrsa: enable: true needs a projected ServiceAccount token (audience sts.aliyuncs.com) in the controller's pods: with the chart, set rrsa.enabled=true (it mounts one at /var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token)"
                );
            }
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            println!(
                "{}: rejected ({} problem(s))",
                path.display(),
                errors.0.len()
            );
            1
        }
    }
}
