//! The fault matrix ("chaos"): a sustained run of the real binary, two replicas with leader
//! election, many namespaces, short password lifetimes and another client patching the same
//! ServiceAccounts, while faults are injected at random times in random order:
//!
//! - the fake cloud answering HTTP 500, `Throttling`, not at all (timeouts) or with malformed JSON,
//!   for 2-15 s, on Container Registry, on the metadata service, or on every API at once;
//! - a restart of kube-apiserver on the same etcd (`control-plane.sh restart-apiserver`);
//! - SIGKILL of the leader (at a random moment, right after an edit that makes it patch hundreds
//!   of ServiceAccounts, or inside the window where it writes refreshed Secrets) and of the
//!   standby; a killed replica is replaced at once under a new identity;
//! - ConfigMap edits, good (expiring-threshold 30s <-> 25s, service-account default <->
//!   default,builder) and bad (rejected values; sometimes with a leader kill while the bad edit
//!   is live).
//!
//! One fault at a time: the next one starts (after a random pause) once everything is healthy
//! again or after 120 s. A sampler checks everything every second; the audit log tells who wrote
//! what. The run writes a report (text and JSON) and fails on any non-zero loss figure.
//!
//! It starts a control plane of its own (it restarts its API server), even when the suite's shared
//! one is named by `ACR_HELPER_TEST_KUBECONFIG`. Sizes come from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ACR_HELPER_CHAOS_SECONDS` | 120 | how long faults are injected |
//! | `ACR_HELPER_CHAOS_NAMESPACES` | 200 | watched namespaces (each with ServiceAccounts `default` and `builder`) |
//! | `ACR_HELPER_CHAOS_SEED` | random | seed of the fault schedule (printed; give it back to replay the same schedule) |
//! | `ACR_HELPER_CHAOS_MIN_FAULTS` | one per 40 s of faults (3 for the CI run) | fail unless at least this many faults were injected, so a run that injected nothing cannot pass |
//! | `ACR_HELPER_CHAOS_OUT` | `target/chaos` | where `report.txt`, `report.json` and the replicas' logs go |
//!
//! `cargo test --test chaos` is the short (CI) run; `scripts/chaos` is the full one (30 minutes,
//! at least 100 faults).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, LocalObjectReference, Namespace, Secret, ServiceAccount,
};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use support::fake_cloud::{INSTANCE_ID, INSTANCE_REGION, OTHER_INSTANCE_ID, OTHER_REGION};
use support::harness::{ControllerProcess, Harness, scrape_metric};

/// The fake's registry password lifetime: short, so a refresh cycle comes every ~30 s.
const PASSWORD_SECONDS: u64 = 60;
/// The fake's STS (worker role) credential lifetime: passwords never outlive it, and it is
/// refreshed a few times an hour, so faults on the metadata service matter too.
const STS_SECONDS: u64 = 300;
/// The two good `expiring-threshold` values the edits toggle between.
const THRESHOLDS: [&str; 2] = ["30s", "25s"];
/// The two good `service-account` values the edits toggle between.
const SERVICE_ACCOUNTS: [&str; 2] = ["default", "default,builder"];
/// The ServiceAccounts every watched namespace has (both are checked at every sample).
const SA_NAMES: [&str; 2] = ["default", "builder"];
/// Time between samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// After a cloud fault ends, this long still counts as "the cloud did not answer".
const CLOUD_GRACE_SECONDS: f64 = 10.0;
/// A sample is healthy only if every password has at least this long left.
const FRESH_SECONDS: f64 = 10.0;
/// A fault not recovered from after this long counts as unrecovered.
const RECOVERY_CAP: Duration = Duration::from_secs(120);
/// Concurrent writers of the other client.
const FOREIGN_WRITERS: usize = 3;
/// Half of the other client's appends go to the ServiceAccounts of this many namespaces, so the
/// controller's patches there race with it often.
const HOT_NAMESPACES: usize = 10;
/// Lease settings of the replicas (the harness's): duration and grace.
const LEASE: (&str, &str) = ("4s", "2s");
const FAULT_KINDS: [&str; 9] = [
    "cloud-http500",
    "cloud-throttling",
    "cloud-timeout",
    "cloud-malformed",
    "apiserver-restart",
    "leader-kill",
    "standby-kill",
    "edit-good",
    "edit-bad",
];
/// Rejected edits, as (key, value). Each must be refused whole and change nothing.
const BAD_EDITS: [(&str, &str); 6] = [
    ("expiring-threshold", "soon"),
    ("acr-registry-info", "[]"),
    ("acr-registry-info", "- instanceId: [unclosed\n"),
    (
        "acr-registry-info",
        "- instanceId: cri-fakeinstance0001\n  regionId: cn-hangzhou\n  assumeRoleARN: not-an-arn\n",
    ),
    ("service-account", "Not_A_Name!"),
    ("watch-namespace", "bad name!"),
];

struct Settings {
    seconds: u64,
    namespaces: usize,
    seed: u64,
    min_faults: usize,
    out: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let seconds = env_or("ACR_HELPER_CHAOS_SECONDS", 120);
        Settings {
            seconds,
            namespaces: env_or("ACR_HELPER_CHAOS_NAMESPACES", 200),
            seed: env_or("ACR_HELPER_CHAOS_SEED", rand::random::<u64>()),
            // A run that injected (almost) nothing proves nothing: it fails.
            min_faults: env_or(
                "ACR_HELPER_CHAOS_MIN_FAULTS",
                usize::try_from(seconds / 40).unwrap_or(usize::MAX).max(1),
            ),
            out: std::env::var_os("ACR_HELPER_CHAOS_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| support::repo_root().join("target/chaos")),
        }
    }
}

#[test]
fn fault_matrix() {
    // This test restarts its API server, so it never attaches to the suite's shared control plane.
    // SAFETY: nothing else runs yet in this test binary (it has this one test), so no other thread
    // reads the environment while it changes.
    unsafe { std::env::remove_var(support::KUBECONFIG_ENV) };
    let settings = Settings::from_env();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
        .block_on(run(settings));
}

// ---------------------------------------------------------------------------------------------
// Shared state between the sampler, the other client and the fault runner.

/// What the configuration in force selects (the last good edit).
#[derive(Clone)]
struct Expected {
    service_accounts: &'static str,
    threshold: &'static str,
}

impl Expected {
    fn selects(&self, sa: &str) -> bool {
        self.service_accounts.split(',').any(|s| s == sa)
    }
    fn threshold_seconds(&self) -> f64 {
        self.threshold
            .trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("threshold {}", self.threshold))
    }
}

/// One entry the other client appended to a ServiceAccount's imagePullSecrets.
struct ForeignEntry {
    ns: String,
    sa: &'static str,
    name: String,
    /// The ServiceAccount's resourceVersion that the write produced (None when the write's answer
    /// was lost and a re-read found the entry: then its position is not known).
    rv: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Sample {
    /// Seconds since the sampler started, when this sample's reads began.
    t: f64,
    /// Whether the API server answered the sample's reads.
    observed: bool,
    secrets_missing: usize,
    secrets_bad: usize,
    /// Namespaces whose Secret holds a login the fake registry rejects.
    rejected: usize,
    /// Namespaces whose logins all work but one has less than FRESH_SECONDS left.
    stale: usize,
    /// Namespaces whose logins the fake could not be asked about (it did not answer).
    logins_unknown: usize,
    /// Namespaces whose expires-at annotation is later than the fake's expiry of a login in it.
    expires_wrong: usize,
    refs_missing: usize,
    refs_unwanted: usize,
    refs_duplicate: usize,
    foreign_lost_new: usize,
    foreign_reordered_new: usize,
    leaders: usize,
    leader: Option<String>,
    healthy: bool,
    /// How long the sample took.
    took: f64,
}

impl Sample {
    /// Whether what the controller wrote has the shape the configuration asks for (passwords
    /// and leadership aside).
    fn structure_ok(&self) -> bool {
        self.observed
            && self.secrets_missing == 0
            && self.secrets_bad == 0
            && self.refs_missing == 0
            && self.refs_unwanted == 0
            && self.refs_duplicate == 0
    }
}

struct Shared {
    start: Instant,
    stop_sampler: AtomicBool,
    stop_foreign: AtomicBool,
    expected: Mutex<Expected>,
    /// (identity, metrics URL) of the running replicas.
    replicas: Mutex<Vec<(String, String)>>,
    foreign: Mutex<Vec<ForeignEntry>>,
    foreign_conflicts: AtomicU64,
    foreign_errors: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    /// password -> (instance, seconds when first seen).
    passwords: Mutex<BTreeMap<String, (String, f64)>>,
    /// The earliest expiry of any login in the Secrets at the last sample.
    earliest_expiry: Mutex<Option<jiff::Timestamp>>,
    /// "ns/sa/entry" -> seconds when first found missing.
    lost: Mutex<BTreeMap<String, f64>>,
    /// "ns/sa" -> seconds when its foreign entries were first found out of order.
    reordered: Mutex<BTreeMap<String, f64>>,
    /// The first problems found in Secrets during the fault phase, with when.
    secret_problems: Mutex<Vec<String>>,
    /// When the fault phase began (seconds since `start`), once it has.
    phase_start: Mutex<Option<f64>>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Notes a problem found in a Secret at `t` (only during the fault phase; the first 50).
    fn secret_problem(&self, t: f64, what: &str) {
        let Some(begin) = *lock(&self.phase_start) else {
            return;
        };
        let mut p = lock(&self.secret_problems);
        if t >= begin && p.len() < 50 {
            p.push(format!("t={:.1}s {what}", t - begin));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The fake cloud's control API, without panics (the sampler must survive anything).

#[derive(Clone)]
struct FakeCtl {
    http: reqwest::Client,
    url: String,
}

impl FakeCtl {
    fn new(url: &str) -> FakeCtl {
        acr_helper::aliyun::http::install_crypto_provider();
        FakeCtl {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|e| panic!("http client: {e}")),
            url: url.to_owned(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        resp.json().await.map_err(|e| format!("{path}: {e}"))
    }

    /// A control call that must succeed (retried for 30 s).
    async fn must(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(method.clone(), path, body.clone()).await {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => panic!("fake cloud control: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn fault(&self, api: &str, kind: &str) {
        let mut spec = json!({"api": api, "kind": kind, "count": -1});
        if kind == "timeout" {
            spec["delay_seconds"] = json!(30);
        }
        self.must(reqwest::Method::POST, "/_fake/faults", Some(spec))
            .await;
    }

    async fn clear(&self) {
        self.must(reqwest::Method::PUT, "/_fake/faults", None).await;
    }

    async fn calls(&self) -> BTreeMap<String, u64> {
        let v = self.must(reqwest::Method::GET, "/_fake/calls", None).await;
        v["calls"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn reset_calls(&self) {
        self.must(reqwest::Method::POST, "/_fake/calls", None).await;
    }

    async fn login(&self, username: &str, password: &str) -> Result<Value, String> {
        self.call(
            reqwest::Method::POST,
            "/_fake/registry-login",
            Some(json!({"username": username, "password": password})),
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The sampler.

struct SamplerCtx {
    client: Client,
    http: reqwest::Client,
    fake: FakeCtl,
    namespaces: Arc<Vec<String>>,
    secret_name: String,
    domains: Vec<String>,
    shared: Arc<Shared>,
}

/// What a valid Secret holds.
struct SecretInfo {
    logins: BTreeSet<(String, String)>,
    expires_at: jiff::Timestamp,
}

/// Checks one pull Secret; Err says how it is half-written or empty.
fn check_secret(s: &Secret, domains: &[String]) -> Result<SecretInfo, String> {
    if s.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
        return Err(format!("type {:?}", s.type_));
    }
    let labels = s.metadata.labels.clone().unwrap_or_default();
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some("aliyun-acr-credential-helper")
    {
        return Err("no managed-by label".into());
    }
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    let expires_at: jiff::Timestamp = annotations
        .get("aliyun-acr-credential-helper/expires-at")
        .and_then(|t| t.parse().ok())
        .ok_or("no usable expires-at annotation")?;
    let instances = annotations
        .get("aliyun-acr-credential-helper/instances")
        .cloned()
        .unwrap_or_default();
    for id in [INSTANCE_ID, OTHER_INSTANCE_ID] {
        if !instances.contains(id) {
            return Err(format!("instances annotation {instances:?} lacks {id}"));
        }
    }
    let raw = s
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .ok_or("no .dockerconfigjson")?;
    let doc: Value =
        serde_json::from_slice(&raw.0).map_err(|e| format!(".dockerconfigjson: {e}"))?;
    let auths = doc["auths"].as_object().ok_or("no auths object")?;
    if auths.is_empty() {
        return Err("empty auths".into());
    }
    let mut logins = BTreeSet::new();
    for d in domains {
        let entry = auths.get(d).ok_or_else(|| format!("no login for {d}"))?;
        let user = entry["username"].as_str().unwrap_or_default();
        let pass = entry["password"].as_str().unwrap_or_default();
        if user.is_empty() || pass.is_empty() {
            return Err(format!("{d}: empty username or password"));
        }
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        if entry["auth"].as_str() != Some(auth.as_str()) {
            return Err(format!("{d}: auth is not base64(username:password)"));
        }
        logins.insert((user.to_owned(), pass.to_owned()));
    }
    Ok(SecretInfo { logins, expires_at })
}

/// A ServiceAccount: (namespace, name).
type SaKey = (String, &'static str);

/// The foreign entries the sampler knows were written: (ns, sa) -> [(rv, name)].
#[derive(Default)]
struct Known {
    taken: usize,
    entries: BTreeMap<SaKey, Vec<(Option<u64>, String)>>,
}

async fn take_sample(ctx: &SamplerCtx, known: &mut Known) -> Sample {
    let shared = &ctx.shared;
    let t = shared.now();
    let started = Instant::now();
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    let expected = lock(&shared.expected).clone();
    // Entries whose write completed before this sample's reads start must all be found.
    {
        let foreign = lock(&shared.foreign);
        for e in &foreign[known.taken..] {
            known
                .entries
                .entry((e.ns.clone(), e.sa))
                .or_default()
                .push((e.rv, e.name.clone()));
        }
        known.taken = foreign.len();
    }
    let replicas = lock(&shared.replicas).clone();

    let limit = Duration::from_secs(10);
    let secrets = tokio::time::timeout(
        limit,
        Api::<Secret>::all(ctx.client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={}", ctx.secret_name))),
    )
    .await;
    let sas = tokio::time::timeout(
        limit,
        Api::<ServiceAccount>::all(ctx.client.clone()).list(&ListParams::default()),
    )
    .await;
    let (Ok(Ok(secrets)), Ok(Ok(sas))) = (secrets, sas) else {
        s.took = started.elapsed().as_secs_f64();
        return s;
    };
    s.observed = true;

    // Secrets.
    let by_ns: BTreeMap<String, &Secret> = secrets
        .items
        .iter()
        .filter_map(|x| Some((x.metadata.namespace.clone()?, x)))
        .collect();
    let mut infos: BTreeMap<&str, SecretInfo> = BTreeMap::new();
    for ns in ctx.namespaces.iter() {
        match by_ns.get(ns) {
            None => {
                s.secrets_missing += 1;
                shared.secret_problem(t, &format!("{ns}: Secret missing"));
            }
            Some(secret) => match check_secret(secret, &ctx.domains) {
                Ok(info) => {
                    infos.insert(ns.as_str(), info);
                }
                Err(why) => {
                    s.secrets_bad += 1;
                    shared.secret_problem(t, &format!("{ns}: half-written: {why}"));
                }
            },
        }
    }
    // Every distinct login, asked of the fake registry.
    let distinct: BTreeSet<(String, String)> = infos
        .values()
        .flat_map(|i| i.logins.iter().cloned())
        .collect();
    let answers: Vec<((String, String), Option<Value>)> =
        futures::stream::iter(distinct.into_iter().map(|(u, p)| {
            let fake = ctx.fake.clone();
            async move {
                let a = fake.login(&u, &p).await.ok();
                ((u, p), a)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    // login -> Ok(expiry in ms) when accepted, Err(true) when rejected, Err(false) when the fake
    // did not answer (unknown: the sample is not healthy, but nothing counts as rejected).
    let mut verdict: BTreeMap<(String, String), Result<i64, bool>> = BTreeMap::new();
    {
        let mut passwords = lock(&shared.passwords);
        for (login, answer) in answers {
            let v = match &answer {
                None => Err(false),
                Some(a) if a["valid"] == json!(true) => a["expires_ms"].as_i64().ok_or(true),
                Some(_) => Err(true),
            };
            if let (Ok(_), Some(a)) = (v, answer.as_ref()) {
                let instance = a["instance"].as_str().unwrap_or_default().to_owned();
                passwords.entry(login.1.clone()).or_insert((instance, t));
            }
            verdict.insert(login, v);
        }
    }
    let mut earliest: Option<i64> = None;
    for info in infos.values() {
        let mut rejected = false;
        let mut unknown = false;
        let mut min_ms: Option<i64> = None;
        for login in &info.logins {
            match verdict.get(login).copied().unwrap_or(Err(false)) {
                Ok(ms) => min_ms = Some(min_ms.map_or(ms, |m| m.min(ms))),
                Err(true) => rejected = true,
                Err(false) => unknown = true,
            }
        }
        if rejected {
            s.rejected += 1;
            continue;
        }
        if unknown {
            s.logins_unknown += 1;
            continue;
        }
        if let Some(ms) = min_ms {
            earliest = Some(earliest.map_or(ms, |e| e.min(ms)));
            #[allow(clippy::cast_precision_loss)]
            let left = (ms - now_ms) as f64 / 1000.0;
            if left < FRESH_SECONDS {
                s.stale += 1;
            }
            if info.expires_at.as_millisecond() > ms + 1000 {
                s.expires_wrong += 1;
            }
        }
    }
    *lock(&shared.earliest_expiry) =
        earliest.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());

    // ServiceAccounts: our reference, and the other client's entries.
    let mut refs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for sa in &sas.items {
        if let (Some(ns), Some(name)) = (&sa.metadata.namespace, &sa.metadata.name) {
            refs.insert(
                (ns.clone(), name.clone()),
                sa.image_pull_secrets
                    .iter()
                    .flatten()
                    .map(|r| r.name.clone())
                    .collect(),
            );
        }
    }
    for ns in ctx.namespaces.iter() {
        for sa in SA_NAMES {
            let ours = refs
                .get(&(ns.clone(), sa.to_owned()))
                .map(|l| l.iter().filter(|n| **n == ctx.secret_name).count());
            match (expected.selects(sa), ours) {
                (true, None | Some(0)) => s.refs_missing += 1,
                (true, Some(1)) | (false, None | Some(0)) => {}
                (false, Some(_)) => s.refs_unwanted += 1,
                (true, Some(_)) => s.refs_duplicate += 1,
            }
        }
    }
    {
        let mut lost = lock(&shared.lost);
        let mut reordered = lock(&shared.reordered);
        for ((ns, sa), entries) in &known.entries {
            let empty = Vec::new();
            let have = refs.get(&(ns.clone(), (*sa).to_owned())).unwrap_or(&empty);
            let position: BTreeMap<&str, usize> = have
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            for (_, name) in entries {
                if !position.contains_key(name.as_str())
                    && let std::collections::btree_map::Entry::Vacant(e) =
                        lost.entry(format!("{ns}/{sa}/{name}"))
                {
                    e.insert(t);
                    s.foreign_lost_new += 1;
                }
            }
            let mut ordered: Vec<(u64, usize)> = entries
                .iter()
                .filter_map(|(rv, name)| Some(((*rv)?, *position.get(name.as_str())?)))
                .collect();
            ordered.sort_unstable();
            if ordered.windows(2).any(|w| w[0].1 > w[1].1)
                && let std::collections::btree_map::Entry::Vacant(e) =
                    reordered.entry(format!("{ns}/{sa}"))
            {
                e.insert(t);
                s.foreign_reordered_new += 1;
            }
        }
    }

    // Leadership, as the replicas report it.
    for (identity, url) in &replicas {
        if scrape_metric(&ctx.http, url, "acr_helper_leader").await == Some(1.0) {
            s.leaders += 1;
            s.leader = Some(identity.clone());
        }
    }
    s.healthy = s.structure_ok()
        && s.rejected == 0
        && s.stale == 0
        && s.logins_unknown == 0
        && s.leaders == 1;
    s.took = started.elapsed().as_secs_f64();
    s
}

async fn sampler(ctx: SamplerCtx) {
    let mut known = Known::default();
    while !ctx.shared.stop_sampler.load(Ordering::SeqCst) {
        let began = Instant::now();
        let s = take_sample(&ctx, &mut known).await;
        lock(&ctx.shared.samples).push(s);
        if let Some(rest) = SAMPLE_EVERY.checked_sub(began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The other client: appends entries to the same ServiceAccounts, never removes any.

async fn foreign_writer(
    client: Client,
    namespaces: Arc<Vec<String>>,
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    while !shared.stop_foreign.load(Ordering::SeqCst) {
        let pool = if rng.random_bool(0.5) {
            namespaces.len().min(HOT_NAMESPACES)
        } else {
            namespaces.len()
        };
        let ns = namespaces[rng.random_range(0..pool)].clone();
        let sa = SA_NAMES[rng.random_range(0..SA_NAMES.len())];
        let name = format!("foreign-{}", counter.fetch_add(1, Ordering::SeqCst));
        let api = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
        if let Some(rv) = append_entry(&api, sa, &name, &shared).await {
            lock(&shared.foreign).push(ForeignEntry { ns, sa, name, rv });
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
    }
}

fn resource_version(sa: &ServiceAccount) -> Option<u64> {
    sa.metadata.resource_version.as_deref()?.parse().ok()
}

/// Appends `name` to `sa`'s imagePullSecrets with a resourceVersion precondition (a full
/// update), re-reading and retrying on 409. Returns Some once the entry is in: with the
/// resourceVersion its write produced, or None inside when only a re-read found it (an answer
/// lost to an API server restart). Returns None if it never got in.
async fn append_entry(
    api: &Api<ServiceAccount>,
    sa: &str,
    name: &str,
    shared: &Shared,
) -> Option<Option<u64>> {
    let limit = Duration::from_secs(10);
    for _ in 0..100 {
        if shared.stop_foreign.load(Ordering::SeqCst) {
            return None;
        }
        let current = match tokio::time::timeout(limit, api.get(sa)).await {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut refs = current.image_pull_secrets.clone().unwrap_or_default();
        if refs.iter().any(|r| r.name == name) {
            return Some(None);
        }
        refs.push(LocalObjectReference {
            name: name.to_owned(),
        });
        let mut next = current;
        next.image_pull_secrets = Some(refs);
        match tokio::time::timeout(limit, api.replace(sa, &PostParams::default(), &next)).await {
            Ok(Ok(written)) => return Some(resource_version(&written)),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                shared.foreign_conflicts.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                shared.foreign_errors.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The fault runner.

#[derive(Clone, Debug, Default)]
struct FaultRecord {
    n: usize,
    kind: &'static str,
    variant: String,
    start: f64,
    end: f64,
    recovery: Option<f64>,
    cloud: bool,
    bad_edit: bool,
    /// For a bad edit: whether a replica reported the configuration invalid.
    flagged: Option<bool>,
    /// Replicas killed: (identity, when, was it the leader).
    kills: Vec<(String, jiff::Timestamp, bool)>,
    /// GetAuthorizationToken requests that reached the fake during a cloud fault.
    calls_during: u64,
    note: String,
}

struct Slot {
    letter: char,
    generation: u32,
    identity: String,
    process: ControllerProcess,
}

struct Runner<'a> {
    h: &'a Harness,
    shared: Arc<Shared>,
    fake: FakeCtl,
    http: reqwest::Client,
    rng: StdRng,
    slots: Vec<Slot>,
    /// Every replica's (identity, log file), for the report.
    logs: Vec<(String, PathBuf)>,
    config: Expected,
    namespaces_csv: String,
    cp_dir: PathBuf,
    faults: Vec<FaultRecord>,
    deck: Vec<&'static str>,
}

fn registry_info() -> String {
    format!(
        "- instanceId: {INSTANCE_ID}\n  regionId: {INSTANCE_REGION}\n- instanceId: {OTHER_INSTANCE_ID}\n  regionId: {OTHER_REGION}\n"
    )
}

impl Runner<'_> {
    fn start_replica(&mut self, letter: char, generation: u32) -> Slot {
        let identity = format!("chaos-{letter}-{generation}");
        let process = self.h.start_as(&identity, &["--token-mode", "workerRole"]);
        self.logs.push((identity.clone(), process.log.clone()));
        Slot {
            letter,
            generation,
            identity,
            process,
        }
    }

    fn publish_replicas(&self) {
        *lock(&self.shared.replicas) = self
            .slots
            .iter()
            .map(|s| (s.identity.clone(), s.process.metrics_url.clone()))
            .collect();
    }

    /// SIGKILLs the replica in slot `i` and starts its replacement under a new identity.
    fn kill_and_replace(&mut self, i: usize, was_leader: bool) -> (String, jiff::Timestamp, bool) {
        let at = jiff::Timestamp::now();
        self.slots[i].process.kill();
        let (letter, generation) = (self.slots[i].letter, self.slots[i].generation + 1);
        let old = self.slots[i].identity.clone();
        let fresh = self.start_replica(letter, generation);
        self.slots[i] = fresh;
        self.publish_replicas();
        (old, at, was_leader)
    }

    /// The slot of the replica that leads: the one whose metrics say so, else the Lease holder.
    async fn leader_slot(&self) -> Option<usize> {
        for (i, s) in self.slots.iter().enumerate() {
            if scrape_metric(&self.http, &s.process.metrics_url, "acr_helper_leader").await
                == Some(1.0)
            {
                return Some(i);
            }
        }
        // Unknown is not absent: the matrix restarts its API server, and while it is down the
        // Lease cannot be read. The caller then knows no leader, and says so; it never takes
        // that as "nobody leads".
        let lease = match Api::<Lease>::namespaced(self.h.client.clone(), &self.h.config_ns.name)
            .get_opt("aliyun-acr-credential-helper")
            .await
        {
            Ok(lease) => lease?,
            Err(e) => {
                eprintln!("chaos: the leader is unknown: the Lease cannot be read: {e}");
                return None;
            }
        };
        let holder = lease.spec?.holder_identity?;
        self.slots.iter().position(|s| s.identity == holder)
    }

    fn config_data(&self, replace: Option<(&str, &str)>) -> BTreeMap<String, String> {
        let mut data: BTreeMap<String, String> = [
            ("watch-namespace", self.namespaces_csv.clone()),
            ("service-account", self.config.service_accounts.to_owned()),
            ("expiring-threshold", self.config.threshold.to_owned()),
            ("acr-registry-info", registry_info()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some((k, v)) = replace {
            data.insert(k.to_owned(), v.to_owned());
        }
        data
    }

    /// Applies the ConfigMap (server-side apply), retrying transient failures for 60 s.
    async fn apply(&self, data: BTreeMap<String, String>) {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "acr-configuration"},
            "data": data,
        });
        let api = Api::<ConfigMap>::namespaced(self.h.client.clone(), &self.h.config_ns.name);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match api
                .patch(
                    "acr-configuration",
                    &PatchParams::apply("chaos").force(),
                    &Patch::Apply(&cm),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("apply the ConfigMap: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Makes `next` the configuration in force: the sampler expects it from now on.
    async fn apply_good(&mut self, next: Expected) {
        self.config = next.clone();
        *lock(&self.shared.expected) = next;
        self.apply(self.config_data(None)).await;
    }

    fn next_kind(&mut self) -> &'static str {
        if self.deck.is_empty() {
            self.deck = FAULT_KINDS.to_vec();
            self.deck.shuffle(&mut self.rng);
        }
        self.deck.pop().unwrap_or("edit-good")
    }

    async fn sleep_secs(&self, secs: f64) {
        tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
    }

    async fn run_fault(&mut self, kind: &'static str) -> FaultRecord {
        let mut r = FaultRecord {
            n: self.faults.len() + 1,
            kind,
            ..FaultRecord::default()
        };
        match kind {
            "cloud-http500" | "cloud-throttling" | "cloud-timeout" | "cloud-malformed" => {
                let fault = kind.trim_start_matches("cloud-");
                let roll: f64 = self.rng.random();
                let (target, apis): (&str, &[&str]) = if roll < 0.6 {
                    ("registry", &["GetAuthorizationToken"])
                } else if roll < 0.8 {
                    ("metadata", &["MetadataCredentials"])
                } else {
                    (
                        "everything",
                        &[
                            "GetAuthorizationToken",
                            "ListInstanceEndpoint",
                            "MetadataToken",
                            "MetadataRoleName",
                            "MetadataCredentials",
                        ],
                    )
                };
                let secs: f64 = self.rng.random_range(2.0..15.0);
                r.cloud = true;
                r.variant = format!("{target} for {secs:.1}s");
                let before = self.fake.calls().await;
                r.start = self.shared.now();
                for api in apis {
                    self.fake.fault(api, fault).await;
                }
                self.sleep_secs(secs).await;
                self.fake.clear().await;
                r.end = self.shared.now();
                let after = self.fake.calls().await;
                let get = |m: &BTreeMap<String, u64>| {
                    m.get("GetAuthorizationToken").copied().unwrap_or(0)
                };
                r.calls_during = get(&after).saturating_sub(get(&before));
            }
            "apiserver-restart" => {
                r.start = self.shared.now();
                let script = support::repo_root().join("tests/cluster/control-plane.sh");
                let dir = self.cp_dir.clone();
                let out = tokio::task::spawn_blocking(move || {
                    std::process::Command::new(script)
                        .arg("restart-apiserver")
                        .arg(dir)
                        .output()
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("restart-apiserver: {e}"));
                assert!(
                    out.status.success(),
                    "restart-apiserver failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                r.end = self.shared.now();
                r.variant = format!("down {:.1}s", r.end - r.start);
            }
            "leader-kill" => {
                let roll: f64 = self.rng.random();
                let pause: f64 = self.rng.random_range(0.1..1.5);
                let before_refresh: f64 = self.rng.random_range(0.2..3.8);
                r.start = self.shared.now();
                if roll < 0.35 {
                    r.variant = "random moment".into();
                } else if roll < 0.7 {
                    // Right after an edit that makes the leader patch every namespace's builder.
                    let mut next = self.config.clone();
                    next.service_accounts = if next.selects("builder") {
                        SERVICE_ACCOUNTS[0]
                    } else {
                        SERVICE_ACCOUNTS[1]
                    };
                    r.variant = format!(
                        "mid-reconcile: {pause:.1}s after service-account={}",
                        next.service_accounts
                    );
                    self.apply_good(next).await;
                    self.sleep_secs(pause).await;
                } else {
                    // Inside the window where refreshed Secrets are written (just before the
                    // refresh point of the earliest password).
                    let expiry = *lock(&self.shared.earliest_expiry);
                    let threshold = self.config.threshold_seconds();
                    let wait = expiry.map(|e| {
                        #[allow(clippy::cast_precision_loss)]
                        let ms = e.as_millisecond() - jiff::Timestamp::now().as_millisecond();
                        ms as f64 / 1000.0 - threshold - before_refresh
                    });
                    match wait {
                        Some(w) if w > 0.0 && w < 45.0 => {
                            r.variant = format!(
                                "at refresh: {before_refresh:.1}s before the refresh point"
                            );
                            self.sleep_secs(w).await;
                        }
                        _ => r.variant = "at refresh (none due within 45s: now)".into(),
                    }
                }
                match self.leader_slot().await {
                    Some(i) => r.kills.push(self.kill_and_replace(i, true)),
                    None => {
                        r.note = "no leader found; killed replica a".into();
                        r.kills.push(self.kill_and_replace(0, false));
                    }
                }
                r.end = self.shared.now();
            }
            "standby-kill" => {
                r.start = self.shared.now();
                let leader = self.leader_slot().await;
                let i = match leader {
                    Some(l) => 1 - l,
                    None => {
                        r.note = "no leader found".into();
                        1
                    }
                };
                r.variant = "standby".into();
                r.kills.push(self.kill_and_replace(i, false));
                r.end = self.shared.now();
            }
            "edit-good" => {
                let mut next = self.config.clone();
                if self.rng.random_bool(0.5) {
                    next.threshold = if next.threshold == THRESHOLDS[0] {
                        THRESHOLDS[1]
                    } else {
                        THRESHOLDS[0]
                    };
                    r.variant = format!("expiring-threshold={}", next.threshold);
                } else {
                    next.service_accounts = if next.selects("builder") {
                        SERVICE_ACCOUNTS[0]
                    } else {
                        SERVICE_ACCOUNTS[1]
                    };
                    r.variant = format!("service-account={}", next.service_accounts);
                }
                r.start = self.shared.now();
                self.apply_good(next).await;
                r.end = self.shared.now();
            }
            "edit-bad" => {
                let (key, value) = BAD_EDITS[self.rng.random_range(0..BAD_EDITS.len())];
                let hold: f64 = self.rng.random_range(4.0..10.0);
                let kill = self.rng.random_bool(0.3);
                r.bad_edit = true;
                r.variant = format!(
                    "{key}={:?}{}",
                    value.lines().next().unwrap_or_default(),
                    if kill { " + leader kill" } else { "" }
                );
                r.start = self.shared.now();
                self.apply(self.config_data(Some((key, value)))).await;
                let until = Instant::now() + Duration::from_secs_f64(hold);
                let kill_at = Instant::now() + Duration::from_secs(2);
                let mut killed = !kill;
                let mut flagged = false;
                while Instant::now() < until {
                    if !killed && Instant::now() >= kill_at {
                        match self.leader_slot().await {
                            Some(i) => r.kills.push(self.kill_and_replace(i, true)),
                            None => r.note = "no leader found to kill".into(),
                        }
                        killed = true;
                    }
                    for s in &self.slots {
                        if scrape_metric(
                            &self.http,
                            &s.process.metrics_url,
                            "acr_helper_config_valid",
                        )
                        .await
                            == Some(0.0)
                        {
                            flagged = true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                r.flagged = Some(flagged);
                self.apply(self.config_data(None)).await;
                r.end = self.shared.now();
            }
            other => panic!("unknown fault kind {other}"),
        }
        r
    }

    /// Seconds from `end` to the start of the first healthy sample after it; None after the cap.
    async fn recovery(&self, end: f64) -> Option<f64> {
        let deadline = Instant::now() + RECOVERY_CAP + Duration::from_secs(2);
        loop {
            {
                let samples = lock(&self.shared.samples);
                if let Some(s) = samples.iter().find(|s| s.t >= end && s.healthy) {
                    return Some(s.t - end).filter(|r| *r <= RECOVERY_CAP.as_secs_f64());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log: who wrote, and whether it held the Lease.

#[derive(Default)]
struct AuditFigures {
    product_writes: usize,
    product_write_failures: usize,
    conflicts: usize,
    lease_updates: usize,
    leader_changes: usize,
    /// Writes made while another replica had taken the Lease since the writer's last renewal.
    two_writers: Vec<String>,
    /// Writes made by a replica that had never taken the Lease.
    without_lease: Vec<String>,
    /// (identity) -> times of its writes (successful or not).
    writes_by: BTreeMap<String, Vec<jiff::Timestamp>>,
    by_verb: BTreeMap<String, usize>,
}

fn replica_of(user_agent: &str) -> String {
    user_agent
        .rsplit_once('(')
        .map(|(_, r)| r.trim_end_matches(')').to_owned())
        .unwrap_or_default()
}

fn read_audit(path: &Path, username: &str) -> AuditFigures {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut leases: Vec<(jiff::Timestamp, String)> = Vec::new();
    let mut writes: Vec<(jiff::Timestamp, String, String)> = Vec::new();
    let mut f = AuditFigures::default();
    let quoted = format!("\"{username}\"");
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { continue };
        if !line.contains(&quoted) {
            continue;
        }
        let Ok(e) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if e["user"]["username"] != username {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or_default();
        if !matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) {
            continue;
        }
        let Some(at) = e["stageTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let replica = replica_of(e["userAgent"].as_str().unwrap_or_default());
        let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
        let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
        match resource {
            "leases" if code < 300 => leases.push((at, replica)),
            "secrets" | "serviceaccounts" => {
                f.writes_by.entry(replica.clone()).or_default().push(at);
                if code == 409 {
                    f.conflicts += 1;
                }
                if code < 300 {
                    f.product_writes += 1;
                    *f.by_verb.entry(format!("{verb} {resource}")).or_default() += 1;
                    let what = format!(
                        "{verb} {resource} {}/{}",
                        e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                        e["objectRef"]["name"].as_str().unwrap_or_default()
                    );
                    writes.push((at, replica, what));
                } else {
                    f.product_write_failures += 1;
                }
            }
            _ => {}
        }
    }
    leases.sort();
    f.lease_updates = leases.len();
    f.leader_changes = leases.windows(2).filter(|w| w[0].1 != w[1].1).count();
    for (at, replica, what) in &writes {
        // The writer's last successful Lease update before this write.
        let upto = leases.partition_point(|(t, _)| t <= at);
        let Some(last_own) = leases[..upto].iter().rposition(|(_, r)| r == replica) else {
            f.without_lease.push(format!("{at} {replica}: {what}"));
            continue;
        };
        if let Some((t, other)) = leases[last_own + 1..upto]
            .iter()
            .find(|(_, r)| r != replica)
        {
            f.two_writers.push(format!(
                "{at} {replica}: {what} (its last Lease update {}; {other} took the Lease at {t})",
                leases[last_own].0
            ));
        }
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Set-up and the run.

async fn create_namespaces(client: &Client, names: &[String]) {
    let results: Vec<()> = futures::stream::iter(names.iter().map(|name| {
        let client = client.clone();
        async move {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(support::TEST_LABEL.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            retry(&format!("create namespace {name}"), || async {
                match Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &ns)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
            let builder = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("builder".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            retry(&format!("create {name}/builder"), || async {
                match Api::<ServiceAccount>::namespaced(client.clone(), name)
                    .create(&PostParams::default(), &builder)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    drop(results);
    // kube-controller-manager gives each namespace its "default" ServiceAccount.
    let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    support::wait_until(
        Duration::from_secs(300),
        "every namespace's default ServiceAccount",
        || {
            let client = client.clone();
            let want = want.clone();
            async move {
                let Ok(list) = Api::<ServiceAccount>::all(client)
                    .list(&ListParams::default().fields("metadata.name=default"))
                    .await
                else {
                    return false;
                };
                let have: BTreeSet<String> = list
                    .items
                    .into_iter()
                    .filter_map(|s| s.metadata.namespace)
                    .collect();
                want.iter().all(|n| have.contains(*n))
            }
        },
    )
    .await;
}

async fn retry<F, Fut>(what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

async fn run(settings: Settings) {
    let run_started = Instant::now();
    acr_helper::aliyun::http::install_crypto_provider();
    eprintln!(
        "chaos: seed {} (ACR_HELPER_CHAOS_SEED={} replays this schedule), {} s of faults, {} namespaces",
        settings.seed, settings.seed, settings.seconds, settings.namespaces
    );
    let cp = support::control_plane();
    let cp_dir = cp
        .dir
        .clone()
        .unwrap_or_else(|| panic!("the chaos test needs a control plane of its own"));
    let audit_log = cp
        .audit_log
        .clone()
        .unwrap_or_else(|| panic!("the chaos test needs the audit log"));
    let mut fake_config = support::fake_cloud::default_config();
    fake_config["lifetimes"] = json!({
        "registry_seconds": PASSWORD_SECONDS,
        "metadata_seconds": STS_SECONDS,
    });
    let h = Harness::new("chaos", &fake_config, "cluster-admin").await;
    let fake = FakeCtl::new(&h.fake.url);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    let names: Vec<String> = (0..settings.namespaces)
        .map(|i| format!("chaos-{i:04}"))
        .collect();
    let t0 = Instant::now();
    create_namespaces(&h.client, &names).await;
    eprintln!(
        "chaos: {} namespaces with ServiceAccounts default and builder in {:.1}s",
        names.len(),
        t0.elapsed().as_secs_f64()
    );
    let namespaces = Arc::new(names);
    let domains = vec![
        "fake-registry-vpc.cn-hangzhou.cr.aliyuncs.com".to_owned(),
        "fake-registry.cn-hangzhou.cr.aliyuncs.com".to_owned(),
        "other-registry.ap-southeast-1.cr.aliyuncs.com".to_owned(),
    ];
    let config = Expected {
        service_accounts: SERVICE_ACCOUNTS[0],
        threshold: THRESHOLDS[0],
    };
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop_sampler: AtomicBool::new(false),
        stop_foreign: AtomicBool::new(false),
        expected: Mutex::new(config.clone()),
        replicas: Mutex::new(Vec::new()),
        foreign: Mutex::new(Vec::new()),
        foreign_conflicts: AtomicU64::new(0),
        foreign_errors: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        passwords: Mutex::new(BTreeMap::new()),
        earliest_expiry: Mutex::new(None),
        lost: Mutex::new(BTreeMap::new()),
        reordered: Mutex::new(BTreeMap::new()),
        secret_problems: Mutex::new(Vec::new()),
        phase_start: Mutex::new(None),
    });
    let mut runner = Runner {
        h: &h,
        shared: shared.clone(),
        fake: fake.clone(),
        http: http.clone(),
        rng: StdRng::seed_from_u64(settings.seed),
        slots: Vec::new(),
        logs: Vec::new(),
        config: config.clone(),
        namespaces_csv: namespaces.join(","),
        cp_dir: cp_dir.clone(),
        faults: Vec::new(),
        deck: Vec::new(),
    };
    runner.apply_good(config).await;
    let a = runner.start_replica('a', 1);
    let b = runner.start_replica('b', 1);
    runner.slots = vec![a, b];
    runner.publish_replicas();

    let sampler_task = tokio::spawn(sampler(SamplerCtx {
        client: h.client.clone(),
        http: http.clone(),
        fake: fake.clone(),
        namespaces: namespaces.clone(),
        secret_name: h.secret_name.clone(),
        domains: domains.clone(),
        shared: shared.clone(),
    }));
    // Initial convergence: every Secret, every reference, one leader.
    let converged = runner.recovery(0.0).await;
    let Some(converged) = converged else {
        panic!("no initial convergence within {RECOVERY_CAP:?}");
    };
    let chaos_start = shared.now();
    *lock(&shared.phase_start) = Some(chaos_start);
    eprintln!("chaos: converged in {converged:.1}s; injecting faults");
    fake.reset_calls().await;
    let counter = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..FOREIGN_WRITERS)
        .map(|_| {
            tokio::spawn(foreign_writer(
                h.client.clone(),
                namespaces.clone(),
                shared.clone(),
                counter.clone(),
            ))
        })
        .collect();

    // The faults, one at a time.
    #[allow(clippy::cast_precision_loss)]
    let chaos_end = chaos_start + settings.seconds as f64;
    while shared.now() < chaos_end {
        let kind = runner.next_kind();
        let mut r = runner.run_fault(kind).await;
        r.recovery = runner.recovery(r.end).await;
        eprintln!(
            "chaos: [t={:>7.1}s] #{:<3} {:<17} {:<60} lasted {:>5.1}s, recovered {}",
            r.start - chaos_start,
            r.n,
            r.kind,
            r.variant,
            r.end - r.start,
            r.recovery
                .map_or_else(|| "NEVER (cap 120s)".to_owned(), |s| format!("in {s:.1}s"))
        );
        runner.faults.push(r);
        let pause: f64 = runner.rng.random_range(0.5..4.0);
        if shared.now() + pause < chaos_end {
            runner.sleep_secs(pause).await;
        } else {
            break;
        }
    }
    let faults_end = shared.now();

    // Wind down: the other client stops, a last sample sees all its entries, then the sampler.
    shared.stop_foreign.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.await;
    }
    let last_write = shared.now();
    runner.recovery(last_write).await;
    tokio::time::sleep(SAMPLE_EVERY * 2).await;
    shared.stop_sampler.store(true, Ordering::SeqCst);
    let _ = sampler_task.await;
    let calls = fake.calls().await;
    // Let the replicas' last requests reach the audit log, then stop them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slots = std::mem::take(&mut runner.slots);
    drop(slots);
    let audit = read_audit(&audit_log, &h.identity);

    let report = Report::build(
        &settings,
        &runner,
        &shared,
        &audit,
        &calls,
        converged,
        chaos_start,
        faults_end,
        run_started.elapsed().as_secs_f64(),
    );
    report.write(&settings.out, &runner.logs);
    eprintln!("{}", report.text);
    eprintln!(
        "chaos: report in {}",
        settings.out.join("report.txt").display()
    );
    assert!(
        report.failures.is_empty(),
        "fault matrix failed (seed {}): {}",
        settings.seed,
        report.failures.join("; ")
    );
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report {
    text: String,
    json: Value,
    failures: Vec<String>,
}

const DEFINITIONS: &str = "\
- one fault at a time; the next starts 0.5-4 s (random) after everything is healthy again, or after 120 s.
- end of a fault: cloud faults: when the fake answers again (faults cleared); apiserver-restart: when the
  restarted kube-apiserver answers /readyz (SIGTERM, then SIGKILL 2 s after it stopped listening and closed
  its audit log); leader-kill / standby-kill: the SIGKILL (a replacement replica under a new identity is
  started at once); edit-good: the edit is applied; edit-bad: the last good ConfigMap is applied back.
- healthy sample: the API server answers; every watched namespace has the pull Secret, complete (below);
  every login in it is accepted by the fake registry (/_fake/registry-login) with >= 10 s left; every
  selected ServiceAccount carries the reference exactly once and no unselected one carries it; exactly one
  replica reports acr_helper_leader 1.
- recovery: from the end of the fault to the start of the first healthy sample. Samples start every 1 s,
  so figures have ~1 s resolution, and a fault that disturbed nothing shows under 1 s.
- \"while the cloud answered\": a sample at time t, unless a cloud fault (any API, any kind) was injected at
  some moment of [t - 10 s, t]; the 10 s after a cloud fault ends are the controller's stated recovery
  window (its retries wait at most a quarter of the passwords' remaining life; a call in flight may take
  the 2 s request timeout). API server restarts and replica kills are NOT excluded: passwords are
  refreshed 25-30 s before they expire, no fault lasts longer than 15 s and faults never overlap.
- seconds rejected: over those samples in which at least one watched namespace's Secret held a login the
  fake registry rejects, the sum of the time since the previous observed sample (conservative);
  namespace-seconds weights each by the number of such namespaces.
- half-written or empty: a Secret observation that is not kubernetes.io/dockerconfigjson, lacks the
  managed-by label, the expires-at or instances annotation (both instances), has an unparseable
  .dockerconfigjson, empty auths, no login for one of the 3 configured domains, an empty username or
  password, or an auth that is not base64(username:password). A watched namespace without its Secret
  counts as \"Secrets missing\".
- foreign entries: the other client (3 writers, ~10 appends/s, half of them on the ServiceAccounts of 10
  \"hot\" namespaces) appends `foreign-N` to the imagePullSecrets of random default/builder
  ServiceAccounts (GET, then PUT with the resourceVersion, retried on 409), never removing any. Lost: an
  entry whose write completed before a sample's reads began and that the sample did not find (each entry
  counted once). Reordered: a ServiceAccount whose entries appear in another order than written.
- two writers (from the API server's audit log): a successful create/update/patch/delete of a Secret or
  ServiceAccount by replica R (user agent \"... (R)\") while another replica had made a successful Lease
  update after R's last successful Lease update before that write; or by a replica that never had one.
- bad edits: each must be refused whole: some replica reports acr_helper_config_valid 0 while it is live,
  and no sample during it shows a missing/extra reference or a missing/incomplete Secret.
- cloud calls per refresh cycle: GetAuthorizationToken requests that reached the fake during the fault
  phase (failed and faulted ones included) / distinct passwords first seen in the Secrets during it (each
  new password is one refresh of one instance).";

impl Report {
    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn build(
        settings: &Settings,
        runner: &Runner<'_>,
        shared: &Shared,
        audit: &AuditFigures,
        calls: &BTreeMap<String, u64>,
        converged: f64,
        chaos_start: f64,
        faults_end: f64,
        wall: f64,
    ) -> Report {
        let samples: Vec<Sample> = lock(&shared.samples)
            .iter()
            .filter(|s| s.t >= chaos_start)
            .cloned()
            .collect();
        let faults = &runner.faults;
        let cloud_windows: Vec<(f64, f64)> = faults
            .iter()
            .filter(|f| f.cloud)
            .map(|f| (f.start, f.end))
            .collect();
        let near_cloud = |t: f64| {
            cloud_windows
                .iter()
                .any(|(s, e)| *s <= t && *e + CLOUD_GRACE_SECONDS >= t)
        };
        let mut rejected_s = 0.0;
        let mut rejected_ns_s = 0.0;
        let mut rejected_s_cloud = 0.0;
        let mut prev: Option<f64> = None;
        let mut unobserved = 0;
        let mut two_leader_samples = 0;
        let mut first_rejected: Vec<String> = Vec::new();
        for s in &samples {
            if !s.observed {
                unobserved += 1;
                continue;
            }
            let dt = prev.map_or(SAMPLE_EVERY.as_secs_f64(), |p| s.t - p);
            prev = Some(s.t);
            if s.leaders > 1 {
                two_leader_samples += 1;
            }
            if s.rejected > 0 {
                if near_cloud(s.t) {
                    rejected_s_cloud += dt;
                } else {
                    rejected_s += dt;
                    #[allow(clippy::cast_precision_loss)]
                    let n = s.rejected as f64;
                    rejected_ns_s += dt * n;
                    if first_rejected.len() < 20 {
                        first_rejected.push(format!(
                            "t={:.1}s: {} namespaces",
                            s.t - chaos_start,
                            s.rejected
                        ));
                    }
                }
            }
        }
        let sum = |f: fn(&Sample) -> usize| samples.iter().map(f).sum::<usize>();
        let secrets_bad = sum(|s| s.secrets_bad);
        let secrets_missing = sum(|s| s.secrets_missing);
        let expires_wrong = sum(|s| s.expires_wrong);
        let refs_duplicate = sum(|s| s.refs_duplicate);
        let lost = lock(&shared.lost).clone();
        let reordered = lock(&shared.reordered).clone();
        let foreign_added = lock(&shared.foreign).len();
        let unrecovered: Vec<&FaultRecord> =
            faults.iter().filter(|f| f.recovery.is_none()).collect();
        let bad_edits: Vec<&FaultRecord> = faults.iter().filter(|f| f.bad_edit).collect();
        let not_flagged = bad_edits.iter().filter(|f| f.flagged != Some(true)).count();
        let bad_edit_changes = samples
            .iter()
            .filter(|s| {
                bad_edits
                    .iter()
                    .any(|f| f.start + 1.0 <= s.t && s.t <= f.end)
                    && s.observed
                    && !s.structure_ok()
            })
            .count();
        // Cloud calls per refresh cycle.
        let passwords = lock(&shared.passwords).clone();
        let mut new_by_instance: BTreeMap<String, usize> = BTreeMap::new();
        for (instance, first) in passwords.values() {
            if *first > chaos_start + 0.5 {
                *new_by_instance.entry(instance.clone()).or_default() += 1;
            }
        }
        let new_passwords: usize = new_by_instance.values().sum();
        let get_calls = calls.get("GetAuthorizationToken").copied().unwrap_or(0);
        let during_cloud: u64 = faults.iter().map(|f| f.calls_during).sum();
        #[allow(clippy::cast_precision_loss)]
        let per_cycle = if new_passwords == 0 {
            f64::NAN
        } else {
            get_calls as f64 / new_passwords as f64
        };
        #[allow(clippy::cast_precision_loss)]
        let per_cycle_outside = if new_passwords == 0 {
            f64::NAN
        } else {
            get_calls.saturating_sub(during_cloud) as f64 / new_passwords as f64
        };
        // Leader kills that landed while the killed leader was writing.
        let leader_kills: Vec<&(String, jiff::Timestamp, bool)> = faults
            .iter()
            .flat_map(|f| f.kills.iter())
            .filter(|k| k.2)
            .collect();
        let mid_write = leader_kills
            .iter()
            .filter(|(id, at, _)| {
                audit.writes_by.get(id).is_some_and(|ws| {
                    ws.iter().any(|w| {
                        let d = at.duration_since(*w).as_secs_f64();
                        (-1.0..=2.0).contains(&d)
                    })
                })
            })
            .count();

        // Per kind.
        let mut kinds = Vec::new();
        let mut kind_lines = Vec::new();
        for kind in FAULT_KINDS {
            let of: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == kind).collect();
            let rec: Vec<f64> = of.iter().filter_map(|f| f.recovery).collect();
            let (median, max) = median_max(rec.clone());
            let never = of.len() - rec.len();
            let (lasted_med, lasted_max) = median_max(of.iter().map(|f| f.end - f.start).collect());
            kind_lines.push(format!(
                "  {kind:<18} {:>5} {:>11.1} {:>9.1} {:>11.1} {:>9.1} {:>11}",
                of.len(),
                lasted_med,
                lasted_max,
                median,
                max,
                never
            ));
            kinds.push(json!({
                "kind": kind, "count": of.len(),
                "lasted_median_s": lasted_med, "lasted_max_s": lasted_max,
                "recovery_median_s": median, "recovery_max_s": max, "unrecovered": never,
            }));
        }

        let mut failures = Vec::new();
        let mut loss = |name: &str, value: f64, detail: String, lines: &mut Vec<String>| {
            lines.push(format!("  {name:<62} {value:>9.1}  {detail}"));
            if value != 0.0 {
                failures.push(format!("{name}: {value}"));
            }
        };
        let mut loss_lines = Vec::new();
        #[allow(clippy::cast_precision_loss)]
        {
            loss(
                "foreign imagePullSecrets entries lost",
                lost.len() as f64,
                format!(
                    "of {foreign_added} added ({} conflicts retried)",
                    shared.foreign_conflicts.load(Ordering::SeqCst)
                ),
                &mut loss_lines,
            );
            loss(
                "ServiceAccounts whose foreign entries were reordered",
                reordered.len() as f64,
                String::new(),
                &mut loss_lines,
            );
            loss(
                "seconds a namespace held a rejected password, cloud answering",
                rejected_s,
                format!("({rejected_ns_s:.1} namespace-seconds)"),
                &mut loss_lines,
            );
            loss(
                "half-written or empty Secrets observed",
                secrets_bad as f64,
                "(namespace-samples)".into(),
                &mut loss_lines,
            );
            loss(
                "Secrets missing in a watched namespace",
                secrets_missing as f64,
                "(namespace-samples)".into(),
                &mut loss_lines,
            );
            loss(
                "moments with two writers",
                audit.two_writers.len() as f64,
                format!("(of {} successful product writes)", audit.product_writes),
                &mut loss_lines,
            );
            loss(
                "writes by a replica that never held the Lease",
                audit.without_lease.len() as f64,
                String::new(),
                &mut loss_lines,
            );
            loss(
                "duplicate references",
                refs_duplicate as f64,
                "(ServiceAccount-samples)".into(),
                &mut loss_lines,
            );
            loss(
                "expires-at annotation later than the password's expiry",
                expires_wrong as f64,
                "(namespace-samples)".into(),
                &mut loss_lines,
            );
            loss(
                "bad edits not reported invalid",
                not_flagged as f64,
                format!("(of {})", bad_edits.len()),
                &mut loss_lines,
            );
            loss(
                "samples during a bad edit showing a change",
                bad_edit_changes as f64,
                String::new(),
                &mut loss_lines,
            );
            loss(
                "faults never recovered from (within 120 s)",
                unrecovered.len() as f64,
                String::new(),
                &mut loss_lines,
            );
        }
        if faults.len() < settings.min_faults {
            failures.push(format!(
                "only {} faults injected, {} required",
                faults.len(),
                settings.min_faults
            ));
        }

        let fault_lines: Vec<String> = faults
            .iter()
            .map(|f| {
                format!(
                    "  {:>3} {:>7.1} {:<18} {:<62} {:>6.1} {:>9}{}{}",
                    f.n,
                    f.start - chaos_start,
                    f.kind,
                    f.variant,
                    f.end - f.start,
                    f.recovery
                        .map_or_else(|| "NEVER".to_owned(), |r| format!("{r:.1}")),
                    if f.kills.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "  killed {}",
                            f.kills
                                .iter()
                                .map(|k| k.0.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    },
                    if f.note.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", f.note)
                    }
                )
            })
            .collect();
        let observed = samples.len() - unobserved;
        let took: Vec<f64> = samples.iter().map(|s| s.took).collect();
        let (took_med, took_max) = median_max(took);
        let cloud_calls_line = calls
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let apiserver_downtimes: Vec<f64> = faults
            .iter()
            .filter(|f| f.kind == "apiserver-restart")
            .map(|f| f.end - f.start)
            .collect();
        let (down_med, down_max) = median_max(apiserver_downtimes);

        let mut text = String::new();
        let mut line = |s: String| {
            text.push_str(&s);
            text.push('\n');
        };
        line("== fault matrix (chaos) report ==".into());
        line(format!(
            "seed {seed}: ACR_HELPER_CHAOS_SEED={seed} replays the same fault schedule (kinds, order, parameters)",
            seed = settings.seed
        ));
        line(format!(
            "run: {:.0} s of faults (asked {} s), {:.0} s in all; {} namespaces x ServiceAccounts default+builder; \
             2 Enterprise instances / 3 domains; passwords {PASSWORD_SECONDS} s, STS {STS_SECONDS} s; \
             expiring-threshold 30s<->25s; 2 replicas, lease {}/{} grace; initial convergence {converged:.1} s",
            faults_end - chaos_start,
            settings.seconds,
            wall,
            settings.namespaces,
            LEASE.0,
            LEASE.1
        ));
        line(format!(
            "samples: {} ({} while the API server did not answer), median {took_med:.2} s / max {took_max:.2} s each",
            samples.len(),
            unobserved
        ));
        line(String::new());
        line(format!("faults injected: {}", faults.len()));
        line(format!(
            "  {:<18} {:>5} {:>11} {:>9} {:>11} {:>9} {:>11}",
            "kind", "count", "lasted med", "max (s)", "recov. med", "max (s)", "unrecovered"
        ));
        for l in &kind_lines {
            line(l.clone());
        }
        line(String::new());
        line("loss figures (goal 0; any non-zero fails the run):".into());
        for l in &loss_lines {
            line(l.clone());
        }
        line(String::new());
        line("other figures:".into());
        line(format!(
            "  cloud calls per refresh cycle: {per_cycle:.2} GetAuthorizationToken requests per new password \
             ({get_calls} requests, {new_passwords} new passwords: {}); {per_cycle_outside:.2} not counting the \
             {during_cloud} requests made while a cloud fault was injected",
            new_by_instance
                .iter()
                .map(|(i, n)| format!("{i} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(format!(
            "  cloud requests during the fault phase: {cloud_calls_line}"
        ));
        line(format!(
            "  seconds a namespace held a rejected password within a cloud fault or its 10 s grace: {rejected_s_cloud:.1}"
        ));
        line(format!(
            "  leader kills: {}, of which {mid_write} while the leader was writing (a Secret/ServiceAccount write of its \
             own within 2 s before the kill, audit log)",
            leader_kills.len()
        ));
        line(format!(
            "  leadership: {} Lease updates, {} changes of hands; samples with two replicas reporting leadership: {two_leader_samples}",
            audit.lease_updates, audit.leader_changes
        ));
        line(format!(
            "  controller writes (audit): {} successful, {} refused ({} conflicts): {}",
            audit.product_writes,
            audit.product_write_failures,
            audit.conflicts,
            audit
                .by_verb
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(format!(
            "  API server restarts: outage median {down_med:.1} s, max {down_max:.1} s (stop to /readyz)"
        ));
        line(format!(
            "  other client: {foreign_added} entries added, {} conflicts retried, {} failed requests retried",
            shared.foreign_conflicts.load(Ordering::SeqCst),
            shared.foreign_errors.load(Ordering::SeqCst)
        ));
        line(format!("  samples observed: {observed}"));
        let problems = lock(&shared.secret_problems).clone();
        let details: Vec<(&str, Vec<String>)> = vec![
            (
                "two writers",
                audit.two_writers.iter().take(20).cloned().collect(),
            ),
            (
                "writes without the Lease",
                audit.without_lease.iter().take(20).cloned().collect(),
            ),
            (
                "foreign entries lost (first 20)",
                lost.iter()
                    .take(20)
                    .map(|(k, t)| format!("{k} at t={:.1}s", t - chaos_start))
                    .collect(),
            ),
            (
                "reordered",
                reordered
                    .iter()
                    .take(20)
                    .map(|(k, t)| format!("{k} at t={:.1}s", t - chaos_start))
                    .collect(),
            ),
            (
                "rejected passwords, cloud answering (first 20)",
                first_rejected.clone(),
            ),
            ("Secret problems (first 50)", problems.clone()),
            (
                "unrecovered faults",
                unrecovered
                    .iter()
                    .map(|f| format!("#{} {} {}", f.n, f.kind, f.variant))
                    .collect(),
            ),
        ];
        for (title, items) in &details {
            if !items.is_empty() {
                line(String::new());
                line(format!("{title}:"));
                for i in items {
                    line(format!("  {i}"));
                }
            }
        }
        line(String::new());
        line("faults in order (t from the start of the fault phase, seconds):".into());
        line(format!(
            "  {:>3} {:>7} {:<18} {:<62} {:>6} {:>9}",
            "#", "t", "kind", "variant", "lasted", "recovery"
        ));
        for l in &fault_lines {
            line(l.clone());
        }
        line(String::new());
        line("definitions:".into());
        line(DEFINITIONS.into());
        line(String::new());
        line(if failures.is_empty() {
            "RESULT: PASS (every loss figure is 0)".into()
        } else {
            format!("RESULT: FAIL: {}", failures.join("; "))
        });

        let fault_json: Vec<Value> = faults
            .iter()
            .map(|f| {
                let killed: Vec<Value> = f
                    .kills
                    .iter()
                    .map(|k| json!({"identity": k.0, "at": k.1.to_string(), "leader": k.2}))
                    .collect();
                json!({
                    "n": f.n, "kind": f.kind, "variant": f.variant,
                    "start_s": f.start - chaos_start, "lasted_s": f.end - f.start,
                    "recovery_s": f.recovery, "flagged_invalid": f.flagged, "killed": killed,
                    "get_authorization_token_calls_during": f.calls_during, "note": f.note,
                })
            })
            .collect();
        let loss_json = json!({
            "foreign_entries_lost": lost.len(),
            "foreign_entries_reordered_service_accounts": reordered.len(),
            "rejected_seconds_while_cloud_answered": rejected_s,
            "rejected_namespace_seconds_while_cloud_answered": rejected_ns_s,
            "half_written_or_empty_secret_observations": secrets_bad,
            "secrets_missing_observations": secrets_missing,
            "two_writer_moments": audit.two_writers.len(),
            "writes_without_lease": audit.without_lease.len(),
            "duplicate_reference_observations": refs_duplicate,
            "expires_at_later_than_expiry_observations": expires_wrong,
            "bad_edits_not_reported_invalid": not_flagged,
            "bad_edit_change_samples": bad_edit_changes,
            "unrecovered_faults": unrecovered.len(),
        });
        let cloud_json = json!({
            "get_authorization_token_calls": get_calls,
            "calls_during_cloud_faults": during_cloud,
            "new_passwords": new_passwords,
            "new_passwords_by_instance": new_by_instance,
            "calls_per_refresh_cycle": per_cycle,
            "calls_per_refresh_cycle_outside_cloud_faults": per_cycle_outside,
            "calls": calls,
        });
        let json = json!({
            "seed": settings.seed,
            "seconds_asked": settings.seconds,
            "seconds_of_faults": faults_end - chaos_start,
            "seconds_in_all": wall,
            "namespaces": settings.namespaces,
            "password_seconds": PASSWORD_SECONDS,
            "sts_seconds": STS_SECONDS,
            "initial_convergence_s": converged,
            "samples": samples.len(),
            "samples_unobserved": unobserved,
            "faults_injected": faults.len(),
            "by_kind": kinds,
            "loss": loss_json,
            "cloud": cloud_json,
            "rejected_seconds_during_cloud_faults": rejected_s_cloud,
            "leader_kills": leader_kills.len(),
            "leader_kills_while_writing": mid_write,
            "lease_updates": audit.lease_updates,
            "leader_changes": audit.leader_changes,
            "two_leader_samples": two_leader_samples,
            "controller_writes": audit.product_writes,
            "controller_writes_refused": audit.product_write_failures,
            "controller_write_conflicts": audit.conflicts,
            "controller_writes_by_verb": audit.by_verb,
            "foreign_entries_added": foreign_added,
            "foreign_conflicts": shared.foreign_conflicts.load(Ordering::SeqCst),
            "two_writers": audit.two_writers,
            "writes_without_lease": audit.without_lease,
            "lost_entries": lost.keys().collect::<Vec<_>>(),
            "secret_problems": problems,
            "faults": fault_json,
            "failures": failures,
            "definitions": DEFINITIONS,
        });
        Report {
            text,
            json,
            failures,
        }
    }

    fn write(&self, out: &Path, logs: &[(String, PathBuf)]) {
        let written = std::fs::create_dir_all(out.join("logs"))
            .and_then(|()| std::fs::write(out.join("report.txt"), &self.text))
            .and_then(|()| {
                std::fs::write(
                    out.join("report.json"),
                    serde_json::to_string_pretty(&self.json).unwrap_or_default(),
                )
            });
        if let Err(e) = written {
            eprintln!("warning: cannot write the report to {}: {e}", out.display());
            return;
        }
        for (identity, log) in logs {
            let _ = std::fs::copy(log, out.join("logs").join(format!("{identity}.log")));
        }
    }
}
