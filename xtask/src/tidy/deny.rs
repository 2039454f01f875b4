//! The licence, crate and source policy of `deny.toml`, enforced by cargo-deny offline on the
//! workspace (`cargo deny --offline check licenses bans sources`; the advisories check needs the
//! RustSec database from the network; `cargo fetch` first downloads the crates it reads).
//! cargo-deny comes from `scripts/install-packaging-tools.sh cargo-deny` (crates.io only, into
//! `~/.cache/cosmian-pkcs11/tools`). Then the same policy must refuse a fixture workspace that
//! breaks it three ways: a GPL-3.0 crate (licence) from a git repository (source; made here,
//! fetched through `file://`), and a crate named `openssl-sys` (ban).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// What the fixture must make cargo-deny report: `(code, crate)`.
const REFUSALS: [(&str, &str); 3] =
    [("rejected", "gpl-crate"), ("source-not-allowed", "gpl-crate"), ("banned", "openssl-sys")];

/// `cargo xtask tidy`'s policy check, on the workspace at `root`, then on the fixture.
pub fn check(root: &Path) -> Result<(), String> {
    let path = tools_path(root)?;
    let config = root.join("deny.toml");
    // cargo-deny reads the manifests of every crate of Cargo.lock, other platforms' included,
    // and runs offline: those a build for this machine did not download, first.
    crate::cargo("download the crates of Cargo.lock", &["fetch", "--locked"])?;
    let report = run(&path, &root.join("Cargo.toml"), &config, None)?;
    print(&report, true);
    let errors = report.iter().filter(|d| d.severity == "error").count();
    if errors > 0 {
        return Err(format!(
            "cargo deny: {errors} error(s) against deny.toml (details: cargo deny --offline check licenses bans \
             sources)"
        ));
    }
    crate::step("check that the policy refuses a fixture", "a GPL-3.0 crate from git, a crate named openssl-sys");
    let fixture = tempfile::tempdir().map_err(|e| e.to_string())?;
    let manifest = write_fixture(fixture.path())?;
    let report = run(&path, &manifest, &config, Some(&fixture.path().join("cargo-home")))?;
    // Its warnings are the licences of deny.toml the fixture does not use.
    print(&report, false);
    refuses(&report)
}

/// `PATH` with the folder of cargo-deny first, installed if missing.
fn tools_path(root: &Path) -> Result<OsString, String> {
    let script = root.join("scripts/install-packaging-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("cargo-deny")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout.lines().find_map(|line| line.strip_prefix("PACKAGING_TOOLS_BIN="));
    let bin = match (out.status.success(), bin) {
        (true, Some(bin)) => PathBuf::from(bin),
        _ => return Err(format!("{} cargo-deny failed: {}", script.display(), out.status)),
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).map_err(|e| e.to_string())
}

/// One diagnostic of cargo-deny: severity, code (`rejected`, `banned` ...), message, crates.
#[derive(Debug)]
struct Diagnostic {
    severity: String,
    code: String,
    message: String,
    crates: Vec<String>,
}

/// `cargo deny --offline --format json check licenses bans sources` on `manifest` with `config`;
/// its diagnostics, whatever its exit status (it fails when one is an error).
fn run(path: &OsString, manifest: &Path, config: &Path, cargo_home: Option<&Path>) -> Result<Vec<Diagnostic>, String> {
    crate::step(
        "check the licences, bans and sources",
        &format!(
            "cargo deny --offline --manifest-path {} --config {} check licenses bans sources",
            manifest.display(),
            config.display()
        ),
    );
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .env("PATH", path)
        .args(["deny", "--offline", "--format", "json", "--manifest-path"])
        .arg(manifest)
        .arg("--config")
        .arg(config)
        .args(["check", "licenses", "bans", "sources"])
        .stdin(Stdio::null());
    if let Some(home) = cargo_home {
        command.env("CARGO_HOME", home);
    }
    let out = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let diagnostics = parse(&String::from_utf8_lossy(&out.stderr));
    // Exit 1 is an error of cargo-deny itself, not of the policy (e.g. no such manifest).
    if !out.status.success() && diagnostics.iter().all(|d| d.severity != "error") {
        return Err(format!("{command:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(diagnostics)
}

/// The diagnostics of cargo-deny's JSON lines (one object a line; other lines are skipped).
fn parse(json_lines: &str) -> Vec<Diagnostic> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["type"] == "diagnostic")
        .map(|value| {
            let fields = &value["fields"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let crates = fields["graphs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|graph| format!("{} {}", text(&graph["Krate"]["name"]), text(&graph["Krate"]["version"])))
                .collect();
            Diagnostic {
                severity: text(&fields["severity"]),
                code: text(&fields["code"]),
                message: text(&fields["message"]),
                crates,
            }
        })
        .collect()
}

/// One line a diagnostic: the errors, and the warnings (several versions of a crate) if asked.
fn print(report: &[Diagnostic], warnings: bool) {
    for d in report.iter().filter(|d| warnings || d.severity == "error") {
        println!("    {}[{}]: {}: {}", d.severity, d.code, d.message, d.crates.join(", "));
    }
    let errors = report.iter().filter(|d| d.severity == "error").count();
    println!("    {errors} error(s), {} warning(s)", report.len() - errors);
}

/// `Ok` when the report has every error of [`REFUSALS`].
fn refuses(report: &[Diagnostic]) -> Result<(), String> {
    let found: BTreeSet<(&str, &str)> = report
        .iter()
        .filter(|d| d.severity == "error")
        .flat_map(|d| d.crates.iter().filter_map(|c| c.split(' ').next()).map(|name| (d.code.as_str(), name)))
        .collect();
    let missing: Vec<_> = REFUSALS.iter().filter(|refusal| !found.contains(refusal)).collect();
    if missing.is_empty() {
        println!("    refused, as it should be: {REFUSALS:?}");
        Ok(())
    } else {
        Err(format!("deny.toml lets the fixture through: no error {missing:?} (found {found:?})"))
    }
}

/// In `dir`: a git repository of a crate `gpl-crate` (GPL-3.0-only), and a workspace that
/// depends on it through `file://` and on a path crate named `openssl-sys`, locked with the
/// cargo home `dir/cargo-home`; the workspace's manifest.
fn write_fixture(dir: &Path) -> Result<PathBuf, String> {
    let write = |relative: &str, text: &str| crate::package::write(&dir.join(relative), text);
    let package = |name: &str, license: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"1.0.0\"\nedition = \"2021\"\nlicense = \"{license}\"\n")
    };
    write("repo/Cargo.toml", &package("gpl-crate", "GPL-3.0-only"))?;
    write("repo/src/lib.rs", "")?;
    let repo = dir.join("repo");
    let git = |args: &[&str]| {
        crate::package::capture(
            Command::new("git")
                .args(["-c", "user.name=fixture", "-c", "user.email=fixture@localhost"])
                .args(args)
                .current_dir(&repo),
        )
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "fixture"])?;
    let dependencies = format!(
        "\n[dependencies]\ngpl-crate = {{ git = \"file://{}\" }}\nopenssl-sys = {{ path = \"openssl-sys\", version = \"1\" }}\n",
        repo.display()
    );
    write("ws/Cargo.toml", &(package("fixture", "Apache-2.0") + &dependencies))?;
    write("ws/src/lib.rs", "")?;
    write("ws/openssl-sys/Cargo.toml", &package("openssl-sys", "MIT"))?;
    write("ws/openssl-sys/src/lib.rs", "")?;
    let manifest = dir.join("ws/Cargo.toml");
    crate::package::capture(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["generate-lockfile", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_HOME", dir.join("cargo-home"))
            .env_remove("CARGO_NET_OFFLINE"),
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cargo-deny 0.20's JSON lines for the fixture, shortened.
    const REPORT: &str = r#"{"fields":{"code":"source-not-allowed","graphs":[{"Krate":{"name":"gpl-crate","version":"1.0.0"}}],"message":"detected 'git' source not explicitly allowed","severity":"error"},"type":"diagnostic"}
{"fields":{"code":"banned","graphs":[{"Krate":{"name":"openssl-sys","version":"1.0.0"}}],"message":"crate 'openssl-sys = 1.0.0' is explicitly banned","severity":"error"},"type":"diagnostic"}
{"fields":{"code":"rejected","graphs":[{"Krate":{"name":"gpl-crate","version":"1.0.0"}}],"message":"failed to satisfy license requirements","severity":"error"},"type":"diagnostic"}
{"fields":{"code":"license-not-encountered","graphs":[],"message":"license was not encountered","severity":"warning"},"type":"diagnostic"}
not json
"#;

    #[test]
    fn reads_the_diagnostics() {
        let report = parse(REPORT);
        assert_eq!(report.len(), 4);
        assert_eq!(
            (report[2].code.as_str(), report[2].crates.as_slice()),
            ("rejected", ["gpl-crate 1.0.0".to_owned()].as_slice())
        );
        assert_eq!(report[3].severity, "warning");
    }

    #[test]
    fn the_fixture_must_be_refused_three_ways() {
        refuses(&parse(REPORT)).unwrap();
        // A policy that lets git sources through, or a warning instead of an error: not enough.
        let lenient: String =
            REPORT.lines().filter(|line| !line.contains("source-not-allowed")).collect::<Vec<_>>().join("\n");
        assert!(refuses(&parse(&lenient)).unwrap_err().contains("source-not-allowed"));
        let warned = REPORT.replace(r#""code":"banned","graphs":[{"Krate":{"name":"openssl-sys","version":"1.0.0"}}],"message":"crate 'openssl-sys = 1.0.0' is explicitly banned","severity":"error""#, r#""code":"banned","graphs":[{"Krate":{"name":"openssl-sys","version":"1.0.0"}}],"message":"","severity":"warning""#);
        assert!(refuses(&parse(&warned)).unwrap_err().contains("banned"));
    }
}
