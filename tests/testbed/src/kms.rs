//! A throw-away Cosmian KMS server: its process, port, SQLite database and logs.
//!
//! Two logs, both in the server's temporary directory:
//! - [`KmsServer::log_path`]: the server's stdout and stderr, with `RUST_LOG=info,kmip=debug`,
//!   which adds one `DEBUG kmip` line per HTTP request naming the KMIP operation
//!   (`POST /kmip/2_1. Request: "Locate" admin`; for a `/kmip` RequestMessage an `INFO` line
//!   lists the batch: `KMIP Request message with 2 operation(s): [Get, Locate]`).
//! - [`KmsServer::audit_events`]: the structured audit log (`--audit-enable --audit-file-path`),
//!   one JSON line per KMIP operation, batch items included, with the operation, the object's
//!   unique identifier and the result. This is the one to count requests and to prove that no
//!   private key was ever fetched. The server writes it from a background task (and fsyncs
//!   each line), so a line may appear a few milliseconds after the HTTP answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{Daemon, log_file, log_tail, read_log, temp_dir, wait_until};
use crate::{binaries, free_port, scrub_env};

/// How long the server may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cosmian_kms` on 127.0.0.1, killed when dropped.
#[derive(Debug)]
pub struct KmsServer {
    // Fields drop in order: the process dies before its directory is deleted.
    daemon: Option<Daemon>,
    dir: TempDir,
    port: u16,
    extra_args: Vec<String>,
}

/// One line of the server's audit log: one KMIP operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The KMIP operation: `Locate`, `Get`, `Sign`, `CreateKeyPair`...
    pub operation: String,
    /// The object the operation named (or created), if any.
    pub object_uid: Option<String>,
    /// The user the server ran it as (`admin` without authentication).
    pub user: String,
    /// `None` on success, else the failure as the server wrote it (`"Object_Not_Found"`,
    /// `"422 Unprocessable Entity"`...).
    pub failure: Option<String>,
}

impl KmsServer {
    /// Starts a server with a fresh database on a free port and waits until it answers.
    pub fn start() -> KmsServer {
        Self::start_with_args(&[])
    }

    /// Same as [`KmsServer::start`], with more server arguments (TLS, authentication, another
    /// database: `--database-type` replaces the SQLite one).
    /// With `--tls-cert-file` or `--tls-p12-file`, [`KmsServer::url`] is `https://`.
    ///
    /// # Panics
    /// When the server does not answer within 60 s (the panic shows its log's tail), or when
    /// `/etc/cosmian/kms.toml` exists (the server would then ignore its arguments).
    pub fn start_with_args(extra: &[&str]) -> KmsServer {
        let system_conf = Path::new("/etc/cosmian/kms.toml");
        assert!(
            !system_conf.exists(),
            "{} exists: the KMS server would ignore the test bed's arguments",
            system_conf.display()
        );
        let mut server = KmsServer {
            dir: temp_dir("kms-"),
            port: free_port(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            daemon: None,
        };
        server.launch();
        server
    }

    /// `http://127.0.0.1:PORT` (or `https://` when started with TLS).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls() { "https" } else { "http" }, self.port)
    }

    fn tls(&self) -> bool {
        let tls_option = |a: &String| a.starts_with("--tls-cert-file") || a.starts_with("--tls-p12-file");
        self.extra_args.iter().any(tls_option)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's temporary directory (database, logs), deleted on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file collecting the server's stdout and stderr (kept across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("kms.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// The audit log file: one JSON object per line (see the module documentation).
    pub fn audit_path(&self) -> PathBuf {
        self.dir().join("audit.jsonl")
    }

    /// Every KMIP operation the server has logged so far, oldest first, across restarts. The
    /// server logs from a background task: right after a request, poll until the count is
    /// reached rather than reading once.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        let log = read_log(&self.audit_path());
        // A last line without its newline is still being written: not an event yet.
        let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
        complete.lines().filter(|l| !l.trim().is_empty()).map(parse_audit_line).collect()
    }

    /// The HTTP requests the server has logged so far, oldest first, across restarts:
    /// `POST /kmip/2_1` or `POST /kmip` (the `DEBUG kmip` line each request leaves, over
    /// HTTP or HTTPS alike: a [`crate::CountingProxy`] cannot read requests inside TLS).
    pub fn http_requests(&self) -> Vec<&'static str> {
        let log = self.log();
        log.lines()
            .filter_map(|line| {
                if line.contains(" POST /kmip/2_1. Request: ") {
                    Some("POST /kmip/2_1")
                } else if line.contains(" POST /kmip 2.1 JSON. Request: ") {
                    Some("POST /kmip")
                } else {
                    None
                }
            })
            .collect()
    }

    /// Kills the server (SIGKILL). The database stays, for [`KmsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port with the same
    /// database and arguments, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Same as [`KmsServer::restart`], with these extra arguments instead of the first ones:
    /// e.g. `--api-token-id UID` once the key it names exists in the database.
    pub fn restart_with_args(&mut self, extra: &[&str]) {
        self.extra_args = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    fn launch(&mut self) {
        let dir = self.dir.path();
        let (stdout, stderr) = log_file(&self.log_path());
        let mut command = Command::new(&binaries().kms_server);
        command
            .current_dir(dir) // The server reads a `.env` file from its working directory.
            .args(["--hostname", "127.0.0.1"])
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--root-data-path")
            .arg(dir.join("data"))
            .arg("--tmp-path")
            .arg(dir.join("tmp"))
            .arg("--audit-enable")
            .arg("--audit-file-path")
            .arg(self.audit_path())
            .args(&self.extra_args)
            .env("RUST_LOG", "info,kmip=debug")
            .stdout(stdout)
            .stderr(stderr);
        // A database the caller names (`--database-type postgresql --database-url ...`) replaces
        // the server's own SQLite.
        if !self.extra_args.iter().any(|a| a.starts_with("--database-type")) {
            command.args(["--database-type", "sqlite", "--sqlite-path"]).arg(dir.join("sqlite-data"));
        }
        // Every server option also has an environment variable: none may leak in.
        scrub_env(&mut command, &["KMS_", "COSMIAN_", "UI_OIDC_"]);
        let mut daemon = Daemon::spawn("the KMS server", command);
        let (port, tls) = (self.port, self.tls());
        let ready = wait_until(START_TIMEOUT, || {
            daemon.check_running()?;
            Ok(if tls { TcpStream::connect(("127.0.0.1", port)).is_ok() } else { answers_http(port) })
        });
        if let Err(why) = ready {
            panic!(
                "the KMS server on port {port} did not start: {why}\n--- {} (tail) ---\n{}",
                self.log_path().display(),
                log_tail(&self.log_path(), 40)
            );
        }
        self.daemon = Some(daemon);
    }
}

/// Whether the port answers `GET /version` with any HTTP status (a server with
/// authentication may answer 401).
fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = Vec::new();
    stream.write_all(b"GET /version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/")
}

fn parse_audit_line(line: &str) -> AuditEvent {
    let event: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad audit log line ({e}): {line}"));
    let text = |key: &str| event.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let failure = match &event["result"] {
        serde_json::Value::String(s) if s == "Success" => None,
        serde_json::Value::Object(o) => Some(o.get("Failure").and_then(|v| v.as_str()).unwrap_or("").to_owned()),
        other => Some(other.to_string()),
    };
    AuditEvent {
        operation: text("operation").unwrap_or_default(),
        object_uid: text("object_uid"),
        user: text("user").unwrap_or_default(),
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_as_5_28_writes_them() {
        let ok = r#"{"id":0,"timestamp":"2026-11-25T02:10:10.09Z","operation":"Locate","user":"admin","object_uid":null,"algorithm":null,"client_ip":"127.0.0.1","result":"Success","duration_ms":1}"#;
        let failed =
            r#"{"id":2,"operation":"Get","user":"admin","object_uid":"x1","result":{"Failure":"Object_Not_Found"}}"#;
        assert_eq!(
            parse_audit_line(ok),
            AuditEvent { operation: "Locate".into(), object_uid: None, user: "admin".into(), failure: None }
        );
        let failed = parse_audit_line(failed);
        assert_eq!((failed.object_uid.as_deref(), failed.failure.as_deref()), (Some("x1"), Some("Object_Not_Found")));
    }
}
