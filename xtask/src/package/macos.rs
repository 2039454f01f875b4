//! macOS: `cargo xtask dist-macos`, on a Mac, builds the library for aarch64 and x86_64, joins
//! them into a universal `.dylib`, checks its exports, signs it (Developer ID Application,
//! hardened runtime, Apple's secure timestamp) and notarizes it, then builds a `.pkg` that
//! installs it into `/usr/local/lib` (the real file there is what ssh-agent accepts), signs it
//! (Developer ID Installer), notarizes it and staples the ticket.
//!
//! Signing and notarization go through rcodesign (crates.io `apple-codesign`) with the
//! certificates and the App Store Connect API key taken from the environment only
//! ([`SECRETS`]), written to a private temporary folder for the time of the task. The same
//! functions run on Linux in [`signing_selftest`], on the library cross-built from Linux
//! ([`super::macos_cross`]): signed with a self-signed Developer ID certificate passed the same
//! way, then verified, and a changed byte must fail the verification. What only a Mac and
//! Apple's services can do (`pkgbuild`, the notary service, stapling, Gatekeeper, running the
//! library) runs in the release workflow, `.github/workflows/release-macos.yml`, which
//! [`check_workflows`] checks here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use tempfile::TempDir;

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
/// The oldest macOS the library runs on (`LC_BUILD_VERSION minos`), for both architectures:
/// 11.0 is the first macOS on Apple silicon.
pub const MIN_MACOS: &str = "11.0";

/// `cargo build --release` of the library for an Apple `target`, for [`MIN_MACOS`]; the result
/// is [`slice()`]. The cross build adds its compilers to the command.
pub fn release_build(tools: &Tools, target: &str) -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tools.command(cargo);
    command
        .args(["build", "--release", "--locked", "--target", target, "-p", "cosmian-pkcs11", "--lib"])
        .env("MACOSX_DEPLOYMENT_TARGET", MIN_MACOS);
    command
}

/// Where [`release_build`] leaves the library of `target`.
pub fn slice(target: &str) -> PathBuf {
    crate::target_dir().join(target).join("release").join(DYLIB)
}
pub const DYLIB: &str = "libcosmian_pkcs11.dylib";
const IDENTIFIER: &str = "com.cosmian.pkcs11";
/// Symbols every image defines (the linker's), not part of the library's interface.
const LINKER_SYMBOLS: [&str; 2] = ["__mh_dylib_header", "___dso_handle"];
/// What the library exports, with Mach-O's leading underscore, sorted.
pub const EXPORTS: [&str; 3] = ["_C_GetFunctionList", "_C_GetInterface", "_C_GetInterfaceList"];

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

/// `rcodesign sign`: a Mach-O (every slice of a universal one) with the hardened runtime, or
/// a .pkg (a XAR archive), in place.
fn sign(tools: &Tools, path: &Path, identity: &Identity, timestamp: Timestamp) -> Result<(), String> {
    let mut command = tools.command("rcodesign");
    command.arg("sign").arg("--p12-file").arg(&identity.p12).arg("--p12-password-file").arg(&identity.password);
    if path.extension().is_some_and(|e| e == "dylib") {
        command.args(["--code-signature-flags", "runtime", "--binary-identifier", IDENTIFIER]);
    }
    if timestamp == Timestamp::None {
        command.args(["--timestamp-url", "none"]);
    }
    capture(command.arg(path)).map(drop)
}

/// `rcodesign verify` and `rcodesign print-signature-info`: every slice's signature verifies,
/// is made with a Developer ID Application certificate, sets the hardened runtime and, with
/// [`Timestamp::Apple`], carries a time-stamp token.
fn verify_dylib(tools: &Tools, path: &Path, slices: usize, timestamp: Timestamp) -> Result<(), String> {
    capture(tools.command("rcodesign").arg("verify").arg(path))
        .map_err(|e| format!("the signature of {} does not verify: {e}", path.display()))?;
    let info = capture(tools.command("rcodesign").arg("print-signature-info").arg(path))?;
    let count = |needle: &str| info.lines().filter(|line| line.trim() == needle).count();
    let checks = [
        ("signature_verifies: true", "a verified CMS signature"),
        ("flags: CodeSignatureFlags(RUNTIME)", "the hardened runtime flag"),
        ("apple_certificate_profile: developer-id-application", "a Developer ID Application certificate"),
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

/// Joins thin Mach-O files into a universal one (`lipo -create`, on the Mac).
fn universal(tools: &Tools, slices: &[PathBuf], output: &Path) -> Result<(), String> {
    capture(tools.command("lipo").arg("-create").arg("-output").arg(output).args(slices)).map(drop)
}

/// `cargo xtask dist-macos`.
pub fn dist_macos() -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err("dist-macos runs on macOS (cargo's Apple targets, pkgbuild, Gatekeeper); \
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

    let mut slices = Vec::new();
    for (target, _) in TARGETS {
        step(&format!("build for {target}"), &format!("cargo build --release --target {target} -p cosmian-pkcs11"));
        crate::run(&mut release_build(tools, target))?;
        slices.push(slice(target));
    }
    let dylib = dist.join(DYLIB);
    let _ = std::fs::remove_file(&dylib);
    step("join them", &format!("lipo -create -output {}", dylib.display()));
    universal(tools, &slices, &dylib)?;
    let archs = capture(tools.command("lipo").arg("-archs").arg(&dylib))?;
    let mut found: Vec<&str> = archs.split_whitespace().collect();
    found.sort();
    if found != ["arm64", "x86_64"] {
        return Err(format!("{} holds {archs:?}, not x86_64 and arm64", dylib.display()));
    }
    step("check its exports", "nm -gU -arch all");
    check_exports(&capture(tools.command("nm").args(["-gU", "-arch", "all"]).arg(&dylib))?)?;

    step("sign it", "rcodesign sign --code-signature-flags runtime (Developer ID Application, secure timestamp)");
    sign(tools, &dylib, &application, Timestamp::Apple)?;
    verify_dylib(tools, &dylib, TARGETS.len(), Timestamp::Apple)?;
    crate::run(tools.command("codesign").args(["--verify", "--strict", "--verbose=2"]).arg(&dylib))?;

    step("notarize it", "ditto -c -k; rcodesign notary-submit --wait (a bare dylib cannot be stapled)");
    let zip = dist.join(format!("{NAME}-{}-macos-dylib.zip", version()));
    let _ = std::fs::remove_file(&zip);
    crate::run(tools.command("ditto").args(["-c", "-k", "--keepParent"]).arg(&dylib).arg(&zip))?;
    crate::run(tools.command("rcodesign").args(["notary-submit", "--wait", "--api-key-file"]).arg(&api_key).arg(&zip))?;

    let pkg = dist.join(format!("{NAME}-{}.pkg", version()));
    // The same builder as on Linux, where `check_pkg` unpacks its output in every CI run; here
    // macOS's own tools judge the signed result below.
    build_pkg(&dylib, &pkg)?;

    step("sign, notarize and staple it", "rcodesign sign (Developer ID Installer); rcodesign notary-submit --staple");
    sign(tools, &pkg, &installer, Timestamp::Apple)?;
    crate::run(
        tools.command("rcodesign").args(["notary-submit", "--staple", "--api-key-file"]).arg(&api_key).arg(&pkg),
    )?;
    crate::run(tools.command("pkgutil").arg("--check-signature").arg(&pkg))?;
    crate::run(tools.command("xcrun").args(["stapler", "validate"]).arg(&pkg))?;
    crate::run(tools.command("spctl").args(["--assess", "--type", "install", "--verbose=2"]).arg(&pkg))?;

    super::write_checksums(&dist, "SHA256SUMS-macos", &[&dylib, &zip, &pkg])?;
    println!("\n{}\n{}\n{}", dylib.display(), zip.display(), pkg.display());
    Ok(())
}

/// The `.pkg` that installs the dylib as a real file into `/usr/local/lib` (what every
/// ssh-agent accepts), written by embala-pkg the way `productbuild` lays it out, the same on
/// Linux and on the Mac.
fn build_pkg(dylib: &Path, pkg: &Path) -> Result<(), String> {
    step("build the .pkg", &format!("embala-pkg: a flat package installing /{}/{DYLIB}", super::LIB_DIR));
    let _ = std::fs::remove_file(pkg);
    let spec = embala_pkg::PkgSpec {
        name: NAME.to_owned(),
        display_name: "Cosmian PKCS#11 provider for OpenSSH".to_owned(),
        identifier: IDENTIFIER.to_owned(),
        version: version().to_owned(),
        install_location: PKG_INSTALL_LOCATION.to_owned(),
        enable_user_home: false,
        files: vec![embala_pkg::FileSpec { src: dylib.to_owned(), dest: format!("lib/{DYLIB}"), mode: Some(0o755) }],
        directories: Vec::new(),
        scripts: None,
    };
    embala_pkg::build(&spec, pkg).map_err(|e| format!("cannot build {}: {e}", pkg.display()))
}

/// Where the `.pkg` installs its payload (`lib/libcosmian_pkcs11.dylib`).
const PKG_INSTALL_LOCATION: &str = "/usr/local";

/// Unpacks a `.pkg` with tools that are not its writer (7-Zip reads xar; gzip and cpio the
/// payload): one component installing to [`PKG_INSTALL_LOCATION`], a BOM, and a payload of
/// exactly `lib/libcosmian_pkcs11.dylib`, byte for byte `dylib`, mode 0755.
fn check_pkg(pkg: &Path, dylib: &Path) -> Result<(), String> {
    step("unpack the .pkg", "7z x; gzip -dc Payload | cpio -i");
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let xar = work.path().join("xar");
    capture(std::process::Command::new("7z").arg("x").arg(format!("-o{}", xar.display())).arg(pkg))?;
    let component = xar.join(format!("{NAME}.pkg"));
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let info = String::from_utf8_lossy(&read(&component.join("PackageInfo"))?).into_owned();
    for needed in [format!("identifier=\"{IDENTIFIER}\""), format!("install-location=\"{PKG_INSTALL_LOCATION}\"")] {
        if !info.contains(&needed) {
            return Err(format!("PackageInfo lacks {needed}:\n{info}"));
        }
    }
    if !read(&component.join("Bom"))?.starts_with(b"BOMStore") {
        return Err("the component's Bom is not a BOM store".into());
    }
    if !read(&xar.join("Distribution"))?.windows(NAME.len()).any(|w| w == NAME.as_bytes()) {
        return Err("the Distribution does not name the component".into());
    }
    let payload = work.path().join("payload");
    std::fs::create_dir_all(&payload).map_err(|e| e.to_string())?;
    let script = format!(
        "gzip -dc '{}' | cpio -idm --quiet && find . -type f -printf '%P %m\\n'",
        component.join("Payload").display()
    );
    let files = capture(std::process::Command::new("sh").args(["-c", &script]).current_dir(&payload))?;
    let expected = format!("lib/{DYLIB} 755");
    if files.trim() != expected {
        return Err(format!("the payload holds {files:?}, not {expected:?}"));
    }
    if read(&payload.join("lib").join(DYLIB))? != read(dylib)? {
        return Err(format!("the payload's {DYLIB} differs from {}", dylib.display()));
    }
    println!(
        "    {}: installs {PKG_INSTALL_LOCATION}/lib/{DYLIB} (0755), identical to the signed dylib",
        pkg.display()
    );
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
/// library (a copy of it), with a self-signed Developer ID Application certificate passed
/// through the environment variables the release uses, offline (no timestamp); the signed copy
/// zipped as the notary service takes it, and in a signed `.pkg`, both in `target/dist/` with
/// `-selfsigned` in their names.
pub fn signing_selftest(tools: &Tools, built: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path();
    let dylib = dir.join(DYLIB);
    std::fs::copy(built, &dylib).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    let slices = TARGETS.len();
    step(
        "make self-signed Developer ID Application and Installer certificates",
        "rcodesign generate-self-signed-certificate",
    );
    let secrets = Secrets::new()?;
    let identity = self_signed(tools, &secrets, "developer-id-application", "APPLE_CODESIGN")?;
    let installer = self_signed(tools, &secrets, "developer-id-installer", "APPLE_INSTALLER")?;

    step("sign it as dist-macos does, and verify", "rcodesign sign --code-signature-flags runtime; rcodesign verify");
    sign(tools, &dylib, &identity, Timestamp::None)?;
    verify_dylib(tools, &dylib, slices, Timestamp::None)?;
    println!("    both slices signed: Developer ID Application, hardened runtime, signature verified");
    let dist = dist_dir()?;
    let zip = dist.join(format!("{NAME}-{}-macos-dylib-selfsigned.zip", version()));
    super::macos_cross::notarization_zip(tools, &dylib, &zip)?;

    // The verification must be able to fail: one byte of the first slice's code, changed.
    let mut bytes = std::fs::read(&dylib).map_err(|e| e.to_string())?;
    let first_slice = bytes
        .get(16..20)
        .map(|offset| u32::from_be_bytes(offset.try_into().expect("4 bytes")) as usize)
        .ok_or("not a universal Mach-O file")?;
    let code = first_slice + 0x4000;
    *bytes.get_mut(code).ok_or("a slice shorter than 16 KiB")? ^= 0xff;
    let tampered = dir.join("tampered.dylib");
    std::fs::write(&tampered, bytes).map_err(|e| e.to_string())?;
    match verify_dylib(tools, &tampered, slices, Timestamp::None) {
        Err(report) if report.contains("digest mismatch") => {
            println!("    and a changed byte fails the verification")
        }
        other => return Err(format!("a tampered library passed the verification: {other:?}")),
    }

    step(
        "build the .pkg of the signed library as dist-macos does, sign it, unpack it",
        "embala-pkg; rcodesign sign (Developer ID Installer); 7z x",
    );
    let pkg = dist.join(format!("{NAME}-{}-selfsigned.pkg", version()));
    build_pkg(&dylib, &pkg)?;
    sign(tools, &pkg, &installer, Timestamp::None)?;
    let info = capture(tools.command("rcodesign").arg("print-signature-info").arg(&pkg))?;
    for needed in ["checksum_verifies: true", "apple_certificate_profile: developer-id-installer"] {
        if !info.lines().any(|line| line.trim() == needed) {
            return Err(format!("the signed .pkg lacks `{needed}`:\n{info}"));
        }
    }
    check_pkg(&pkg, &dylib)?;

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

/// The release workflows are valid YAML (PyYAML) and run the xtask; the macOS one on a macOS
/// runner, on tags, with every secret `dist-macos` reads, and Homebrew's commands on the
/// formula ([`check_homebrew_job`]); the Linux one publishes the formula of the tap.
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
    check_homebrew_job(&macos)?;
    let linux = load_yaml(tools, &dir.join("release-linux.yml"))?;
    for arch in super::elf::Arch::ALL {
        for file in [arch.dist_file(), arch.dist_agent()] {
            check_publishes(&linux, "release-linux.yml", &format!("target/dist/{file}"))?;
        }
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

/// Homebrew's commands the macOS release workflow runs on the formula, in this order, each a
/// line of a `run:` holding all its words: the tap rendered and tapped, `brew style` and
/// `brew audit --strict`, the build from the tarball made in the job (put in Homebrew's
/// download cache: the release's URL may not answer yet), `brew test`, `brew uninstall`, and
/// `brew audit --strict --online` once the release has the tarball.
fn brew_commands() -> Vec<Vec<String>> {
    use super::homebrew::TAP;
    let formula = format!("{TAP}/{NAME}");
    let words = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    vec![
        words(&["cargo xtask dist-homebrew"]),
        words(&["brew tap", TAP]),
        words(&["brew style", TAP]),
        words(&["brew audit", "--strict", &formula]),
        words(&["brew --cache", "--build-from-source", &formula]),
        words(&["brew install", "--build-from-source", &formula]),
        words(&["brew test", &formula]),
        words(&["brew uninstall", &formula]),
        words(&["brew audit", "--strict", "--online", &formula]),
    ]
}

/// A job on a macOS runner of the macOS workflow runs every [`brew_commands`], in order; the
/// `Err` names the first one missing from the job that has the most.
fn check_homebrew_job(workflow: &serde_json::Value) -> Result<(), String> {
    let commands = brew_commands();
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
                "    release-macos.yml: the {name} job runs, in order: {}",
                commands.iter().map(|w| w.join(" ")).collect::<Vec<_>>().join("; ")
            );
            return Ok(());
        }
        if best.is_none_or(|(most, _)| found > most) {
            best = Some((found, name));
        }
    }
    Err(match best {
        None => "release-macos.yml has no job on a macOS runner for Homebrew".into(),
        Some((found, job)) => format!(
            "release-macos.yml: the {job} job does not run `{}` (a line with all these words) after `{}`",
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

    #[test]
    fn the_homebrew_job_check_needs_every_brew_command_in_order() {
        let lines = [
            "cargo xtask dist-homebrew",
            "git init -q -b main\nbrew tap cosmian/tap \"$PWD\"",
            "brew style cosmian/tap\nbrew audit --strict cosmian/tap/cosmian-pkcs11",
            "cache=\"$(brew --cache --build-from-source cosmian/tap/cosmian-pkcs11)\"",
            "brew install --build-from-source --include-test cosmian/tap/cosmian-pkcs11",
            "brew test --verbose cosmian/tap/cosmian-pkcs11",
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
        // Nor do the commands on a Linux runner, nor split between two jobs.
        let err =
            check_homebrew_job(&workflow(serde_json::json!({"homebrew": job("ubuntu-24.04", &lines)}))).unwrap_err();
        assert!(err.contains("no job on a macOS runner"), "{err}");
        let split = serde_json::json!({"a": job("macos-14", &lines[..5]), "b": job("macos-14", &lines[5..])});
        assert!(check_homebrew_job(&workflow(split)).is_err());
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
