//! Command-line interface. Every flag has an environment variable of the same meaning.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::aliyun::http::{HttpOptions, RetryPolicy};
use crate::aliyun::{
    CloudError, DEFAULT_CR_ENDPOINT, DEFAULT_METADATA_ENDPOINT, DEFAULT_STS_ENDPOINT, Endpoints,
};
use crate::credentials::{DEFAULT_OIDC_TOKEN_FILE, TokenMode};
use crate::render::DEFAULT_SECRET_NAME;

/// The command line of the `aliyun-acr-credential-helper` binary.
#[derive(Debug, Parser)]
#[command(
    name = "aliyun-acr-credential-helper",
    version,
    about = "Keeps Alibaba Cloud Container Registry pull Secrets fresh and attached to ServiceAccounts"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub cloud: CloudArgs,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// The ServiceAccount admission webhook (turned on by `webhook-configuration` in the ConfigMap).
#[derive(Debug, Clone, ClapArgs)]
pub struct WebhookArgs {
    /// Address every replica serves the webhook on (HTTPS).
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_addr: std::net::SocketAddr,

    /// The Service in front of the replicas, in the configuration namespace.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_SERVICE",
        default_value = "aliyun-acr-credential-helper"
    )]
    pub webhook_service: String,

    /// The Service's webhook port.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_SERVICE_PORT",
        default_value_t = 443
    )]
    pub webhook_service_port: i32,

    /// Register this URL instead of the Service (for a controller running outside the cluster).
    #[arg(long, global = true, env = "ACR_HELPER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Extra names or IP addresses for the serving certificate, comma-separated.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_CERT_SANS",
        value_delimiter = ','
    )]
    pub webhook_cert_sans: Vec<String>,

    /// Name of the MutatingWebhookConfiguration.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_CONFIGURATION",
        default_value = "aliyun-acr-credential-helper"
    )]
    pub webhook_configuration: String,

    /// Name of the Secret holding the webhook's CA and serving certificate (configuration namespace).
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_WEBHOOK_TLS_SECRET",
        default_value = "aliyun-acr-credential-helper-webhook-tls"
    )]
    pub webhook_tls_secret: String,

    /// How long a webhook client may take for the TLS handshake, then for each request's
    /// headers, and for each whole request (body included), before the connection is closed.
    #[arg(long, global = true, env = "ACR_HELPER_WEBHOOK_CLIENT_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub webhook_client_timeout: Duration,

    /// Connections one peer address may hold to the webhook at once (the API server needs a
    /// few: it multiplexes over HTTP/2); more are closed as they arrive.
    #[arg(long, global = true, env = "ACR_HELPER_WEBHOOK_MAX_CONNECTIONS_PER_PEER", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub webhook_max_connections_per_peer: u16,
}

impl WebhookArgs {
    pub fn settings(&self) -> crate::webhook::runtime::WebhookSettings {
        crate::webhook::runtime::WebhookSettings {
            addr: self.webhook_addr,
            service: self.webhook_service.clone(),
            service_port: self.webhook_service_port,
            url: self.webhook_url.clone(),
            extra_sans: self
                .webhook_cert_sans
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            configuration_name: self.webhook_configuration.clone(),
            tls_secret: self.webhook_tls_secret.clone(),
            limits: crate::webhook::server::Limits {
                client_timeout: self.webhook_client_timeout,
                connections_per_peer: usize::from(self.webhook_max_connections_per_peer),
            },
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run,
    /// Remove every imagePullSecrets reference, Secret and webhook registration the controller
    /// made. Works while replicas run: it marks the ConfigMap so they stand down (remove the
    /// annotation aliyun-acr-credential-helper/cleanup to resume), takes the leader Lease, and
    /// waits out the previous leader before removing anything. The chart runs it on uninstall.
    Cleanup {
        /// Remove the mark again once everything is removed (the uninstall hook: the ConfigMap
        /// outlives the release, and a new install must not find it marked). Safe while
        /// replicas run: cleanup holds the Lease, so none can lead for a Lease duration after it.
        #[arg(long, env = "ACR_HELPER_CLEANUP_UNMARK_WHEN_DONE")]
        unmark_when_done: bool,
    },
    /// Validate an acr-configuration ConfigMap manifest offline, with the controller's messages.
    /// Exits 0 when usable, 1 when not.
    CheckConfig {
        /// A YAML file holding the ConfigMap (or just its `data`).
        file: PathBuf,
    },
    /// Print what the controller would do under a configuration, from the live cluster (read
    /// only; never calls the cloud): namespaces that gain or lose the Secret, ServiceAccounts that
    /// gain or lose the reference, webhook registration changes, and the errors check-config
    /// would report. Uses the controller's own decision code. Exits 0, or 1 when the
    /// configuration would be rejected.
    Plan {
        /// A YAML file holding the ConfigMap (or just its `data`); default: the live ConfigMap.
        file: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: PlanOutput,
    },
    /// Move from ACK's aliyun-acr-credential-helper add-on: where this controller's pull Secret
    /// is attached to a ServiceAccount, remove that ServiceAccount's references to the add-on's
    /// Secrets (acr-credential-<hash>, dockerconfigjson, ACR domains only), then delete those
    /// Secrets once nothing (no ServiceAccount, no Pod) names them. Run it with your own
    /// kubeconfig; run it again after Pods are replaced. Exits 0, or 1 when a step failed.
    Migrate {
        /// Print what would be done, change nothing.
        #[arg(long, env = "ACR_HELPER_MIGRATE_DRY_RUN")]
        dry_run: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: PlanOutput,
    },
    /// Show, from the live cluster (read only), every namespace the configuration selects:
    /// served or pending, until when its passwords work, ServiceAccounts patched or pending, and
    /// the last Warning about it. Exits 0 when everything selected is served, 1 otherwise.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: PlanOutput,
    },
    /// A kubelet image credential provider (credentialprovider.kubelet.k8s.io/v1): reads a
    /// CredentialProviderRequest on stdin, writes a CredentialProviderResponse on stdout. No Secret
    /// is written anywhere. See the README's "kubelet credential provider" section.
    CredentialProvider(ProviderArgs),
}

/// The credential provider's configuration (its `args`/`env` in the CredentialProviderConfig).
#[derive(Debug, Clone, ClapArgs)]
pub struct ProviderArgs {
    /// An Enterprise Edition registry host and its instance: HOST=INSTANCE_ID, or
    /// HOST=INSTANCE_ID@REGION when the host does not name its region (custom domains). Repeat it
    /// for each host (public, -vpc, custom); Personal Edition hosts need none.
    #[arg(
        long = "instance",
        env = "ACR_HELPER_PROVIDER_INSTANCES",
        value_delimiter = ','
    )]
    pub instances: Vec<String>,
    /// The cluster's RRSA OIDC provider ARN; required for Pods' ServiceAccount tokens (KEP-4412).
    #[arg(long, env = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN")]
    pub oidc_provider_arn: Option<String>,
    /// The ServiceAccount annotation naming the RAM role (a name in the OIDC provider's account,
    /// or a whole ARN).
    #[arg(
        long,
        env = "ACR_HELPER_PROVIDER_ROLE_ANNOTATION",
        default_value = crate::provider::ROLE_ANNOTATION
    )]
    pub role_annotation: String,
    /// A role assumed on top of the identity obtained (cross-account).
    #[arg(long, env = "ACR_HELPER_PROVIDER_ASSUME_ROLE_ARN")]
    pub assume_role_arn: Option<String>,
    /// An AccessKey file (JSON AccessKeyId/AccessKeySecret) to use instead of the node's RAM role
    /// when no ServiceAccount token comes.
    #[arg(long, env = "ACR_HELPER_PROVIDER_ACCESS_KEY_FILE")]
    pub access_key_file: Option<PathBuf>,
    /// The lifetime asked for assumed roles, in seconds (900-43200).
    #[arg(long, env = "ACR_HELPER_PROVIDER_DURATION_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(900..=43200))]
    pub duration_seconds: u32,
}

/// `plan`'s output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
}

/// What the controller reads and writes in the cluster.
#[derive(Debug, Clone, ClapArgs)]
pub struct KubeArgs {
    /// Namespace of the acr-configuration ConfigMap.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_CONFIG_NAMESPACE",
        default_value = "kube-system"
    )]
    pub config_namespace: String,

    /// Name of the ConfigMap.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_CONFIG_NAME",
        default_value = "acr-configuration"
    )]
    pub config_name: String,

    /// Name of the pull Secret written into every watched namespace.
    #[arg(long, global = true, env = "ACR_HELPER_SECRET_NAME", default_value = DEFAULT_SECRET_NAME)]
    pub secret_name: String,

    /// The Secret (in the ConfigMap's namespace) where the leader keeps the last accepted
    /// configuration, so a rejected edit keeps it in force across restarts and failovers.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_LAST_CONFIG_SECRET",
        default_value = "aliyun-acr-credential-helper-last-config"
    )]
    pub last_config_secret: String,

    /// The Secret (in the ConfigMap's namespace) where the leader keeps its digest key and the
    /// record of the logins it published: what a new leader takes over, never a pull Secret.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_STATE_SECRET",
        default_value = crate::record::DEFAULT_STATE_SECRET
    )]
    pub state_secret: String,

    /// The cluster's region, the default region of instances (default: asked from the ECS
    /// metadata service).
    #[arg(long, global = true, env = "ACR_HELPER_REGION")]
    pub region: Option<String>,
}

/// How the controller runs.
#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    /// The cluster's own identity: managedRole, workerRole, or auto (by cluster age).
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_TOKEN_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub token_mode: TokenMode,

    /// The ACK managed-role addon token Secret, namespace/name.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_ADDON_TOKEN_SECRET",
        default_value = "kube-system/addon.aliyuncsmanagedacrrole.token"
    )]
    pub addon_token_secret: String,

    /// Address of /metrics, /livez and /readyz.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: std::net::SocketAddr,

    /// Also serve /livez and /readyz (not /metrics) here: for --metrics-addr on 127.0.0.1 (a
    /// scraping sidecar), while the kubelet probes the pod's own address.
    #[arg(long, global = true, env = "ACR_HELPER_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,

    /// Elect a leader on a Lease so that only one replica writes.
    #[arg(long, global = true, env = "ACR_HELPER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_LEASE_NAME",
        default_value = "aliyun-acr-credential-helper"
    )]
    pub lease_name: String,

    /// Namespace of the leader Lease (default: the ConfigMap's namespace).
    #[arg(long, global = true, env = "ACR_HELPER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader holds the Lease without renewing it.
    #[arg(long, global = true, env = "ACR_HELPER_LEASE_DURATION", default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub lease_duration: Duration,

    /// How long before another replica may take over a leader that could not renew stops
    /// writing (its renew deadline is the lease duration minus this).
    #[arg(long, global = true, env = "ACR_HELPER_LEASE_GRACE", default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub lease_grace: Duration,

    /// How often every replica reads the Lease, and the leader renews it.
    #[arg(long, global = true, env = "ACR_HELPER_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = crate::duration::parse_duration)]
    pub lease_retry_period: Duration,

    /// Pull Secrets written per second when passwords are refreshed: a refresh of N Secrets is
    /// fetched N/rate seconds ahead of its refresh point (at most 5 minutes, and a third of
    /// `expiring-threshold`) and written as a steady stream over that window.
    #[arg(long, global = true, env = "ACR_HELPER_REFRESH_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub refresh_rate: u32,

    /// Namespaces the leader reconciles at once.
    #[arg(long, global = true, env = "ACR_HELPER_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// This replica's identity in the Lease (default: the pod name from POD_NAME, or the host name).
    #[arg(long, global = true, env = "POD_NAME")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Plain,
}

/// Logging.
#[derive(Debug, Clone, ClapArgs)]
pub struct LogArgs {
    /// json or plain.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// A level (error, warn, info, debug, trace) or a tracing filter such as `info,kube=warn`.
    #[arg(
        long,
        global = true,
        env = "ACR_HELPER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

/// Where and how the Alibaba Cloud APIs are called.
#[derive(Debug, Clone, ClapArgs)]
pub struct CloudArgs {
    /// STS endpoint (AssumeRole, AssumeRoleWithOIDC).
    #[arg(long, global = true, env = "ACR_HELPER_STS_ENDPOINT", default_value = DEFAULT_STS_ENDPOINT)]
    pub sts_endpoint: String,

    /// Container Registry API endpoint; `{region}` is replaced by the instance's region.
    #[arg(long, global = true, env = "ACR_HELPER_CR_ENDPOINT", default_value = DEFAULT_CR_ENDPOINT)]
    pub cr_endpoint: String,

    /// ECS metadata service (worker role credentials, region).
    #[arg(long, global = true, env = "ACR_HELPER_METADATA_ENDPOINT", default_value = DEFAULT_METADATA_ENDPOINT)]
    pub metadata_endpoint: String,

    /// Refuse plain metadata requests when hardened mode (a session token) is unavailable.
    #[arg(long, global = true, env = "ACR_HELPER_METADATA_HARDENED_ONLY")]
    pub metadata_hardened_only: bool,

    /// The RRSA OIDC token file (a projected ServiceAccount token, audience sts.aliyuncs.com),
    /// re-read on every AssumeRoleWithOIDC.
    #[arg(long, global = true, env = "ALIBABA_CLOUD_OIDC_TOKEN_FILE", default_value = DEFAULT_OIDC_TOKEN_FILE)]
    pub oidc_token_file: PathBuf,

    /// Connect timeout of cloud calls (e.g. 5s).
    #[arg(long, global = true, env = "ACR_HELPER_CLOUD_CONNECT_TIMEOUT", default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub cloud_connect_timeout: Duration,

    /// Timeout of one cloud request, sending to last byte (e.g. 10s).
    #[arg(long, global = true, env = "ACR_HELPER_CLOUD_REQUEST_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub cloud_request_timeout: Duration,

    /// Attempts per cloud call when the connection fails or times out, the first included; retries
    /// back off exponentially with jitter. A cloud answer (an error or throttling too) is not
    /// retried within the call: the refresher schedules the next one.
    #[arg(long, global = true, env = "ACR_HELPER_CLOUD_MAX_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub cloud_max_attempts: u32,
}

impl CloudArgs {
    /// The endpoints, validated.
    pub fn endpoints(&self) -> Result<Endpoints, CloudError> {
        let url = |flag: &str, value: &str| {
            let parsed = url::Url::parse(value).map_err(|e| CloudError::Endpoint {
                endpoint: value.to_owned(),
                detail: format!("{flag}: {e}"),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(CloudError::Endpoint {
                    endpoint: value.to_owned(),
                    detail: format!("{flag}: needs an http(s) URL with a host"),
                });
            }
            Ok(parsed)
        };
        // The template must be a URL once a region is filled in.
        url(
            "--cr-endpoint",
            &self.cr_endpoint.replace("{region}", "cn-hangzhou"),
        )?;
        Ok(Endpoints {
            sts: url("--sts-endpoint", &self.sts_endpoint)?,
            cr_template: self.cr_endpoint.clone(),
            metadata: url("--metadata-endpoint", &self.metadata_endpoint)?,
        })
    }

    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            connect_timeout: self.cloud_connect_timeout,
            request_timeout: self.cloud_request_timeout,
            retry: RetryPolicy {
                max_attempts: self.cloud_max_attempts,
                ..RetryPolicy::default()
            },
        }
    }
}

#[cfg(test)]
mod tests;
