//! The signature vectors the signer's unit tests hold (tests/data/signature-vectors.json) are
//! recomputed here with Alibaba Cloud's official Python SDKs, so they cannot drift from the SDKs.

mod support;

use std::process::Command;

#[test]
fn stored_signature_vectors_match_the_official_sdks() {
    let root = support::repo_root();
    let out = Command::new(support::fake_cloud::python())
        .arg(root.join("tests/sdk/signature_vectors.py"))
        .output()
        .unwrap_or_else(|e| panic!("run signature_vectors.py: {e}"));
    assert!(
        out.status.success(),
        "signature_vectors.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let computed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("signature_vectors.py printed no JSON: {e}"));
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/data/signature-vectors.json"))
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        computed, stored,
        "the SDKs now compute different vectors: regenerate tests/data/signature-vectors.json \
         with tests/sdk/signature_vectors.py and find out why"
    );
}
