//! Client certificates as users make them, against the real KMS started with TLS and
//! client-certificate authentication (`--clients-ca-cert-file`), with `ssh-keygen -D` as the
//! PKCS#11 client: X.509 v1 (`openssl x509 -req` without an extension file) and v3
//! certificates, signed by the CA or by an intermediate CA (a chain), as PEM files and as
//! PKCS#12 files, all list the keys; and every kind of bad certificate, key or PKCS#12 file
//! lists nothing, prints nothing on the terminal (no panic of a dependency), and is explained
//! by one log line that names the file.

mod platform_support;

use cosmian_pkcs11_testbed::{Ckms, KeyKind, KmsServer, TestCa, X509Version};
use platform_support::{assert_log_is_trace_and_clean, case, keygen_d, provider_log, text};

const P12_PASSWORD: &str = "p12-s3cret-pw";

/// A KMS serving HTTPS with the CA's server certificate and authenticating clients by a
/// certificate the CA (or its intermediate) issued, and a P-256 key pair tagged `ssh-auth`
/// that ckms created as `alice` (a v3 PEM client certificate). Returns the server and the
/// private key's id.
fn kms_for_alice(ca: &TestCa) -> (KmsServer, String) {
    let ca_file = ca.path("ca.pem").display().to_string();
    let mut args = ca.kms_args();
    args.extend(["--clients-ca-cert-file".to_owned(), ca_file]);
    let kms = KmsServer::start_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ca.client_cert("ckms", "alice", X509Version::V3, false);
    let ckms =
        Ckms::with_http_config(&kms, &format!("{}{}", ca.verified_cert_line(), pem_lines(ca, "ckms.pem", "ckms.key")));
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    (kms, pair.private_id)
}

/// The `[http_config]` lines of a PEM client certificate (files of the CA's folder).
fn pem_lines(ca: &TestCa, cert: &str, key: &str) -> String {
    let [cert, key] = [cert, key].map(|name| ca.path(name).display().to_string());
    format!("tls_client_pem_cert_path = \"{cert}\"\ntls_client_pem_key_path = \"{key}\"\n")
}

/// The `[http_config]` lines of a PKCS#12 client certificate (a file of the CA's folder).
fn pkcs12_lines(ca: &TestCa, p12: &str) -> String {
    let p12 = ca.path(p12).display().to_string();
    format!("tls_client_pkcs12_path = \"{p12}\"\ntls_client_pkcs12_password = \"{P12_PASSWORD}\"\n")
}

#[test]
fn v1_and_v3_client_certificates_with_or_without_a_chain_list_keys_from_pem_and_pkcs12() {
    let ca = TestCa::new();
    let (kms, key_id) = kms_for_alice(&ca);
    let verified = ca.verified_cert_line();
    for version in [X509Version::V1, X509Version::V3] {
        for chained in [false, true] {
            let name = format!("{version:?}{}", if chained { "-chained" } else { "" });
            ca.client_cert(&name, "alice", version, chained);
            ca.pkcs12(&name, &name, P12_PASSWORD, &[]);
            for (form, lines) in [
                ("pem", pem_lines(&ca, &format!("{name}.pem"), &format!("{name}.key"))),
                ("p12", pkcs12_lines(&ca, &format!("{name}.p12"))),
            ] {
                let (config, logs) =
                    case(kms.dir(), &format!("{name}-{form}"), &kms.url(), &format!("{verified}{lines}"));
                let out = keygen_d(&config, &logs);
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    stdout.starts_with("ecdsa-sha2-nistp256 ") && stdout.trim_end().ends_with(&key_id),
                    "{name} {form}: {}\nprovider log:\n{}",
                    text(&out),
                    provider_log(&logs)
                );
                assert_log_is_trace_and_clean(&logs, &[P12_PASSWORD]);
            }
        }
    }
}

#[test]
fn bad_certificates_keys_and_pkcs12_files_are_explained_in_the_log_and_never_on_the_terminal() {
    let ca = TestCa::new();
    let (kms, _) = kms_for_alice(&ca);
    let verified = ca.verified_cert_line();
    let write = |name: &str, contents: &str| std::fs::write(ca.path(name), contents).unwrap();
    ca.client_cert("alice", "alice", X509Version::V3, false);
    ca.client_cert("bob", "bob", X509Version::V1, false);
    write("garbage", "not a certificate, nor a key\n");
    write("empty", "");
    // Well-formed PEM around DER that is no certificate, no key.
    write("bad-der.pem", "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n");
    write("bad-der.key", "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n");
    ca.openssl(&[
        "x509",
        "-req",
        "-in",
        "alice.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-days",
        "-1",
        "-out",
        "expired.pem",
    ]);
    // An Ed448 key, which TLS here cannot sign with, and its certificate.
    ca.openssl(&["genpkey", "-algorithm", "ed448", "-out", "ed448.key"]);
    ca.openssl(&["req", "-new", "-key", "ed448.key", "-subj", "/CN=alice", "-out", "ed448.csr"]);
    ca.openssl(&[
        "x509",
        "-req",
        "-in",
        "ed448.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-days",
        "2",
        "-out",
        "ed448.pem",
    ]);
    // PKCS#12 files without a certificate, without a key.
    let pass = format!("pass:{P12_PASSWORD}");
    ca.openssl(&["pkcs12", "-export", "-nocerts", "-inkey", "alice.key", "-out", "key-only.p12", "-passout", &pass]);
    ca.openssl(&["pkcs12", "-export", "-nokeys", "-in", "alice.pem", "-out", "cert-only.p12", "-passout", &pass]);

    let cases = [
        ("garbage-cert", pem_lines(&ca, "garbage", "alice.key"), "garbage holds no PEM certificate"),
        ("empty-cert", pem_lines(&ca, "empty", "alice.key"), "empty holds no PEM certificate"),
        ("key-as-cert", pem_lines(&ca, "alice.key", "alice.key"), "alice.key holds no PEM certificate"),
        (
            "bad-der-cert",
            pem_lines(&ca, "bad-der.pem", "alice.key"),
            "bad-der.pem: certificate 1 is not an X.509 certificate",
        ),
        ("garbage-key", pem_lines(&ca, "alice.pem", "garbage"), "garbage holds no PEM private key"),
        ("empty-key", pem_lines(&ca, "alice.pem", "empty"), "empty holds no PEM private key"),
        ("cert-as-key", pem_lines(&ca, "alice.pem", "alice.pem"), "alice.pem holds no PEM private key"),
        ("bad-der-key", pem_lines(&ca, "alice.pem", "bad-der.key"), "bad-der.key: TLS cannot use this private key"),
        ("wrong-key", pem_lines(&ca, "alice.pem", "bob.key"), "bob.key is not the key of the certificate in"),
        ("wrong-key-v1", pem_lines(&ca, "bob.pem", "alice.key"), "alice.key is not the key of the certificate in"),
        ("expired", pem_lines(&ca, "expired.pem", "alice.key"), "expired.pem: the client certificate expired on"),
        ("ed448", pem_lines(&ca, "ed448.pem", "ed448.key"), "ed448.key: TLS cannot use this private key"),
        ("garbage-p12", pkcs12_lines(&ca, "garbage"), "cannot open the PKCS#12 file"),
        ("empty-p12", pkcs12_lines(&ca, "empty"), "cannot open the PKCS#12 file"),
        ("key-only-p12", pkcs12_lines(&ca, "key-only.p12"), "key-only.p12 holds no private key with its certificate"),
        (
            "cert-only-p12",
            pkcs12_lines(&ca, "cert-only.p12"),
            "cert-only.p12 holds no private key with its certificate",
        ),
    ];
    for (name, lines, why) in cases {
        let (config, logs) = case(kms.dir(), name, &kms.url(), &format!("{verified}{lines}"));
        let out = keygen_d(&config, &logs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.stdout.is_empty(), "{name}: keys offered: {}", text(&out));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{name}: on the terminal: {}",
            text(&out)
        );
        let log = provider_log(&logs);
        let explained = log.lines().any(|l| l.contains(" ERROR ") && l.contains(why));
        assert!(explained, "{name}: no error line of the log says {why:?}:\n{log}");
        assert_log_is_trace_and_clean(&logs, &[P12_PASSWORD]);
    }
}
