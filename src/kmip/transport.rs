//! The TCP connection under HTTP(S) to the KMS: ureq's connector chain (the `CONNECT` tunnel
//! of `proxy_params`, or an HTTP `CONNECT` proxy from the environment, TCP, rustls) with our
//! own TCP transport, which asks Linux to acknowledge at once (`TCP_QUICKACK`) whatever
//! arrives while the provider waits for the KMS.
//!
//! Why: Cosmian KMS 5.28 leaves Nagle's algorithm on for its sockets, and over TLS 1.3 it
//! writes two session tickets (255 bytes each) just before the answer to the first request of
//! a connection. Nagle holds the second ticket and the answer until the client acknowledges the
//! first one, and Linux delays that acknowledgement (about 40 ms) because the client sent data
//! just before (interactive "ping-pong" mode). Measured with tcpdump on loopback: one
//! `ssh-keygen -D` in three waited 40 to 45 ms for the answer of its only request. Acknowledging
//! at once costs one `setsockopt` per read and an empty ACK segment per answer.
//!
//! Everything else is what ureq's own TCP transport does: no Nagle on our side
//! (`TCP_NODELAY`), per-call read and write timeouts from ureq's budget, a non-blocking probe
//! before a pooled connection is reused.
//!
//! Proxies ([`Route`]): with `[http_config.proxy_params]`, every connection is a `CONNECT`
//! tunnel through that proxy, as ckms 5.28 makes it ([`TunnelConnector`]: ureq's own
//! `CONNECT` cannot send a `custom_auth_header`), unless the KMS's host is in the exclusion
//! list (then direct, as ckms: no proxy from the environment either). Without
//! `proxy_params`, ureq's `CONNECT` connector uses the proxy the environment names
//! (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), as before `proxy_params` existed.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::Error;
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, RustlsConnector,
    ShutdownHandle, Transport,
};
use zeroize::Zeroizing;

use crate::config::{KmsConfig, ProxyAuth, ProxyParams};

/// The largest `CONNECT` answer head read from a proxy (ckms's bound too).
const MAX_PROXY_ANSWER_HEAD: usize = 8 << 10;

/// Where the connections to the KMS go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// No `proxy_params`: through the `CONNECT` proxy the environment names, if any (read
    /// once; ureq's connector still applies its `NO_PROXY`).
    Environment(Option<ureq::Proxy>),
    /// `proxy_params`, and the KMS's host is in its exclusion list: straight to the KMS.
    Direct,
    /// Through a `CONNECT` tunnel to this proxy.
    Tunnel(Arc<ProxyParams>),
}

impl Route {
    /// The route of `config`'s KMS, logged at `info` when it goes through a proxy.
    pub(super) fn for_config(config: &KmsConfig) -> Route {
        match (&config.proxy, config.kms_proxy()) {
            (_, Some(proxy)) => {
                tracing::info!(proxy = %proxy.url, "the KMS is reached through the CONNECT proxy of proxy_params");
                Route::Tunnel(Arc::new(proxy.clone()))
            }
            (Some(_), None) => {
                tracing::info!("the KMS's host is in proxy_params.exclusion_list: no proxy");
                Route::Direct
            }
            (None, None) => {
                let proxy = ureq::Proxy::try_from_env();
                let kms: Option<ureq::http::Uri> = config.server_url.parse().ok();
                let used = proxy.as_ref().filter(|p| kms.as_ref().is_some_and(|kms| !p.is_no_proxy(kms)));
                // Host and port only: the variable may hold `user:password@`.
                if let Some(p) = used {
                    let (address, protocol) = (format!("{}:{}", p.host(), p.port()), p.protocol());
                    if is_connect(protocol) {
                        tracing::info!(proxy = address, %protocol, "the KMS is reached through the proxy the environment names");
                    } else {
                        tracing::warn!(proxy = address, %protocol, "the environment names a SOCKS proxy, which the provider does not support: the KMS is reached directly");
                    }
                }
                // A SOCKS proxy is not for our connector chain: ureq would go direct, or fail to.
                Route::Environment(proxy.filter(|p| is_connect(p.protocol())))
            }
        }
    }

    /// The proxy for ureq's configuration. For a tunnel, ureq never dials it (the tunnel
    /// connector comes first in the chain), but naming it stops ureq from resolving the
    /// KMS's host itself: only the proxy may know that name.
    pub(super) fn ureq_proxy(&self) -> Option<ureq::Proxy> {
        match self {
            Route::Environment(proxy) => proxy.clone(),
            Route::Direct => None,
            Route::Tunnel(p) => ureq::Proxy::builder(ureq::ProxyProtocol::Http).host(&p.host).port(p.port).build().ok(),
        }
    }
}

/// Whether ureq's `CONNECT` connector speaks to such a proxy (not SOCKS).
fn is_connect(protocol: ureq::ProxyProtocol) -> bool {
    matches!(protocol, ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https)
}

/// The connector chain of an agent on `route`: the `proxy_params` tunnel, else a `CONNECT`
/// proxy from the environment, else TCP; then TLS for `https://`.
pub(super) fn connector(route: &Route) -> impl Connector<()> + use<> {
    let tunnel = match route {
        Route::Tunnel(proxy) => Some(proxy.clone()),
        Route::Environment(_) | Route::Direct => None,
    };
    ().chain(TunnelConnector(tunnel))
        .chain(ConnectProxyConnector::default())
        .chain(KmsTcpConnector)
        .chain(RustlsConnector::default())
}

/// Opens the `CONNECT` tunnel of `proxy_params` (when set) as ckms 5.28 does: a [`KmsSocket`]
/// to the proxy, `CONNECT host:port HTTP/1.1` with `Host` and `Proxy-Authorization`, and an
/// answer `200` whose head fits in [`MAX_PROXY_ANSWER_HEAD`]; all within the connection's
/// budget (`COSMIAN_PKCS11_CONNECT_TIMEOUT_MS`, within the request's). The KMS's TLS then
/// runs inside the tunnel.
#[derive(Debug)]
struct TunnelConnector(Option<Arc<ProxyParams>>);

impl<In: Transport> Connector<In> for TunnelConnector {
    type Out = Either<In, KmsSocket>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, Error> {
        let (Some(proxy), None) = (&self.0, &chained) else { return Ok(chained.map(Either::A)) };
        let started = Instant::now();
        let budget = details.timeout.not_zero().map(|t| *t);
        let left = || match budget.map(|b| b.saturating_sub(started.elapsed())) {
            Some(left) if left.is_zero() => Err(Error::Timeout(details.timeout.reason)),
            left => Ok(left),
        };
        let proxy_uri: ureq::http::Uri = proxy.url.parse().map_err(|_| Error::InvalidProxyUrl)?;
        let addrs = details.resolver.resolve(&proxy_uri, details.config, details.timeout)?;
        let named = |e: io::Error| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(details.timeout.reason),
            kind => Error::Io(io::Error::new(kind, format!("the proxy {}: {e}", proxy.url))),
        };
        let stream = connect(&addrs, left()?).map_err(named)?;
        stream.set_nodelay(true)?;
        let host = details.uri.host().unwrap_or_default();
        let https = details.uri.scheme_str() == Some("https");
        let target = format!("{host}:{}", details.uri.port_u16().unwrap_or(if https { 443 } else { 80 }));
        stream.set_write_timeout(left()?)?;
        (&stream).write_all(connect_head(&target, proxy.auth.as_ref()).as_bytes()).map_err(named)?;
        let head = read_answer_head(&stream, &left).map_err(|e| match e {
            Error::Io(e) => named(e),
            e => e,
        })?;
        let status = head.lines().next().unwrap_or_default();
        if !(status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200")) {
            let status: String = status.chars().map(|c| if c.is_ascii_graphic() { c } else { ' ' }).take(120).collect();
            return Err(Error::ConnectProxyFailed(format!(
                "the proxy {} answered \"{status}\" to CONNECT {target}",
                proxy.url
            )));
        }
        tracing::debug!(proxy = %proxy.url, target, "CONNECT tunnel open");
        let stream = Arc::new(stream);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(KmsSocket { stream, buffers })))
    }
}

/// The `CONNECT` request head, in a buffer sized once and wiped when dropped (it may hold the
/// proxy's credentials).
fn connect_head(target: &str, auth: Option<&ProxyAuth>) -> Zeroizing<String> {
    use base64::Engine;
    let basic = match auth {
        Some(ProxyAuth::Basic { username, password }) => {
            let password = password.as_ref().map_or("", |p| p.expose());
            let mut pair = Zeroizing::new(String::with_capacity(username.len() + 1 + password.len()));
            let _ = write!(pair, "{username}:{password}");
            Some(Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
        }
        _ => None,
    };
    let credentials = match (auth, &basic) {
        (Some(ProxyAuth::Header(value)), _) => Some(("", value.expose())),
        (_, Some(basic)) => Some(("Basic ", basic.as_str())),
        _ => None,
    };
    let size = 64 + 2 * target.len() + credentials.map_or(0, |(scheme, value)| scheme.len() + value.len());
    let mut head = Zeroizing::new(String::with_capacity(size));
    let _ = write!(head, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((scheme, value)) = credentials {
        let _ = write!(head, "Proxy-Authorization: {scheme}{value}\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Reads the proxy's answer head (up to its blank line, not a byte further: what follows is
/// the KMS's), at most [`MAX_PROXY_ANSWER_HEAD`] bytes, each read within `left()`.
fn read_answer_head(stream: &TcpStream, left: &dyn Fn() -> Result<Option<Duration>, Error>) -> Result<String, Error> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        stream.set_read_timeout(left()?)?;
        quick_ack(stream);
        let peeked = loop {
            match stream.peek(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if peeked == 0 {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "closed the connection without answering CONNECT");
            return Err(Error::Io(e));
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..peeked]);
        let end = head[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at + 4);
        let taken = end.map_or(peeked, |end| peeked - (head.len() - end));
        (&*stream).read_exact(&mut chunk[..taken])?;
        if let Some(end) = end {
            head.truncate(end);
            return Ok(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > MAX_PROXY_ANSWER_HEAD {
            let e = io::Error::new(io::ErrorKind::InvalidData, "answered CONNECT with a head over 8 KiB");
            return Err(Error::Io(e));
        }
    }
}

/// Opens a [`KmsSocket`] to the first of the resolved addresses that answers, unless a proxy
/// connection came up the chain.
#[derive(Debug)]
struct KmsTcpConnector;

impl<In: Transport> Connector<In> for KmsTcpConnector {
    type Out = Either<In, KmsSocket>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, Error> {
        if let Some(proxied) = chained {
            return Ok(Some(Either::A(proxied)));
        }
        let stream = connect(&details.addrs, details.timeout.not_zero().map(|t| *t)).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(details.timeout.reason),
            _ => Error::Io(e),
        })?;
        stream.set_nodelay(true)?;
        let stream = Arc::new(stream);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(KmsSocket { stream, buffers })))
    }
}

/// Tries each address in turn, each with an equal share of what is left of `budget` (so an
/// address that swallows packets leaves time for the next); the last error if none answers.
fn connect(addrs: &[SocketAddr], budget: Option<Duration>) -> io::Result<TcpStream> {
    let started = Instant::now();
    let mut last_error = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to");
    for (i, addr) in addrs.iter().enumerate() {
        let attempt = match budget {
            None => TcpStream::connect(addr),
            Some(budget) => {
                let left = budget.saturating_sub(started.elapsed());
                let share = left / (addrs.len() - i) as u32;
                if share.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                TcpStream::connect_timeout(addr, share)
            }
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// A TCP connection to the KMS (see the module documentation).
#[derive(Debug)]
struct KmsSocket {
    /// Shared (weakly) with the agent, which may shut it down.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
}

impl Transport for KmsSocket {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        self.stream.set_write_timeout(time_left(timeout)?).map_err(Error::Io)?;
        let output = &self.buffers.output()[..amount];
        (&*self.stream).write_all(output).map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        self.stream.set_read_timeout(time_left(timeout)?).map_err(Error::Io)?;
        quick_ack(&self.stream);
        let input = self.buffers.input_append_buf();
        let read = loop {
            // A signal interrupts the read: read again (the read timeout still bounds it).
            match (&*self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let amount = read.map_err(|e| io_error(e, timeout))?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// A kept-alive connection is usable if nothing is waiting on it (the KMS sends nothing
    /// unasked) and it is not closed: a non-blocking read would block.
    fn is_open(&mut self) -> bool {
        let probe = || -> io::Result<bool> {
            self.stream.set_nonblocking(true)?;
            let idle = matches!((&*self.stream).read(&mut [0u8]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            self.stream.set_nonblocking(false)?;
            Ok(idle)
        };
        probe().unwrap_or(false)
    }
}

/// The socket timeout for one read or write: `None` blocks; an exhausted budget is ureq's
/// timeout error.
fn time_left(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

/// A socket timeout (`WouldBlock` on Unix, `TimedOut` on Windows) is ureq's timeout error.
fn io_error(e: io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout.reason),
        _ => Error::Io(e),
    }
}

/// Leaves Linux's delayed-acknowledgement mode until our next write, and acknowledges at once
/// what already arrived. Best effort: a failure only means the old timing.
#[cfg(target_os = "linux")]
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a pointer to a c_int with its size, as TCP_QUICKACK takes.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Other systems have no such switch.
#[cfg(not(target_os = "linux"))]
fn quick_ack(_: &TcpStream) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connect_skips_an_address_that_refuses_and_shares_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // Dropped: refuses.
        let open = listener.local_addr().unwrap();
        let stream = connect(&[closed, open], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        let refused = connect(&[closed], Some(Duration::from_secs(5))).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(connect(&[], None).unwrap_err().kind(), io::ErrorKind::AddrNotAvailable);
        assert_eq!(connect(&[open], Some(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_connect_head_carries_the_proxy_credentials_as_ckms_sends_them() {
        use crate::config::Secret;
        let head = |auth: Option<ProxyAuth>| connect_head("kms.example.com:9998", auth.as_ref()).to_string();
        assert_eq!(head(None), "CONNECT kms.example.com:9998 HTTP/1.1\r\nHost: kms.example.com:9998\r\n\r\n");
        let basic = ProxyAuth::Basic { username: "alice".into(), password: Some(Secret::new("pw:1")) };
        assert!(head(Some(basic)).ends_with("\r\nProxy-Authorization: Basic YWxpY2U6cHc6MQ==\r\n\r\n"));
        let no_password = ProxyAuth::Basic { username: "bob".into(), password: None };
        assert!(head(Some(no_password)).contains("\r\nProxy-Authorization: Basic Ym9iOg==\r\n"));
        let custom = ProxyAuth::Header(Secret::new("Negotiate abc=="));
        assert!(head(Some(custom)).contains("\r\nProxy-Authorization: Negotiate abc==\r\n"));
    }

    #[test]
    fn the_proxy_answer_head_is_read_to_its_blank_line_and_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let left = || Ok(Some(Duration::from_secs(5)));
        let answer = |parts: Vec<Vec<u8>>| {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                for part in parts {
                    server.write_all(&part).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let head = read_answer_head(&client, &left);
            let mut rest = Vec::new();
            client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let _ = (&client).read_to_end(&mut rest);
            (head, rest)
        };
        // The blank line split across reads; what follows it is left for TLS.
        let (head, rest) = answer(vec![b"HTTP/1.1 200 OK\r\nVia: x\r".to_vec(), b"\n\r\nTLS".to_vec()]);
        assert_eq!(head.unwrap(), "HTTP/1.1 200 OK\r\nVia: x\r\n\r\n");
        assert_eq!(rest, b"TLS");
        let (head, _) = answer(vec![b"HTTP/1.1 407 Proxy Auth".to_vec()]);
        assert!(matches!(head, Err(Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
        let (head, _) = answer(vec![vec![b'x'; 9 << 10]]);
        assert!(matches!(head, Err(Error::Io(e)) if e.kind() == io::ErrorKind::InvalidData));
        let no_time = || Err(Error::Timeout(ureq::Timeout::Connect));
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(matches!(read_answer_head(&client, &no_time), Err(Error::Timeout(_))));
    }

    #[test]
    fn a_pooled_connection_with_unasked_bytes_or_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = || KmsSocket {
            stream: Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap()),
            buffers: LazyBuffers::new(1024, 1024),
        };
        let mut idle = socket();
        let (mut server, _) = listener.accept().unwrap();
        assert!(idle.is_open());
        server.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!idle.is_open(), "bytes nobody asked for");
        let mut closed = socket();
        drop(listener.accept().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closed.is_open(), "closed by the server");
    }
}
