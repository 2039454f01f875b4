//! A relay on loopback that puts a chosen distance between a client and a server: every byte
//! is forwarded unchanged, each way, a chosen one-way delay after it arrived, and a new
//! connection costs its round trip (the server is dialled one delay after the client connected,
//! and the client's first bytes reach it no earlier than a TCP handshake would let them). So a
//! KMS or an sshd on 127.0.0.1 looks as far away as one in another region, as seen from the
//! client's clock.
//!
//! It counts the round trips a client pays, as they pass: the connections it opens, and the
//! exchanges on them (server bytes that follow bytes the client sent, before the client closed
//! its side: a TLS handshake flight, an HTTP answer). Not a mock: the server answers
//! everything, and a zero delay forwards at once. Its threads are named [`THREAD_NAME`], so that
//! a test counting a process's threads can tell them apart.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The name of the relay's threads.
pub const THREAD_NAME: &str = "delay-relay";

/// Starts a thread named [`THREAD_NAME`].
fn spawn(body: impl FnOnce() + Send + 'static) {
    thread::Builder::new().name(THREAD_NAME.into()).spawn(body).expect("cannot start a relay thread");
}

/// What crossed the relay since the last reset.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrips {
    /// TCP connections the client opened (each a handshake's round trip).
    pub connections: usize,
    /// Answers: server bytes that followed client bytes on the same connection.
    pub exchanges: usize,
}

impl RoundTrips {
    /// Connections and exchanges: the round trips on the client's clock.
    pub fn total(&self) -> usize {
        self.connections + self.exchanges
    }
}

#[derive(Debug, Default)]
struct State {
    counts: RoundTrips,
    /// Both sockets of every connection, to close them when the relay stops.
    streams: Vec<TcpStream>,
}

/// A relay from a free port of 127.0.0.1 to `127.0.0.1:upstream_port`; stops when dropped.
#[derive(Debug)]
pub struct DelayRelay {
    port: u16,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
}

/// Bytes read on one side, and when they may be written on the other; `None`: that side closed.
type Chunk = (Instant, Option<Vec<u8>>);

impl DelayRelay {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream_port`,
    /// `one_way` later each way.
    pub fn start(upstream_port: u16, one_way: Duration) -> DelayRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (state.clone(), stopping.clone());
        spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = client {
                    let accepted = Instant::now();
                    lock(&shared).counts.connections += 1;
                    let shared = shared.clone();
                    spawn(move || relay(client, accepted, upstream_port, one_way, &shared));
                }
            }
        });
        DelayRelay { port, state, stopping }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The round trips since the start or the last [`DelayRelay::reset`].
    pub fn round_trips(&self) -> RoundTrips {
        lock(&self.state).counts
    }

    /// Forgets the counts (open connections stay open and keep being counted).
    pub fn reset(&self) {
        lock(&self.state).counts = RoundTrips::default();
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // Wakes the accepting thread.
        for stream in lock(&self.state).streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection: the client's bytes are read at once (the client's kernel would hold them
/// until its handshake ends: they leave no earlier than `accepted + 2 * one_way`), the server
/// is dialled `one_way` after the client connected (when its SYN would arrive), and each side's
/// bytes are written to the other `one_way` after they were read.
fn relay(client: TcpStream, accepted: Instant, upstream_port: u16, one_way: Duration, state: &Arc<Mutex<State>>) {
    let _ = client.set_nodelay(true);
    let Ok(client_in) = client.try_clone() else { return };
    lock(state).streams.extend(client.try_clone().ok());
    // Set by the client's bytes, cleared by the server's answer; the client closing its side
    // ends the counting (what the server says then is no exchange the client waits for).
    let client_spoke = Arc::new(Mutex::new(Some(false)));
    let (to_server, for_server) = channel::<Chunk>();
    let handshake_done = accepted + 2 * one_way;
    let spoke = client_spoke.clone();
    spawn(move || {
        read_side(client_in, &to_server, one_way, |read_at| {
            let mut spoke = spoke.lock().unwrap_or_else(|p| p.into_inner());
            match read_at {
                Some(_) if spoke.is_some() => *spoke = Some(true),
                Some(_) => {}
                None => *spoke = None,
            }
            read_at.map(|at| at.max(handshake_done))
        })
    });
    thread::sleep(one_way);
    let server = match TcpStream::connect(("127.0.0.1", upstream_port)) {
        Ok(server) => server,
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (Ok(server_in), Ok(server_out)) = (server.try_clone(), server.try_clone()) else { return };
    lock(state).streams.push(server);
    spawn(move || write_side(server_out, &for_server));
    let (to_client, for_client) = channel::<Chunk>();
    let shared = state.clone();
    spawn(move || {
        read_side(server_in, &to_client, one_way, |read_at| {
            let mut spoke = client_spoke.lock().unwrap_or_else(|p| p.into_inner());
            if read_at.is_some() && *spoke == Some(true) {
                *spoke = Some(false);
                lock(&shared).counts.exchanges += 1;
            }
            read_at
        })
    });
    write_side(client, &for_client);
}

/// Reads `from` until it closes, sending each chunk on `to` to be written `one_way` after the
/// moment `seen` makes of its read time (`seen` also hears of the close, with `None`).
fn read_side(
    mut from: TcpStream,
    to: &Sender<Chunk>,
    one_way: Duration,
    mut seen: impl FnMut(Option<Instant>) -> Option<Instant>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = seen(Some(Instant::now())).unwrap_or_else(Instant::now);
        if to.send((at + one_way, Some(buffer[..n].to_vec()))).is_err() {
            return;
        }
    }
    seen(None);
    let _ = to.send((Instant::now() + one_way, None));
}

/// Writes each chunk to `to` when its time comes; half-closes `to` when the other side closed.
fn write_side(mut to: TcpStream, chunks: &Receiver<Chunk>) {
    for (at, bytes) in chunks {
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        match bytes {
            Some(bytes) if to.write_all(&bytes).is_ok() => {}
            Some(_) => break,
            None => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: each read is written back.
    fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    #[test]
    fn it_delays_each_way_counts_connections_and_exchanges() {
        let one_way = Duration::from_millis(40);
        let relay = DelayRelay::start(echo_server(), one_way);
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        let mut answer = [0u8; 5];
        for round in 0..2 {
            stream.write_all(b"hello").unwrap();
            stream.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"hello", "round {round}");
        }
        let elapsed = started.elapsed();
        // The connection's round trip, then two exchanges: three round trips.
        assert!(elapsed >= 6 * one_way, "{elapsed:?}");
        assert_eq!(relay.round_trips(), RoundTrips { connections: 1, exchanges: 2 });
        relay.reset();
        stream.write_all(b"again").unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(relay.round_trips().total(), 1);
    }
}
