//! What the provider is told: the ckms client configuration file (5.28 schema), the secrets
//! the OS credential store holds for it, and the provider's own environment variables.
//! Reading never writes or creates a file, never panics, and never puts a secret in an error
//! message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// `[http_config.proxy_params]`: the `CONNECT` proxy to the KMS (see [`KmsConfig::kms_proxy`]).
    pub(crate) proxy: Option<ProxyParams>,
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

/// The file as ckms 5.28 writes it: every key it knows. Keys that are not here are reported by
/// `serde_ignored` (warnings, never fatal: ckms refuses unknown `[http_config]` keys, so a file
/// shared with ckms has none).
#[derive(Deserialize)]
struct FileSchema {
    vendor_id: Option<String>,
    http_config: Option<HttpSchema>,
    #[serde(default)]
    pkcs11_use_pin_as_access_token: bool,
    #[serde(default)]
    pkcs11_allow_cleartext_credentials: bool,
}

/// `[http_config]`. The legacy `ssl_client_*` names are fields of their own (not serde aliases:
/// ckms accepts both names at once, the `tls_` one winning).
#[derive(Deserialize)]
struct HttpSchema {
    server_url: Option<String>,
    access_token: Option<Secret>,
    #[serde(default)]
    accept_invalid_certs: bool,
    verified_cert: Option<String>,
    custom_headers: Option<Vec<String>>,
    tls_client_pkcs12_path: Option<String>,
    tls_client_pkcs12_password: Option<Secret>,
    tls_client_pem_cert_path: Option<String>,
    tls_client_pem_key_path: Option<String>,
    ssl_client_pkcs12_path: Option<String>,
    ssl_client_pkcs12_password: Option<Secret>,
    ssl_client_pem_cert_path: Option<String>,
    ssl_client_pem_key_path: Option<String>,
    proxy_params: Option<ProxySchema>,
    // Known to ckms 5.28, unused here: accepted whatever they hold, silently (a `toml::Value`,
    // not serde's `IgnoredAny`, which `serde_ignored` would report).
    #[serde(rename = "database_secret")]
    _database_secret: Option<toml::Value>,
    #[serde(rename = "vault_token")]
    _vault_token: Option<toml::Value>,
    #[serde(rename = "cipher_suites")]
    _cipher_suites: Option<toml::Value>,
    #[serde(rename = "oauth2_conf")]
    _oauth2_conf: Option<toml::Value>,
    #[serde(rename = "cosmian_conf")]
    _cosmian_conf: Option<toml::Value>,
}

/// `[http_config.proxy_params]` (ckms requires `exclusion_list`; here it defaults to empty).
#[derive(Deserialize)]
struct ProxySchema {
    url: Option<String>,
    basic_auth_username: Option<String>,
    basic_auth_password: Option<Secret>,
    custom_auth_header: Option<Secret>,
    #[serde(default)]
    exclusion_list: Vec<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// How the proxy is told who we are: the `Proxy-Authorization` value of every `CONNECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProxyAuth {
    /// `Basic base64(username:password)`, the password empty when there is none.
    Basic { username: String, password: Option<Secret> },
    /// `custom_auth_header`, sent as is.
    Header(Secret),
}

/// `[http_config.proxy_params]`: as ckms 5.28 does, every connection to the KMS is an HTTP
/// `CONNECT` tunnel through this proxy (for `http://` and `https://` servers alike), unless
/// the KMS's host is in `exclusion_list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyParams {
    /// `http://host:port`, for log lines: never credentials.
    pub(crate) url: String,
    /// As in a URL: an IPv6 address in brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) auth: Option<ProxyAuth>,
    pub(crate) exclusion_list: Vec<String>,
}

impl ProxyParams {
    /// ckms's rule: an entry `.example.com` matches `example.com` and every host ending with
    /// `.example.com`, any other entry the host exactly. ASCII case and the brackets of an
    /// IPv6 address are ignored (ckms compares bytes).
    pub(crate) fn excludes(&self, host: &str) -> bool {
        let host = unbracketed(host).as_bytes();
        self.exclusion_list.iter().map(|entry| unbracketed(entry).as_bytes()).any(|entry| {
            match entry.strip_prefix(b".") {
                Some(domain) => {
                    host.eq_ignore_ascii_case(domain)
                        || (host.len() > entry.len() && host[host.len() - entry.len()..].eq_ignore_ascii_case(entry))
                }
                None => host.eq_ignore_ascii_case(entry),
            }
        })
    }

    /// Reads `[http_config.proxy_params]`; `at` labels messages, which never quote a value.
    fn from_schema(schema: ProxySchema, at: &str, warnings: &mut Vec<String>) -> Result<Self, String> {
        let url = schema.url.ok_or_else(|| format!("{at}: http_config.proxy_params.url is missing"))?;
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{at}: http_config.proxy_params.url must start with http://: ckms 5.28 and the provider speak plain HTTP to the proxy (the KMS's TLS, if any, runs inside the tunnel)"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, port.parse::<u16>().ok()),
            _ => (authority, Some(80)),
        };
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
        };
        let port = port.filter(|p| *p != 0 && host_ok).ok_or_else(|| {
            format!(
                "{at}: http_config.proxy_params.url must be http://host[:port], without user info (user:password@), path, query (?...) or fragment (#...); proxy credentials go in basic_auth_username and basic_auth_password"
            )
        })?;
        let header = schema.custom_auth_header.filter(|h| !h.expose().is_empty());
        let ignored = |what: &str| format!("{at}: http_config.proxy_params.{what} (as ckms does)");
        let auth = match (schema.basic_auth_username, schema.basic_auth_password, header) {
            (Some(username), password, header) => {
                if header.is_some() {
                    warnings.push(ignored("custom_auth_header is ignored: basic_auth_username is set"));
                }
                Some(ProxyAuth::Basic { username, password })
            }
            (None, password, header) => {
                if password.is_some() {
                    warnings.push(ignored("basic_auth_password is ignored without basic_auth_username"));
                }
                header.map(ProxyAuth::Header)
            }
        };
        if matches!(&auth, Some(ProxyAuth::Header(h)) if h.expose().chars().any(|c| c.is_control() && c != '\t')) {
            return Err(format!(
                "{at}: http_config.proxy_params.custom_auth_header must be one line of text, without control characters"
            ));
        }
        Ok(ProxyParams {
            url: format!("http://{host}:{port}"),
            host: host.to_owned(),
            port,
            auth,
            exclusion_list: schema.exclusion_list,
        })
    }
}

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
        match self.proxy.as_ref().and_then(|p| p.auth.as_ref()) {
            Some(ProxyAuth::Basic { password: Some(_), .. }) => secrets.push("proxy_params.basic_auth_password"),
            Some(ProxyAuth::Header(_)) => secrets.push("proxy_params.custom_auth_header"),
            _ => {}
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
        let at = source.display().to_string();
        // The toml error text quotes the offending line, which may hold a token: keep only
        // where it is.
        let document = toml::Deserializer::parse(text).map_err(|e| {
            let place = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
            format!("{at} is not valid TOML{place}")
        })?;
        let mut unknown = Vec::new();
        let mut report = |path: serde_ignored::Path| unknown.push(key_path(&path));
        // serde's message quotes the value it did not expect, maybe a secret: only the key is kept.
        let file: FileSchema =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(document, &mut report))
                .map_err(|e| wrong_type(&at, e.path()))?;
        let mut warnings: Vec<String> =
            unknown.iter().map(|key| format!("{at}: ignoring unknown key `{key}`")).collect();
        let http = file.http_config.ok_or_else(|| format!("{at} has no [http_config] section"))?;
        let server_url = http
            .server_url
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
        // The legacy `ssl_client_*` names are aliases of `tls_client_*`.
        let cert = http.tls_client_pem_cert_path.or(http.ssl_client_pem_cert_path);
        let key = http.tls_client_pem_key_path.or(http.ssl_client_pem_key_path);
        let client_certificate = match (http.tls_client_pkcs12_path.or(http.ssl_client_pkcs12_path), cert, key) {
            (Some(path), _, _) => Some(ClientCertificate::Pkcs12 {
                path: path.into(),
                password: http.tls_client_pkcs12_password.or(http.ssl_client_pkcs12_password),
            }),
            (None, Some(cert), Some(key)) => Some(ClientCertificate::Pem { cert: cert.into(), key: key.into() }),
            (None, None, None) => None,
            _ => return Err(format!("{at}: tls_client_pem_cert_path and tls_client_pem_key_path go together")),
        };
        let custom_headers = http
            .custom_headers
            .unwrap_or_default()
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .filter(|(n, _)| !n.is_empty())
                    .ok_or_else(|| format!("{at}: each custom_headers entry must read \"Name: value\""))
            })
            .collect::<Result<_, _>>()?;
        let proxy = http.proxy_params.map(|p| ProxyParams::from_schema(p, &at, &mut warnings)).transpose()?;
        let config = KmsConfig {
            source: source.to_owned(),
            server_url,
            access_token: http.access_token.filter(|t| !t.expose().is_empty()),
            accept_invalid_certs: http.accept_invalid_certs,
            verified_cert: http.verified_cert,
            client_certificate,
            custom_headers,
            proxy,
            vendor_id: file.vendor_id.unwrap_or_else(|| "cosmian".to_owned()),
            use_pin_as_access_token: file.pkcs11_use_pin_as_access_token,
            allow_cleartext_credentials: file.pkcs11_allow_cleartext_credentials,
        };
        Ok((config, warnings))
    }

    /// The proxy the KMS is reached through: `proxy_params`, unless the KMS's host is in its
    /// `exclusion_list`.
    pub(crate) fn kms_proxy(&self) -> Option<&ProxyParams> {
        self.proxy.as_ref().filter(|p| !p.excludes(url_host(&self.server_url)))
    }

    /// Whether credentials would travel in cleartext. `Err` (nothing may be sent) unless
    /// `pkcs11_allow_cleartext_credentials = true`, then `Ok(Some(warning))`, when:
    /// - `server_url` is `http://` to a host that is not loopback (127.0.0.0/8, ::1,
    ///   `localhost`), or through a proxy that is not, and there is an access token, a PIN (PIN
    ///   mode), custom headers or a client certificate to send;
    /// - the proxy (always spoken to in plain HTTP) is not loopback and gets credentials.
    pub(crate) fn cleartext_check(&self) -> Result<Option<String>, String> {
        let proxy = self.kms_proxy();
        let mut exposed = Vec::new();
        if self.server_url.starts_with("http://") {
            let host = url_host(&self.server_url);
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
            let sent = sent.join(", ");
            match proxy {
                _ if sent.is_empty() => {}
                _ if !is_loopback(host) => exposed.push(format!(
                    "server_url is http:// to {host}, not loopback, and {sent} would be sent in cleartext"
                )),
                Some(p) if !is_loopback(&p.host) => exposed.push(format!(
                    "server_url is http:// through the proxy {}, not loopback, and {sent} would be sent in cleartext",
                    p.host
                )),
                _ => {}
            }
        }
        let proxy_credentials = proxy.filter(|p| !is_loopback(&p.host)).and_then(|p| match &p.auth {
            Some(ProxyAuth::Basic { .. }) => Some((p, "basic_auth_username/basic_auth_password")),
            Some(ProxyAuth::Header(_)) => Some((p, "custom_auth_header")),
            None => None,
        });
        if let Some((p, what)) = proxy_credentials {
            exposed.push(format!(
                "proxy_params.url is http:// to {}, not loopback, and the proxy's credentials ({what}) would be sent to it in cleartext",
                p.host
            ));
        }
        if exposed.is_empty() {
            return Ok(None);
        }
        let what = format!("{}: {}", self.source.display(), exposed.join("; "));
        let instead = if proxy_credentials.is_some() { "a proxy on loopback" } else { "https://" };
        if self.allow_cleartext_credentials {
            Ok(Some(format!("{what}: allowed by pkcs11_allow_cleartext_credentials = true")))
        } else {
            Err(format!(
                "{what}: refused; use {instead}, or set pkcs11_allow_cleartext_credentials = true at the top of the file to allow it"
            ))
        }
    }
}

/// `http_config.key` for a key the schema does not name (`serde_ignored`'s own display marks
/// every `Option` on the way with `?`).
fn key_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Map { parent, key } => match key_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// The error for a value of the wrong type under `path`: names the key (a list, not its
/// entry) and what it must be, never the value.
fn wrong_type(at: &str, path: &serde_path_to_error::Path) -> String {
    let mut key = String::new();
    for segment in path.iter() {
        let serde_path_to_error::Segment::Map { key: name } = segment else { break };
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
    }
    let expected = match key.as_str() {
        "http_config" | "http_config.proxy_params" => "a table",
        "pkcs11_use_pin_as_access_token"
        | "pkcs11_allow_cleartext_credentials"
        | "http_config.accept_invalid_certs" => "true or false",
        "http_config.custom_headers" | "http_config.proxy_params.exclusion_list" => "a list of strings",
        _ => "a string",
    };
    format!("{at}: `{key}` has the wrong type: it must be {expected}")
}

/// The host of an `http(s)://` URL, as written (an IPv6 address without its brackets).
fn url_host(url: &str) -> &str {
    let authority = url.split('/').nth(2).unwrap_or("");
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    }
}

/// `[::1]` → `::1`; anything else as is.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(host: &str) -> bool {
    let host = unbracketed(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    /// Whether the provider may create threads: false when the caller's `C_Initialize`
    /// passed `CKF_LIBRARY_CANT_CREATE_OS_THREADS` (GnuTLS does), and then every lookup and
    /// connection runs in the caller's thread. Not from the environment.
    pub may_create_threads: bool,
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
        Settings {
            key_tag,
            key_cache_ttl,
            connect_timeout,
            request_timeout,
            disk_cache_max_age,
            may_create_threads: true,
        }
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

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_naming_its_key_never_its_value() {
        for (head, http, key) in [
            ("", "access_token = 42", "`http_config.access_token`"),
            ("", "access_token = [\"s3cr3t\"]", "`http_config.access_token`"),
            ("", "server_url = true", "`http_config.server_url`"),
            ("", "accept_invalid_certs = \"s3cr3t\"", "`http_config.accept_invalid_certs`"),
            ("", "tls_client_pkcs12_password = { v = \"s3cr3t\" }", "`http_config.tls_client_pkcs12_password`"),
            ("", "ssl_client_pkcs12_password = 1979-05-27", "`http_config.ssl_client_pkcs12_password`"),
            ("", "custom_headers = \"X-Key: s3cr3t\"", "`http_config.custom_headers`"),
            ("", "custom_headers = [\"X-A: 1\", 7]", "`http_config.custom_headers`"),
            ("", "proxy_params = \"http://u:s3cr3t@p\"", "`http_config.proxy_params`"),
            (
                "",
                "proxy_params = { url = \"http://p\", basic_auth_password = 1 }",
                "`http_config.proxy_params.basic_auth_password`",
            ),
            (
                "",
                "proxy_params = { url = \"http://p\", custom_auth_header = [\"s3cr3t\"] }",
                "`http_config.proxy_params.custom_auth_header`",
            ),
            (
                "",
                "proxy_params = { url = \"http://p\", exclusion_list = \"s3cr3t\" }",
                "`http_config.proxy_params.exclusion_list`",
            ),
            ("vendor_id = [\"s3cr3t\"]", "", "`vendor_id`"),
            ("pkcs11_allow_cleartext_credentials = \"s3cr3t\"", "", "`pkcs11_allow_cleartext_credentials`"),
        ] {
            let text = format!("{head}\n[http_config]\n{http}\n");
            let text = if text.contains("server_url") { text } else { text + "server_url = \"http://h\"\n" };
            let err = parse(&text).unwrap_err();
            assert!(err.starts_with("test.toml: ") && err.contains(key) && err.contains("wrong type"), "{err}");
            assert!(!err.contains("s3cr3t") && !err.contains("42") && !err.contains("invalid type"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_named_and_ckms_keys_accepted_silently() {
        let (_, warnings) = parse(
            r#"
            surprise = "s"
            [http_config]
            server_url = "http://h"
            new_key = 2
            database_secret = "x"
            vault_token = "x"
            cipher_suites = "TLS_AES_256_GCM_SHA384"
            cosmian_conf = { a = 1 }
            [http_config.oauth2_conf]
            client_id = "c"
            scopes = ["a"]
            [http_config.proxy_params]
            url = "http://p:3128"
            exclusion_list = []
            extra = 1
            [unknown_table]
            inner = 1
            "#,
        )
        .unwrap();
        // In key order (a toml table is sorted), nested keys with their table.
        assert_eq!(
            warnings,
            [
                "test.toml: ignoring unknown key `http_config.new_key`",
                "test.toml: ignoring unknown key `http_config.proxy_params.extra`",
                "test.toml: ignoring unknown key `surprise`",
                "test.toml: ignoring unknown key `unknown_table`",
            ]
        );
    }

    #[test]
    fn tls_names_win_over_the_legacy_ssl_names() {
        let (c, _) = parse(
            "[http_config]\nserver_url = \"http://h\"\ntls_client_pem_cert_path = \"/t.pem\"\nssl_client_pem_cert_path = \"/s.pem\"\nssl_client_pem_key_path = \"/k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.client_certificate, Some(ClientCertificate::Pem { cert: "/t.pem".into(), key: "/k.pem".into() }));
    }

    fn proxy(lines: &str) -> Result<(KmsConfig, Vec<String>), String> {
        parse(&format!(
            "[http_config]\nserver_url = \"https://kms.example.com:9998\"\n[http_config.proxy_params]\n{lines}\n"
        ))
    }

    #[test]
    fn proxy_params_are_read_as_ckms_reads_them() {
        let (c, warnings) = proxy(
            "url = \"http://proxy.example.com:3128/\"\nbasic_auth_username = \"alice\"\nbasic_auth_password = \"s3cr3t\"\nexclusion_list = [\".example.org\"]",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let p = c.proxy.clone().unwrap();
        assert_eq!(
            (p.url.as_str(), p.host.as_str(), p.port),
            ("http://proxy.example.com:3128", "proxy.example.com", 3128)
        );
        assert_eq!(p.auth, Some(ProxyAuth::Basic { username: "alice".into(), password: Some(Secret::new("s3cr3t")) }));
        assert_eq!(c.kms_proxy(), Some(&p));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        for (url, host, port) in
            [("http://p", "p", 80), ("http://127.0.0.1:8080", "127.0.0.1", 8080), ("http://[::1]:3128/", "[::1]", 3128)]
        {
            let p = proxy(&format!("url = \"{url}\"")).unwrap().0.proxy.unwrap();
            assert_eq!((p.host.as_str(), p.port, p.auth), (host, port, None), "{url}");
        }
        let (c, warnings) =
            proxy("url = \"http://p\"\nbasic_auth_password = \"s3cr3t\"\ncustom_auth_header = \"Bearer h\"").unwrap();
        assert_eq!(c.proxy.unwrap().auth, Some(ProxyAuth::Header(Secret::new("Bearer h"))));
        assert!(warnings.len() == 1 && warnings[0].contains("basic_auth_password is ignored"), "{warnings:?}");
        let (c, warnings) =
            proxy("url = \"http://p\"\nbasic_auth_username = \"u\"\ncustom_auth_header = \"Bearer h\"").unwrap();
        assert_eq!(c.proxy.unwrap().auth, Some(ProxyAuth::Basic { username: "u".into(), password: None }));
        assert!(warnings.len() == 1 && warnings[0].contains("custom_auth_header is ignored"), "{warnings:?}");
        let (c, _) = proxy("url = \"http://p\"\ncustom_auth_header = \"\"").unwrap();
        assert_eq!(c.proxy.unwrap().auth, None);
    }

    #[test]
    fn a_proxy_url_that_is_not_plain_http_host_port_is_refused_without_quoting_it() {
        for url in [
            "http://alice:s3cr3t@proxy:3128",
            "http://proxy:3128/?s3cr3t",
            "http://proxy:3128/#s3cr3t",
            "http://proxy:3128/s3cr3t",
            "http://proxy:s3cr3t",
            "http://proxy:0",
            "http://proxy:99999",
            "http://",
            "http://::1:3128",
            "https://proxy.s3cr3t:3128",
            "socks5://proxy.s3cr3t:1080",
            "proxy.s3cr3t:3128",
        ] {
            let err = proxy(&format!("url = \"{url}\"")).unwrap_err();
            assert!(err.contains("test.toml: http_config.proxy_params.url must"), "{url}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        assert!(proxy("exclusion_list = []").unwrap_err().contains("http_config.proxy_params.url is missing"));
        let err = proxy("url = \"http://p\"\ncustom_auth_header = \"Basic x\\r\\nX-Evil: s3cr3t\"").unwrap_err();
        assert!(err.contains("custom_auth_header must be one line") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn the_exclusion_list_follows_ckms_rule() {
        let (c, _) = proxy(
            "url = \"http://p\"\nexclusion_list = [\".example.com\", \"kms.example.org\", \"127.0.0.1\", \"::1\"]",
        )
        .unwrap();
        let p = c.proxy.unwrap();
        for host in [
            "example.com",
            "kms.example.com",
            "a.b.example.com",
            "KMS.Example.COM",
            "kms.example.org",
            "127.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(p.excludes(host), "{host}");
        }
        for host in
            ["badexample.com", "example.com.evil", "a.kms.example.org", "example.org", "127.0.0.2", "", "é.example.co"]
        {
            assert!(!p.excludes(host), "{host}");
        }
        let excluded = |server: &str| {
            let text = format!(
                "[http_config]\nserver_url = \"{server}\"\nproxy_params = {{ url = \"http://p\", exclusion_list = [\".example.com\"] }}\n"
            );
            parse(&text).unwrap().0.kms_proxy().is_none()
        };
        assert!(excluded("https://kms.example.com:9998/kmip") && excluded("http://EXAMPLE.COM"));
        assert!(!excluded("https://kms.example.net:9998"));
    }

    #[test]
    fn proxy_credentials_never_go_in_cleartext_to_a_remote_proxy_without_the_opt_in() {
        let check = |head: &str, url: &str, server: &str, lines: &str| {
            let text = format!(
                "{head}\n[http_config]\nserver_url = \"{server}\"\n[http_config.proxy_params]\nurl = \"{url}\"\n{lines}\n"
            );
            parse(&text).unwrap().0.cleartext_check()
        };
        let kms = "https://kms.example.com:9998";
        for lines in
            ["basic_auth_username = \"u\"\nbasic_auth_password = \"s3cr3t\"", "custom_auth_header = \"Bearer s3cr3t\""]
        {
            let err = check("", "http://proxy.example.com:3128", kms, lines).unwrap_err();
            assert!(
                err.contains("test.toml: proxy_params.url is http:// to proxy.example.com, not loopback")
                    && err.contains("pkcs11_allow_cleartext_credentials = true")
                    && !err.contains("s3cr3t"),
                "{err}"
            );
            for url in ["http://127.0.0.1:3128", "http://localhost:3128", "http://[::1]:3128"] {
                assert_eq!(check("", url, kms, lines), Ok(None), "{url}");
            }
            let warning = check("pkcs11_allow_cleartext_credentials = true", "http://192.0.2.1:3128", kms, lines);
            assert!(warning.unwrap().unwrap().contains("allowed by pkcs11_allow_cleartext_credentials"));
            // Excluded: the proxy is never asked, its credentials never sent.
            let excluded = format!("{lines}\nexclusion_list = [\".example.com\"]");
            assert_eq!(check("", "http://proxy.example.com:3128", kms, &excluded), Ok(None));
        }
        assert_eq!(check("", "http://proxy.example.com:3128", kms, ""), Ok(None), "no proxy credentials");
        // A loopback http:// server reached through a remote proxy: the token crosses the network.
        let text = "[http_config]\nserver_url = \"http://127.0.0.1:9998\"\naccess_token = \"s3cr3t\"\nproxy_params = { url = \"http://proxy.example.com\" }\n";
        let err = parse(text).unwrap().0.cleartext_check().unwrap_err();
        assert!(err.contains("through the proxy proxy.example.com") && !err.contains("s3cr3t"), "{err}");
        let text = text.replace("proxy.example.com", "127.0.0.1:3128");
        assert_eq!(parse(&text).unwrap().0.cleartext_check(), Ok(None));
    }

    #[test]
    fn proxy_secrets_in_a_file_others_can_read_are_flagged() {
        let (c, _) =
            proxy("url = \"http://p\"\nbasic_auth_username = \"u\"\nbasic_auth_password = \"s3cr3t\"").unwrap();
        let warning = c.exposed_secrets_warning(0o100644).unwrap();
        assert!(warning.contains("proxy_params.basic_auth_password") && !warning.contains("s3cr3t"), "{warning}");
        let (c, _) = proxy("url = \"http://p\"\ncustom_auth_header = \"s3cr3t\"").unwrap();
        assert!(c.exposed_secrets_warning(0o100604).unwrap().contains("proxy_params.custom_auth_header"));
    }
}
