//! docs/CONFIG.md against the code: every key of the `[node]`, `[p2p]`,
//! `[rpc]`, `[metrics]`, `[logging]` and `[chain]` tables (and of tables
//! inside them, such as `[p2p.diversity]`) is a real key, every
//! key the code has is documented, and every default written as one TOML
//! value is the code's default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use timed::config::Config;

/// The documented rows of each section: key -> default cell.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md")).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            // "## `[p2p]`" names a section; any other heading ends it.
            section = heading
                .strip_prefix("`[")
                .and_then(|h| h.strip_suffix("]`"))
                .filter(|h| !h.starts_with('['))
                .map(str::to_owned);
            continue;
        }
        if line.starts_with('`') && line.contains("chain.masternodes") {
            // The `[[chain.masternodes]]` / `[[chain.allocations]]` entry
            // tables follow: not keys of `[chain]` itself.
            section = None;
        }
        let Some(section) = &section else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let key = cells[1].trim_matches('`').to_owned();
        out.entry(section.clone())
            .or_default()
            .insert(key, cells[2].to_owned());
    }
    out
}

#[test]
fn the_documented_keys_and_defaults_are_the_codes() {
    let doc = documented();
    let defaults = Config::default();
    let mut code: BTreeMap<String, toml::Value> = [
        ("node", toml::Value::try_from(&defaults.node).unwrap()),
        ("p2p", toml::Value::try_from(&defaults.p2p).unwrap()),
        ("rpc", toml::Value::try_from(&defaults.rpc).unwrap()),
        ("metrics", toml::Value::try_from(&defaults.metrics).unwrap()),
        ("logging", toml::Value::try_from(&defaults.logging).unwrap()),
        ("chain", toml::Value::try_from(&defaults.chain).unwrap()),
    ]
    .into_iter()
    .map(|(section, value)| (section.to_owned(), value))
    .collect();
    // A table inside a section (`[p2p.diversity]`) is documented as a
    // section of its own.
    for (section, value) in code.clone() {
        for (key, inner) in value.as_table().unwrap() {
            if inner.is_table() {
                code.get_mut(&section)
                    .unwrap()
                    .as_table_mut()
                    .unwrap()
                    .remove(key);
                code.insert(format!("{section}.{key}"), inner.clone());
            }
        }
    }
    for (section, values) in &code {
        let rows = doc
            .get(section)
            .unwrap_or_else(|| panic!("docs/CONFIG.md has no [{section}] table"));
        let values = values.as_table().unwrap();
        for key in values.keys() {
            assert!(
                rows.contains_key(key),
                "[{section}] {key} is not documented in docs/CONFIG.md"
            );
        }
        for (key, cell) in rows {
            // The key is one the parser knows (unknown keys are errors that
            // say so; a value of the wrong type is another error).
            let probe = format!("[{section}]\n{key} = {{ probe = 1 }}\n");
            if let Err(e) = Config::parse(&probe, std::path::Path::new("doc.toml")) {
                assert!(
                    !e.to_string().contains("unknown field"),
                    "[{section}] {key} is documented but not a key: {e}"
                );
            }
            // A default written as one TOML value must be the code's (cells
            // such as `127.0.0.1:<rpc port>` are descriptions, not values).
            let Some(value) = cell
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| !c.contains('`'))
            else {
                continue;
            };
            let text = format!("[{section}]\n{key} = {value}\n");
            let Ok(parsed) = toml::from_str::<toml::Value>(&text) else {
                continue;
            };
            let documented =
                &section.split('.').fold(&parsed, |table, name| &table[name])[key.as_str()];
            if let Some(actual) = values.get(key) {
                assert_eq!(
                    documented, actual,
                    "[{section}] {key}: docs/CONFIG.md says {cell}, the code's default is {actual}"
                );
            }
            if let Err(e) = Config::parse(&text, std::path::Path::new("doc.toml")) {
                panic!("[{section}] {key} = {cell}, the documented default, is refused: {e}");
            }
        }
    }
}
