//! The HTTP(S) transport to the KMS: one `ureq` agent (so kept-alive connections reused by
//! every call and session), TLS through rustls (`kmip::tls`: `verified_cert` first, the
//! system's roots when it does not verify the KMS), timeouts, retries, and
//! the translation of HTTP outcomes into [`KmsError`]. One debug line per attempt; never a
//! secret.
//!
//! The TCP connection is [`super::transport`]'s: see there why it acknowledges at once.
//!
//! Shutting down ([`KmsClient::shutdown`], when the provider finalizes with a request in
//! flight on another thread): every connection is closed at once, which interrupts that request,
//! and no request is sent afterwards.
//!
//! Redirects are never followed (a KMIP endpoint never redirects, and following one would
//! carry the credentials elsewhere): a 3xx answer is an error that names its `Location`.
//!
//! Timeouts: `connect_timeout` bounds the TCP (and TLS) connection; `request_timeout` bounds a
//! whole call, retries and back-off included: no call outlives it.
//!
//! Retries ([`RetryPolicy`]): read-only operations (Locate, the batched Export, ...) are tried
//! again after a short back-off when the KMS could not be reached, closed the connection before
//! answering, or answered 502/503/504. Any other operation (Sign) is tried again once, at once,
//! only when the connection closed before any answer: the mark of a kept-alive connection the
//! server had dropped. Nothing is retried after a timeout: the request may be in the KMS's
//! hands, and the time budget is spent. A retry always opens a new connection: after one
//! pooled connection turned out dead, the others are suspect too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::resolver::CachingResolver;
use super::transport::Route;
use super::ttlv::{ReadError, Ttlv};
use zeroize::Zeroizing;

use crate::config::{KmsConfig, Secret, Settings};

/// The largest answer each operation can need, read with a bounded reader: a larger one is
/// refused unparsed. A Sign answer is a signature (RSA-4096: 1 KiB of hex); a Locate page
/// 1,000 ids (about 100 KB); an Export one public key and its attributes (RSA-4096 with its
/// attributes as KMS 5.28 answers them: 4,957 bytes, measured; 16 KiB leaves room for a long
/// name and many tags). A batch's cap is the sum of its items' (see `operations::EXPORT_BATCH`).
const MAX_ANSWER_BYTES: [(&str, u64); 3] = [("Sign", 64 << 10), ("Locate", 1 << 20), ("Export", 16 << 10)];
/// The cap of any other operation, and the envelope of a `ResponseMessage` on top of its items.
const MAX_OTHER_ANSWER_BYTES: u64 = 1 << 20;
const MAX_ENVELOPE_BYTES: u64 = 16 << 10;

/// The largest answer accepted for these operations (one, or a batch).
fn answer_cap<'a>(operations: impl Iterator<Item = &'a str>) -> u64 {
    let cap = |op: &str| {
        MAX_ANSWER_BYTES.iter().find(|(name, _)| *name == op).map_or(MAX_OTHER_ANSWER_BYTES, |(_, cap)| *cap)
    };
    operations.map(cap).fold(MAX_ENVELOPE_BYTES, u64::saturating_add)
}

/// The pauses before the second and third attempts of a read-only request.
const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(300)];

/// How long an idle connection is kept for reuse: under the 120 s after which the KMS closes it.
const POOL_IDLE: Duration = Duration::from_secs(110);

/// KMIP operations that change nothing on the KMS: safe to send twice.
const READ_ONLY_OPERATIONS: [&str; 7] =
    ["Locate", "Get", "Export", "GetAttributes", "GetAttributeList", "Query", "DiscoverVersions"];

/// Why a KMS call failed: what kind of failure (what callers branch on) and the details (for
/// the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsError {
    pub kind: Kind,
    pub detail: String,
}

/// The kinds of [`KmsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No connection could be made (refused, reset, DNS).
    Unreachable,
    /// The KMS's certificate did not verify (unknown issuer, expired, wrong name): retrying will
    /// not help; with a `verified_cert` alone tried first, the system's roots are added.
    Untrusted,
    /// The TLS handshake failed otherwise (protocol, version): retrying will not help.
    Tls,
    /// Connected, but no complete answer in time.
    Timeout,
    /// The connection closed (or was reset) before any answer.
    Dropped,
    /// 401/403: the KMS refused our credentials.
    Unauthorized,
    /// 422: the KMS refused the request (`Item_Not_Found`, `Permission_Denied`, ...).
    Refused,
    /// Any other HTTP status (500, 404, ...).
    Status(u16),
    /// An answer that is not the KMIP we expect.
    Malformed,
}

impl KmsError {
    pub(crate) fn new(kind: Kind, detail: impl Into<String>) -> Self {
        KmsError { kind, detail: detail.into() }
    }
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.detail;
        match self.kind {
            Kind::Unreachable => write!(f, "KMS unreachable: {m}"),
            Kind::Untrusted | Kind::Tls => write!(f, "KMS unreachable over TLS: {m}"),
            Kind::Timeout => write!(f, "KMS did not answer in time: {m}"),
            Kind::Dropped => write!(f, "KMS closed the connection without answering: {m}"),
            Kind::Unauthorized => write!(f, "KMS refused the credentials: {m}"),
            Kind::Refused => write!(f, "KMS refused the request: {m}"),
            Kind::Status(code) => write!(f, "KMS answered HTTP {code}: {m}"),
            Kind::Malformed => write!(f, "KMS answer not understood: {m}"),
        }
    }
}

/// When a failed request is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryPolicy {
    /// Read-only: after each pause of [`BACKOFF`], when the KMS was unreachable, dropped the
    /// connection or answered 502/503/504.
    ReadOnly,
    /// Once, at once, only when the connection was dropped before any answer.
    OnceIfDropped,
}

impl RetryPolicy {
    fn for_operations<'a>(mut names: impl Iterator<Item = &'a str>) -> Self {
        if names.all(|n| READ_ONLY_OPERATIONS.contains(&n)) {
            RetryPolicy::ReadOnly
        } else {
            RetryPolicy::OnceIfDropped
        }
    }

    /// The pause before attempt `failed + 1`, after `failed` failed attempts ending with
    /// `error`; `None`: give up.
    fn pause(self, failed: usize, error: &KmsError) -> Option<Duration> {
        match self {
            RetryPolicy::ReadOnly => {
                let transient = matches!(error.kind, Kind::Unreachable | Kind::Dropped | Kind::Status(502..=504));
                BACKOFF.get(failed - 1).copied().filter(|_| transient)
            }
            RetryPolicy::OnceIfDropped => (failed == 1 && error.kind == Kind::Dropped).then_some(Duration::ZERO),
        }
    }
}

/// A connection to one KMS.
pub(crate) struct KmsClient {
    agent: RwLock<ureq::Agent>,
    /// While the agent trusts `verified_cert` alone: its TLS settings, to add the system's roots
    /// when the KMS's certificate fails that verification (see `kmip::tls`).
    deferred_tls: Mutex<Option<ureq::tls::TlsConfig>>,
    /// The agent's resolver, to forget the KMS's addresses when a connection fails.
    resolver: CachingResolver,
    /// Through which proxy, if any, the agent reaches the KMS (kept for a new agent).
    route: Route,
    connect_timeout: Duration,
    base_url: String,
    headers: Vec<(String, String)>,
    /// The bearer token: from the configuration, or the PIN given to C_Login in PIN mode.
    access_token: RwLock<Option<Secret>>,
    /// The budget of one call, retries included.
    request_timeout: Duration,
    /// Set by [`KmsClient::shutdown`]: no request is sent any more.
    shut_down: AtomicBool,
    /// See [`KmsClient::identity`].
    identity: String,
}

impl KmsClient {
    pub(crate) fn new(config: &KmsConfig, settings: &Settings) -> Result<Self, String> {
        let (tls, deferred) = super::tls::client_config(config)?;
        let resolver = CachingResolver::new(!settings.may_create_threads);
        let route = Route::for_config(config);
        let agent = agent(tls.clone(), settings.connect_timeout, settings.request_timeout, &resolver, &route);
        Ok(Self {
            agent: RwLock::new(agent),
            identity: identity(config, &route),
            route,
            deferred_tls: Mutex::new(deferred.then_some(tls)),
            resolver,
            connect_timeout: settings.connect_timeout,
            base_url: config.server_url.clone(),
            headers: config.custom_headers.clone(),
            access_token: RwLock::new(config.access_token.clone()),
            request_timeout: settings.request_timeout,
            shut_down: AtomicBool::new(false),
        })
    }

    /// A digest (SHA-256, hex) of what decides which server answers and as whom: the
    /// configuration with its secrets (another token is another identity) and the route (a
    /// proxy). The disk cache reuses a key list only for the identity the KMS gave it to.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// Closes every connection, interrupting the requests in flight (they fail at once), and
    /// refuses any request from now on: for the provider's end, when a request of another
    /// thread must not outlive it.
    pub(crate) fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        crate::read(&self.agent).clone().shutdown();
    }

    /// Whether [`KmsClient::shutdown`] was called.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    /// Replaces an agent that trusts `verified_cert` alone by one that trusts the system's roots
    /// too (once: later calls find it done).
    fn trust_system_roots(&self) {
        let mut deferred = crate::lock(&self.deferred_tls);
        if let Some(tls) = deferred.take() {
            tracing::debug!("the KMS's certificate is not verified by verified_cert alone: adding the system's roots");
            let tls = super::tls::with_system_roots(&tls);
            let agent = agent(tls, self.connect_timeout, self.request_timeout, &self.resolver, &self.route);
            *crate::write(&self.agent) = agent;
        }
    }

    /// Replaces the bearer token sent from now on (PIN mode: the PIN, or none after logout).
    pub(crate) fn set_access_token(&self, token: Option<Secret>) {
        *crate::write(&self.access_token) = token;
    }

    /// Sends one KMIP operation to `/kmip/2_1`; `Ok` is the `...Response` payload.
    pub(crate) fn call(&self, operation: &Ttlv) -> Result<Ttlv, KmsError> {
        self.call_as(operation, None)
    }

    /// [`KmsClient::call`] with `token` as the bearer token instead of the client's, for this
    /// request only (PIN mode: a PIN is checked before the client carries it).
    pub(crate) fn call_as(&self, operation: &Ttlv, token: Option<&Secret>) -> Result<Ttlv, KmsError> {
        let policy = RetryPolicy::for_operations(std::iter::once(operation.tag.as_str()));
        let cap = answer_cap(std::iter::once(operation.tag.as_str()));
        self.post("/kmip/2_1", &operation.tag, operation, policy, cap, token, None)
    }

    /// Sends several operations in one `RequestMessage` to `/kmip`; one result per operation,
    /// in order. `Err` only when the message as a whole failed.
    pub(crate) fn batch(&self, operations: Vec<Ttlv>) -> Result<Vec<Result<Ttlv, KmsError>>, KmsError> {
        self.batch_each(operations, |_, result| result)
    }

    /// [`KmsClient::batch`], each result handed to `each` (with its operation's index) as soon as
    /// it is decoded, and only what `each` makes of it kept: an answer of many items (1,000
    /// Exports) is never held whole.
    pub(crate) fn batch_each<T>(
        &self,
        operations: Vec<Ttlv>,
        each: impl FnMut(usize, Result<Ttlv, KmsError>) -> T,
    ) -> Result<Vec<T>, KmsError> {
        let count = operations.len();
        let label = batch_label(operations.iter().map(|op| op.tag.as_str()));
        let policy = RetryPolicy::for_operations(operations.iter().map(|op| op.tag.as_str()));
        let cap = answer_cap(operations.iter().map(|op| op.tag.as_str()));
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
        let mut results = Results { each, kept: Vec::with_capacity(count) };
        let request = Ttlv::structure("RequestMessage", message);
        self.post("/kmip", &label, &request, policy, cap, None, Some(&mut results))?;
        if results.kept.len() != count {
            return Err(KmsError::new(
                Kind::Malformed,
                format!("{} batch items answered for {count}", results.kept.len()),
            ));
        }
        Ok(results.kept)
    }

    /// Sends `body`, again as `policy` allows, all within `request_timeout`; an answer over
    /// `cap` bytes is refused. `token`, if given, is the bearer token instead of the client's.
    /// `items`, if given, receives the answer's `BatchItem`s as they are decoded (they are not
    /// in the answer returned).
    #[allow(clippy::too_many_arguments)]
    fn post(
        &self,
        path: &str,
        label: &str,
        body: &Ttlv,
        policy: RetryPolicy,
        cap: u64,
        token: Option<&Secret>,
        mut items: Option<&mut dyn ItemSink>,
    ) -> Result<Ttlv, KmsError> {
        let json = body.to_json();
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            if self.is_shut_down() {
                return Err(KmsError::new(Kind::Unreachable, format!("{label}: not sent, the provider is finalizing")));
            }
            let attempt_started = Instant::now();
            let system_roots_deferred = crate::lock(&self.deferred_tls).is_some();
            let budget = self.request_timeout.saturating_sub(started.elapsed());
            let result = if budget.is_zero() {
                Err(KmsError::new(Kind::Timeout, format!("no time left after {} ms", started.elapsed().as_millis())))
            } else {
                if let Some(items) = items.as_mut() {
                    items.restart();
                }
                let items = items.as_mut().map(|items| &mut **items as &mut dyn ItemSink);
                self.post_once(path, &json, budget, attempt > 1, cap, token, items)
            };
            let elapsed_ms = attempt_started.elapsed().as_millis();
            let error = match result {
                Ok(answer) => {
                    tracing::debug!(operation = label, attempt, status = "ok", elapsed_ms, "KMS request");
                    return Ok(answer);
                }
                Err(e) => e,
            };
            tracing::debug!(operation = label, attempt, status = %error, elapsed_ms, "KMS request");
            if system_roots_deferred && error.kind == Kind::Untrusted {
                // Not a retry: the same attempt, verified against the documented set of roots.
                self.trust_system_roots();
                continue;
            }
            if matches!(error.kind, Kind::Unreachable | Kind::Dropped) {
                self.resolver.forget();
            }
            let pause = policy
                .pause(attempt, &error)
                .filter(|pause| started.elapsed() + *pause < self.request_timeout && !self.is_shut_down());
            let Some(pause) = pause else {
                return Err(with_context(error, label, attempt, started.elapsed()));
            };
            tracing::info!(operation = label, attempt, error = %error, pause_ms = pause.as_millis(), "KMS request failed, trying again");
            std::thread::sleep(pause);
            attempt += 1;
        }
    }

    /// One HTTP exchange, within `timeout`; on a new connection if `fresh`; an answer over `cap`
    /// bytes is refused (decoding stops there); `token` (else the client's) as the bearer token;
    /// the answer's `BatchItem`s to `items`, if given.
    #[allow(clippy::too_many_arguments)]
    fn post_once(
        &self,
        path: &str,
        json: &str,
        timeout: Duration,
        fresh: bool,
        cap: u64,
        token: Option<&Secret>,
        mut items: Option<&mut dyn ItemSink>,
    ) -> Result<Ttlv, KmsError> {
        let agent = crate::read(&self.agent).clone();
        let mut request = agent
            .post(format!("{}{path}", self.base_url))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let bearer = match token {
            Some(token) => Some(bearer(token)),
            None => crate::read(&self.access_token).as_ref().map(bearer),
        };
        if let Some(bearer) = bearer {
            // ureq copies the value (then its HTTP/1 writer and rustls do): those copies are
            // freed, not wiped; ours is wiped here.
            request = request.header("Authorization", bearer.as_str());
        }
        let mut config = request.config().timeout_global(Some(timeout));
        if fresh {
            // No pooled connection is young enough: ureq connects anew.
            config = config.max_idle_age(Duration::ZERO);
        }
        let request = config.build();
        let mut response = request.send(json).map_err(|e| transport_error(e, false))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response.headers().get("location").map_or("nowhere".into(), |l| snippet(l.as_bytes()));
            return Err(KmsError::new(
                Kind::Status(status),
                format!("the KMS redirects to {location}: not followed; set server_url to the KMS's own address"),
            ));
        }
        let too_large = |e: ureq::Error| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                KmsError::new(Kind::Malformed, format!("answer larger than {cap} bytes: refused unread"))
            }
            e => transport_error(e, true),
        };
        let body = response.body_mut().with_config().limit(cap);
        if status == 200 {
            // Decoded as it arrives: a large answer is never held whole, as text or as a tree.
            let streaming = items.is_some();
            let mut each = |item: Ttlv| {
                if let Some(items) = items.as_mut() {
                    items.item(item);
                }
            };
            let sink: Option<&mut dyn FnMut(Ttlv)> = if streaming { Some(&mut each) } else { None };
            return Ttlv::from_reader(body.reader(), sink).map_err(|e| match e {
                ReadError::Io(e) => too_large(ureq::Error::from(e)),
                ReadError::Decode(e) => KmsError::new(Kind::Malformed, format!("not KMIP JSON-TTLV: {e}")),
            });
        }
        let bytes = body.read_to_vec().map_err(too_large)?;
        match status {
            401 | 403 => Err(KmsError::new(Kind::Unauthorized, format!("HTTP {status}"))),
            422 => Err(KmsError::new(Kind::Refused, snippet(&bytes))),
            _ => Err(KmsError::new(Kind::Status(status), snippet(&bytes))),
        }
    }
}

/// See [`KmsClient::identity`]. The digest of the secrets is kept in the user's private cache
/// file only; it tells nothing that file's readers (the user, root) cannot read in the
/// configuration or the user's credential store.
fn identity(config: &KmsConfig, route: &Route) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    // Debug shows every setting but the secrets, which follow; and whether the proxy the
    // environment names is bypassed for the KMS (`NO_PROXY`).
    let uri: Option<ureq::http::Uri> = config.server_url.parse().ok();
    let bypassed = route.ureq_proxy().zip(uri).map(|(proxy, uri)| proxy.is_no_proxy(&uri));
    digest.update(format!("{config:?}\n{route:?}\n{bypassed:?}\n"));
    let proxy_secret = config.proxy.as_ref().and_then(|p| match &p.auth {
        Some(crate::config::ProxyAuth::Basic { password, .. }) => password.as_ref(),
        Some(crate::config::ProxyAuth::Header(header)) => Some(header),
        None => None,
    });
    let pkcs12_password = match &config.client_certificate {
        Some(crate::config::ClientCertificate::Pkcs12 { password, .. }) => password.as_ref(),
        _ => None,
    };
    for secret in [config.access_token.as_ref(), proxy_secret, pkcs12_password] {
        digest.update(secret.map_or("-", Secret::expose));
        digest.update([0]);
    }
    hex::encode(digest.finalize())
}

/// The `Authorization` header's value for this token, in a buffer sized once (so no reallocation
/// leaves a copy behind) and wiped when dropped.
fn bearer(token: &Secret) -> Zeroizing<String> {
    let mut value = Zeroizing::new(String::with_capacity("Bearer ".len() + token.expose().len()));
    value.push_str("Bearer ");
    value.push_str(token.expose());
    value
}

/// An agent with these TLS settings and timeouts, our resolver and transport, on `route`.
fn agent(
    tls: ureq::tls::TlsConfig,
    connect_timeout: Duration,
    request_timeout: Duration,
    resolver: &CachingResolver,
    route: &Route,
) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A KMIP endpoint never redirects: a 3xx is an error (see `post_once`), never followed
        // with our credentials to wherever it points.
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        .timeout_global(Some(request_timeout))
        .max_idle_connections_per_host(4)
        // KMS 5.28 closes a connection idle for 120 s (docs/kms-wire.md); ureq's default, 15 s,
        // would drop it first, and a long-lived process (ssh-agent's helper, cosmian-ssh-agent)
        // would pay TCP and TLS again for a login a minute after the last. One closed sooner
        // (a balancer) is noticed before reuse (`transport`'s check) and replaced.
        .max_idle_age(POOL_IDLE)
        .user_agent(concat!("cosmian-pkcs11/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        // `proxy_params` (ckms's), else the environment's proxy: see `kmip::transport`.
        .proxy(route.ureq_proxy())
        .build();
    ureq::Agent::with_parts(config, super::transport::connector(route), resolver.clone())
}

/// Adds the operation, the attempts and the time spent to an error's message, for the log
/// line of the PKCS#11 call that failed.
fn with_context(mut error: KmsError, label: &str, attempts: usize, elapsed: Duration) -> KmsError {
    let tries = if attempts > 1 { format!(", {attempts} attempts") } else { String::new() };
    error.detail = format!("{} ({label}{tries}, {} ms)", error.detail, elapsed.as_millis());
    error
}

/// The start of an error body, on one line, for log lines.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect()
}

/// Whether a TLS failure is rustls refusing the server's certificate, by its error kind (never
/// by its text).
fn is_untrusted(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if matches!(e.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        current = e.source();
    }
    false
}

/// A transport failure, before (`answered` false) or while reading (true) the answer's body.
fn transport_error(e: ureq::Error, answered: bool) -> KmsError {
    use std::io::ErrorKind::*;
    let dropped = |m: String| {
        if answered {
            KmsError::new(Kind::Malformed, format!("answer cut short: {m}"))
        } else {
            KmsError::new(Kind::Dropped, m)
        }
    };
    match e {
        ureq::Error::Timeout(t) => KmsError::new(Kind::Timeout, t.to_string()),
        ureq::Error::Io(io) if matches!(io.kind(), TimedOut | WouldBlock) => {
            KmsError::new(Kind::Timeout, io.to_string())
        }
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                ConnectionRefused | NotConnected | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            ) =>
        {
            KmsError::new(Kind::Unreachable, io.to_string())
        }
        ureq::Error::Io(io)
            if matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe) =>
        {
            dropped(io.to_string())
        }
        // rustls's handshake errors come through the socket as InvalidData.
        ureq::Error::Io(io) if io.kind() == InvalidData && !answered => {
            if io.get_ref().is_some_and(is_untrusted) {
                KmsError::new(Kind::Untrusted, io.to_string())
            } else {
                KmsError::new(Kind::Tls, io.to_string())
            }
        }
        ureq::Error::Rustls(rustls::Error::InvalidCertificate(_)) => KmsError::new(Kind::Untrusted, e.to_string()),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => KmsError::new(Kind::Tls, e.to_string()),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => KmsError::new(Kind::Unreachable, e.to_string()),
        ureq::Error::BodyExceedsLimit(_) | ureq::Error::Protocol(_) | ureq::Error::LargeResponseHeader(..) => {
            KmsError::new(Kind::Malformed, e.to_string())
        }
        other if answered => KmsError::new(Kind::Malformed, other.to_string()),
        other => KmsError::new(Kind::Unreachable, other.to_string()),
    }
}

/// How a batch shows in the log: its operations, runs counted, e.g.
/// `RequestMessage[2 Locate]`, `RequestMessage[1000 Export]`.
fn batch_label<'a>(operations: impl Iterator<Item = &'a str>) -> String {
    let mut runs: Vec<(usize, &str)> = Vec::new();
    for op in operations {
        match runs.last_mut() {
            Some((n, last)) if *last == op => *n += 1,
            _ => runs.push((1, op)),
        }
    }
    let runs: Vec<String> = runs.iter().map(|(n, op)| format!("{n} {op}")).collect();
    format!("RequestMessage[{}]", runs.join(", "))
}

/// Receives the `BatchItem`s of an answer as they are decoded; `restart`: a new attempt begins.
trait ItemSink {
    fn restart(&mut self);
    fn item(&mut self, item: Ttlv);
}

/// What [`KmsClient::batch_each`] keeps: `each`'s result for every item.
struct Results<F, T> {
    each: F,
    kept: Vec<T>,
}

impl<F: FnMut(usize, Result<Ttlv, KmsError>) -> T, T> ItemSink for Results<F, T> {
    fn restart(&mut self) {
        self.kept.clear();
    }
    fn item(&mut self, item: Ttlv) {
        let result = (self.each)(self.kept.len(), batch_item_result(item));
        self.kept.push(result);
    }
}

/// One `BatchItem` of a `ResponseMessage`.
fn batch_item_result(item: Ttlv) -> Result<Ttlv, KmsError> {
    let status = item.child("ResultStatus").and_then(Ttlv::as_text).unwrap_or("");
    if status != "Success" {
        let reason = item.child("ResultReason").and_then(Ttlv::as_text).unwrap_or("?");
        let message = item.child("ResultMessage").and_then(Ttlv::as_text).unwrap_or("");
        return Err(KmsError::new(Kind::Refused, format!("{status} {reason}: {}", snippet(message.as_bytes()))));
    }
    item.into_child("ResponsePayload")
        .ok_or_else(|| KmsError::new(Kind::Malformed, "batch item without ResponsePayload"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header value is built in one allocation of its exact size, wiped when dropped.
    #[test]
    fn the_bearer_header_is_one_wiped_buffer() {
        let value: Zeroizing<String> = bearer(&Secret::new("tok-123"));
        assert_eq!(value.as_str(), "Bearer tok-123");
        assert_eq!(value.capacity(), value.len());
    }

    fn io(kind: std::io::ErrorKind) -> ureq::Error {
        ureq::Error::Io(std::io::Error::new(kind, "x"))
    }

    #[test]
    fn read_only_operations_are_retried_with_backoff_on_transient_failures() {
        let p = RetryPolicy::for_operations(["Locate"].into_iter());
        assert_eq!(p, RetryPolicy::ReadOnly);
        assert_eq!(RetryPolicy::for_operations(["Export", "Export"].into_iter()), RetryPolicy::ReadOnly);
        let refused = KmsError::new(Kind::Unreachable, "refused");
        assert_eq!(p.pause(1, &refused), Some(BACKOFF[0]));
        assert_eq!(p.pause(2, &KmsError::new(Kind::Dropped, "eof")), Some(BACKOFF[1]));
        assert_eq!(p.pause(3, &refused), None, "three attempts at most");
        assert_eq!(p.pause(1, &KmsError::new(Kind::Status(503), String::new())), Some(BACKOFF[0]));
        for final_answer in [
            KmsError::new(Kind::Timeout, "t"),
            KmsError::new(Kind::Untrusted, "invalid peer certificate: UnknownIssuer"),
            KmsError::new(Kind::Status(500), String::new()),
            KmsError::new(Kind::Refused, "Item_Not_Found"),
            KmsError::new(Kind::Unauthorized, "HTTP 401"),
            KmsError::new(Kind::Malformed, "garbage"),
        ] {
            assert_eq!(p.pause(1, &final_answer), None, "{final_answer}");
        }
    }

    #[test]
    fn a_signature_is_sent_again_once_and_only_after_a_dropped_connection() {
        let p = RetryPolicy::for_operations(["Sign"].into_iter());
        assert_eq!(p, RetryPolicy::OnceIfDropped);
        assert_eq!(RetryPolicy::for_operations(["Locate", "Sign"].into_iter()), RetryPolicy::OnceIfDropped);
        let dropped = KmsError::new(Kind::Dropped, "eof");
        assert_eq!(p.pause(1, &dropped), Some(Duration::ZERO));
        assert_eq!(p.pause(2, &dropped), None);
        assert_eq!(p.pause(1, &KmsError::new(Kind::Timeout, "t")), None, "never after a timeout");
        assert_eq!(p.pause(1, &KmsError::new(Kind::Unreachable, "refused")), None);
        assert_eq!(p.pause(1, &KmsError::new(Kind::Status(503), String::new())), None);
    }

    #[test]
    fn transport_failures_are_classified_by_when_they_happen() {
        use std::io::ErrorKind::*;
        assert_eq!(transport_error(io(ConnectionRefused), false).kind, Kind::Unreachable);
        assert_eq!(transport_error(io(UnexpectedEof), false).kind, Kind::Dropped);
        assert_eq!(transport_error(io(ConnectionReset), false).kind, Kind::Dropped);
        assert_eq!(transport_error(io(BrokenPipe), false).kind, Kind::Dropped);
        // Once the answer has started, a cut is not a dropped connection: never resent.
        assert_eq!(transport_error(io(ConnectionReset), true).kind, Kind::Malformed);
        assert_eq!(transport_error(io(TimedOut), true).kind, Kind::Timeout);
        assert_eq!(transport_error(ureq::Error::Timeout(ureq::Timeout::Global), false).kind, Kind::Timeout);
        assert_eq!(transport_error(ureq::Error::HostNotFound, false).kind, Kind::Unreachable);
        assert_eq!(transport_error(io(InvalidData), false).kind, Kind::Tls);
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = ureq::Error::Io(std::io::Error::new(InvalidData, untrusted.clone()));
        assert_eq!(transport_error(wrapped, false).kind, Kind::Untrusted);
        assert_eq!(transport_error(ureq::Error::Rustls(untrusted), false).kind, Kind::Untrusted);
        assert_eq!(transport_error(ureq::Error::Tls("bad"), false).kind, Kind::Tls);
        assert_eq!(transport_error(ureq::Error::BodyExceedsLimit(1), true).kind, Kind::Malformed);
    }

    #[test]
    fn answers_are_capped_by_what_their_operations_need() {
        assert_eq!(answer_cap(["Sign"].into_iter()), (64 << 10) + (16 << 10));
        assert_eq!(answer_cap(["Locate", "Locate"].into_iter()), (2 << 20) + (16 << 10));
        assert_eq!(answer_cap(std::iter::repeat_n("Export", 1000)), 1000 * (16 << 10) + (16 << 10));
        assert_eq!(answer_cap(["Query"].into_iter()), (1 << 20) + (16 << 10));
    }

    #[test]
    fn the_identity_changes_with_any_setting_secrets_included() {
        let settings = Settings::from_lookup(|_| None, &mut Vec::new());
        let config = |token: Option<&str>, url: &str| {
            let text = format!("[http_config]\nserver_url = \"{url}\"\n");
            let mut config = KmsConfig::parse(&text, std::path::Path::new("/c/kms.toml")).unwrap().0;
            config.access_token = token.map(Secret::new);
            KmsClient::new(&config, &settings).unwrap().identity().to_owned()
        };
        let first = config(Some("t1"), "http://127.0.0.1:1");
        assert_eq!(first, config(Some("t1"), "http://127.0.0.1:1"));
        assert_eq!(first.len(), 64);
        assert!(!first.contains("t1"));
        assert_ne!(first, config(Some("t2"), "http://127.0.0.1:1"), "another token");
        assert_ne!(first, config(None, "http://127.0.0.1:1"));
        assert_ne!(first, config(Some("t1"), "http://127.0.0.1:2"));
    }

    #[test]
    fn a_batch_is_logged_by_its_operations() {
        assert_eq!(batch_label(["Locate", "Locate"].into_iter()), "RequestMessage[2 Locate]");
        assert_eq!(batch_label(["Locate", "Export", "Export"].into_iter()), "RequestMessage[1 Locate, 2 Export]");
    }

    #[test]
    fn the_final_error_names_the_operation_attempts_and_time() {
        let e = with_context(KmsError::new(Kind::Unreachable, "refused"), "Locate", 3, Duration::from_millis(412));
        assert_eq!(e.to_string(), "KMS unreachable: refused (Locate, 3 attempts, 412 ms)");
        let e = with_context(
            KmsError::new(Kind::Status(500), "Internal server error"),
            "Sign",
            1,
            Duration::from_millis(3),
        );
        assert_eq!(e.to_string(), "KMS answered HTTP 500: Internal server error (Sign, 3 ms)");
    }
}
