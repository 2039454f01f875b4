//! `cargo xtask tidy`: the checks that need no test bed, the first thing `cargo xtask test` runs.
//!
//! - rustfmt, with `rustfmt.toml`, on the workspace and on `fuzz/` (a workspace of its own);
//! - clippy on every crate and target of the workspace with every feature, warnings denied:
//!   `--all-features` turns on the provider's `internals`, under which `unreachable_pub` is
//!   checked (everything `pub` that `internals` does not re-export should be `pub(crate)`).
//!
//! - the documentation against the code and itself ([`docs`]): settings, environment variables,
//!   links;
//! - the provider's module edges against its layers ([`modules`]);
//! - the licence, crate and source policy of `deny.toml`, by cargo-deny offline ([`deny`]).
//!
//! Every check runs even when one fails, so that one run shows everything to fix.

mod deny;
mod docs;
mod modules;

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
    let mut failed: Vec<String> = CHECKS.iter().filter_map(|(what, args)| cargo(what, args).err()).collect();
    crate::step("check the documentation", "settings and variables against the code, links");
    failed.extend(docs::check(&cosmian_pkcs11_testbed::workspace_root()).err());
    crate::step("check the module edges", "the imports of src/ against the layers of xtask/src/tidy/modules.rs");
    failed.extend(modules::check(&cosmian_pkcs11_testbed::workspace_root()).err());
    failed.extend(deny::check(&cosmian_pkcs11_testbed::workspace_root()).err());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("tidy: {} check(s) failed:\n  {}", failed.len(), failed.join("\n  ")))
    }
}
