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
//!
//! Client certificates are checked here ([`checked_client_cert`]), and every failure is an
//! `Err` naming the file: ureq builds its rustls configuration when it first connects and
//! panics (`.expect("valid client auth certificate")`) on whatever rustls refuses there. rustls
//! refuses more than the KMS does: it checks that the key belongs to the certificate by parsing
//! the certificate with webpki, which refuses X.509 v1 certificates (`openssl x509 -req`
//! without an extension file), although the KMS accepts them and rustls sends the certificate
//! as it is. So we make that check ourselves (x509-parser reads v1 and v3), and the crypto
//! provider we give ureq ([`crypto_provider`]: ring, as ureq would pick) loads keys that do not
//! tell rustls their public key, which makes its own check "unknown", skipped by design.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::crypto::{CryptoProvider, KeyProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use zeroize::Zeroizing;

use crate::config::{ClientCertificate, KmsConfig, Secret};

/// The TLS settings for this configuration, and whether they leave the system's roots out for
/// now (a `verified_cert` is the only trust anchor until [`with_system_roots`]). An `Err` names
/// the file or setting at fault and never holds a secret.
pub(crate) fn client_config(config: &KmsConfig) -> Result<(TlsConfig, bool), String> {
    let mut builder = TlsConfig::builder().unversioned_rustls_crypto_provider(crypto_provider());
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
                let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .map(|c| to_ureq(&c))
                    .collect();
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
pub(crate) fn with_system_roots(tls: &TlsConfig) -> TlsConfig {
    let mut roots = system_roots();
    if let RootCerts::Specific(own) = tls.root_certs() {
        roots.extend(own.iter().cloned());
    }
    TlsConfig::builder()
        .unversioned_rustls_crypto_provider(crypto_provider())
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
    native.certs.iter().map(to_ureq).collect()
}

fn to_ureq(cert: &CertificateDer<'_>) -> Certificate<'static> {
    Certificate::from_der(cert.as_ref()).to_owned()
}

/// ring (what ureq picks when told nothing), with keys loaded by [`KeysWithoutPublicKey`].
fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        Arc::new(CryptoProvider { key_provider: &KeysWithoutPublicKey, ..rustls::crypto::ring::default_provider() })
    });
    PROVIDER.clone()
}

/// Loads keys as ring does, but keeps their public key from rustls (see the module
/// documentation): [`checked_client_cert`] has already matched it with the certificate.
#[derive(Debug)]
struct KeysWithoutPublicKey;

impl KeyProvider for KeysWithoutPublicKey {
    fn load_private_key(&self, der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Ok(Arc::new(WithoutPublicKey(rustls::crypto::ring::sign::any_supported_type(&der)?)))
    }
}

/// A signing key whose `public_key()` is the trait's default, `None`.
#[derive(Debug)]
struct WithoutPublicKey(Arc<dyn SigningKey>);

impl SigningKey for WithoutPublicKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.0.choose_scheme(offered)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A certificate chain and its key from PEM files (`tls_client_pem_cert_path`, `..._key_path`).
fn from_pem(cert: &Path, key: &Path) -> Result<ClientCert, String> {
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: unreadable PEM ({e})", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{} holds no PEM private key", key.display()),
        e => format!("{}: unreadable PEM ({e})", key.display()),
    })?;
    checked_client_cert(&chain, private_key, cert, key)
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
    let certs: Vec<_> = chain.certs().iter().map(|c| CertificateDer::from(c.as_der()).into_owned()).collect();
    if certs.is_empty() {
        return Err(format!("{} holds no certificate for its private key", path.display()));
    }
    let key = PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
    checked_client_cert(&certs, key, path, path)
}

/// The chain and key for ureq, once they passed every check rustls would make when ureq
/// builds its configuration (see the module documentation): each certificate is X.509 (v1
/// or v3), the first one is valid now, ring can sign with the key, and the key is the
/// certificate's. `cert_file` and `key_file` name the files in the errors.
fn checked_client_cert(
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<ClientCert, String> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{}: certificate {} is not an X.509 certificate ({e})", cert_file.display(), i + 1))?;
        parsed.push(cert);
    }
    let validity = parsed[0].validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!(
            "{}: the client certificate expired on {}: renew it",
            cert_file.display(),
            validity.not_after
        ));
    }
    if now < validity.not_before {
        return Err(format!(
            "{}: the client certificate is valid only from {} (check the clock)",
            cert_file.display(),
            validity.not_before
        ));
    }
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        format!("{}: TLS cannot use this private key ({e}): use an RSA (2048 bits or more), ECDSA P-256 or P-384, or Ed25519 key", key_file.display())
    })?;
    if signing_key.public_key().is_some_and(|spki| spki.as_ref() != parsed[0].public_key().raw) {
        return Err(format!("{} is not the key of the certificate in {}", key_file.display(), cert_file.display()));
    }
    let label = match &key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    // ureq builds a key from DER only with a key kind it does not export: through PEM.
    let pem = Zeroizing::new(
        der::pem::encode_string(label, der::pem::LineEnding::LF, key.secret_der())
            .map_err(|e| format!("{}: cannot re-encode the private key: {e}", key_file.display()))?,
    );
    let key = PrivateKey::from_pem(pem.as_bytes())
        .map_err(|e| format!("{}: unusable private key: {e}", key_file.display()))?;
    Ok(ClientCert::new_with_certs(&chain.iter().map(to_ureq).collect::<Vec<_>>(), key))
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
        let err = client_config(&config(
            "tls_client_pem_cert_path = \"/nonexistent/c.pem\"\ntls_client_pem_key_path = \"/k\"\n",
        ))
        .unwrap_err();
        assert!(err.starts_with("cannot read /nonexistent/c.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("cosmian-pkcs11-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.p12");
        std::fs::write(&garbage, b"not DER").unwrap();
        let line =
            format!("tls_client_pkcs12_path = \"{}\"\ntls_client_pkcs12_password = \"s3cr3t-pw\"\n", garbage.display());
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
        let (c, _) =
            KmsConfig::parse("[http_config]\nserver_url = \"http://h\"\nverified_cert = \"x\"\n", Path::new("t"))
                .unwrap();
        assert!(client_config(&c).is_ok());
    }
}
