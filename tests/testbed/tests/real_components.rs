//! The test bed against the real components: a KMS with keys made by ckms, sshd, ssh-agent.

use cosmian_pkcs11_testbed::{Ckms, KmsServer, SshAgent, Sshd, ssh_command};

#[test]
fn kms_keys_by_ckms_and_audit_log() {
    let mut kms = KmsServer::start();
    assert!(kms.url().starts_with("http://127.0.0.1:"));
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_ec_key_pair("nist-p256", &["ssh-auth"]);
    assert_eq!(pair.public_id, format!("{}_pk", pair.private_id));
    let pem = ckms.export_public_pkcs8_pem(&pair.public_id);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let rsa = ckms.create_rsa_key_pair(2048, &["ssh-auth", "other"]);
    assert!(ckms.export_public_pkcs8_pem(&rsa.public_id).starts_with("-----BEGIN PUBLIC KEY-----"));

    kms.restart();
    let listed =
        ckms.run(&["ec", "keys", "export", "--key-id", &pair.public_id, "--key-format", "pkcs8-pem", "/dev/null"]);
    assert!(listed.status.success(), "the key survives a restart: {listed:?}");

    let events = kms.audit_events();
    let created = events.iter().filter(|e| e.operation == "CreateKeyPair").count();
    assert_eq!(created, 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.object_uid.as_deref() != Some(pair.private_id.as_str()) || e.operation == "CreateKeyPair")
    );
    assert!(kms.log().contains("kmip"), "the server logs each KMIP request");
}

#[test]
fn sshd_ssh_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let sshd = Sshd::start("", "");
    let refused = ssh_command(&sshd).opt("-i").opt(&key).run("true");
    assert!(!refused.status.success(), "no key is authorized yet");
    sshd.set_authorized_keys(&public);
    let out = ssh_command(&sshd).opt("-i").opt(&key).run("echo hello");
    assert!(out.status.success(), "{out:?}\n{}", sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(sshd.log().contains("Accepted publickey"), "sshd logs at DEBUG");

    let agent = SshAgent::start();
    let added = agent.command("ssh-add").arg(&key).output().unwrap();
    assert!(added.status.success(), "{added:?}");
    let through_agent = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("true");
    assert!(through_agent.status.success(), "{through_agent:?}");
}
