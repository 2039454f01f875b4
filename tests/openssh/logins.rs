//! Logins with KMS keys: `ssh-keygen -D`, `ssh -I`, `PKCS11Provider`, `ssh-agent` across a
//! KMS restart, one sshd per key type; then what the provider does when the KMS or its
//! configuration is missing (on Debian's OpenSSH: that part does not depend on the release).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    Ckms, KmsServer, OpenSsh, SshCommand, Sshd, free_port, output_text as text, provider_lib, ssh_command,
    ssh_keygen_d, write_provider_config,
};

use crate::{
    MANY_KEYS, agent_with_provider, assert_logged_in, case_dir, provider_env, restarting_kms, ssh_with_config,
    ssh_with_provider, using_kms,
};

/// `ssh-keygen -D` prints exactly the tagged keys this OpenSSH loads, each with its label as
/// comment, the key with a label of several hundred bytes included (cut to what OpenSSH reads,
/// on a character boundary, its id kept): one long label must not hide the other keys.
pub fn ssh_keygen_d_lists_every_key_with_a_readable_comment(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let logs = case_dir(openssh, "keygen");
    let out =
        openssh.ssh_keygen_d(&provider_lib()).envs(provider_env(&bed.config, &logs, "ssh-auth")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout.clone()).expect("comments are UTF-8");
    let mut lines: Vec<&str> = printed.lines().collect();

    let long_at = lines.iter().position(|l| l.starts_with(&format!("{} ", bed.long_label.line)));
    let long = lines.remove(long_at.unwrap_or_else(|| panic!("the long-labelled key is missing:\n{}", text(&out))));
    let comment = &long[bed.long_label.line.len() + 1..];
    assert!(comment.len() <= 255, "OpenSSH reads 255 bytes of label: {comment}");
    // The user tags, joined by commas in the KMS's order, the last one cut.
    let head =
        comment.strip_suffix(&format!("… ({})", bed.long_label.private_id)).unwrap_or_else(|| panic!("{comment}"));
    let mut rest = head;
    while let Some(after) = bed.long_tags.iter().find_map(|t| rest.strip_prefix(t.as_str())?.strip_prefix(',')) {
        rest = after;
    }
    assert!(rest != head && bed.long_tags.iter().any(|t| t.starts_with(rest)), "{comment}");

    let mut expected: Vec<String> =
        bed.loaded_keys(openssh).map(|(name, key)| format!("{} {name} ({})", key.line, key.private_id)).collect();
    expected.sort();
    lines.sort();
    assert_eq!(lines, expected, "{}: the key lines and nothing else:\n{}", openssh.banner(), text(&out));
    assert!(
        !printed.contains(&bed.untagged.line) && !printed.contains(&bed.ca_p384.line),
        "an untagged key is offered"
    );
}

/// One login per key type, each against an sshd that trusts that key only.
fn logs_in_with_every_key_type(
    openssh: &'static OpenSsh,
    case: &str,
    login: impl Fn(&Sshd, &Path, &str) -> std::process::Output,
) {
    let (bed, _kms) = using_kms();
    for (name, key) in bed.loaded_keys(openssh) {
        let sshd = Sshd::start_on(openssh, &key.line, MANY_KEYS);
        let marker = format!("{case}-{name}");
        let out = login(&sshd, &case_dir(openssh, &marker), &format!("echo {marker}"));
        assert_logged_in(&out, &sshd, &marker, key.sshd_type());
    }
}

pub fn ssh_i_logs_in_with_every_key_type(openssh: &'static OpenSsh) {
    logs_in_with_every_key_type(openssh, "ssh-i", |sshd, logs, command| ssh_with_provider(sshd, logs).run(command));
}

/// `PKCS11Provider` in an ssh config file, the provider's configuration in ssh's environment.
pub fn pkcs11provider_logs_in_with_every_key_type(openssh: &'static OpenSsh) {
    logs_in_with_every_key_type(openssh, "config", |sshd, logs, command| {
        ssh_with_config(sshd, logs, &format!("PKCS11Provider {}", provider_lib().display()), command)
    });
}

/// `ssh-add -s lib` lists every key with its label; every key type logs in through the agent
/// (no `-I`: the agent's `ssh-pkcs11-helper` signs); the KMS is stopped (no login) and
/// started again: every key type logs in again without adding the provider again.
pub fn the_agent_logs_in_with_every_key_type_across_a_kms_restart(openssh: &'static OpenSsh) {
    let (bed, _only_user) = restarting_kms();
    let logs = case_dir(openssh, "agent");
    let agent = agent_with_provider(openssh, &logs, &[]);
    let listed = agent.command("ssh-add").arg("-l").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for (name, key) in bed.loaded_keys(openssh) {
        let label = format!("{name} ({})", key.private_id);
        assert!(listed.contains(&label), "ssh-add -l lacks {label}:\n{listed}");
    }
    let logins = |when: &str| {
        for (name, key) in bed.loaded_keys(openssh) {
            let sshd = Sshd::start_on(openssh, &key.line, MANY_KEYS);
            let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run(&format!("echo {when}-{name}"));
            assert_logged_in(&out, &sshd, &format!("{when}-{name}"), key.sshd_type());
        }
    };
    logins("before-restart");

    let mut kms = bed.kms.lock().unwrap();
    kms.stop();
    let sshd = Sshd::start_on(openssh, &bed.keys["p256"].line, MANY_KEYS);
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("true");
    assert!(!out.status.success(), "logged in through the agent with the KMS down");
    kms.restart();
    drop(kms);
    logins("after-restart");
}

/// With `IdentitiesOnly=yes`, OpenSSH uses a provider key only if its public key is also given
/// as an identity file: the documented way to pin one KMS key to a host (and to stay under
/// sshd's `MaxAuthTries`, here the default 6, whatever the number of keys).
pub fn identities_only_with_the_public_key_file(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let key = &bed.keys["rsa3072"];
    let sshd = Sshd::start_on(openssh, &key.line, "");
    let logs = case_dir(openssh, "identities-only");
    let pubfile = key.write_pub(&logs.join("rsa3072.pub"));
    let out =
        ssh_with_provider(&sshd, &logs).opt("-o").opt("IdentitiesOnly=yes").opt("-i").opt(&pubfile).run("echo pinned");
    assert_logged_in(&out, &sshd, "pinned", "RSA");
}

pub fn rsa_signs_with_sha512_sha256_and_sha1(openssh: &'static OpenSsh) {
    rsa_logs_in_with_each_algorithm(openssh, |sshd, algorithm| {
        ssh_with_provider(sshd, &case_dir(openssh, &format!("rsa-{algorithm}")))
    });
}

/// An RSA-2048 key logs in with `rsa-sha2-512`, `rsa-sha2-256` and `ssh-rsa` (sshd logs the
/// algorithm), through the `ssh` that `login` makes for an sshd and an algorithm.
pub(crate) fn rsa_logs_in_with_each_algorithm(openssh: &'static OpenSsh, login: impl Fn(&Sshd, &str) -> SshCommand) {
    let (bed, _kms) = using_kms();
    let sshd =
        Sshd::start_on(openssh, &bed.keys["rsa2048"].line, &format!("PubkeyAcceptedAlgorithms +ssh-rsa\n{MANY_KEYS}"));
    for algorithm in ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] {
        let out =
            login(&sshd, algorithm).opt("-o").opt(format!("PubkeyAcceptedAlgorithms={algorithm}")).run("echo rsa");
        assert_logged_in(&out, &sshd, "rsa", "RSA");
        assert!(sshd.log().contains(&format!("pkalg {algorithm}")), "sshd did not see {algorithm}:\n{}", sshd.log());
    }
}

pub fn a_key_without_the_tag_is_not_offered(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let sshd = Sshd::start_on(openssh, &bed.untagged.line, MANY_KEYS);
    let out = ssh_with_provider(&sshd, &case_dir(openssh, "untagged")).run("true");
    assert!(!out.status.success(), "logged in with a key that does not carry the tag");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{}", text(&out));
}

/// The seed's page, step by step, corrected: export as PKCS#8 PEM and convert with
/// `ssh-keygen -i -m PKCS8` (its `-e` does not work). A KMS of its own: the key it adds must
/// not show in the other cases' key lists.
#[test]
fn the_documented_flow_with_ckms() {
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let created = ckms.run(&["ec", "keys", "create", "--curve", "nist-p256", "--tag", "ssh-auth"]);
    assert!(created.status.success(), "{}", text(&created));
    let said = String::from_utf8_lossy(&created.stdout).to_string();
    let public_id = said
        .split_whitespace()
        .find(|w| w.ends_with("_pk"))
        .unwrap_or_else(|| panic!("no public key id in ckms's answer:\n{said}"))
        .to_owned();
    let dir = case_dir(OpenSsh::debian(), "documented-flow");
    let pem = dir.join("key.pem");
    let exported =
        ckms.run(&["ec", "keys", "export", "--key-id", &public_id, "--key-format", "pkcs8-pem", pem.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", text(&exported));
    let converted = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem).output().unwrap();
    assert!(converted.status.success(), "{}", text(&converted));
    let line = String::from_utf8(converted.stdout).unwrap();
    assert!(line.starts_with("ecdsa-sha2-nistp256 "), "{line}");
    let sshd = Sshd::start(&line, "");
    let mut ssh = ssh_command(&sshd).provider(&provider_lib());
    for (k, v) in provider_env(&write_provider_config(&dir, &kms.url(), ""), &dir, "ssh-auth") {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("echo documented");
    assert_logged_in(&out, &sshd, "documented", "ECDSA");
}

/// KMS down: no keys, quickly, a log line saying why, and ssh goes on to its other identities.
#[test]
fn an_unreachable_kms_leaves_ssh_to_its_other_identities() {
    let dir = case_dir(OpenSsh::debian(), "kms-down");
    let down = write_provider_config(&dir, &format!("http://127.0.0.1:{}", free_port()), "");
    let started = Instant::now();
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&down, &dir, "ssh-auth")).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(out.status.code().is_some(), "ssh-keygen crashed: {}", text(&out));
    assert!(provider_log(&dir).contains("cannot list the keys of the KMS: KMS unreachable"), "{}", provider_log(&dir));

    // A local key next to the provider: ssh falls through to it.
    let key = dir.join("id_local");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(made.status.success());
    let sshd = Sshd::start(&std::fs::read_to_string(key.with_extension("pub")).unwrap(), "");
    let mut ssh = ssh_command(&sshd).provider(&provider_lib()).opt("-i").opt(&key);
    for (k, v) in provider_env(&down, &dir, "ssh-auth") {
        ssh = ssh.env(k, v);
    }
    let started = Instant::now();
    let out = ssh.run("echo local");
    assert_logged_in(&out, &sshd, "local", "ED25519");
    assert!(started.elapsed() < Duration::from_secs(5), "ssh took {:?} with the KMS down", started.elapsed());
}

#[test]
fn a_broken_config_file_is_reported_not_fatal() {
    let dir = case_dir(OpenSsh::debian(), "broken-config");
    let keygen_d =
        |config: &Path| ssh_keygen_d(&provider_lib()).envs(provider_env(config, &dir, "ssh-auth")).output().unwrap();
    for (name, body) in [
        ("garbage.toml", "this is [[ not toml"),
        ("empty.toml", ""),
        ("no-url.toml", "[http_config]\naccess_token = \"s3cret\"\n"),
    ] {
        let config = dir.join(name);
        std::fs::write(&config, body).unwrap();
        let out = keygen_d(&config);
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out));
        assert!(out.status.code().is_some(), "{name}: crashed: {}", text(&out));
        let log = provider_log(&dir);
        assert!(log.contains(&config.display().to_string()), "{name}: the log does not name the file:\n{log}");
        assert!(!log.contains("s3cret"), "a secret reached the log");
    }
    let out = keygen_d(&dir.join("missing.toml"));
    assert!(out.stdout.is_empty() && out.status.code().is_some(), "{}", text(&out));
    assert!(provider_log(&dir).contains("cannot read"), "{}", provider_log(&dir));
}

fn provider_log(logs: &Path) -> String {
    std::fs::read_to_string(logs.join("cosmian-pkcs11.log")).unwrap_or_default()
}
