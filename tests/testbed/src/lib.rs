//! The test bed of `cosmian-pkcs11`: the real components the provider works with, started and
//! torn down for one test (or for the demo). Never mocks.
//!
//! - [`binaries`]: the Cosmian KMS server, `ckms` and the current OpenSSH, built and cached by
//!   `scripts/install-test-bed.sh`.
//! - [`KmsServer`]: a throw-away KMS on a free port, with its own SQLite database and logs.
//! - [`Ckms`]: the real `ckms` client pointed at such a server, to create keys as users do;
//!   [`create_p256_key_pairs`] for many keys in one request.
//! - [`TestCa`]: a test CA and a server certificate for a KMS started with TLS.
//! - [`CountingProxy`]: counts the connections and HTTP requests a client makes to the KMS.
//! - [`DelayRelay`]: puts a chosen distance (one-way delay) between a client and a server on
//!   loopback, and counts the round trips the client pays.
//! - [`Sshd`], [`ssh_command`], [`SshAgent`], [`ssh_keygen_d`]: OpenSSH, on a throw-away
//!   `sshd`, with a scrubbed environment; [`OpenSsh`]: Debian's 9.2 or the current release.
//! - [`CosmianAgent`]: the project's own `cosmian-ssh-agent`, in the foreground.
//! - [`Postgres`], [`Haproxy`]: a KMS cluster, KMS servers on one PostgreSQL behind haproxy.
//! - [`function_list`], [`cryptoki_session`]: the provider loaded in the test's own process.
//! - [`run_in_child`], [`body_in_child`], [`ask_parent`]: a test run again in a child process
//!   of its executable, with the provider's environment (a test never sets its own).
//! - [`CallZeroed`]: a C function called with zeroed arguments, for the C ABI tests.
//! - [`docs`]: the shell blocks of the documentation that tests run as written.
//! - This module: free ports, where the provider library is, and its configuration file.
//!
//! Every child process is killed when its owner is dropped, and cannot outlive the test
//! process (see the `process` module).

mod agent;
mod binaries;
mod child;
mod ckms;
mod client;
mod cluster;
pub mod docs;
mod kmip;
mod kms;
mod pki;
mod process;
mod proxy;
mod relay;
mod ssh;
mod zeroed;

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use agent::CosmianAgent;
pub use binaries::{BINARIES_ENV, Binaries, binaries, install_test_bed};
pub use child::{ask_parent, body_in_child, child_command, child_part, run_in_child, run_in_child_serving};
pub use ckms::{Ckms, KEY_TYPES, KeyKind, KeyPair};
pub use client::{cryptoki_session, function_list};
pub use cluster::{Haproxy, HaproxySession, Postgres};
pub use kmip::{copy_key_pairs, create_p256_key_pairs, settled_audit_events};
pub use kms::{AuditEvent, KmsServer};
pub use pki::{TestCa, X509Version};
pub use proxy::CountingProxy;
pub use relay::{DelayRelay, RoundTrips, THREAD_NAME as RELAY_THREAD};
pub use ssh::{OpenSsh, SshAgent, SshCommand, Sshd, current_user, ssh_command, ssh_keygen_d};
pub use zeroed::CallZeroed;

/// A command for `program` whose environment holds none of the provider's configuration
/// variables (`COSMIAN_*`, `CKMS_CONF*`) and no `SSH_AUTH_SOCK`, so that nothing leaks from the
/// caller's environment: tests add what they need explicitly.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    scrub_env(&mut command, &["COSMIAN_", "CKMS_CONF", "SSH_AUTH_SOCK"]);
    command
}

/// Removes from `command`'s environment every inherited variable whose name starts with one of
/// `prefixes`.
pub(crate) fn scrub_env(command: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        if prefixes.iter().any(|prefix| key.to_string_lossy().starts_with(prefix)) {
            command.env_remove(key);
        }
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("cannot bind 127.0.0.1:0").port()
}

/// The root of the cargo workspace (the folder holding `scripts/`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Writes a ckms-style TOML configuration for the provider into `dir` and returns its path:
/// `[http_config]`, `server_url`, then `extra_http_config_lines` (more `[http_config]` keys such
/// as `access_token = "..."`; a later `[section]` is allowed too).
///
/// The provider finds it through env `COSMIAN_KMS_CLI_CONF`; it also reads
/// `COSMIAN_PKCS11_SSH_KEY_TAG` (default `ssh-auth`), `COSMIAN_PKCS11_LOGGING_LEVEL` and
/// `COSMIAN_PKCS11_LOGGING_FOLDER`.
pub fn write_provider_config(dir: &Path, server_url: &str, extra_http_config_lines: &str) -> PathBuf {
    write_config(dir, "", server_url, extra_http_config_lines)
}

/// [`write_provider_config`] in PIN mode (`pkcs11_use_pin_as_access_token = true` at the top
/// level, no token): the token requires a login, and the PIN is the KMS access token.
pub fn write_pin_mode_config(dir: &Path, server_url: &str, extra_http_config_lines: &str) -> PathBuf {
    write_config(dir, "pkcs11_use_pin_as_access_token = true\n", server_url, extra_http_config_lines)
}

fn write_config(dir: &Path, top_level_lines: &str, server_url: &str, extra_http_config_lines: &str) -> PathBuf {
    let path = dir.join("kms.toml");
    let mut toml = format!("{top_level_lines}[http_config]\nserver_url = \"{server_url}\"\n");
    if !extra_http_config_lines.is_empty() {
        toml.push_str(extra_http_config_lines.trim_end());
        toml.push('\n');
    }
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The provider library, see [`find_provider_lib`].
///
/// # Panics
/// When the library does not exist: build it first (`cargo build -p cosmian-pkcs11`).
pub fn provider_lib() -> PathBuf {
    find_provider_lib().unwrap_or_else(|why| panic!("{why}"))
}

/// The provider library: env `COSMIAN_PKCS11_LIB` if set; else the one cargo built next to the
/// running executable (`target/<profile>/` for a binary, `target/<profile>/deps/` for a test);
/// else `target/debug/` of the workspace (or of `CARGO_TARGET_DIR`). `Err` says where it
/// looked.
pub fn find_provider_lib() -> Result<PathBuf, String> {
    if let Some(lib) = std::env::var_os("COSMIAN_PKCS11_LIB") {
        let lib = PathBuf::from(lib);
        return if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!("COSMIAN_PKCS11_LIB={} does not exist", lib.display()))
        };
    }
    let file = format!("{}cosmian_pkcs11{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let exe_dir = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.to_owned()));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let candidates: Vec<PathBuf> = exe_dir
        .iter()
        .flat_map(|dir| [dir.join(&file), dir.join("..").join(&file)])
        .chain([target.join("debug").join(&file)])
        .collect();
    candidates.iter().find(|path| path.is_file()).cloned().ok_or_else(|| {
        format!(
            "the provider library is not built (looked for {candidates:?}): run \
             `cargo build -p cosmian-pkcs11`, or set COSMIAN_PKCS11_LIB"
        )
    })
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_config_is_ckms_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_provider_config(dir.path(), "http://127.0.0.1:1", "access_token = \"t\"");
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "[http_config]\nserver_url = \"http://127.0.0.1:1\"\naccess_token = \"t\"\n"
        );
    }

    #[test]
    fn free_ports_can_be_bound() {
        TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    }
}
