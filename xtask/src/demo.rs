//! `cargo xtask demo`: everything a user does, printed like a tutorial, from a fresh machine
//! to an SSH login with keys that never leave a (local) Cosmian KMS.
//!
//! Install the test bed, build the provider, start a KMS, create with ckms one key pair of
//! each type tagged `ssh-auth` plus one tagged `not-ssh`, write the provider's configuration,
//! list the keys with `ssh-keygen -D`, trust them in a throw-away sshd, log in with `ssh -I`,
//! then log in with each key alone and say which key types work. Fails when a login fails,
//! when a key that should be offered is not, or when the `not-ssh` key is offered.

use std::path::Path;
use std::process::{Command, Output};

use cosmian_pkcs11_testbed::{self as testbed, Ckms, KeyKind, KeyPair, KmsServer, Sshd};

use crate::{cargo, install_test_bed, step};

/// The tag the provider offers by default.
const SSH_TAG: &str = "ssh-auth";

/// One key pair of the demo.
struct DemoKey {
    label: &'static str,
    kind: KeyKind<'static>,
    tag: &'static str,
    pair: KeyPair,
    /// The `authorized_keys` line `ssh-keygen -D` printed for it, if it was offered.
    offered: Option<String>,
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
    let openssh = openssh_version()?;

    step(
        "start a local KMS",
        "cosmian_kms --database-type sqlite --sqlite-path DIR --hostname 127.0.0.1 --port PORT",
    );
    let kms = KmsServer::start();
    println!(
        "    the KMS answers at {} (log: {})",
        kms.url(),
        kms.log_path().display()
    );

    let ckms = Ckms::new(&kms);
    let specs: [(&str, KeyKind, &str); 6] = [
        ("NIST P-256", KeyKind::Ec("nist-p256"), SSH_TAG),
        ("NIST P-384", KeyKind::Ec("nist-p384"), SSH_TAG),
        ("Ed25519", KeyKind::Ec("ed25519"), SSH_TAG),
        ("RSA 2048", KeyKind::Rsa(2048), SSH_TAG),
        ("RSA 4096", KeyKind::Rsa(4096), SSH_TAG),
        ("NIST P-256", KeyKind::Ec("nist-p256"), "not-ssh"),
    ];
    let mut keys: Vec<DemoKey> = specs
        .into_iter()
        .map(|(label, kind, tag)| {
            step(
                &format!("create a {label} key pair tagged {tag}"),
                &format!("ckms {}", kind.ckms_args(&[tag]).join(" ")),
            );
            let pair = ckms.create_key_pair(kind, &[tag]);
            println!(
                "    private key {}, public key {}",
                pair.private_id, pair.public_id
            );
            DemoKey {
                label,
                kind,
                tag,
                pair,
                offered: None,
            }
        })
        .collect();

    let work = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let config = testbed::write_provider_config(work.path(), &kms.url(), "");
    step(
        "write the provider's configuration (ckms format)",
        &config.display().to_string(),
    );
    print_indented(&std::fs::read_to_string(&config).unwrap_or_default());
    let conf_env = format!("COSMIAN_KMS_CLI_CONF={}", config.display());

    step(
        "list the keys OpenSSH sees",
        &format!("{conf_env} ssh-keygen -D {}", lib.display()),
    );
    let listed = testbed::ssh_keygen_d(&lib)
        .env("COSMIAN_KMS_CLI_CONF", &config)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    let authorized_keys = String::from_utf8_lossy(&listed.stdout).into_owned();
    print_indented(&authorized_keys);
    for line in String::from_utf8_lossy(&listed.stderr).lines() {
        println!("    ssh-keygen: {line}");
    }
    if !listed.status.success() || authorized_keys.trim().is_empty() {
        return Err(format!("ssh-keygen -D listed no key ({})", listed.status));
    }

    step(
        "match each listed key with the KMS's public keys",
        "ckms ec keys export --key-format pkcs8-pem | ssh-keygen -i -m PKCS8",
    );
    for key in &mut keys {
        key.offered = find_offered(&authorized_keys, key, &ckms, work.path())?;
    }

    step(
        "start a throw-away sshd that trusts the listed keys",
        "sshd -D -e -f CONFIG (authorized_keys = the lines above)",
    );
    let sshd = Sshd::start(&authorized_keys, "");
    println!(
        "    sshd listens on 127.0.0.1:{} (log: {}/sshd.log)",
        sshd.port(),
        sshd.dir().display()
    );

    let hello = "echo hello from $(hostname)";
    step(
        "log in with the KMS's keys",
        &format!(
            "{conf_env} ssh -I {} -p {} {}@127.0.0.1 '{hello}'",
            lib.display(),
            sshd.port(),
            sshd.user()
        ),
    );
    let first = login(&sshd, &lib, &config, hello);
    print_indented(&String::from_utf8_lossy(&first.stdout));
    if !first.status.success() {
        print_indented(&String::from_utf8_lossy(&first.stderr));
        return Err(format!(
            "the SSH login failed ({}); sshd's log:\n{}",
            first.status,
            sshd.log()
        ));
    }

    step(
        "log in with each key alone",
        "the same ssh, authorized_keys holding one key at a time",
    );
    let mut failures = Vec::new();
    println!("    with {}", openssh.name);
    for key in &keys {
        let verdict = match (&key.offered, key.tag) {
            (Some(_), tag) if tag != SSH_TAG => {
                failures.push(format!("the {tag} key was offered"));
                "OFFERED, but it is not tagged ssh-auth".to_owned()
            }
            (None, tag) if tag != SSH_TAG => format!("not offered (tagged {tag}), as expected"),
            (None, _) if key.ssh_type() == "ssh-ed25519" && openssh.before(10, 1) => {
                format!("not offered: {} takes no Ed25519 key from a PKCS#11 provider (10.1p1 and later do)", openssh.name)
            }
            (None, _) => {
                failures.push(format!("the {} key was not offered", key.label));
                "NOT OFFERED".to_owned()
            }
            (Some(line), _) => {
                sshd.set_authorized_keys(line);
                let alone = login(&sshd, &lib, &config, "true");
                if alone.status.success() {
                    "logged in".to_owned()
                } else {
                    failures.push(format!("the {} key could not log in", key.label));
                    format!(
                        "LOGIN FAILED: {}",
                        String::from_utf8_lossy(&alone.stderr).trim()
                    )
                }
            }
        };
        println!(
            "    {:<10} {:<8} {:<20} {verdict}",
            key.label,
            key.tag,
            key.ssh_type()
        );
    }
    step(
        "check the KMS's audit log",
        &kms.audit_path().display().to_string(),
    );
    let private_ids: Vec<&str> = keys.iter().map(|k| k.pair.private_id.as_str()).collect();
    let events = kms.audit_events();
    let signatures = events.iter().filter(|e| e.operation == "Sign").count();
    let exported: Vec<_> = events
        .iter()
        .filter(|e| e.operation == "Get" || e.operation == "Export")
        .filter(|e| {
            e.object_uid
                .as_deref()
                .is_some_and(|id| private_ids.contains(&id))
        })
        .collect();
    println!(
        "    {} KMIP operations, {signatures} of them Sign",
        events.len()
    );
    if exported.is_empty() {
        println!("    no Get or Export of a private key: the private keys never left the KMS");
    } else {
        failures.push(format!(
            "private keys were fetched from the KMS: {exported:?}"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// `ssh -I lib ... remote_command` to `sshd` with the provider's configuration.
fn login(sshd: &Sshd, lib: &Path, config: &Path, remote_command: &str) -> Output {
    testbed::ssh_command(sshd)
        .provider(lib)
        .env("COSMIAN_KMS_CLI_CONF", config)
        .run(remote_command)
}

/// The line of `ssh-keygen -D`'s output holding `key`: the KMS's public key, exported as
/// PKCS#8 PEM and converted by `ssh-keygen -i -m PKCS8`, must be the line's key blob. OpenSSH
/// cannot convert Ed25519 keys: those are matched by key type (the demo has only one).
fn find_offered(
    listed: &str,
    key: &DemoKey,
    ckms: &Ckms,
    dir: &Path,
) -> Result<Option<String>, String> {
    let pem_file = dir.join(format!("{}.pem", key.pair.public_id));
    std::fs::write(&pem_file, ckms.export_public_pkcs8_pem(&key.pair.public_id))
        .map_err(|e| e.to_string())?;
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

/// The local OpenSSH's version, from `ssh -V`.
struct OpenSsh {
    name: String,
    major: u32,
    minor: u32,
}

impl OpenSsh {
    fn before(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) < (major, minor)
    }
}

fn openssh_version() -> Result<OpenSsh, String> {
    let out = Command::new("ssh")
        .arg("-V")
        .output()
        .map_err(|e| format!("cannot run ssh -V: {e}"))?;
    // `OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.17 1 Jul 2025`, on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    let name = text.split([' ', ',']).next().unwrap_or_default().to_owned();
    let version = name
        .strip_prefix("OpenSSH_")
        .ok_or_else(|| format!("unexpected ssh -V: {text}"))?;
    let number = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    let (major, rest) = version
        .split_once('.')
        .ok_or_else(|| format!("unexpected ssh -V: {text}"))?;
    match (number(major), number(rest)) {
        (Some(major), Some(minor)) => Ok(OpenSsh { name, major, minor }),
        _ => Err(format!("unexpected ssh -V: {text}")),
    }
}

fn print_indented(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("    {line}");
    }
}
