//! Long-lived child processes (KMS server, sshd, ssh-agent) that never outlive the test process.
//!
//! Every such child is killed when its [`Daemon`] is dropped and, on Linux, also gets
//! `PR_SET_PDEATHSIG = SIGKILL`, so a crashed or aborted test run leaves nothing behind. The
//! kernel sends that signal when the *thread* that forked the child exits, and test threads do
//! exit; so all daemons are forked by one process-wide spawner thread that lives as long as
//! the process.
//!
//! A test bed kept in a `static` is never dropped: an `atexit` handler kills the daemons and
//! deletes the temporary directories that are still alive when the process exits normally.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// What owners that are never dropped would leave behind at exit.
struct Leftovers {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers { pids: Vec::new(), dirs: Vec::new() });

/// Runs `change` on the leftovers, registering the `atexit` handler the first time.
fn leftovers(change: impl FnOnce(&mut Leftovers)) {
    static HANDLER: Once = Once::new();
    // SAFETY: registers `clean_up_at_exit`, an `extern "C" fn()` with no arguments that lives as
    // long as the program and never unwinds (it only try_locks, kills, waits and removes
    // directories); `call_once` registers it once.
    HANDLER.call_once(|| unsafe {
        libc::atexit(clean_up_at_exit);
    });
    if let Ok(mut leftovers) = LEFTOVERS.lock() {
        change(&mut leftovers);
    }
}

extern "C" fn clean_up_at_exit() {
    let Ok(mut leftovers) = LEFTOVERS.try_lock() else {
        return;
    };
    for pid in leftovers.pids.drain(..) {
        // SAFETY: kill takes two integers and touches no memory; `pid` is our own child, not
        // reaped yet (stop() unregisters before reaping), so the pid names no other process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        // SAFETY: the same child; a null status pointer is allowed (waitpid then stores nothing).
        unsafe {
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    for dir in leftovers.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A new temporary directory `$TMPDIR/<prefix>XXXXXX`, deleted when dropped or at exit.
pub(crate) fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
    leftovers(|l| l.dirs.push(dir.path().to_owned()));
    dir
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The channel to the spawner thread, started on first use.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                // The sender lives in a static: this loop, and so this thread, never ends.
                for (mut command, reply) in incoming {
                    let _ = reply.send(spawn_tied_to_process(&mut command));
                }
            })
            .expect("cannot start the test bed's spawner thread");
        requests
    })
}

#[cfg(target_os = "linux")]
fn spawn_tied_to_process(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    let tie_to_parent = move || {
        // SAFETY: PR_SET_PDEATHSIG with an integer signal number reads and writes no memory of
        // ours; it only sets this (child) process's parent-death signal.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before prctl: then nobody would ever kill us.
        // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
        if unsafe { libc::getppid() } as u32 != parent {
            // ESRCH ("no such process": the parent): an OS error code allocates nothing.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are sound: prctl and getppid are, and no path allocates (both errors are OS error
    // codes, `io::Error`'s unboxed form).
    unsafe { command.pre_exec(tie_to_parent) };
    command.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_tied_to_process(command: &mut Command) -> io::Result<Child> {
    command.spawn() // No PR_SET_PDEATHSIG: only kill-on-drop.
}

/// A child process that is killed (SIGKILL) and reaped when dropped or stopped.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    /// Spawns `command` from the spawner thread, its stdin closed.
    pub(crate) fn spawn(name: &str, mut command: Command) -> Daemon {
        command.stdin(Stdio::null());
        let (reply, answer) = mpsc::channel();
        spawner().send((command, reply)).expect("the test bed's spawner thread is gone");
        let child = answer
            .recv()
            .expect("the test bed's spawner thread is gone")
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        leftovers(|l| l.pids.push(child.id()));
        Daemon { name: name.to_owned(), child: Some(child) }
    }

    /// `Err` with the exit status when the process has already exited.
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().ok_or_else(|| format!("{} was stopped", self.name))?;
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(format!("cannot wait for {}: {e}", self.name)),
        }
    }

    /// Kills and reaps the process; does nothing the second time.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            leftovers(|l| l.pids.retain(|&pid| pid != child.id()));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Calls `ready` every 50 ms until it answers `Ok(true)`, or fails with `Err`, or `timeout`
/// passes (then `Err("timed out")`).
pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A file opened for appending, as the (stdout, stderr) of a child.
pub(crate) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let fail = |e: io::Error| panic!("cannot open log file {}: {e}", path.display());
    let file = OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(fail);
    let copy = file.try_clone().unwrap_or_else(fail);
    (copy.into(), file.into())
}

/// The file's content, or an empty string when it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `lines` lines of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let log = read_log(path);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns an agent (`command`, with `-D -a sock` already given, its output going to `log`) and
/// waits until it answers on `sock`: the socket file exists from bind(), an agent answers only
/// after listen().
///
/// # Panics
/// When it exits or does not answer in time, with the end of its log.
pub(crate) fn spawn_agent(name: &str, command: Command, sock: &Path, log: &Path) -> Daemon {
    let mut daemon = Daemon::spawn(name, command);
    let ready = wait_until(Duration::from_secs(20), || {
        daemon.check_running()?;
        Ok(std::os::unix::net::UnixStream::connect(sock).is_ok())
    });
    if let Err(why) = ready {
        panic!("{name} did not start: {why}\n{}", log_tail(log, 20));
    }
    daemon
}
