//! The .deb: `/usr/local/lib/libcosmian_pkcs11.so`, with the copyright, the changelog and the
//! third-party licenses in `/usr/share/doc/cosmian-pkcs11/`, the lintian overrides, and the
//! maintainer scripts that divert the same file of Cosmian's `ckms` package (`preinst`,
//! `postrm`; see [`super::coexistence`]), all from `packaging/debian/`. Built with `dpkg-deb`
//! from a tree whose every mode and timestamp is set (`SOURCE_DATE_EPOCH`), so that it is
//! byte-reproducible; checked with lintian (every tag, informational and pedantic ones
//! included, fails but the documented overrides), by building it twice, by its listing and
//! its maintainer scripts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::elf::{self, LinuxLib};
use super::{capture, packaging_file, render, version, Tools, NAME};
use crate::step;

use super::{DOC_DIR as DOC, LIB_DIR as LIB};
const OVERRIDES: &str = "usr/share/lintian/overrides/cosmian-pkcs11";
/// The maintainer scripts, from `packaging/debian/`, executable.
const SCRIPTS: [&str; 2] = ["preinst", "postrm"];

/// The Debian version: the upstream version and the packaging revision.
fn deb_version() -> String {
    format!("{}-1", version())
}

/// Builds the .deb into `dist`, and checks it.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, epoch: u64, dist: &Path) -> Result<PathBuf, String> {
    check_changelog_version(&packaging_file("debian/changelog")?)?;
    let deb = dist.join(format!("{NAME}_{}_amd64.deb", deb_version()));
    step("build the .deb", &format!("dpkg-deb --build ... {}", deb.display()));
    build(tools, lib, epoch, &deb)?;

    super::check_reproducible(&deb, |again| build(tools, lib, epoch, again))?;

    step("check its contents", &format!("dpkg-deb --field/--contents {}", deb.display()));
    let depends = capture(tools.command("dpkg-deb").arg("--field").arg(&deb).arg("Depends"))?;
    if depends.trim() != lib.debian_depends() {
        return Err(format!("Depends is {depends:?}, not {:?}", lib.debian_depends()));
    }
    let listing = capture(tools.command("dpkg-deb").arg("--contents").arg(&deb))?;
    let mut files = payload_files(&listing);
    files.sort();
    let mut expected = [
        format!("-rw-r--r-- root/root ./{LIB}/{}", elf::FILE),
        format!("-rw-r--r-- root/root ./{DOC}/copyright"),
        format!("-rw-r--r-- root/root ./{DOC}/changelog.Debian.gz"),
        format!("-rw-r--r-- root/root ./{DOC}/THIRDPARTY.yml.gz"),
        format!("-rw-r--r-- root/root ./{OVERRIDES}"),
    ];
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
    println!("    Depends: {}; maintainer scripts: {}", depends.trim(), SCRIPTS.join(", "));

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
fn build(tools: &Tools, lib: &LinuxLib, epoch: u64, deb: &Path) -> Result<(), String> {
    let stage = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = stage.path().join("root");
    let put = |relative: &str, bytes: &[u8]| super::write(&root.join(relative), bytes);
    let library = std::fs::read(&lib.path).map_err(|e| format!("cannot read {}: {e}", lib.path.display()))?;
    put(&format!("{LIB}/{}", elf::FILE), &library)?;
    put(&format!("{DOC}/copyright"), packaging_file("debian/copyright")?.as_bytes())?;
    put(&format!("{DOC}/changelog.Debian.gz"), &super::gzip(packaging_file("debian/changelog")?.as_bytes())?)?;
    put(&format!("{DOC}/THIRDPARTY.yml.gz"), &super::gzip(super::licenses::read()?.as_bytes())?)?;
    put(OVERRIDES, packaging_file("debian/lintian-overrides")?.as_bytes())?;

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
        &[("DEB_VERSION", &deb_version()), ("INSTALLED_SIZE", &kib.to_string()), ("DEPENDS", &lib.debian_depends())],
    )?;
    put("DEBIAN/control", control.as_bytes())?;
    put("DEBIAN/md5sums", md5sums.as_bytes())?;
    for script in SCRIPTS {
        put(&format!("DEBIAN/{script}"), packaging_file(&format!("debian/{script}"))?.as_bytes())?;
    }

    // Modes and timestamps from nothing but the inputs.
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    let scripts: Vec<PathBuf> = SCRIPTS.iter().map(|s| root.join("DEBIAN").join(s)).collect();
    for path in walk(&root)? {
        use std::os::unix::fs::PermissionsExt;
        let mode = if path.is_dir() || scripts.contains(&path) { 0o755 } else { 0o644 };
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

/// The changelog's newest entry must be this version's: `cosmian-pkcs11 (0.1.0-1) ...`.
fn check_changelog_version(changelog: &str) -> Result<(), String> {
    let expected = format!("{NAME} ({}) ", deb_version());
    if changelog.starts_with(&expected) {
        Ok(())
    } else {
        Err(format!("packaging/debian/changelog does not start with an entry for {}: add one", deb_version()))
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
