//! What the repository tests share: a throw-away folder served over HTTP on 127.0.0.1 (each
//! test publishes its own repository in it: `www/<name>/`, the layout of `dist`), two
//! throw-away keys (the repository's, and another one for the refusals), revision 2 of the
//! amd64 .deb and .rpm (the newer version an upgrade takes), the look-alikes of Cosmian's
//! `ckms` 5.28.0 and 5.28.1, and `www/base/`: a signed dnf repository standing in for the
//! distribution and for Cosmian, with the glibc stand-in of an empty install root and the
//! look-alike `ckms` 5.28.0.
//!
//! The glibc stand-in: an rpm with no files whose `Provides:` are exactly the requirements of
//! the rpms the tests install (`rpm -qp --requires`, rpmlib's own aside): the glibc sonames and
//! symbol versions of our library, of both architectures, and `/bin/sh` for the `ckms`
//! look-alike (cargo-generate-rpm's `require-sh`). Built, signed and served like the rest, so
//! that dnf resolves and checks everything; no check is switched off.

use std::path::{Path, PathBuf};

use super::super::coexistence::LookAlike;
use super::super::{Dist, Tools, capture, write};
use super::http::FileServer;
use super::signing::SigningKey;
use crate::step;

pub struct Fixture<'a> {
    pub tools: &'a Tools,
    pub dist: &'a Dist,
    /// The test's repository key, and another one.
    pub key: SigningKey,
    pub other_key: SigningKey,
    /// Revision 2 of the amd64 packages: `0.1.0-2`.
    pub newer_deb: PathBuf,
    pub newer_rpm: PathBuf,
    /// The `ckms` look-alikes, 5.28.0 then 5.28.1.
    pub theirs: LookAlike,
    pub theirs_newer: LookAlike,
    server: FileServer,
    work: tempfile::TempDir,
}

/// The dnf repository of the stand-in and the `ckms` look-alikes.
pub const BASE: &str = "base";

impl<'a> Fixture<'a> {
    pub fn new(tools: &'a Tools, dist: &'a Dist) -> Result<Fixture<'a>, String> {
        use std::os::unix::fs::PermissionsExt;
        let work = tempfile::Builder::new().prefix("repository-test-").tempdir().map_err(|e| e.to_string())?;
        // apt's downloads run as the `_apt` user, which reads the keyring and the lists here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let www = work.path().join("www");
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;

        step("make the test's repository keys", "gpg --quick-generate-key ... rsa4096 sign never (twice)");
        let key = SigningKey::throw_away(tools, "cosmian-pkcs11 test repository")?;
        let other_key = SigningKey::throw_away(tools, "another key")?;
        println!("    repository key {}; another key {}", key.fingerprint, other_key.fingerprint);

        let epoch = super::super::source_date_epoch()?;
        let newer = work.path().join("newer");
        std::fs::create_dir_all(&newer).map_err(|e| e.to_string())?;
        let newer_deb = super::super::deb::build_and_check(tools, &dist.amd64.lib, epoch, 2, &newer)?;
        let newer_rpm = super::super::rpm::build_and_check(tools, &dist.amd64.lib, epoch, 2, &newer)?;

        let theirs = LookAlike::build(tools, &work.path().join("ckms-5.28.0"), "5.28.0")?;
        let theirs_newer = LookAlike::build(tools, &work.path().join("ckms-5.28.1"), "5.28.1")?;

        let installed_by_tests = [&dist.amd64.rpm, &dist.arm64.rpm, &newer_rpm, &theirs.rpm, &theirs_newer.rpm];
        let stand_in = stand_in(tools, &work.path().join("stand-in"), &installed_by_tests)?;
        let base = www.join(BASE);
        for rpm in [&stand_in, &theirs.rpm] {
            super::add(rpm, &base)?;
        }
        super::dnf::sign_all_and_index(tools, &key, &base)?;
        write(&base.join(super::ASC), key.export_public(tools, true)?)?;

        let server = FileServer::start(&www)?;
        println!("    serving {} at {}", www.display(), server.url());
        Ok(Fixture { tools, dist, key, other_key, newer_deb, newer_rpm, theirs, theirs_newer, server, work })
    }

    /// The folder holding everything the test makes (mode 755).
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// The served folder of the repository `name`.
    pub fn folder(&self, name: &str) -> PathBuf {
        self.work.path().join("www").join(name)
    }

    /// The address of the repository `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.server.url())
    }

    /// [`super::publish`] into the repository `name`, signed by `key`.
    pub fn publish(&self, name: &str, packages: &[&Path], key: &SigningKey) -> Result<(), String> {
        super::publish(self.tools, key, packages, &self.folder(name), &self.url(name))
    }

    /// The requests the server received since the last call, as `GET /name/path`.
    pub fn requests(&self) -> Vec<String> {
        self.server.take_requests()
    }

    /// `Err` unless a `GET` of a path ending with `suffix` was served since the last call.
    pub fn fetched(&self, suffix: &str) -> Result<(), String> {
        let requests = self.requests();
        if requests.iter().any(|request| request.starts_with("GET ") && request.ends_with(suffix)) {
            Ok(())
        } else {
            Err(format!("no GET of …{suffix} reached the server; it served {requests:?}"))
        }
    }
}

/// Builds the glibc stand-in (see the module's documentation) into `dir`.
fn stand_in(tools: &Tools, dir: &Path, rpms: &[&PathBuf]) -> Result<PathBuf, String> {
    step("build the glibc stand-in of an empty install root", "rpm -qp --requires ...; rpmbuild -bb");
    let mut provides: Vec<String> = Vec::new();
    for rpm in rpms {
        let requires = capture(tools.command("rpm").args(["-qp", "--requires"]).arg(rpm))?;
        for line in requires.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("rpmlib(")) {
            // `name >= version` is provided by `name = version`.
            let provide = match line.split_whitespace().collect::<Vec<_>>()[..] {
                [name, _, version] => format!("{name} = {version}"),
                _ => line.to_owned(),
            };
            if !provides.contains(&provide) {
                provides.push(provide);
            }
        }
    }
    provides.sort();
    let spec = dir.join("glibc-stand-in.spec");
    let provides_lines: String = provides.iter().map(|p| format!("Provides: {p}\n")).collect();
    write(
        &spec,
        format!(
            "Name: glibc-stand-in\nVersion: 1\nRelease: 1\nLicense: Apache-2.0\nBuildArch: noarch\n\
             Summary: What an empty install root lacks for the packages of cosmian-pkcs11's tests\n\
             {provides_lines}%description\nProvides the requirements of the packages the tests \
             install, and nothing else: no file.\n%files\n"
        ),
    )?;
    let top = dir.join("top");
    capture(
        tools
            .command("rpmbuild")
            .args(["-bb", "--quiet"])
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg(&spec),
    )?;
    println!("    Provides: {}", provides.join(", "));
    Ok(top.join("RPMS/noarch/glibc-stand-in-1-1.noarch.rpm"))
}
