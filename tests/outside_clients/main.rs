//! PKCS#11 clients written by others, as their users run them, against the real KMS: OpenSC's
//! `pkcs11-tool` and `python-pkcs11` (`opensc.rs`), GnuTLS's `p11tool` (`gnutls.rs`), OpenSSL
//! with libp11's engine (`openssl.rs`) and NSS's `modutil`/`certutil` (`nss.rs`). Every
//! signature they make is verified outside the provider: with RustCrypto or OpenSSL against
//! the public key ckms exports, or by the client's own verification. The clients are Debian
//! packages installed by scripts/install-test-bed.sh; a missing one fails the test.

mod gnutls;
mod nss;
mod opensc;
mod openssl;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cosmian_pkcs11_testbed::{Ckms, KeyKind, KmsServer, clean_command, write_provider_config};

pub(crate) use cosmian_pkcs11_testbed::output_text as text;

/// One key pair of the bed.
pub(crate) struct Key {
    /// The short name of its type (`p256`, `rsa2048`...).
    pub name: &'static str,
    /// The private key's id: the PKCS#11 `CKA_ID` of both halves.
    pub private_id: String,
    /// The public key as ckms exports it (SubjectPublicKeyInfo, PEM), in a file.
    pub public_pem: PathBuf,
}

impl Key {
    /// `CKA_ID` percent-encoded, for a `pkcs11:` URI (RFC 7512; upper-case hex, as RFC 3986
    /// recommends and GnuTLS prints it).
    pub fn uri_id(&self) -> String {
        self.private_id.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    /// `CKA_ID` in hex.
    pub fn hex_id(&self) -> String {
        hex(self.private_id.as_bytes())
    }
}

/// A KMS holding key pairs tagged `ssh-auth`, and a provider configuration pointing at it.
pub(crate) struct Bed {
    kms: KmsServer,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub keys: Vec<Key>,
}

impl Bed {
    /// A KMS with one key pair of each kind, created by ckms as users do.
    pub fn new(kinds: &[(&'static str, KeyKind)]) -> Bed {
        let kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let keys = kinds
            .iter()
            .map(|(name, kind)| {
                let pair = ckms.create_key_pair(*kind, &["ssh-auth"]);
                let public_pem = dir.join(format!("{name}.pub.pem"));
                std::fs::write(&public_pem, ckms.export_public_pkcs8_pem(&pair.public_id)).unwrap();
                Key { name, private_id: pair.private_id, public_pem }
            })
            .collect();
        let config = write_provider_config(&dir, &kms.url(), "");
        Bed { kms, dir, config, keys }
    }

    /// The key of that type.
    pub fn key(&self, name: &str) -> &Key {
        self.keys.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("no {name} key in the bed"))
    }

    /// The KMS's `host:port` as the token label shows it.
    pub fn kms_authority(&self) -> String {
        self.kms.url().split("://").nth(1).unwrap().trim_end_matches('/').to_owned()
    }

    /// A provider configuration that names the KMS by host name (`localhost`), so that
    /// the provider has a name to look up.
    pub fn config_by_host_name(&self) -> PathBuf {
        let dir = self.dir.join("by-name");
        std::fs::create_dir_all(&dir).unwrap();
        write_provider_config(&dir, &self.kms.url().replace("127.0.0.1", "localhost"), "")
    }

    /// `program` with the provider's configuration in its environment, and its log here.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_with(program, &self.config)
    }

    /// [`Bed::command`] with another configuration file.
    pub fn command_with(&self, program: impl AsRef<OsStr>, config: &Path) -> Command {
        let mut command = clean_command(program);
        command
            .env("COSMIAN_KMS_CLI_CONF", config)
            .env("COSMIAN_PKCS11_LOGGING_FOLDER", self.dir.join("logs"))
            .env("COSMIAN_PKCS11_LOGGING_LEVEL", "debug");
        command
    }

    /// Runs a client; panics with `hint` when it cannot start, and when it crashed.
    pub fn run(&self, command: &mut Command, hint: &str) -> Output {
        let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?} ({e}): {hint}"));
        assert!(out.status.code().is_some(), "{command:?} crashed: {}", text(&out));
        out
    }

    /// `openssl dgst -verify` of `signature` over `message` with the key's exported public
    /// key (`-sha256`, or none for Ed25519, which hashes itself): OpenSSL's own answer.
    pub fn openssl_verifies(&self, key: &Key, message: &Path, signature: &Path) -> bool {
        let mut command = Command::new("openssl");
        if key.name == "ed25519" {
            command.args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"]).arg(&key.public_pem);
            command.arg("-in").arg(message).arg("-sigfile").arg(signature);
        } else {
            command.args(["dgst", "-sha256", "-verify"]).arg(&key.public_pem);
            command.arg("-signature").arg(signature).arg(message);
        }
        let out = command.output().expect("openssl");
        let said = text(&out);
        out.status.success() && (said.contains("Verified OK") || said.contains("Signature Verified Successfully"))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Threads a command's process created, counted by `strace -f`: the `clone`/`clone3` calls
/// with `CLONE_THREAD` (a thread, not a child process). Returns the command's output too.
pub(crate) fn threads_created(command: Command, trace: &Path) -> (usize, Output) {
    let mut strace = Command::new("strace");
    strace.args(["-f", "-qq", "-e", "trace=clone,clone3", "-o"]).arg(trace).arg(command.get_program());
    strace.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => strace.env(key, value),
            None => strace.env_remove(key),
        };
    }
    let out = strace
        .output()
        .unwrap_or_else(|e| panic!("cannot run strace ({e}): install it with scripts/install-test-bed.sh"));
    let calls = std::fs::read_to_string(trace).unwrap();
    (calls.lines().filter(|l| l.contains("CLONE_THREAD")).count(), out)
}
