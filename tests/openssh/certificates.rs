//! SSH certificates signed by a CA whose key lives in the KMS (tagged `ssh-ca`, offered when
//! `COSMIAN_PKCS11_SSH_KEY_TAG=ssh-ca`): `ssh-keygen -s ca.pub -D lib` signs user and host
//! certificates; sshd (`TrustedUserCAKeys`, `RevokedKeys`) and ssh (`@cert-authority`) check
//! them; a KMS user key logs in with its certificate, from an ssh config and from the agent.

use std::path::{Path, PathBuf};
use std::process::Output;

use cosmian_pkcs11_testbed::{OpenSsh, Sshd, current_user, output_text as text, provider_lib, ssh_command};

use crate::{
    Bed, CA_TAG, MANY_KEYS, agent_with_provider, assert_logged_in, case_dir, provider_env, ssh_with_config, using_kms,
};

/// `ssh-keygen -s ca.pub -D lib -I id -n principals -V validity -z serial [-h] key.pub`, the
/// CA's private key used through the provider; returns the certificate (`key-cert.pub`).
pub(crate) fn sign(openssh: &OpenSsh, bed: &Bed, dir: &Path, key_pub: &Path, args: &[&str]) -> PathBuf {
    let ca_pub = bed.ca(openssh).write_pub(&dir.join("ca.pub"));
    let out = openssh
        .command("ssh-keygen")
        .arg("-s")
        .arg(&ca_pub)
        .arg("-D")
        .arg(provider_lib())
        .args(args)
        .arg(key_pub)
        .envs(provider_env(&bed.config, dir, CA_TAG))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: ssh-keygen -s: {}", openssh.banner(), text(&out));
    let cert = key_pub.with_file_name(format!("{}-cert.pub", key_pub.file_stem().unwrap().to_string_lossy()));
    assert!(std::fs::read_to_string(&cert).unwrap().contains("-cert-v01@openssh.com "), "{}", cert.display());
    cert
}

/// A throw-away key pair of this OpenSSH (`dir/name`, `dir/name.pub`).
fn local_key(openssh: &OpenSsh, dir: &Path, name: &str, kind: &str) -> PathBuf {
    let key = dir.join(name);
    let out = openssh.command("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    key
}

/// The files and sshd settings of a host that trusts the CA for its users: no
/// `authorized_keys`, `TrustedUserCAKeys`, and a KRL revoking serial 13 of that CA.
pub(crate) fn trusting_sshd(openssh: &'static OpenSsh, bed: &Bed, dir: &Path, extra: &str) -> Sshd {
    let ca_pub = bed.ca(openssh).write_pub(&dir.join("ca.pub"));
    let (spec, krl) = (dir.join("revoked.txt"), dir.join("revoked.krl"));
    std::fs::write(&spec, "serial: 13\n").unwrap();
    let out =
        openssh.command("ssh-keygen").arg("-k").arg("-f").arg(&krl).arg("-s").arg(&ca_pub).arg(&spec).output().unwrap();
    assert!(out.status.success(), "ssh-keygen -k: {}", text(&out));
    let config = format!("TrustedUserCAKeys {}\nRevokedKeys {}\n{MANY_KEYS}\n{extra}", ca_pub.display(), krl.display());
    Sshd::start_on(openssh, "", &config)
}

/// ssh with a local key and one of its certificates.
fn login_with(sshd: &Sshd, key: &Path, cert: &Path, marker: &str) -> Output {
    ssh_command(sshd)
        .opt("-i")
        .opt(key)
        .opt("-o")
        .opt(format!("CertificateFile={}", cert.display()))
        .run(&format!("echo {marker}"))
}

/// The CA signs certificates of a user key; sshd accepts the one that lists the login user
/// among its principals, and refuses one for other principals, an expired one and a revoked
/// one (serial in the KRL).
pub fn a_kms_ca_signs_user_certificates_that_sshd_checks(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "user-certificates");
    let key = local_key(openssh, &dir, "id_user", "ed25519");
    let user = current_user();
    let cases = [
        ("good", format!("{user},alice"), "+1h", "7", None),
        ("other-principals", "alice,bob".to_owned(), "+1h", "8", Some("not a listed principal")),
        ("expired", user.to_owned(), "20200101:20200102", "9", Some("expired")),
        ("revoked", user.to_owned(), "+1h", "13", Some("revoked")),
    ];
    let sshd = trusting_sshd(openssh, bed, &dir, "");
    for (name, principals, validity, serial, refused) in cases {
        let key_pub = dir.join(format!("{name}.pub"));
        std::fs::copy(key.with_extension("pub"), &key_pub).unwrap();
        let cert = sign(openssh, bed, &dir, &key_pub, &["-I", name, "-n", &principals, "-V", validity, "-z", serial]);
        let out = login_with(&sshd, &key, &cert, name);
        match refused {
            None => {
                assert_logged_in(&out, &sshd, name, "ED25519-CERT");
                let ca = bed.ca(openssh).sshd_type();
                assert!(sshd.log().contains(&format!("ID {name} (serial {serial}) CA {ca} ")), "{}", sshd.log());
            }
            Some(why) => {
                assert!(!out.status.success(), "{}: logged in with the {name} certificate", openssh.banner());
                assert!(sshd.log().contains(why), "{}: sshd does not say {why:?}:\n{}", openssh.banner(), sshd.log());
            }
        }
    }
}

/// The CA signs the host key of an sshd (`-h`); ssh, which knows the host only through
/// `@cert-authority` in its known_hosts, connects under `StrictHostKeyChecking yes`, and
/// refuses the same host without that line.
pub fn a_kms_ca_signs_host_certificates_that_ssh_trusts(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "host-certificate");
    let host_key = local_key(openssh, &dir, "host_ecdsa", "ecdsa");
    let host_cert = sign(
        openssh,
        bed,
        &dir,
        &host_key.with_extension("pub"),
        &["-h", "-I", "testbed-host", "-n", "127.0.0.1", "-V", "+1h"],
    );
    let user_key = local_key(openssh, &dir, "id_user", "ed25519");
    let user_cert =
        sign(openssh, bed, &dir, &user_key.with_extension("pub"), &["-I", "user", "-n", current_user(), "-V", "+1h"]);
    let extra = format!("HostKey {}\nHostCertificate {}", host_key.display(), host_cert.display());
    let sshd = trusting_sshd(openssh, bed, &dir, &extra);
    let connect = |known_hosts: &str, marker: &str| {
        let file = dir.join(format!("known_hosts-{marker}"));
        std::fs::write(&file, known_hosts).unwrap();
        ssh_command(&sshd)
            .opt("-o")
            .opt(format!("UserKnownHostsFile={}", file.display()))
            .opt("-o")
            .opt("StrictHostKeyChecking=yes")
            .opt("-o")
            .opt("HostKeyAlgorithms=ecdsa-sha2-nistp256-cert-v01@openssh.com")
            .opt("-i")
            .opt(&user_key)
            .opt("-o")
            .opt(format!("CertificateFile={}", user_cert.display()))
            .run(&format!("echo {marker}"))
    };
    let out = connect(&format!("@cert-authority * {}\n", bed.ca(openssh).line), "trusted-host");
    assert_logged_in(&out, &sshd, "trusted-host", "ED25519-CERT");
    // 9.2 says "Host key verification failed", 10.3 "Couldn't drop certificate".
    let out = connect("", "unknown-host");
    assert!(!out.status.success() && out.stdout.is_empty(), "connected to a host it has no key of: {}", text(&out));
}

/// A KMS user key with a certificate logs in to an sshd that trusts only the CA: with
/// `CertificateFile` next to `PKCS11Provider` in an ssh config, and through the agent after
/// `ssh-add -s lib user-cert.pub` (OpenSSH 9.6 and later; 9.2 ignores the certificate).
pub fn a_kms_key_logs_in_with_its_certificate(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "kms-key-certificate");
    let key = &bed.keys["p256"];
    let cert = sign(
        openssh,
        bed,
        &dir,
        &key.write_pub(&dir.join("user.pub")),
        &["-I", "kms-user", "-n", current_user(), "-V", "+1h"],
    );
    let sshd = trusting_sshd(openssh, bed, &dir, "");

    let lines = format!("PKCS11Provider {}\nCertificateFile {}", provider_lib().display(), cert.display());
    let out = ssh_with_config(&sshd, &dir, &lines, "echo cert-from-config");
    assert_logged_in(&out, &sshd, "cert-from-config", "ECDSA-CERT");

    let agent = agent_with_provider(openssh, &dir, &[&cert]);
    let listed = agent.command("ssh-add").arg("-l").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo cert-from-agent");
    if openssh.at_least(9, 6) {
        assert!(listed.contains("(ECDSA-CERT)"), "{listed}");
        assert_logged_in(&out, &sshd, "cert-from-agent", "ECDSA-CERT");
    } else {
        // Before 9.6, ssh-add -s ignores the certificate: the agent holds the bare key only.
        assert!(!listed.contains("-CERT)"), "{}: {listed}", openssh.banner());
        assert!(!out.status.success(), "{}: logged in with a certificate the agent does not hold", openssh.banner());
    }
}
