//! OpenSSH end to end, as users run it: keys created with the real `ckms`, the real
//! `ssh-keygen -D`, `ssh -I`, `PKCS11Provider`, `ssh-agent`/`ssh-add -s`, against a throw-away
//! `sshd` on 127.0.0.1, for every key type OpenSSH 9.2 takes from a provider (P-256, P-384,
//! RSA-2048, RSA-4096). Ed25519 is proven in `ed25519_sshsig.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    clean_command, current_user, free_port, provider_lib, ssh_command, ssh_keygen_d, write_provider_config, Ckms, KeyKind,
    KmsServer, SshAgent, SshCommand, Sshd,
};

/// Key pairs by name; the name is also a tag, so it shows in the label.
const KEYS: [(&str, KeyKind<'static>); 5] = [
    ("p256", KeyKind::Ec("nist-p256")),
    ("p384", KeyKind::Ec("nist-p384")),
    ("rsa2048", KeyKind::Rsa(2048)),
    ("rsa4096", KeyKind::Rsa(4096)),
    ("ed25519", KeyKind::Ec("ed25519")),
];

struct Bed {
    kms: KmsServer,
    /// Inside the KMS's folder, which the test bed removes at exit (statics are never dropped).
    dir: PathBuf,
    config: PathBuf,
    /// name -> (private id, `authorized_keys` line made from ckms's export, without comment)
    keys: BTreeMap<&'static str, (String, String)>,
    /// A P-256 pair tagged `not-ssh` only.
    untagged: String,
}

/// The `authorized_keys` line (type and base64) of a public key exported by ckms as PKCS#8
/// PEM, through `ssh-keygen -i -m PKCS8`: the user's way, independent of the provider.
fn authorized_line(ckms: &Ckms, dir: &Path, public_id: &str) -> String {
    let pem = dir.join(format!("{public_id}.pem"));
    std::fs::write(&pem, ckms.export_public_pkcs8_pem(public_id)).unwrap();
    let out = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let mut keys = BTreeMap::new();
        for (name, kind) in KEYS {
            let pair = ckms.create_key_pair(kind, &["ssh-auth", name]);
            // ssh-keygen 9.2 cannot convert an Ed25519 PKCS#8 key either.
            let line = if name == "ed25519" { String::new() } else { authorized_line(&ckms, &dir, &pair.public_id) };
            keys.insert(name, (pair.private_id, line));
        }
        let other = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["not-ssh"]);
        let untagged = authorized_line(&ckms, &dir, &other.public_id);
        let config = write_provider_config(&dir, &kms.url(), "");
        Bed { kms, dir, config, keys, untagged }
    })
}

/// The provider's environment for a command: the config, and a log folder of the test's own.
fn provider_env(config: &Path, logs: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("COSMIAN_KMS_CLI_CONF", config.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
    ]
}

fn ssh_with_provider(sshd: &Sshd, logs: &Path) -> SshCommand {
    let mut ssh = ssh_command(sshd).provider(&provider_lib());
    for (k, v) in provider_env(&bed().config, logs) {
        ssh = ssh.env(k, v);
    }
    ssh
}

use cosmian_pkcs11_testbed::output_text as text;

fn logs_dir(name: &str) -> PathBuf {
    let dir = bed().dir.join("logs").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn provider_log(logs: &Path) -> String {
    std::fs::read_to_string(logs.join("cosmian-pkcs11.log")).unwrap_or_default()
}

#[test]
fn ssh_keygen_d_prints_exactly_the_tagged_keys_and_nothing_else() {
    let bed = bed();
    let logs = logs_dir("keygen");
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&bed.config, &logs)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed: Vec<String> = String::from_utf8(out.stdout.clone()).unwrap().lines().map(str::to_owned).collect();
    // OpenSSH 9.2 takes no Ed25519 key from a provider: every other tagged key, labelled.
    let mut expected: Vec<String> = bed
        .keys
        .iter()
        .filter(|(name, _)| **name != "ed25519")
        .map(|(name, (id, line))| format!("{line} {name} ({id})"))
        .collect();
    expected.sort();
    let mut sorted = printed.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "stdout must hold the key lines and nothing else:\n{}", text(&out));
    assert!(!printed.iter().any(|l| l.starts_with(&bed.untagged)), "the untagged key is offered");
}

#[test]
fn ssh_logs_in_with_every_key_type() {
    let bed = bed();
    for name in ["p256", "p384", "rsa2048", "rsa4096"] {
        let sshd = Sshd::start(&bed.keys[name].1, "");
        let logs = logs_dir(&format!("login-{name}"));
        let out = ssh_with_provider(&sshd, &logs).run("echo logged-in-as-$(id -un)");
        assert!(out.status.success(), "{name}: {}\nsshd:\n{}", text(&out), sshd.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("logged-in-as-{}", current_user()));
    }
}

/// With `IdentitiesOnly=yes`, OpenSSH uses a provider key only if its public key is also given
/// as an identity file: the documented way to pin one KMS key to a host.
#[test]
fn identities_only_with_the_public_key_file() {
    let bed = bed();
    let sshd = Sshd::start(&bed.keys["p384"].1, "");
    let logs = logs_dir("identities-only");
    let pubfile = logs.join("p384.pub");
    std::fs::write(&pubfile, format!("{}\n", bed.keys["p384"].1)).unwrap();
    let out = ssh_with_provider(&sshd, &logs).opt("-o").opt("IdentitiesOnly=yes").opt("-i").opt(&pubfile).run("true");
    assert!(out.status.success(), "{}\n{}", text(&out), sshd.log());
}

#[test]
fn rsa_signs_with_sha512_sha256_and_sha1() {
    let bed = bed();
    let sshd = Sshd::start(&bed.keys["rsa2048"].1, "PubkeyAcceptedAlgorithms +ssh-rsa");
    for algorithm in ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] {
        let logs = logs_dir(&format!("rsa-{algorithm}"));
        let out = ssh_with_provider(&sshd, &logs)
            .opt("-o")
            .opt(format!("PubkeyAcceptedAlgorithms={algorithm}"))
            .run("true");
        assert!(out.status.success(), "{algorithm}: {}\nsshd:\n{}", text(&out), sshd.log());
        assert!(sshd.log().contains(&format!("Accepted publickey for {}", current_user())), "{}", sshd.log());
        assert!(sshd.log().contains(&format!("pkalg {algorithm}")), "sshd did not see {algorithm}:\n{}", sshd.log());
    }
}

#[test]
fn pkcs11provider_in_an_ssh_config_file() {
    let bed = bed();
    let sshd = Sshd::start(&bed.keys["p256"].1, "");
    let logs = logs_dir("config-file");
    let config = logs.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host kms-test\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  PKCS11Provider {}\n  IdentityFile {}\n  \
             UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n",
            sshd.port(),
            current_user(),
            provider_lib().display(),
            logs.join("none").display()
        ),
    )
    .unwrap();
    let out = clean_command("ssh").arg("-F").arg(&config).arg("kms-test").arg("echo via-config").envs(provider_env(&bed.config, &logs)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-config");
}

#[test]
fn ssh_agent_loads_the_provider_and_logs_in() {
    let bed = bed();
    let lib = provider_lib();
    let logs = logs_dir("agent");
    // The agent only takes providers from its allow-list (default /usr/lib*/*,
    // /usr/local/lib*/*): the build folder is added with -P. The provider runs in
    // ssh-pkcs11-helper with THE AGENT's environment, so the configuration goes there.
    let allow = format!("{}/*", lib.parent().unwrap().display());
    let agent = SshAgent::start_with(Some(&allow), provider_env(&bed.config, &logs));
    let out = agent.add_provider(&lib).unwrap();
    assert!(out.status.success(), "ssh-add -s: {}\nagent:\n{}", text(&out), agent.log());

    let listed = agent.command("ssh-add").arg("-l").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for name in ["p256", "p384", "rsa2048", "rsa4096"] {
        let label = format!("{name} ({})", bed.keys[name].0);
        assert!(listed.contains(&label), "ssh-add -l lacks {label}:\n{listed}");
    }

    // A login through the agent only (no -I): the signature is made by the helper process.
    let sshd = Sshd::start(&bed.keys["p256"].1, "");
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo via-agent");
    assert!(out.status.success(), "{}\nsshd:\n{}\nagent:\n{}", text(&out), sshd.log(), agent.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-agent");
}

#[test]
fn a_key_without_the_tag_is_not_offered() {
    let bed = bed();
    let sshd = Sshd::start(&bed.untagged, "");
    let logs = logs_dir("untagged");
    let out = ssh_with_provider(&sshd, &logs).run("true");
    assert!(!out.status.success(), "logged in with a key that does not carry the tag");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{}", text(&out));
}

/// The seed's page, step by step, corrected: export as PKCS#8 PEM and convert with
/// `ssh-keygen -i -m PKCS8` (its `-e` does not work).
#[test]
fn the_documented_flow_with_ckms() {
    let bed = bed();
    let ckms = Ckms::new(&bed.kms);
    let created = ckms.run(&["ec", "keys", "create", "--curve", "nist-p256", "--tag", "ssh-auth"]);
    assert!(created.status.success(), "{}", text(&created));
    let said = String::from_utf8_lossy(&created.stdout).to_string();
    let public_id = said
        .split_whitespace()
        .find(|w| w.ends_with("_pk"))
        .unwrap_or_else(|| panic!("no public key id in ckms's answer:\n{said}"))
        .to_owned();
    let dir = logs_dir("documented-flow");
    let pem = dir.join("key.pem");
    let exported = ckms.run(&["ec", "keys", "export", "--key-id", &public_id, "--key-format", "pkcs8-pem", pem.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", text(&exported));
    let converted = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem).output().unwrap();
    assert!(converted.status.success(), "{}", text(&converted));
    let line = String::from_utf8(converted.stdout).unwrap();
    assert!(line.starts_with("ecdsa-sha2-nistp256 "), "{line}");
    let sshd = Sshd::start(&line, "");
    // The key list is cached per process; each ssh is a new process, so it is seen at once.
    let out = ssh_with_provider(&sshd, &dir).run("echo documented");
    assert!(out.status.success(), "{}\nsshd:\n{}", text(&out), sshd.log());
}

/// KMS down: no keys, quickly, a log line saying why, and ssh goes on to its other identities.
#[test]
fn an_unreachable_kms_leaves_ssh_to_its_other_identities() {
    let dir = logs_dir("kms-down");
    let down = write_provider_config(&dir, &format!("http://127.0.0.1:{}", free_port()), "");
    let started = Instant::now();
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&down, &dir)).output().unwrap();
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
    for (k, v) in provider_env(&down, &dir) {
        ssh = ssh.env(k, v);
    }
    let started = Instant::now();
    let out = ssh.run("echo local");
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "ssh took {:?} with the KMS down", started.elapsed());
}

#[test]
fn a_broken_config_file_is_reported_not_fatal() {
    let dir = logs_dir("broken-config");
    for (name, body) in [("garbage.toml", "this is [[ not toml"), ("empty.toml", ""), ("no-url.toml", "[http_config]\naccess_token = \"s3cret\"\n")] {
        let config = dir.join(name);
        std::fs::write(&config, body).unwrap();
        let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&config, &dir)).output().unwrap();
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out));
        assert!(out.status.code().is_some(), "{name}: crashed: {}", text(&out));
        let log = provider_log(&dir);
        assert!(log.contains(&config.display().to_string()), "{name}: the log does not name the file:\n{log}");
        assert!(!log.contains("s3cret"), "a secret reached the log");
    }
    let missing = dir.join("missing.toml");
    let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&missing, &dir)).output().unwrap();
    assert!(out.stdout.is_empty() && out.status.code().is_some(), "{}", text(&out));
    assert!(provider_log(&dir).contains("cannot read"), "{}", provider_log(&dir));
}
