//! The .deb, one per architecture (`amd64`, `arm64`): `/usr/local/lib/libcosmian_pkcs11.so` and
//! the agent `/usr/local/bin/cosmian-ssh-agent`, with the copyright, the changelog, the
//! third-party licenses and the SBOM ([`super::sbom`]) in `/usr/share/doc/cosmian-pkcs11/`, the
//! p11-kit module file
//! (installed, not enabled: `packaging/p11-kit/`), the agent's systemd user units in
//! `/usr/lib/systemd/user/` (installed, not enabled: `packaging/systemd/`), the man pages in
//! `/usr/local/share/man/` ([`super::man`]), the lintian overrides, and the maintainer scripts
//! that divert the same file of Cosmian's `ckms` package (`preinst`, `postrm`; see
//! [`super::coexistence`]), all from `packaging/debian/`. Built with `dpkg-deb`
//! from a tree whose every mode and timestamp is set (`SOURCE_DATE_EPOCH`), so that it is
//! byte-reproducible; checked with lintian (every tag, informational and pedantic ones
//! included, fails but the documented overrides), by building it twice, by its architecture,
//! its listing and its maintainer scripts. A packaging revision above the changelog's (a newer
//! build of the same version, for the upgrade tests) ships the changelog with an entry saying
//! so ([`super::revision_entry`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::elf::{self, LinuxLib};
use super::{NAME, Tools, capture, packaging_file, render, version};
use crate::step;

use super::{BIN_DIR as BIN, DOC_DIR as DOC, LIB_DIR as LIB, P11KIT_MODULE, UNITS, USER_UNIT_DIR};
const OVERRIDES: &str = "usr/share/lintian/overrides/cosmian-pkcs11";
/// The maintainer scripts, from `packaging/debian/`, executable.
const SCRIPTS: [&str; 2] = ["preinst", "postrm"];

/// The Debian version: the upstream version and the packaging revision.
fn deb_version(release: u32) -> String {
    format!("{}-{release}", version())
}

/// Builds the .deb of `lib` (its architecture), packaging revision `release` (`1` for the
/// release; more for a newer build of the same version), into `dir`, and checks it.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, epoch: u64, release: u32, dir: &Path) -> Result<PathBuf, String> {
    let changelog = changelog(tools, release, epoch)?;
    let arch = lib.arch.deb();
    let deb = dir.join(format!("{NAME}_{}_{arch}.deb", deb_version(release)));
    step(&format!("build the {arch} .deb"), &format!("dpkg-deb --build ... {}", deb.display()));
    let build = |deb: &Path| build(tools, lib, epoch, release, &changelog, deb);
    build(&deb)?;

    super::check_reproducible(&deb, build)?;

    step("check its contents", &format!("dpkg-deb --field/--contents {}", deb.display()));
    let field = |name: &str| capture(tools.command("dpkg-deb").arg("--field").arg(&deb).arg(name));
    let depends = field("Depends")?;
    if depends.trim() != lib.debian_depends() {
        return Err(format!("Depends is {depends:?}, not {:?}", lib.debian_depends()));
    }
    let (architecture, deb_version_field) = (field("Architecture")?, field("Version")?);
    if architecture.trim() != arch || deb_version_field.trim() != deb_version(release) {
        return Err(format!(
            "Architecture {architecture:?} and Version {deb_version_field:?}, not {arch} and {}",
            deb_version(release)
        ));
    }
    let listing = capture(tools.command("dpkg-deb").arg("--contents").arg(&deb))?;
    let mut files = payload_files(&listing);
    files.sort();
    let mut expected = vec![
        format!("-rw-r--r-- root/root ./{LIB}/{}", elf::FILE),
        format!("-rwxr-xr-x root/root ./{BIN}/{}", elf::AGENT),
        format!("-rw-r--r-- root/root ./{DOC}/copyright"),
        format!("-rw-r--r-- root/root ./{DOC}/changelog.Debian.gz"),
        format!("-rw-r--r-- root/root ./{DOC}/THIRDPARTY.yml.gz"),
        format!("-rw-r--r-- root/root ./{DOC}/{}", super::sbom::INSTALLED),
        format!("-rw-r--r-- root/root ./{OVERRIDES}"),
        format!("-rw-r--r-- root/root ./{P11KIT_MODULE}"),
    ];
    expected.extend(UNITS.map(|unit| format!("-rw-r--r-- root/root ./{USER_UNIT_DIR}/{unit}")));
    expected.extend(super::man::installed_files().iter().map(|page| format!("-rw-r--r-- root/root ./{page}")));
    expected.sort();
    if files != expected {
        return Err(format!("the .deb holds\n{}\nnot\n{}", files.join("\n"), expected.join("\n")));
    }
    for script in SCRIPTS {
        let shipped = capture(tools.command("dpkg-deb").arg("--info").arg(&deb).arg(script))?;
        if shipped != packaging_file(&format!("debian/{script}"))? {
            return Err(format!("the .deb's {script} is not packaging/debian/{script}"));
        }
    }
    println!(
        "    Architecture: {arch}; Version: {}; Depends: {}; maintainer scripts: {}",
        deb_version(release),
        depends.trim(),
        SCRIPTS.join(", ")
    );

    step("lint it", &format!("lintian --fail-on error,warning,info,pedantic -I --pedantic {}", deb.display()));
    let out = capture(
        tools
            .command("lintian")
            .args(["--fail-on", "error,warning,info,pedantic", "--display-info", "--pedantic"])
            .arg(&deb),
    )?;
    if !out.trim().is_empty() {
        return Err(format!("lintian reports:\n{out}"));
    }
    println!("    lintian: nothing beyond packaging/debian/lintian-overrides");
    Ok(deb)
}

/// The regular files of a `dpkg-deb --contents` listing, as `MODE OWNER ./PATH`.
fn payload_files(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} {} {}", fields.first()?, fields.get(1)?, fields.last()?))
        })
        .collect()
}

/// Stages the tree in a temporary folder and runs `dpkg-deb --build` into `deb`.
fn build(tools: &Tools, lib: &LinuxLib, epoch: u64, release: u32, changelog: &str, deb: &Path) -> Result<(), String> {
    let stage = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = stage.path().join("root");
    let put = |relative: &str, bytes: &[u8]| super::write(&root.join(relative), bytes);
    let library = std::fs::read(&lib.path).map_err(|e| format!("cannot read {}: {e}", lib.path.display()))?;
    put(&format!("{LIB}/{}", elf::FILE), &library)?;
    put(&format!("{DOC}/copyright"), packaging_file("debian/copyright")?.as_bytes())?;
    put(&format!("{DOC}/changelog.Debian.gz"), &super::gzip(changelog.as_bytes())?)?;
    put(&format!("{DOC}/THIRDPARTY.yml.gz"), &super::gzip(super::licenses::read()?.as_bytes())?)?;
    let sbom = std::fs::read(&lib.sbom).map_err(|e| format!("cannot read {}: {e}", lib.sbom.display()))?;
    put(&format!("{DOC}/{}", super::sbom::INSTALLED), &sbom)?;
    put(OVERRIDES, lintian_overrides(release)?.as_bytes())?;
    put(P11KIT_MODULE, packaging_file("p11-kit/cosmian-pkcs11.module")?.as_bytes())?;
    let agent = root.join(BIN).join(elf::AGENT);
    put(
        &format!("{BIN}/{}", elf::AGENT),
        &std::fs::read(&lib.agent).map_err(|e| format!("{}: {e}", lib.agent.display()))?,
    )?;
    for unit in UNITS {
        put(&format!("{USER_UNIT_DIR}/{unit}"), packaging_file(&format!("systemd/{unit}"))?.as_bytes())?;
    }
    super::man::render(tools, &root.join(super::man::MAN_DIR))?;

    // Installed-Size in KiB, the way dpkg-gencontrol counts: every file rounded up, every
    // folder one.
    let files = walk(&root)?;
    let kib: u64 = files
        .iter()
        .map(|path| std::fs::metadata(path).map(|m| if m.is_dir() { 1 } else { m.len().div_ceil(1024) }))
        .sum::<Result<u64, _>>()
        .map_err(|e| e.to_string())?;
    let md5sums = capture(
        tools
            .command("md5sum")
            .args(files.iter().filter(|p| p.is_file()).map(|p| p.strip_prefix(&root).unwrap()))
            .current_dir(&root),
    )?;
    let control = render(
        &packaging_file("debian/control")?,
        &[
            ("DEB_VERSION", &deb_version(release)),
            ("ARCH", lib.arch.deb()),
            ("INSTALLED_SIZE", &kib.to_string()),
            ("DEPENDS", &lib.debian_depends()),
        ],
    )?;
    put("DEBIAN/control", control.as_bytes())?;
    put("DEBIAN/md5sums", md5sums.as_bytes())?;
    for script in SCRIPTS {
        put(&format!("DEBIAN/{script}"), packaging_file(&format!("debian/{script}"))?.as_bytes())?;
    }

    // Modes and timestamps from nothing but the inputs.
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    let mut executables: Vec<PathBuf> = SCRIPTS.iter().map(|s| root.join("DEBIAN").join(s)).collect();
    executables.push(agent);
    for path in walk(&root)? {
        use std::os::unix::fs::PermissionsExt;
        let mode = if path.is_dir() || executables.contains(&path) { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        std::fs::File::open(&path)
            .and_then(|file| file.set_modified(mtime))
            .map_err(|e| format!("cannot set the time of {}: {e}", path.display()))?;
    }
    let out = capture(
        tools
            .command("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(deb)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    print!("    {out}");
    Ok(())
}

/// The changelog the package of revision `release` ships: `packaging/debian/changelog`, whose
/// newest entry must be this version's first revision (`cosmian-pkcs11 (0.1.0-1) ...`), under
/// an entry for `release` when it is newer.
pub fn changelog(tools: &Tools, release: u32, epoch: u64) -> Result<String, String> {
    let changelog = packaging_file("debian/changelog")?;
    check_changelog_version(&changelog)?;
    let Some(entry) = super::revision_entry(release) else { return Ok(changelog) };
    let date = super::utc_date(tools, epoch, "%a, %d %b %Y %H:%M:%S +0000")?;
    Ok(format!(
        "{NAME} ({}) unstable; urgency=medium\n\n  * {}\n\n -- {}  {date}\n\n{changelog}",
        deb_version(release),
        entry,
        super::MAINTAINER
    ))
}

/// `packaging/debian/lintian-overrides`; for a revision above the first, without the override
/// of `initial-upload-closes-no-bugs` (and its comment): lintian reports that tag on a
/// changelog of one entry only, and an override it does not use.
fn lintian_overrides(release: u32) -> Result<String, String> {
    let text = packaging_file("debian/lintian-overrides")?;
    if release == 1 {
        return Ok(text);
    }
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.contains(" initial-upload-closes-no-bugs ") {
            while kept.last().is_some_and(|line| line.starts_with('#')) {
                kept.pop();
            }
        } else {
            kept.push(line);
        }
    }
    Ok(kept.iter().map(|line| format!("{line}\n")).collect())
}

/// The changelog's newest entry must be this version's: `cosmian-pkcs11 (0.1.0-1) ...`.
fn check_changelog_version(changelog: &str) -> Result<(), String> {
    let expected = format!("{NAME} ({}) ", deb_version(1));
    if changelog.starts_with(&expected) {
        Ok(())
    } else {
        Err(format!("packaging/debian/changelog does not start with an entry for {}: add one", deb_version(1)))
    }
}

/// Every file and folder under `root` (`root` included), sorted.
fn walk(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = vec![root.to_owned()];
    let mut i = 0;
    while i < found.len() {
        if found[i].is_dir() {
            let entries =
                std::fs::read_dir(&found[i]).map_err(|e| format!("cannot list {}: {e}", found[i].display()))?;
            for entry in entries {
                found.push(entry.map_err(|e| e.to_string())?.path());
            }
        }
        i += 1;
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_payload_files() {
        let listing = "drwxr-xr-x root/root         0 2026-11-25 02:32 ./\n\
                       drwxr-xr-x root/root         0 2026-11-25 02:32 ./usr/\n\
                       -rw-r--r-- root/root   3057584 2026-11-25 02:32 ./usr/local/lib/libcosmian_pkcs11.so\n";
        assert_eq!(payload_files(listing), ["-rw-r--r-- root/root ./usr/local/lib/libcosmian_pkcs11.so"]);
    }

    #[test]
    fn later_revisions_drop_the_initial_upload_override() {
        let first = lintian_overrides(1).unwrap();
        let later = lintian_overrides(2).unwrap();
        assert!(first.contains(" initial-upload-closes-no-bugs "));
        assert!(!later.contains("initial-upload") && !later.contains("no ITP bug"));
        // Only that override and its comment go.
        assert_eq!(first.lines().count() - 2, later.lines().count());
        assert!(later.contains(" spelling-error-in-binary ") && later.contains("# A string in a statically"));
    }

    #[test]
    fn the_changelog_names_this_version() {
        check_changelog_version(&packaging_file("debian/changelog").unwrap()).unwrap();
        assert!(check_changelog_version("cosmian-pkcs11 (0.0.1-1) unstable; urgency=medium\n").is_err());
    }

    #[test]
    fn walk_lists_everything_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        let found = walk(dir.path()).unwrap();
        let names: Vec<_> = found.iter().map(|p| p.strip_prefix(dir.path()).unwrap().to_owned()).collect();
        assert_eq!(names, [PathBuf::new(), "a".into(), "b".into(), "b/c".into()]);
    }
}
