//! The .rpm: the .deb's payload (`/usr/local/lib/libcosmian_pkcs11.so`, and the copyright,
//! changelog and third-party licenses in `/usr/share/doc/cosmian-pkcs11/`), built by rpmbuild
//! from `packaging/rpm/cosmian-pkcs11.spec` with the timestamps of `SOURCE_DATE_EPOCH`.
//! Checked with rpmlint (`packaging/rpm/rpmlint.toml`: nothing else may be reported), by its
//! requirements (glibc symbol versions up to 2.28), by building it twice, and by installing it
//! into a throw-away root where `rpm -V` verifies the payload, and notices a changed byte.

use std::path::{Path, PathBuf};

use super::elf::{self, LinuxLib, GLIBC_FLOOR};
use super::{capture, packaging_file, sha256_file, version, Tools, NAME};
use crate::step;

use super::{DOC_DIR as DOC, LIB_DIR as LIB};

/// Builds the .rpm into `dist`, and checks it.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, epoch: u64, dist: &Path) -> Result<PathBuf, String> {
    check_changelog_version(&packaging_file("rpm/cosmian-pkcs11.spec")?)?;
    let file = format!("{NAME}-{}-1.x86_64.rpm", version());
    let rpm = dist.join(&file);
    step("build the .rpm", &format!("rpmbuild -bb packaging/rpm/cosmian-pkcs11.spec -> {}", rpm.display()));
    build(tools, lib, epoch, &rpm)?;

    super::check_reproducible(&rpm, |again| build(tools, lib, epoch, again))?;

    step("check its requirements", &format!("rpm -qp --requires {}", rpm.display()));
    let requires = capture(tools.command("rpm").args(["-qp", "--requires"]).arg(&rpm))?;
    let too_new: Vec<&str> = requires
        .lines()
        .filter(|line| glibc_requirement(line).is_some_and(|v| v.as_slice() > GLIBC_FLOOR.as_slice()))
        .collect();
    if too_new.is_empty() && requires.contains("libc.so.6(GLIBC_2.28)(64bit)") {
        println!("    libc.so.6(GLIBC_2.28)(64bit) and older: RHEL 8 and later");
    } else {
        return Err(format!("unexpected requirements (newer than glibc 2.28: {too_new:?}):\n{requires}"));
    }

    step("lint it", &format!("rpmlint -c packaging/rpm/rpmlint.toml {}", rpm.display()));
    let config = super::workspace_root().join("packaging/rpm/rpmlint.toml");
    let out = capture(tools.command("rpmlint").arg("-c").arg(&config).arg(&rpm))?;
    if !out.contains(" 0 errors, 0 warnings, 0 badness") {
        return Err(format!("rpmlint reports:\n{out}"));
    }
    println!("    rpmlint: 0 errors, 0 warnings beyond packaging/rpm/rpmlint.toml");

    install_and_verify(tools, lib, &rpm)?;
    Ok(rpm)
}

/// `rpm --root ROOT -i --nodeps`, then `rpm -V`: the payload is where it belongs, byte for
/// byte, and `rpm -V` fails once a byte of the library changes.
///
/// `--nodeps` because the throw-away root's rpm database is empty: nothing in it provides
/// the glibc the package requires (`libc.so.6(GLIBC_2.28)(64bit)`...); on a real system,
/// the `glibc` package does.
fn install_and_verify(tools: &Tools, lib: &LinuxLib, rpm: &Path) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rpm_in_root = |args: &[&str]| {
        let mut command = tools.command("rpm");
        command.arg("--root").arg(root.path()).args(["--define", "_dbpath /var/lib/rpm"]).args(args);
        command
    };
    step("install it into a test root", &format!("rpm --root {} -i --nodeps {}", root.path().display(), rpm.display()));
    capture(&mut rpm_in_root(&["--initdb"]))?;
    capture(rpm_in_root(&["-i", "--nodeps"]).arg(rpm))?;
    let installed = root.path().join(LIB).join(elf::FILE);
    for path in
        [installed.clone(), root.path().join(DOC).join("copyright"), root.path().join(DOC).join("THIRDPARTY.yml")]
    {
        if !path.is_file() {
            return Err(format!("{} is not installed", path.display()));
        }
    }
    if sha256_file(&installed)? != sha256_file(&lib.path)? {
        return Err(format!("{} differs from {}", installed.display(), lib.path.display()));
    }

    step("verify the payload", "rpm --root ... -V --nodeps cosmian-pkcs11");
    // --nodeps: as above, the requirements cannot be met in an empty root.
    let out = capture(&mut rpm_in_root(&["-V", "--nodeps", NAME]))?;
    if !out.trim().is_empty() {
        return Err(format!("rpm -V reports:\n{out}"));
    }
    // The verification must be able to fail: change one byte.
    let mut bytes = std::fs::read(&installed).map_err(|e| e.to_string())?;
    bytes[100] ^= 0xff;
    std::fs::write(&installed, bytes).map_err(|e| e.to_string())?;
    match capture(&mut rpm_in_root(&["-V", "--nodeps", NAME])) {
        Err(report) if report.contains(&format!("/{LIB}/{}", elf::FILE)) => {
            println!("    rpm -V: clean; and it reports a changed byte of the library");
            Ok(())
        }
        other => Err(format!("rpm -V did not notice a changed library: {other:?}")),
    }
}

/// Runs rpmbuild in a temporary `_topdir` and moves the package to `rpm`.
fn build(tools: &Tools, lib: &LinuxLib, epoch: u64, rpm: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let staged = work.path().join("staged");
    std::fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
    std::fs::copy(&lib.path, staged.join(elf::FILE)).map_err(|e| e.to_string())?;
    super::write(&staged.join("copyright"), packaging_file("debian/copyright")?)?;
    super::write(&staged.join("changelog"), packaging_file("debian/changelog")?)?;
    super::write(&staged.join("THIRDPARTY.yml"), super::licenses::read()?)?;
    let define = |name: &str, value: &Path| format!("{name} {}", value.display());
    capture(
        tools
            .command("rpmbuild")
            .args(["-bb", "--quiet", "--target", "x86_64"])
            .args(["--define", &define("_topdir", &work.path().join("top"))])
            .args(["--define", &define("staged", &staged)])
            .args(["--define", &format!("pkg_version {}", version())])
            // Reproducible: no host name, the build time and every file time from the epoch.
            .args(["--define", "_buildhost reproducible"])
            .args(["--define", "use_source_date_epoch_as_buildtime 1"])
            .args(["--define", "clamp_mtime_to_source_date_epoch 1"])
            .arg(super::workspace_root().join("packaging/rpm/cosmian-pkcs11.spec"))
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    let built = work.path().join("top/RPMS/x86_64").join(rpm.file_name().expect("a file name"));
    std::fs::copy(&built, rpm).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    Ok(())
}

/// The spec's newest `%changelog` entry must be this version's: `* ... - 0.1.0-1`.
fn check_changelog_version(spec: &str) -> Result<(), String> {
    let newest = spec
        .split_once("%changelog")
        .and_then(|(_, log)| log.lines().find(|line| line.starts_with('*')))
        .unwrap_or_default();
    if newest.ends_with(&format!(" - {}-1", version())) {
        Ok(())
    } else {
        Err(format!(
            "the %changelog of packaging/rpm/cosmian-pkcs11.spec starts with {newest:?}, not an \
             entry for {}-1: add one",
            version()
        ))
    }
}

/// `libc.so.6(GLIBC_2.28)(64bit)` is `[2, 28]`.
fn glibc_requirement(line: &str) -> Option<Vec<u32>> {
    let start = line.find("(GLIBC_")? + "(GLIBC_".len();
    let end = start + line[start..].find(')')?;
    line[start..end].split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_glibc_requirements() {
        assert_eq!(glibc_requirement("libc.so.6(GLIBC_2.28)(64bit)"), Some(vec![2, 28]));
        assert_eq!(glibc_requirement("libc.so.6(GLIBC_2.2.5)(64bit)"), Some(vec![2, 2, 5]));
        assert_eq!(glibc_requirement("libc.so.6()(64bit)"), None);
    }

    #[test]
    fn the_spec_changelog_names_this_version() {
        check_changelog_version(&packaging_file("rpm/cosmian-pkcs11.spec").unwrap()).unwrap();
        assert!(check_changelog_version("%changelog\n* Mon Jan 1 2024 A <a@b> - 0.0.1-1\n").is_err());
    }
}
