//! The layering ARCHITECTURE.md documents, checked: every `crate::` path in a module's non-test
//! source names a module on its own layer or below. A lower module that starts to import a
//! higher one (the first step to a cycle) fails this test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each top-level module, as ARCHITECTURE.md's table gives it.
const LAYERS: &[(&str, u8)] = &[
    ("duration", 0),
    ("kube_errors", 0),
    ("timing", 0),
    ("aliyun", 0),
    ("credentials", 1),
    ("config", 1),
    ("provider", 1),
    ("record", 2),
    ("render", 2),
    ("index", 3),
    ("config_source", 3),
    ("watches", 3),
    ("leader", 3),
    ("metrics", 3),
    ("webhook", 4),
    ("plan", 4),
    ("status", 4),
    ("controller", 5),
    ("migrate", 5),
    ("server", 5),
    ("cli", 6),
    ("telemetry", 6),
    ("app", 6),
    ("fuzz", 6),
];

/// The source of a file without its test modules, line comments and doc comments.
fn code_of(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_one_above_its_layer() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap_or(&path);
        let name = rel.to_string_lossy();
        if name == "lib.rs" || name == "main.rs" || name.contains("tests") {
            continue;
        }
        let top = name
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(&own) = layers.get(top.as_str()) else {
            unknown.insert(top);
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let code = code_of(&text);
        for (i, _) in code.match_indices("crate::") {
            let used: String = code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used == top || used.is_empty() {
                continue;
            }
            match layers.get(used.as_str()) {
                Some(&layer) if layer > own => {
                    violations.insert(format!(
                        "{name} (layer {own}) uses crate::{used} (layer {layer})"
                    ));
                }
                Some(_) => {}
                None => {
                    unknown.insert(used);
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from the layer table (add them here and to ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_layer_table_is_the_one_architecture_md_shows() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap_or_else(|e| panic!("ARCHITECTURE.md: {e}"));
    for (module, layer) in LAYERS {
        let row_start = format!("| {layer} | `{module}` |");
        let listed = doc.contains(&row_start)
            || doc.lines().any(|l| {
                l.starts_with(&format!("| {layer} |")) && l.contains(&format!("`{module}`"))
            });
        assert!(
            listed,
            "ARCHITECTURE.md has no row for {module} on layer {layer}"
        );
    }
}
