//! macOS: `cargo xtask dist-macos`, on a Mac, builds the library for aarch64 and x86_64, joins
//! them into a universal `.dylib`, checks its exports, signs it (Developer ID Application,
//! hardened runtime, Apple's secure timestamp) and notarizes it, then builds a `.pkg` that
//! installs it into `/usr/local/lib` (the real file there is what ssh-agent accepts), signs it
//! (Developer ID Installer), notarizes it and staples the ticket.
//!
//! Signing and notarization go through rcodesign (crates.io `apple-codesign`) with the
//! certificates and the App Store Connect API key taken from the environment only
//! ([`SECRETS`]), written to a private temporary folder for the time of the task. The same
//! functions run on Linux in [`signing_selftest`]: a universal Mach-O fixture built with zig,
//! signed with a self-signed Developer ID certificate passed the same way, then verified, and
//! a changed byte must fail the verification. What only a Mac and Apple's services can do
//! (cargo's Apple targets, `pkgbuild`, the notary service, Gatekeeper) runs in the release
//! workflow, `.github/workflows/release-macos.yml`, which [`check_workflows`] checks here.

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

const TARGETS: [&str; 2] = ["aarch64-apple-darwin", "x86_64-apple-darwin"];
const DYLIB: &str = "libcosmian_pkcs11.dylib";
const IDENTIFIER: &str = "com.cosmian.pkcs11";
/// Symbols every image defines (the linker's), not part of the library's interface.
const LINKER_SYMBOLS: [&str; 2] = ["__mh_dylib_header", "___dso_handle"];
/// What the library exports, with Mach-O's leading underscore, sorted.
const EXPORTS: [&str; 3] = [
    "_C_GetFunctionList",
    "_C_GetInterface",
    "_C_GetInterfaceList",
];

/// Where the secrets go while the task runs: a folder only this user can read, removed when
/// dropped. Passwords are passed as files, never on a command line.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Result<Secrets, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("cosmian-pkcs11-signing-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
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
    fn from_env(
        env: &impl Fn(&str) -> Option<String>,
        prefix: &str,
        secrets: &Secrets,
    ) -> Result<Identity, String> {
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
    env(name).filter(|value| !value.is_empty()).ok_or_else(|| {
        format!("{name} is not set (the signing secrets come from the environment: {SECRETS:?})")
    })
}

/// Apple's time-stamp server, or none (for the self-signed fixture, offline).
#[derive(Clone, Copy, PartialEq)]
enum Timestamp {
    Apple,
    None,
}

/// `rcodesign sign`: a Mach-O (every slice of a universal one) with the hardened runtime, or
/// a .pkg (a XAR archive), in place.
fn sign(
    tools: &Tools,
    path: &Path,
    identity: &Identity,
    timestamp: Timestamp,
) -> Result<(), String> {
    let mut command = tools.command("rcodesign");
    command
        .arg("sign")
        .arg("--p12-file")
        .arg(&identity.p12)
        .arg("--p12-password-file")
        .arg(&identity.password);
    if path.extension().is_some_and(|e| e == "dylib") {
        command.args([
            "--code-signature-flags",
            "runtime",
            "--binary-identifier",
            IDENTIFIER,
        ]);
    }
    if timestamp == Timestamp::None {
        command.args(["--timestamp-url", "none"]);
    }
    capture(command.arg(path)).map(drop)
}

/// `rcodesign verify` and `rcodesign print-signature-info`: every slice's signature verifies,
/// is made with a Developer ID Application certificate, sets the hardened runtime and, with
/// [`Timestamp::Apple`], carries a time-stamp token.
fn verify_dylib(
    tools: &Tools,
    path: &Path,
    slices: usize,
    timestamp: Timestamp,
) -> Result<(), String> {
    capture(tools.command("rcodesign").arg("verify").arg(path))
        .map_err(|e| format!("the signature of {} does not verify: {e}", path.display()))?;
    let info = capture(
        tools
            .command("rcodesign")
            .arg("print-signature-info")
            .arg(path),
    )?;
    let count = |needle: &str| info.lines().filter(|line| line.trim() == needle).count();
    let checks = [
        ("signature_verifies: true", "a verified CMS signature"),
        (
            "flags: CodeSignatureFlags(RUNTIME)",
            "the hardened runtime flag",
        ),
        (
            "apple_certificate_profile: developer-id-application",
            "a Developer ID Application certificate",
        ),
    ];
    for (needle, what) in checks {
        if count(needle) != slices {
            return Err(format!(
                "{}: {slices} slices but {} with {what}:\n{info}",
                path.display(),
                count(needle)
            ));
        }
    }
    let stamped = info
        .lines()
        .filter(|line| line.trim_start().starts_with("time_stamp_token:"))
        .count();
    if timestamp == Timestamp::Apple && stamped < slices {
        return Err(format!(
            "{}: a slice has no secure timestamp:\n{info}",
            path.display()
        ));
    }
    Ok(())
}

/// The exports of every architecture of a Mach-O, from `nm -gU -arch all`, linker symbols
/// left out: `Err` unless each is exactly [`EXPORTS`].
fn check_exports(nm_output: &str) -> Result<(), String> {
    let mut by_arch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut arch = String::from("(single)");
    for line in nm_output.lines() {
        if let Some(rest) = line.split_once("(for architecture ").map(|(_, r)| r) {
            arch = rest.trim_end_matches("):").to_owned();
        } else if let Some(name) = line.split_whitespace().nth(2) {
            if !LINKER_SYMBOLS.contains(&name) {
                by_arch
                    .entry(arch.clone())
                    .or_default()
                    .push(name.to_owned());
            }
        }
    }
    if by_arch.is_empty() {
        return Err(format!("no exported symbol in:\n{nm_output}"));
    }
    for (arch, mut symbols) in by_arch {
        symbols.sort();
        if symbols != EXPORTS {
            return Err(format!(
                "{arch} exports {symbols:?}, not exactly {EXPORTS:?}"
            ));
        }
    }
    Ok(())
}

/// Joins thin Mach-O files into a universal one: `lipo -create` on macOS, rcodesign's
/// equivalent elsewhere (for the fixture of [`signing_selftest`]).
fn universal(tools: &Tools, slices: &[PathBuf], output: &Path) -> Result<(), String> {
    let mut command = if cfg!(target_os = "macos") {
        let mut lipo = tools.command("lipo");
        lipo.args(["-create", "-output"]);
        lipo
    } else {
        let mut rcodesign = tools.command("rcodesign");
        rcodesign.args(["macho-universal-create", "--output"]);
        rcodesign
    };
    capture(command.arg(output).args(slices)).map(drop)
}

/// `cargo xtask dist-macos`.
pub fn dist_macos() -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err(
            "dist-macos runs on macOS (cargo's Apple targets, pkgbuild, Gatekeeper); \
                    the release workflow .github/workflows/release-macos.yml runs it"
                .into(),
        );
    }
    let tools = Tools::get()?;
    let env = |name: &str| std::env::var(name).ok();
    let secrets = Secrets::new()?;
    let application = Identity::from_env(&env, "APPLE_CODESIGN", &secrets)?;
    let installer = Identity::from_env(&env, "APPLE_INSTALLER", &secrets)?;
    let api_key = api_key_json(tools, &env, &secrets)?;
    let dist = dist_dir()?;

    let mut slices = Vec::new();
    for target in TARGETS {
        step(
            &format!("build for {target}"),
            &format!("cargo build --release --target {target} -p cosmian-pkcs11"),
        );
        crate::run(tools.command("rustup").args(["target", "add", target]))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        crate::run(
            tools
                .command(cargo)
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    target,
                    "-p",
                    "cosmian-pkcs11",
                ])
                .env("MACOSX_DEPLOYMENT_TARGET", "11.0"),
        )?;
        slices.push(super::target_dir().join(target).join("release").join(DYLIB));
    }
    let dylib = dist.join(DYLIB);
    let _ = std::fs::remove_file(&dylib);
    step(
        "join them",
        &format!("lipo -create -output {}", dylib.display()),
    );
    universal(tools, &slices, &dylib)?;
    let archs = capture(tools.command("lipo").arg("-archs").arg(&dylib))?;
    let mut found: Vec<&str> = archs.split_whitespace().collect();
    found.sort();
    if found != ["arm64", "x86_64"] {
        return Err(format!(
            "{} holds {archs:?}, not x86_64 and arm64",
            dylib.display()
        ));
    }
    step("check its exports", "nm -gU -arch all");
    check_exports(&capture(
        tools
            .command("nm")
            .args(["-gU", "-arch", "all"])
            .arg(&dylib),
    )?)?;

    step("sign it", "rcodesign sign --code-signature-flags runtime (Developer ID Application, secure timestamp)");
    sign(tools, &dylib, &application, Timestamp::Apple)?;
    verify_dylib(tools, &dylib, TARGETS.len(), Timestamp::Apple)?;
    crate::run(
        tools
            .command("codesign")
            .args(["--verify", "--strict", "--verbose=2"])
            .arg(&dylib),
    )?;

    step(
        "notarize it",
        "ditto -c -k; rcodesign notary-submit --wait (a bare dylib cannot be stapled)",
    );
    let zip = dist.join(format!("{NAME}-{}-macos-dylib.zip", version()));
    let _ = std::fs::remove_file(&zip);
    crate::run(
        tools
            .command("ditto")
            .args(["-c", "-k", "--keepParent"])
            .arg(&dylib)
            .arg(&zip),
    )?;
    crate::run(
        tools
            .command("rcodesign")
            .args(["notary-submit", "--wait", "--api-key-file"])
            .arg(&api_key)
            .arg(&zip),
    )?;

    let pkg = dist.join(format!("{NAME}-{}.pkg", version()));
    step(
        "build the .pkg",
        &format!("pkgbuild --install-location / (usr/local/lib/{DYLIB}); productbuild"),
    );
    let stage = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = stage.path().join("root");
    std::fs::create_dir_all(root.join(super::LIB_DIR)).map_err(|e| e.to_string())?;
    std::fs::copy(&dylib, root.join(super::LIB_DIR).join(DYLIB)).map_err(|e| e.to_string())?;
    let component = stage.path().join("component.pkg");
    crate::run(
        tools
            .command("pkgbuild")
            .arg("--root")
            .arg(&root)
            .args([
                "--identifier",
                IDENTIFIER,
                "--version",
                version(),
                "--install-location",
                "/",
            ])
            .arg(&component),
    )?;
    let _ = std::fs::remove_file(&pkg);
    crate::run(
        tools
            .command("productbuild")
            .arg("--package")
            .arg(&component)
            .arg(&pkg),
    )?;

    step(
        "sign, notarize and staple it",
        "rcodesign sign (Developer ID Installer); rcodesign notary-submit --staple",
    );
    sign(tools, &pkg, &installer, Timestamp::Apple)?;
    crate::run(
        tools
            .command("rcodesign")
            .args(["notary-submit", "--staple", "--api-key-file"])
            .arg(&api_key)
            .arg(&pkg),
    )?;
    crate::run(tools.command("pkgutil").arg("--check-signature").arg(&pkg))?;
    crate::run(
        tools
            .command("xcrun")
            .args(["stapler", "validate"])
            .arg(&pkg),
    )?;
    crate::run(
        tools
            .command("spctl")
            .args(["--assess", "--type", "install", "--verbose=2"])
            .arg(&pkg),
    )?;

    super::write_checksums(&dist, "SHA256SUMS-macos", &[&dylib, &zip, &pkg])?;
    println!(
        "\n{}\n{}\n{}",
        dylib.display(),
        zip.display(),
        pkg.display()
    );
    Ok(())
}

/// The App Store Connect API key as rcodesign's JSON (`encode-app-store-connect-api-key`).
fn api_key_json(
    tools: &Tools,
    env: &impl Fn(&str) -> Option<String>,
    secrets: &Secrets,
) -> Result<PathBuf, String> {
    let key_id = required(env, "APPLE_API_KEY_ID")?;
    let p8 = secrets.file(
        &format!("AuthKey_{key_id}.p8"),
        required(env, "APPLE_API_PRIVATE_KEY")?.as_bytes(),
    )?;
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

/// On Linux: the signing plumbing of `dist-macos` end to end on a universal Mach-O fixture
/// (two slices built by zig), with a self-signed Developer ID Application certificate passed
/// through the environment variables the release uses.
pub fn signing_selftest(tools: &Tools) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path();
    step(
        "build a universal Mach-O fixture",
        "zig cc -target {aarch64,x86_64}-macos -shared; rcodesign macho-universal-create",
    );
    let source = dir.join("fixture.c");
    super::write(
        &source,
        EXPORTS
            .iter()
            .map(|name| format!("__attribute__((visibility(\"default\"))) unsigned long {}(void) {{ return 0; }}\n", &name[1..]))
            .collect::<String>(),
    )?;
    let mut slices = Vec::new();
    for arch in ["aarch64", "x86_64"] {
        let slice = dir.join(format!("{arch}.dylib"));
        capture(
            tools
                .python()
                .args([
                    "-m",
                    "ziglang",
                    "cc",
                    "-target",
                    &format!("{arch}-macos"),
                    "-shared",
                    "-fvisibility=hidden",
                ])
                // Room for the code signature's load command.
                .arg("-Wl,-headerpad_max_install_names")
                .arg("-o")
                .arg(&slice)
                .arg(&source),
        )?;
        slices.push(slice);
    }
    let dylib = dir.join(DYLIB);
    universal(tools, &slices, &dylib)?;

    step(
        "make a self-signed Developer ID Application certificate",
        "rcodesign generate-self-signed-certificate",
    );
    let p12 = dir.join("self-signed.p12");
    let password = "fixture-password";
    capture(
        tools
            .command("rcodesign")
            .args([
                "generate-self-signed-certificate",
                "--algorithm",
                "ecdsa",
                "--profile",
                "developer-id-application",
            ])
            .args([
                "--team-id",
                "FIXTURE000",
                "--person-name",
                "cosmian-pkcs11 fixture",
            ])
            .arg("--p12-file")
            .arg(&p12)
            .args(["--p12-password", password]),
    )?;
    let p12_base64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(&p12).map_err(|e| e.to_string())?);
    let env_vars: BTreeMap<&str, String> = [
        ("APPLE_CODESIGN_P12_BASE64", p12_base64),
        ("APPLE_CODESIGN_P12_PASSWORD", password.to_owned()),
    ]
    .into();
    let env = |name: &str| env_vars.get(name).cloned();
    let secrets = Secrets::new()?;
    let identity = Identity::from_env(&env, "APPLE_CODESIGN", &secrets)?;

    step(
        "sign it as dist-macos does, and verify",
        "rcodesign sign --code-signature-flags runtime; rcodesign verify",
    );
    sign(tools, &dylib, &identity, Timestamp::None)?;
    verify_dylib(tools, &dylib, slices.len(), Timestamp::None)?;
    println!(
        "    both slices signed: Developer ID Application, hardened runtime, signature verified"
    );

    // The verification must be able to fail: one byte of the first slice's code, changed.
    let mut bytes = std::fs::read(&dylib).map_err(|e| e.to_string())?;
    let first_slice = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
    bytes[first_slice + 0x1000] ^= 0xff;
    let tampered = dir.join("tampered.dylib");
    std::fs::write(&tampered, bytes).map_err(|e| e.to_string())?;
    match verify_dylib(tools, &tampered, slices.len(), Timestamp::None) {
        Err(report) if report.contains("digest mismatch") => {
            println!("    and a changed byte fails the verification")
        }
        other => {
            return Err(format!(
                "a tampered fixture passed the verification: {other:?}"
            ))
        }
    }

    // A missing secret is a clear error naming it, not a failure of rcodesign.
    let none = |_: &str| None;
    match Identity::from_env(&none, "APPLE_INSTALLER", &secrets) {
        Err(report) if report.contains("APPLE_INSTALLER_P12_BASE64 is not set") => Ok(()),
        Err(other) => Err(format!("unexpected error for a missing secret: {other}")),
        Ok(_) => Err("an identity was made of no secret".into()),
    }
}

/// The release workflows are valid YAML (PyYAML) and run the xtask; the macOS one on a macOS
/// runner, on tags, with every secret `dist-macos` reads.
pub fn check_workflows(tools: &Tools) -> Result<(), String> {
    let dir = workspace_root().join(".github/workflows");
    step(
        "check the release workflows",
        &format!("python3 -c 'yaml.safe_load' {}/*.yml", dir.display()),
    );
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
        println!(
            "    {}: valid YAML, runs {}",
            path.display(),
            xtask.join("; ")
        );
    }
    let macos = load_yaml(tools, &dir.join("release-macos.yml"))?;
    check_macos_workflow(&macos)
}

fn load_yaml(tools: &Tools, path: &Path) -> Result<serde_json::Value, String> {
    let json = capture(
        tools
            .python()
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(path),
    )
    .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    serde_json::from_str(&json).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every `run:` of every step of every job.
fn workflow_runs(workflow: &serde_json::Value) -> Vec<String> {
    let mut runs = Vec::new();
    for job in workflow["jobs"]
        .as_object()
        .into_iter()
        .flat_map(|jobs| jobs.values())
    {
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
    let on = workflow
        .get("on")
        .or_else(|| workflow.get("true"))
        .unwrap_or(&serde_json::Value::Null);
    if on["push"]["tags"].as_array().is_none_or(Vec::is_empty) {
        return Err("release-macos.yml is not triggered by pushed tags".into());
    }
    let jobs = workflow["jobs"]
        .as_object()
        .ok_or("release-macos.yml has no jobs")?;
    for job in jobs.values() {
        if !job["runs-on"]
            .as_str()
            .unwrap_or_default()
            .starts_with("macos")
        {
            continue;
        }
        for step in job["steps"].as_array().into_iter().flatten() {
            if !step["run"]
                .as_str()
                .unwrap_or_default()
                .contains("cargo xtask dist-macos")
            {
                continue;
            }
            let missing: Vec<&str> = SECRETS
                .iter()
                .copied()
                .filter(|name| {
                    !step["env"][name]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&format!("secrets.{name}"))
                })
                .collect();
            if missing.is_empty() {
                println!("    release-macos.yml: on tags, on macOS, `cargo xtask dist-macos` with its {} secrets", SECRETS.len());
                return Ok(());
            }
            return Err(format!(
                "release-macos.yml: the dist-macos step lacks {missing:?} in its env"
            ));
        }
    }
    Err("release-macos.yml has no macOS job that runs `cargo xtask dist-macos`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_of_every_architecture() {
        // llvm-nm -gU --arch=all of a zig-built universal fixture.
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
        let env: serde_json::Map<String, serde_json::Value> = SECRETS
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    format!("${{{{ secrets.{name} }}}}").into(),
                )
            })
            .collect();
        let mut workflow = serde_json::json!({
            "true": {"push": {"tags": ["v*"]}},
            "jobs": {"release": {"runs-on": "macos-14", "steps": [
                {"uses": "actions/checkout@v4"},
                {"run": "cargo xtask dist-macos", "env": env},
            ]}},
        });
        check_macos_workflow(&workflow).unwrap();
        workflow["jobs"]["release"]["steps"][1]["env"]
            .as_object_mut()
            .unwrap()
            .remove("APPLE_API_KEY_ID");
        assert!(check_macos_workflow(&workflow)
            .unwrap_err()
            .contains("APPLE_API_KEY_ID"));
        workflow["jobs"]["release"]["runs-on"] = "ubuntu-latest".into();
        assert!(check_macos_workflow(&workflow).is_err());
        assert!(
            check_macos_workflow(&serde_json::json!({"on": {"push": {"branches": ["main"]}}}))
                .is_err()
        );
    }
}
