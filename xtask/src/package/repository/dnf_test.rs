//! dnf against the dnf repositories, served over HTTP on 127.0.0.1, in throw-away install roots
//! ([`InstallRoot`]: `dnf --installroot`, RHEL 9's `dnf.conf`, the published
//! `cosmian-pkcs11.repo` with `gpgcheck=1` and `repo_gpgcheck=1`, and the base repository of
//! the glibc stand-in, see [`super::fixture`]): `dnf install cosmian-pkcs11` imports the key
//! from the repository and installs revision 1; revision 2 published with a package signature
//! by another key is refused (`GPG check FAILED`), published right it is taken by `dnf
//! upgrade`; metadata changed after signing is refused (`repomd.xml GPG signature
//! verification error`); `dnf downgrade` goes back to revision 1; `dnf remove` leaves nothing.
//! Then the aarch64 repository, with `--forcearch=aarch64`: install, the library is the arm64
//! one, remove.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::agent;
use super::super::elf::LinuxLib;
use super::super::rpm::LINK_TARGET;
use super::super::{NAME, capture, sha256_file, write};
use super::fixture::{BASE, Fixture};
use crate::step;

/// The repository this test publishes.
const REPOSITORY: &str = "dnf";
/// The library's path, a link to [`LINK_TARGET`] (see `packaging/rpm/cosmian-pkcs11.spec`).
const LINK: &str = "usr/local/lib/libcosmian_pkcs11.so";

/// RHEL 9's `/etc/dnf/dnf.conf` (Debian's sets `skip_if_unavailable=True`, which would turn a
/// refused repository into a skipped one).
const DNF_CONF: &str = "[main]\ngpgcheck=True\ninstallonly_limit=3\nclean_requirements_on_remove=True\nbest=True\n\
                        skip_if_unavailable=False\n";

/// An empty install root, and the configuration dnf and rpm use for it.
pub struct InstallRoot {
    dir: tempfile::TempDir,
    forcearch: Option<&'static str>,
}

impl InstallRoot {
    /// A new root whose dnf knows the repository `name` (through the `cosmian-pkcs11.repo` it
    /// publishes) and the base repository; `forcearch`: dnf's `--forcearch`.
    pub fn new(fixture: &Fixture, name: &str, forcearch: Option<&'static str>) -> Result<InstallRoot, String> {
        let dir = tempfile::Builder::new().prefix("dnf-root-").tempdir().map_err(|e| e.to_string())?;
        let repo = std::fs::read_to_string(fixture.folder(name).join(super::REPO)).map_err(|e| e.to_string())?;
        write(&dir.path().join("repos").join(super::REPO), repo)?;
        let base = fixture.url(BASE);
        write(
            &dir.path().join("repos/test-base.repo"),
            format!(
                "[test-base]\nname=the distribution and Cosmian, standing in\nbaseurl={base}\ngpgcheck=1\n\
                 repo_gpgcheck=1\ngpgkey={base}/{}\n",
                super::ASC
            ),
        )?;
        write(&dir.path().join("dnf.conf"), DNF_CONF)?;
        // rpm's database where RHEL has it (Debian's rpm defaults to ~/.rpmdb), for dnf and rpm.
        write(&dir.path().join("home/.rpmmacros"), "%_dbpath /var/lib/rpm\n")?;
        std::fs::create_dir_all(dir.path().join("root")).map_err(|e| e.to_string())?;
        Ok(InstallRoot { dir, forcearch })
    }

    /// The root.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `dnf -y --refresh --installroot ROOT ... ARGS` (`--refresh`: the metadata of the
    /// repository as it is now, not as dnf cached it).
    pub fn dnf(&self, args: &[&str]) -> Command {
        let mut dnf = Command::new("dnf");
        dnf.env("HOME", self.dir.path().join("home"))
            .args(["-y", "--refresh", "--releasever=9"])
            .arg(format!("--config={}", self.dir.path().join("dnf.conf").display()))
            .arg(format!("--installroot={}", self.path().display()))
            .arg(format!("--setopt=reposdir={}", self.dir.path().join("repos").display()));
        if let Some(arch) = self.forcearch {
            dnf.arg(format!("--forcearch={arch}"));
        }
        dnf.args(args);
        dnf
    }

    /// `rpm --root ROOT ARGS`.
    pub fn rpm(&self, args: &[&str]) -> Command {
        let mut rpm = Command::new("rpm");
        rpm.env("HOME", self.dir.path().join("home")).arg("--root").arg(self.path()).args(args);
        rpm
    }

    /// `VERSION-RELEASE.ARCH` of the installed `package`, `None` when it is not installed.
    pub fn installed(&self, package: &str) -> Option<String> {
        capture(&mut self.rpm(&["-q", "--qf", "%{VERSION}-%{RELEASE}.%{ARCH}", package])).ok()
    }

    /// Runs `dnf ARGS`, announced; `Err` with its output when it fails.
    pub fn run(&self, what: &str, args: &[&str]) -> Result<String, String> {
        step(what, &format!("dnf --installroot ... {}", args.join(" ")));
        super::output(&mut self.dnf(args))
    }

    /// Runs `dnf ARGS`, which must fail with `expected` in its output.
    fn refused(&self, what: &str, args: &[&str], expected: &[&str]) -> Result<(), String> {
        super::refusal(&format!("dnf {}", args.join(" ")), self.run(what, args), expected)
    }

    /// `Err` unless `cosmian-pkcs11` is installed as `version` (`0.1.0-1.x86_64`) with the
    /// library of `lib` behind the link, its agent and units in place, and `rpm -V` is clean.
    fn check_ours(&self, version: &str, lib: &LinuxLib) -> Result<(), String> {
        let found = self.installed(NAME);
        if found.as_deref() != Some(version) {
            return Err(format!("cosmian-pkcs11 is {found:?}, not {version}"));
        }
        let link = self.path().join(LINK);
        let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
        if target != Path::new(LINK_TARGET) || sha256_file(&link)? != sha256_file(&lib.path)? {
            return Err(format!("/{LINK} -> {} is not the library {}", target.display(), lib.path.display()));
        }
        agent::check_installed(&self.path(), lib)?;
        let verify = capture(&mut self.rpm(&["-V", NAME]))?;
        if !verify.trim().is_empty() {
            return Err(format!("rpm -V {NAME} reports:\n{verify}"));
        }
        println!("    {NAME}-{version}; /{LINK} -> {LINK_TARGET}, the library built; rpm -V: clean");
        Ok(())
    }

    /// `Err` unless nothing of ours is left: no package, no file under `/usr/local/lib`, no
    /// agent, no unit.
    fn check_nothing_left(&self) -> Result<(), String> {
        let lib = self.path().join("usr/local/lib");
        let mut left: Vec<_> = std::fs::read_dir(&lib)
            .map(|dir| dir.filter_map(Result::ok).map(|entry| entry.path()).collect())
            .unwrap_or_default();
        left.extend(agent::installed_files().iter().map(|file| self.path().join(file)).filter(|path| path.exists()));
        if self.installed(NAME).is_some() || !left.is_empty() {
            return Err(format!("after dnf remove: {:?} installed, {left:?} left", self.installed(NAME)));
        }
        println!("    nothing left: no package, nothing in /usr/local/lib, no agent, no unit");
        Ok(())
    }
}

impl Drop for InstallRoot {
    /// Stops the `gpg-agent`s dnf started to check each repository's metadata (one per
    /// `var/cache/dnf/<repository>/pubring`), then the folder goes.
    fn drop(&mut self) {
        let cache = self.path().join("var/cache/dnf");
        for entry in std::fs::read_dir(cache).into_iter().flatten().filter_map(Result::ok) {
            let pubring = entry.path().join("pubring");
            if pubring.is_dir() {
                let _ = Command::new("gpgconf").arg("--homedir").arg(&pubring).args(["--kill", "gpg-agent"]).output();
            }
        }
    }
}

pub fn run(fixture: &Fixture) -> Result<(), String> {
    let dist = fixture.dist;
    step("publish revision 1 (x86_64, aarch64) into a dnf repository", "rpmsign; createrepo_c; gpg --detach-sign");
    fixture.publish(REPOSITORY, &[&dist.amd64.rpm, &dist.arm64.rpm], &fixture.key)?;
    let root = InstallRoot::new(fixture, REPOSITORY, None)?;
    let (r1, r2) = ("0.1.0-1.x86_64", "0.1.0-2.x86_64");
    let lib = &dist.amd64.lib;

    let out = root.run("install it, as users do", &["install", NAME])?;
    // dnf shows the key it imports, from the repository's gpgkey.
    let fingerprint =
        fixture.key.fingerprint.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>();
    if !out.contains(&format!("Fingerprint: {}", fingerprint.join(" "))) {
        return Err(format!("dnf did not import the repository key {}:\n{out}", fixture.key.fingerprint));
    }
    fixture.fetched(&format!("/{REPOSITORY}/{}", super::ASC))?;
    println!("    dnf imported the key {} from the repository's gpgkey", fixture.key.fingerprint);
    root.check_ours(r1, lib)?;
    // The installed program runs (this machine's architecture, glibc, as on RHEL).
    agent::check_version(Command::new(agent::installed_in(&root.path())))?;

    // Revision 2, its package signed by another key, the metadata by the repository's key.
    let x86_64 = super::dnf::arch_dir(fixture.tools, &fixture.folder(REPOSITORY).join("rpm"), &fixture.newer_rpm)?;
    let newer = super::add(&fixture.newer_rpm, &x86_64)?;
    fixture.other_key.sign_rpms(fixture.tools, &[&newer])?;
    super::dnf::index_and_sign(fixture.tools, &fixture.key, &x86_64)?;
    root.refused(
        "revision 2, signed by another key, is refused",
        &["upgrade", NAME],
        &["GPG check FAILED", &format!("Failing package is: {NAME}-{r2}")],
    )?;
    root.check_ours(r1, lib)?;

    fixture.publish(REPOSITORY, &[&fixture.newer_rpm], &fixture.key)?;
    root.run("revision 2, signed by the repository key, is taken", &["upgrade", NAME])?;
    root.check_ours(r2, lib)?;

    // The metadata changed after it was signed: createrepo_c again, without a new signature.
    let repomd = x86_64.join("repodata/repomd.xml");
    let signed = std::fs::read(&repomd).map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    capture(fixture.tools.command("createrepo_c").args(["--quiet", "--no-database"]).arg(&x86_64))?;
    if std::fs::read(&repomd).map_err(|e| e.to_string())? == signed {
        return Err("createrepo_c wrote the same repomd.xml again: the test changes nothing".into());
    }
    root.refused(
        "metadata changed after signing is refused",
        &["downgrade", NAME],
        &["repomd.xml GPG signature verification error: Bad GPG signature"],
    )?;
    root.check_ours(r2, lib)?;

    super::dnf::index_and_sign(fixture.tools, &fixture.key, &x86_64)?;
    root.run("signed again: dnf downgrade to revision 1", &["downgrade", NAME])?;
    root.check_ours(r1, lib)?;

    root.run("remove it", &["remove", NAME])?;
    root.check_nothing_left()?;

    let arm = InstallRoot::new(fixture, REPOSITORY, Some("aarch64"))?;
    arm.run("the aarch64 repository: install", &["install", NAME])?;
    fixture.fetched(&format!("/{REPOSITORY}/rpm/aarch64/{NAME}-0.1.0-1.aarch64.rpm"))?;
    arm.check_ours("0.1.0-1.aarch64", &dist.arm64.lib)?;
    arm.run("and remove", &["remove", NAME])?;
    arm.check_nothing_left()
}
