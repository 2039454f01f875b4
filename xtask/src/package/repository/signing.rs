//! The repository signing key, in a private `GNUPGHOME` that lives as long as the key: the
//! release key imported from `COSMIAN_PKCS11_REPO_SIGNING_KEY` (an armoured private key, the
//! release workflow's secret), or a throw-away RSA 4096 key made on the spot (CI, tests,
//! local builds). Never written anywhere else; its `gpg-agent` is stopped when it goes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::super::{Tools, capture};

/// The environment variable holding the release's armoured private key.
pub const KEY_ENV: &str = "COSMIAN_PKCS11_REPO_SIGNING_KEY";

pub struct SigningKey {
    home: tempfile::TempDir,
    /// The primary key's fingerprint, 40 hex digits.
    pub fingerprint: String,
    /// Where it comes from, for the log: "the release key (...)" or "a throw-away key".
    pub origin: &'static str,
}

impl SigningKey {
    /// The release key when `COSMIAN_PKCS11_REPO_SIGNING_KEY` is set; a throw-away key when it
    /// is not. Set but empty (a workflow whose secret is missing), or not set in a GitHub
    /// workflow run for a tag (a release), is an error: a release is never signed by a
    /// throw-away key by mistake.
    pub fn for_dist(tools: &Tools) -> Result<SigningKey, String> {
        match std::env::var(KEY_ENV) {
            Err(_) if std::env::var("GITHUB_REF_TYPE").as_deref() == Ok("tag") => {
                Err(format!("a release (a GitHub workflow run for a tag) is signed with {KEY_ENV}, which is not set"))
            }
            Err(_) => SigningKey::throw_away(tools, "cosmian-pkcs11 throw-away repository key"),
            Ok(armoured) if armoured.trim().is_empty() => Err(format!("{KEY_ENV} is set but empty")),
            Ok(armoured) => SigningKey::import(tools, &armoured),
        }
    }

    /// A new RSA 4096 signing key without passphrase, named `name`.
    pub fn throw_away(tools: &Tools, name: &str) -> Result<SigningKey, String> {
        let key = SigningKey::empty("a throw-away key")?;
        let user_id = format!("{name} <tech@cosmian.com>");
        capture(key.gpg(tools).args([
            "--passphrase",
            "",
            "--quick-generate-key",
            &user_id,
            "rsa4096",
            "sign",
            "never",
        ]))?;
        key.with_fingerprint(tools)
    }

    /// The armoured private key `armoured`, imported (through stdin: it is never on a command
    /// line nor in a file).
    fn import(tools: &Tools, armoured: &str) -> Result<SigningKey, String> {
        let key = SigningKey::empty("the release key, from COSMIAN_PKCS11_REPO_SIGNING_KEY")?;
        let mut child = key
            .gpg(tools)
            .arg("--import")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run gpg: {e}"))?;
        child.stdin.take().expect("piped").write_all(armoured.as_bytes()).map_err(|e| format!("gpg --import: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("gpg --import: {e}"))?;
        if !out.status.success() {
            // gpg's messages name keys, never their secret parts.
            return Err(format!("gpg --import of {KEY_ENV} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        key.with_fingerprint(tools)
    }

    fn empty(origin: &'static str) -> Result<SigningKey, String> {
        let home = tempfile::Builder::new().prefix("gnupg-").tempdir().map_err(|e| e.to_string())?;
        Ok(SigningKey { home, fingerprint: String::new(), origin })
    }

    /// The fingerprint of the one secret key the home holds.
    fn with_fingerprint(mut self, tools: &Tools) -> Result<SigningKey, String> {
        let listing = capture(self.gpg(tools).args(["--with-colons", "--list-secret-keys"]))?;
        let secret_keys = listing.lines().filter(|line| line.starts_with("sec:")).count();
        let primary = listing
            .lines()
            .skip_while(|line| !line.starts_with("sec:"))
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.split(':').nth(8));
        match primary {
            Some(fingerprint) if secret_keys == 1 && fingerprint.len() == 40 => {
                self.fingerprint = fingerprint.to_owned();
                Ok(self)
            }
            _ => Err(format!("expected exactly one secret key, gpg lists:\n{listing}")),
        }
    }

    /// The last 16 hex digits: the key ID apt and rpm print.
    pub fn key_id(&self) -> &str {
        &self.fingerprint[self.fingerprint.len() - 16..]
    }

    /// `gpg --batch` on this key's home, the tools on `PATH`.
    pub fn gpg(&self, tools: &Tools) -> Command {
        let mut gpg = tools.command("gpg");
        gpg.env("GNUPGHOME", self.home.path()).args(["--batch", "--pinentry-mode", "loopback", "--no-tty"]);
        gpg
    }

    /// The public key, binary (`armour` false: a keyring for apt's `Signed-By`) or armoured
    /// (for rpm and dnf's `gpgkey`).
    pub fn export_public(&self, tools: &Tools, armour: bool) -> Result<Vec<u8>, String> {
        let mut gpg = self.gpg(tools);
        gpg.arg("--export");
        if armour {
            gpg.arg("--armor");
        }
        let out = gpg.arg(&self.fingerprint).stdin(Stdio::null()).output().map_err(|e| format!("gpg --export: {e}"))?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(format!("gpg --export failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(out.stdout)
    }

    /// Signs `file` into `signature`: clear-signed (apt's `InRelease`) or a detached armoured
    /// signature (`Release.gpg`, `repomd.xml.asc`). SHA-512, which apt and RHEL 9's policies take.
    pub fn sign(&self, tools: &Tools, file: &Path, signature: &Path, clear: bool) -> Result<(), String> {
        let mut gpg = self.gpg(tools);
        gpg.args(["--yes", "--digest-algo", "SHA512", "--local-user", &self.fingerprint, "--output"]).arg(signature);
        gpg.arg(if clear { "--clearsign" } else { "--detach-sign" });
        if !clear {
            gpg.arg("--armor");
        }
        capture(gpg.arg(file)).map(drop)
    }

    /// `rpmsign --addsign` on each of `rpms`, in place, with `%_gpg_name` this key: a package
    /// signed by another key gets this key's signature instead.
    pub fn sign_rpms(&self, tools: &Tools, rpms: &[impl AsRef<Path>]) -> Result<(), String> {
        if rpms.is_empty() {
            return Ok(());
        }
        let mut rpmsign = tools.command("rpmsign");
        rpmsign
            .env("GNUPGHOME", self.home.path())
            .arg("--addsign")
            .args(["--define", &format!("_gpg_name {}", self.fingerprint)])
            .args(["--define", "__gpg /usr/bin/gpg"])
            .args(["--define", "_gpg_digest_algo sha512"]);
        for rpm in rpms {
            rpmsign.arg(rpm.as_ref());
        }
        capture(&mut rpmsign).map(drop)
    }
}

impl Drop for SigningKey {
    /// Stops the `gpg-agent` gpg started for this home (then the folder goes).
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
