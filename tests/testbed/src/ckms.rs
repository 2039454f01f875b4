//! The real `ckms` client, pointed at a [`KmsServer`] through a configuration file of its own:
//! the test bed creates keys the way users do.
//!
//! ckms 5.28 finds its configuration through `--conf-path`/`CKMS_CONF_PATH`, then `CKMS_CONF`,
//! then `~/.cosmian/ckms.toml`, then `/etc/cosmian/ckms.toml`; `KMS_DEFAULT_URL` overrides the
//! server URL. Its output is text unless `COSMIAN_KMS_CLI_FORMAT=json`, which the test bed
//! sets to parse identifiers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::process::temp_dir;
use crate::{KmsServer, binaries, clean_command, scrub_env, write_provider_config};

/// The two halves of a key pair, as the KMS names them (the public id is the private id
/// followed by `_pk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The private key's unique identifier.
    pub private_id: String,
    /// The public key's unique identifier.
    pub public_id: String,
}

/// A kind of key pair ckms can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `ckms ec keys create --curve CURVE`: `nist-p256`, `nist-p384`, `nist-p521`, `ed25519`.
    Ec(&'a str),
    /// `ckms rsa keys create --size_in_bits BITS`.
    Rsa(u32),
}

/// Every key type users create for SSH, by a short name (the tests also tag keys with it, so
/// it shows in labels): EC P-256, P-384, P-521, Ed25519, RSA 2048, 3072, 4096.
pub const KEY_TYPES: [(&str, KeyKind<'static>); 7] = [
    ("p256", KeyKind::Ec("nist-p256")),
    ("p384", KeyKind::Ec("nist-p384")),
    ("p521", KeyKind::Ec("nist-p521")),
    ("ed25519", KeyKind::Ec("ed25519")),
    ("rsa2048", KeyKind::Rsa(2048)),
    ("rsa3072", KeyKind::Rsa(3072)),
    ("rsa4096", KeyKind::Rsa(4096)),
];

impl KeyKind<'_> {
    /// The ckms arguments that create such a pair with these tags.
    pub fn ckms_args(&self, tags: &[&str]) -> Vec<String> {
        let (family, option, value) = match self {
            KeyKind::Ec(curve) => ("ec", "--curve", curve.to_string()),
            KeyKind::Rsa(bits) => ("rsa", "--size_in_bits", bits.to_string()),
        };
        let mut args: Vec<String> = [family, "keys", "create", option].map(String::from).into();
        args.push(value);
        for tag in tags {
            args.extend(["--tag".to_owned(), tag.to_string()]);
        }
        args
    }
}

/// `ckms` with its own configuration file, talking to one KMS server.
#[derive(Debug)]
pub struct Ckms {
    dir: TempDir,
    config: PathBuf,
}

impl Ckms {
    /// A client of `kms` (no authentication).
    pub fn new(kms: &KmsServer) -> Ckms {
        Self::with_http_config(kms, "")
    }

    /// A client of `kms` with more `[http_config]` lines (`access_token = "..."`,
    /// `accept_invalid_certs = true`, client certificates...).
    pub fn with_http_config(kms: &KmsServer, extra_http_config_lines: &str) -> Ckms {
        Self::at_url(&kms.url(), extra_http_config_lines)
    }

    /// A client of the KMS at `server_url` (a balancer in front of several servers...), with
    /// more `[http_config]` lines.
    pub fn at_url(server_url: &str, extra_http_config_lines: &str) -> Ckms {
        let dir = temp_dir("ckms-");
        let config = write_provider_config(dir.path(), server_url, extra_http_config_lines);
        Ckms { dir, config }
    }

    /// ckms's configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `ckms ARGS` with this client's configuration and nothing from the caller's environment
    /// that would change it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = clean_command(&binaries().ckms);
        // KMS_DEFAULT_URL and other KMS_* variables override the configuration file.
        scrub_env(&mut command, &["KMS_", "RUST_LOG"]);
        command.env("CKMS_CONF", &self.config).args(args);
        command
    }

    /// Runs `ckms ARGS` to completion, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
    }

    /// Runs `ckms ARGS` with JSON output and returns it; panics with ckms's stderr on failure.
    fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let mut command = self.command(args);
        command.env("COSMIAN_KMS_CLI_FORMAT", "json");
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ckms {} failed ({}):\n{}{stdout}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("ckms {} printed no JSON ({e}):\n{stdout}", args.join(" ")))
    }

    /// Creates the symmetric key whose bytes are the bearer token `token_b64` (base64 of 32
    /// bytes), as the KMS's `--api-token-id` wants it, and returns its id.
    pub fn create_api_token_key(&self, token_b64: &str) -> String {
        let created = self.run(&["sym", "keys", "create", "--bytes-b64", token_b64, "--algorithm", "aes"]);
        let said = String::from_utf8_lossy(&created.stdout);
        assert!(created.status.success(), "ckms sym keys create: {said}{}", String::from_utf8_lossy(&created.stderr));
        said.lines()
            .find_map(|l| l.trim().strip_prefix("Unique identifier:").map(|id| id.trim().to_owned()))
            .unwrap_or_else(|| panic!("no identifier in ckms's answer:\n{said}"))
    }

    /// Creates a key pair with these tags and returns its identifiers.
    pub fn create_key_pair(&self, kind: KeyKind, tags: &[&str]) -> KeyPair {
        let args = kind.ckms_args(tags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let json = self.run_json(&args);
        let id = |key: &str| {
            json[key].as_str().map(str::to_owned).unwrap_or_else(|| panic!("no {key} in ckms's answer: {json}"))
        };
        KeyPair { private_id: id("private_key_unique_identifier"), public_id: id("public_key_unique_identifier") }
    }

    /// `ckms ec keys create --curve CURVE --tag ...` (`nist-p256`, `nist-p384`, `nist-p521`,
    /// `ed25519`).
    pub fn create_ec_key_pair(&self, curve: &str, tags: &[&str]) -> KeyPair {
        self.create_key_pair(KeyKind::Ec(curve), tags)
    }

    /// `ckms rsa keys create --size_in_bits BITS --tag ...`.
    pub fn create_rsa_key_pair(&self, bits: u32, tags: &[&str]) -> KeyPair {
        self.create_key_pair(KeyKind::Rsa(bits), tags)
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), exported with
    /// `ckms ec keys export --key-id ID --key-format pkcs8-pem FILE` (the same command serves
    /// RSA keys).
    pub fn export_public_pkcs8_pem(&self, public_id: &str) -> String {
        let file = self.dir.path().join(format!("{public_id}.pem"));
        let file_arg = file.to_str().expect("temp paths are UTF-8");
        self.run_json(&["ec", "keys", "export", "--key-id", public_id, "--key-format", "pkcs8-pem", file_arg]);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
    }
}
