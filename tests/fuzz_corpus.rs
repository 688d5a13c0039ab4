//! Replays every fuzz seed and every crash reproducer kept in fuzz/ (fuzz/corpus/<target>/ and
//! fuzz/artifacts/<target>/) through the fuzz targets' entry points, on stable: a crash once found
//! and fixed can never come back unnoticed.

use std::path::Path;

use acr_helper::fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let data = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            (e.path().display().to_string(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_and_reproducer_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz target {name} has no seed in fuzz/corpus/{name}"
        );
        let reproducers = inputs(&root.join("artifacts").join(name));
        for (path, data) in seeds.iter().chain(reproducers.iter()) {
            let outcome = std::panic::catch_unwind(|| target(data));
            assert!(outcome.is_ok(), "{name}: {path} panics");
        }
    }
}

#[test]
fn every_fuzz_target_has_a_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap_or_else(|e| panic!("fuzz/Cargo.toml: {e}"));
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks target {name}"
        );
    }
}
