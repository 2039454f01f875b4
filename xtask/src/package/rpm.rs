//! The .rpm, one per architecture (`x86_64`, `aarch64`): the library in a folder of its own,
//! `/usr/local/lib/cosmian-pkcs11/libcosmian_pkcs11.so`, with `/usr/local/lib/libcosmian_pkcs11.so`
//! a link to it that its scriptlets keep (the spec says why: beside Cosmian's `ckms`), and the
//! copyright, changelog, third-party licenses and SBOM in `/usr/share/doc/cosmian-pkcs11/`, the
//! p11-kit module file (installed, not enabled: `packaging/p11-kit/`), the agent
//! `/usr/local/bin/cosmian-ssh-agent` and its systemd user units in `/usr/lib/systemd/user/`
//! (installed, not enabled: `packaging/systemd/`), the man pages in `/usr/local/share/man/`
//! ([`super::man`]); built by
//! rpmbuild from `packaging/rpm/cosmian-pkcs11.spec` with the timestamps of `SOURCE_DATE_EPOCH`.
//! Checked with rpmlint (`packaging/rpm/rpmlint.toml`: nothing else may be reported), by its
//! architecture and its requirements (glibc symbol versions up to 2.28), by building it twice,
//! and by installing it into a throw-away root where `rpm -V` verifies the payload, and
//! notices a changed byte. A release above the spec's (a newer build of the same version, for
//! the upgrade tests) gets a `%changelog` entry saying so ([`super::revision_entry`]).

use std::path::{Path, PathBuf};

use super::elf::{self, GLIBC_FLOOR, LinuxLib};
use super::{NAME, Tools, capture, packaging_file, sha256_file, version};
use crate::step;

use super::{DOC_DIR as DOC, LIB_DIR as LIB, UNITS};

/// Where the .rpm installs the library, relative to [`LIB`]; [`elf::FILE`] there is a link
/// to it.
pub const LINK_TARGET: &str = "cosmian-pkcs11/libcosmian_pkcs11.so";

/// Builds the .rpm of `lib` (its architecture), release `release` (`1` for the release; more
/// for a newer build of the same version), into `dir`, and checks it.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, epoch: u64, release: u32, dir: &Path) -> Result<PathBuf, String> {
    let spec = spec(tools, release, epoch)?;
    let changelog = super::deb::changelog(tools, release, epoch)?;
    let arch = lib.arch.rpm();
    let rpm = dir.join(format!("{NAME}-{}-{release}.{arch}.rpm", version()));
    step(
        &format!("build the {arch} .rpm"),
        &format!("rpmbuild -bb --target {arch} packaging/rpm/cosmian-pkcs11.spec -> {}", rpm.display()),
    );
    let build = |rpm: &Path| build(tools, lib, epoch, release, &spec, &changelog, rpm);
    build(&rpm)?;

    super::check_reproducible(&rpm, build)?;

    step(
        "check its architecture and requirements",
        &format!("rpm -qp --qf '%{{ARCH}} %{{RELEASE}}' --requires {}", rpm.display()),
    );
    let fields = capture(tools.command("rpm").args(["-qp", "--qf", "%{ARCH} %{RELEASE}"]).arg(&rpm))?;
    if fields != format!("{arch} {release}") {
        return Err(format!("{} has ARCH and RELEASE {fields:?}, not {arch} {release}", rpm.display()));
    }
    let requires = capture(tools.command("rpm").args(["-qp", "--requires"]).arg(&rpm))?;
    let too_new: Vec<&str> = requires
        .lines()
        .filter(|line| glibc_requirement(line).is_some_and(|v| v.as_slice() > GLIBC_FLOOR.as_slice()))
        .collect();
    // The newest glibc version the ELF check found is the newest the package requires.
    let newest = lib.glibc.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
    let newest = format!("libc.so.6(GLIBC_{newest})(64bit)");
    if too_new.is_empty() && requires.contains(&newest) {
        println!("    {arch}; {newest} and older: RHEL 8 and later");
    } else {
        return Err(format!("unexpected requirements (newer than glibc 2.28: {too_new:?}; no {newest}):\n{requires}"));
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
/// byte (the agent executable, [`super::agent::check_installed`]), the link to the library is in
/// place, and `rpm -V` fails once a byte of the library changes.
///
/// `--nodeps` because the throw-away root's rpm database is empty: nothing in it provides
/// the glibc the package requires (`libc.so.6(GLIBC_2.28)(64bit)`...); on a real system,
/// the `glibc` package does. `--ignorearch` because the aarch64 package is installed on this
/// x86_64 machine too (its architecture is checked above, and its library run by
/// [`super::arm64`]).
fn install_and_verify(tools: &Tools, lib: &LinuxLib, rpm: &Path) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rpm_in_root = |args: &[&str]| {
        let mut command = tools.command("rpm");
        command.arg("--root").arg(root.path()).args(["--define", "_dbpath /var/lib/rpm"]).args(args);
        command
    };
    step(
        "install it into a test root",
        &format!("rpm --root {} -i --nodeps --ignorearch {}", root.path().display(), rpm.display()),
    );
    capture(&mut rpm_in_root(&["--initdb"]))?;
    capture(rpm_in_root(&["-i", "--nodeps", "--ignorearch"]).arg(rpm))?;
    let installed = root.path().join(LIB).join(LINK_TARGET);
    let link = root.path().join(LIB).join(elf::FILE);
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(LINK_TARGET)) {
        return Err(format!("{} is not a link to {LINK_TARGET}", link.display()));
    }
    for path in [
        installed.clone(),
        root.path().join(DOC).join("copyright"),
        root.path().join(DOC).join("THIRDPARTY.yml"),
        root.path().join(DOC).join(super::sbom::INSTALLED),
        root.path().join(super::P11KIT_MODULE),
    ] {
        if !path.is_file() {
            return Err(format!("{} is not installed", path.display()));
        }
    }
    if sha256_file(&installed)? != sha256_file(&lib.path)? {
        return Err(format!("{} differs from {}", installed.display(), lib.path.display()));
    }
    super::agent::check_installed(root.path(), lib)?;

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
        Err(report) if report.contains(&format!("/{LIB}/{LINK_TARGET}")) => {
            println!("    /{LIB}/{} -> {LINK_TARGET}; rpm -V: clean, and it reports a changed byte", elf::FILE);
            Ok(())
        }
        other => Err(format!("rpm -V did not notice a changed library: {other:?}")),
    }
}

/// Runs rpmbuild on the spec's text `spec` in a temporary `_topdir`, for the library's
/// architecture, and moves the package to `rpm`.
fn build(
    tools: &Tools,
    lib: &LinuxLib,
    epoch: u64,
    release: u32,
    spec: &str,
    changelog: &str,
    rpm: &Path,
) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let staged = work.path().join("staged");
    std::fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
    std::fs::copy(&lib.path, staged.join(elf::FILE)).map_err(|e| e.to_string())?;
    super::write(&staged.join("copyright"), packaging_file("debian/copyright")?)?;
    super::write(&staged.join("changelog"), changelog)?;
    let spec_file = work.path().join(format!("{NAME}.spec"));
    super::write(&spec_file, spec)?;
    super::write(&staged.join("THIRDPARTY.yml"), super::licenses::read()?)?;
    std::fs::copy(&lib.sbom, staged.join(super::sbom::INSTALLED)).map_err(|e| e.to_string())?;
    super::write(&staged.join("cosmian-pkcs11.module"), packaging_file("p11-kit/cosmian-pkcs11.module")?)?;
    std::fs::copy(&lib.agent, staged.join(elf::AGENT)).map_err(|e| e.to_string())?;
    for unit in UNITS {
        super::write(&staged.join(unit), packaging_file(&format!("systemd/{unit}"))?)?;
    }
    super::man::render(tools, &staged.join("man"))?;
    let define = |name: &str, value: &Path| format!("{name} {}", value.display());
    capture(
        tools
            .command("rpmbuild")
            .args(["-bb", "--quiet", "--target", lib.arch.rpm()])
            .args(["--define", &define("_topdir", &work.path().join("top"))])
            .args(["--define", &define("staged", &staged)])
            .args(["--define", &format!("pkg_version {}", version())])
            .args(["--define", &format!("pkg_release {release}")])
            // Reproducible: no host name, the build time and every file time from the epoch.
            .args(["--define", "_buildhost reproducible"])
            .args(["--define", "use_source_date_epoch_as_buildtime 1"])
            .args(["--define", "clamp_mtime_to_source_date_epoch 1"])
            .arg(&spec_file)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    let built = work.path().join("top/RPMS").join(lib.arch.rpm()).join(rpm.file_name().expect("a file name"));
    std::fs::copy(&built, rpm).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    Ok(())
}

/// The spec of release `release`: `packaging/rpm/cosmian-pkcs11.spec`, whose newest
/// `%changelog` entry must be this version's first release, with an entry for `release` above
/// it when it is newer.
fn spec(tools: &Tools, release: u32, epoch: u64) -> Result<String, String> {
    let spec = packaging_file("rpm/cosmian-pkcs11.spec")?;
    check_changelog_version(&spec)?;
    let Some(entry) = super::revision_entry(release) else { return Ok(spec) };
    let date = super::utc_date(tools, epoch, "%a %b %d %Y")?;
    let heading = format!("* {date} {} - {}-{release}\n- {entry}\n\n", super::MAINTAINER, version());
    Ok(spec.replacen("%changelog\n", &format!("%changelog\n{heading}"), 1))
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
