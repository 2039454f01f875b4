//! `cargo xtask fuzz [SECONDS]`: builds the cargo-fuzz targets of `fuzz/` and runs each for
//! SECONDS (default 20, what `cargo xtask test` runs), then prints executions, corpus growth and
//! crashes per target; any crash fails the command, its input saved in
//! `fuzz/artifacts/<target>/`.
//!
//! cargo-fuzz needs nightly flags (`-Zsanitizer=address`): on the stable toolchain they are
//! allowed by `RUSTC_BOOTSTRAP=1`. cargo-fuzz itself is installed by
//! `scripts/install-reliability-tools.sh` into the test bed's cache, where the fuzz build's
//! target folder lives too (a second build takes seconds). Each run starts from the committed
//! seeds (`fuzz/seeds/<target>`) plus the corpus kept from earlier runs (`fuzz/corpus/<target>`,
//! not committed).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cosmian_pkcs11_testbed as testbed;

/// The targets, in `fuzz/Cargo.toml`.
const TARGETS: [&str; 7] =
    ["ttlv_from_json", "spki", "ecdsa_der", "digest_info", "config", "dbus_reply", "agent_message"];

/// Seconds per target when none are given.
pub const DEFAULT_SECONDS: u64 = 20;

fn cache() -> PathBuf {
    std::env::var_os("COSMIAN_PKCS11_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cosmian-pkcs11"))
}

/// `cargo fuzz ARGS` in the workspace root, with cargo-fuzz on PATH and nightly flags allowed.
fn cargo_fuzz(args: &[&str]) -> Result<Command, String> {
    let tools = cache().join("tools/bin");
    if !tools.join("cargo-fuzz").is_file() {
        return Err(format!("{} is missing: run scripts/install-test-bed.sh", tools.join("cargo-fuzz").display()));
    }
    let path = std::env::join_paths(
        std::iter::once(tools).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.arg("fuzz").args(args).current_dir(testbed::workspace_root()).env("PATH", path).env("RUSTC_BOOTSTRAP", "1");
    Ok(command)
}

/// `stat::NAME: VALUE` from libFuzzer's final statistics.
fn stat(output: &str, name: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

pub fn run(seconds: u64) -> Result<(), String> {
    let target_dir = cache().join("fuzz-target");
    let target_dir = target_dir.to_str().ok_or("cache path is not UTF-8")?;
    let common = ["--fuzz-dir", "fuzz", "--target-dir", target_dir];
    crate::step("build the fuzz targets", "RUSTC_BOOTSTRAP=1 cargo fuzz build");
    crate::run(cargo_fuzz(&[&["build"][..], &common[..]].concat())?.arg("--release"))?;

    let root = testbed::workspace_root().join("fuzz");
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for target in TARGETS {
        let corpus = root.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let seeds = root.join("seeds").join(target);
        crate::step(&format!("fuzz {target} for {seconds} s"), &format!("cargo fuzz run {target}"));
        let started = Instant::now();
        let output = cargo_fuzz(&[&["run"][..], &common[..], &[target]].concat())?
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
            .output()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let line = format!(
            "{target:<15} {:>10} executions, {:>6}/s, {:>5} new inputs, {:>4} in corpus, {:.0?}: {}",
            stat(&log, "number_of_executed_units"),
            stat(&log, "average_exec_per_sec"),
            stat(&log, "new_units_added"),
            std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
            started.elapsed(),
            if output.status.success() { "no crash" } else { "CRASH" },
        );
        println!("    {line}");
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            failed.push(target);
        }
        summary.push(line);
    }
    println!("\nfuzzing, {seconds} s per target:\n    {}", summary.join("\n    "));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets crashed: {} (inputs in fuzz/artifacts/)", failed.join(", ")))
    }
}
