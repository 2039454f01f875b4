//! `cargo xtask <command>`: the project's chores, in Rust so that they run the same everywhere.
//! The commands are [`Task`]'s variants, parsed by clap: `cargo xtask help` lists them, one
//! line each. Each lives in its own module: `tidy`, `test` (here), `demo`, `kms-start` (here),
//! `fuzz`, `bench`, `install`, and the release artifacts and their tests in `package`.

mod bench;
mod demo;
mod fuzz;
mod install;
mod package;
mod tidy;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use cosmian_pkcs11_testbed as testbed;

/// `cargo xtask <command>`: `cargo xtask help` lists the commands, `cargo xtask help <command>`
/// says more of one.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "The chores of cosmian-pkcs11: tests, packages, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the formatting, lint everything with clippy, check the docs against the code
    ///
    /// rustfmt (workspace and fuzz/), clippy --all-features with warnings denied, the module
    /// edges of src/, the licence and source policy (cargo-deny), the docs against the code
    /// (settings, environment variables, links, shell blocks).
    Tidy,
    /// Tidy, the test bed, every test of the workspace, the fuzz targets and the packages
    ///
    /// Says first what it changes on the system (Debian packages, the .deb installed and
    /// purged, repositories on 127.0.0.1): run it on a throw-away machine, as CI does.
    Test {
        /// Change nothing outside the work tree and ~/.cache/cosmian-pkcs11: install no Debian
        /// package (missing ones are named), skip the packages
        #[arg(long)]
        local: bool,
    },
    /// From a fresh machine to an SSH login with keys held in a local KMS, step by step
    Demo,
    /// Start a local KMS and print the environment to use it; Enter stops it
    KmsStart,
    /// The provider against the raw KMS: latency, logins, enumeration, requests, throughput
    ///
    /// A release build; prints figures, takes a few minutes. `bench p1 p3 ...`: only those
    /// parts; over TLS, or --http, or --both; `bench remote [--delay-ms 25] [--keys 1000]`: the
    /// KMS and sshd behind delaying relays, KMS round trips per action, time added to a login,
    /// peak memory.
    Bench {
        /// Parts (p1 ... p6, remote) and their options (--http, --tls, --both, --delay-ms MS,
        /// --keys N)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Linux release artifacts into target/dist, built and checked
    ///
    /// For x86_64 and aarch64 the .so (glibc 2.28) and the agent, .deb and .rpm; the source
    /// tarball, the Homebrew tap; the signed apt and dnf repositories (COSMIAN_PKCS11_REPO_URL,
    /// COSMIAN_PKCS11_REPO_SIGNING_KEY), the signed checksums.
    Dist,
    /// (macOS) The universal .dylib and agent, signed and notarized, and the signed .pkg
    ///
    /// The signing secrets come from the environment.
    DistMacos,
    /// The source tarball and the Homebrew tap alone (target/dist/homebrew-tap), on any OS
    DistHomebrew,
    /// (Linux) The universal .dylib and agent built without Apple's SDK, checked, self-signed
    ///
    /// Architectures, macOS version, install name, imports, exports, no build path; signed with
    /// a self-signed certificate, and the .pkg of them unpacked.
    DistMacosCross,
    /// (macOS) What runs on a Mac: cryptoki tests, ssh -I with Homebrew's OpenSSH, Apple's ssh
    /// through the agent
    TestMacos,
    /// Dist, then (as root: a throw-away machine) every artifact installed and used
    ///
    /// apt-get and dnf against the repositories served on 127.0.0.1 (install, logins, upgrade,
    /// downgrade, refusals, remove), beside the official ckms packages, the arm64 library under
    /// qemu-user, dist-macos-cross and the macOS signing plumbing, the release workflow,
    /// THIRDPARTY.yml, install.
    PackageTest,
    /// Regenerate THIRDPARTY.yml
    Licenses {
        /// Fail if THIRDPARTY.yml is out of date instead of writing it
        #[arg(long)]
        check: bool,
    },
    /// Build the release library and agent, copy them into /usr/local (lib/, bin/)
    Install {
        /// Another prefix than /usr/local (DIR/lib, DIR/bin)
        #[arg(long, value_name = "DIR")]
        prefix: Option<PathBuf>,
    },
    /// Build the cargo-fuzz targets and run each for SECONDS
    Fuzz {
        #[arg(default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Tidy => tidy::run(),
        Task::Test { local } => test(local),
        Task::Demo => demo::run(),
        Task::KmsStart => kms_start(),
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Bench { args } => bench::run(&args),
        Task::Dist => package::dist().map(drop),
        Task::DistMacos => package::macos::dist_macos(),
        Task::DistMacosCross => package::macos_cross::dist_macos_cross(),
        Task::DistHomebrew => package::dist_dir().and_then(|dist| package::homebrew::render_tap(&dist)).map(drop),
        Task::TestMacos => test_macos(),
        Task::PackageTest => package::test(),
        Task::Licenses { check: false } => package::licenses::regenerate(),
        Task::Licenses { check: true } => package::Tools::get().and_then(package::licenses::check),
        Task::Install { prefix } => install::install(prefix),
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
    let paths = [&binaries.kms_server, &binaries.ckms, &binaries.openssh];
    for (key, path) in testbed::BINARIES_ENV.into_iter().zip(paths) {
        // SAFETY: called by xtask's main thread before it starts any thread of its own (the
        // commands it ran so far have ended), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var(key, path) };
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
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed: {status}")) }
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
        // SAFETY: the first thing xtask's main thread does, no other thread exists yet. (The
        // install scripts it runs read it.)
        unsafe { std::env::set_var("COSMIAN_PKCS11_NO_SYSTEM_CHANGES", "1") };
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
    // The README's first command, as a user runs it: it fails when a login fails.
    demo::run()?;
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
        return Err("test-macos runs on macOS (.github/workflows/release.yml runs it)".into());
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
