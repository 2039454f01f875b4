//! Our packages beside Cosmian's official `ckms` packages (5.28), which install their own
//! `/usr/local/lib/libcosmian_pkcs11.so` next to `/usr/local/bin/ckms`.
//!
//! - .deb: our `preinst` diverts their file to `/usr/local/lib/libcosmian_pkcs11.so.ckms`
//!   (`dpkg-divert --rename`) and our `postrm` takes the diversion back on remove
//!   (`packaging/debian/`): whether ckms comes before or after us, the path is ours and their
//!   file waits at the divert target; when we go, theirs is back. Tested for real, as root,
//!   with apt-get, in both orders.
//! - .rpm: RPM has no diversions, and refuses two packages that own one path with different
//!   bytes. The user installs ckms with `rpm --excludepath` for that path (the README says
//!   how); tested in a throw-away rpm root, in both orders.
//!
//! Both against a look-alike of Cosmian's package built here: the name, version and file list
//! that cargo-deb and cargo-generate-rpm make of the `ckms` 5.28.0 crate (Cosmian's packaging
//! runs them on its `[package.metadata.deb]` and `[package.metadata.generate-rpm]`), holding
//! the test bed's real `ckms`, which must run after every step, and a small shared object of
//! its own as their library. Each step is checked the same way: which library is at the path
//! (SHA-256), what is at the divert target, `ckms --version`, and the package manager's own
//! verification (`dpkg --verify`, `rpm -V`). Both leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::installed::{as_root, package_status};
use super::{capture, sha256_file, write, Dist, Tools, NAME};
use crate::step;

const LIB: &str = "usr/local/lib/libcosmian_pkcs11.so";
/// Where dpkg keeps their library while ours is installed (`packaging/debian/preinst`).
const DIVERTED: &str = "usr/local/lib/libcosmian_pkcs11.so.ckms";
const CKMS: &str = "usr/local/bin/ckms";
/// Cosmian's package: the `ckms` crate's name and version; cargo-deb adds the Debian
/// revision `-1`, cargo-generate-rpm the release `1`.
const THEIRS: &str = "ckms";
const THEIR_VERSION: &str = "5.28.0";

/// `cargo xtask package-test`: the .deb then the .rpm, each in both install orders.
pub fn test(tools: &Tools, dist: &Dist) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let theirs = LookAlike::build(tools, work.path())?;
    let ours = sha256_file(&dist.lib.path)?;
    deb_both_orders(tools, &theirs, &dist.deb, &ours)?;
    rpm_both_orders(tools, &theirs, &dist.rpm, &ours)
}

/// Cosmian's `ckms` package, as built here.
struct LookAlike {
    deb: PathBuf,
    rpm: PathBuf,
    /// The SHA-256 of their library.
    lib: String,
}

impl LookAlike {
    fn build(tools: &Tools, dir: &Path) -> Result<LookAlike, String> {
        step("build a look-alike of Cosmian's ckms 5.28.0 packages", "cc -shared; dpkg-deb --build; rpmbuild -bb");
        let ckms = cosmian_pkcs11_testbed::binaries().ckms.clone();
        let source = dir.join("theirs.c");
        write(&source, "const char look_alike[] = \"libcosmian_pkcs11.so of a ckms look-alike\";\n")?;
        let lib = dir.join("libcosmian_pkcs11.so");
        capture(Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&source))?;
        let deb = Self::deb(tools, dir, &ckms, &lib)?;
        let rpm = Self::rpm(tools, dir, &ckms, &lib)?;
        println!("    {}\n    {}", deb.display(), rpm.display());
        Ok(LookAlike { deb, rpm, lib: sha256_file(&lib)? })
    }

    /// What cargo-deb makes: the two assets (`ckms` 755, the library 555), the copyright and
    /// the changelog it adds, the md5sums; no maintainer scripts.
    fn deb(tools: &Tools, dir: &Path, ckms: &Path, lib: &Path) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("deb-root");
        let doc = format!("usr/share/doc/{THEIRS}");
        let copyright = format!("{doc}/copyright");
        let changelog = format!("{doc}/changelog.Debian.gz");
        write(&root.join(&copyright), "Copyright: 2026, Cosmian Tech SAS\n")?;
        write(&root.join(&changelog), super::gzip(b"# Changelog\n\n## [5.28.0]\n")?)?;
        for (path, source, mode) in [(CKMS, ckms, 0o755), (LIB, lib, 0o555)] {
            let target = root.join(path);
            write(&target, "")?;
            std::fs::copy(source, &target)
                .and_then(|_| std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| format!("cannot stage {}: {e}", target.display()))?;
        }
        let md5sums = capture(tools.command("md5sum").args([CKMS, LIB, &copyright, &changelog]).current_dir(&root))?;
        write(&root.join("DEBIAN/md5sums"), md5sums)?;
        write(
            &root.join("DEBIAN/control"),
            format!(
                "Package: {THEIRS}\nVersion: {THEIR_VERSION}-1\nArchitecture: amd64\n\
                 Maintainer: Cosmian support team <tech@cosmian.com>\nSection: security\n\
                 Priority: optional\nDescription: Command Line Interface used to manage the \
                 Cosmian KMS server.\n (A look-alike of Cosmian's package, for a test.)\n"
            ),
        )?;
        let deb = dir.join(format!("{THEIRS}_{THEIR_VERSION}-1_amd64.deb"));
        // Not compressed: ckms is large and the package lives for one test.
        capture(tools.command("dpkg-deb").args(["--root-owner-group", "-Znone", "--build"]).arg(&root).arg(&deb))?;
        Ok(deb)
    }

    /// What cargo-generate-rpm makes: the two assets, no automatic requirements (`auto-req =
    /// "no"`) but `/bin/sh` (`require-sh = true`), no scripts.
    fn rpm(tools: &Tools, dir: &Path, ckms: &Path, lib: &Path) -> Result<PathBuf, String> {
        let spec = dir.join("ckms.spec");
        write(
            &spec,
            format!(
                "Name: {THEIRS}\nVersion: {THEIR_VERSION}\nRelease: 1\nLicense: BUSL-1.1\n\
                 Summary: Command Line Interface used to manage the Cosmian KMS server\n\
                 AutoReqProv: no\nRequires: /bin/sh\n\
                 %global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n\
                 %description\nA look-alike of Cosmian's package, for a test.\n\
                 %install\n\
                 install -D -m 0755 {ckms} %{{buildroot}}/{CKMS}\n\
                 install -D -m 0555 {lib} %{{buildroot}}/{LIB}\n\
                 %files\n/{CKMS}\n/{LIB}\n",
                ckms = ckms.display(),
                lib = lib.display(),
            ),
        )?;
        let top = dir.join("rpm-top");
        capture(
            tools
                .command("rpmbuild")
                .args(["-bb", "--quiet", "--target", "x86_64"])
                .arg("--define")
                .arg(format!("_topdir {}", top.display()))
                // Not compressed, as the .deb.
                .args(["--define", "_binary_payload w.ufdio"])
                .arg(&spec),
        )?;
        Ok(top.join(format!("RPMS/x86_64/{THEIRS}-{THEIR_VERSION}-1.x86_64.rpm")))
    }
}

/// Whether Cosmian's package is installed, and if so with its library or without it (rpm's
/// `--excludepath`; with dpkg, always with it: at the path or at the divert target).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Theirs {
    No,
    WithLib,
    WithoutLib,
}

/// One package manager on one root: `/` with dpkg, or a throw-away folder with rpm.
struct Machine<'a> {
    root: &'a Path,
    deb: bool,
    tools: &'a Tools,
}

impl Machine<'_> {
    /// Checks the files against what `ours` and `theirs` installed must give.
    fn check(&self, ours: bool, theirs: Theirs, hashes: (&str, &str)) -> Result<(), String> {
        let (our_lib, their_lib) = hashes;
        let expected_lib = match (ours, theirs) {
            (true, _) => Some(our_lib),
            (false, Theirs::WithLib) => Some(their_lib),
            (false, _) => None,
        };
        // dpkg keeps their library at the divert target while ours is installed.
        let expected_diverted = (self.deb && ours && theirs == Theirs::WithLib).then_some(their_lib);
        for (path, expected) in [(LIB, expected_lib), (DIVERTED, expected_diverted)] {
            let file = self.root.join(path);
            let found = file.exists().then(|| sha256_file(&file)).transpose()?;
            if found.as_deref() != expected {
                let name = |sha: Option<&str>| match sha {
                    None => "nothing",
                    Some(s) if s == our_lib => "ours",
                    Some(s) if s == their_lib => "theirs",
                    Some(_) => "another file",
                };
                return Err(format!("/{path} is {}, not {}", name(found.as_deref()), name(expected)));
            }
        }
        let ckms = self.root.join(CKMS);
        if theirs == Theirs::No {
            if ckms.exists() {
                return Err(format!("{} is left", ckms.display()));
            }
        } else {
            let version = capture(Command::new(&ckms).arg("--version"))?;
            if !version.contains(THEIR_VERSION) {
                return Err(format!("{} --version: {version}", ckms.display()));
            }
        }
        let verify = if self.deb {
            let diverter = capture(Command::new("dpkg-divert").args(["--listpackage", &format!("/{LIB}")]))?;
            if (diverter.trim() == NAME) != ours {
                return Err(format!("the diversion of /{LIB} is by {diverter:?}"));
            }
            let installed = [(NAME, ours), (THEIRS, theirs != Theirs::No)];
            let packages: Vec<&str> = installed.iter().filter(|p| p.1).map(|p| p.0).collect();
            if packages.is_empty() {
                String::new()
            } else {
                capture(Command::new("dpkg").arg("--verify").args(packages))?
            }
        } else {
            capture(&mut self.rpm(&["-V", "--nodeps", "-a"]))?
        };
        if !verify.trim().is_empty() {
            return Err(format!("the package manager's verification reports:\n{verify}"));
        }
        println!(
            "    /{LIB}: {}; ckms: {}",
            match expected_lib {
                None => "none",
                Some(_) if ours => "ours",
                Some(_) => "theirs",
            },
            if theirs == Theirs::No { "not installed" } else { "runs" }
        );
        Ok(())
    }

    /// `rpm --root ROOT ARGS`.
    fn rpm(&self, args: &[&str]) -> Command {
        let mut command = self.tools.command("rpm");
        command.arg("--root").arg(self.root).args(["--define", "_dbpath /var/lib/rpm"]).args(args);
        command
    }

    /// Runs `command` (a step of the sequence) and checks the state it must leave.
    fn step(
        &self,
        what: &str,
        mut command: Command,
        (ours, theirs): (bool, Theirs),
        hashes: (&str, &str),
    ) -> Result<(), String> {
        let shown: Vec<_> =
            std::iter::once(command.get_program()).chain(command.get_args()).map(|arg| arg.to_string_lossy()).collect();
        step(what, &shown.join(" "));
        capture(command.env("DEBIAN_FRONTEND", "noninteractive"))?;
        self.check(ours, theirs, hashes)
    }
}

/// With apt-get, as root: theirs then ours, remove and purge ours; ours then theirs, purge
/// theirs, theirs again, purge ours, purge theirs.
fn deb_both_orders(tools: &Tools, theirs: &LookAlike, our_deb: &Path, ours: &str) -> Result<(), String> {
    let machine = Machine { root: Path::new("/"), deb: true, tools };
    let hashes = (ours, theirs.lib.as_str());
    // Never touch a system that has either package or the files: it is not ours to change.
    step("a machine without either package", "dpkg-query -W cosmian-pkcs11 ckms; dpkg-divert --listpackage ...");
    // The packages dpkg has, installed or as configuration files left.
    let present = || {
        [NAME, THEIRS]
            .map(|p| (p, package_status(p)))
            .into_iter()
            .filter(|(_, s)| !s.is_empty() && !s.ends_with(" not-installed"))
            .collect::<Vec<_>>()
    };
    let none_present = |when: &str| match present().first() {
        Some((package, status)) => Err(format!("{when}, dpkg has {package} {status:?}")),
        None => Ok(()),
    };
    none_present("the coexistence test installs and purges ckms and cosmian-pkcs11; already")?;
    machine
        .check(false, Theirs::No, hashes)
        .map_err(|e| format!("the coexistence test needs a machine without /{LIB}, /{DIVERTED}, /{CKMS}: {e}"))?;
    let apt = |args: &[&str], file: Option<&Path>| -> Result<Command, String> {
        let mut command = as_root("apt-get")?;
        command.args(args).arg("-y");
        if let Some(file) = file {
            let name = file.file_name().expect("a package file").to_string_lossy();
            command.arg(format!("./{name}")).current_dir(file.parent().expect("in a folder"));
        }
        Ok(command)
    };
    let install = |file: &Path| apt(&["install", "--no-install-recommends"], Some(file));
    let remove = |verb: &str, package: &str| apt(&[verb, package], None);
    let sequence = || -> Result<(), String> {
        use Theirs::*;
        let then = |what, command, state| machine.step(what, command, state, hashes);
        then("theirs first", install(&theirs.deb)?, (false, WithLib))?;
        then("then ours: theirs is diverted", install(our_deb)?, (true, WithLib))?;
        then("remove ours: theirs is back", remove("remove", NAME)?, (false, WithLib))?;
        then("purge ours", remove("purge", NAME)?, (false, WithLib))?;
        then("purge theirs", remove("purge", THEIRS)?, (false, No))?;
        then("ours first", install(our_deb)?, (true, No))?;
        then("then theirs: it goes to the divert target", install(&theirs.deb)?, (true, WithLib))?;
        then("purge theirs: ours stays", remove("purge", THEIRS)?, (true, No))?;
        then("theirs again", install(&theirs.deb)?, (true, WithLib))?;
        then("purge ours: theirs is back", remove("purge", NAME)?, (false, WithLib))?;
        then("purge theirs", remove("purge", THEIRS)?, (false, No))
    };
    let result = sequence();
    // Whatever happened, both packages go (apt-get fails on a package dpkg does not know).
    let mut purge = vec!["purge"];
    purge.extend(present().iter().map(|(package, _)| *package));
    let cleaned = match purge.len() {
        1 => Ok(()),
        _ => capture(&mut apt(&purge, None)?).map(drop),
    };
    result?;
    cleaned?;
    step("nothing left", "dpkg-query -W; dpkg-divert --listpackage ...");
    none_present("after the purges")?;
    machine.check(false, Theirs::No, hashes)
}

/// In a throw-away rpm root (`--nodeps`: its empty database provides no glibc): without
/// `--excludepath` each order is refused with a file conflict; with it, the path is ours and
/// ckms runs; removing ours and reinstalling ckms brings theirs back; `rpm -V` stays clean.
fn rpm_both_orders(tools: &Tools, theirs: &LookAlike, our_rpm: &Path, ours: &str) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let machine = Machine { root: root.path(), deb: false, tools };
    let hashes = (ours, theirs.lib.as_str());
    let exclude = format!("--excludepath=/{LIB}");
    let rpm = |args: &[&str], file: Option<&Path>| {
        let mut command = machine.rpm(args);
        command.args(file);
        command
    };
    let refused = |what: &str, file: &Path, owner: &str| -> Result<(), String> {
        step(what, &format!("rpm -i {}", file.display()));
        match capture(&mut rpm(&["-i", "--nodeps"], Some(file))) {
            Err(report)
                if report.contains(&format!("/{LIB}"))
                    && report.contains(&format!("conflicts with file from package {owner}")) =>
            {
                println!("    refused: file /{LIB} conflicts with file from package {owner}");
                Ok(())
            }
            other => Err(format!("rpm did not refuse the conflicting {}: {other:?}", file.display())),
        }
    };
    use Theirs::*;
    let then = |what, command, state| machine.step(what, command, state, hashes);
    // Both orders end the same way: erase ours, reinstall theirs whole, erase it.
    let back_to_theirs = || -> Result<(), String> {
        then("erase ours", rpm(&["-e", "--nodeps", NAME], None), (false, WithoutLib))?;
        then(
            "theirs again, whole: theirs is back",
            rpm(&["-U", "--replacepkgs", "--nodeps"], Some(&theirs.rpm)),
            (false, WithLib),
        )?;
        then("erase theirs", rpm(&["-e", "--nodeps", THEIRS], None), (false, No))
    };
    capture(&mut machine.rpm(&["--initdb"]))?;
    then("theirs first", rpm(&["-i", "--nodeps"], Some(&theirs.rpm)), (false, WithLib))?;
    refused("then ours, as is", our_rpm, THEIRS)?;
    then(
        "theirs again, without its library",
        rpm(&["-U", "--replacepkgs", "--nodeps", &exclude], Some(&theirs.rpm)),
        (false, WithoutLib),
    )?;
    then("then ours", rpm(&["-i", "--nodeps"], Some(our_rpm)), (true, WithoutLib))?;
    back_to_theirs()?;
    then("ours first", rpm(&["-i", "--nodeps"], Some(our_rpm)), (true, No))?;
    refused("then theirs, as is", &theirs.rpm, NAME)?;
    then(
        "then theirs, without its library",
        rpm(&["-i", "--nodeps", &exclude], Some(&theirs.rpm)),
        (true, WithoutLib),
    )?;
    back_to_theirs()
}
