//! The dnf repositories, one per architecture (`rpm/x86_64/`, `rpm/aarch64/`: the `.repo`'s
//! `baseurl` ends with `$basearch`): the .rpms, each signed with `rpmsign`, and their
//! `createrepo_c` metadata, whose `repodata/repomd.xml` is signed in `repomd.xml.asc` (what
//! dnf checks with `repo_gpgcheck=1`; `gpgcheck=1` checks the packages' signatures).

use std::path::{Path, PathBuf};

use super::super::{Tools, capture};
use super::signing::SigningKey;

/// The folder of the rpm `file`'s architecture under the dnf repositories' root.
pub fn arch_dir(tools: &Tools, rpm: &Path, file: &Path) -> Result<PathBuf, String> {
    let arch = capture(tools.command("rpm").args(["-qp", "--qf", "%{ARCH}"]).arg(file))?;
    Ok(rpm.join(arch.trim()))
}

/// The .rpm files of `dir`, sorted.
pub fn rpms(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "rpm"))
        .collect();
    found.sort();
    Ok(found)
}

/// Signs every rpm of the repository `dir` with `key`, then indexes and signs it.
pub fn sign_all_and_index(tools: &Tools, key: &SigningKey, dir: &Path) -> Result<(), String> {
    key.sign_rpms(tools, &rpms(dir)?)?;
    index_and_sign(tools, key, dir)
}

/// `createrepo_c` on `dir` (the metadata of the rpms as they are: their signatures are not
/// touched), then `repomd.xml.asc`.
pub fn index_and_sign(tools: &Tools, key: &SigningKey, dir: &Path) -> Result<(), String> {
    // No sqlite databases: dnf reads the XML metadata (yum, which needed them, has no glibc
    // 2.28).
    capture(tools.command("createrepo_c").args(["--quiet", "--no-database"]).arg(dir))?;
    let repomd = dir.join("repodata/repomd.xml");
    key.sign(tools, &repomd, &dir.join("repodata/repomd.xml.asc"), false)
}
