//! `cargo xtask <command>`: the project's chores, in Rust so that they run the same everywhere.
//!
//! - `test`: installs the test bed (Debian packages, the real KMS server and ckms), builds the
//!   provider and runs every test of the workspace against the real components.
//! - `demo`: what a user does, step by step, from a fresh machine to an SSH login with keys
//!   held in a local KMS (see `demo.rs`).
//! - `kms-start`: a local KMS and a provider configuration to play with by hand.

mod demo;

use std::io::BufRead;
use std::process::{Command, ExitCode};

use cosmian_pkcs11_testbed as testbed;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test       install the test bed, build the provider, run all the workspace's tests
  demo       from a fresh machine to an SSH login with keys held in a local KMS, step by step
  kms-start  start a local KMS and print the environment to use it; Enter stops it";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let result = match command.as_deref() {
        Some("test") => test(),
        Some("demo") => demo::run(),
        Some("kms-start") => kms_start(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a tutorial step: `==> what: command`.
fn step(what: &str, command: &str) {
    println!("\n==> {what}: {command}");
}

/// Runs `scripts/install-test-bed.sh` and exports `COSMIAN_KMS_SERVER` / `COSMIAN_CKMS` to
/// this process (so the test bed does not run the script again) and to every later command.
fn install_test_bed() {
    step("install the test bed", "scripts/install-test-bed.sh");
    let binaries = testbed::install_test_bed();
    // Single-threaded at this point: nothing else reads the environment concurrently.
    std::env::set_var("COSMIAN_KMS_SERVER", &binaries.kms_server);
    std::env::set_var("COSMIAN_CKMS", &binaries.ckms);
    println!("    COSMIAN_KMS_SERVER={}", binaries.kms_server.display());
    println!("    COSMIAN_CKMS={}", binaries.ckms.display());
}

/// A step that runs `cargo ARGS` in the workspace root, stdio inherited; `Err` when it fails.
fn cargo(what: &str, args: &[&str]) -> Result<(), String> {
    step(what, &format!("cargo {}", args.join(" ")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(args)
        .current_dir(testbed::workspace_root()))
}

/// Runs a command to completion, stdio inherited; `Err` when it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}

fn test() -> Result<(), String> {
    install_test_bed();
    cargo("build the provider", &["build", "-p", "cosmian-pkcs11"])?;
    cargo("run every test", &["test", "--workspace", "--all-targets"])
}

fn kms_start() -> Result<(), String> {
    install_test_bed();
    let kms = testbed::KmsServer::start();
    let config = testbed::write_provider_config(kms.dir(), &kms.url(), "");
    println!(
        "\n# KMS {} (log {}, audit log {})",
        kms.url(),
        kms.log_path().display(),
        kms.audit_path().display()
    );
    println!("export COSMIAN_KMS_CLI_CONF={}", config.display());
    println!("export CKMS_CONF={}", config.display());
    println!("alias ckms={}", testbed::binaries().ckms.display());
    if let Ok(lib) = testbed::find_provider_lib() {
        println!("# then: ssh-keygen -D {}", lib.display());
    }
    println!("# press Enter (or Ctrl-C) to stop the KMS");
    let _ = std::io::stdin().lock().lines().next();
    Ok(())
}
