//! The release library and agent are reproducible: [`check`] builds the x86_64 ones a second
//! time with the same function ([`elf::cargo_build`]) from a copy of the work tree in another
//! folder ([`copy_tree`]), with another `CARGO_HOME` (the crates' downloads and the index linked
//! from this one, their sources unpacked anew, offline), another `HOME` (zig's and
//! cargo-zigbuild's caches) and another target folder, and compares the bytes; [`check_macos`]
//! does the same for the universal macOS library and agent of the cross build. The build paths
//! are remapped in both ([`super::BuildPaths`]), so neither names its folder.

use std::path::Path;
use std::time::Instant;

use super::elf::{self, BuildTree, LinuxLib};
use super::macos::{MachO, Universal};
use super::{BuildPaths, Tools, capture, sha256_file, workspace_root};
use crate::step;

/// Builds `lib`'s library and agent again elsewhere; `Err` with both SHA-256 when one differs.
pub fn check(tools: &Tools, lib: &LinuxLib) -> Result<(), String> {
    let what = format!("the {} library and agent", lib.arch.rpm());
    let (again, tree) = elsewhere(&what)?;
    let start = Instant::now();
    let built = elf::cargo_build(tools, lib.arch, &tree)?;
    for (first, name) in [(&lib.path, elf::FILE), (&lib.agent, elf::AGENT)] {
        let sha256 = compare(first, &built.join(name))?;
        println!("    {name}: sha256 {sha256}, twice");
    }
    println!("    built again in {:.0?}", start.elapsed());
    drop(again);
    Ok(())
}

/// Builds the universal macOS library and agent (`files`) again elsewhere with the cross build;
/// `Err` with both SHA-256 when one differs.
pub fn check_macos(tools: &Tools, files: &Universal) -> Result<(), String> {
    let (again, tree) = elsewhere("the universal macOS library and agent")?;
    let start = Instant::now();
    let second = Universal { dylib: again.path().join("dylib"), agent: again.path().join("agent") };
    super::macos_cross::build(tools, &tree, &second)?;
    for kind in MachO::ALL {
        let sha256 = compare(files.get(kind), second.get(kind))?;
        println!("    {}: sha256 {sha256}, twice", kind.file_name());
    }
    println!("    built again in {:.0?}", start.elapsed());
    drop(again);
    Ok(())
}

/// A copy of the work tree in a new temporary folder, with its own cargo home (the downloads
/// linked), `HOME` and target folder: the tree a second build runs in.
fn elsewhere(what: &str) -> Result<(tempfile::TempDir, BuildTree), String> {
    let again = tempfile::Builder::new().prefix("rebuild-").tempdir().map_err(|e| e.to_string())?;
    let root = again.path().join("cosmian-pkcs11-again");
    step(
        &format!("check that {what} are reproducible"),
        &format!(
            "build them again in {} (another CARGO_HOME, HOME, CARGO_TARGET_DIR), compare SHA-256",
            root.display()
        ),
    );
    copy_tree(&workspace_root(), &root)?;
    let cargo_home = again.path().join("cargo-home");
    link_downloads(&BuildPaths::get()?.cargo_home, &cargo_home)?;
    std::fs::create_dir_all(again.path().join("home")).map_err(|e| e.to_string())?;
    let tree = BuildTree {
        paths: BuildPaths { root, cargo_home },
        target_dir: again.path().join("target"),
        home: Some(again.path().join("home")),
    };
    Ok((again, tree))
}

/// The SHA-256 of `first`, `Err` with both when `second` differs.
fn compare(first: &Path, second: &Path) -> Result<String, String> {
    let (a, b) = (sha256_file(first)?, sha256_file(second)?);
    if a == b {
        Ok(a)
    } else {
        Err(format!("{} is not reproducible: {a}, then {b} built again ({})", first.display(), second.display()))
    }
}

/// The files of the work tree at `from` (tracked, and untracked ones git does not ignore:
/// `git ls-files --cached --others --exclude-standard`) copied into `to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let listing = capture(
        std::process::Command::new("git")
            .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
            .current_dir(from),
    )?;
    for relative in listing.split('\0').filter(|name| !name.is_empty()) {
        let (source, destination) = (from.join(relative), to.join(relative));
        // A tracked file deleted in the work tree is not part of it.
        if !source.is_file() {
            continue;
        }
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::copy(&source, &destination)
            .map_err(|e| format!("cannot copy {} to {}: {e}", source.display(), destination.display()))?;
    }
    Ok(())
}

/// A new cargo home at `to` that shares the registry's index and downloaded crates of `from`.
fn link_downloads(from: &Path, to: &Path) -> Result<(), String> {
    let registry = to.join("registry");
    std::fs::create_dir_all(&registry).map_err(|e| format!("cannot create {}: {e}", registry.display()))?;
    for name in ["index", "cache"] {
        let original = from.join("registry").join(name);
        std::os::unix::fs::symlink(&original, registry.join(name))
            .map_err(|e| format!("cannot link {}: {e}", original.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_fails_with_both_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        std::fs::write(&first, "abc").unwrap();
        std::fs::write(&second, "abc").unwrap();
        assert_eq!(compare(&first, &second).unwrap(), sha256_file(&first).unwrap());
        std::fs::write(&second, "abd").unwrap();
        let error = compare(&first, &second).unwrap_err();
        assert!(error.contains(&sha256_file(&first).unwrap()) && error.contains(&sha256_file(&second).unwrap()));
    }

    #[test]
    fn copies_the_files_git_knows() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        copy_tree(&workspace_root(), &copy).unwrap();
        for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "xtask/src/package/reproducible.rs"] {
            assert_eq!(std::fs::read(copy.join(file)).unwrap(), std::fs::read(workspace_root().join(file)).unwrap());
        }
        assert!(!copy.join("target").exists());
    }
}
