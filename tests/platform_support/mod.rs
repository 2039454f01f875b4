//! Shared by the `platform_*` tests: running a real PKCS#11 client (`ssh-keygen -D`) on the
//! provider with a configuration of the test's own, reading the provider's trace-level log,
//! checking that no secret reached it, and the kernel keyring entries the tests store.

#![allow(dead_code)] // Each test binary uses part of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cosmian_pkcs11_testbed::{clean_command, provider_lib, ssh_keygen_d};

pub const LOG_FILE: &str = "cosmian-pkcs11.log";

/// The provider's environment: this configuration file, this log folder, trace level.
pub fn provider_env(config: &Path, logs: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("COSMIAN_KMS_CLI_CONF", config.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "trace".into()),
    ]
}

/// `ssh-keygen -D lib` with the provider's environment: the keys the provider offers.
pub fn keygen_d(config: &Path, logs: &Path) -> Output {
    let out =
        ssh_keygen_d(&provider_lib()).envs(provider_env(config, logs)).output().expect("cannot run ssh-keygen -D");
    assert!(out.status.code().is_some(), "ssh-keygen -D crashed: {}", text(&out));
    out
}

/// The provider's log in `logs` ("" when none was written).
pub fn provider_log(logs: &Path) -> String {
    std::fs::read_to_string(logs.join(LOG_FILE)).unwrap_or_default()
}

/// A case of a test: a folder under `parent` holding a provider configuration for `url` with
/// these `[http_config]` lines, and the provider's log. Returns (config, log folder).
pub fn case(parent: &Path, name: &str, url: &str, http_config_lines: &str) -> (PathBuf, PathBuf) {
    let dir = folder(parent, name);
    let config = cosmian_pkcs11_testbed::write_provider_config(&dir, url, http_config_lines);
    (config, dir)
}

/// A fresh folder under `parent`.
pub fn folder(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that the provider's log in `logs` was written at trace level and holds none of
/// `secrets`.
pub fn assert_log_is_trace_and_clean(logs: &Path, secrets: &[&str]) {
    let log = provider_log(logs);
    assert!(log.contains(" TRACE "), "the log at {} is not at trace level:\n{log}", logs.display());
    for secret in secrets {
        assert!(!secret.is_empty() && !log.contains(secret), "a secret reached the log at {}", logs.display());
    }
}

/// Runs a short command to completion and panics with its output when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    out
}

/// A `user` key in the kernel's user keyring (`keyctl padd user DESCRIPTION @u`, the
/// documented command), invalidated when dropped.
pub struct KeyringEntry(String);

impl KeyringEntry {
    pub fn add(service: &str, account: &str, secret: &str) -> Self {
        let mut child = clean_command("keyctl")
            .args(["padd", "user", &format!("{service}:{account}"), "@u"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run keyctl (Debian package keyutils)");
        use std::io::Write;
        // As users do: `keyctl padd ... <<< "$TOKEN"` adds a newline, which the provider trims.
        child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "keyctl padd: {}", text(&out));
        KeyringEntry(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for KeyringEntry {
    fn drop(&mut self) {
        let _ = clean_command("keyctl").args(["invalidate", &self.0]).output();
    }
}
