//! The agent's socket: made private (a `0700` folder, a `0600` socket) or received from systemd
//! (socket activation), each client on a thread of its own, its uid checked against the
//! agent's, its messages framed and bounded. A malformed or oversized message closes that
//! client only.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::protocol::{MAX_MESSAGE_LEN, frame};
use super::service::Agent;

/// Clients served at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 512;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The socket systemd passed, when this process was socket-activated (`LISTEN_PID` is this
/// process, `LISTEN_FDS` at least 1). The variables stay in the environment (removing them
/// would race with the threads already running): the agent starts no child that could take
/// them for its own, and a child would see a `LISTEN_PID` that is not its pid.
pub(crate) fn activated() -> Option<UnixListener> {
    let pid_matches = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count = std::env::var("LISTEN_FDS").ok()?.parse::<u32>().ok()?;
    if !pid_matches || count < 1 {
        return None;
    }
    // SAFETY: systemd hands descriptor 3 to this process as a listening socket (checked by
    // LISTEN_PID); nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FDS_START) };
    Some(listener)
}

/// Binds `path` with only this user allowed: its folder is created `0700` (or must already be
/// this user's and not writable by others), a socket left by a dead agent is replaced, one
/// with an agent listening is not.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    cosmian_pkcs11_platform::files::create_private_folder(folder)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", folder.display())))?;
    let meta = std::fs::symlink_metadata(folder)?;
    cosmian_pkcs11_platform::files::check_private(folder, &meta)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("an agent already listens on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until the process ends.
pub(crate) fn serve(listener: UnixListener, agent: Arc<Agent>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, for one: wait a little rather than spin.
                tracing::warn!("agent: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match peer_uid(&stream) {
            Ok(uid) if uid == own_uid() => {}
            Ok(uid) => {
                tracing::warn!(uid, "agent: a client of another user was refused");
                continue;
            }
            Err(e) => {
                tracing::warn!("agent: cannot tell the client's user ({e}): refused");
                continue;
            }
        }
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("agent: {MAX_CLIENTS} clients already: one refused");
            continue;
        }
        let (agent, clients) = (agent.clone(), clients.clone());
        let spawned = std::thread::Builder::new().name("agent-client".into()).spawn(move || {
            if let Err(e) = serve_client(stream, &agent) {
                tracing::debug!("agent: client closed: {e}");
            }
            clients.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            tracing::warn!("agent: cannot start a thread for a client: {e}");
        }
    }
}

/// Answers one client's messages in order until it disconnects or misbehaves.
fn serve_client(mut stream: UnixStream, agent: &Agent) -> io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_MESSAGE_LEN {
            tracing::warn!(len, "agent: message of a length refused: client disconnected");
            return Ok(());
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        let answer = tracing::dispatcher::with_default(crate::platform::logging::dispatch(), || agent.answer(&body));
        match answer {
            Ok(answer) => stream.write_all(&frame(&answer))?,
            Err(e) => {
                tracing::warn!("agent: malformed message ({e}): client disconnected");
                return Ok(());
            }
        }
    }
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of the socket.
#[cfg(target_os = "linux")]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is an open socket; `cred` and `len` are valid for writes of the
    // size passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The uid of the process at the other end of the socket.
#[cfg(not(target_os = "linux"))]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let (mut uid, mut gid) = (u32::MAX, u32::MAX);
    // SAFETY: the descriptor is an open socket; `uid` and `gid` are valid for writes.
    let rc = unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}
