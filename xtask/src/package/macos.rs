//! macOS: `cargo xtask dist-macos`, on a Mac, builds the library and the agent
//! (`cosmian-ssh-agent`) for aarch64 and x86_64, joins each into a universal file, checks them,
//! signs them (Developer ID Application, hardened runtime, Apple's secure timestamp), runs the
//! signed agent for Apple's `/usr/bin/ssh-add`, notarizes the library, then builds the `.pkg`
//! that installs both and the agent's LaunchAgent ([`super::macos_pkg`]), signs it (Developer
//! ID Installer), notarizes it and staples the ticket.
//!
//! Signing and notarization go through rcodesign (crates.io `apple-codesign`) with the
//! certificates and the App Store Connect API key taken from the environment only
//! ([`SECRETS`]), written to a private temporary folder for the time of the task. The same
//! functions run on Linux in [`signing_selftest`], on the files cross-built from Linux
//! ([`super::macos_cross`]): signed with a self-signed Developer ID certificate passed the same
//! way, then verified, and a changed byte must fail the verification; the `.pkg` built of them
//! is unpacked with other tools. What only a Mac and Apple's services can do
//! (the notary service, stapling, Gatekeeper, running the library and the agent, Apple's ssh
//! through the agent: [`apple_ssh_through_the_agent`], launchd) runs in the release workflow,
//! `.github/workflows/release-macos.yml`, which [`check_workflows`] checks here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use cosmian_pkcs11_testbed::{self as testbed, CosmianAgent};
use tempfile::TempDir;

use super::elf::AGENT;
use super::macos_pkg::{build_pkg, check_pkg, pkg_files, LAUNCH_AGENT, LAUNCH_AGENTS_DIR, LAUNCH_AGENT_LABEL};
use super::{capture, dist_dir, version, workspace_root, Tools, NAME};
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
/// for the code signature's load command.
const LINK_ARGS: &str = "-C link-arg=-Wl,-dead_strip_dylibs -C link-arg=-Wl,-headerpad_max_install_names";

/// `cargo build --release` of the library and the agent for an Apple `target`, for
/// [`MIN_MACOS`], with the build machine's paths remapped ([`super::BuildPaths`]); the results
/// are [`slice()`]s. The cross build adds its compilers to the command.
pub fn release_build(tools: &Tools, target: &str) -> Result<Command, String> {
    let paths = super::BuildPaths::get()?;
    let env_target = target.replace('-', "_");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tools.command(cargo);
    command
        .args(["build", "--release", "--locked", "--target", target, "-p", "cosmian-pkcs11", "--lib", "--bin", AGENT])
        .env("MACOSX_DEPLOYMENT_TARGET", MIN_MACOS)
        .env(
            format!("CARGO_TARGET_{}_RUSTFLAGS", env_target.to_uppercase()),
            format!("{} {LINK_ARGS}", paths.rustflags()),
        )
        .env(format!("CFLAGS_{env_target}"), paths.cflags());
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

/// Where [`release_build`] leaves `kind` for `target`.
pub fn slice(target: &str, kind: MachO) -> PathBuf {
    crate::target_dir().join(target).join("release").join(kind.file_name())
}
pub const DYLIB: &str = "libcosmian_pkcs11.dylib";
/// The library's code signature identifier, and the `.pkg`'s.
pub const IDENTIFIER: &str = "com.cosmian.pkcs11";
/// Symbols every image defines (the linker's), not part of the library's interface.
const LINKER_SYMBOLS: [&str; 2] = ["__mh_dylib_header", "___dso_handle"];
/// What the library exports, with Mach-O's leading underscore, sorted.
pub const EXPORTS: [&str; 3] = ["_C_GetFunctionList", "_C_GetInterface", "_C_GetInterfaceList"];
/// What the library and the agent may load: libSystem and the frameworks whose stubs are in
/// `packaging/macos/sdk` (the cross build links against those).
pub const LIBSYSTEM: &str = "/usr/lib/libSystem.B.dylib";
pub const FRAMEWORKS: [&str; 2] = ["CoreFoundation", "Security"];

/// [`LIBSYSTEM`] and the [`FRAMEWORKS`]' install names.
pub fn allowed_libraries() -> BTreeSet<String> {
    FRAMEWORKS
        .iter()
        .map(|f| format!("/System/Library/Frameworks/{f}.framework/Versions/A/{f}"))
        .chain([LIBSYSTEM.to_owned()])
        .collect()
}

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

/// The exports of every architecture of a Mach-O, from `nm -gU -arch all`, linker symbols
/// left out: `Err` unless each is exactly [`EXPORTS`].
pub fn check_exports(nm_output: &str) -> Result<(), String> {
    let mut by_arch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut arch = String::from("(single)");
    for line in nm_output.lines() {
        if let Some(rest) = line.split_once("(for architecture ").map(|(_, r)| r) {
            arch = rest.trim_end_matches("):").to_owned();
        } else if let Some(name) = line.split_whitespace().nth(2) {
            if !LINKER_SYMBOLS.contains(&name) {
                by_arch.entry(arch.clone()).or_default().push(name.to_owned());
            }
        }
    }
    if by_arch.is_empty() {
        return Err(format!("no exported symbol in:\n{nm_output}"));
    }
    for (arch, mut symbols) in by_arch {
        symbols.sort();
        if symbols != EXPORTS {
            return Err(format!("{arch} exports {symbols:?}, not exactly {EXPORTS:?}"));
        }
    }
    Ok(())
}

/// `lipo -archs` (or `llvm-lipo -archs`) of a universal file: `Err` unless it holds exactly
/// the [`TARGETS`]' architectures.
pub fn check_archs(path: &Path, lipo_archs: &str) -> Result<(), String> {
    let mut found: Vec<&str> = lipo_archs.split_whitespace().collect();
    found.sort();
    let mut expected: Vec<&str> = TARGETS.iter().map(|(_, arch)| *arch).collect();
    expected.sort();
    if found != expected {
        return Err(format!("{} holds {found:?}, not {expected:?}", path.display()));
    }
    Ok(())
}

/// `otool -L -arch all` of the agent: every architecture loads only [`allowed_libraries`].
fn check_linked_libraries(otool: &str) -> Result<(), String> {
    let allowed = allowed_libraries();
    let loaded: BTreeSet<&str> = otool
        .lines()
        .filter(|line| line.starts_with(char::is_whitespace))
        .filter_map(|line| line.split(" (compatibility version").next())
        .map(str::trim)
        .collect();
    match loaded.iter().find(|library| !allowed.contains(**library)) {
        _ if loaded.is_empty() => Err(format!("otool -L lists no library:\n{otool}")),
        Some(other) => Err(format!("the agent loads {other}, not only {allowed:?}")),
        None => Ok(()),
    }
}

/// `cargo xtask dist-macos`.
pub fn dist_macos() -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err("dist-macos runs on macOS (cargo's Apple targets, Gatekeeper, launchd); \
                    the release workflow .github/workflows/release-macos.yml runs it"
            .into());
    }
    let tools = Tools::get()?;
    let env = |name: &str| std::env::var(name).ok();
    let secrets = Secrets::new()?;
    let application = Identity::from_env(&env, "APPLE_CODESIGN", &secrets)?;
    let installer = Identity::from_env(&env, "APPLE_INSTALLER", &secrets)?;
    let api_key = api_key_json(tools, &env, &secrets)?;
    let dist = dist_dir()?;

    for (target, _) in TARGETS {
        step(&format!("build for {target}"), &format!("cargo build --release --target {target} --lib --bin {AGENT}"));
        crate::run(&mut release_build(tools, target)?)?;
    }
    let files = Universal::in_dist()?;
    for kind in MachO::ALL {
        let path = files.get(kind);
        let _ = std::fs::remove_file(path);
        step("join them", &format!("lipo -create -output {}", path.display()));
        let slices: Vec<PathBuf> = TARGETS.iter().map(|(target, _)| slice(target, kind)).collect();
        crate::run(tools.command("lipo").arg("-create").arg("-output").arg(path).args(&slices))?;
        check_archs(path, &capture(tools.command("lipo").arg("-archs").arg(path))?)?;
    }
    step("check the library's exports and the agent's libraries", "nm -gU -arch all; otool -L -arch all");
    check_exports(&capture(tools.command("nm").args(["-gU", "-arch", "all"]).arg(&files.dylib))?)?;
    check_linked_libraries(&capture(tools.command("otool").args(["-L", "-arch", "all"]).arg(&files.agent))?)?;

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

    step("notarize the library", "ditto -c -k; rcodesign notary-submit --wait (a bare dylib cannot be stapled)");
    let zip = dist.join(format!("{NAME}-{}-macos-dylib.zip", version()));
    let _ = std::fs::remove_file(&zip);
    crate::run(tools.command("ditto").args(["-c", "-k", "--keepParent"]).arg(&files.dylib).arg(&zip))?;
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
    notarization_zip(tools, &files.dylib, &zip)?;

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

/// The release workflows are valid YAML (PyYAML) and run the xtask; the macOS one on a macOS
/// runner, on tags, with every secret `dist-macos` reads, Homebrew's commands on the formula
/// ([`brew_commands`]) and the `.pkg` installed and its LaunchAgent run by launchd
/// ([`pkg_commands`]); the Linux one publishes the formula of the tap.
pub fn check_workflows(tools: &Tools) -> Result<(), String> {
    let dir = workspace_root().join(".github/workflows");
    step("check the release workflows", &format!("python3 -c 'yaml.safe_load' {}/*.yml", dir.display()));
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    names.sort();
    for path in &names {
        let workflow = load_yaml(tools, path)?;
        let xtask: Vec<String> = workflow_runs(&workflow)
            .iter()
            .flat_map(|run| run.lines())
            .map(str::trim)
            .filter(|line| line.starts_with("cargo xtask "))
            .map(str::to_owned)
            .collect();
        if xtask.is_empty() {
            return Err(format!("{} runs no `cargo xtask` command", path.display()));
        }
        println!("    {}: valid YAML, runs {}", path.display(), xtask.join("; "));
    }
    let macos = load_yaml(tools, &dir.join("release-macos.yml"))?;
    check_macos_workflow(&macos)?;
    check_job_runs(&macos, "Homebrew", &brew_commands())?;
    check_job_runs(&macos, "the .pkg and launchd", &pkg_commands())?;
    let linux = load_yaml(tools, &dir.join("release-linux.yml"))?;
    for arch in super::elf::Arch::ALL {
        for file in [arch.dist_file(), arch.dist_agent()] {
            check_publishes(&linux, "release-linux.yml", &format!("target/dist/{file}"))?;
        }
    }
    let sums = super::repository::SUMS;
    for file in [sums.to_owned(), format!("{sums}.asc")] {
        check_publishes(&linux, "release-linux.yml", &format!("target/dist/{file}"))?;
    }
    check_publishes(&linux, "release-linux.yml", &formula_artifact())
}

fn load_yaml(tools: &Tools, path: &Path) -> Result<serde_json::Value, String> {
    let json = capture(
        tools
            .python()
            .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
            .arg(path),
    )
    .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    serde_json::from_str(&json).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every `run:` of every step of every job.
fn workflow_runs(workflow: &serde_json::Value) -> Vec<String> {
    let mut runs = Vec::new();
    for job in workflow["jobs"].as_object().into_iter().flat_map(|jobs| jobs.values()) {
        for step in job["steps"].as_array().into_iter().flatten() {
            runs.extend(step["run"].as_str().map(str::to_owned));
        }
    }
    runs
}

/// The macOS release: triggered by tags, a job on a macOS runner whose step runs
/// `cargo xtask dist-macos` with every secret of [`SECRETS`] in its environment.
fn check_macos_workflow(workflow: &serde_json::Value) -> Result<(), String> {
    // PyYAML reads the key `on` as the boolean true.
    let on = workflow.get("on").or_else(|| workflow.get("true")).unwrap_or(&serde_json::Value::Null);
    if on["push"]["tags"].as_array().is_none_or(Vec::is_empty) {
        return Err("release-macos.yml is not triggered by pushed tags".into());
    }
    let jobs = workflow["jobs"].as_object().ok_or("release-macos.yml has no jobs")?;
    // (job name, job, its step that runs `command`) on a macOS runner.
    let macos_step = |command: &str| {
        jobs.iter()
            .filter(|(_, job)| job["runs-on"].as_str().unwrap_or_default().starts_with("macos"))
            .find_map(|(name, job)| {
                let steps = job["steps"].as_array()?;
                let step = steps.iter().find(|step| step["run"].as_str().unwrap_or_default().contains(command))?;
                Some((name, job, step))
            })
            .ok_or_else(|| format!("release-macos.yml has no macOS job that runs `{command}`"))
    };
    let (test_job, _, _) = macos_step("cargo xtask test-macos")?;
    let (_, dist_job, dist_step) = macos_step("cargo xtask dist-macos")?;
    let needs = &dist_job["needs"];
    if needs.as_str() != Some(test_job.as_str())
        && !needs.as_array().is_some_and(|all| all.iter().any(|n| n.as_str() == Some(test_job.as_str())))
    {
        return Err(format!("release-macos.yml: the dist-macos job does not need `{test_job}`"));
    }
    let missing: Vec<&str> = SECRETS
        .iter()
        .copied()
        .filter(|name| !dist_step["env"][name].as_str().unwrap_or_default().contains(&format!("secrets.{name}")))
        .collect();
    if !missing.is_empty() {
        return Err(format!("release-macos.yml: the dist-macos step lacks {missing:?} in its env"));
    }
    println!(
        "    release-macos.yml: on tags, on macOS, `cargo xtask test-macos`, then `cargo xtask dist-macos` with its {} secrets",
        SECRETS.len()
    );
    Ok(())
}

/// Words making one line of a `run:`.
fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Homebrew's commands the macOS release workflow runs on the formula, in this order, each a
/// line of a `run:` holding all its words: the tap rendered and tapped, `brew style` and
/// `brew audit --strict`, the build from the tarball made in the job (put in Homebrew's
/// download cache: the release's URL may not answer yet), `brew test`, the formula's service
/// started by `brew services` (launchd) and reached by Apple's `ssh-add`, then stopped,
/// `brew uninstall`, and `brew audit --strict --online` once the release has the tarball.
fn brew_commands() -> Vec<Vec<String>> {
    use super::homebrew::TAP;
    let formula = format!("{TAP}/{NAME}");
    vec![
        words(&["cargo xtask dist-homebrew"]),
        words(&["brew tap", TAP]),
        words(&["brew style", TAP]),
        words(&["brew audit", "--strict", &formula]),
        words(&["brew --cache", "--build-from-source", &formula]),
        words(&["brew install", "--build-from-source", &formula]),
        words(&["brew test", &formula]),
        words(&["brew services start", &formula]),
        words(&[APPLE_SSH_ADD, "-l"]),
        words(&["brew services stop", &formula]),
        words(&["brew uninstall", &formula]),
        words(&["brew audit", "--strict", "--online", &formula]),
    ]
}

/// What the macOS release workflow does with the `.pkg` `dist-macos` made, in the same job, in
/// this order: installs it with macOS's `installer`, checks that the folders it names kept
/// their owner and mode (`stat` before and after, compared), opts in to the LaunchAgent the way users do (`launchctl enable`, then
/// `bootstrap` into the user's GUI domain), reaches the agent launchd started with Apple's
/// `ssh-add`, stops it, and uninstalls as the documentation says.
fn pkg_commands() -> Vec<Vec<String>> {
    let plist = format!("/{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}");
    vec![
        words(&["cargo xtask dist-macos"]),
        words(&["stat -f", "before"]),
        words(&["sudo installer -pkg", "-target /"]),
        words(&["pkgutil --files", IDENTIFIER]),
        words(&["stat -f", "after"]),
        words(&["grep -Fxvf", "after", "before", "exit 1"]),
        words(&["launchctl enable", "gui/", LAUNCH_AGENT_LABEL]),
        words(&["launchctl bootstrap", "gui/", &plist]),
        words(&[APPLE_SSH_ADD, "-l"]),
        words(&["launchctl bootout", "gui/", LAUNCH_AGENT_LABEL]),
        words(&["sudo pkgutil --forget", IDENTIFIER]),
    ]
}

/// A job on a macOS runner of the macOS workflow runs every command of `commands`, in order;
/// the `Err` names the first one missing from the job that has the most.
fn check_job_runs(workflow: &serde_json::Value, what: &str, commands: &[Vec<String>]) -> Result<(), String> {
    let mut best: Option<(usize, &str)> = None;
    for (name, job) in workflow["jobs"].as_object().into_iter().flatten() {
        if !job["runs-on"].as_str().unwrap_or_default().starts_with("macos") {
            continue;
        }
        let lines: Vec<&str> = job["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|step| step["run"].as_str())
            .flat_map(str::lines)
            .collect();
        let mut next = 0;
        let found = commands
            .iter()
            .take_while(|words| match lines[next..].iter().position(|l| words.iter().all(|w| l.contains(w.as_str()))) {
                Some(at) => {
                    next += at + 1;
                    true
                }
                None => false,
            })
            .count();
        if found == commands.len() {
            println!(
                "    release-macos.yml: {what}: the {name} job runs, in order: {}",
                commands.iter().map(|w| w.join(" ")).collect::<Vec<_>>().join("; ")
            );
            return Ok(());
        }
        if best.is_none_or(|(most, _)| found > most) {
            best = Some((found, name));
        }
    }
    Err(match best {
        None => format!("release-macos.yml has no job on a macOS runner for {what}"),
        Some((found, job)) => format!(
            "release-macos.yml: {what}: the {job} job does not run `{}` (a line with all these words) after `{}`",
            commands[found].join(" "),
            if found == 0 { "its start".into() } else { commands[found - 1].join(" ") }
        ),
    })
}

/// `target/dist/homebrew-tap/Formula/cosmian-pkcs11.rb`, as a workflow names it.
fn formula_artifact() -> String {
    format!("target/dist/{}/{}", super::homebrew::TAP_DIR, super::homebrew::FORMULA)
}

/// A step of `workflow` attaches `artifact` to the release (a line of its `with: files:`).
fn check_publishes(workflow: &serde_json::Value, name: &str, artifact: &str) -> Result<(), String> {
    let published = workflow["jobs"]
        .as_object()
        .into_iter()
        .flat_map(|jobs| jobs.values())
        .flat_map(|job| job["steps"].as_array().into_iter().flatten())
        .filter_map(|step| step["with"]["files"].as_str())
        .flat_map(str::lines)
        .any(|line| line.trim() == artifact);
    if !published {
        return Err(format!("{name} does not publish {artifact}"));
    }
    println!("    {name}: publishes {artifact}");
    Ok(())
}

/// The zip the notary service takes (`rcodesign notary-submit`): the dylib alone, at the top.
pub fn notarization_zip(tools: &Tools, dylib: &Path, zip: &Path) -> Result<(), String> {
    step("zip it for the notary service", "python3 -m zipfile -c");
    let _ = std::fs::remove_file(zip);
    capture(tools.python().args(["-m", "zipfile", "-c"]).arg(zip).arg(dylib))?;
    let listing = capture(tools.python().args(["-m", "zipfile", "-l"]).arg(zip))?;
    let name = MachO::Dylib.file_name();
    if !listing.lines().nth(1).is_some_and(|line| line.starts_with(name)) {
        return Err(format!("{} holds {listing:?}, not {name}", zip.display()));
    }
    println!("    {}", zip.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_of_every_architecture() {
        // llvm-nm -gU --arch=all of a universal library.
        let nm = "\nlib.dylib (for architecture arm64):\n\
                  0000000000000410 T _C_GetFunctionList\n\
                  0000000000000428 T _C_GetInterface\n\
                  0000000000000420 T _C_GetInterfaceList\n\
                  0000000000008000 D ___dso_handle\n\
                  0000000000008000 D __mh_dylib_header\n\
                  \nlib.dylib (for architecture x86_64):\n\
                  0000000000000450 T _C_GetFunctionList\n\
                  0000000000000480 T _C_GetInterface\n\
                  0000000000000470 T _C_GetInterfaceList\n";
        check_exports(nm).unwrap();
        let extra = format!("{nm}0000000000000490 T _rust_panic\n");
        assert!(check_exports(&extra).unwrap_err().contains("x86_64"));
        assert!(check_exports("").is_err());
    }

    #[test]
    fn the_agent_loads_only_libsystem_and_the_frameworks() {
        // otool -L -arch all of the universal agent (Xcode's otool names each architecture).
        let otool = "cosmian-ssh-agent (architecture x86_64):\n\
            \t/System/Library/Frameworks/Security.framework/Versions/A/Security (compatibility version 1.0.0, current version 61123.1.1)\n\
            \t/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation (compatibility version 150.0.0, current version 2202.0.0)\n\
            \t/usr/lib/libSystem.B.dylib (compatibility version 1.0.0, current version 1351.0.0)\n\
            cosmian-ssh-agent (architecture arm64):\n\
            \t/usr/lib/libSystem.B.dylib (compatibility version 1.0.0, current version 1351.0.0)\n";
        check_linked_libraries(otool).unwrap();
        let iconv =
            format!("{otool}\t/usr/lib/libiconv.2.dylib (compatibility version 7.0.0, current version 7.0.0)\n");
        assert!(check_linked_libraries(&iconv).unwrap_err().contains("libiconv"));
        assert!(check_linked_libraries("cosmian-ssh-agent:\n").is_err());
    }

    #[test]
    fn both_architectures() {
        let path = Path::new("cosmian-ssh-agent");
        check_archs(path, "x86_64 arm64\n").unwrap();
        assert!(check_archs(path, "arm64\n").unwrap_err().contains("x86_64"));
        assert!(check_archs(path, "x86_64 arm64 arm64e\n").is_err());
    }

    #[test]
    fn the_macos_workflow_check_needs_tags_macos_and_every_secret() {
        let env: serde_json::Map<String, serde_json::Value> =
            SECRETS.iter().map(|name| (name.to_string(), format!("${{{{ secrets.{name} }}}}").into())).collect();
        let mut workflow = serde_json::json!({
            "true": {"push": {"tags": ["v*"]}},
            "jobs": {
                "test": {"runs-on": "macos-14", "steps": [{"run": "cargo xtask test-macos"}]},
                "release": {"needs": "test", "runs-on": "macos-14", "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"run": "cargo xtask dist-macos", "env": env},
                ]},
            },
        });
        check_macos_workflow(&workflow).unwrap();
        workflow["jobs"]["release"]["needs"] = serde_json::json!(["other"]);
        assert!(check_macos_workflow(&workflow).unwrap_err().contains("does not need"));
        workflow["jobs"]["release"]["needs"] = serde_json::json!(["test"]);
        check_macos_workflow(&workflow).unwrap();
        workflow["jobs"]["test"]["runs-on"] = "ubuntu-latest".into();
        assert!(check_macos_workflow(&workflow).unwrap_err().contains("test-macos"));
        workflow["jobs"]["test"]["runs-on"] = "macos-14".into();
        workflow["jobs"]["release"]["steps"][1]["env"].as_object_mut().unwrap().remove("APPLE_API_KEY_ID");
        assert!(check_macos_workflow(&workflow).unwrap_err().contains("APPLE_API_KEY_ID"));
        workflow["jobs"]["release"]["runs-on"] = "ubuntu-latest".into();
        assert!(check_macos_workflow(&workflow).is_err());
        assert!(check_macos_workflow(&serde_json::json!({"on": {"push": {"branches": ["main"]}}})).is_err());
    }

    /// A job that runs `lines`, one step each, on `runner`.
    fn job(runner: &str, lines: &[&str]) -> serde_json::Value {
        let steps: Vec<_> = lines.iter().map(|line| serde_json::json!({"run": line})).collect();
        serde_json::json!({"runs-on": runner, "steps": steps})
    }

    fn check_homebrew_job(workflow: &serde_json::Value) -> Result<(), String> {
        check_job_runs(workflow, "Homebrew", &brew_commands())
    }

    #[test]
    fn the_homebrew_job_check_needs_every_brew_command_in_order() {
        let lines = [
            "cargo xtask dist-homebrew",
            "git init -q -b main\nbrew tap cosmian/tap \"$PWD\"",
            "brew style cosmian/tap\nbrew audit --strict cosmian/tap/cosmian-pkcs11",
            "cache=\"$(brew --cache --build-from-source cosmian/tap/cosmian-pkcs11)\"",
            "brew install --build-from-source --include-test cosmian/tap/cosmian-pkcs11",
            "brew test --verbose cosmian/tap/cosmian-pkcs11",
            "brew services start cosmian/tap/cosmian-pkcs11\nSSH_AUTH_SOCK=\"$sock\" /usr/bin/ssh-add -l",
            "brew services stop cosmian/tap/cosmian-pkcs11",
            "brew uninstall cosmian/tap/cosmian-pkcs11",
            "brew audit --strict --online cosmian/tap/cosmian-pkcs11",
        ];
        let workflow = |jobs: serde_json::Value| serde_json::json!({"jobs": jobs});
        check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &lines)}))).unwrap();

        // Without brew test, the check fails and says so.
        let without_test: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("brew test")).collect();
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &without_test)}))).unwrap_err();
        assert!(err.contains("`brew test cosmian/tap/cosmian-pkcs11`"), "{err}");
        // The test before the install does not count.
        let mut swapped = lines.to_vec();
        swapped.swap(4, 5);
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &swapped)}))).unwrap_err();
        assert!(err.contains("brew test"), "{err}");
        // An install from the release's URL (no tarball of the job in the cache) does not count.
        let uncached: Vec<&str> = lines.iter().copied().filter(|l| !l.contains("--cache")).collect();
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &uncached)}))).unwrap_err();
        assert!(err.contains("brew --cache"), "{err}");
        // An audit without --strict does not count.
        let lax: Vec<String> = lines.iter().map(|l| l.replace("audit --strict cosmian", "audit cosmian")).collect();
        let lax: Vec<&str> = lax.iter().map(String::as_str).collect();
        let err = check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &lax)}))).unwrap_err();
        assert!(err.contains("brew audit --strict cosmian/tap/cosmian-pkcs11"), "{err}");
        // The service reached with Homebrew's ssh-add, not Apple's, does not count.
        let brew_ssh_add: Vec<String> = lines.iter().map(|l| l.replace("/usr/bin/ssh-add", "ssh-add")).collect();
        let brew_ssh_add: Vec<&str> = brew_ssh_add.iter().map(String::as_str).collect();
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("macos-14", &brew_ssh_add)}))).unwrap_err();
        assert!(err.contains("`/usr/bin/ssh-add -l`"), "{err}");
        // Nor do the commands on a Linux runner, nor split between two jobs.
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("ubuntu-24.04", &lines)}))).unwrap_err();
        assert!(err.contains("no job on a macOS runner"), "{err}");
        let split = serde_json::json!({"a": job("macos-14", &lines[..5]), "b": job("macos-14", &lines[5..])});
        assert!(check_homebrew_job(&workflow(split)).is_err());
    }

    #[test]
    fn the_pkg_is_installed_and_its_launch_agent_run_after_dist_macos() {
        let lines = [
            "cargo xtask dist-macos",
            "stat -f '%N %Su:%Sg %Lp' /usr/local /usr/local/bin > before",
            "sudo installer -pkg \"$pkg\" -target /\npkgutil --files com.cosmian.pkcs11",
            "stat -f '%N %Su:%Sg %Lp' /usr/local /usr/local/bin > after",
            "grep -Fxvf after before && { echo changed >&2; exit 1; }",
            "launchctl enable \"gui/$(id -u)/com.cosmian.ssh-agent\"",
            "launchctl bootstrap \"gui/$(id -u)\" /Library/LaunchAgents/com.cosmian.ssh-agent.plist",
            "SSH_AUTH_SOCK=\"$sock\" /usr/bin/ssh-add -l",
            "launchctl bootout \"gui/$(id -u)/com.cosmian.ssh-agent\"\nsudo pkgutil --forget com.cosmian.pkcs11",
        ];
        let check =
            |jobs: serde_json::Value| check_job_runs(&serde_json::json!({"jobs": jobs}), "pkg", &pkg_commands());
        check(serde_json::json!({"dist": job("macos-14", &lines)})).unwrap();
        // Installed in another job than the one that built it: not the .pkg built.
        let err = check(serde_json::json!({"dist": job("macos-14", &lines[..1]), "pkg": job("macos-14", &lines[1..])}))
            .unwrap_err();
        assert!(err.contains("`stat -f before`"), "{err}");
        // Installed without comparing the folders before and after.
        let unchecked: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("grep")).collect();
        let err = check(serde_json::json!({"dist": job("macos-14", &unchecked)})).unwrap_err();
        assert!(err.contains("grep -Fxvf"), "{err}");
        // Loaded without the opt-in users make, or into a system domain.
        let without_enable: Vec<&str> = lines.iter().copied().filter(|l| !l.contains("enable")).collect();
        let err = check(serde_json::json!({"dist": job("macos-14", &without_enable)})).unwrap_err();
        assert!(err.contains("launchctl enable"), "{err}");
        let system: Vec<String> = lines.iter().map(|l| l.replace("\"gui/$(id -u)\"", "system")).collect();
        let system: Vec<&str> = system.iter().map(String::as_str).collect();
        let err = check(serde_json::json!({"dist": job("macos-14", &system)})).unwrap_err();
        assert!(err.contains("launchctl bootstrap gui/"), "{err}");
    }

    #[test]
    fn the_linux_workflow_must_publish_the_formula() {
        let formula = formula_artifact();
        assert_eq!(formula, "target/dist/homebrew-tap/Formula/cosmian-pkcs11.rb");
        let publish = |files: &str| {
            serde_json::json!({"jobs": {"dist": {"steps": [
                {"run": "cargo xtask dist"},
                {"uses": "softprops/action-gh-release@v2", "with": {"files": files}},
            ]}}})
        };
        let files = format!("target/dist/libcosmian_pkcs11.so\n{formula}\ntarget/dist/SHA256SUMS-linux\n");
        check_publishes(&publish(&files), "release-linux.yml", &formula).unwrap();
        let old = "target/dist/homebrew/Formula/cosmian-pkcs11.rb\n";
        let err = check_publishes(&publish(old), "release-linux.yml", &formula).unwrap_err();
        assert!(err.contains("does not publish target/dist/homebrew-tap/Formula/cosmian-pkcs11.rb"), "{err}");
    }
}
