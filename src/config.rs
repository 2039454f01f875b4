//! What the provider is told: the ckms client configuration file (5.28 schema), the secrets
//! the OS credential store holds for it, and the provider's own environment variables.
//! Reading never writes or creates a file, never panics, and never puts a secret in an error
//! message.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret string (token, password, PIN) whose `Debug` never shows the value, wiped from
/// memory when dropped (the copies the TOML parser and the HTTP headers make are not).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A TLS client certificate, as the ckms config names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ClientCertificate {
    Pem { cert: PathBuf, key: PathBuf },
    Pkcs12 { path: PathBuf, password: Option<Secret> },
}

/// The settings of `[http_config]` (and `vendor_id`) the provider uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsConfig {
    /// Where the file was read from, for log lines.
    pub(crate) source: PathBuf,
    pub(crate) server_url: String,
    pub(crate) access_token: Option<Secret>,
    pub(crate) accept_invalid_certs: bool,
    /// Inline PEM of an extra trusted certificate.
    pub(crate) verified_cert: Option<String>,
    pub(crate) client_certificate: Option<ClientCertificate>,
    /// `Name: value` headers added to every request.
    pub(crate) custom_headers: Vec<(String, String)>,
    pub(crate) vendor_id: String,
    /// `pkcs11_use_pin_as_access_token = true` (top level, as Cosmian's own provider reads
    /// it; ckms ignores unknown top-level keys): the token requires a login, and the PIN is
    /// the access token.
    pub(crate) use_pin_as_access_token: bool,
    /// `pkcs11_allow_cleartext_credentials = true` (top level): credentials may go over
    /// `http://` to a host that is not loopback (see [`KmsConfig::cleartext_check`]).
    pub(crate) allow_cleartext_credentials: bool,
}

/// The credential store service under which the access token is stored (account: `server_url`).
pub(crate) const TOKEN_SERVICE: &str = "cosmian-kms";
/// The credential store service under which the PKCS#12 password is stored (account: the path).
pub(crate) const PKCS12_SERVICE: &str = "cosmian-kms-pkcs12";

/// Larger configuration files are refused unread (a real one is well under 100 KB, even with
/// a `verified_cert` chain inline).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Keys of the 5.28 schema that the provider knows about but does not use.
const KNOWN_UNUSED: &[&str] = &["database_secret", "vault_token", "cipher_suites", "proxy_params", "oauth2_conf"];

impl KmsConfig {
    /// Reads and checks a config file. Unknown keys, and a secret in a file others can read,
    /// are returned as warnings, not errors. The secrets the file does not hold are the
    /// caller's to look up ([`KmsConfig::fill_from_store`]).
    pub(crate) fn load(path: &Path) -> Result<(Self, Vec<String>), String> {
        let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let mut file = std::fs::File::open(path).map_err(cannot_read)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, MAX_CONFIG_BYTES + 1), &mut text)
            .map_err(cannot_read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(format!(
                "{} is larger than {} KiB: not a ckms configuration file",
                path.display(),
                MAX_CONFIG_BYTES >> 10
            ));
        }
        let (config, mut warnings) = Self::parse(&text, path)?;
        #[cfg(unix)]
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::PermissionsExt;
            warnings.extend(config.exposed_secrets_warning(meta.permissions().mode()));
        }
        Ok((config, warnings))
    }

    /// A warning when the file holds a secret and its `mode` lets the group or others read it.
    pub(crate) fn exposed_secrets_warning(&self, mode: u32) -> Option<String> {
        let mut secrets = Vec::new();
        if self.access_token.is_some() {
            secrets.push("access_token");
        }
        if matches!(self.client_certificate, Some(ClientCertificate::Pkcs12 { password: Some(_), .. })) {
            secrets.push("tls_client_pkcs12_password");
        }
        (mode & 0o044 != 0 && !secrets.is_empty()).then(|| {
            format!(
                "{} holds {} and other users can read it (mode {:o}): run `chmod 600` on it, or keep the secret in the OS credential store",
                self.source.display(),
                secrets.join(" and "),
                mode & 0o777
            )
        })
    }

    /// Fills in the secrets the file does not hold from the OS credential store, through
    /// `lookup(service, account)`: the access token (service `cosmian-kms`, account the
    /// `server_url`) and the PKCS#12 password (service `cosmian-kms-pkcs12`, account the
    /// PKCS#12 path as written). In PIN mode the PIN is the access token: none is looked up,
    /// and one in the file is ignored.
    pub(crate) fn fill_from_store(
        &mut self,
        lookup: impl Fn(&str, &str) -> Option<Secret>,
        warnings: &mut Vec<String>,
    ) {
        if self.use_pin_as_access_token {
            if self.access_token.take().is_some() {
                warnings.push(format!(
                    "{}: access_token is ignored: with pkcs11_use_pin_as_access_token = true the PIN is the access token",
                    self.source.display()
                ));
            }
        } else if self.access_token.is_none() {
            self.access_token = lookup(TOKEN_SERVICE, &self.server_url);
        }
        if let Some(ClientCertificate::Pkcs12 { path, password: password @ None }) = &mut self.client_certificate {
            *password = lookup(PKCS12_SERVICE, &path.to_string_lossy());
        }
    }

    /// Parses config text; `source` only labels messages.
    pub fn parse(text: &str, source: &Path) -> Result<(Self, Vec<String>), String> {
        let at = source.display();
        // The toml error text quotes the offending line, which may hold a token: keep only
        // where it is.
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let place = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
            format!("{at} is not valid TOML{place}")
        })?;
        let mut warnings = Vec::new();
        let mut vendor_id = "cosmian".to_owned();
        let mut http = None;
        let mut use_pin_as_access_token = false;
        let mut allow_cleartext_credentials = false;
        for (key, value) in &root {
            match (key.as_str(), value) {
                ("vendor_id", toml::Value::String(v)) => vendor_id = v.clone(),
                ("http_config", toml::Value::Table(t)) => http = Some(t),
                ("pkcs11_use_pin_as_access_token", toml::Value::Boolean(b)) => use_pin_as_access_token = *b,
                ("pkcs11_allow_cleartext_credentials", toml::Value::Boolean(b)) => allow_cleartext_credentials = *b,
                (
                    "vendor_id"
                    | "http_config"
                    | "pkcs11_use_pin_as_access_token"
                    | "pkcs11_allow_cleartext_credentials",
                    _,
                ) => return Err(format!("{at}: `{key}` has the wrong type")),
                _ => warnings.push(format!("{at}: ignoring unknown key `{key}`")),
            }
        }
        let http = http.ok_or_else(|| format!("{at} has no [http_config] section"))?;
        let get_str = |key: &str| -> Result<Option<String>, String> {
            match http.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{at}: http_config.{key} must be a string")),
            }
        };
        // The legacy `ssl_client_*` names are aliases of `tls_client_*`.
        let get_tls = |suffix: &str| -> Result<Option<String>, String> {
            Ok(get_str(&format!("tls_client_{suffix}"))?.or(get_str(&format!("ssl_client_{suffix}"))?))
        };
        let server_url = get_str("server_url")?
            .ok_or_else(|| format!("{at}: http_config.server_url is missing"))?
            .trim_end_matches('/')
            .to_owned();
        if !(server_url.starts_with("http://") || server_url.starts_with("https://")) {
            return Err(format!("{at}: http_config.server_url must start with http:// or https://"));
        }
        // Never quoted: user info (`user:password@`), a query or a fragment may hold a secret.
        let authority = server_url.split('/').nth(2).unwrap_or("");
        if authority.is_empty() || authority.contains('@') || server_url.contains(['?', '#']) {
            return Err(format!(
                "{at}: http_config.server_url must be http(s)://host[:port][/path], without user info (user:password@), query (?...) or fragment (#...); a token goes in access_token"
            ));
        }
        let accept_invalid_certs = match http.get("accept_invalid_certs") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err(format!("{at}: http_config.accept_invalid_certs must be true or false")),
        };
        let client_certificate = match (get_tls("pkcs12_path")?, get_tls("pem_cert_path")?, get_tls("pem_key_path")?) {
            (Some(path), _, _) => Some(ClientCertificate::Pkcs12 {
                path: path.into(),
                password: get_tls("pkcs12_password")?.map(Secret::new),
            }),
            (None, Some(cert), Some(key)) => Some(ClientCertificate::Pem { cert: cert.into(), key: key.into() }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(format!("{at}: tls_client_pem_cert_path and tls_client_pem_key_path go together"))
            }
            (None, None, None) => None,
        };
        let custom_headers = match http.get("custom_headers") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .and_then(|h| h.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .filter(|(n, _)| !n.is_empty())
                        .ok_or_else(|| format!("{at}: each custom_headers entry must read \"Name: value\""))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{at}: http_config.custom_headers must be a list of strings")),
        };
        const USED: &[&str] = &[
            "server_url",
            "access_token",
            "accept_invalid_certs",
            "verified_cert",
            "custom_headers",
            "tls_client_pkcs12_path",
            "tls_client_pkcs12_password",
            "tls_client_pem_cert_path",
            "tls_client_pem_key_path",
            "ssl_client_pkcs12_path",
            "ssl_client_pkcs12_password",
            "ssl_client_pem_cert_path",
            "ssl_client_pem_key_path",
        ];
        for key in http.keys() {
            if !USED.contains(&key.as_str()) && !KNOWN_UNUSED.contains(&key.as_str()) {
                warnings.push(format!("{at}: ignoring unknown key `http_config.{key}`"));
            }
        }
        let config = KmsConfig {
            source: source.to_owned(),
            server_url,
            access_token: get_str("access_token")?.filter(|t| !t.is_empty()).map(Secret::new),
            accept_invalid_certs,
            verified_cert: get_str("verified_cert")?,
            client_certificate,
            custom_headers,
            vendor_id,
            use_pin_as_access_token,
            allow_cleartext_credentials,
        };
        Ok((config, warnings))
    }

    /// Whether credentials would travel in cleartext: `server_url` is `http://` to a host
    /// that is not loopback (127.0.0.0/8, ::1, `localhost`), and there is an access token, a
    /// PIN (PIN mode), custom headers or a client certificate to send. `Err` (nothing may be
    /// sent) unless `pkcs11_allow_cleartext_credentials = true`, then `Ok(Some(warning))`.
    pub(crate) fn cleartext_check(&self) -> Result<Option<String>, String> {
        let Some(rest) = self.server_url.strip_prefix("http://") else { return Ok(None) };
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let mut sent = Vec::new();
        if self.access_token.is_some() {
            sent.push("an access token");
        }
        if self.use_pin_as_access_token {
            sent.push("the PIN (PIN mode)");
        }
        if !self.custom_headers.is_empty() {
            sent.push("custom_headers");
        }
        if self.client_certificate.is_some() {
            sent.push("a client certificate");
        }
        if loopback || sent.is_empty() {
            return Ok(None);
        }
        let what = format!(
            "{}: server_url is http:// to {host}, not loopback, and {} would be sent in cleartext",
            self.source.display(),
            sent.join(", ")
        );
        if self.allow_cleartext_credentials {
            Ok(Some(format!("{what}: allowed by pkcs11_allow_cleartext_credentials = true")))
        } else {
            Err(format!("{what}: refused; use https://, or set pkcs11_allow_cleartext_credentials = true at the top of the file to allow it"))
        }
    }
}

/// The provider's own knobs, from environment variables (the ckms file is shared with ckms,
/// which rejects keys it does not know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Only key pairs carrying this tag are offered (`COSMIAN_PKCS11_SSH_KEY_TAG`).
    pub key_tag: String,
    /// How long the key list is served from memory (`COSMIAN_PKCS11_KEY_CACHE_SECONDS`).
    pub key_cache_ttl: Duration,
    /// TCP connect timeout (`COSMIAN_PKCS11_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// Whole-request timeout (`COSMIAN_PKCS11_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// How long a public key fetched from the KMS is reused from the disk cache, across
    /// processes (`COSMIAN_PKCS11_DISK_CACHE_SECONDS`; 0: no disk cache).
    pub disk_cache_max_age: Duration,
}

impl Settings {
    pub(crate) const DEFAULT_TAG: &'static str = "ssh-auth";

    /// Reads the environment; a malformed number falls back to the default with a warning.
    pub(crate) fn from_env(warnings: &mut Vec<String>) -> Self {
        Self::from_lookup(|k| std::env::var(k).ok(), warnings)
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> Self {
        let mut number = |key: &str, default: u64| match get(key) {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                warnings.push(format!("{key}={v:?} is not a whole number; using {default}"));
                default
            }),
        };
        let key_cache_ttl = Duration::from_secs(number("COSMIAN_PKCS11_KEY_CACHE_SECONDS", 300));
        let connect_timeout = Duration::from_millis(number("COSMIAN_PKCS11_CONNECT_TIMEOUT_MS", 2_000));
        let request_timeout = Duration::from_millis(number("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", 5_000));
        let disk_cache_max_age = Duration::from_secs(number("COSMIAN_PKCS11_DISK_CACHE_SECONDS", 86_400));
        let key_tag = get("COSMIAN_PKCS11_SSH_KEY_TAG")
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| Self::DEFAULT_TAG.to_owned());
        Settings { key_tag, key_cache_ttl, connect_timeout, request_timeout, disk_cache_max_age }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(KmsConfig, Vec<String>), String> {
        KmsConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn a_config_file_over_1_mib_is_refused_unread_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        let mut text = "[http_config]\nserver_url = \"http://127.0.0.1:9998\"\n".to_owned();
        text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize));
        std::fs::write(&path, &text).unwrap();
        let error = KmsConfig::load(&path).unwrap_err();
        assert!(error.contains("huge.toml") && error.contains("larger than 1024 KiB"), "{error}");
        std::fs::write(&path, &text[..MAX_CONFIG_BYTES as usize]).unwrap();
        assert!(KmsConfig::load(&path).is_ok(), "1 MiB exactly is read");
    }

    #[test]
    fn reads_the_full_schema() {
        let (c, warnings) = parse(
            r#"
            vendor_id = "acme"
            [http_config]
            server_url = "https://kms.example.com:9998/"
            access_token = "tok"
            accept_invalid_certs = true
            verified_cert = "-----BEGIN CERTIFICATE-----"
            tls_client_pem_cert_path = "/c.pem"
            tls_client_pem_key_path = "/k.pem"
            custom_headers = ["X-A: 1", "X-B:two: three"]
            database_secret = "x"
            "#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.server_url, "https://kms.example.com:9998");
        assert_eq!(c.vendor_id, "acme");
        assert_eq!(c.access_token, Some(Secret::new("tok")));
        assert!(c.accept_invalid_certs);
        assert_eq!(c.client_certificate, Some(ClientCertificate::Pem { cert: "/c.pem".into(), key: "/k.pem".into() }));
        assert_eq!(c.custom_headers, [("X-A".into(), "1".into()), ("X-B".into(), "two: three".into())]);
    }

    #[test]
    fn legacy_pkcs12_names_and_defaults() {
        let (c, _) = parse(
            "[http_config]\nserver_url = \"http://h\"\nssl_client_pkcs12_path = \"/p.p12\"\nssl_client_pkcs12_password = \"pw\"\n",
        )
        .unwrap();
        assert_eq!(
            c.client_certificate,
            Some(ClientCertificate::Pkcs12 { path: "/p.p12".into(), password: Some(Secret::new("pw")) })
        );
        assert_eq!(c.vendor_id, "cosmian");
        assert_eq!(c.access_token, None);
        assert!(!c.accept_invalid_certs);
    }

    #[test]
    fn unknown_keys_warn_but_load() {
        let (_, warnings) = parse("surprise = 1\n[http_config]\nserver_url = \"http://h\"\nnew_key = 2\n").unwrap();
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn broken_files_are_errors_that_never_quote_secrets() {
        for text in [
            "",
            "[http_config]\naccess_token = \"s3cr3t-token\"\n",
            "[http_config]\nserver_url = \"ftp://h\"\naccess_token = \"s3cr3t-token\"",
            "[http_config]\nserver_url = 3\n",
            "[http_config\nserver_url = \"http://h\"\naccess_token = \"s3cr3t-token",
            "http_config = 1",
            "[http_config]\nserver_url = \"http://h\"\ntls_client_pem_cert_path = \"/c\"\n",
            "[http_config]\nserver_url = \"http://h\"\ncustom_headers = [\"nocolon\"]\n",
            "[http_config]\nserver_url = \"https://alice:s3cr3t@h:9998\"\n",
            "[http_config]\nserver_url = \"https://h:9998/kms?token=s3cr3t\"\n",
            "[http_config]\nserver_url = \"https://h:9998/#s3cr3t\"\n",
            "[http_config]\nserver_url = \"https:///s3cr3t\"\n",
        ] {
            let err = parse(text).unwrap_err();
            assert!(!err.contains("s3cr3t"), "{err}");
            assert!(err.contains("test.toml"), "{err}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let (c, _) = parse("[http_config]\nserver_url = \"http://h\"\naccess_token = \"s3cr3t\"\n").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn credentials_never_go_in_cleartext_to_a_remote_host_without_the_opt_in() {
        let check = |head: &str, url: &str, http: &str| {
            let (mut c, warnings) = parse(&format!("{head}\n[http_config]\nserver_url = \"{url}\"\n{http}\n")).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            c.fill_from_store(|_, _| None, &mut Vec::new());
            c.cleartext_check()
        };
        let token = "access_token = \"s3cr3t\"";
        for http in [token, "custom_headers = [\"X-Key: s3cr3t\"]", "tls_client_pkcs12_path = \"/c.p12\""] {
            let err = check("", "http://192.0.2.1:9/kms", http).unwrap_err();
            assert!(
                err.contains("test.toml")
                    && err.contains("pkcs11_allow_cleartext_credentials")
                    && !err.contains("s3cr3t"),
                "{err}"
            );
            for url in [
                "http://127.0.0.1:9998",
                "http://127.8.9.10",
                "http://[::1]:9998",
                "http://LOCALHOST:1/x",
                "https://kms.example.com",
            ] {
                assert_eq!(check("", url, http), Ok(None), "{url}");
            }
            let warning =
                check("pkcs11_allow_cleartext_credentials = true", "http://kms.example.com", http).unwrap().unwrap();
            assert!(warning.contains("allowed by pkcs11_allow_cleartext_credentials"), "{warning}");
        }
        assert!(check("pkcs11_use_pin_as_access_token = true", "http://[2001:db8::1]:9998", "").is_err());
        assert!(check("", "http://localhost.example.com", token).is_err());
        assert_eq!(check("", "http://kms.example.com", ""), Ok(None), "nothing secret to send");
    }

    #[test]
    fn pin_mode_is_a_top_level_switch() {
        let (c, warnings) =
            parse("pkcs11_use_pin_as_access_token = true\n[http_config]\nserver_url = \"http://h\"\n").unwrap();
        assert!(c.use_pin_as_access_token && warnings.is_empty(), "{warnings:?}");
        assert!(!parse("[http_config]\nserver_url = \"http://h\"\n").unwrap().0.use_pin_as_access_token);
        let err =
            parse("pkcs11_use_pin_as_access_token = \"yes\"\n[http_config]\nserver_url = \"http://h\"\n").unwrap_err();
        assert!(err.contains("wrong type"), "{err}");
    }

    #[test]
    fn missing_secrets_come_from_the_store() {
        let store = |service: &str, account: &str| Some(Secret::new(format!("{service}|{account}")));
        let (mut c, _) =
            parse("[http_config]\nserver_url = \"https://k:1/\"\ntls_client_pkcs12_path = \"/c.p12\"\n").unwrap();
        c.fill_from_store(store, &mut Vec::new());
        assert_eq!(c.access_token, Some(Secret::new("cosmian-kms|https://k:1")));
        assert_eq!(
            c.client_certificate,
            Some(ClientCertificate::Pkcs12 {
                path: "/c.p12".into(),
                password: Some(Secret::new("cosmian-kms-pkcs12|/c.p12"))
            })
        );
        // The file wins.
        let (mut c, _) = parse("[http_config]\nserver_url = \"https://k:1\"\naccess_token = \"file\"\n").unwrap();
        c.fill_from_store(store, &mut Vec::new());
        assert_eq!(c.access_token, Some(Secret::new("file")));
        // PIN mode: no token from the file or the store.
        let (mut c, _) = parse("pkcs11_use_pin_as_access_token = true\n[http_config]\nserver_url = \"https://k:1\"\naccess_token = \"s3cr3t\"\n").unwrap();
        let mut warnings = Vec::new();
        c.fill_from_store(store, &mut warnings);
        assert_eq!(c.access_token, None);
        assert!(warnings.len() == 1 && !warnings[0].contains("s3cr3t"), "{warnings:?}");
    }

    #[test]
    fn secrets_in_a_file_others_can_read_are_flagged() {
        let (c, _) = parse("[http_config]\nserver_url = \"http://h\"\naccess_token = \"s3cr3t\"\n").unwrap();
        let warning = c.exposed_secrets_warning(0o100644).unwrap();
        assert!(
            warning.contains("access_token") && warning.contains("644") && !warning.contains("s3cr3t"),
            "{warning}"
        );
        assert!(c.exposed_secrets_warning(0o100640).is_some());
        assert!(c.exposed_secrets_warning(0o100600).is_none());
        let (c, _) = parse("[http_config]\nserver_url = \"http://h\"\n").unwrap();
        assert!(c.exposed_secrets_warning(0o100644).is_none());
    }

    #[test]
    fn settings_from_environment() {
        let mut w = Vec::new();
        let env = |k: &str| match k {
            "COSMIAN_PKCS11_SSH_KEY_TAG" => Some("team-a".to_owned()),
            "COSMIAN_PKCS11_CONNECT_TIMEOUT_MS" => Some("abc".to_owned()),
            _ => None,
        };
        let s = Settings::from_lookup(env, &mut w);
        assert_eq!(s.key_tag, "team-a");
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(w.len(), 1);
        let s = Settings::from_lookup(|_| None, &mut Vec::new());
        assert_eq!(s.key_tag, "ssh-auth");
    }
}
