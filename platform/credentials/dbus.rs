//! The little of D-Bus the Secret Service lookup needs: connect to the session bus (a unix
//! socket, by path or abstract name), authenticate (EXTERNAL), and make method calls whose
//! arguments and answers are strings, object paths, byte arrays and string dictionaries.
//!
//! Written here rather than taken from a D-Bus crate. Measured (November 2026, against a
//! private session bus and gnome-keyring, as `tests/platform_credentials.rs` runs them) for what
//! a library loaded into ssh needs: pure Rust, starts no thread, a deadline on connect and every
//! read, no D-Bus activation, no prompt, secrets in wiped buffers. `rustbus` 0.19 (last release
//! 2023) and the `dbus` crate (links libdbus, C) read the handshake without a timeout and hang
//! on a stalled bus. zbus 5's blocking API, and the `secret-service` crate built on it, leave
//! two or three threads and open descriptors for the life of the process and have no deadline
//! on connect; `secret-service` also D-Bus-activates the service; `oo7` is async only. zbus 6
//! passes, through `zbus::block_on` on its new single-threaded runtime (6.0 dropped the blocking
//! API), at the cost of 12 more crates, a minimum Rust of 1.89 (ours: 1.85), 2 ms instead of
//! 1 ms per lookup and message buffers never wiped. This client: 1.1 ms, no thread, returns at
//! 1.5 s on a stalled bus; its reply parser has a fuzz target (`fuzz/fuzz_targets/dbus_reply.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use zeroize::Zeroizing;

/// Largest message accepted from the bus.
const MAX_MESSAGE: usize = 1 << 20;

/// An argument of a method call.
pub enum Arg<'a> {
    Str(&'a str),
    Path(&'a str),
    /// A variant holding a string.
    VariantStr(&'a str),
    /// `a{ss}`.
    Dict(&'a [(&'a str, &'a str)]),
}

impl Arg<'_> {
    fn signature(&self) -> &'static str {
        match self {
            Arg::Str(_) => "s",
            Arg::Path(_) => "o",
            Arg::VariantStr(_) => "v",
            Arg::Dict(_) => "a{ss}",
        }
    }
}

/// A connection to the session bus; every read and write ends by `deadline`.
pub struct Bus {
    stream: UnixStream,
    deadline: Instant,
    serial: u32,
}

/// A D-Bus error answer, e.g. `org.freedesktop.DBus.Error.ServiceUnknown`.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    Remote(String),
    Io(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Remote(name) => f.write_str(name),
            CallError::Io(why) => f.write_str(why),
        }
    }
}

impl Bus {
    /// Connects to the session bus (`DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`),
    /// authenticates and says Hello.
    pub fn session(deadline: Instant) -> Result<Bus, String> {
        let address = std::env::var("DBUS_SESSION_BUS_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty())
            .or_else(|| std::env::var("XDG_RUNTIME_DIR").ok().map(|d| format!("unix:path={d}/bus")))
            .ok_or("no session bus (DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are unset)")?;
        let mut last_error = format!("no usable address in {address:?}");
        for candidate in address.split(';') {
            match connect(candidate, deadline) {
                Ok(Some(stream)) => {
                    let mut bus = Bus { stream, deadline, serial: 0 };
                    bus.authenticate().map_err(|e| format!("session bus at {candidate}: {e}"))?;
                    bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", &[])
                        .map_err(|e| format!("session bus at {candidate}: Hello: {e}"))?;
                    return Ok(bus);
                }
                Ok(None) => {}
                Err(e) => last_error = format!("session bus at {candidate}: {e}"),
            }
        }
        Err(last_error)
    }

    /// Sets the socket's timeouts to what is left before the deadline.
    fn arm(&self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }

    /// Writes all of `bytes`, each write(2) limited to what is left before the deadline.
    fn send(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            self.arm()?;
            match self.stream.write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills `buffer`, each read(2) limited to what is left before the deadline (a bus that
    /// sends a byte now and then cannot stretch the lookup).
    fn receive(&mut self, mut buffer: &mut [u8]) -> std::io::Result<()> {
        while !buffer.is_empty() {
            self.arm()?;
            match self.stream.read(buffer) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buffer = &mut buffer[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn authenticate(&mut self) -> std::io::Result<()> {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        self.send(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut byte = [0u8];
            self.receive(&mut byte)?;
            line.push(byte[0]);
            if line.len() > 512 {
                return Err(std::io::Error::other("authentication answer too long"));
            }
        }
        if !line.starts_with(b"OK ") {
            return Err(std::io::Error::other(format!(
                "authentication refused: {}",
                String::from_utf8_lossy(&line).trim()
            )));
        }
        self.send(b"BEGIN\r\n")
    }

    /// Calls a method (without D-Bus activation of the destination) and returns the answer.
    pub fn call(
        &mut self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &[Arg],
    ) -> Result<Reply, CallError> {
        self.serial += 1;
        let serial = self.serial;
        let message = method_call(serial, destination, path, interface, member, args);
        self.send(&message).map_err(|e| CallError::Io(e.to_string()))?;
        loop {
            let Message { kind, reply_to, error, body } =
                self.read_message().map_err(|e| CallError::Io(e.to_string()))?;
            match (kind, reply_to) {
                (2, Some(s)) if s == serial => return Ok(body),
                (3, Some(s)) if s == serial => return Err(CallError::Remote(error.unwrap_or_else(|| "error".into()))),
                _ => {} // Signals (NameAcquired...) and other traffic.
            }
        }
    }

    /// One message, read within the deadline. Its buffer (which may carry a secret) is wiped
    /// when dropped.
    fn read_message(&mut self) -> std::io::Result<Message> {
        let mut fixed = [0u8; 16];
        self.receive(&mut fixed)?;
        let (total, _, _) = message_length(&fixed).map_err(std::io::Error::other)?;
        let mut message = Zeroizing::new(vec![0u8; total]);
        message[..16].copy_from_slice(&fixed);
        self.receive(&mut message[16..])?;
        parse_message(&message).map_err(std::io::Error::other)
    }
}

/// A message from the bus.
pub struct Message {
    /// 2: a method's return, 3: an error, 4: a signal.
    pub kind: u8,
    /// The serial of the call it answers.
    pub reply_to: Option<u32>,
    /// The error's name, for an error.
    pub error: Option<String>,
    pub body: Reply,
}

/// The length of the message whose fixed header is `fixed`, where its header fields end, and
/// its byte order.
fn message_length(fixed: &[u8; 16]) -> Result<(usize, usize, bool), String> {
    let big_endian = match fixed[0] {
        b'l' => false,
        b'B' => true,
        _ => return Err("not a D-Bus message".into()),
    };
    let number = |at: usize| {
        let bytes = [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]];
        if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) }
    };
    let (body_len, fields_len) = (number(4) as usize, number(12) as usize);
    let fields_end = 16 + fields_len;
    let total = fields_end.next_multiple_of(8) + body_len;
    if total > MAX_MESSAGE {
        return Err("D-Bus message too large".into());
    }
    Ok((total, fields_end, big_endian))
}

/// Parses a whole message as read from the bus (the input the fuzz target `dbus_reply` feeds).
/// The body is copied into a buffer wiped when dropped.
pub fn parse_message(message: &[u8]) -> Result<Message, String> {
    let fixed: &[u8; 16] = message.get(..16).and_then(|f| f.try_into().ok()).ok_or("truncated D-Bus message")?;
    let (total, fields_end, big_endian) = message_length(fixed)?;
    if message.len() != total {
        return Err("a D-Bus message of the wrong length".into());
    }
    let mut fields = Reader { data: &message[..fields_end], at: 16, big_endian };
    let (mut reply_to, mut error) = (None, None);
    while fields.at < fields_end {
        fields.align(8)?;
        let code = fields.byte()?;
        let signature = fields.signature()?;
        match (code, signature.as_str()) {
            (5, "u") => reply_to = Some(fields.u32()?),
            (4, "s") => error = Some(fields.string()?),
            _ => fields.skip(&signature)?,
        }
    }
    let body = Zeroizing::new(message[fields_end.next_multiple_of(8)..].to_vec());
    Ok(Message { kind: fixed[1], reply_to, error, body: Reply { body, big_endian } })
}

/// The body of an answer, in its sender's byte order.
pub struct Reply {
    body: Zeroizing<Vec<u8>>,
    big_endian: bool,
}

impl Reply {
    pub fn reader(&self) -> Reader<'_> {
        Reader { data: &self.body, at: 0, big_endian: self.big_endian }
    }
}

/// Connects to one address of the list, if it is a unix socket one, by the deadline.
fn connect(address: &str, deadline: Instant) -> std::io::Result<Option<UnixStream>> {
    let Some(params) = address.strip_prefix("unix:") else { return Ok(None) };
    for param in params.split(',') {
        match param.split_once('=') {
            Some(("path", p)) => return connect_by(unescape(p).as_bytes(), deadline).map(Some),
            // An abstract name is a path that starts with a NUL byte.
            Some(("abstract", name)) => {
                return connect_by(&[&b"\0"[..], unescape(name).as_bytes()].concat(), deadline).map(Some);
            }
            _ => {}
        }
    }
    Ok(None)
}

/// connect(2) to the unix socket `path`, with the socket's send timeout set to what is left
/// before the deadline: on Linux, a listener whose backlog is full (a stalled bus) makes
/// connect(2) wait that long at most (std's `UnixStream::connect` would wait forever).
fn connect_by(path: &[u8], deadline: Instant) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: sockaddr_un is plain data, valid when zeroed.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // A path keeps a terminating NUL; an abstract name is as long as it is.
    if path.is_empty() || path.len() >= address.sun_path.len() {
        return Err(std::io::Error::other("bad unix socket path"));
    }
    for (to, from) in address.sun_path.iter_mut().zip(path) {
        *to = *from as libc::c_char;
    }
    let length = std::mem::offset_of!(libc::sockaddr_un, sun_path) + path.len() + usize::from(path[0] != 0);
    // SAFETY: socket(2) has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    stream.set_write_timeout(Some(left))?;
    // SAFETY: `address` is a sockaddr_un of which `length` bytes are meaningful.
    let done = unsafe { libc::connect(fd, (&raw const address).cast(), length as libc::socklen_t) };
    if done < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EAGAIN) => std::io::ErrorKind::TimedOut.into(),
            _ => error,
        });
    }
    Ok(stream)
}

/// D-Bus addresses escape bytes as `%XX`.
fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            (bytes[i] == b'%').then(|| value.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A little-endian METHOD_CALL message, flagged NO_AUTO_START.
fn method_call(serial: u32, destination: &str, path: &str, interface: &str, member: &str, args: &[Arg]) -> Vec<u8> {
    let mut body = Writer::default();
    for arg in args {
        match arg {
            Arg::Str(s) | Arg::Path(s) => body.string(s),
            Arg::VariantStr(s) => {
                body.signature("s");
                body.string(s);
            }
            Arg::Dict(entries) => {
                body.align(4);
                let length_at = body.0.len();
                body.0.extend([0; 4]);
                body.align(8);
                let start = body.0.len();
                for (k, v) in *entries {
                    body.align(8);
                    body.string(k);
                    body.string(v);
                }
                let length = (body.0.len() - start) as u32;
                body.0[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
            }
        }
    }
    let signature: String = args.iter().map(Arg::signature).collect();
    let mut m = Writer::default();
    m.0.extend([b'l', 1, 0x2, 1]);
    m.0.extend((body.0.len() as u32).to_le_bytes());
    m.0.extend(serial.to_le_bytes());
    let length_at = m.0.len();
    m.0.extend([0; 4]);
    let field = |m: &mut Writer, code: u8, kind: &str, value: &str| {
        m.align(8);
        m.0.push(code);
        m.signature(kind);
        if kind == "g" {
            m.signature(value);
        } else {
            m.string(value);
        }
    };
    field(&mut m, 1, "o", path);
    field(&mut m, 2, "s", interface);
    field(&mut m, 3, "s", member);
    field(&mut m, 6, "s", destination);
    if !signature.is_empty() {
        field(&mut m, 8, "g", &signature);
    }
    let fields_length = (m.0.len() - 16) as u32;
    m.0[length_at..length_at + 4].copy_from_slice(&fields_length.to_le_bytes());
    m.align(8);
    m.0.extend(body.0);
    m.0
}

/// Encodes D-Bus values, little-endian.
#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    fn align(&mut self, n: usize) {
        self.0.resize(self.0.len().next_multiple_of(n), 0);
    }
    fn string(&mut self, s: &str) {
        self.align(4);
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self.0.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.0.push(s.len() as u8);
        self.0.extend(s.as_bytes());
        self.0.push(0);
    }
}

/// Reads D-Bus values: positions count from the message's start for the header, from the
/// body's start for a body (8-aligned in the message, so alignments agree).
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    big_endian: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len()).ok_or("truncated D-Bus message")?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    pub fn align(&mut self, n: usize) -> Result<(), String> {
        let to = self.at.next_multiple_of(n);
        self.take(to - self.at).map(drop)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        self.align(4)?;
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "truncated D-Bus message")?;
        Ok(if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    pub fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let s = self.take(len)?;
        self.take(1)?;
        String::from_utf8(s.to_vec()).map_err(|_| "a D-Bus string that is not UTF-8".into())
    }

    fn signature(&mut self) -> Result<String, String> {
        let len = self.byte()? as usize;
        let s = self.take(len)?;
        self.take(1)?;
        String::from_utf8(s.to_vec()).map_err(|_| "a bad D-Bus signature".into())
    }

    /// `ay`, in a buffer wiped when dropped (it may be a secret).
    pub fn bytes(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        let len = self.u32()? as usize;
        Ok(Zeroizing::new(self.take(len)?.to_vec()))
    }

    /// `ao`.
    pub fn paths(&mut self) -> Result<Vec<String>, String> {
        let len = self.u32()? as usize;
        let end = self.at + len;
        let mut paths = Vec::new();
        while self.at < end {
            paths.push(self.string()?);
        }
        Ok(paths)
    }

    /// Steps over a variant.
    pub fn skip_variant(&mut self) -> Result<(), String> {
        let signature = self.signature()?;
        self.skip(&signature)
    }

    /// Steps over one value of a basic type (or a byte array).
    fn skip(&mut self, signature: &str) -> Result<(), String> {
        match signature {
            "y" => self.take(1).map(drop),
            "b" | "u" | "i" => self.u32().map(drop),
            "n" | "q" => {
                self.align(2)?;
                self.take(2).map(drop)
            }
            "x" | "t" | "d" => {
                self.align(8)?;
                self.take(8).map(drop)
            }
            "s" | "o" => self.string().map(drop),
            "g" => self.signature().map(drop),
            "ay" => self.bytes().map(drop),
            other => Err(format!("unexpected D-Bus type {other}")),
        }
    }
}

/// A little-endian METHOD_RETURN answering `reply_to`, with this body (for tests).
#[cfg(test)]
pub(super) fn method_return(reply_to: u32, signature: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Writer::default();
    m.0.extend([b'l', 2, 0, 1]);
    m.0.extend((body.len() as u32).to_le_bytes());
    m.0.extend(9u32.to_le_bytes());
    m.0.extend([0; 4]);
    m.0.extend([5, 1, b'u', 0]);
    m.0.extend(reply_to.to_le_bytes());
    m.align(8);
    m.0.push(8);
    m.signature("g");
    m.signature(signature);
    let fields_length = (m.0.len() - 16) as u32;
    m.0[12..16].copy_from_slice(&fields_length.to_le_bytes());
    m.align(8);
    m.0.extend(body);
    m.0
}

/// Body encoders for tests.
#[cfg(test)]
mod body {
    use super::Writer;
    impl Writer {
        pub fn u32(&mut self, n: u32) {
            self.align(4);
            self.0.extend(n.to_le_bytes());
        }
        pub fn bytes(&mut self, b: &[u8]) {
            self.u32(b.len() as u32);
            self.0.extend(b);
        }
        pub fn str(&mut self, s: &str) {
            self.string(s);
        }
        pub fn variant_str(&mut self, s: &str) {
            self.signature("s");
            self.string(s);
        }
        pub fn paths(&mut self, paths: &[&str]) {
            let mut inner = Writer(vec![0; 4]);
            for p in paths {
                inner.string(p);
            }
            self.u32((inner.0.len() - 4) as u32);
            self.0.extend(&inner.0[4..]);
        }
        pub fn align8(&mut self) {
            self.align(8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_return_is_parsed_into_a_wiped_body() {
        let mut b = Writer::default();
        b.str("/org/freedesktop/secrets/session/s1");
        let message = method_return(3, "s", &b.0);
        let parsed = parse_message(&message).unwrap();
        assert_eq!((parsed.kind, parsed.reply_to, parsed.error), (2, Some(3), None));
        let body: &Zeroizing<Vec<u8>> = &parsed.body.body;
        assert_eq!(body.as_slice(), b.0.as_slice());
        assert_eq!(parsed.body.reader().string().unwrap(), "/org/freedesktop/secrets/session/s1");
        // Any other length, or a header that lies, is refused.
        assert!(parse_message(&message[..message.len() - 1]).is_err());
        assert!(parse_message(&[message.as_slice(), &[0]].concat()).is_err());
        let mut bad = message.clone();
        bad[0] = b'x';
        assert!(parse_message(&bad).is_err());
        let mut huge = message.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_message(&huge).err().as_deref(), Some("D-Bus message too large"));
    }

    /// A bus whose listen backlog is full: connect(2) would wait forever, it ends by the deadline.
    #[test]
    fn connecting_to_a_stalled_bus_ends_by_the_deadline() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("cosmian-dbus-backlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bus");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: listen(2) on our socket: the backlog becomes 0, so one pending connection fills it.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let deadline = || Instant::now() + std::time::Duration::from_millis(300);
        let mut pending = Vec::new();
        let started = Instant::now();
        let error = loop {
            match connect_by(path.as_os_str().as_encoded_bytes(), deadline()) {
                Ok(stream) => pending.push(stream),
                Err(e) => break e,
            }
            assert!(pending.len() < 8, "the backlog never filled");
        };
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A bus that sends a byte now and then cannot stretch a read past the deadline.
    #[test]
    fn a_dripping_bus_does_not_stretch_a_read() {
        let (stream, mut peer) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            for _ in 0..40 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if peer.write_all(b"l").is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut bus = Bus { stream, deadline: started + std::time::Duration::from_millis(300), serial: 0 };
        assert!(bus.read_message().is_err());
        assert!(started.elapsed() < std::time::Duration::from_millis(600), "{:?}", started.elapsed());
    }

    #[test]
    fn addresses() {
        assert_eq!(unescape("/tmp/dbus%2dx%20y"), "/tmp/dbus-x y");
        assert_eq!(unescape("100%"), "100%");
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        assert!(connect("tcp:host=localhost,port=1", deadline).unwrap().is_none());
        assert!(connect("unix:tmpdir=/tmp", deadline).unwrap().is_none());
        assert!(connect("unix:path=/nonexistent/bus,guid=1", deadline).is_err());
    }

    #[test]
    fn a_method_call_as_dbus_encodes_it() {
        let dict = Arg::Dict(&[("service", "cosmian-kms"), ("account", "u")]);
        let m = method_call(
            7,
            "org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service",
            "SearchItems",
            &[dict],
        );
        assert_eq!(&m[..4], [b'l', 1, 2, 1]);
        let body_len = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
        let fields_len = u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize;
        let body = &m[(16 + fields_len).next_multiple_of(8)..];
        assert_eq!(body.len(), body_len);
        // a{ss}: the content's length (not counting the padding after the length itself),
        // then 8-aligned entries of two strings.
        let mut r = Reader { data: body, at: 0, big_endian: false };
        let len = r.u32().unwrap() as usize;
        r.align(8).unwrap();
        assert_eq!(len, body.len() - 8);
        let mut entries = Vec::new();
        while r.at < body.len() {
            r.align(8).unwrap();
            entries.push((r.string().unwrap(), r.string().unwrap()));
        }
        assert_eq!(entries, [("service".into(), "cosmian-kms".into()), ("account".into(), "u".into())]);
        // The header's fields, signature last.
        let mut h = Reader { data: &m[..16 + fields_len], at: 16, big_endian: false };
        let mut seen = Vec::new();
        while h.at < 16 + fields_len {
            h.align(8).unwrap();
            let code = h.byte().unwrap();
            let sig = h.signature().unwrap();
            let value = if sig == "g" { h.signature().unwrap() } else { h.string().unwrap() };
            seen.push((code, value));
        }
        assert_eq!(seen.last(), Some(&(8, "a{ss}".to_owned())));
        assert_eq!(seen[2], (3, "SearchItems".to_owned()));
    }

    #[test]
    fn reading_values_checks_bounds() {
        let mut w = Writer::default();
        w.signature("s");
        w.string("plain");
        w.string("/org/x");
        let reader = |data| Reader { data, at: 0, big_endian: false };
        let mut r = reader(&w.0);
        r.skip_variant().unwrap();
        assert_eq!(r.string().unwrap(), "/org/x");
        assert!(r.string().is_err());
        assert!(reader(&[9, 0, 0, 0, b'a']).string().is_err());
        assert!(reader(&[1, b'v', 0]).skip_variant().is_err());
    }
}
