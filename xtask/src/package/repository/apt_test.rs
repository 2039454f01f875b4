//! apt-get against the apt repository, served over HTTP on 127.0.0.1, on this machine (root):
//! the published `cosmian-pkcs11.sources` as the only source (its `Signed-By` pointed at the
//! published keyring in a test folder), and apt's lists and cache in that folder too, so that
//! the system's other apt state is left as it is and nothing is written to `/etc/apt`.
//!
//! `apt-get update`, `apt-get install cosmian-pkcs11`, the logins through it
//! ([`super::super::installed`]); the repository re-signed by another key is refused by
//! `apt-get update` (`NO_PUBKEY`: apt keeps the index it had; on a machine without one, an
//! error, `is not signed`); revision 2 published, its .deb changed after signing, is
//! refused by `apt-get upgrade` (`Hash Sum mismatch`), then published right, taken; `apt-get
//! install cosmian-pkcs11=0.1.0-1` downgrades; beside the `ckms` look-alike, `apt-get upgrade`
//! to revision 2 and an upgrade of `ckms` keep the diversion; remove and purge leave nothing.
//! Then `apt-get download cosmian-pkcs11` for arm64 gets the arm64 .deb through the arm64 index.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::coexistence::{Machine, THEIRS, Theirs};
use super::super::installed::{self, INSTALLED, as_root, package_status};
use super::super::{NAME, capture, sha256_file, write};
use super::fixture::Fixture;
use crate::step;

/// The repository this test publishes.
const REPOSITORY: &str = "apt";

/// apt-get and apt-cache with only our source, and their lists and cache in `dir`.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// The published `.sources` of the repository in `dir/parts/`, its `Signed-By` the keyring
    /// `keyring` (as the user downloaded it) in `dir/`; `architecture`: apt's native
    /// architecture, when not this machine's.
    fn new(fixture: &Fixture, keyring: &[u8], dir: &Path, architecture: Option<&str>) -> Result<Apt, String> {
        let keyring_file = dir.join(super::KEYRING);
        write(&keyring_file, keyring)?;
        let published = fixture.folder(REPOSITORY).join(super::SOURCES);
        let sources = std::fs::read_to_string(published).map_err(|e| e.to_string())?;
        let signed_by = format!("Signed-By: {}\n", super::KEYRING_PATH);
        if !sources.contains(&signed_by) {
            return Err(format!("the published {} has no {signed_by:?}:\n{sources}", super::SOURCES));
        }
        let sources = sources.replace(&signed_by, &format!("Signed-By: {}\n", keyring_file.display()));
        write(&dir.join("parts").join(super::SOURCES), sources)?;
        for folder in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(folder)).map_err(|e| e.to_string())?;
        }
        let mut options = vec![
            "Dir::Etc::SourceList=/dev/null".to_owned(),
            format!("Dir::Etc::SourceParts={}", dir.join("parts").display()),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            // Other workers may hold dpkg's lock for a while.
            "DPkg::Lock::Timeout=600".to_owned(),
        ];
        if let Some(arch) = architecture {
            options.extend([format!("APT::Architecture={arch}"), format!("APT::Architectures={arch}")]);
        }
        Ok(Apt { options })
    }

    /// `apt-get` or `apt-cache` with the options, as root.
    fn command(&self, program: &str, args: &[&str]) -> Result<Command, String> {
        let mut command = as_root(program)?;
        for option in &self.options {
            command.args(["-o", option]);
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        Ok(command)
    }

    /// Runs `apt-get -y ARGS`, announced; its output, or `Err` with it.
    fn run(&self, what: &str, args: &[&str]) -> Result<String, String> {
        step(what, &format!("apt-get {}", args.join(" ")));
        let mut all = vec!["-y"];
        all.extend(args);
        super::output(&mut self.command("apt-get", &all)?)
    }

    /// Runs `apt-get -y ARGS`, which must fail with `expected` in its output.
    fn refused(&self, what: &str, args: &[&str], expected: &[&str]) -> Result<(), String> {
        super::refusal(&format!("apt-get {}", args.join(" ")), self.run(what, args), expected)
    }

    /// apt's candidate version of `cosmian-pkcs11` (`apt-cache policy`).
    fn candidate(&self) -> Result<String, String> {
        let policy = capture(&mut self.command("apt-cache", &["policy", NAME])?)?;
        policy
            .lines()
            .find_map(|line| line.trim().strip_prefix("Candidate: "))
            .map(str::to_owned)
            .ok_or_else(|| format!("apt-cache policy shows no candidate:\n{policy}"))
    }
}

/// dpkg's version of the installed `cosmian-pkcs11`, and the library behind its path.
fn check_installed(version: &str, lib: &Path) -> Result<(), String> {
    let found = capture(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", NAME]))?;
    if found != format!("install ok installed {version}") {
        return Err(format!("dpkg has {NAME} {found:?}, not {version} installed"));
    }
    if sha256_file(Path::new(INSTALLED))? != sha256_file(lib)? {
        return Err(format!("{INSTALLED} is not the library {}", lib.display()));
    }
    println!("    {NAME} {version} installed; {INSTALLED} is the library built");
    Ok(())
}

pub fn run(fixture: &Fixture) -> Result<(), String> {
    installed::check_path_free()?;
    if let Some(package) = present().first() {
        return Err(format!("the apt test installs and purges {package}; dpkg has it already"));
    }
    let before = etc_apt()?;
    // Both packages go whatever happens, a panic of the test bed included.
    let purge = Purge;
    sequence(fixture)?;
    purge.now()?;
    let after = etc_apt()?;
    if after != before {
        return Err(format!("the test changed /etc/apt: before\n{before}\nafter\n{after}"));
    }
    println!("    /etc/apt as it was");
    Ok(())
}

fn sequence(fixture: &Fixture) -> Result<(), String> {
    let (dist, tools) = (fixture.dist, fixture.tools);
    let (r1, r2) = ("0.1.0-1", "0.1.0-2");
    let lib = &dist.amd64.lib.path;
    step("publish revision 1 (amd64, arm64) into an apt repository", "apt-ftparchive; gpg --clearsign");
    fixture.publish(REPOSITORY, &[&dist.amd64.deb, &dist.arm64.deb], &fixture.key)?;
    // The key as users download it, once.
    let keyring = std::fs::read(fixture.folder(REPOSITORY).join(super::KEYRING)).map_err(|e| e.to_string())?;
    let apt = Apt::new(fixture, &keyring, &fixture.work().join("apt-state"), None)?;

    apt.run("apt-get update with only our source", &["update"])?;
    fixture.fetched(&format!("/{REPOSITORY}/apt/dists/stable/InRelease"))?;
    if apt.candidate()? != r1 {
        return Err(format!("apt's candidate is {}, not {r1}", apt.candidate()?));
    }
    apt.run("install it, as users do", &["install", "--no-install-recommends", NAME])?;
    fixture.fetched(&format!("/{REPOSITORY}/apt/pool/main/c/{NAME}/{NAME}_{r1}_amd64.deb"))?;
    check_installed(r1, lib)?;
    installed::logins(Path::new(INSTALLED), &dist.amd64.lib)?;

    // Revision 2 published by someone with another key: apt keeps the index it had (a
    // warning, exit status 0), and a new machine gets none (an error).
    fixture.publish(REPOSITORY, &[&fixture.newer_deb], &fixture.other_key)?;
    let no_pubkey = format!("NO_PUBKEY {}", fixture.other_key.key_id());
    let kept = apt.run("the repository re-signed by another key", &["update"])?;
    for text in [no_pubkey.as_str(), "The repository is not updated and the previous index files will be used"] {
        if !kept.contains(text) {
            return Err(format!("apt-get update did not say {text:?}:\n{kept}"));
        }
        println!("    refused: {text}");
    }
    if apt.candidate()? != r1 {
        return Err(format!("after the refused update apt's candidate is {}, not {r1}", apt.candidate()?));
    }
    println!("    apt's candidate is still {r1}");
    let fresh = Apt::new(fixture, &keyring, &fixture.work().join("apt-state-fresh"), None)?;
    fresh.refused("and on a machine that never had the repository", &["update"], &[&no_pubkey, "is not signed"])?;

    // Signed by the repository key again, then the .deb changed after signing.
    fixture.publish(REPOSITORY, &[], &fixture.key)?;
    let pool = super::apt::pool(&fixture.folder(REPOSITORY).join("apt"));
    let newer = pool.join(fixture.newer_deb.file_name().expect("a file name"));
    let mut bytes = std::fs::read(&newer).map_err(|e| e.to_string())?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newer, bytes).map_err(|e| e.to_string())?;
    apt.run("revision 2 published, then its .deb changed", &["update"])?;
    apt.refused("the changed .deb", &["upgrade"], &["Hash Sum mismatch"])?;
    check_installed(r1, lib)?;

    fixture.publish(REPOSITORY, &[&fixture.newer_deb], &fixture.key)?;
    apt.run("revision 2 published right", &["update"])?;
    apt.run("upgrade", &["upgrade"])?;
    check_installed(r2, lib)?;
    apt.run("downgrade", &["install", "--allow-downgrades", &format!("{NAME}={r1}")])?;
    check_installed(r1, lib)?;

    beside_ckms(fixture, &apt)?;

    apt.run("remove it", &["remove", NAME])?;
    installed::check_removed()?;
    apt.run("purge it", &["purge", NAME])?;
    installed::check_purged()?;

    arm64_download(fixture, tools, &keyring)
}

/// Revision 1 installed; the `ckms` look-alike 5.28.0 installed beside it (the diversion),
/// `apt-get upgrade` to revision 2, `ckms` 5.28.1: the diversion holds; `apt-get remove` of
/// ours gives theirs back; `ckms` goes.
fn beside_ckms(fixture: &Fixture, apt: &Apt) -> Result<(), String> {
    let machine = Machine { root: Path::new("/"), deb: true, tools: fixture.tools };
    let ours = sha256_file(&fixture.dist.amd64.lib.path)?;
    let install_file = |file: &PathBuf| -> Result<Command, String> {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let mut command = apt.command("apt-get", &["install", "-y", &format!("./{name}")])?;
        command.current_dir(file.parent().expect("in a folder"));
        Ok(command)
    };
    let (old, new) = ((ours.as_str(), fixture.theirs.lib.as_str()), (ours.as_str(), fixture.theirs_newer.lib.as_str()));
    let apt_get = |args: &[&str]| apt.command("apt-get", args);
    let then = |what, command, ours, hashes| machine.step(what, command, (ours, Theirs::WithLib), hashes);
    then("beside ckms: the look-alike 5.28.0, diverted", install_file(&fixture.theirs.deb)?, true, old)?;
    then("apt-get upgrade: ours to revision 2", apt_get(&["upgrade", "-y"])?, true, old)?;
    check_installed("0.1.0-2", &fixture.dist.amd64.lib.path)?;
    then("ckms upgraded to 5.28.1: diverted too", install_file(&fixture.theirs_newer.deb)?, true, new)?;
    then("remove ours: theirs is back", apt_get(&["remove", "-y", NAME])?, false, new)?;
    machine.step("purge ckms", apt_get(&["purge", "-y", THEIRS])?, (false, Theirs::No), new)?;
    apt.run("ours again, revision 1", &["install", "--allow-downgrades", &format!("{NAME}=0.1.0-1")])?;
    Ok(())
}

/// `apt-get download cosmian-pkcs11` with apt's architecture arm64: the arm64 index, signed
/// and checked the same way, gives the arm64 .deb.
fn arm64_download(fixture: &Fixture, tools: &super::super::Tools, keyring: &[u8]) -> Result<(), String> {
    let dir = fixture.work().join("apt-arm64");
    let apt = Apt::new(fixture, keyring, &dir, Some("arm64"))?;
    apt.run("the arm64 index: apt-get update with apt's architecture arm64", &["update"])?;
    fixture.fetched(&format!("/{REPOSITORY}/apt/dists/stable/main/binary-arm64/Packages.gz"))?;
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| e.to_string())?;
    // apt downloads as its `_apt` user.
    let apt_user = capture(tools.command("id").args(["-u", "_apt"]))?;
    let uid = apt_user.trim().parse().map_err(|e| format!("id -u _apt: {e}"))?;
    std::os::unix::fs::chown(&downloads, Some(uid), None).map_err(|e| e.to_string())?;
    step("download it", "apt-get download cosmian-pkcs11 (arm64)");
    super::output(apt.command("apt-get", &["download", NAME])?.current_dir(&downloads))?;
    let deb = fixture.dist.arm64.deb.file_name().expect("a file name");
    if sha256_file(&downloads.join(deb))? != sha256_file(&fixture.dist.arm64.deb)? {
        return Err(format!("apt-get download did not give {}", fixture.dist.arm64.deb.display()));
    }
    println!("    {}: the arm64 .deb built", deb.to_string_lossy());
    Ok(())
}

/// Purges ours and the `ckms` look-alike, those dpkg has: by [`Purge::now`], or when dropped.
struct Purge;

impl Purge {
    fn now(self) -> Result<(), String> {
        std::mem::forget(self);
        purge_both()
    }
}

impl Drop for Purge {
    fn drop(&mut self) {
        if let Err(error) = purge_both() {
            eprintln!("{error}");
        }
    }
}

/// Ours and the `ckms` look-alike, those dpkg has (installed, or their configuration files).
fn present() -> Vec<&'static str> {
    [NAME, THEIRS]
        .into_iter()
        .filter(|package| {
            let status = package_status(package);
            !status.is_empty() && !status.ends_with(" not-installed")
        })
        .collect()
}

fn purge_both() -> Result<(), String> {
    let present = present();
    if present.is_empty() {
        return Ok(());
    }
    let mut apt_get = as_root("apt-get")?;
    apt_get.args(["purge", "-y", "-o", "DPkg::Lock::Timeout=600"]).args(&present);
    capture(apt_get.env("DEBIAN_FRONTEND", "noninteractive")).map(drop)
}

/// What `/etc/apt` holds (every path), for the check that the test leaves it as it was.
fn etc_apt() -> Result<String, String> {
    capture(Command::new("find").args(["/etc/apt", "-printf", "%p %s\\n"]))
}
