//! OpenSSH for the tests: a throw-away `sshd`, the `ssh` client aimed at it, `ssh-agent`, and
//! `ssh-keygen -D`. Every command gets a scrubbed environment ([`crate::clean_command`]): the
//! provider's configuration is passed explicitly by the caller.
//!
//! Two OpenSSH installations ([`OpenSsh`]): Debian 12's 9.2 (the default of the functions
//! without `_on`) and the current release the test bed builds from source. A daemon or client
//! started on one uses that installation's programs only, `ssh-pkcs11-helper` included.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{Daemon, log_file, log_tail, read_log, spawn_agent, temp_dir, wait_until};
use crate::{clean_command, free_port};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One OpenSSH installation: its client programs, `sshd`, and the `ssh-pkcs11-helper` that
/// `ssh-agent` (and, from 10.1, `ssh` and `ssh-keygen`) run to load a provider.
#[derive(Debug)]
pub struct OpenSsh {
    /// The folder of `ssh`, `ssh-add`, `ssh-agent`, `ssh-keygen`.
    bin: PathBuf,
    sshd: PathBuf,
    pkcs11_helper: PathBuf,
    /// What `ssh -V` says, up to the first comma: `OpenSSH_9.2p1 Debian-2+deb12u10`.
    banner: String,
    /// `(major, minor)`.
    version: (u32, u32),
}

impl OpenSsh {
    /// Debian's packages: `/usr/bin/ssh`..., `/usr/sbin/sshd` (installed by the test bed when
    /// missing).
    pub fn debian() -> &'static OpenSsh {
        static DEBIAN: OnceLock<OpenSsh> = OnceLock::new();
        DEBIAN.get_or_init(|| {
            if !Path::new("/usr/sbin/sshd").exists() {
                crate::install_test_bed(); // Installs openssh-client and openssh-server.
            }
            OpenSsh::at("/usr/bin".into(), "/usr/sbin/sshd".into(), "/usr/lib/openssh".into())
        })
    }

    /// The current release, built by `scripts/install-openssh.sh` (see [`crate::binaries`]).
    pub fn current() -> &'static OpenSsh {
        static CURRENT: OnceLock<OpenSsh> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let prefix = &crate::binaries().openssh;
            OpenSsh::at(prefix.join("bin"), prefix.join("sbin/sshd"), prefix.join("libexec"))
        })
    }

    fn at(bin: PathBuf, sshd: PathBuf, libexec: PathBuf) -> OpenSsh {
        let out = run_ok(Command::new(bin.join("ssh")).arg("-V"));
        let said = String::from_utf8_lossy(&out.stderr);
        let banner = said.split(',').next().unwrap_or_default().trim().to_owned();
        let version = banner
            .strip_prefix("OpenSSH_")
            .and_then(|v| v.split('p').next())
            .and_then(|v| v.split_once('.'))
            .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
            .unwrap_or_else(|| panic!("cannot read the version of {}: {said}", bin.display()));
        OpenSsh { pkcs11_helper: libexec.join("ssh-pkcs11-helper"), bin, sshd, banner, version }
    }

    /// `OpenSSH_10.3p1`, `OpenSSH_9.2p1 Debian-2+deb12u10`: for messages.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Is this release `major.minor` or later?
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= (major, minor)
    }

    /// The path of one of its client programs (`ssh-keygen`, for git's `gpg.ssh.program`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A scrubbed command for one of its client programs (`ssh`, `ssh-add`, `ssh-keygen`...),
    /// with `SSH_PKCS11_HELPER` naming its own helper.
    pub fn command(&self, program: &str) -> Command {
        let mut command = clean_command(self.program(program));
        command.env("SSH_PKCS11_HELPER", &self.pkcs11_helper);
        command
    }

    /// `ssh-keygen -D lib`: prints one `authorized_keys` line per key the provider offers. Add
    /// the provider's environment with `.env(...)`.
    pub fn ssh_keygen_d(&self, lib: &Path) -> Command {
        let mut command = self.command("ssh-keygen");
        command.arg("-D").arg(lib);
        command
    }
}

/// The name of the user running the tests: the login user of [`Sshd`].
pub fn current_user() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        let out = Command::new("id").arg("-un").output().expect("cannot run `id -un`");
        assert!(out.status.success(), "`id -un` failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// Runs a short command to completion and panics with its stderr when it fails.
fn run_ok(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A throw-away `sshd` on 127.0.0.1 that accepts public keys only, for the current user, from
/// an `authorized_keys` file of its own. Killed when dropped.
#[derive(Debug)]
pub struct Sshd {
    // Fields drop in order: the process dies before its directory is deleted.
    _daemon: Daemon,
    dir: TempDir,
    port: u16,
    openssh: &'static OpenSsh,
}

impl Sshd {
    /// [`Sshd::start_on`] Debian's OpenSSH.
    pub fn start(authorized_keys: &str, extra_config: &str) -> Sshd {
        Self::start_on(OpenSsh::debian(), authorized_keys, extra_config)
    }

    /// Starts `openssh`'s `sshd -D -e -E LOG -f CONFIG` with its own ed25519 host key and
    /// `LogLevel DEBUG`, and waits until it listens.
    ///
    /// `extra_config` lines come FIRST in `sshd_config`, so they override the defaults below
    /// (sshd keeps the first value it reads for a keyword); no `Match` block there.
    ///
    /// # Panics
    /// When sshd is missing or does not start; the message holds its log.
    pub fn start_on(openssh: &'static OpenSsh, authorized_keys: &str, extra_config: &str) -> Sshd {
        // sshd refuses to start without its privilege separation directory (Debian's and the
        // test bed's build: /run/sshd; Homebrew's on macOS: /var/empty, always there).
        if cfg!(target_os = "linux") {
            std::fs::create_dir_all("/run/sshd").expect("cannot create /run/sshd");
        }
        let dir = temp_dir("sshd-");
        let path = |name: &str| dir.path().join(name);
        let port = free_port();
        run_ok(
            openssh
                .command("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "testbed-host", "-f"])
                .arg(path("host_ed25519")),
        );
        let config = format!(
            "{extra}\n\
             ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             PidFile {pid}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             LogLevel DEBUG\n",
            extra = extra_config.trim_end(),
            host_key = path("host_ed25519").display(),
            authorized_keys = path("authorized_keys").display(),
            pid = path("sshd.pid").display(),
        );
        std::fs::write(path("sshd_config"), config).expect("cannot write sshd_config");
        std::fs::write(path("authorized_keys"), authorized_keys).expect("cannot write authorized_keys");

        let log = path("sshd.log");
        let (stdout, stderr) = log_file(&log);
        let mut command = clean_command(&openssh.sshd);
        command.args(["-D", "-e", "-E"]).arg(&log).arg("-f").arg(path("sshd_config")).stdout(stdout).stderr(stderr);
        let mut daemon = Daemon::spawn("sshd", command);
        let listening = format!("Server listening on 127.0.0.1 port {port}");
        let ready = wait_until(START_TIMEOUT, || {
            daemon.check_running()?;
            Ok(read_log(&log).contains(&listening))
        });
        if let Err(why) = ready {
            panic!("sshd did not start: {why}\n--- {} ---\n{}", log.display(), log_tail(&log, 40));
        }
        Sshd { dir, port, openssh, _daemon: daemon }
    }

    /// The OpenSSH it runs, which [`ssh_command`] uses too.
    pub fn openssh(&self) -> &'static OpenSsh {
        self.openssh
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (the current user).
    pub fn user(&self) -> &'static str {
        current_user()
    }

    /// sshd's temporary directory (config, host key, `authorized_keys`, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's log so far, at `LogLevel DEBUG`: it says why a key was accepted or refused.
    pub fn log(&self) -> String {
        read_log(&self.dir().join("sshd.log"))
    }

    /// Replaces the `authorized_keys` file; sshd reads it at every login.
    pub fn set_authorized_keys(&self, authorized_keys: &str) {
        std::fs::write(self.dir().join("authorized_keys"), authorized_keys).expect("cannot write authorized_keys");
    }
}

/// `ssh` of the same OpenSSH as `sshd`, aimed at it as [`current_user`]; add options, then
/// [`SshCommand::run`].
pub fn ssh_command(sshd: &Sshd) -> SshCommand {
    let mut command = sshd.openssh.command("ssh");
    command.env_remove("SSH_ASKPASS");
    SshCommand { command, port: sshd.port(), no_identity: sshd.dir().join("no-such-identity") }
}

/// The `-o` options of every test bed login. No `IdentitiesOnly=yes`: with it, OpenSSH drops
/// every PKCS#11 key whose public key is not also given as an identity file (`-i key.pub`),
/// so `ssh -I lib` would offer nothing. Keys come only from what the caller adds anyway: the
/// default identity files are replaced by a missing one, and `SSH_AUTH_SOCK` is removed
/// unless the caller sets it.
const SSH_DEFAULTS: [&str; 5] = [
    "UserKnownHostsFile=/dev/null",
    "StrictHostKeyChecking=no",
    "BatchMode=yes",
    "LogLevel=ERROR",
    "ConnectTimeout=10",
];

/// An `ssh` command line being built: `ssh [options added] -F /dev/null [SSH_DEFAULTS]
/// -o IdentityFile=<missing file> -p PORT user@127.0.0.1 REMOTE_COMMAND`.
///
/// The options added come before the defaults, so they win: ssh keeps the first value it reads
/// for an option.
#[derive(Debug)]
pub struct SshCommand {
    command: Command,
    port: u16,
    no_identity: PathBuf,
}

impl SshCommand {
    /// Adds one argument before the destination (`"-v"`, `"-o"`, `"PubkeyAcceptedAlgorithms=..."`).
    pub fn opt(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// `-I lib`: offer the keys of this PKCS#11 provider.
    pub fn provider(self, lib: &Path) -> Self {
        self.opt("-I").opt(lib)
    }

    /// Sets an environment variable of `ssh` (and so of the provider it loads).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// The finished command, to spawn it yourself.
    pub fn command(mut self, remote_command: &str) -> Command {
        self.command.args(["-F", "/dev/null"]);
        for option in SSH_DEFAULTS {
            self.command.args(["-o", option]);
        }
        // Keeps ssh away from ~/.ssh/id_*; a missing file is skipped silently.
        let no_identity = format!("IdentityFile={}", self.no_identity.display());
        self.command
            .args(["-o", &no_identity, "-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", current_user()))
            .arg(remote_command);
        self.command
    }

    /// Runs it to completion (stdin closed, output captured). A failed login is a non-zero
    /// status in the `Output`, not a panic.
    pub fn run(self, remote_command: &str) -> Output {
        let mut command = self.command(remote_command);
        command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
    }
}

/// Debian's [`OpenSsh::ssh_keygen_d`].
pub fn ssh_keygen_d(lib: &Path) -> Command {
    OpenSsh::debian().ssh_keygen_d(lib)
}

/// A throw-away `ssh-agent -D -a SOCK`, killed when dropped.
///
/// The agent never loads a provider itself: `ssh-add -s lib` makes it start
/// `ssh-pkcs11-helper`, which inherits THE AGENT'S environment. So the provider's
/// configuration goes to [`SshAgent::start_with`], not to `ssh-add`.
#[derive(Debug)]
pub struct SshAgent {
    // Fields drop in order: the process dies before its directory is deleted.
    _daemon: Daemon,
    dir: TempDir,
    openssh: &'static OpenSsh,
}

impl SshAgent {
    /// An agent with the default provider allow-list and no provider configuration.
    pub fn start() -> SshAgent {
        Self::start_with(None, std::iter::empty::<(&str, &str)>())
    }

    /// [`SshAgent::start_on`] Debian's OpenSSH.
    pub fn start_with<I, K, V>(provider_allowlist: Option<&str>, envs: I) -> SshAgent
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::start_on(OpenSsh::debian(), provider_allowlist, envs)
    }

    /// [`SshAgent::start_on`] with an allow-list of the folder of `lib` (a provider outside the
    /// default `/usr/lib*/*,/usr/local/lib*/*`, as the tests' builds are).
    pub fn allowing<I, K, V>(openssh: &'static OpenSsh, lib: &Path, envs: I) -> SshAgent
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let folder = lib.parent().unwrap_or(Path::new("/"));
        Self::start_on(openssh, Some(&format!("{}/*", folder.display())), envs)
    }

    /// `openssh`'s agent with `-P provider_allowlist` (if any) and these environment variables
    /// (the provider's configuration) added to a scrubbed environment. It runs its own
    /// `ssh-pkcs11-helper` ([`OpenSsh::command`]).
    pub fn start_on<I, K, V>(openssh: &'static OpenSsh, provider_allowlist: Option<&str>, envs: I) -> SshAgent
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let dir = temp_dir("agent-");
        let sock = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let (stdout, stderr) = log_file(&log);
        let mut command = openssh.command("ssh-agent");
        command.arg("-D").arg("-a").arg(&sock).envs(envs).stdout(stdout).stderr(stderr);
        if let Some(allowlist) = provider_allowlist {
            command.arg("-P").arg(allowlist);
        }
        let daemon = spawn_agent("ssh-agent", command, &sock, &log);
        SshAgent { dir, openssh, _daemon: daemon }
    }

    /// The agent's socket, for `SSH_AUTH_SOCK`.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// What the agent wrote on stdout and stderr (errors such as a refused provider).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("agent.log"))
    }

    /// `ssh-add -s lib` against this agent, answering its PIN prompt with an empty line (the
    /// token asks for none outside PIN mode).
    pub fn add_provider(&self, lib: &Path) -> std::io::Result<Output> {
        self.add_provider_with(lib, &[])
    }

    /// `ssh-add -s lib CERTIFICATE...` (OpenSSH 9.6 and later): the provider's keys, and these
    /// certificates of some of them.
    pub fn add_provider_with(&self, lib: &Path, certificates: &[&Path]) -> std::io::Result<Output> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .command("ssh-add")
            .arg("-s")
            .arg(lib)
            .args(certificates)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // An ssh-add that exits without asking closes its stdin: its output says why.
        let _ = child.stdin.take().map(|mut stdin| stdin.write_all(b"\n"));
        child.wait_with_output()
    }

    /// A scrubbed command for `program` (`ssh-add`, `ssh-keygen -Y sign`...) of the agent's
    /// OpenSSH, talking to this agent.
    pub fn command(&self, program: &str) -> Command {
        let mut command = self.openssh.command(program);
        command.env("SSH_AUTH_SOCK", self.sock());
        command
    }
}
