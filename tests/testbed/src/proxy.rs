//! A counting TCP proxy on loopback, put between an HTTP client (the provider) and the KMS: it
//! forwards every byte unchanged and counts, as they pass on the wire, the TCP connections
//! and the HTTP requests (`POST /kmip/2_1`, `POST /kmip`). A request is counted when its
//! headers reach the proxy, so before its answer reaches the client: the counts are exact as
//! soon as the client's call returns. Not a mock: the KMS answers every request.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

/// What went through the proxy.
#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    /// Request lines (`POST /kmip/2_1`), oldest first.
    requests: Vec<String>,
    /// Client bytes the proxy could not read as HTTP/1.1 requests.
    errors: Vec<String>,
    /// Both halves of every connection, to close them when the proxy stops.
    streams: Vec<TcpStream>,
}

/// A proxy from a free port of 127.0.0.1 to `127.0.0.1:upstream_port`; stops when dropped.
#[derive(Debug)]
pub struct CountingProxy {
    port: u16,
    counts: Arc<Mutex<Counts>>,
    stopping: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream_port`.
    pub fn start(upstream_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (counts.clone(), stopping.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.and_then(|c| Ok((TcpStream::connect(("127.0.0.1", upstream_port))?, c))) {
                    Ok((server, client)) => forward(client, server, &shared),
                    Err(e) => lock(&shared).errors.push(format!("connection: {e}")),
                }
            }
        });
        CountingProxy { port, counts, stopping }
    }

    /// `http://127.0.0.1:PORT`, for the client's `server_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.counts).connections
    }

    /// The request lines seen so far (`POST /kmip/2_1`), oldest first.
    ///
    /// # Panics
    /// When some client bytes could not be read as HTTP/1.1: the counts would be wrong.
    pub fn requests(&self) -> Vec<String> {
        let counts = lock(&self.counts);
        assert!(counts.errors.is_empty(), "counting proxy: {:?}", counts.errors);
        counts.requests.clone()
    }

    /// Forgets the counts so far (open connections stay open and keep being counted).
    pub fn reset(&self) {
        let mut counts = lock(&self.counts);
        counts.connections = 0;
        counts.requests.clear();
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // Wakes the accepting thread.
        for stream in lock(&self.counts).streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copies both ways on two threads; the client-to-server half is read as HTTP to count.
fn forward(client: TcpStream, server: TcpStream, counts: &Arc<Mutex<Counts>>) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let halves = (client.try_clone(), server.try_clone());
    let (Ok(client_in), Ok(server_out)) = halves else {
        lock(counts).errors.push("cannot clone a socket".into());
        return;
    };
    {
        let mut counts = lock(counts);
        counts.connections += 1;
        counts.streams.extend(client.try_clone().ok());
        counts.streams.extend(server.try_clone().ok());
    }
    let (mut server_in, mut client_out) = (server, client);
    thread::spawn(move || {
        let _ = io::copy(&mut server_in, &mut client_out);
        let _ = client_out.shutdown(Shutdown::Write);
    });
    let counts = counts.clone();
    thread::spawn(move || {
        let mut parser = RequestParser::default();
        let (mut from, mut to) = (client_in, server_out);
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match parser.feed(&buffer[..n]) {
                Ok(lines) => lock(&counts).requests.extend(lines),
                Err(e) => lock(&counts).errors.push(e),
            }
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Splits a client's byte stream into HTTP/1.1 requests: headers, then a body of
/// `Content-Length` bytes or `chunked`.
#[derive(Debug, Default)]
struct RequestParser {
    state: State,
    /// Bytes of the current header block or chunk-size line.
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq)]
enum State {
    #[default]
    Headers,
    Body(usize),
    ChunkSize,
    /// Chunk data plus its CRLF.
    Chunk(usize),
    Trailers,
}

impl RequestParser {
    /// Reads `bytes`; returns the request lines whose headers completed in them.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut requests = Vec::new();
        while !bytes.is_empty() {
            match self.state {
                State::Body(n) | State::Chunk(n) => {
                    let take = n.min(bytes.len());
                    bytes = &bytes[take..];
                    let rest = n - take;
                    self.state = match self.state {
                        State::Body(_) if rest == 0 => State::Headers,
                        State::Body(_) => State::Body(rest),
                        _ if rest == 0 => State::ChunkSize,
                        _ => State::Chunk(rest),
                    };
                }
                State::Headers | State::ChunkSize | State::Trailers => {
                    let end: &[u8] = if self.state == State::ChunkSize { b"\r\n" } else { b"\r\n\r\n" };
                    let before = self.line.len();
                    self.line.extend_from_slice(bytes);
                    // An empty trailer section is a bare CRLF.
                    let found = if self.state == State::Trailers && self.line.starts_with(b"\r\n") {
                        Some(0)
                    } else {
                        find(&self.line, end)
                    };
                    let Some(at) = found else {
                        bytes = &[];
                        continue;
                    };
                    let used = if self.state == State::Trailers && at == 0 { 2 } else { at + end.len() };
                    bytes = &bytes[used - before..];
                    let text = String::from_utf8_lossy(&self.line[..at]).into_owned();
                    self.line.clear();
                    self.state = match self.state {
                        State::Headers => {
                            let (request_line, body) = request_head(&text)?;
                            requests.push(request_line);
                            body
                        }
                        State::ChunkSize => {
                            let size = text.split(';').next().unwrap_or("").trim();
                            match usize::from_str_radix(size, 16) {
                                Ok(0) => State::Trailers,
                                Ok(n) => State::Chunk(n + 2),
                                Err(_) => return Err(format!("bad chunk size line {text:?}")),
                            }
                        }
                        _ => State::Headers,
                    };
                    if self.state == State::Body(0) {
                        self.state = State::Headers;
                    }
                }
            }
        }
        Ok(requests)
    }
}

/// The request line of a header block, and how its body is framed.
fn request_head(head: &str) -> Result<(String, State), String> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("not an HTTP request line: {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.x: {request_line:?}"));
    }
    let mut body = State::Body(0);
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            body = State::Body(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            body = State::ChunkSize;
        }
    }
    Ok((format!("{method} {path}"), body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(stream: &[u8], piece: usize) -> Vec<String> {
        let mut parser = RequestParser::default();
        let requests = stream.chunks(piece).flat_map(|c| parser.feed(c).unwrap()).collect();
        assert_eq!(parser.state, State::Headers, "a request left unfinished");
        requests
    }

    #[test]
    fn counts_pipelined_requests_whatever_the_read_sizes() {
        let stream = b"POST /kmip/2_1 HTTP/1.1\r\ncontent-length: 20\r\n\r\n{\"a\":\"\r\n\r\n\r\n\r\n1234\"}\
                       POST /kmip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n\r\n\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                       GET /version HTTP/1.1\r\nHost: x\r\n\r\n\
                       POST /kmip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let expected = ["POST /kmip/2_1", "POST /kmip", "GET /version", "POST /kmip"];
        for piece in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(feed_in_pieces(stream, piece), expected, "read by {piece} bytes");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_count() {
        let mut parser = RequestParser::default();
        assert!(parser.feed(b"\x16\x03\x01 TLS hello\r\n\r\n").is_err());
    }

    #[test]
    fn forwards_and_counts_through_a_real_socket() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut socket, _) = upstream.accept().unwrap();
            let mut request = [0u8; 64];
            let mut read = 0;
            while !request[..read].ends_with(b"hi") {
                read += socket.read(&mut request[read..]).unwrap();
            }
            socket.write_all(b"answer").unwrap();
        });
        let proxy = CountingProxy::start(upstream_port);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        client.write_all(b"POST /kmip HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");
        assert_eq!((proxy.connections(), proxy.requests()), (1, vec!["POST /kmip".to_owned()]));
        server.join().unwrap();
    }
}
