//! The real KMS server, `ckms` and the current OpenSSH: where they are, and getting them built.
//!
//! Owns the call to `scripts/install-test-bed.sh`, which installs the Debian packages the test
//! bed needs and builds/caches `cosmian_kms`, `ckms` and OpenSSH (`scripts/install-openssh.sh`)
//! outside the work tree.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::workspace_root;

/// Paths to the two Cosmian binaries and to the OpenSSH the test bed built.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `cosmian_kms` server.
    pub kms_server: PathBuf,
    /// The `ckms` command-line client.
    pub ckms: PathBuf,
    /// The install prefix of the current OpenSSH built from source (`bin/ssh`, `sbin/sshd`,
    /// `libexec/ssh-pkcs11-helper`...).
    pub openssh: PathBuf,
}

/// The variables naming the binaries, as `scripts/install-test-bed.sh` prints them.
pub const BINARIES_ENV: [&str; 3] = ["COSMIAN_KMS_SERVER", "COSMIAN_CKMS", "COSMIAN_OPENSSH"];

/// The binaries, from env `COSMIAN_KMS_SERVER` / `COSMIAN_CKMS` / `COSMIAN_OPENSSH` when all
/// are set, else from [`install_test_bed`] (run at most once per process).
///
/// # Panics
/// When they cannot be had: a test must fail, never skip, when the real components are missing.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let from_env = |key| std::env::var_os(key).map(PathBuf::from);
        let [kms_server, ckms, openssh] = BINARIES_ENV.map(from_env);
        let binaries = match (kms_server, ckms, openssh) {
            (Some(kms_server), Some(ckms), Some(openssh)) => Binaries { kms_server, ckms, openssh },
            _ => install_test_bed(),
        };
        let ssh = binaries.openssh.join("bin/ssh");
        for path in [&binaries.kms_server, &binaries.ckms, &ssh] {
            assert!(
                path.is_file(),
                "test bed binary {} does not exist: run scripts/install-test-bed.sh, or fix \
                 {}",
                path.display(),
                BINARIES_ENV.join(" / ")
            );
        }
        binaries
    })
}

/// Runs `scripts/install-test-bed.sh` (idempotent: a second run takes a second) and parses
/// the `COSMIAN_KMS_SERVER=` / `COSMIAN_CKMS=` / `COSMIAN_OPENSSH=` lines it prints. Its log
/// goes to our stderr.
///
/// # Panics
/// When the script fails or does not print both paths.
pub fn install_test_bed() -> Binaries {
    let script = workspace_root().join("scripts/install-test-bed.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed ({}): the real KMS server, ckms and OpenSSH are needed, see its log above.\n\
         {stdout}",
        script.display(),
        output.status
    );
    let value = |key: &str| {
        stdout
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{} printed no {key}= line:\n{stdout}", script.display()))
    };
    let [kms_server, ckms, openssh] = BINARIES_ENV.map(value);
    Binaries { kms_server, ckms, openssh }
}
