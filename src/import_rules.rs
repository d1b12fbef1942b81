//! The house cannot drift: every `crate::` import of a non-test source file
//! must be allowed by the table "Who may import whom" in the architecture
//! doc at the top of `lib.rs`, and that table must have no loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The allowed imports, read from the doc table of `lib.rs`.
fn rules(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut rules = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | [`") else {
            continue;
        };
        let Some((module, rest)) = row.split_once("`] |") else {
            continue;
        };
        let allowed = rest
            .trim_end_matches('|')
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        rules.insert(module.to_owned(), allowed);
    }
    rules
}

/// Test-only code: files under a `tests` directory, `tests.rs` files, this
/// file, and inline `#[cfg(test)]` modules (removed by [`strip_tests`]).
fn is_test_file(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "tests")
        || path.file_name().is_some_and(|n| n == "tests.rs")
        || path.ends_with("import_rules.rs")
}

/// Removes plain `//` comment lines and every `#[cfg(test)]` item (a
/// module block or a single item) from `source`. Doc comments stay: a doc
/// link is a dependency a reader follows, and counts like an import.
fn strip_tests(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") && !trimmed.starts_with("///") && !trimmed.starts_with("//!") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the next item: up to a `;` ending it or its block's end.
            let mut depth = 0i32;
            let mut opened = false;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                opened |= item.contains('{');
                if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::` paths in `code`, including the
/// names of grouped imports (`use crate::{a, b::c}`).
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

/// The top-level module a source file belongs to (`src/peer/set.rs` ->
/// `peer`, `src/app.rs` -> `app`).
fn top_level(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    Some(name.trim_end_matches(".rs").to_owned())
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules of `rules` in an order where each comes after what it may
/// import; `Err` names the modules left in a loop.
fn layered(rules: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut left: BTreeSet<&String> = rules.keys().collect();
    while !left.is_empty() {
        let ready: Vec<&String> = left
            .iter()
            .copied()
            .filter(|m| rules[*m].iter().all(|d| done.contains(d)))
            .collect();
        if ready.is_empty() {
            return Err(left.into_iter().cloned().collect());
        }
        for m in ready {
            left.remove(m);
            done.push(m.clone());
        }
    }
    Ok(done)
}

#[test]
fn every_import_is_allowed_by_the_architecture_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let rules = rules(&lib);
    assert!(
        rules.len() >= 20,
        "the import table was not found in lib.rs"
    );
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    let mut unlisted = BTreeSet::new();
    for file in files {
        if is_test_file(&file) {
            continue;
        }
        let Some(module) = top_level(&src, &file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(allowed) = rules.get(&module) else {
            unlisted.insert(module);
            continue;
        };
        let code = std::fs::read_to_string(&file).expect("source file");
        for import in imports(&strip_tests(&code)) {
            if import != module && !allowed.contains(&import) {
                violations.push(format!(
                    "{} imports crate::{import}, which `{module}` may not import",
                    file.strip_prefix(root).unwrap_or(&file).display()
                ));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "top-level modules missing from the import table in lib.rs: {unlisted:?}"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_import_table_has_no_loop_and_names_only_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules = rules(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    for (module, allowed) in &rules {
        for import in allowed {
            assert!(
                rules.contains_key(import),
                "`{module}` may import `{import}`, which is not in the table"
            );
        }
    }
    if let Err(looped) = layered(&rules) {
        panic!("the import table has a loop among {looped:?}");
    }
}

#[test]
fn the_checker_sees_grouped_imports_and_skips_test_code() {
    let code = "use crate::{peer::Inbound, chain};\nuse crate::state::Chain;\n\
                // crate::cli in a comment\n/// a doc link to [`crate::sync`]\n#[cfg(test)]\nmod tests {\n    use crate::rpc;\n}\n\
                #[cfg(test)]\nuse crate::wallet;\nfn f() { crate::locks::lock(&m); }\n";
    let found = imports(&strip_tests(code));
    let expected: BTreeSet<String> = ["peer", "chain", "state", "locks", "sync"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(found, expected);
    let mut rules = BTreeMap::new();
    rules.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    rules.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(layered(&rules).is_err(), "a loop is found");
}
