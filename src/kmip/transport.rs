//! The TCP connection under HTTP(S) to the KMS: ureq's connector chain (an HTTP `CONNECT`
//! proxy from the environment, TCP, rustls) with our own TCP transport, which asks Linux to
//! acknowledge at once (`TCP_QUICKACK`) whatever arrives while the provider waits for the KMS.
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

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, RustlsConnector,
    ShutdownHandle, Transport,
};
use ureq::Error;

/// The connector chain of the agent: `CONNECT` proxy (when the environment names one), TCP,
/// then TLS for `https://`.
pub(super) fn connector() -> impl Connector<()> {
    ().chain(ConnectProxyConnector::default()).chain(KmsTcpConnector).chain(RustlsConnector::default())
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
