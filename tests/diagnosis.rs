//! `cosmian-ssh-agent check`, the diagnosis users run, against the real KMS: each failure it
//! names (no configuration file, a broken one, the KMS down, an untrusted certificate, a
//! refused token, no key with the tag) gives status 1, a `FAIL` line saying what and a `fix:`
//! line saying what to do; a working set-up lists the keys with their types. No secret is
//! ever printed.

use std::path::Path;
use std::process::Output;

use base64::Engine;
use cosmian_pkcs11_testbed::docs::shell_block;
use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, TestCa, clean_command, output_text as text, write_provider_config,
};

const AGENT: &str = env!("CARGO_BIN_EXE_cosmian-ssh-agent");

/// `check` with this configuration file (or none: a home without `~/.cosmian`) and tag.
fn check(config: Option<&Path>, tag: &str, home: &Path) -> Output {
    let mut command = clean_command(AGENT);
    command
        .arg("check")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("COSMIAN_PKCS11_LOGGING_FOLDER", home.join("logs"))
        .env("COSMIAN_PKCS11_SSH_KEY_TAG", tag);
    if let Some(config) = config {
        command.env("COSMIAN_KMS_CLI_CONF", config);
    }
    command.output().unwrap()
}

/// The check failed, its `FAIL` line contains `what`, and the fix that follows contains `fix`.
fn assert_fails(out: &Output, what: &str, fix: &str) {
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let failed = said.lines().position(|l| l.starts_with("FAIL") && l.contains(what));
    let failed = failed.unwrap_or_else(|| panic!("no FAIL line with {what:?}:\n{said}"));
    let next = said.lines().nth(failed + 1).unwrap_or_default();
    assert!(next.trim_start().starts_with("fix:") && next.contains(fix), "fix {fix:?} expected after:\n{said}");
}

#[test]
fn each_failure_is_named_with_its_fix_and_a_working_set_up_lists_the_keys() {
    assert!(!Path::new("/etc/cosmian/ckms.toml").exists(), "a system-wide configuration would be found");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();

    // No file at all.
    assert_fails(&check(None, "ssh-auth", home), "no configuration file", "~/.cosmian/kms.toml");

    // A file that is not TOML.
    let broken = home.join("broken.toml");
    std::fs::write(&broken, "[http_config\nserver_url = 1\n").unwrap();
    assert_fails(&check(Some(&broken), "ssh-auth", home), "is not valid TOML", "correct the file");

    // A KMS that is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = home.join("down");
    std::fs::create_dir_all(&dir).unwrap();
    let down = write_provider_config(&dir, &format!("http://127.0.0.1:{closed}"), "");
    assert_fails(&check(Some(&down), "ssh-auth", home), "KMS unreachable", "check that the KMS runs");

    // A KMS over TLS whose CA the configuration does not name; then named.
    let ca = TestCa::new();
    let tls_kms = KmsServer::start_with_args(&ca.kms_args().iter().map(String::as_str).collect::<Vec<_>>());
    let dir = home.join("tls");
    std::fs::create_dir_all(dir.join("trusted")).unwrap();
    let untrusted = write_provider_config(&dir, &tls_kms.url(), "");
    assert_fails(&check(Some(&untrusted), "ssh-auth", home), "invalid peer certificate", "verified_cert");
    let trusted = write_provider_config(&dir.join("trusted"), &tls_kms.url(), &ca.verified_cert_line());
    let out = check(Some(&trusted), "nothing-tagged-so", home);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    KMS reached"), "{}", text(&out));
    // ... where no key carries the tag.
    assert_fails(&out, "no active key pair tagged `nothing-tagged-so`", "--tag nothing-tagged-so");

    // A KMS with keys, then with bearer-token authentication and a wrong token.
    let mut kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let p256 = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["diagnosed"]);
    let ed25519 = ckms.create_key_pair(KeyKind::Ec("ed25519"), &["diagnosed"]);
    let dir = home.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let good = write_provider_config(&dir, &kms.url(), "");
    let out = check(Some(&good), "diagnosed", home);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(said.contains("ok    2 key pair(s) tagged `diagnosed`"), "{said}");
    for (kind, key) in [("EC P-256", &p256), ("Ed25519", &ed25519)] {
        assert!(said.lines().any(|l| l.contains(kind) && l.contains(&key.private_id)), "{kind}:\n{said}");
    }
    // The user guide's command, run as written by bash, says the same.
    let block = shell_block("docs/user-guide.md", "diagnosis").unwrap();
    let out = clean_command("bash")
        .args(["-ec", &block])
        .env("PATH", format!("{}:/usr/bin:/bin", Path::new(AGENT).parent().unwrap().display()))
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("COSMIAN_PKCS11_LOGGING_FOLDER", home.join("logs"))
        .env("COSMIAN_PKCS11_SSH_KEY_TAG", "diagnosed")
        .env("COSMIAN_KMS_CLI_CONF", &good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    2 key pair(s) tagged `diagnosed`"), "{}", text(&out));

    let token = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let token_id = ckms.create_api_token_key(&token);
    kms.restart_with_args(&["--api-token-id", &token_id]);
    let wrong_token = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    std::fs::create_dir_all(dir.join("wrong")).unwrap();
    let wrong = write_provider_config(&dir.join("wrong"), &kms.url(), &format!("access_token = \"{wrong_token}\""));
    let out = check(Some(&wrong), "diagnosed", home);
    assert_fails(&out, "refused the credentials", "access_token");
    assert!(!text(&out).contains(&wrong_token), "the token was printed:\n{}", text(&out));
    std::fs::create_dir_all(dir.join("right")).unwrap();
    let right = write_provider_config(&dir.join("right"), &kms.url(), &format!("access_token = \"{token}\""));
    let out = check(Some(&right), "diagnosed", home);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("authentication: bearer token"), "{}", text(&out));
    assert!(!text(&out).contains(&token), "the token was printed:\n{}", text(&out));
}
