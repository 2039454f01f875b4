//! A small HTTP/1.1 file server on 127.0.0.1, for the repository tests: apt's and dnf's own
//! network code fetch the repositories from it. `GET` and `HEAD` of the files under one folder
//! (404 for anything else), persistent connections (apt pipelines its requests), and a log of
//! the requests, so that a test can tell what the client really fetched.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FileServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serves `root` on a free port of 127.0.0.1, from a thread, until dropped.
    pub fn start(root: &Path) -> Result<FileServer, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (requests, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (root, log, stopped) = (root.to_owned(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &log);
                });
            }
        });
        Ok(FileServer { addr, requests, stop })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests (`GET /path`) received since the last call.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().expect("the request log"))
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread up, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers the requests of one connection, in order, until the client closes it.
fn serve(stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut close = request.ends_with("HTTP/1.0\r\n");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            if header.trim().is_empty() {
                break;
            }
            let header = header.to_ascii_lowercase();
            close |= header.starts_with("connection:") && header.contains("close");
        }
        let mut words = request.split_whitespace();
        let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let path = target.split('?').next().unwrap_or_default();
        log.lock().expect("the request log").push(format!("{method} {path}"));
        let body = file(root, path).and_then(|file| std::fs::read(file).ok());
        match (method, body) {
            ("GET" | "HEAD", Some(body)) => {
                write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
                if method == "GET" {
                    writer.write_all(&body)?;
                }
            }
            _ => writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The file `path` (percent-decoded) names under `root`; `None` for `..` or a folder.
fn file(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path.strip_prefix('/')?)?;
    let relative = Path::new(&decoded);
    if !relative.components().all(|part| matches!(part, Component::Normal(_))) {
        return None;
    }
    let file = root.join(relative);
    file.is_file().then_some(file)
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a b"), "hello").unwrap();
        let server = FileServer::start(dir.path()).unwrap();
        let get = |path: &str| -> String {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            // Two requests on one connection: the second one closes it.
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\nHEAD {path} HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
            answer
        };
        let found = get("/sub/a%20b");
        assert_eq!(found.matches("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").count(), 2, "{found}");
        assert!(found.contains("\r\n\r\nhello"));
        for missing in ["/sub", "/sub/../sub/a%20b", "/nothing", "/sub/a%2"] {
            assert!(get(missing).starts_with("HTTP/1.1 404"), "{missing}");
        }
        assert_eq!(server.take_requests()[..2], ["GET /sub/a%20b", "HEAD /sub/a%20b"]);
    }
}
