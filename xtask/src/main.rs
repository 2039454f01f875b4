//! `cargo xtask <command>`: the project's chores, in Rust so that they run the same everywhere.
//!
//! - `tidy`: rustfmt and clippy (warnings denied) on the whole workspace and `fuzz/`, and the
//!   documentation against the code (`tidy.rs`).
//! - `test`: `tidy`, then installs the test bed (Debian packages, the real KMS server and
//!   ckms), builds the provider and runs every test of the workspace against the real
//!   components (feature `testbed`), the fuzz targets and the packages; `test --local` the same
//!   without installing anything on the system or testing the packages.
//! - `demo`: what a user does, step by step, from a fresh machine to an SSH login with keys
//!   held in a local KMS (see `demo.rs`).
//! - `kms-start`: a local KMS and a provider configuration to play with by hand.
//! - `fuzz`: the cargo-fuzz targets of `fuzz/`, each for a bounded time (`fuzz.rs`).
//! - `bench`: the provider measured against the raw KMS (see `bench.rs`).
//! - `dist`, `dist-macos`, `dist-macos-cross`, `dist-homebrew`, `package-test`, `licenses`: the release
//!   artifacts (`package.rs`).
//! - `install`: the release library into /usr/local/lib, for who builds from source
//!   (`install.rs`).

mod bench;
mod demo;
mod fuzz;
mod install;
mod package;
mod tidy;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use cosmian_pkcs11_testbed as testbed;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  tidy       check the formatting (workspace and fuzz/), lint everything with clippy
             (--all-features, warnings denied), check the docs against the code
  test       tidy, then install the test bed, build the provider, run all the workspace's tests,
             the fuzz targets and the package tests (says first what it changes on the system);
             test --local: the same, but installs nothing on the system and skips the packages
  demo       from a fresh machine to an SSH login with keys held in a local KMS, step by step
  kms-start  start a local KMS and print the environment to use it; Enter stops it
  bench      the provider against the raw KMS: signature latency, ssh logins, enumeration,
             requests, throughput (release build; prints figures, takes a few minutes);
             bench p1 p3 ...: only those parts; over TLS, or --http, or --both;
             bench remote [--delay-ms 25] [--keys 1000]: the KMS and sshd behind delaying
             relays, KMS round trips per action, time added to a login, peak memory
  dist       build and check the Linux release artifacts into target/dist: for x86_64 and
             aarch64 the .so (glibc 2.28), .deb and .rpm; the source tarball, the Homebrew tap;
             the signed apt and dnf repositories (COSMIAN_PKCS11_REPO_URL,
             COSMIAN_PKCS11_REPO_SIGNING_KEY)
  dist-macos (macOS) the universal .dylib and cosmian-ssh-agent, signed (the .dylib
             notarized), and a signed, notarized, stapled .pkg of both with the agent's
             LaunchAgent; the signing secrets come from the environment
  dist-homebrew  the source tarball and the Homebrew tap (target/dist/homebrew-tap) alone,
             on any OS with git: what the macOS release workflow installs with brew
  dist-macos-cross  (Linux) the universal .dylib and cosmian-ssh-agent built without
             Apple's SDK and checked (architectures, macOS version, install name, imports,
             exports, no build path), signed self-signed, and the .pkg of them unpacked
  test-macos (macOS) what runs on a Mac: the cryptoki tests against a KMS built there,
             ssh -I logins with Homebrew's OpenSSH (COSMIAN_OPENSSH, default brew's openssh),
             Apple's /usr/bin/ssh-add and ssh through cosmian-ssh-agent
  package-test  dist, then (as root: a throw-away machine) apt-get and dnf against the
             repositories served on 127.0.0.1 (install, logins, upgrade, downgrade, refusals,
             remove), beside the official ckms packages, the arm64 library under qemu-user,
             dist-macos-cross then the macOS signing plumbing on it, the release workflows,
             THIRDPARTY.yml, install
  licenses   regenerate THIRDPARTY.yml (--check: fail if it is out of date)
  install    build the release library, copy it into /usr/local/lib (--prefix DIR)
  fuzz       build the cargo-fuzz targets and run each for SECONDS (default 20): fuzz [SECONDS]";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let result = match command.as_deref() {
        Some("tidy") => tidy::run(),
        Some("test") => match std::env::args().nth(2).as_deref() {
            None => test(false),
            Some("--local") => test(true),
            Some(other) => Err(format!("test: unknown argument {other} (--local)")),
        },
        Some("demo") => demo::run(),
        Some("kms-start") => kms_start(),
        Some("fuzz") => match std::env::args().nth(2).map(|s| s.parse::<u64>()) {
            None => fuzz::run(fuzz::DEFAULT_SECONDS),
            Some(Ok(seconds)) => fuzz::run(seconds),
            Some(Err(e)) => Err(format!("fuzz: SECONDS: {e}")),
        },
        Some("bench") => bench::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("dist") => package::dist().map(drop),
        Some("dist-macos") => package::macos::dist_macos(),
        Some("dist-macos-cross") => package::macos_cross::dist_macos_cross(),
        Some("dist-homebrew") => package::dist_dir().and_then(|dist| package::homebrew::render_tap(&dist)).map(drop),
        Some("test-macos") => test_macos(),
        Some("package-test") => package::test(),
        Some("licenses") => match std::env::args().nth(2).as_deref() {
            None => package::licenses::regenerate(),
            Some("--check") => package::Tools::get().and_then(package::licenses::check),
            Some(other) => Err(format!("licenses: unknown argument {other}")),
        },
        Some("install") => install::install(&std::env::args().skip(2).collect::<Vec<_>>()),
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

/// Runs `scripts/install-test-bed.sh` and exports `COSMIAN_KMS_SERVER` / `COSMIAN_CKMS` /
/// `COSMIAN_OPENSSH` (the current OpenSSH's prefix) to this process (so the test bed does not run the script again) and to every later command.
fn install_test_bed() {
    step("install the test bed", "scripts/install-test-bed.sh");
    let binaries = testbed::install_test_bed();
    // Single-threaded at this point: nothing else reads the environment concurrently.
    let paths = [&binaries.kms_server, &binaries.ckms, &binaries.openssh];
    for (key, path) in testbed::BINARIES_ENV.into_iter().zip(paths) {
        std::env::set_var(key, path);
        println!("    {key}={}", path.display());
    }
}

/// A step that runs `cargo ARGS` in the workspace root, stdio inherited; `Err` when it fails.
fn cargo(what: &str, args: &[&str]) -> Result<(), String> {
    run(&mut cargo_command(what, args))
}

/// The command of a `cargo ARGS` step, announced.
fn cargo_command(what: &str, args: &[&str]) -> Command {
    step(what, &format!("cargo {}", args.join(" ")));
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(testbed::workspace_root());
    command
}

/// cargo's target folder: `CARGO_TARGET_DIR`, else `target/` of the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| testbed::workspace_root().join("target"))
}

/// Runs a command to completion, stdio inherited; `Err` when it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}

/// What a full run changes outside the work tree and `~/.cache/cosmian-pkcs11`, said first.
const SYSTEM_CHANGES: &str = "\
    this run changes the system (run it on a throw-away machine, as CI does; `cargo xtask test --local`
    changes nothing outside the work tree and ~/.cache/cosmian-pkcs11, and skips the packages):
    - installs the Debian packages the scripts/install-*.sh name when missing (OpenSSH client and
      server, OpenSC, PostgreSQL, haproxy, valgrind, lintian, rpm, dnf, qemu-user, systemd, ...),
      and adds dpkg's foreign architecture arm64 (nothing arm64 is installed);
    - rustup targets aarch64-unknown-linux-gnu and the two Apple targets;
    - installs and purges the cosmian-pkcs11 .deb (with dpkg diversions, beside a look-alike ckms
      package, in both orders), installs and removes it from the apt and dnf repositories it serves
      on 127.0.0.1 (no file of /etc/apt is left changed), and links then unlinks its p11-kit module
      in /etc/pkcs11/modules";

/// `cargo xtask test [--local]`: everything, or (`--local`) everything that changes nothing on
/// the system: no Debian package installed (missing ones are named), no package test.
fn test(local: bool) -> Result<(), String> {
    if local {
        // Single-threaded: the install scripts read it.
        std::env::set_var("COSMIAN_PKCS11_NO_SYSTEM_CHANGES", "1");
        println!("local run: nothing is installed on the system; the packages are not tested");
    } else {
        println!("{SYSTEM_CHANGES}");
    }
    // First: a formatting or lint error fails the run before the slow steps (test bed, tests).
    tidy::run()?;
    install_test_bed();
    cargo("build the provider", &["build", "-p", "cosmian-pkcs11"])?;
    // The provider's public-key disk cache of this run, not the developer's (only for the
    // tests: zig keeps its own cache under XDG_CACHE_HOME too).
    let key_cache = testbed::workspace_root().join("target/test-cache");
    let _ = std::fs::remove_dir_all(&key_cache);
    println!("    XDG_CACHE_HOME={}", key_cache.display());
    let every_test = ["test", "--workspace", "--all-targets", "--features", "cosmian-pkcs11/testbed"];
    run(cargo_command("run every test", &every_test).env("XDG_CACHE_HOME", &key_cache))?;
    fuzz::run(fuzz::DEFAULT_SECONDS)?;
    if local {
        return Ok(());
    }
    package::test()
}

/// `cargo xtask test-macos`, run by the macOS release workflow on a Mac (it cannot run on
/// Linux): the library built with Apple's SDK, loaded by the cryptoki tests against a KMS
/// built there, and `ssh -I` logins with every key type through Homebrew's OpenSSH (Apple's
/// `/usr/bin/ssh` refuses third-party providers since macOS 15.2); then the agent built there
/// serving Apple's own `/usr/bin/ssh-add` and `/usr/bin/ssh` (`IdentityAgent`), which is what
/// it is for on macOS. The test bed script takes the OpenSSH from `brew --prefix openssh` on
/// macOS.
fn test_macos() -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err("test-macos runs on macOS (.github/workflows/release-macos.yml runs it)".into());
    }
    install_test_bed();
    cargo("build the provider and the agent", &["build", "-p", "cosmian-pkcs11"])?;
    cargo("the cryptoki tests (dlopen of the .dylib)", &["test", "--features", "testbed", "--test", "cryptoki"])?;
    cargo(
        "ssh -I with Homebrew's OpenSSH",
        &[
            "test",
            "--features",
            "testbed",
            "--test",
            "openssh",
            "--",
            "current::ssh_i_logs_in_with_every_key_type",
            "--exact",
        ],
    )?;
    package::macos::apple_ssh_through_the_agent()
}

fn kms_start() -> Result<(), String> {
    install_test_bed();
    let kms = testbed::KmsServer::start();
    let config = testbed::write_provider_config(kms.dir(), &kms.url(), "");
    println!("\n# KMS {} (log {}, audit log {})", kms.url(), kms.log_path().display(), kms.audit_path().display());
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
