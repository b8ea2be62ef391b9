//! The module layering the design asks for, checked on the source: the switch and RSS know no
//! transport, and no two modules import each other (at the top level, and between the files of
//! one module). Reads every `crate::` and `super::` path in src/.

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
        for c in line.chars() {
            if c == '"' {
                in_str = !in_str;
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
