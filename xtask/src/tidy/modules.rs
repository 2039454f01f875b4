//! The provider's module edges, enforced: which top-level module of `src/` may name which
//! (`crate::x`, or the `platform` crate), as data ([`ALLOWED`], the layers of
//! docs/architecture.md). A new edge fails `cargo xtask tidy` with the file, the line and the
//! `use` that made it. Unit tests (`#[cfg(test)] mod tests`) are not part of the graph; the
//! crate root (`lib.rs`, which declares every module) and `src/bin` (a `main` calling the
//! library) are not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the modules it may import. Leaves import nothing.
const ALLOWED: [(&str, &[&str]); 14] = [
    ("ffi", &["provider", "error"]),
    ("agent", &["provider", "diagnosis", "token", "signing", "asn1", "platform"]),
    ("diagnosis", &["token", "kmip", "config", "asn1", "platform"]),
    ("provider", &["session", "signing", "token", "kmip", "config", "asn1", "error", "platform"]),
    ("session", &["signing", "token", "asn1", "error"]),
    ("signing", &["kmip", "asn1", "error"]),
    ("token", &["kmip", "config", "asn1", "error", "platform"]),
    ("kmip", &["config", "asn1", "error"]),
    ("config", &[]),
    ("asn1", &[]),
    ("error", &[]),
    ("platform", &[]),
    ("lib", &[]),
    ("bin", &[]),
];

/// `Err` lists every import outside [`ALLOWED`].
pub fn check(root: &Path) -> Result<(), String> {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(module, may)| (*module, may.iter().copied().collect())).collect();
    let mut problems = Vec::new();
    for file in super::docs::files_under(&root.join("src"), "rs")? {
        let relative = file.strip_prefix(root.join("src")).unwrap_or(&file);
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs"))
            .unwrap_or_default();
        if module == "lib" || module == "bin" {
            continue;
        }
        let Some(may) = allowed.get(module) else {
            problems.push(format!(
                "src/{}: module {module} is not in the table of xtask/src/tidy/modules.rs",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            for used in imports(line) {
                if used != module && allowed.contains_key(used) && !may.contains(used) {
                    problems.push(format!(
                        "src/{}:{}: {module} may not import {used} (allowed: {}; docs/architecture.md): {}",
                        relative.display(),
                        number + 1,
                        may.iter().copied().collect::<Vec<_>>().join(", "),
                        line.trim()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("module edges outside the layers:\n  {}", problems.join("\n  ")))
    }
}

/// The modules a line names: `crate::x` and the platform crate.
fn imports(line: &str) -> Vec<&str> {
    let mut found: Vec<&str> = line
        .match_indices("crate::")
        .map(|(at, _)| {
            let rest = &line[at + "crate::".len()..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .collect();
    if line.contains("cosmian_pkcs11_platform") {
        found.push("platform");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_read_from_paths_and_uses() {
        assert_eq!(imports("use crate::kmip::{operations, KmsClient};"), ["kmip"]);
        assert_eq!(imports("let x = crate::lock(&m); crate::token::load();"), ["lock", "token"]);
        assert_eq!(imports("use cosmian_pkcs11_platform as platform;"), ["platform"]);
    }

    /// The tree keeps its layers; a copy where the KMIP client reaches up to the provider is
    /// refused, naming the file, the line and the import.
    #[test]
    fn the_tree_keeps_its_layers_and_a_new_edge_is_refused() {
        check(&cosmian_pkcs11_testbed::workspace_root()).unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("src/kmip")).unwrap();
        std::fs::write(
            copy.path().join("src/kmip/client.rs"),
            "use crate::config::KmsConfig;\nuse crate::provider::Provider;\n",
        )
        .unwrap();
        let said = check(copy.path()).unwrap_err();
        assert!(said.contains("src/kmip/client.rs:2: kmip may not import provider"), "{said}");
        assert!(said.contains("use crate::provider::Provider;") && !said.contains(":1:"), "{said}");
    }
}
