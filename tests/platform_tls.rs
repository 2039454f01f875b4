//! TLS against the real KMS started with TLS, a test CA made here with the `openssl` CLI, and
//! `ssh-keygen -D` as the PKCS#11 client: the server is verified by default (an unknown CA is
//! refused), `verified_cert` and `accept_invalid_certs` are honoured, and with
//! client-certificate authentication (`--clients-ca-cert-file`) PEM and PKCS#12 client
//! certificates (OpenSSL 3's PBES2/AES and the legacy RC2/3DES, the password in the file or in
//! the kernel keyring) work, while a missing one or a wrong password is refused.

mod platform_support;

use std::path::Path;

use cosmian_pkcs11_testbed::{Ckms, KeyKind, KmsServer, TestCa, X509Version};
use platform_support::{KeyringEntry, assert_log_is_trace_and_clean, case, keygen_d, provider_log, text};

const P12_PASSWORD: &str = "p12-s3cret-pw";

/// The test CA, its server certificate for 127.0.0.1 and a client certificate for `alice`, as
/// PEM files and as PKCS#12 files (modern and legacy encryption).
struct Pki(TestCa);

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new();
        ca.client_cert("client", "alice", X509Version::V3, false);
        ca.pkcs12("client", "client", P12_PASSWORD, &[]);
        ca.pkcs12("client", "client-legacy", P12_PASSWORD, &["-legacy"]);
        Pki(ca)
    }

    fn arg(&self, name: &str) -> String {
        self.0.path(name).display().to_string()
    }

    fn verified_cert_line(&self) -> String {
        self.0.verified_cert_line()
    }

    /// The `[http_config]` lines of the PEM client certificate.
    fn pem_client_lines(&self) -> String {
        format!(
            "tls_client_pem_cert_path = \"{}\"\ntls_client_pem_key_path = \"{}\"\n",
            self.arg("client.pem"),
            self.arg("client.key")
        )
    }
}

/// A TLS KMS with these extra arguments, and one P-256 key pair tagged `ssh-auth` created by
/// ckms (with `ckms_lines` in its config); returns the server and the private key's id.
fn kms_with_key(pki: &Pki, extra: &[&str], ckms_lines: &str) -> (KmsServer, String) {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let mut args = vec!["--tls-cert-file", &cert, "--tls-key-file", &key];
    args.extend_from_slice(extra);
    let kms = KmsServer::start_with_args(&args);
    assert!(kms.url().starts_with("https://"));
    let ckms = Ckms::with_http_config(&kms, &format!("accept_invalid_certs = true\n{ckms_lines}"));
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    (kms, pair.private_id)
}

/// Asserts that `ssh-keygen -D` with this configuration offers the key.
fn assert_offers(config: &Path, logs: &Path, key_id: &str) {
    let out = keygen_d(config, logs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ecdsa-sha2-nistp256 ") && stdout.trim_end().ends_with(key_id),
        "{}\nprovider log:\n{}",
        text(&out),
        provider_log(logs)
    );
}

/// Asserts that `ssh-keygen -D` with this configuration offers nothing, and that the log says
/// `why`.
fn assert_refused(config: &Path, logs: &Path, why: &str) {
    let out = keygen_d(config, logs);
    assert!(out.stdout.is_empty(), "keys offered: {}", text(&out));
    let log = provider_log(logs);
    assert!(log.contains(why), "the log does not say {why:?}:\n{log}");
}

#[test]
fn the_server_is_verified_unless_told_otherwise() {
    let pki = Pki::new();
    let (kms, key_id) = kms_with_key(&pki, &[], "");
    let url = kms.url();
    let dir = kms.dir();

    // Verification is on by default: the test CA is not among the system's roots.
    let (config, logs) = case(dir, "default", &url, "");
    assert_refused(&config, &logs, "cannot list the keys of the KMS: KMS unreachable");
    assert!(provider_log(&logs).contains("invalid peer certificate: UnknownIssuer"), "{}", provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[]);

    // verified_cert: the CA is trusted, the certificate (issued for IP 127.0.0.1) verifies.
    let (config, logs) = case(dir, "verified-cert", &url, &pki.verified_cert_line());
    assert_offers(&config, &logs, &key_id);
    assert!(!provider_log(&logs).contains("NOT verified"));

    // Another CA (of the same name, so the failure is the signature): still refused.
    let other = Pki::new();
    let (config, logs) = case(dir, "other-ca", &url, &other.verified_cert_line());
    assert_refused(&config, &logs, "invalid peer certificate");

    // accept_invalid_certs: no verification, and a warning says so.
    let (config, logs) = case(dir, "accept-invalid", &url, "accept_invalid_certs = true");
    assert_offers(&config, &logs, &key_id);
    assert!(
        provider_log(&logs).contains("WARN") && provider_log(&logs).contains("is NOT verified"),
        "{}",
        provider_log(&logs)
    );
}

#[test]
fn client_certificates_from_pem_and_pkcs12() {
    let pki = Pki::new();
    let ca = pki.arg("ca.pem");
    // Client-certificate authentication: the user is the certificate's CN (alice), who owns
    // the key ckms creates with the same certificate.
    let (kms, key_id) = kms_with_key(&pki, &["--clients-ca-cert-file", &ca], &pki.pem_client_lines());
    let url = kms.url();
    let dir = kms.dir();
    let verified = pki.verified_cert_line();

    let (config, logs) = case(dir, "pem", &url, &format!("{verified}{}", pki.pem_client_lines()));
    assert_offers(&config, &logs, &key_id);
    assert_log_is_trace_and_clean(&logs, &[]);

    for p12 in ["client.p12", "client-legacy.p12"] {
        let lines = format!(
            "{verified}tls_client_pkcs12_path = \"{}\"\ntls_client_pkcs12_password = \"{P12_PASSWORD}\"\n",
            pki.arg(p12)
        );
        let (config, logs) = case(dir, p12, &url, &lines);
        assert_offers(&config, &logs, &key_id);
        assert_log_is_trace_and_clean(&logs, &[P12_PASSWORD]);
    }

    // The legacy names of the 5.28 schema.
    let lines = format!(
        "{verified}ssl_client_pkcs12_path = \"{}\"\nssl_client_pkcs12_password = \"{P12_PASSWORD}\"\n",
        pki.arg("client.p12")
    );
    let (config, logs) = case(dir, "legacy-names", &url, &lines);
    assert_offers(&config, &logs, &key_id);

    // No password in the file: it comes from the kernel keyring (service cosmian-kms-pkcs12,
    // account = the path as written in the file).
    let p12 = pki.arg("client.p12");
    let _entry = KeyringEntry::add("cosmian-kms-pkcs12", &p12, P12_PASSWORD);
    let (config, logs) =
        case(dir, "password-in-keyring", &url, &format!("{verified}tls_client_pkcs12_path = \"{p12}\"\n"));
    assert_offers(&config, &logs, &key_id);
    assert!(
        provider_log(&logs).contains("secret found in the OS credential store store=\"keyutils\""),
        "{}",
        provider_log(&logs)
    );
    assert_log_is_trace_and_clean(&logs, &[P12_PASSWORD]);

    // A wrong password: a clear line, no keys, and the password is not in it.
    let lines = format!(
        "{verified}tls_client_pkcs12_path = \"{p12}\"\ntls_client_pkcs12_password = \"wrong-{P12_PASSWORD}\"\n"
    );
    let (config, logs) = case(dir, "wrong-password", &url, &lines);
    assert_refused(&config, &logs, "cannot open the PKCS#12 file");
    assert_log_is_trace_and_clean(&logs, &[P12_PASSWORD]);

    // No client certificate: the KMS refuses.
    let (config, logs) = case(dir, "no-client-cert", &url, &verified);
    assert_refused(&config, &logs, "cannot list the keys of the KMS: KMS refused the credentials: HTTP 401");
}
