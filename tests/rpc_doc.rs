//! docs/RPC.md against the code: every method has exactly one section
//! (a "### `name`" heading), every section names a real method, and each
//! section has a `Params:` line naming every parameter the method takes
//! (as in [`timed::rpc::params::SIGNATURES`], which the dispatcher checks
//! calls against) and a `Result:` line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use timed::rpc::params::SIGNATURES;

/// Each documented method's section text, by name, in document order.
fn sections() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RPC.md")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in doc.lines() {
        if line.starts_with("## ") || line.starts_with("### ") {
            out.extend(current.take());
            if let Some(name) = line
                .strip_prefix("### `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                current = Some((name.to_owned(), String::new()));
            }
            continue;
        }
        if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out.extend(current);
    out
}

#[test]
fn every_method_is_documented_once_with_its_params_and_result() {
    let sections = sections();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, _) in &sections {
        *seen.entry(name.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "documented twice: {repeated:?}");
    let known: Vec<&str> = SIGNATURES.iter().map(|(name, _)| *name).collect();
    let unknown: Vec<_> = seen.keys().filter(|n| !known.contains(n)).collect();
    assert!(unknown.is_empty(), "not methods: {unknown:?}");
    let missing: Vec<_> = known.iter().filter(|n| !seen.contains_key(*n)).collect();
    assert!(missing.is_empty(), "undocumented: {missing:?}");

    for (name, text) in &sections {
        let params = text
            .lines()
            .find(|l| l.starts_with("Params:"))
            .unwrap_or_else(|| panic!("{name}: no `Params:` line"));
        let (_, names) = SIGNATURES.iter().find(|(n, _)| n == name).unwrap();
        if names.is_empty() {
            assert!(params.contains("none"), "{name}: {params}");
        }
        for param in *names {
            assert!(
                params.contains(&format!("`{param}`")),
                "{name}: parameter `{param}` not on its Params line: {params}"
            );
        }
        assert!(
            text.lines().any(|l| l.starts_with("Result:")),
            "{name}: no `Result:` line"
        );
    }
}

/// Every error code the RPC answers with is in the document's table.
#[test]
fn every_error_code_is_documented() {
    use timed::rpc::codes::*;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RPC.md")).unwrap();
    for code in [
        PARSE_ERROR,
        INVALID_REQUEST,
        METHOD_NOT_FOUND,
        INVALID_PARAMS,
        INTERNAL_ERROR,
        UNAUTHORIZED,
        NOT_FOUND,
        RELOAD_FAILED,
        TX_REJECTED,
        WALLET,
        UNAVAILABLE,
        BUSY,
        STORE,
    ] {
        assert!(
            doc.contains(&format!("`{code}`")),
            "code {code} undocumented"
        );
    }
}
