//! `cargo xtask tidy`: the checks that need no test bed, the first thing `cargo xtask test` runs.
//!
//! - rustfmt, with `rustfmt.toml`, on the workspace and on `fuzz/` (a workspace of its own);
//! - clippy on every crate and target of the workspace with every feature, warnings denied:
//!   `--all-features` turns on the provider's `internals`, under which `unreachable_pub` is
//!   checked (everything `pub` that `internals` does not re-export should be `pub(crate)`).
//!
//! Every check runs even when one fails, so that one run shows everything to fix.

use crate::cargo;

/// The checks, each `(what, cargo arguments)`.
const CHECKS: [(&str, &[&str]); 3] = [
    ("check the formatting", &["fmt", "--all", "--", "--check"]),
    ("check the formatting of the fuzz targets", &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
    (
        "lint every crate, target and feature",
        &["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"],
    ),
];

/// `cargo xtask tidy`: `Err` naming every check that failed.
pub fn run() -> Result<(), String> {
    let failed: Vec<String> = CHECKS.iter().filter_map(|(what, args)| cargo(what, args).err()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("tidy: {} check(s) failed:\n  {}", failed.len(), failed.join("\n  ")))
    }
}
