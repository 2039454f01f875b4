//! The source tarball and the Homebrew formula. The tarball is `git archive` of `HEAD`,
//! gzipped without timestamp (reproducible for a commit); the formula
//! (`packaging/homebrew/Formula/cosmian-pkcs11.rb`, a template) is rendered with the version
//! and the tarball's SHA-256 into `target/dist/homebrew/Formula/`, tap layout. Checked with
//! `ruby -c` and `packaging/homebrew/check_formula.rb`: every stanza a release needs, the
//! caveats, and the formula's `test do` run against the release library; a formula missing a
//! stanza must fail that check.

use std::path::{Path, PathBuf};

use super::elf::LinuxLib;
use super::{capture, packaging_file, render, sha256_file, version, workspace_root, Tools, NAME};
use crate::step;

const FORMULA: &str = "homebrew/Formula/cosmian-pkcs11.rb";

/// Makes the tarball and the formula in `dist`, and checks the formula; returns their paths.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, dist: &Path) -> Result<(PathBuf, PathBuf), String> {
    let tarball = source_tarball(tools, dist)?;
    let sha256 = sha256_file(&tarball)?;
    let formula = dist.join(FORMULA);
    step("render the Homebrew formula", &formula.display().to_string());
    let text = render(&packaging_file(FORMULA)?, &[("VERSION", version()), ("SHA256", &sha256)])?;
    super::write(&formula, &text)?;

    step("check it", &format!("ruby -c; ruby packaging/homebrew/check_formula.rb {} LIB_DIR", formula.display()));
    capture(tools.command("ruby").arg("-c").arg(&formula))?;
    // The formula's test loads `lib/libcosmian_pkcs11.so`: the release library, there.
    let prefix = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lib_dir = prefix.path().join("lib");
    std::fs::create_dir_all(&lib_dir).map_err(|e| e.to_string())?;
    std::fs::copy(&lib.path, lib_dir.join(super::elf::FILE)).map_err(|e| e.to_string())?;
    let out = check_formula(tools, &formula, &lib_dir)?;
    let url = format!("{}/releases/download/v{v}/{NAME}-{v}.tar.gz", super::HOMEPAGE, v = version());
    if !out.contains(&format!("url={url}\n")) || !out.contains(&format!("sha256={sha256}\n")) {
        return Err(format!("the formula does not name {url} and {sha256}:\n{out}"));
    }
    print!("{}", out.lines().map(|line| format!("    {line}\n")).collect::<String>());

    // The stanza check must be able to fail.
    let incomplete = prefix.path().join("incomplete.rb");
    let without_license: String =
        text.lines().filter(|l| !l.trim_start().starts_with("license ")).map(|l| format!("{l}\n")).collect();
    super::write(&incomplete, without_license)?;
    match check_formula(tools, &incomplete, &lib_dir) {
        Err(report) if report.contains("no license") => {
            println!("    and a formula without its license fails the check");
            Ok((tarball, formula))
        }
        other => Err(format!("check_formula.rb accepts a formula without license: {other:?}")),
    }
}

fn check_formula(tools: &Tools, formula: &Path, lib_dir: &Path) -> Result<String, String> {
    capture(
        tools
            .command("ruby")
            .arg(workspace_root().join("packaging/homebrew/check_formula.rb"))
            .arg(formula)
            .arg(lib_dir),
    )
}

/// `cosmian-pkcs11-VERSION.tar.gz`: `git archive HEAD` under `cosmian-pkcs11-VERSION/`.
fn source_tarball(tools: &Tools, dist: &Path) -> Result<PathBuf, String> {
    let prefix = format!("{NAME}-{}", version());
    let tarball = dist.join(format!("{prefix}.tar.gz"));
    step("make the source tarball", &format!("git archive --prefix={prefix}/ HEAD | gzip > {}", tarball.display()));
    let head = capture(tools.command("git").args(["rev-parse", "HEAD"]))?;
    let tar = tools
        .command("git")
        .args(["archive", "--format=tar", &format!("--prefix={prefix}/"), "HEAD"])
        .output()
        .map_err(|e| format!("cannot run git archive: {e}"))?;
    if !tar.status.success() {
        return Err(format!("git archive failed: {}", String::from_utf8_lossy(&tar.stderr)));
    }
    super::write(&tarball, super::gzip(&tar.stdout)?)?;
    let dirty = capture(tools.command("git").args(["status", "--porcelain", "--untracked-files=no"]))?;
    println!(
        "    from commit {}{}",
        head.trim(),
        if dirty.trim().is_empty() { "" } else { " (the work tree has uncommitted changes: they are not in it)" }
    );
    Ok(tarball)
}
