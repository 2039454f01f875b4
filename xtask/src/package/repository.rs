//! The signed apt and dnf repositories users install from, amd64 and arm64 alike.
//!
//! `cargo xtask dist` adds the release's .debs and .rpms to `target/dist/repository/`, then
//! indexes and signs it all again ([`apt`]: `apt/`, [`dnf`]: `rpm/x86_64/`, `rpm/aarch64/`)
//! with the repository key ([`signing`]: the release key from `COSMIAN_PKCS11_REPO_SIGNING_KEY`,
//! else a throw-away one), and writes beside them what users fetch once: the public key
//! (`cosmian-pkcs11-archive-keyring.gpg` for apt's `Signed-By`, `cosmian-pkcs11.asc` for dnf)
//! and the ready-to-drop `cosmian-pkcs11.sources` and `cosmian-pkcs11.repo`, rendered from
//! `packaging/apt/` and `packaging/rpm/` with the repositories' address ([`url`]:
//! `COSMIAN_PKCS11_REPO_URL`, default the project's GitHub Pages). What the folder holds already
//! stays: the release workflow puts the published repositories there first, so that older
//! versions stay installable. Then every signature is checked with the published key alone.
//!
//! [`test`] (`cargo xtask package-test`): apt-get and dnf against these repositories served
//! over HTTP on 127.0.0.1 ([`http`]): install, log in, upgrade, downgrade, remove, refuse a
//! repository or a package signed by another key or changed after signing ([`apt_test`],
//! [`dnf_test`], sharing [`fixture`]), and Cosmian's `ckms` beside ours through both
//! ([`super::coexistence`]).

mod apt;
mod apt_test;
pub(super) mod dnf;
pub(super) mod dnf_test;
pub(super) mod fixture;
mod http;
pub(super) mod signing;

use std::path::{Path, PathBuf};

use super::{Dist, Packages, Tools, capture, packaging_file, render, write};
use crate::step;
use signing::SigningKey;

/// The environment variable that sets where the repositories are published.
pub const URL_ENV: &str = "COSMIAN_PKCS11_REPO_URL";
/// Where they are published by default: the project's GitHub Pages.
pub const DEFAULT_URL: &str = "https://cosmian.github.io/cosmian-pkcs11";
/// The public key, binary (apt) and armoured (dnf), and the source files, at the root.
pub const KEYRING: &str = "cosmian-pkcs11-archive-keyring.gpg";
pub const ASC: &str = "cosmian-pkcs11.asc";
pub const SOURCES: &str = "cosmian-pkcs11.sources";
pub const REPO: &str = "cosmian-pkcs11.repo";
/// Where the README has users put the keyring: the `.sources`' `Signed-By`.
pub const KEYRING_PATH: &str = "/etc/apt/keyrings/cosmian-pkcs11-archive-keyring.gpg";

/// The repositories' address: `COSMIAN_PKCS11_REPO_URL`, else [`DEFAULT_URL`]; no trailing `/`.
pub fn url() -> Result<String, String> {
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_owned())
    } else {
        Err(format!("{URL_ENV}={url:?} is not an http(s) URL"))
    }
}

/// `cargo xtask dist`: the packages of every architecture published into
/// `target/dist/repository/`, checked.
pub fn dist(tools: &Tools, packages: &[&Packages], dist: &Path) -> Result<(), String> {
    let key = SigningKey::for_dist(tools)?;
    let (url, root) = (url()?, dist.join("repository"));
    step(
        "publish the apt and dnf repositories",
        &format!("apt-ftparchive; rpmsign; createrepo_c; gpg --clearsign/--detach-sign -> {}", root.display()),
    );
    println!("    signing key {} ({}); published at {url}", key.fingerprint, key.origin);
    let files: Vec<&Path> = packages.iter().flat_map(|p| [p.deb.as_path(), p.rpm.as_path()]).collect();
    publish(tools, &key, &files, &root, &url)?;
    check(tools, &root)?;
    sign_checksums(tools, &key, &dist.join(SUMS), &root)?;
    verify_as_documented(tools, dist, &root)?;
    let size = |dir: &str| -> Result<String, String> {
        let du = capture(tools.command("du").args(["-sh", dir]).current_dir(&root))?;
        Ok(du.split_whitespace().next().unwrap_or_default().to_owned())
    };
    println!("    {}: apt/ {}, rpm/ {}", root.display(), size("apt")?, size("rpm")?);
    Ok(())
}

/// `cargo xtask package-test`: see the module's documentation.
pub fn test(tools: &Tools, dist: &Dist) -> Result<(), String> {
    let fixture = fixture::Fixture::new(tools, dist)?;
    apt_test::run(&fixture)?;
    dnf_test::run(&fixture)?;
    super::coexistence::test(&fixture)
}

/// Adds `packages` (.debs and .rpms) to the repositories under `root` (the .rpms signed
/// there), indexes and signs them with `key`, and writes the public key and the source files
/// for the address `url`.
pub fn publish(tools: &Tools, key: &SigningKey, packages: &[&Path], root: &Path, url: &str) -> Result<(), String> {
    let (apt_root, rpm_root) = (root.join("apt"), root.join("rpm"));
    for package in packages {
        let folder = match package.extension().and_then(|e| e.to_str()) {
            Some("deb") => apt::pool(&apt_root),
            Some("rpm") => dnf::arch_dir(tools, &rpm_root, package)?,
            _ => return Err(format!("{} is neither a .deb nor a .rpm", package.display())),
        };
        add(package, &folder)?;
    }
    std::fs::create_dir_all(apt::pool(&apt_root)).map_err(|e| e.to_string())?;
    apt::index_and_sign(tools, key, &apt_root)?;
    for dir in rpm_dirs(root)? {
        dnf::sign_all_and_index(tools, key, &dir)?;
    }
    write(&root.join(KEYRING), key.export_public(tools, false)?)?;
    write(&root.join(ASC), key.export_public(tools, true)?)?;
    let render_file = |template: &str| render(&packaging_file(template)?, &[("REPO_URL", url)]);
    write(&root.join(SOURCES), render_file("apt/cosmian-pkcs11.sources")?)?;
    write(&root.join(REPO), render_file("rpm/cosmian-pkcs11.repo")?)
}

/// Runs a command to completion: its stdout and stderr, or `Err` with them (apt's and dnf's
/// messages, refusals included, go to either).
fn output(command: &mut std::process::Command) -> Result<String, String> {
    let out =
        command.stdin(std::process::Stdio::null()).output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("{command:?} failed ({}):\n{text}", out.status)) }
}

/// `Ok` when `result`, of the command `shown`, is a failure whose output holds every one of
/// `expected`: the refusal, for the reason expected.
fn refusal(shown: &str, result: Result<String, String>, expected: &[&str]) -> Result<(), String> {
    match result {
        Err(report) if expected.iter().all(|text| report.contains(text)) => {
            for text in expected {
                println!("    refused: {text}");
            }
            Ok(())
        }
        other => Err(format!("{shown} was not refused with {expected:?}: {other:?}")),
    }
}

/// Copies `package` into `folder`, replacing a file of the same name.
pub fn add(package: &Path, folder: &Path) -> Result<PathBuf, String> {
    let name = package.file_name().ok_or_else(|| format!("{} has no file name", package.display()))?;
    let target = folder.join(name);
    std::fs::create_dir_all(folder)
        .and_then(|()| std::fs::copy(package, &target))
        .map_err(|e| format!("cannot copy {} into {}: {e}", package.display(), folder.display()))?;
    Ok(target)
}

/// The dnf repositories under `root`: `rpm/<arch>/`.
fn rpm_dirs(root: &Path) -> Result<Vec<PathBuf>, String> {
    let rpm = root.join("rpm");
    if !rpm.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&rpm)
        .map_err(|e| format!("cannot list {}: {e}", rpm.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The checksums of the release's Linux files, signed with the repository key.
pub const SUMS: &str = "SHA256SUMS-linux";

/// `SHA256SUMS-linux.asc`, a detached armoured signature of `sums` by the repository key, checked
/// as a user checks it, with the published keyring alone (`gpgv`), and refused for a changed
/// copy of the checksums.
fn sign_checksums(tools: &Tools, key: &SigningKey, sums: &Path, root: &Path) -> Result<(), String> {
    let signature = sums.with_file_name(format!("{SUMS}.asc"));
    step("sign the checksums", &format!("gpg --detach-sign --armor {SUMS}; gpgv --keyring {KEYRING}"));
    key.sign(tools, sums, &signature, false)?;
    let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
    let gpgv = |file: &Path| {
        let mut gpgv = tools.command("gpgv");
        gpgv.env("GNUPGHOME", empty.path()).arg("--keyring").arg(root.join(KEYRING)).arg(&signature).arg(file);
        gpgv.output().map_err(|e| format!("cannot run gpgv: {e}"))
    };
    let good = gpgv(sums)?;
    if !good.status.success() {
        return Err(format!("gpgv refused {}: {}", signature.display(), String::from_utf8_lossy(&good.stderr)));
    }
    let changed = empty.path().join(SUMS);
    let text = std::fs::read_to_string(sums).map_err(|e| e.to_string())?;
    std::fs::write(&changed, text.replacen('0', "1", 1)).map_err(|e| e.to_string())?;
    if gpgv(&changed)?.status.success() {
        return Err(format!("gpgv accepted a changed copy of {SUMS}"));
    }
    println!("    {}: good with the published key, a changed copy refused", signature.display());
    Ok(())
}

/// docs/install.md's "Verify a downloaded file" block, run as written by bash in a folder of
/// downloaded files, the repository served on 127.0.0.1 in place of [`DEFAULT_URL`]: it passes;
/// with one byte of one file changed, it fails.
fn verify_as_documented(tools: &Tools, dist: &Path, root: &Path) -> Result<(), String> {
    let block = cosmian_pkcs11_testbed::docs::shell_block("docs/install.md", "verify-download")?;
    let server = http::FileServer::start(root)?;
    let script = format!("set -e\n{}", block.replace(DEFAULT_URL, &server.url()));
    step("verify the downloads as docs/install.md says", "curl the keyring; gpgv; sha256sum --check");
    let sums = std::fs::read_to_string(dist.join(SUMS)).map_err(|e| e.to_string())?;
    let names: Vec<&str> = sums.lines().filter_map(|line| line.split_once("  ").map(|(_, name)| name)).collect();
    let run = |downloads: &Path| -> Result<std::process::Output, String> {
        for file in [SUMS.to_owned(), format!("{SUMS}.asc")] {
            std::fs::copy(dist.join(&file), downloads.join(&file)).map_err(|e| e.to_string())?;
        }
        let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
        tools
            .command("bash")
            .args(["-c", &script])
            .current_dir(downloads)
            .env("GNUPGHOME", empty.path())
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))
    };
    let good = tempfile::tempdir().map_err(|e| e.to_string())?;
    for name in &names {
        let link = good.path().join(name);
        std::fs::create_dir_all(link.parent().unwrap_or(good.path())).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(dist.join(name), link).map_err(|e| e.to_string())?;
    }
    let out = run(good.path())?;
    if !out.status.success() {
        return Err(format!("the documented verification failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let bad = tempfile::tempdir().map_err(|e| e.to_string())?;
    let changed = names.first().ok_or_else(|| format!("{SUMS} lists no file"))?;
    let mut bytes = std::fs::read(dist.join(changed)).map_err(|e| e.to_string())?;
    bytes[0] ^= 1;
    std::fs::write(bad.path().join(changed), bytes).map_err(|e| e.to_string())?;
    let out = run(bad.path())?;
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.success() || !said.contains(&format!("{changed}: FAILED")) {
        return Err(format!("the documented verification accepted a changed {changed}: {said}"));
    }
    println!("    {} files verified as documented; a changed {changed} refused: {}", names.len(), said.trim());
    Ok(())
}

/// What a client checks, with nothing but the published public key: `gpgv` on `InRelease`,
/// `Release.gpg` and every `repomd.xml.asc`, and `rpmkeys -K` on every .rpm.
fn check(tools: &Tools, root: &Path) -> Result<(), String> {
    step("check every signature with the published key alone", &format!("gpgv --keyring {KEYRING} ...; rpmkeys -K"));
    let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
    let gpgv = |files: &[&Path]| {
        let mut gpgv = tools.command("gpgv");
        gpgv.env("GNUPGHOME", empty.path()).arg("--keyring").arg(root.join(KEYRING)).args(files);
        capture(&mut gpgv).map(drop)
    };
    let suite = apt::suite_dir(&root.join("apt"));
    gpgv(&[&suite.join("InRelease")])?;
    gpgv(&[&suite.join("Release.gpg"), &suite.join("Release")])?;
    let db = empty.path().join("rpmdb");
    let rpmkeys = |args: &[&str]| {
        let mut command = tools.command("rpmkeys");
        command.arg("--root").arg(&db).args(["--define", "_dbpath /var/lib/rpm"]).args(args);
        command
    };
    std::fs::create_dir_all(&db).map_err(|e| e.to_string())?;
    capture(tools.command("rpm").arg("--root").arg(&db).args(["--define", "_dbpath /var/lib/rpm", "--initdb"]))?;
    capture(rpmkeys(&["--import"]).arg(root.join(ASC)))?;
    let mut count = 0;
    for dir in rpm_dirs(root)? {
        let repodata = dir.join("repodata");
        gpgv(&[&repodata.join("repomd.xml.asc"), &repodata.join("repomd.xml")])?;
        for rpm in dnf::rpms(&dir)? {
            let out = capture(rpmkeys(&["--checksig"]).arg(&rpm))?;
            if !out.trim_end().ends_with(": digests signatures OK") {
                return Err(format!("rpmkeys -K {}: {out}", rpm.display()));
            }
            count += 1;
        }
    }
    println!("    InRelease, Release.gpg, {} repomd.xml.asc and {count} .rpm signatures: good", rpm_dirs(root)?.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_files_take_the_address_as_their_one_setting() {
        let render_file = |template: &str| render(&packaging_file(template).unwrap(), &[("REPO_URL", "https://h/p")]);
        let sources = render_file("apt/cosmian-pkcs11.sources").unwrap();
        let repo = render_file("rpm/cosmian-pkcs11.repo").unwrap();
        for (text, line) in [
            (&sources, "URIs: https://h/p/apt".to_owned()),
            (&sources, format!("Suites: {}", apt::SUITE)),
            (&sources, format!("Components: {}", apt::COMPONENT)),
            (&sources, format!("Signed-By: {KEYRING_PATH}")),
            (&repo, "baseurl=https://h/p/rpm/$basearch".to_owned()),
            (&repo, "gpgcheck=1".to_owned()),
            (&repo, "repo_gpgcheck=1".to_owned()),
            (&repo, format!("gpgkey=https://h/p/{ASC}")),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(KEYRING_PATH.ends_with(KEYRING));
    }
}
