//! A KMS cluster as Cosmian's high-availability guide describes it, from Debian 12's packages
//! (`postgresql`, `haproxy`, installed by `scripts/install-test-bed.sh`): KMS servers are
//! stateless, so several run on one shared database behind a balancer.
//!
//! - [`Postgres`]: a throw-away PostgreSQL 15 on 127.0.0.1 (its own data folder and port) with
//!   an empty `kms` database; [`Postgres::kms_args`] starts a [`crate::KmsServer`] on it.
//! - [`Haproxy`]: haproxy 2.6 in TCP mode in front of KMS servers, with health checks, and its
//!   log of the connections it carried ([`Haproxy::sessions`]).
//!
//! Both are killed when dropped. The programs refuse to run as root, so when the tests run as
//! root, PostgreSQL runs as the `postgres` user of Debian's package.

use std::ffi::{CString, OsStr};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{Daemon, log_file, log_tail, read_log, temp_dir, wait_until};
use crate::{clean_command, free_port};

/// Debian 12's PostgreSQL programs (`initdb`, `pg_ctl`, `postgres`, `createdb`).
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Debian 12's haproxy.
const HAPROXY: &str = "/usr/sbin/haproxy";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Panics, saying how to install it, when `program` is missing.
fn required(program: &Path, package: &str) -> PathBuf {
    assert!(
        program.is_file(),
        "{} is missing: the KMS cluster tests need Debian's `{package}` package; run \
         scripts/install-test-bed.sh (or `apt-get install {package}`)",
        program.display()
    );
    program.to_owned()
}

fn postgres_program(name: &str) -> PathBuf {
    required(&Path::new(POSTGRES_BIN).join(name), "postgresql")
}

/// A running PostgreSQL 15 on 127.0.0.1 with a `kms` database, trusting local connections.
#[derive(Debug)]
pub struct Postgres {
    // Fields drop in order: the server stops before its folder is deleted.
    daemon: Option<Daemon>,
    dir: TempDir,
    port: u16,
    /// The user PostgreSQL runs as (`postgres` when the tests run as root), or `None`: ours.
    run_as: Option<String>,
}

impl Postgres {
    /// `initdb` in a new folder, `postgres` on a free port (fsync off: a throw-away
    /// database), then `createdb kms`; waits until it accepts connections.
    ///
    /// # Panics
    /// When PostgreSQL is not installed (the message says how to install it), or does not
    /// start (the message holds its log).
    pub fn start() -> Postgres {
        let dir = temp_dir("postgres-");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            // The folder is created private to root: hand it to the server's user.
            chown(dir.path(), user);
        }
        let mut postgres = Postgres { daemon: None, dir, port: free_port(), run_as };
        postgres.run_ok(postgres.command("initdb").arg("-D").arg(postgres.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        let log = postgres.log_path();
        let (stdout, stderr) = log_file(&log);
        let mut command = postgres.command("postgres");
        command
            .arg("-D")
            .arg(postgres.data())
            .args(["-p", &postgres.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"])
            .stdout(stdout)
            .stderr(stderr);
        let mut daemon = Daemon::spawn("postgres", command);
        let port = postgres.port;
        let ready = wait_until(START_TIMEOUT, || {
            daemon.check_running()?;
            Ok(read_log(&log).contains("ready to accept connections")
                && TcpStream::connect(("127.0.0.1", port)).is_ok())
        });
        if let Err(why) = ready {
            panic!("PostgreSQL did not start: {why}\n--- {} ---\n{}", log.display(), log_tail(&log, 30));
        }
        postgres.daemon = Some(daemon);
        let mut createdb = clean_command(postgres_program("createdb"));
        createdb.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "kms"]);
        postgres.run_ok(&mut createdb);
        postgres
    }

    /// `postgres://postgres@127.0.0.1:PORT/kms`, the KMS's `--database-url`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kms", self.port)
    }

    /// The KMS server arguments that put it on this database.
    pub fn kms_args(&self) -> [String; 4] {
        ["--database-type".into(), "postgresql".into(), "--database-url".into(), self.url()]
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, as the server's user.
    fn command(&self, program: &str) -> Command {
        let program = postgres_program(program);
        match &self.run_as {
            // setpriv execs the program in place (no parent left behind, as `su` would leave).
            Some(user) => {
                let mut command = clean_command("setpriv");
                command.args([OsStr::new(&format!("--reuid={user}")), OsStr::new(&format!("--regid={user}"))]);
                command.arg("--init-groups").arg(program);
                command
            }
            None => clean_command(program),
        }
    }

    fn run_ok(&self, command: &mut Command) {
        let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        assert!(out.status.success(), "{command:?} failed: {}\n{}", crate::output_text(&out), self.log());
    }
}

impl Drop for Postgres {
    /// `pg_ctl stop -m immediate`: the server and its backends exit at once; then the daemon
    /// is reaped (and killed, had it not stopped).
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = self.command("pg_ctl").arg("stop").arg("-D").arg(self.data()).args(["-m", "immediate"]).output();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `path` to `user` (and their group).
fn chown(path: &Path, user: &str) {
    let name = CString::new(user).expect("a user name has no NUL");
    // SAFETY: `name` is a NUL-terminated C string that outlives the call; getpwnam only reads it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: getpwnam returns null (no such user, turned into None by `as_ref`) or a pointer to
    // its static `passwd` entry, valid until the next getpw* call; the ids are copied out at once,
    // in this thread, and nothing else in the test bed calls getpw*.
    let ids = unsafe { entry.as_ref() }.map(|entry| (entry.pw_uid, entry.pw_gid));
    let (uid, gid) = ids.unwrap_or_else(|| {
        panic!("no `{user}` user: install Debian's `postgresql` package (scripts/install-test-bed.sh)")
    });
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot give {} to {user}: {e}", path.display()));
}

/// One connection haproxy carried, from its `option tcplog` line, written when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxySession {
    /// `backend/server`: `kms/node1`.
    pub server: String,
    /// haproxy's two-letter termination state: `--` closed normally, `cD`/`sD` closed by the
    /// client/server idle timeout, `SC` refused by the server...
    pub termination: String,
}

impl HaproxySession {
    /// Did haproxy close it because it sat idle past `timeout client`/`timeout server`?
    pub fn closed_idle(&self) -> bool {
        matches!(self.termination.as_str(), "cD" | "sD")
    }
}

/// A running `haproxy` in TCP mode on a free port of 127.0.0.1, balancing round-robin over KMS
/// servers checked every 200 ms (`GET /version`), logging every connection to its own log.
#[derive(Debug)]
pub struct Haproxy {
    // Fields drop in order: the process dies before its folder is deleted.
    _daemon: Daemon,
    dir: TempDir,
    port: u16,
}

impl Haproxy {
    /// Starts haproxy in front of the servers on these ports (`node1`, `node2`... in order),
    /// closing a connection idle for `idle_timeout` on either side (`timeout client` and
    /// `timeout server`). A connection refused by a server is tried on another one
    /// (`option redispatch`), and a server failing one check is out of the rotation until two
    /// pass.
    ///
    /// # Panics
    /// When haproxy is not installed (the message says how to install it), or does not start.
    pub fn start(server_ports: &[u16], idle_timeout: Duration) -> Haproxy {
        let haproxy = required(Path::new(HAPROXY), "haproxy");
        let dir = temp_dir("haproxy-");
        let port = free_port();
        let servers: String = server_ports
            .iter()
            .enumerate()
            .map(|(i, server)| format!("  server node{} 127.0.0.1:{server}\n", i + 1))
            .collect();
        let config = format!(
            "global\n  log stdout format raw local0 info\n  maxconn 1024\n\
             defaults\n  mode tcp\n  log global\n  option tcplog\n  retries 3\n  option redispatch 1\n  \
             timeout connect 1s\n  timeout client {idle}ms\n  timeout server {idle}ms\n\
             frontend balancer\n  bind 127.0.0.1:{port}\n  default_backend kms\n\
             backend kms\n  balance roundrobin\n  option httpchk GET /version\n  \
             default-server check inter 200ms fall 1 rise 2\n{servers}",
            idle = idle_timeout.as_millis(),
        );
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("cannot write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let (stdout, stderr) = log_file(&log);
        let mut command = clean_command(haproxy);
        command.arg("-db").arg("-f").arg(&config_path).stdout(stdout).stderr(stderr);
        let mut daemon = Daemon::spawn("haproxy", command);
        let ready = wait_until(START_TIMEOUT, || {
            daemon.check_running()?;
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
        });
        if let Err(why) = ready {
            panic!("haproxy did not start: {why}\n--- {} ---\n{}", log.display(), log_tail(&log, 30));
        }
        Haproxy { _daemon: daemon, dir, port }
    }

    /// `http://127.0.0.1:PORT`: the KMS URL clients are given.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far: one line per connection that ended, and the servers going down and up
    /// (`Server kms/node1 is DOWN, reason: ...`).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("haproxy.log"))
    }

    /// The connections that ended so far, oldest first.
    pub fn sessions(&self) -> Vec<HaproxySession> {
        self.log().lines().filter_map(parse_session).collect()
    }
}

/// A `tcplog` line: `127.0.0.1:36056 [06/Dec/2026:16:44:58.086] balancer kms/node1 1/0/0 226 --
/// 1/1/0/0/0 0/0`.
fn parse_session(line: &str) -> Option<HaproxySession> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 7 || !fields[1].starts_with('[') || !fields[3].contains('/') || fields[6].len() != 2 {
        return None;
    }
    Some(HaproxySession { server: fields[3].to_owned(), termination: fields[6].to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcplog_lines_as_2_6_writes_them() {
        let idle = "127.0.0.1:36056 [06/Dec/2026:16:44:58.086] balancer kms/node1 1/0/1002 226 cD 1/1/0/0/0 0/0";
        assert_eq!(parse_session(idle), Some(HaproxySession { server: "kms/node1".into(), termination: "cD".into() }));
        assert!(parse_session(idle).unwrap().closed_idle());
        assert_eq!(parse_session("[WARNING]  (1) : Server kms/node1 is DOWN, reason: Layer4 connection problem"), None);
    }
}
