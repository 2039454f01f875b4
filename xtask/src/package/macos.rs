//! macOS: `cargo xtask dist-macos`, on a Mac, builds the library and the agent
//! (`cosmian-ssh-agent`) for aarch64 and x86_64, joins each into a universal file, signs them
//! (Developer ID Application, hardened runtime, Apple's secure timestamp), runs the signed agent
//! for Apple's `/usr/bin/ssh-add`, notarizes the library (in the release zip, with the licence
//! files: [`release_zip`]), then builds the `.pkg` that installs both, the agent's LaunchAgent
//! and the licence files ([`super::macos_pkg`]), signs it (Developer ID Installer), notarizes it
//! and staples the ticket; last, the files it ships get every Mach-O check of the cross build
//! ([`macho`]), read with Xcode's tools.
//!
//! Signing and notarization go through rcodesign (crates.io `apple-codesign`) with the
//! certificates and the App Store Connect API key taken from the environment only
//! ([`SECRETS`]), written to a private temporary folder for the time of the task. The same
//! functions run on Linux in [`signing_selftest`], on the files cross-built from Linux
//! ([`super::macos_cross`]): signed with a self-signed Developer ID certificate passed the same
//! way, then verified, and a changed byte must fail the verification; the zip and the `.pkg`
//! built of them are unpacked with other tools. What only a Mac and Apple's services can do
//! (the notary service, stapling, Gatekeeper, running the library and the agent, Apple's ssh
//! through the agent: [`apple_ssh_through_the_agent`], launchd) runs in the release workflow,
//! `.github/workflows/release.yml`, which [`super::workflow`] checks.

pub mod macho;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use cosmian_pkcs11_testbed::{self as testbed, CosmianAgent};
use tempfile::TempDir;

use super::elf::{AGENT, BuildTree};
use super::macos_pkg::{LAUNCH_AGENT_LABEL, build_pkg, check_pkg, pkg_files};
use super::{NAME, Tools, capture, dist_dir, version, workspace_root};
use crate::step;

/// The environment variables `dist-macos` reads, all required.
pub const SECRETS: [&str; 7] = [
    // A Developer ID Application certificate and its key, PKCS#12, base64; its password.
    "APPLE_CODESIGN_P12_BASE64",
    "APPLE_CODESIGN_P12_PASSWORD",
    // A Developer ID Installer certificate and its key, PKCS#12, base64; its password.
    "APPLE_INSTALLER_P12_BASE64",
    "APPLE_INSTALLER_P12_PASSWORD",
    // An App Store Connect API key: issuer id, key id, the AuthKey_<id>.p8 file's text.
    "APPLE_API_ISSUER",
    "APPLE_API_KEY_ID",
    "APPLE_API_PRIVATE_KEY",
];

/// Rust's Apple targets, and the names Mach-O tools give their architectures.
pub const TARGETS: [(&str, &str); 2] = [("aarch64-apple-darwin", "arm64"), ("x86_64-apple-darwin", "x86_64")];
/// The oldest macOS the library and the agent run on (`LC_BUILD_VERSION minos`), for both
/// architectures: 11.0 is the first macOS on Apple silicon.
pub const MIN_MACOS: &str = "11.0";
/// The agent's link arguments, the library's (`build.rs`, which gives them to the cdylib only):
/// no library it does not call (Rust's standard library asks for libiconv), room in the header
/// for the code signature's load command, no debug map (whose object paths would make LC_UUID
/// depend on the build folder).
const LINK_ARGS: &str =
    "-C link-arg=-Wl,-dead_strip_dylibs -C link-arg=-Wl,-headerpad_max_install_names -C link-arg=-Wl,-S";

/// `cargo build --release` of the library and the agent for an Apple `target`, for
/// [`MIN_MACOS`], with the build machine's paths remapped ([`super::BuildPaths`]); the results
/// are [`slice()`]s. The cross build adds its compilers to the command.
pub fn release_build(tools: &Tools, target: &str, tree: &BuildTree) -> Result<Command, String> {
    let env_target = target.replace('-', "_");
    let mut command = tree.cargo(tools)?;
    command
        .args(["build", "--release", "--locked", "--target", target, "-p", "cosmian-pkcs11", "--lib", "--bin", AGENT])
        .env("MACOSX_DEPLOYMENT_TARGET", MIN_MACOS)
        .env(
            format!("CARGO_TARGET_{}_RUSTFLAGS", env_target.to_uppercase()),
            format!("{} {LINK_ARGS}", tree.paths.rustflags()),
        )
        .env(format!("CFLAGS_{env_target}"), tree.paths.cflags());
    Ok(command)
}

/// The two Mach-O files of a macOS release: the library and the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachO {
    Dylib,
    Agent,
}

impl MachO {
    pub const ALL: [MachO; 2] = [MachO::Dylib, MachO::Agent];

    /// Its file name, as cargo writes it and as it ships.
    pub fn file_name(self) -> &'static str {
        match self {
            MachO::Dylib => DYLIB,
            MachO::Agent => AGENT,
        }
    }

    /// The code signature's identifier.
    fn identifier(self) -> &'static str {
        match self {
            MachO::Dylib => IDENTIFIER,
            MachO::Agent => LAUNCH_AGENT_LABEL,
        }
    }
}

/// The universal files.
#[derive(Debug)]
pub struct Universal {
    pub dylib: PathBuf,
    pub agent: PathBuf,
}

impl Universal {
    /// `target/dist/libcosmian_pkcs11.dylib` and `target/dist/cosmian-ssh-agent-macos` (beside
    /// the Linux `cosmian-ssh-agent` of `cargo xtask dist`; the .pkg installs it under its name).
    pub fn in_dist() -> Result<Universal, String> {
        let dist = dist_dir()?;
        Ok(Universal { dylib: dist.join(DYLIB), agent: dist.join(format!("{AGENT}-macos")) })
    }

    pub fn get(&self, kind: MachO) -> &Path {
        match kind {
            MachO::Dylib => &self.dylib,
            MachO::Agent => &self.agent,
        }
    }
}

/// Where [`release_build`] in `tree` leaves `kind` for `target`.
pub fn slice(tree: &BuildTree, target: &str, kind: MachO) -> PathBuf {
    tree.target_dir.join(target).join("release").join(kind.file_name())
}
pub const DYLIB: &str = "libcosmian_pkcs11.dylib";
/// The library's code signature identifier, and the `.pkg`'s.
pub const IDENTIFIER: &str = "com.cosmian.pkcs11";
/// Where the secrets go while the task runs: a folder only this user can read, removed when
/// dropped. Passwords are passed as files, never on a command line.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Result<Secrets, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("cosmian-pkcs11-signing-").tempdir().map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        Ok(Secrets { dir })
    }

    fn file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(bytes))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// A signing certificate and its key: a PKCS#12 file and its password file.
struct Identity {
    p12: PathBuf,
    password: PathBuf,
}

impl Identity {
    /// From `{prefix}_P12_BASE64` and `{prefix}_P12_PASSWORD` of `env`.
    fn from_env(env: &impl Fn(&str) -> Option<String>, prefix: &str, secrets: &Secrets) -> Result<Identity, String> {
        let p12 = base64::engine::general_purpose::STANDARD
            .decode(required(env, &format!("{prefix}_P12_BASE64"))?.trim())
            .map_err(|e| format!("{prefix}_P12_BASE64 is not base64: {e}"))?;
        let password = required(env, &format!("{prefix}_P12_PASSWORD"))?;
        let name = prefix.to_ascii_lowercase();
        Ok(Identity {
            p12: secrets.file(&format!("{name}.p12"), &p12)?,
            password: secrets.file(&format!("{name}.password"), password.as_bytes())?,
        })
    }
}

fn required(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String, String> {
    env(name)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| format!("{name} is not set (the signing secrets come from the environment: {SECRETS:?})"))
}

/// Apple's time-stamp server, or none (the self-signed test, offline).
#[derive(Clone, Copy, PartialEq)]
enum Timestamp {
    Apple,
    None,
}

/// `rcodesign sign`, in place: the library or the agent (`code`; every slice of a universal
/// file) with the hardened runtime and its identifier, or a .pkg (a XAR archive).
fn sign(
    tools: &Tools,
    path: &Path,
    code: Option<MachO>,
    identity: &Identity,
    timestamp: Timestamp,
) -> Result<(), String> {
    let mut command = tools.command("rcodesign");
    command.arg("sign").arg("--p12-file").arg(&identity.p12).arg("--p12-password-file").arg(&identity.password);
    if let Some(kind) = code {
        command.args(["--code-signature-flags", "runtime", "--binary-identifier", kind.identifier()]);
    }
    if timestamp == Timestamp::None {
        command.args(["--timestamp-url", "none"]);
    }
    capture(command.arg(path)).map(drop)
}

/// `rcodesign verify` and `rcodesign print-signature-info`: every slice's signature verifies,
/// is made with a Developer ID Application certificate, names `kind`'s identifier, sets the
/// hardened runtime and, with [`Timestamp::Apple`], carries a time-stamp token.
fn verify_signed(tools: &Tools, path: &Path, kind: MachO, timestamp: Timestamp) -> Result<(), String> {
    let slices = TARGETS.len();
    capture(tools.command("rcodesign").arg("verify").arg(path))
        .map_err(|e| format!("the signature of {} does not verify: {e}", path.display()))?;
    let info = capture(tools.command("rcodesign").arg("print-signature-info").arg(path))?;
    let count = |needle: &str| info.lines().filter(|line| line.trim() == needle).count();
    let identifier = format!("identifier: {}", kind.identifier());
    let checks = [
        ("signature_verifies: true", "a verified CMS signature"),
        ("flags: CodeSignatureFlags(RUNTIME)", "the hardened runtime flag"),
        ("apple_certificate_profile: developer-id-application", "a Developer ID Application certificate"),
        (identifier.as_str(), "its identifier"),
    ];
    for (needle, what) in checks {
        if count(needle) != slices {
            return Err(format!("{}: {slices} slices but {} with {what}:\n{info}", path.display(), count(needle)));
        }
    }
    let stamped = info.lines().filter(|line| line.trim_start().starts_with("time_stamp_token:")).count();
    if timestamp == Timestamp::Apple && stamped < slices {
        return Err(format!("{}: a slice has no secure timestamp:\n{info}", path.display()));
    }
    Ok(())
}

/// `cargo xtask dist-macos`.
pub fn dist_macos() -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err("dist-macos runs on macOS (cargo's Apple targets, Gatekeeper, launchd); \
                    the release workflow .github/workflows/release.yml runs it"
            .into());
    }
    let tools = Tools::get()?;
    let env = |name: &str| std::env::var(name).ok();
    let secrets = Secrets::new()?;
    let application = Identity::from_env(&env, "APPLE_CODESIGN", &secrets)?;
    let installer = Identity::from_env(&env, "APPLE_INSTALLER", &secrets)?;
    let api_key = api_key_json(tools, &env, &secrets)?;
    let dist = dist_dir()?;

    let tree = BuildTree::here()?;
    for (target, _) in TARGETS {
        step(&format!("build for {target}"), &format!("cargo build --release --target {target} --lib --bin {AGENT}"));
        crate::run(&mut release_build(tools, target, &tree)?)?;
    }
    let files = Universal::in_dist()?;
    for kind in MachO::ALL {
        let path = files.get(kind);
        let _ = std::fs::remove_file(path);
        step("join them", &format!("lipo -create -output {}", path.display()));
        let slices: Vec<PathBuf> = TARGETS.iter().map(|(target, _)| slice(&tree, target, kind)).collect();
        crate::run(tools.command("lipo").arg("-create").arg("-output").arg(path).args(&slices))?;
    }

    step("sign them", "rcodesign sign --code-signature-flags runtime (Developer ID Application, secure timestamp)");
    for kind in MachO::ALL {
        let path = files.get(kind);
        sign(tools, path, Some(kind), &application, Timestamp::Apple)?;
        verify_signed(tools, path, kind, Timestamp::Apple)?;
        crate::run(tools.command("codesign").args(["--verify", "--strict", "--verbose=2"]).arg(path))?;
    }
    // The signed agent, hardened runtime and all, runs and answers Apple's ssh-add.
    super::agent::check_version(Command::new(&files.agent))?;
    apple_ssh_add_reaches(&files.agent)?;

    let zip = dist.join(format!("{NAME}-{}-macos-dylib.zip", version()));
    release_zip(&files.dylib, &zip)?;
    step("notarize the library", "rcodesign notary-submit --wait (a bare dylib cannot be stapled)");
    crate::run(tools.command("rcodesign").args(["notary-submit", "--wait", "--api-key-file"]).arg(&api_key).arg(&zip))?;

    let pkg = dist.join(format!("{NAME}-{}.pkg", version()));
    // The same builder as on Linux, where `check_pkg` unpacks its output in every CI run; here
    // macOS's own tools judge the signed result below (and the workflow installs it). The
    // notary service checks the agent inside it too.
    build_pkg(&files, &pkg)?;

    step("sign, notarize and staple it", "rcodesign sign (Developer ID Installer); rcodesign notary-submit --staple");
    sign(tools, &pkg, None, &installer, Timestamp::Apple)?;
    crate::run(
        tools.command("rcodesign").args(["notary-submit", "--staple", "--api-key-file"]).arg(&api_key).arg(&pkg),
    )?;
    crate::run(tools.command("pkgutil").arg("--check-signature").arg(&pkg))?;
    crate::run(tools.command("xcrun").args(["stapler", "validate"]).arg(&pkg))?;
    crate::run(tools.command("spctl").args(["--assess", "--type", "install", "--verbose=2"]).arg(&pkg))?;

    // What ships, signed and notarized (notarization does not change a byte of a Mach-O file),
    // gets every check of the cross build.
    macho::check(tools, macho::Readers::Xcode, &files)?;
    super::write_checksums(&dist, "SHA256SUMS-macos", &[&files.dylib, &zip, &pkg])?;
    println!("\n{}\n{}\n{}", files.dylib.display(), zip.display(), pkg.display());
    Ok(())
}

/// The App Store Connect API key as rcodesign's JSON (`encode-app-store-connect-api-key`).
fn api_key_json(tools: &Tools, env: &impl Fn(&str) -> Option<String>, secrets: &Secrets) -> Result<PathBuf, String> {
    let key_id = required(env, "APPLE_API_KEY_ID")?;
    let p8 = secrets.file(&format!("AuthKey_{key_id}.p8"), required(env, "APPLE_API_PRIVATE_KEY")?.as_bytes())?;
    let json = secrets.dir.path().join("api-key.json");
    capture(
        tools
            .command("rcodesign")
            .args(["encode-app-store-connect-api-key", "--output-path"])
            .arg(&json)
            .arg(required(env, "APPLE_API_ISSUER")?)
            .arg(&key_id)
            .arg(&p8),
    )?;
    Ok(json)
}

/// On Linux: the signing plumbing of `dist-macos` end to end on the cross-built universal
/// library and agent (copies of them), with a self-signed Developer ID Application certificate
/// passed through the environment variables the release uses, offline (no timestamp); the
/// signed library zipped as the notary service takes it, and both in a signed `.pkg`, both in
/// `target/dist/` with `-selfsigned` in their names.
pub fn signing_selftest(tools: &Tools, built: &Universal) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path();
    let files = Universal { dylib: dir.join(DYLIB), agent: dir.join(AGENT) };
    for kind in MachO::ALL {
        std::fs::copy(built.get(kind), files.get(kind))
            .map_err(|e| format!("cannot copy {}: {e}", built.get(kind).display()))?;
    }
    step(
        "make self-signed Developer ID Application and Installer certificates",
        "rcodesign generate-self-signed-certificate",
    );
    let secrets = Secrets::new()?;
    let identity = self_signed(tools, &secrets, "developer-id-application", "APPLE_CODESIGN")?;
    let installer = self_signed(tools, &secrets, "developer-id-installer", "APPLE_INSTALLER")?;

    step("sign them as dist-macos does, and verify", "rcodesign sign --code-signature-flags runtime; rcodesign verify");
    for kind in MachO::ALL {
        sign(tools, files.get(kind), Some(kind), &identity, Timestamp::None)?;
        verify_signed(tools, files.get(kind), kind, Timestamp::None)?;
        println!(
            "    {}: both slices signed, Developer ID Application, hardened runtime, identifier {}, verified",
            kind.file_name(),
            kind.identifier()
        );
    }
    let dist = dist_dir()?;
    let zip = dist.join(format!("{NAME}-{}-macos-dylib-selfsigned.zip", version()));
    release_zip(&files.dylib, &zip)?;
    // Read by another tool than its writer: 7-Zip's listing shows the three files' modes.
    let listing = capture(Command::new("7z").args(["l", "-slt"]).arg(&zip))?;
    let attributes: Vec<&str> =
        listing.lines().filter_map(|line| line.strip_prefix("Attributes =")).map(str::trim).collect();
    if attributes != ["-rwxr-xr-x", "-rw-r--r--", "-rw-r--r--"] {
        return Err(format!("7z lists {attributes:?} in {}:\n{listing}", zip.display()));
    }

    // The verification must be able to fail: one byte of the first slice's code, changed.
    let mut bytes = std::fs::read(&files.dylib).map_err(|e| e.to_string())?;
    let first_slice = bytes
        .get(16..20)
        .map(|offset| u32::from_be_bytes(offset.try_into().expect("4 bytes")) as usize)
        .ok_or("not a universal Mach-O file")?;
    let code = first_slice + 0x4000;
    *bytes.get_mut(code).ok_or("a slice shorter than 16 KiB")? ^= 0xff;
    let tampered = dir.join("tampered").join(DYLIB);
    super::write(&tampered, bytes)?;
    match verify_signed(tools, &tampered, MachO::Dylib, Timestamp::None) {
        Err(report) if report.contains("digest mismatch") => {
            println!("    and a changed byte fails the verification")
        }
        other => return Err(format!("a tampered library passed the verification: {other:?}")),
    }

    step(
        "build the .pkg of the signed files as dist-macos does, sign it, unpack it",
        "flat package (embala-pkg's xar and BOM); rcodesign sign (Developer ID Installer); 7z x",
    );
    let pkg = dist.join(format!("{NAME}-{}-selfsigned.pkg", version()));
    build_pkg(&files, &pkg)?;
    sign(tools, &pkg, None, &installer, Timestamp::None)?;
    let info = capture(tools.command("rcodesign").arg("print-signature-info").arg(&pkg))?;
    for needed in ["checksum_verifies: true", "apple_certificate_profile: developer-id-installer"] {
        if !info.lines().any(|line| line.trim() == needed) {
            return Err(format!("the signed .pkg lacks `{needed}`:\n{info}"));
        }
    }
    check_pkg(&pkg, &pkg_files(&files)?)?;

    // A missing secret is a clear error naming it, not a failure of rcodesign.
    let none = |_: &str| None;
    match Identity::from_env(&none, "APPLE_API", &secrets) {
        Err(report) if report.contains("APPLE_API_P12_BASE64 is not set") => Ok(()),
        Err(other) => Err(format!("unexpected error for a missing secret: {other}")),
        Ok(_) => Err("an identity was made of no secret".into()),
    }
}

/// A self-signed certificate of rcodesign's `profile`, passed through `{prefix}_P12_BASE64`
/// and `{prefix}_P12_PASSWORD` as the release passes the real ones.
fn self_signed(tools: &Tools, secrets: &Secrets, profile: &str, prefix: &str) -> Result<Identity, String> {
    let p12 = secrets.dir.path().join(format!("{profile}-self-signed.p12"));
    let password = "selftest-password";
    capture(
        tools
            .command("rcodesign")
            // RSA: the xar signature of a .pkg is RSA (rcodesign writes an unreadable one with
            // an ECDSA key), and Apple issues Developer ID certificates with RSA keys.
            .args(["generate-self-signed-certificate", "--algorithm", "rsa", "--profile", profile])
            .args(["--team-id", "SELFTEST00", "--person-name", "cosmian-pkcs11 self-test"])
            .arg("--p12-file")
            .arg(&p12)
            .args(["--p12-password", password]),
    )?;
    let p12_base64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&p12).map_err(|e| e.to_string())?);
    let env_vars: BTreeMap<String, String> =
        [(format!("{prefix}_P12_BASE64"), p12_base64), (format!("{prefix}_P12_PASSWORD"), password.to_owned())].into();
    Identity::from_env(&|name: &str| env_vars.get(name).cloned(), prefix, secrets)
}

/// Apple's OpenSSH client, which every Mac has and which refuses third-party PKCS#11
/// providers (macOS 15.2 and later): it reaches the KMS keys through the agent only.
const APPLE_SSH: &str = "/usr/bin/ssh";
const APPLE_SSH_ADD: &str = "/usr/bin/ssh-add";

/// `/usr/bin/ssh-add FLAG` talking to `agent`.
fn apple_ssh_add(agent: &CosmianAgent, flag: &str) -> Result<Output, String> {
    testbed::clean_command(APPLE_SSH_ADD)
        .arg(flag)
        .env("SSH_AUTH_SOCK", agent.sock())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {APPLE_SSH_ADD}: {e}"))
}

/// On a Mac (`dist-macos`): the signed universal agent, with no KMS configured (a HOME of its
/// own), answers Apple's `ssh-add -l` that it holds no identity: exit status 1 and "The agent
/// has no identities" (2 would be ssh-add not reaching it).
fn apple_ssh_add_reaches(program: &Path) -> Result<(), String> {
    step(
        "Apple's ssh-add through the signed agent",
        &format!("{} -D -a SOCKET; SSH_AUTH_SOCK=SOCKET {APPLE_SSH_ADD} -l", program.display()),
    );
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let agent = CosmianAgent::start(program, [("HOME", home.path())], &[]);
    let out = apple_ssh_add(&agent, "-l")?;
    let said = testbed::output_text(&out);
    if out.status.code() != Some(1) || !said.contains("The agent has no identities") {
        return Err(format!("{APPLE_SSH_ADD} -l through {}: {said}\nagent:\n{}", program.display(), agent.log()));
    }
    println!("    {APPLE_SSH_ADD} -l: The agent has no identities (none configured)");
    Ok(())
}

/// On a Mac (`cargo xtask test-macos`), what the agent is for: Apple's `/usr/bin/ssh-add -L`
/// lists, through the agent built here, exactly what `ssh-keygen -D` of the provider prints
/// (Homebrew's OpenSSH, which loads every key type) for an EC P-256, an Ed25519 and an RSA key
/// of a KMS started here; then Apple's `/usr/bin/ssh`, given only `-o IdentityAgent=SOCKET`,
/// logs in with each of them to a throw-away sshd (Homebrew's) that accepts that key alone.
pub fn apple_ssh_through_the_agent() -> Result<(), String> {
    step(
        "Apple's ssh-add and ssh through cosmian-ssh-agent",
        &format!("{APPLE_SSH_ADD} -L; {APPLE_SSH} -o IdentityAgent=SOCKET"),
    );
    let version = Command::new(APPLE_SSH).arg("-V").output().map_err(|e| format!("cannot run {APPLE_SSH}: {e}"))?;
    println!("    {APPLE_SSH}: {}", String::from_utf8_lossy(&version.stderr).trim());
    let kms = testbed::KmsServer::start();
    let ckms = testbed::Ckms::new(&kms);
    for (name, kind) in testbed::KEY_TYPES.iter().filter(|(name, _)| ["p256", "ed25519", "rsa2048"].contains(name)) {
        ckms.create_key_pair(*kind, &["ssh-auth", *name]);
    }
    let config = testbed::write_provider_config(kms.dir(), &kms.url(), "");
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let env = [
        ("COSMIAN_KMS_CLI_CONF", config.as_path()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.path()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", Path::new("ssh-auth")),
    ];
    let agent = CosmianAgent::start(&crate::target_dir().join("debug").join(AGENT), env, &[]);
    let lines = |out: Output, what: &str| -> Result<Vec<String>, String> {
        if !out.status.success() {
            return Err(format!("{what}: {}\nagent:\n{}", testbed::output_text(&out), agent.log()));
        }
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    };
    let reference = testbed::OpenSsh::current()
        .ssh_keygen_d(&testbed::provider_lib())
        .envs(env)
        .output()
        .map_err(|e| e.to_string())?;
    let expected = lines(reference, "ssh-keygen -D")?;
    let listed = lines(apple_ssh_add(&agent, "-L")?, "/usr/bin/ssh-add -L")?;
    if listed != expected || expected.len() != 3 {
        return Err(format!("{APPLE_SSH_ADD} -L lists {listed:#?}, ssh-keygen -D prints {expected:#?}"));
    }
    println!("    {APPLE_SSH_ADD} -L: the 3 keys ssh-keygen -D prints");

    let sshd = testbed::Sshd::start_on(testbed::OpenSsh::current(), "", "");
    for (logins, line) in expected.iter().enumerate() {
        sshd.set_authorized_keys(line);
        let key_type = line.split_whitespace().next().unwrap_or_default();
        let marker = format!("logged-in-{logins}");
        let out = testbed::clean_command(APPLE_SSH)
            .args(["-F", "/dev/null", "-o", &format!("IdentityAgent={}", agent.sock().display())])
            .args(["-o", "IdentityFile=/nonexistent", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .args(["-p", &sshd.port().to_string(), &format!("{}@127.0.0.1", sshd.user()), "echo", &marker])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {APPLE_SSH}: {e}"))?;
        let accepted = sshd.log().matches("Accepted publickey for ").count();
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != marker || accepted != logins + 1 {
            return Err(format!(
                "{APPLE_SSH} through the agent with {key_type}: {}\nsshd:\n{}\nagent:\n{}",
                testbed::output_text(&out),
                sshd.log(),
                agent.log()
            ));
        }
        println!("    {APPLE_SSH} -o IdentityAgent=... logs in with {key_type}");
    }
    Ok(())
}

/// The files beside the library in its release zip, from the repository's root: the licence
/// and the third-party licences (`cargo xtask licenses`).
pub const LICENSE_FILES: [&str; 2] = ["LICENSE", "THIRDPARTY.yml"];

/// The release's `cosmian-pkcs11-VERSION-macos-dylib.zip`, also what the notary service takes
/// (`rcodesign notary-submit`): the signed library (0755) and [`LICENSE_FILES`] (0644) at its
/// top, dated 1980-01-01 (zip's first date: the same files give the same bytes). Written by
/// Python's `zipfile` (macOS and Debian both have Python 3), read back: exactly those three
/// entries, with their modes and bytes.
pub fn release_zip(dylib: &Path, zip: &Path) -> Result<(), String> {
    step("zip the library with its licences", &format!("python3 zipfile: {DYLIB}, {}", LICENSE_FILES.join(", ")));
    let _ = std::fs::remove_file(zip);
    let root = workspace_root();
    let entries: Vec<(PathBuf, u32)> =
        std::iter::once((dylib.to_owned(), 0o755)).chain(LICENSE_FILES.iter().map(|f| (root.join(f), 0o644))).collect();
    const WRITE: &str = "import sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
        \x20   for path, mode in zip(sys.argv[2::2], sys.argv[3::2]):\n\
        \x20       info = zipfile.ZipInfo(path.rsplit('/', 1)[-1], (1980, 1, 1, 0, 0, 0))\n\
        \x20       info.create_system, info.external_attr = 3, (0o100000 | int(mode, 8)) << 16\n\
        \x20       z.writestr(info, open(path, 'rb').read(), zipfile.ZIP_DEFLATED)\n";
    let mut write = Command::new("python3");
    write.args(["-c", WRITE]).arg(zip);
    for (path, mode) in &entries {
        write.arg(path).arg(format!("{mode:o}"));
    }
    capture(&mut write)?;
    const READ: &str = "import hashlib, sys, zipfile\n\
        for i in zipfile.ZipFile(sys.argv[1]).infolist():\n\
        \x20   data = zipfile.ZipFile(sys.argv[1]).read(i)\n\
        \x20   print(i.filename, oct(i.external_attr >> 16), hashlib.sha256(data).hexdigest())\n";
    let listed = capture(Command::new("python3").args(["-c", READ]).arg(zip))?;
    let expected = entries
        .iter()
        .map(|(path, mode)| {
            let name = path.file_name().expect("a file").to_string_lossy();
            Ok(format!("{name} 0o{:o} {}\n", 0o100000 | mode, super::sha256_file(path)?))
        })
        .collect::<Result<String, String>>()?;
    if listed != expected {
        return Err(format!("{} holds:\n{listed}not:\n{expected}", zip.display()));
    }
    println!("    {}: {DYLIB} (0755), {} (0644)", zip.display(), LICENSE_FILES.join(", "));
    Ok(())
}
