//! A throw-away certificate authority made with the `openssl` CLI, and a server certificate it
//! signed for 127.0.0.1: what a [`KmsServer`](crate::KmsServer) started with TLS and a client
//! that verifies it need (P-256 keys, valid two days).

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::process::temp_dir;

/// The CA (`ca.pem`) and the server's certificate and key, in a temporary folder.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Makes the CA and the server certificate.
    ///
    /// # Panics
    /// When `openssl` fails or is missing.
    pub fn new() -> TestCa {
        let ca = TestCa {
            dir: temp_dir("pki-"),
        };
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(ca.dir.path())
                .args(args)
                .output();
            let out = out.unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca_cert = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cosmian-pkcs11 test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        openssl(&[&["req", "-x509"][..], &new_key, &ca_cert].concat());
        openssl(
            &[
                &["req"][..],
                &new_key,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        let extensions =
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n";
        std::fs::write(ca.path("server.ext"), extensions).expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ]);
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path("ca.pem")).expect("read ca.pem")
    }

    /// The KMS server's arguments to serve HTTPS with the server certificate.
    pub fn kms_args(&self) -> Vec<String> {
        let arg = |name: &str| self.path(name).display().to_string();
        vec![
            "--tls-cert-file".into(),
            arg("server.pem"),
            "--tls-key-file".into(),
            arg("server.key"),
        ]
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
