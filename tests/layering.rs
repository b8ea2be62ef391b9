//! The module layering the design asks for, checked on the source: the switch and RSS know no
//! transport, and no two modules import each other (at the top level, and between the files of
//! one module). Reads every `crate::` and `super::` path in src/. And no code outside the tests
//! panics by itself: no `unwrap()`, `expect()`, `panic!` and the like in src/ but in
//! `#[cfg(test)]` items (docs/architecture.md, "Panics").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that must not be imported by `switch` and `rss`.
const TRANSPORTS: &[&str] = &["vf", "dma_engine", "frontend", "datapath", "port"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and string literals (a doc comment naming a module
/// is not an import).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if in_str && c == '\\' {
                chars.next(); // an escaped character, `\"` included
            } else if c == '"' {
                in_str = !in_str;
            } else if !in_str && c == 'r' && chars.as_str().starts_with("#\"") {
                // A raw string r#"..."# (on one line): no escapes, quotes inside.
                let rest = chars.as_str();
                let end = rest[2..].find("\"#").map_or(rest.len(), |i| i + 4);
                chars = rest[end..].chars();
            } else if !in_str && c == '\'' && chars.as_str().starts_with("\"'") {
                chars.nth(1); // the character '"'
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Identifiers following `prefix` (`crate::` or `super::`), including those inside a
/// `use crate::{a::x, b::y}` group.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let w = word(item.trim());
                if !w.is_empty() {
                    found.insert(w);
                }
            }
        } else {
            let w = word(after);
            if !w.is_empty() {
                found.insert(w);
            }
        }
        rest = &after[1.min(after.len())..];
    }
    found
}

/// The top-level module of a file: `src/switch/fdb.rs` -> `switch`, `src/daemon.rs` -> `daemon`.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = top_module(&src, &f);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = paths_after(&code(&text), "crate::");
        let entry = g.entry(m.clone()).or_default();
        entry.extend(deps.into_iter().filter(|d| *d != m));
    }
    g
}

/// A cycle in `g`, if there is one, as the list of modules around it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn switch_and_rss_import_no_transport() {
    let g = graph();
    for m in ["switch", "rss"] {
        let deps = g.get(m).cloned().unwrap_or_default();
        let bad: Vec<&String> = deps
            .iter()
            .filter(|d| TRANSPORTS.contains(&d.as_str()))
            .collect();
        assert!(bad.is_empty(), "{m} imports {bad:?}");
    }
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let g = graph();
    assert!(g.len() > 8, "the source was not read: {g:?}");
    if let Some(c) = find_cycle(&g) {
        panic!("module cycle: {}", c.join(" -> "));
    }
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Per directory: file stem -> the sibling files it reaches through `super::`.
    let mut dirs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        if stem == "mod" || f.parent() == Some(src.as_path()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let deps = paths_after(&code(&text), "super::");
        dirs.entry(f.parent().unwrap().to_path_buf())
            .or_default()
            .insert(stem, deps);
    }
    for (dir, g) in dirs {
        let siblings: BTreeSet<&String> = g.keys().collect();
        let g: BTreeMap<String, BTreeSet<String>> = g
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .filter(|d| siblings.contains(d) && *d != k)
                        .cloned()
                        .collect(),
                )
            })
            .collect();
        if let Some(c) = find_cycle(&g) {
            panic!(
                "files of {} import each other: {}",
                dir.display(),
                c.join(" -> ")
            );
        }
    }
}

/// `code` without the items under `#[cfg(test)]` (a test module, a test-only function): from
/// the attribute to the end of the item's braces, or its `;`; their lines are left empty, so
/// the others keep their numbers.
fn without_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        out.push('\n');
        let mut depth = 0i32;
        let mut opened = false;
        for item in lines.by_ref() {
            out.push('\n');
            depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
            opened |= item.contains('{');
            if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// What panics by itself, and where (file:line: the call), in `code`: `.unwrap()`,
/// `.expect(`, `panic!`, `unreachable!`, `todo!`, `unimplemented!`, `assert!`/`assert_eq!`/
/// `assert_ne!` (not the `debug_` ones, not a `const` assertion checked at compile time).
fn panicking_calls(file: &str, code: &str) -> Vec<String> {
    const CALLS: &[&str] = &[
        ".unwrap()",
        ".expect(",
        "panic!(",
        "unreachable!(",
        "todo!(",
        "unimplemented!(",
        "assert!(",
        "assert_eq!(",
        "assert_ne!(",
    ];
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        if line.trim_start().starts_with("const _") {
            continue;
        }
        for call in CALLS {
            let mut rest = line;
            while let Some(at) = rest.find(call) {
                let before = rest[..at].chars().next_back();
                let macro_call = !call.starts_with('.');
                if !macro_call || !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    found.push(format!("{file}:{}: {}", i + 1, line.trim()));
                }
                rest = &rest[at + call.len()..];
            }
        }
    }
    found
}

#[test]
fn no_code_outside_the_tests_panics_by_itself() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "the source was not read");
    let mut found = Vec::new();
    for f in files {
        let name = f.strip_prefix(&src).unwrap().display().to_string();
        // The fuzz targets' oracles are assertions: a panic is how a fuzzer reports a finding.
        if name.ends_with("_tests.rs") || name == "fuzzing.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        found.extend(panicking_calls(&name, &without_test_items(&code(&text))));
    }
    assert!(
        found.is_empty(),
        "code that panics outside the tests (return an error, count and skip, or use a \
         non-panicking form; docs/architecture.md, \"Panics\"):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_panic_check_sees_a_call_and_skips_the_tests() {
    let text = "fn f(x: Option<u8>) -> u8 {\n    debug_assert!(true);\n    x.unwrap()\n}\n\
                #[cfg(test)]\nfn helper() { Some(1).unwrap(); }\n\
                const _: () = assert!(1 > 0);\nfn g() { let s = \"x.unwrap()\"; }\n\
                #[cfg(test)]\nmod tests {\n    fn t() {\n        assert_eq!(1, 1);\n    }\n}\n\
                fn h() { unreachable!() }\n";
    let found = panicking_calls("x.rs", &without_test_items(&code(text)));
    assert_eq!(
        found,
        ["x.rs:3: x.unwrap()", "x.rs:15: fn h() { unreachable!() }"]
    );
}

#[test]
fn the_checks_see_a_cycle_and_a_group_import() {
    let code = code("use crate::{vf::Port, switch::PortId};\n// crate::frontend in a comment\nlet x = crate::rss::f();");
    assert_eq!(
        paths_after(&code, "crate::"),
        ["rss", "switch", "vf"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), ["b".to_string()].into_iter().collect());
    g.insert("b".to_string(), ["c".to_string()].into_iter().collect());
    g.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".to_string());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
