//! `cosmian-ssh-agent check`: the provider's set-up checked step by step as the provider makes
//! it (`Provider::from_environment`, then a listing), each step printed with what was found and,
//! when it fails, the fix. Secrets are never printed, only whether and where one is set.

use std::io::Write;
use std::time::Instant;

use crate::config::{ClientCertificate, KmsConfig, Secret, Settings};
use crate::kmip::{KmsClient, KmsError, KmsErrorKind, operations};
use crate::platform;
use crate::token::{self, Kms};

/// Runs the checks, printing to `out`; whether everything needed for a login works.
pub(crate) fn run(out: &mut dyn Write) -> bool {
    let mut report = Report { out, ok: true };
    check(&mut report);
    log_file(&mut report);
    report.ok
}

struct Report<'a> {
    out: &'a mut dyn Write,
    ok: bool,
}

impl Report<'_> {
    fn line(&mut self, mark: &str, text: &str) {
        let _ = writeln!(self.out, "{mark:<5} {text}");
    }

    fn ok(&mut self, text: &str) {
        self.line("ok", text);
    }

    fn note(&mut self, text: &str) {
        self.line("  ", text);
    }

    /// A failed step: what went wrong and what to do.
    fn fail(&mut self, text: &str, fix: &str) {
        self.ok = false;
        self.line("FAIL", text);
        self.line("", &format!("fix: {fix}"));
    }
}

fn check(r: &mut Report) {
    let mut warnings = Vec::new();
    let settings = Settings::from_env(&mut warnings);
    for w in warnings.drain(..) {
        r.line("warn", &w);
    }
    let Some(path) = platform::config_paths::find() else {
        let searched = platform::config_paths::default_locations().join(", ");
        r.fail(
            &format!(
                "no configuration file: COSMIAN_KMS_CLI_CONF and CKMS_CONF are not set, and none of {searched} exists"
            ),
            "create ~/.cosmian/kms.toml with `[http_config]` and `server_url = \"https://your-kms:9998\"` \
             (the file ckms uses), or point COSMIAN_KMS_CLI_CONF at yours",
        );
        return;
    };
    let mut config = match KmsConfig::load(&path) {
        Ok((config, file_warnings)) => {
            r.ok(&format!("configuration file: {}", path.display()));
            for w in file_warnings {
                r.line("warn", &w);
            }
            config
        }
        Err(e) => {
            r.fail(&format!("configuration file {}: {e}", path.display()), "correct the file (TOML, as ckms reads it)");
            return;
        }
    };
    config.fill_from_store(
        |service, account| platform::credentials::lookup(service, account).map(|s| Secret::new(s.as_str())),
        &mut warnings,
    );
    for w in warnings.drain(..) {
        r.line("warn", &w);
    }
    describe(r, &config, &settings);
    match config.cleartext_check() {
        Ok(Some(warning)) => r.line("warn", &warning),
        Ok(None) => {}
        Err(e) => {
            r.fail(&e, "use https://, or set pkcs11_allow_cleartext_credentials = true if the network is yours");
            return;
        }
    }
    let client = match KmsClient::new(&config, &settings) {
        Ok(client) => client,
        Err(e) => {
            r.fail(&format!("KMS client: {e}"), "correct the TLS or proxy settings the message names");
            return;
        }
    };
    if config.use_pin_as_access_token {
        r.note("PIN mode: the KMS is asked only with the PIN; check with `ssh-keygen -D <library>`, which asks for it");
        return;
    }

    let started = Instant::now();
    let deadline = started + settings.request_timeout * 3;
    match operations::locate_key_pairs(&client, &config.vendor_id, &settings.key_tag, deadline) {
        Ok(_) => r.ok(&format!("KMS reached and credentials accepted ({} ms)", started.elapsed().as_millis())),
        Err(e) => {
            let fix = fix_for(&e, &config);
            r.fail(&e.to_string(), &fix);
            return;
        }
    }
    let tag = settings.key_tag.clone();
    let kms = Kms { config, client, key_cache: None };
    match token::list_keys(&kms, &settings) {
        Ok(keys) if keys.is_empty() => r.fail(
            &format!("no active key pair tagged `{tag}`: nothing to offer to ssh"),
            &format!(
                "create one: `ckms ec keys create --curve nist-p256 --tag {tag}` (or ed25519, or `ckms rsa keys \
                 create --size_in_bits 2048 --tag {tag}`), or name the tag your keys carry in COSMIAN_PKCS11_SSH_KEY_TAG"
            ),
        ),
        Ok(keys) => {
            r.ok(&format!("{} key pair(s) tagged `{tag}`:", keys.len()));
            for key in keys {
                r.note(&format!("{:<20} {}", key_kind(&key.public_key), key.ck_label()));
            }
        }
        Err(e) => r.fail(&format!("listing the keys: {e}"), "see the log for the key that failed"),
    }
}

/// Where the provider's log is, which says more about each failure.
fn log_file(r: &mut Report) {
    match platform::logging::folder() {
        Some(folder) => r.note(&format!(
            "log: {} (COSMIAN_PKCS11_LOGGING_LEVEL=debug for one line per KMS request)",
            folder.join(platform::logging::FILE_NAME).display()
        )),
        None => r.note("log: no folder (no home directory): set COSMIAN_PKCS11_LOGGING_FOLDER"),
    }
}

/// The route, TLS and authentication as configured (no secret printed).
fn describe(r: &mut Report, config: &KmsConfig, settings: &Settings) {
    r.note(&format!("KMS: {}", config.server_url));
    let route = match config.kms_proxy() {
        Some(proxy) => format!("through the proxy {}", proxy.url),
        None => "direct (no proxy)".to_owned(),
    };
    r.note(&format!("route: {route}"));
    let tls = if !config.server_url.starts_with("https://") {
        "none (plain HTTP)"
    } else if config.accept_invalid_certs {
        "NOT verified (accept_invalid_certs = true)"
    } else if config.verified_cert.is_some() {
        "verified against verified_cert, then the system's roots"
    } else {
        "verified against the system's roots"
    };
    r.note(&format!("TLS: {tls}"));
    let auth = match (&config.client_certificate, &config.access_token, config.use_pin_as_access_token) {
        (_, _, true) => "the PIN ssh asks for, sent as the bearer token (PIN mode)".to_owned(),
        (Some(ClientCertificate::Pem { cert, .. }), _, _) => format!("client certificate {}", cert.display()),
        (Some(ClientCertificate::Pkcs12 { path, .. }), _, _) => format!("client certificate {}", path.display()),
        (None, Some(_), _) => "bearer token (access_token, or the credential store)".to_owned(),
        (None, None, _) => "none (a KMS without authentication)".to_owned(),
    };
    r.note(&format!("authentication: {auth}"));
    r.note(&format!("keys offered: those tagged `{}` (COSMIAN_PKCS11_SSH_KEY_TAG)", settings.key_tag));
}

/// What to do about a failed request.
fn fix_for(error: &KmsError, config: &KmsConfig) -> String {
    match error.kind {
        KmsErrorKind::Unreachable | KmsErrorKind::Dropped => format!(
            "check that the KMS runs at {} and that this machine reaches it (proxy, firewall)",
            config.server_url
        ),
        KmsErrorKind::Tls => {
            "the TLS handshake failed: is server_url the KMS's https:// port (not a plain HTTP one)?".to_owned()
        }
        KmsErrorKind::Untrusted => "the KMS's certificate is not trusted: put its CA's PEM in `verified_cert` under \
                             [http_config], or install the CA in the system's store"
            .to_owned(),
        KmsErrorKind::Timeout => {
            "the KMS is slow or the network drops packets; COSMIAN_PKCS11_REQUEST_TIMEOUT_MS raises the limit"
                .to_owned()
        }
        KmsErrorKind::Unauthorized => "the KMS refused the credentials: check access_token (or the credential \
                                      store's cosmian-kms entry) or the client certificate"
            .to_owned(),
        KmsErrorKind::Refused | KmsErrorKind::Status(_) | KmsErrorKind::Malformed => {
            "is server_url a Cosmian KMS (5.x)? the KMS's own log says more".to_owned()
        }
    }
}

fn key_kind(key: &crate::asn1::PublicKey) -> String {
    use crate::asn1::{Curve, PublicKey};
    match key {
        PublicKey::Rsa { modulus, .. } => format!("RSA {}", modulus.len() * 8),
        PublicKey::Ec { curve: Curve::P256, .. } => "EC P-256".to_owned(),
        PublicKey::Ec { curve: Curve::P384, .. } => "EC P-384".to_owned(),
        PublicKey::Ec { curve: Curve::P521, .. } => "EC P-521".to_owned(),
        PublicKey::Ed25519 { .. } => "Ed25519".to_owned(),
    }
}
