//! GnuTLS's `p11tool` (Debian's gnutls-bin), the way every GnuTLS program loads a module:
//! `C_Initialize` with `CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK`. It lists the
//! token, every object and the private keys, and `--test-sign` signs with each key type and
//! verifies the signature itself (against the key's parameters and the token's public key);
//! the KMS named by host name, so that the provider has a name to resolve, and `strace -f`
//! counts the threads the process creates: none.

use std::path::Path;
use std::process::Output;

use cosmian_pkcs11_testbed::{KeyKind, provider_lib};

use crate::{Bed, text, threads_created};

/// Every key type GnuTLS 3.7 signs with through PKCS#11.
const KEYS: [(&str, KeyKind); 5] = [
    ("p256", KeyKind::Ec("nist-p256")),
    ("p384", KeyKind::Ec("nist-p384")),
    ("p521", KeyKind::Ec("nist-p521")),
    ("ed25519", KeyKind::Ec("ed25519")),
    ("rsa2048", KeyKind::Rsa(2048)),
];

impl Bed {
    /// `p11tool --provider <the provider> ARGS`, with `config`.
    fn p11tool(&self, config: &Path, args: &[&str]) -> std::process::Command {
        let mut command = self.command_with("p11tool", config);
        command.arg("--provider").arg(provider_lib()).args(args);
        command
    }

    /// Runs p11tool, which must succeed; its stdout and stderr (where `--test-sign` reports).
    fn p11tool_ok(&self, args: &[&str]) -> (String, String) {
        let out =
            self.run(&mut self.p11tool(&self.config, args), "install gnutls-bin with scripts/install-test-bed.sh");
        assert!(out.status.success(), "p11tool {args:?}: {}", text(&out));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn p11tool_lists_and_signs_with_every_key_type() {
    let bed = Bed::new(&KEYS);

    let (tokens, _) = bed.p11tool_ok(&["--list-tokens"]);
    let label = format!("Label: Cosmian KMS {}", bed.kms_authority());
    assert!(tokens.contains(&label), "no {label:?} in:\n{tokens}");

    let (all, _) = bed.p11tool_ok(&["--list-all", "pkcs11:"]);
    let (private, _) = bed.p11tool_ok(&["--list-privkeys", "pkcs11:"]);
    for key in &bed.keys {
        let id = format!("id={}", key.uri_id());
        assert_eq!(all.matches(&id).count(), 2, "{}: a private and a public object in:\n{all}", key.name);
        assert_eq!(private.matches(&id).count(), 1, "{}: one private key in:\n{private}", key.name);
    }
    assert_eq!(private.matches("Type: Private key").count(), KEYS.len(), "{private}");

    for key in &bed.keys {
        let url = format!("pkcs11:id={};type=private", key.uri_id());
        // GnuTLS names Ed25519 signatures after SHA-512 (the hash inside EdDSA).
        let hash = if key.name == "ed25519" { "SHA512" } else { "SHA256" };
        let (_, said) = bed.p11tool_ok(&["--test-sign", "--hash", hash, &url]);
        // p11tool signs, then verifies with the key's parameters and with the token's public
        // key: each step prints "ok", a failed one stops with an error.
        assert!(said.matches("... ok").count() == 3, "{}: p11tool --test-sign {url}:\n{said}", key.name);
        println!("p11tool --test-sign, {}:\n{said}", key.name);
    }
}

/// GnuTLS forbids threads; pkcs11-tool does not: the same listing, the KMS named `localhost`.
#[test]
fn no_thread_is_created_when_the_caller_forbids_it() {
    let bed = Bed::new(&KEYS[..1]);
    let by_name = bed.config_by_host_name();
    let listed = |out: &Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", text(out));
        let id = bed.keys[0].uri_id();
        let hex_id = bed.keys[0].hex_id();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&id) || stdout.contains(&hex_id), "{what} lists no key:\n{stdout}");
    };

    let (threads, out) =
        threads_created(bed.p11tool(&by_name, &["--list-all", "pkcs11:"]), &bed.dir.join("p11tool.strace"));
    listed(&out, "p11tool --list-all");
    assert_eq!(threads, 0, "p11tool: the provider created threads though GnuTLS forbids it");

    // The count can fail: a caller that allows threads gets the lookup on a thread of its own.
    let mut pkcs11_tool = bed.command_with("pkcs11-tool", &by_name);
    pkcs11_tool.arg("--module").arg(provider_lib()).arg("--list-objects");
    let (threads, out) = threads_created(pkcs11_tool, &bed.dir.join("pkcs11-tool.strace"));
    listed(&out, "pkcs11-tool --list-objects");
    assert!(threads >= 1, "pkcs11-tool: no lookup thread seen, so the count above proves nothing");
    println!("threads created: p11tool (threads forbidden) 0, pkcs11-tool (allowed) {threads}");
}
