//! The HTTP(S) transport to the KMS: one `ureq` agent (so one kept-alive connection reused by
//! every call and session), TLS through rustls with the system's roots, timeouts, and the
//! translation of HTTP outcomes into [`KmsError`]. One debug line per request; never a secret.

use std::sync::Arc;
use std::time::Instant;

use super::ttlv::Ttlv;
use crate::config::{ClientCertificate, KmsConfig, Secret, Settings};

/// Largest answer accepted from the KMS.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Why a KMS call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsError {
    /// No connection could be made (refused, DNS, TLS handshake).
    Unreachable(String),
    /// Connected, but no complete answer in time.
    Timeout(String),
    /// 401/403: the KMS refused our credentials.
    Unauthorized(String),
    /// 422: the KMS refused the request (`Item_Not_Found`, `Permission_Denied`, ...).
    Refused(String),
    /// Any other HTTP status (500, 404, ...).
    Status(u16, String),
    /// An answer that is not the KMIP we expect.
    Malformed(String),
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KmsError::Unreachable(m) => write!(f, "KMS unreachable: {m}"),
            KmsError::Timeout(m) => write!(f, "KMS did not answer in time: {m}"),
            KmsError::Unauthorized(m) => write!(f, "KMS refused the credentials: {m}"),
            KmsError::Refused(m) => write!(f, "KMS refused the request: {m}"),
            KmsError::Status(code, m) => write!(f, "KMS answered HTTP {code}: {m}"),
            KmsError::Malformed(m) => write!(f, "KMS answer not understood: {m}"),
        }
    }
}

/// A connection to one KMS.
pub struct KmsClient {
    agent: ureq::Agent,
    base_url: String,
    headers: Vec<(String, String)>,
    access_token: Option<Secret>,
}

impl KmsClient {
    pub fn new(config: &KmsConfig, settings: &Settings) -> Result<Self, String> {
        let tls = tls_config(config)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_global(Some(settings.request_timeout))
            .max_idle_connections_per_host(4)
            .user_agent(concat!("cosmian-pkcs11/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        Ok(Self {
            agent,
            base_url: config.server_url.clone(),
            headers: config.custom_headers.clone(),
            access_token: config.access_token.clone(),
        })
    }

    /// Sends one KMIP operation to `/kmip/2_1`; `Ok` is the `...Response` payload.
    pub fn call(&self, operation: &Ttlv) -> Result<Ttlv, KmsError> {
        self.post("/kmip/2_1", &operation.tag, operation)
    }

    /// Sends several operations in one `RequestMessage` to `/kmip`; one result per operation,
    /// in order. `Err` only when the message as a whole failed.
    pub fn batch(&self, operations: Vec<Ttlv>) -> Result<Vec<Result<Ttlv, KmsError>>, KmsError> {
        let count = operations.len();
        let mut message = vec![Ttlv::structure(
            "RequestHeader",
            vec![
                Ttlv::structure(
                    "ProtocolVersion",
                    vec![Ttlv::integer("ProtocolVersionMajor", 2), Ttlv::integer("ProtocolVersionMinor", 1)],
                ),
                Ttlv::integer("BatchCount", count as i64),
            ],
        )];
        for op in operations {
            let name = op.tag.clone();
            let payload = Ttlv::structure("RequestPayload", op.children().to_vec());
            message.push(Ttlv::structure("BatchItem", vec![Ttlv::enumeration("Operation", &name), payload]));
        }
        let label = format!("RequestMessage[{count}]");
        let answer = self.post("/kmip", &label, &Ttlv::structure("RequestMessage", message))?;
        let items: Vec<_> = answer.children_tagged("BatchItem").collect();
        if items.len() != count {
            return Err(KmsError::Malformed(format!("{} batch items answered for {count}", items.len())));
        }
        Ok(items.into_iter().map(batch_item_result).collect())
    }

    fn post(&self, path: &str, label: &str, body: &Ttlv) -> Result<Ttlv, KmsError> {
        let started = Instant::now();
        let result = self.post_inner(path, body);
        let elapsed_ms = started.elapsed().as_millis();
        match &result {
            Ok(_) => tracing::debug!(operation = label, status = "ok", elapsed_ms, "KMS request"),
            Err(e) => tracing::debug!(operation = label, status = %e, elapsed_ms, "KMS request"),
        }
        result
    }

    fn post_inner(&self, path: &str, body: &Ttlv) -> Result<Ttlv, KmsError> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base_url))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(token) = &self.access_token {
            request = request.header("Authorization", format!("Bearer {}", token.expose()));
        }
        let mut response = request.send(body.to_json()).map_err(transport_error)?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(transport_error)?;
        match status {
            200 => Ttlv::from_json(&bytes).map_err(|e| KmsError::Malformed(e.to_string())),
            401 | 403 => Err(KmsError::Unauthorized(format!("HTTP {status}"))),
            422 => Err(KmsError::Refused(snippet(&bytes))),
            _ => Err(KmsError::Status(status, snippet(&bytes))),
        }
    }
}

/// The start of an error body, on one line, for log lines.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

fn transport_error(e: ureq::Error) -> KmsError {
    match e {
        ureq::Error::Timeout(t) => KmsError::Timeout(t.to_string()),
        ureq::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            KmsError::Timeout(io.to_string())
        }
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotConnected | std::io::ErrorKind::AddrNotAvailable
            ) =>
        {
            KmsError::Unreachable(io.to_string())
        }
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Tls(_) => KmsError::Unreachable(e.to_string()),
        ureq::Error::BodyExceedsLimit(_) => KmsError::Malformed(e.to_string()),
        other => KmsError::Unreachable(other.to_string()),
    }
}

/// One `BatchItem` of a `ResponseMessage`.
fn batch_item_result(item: &Ttlv) -> Result<Ttlv, KmsError> {
    let status = item.child("ResultStatus").and_then(Ttlv::as_text).unwrap_or("");
    if status != "Success" {
        let reason = item.child("ResultReason").and_then(Ttlv::as_text).unwrap_or("?");
        let message = item.child("ResultMessage").and_then(Ttlv::as_text).unwrap_or("");
        return Err(KmsError::Refused(format!("{status} {reason}: {}", snippet(message.as_bytes()))));
    }
    item.child("ResponsePayload")
        .cloned()
        .ok_or_else(|| KmsError::Malformed("batch item without ResponsePayload".into()))
}

/// rustls, with the system's roots plus `verified_cert`, or no verification at all when
/// `accept_invalid_certs` says so, and the client certificate if one is configured.
fn tls_config(config: &KmsConfig) -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig};
    let mut builder = TlsConfig::builder();
    if config.server_url.starts_with("https://") {
        if config.accept_invalid_certs {
            tracing::warn!(config = %config.source.display(), "accept_invalid_certs = true: the KMS's TLS certificate is NOT verified");
            builder = builder.disable_verification(true);
        } else {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipping a system root certificate");
            }
            let mut roots: Vec<Certificate<'static>> =
                native.certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
            if let Some(pem) = &config.verified_cert {
                let extra: Vec<_> = ureq::tls::parse_pem(pem.as_bytes())
                    .filter_map(|item| match item {
                        Ok(PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if extra.is_empty() {
                    return Err("verified_cert holds no PEM certificate".into());
                }
                roots.extend(extra);
            }
            builder = builder.root_certs(RootCerts::Specific(Arc::new(roots)));
        }
        match &config.client_certificate {
            None => {}
            Some(ClientCertificate::Pem { cert, key }) => {
                let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
                let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&read(cert)?)
                    .filter_map(|item| match item {
                        Ok(PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                let key = ureq::tls::parse_pem(&read(key)?)
                    .find_map(|item| match item {
                        Ok(PemItem::PrivateKey(k)) => Some(k),
                        _ => None,
                    })
                    .ok_or_else(|| format!("{} holds no PEM private key", key.display()))?;
                if chain.is_empty() {
                    return Err(format!("{} holds no PEM certificate", cert.display()));
                }
                builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
            }
            Some(ClientCertificate::Pkcs12 { path, .. }) => {
                return Err(format!(
                    "PKCS#12 client certificates ({}) are not supported yet: convert it to PEM (tls_client_pem_cert_path/tls_client_pem_key_path)",
                    path.display()
                ));
            }
        }
    }
    Ok(builder.build())
}
