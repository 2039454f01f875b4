//! A throw-away certificate authority made with the `openssl` CLI, a server certificate it
//! signed for 127.0.0.1 (what a [`KmsServer`](crate::KmsServer) started with TLS and a client
//! that verifies it need), and client certificates made as users make them: X.509 v3 (with an
//! extension file) or v1 (`openssl x509 -req` without one), signed by the CA or by an
//! intermediate CA, as PEM files or PKCS#12 files. P-256 keys, valid two days.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::process::temp_dir;

/// The version of a client certificate [`TestCa::client_cert`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X509Version {
    /// `openssl x509 -req` without `-extfile`: no extensions, version 1.
    V1,
    /// With `basicConstraints=CA:FALSE` and `extendedKeyUsage=clientAuth`.
    V3,
}

/// The CA (`ca.pem`) and the server's certificate and key, in a temporary folder.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

const NEW_P256_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

impl TestCa {
    /// Makes the CA and the server certificate.
    ///
    /// # Panics
    /// When `openssl` fails or is missing.
    pub fn new() -> TestCa {
        let ca = TestCa { dir: temp_dir("pki-") };
        ca.new_ca("ca", "/CN=cosmian-pkcs11 test CA", None);
        ca.issue(
            "server",
            "/CN=127.0.0.1",
            "ca",
            Some("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        );
        ca
    }

    /// Runs `openssl` with these arguments in the CA's folder.
    ///
    /// # Panics
    /// When `openssl` fails or is missing.
    pub fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").current_dir(self.dir.path()).args(args).output();
        let out = out.unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// A CA `<name>.pem` with its key `<name>.key`: self-signed, or signed by `issuer`.
    fn new_ca(&self, name: &str, subject: &str, issuer: Option<&str>) {
        let extensions = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";
        match issuer {
            None => {
                let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
                let args = ["-keyout", &key, "-out", &pem, "-days", "2", "-subj", subject];
                let ext: Vec<String> = extensions.lines().map(String::from).collect();
                self.openssl(
                    &[&["req", "-x509"][..], &NEW_P256_KEY, &args, &["-addext", &ext[0], "-addext", &ext[1]]].concat(),
                );
            }
            Some(issuer) => self.issue(name, subject, issuer, Some(extensions)),
        }
    }

    /// A certificate `<name>.pem` for a new P-256 key `<name>.key`, signed by the CA
    /// `<issuer>` with these extensions (none: an X.509 v1 certificate).
    fn issue(&self, name: &str, subject: &str, issuer: &str, extensions: Option<&str>) {
        let [key, csr, pem, ext] = ["key", "csr", "pem", "ext"].map(|s| format!("{name}.{s}"));
        let out = ["-keyout", &key, "-out", &csr, "-subj", subject];
        self.openssl(&[&["req"][..], &NEW_P256_KEY, &out].concat());
        let (ca_pem, ca_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        let mut args = vec!["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key];
        args.extend(["-CAcreateserial", "-days", "2", "-out", &pem]);
        if let Some(extensions) = extensions {
            std::fs::write(self.path(&ext), extensions).expect("write the extension file");
            args.extend(["-extfile", &ext]);
        }
        self.openssl(&args);
    }

    /// A client certificate for `cn` in `<name>.pem`, its key in `<name>.key`. With `chained`,
    /// an intermediate CA (`intermediate.pem`, made once) signs it and `<name>.pem` holds the
    /// certificate then the intermediate's; else the CA signs it. Returns `<name>.pem`.
    pub fn client_cert(&self, name: &str, cn: &str, version: X509Version, chained: bool) -> PathBuf {
        let issuer = if chained {
            if !self.path("intermediate.pem").exists() {
                self.new_ca("intermediate", "/CN=cosmian-pkcs11 test intermediate CA", Some("ca"));
            }
            "intermediate"
        } else {
            "ca"
        };
        let extensions = match version {
            X509Version::V1 => None,
            X509Version::V3 => Some("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
        };
        self.issue(name, &format!("/CN={cn}"), issuer, extensions);
        let pem = self.path(&format!("{name}.pem"));
        if chained {
            let mut chain = std::fs::read(&pem).expect("read the certificate");
            chain.extend(std::fs::read(self.path("intermediate.pem")).expect("read the intermediate"));
            std::fs::write(&pem, chain).expect("write the chain");
        }
        pem
    }

    /// `<out>.p12`: the key `<name>.key` and the certificates of `<name>.pem` (a chain is
    /// kept whole), encrypted with `password` (OpenSSL 3's default PBES2/AES, or RC2/3DES with
    /// `-legacy` among `extra`). Returns its path.
    pub fn pkcs12(&self, name: &str, out: &str, password: &str, extra: &[&str]) -> PathBuf {
        let [key, pem, p12] = [(name, "key"), (name, "pem"), (out, "p12")].map(|(n, s)| format!("{n}.{s}"));
        let pass = format!("pass:{password}");
        let args = ["pkcs12", "-export", "-in", &pem, "-inkey", &key, "-out", &p12, "-passout", &pass];
        self.openssl(&[&args[..], extra].concat());
        self.path(&p12)
    }

    /// A file of the CA's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path("ca.pem")).expect("read ca.pem")
    }

    /// The KMS server's arguments to serve HTTPS with the server certificate.
    pub fn kms_args(&self) -> Vec<String> {
        let arg = |name: &str| self.path(name).display().to_string();
        vec!["--tls-cert-file".into(), arg("server.pem"), "--tls-key-file".into(), arg("server.key")]
    }

    /// The `[http_config]` line that makes the provider (or ckms) trust the CA.
    pub fn verified_cert_line(&self) -> String {
        format!("verified_cert = \"\"\"\n{}\"\"\"\n", self.ca_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
