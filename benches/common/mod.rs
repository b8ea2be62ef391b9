//! Shared by the benches: writing their sections of docs/benchmarks.md.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Today's date (UTC), for the record.
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces (or appends) the section `## {title}` of docs/benchmarks.md with `body`.
pub fn write_section(title: &str, body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let heading = format!("## {title}");
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    let new = match doc.find(&heading) {
        Some(s) => {
            let end = doc[s + 3..]
                .find("\n## ")
                .map(|e| s + 3 + e + 1)
                .unwrap_or(doc.len());
            format!("{}{}\n{}", &doc[..s], section, &doc[end..])
        }
        None => format!("{}\n\n{section}", doc.trim_end()),
    };
    if let Err(e) = std::fs::write(&path, new.trim_end().to_string() + "\n") {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i]
}
