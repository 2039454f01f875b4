//! Our packages beside Cosmian's official `ckms` packages (5.28), which install their own
//! `/usr/local/lib/libcosmian_pkcs11.so` next to `/usr/local/bin/ckms`.
//!
//! - .deb: our `preinst` diverts their file to `/usr/local/lib/libcosmian_pkcs11.so.ckms`
//!   (`dpkg-divert --rename`) and our `postrm` takes the diversion back on remove
//!   (`packaging/debian/`): whether ckms comes before or after us, the path is ours and their
//!   file waits at the divert target; when we go, theirs is back. Tested for real, as root,
//!   with apt-get, in both orders (and through the apt repository, with upgrades of either:
//!   [`super::repository`]).
//! - .rpm: RPM has no diversions, and refuses two packages that own one path with different
//!   bytes. Ours installs the library at a path of its own and owns the shared path as a
//!   `%ghost` link to it, which Lua scriptlets and triggers on `ckms` keep ours while it is
//!   installed; their file waits at the same `.ckms` path and comes back when ours goes
//!   (`packaging/rpm/cosmian-pkcs11.spec`). Tested with dnf alone, from the signed
//!   repositories served over HTTP ([`super::repository`]), in a throw-away install root: both
//!   orders, `dnf upgrade` of either, `dnf remove` of either.
//!
//! Both against look-alikes of Cosmian's package built here, 5.28.0 and 5.28.1: the name,
//! version and file list that cargo-deb and cargo-generate-rpm make of the `ckms` crate
//! (Cosmian's packaging runs them on its `[package.metadata.deb]` and
//! `[package.metadata.generate-rpm]`), holding the test bed's real `ckms`, which must run after
//! every step, and a small shared object of their own as their library. Each step is checked
//! the same way: which library is at the path (SHA-256), what is at the `.ckms` path, `ckms
//! --version`, and the package manager's own verification (`dpkg --verify`, `rpm -V`). Both
//! leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::installed::{as_root, package_status};
use super::repository::dnf_test::InstallRoot;
use super::repository::fixture::{BASE, Fixture};
use super::rpm::LINK_TARGET;
use super::{NAME, Tools, capture, sha256_file, write};
use crate::step;

const LIB: &str = "usr/local/lib/libcosmian_pkcs11.so";
/// Where dpkg (`packaging/debian/preinst`) and our rpm's scriptlets keep their library while
/// ours is installed.
const DIVERTED: &str = "usr/local/lib/libcosmian_pkcs11.so.ckms";
const CKMS: &str = "usr/local/bin/ckms";
/// Cosmian's package: the `ckms` crate's name; cargo-deb adds the Debian revision `-1`,
/// cargo-generate-rpm the release `1` to its version.
pub const THEIRS: &str = "ckms";
/// The version of the test bed's real `ckms`, which the look-alikes hold.
const THEIR_VERSION: &str = "5.28.0";
/// What `rpm -V ckms` reports while ours is installed: their file is now our link (theirs
/// is intact at the `.ckms` path, which rpm does not know).
const THEIRS_VERIFY_BESIDE_OURS: &str = "....L....    /usr/local/lib/libcosmian_pkcs11.so";
/// The dnf repository the test publishes ours into.
const REPOSITORY: &str = "coexistence";

/// `cargo xtask package-test`: the .deb then the .rpm, each in both install orders.
pub fn test(fixture: &Fixture) -> Result<(), String> {
    let ours = sha256_file(&fixture.dist.amd64.lib.path)?;
    deb_both_orders(fixture.tools, &fixture.theirs, &fixture.dist.amd64.deb, &ours)?;
    dnf_both_orders(fixture, &ours)
}

/// Cosmian's `ckms` package, as built here.
pub struct LookAlike {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    /// The SHA-256 of their library (which names the version: each version's differs).
    pub lib: String,
}

impl LookAlike {
    /// The packages of version `version` (`5.28.0`) in `dir`.
    pub fn build(tools: &Tools, dir: &Path, version: &str) -> Result<LookAlike, String> {
        step(
            &format!("build a look-alike of Cosmian's ckms {version} packages"),
            "cc -shared; dpkg-deb --build; rpmbuild -bb",
        );
        let ckms = cosmian_pkcs11_testbed::binaries().ckms.clone();
        let source = dir.join("theirs.c");
        write(
            &source,
            format!("const char look_alike[] = \"libcosmian_pkcs11.so of a ckms {version} look-alike\";\n"),
        )?;
        let lib = dir.join("libcosmian_pkcs11.so");
        capture(Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&source))?;
        let deb = Self::deb(tools, dir, &ckms, &lib, version)?;
        let rpm = Self::rpm(tools, dir, &ckms, &lib, version)?;
        println!("    {}\n    {}", deb.display(), rpm.display());
        Ok(LookAlike { deb, rpm, lib: sha256_file(&lib)? })
    }

    /// What cargo-deb makes: the two assets (`ckms` 755, the library 555), the copyright and
    /// the changelog it adds, the md5sums; no maintainer scripts.
    fn deb(tools: &Tools, dir: &Path, ckms: &Path, lib: &Path, version: &str) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("deb-root");
        let doc = format!("usr/share/doc/{THEIRS}");
        let copyright = format!("{doc}/copyright");
        let changelog = format!("{doc}/changelog.Debian.gz");
        write(&root.join(&copyright), "Copyright: 2026, Cosmian Tech SAS\n")?;
        write(&root.join(&changelog), super::gzip(format!("# Changelog\n\n## [{version}]\n").as_bytes())?)?;
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
                "Package: {THEIRS}\nVersion: {version}-1\nArchitecture: amd64\n\
                 Maintainer: Cosmian support team <tech@cosmian.com>\nSection: security\n\
                 Priority: optional\nDescription: Command Line Interface used to manage the \
                 Cosmian KMS server.\n (A look-alike of Cosmian's package, for a test.)\n"
            ),
        )?;
        let deb = dir.join(format!("{THEIRS}_{version}-1_amd64.deb"));
        // Not compressed: ckms is large and the package lives for one test.
        capture(tools.command("dpkg-deb").args(["--root-owner-group", "-Znone", "--build"]).arg(&root).arg(&deb))?;
        Ok(deb)
    }

    /// What cargo-generate-rpm makes: the two assets, no automatic requirements (`auto-req =
    /// "no"`) but `/bin/sh` (`require-sh = true`), no scripts.
    fn rpm(tools: &Tools, dir: &Path, ckms: &Path, lib: &Path, version: &str) -> Result<PathBuf, String> {
        let spec = dir.join("ckms.spec");
        write(
            &spec,
            format!(
                "Name: {THEIRS}\nVersion: {version}\nRelease: 1\nLicense: BUSL-1.1\n\
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
        Ok(top.join(format!("RPMS/x86_64/{THEIRS}-{version}-1.x86_64.rpm")))
    }
}

/// Whether Cosmian's package is installed (with its library: at the path, or at the `.ckms`
/// path while ours is installed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Theirs {
    No,
    WithLib,
}

/// One package manager on one root: `/` with dpkg, or a throw-away install root with dnf.
pub struct Machine<'a> {
    pub root: &'a Path,
    pub deb: bool,
    pub tools: &'a Tools,
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
        // Their library waits at the `.ckms` path while ours is installed.
        let expected_diverted = (ours && theirs == Theirs::WithLib).then_some(their_lib);
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
            self.rpm_verify(ours, theirs)?
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

    /// What `rpm -V` reports beyond the expected: nothing for ours; for theirs, nothing, or
    /// while ours is installed exactly [`THEIRS_VERIFY_BESIDE_OURS`]. Ours is at the path as
    /// the link to its own file.
    fn rpm_verify(&self, ours: bool, theirs: Theirs) -> Result<String, String> {
        let verify = |package: &str| -> Result<String, String> {
            let out = self.rpm(&["-V", package]).output().map_err(|e| format!("cannot run rpm -V: {e}"))?;
            Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        };
        let mut unexpected = String::new();
        if ours {
            let link = std::fs::read_link(self.root.join(LIB)).map_err(|e| format!("/{LIB}: {e}"))?;
            if link != Path::new(LINK_TARGET) {
                return Err(format!("/{LIB} links to {}, not {LINK_TARGET}", link.display()));
            }
            unexpected.push_str(&verify(NAME)?);
        }
        if theirs == Theirs::WithLib {
            let report = verify(THEIRS)?;
            let expected = if ours { THEIRS_VERIFY_BESIDE_OURS } else { "" };
            if report.trim() != expected {
                unexpected.push_str(&format!("rpm -V {THEIRS}, expected {expected:?}:\n{report}"));
            } else if ours {
                println!("    rpm -V {NAME}: clean; rpm -V {THEIRS}: {expected}");
            }
        }
        Ok(unexpected)
    }

    /// `rpm --root ROOT ARGS`.
    fn rpm(&self, args: &[&str]) -> Command {
        let mut command = self.tools.command("rpm");
        command.arg("--root").arg(self.root).args(["--define", "_dbpath /var/lib/rpm"]).args(args);
        command
    }

    /// Runs `command` (a step of the sequence) and checks the state it must leave.
    pub fn step(
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

/// With dnf alone, from the signed repositories over HTTP, in a throw-away install root:
/// theirs then ours, `dnf upgrade` of ours (revision 2), of theirs (5.28.1), remove ours:
/// theirs is back, remove theirs; ours then theirs, remove theirs: ours stays and nothing is
/// kept of theirs, theirs again, remove ours: theirs is back, remove theirs.
fn dnf_both_orders(fixture: &Fixture, ours: &str) -> Result<(), String> {
    use Theirs::*;
    let tools = fixture.tools;
    step("publish revision 1 into a dnf repository; ckms 5.28.0 is in the base one", "rpmsign; createrepo_c");
    fixture.publish(REPOSITORY, &[&fixture.dist.amd64.rpm], &fixture.key)?;
    let root = InstallRoot::new(fixture, REPOSITORY, None)?;
    let path = root.path();
    let machine = Machine { root: &path, deb: false, tools };
    let (old, new) = ((ours, fixture.theirs.lib.as_str()), (ours, fixture.theirs_newer.lib.as_str()));
    let then = |what: &str, args: &[&str], state, hashes| machine.step(what, root.dnf(args), state, hashes);
    let version = |package: &str, expected: &str| match root.installed(package) {
        Some(found) if found == expected => Ok(()),
        other => Err(format!("{package} is {other:?}, not {expected}")),
    };

    then("theirs first: dnf install ckms", &["install", THEIRS], (false, WithLib), old)?;
    then("then dnf install cosmian-pkcs11: theirs is set aside", &["install", NAME], (true, WithLib), old)?;
    fixture.publish(REPOSITORY, &[&fixture.newer_rpm], &fixture.key)?;
    then("dnf upgrade cosmian-pkcs11 (revision 2)", &["upgrade", NAME], (true, WithLib), old)?;
    version(NAME, "0.1.0-2.x86_64")?;
    let base = fixture.folder(BASE);
    super::repository::add(&fixture.theirs_newer.rpm, &base)?;
    super::repository::dnf::sign_all_and_index(tools, &fixture.key, &base)?;
    then("dnf upgrade ckms (5.28.1): the new file is set aside", &["upgrade", THEIRS], (true, WithLib), new)?;
    version(THEIRS, "5.28.1-1.x86_64")?;
    then("dnf remove cosmian-pkcs11: theirs is back", &["remove", NAME], (false, WithLib), new)?;
    then("dnf remove ckms", &["remove", THEIRS], (false, No), new)?;

    then("ours first: dnf install cosmian-pkcs11", &["install", NAME], (true, No), new)?;
    then("then dnf install ckms: set aside", &["install", THEIRS], (true, WithLib), new)?;
    then("dnf remove ckms: ours stays, nothing of theirs is kept", &["remove", THEIRS], (true, No), new)?;
    then("dnf install ckms again", &["install", THEIRS], (true, WithLib), new)?;
    then("dnf remove cosmian-pkcs11: theirs is back", &["remove", NAME], (false, WithLib), new)?;
    then("dnf remove ckms", &["remove", THEIRS], (false, No), new)
}
