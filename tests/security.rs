//! Secrets and key material over a whole run, against a KMS with bearer-token authentication
//! (`--api-token-id`): listing (`ssh-keygen -D`), an `ssh -I` login, `pkcs11-tool`'s self-test
//! and signatures, and a wrong token. Then:
//! - the access token (right or wrong) appears in none of the provider's trace-level logs, nor
//!   in anything the clients printed (their error messages included);
//! - the KMS's audit log, every operation of the run, shows no Get or Export of a private key,
//!   while the public keys were exported and the private keys signed.
//!
//! (`CKA_VALUE`, `CKA_PRIVATE_EXPONENT` and the like answering `CKR_ATTRIBUTE_SENSITIVE` is
//! checked in c_abi.rs.)

use std::path::Path;

use base64::Engine;
use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, Sshd, clean_command, provider_lib, settled_audit_events, ssh_command, ssh_keygen_d,
    write_provider_config,
};
use sha2::Digest;

use cosmian_pkcs11_testbed::output_text as text;

/// A fresh 32-byte secret, base64 as the KMS expects it in `Authorization: Bearer`.
fn secret(salt: &str) -> String {
    let seed = format!("{salt} {} {:?}", std::process::id(), std::time::SystemTime::now());
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(seed.as_bytes()))
}

/// The provider's environment: its configuration, trace-level logs into `logs`.
fn provider_env(config: &Path, logs: &Path) -> [(&'static str, String); 3] {
    [
        ("COSMIAN_KMS_CLI_CONF", config.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "trace".into()),
    ]
}

#[test]
fn no_token_in_any_log_or_message_and_no_private_key_ever_fetched() {
    let mut kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let ec = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    let rsa = ckms.create_key_pair(KeyKind::Rsa(2048), &["ssh-auth"]);
    // The API token is a symmetric key of the KMS; the client sends its bytes in base64.
    let token = secret("api token");
    let created =
        ckms.run(&["sym", "keys", "create", "--bytes-b64", &token, "--algorithm", "aes", "--tag", "api-token"]);
    assert!(created.status.success(), "{}", text(&created));
    let said = String::from_utf8_lossy(&created.stdout).to_string();
    let token_id = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("Unique identifier:"))
        .unwrap_or_else(|| panic!("no identifier in ckms's answer:\n{said}"))
        .trim()
        .to_owned();
    kms.restart_with_args(&["--api-token-id", &token_id]);

    let dir = kms.dir().join("client");
    let logs = dir.join("logs");
    std::fs::create_dir_all(dir.join("good")).unwrap();
    std::fs::create_dir_all(dir.join("wrong")).unwrap();
    let good = write_provider_config(&dir.join("good"), &kms.url(), &format!("access_token = \"{token}\""));
    let wrong_token = secret("wrong token");
    let wrong = write_provider_config(&dir.join("wrong"), &kms.url(), &format!("access_token = \"{wrong_token}\""));
    let mut printed = Vec::new();

    // ---- listing and a login with the right token ----------------------------------------
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&good, &logs)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(lines.lines().count(), 2, "both keys listed with the token:\n{lines}");
    printed.push(text(&out));
    let p256_line = lines.lines().find(|l| l.starts_with("ecdsa-sha2-nistp256")).unwrap();
    let sshd = Sshd::start(p256_line, "");
    let mut ssh = ssh_command(&sshd).provider(&provider_lib());
    for (k, v) in provider_env(&good, &logs) {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("echo signed-in");
    assert!(out.status.success(), "{}\nsshd:\n{}", text(&out), sshd.log());
    printed.push(text(&out));

    // ---- pkcs11-tool: every attribute listed, its signature self-test, an ECDSA signature -
    let pkcs11_tool = |args: &[&str]| {
        let out = clean_command("pkcs11-tool")
            .envs(provider_env(&good, &logs))
            .arg("--module")
            .arg(provider_lib())
            .args(args)
            .output()
            .expect("pkcs11-tool (OpenSC) is installed by scripts/install-test-bed.sh");
        assert!(out.status.code().is_some(), "pkcs11-tool {args:?} crashed: {}", text(&out));
        out
    };
    printed.push(text(&pkcs11_tool(&["--list-objects", "--test", "--allow-sw"])));
    let digest = dir.join("digest.bin");
    std::fs::write(&digest, sha2::Sha256::digest(b"security")).unwrap();
    let id: String = ec.private_id.bytes().map(|b| format!("{b:02x}")).collect();
    let out = pkcs11_tool(&["--sign", "--id", &id, "--mechanism", "ECDSA", "--input-file", digest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    printed.push(text(&out));

    // ---- a wrong token: refused, said so in the log, without the token -------------------
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&wrong, &logs)).output().unwrap();
    assert!(out.stdout.is_empty() && out.status.code().is_some(), "{}", text(&out));
    printed.push(text(&out));

    // ---- the logs and the messages: no token ----------------------------------------------
    let log = std::fs::read_to_string(logs.join("cosmian-pkcs11.log")).unwrap();
    assert!(log.contains(" TRACE "), "the logs are not at trace level:\n{log}");
    assert!(log.contains("cannot list the keys of the KMS: KMS refused the credentials: HTTP 401"), "{log}");
    for (name, secret) in [("the access token", &token), ("the wrong token", &wrong_token)] {
        assert!(!log.contains(secret.as_str()), "{name} is in the provider's log");
        for output in &printed {
            assert!(!output.contains(secret.as_str()), "{name} was printed:\n{output}");
        }
    }
    println!("provider log at trace level: {} lines, {} bytes, no token", log.lines().count(), log.len());

    // ---- the KMS's audit log: no private key ever fetched ------------------------------------
    let events = settled_audit_events(&kms);
    let private = [&ec.private_id, &rsa.private_id];
    let fetched: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(e.operation.as_str(), "Get" | "Export")
                && e.object_uid.as_ref().is_some_and(|u| private.contains(&u))
        })
        .collect();
    assert!(fetched.is_empty(), "private key material was asked for: {fetched:#?}");
    let signs = events
        .iter()
        .filter(|e| e.operation == "Sign" && e.object_uid.as_ref().is_some_and(|u| private.contains(&u)))
        .count();
    let exports = events.iter().filter(|e| e.operation == "Export").count();
    assert!(signs >= 5 && exports >= 2, "the run did not sign and export as expected: {events:#?}");
    println!(
        "KMS audit log: {} operations, {signs} signatures, {exports} public-key exports, 0 private-key Get/Export",
        events.len()
    );
}
