//! The end-to-end suite's secret-leak audit. When `ACR_HELPER_LEAK_DIR` names a directory (as
//! scripts/test arranges), the suite keeps there what must be searched: every controller log,
//! every /metrics page scraped, every error text a test asserted on; and what must be searched
//! for: every secret value the fake cloud was configured with, issued or received (the fake
//! appends them to `secrets.hex`) and every ServiceAccount token the tests made. At the end,
//! tests/leak_audit.rs searches all of it, and every Event the API server recorded (its audit log
//! keeps Event bodies), for every secret.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The audit's directory, if the suite runs with one.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("ACR_HELPER_LEAK_DIR")
        .map(PathBuf::from)
        .filter(|d| std::fs::create_dir_all(d).is_ok())
}

/// Where secret values are collected (one per line, hex), for the fake cloud's environment.
pub fn secrets_file() -> Option<PathBuf> {
    dir().map(|d| d.join("secrets.hex"))
}

fn append(path: &Path, bytes: &[u8]) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(bytes);
    }
}

/// A secret value the tests themselves made (a ServiceAccount token).
pub fn secret(value: &str) {
    if let Some(p) = secrets_file() {
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        append(&p, format!("{hex}\n").as_bytes());
    }
}

/// Keeps text to be searched (`kind`: metrics, errors, ...).
pub fn text(kind: &str, text: &str) {
    if let Some(d) = dir() {
        append(
            &d.join(format!("{kind}-{}.txt", std::process::id())),
            text.as_bytes(),
        );
        append(&d.join(format!("{kind}-{}.txt", std::process::id())), b"\n");
    }
}

/// Keeps a copy of a log file to be searched.
pub fn file(kind: &str, path: &Path) {
    if let (Some(d), Ok(bytes)) = (dir(), std::fs::read(path)) {
        let name = format!(
            "{kind}-{}-{:08x}.log",
            std::process::id(),
            rand::random::<u32>()
        );
        append(&d.join(name), &bytes);
    }
}
