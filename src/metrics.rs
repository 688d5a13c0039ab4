//! Prometheus metrics. Labels are low-cardinality and never carry a secret: APIs, results, error
//! categories, instance ids and kinds of write.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudCallLabels {
    pub api: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabel {
    /// Not `instance`: Prometheus sets that label on every scraped series (the target), and
    /// would rename ours to `exported_instance`.
    pub acr_instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceCategoryLabels {
    pub acr_instance: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `serviceaccounts` or `pods`.
    pub webhook: String,
    /// `patched`, `unchanged` or `invalid` (a request that could not be read; still allowed).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// The latency buckets of the webhook, in seconds: 1 ms to about 4 s.
fn webhook_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 13,
    ))
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_errors: Family<CategoryLabel, Counter>,
    pub cloud_calls: Family<CloudCallLabels, Counter>,
    pub token_expiry: Family<InstanceLabel, Gauge>,
    pub credential_errors: Family<InstanceCategoryLabels, Counter>,
    pub writes: Family<WriteLabel, Counter>,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    pub webhook_duration: Family<WebhookLabel, Histogram, fn() -> Histogram>,
    /// Waits of a webhook for a brand-new namespace's pull Secret: `appeared` or `timed_out`.
    pub webhook_secret_waits: Family<OutcomeLabel, Counter>,
    pub build_info: Family<VersionLabel, Gauge>,
    /// Set at scrape time from the index.
    pub secrets_managed: Gauge,
    pub config_valid: Gauge,
    pub config_present: Gauge,
    pub config_last_accepted: Gauge,
    pub leader: Gauge,
    pub degraded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("acr_helper");
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            cloud_calls: Family::default(),
            token_expiry: Family::default(),
            credential_errors: Family::default(),
            writes: Family::default(),
            webhook_requests: Family::default(),
            webhook_duration: Family::new_with_constructor(webhook_buckets),
            webhook_secret_waits: Family::default(),
            build_info: Family::default(),
            secrets_managed: Gauge::default(),
            config_valid: Gauge::default(),
            config_present: Gauge::default(),
            config_last_accepted: Gauge::default(),
            leader: Gauge::default(),
            degraded: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Namespace reconciles by result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "cloud_calls",
            "Alibaba Cloud API calls (each attempt) by API and result",
            m.cloud_calls.clone(),
        );
        registry.register(
            "token_expiry_timestamp_seconds",
            "When each instance's current registry password stops working (Unix time)",
            m.token_expiry.clone(),
        );
        registry.register(
            "credential_errors",
            "Failed attempts to obtain an instance's registry login, by instance and error category",
            m.credential_errors.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API by kind",
            m.writes.clone(),
        );
        registry.register(
            "secrets_managed",
            "Pull Secrets the controller currently manages",
            m.secrets_managed.clone(),
        );
        registry.register(
            "config_valid",
            "1 if the last acr-configuration seen was usable, 0 if it was rejected",
            m.config_valid.clone(),
        );
        registry.register(
            "config_present",
            "1 if the acr-configuration ConfigMap exists",
            m.config_present.clone(),
        );
        registry.register(
            "config_last_accepted",
            "1 while the configuration in force is the last accepted one, not the live ConfigMap (which was rejected)",
            m.config_last_accepted.clone(),
        );
        registry.register(
            "degraded",
            "1 while this replica leads and holds no credentials for the configuration in force (it retries; the ConfigMap's Events say why)",
            m.degraded.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        registry.register(
            "webhook_requests",
            "Admission requests answered, by webhook and result (every one is allowed)",
            m.webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time to answer an admission request, by webhook",
            m.webhook_duration.clone(),
        );
        registry.register(
            "webhook_secret_waits",
            "Waits of a webhook for a new namespace's pull Secret before answering, by outcome",
            m.webhook_secret_waits.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the version label says which build runs",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        Metrics { registry, ..m }
    }

    pub fn write(&self, kind: &str) {
        self.writes
            .get_or_create(&WriteLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn cloud_call(&self, api: &str, result: &str) {
        self.cloud_calls
            .get_or_create(&CloudCallLabels {
                api: api.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_prefixed_families() {
        let m = Metrics::new();
        m.cloud_call("GetAuthorizationToken", "ok");
        m.write("secret_create");
        m.config_valid.set(1);
        let text = m.encode();
        assert!(
            text.contains(
                r#"acr_helper_cloud_calls_total{api="GetAuthorizationToken",result="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"acr_helper_api_writes_total{kind="secret_create"} 1"#),
            "{text}"
        );
        assert!(text.contains("acr_helper_config_valid 1"), "{text}");
        assert!(
            text.contains(&format!(
                "acr_helper_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    /// Every `acr_helper_` name in `text` (a PromQL expression, a dashboard).
    fn names_in(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("acr_helper_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
        out
    }

    /// The labels every `by (...)` in `text` groups by.
    fn grouped_by(text: &str) -> Vec<String> {
        text.split("by (")
            .skip(1)
            .filter_map(|t| t.split(')').next())
            .flat_map(|l| l.split(',').map(|x| x.trim().to_owned()))
            .collect()
    }

    #[test]
    fn the_charts_alerts_and_dashboard_name_only_what_is_exported() {
        let m = Metrics::new();
        // One sample of every labelled family, so its label names show.
        m.reconciles
            .get_or_create(&ResultLabel {
                result: "ok".into(),
            })
            .inc();
        m.reconcile_errors
            .get_or_create(&CategoryLabel {
                category: "kube_forbidden".into(),
            })
            .inc();
        m.cloud_call("GetAuthorizationToken", "ok");
        m.token_expiry
            .get_or_create(&InstanceLabel {
                acr_instance: "cri-x".into(),
            })
            .set(1);
        m.credential_errors
            .get_or_create(&InstanceCategoryLabels {
                acr_instance: "cri-x".into(),
                category: "cloud_auth".into(),
            })
            .inc();
        m.write("secret_create");
        m.webhook_requests
            .get_or_create(&WebhookLabels {
                webhook: "pods".into(),
                result: "patched".into(),
            })
            .inc();
        m.webhook_duration
            .get_or_create(&WebhookLabel {
                webhook: "pods".into(),
            })
            .observe(0.01);
        let text = m.encode();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let sources = [
            (
                "prometheusrule.yaml",
                include_str!(
                    "../charts/aliyun-acr-credential-helper/templates/prometheusrule.yaml"
                ),
            ),
            (
                "dashboard.json",
                include_str!("../charts/aliyun-acr-credential-helper/dashboard.json"),
            ),
        ];
        for (file, source) in sources {
            let names = names_in(source);
            assert!(!names.is_empty(), "{file} names no metric");
            for name in names {
                assert!(
                    samples.iter().any(|l| {
                        l.strip_prefix(name.as_str())
                            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                    }),
                    "{file} names {name}, which /metrics does not export"
                );
            }
            for label in grouped_by(source) {
                assert!(
                    samples.iter().any(|l| l.contains(&format!("{{{label}=\""))
                        || l.contains(&format!(",{label}=\""))),
                    "{file} groups by {label}, which no exported series has"
                );
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(sources[1].1).unwrap_or_else(|e| panic!("dashboard.json: {e}"));
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        );
    }
}
