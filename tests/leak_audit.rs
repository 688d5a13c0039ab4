//! The end-to-end suite's secret-leak audit (see tests/support/leaks.rs). Runs after every other
//! test of the suite (scripts/test runs it last, explicitly; it is not part of `cargo test`'s
//! default run, where it would run too early): every secret value the fake cloud was configured
//! with, issued or received, and every ServiceAccount token the tests made, is searched for, as
//! is and base64-encoded, in every controller log the suite wrote, every /metrics page it scraped,
//! every error text it asserted on, every Event the API server recorded (its audit log keeps Event
//! bodies, also of namespaces deleted since) and every Event still in the cluster. Any hit fails.

mod support;

use std::collections::{HashMap, HashSet};

use base64::Engine as _;

/// Shorter values could match by chance; every secret the fake issues is longer.
const MIN_LEN: usize = 12;
const PREFIX: usize = 12;

fn decode_hex(line: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..line.len())
        .step_by(2)
        .map(|i| {
            line.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.and_then(|b| String::from_utf8(b).ok())
}

/// What `secret` looks like inside any base64 text that contains it: for each of the three
/// alignments it can have there, the run of characters that depends on its bytes only.
fn base64_forms(secret: &str) -> Vec<String> {
    (0..3usize)
        .map(|shift| {
            let mut bytes = vec![0u8; shift];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            // Whole groups of 3 bytes only, and not the first when it holds padding bytes.
            let end = bytes.len() / 3 * 4;
            let start = if shift == 0 { 0 } else { 4 };
            encoded.get(start..end).unwrap_or_default().to_owned()
        })
        .filter(|f| f.len() >= PREFIX)
        .collect()
}

/// The secrets, indexed by their first bytes, so each haystack is scanned once.
struct Needles {
    by_prefix: HashMap<[u8; PREFIX], Vec<(Vec<u8>, String)>>,
    count: usize,
}

impl Needles {
    fn new(secrets: &HashSet<String>) -> Needles {
        let mut by_prefix: HashMap<[u8; PREFIX], Vec<(Vec<u8>, String)>> = HashMap::new();
        let mut count = 0;
        for s in secrets {
            for form in std::iter::once(s.clone()).chain(base64_forms(s)) {
                let bytes = form.into_bytes();
                let Some(prefix) = bytes
                    .get(..PREFIX)
                    .and_then(|p| <[u8; PREFIX]>::try_from(p).ok())
                else {
                    continue;
                };
                // Named in a report by its first characters only.
                let shown = format!("{}…", String::from_utf8_lossy(&bytes[..4]));
                by_prefix.entry(prefix).or_default().push((bytes, shown));
                count += 1;
            }
        }
        Needles { by_prefix, count }
    }

    fn find(&self, haystack: &[u8]) -> Vec<String> {
        let mut hits = Vec::new();
        if haystack.len() < PREFIX {
            return hits;
        }
        for i in 0..=haystack.len() - PREFIX {
            let Ok(window) = <[u8; PREFIX]>::try_from(&haystack[i..i + PREFIX]) else {
                continue;
            };
            if let Some(candidates) = self.by_prefix.get(&window) {
                for (needle, shown) in candidates {
                    if haystack[i..].starts_with(needle) {
                        hits.push(shown.clone());
                    }
                }
            }
        }
        hits
    }
}

#[test]
fn a_secret_is_found_in_any_base64_text_that_contains_it() {
    let secret = "reg-0123456789abcdefghij".to_owned();
    let needles = Needles::new(&HashSet::from([secret.clone()]));
    for before in ["", "x", "xy", "xyz"] {
        for after in ["", "!", "!?"] {
            let blob = base64::engine::general_purpose::STANDARD
                .encode(format!("{before}{secret}{after}"));
            assert!(
                !needles.find(blob.as_bytes()).is_empty(),
                "{before:?}/{after:?}"
            );
        }
    }
    assert!(
        !needles
            .find(format!("log: {secret}.").as_bytes())
            .is_empty()
    );
    assert!(needles.find(b"nothing of it here at all").is_empty());
}

#[tokio::test]
async fn no_secret_reached_a_log_an_event_a_metric_or_an_error() {
    let dir = support::leaks::dir().unwrap_or_else(|| {
        panic!("ACR_HELPER_LEAK_DIR must name the suite's leak directory (scripts/test sets it)")
    });
    let secrets: HashSet<String> = std::fs::read_to_string(dir.join("secrets.hex"))
        .unwrap_or_default()
        .lines()
        .filter_map(decode_hex)
        .filter(|s| s.len() >= MIN_LEN)
        .collect();
    // A suite that issued almost nothing would make this audit vacuous.
    assert!(
        secrets.len() >= 50,
        "only {} secret values were collected",
        secrets.len()
    );
    let needles = Needles::new(&secrets);

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "secrets.hex") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        haystacks.push((path.display().to_string(), bytes));
    }
    let controller_logs = haystacks
        .iter()
        .filter(|(p, _)| p.contains("/controller-"))
        .count();
    assert!(
        controller_logs >= 10,
        "only {controller_logs} controller logs were kept"
    );

    // Every Event the API server recorded (bodies are in its audit log), and those still there.
    let cp = support::control_plane();
    if let Some(audit) = cp.audit_log.clone() {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let events: Vec<u8> = text
            .lines()
            .filter(|l| l.contains("\"resource\":\"events\"") && l.contains("\"requestObject\""))
            .flat_map(|l| l.bytes().chain(std::iter::once(b'\n')))
            .collect();
        assert!(!events.is_empty(), "the audit log holds no Event bodies");
        haystacks.push((format!("{} (Event bodies)", audit.display()), events));
    }
    let client = cp.client().await;
    let current = kube::Api::<k8s_openapi::api::events::v1::Event>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let notes: Vec<u8> = current
        .items
        .iter()
        .filter_map(|e| e.note.clone())
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    haystacks.push(("Events in the cluster".to_owned(), notes));

    let mut leaks = Vec::new();
    let mut searched = 0usize;
    for (name, bytes) in &haystacks {
        searched += bytes.len();
        for hit in needles.find(bytes) {
            leaks.push(format!("{hit} in {name}"));
        }
    }
    eprintln!(
        "REPORT leak audit: {} secret values ({} forms) searched in {} places ({} controller logs), {:.1} MiB: {} hits",
        secrets.len(),
        needles.count,
        haystacks.len(),
        controller_logs,
        searched as f64 / 1048576.0,
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
}
