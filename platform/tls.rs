//! TLS to the KMS (rustls, through ureq): the server is verified against the system's roots
//! (rustls-native-certs) plus the configuration's `verified_cert`, or not at all when
//! `accept_invalid_certs` says so (a warning in the log); a client certificate comes from PEM
//! files or from a PKCS#12 file, whose password may live in the OS credential store.
//!
//! Loading the system's roots costs a process about 3 ms of CPU (Debian: 146 certificates
//! read from the bundle and again from `/etc/ssl/certs`, PEM-decoded, parsed), more than the
//! rest of TLS. With a `verified_cert`, the first configuration trusts it alone; the client
//! adds the system's roots ([`with_system_roots`]) when the KMS's certificate fails that first
//! verification, and tries again: the same certificates are accepted, the cost is paid only
//! by KMSs that need it.

use std::path::Path;
use std::sync::Arc;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::config::{ClientCertificate, KmsConfig, Secret};

/// The TLS settings for this configuration, and whether they leave the system's roots out for
/// now (a `verified_cert` is the only trust anchor until [`with_system_roots`]). An `Err` names
/// the file or setting at fault and never holds a secret.
pub fn client_config(config: &KmsConfig) -> Result<(TlsConfig, bool), String> {
    let mut builder = TlsConfig::builder();
    if !config.server_url.starts_with("https://") {
        return Ok((builder.build(), false));
    }
    let mut deferred = false;
    if config.accept_invalid_certs {
        tracing::warn!(config = %config.source.display(), "accept_invalid_certs = true: the KMS's TLS certificate is NOT verified");
        builder = builder.disable_verification(true);
    } else {
        let roots = match config.verified_cert.as_deref() {
            Some(pem) => {
                deferred = true;
                let certs = certificates(pem.as_bytes());
                if certs.is_empty() {
                    return Err("verified_cert holds no PEM certificate".into());
                }
                certs
            }
            None => system_roots(),
        };
        builder = builder.root_certs(RootCerts::Specific(Arc::new(roots)));
    }
    let client = match &config.client_certificate {
        None => None,
        Some(ClientCertificate::Pem { cert, key }) => Some(from_pem(cert, key)?),
        Some(ClientCertificate::Pkcs12 { path, password }) => Some(from_pkcs12(path, password.as_ref())?),
    };
    Ok((builder.client_cert(client).build(), deferred))
}

/// The same settings, trusting the system's roots besides the roots they had.
pub fn with_system_roots(tls: &TlsConfig) -> TlsConfig {
    let mut roots = system_roots();
    if let RootCerts::Specific(own) = tls.root_certs() {
        roots.extend(own.iter().cloned());
    }
    TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(tls.client_cert().cloned())
        .build()
}

/// The system's trusted roots.
fn system_roots() -> Vec<Certificate<'static>> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system root certificate");
    }
    native.certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect()
}

fn certificates(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A certificate chain and its key from PEM files (`tls_client_pem_cert_path`, `..._key_path`).
fn from_pem(cert: &Path, key: &Path) -> Result<ClientCert, String> {
    let chain = certificates(&read(cert)?);
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let private_key = ureq::tls::parse_pem(&read(key)?)
        .find_map(|item| match item {
            Ok(PemItem::PrivateKey(k)) => Some(k),
            _ => None,
        })
        .ok_or_else(|| format!("{} holds no PEM private key", key.display()))?;
    Ok(ClientCert::new_with_certs(&chain, private_key))
}

/// The key and its certificate chain from a PKCS#12 file (`tls_client_pkcs12_path`); no
/// password means the empty one.
fn from_pkcs12(path: &Path, password: Option<&Secret>) -> Result<ClientCert, String> {
    let data = read(path)?;
    let password = password.map_or("", Secret::expose);
    // The parser's messages name what failed (MAC, padding, algorithm), never the password.
    let store = p12_keystore::KeyStore::from_pkcs12(&data, password, p12_keystore::Pkcs12ImportPolicy::Strict)
        .map_err(|e| format!("cannot open the PKCS#12 file {} (wrong password?): {e}", path.display()))?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| format!("{} holds no private key with its certificate", path.display()))?;
    let certs: Vec<_> = chain.certs().iter().map(|c| Certificate::from_der(c.as_der()).to_owned()).collect();
    if certs.is_empty() {
        return Err(format!("{} holds no certificate for its private key", path.display()));
    }
    // ureq 3 builds a key from DER only with a key kind it does not export: through PEM.
    let pem = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, chain.key().as_der())
        .map_err(|e| format!("{}: cannot re-encode the private key: {e}", path.display()))?;
    let key = PrivateKey::from_pem(pem.as_bytes()).map_err(|e| format!("{}: unusable private key: {e}", path.display()))?;
    Ok(ClientCert::new_with_certs(&certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> KmsConfig {
        let text = format!("[http_config]\nserver_url = \"https://kms.test:9998\"\n{extra}");
        KmsConfig::parse(&text, Path::new("t.toml")).unwrap().0
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let err = client_config(&config("verified_cert = \"not a certificate\"\n")).unwrap_err();
        assert_eq!(err, "verified_cert holds no PEM certificate");
        let err = client_config(&config("tls_client_pem_cert_path = \"/nonexistent/c.pem\"\ntls_client_pem_key_path = \"/k\"\n")).unwrap_err();
        assert!(err.starts_with("cannot read /nonexistent/c.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("cosmian-pkcs11-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.p12");
        std::fs::write(&garbage, b"not DER").unwrap();
        let line = format!("tls_client_pkcs12_path = \"{}\"\ntls_client_pkcs12_password = \"s3cr3t-pw\"\n", garbage.display());
        let err = client_config(&config(&line)).unwrap_err();
        assert!(err.contains("garbage.p12") && !err.contains("s3cr3t"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_system_roots_wait_while_verified_cert_is_the_trust_anchor() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUJd5Fq1+lP0Ofb3N1ACBYPJ3bOzAwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
        let specific = |tls: &TlsConfig| match tls.root_certs() {
            RootCerts::Specific(roots) => roots.len(),
            _ => usize::MAX,
        };
        let (tls, deferred) = client_config(&config(&format!("verified_cert = \"\"\"\n{ca}\"\"\"\n"))).unwrap();
        assert!(deferred);
        assert_eq!(specific(&tls), 1, "verified_cert alone");
        let system = system_roots().len();
        assert_eq!(specific(&with_system_roots(&tls)), system + 1, "then the system's roots too");
        let (tls, deferred) = client_config(&config("")).unwrap();
        assert!(!deferred);
        assert_eq!(specific(&tls), system, "no verified_cert: the system's roots at once");
        let (_, deferred) = client_config(&config("accept_invalid_certs = true\n")).unwrap();
        assert!(!deferred);
    }

    #[test]
    fn plain_http_needs_no_tls_material() {
        let (c, _) = KmsConfig::parse("[http_config]\nserver_url = \"http://h\"\nverified_cert = \"x\"\n", Path::new("t")).unwrap();
        assert!(client_config(&c).is_ok());
    }
}
