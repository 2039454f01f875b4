//! `cosmian-ssh-agent`: an ssh-agent that serves, read-only, the KMS keys the provider offers,
//! built from the provider's own configuration, KMS client, key list, caches and signing
//! (the [`Token`](crate::token::Token)). Apple's `/usr/bin/ssh`, and OpenSSH releases that
//! cannot load Ed25519 keys from a PKCS#11 provider, reach every KMS key through it.
//!
//! - [`wire`]: the SSH encodings (key and signature blobs, certificates);
//! - [`protocol`]: the agent messages;
//! - [`service`]: the answers (identities, signatures, lock, refusals);
//! - [`server`]: the socket, its permissions, the clients;
//! - here: the command line, the background start (`-s`/`-c`), signals.

mod protocol;
mod server;
mod service;
mod wire;

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use crate::platform;
use crate::provider::Provider;

const USAGE: &str = "usage: cosmian-ssh-agent [-c | -s] [-D] [-a socket] [--certificates folder]
       cosmian-ssh-agent [-c | -s] -k
       cosmian-ssh-agent check
       cosmian-ssh-agent --version

Serves the SSH keys of the Cosmian KMS (those the PKCS#11 provider offers) to ssh, ssh-add,
git and every other agent client. Configuration as the provider's: the ckms configuration
file, COSMIAN_PKCS11_SSH_KEY_TAG, COSMIAN_PKCS11_LOGGING_LEVEL (see man cosmian-ssh-agent).

  -D          stay in the foreground (systemd, launchd, a terminal); socket-activated by
              systemd when LISTEN_FDS is set
  -a socket   listen on this socket (default: $XDG_RUNTIME_DIR/cosmian-ssh-agent/socket,
              ~/Library/Caches/cosmian-ssh-agent/socket on macOS)
  -s, -c      start in the background and print Bourne (-s) or C shell (-c) commands setting
              SSH_AUTH_SOCK and SSH_AGENT_PID (the default without -D: after $SHELL)
  -k          stop the agent named by SSH_AGENT_PID
  check       check the set-up step by step (configuration file, KMS, TLS, credentials, the
              keys offered) and print the fix for what fails; exit status 1 if something does
  --certificates folder
              where the OpenSSH certificates (*-cert.pub) of the KMS keys are (default:
              ~/.config/cosmian-pkcs11/certificates)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shell {
    Bourne,
    C,
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Help,
    Version,
    Kill,
    Check,
    Serve { foreground: bool },
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    action: Action,
    shell: Option<Shell>,
    socket: Option<PathBuf>,
    certificates: Option<PathBuf>,
}

impl Args {
    fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
        let mut args = args.into_iter();
        let (mut help, mut version, mut kill, mut check, mut foreground) = (false, false, false, false, false);
        let (mut shell, mut socket, mut certificates) = (None, None, None);
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| args.next().map(PathBuf::from).ok_or(format!("{flag} needs a value"));
            match arg.to_str() {
                Some("-h" | "--help") => help = true,
                Some("-V" | "--version") => version = true,
                Some("-k") => kill = true,
                Some("check") => check = true,
                Some("-D" | "-d") => foreground = true,
                Some("-s") => shell = Some(Shell::Bourne),
                Some("-c") => shell = Some(Shell::C),
                Some("-a") => socket = Some(value("-a")?),
                Some("--certificates") => certificates = Some(value("--certificates")?),
                _ => return Err(format!("unknown argument {}", arg.to_string_lossy())),
            }
        }
        let action = if help {
            Action::Help
        } else if version {
            Action::Version
        } else if kill {
            Action::Kill
        } else if check {
            Action::Check
        } else {
            Action::Serve { foreground }
        };
        Ok(Args { action, shell, socket, certificates })
    }

    /// The shell asked for, else the one `$SHELL` names (csh and tcsh take `setenv`).
    fn shell(&self) -> Shell {
        self.shell.unwrap_or_else(|| match std::env::var("SHELL") {
            Ok(s) if s.ends_with("csh") => Shell::C,
            _ => Shell::Bourne,
        })
    }
}

/// The program's entry point: exit status 0, 1 when the agent cannot start or stop, 2 for a
/// wrong command line. What the program says goes to `out` and `err`, which its `main`
/// (src/bin) gives as stdout and stderr: the library itself never writes to them.
pub fn main(out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            let _ = writeln!(err, "cosmian-ssh-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let shell = args.shell();
    let result = match args.action {
        Action::Help => writeln!(out, "{USAGE}").map_err(|e| e.to_string()),
        Action::Version => writeln!(out, "cosmian-ssh-agent {}", env!("CARGO_PKG_VERSION")).map_err(|e| e.to_string()),
        Action::Kill => kill(shell, out),
        Action::Check => {
            let _ = tracing::dispatcher::set_global_default(platform::logging::dispatch().clone());
            if crate::diagnosis::run(out) {
                Ok(())
            } else {
                // The reasons and fixes are on stdout.
                return ExitCode::FAILURE;
            }
        }
        Action::Serve { foreground } => serve(args, foreground, shell, out, err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "cosmian-ssh-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the socket (or takes systemd's), goes to the background unless `foreground`, then
/// serves until a signal ends the process.
fn serve(args: Args, foreground: bool, shell: Shell, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let _ = tracing::dispatcher::set_global_default(platform::logging::dispatch().clone());
    let provider = Provider::from_environment(true);
    // PIN mode: the agent starts locked; `ssh-add -X` gives it the PIN.
    let pin_mode = provider.login_required();
    if let Some(e) = provider.token.configuration_error() {
        // Kept running: the problem is logged and said here while a terminal may see it.
        let _ = writeln!(err, "cosmian-ssh-agent: no keys will be served: {e}");
    }
    let (listener, path) = match server::activated().filter(|_| foreground && args.socket.is_none()) {
        Some(listener) => (listener, None),
        None => {
            let path = args.socket.clone().or_else(platform::config_paths::agent_socket).ok_or(
                "no socket path: XDG_RUNTIME_DIR is not set; name one with -a (for example -a ~/.ssh/cosmian-agent.sock)",
            )?;
            let listener = server::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            (listener, Some(path))
        }
    };
    if let Some(path) = &path {
        remove_on_signal(path);
    }
    if !foreground {
        let path = path.as_deref().unwrap_or(std::path::Path::new(""));
        // Before any thread exists (making the provider starts none): the child is the agent,
        // the parent prints its variables.
        match fork()? {
            Some(child) => {
                return print_variables(out, shell, &path.display().to_string(), child).map_err(|e| e.to_string());
            }
            None => detach(),
        }
    }
    let agent = Arc::new(service::Agent::new(
        provider.token,
        args.certificates.or_else(platform::config_paths::certificates_folder),
        pin_mode,
    ));
    if pin_mode {
        tracing::info!("agent: PIN mode: locked until `ssh-add -X` gives the PIN");
    }
    tracing::info!(socket = ?path, "agent: listening");
    // The first login finds the key list loaded and the connection to the KMS made; later
    // ones find it fresh (listed again in the background, never in a request's path).
    let keys = agent.clone();
    let _ = std::thread::Builder::new().name("agent-keys".into()).spawn(move || keys.keep_keys_fresh());
    server::serve(listener, agent);
    Ok(())
}

fn print_variables(out: &mut dyn Write, shell: Shell, socket: &str, pid: u32) -> std::io::Result<()> {
    match shell {
        Shell::Bourne => {
            writeln!(out, "SSH_AUTH_SOCK={socket}; export SSH_AUTH_SOCK;")?;
            writeln!(out, "SSH_AGENT_PID={pid}; export SSH_AGENT_PID;")?;
        }
        Shell::C => {
            writeln!(out, "setenv SSH_AUTH_SOCK {socket};")?;
            writeln!(out, "setenv SSH_AGENT_PID {pid};")?;
        }
    }
    writeln!(out, "echo Agent pid {pid};")?;
    out.flush()
}

/// `-k`: SIGTERM to `SSH_AGENT_PID`, then the commands that unset the variables.
fn kill(shell: Shell, out: &mut dyn Write) -> Result<(), String> {
    let pid: i32 = std::env::var("SSH_AGENT_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 1)
        .ok_or("SSH_AGENT_PID is not set to an agent's process id")?;
    // SAFETY: kill has no memory preconditions; a wrong pid is an error return.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!("cannot stop process {pid}: {}", std::io::Error::last_os_error()));
    }
    let unset = match shell {
        Shell::Bourne => "unset SSH_AUTH_SOCK;\nunset SSH_AGENT_PID;",
        Shell::C => "unsetenv SSH_AUTH_SOCK;\nunsetenv SSH_AGENT_PID;",
    };
    writeln!(out, "{unset}\necho Agent pid {pid} killed;").map_err(|e| e.to_string())
}

/// `fork(2)`: the child's pid in the parent, `None` in the child.
fn fork() -> Result<Option<u32>, String> {
    // SAFETY: called before the process starts any thread (the provider is made after).
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot start in the background: {}", std::io::Error::last_os_error())),
        0 => Ok(None),
        child => Ok(Some(child.unsigned_abs())),
    }
}

/// The background agent leaves the terminal: a session of its own, `/` as its folder, and its
/// standard streams on `/dev/null` (it never writes to a terminal it does not own).
fn detach() {
    // SAFETY: setsid has no memory preconditions; failing (already a leader) is harmless.
    unsafe { libc::setsid() };
    let _ = std::env::set_current_dir("/");
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        use std::os::unix::io::AsRawFd;
        for fd in 0..3 {
            // SAFETY: both descriptors are open; dup2 replaces the standard stream.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Reads a message body as the agent does, and the certificate a sign request may name: for
/// the fuzz target `agent_message`.
#[cfg(feature = "internals")]
pub fn read_message(body: &[u8]) -> Result<(), String> {
    if let protocol::Request::Sign { key_blob, .. } = protocol::parse(body)? {
        wire::certified_key_blob(key_blob)?;
    }
    Ok(())
}

/// The socket path, for the signal handler.
static SOCKET: OnceLock<CString> = OnceLock::new();

/// SIGTERM, SIGINT and SIGHUP remove the socket and end the process.
fn remove_on_signal(path: &std::path::Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else { return };
    let _ = SOCKET.set(c_path);
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(path) = SOCKET.get() {
            // SAFETY: unlink is async-signal-safe; the path is a NUL-terminated string that
            // lives as long as the process.
            unsafe { libc::unlink(path.as_ptr()) };
        }
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(0) };
    }
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn command_lines() {
        let args = parse(&["-D", "-a", "/tmp/s"]).unwrap();
        assert_eq!(args.action, Action::Serve { foreground: true });
        assert_eq!(args.socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(parse(&["-s"]).unwrap().shell, Some(Shell::Bourne));
        assert_eq!(parse(&["-c", "-k"]).unwrap().action, Action::Kill);
        assert_eq!(parse(&["--version"]).unwrap().action, Action::Version);
        assert_eq!(parse(&["check"]).unwrap().action, Action::Check);
        assert!(parse(&["-a"]).is_err());
        assert!(parse(&["-x"]).is_err());
    }
}
