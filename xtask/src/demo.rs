//! `cargo xtask demo`: everything a user does, printed like a tutorial, from a fresh machine
//! to an SSH login with keys that never leave a (local) Cosmian KMS.
//!
//! Install the test bed, build the provider, start a KMS, create with ckms one key pair of
//! each type tagged `ssh-auth` plus one tagged `not-ssh`, write the provider's configuration;
//! then on Debian's OpenSSH 9.2 and on the current OpenSSH the test bed built: list the keys
//! with `ssh-keygen -D`, trust them in a throw-away sshd, log in with `ssh -I`, then log in
//! with each key alone, and say which OpenSSH did what. Fails when a login fails, when a key
//! that release should offer is not (Ed25519 from 10.1 on), or when the `not-ssh` key is
//! offered.

use std::path::Path;
use std::process::{Command, Output};

use cosmian_pkcs11_testbed::{self as testbed, Ckms, KeyKind, KeyPair, KmsServer, OpenSsh, Sshd};

use crate::{cargo, install_test_bed, step};

/// The tag the provider offers by default.
const SSH_TAG: &str = "ssh-auth";

/// One key pair of the demo.
struct DemoKey {
    label: &'static str,
    kind: KeyKind<'static>,
    tag: &'static str,
    pair: KeyPair,
}

impl DemoKey {
    /// The SSH key type name OpenSSH uses for this kind of key.
    fn ssh_type(&self) -> &'static str {
        match self.kind {
            KeyKind::Ec("nist-p256") => "ecdsa-sha2-nistp256",
            KeyKind::Ec("nist-p384") => "ecdsa-sha2-nistp384",
            KeyKind::Ec("nist-p521") => "ecdsa-sha2-nistp521",
            KeyKind::Ec(_) => "ssh-ed25519",
            KeyKind::Rsa(_) => "ssh-rsa",
        }
    }
}

pub fn run() -> Result<(), String> {
    install_test_bed();
    cargo("build the provider", &["build", "-p", "cosmian-pkcs11"])?;
    let lib = testbed::find_provider_lib()?;

    step("start a local KMS", "cosmian_kms --database-type sqlite --sqlite-path DIR --hostname 127.0.0.1 --port PORT");
    let kms = KmsServer::start();
    println!("    the KMS answers at {} (log: {})", kms.url(), kms.log_path().display());

    let ckms = Ckms::new(&kms);
    let specs: [(&str, KeyKind, &str); 8] = [
        ("NIST P-256", KeyKind::Ec("nist-p256"), SSH_TAG),
        ("NIST P-384", KeyKind::Ec("nist-p384"), SSH_TAG),
        ("NIST P-521", KeyKind::Ec("nist-p521"), SSH_TAG),
        ("Ed25519", KeyKind::Ec("ed25519"), SSH_TAG),
        ("RSA 2048", KeyKind::Rsa(2048), SSH_TAG),
        ("RSA 3072", KeyKind::Rsa(3072), SSH_TAG),
        ("RSA 4096", KeyKind::Rsa(4096), SSH_TAG),
        ("NIST P-256", KeyKind::Ec("nist-p256"), "not-ssh"),
    ];
    let keys: Vec<DemoKey> = specs
        .into_iter()
        .map(|(label, kind, tag)| {
            step(
                &format!("create a {label} key pair tagged {tag}"),
                &format!("ckms {}", kind.ckms_args(&[tag]).join(" ")),
            );
            let pair = ckms.create_key_pair(kind, &[tag]);
            println!("    private key {}, public key {}", pair.private_id, pair.public_id);
            DemoKey { label, kind, tag, pair }
        })
        .collect();

    let work = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let config = testbed::write_provider_config(work.path(), &kms.url(), "");
    step("write the provider's configuration (ckms format)", &config.display().to_string());
    print_indented(&std::fs::read_to_string(&config).unwrap_or_default());

    let mut failures = Vec::new();
    let mut verdicts = Vec::new();
    for openssh in [OpenSsh::debian(), OpenSsh::current()] {
        let verdict = logins_on(openssh, &lib, &config, &keys, &ckms, work.path(), &mut failures)?;
        verdicts.push((openssh.banner(), verdict));
    }
    step("which OpenSSH did what", "");
    for (banner, verdict) in verdicts {
        println!("    with {banner}");
        print_indented(&verdict);
    }
    step("check the KMS's audit log", &kms.audit_path().display().to_string());
    let private_ids: Vec<&str> = keys.iter().map(|k| k.pair.private_id.as_str()).collect();
    let events = kms.audit_events();
    let signatures = events.iter().filter(|e| e.operation == "Sign").count();
    let exported: Vec<_> = events
        .iter()
        .filter(|e| e.operation == "Get" || e.operation == "Export")
        .filter(|e| e.object_uid.as_deref().is_some_and(|id| private_ids.contains(&id)))
        .collect();
    println!("    {} KMIP operations, {signatures} of them Sign", events.len());
    if exported.is_empty() {
        println!("    no Get or Export of a private key: the private keys never left the KMS");
    } else {
        failures.push(format!("private keys were fetched from the KMS: {exported:?}"));
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// On one OpenSSH: list the keys with `ssh-keygen -D`, log in with all of them through
/// `ssh -I`, then with each key alone; returns the table of what each key did, and pushes
/// what went wrong on `failures`.
fn logins_on(
    openssh: &'static OpenSsh,
    lib: &Path,
    config: &Path,
    keys: &[DemoKey],
    ckms: &Ckms,
    dir: &Path,
    failures: &mut Vec<String>,
) -> Result<String, String> {
    let conf_env = format!("COSMIAN_KMS_CLI_CONF={}", config.display());
    let banner = openssh.banner();
    step(
        &format!("list the keys {banner} sees"),
        &format!("{conf_env} {} -D {}", openssh.program("ssh-keygen").display(), lib.display()),
    );
    let listed = openssh
        .ssh_keygen_d(lib)
        .env("COSMIAN_KMS_CLI_CONF", config)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    let authorized_keys = String::from_utf8_lossy(&listed.stdout).into_owned();
    print_indented(&authorized_keys);
    for line in String::from_utf8_lossy(&listed.stderr).lines() {
        println!("    ssh-keygen: {line}");
    }
    if !listed.status.success() || authorized_keys.trim().is_empty() {
        return Err(format!("{banner}: ssh-keygen -D listed no key ({})", listed.status));
    }
    println!(
        "    (each line matched with the KMS's public key: ckms ec keys export --key-format pkcs8-pem | ssh-keygen -i -m PKCS8)"
    );
    let offered =
        keys.iter().map(|key| find_offered(&authorized_keys, key, ckms, dir)).collect::<Result<Vec<_>, _>>()?;

    let sshd = Sshd::start_on(openssh, &authorized_keys, "MaxAuthTries 30");
    let hello = "echo hello from $(hostname)";
    step(
        &format!("log in with the KMS's keys, {banner} client and server"),
        &format!(
            "{conf_env} {} -I {} -p {} {}@127.0.0.1 '{hello}'",
            openssh.program("ssh").display(),
            lib.display(),
            sshd.port(),
            sshd.user()
        ),
    );
    println!(
        "    (sshd listens on 127.0.0.1:{}, MaxAuthTries 30 as ssh offers every key; log: {}/sshd.log)",
        sshd.port(),
        sshd.dir().display()
    );
    let first = login(&sshd, lib, config, hello);
    print_indented(&String::from_utf8_lossy(&first.stdout));
    if !first.status.success() {
        print_indented(&String::from_utf8_lossy(&first.stderr));
        return Err(format!("{banner}: the SSH login failed ({}); sshd's log:\n{}", first.status, sshd.log()));
    }

    step(&format!("log in with each key alone, {banner}"), "the same ssh, authorized_keys holding one key at a time");
    let mut table = String::new();
    for (key, offered) in keys.iter().zip(offered) {
        let verdict = match (&offered, key.tag) {
            (Some(_), tag) if tag != SSH_TAG => {
                failures.push(format!("{banner}: the {tag} key was offered"));
                "OFFERED, but it is not tagged ssh-auth".to_owned()
            }
            (None, tag) if tag != SSH_TAG => format!("not offered (tagged {tag}), as expected"),
            (None, _) if key.ssh_type() == "ssh-ed25519" && !openssh.at_least(10, 1) => {
                "not offered: takes no Ed25519 key from a PKCS#11 provider (10.1p1 and later do)".to_owned()
            }
            (None, _) => {
                failures.push(format!("{banner}: the {} key was not offered", key.label));
                "NOT OFFERED".to_owned()
            }
            (Some(line), _) => {
                sshd.set_authorized_keys(line);
                let alone = login(&sshd, lib, config, "true");
                if alone.status.success() {
                    "logged in".to_owned()
                } else {
                    failures.push(format!("{banner}: the {} key could not log in", key.label));
                    format!("LOGIN FAILED: {}", String::from_utf8_lossy(&alone.stderr).trim())
                }
            }
        };
        let row = format!("{:<10} {:<8} {:<20} {verdict}\n", key.label, key.tag, key.ssh_type());
        print!("    {row}");
        table.push_str(&row);
    }
    Ok(table)
}

/// `ssh -I lib ... remote_command` to `sshd` (its own OpenSSH) with the provider's
/// configuration.
fn login(sshd: &Sshd, lib: &Path, config: &Path, remote_command: &str) -> Output {
    testbed::ssh_command(sshd).provider(lib).env("COSMIAN_KMS_CLI_CONF", config).run(remote_command)
}

/// The line of `ssh-keygen -D`'s output holding `key`: the KMS's public key, exported as
/// PKCS#8 PEM and converted by `ssh-keygen -i -m PKCS8`, must be the line's key blob. OpenSSH
/// cannot convert Ed25519 keys: those are matched by key type (the demo has only one).
fn find_offered(listed: &str, key: &DemoKey, ckms: &Ckms, dir: &Path) -> Result<Option<String>, String> {
    let pem_file = dir.join(format!("{}.pem", key.pair.public_id));
    std::fs::write(&pem_file, ckms.export_public_pkcs8_pem(&key.pair.public_id)).map_err(|e| e.to_string())?;
    let converted = Command::new("ssh-keygen")
        .args(["-i", "-m", "PKCS8", "-f"])
        .arg(&pem_file)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    let converted = String::from_utf8_lossy(&converted.stdout);
    let blob = converted.split_whitespace().nth(1);
    let found = listed.lines().find(|line| {
        let mut fields = line.split_whitespace();
        let (kind, line_blob) = (fields.next(), fields.next());
        match blob {
            Some(blob) => line_blob == Some(blob),
            None => kind == Some(key.ssh_type()),
        }
    });
    Ok(found.map(str::to_owned))
}

fn print_indented(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("    {line}");
    }
}
