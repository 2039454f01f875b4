//! The agent program as the packages install it: `/usr/local/bin/cosmian-ssh-agent` (mode 755,
//! the file `dist` checked) and its systemd user units in `/usr/lib/systemd/user/`
//! (`packaging/systemd/`, byte for byte, the service starting that program), and the man pages
//! of the agent and its configuration ([`super::man`]), under any install root
//! ([`check_installed`]: the .rpm's test root, dnf's roots, `/` after `apt-get install`).
//!
//! On the machine itself, after `apt-get install` ([`super::installed`]): `--version`
//! ([`check_version`]), `systemd-analyze verify --user` of the installed units
//! ([`verify_units`]; it needs no running systemd, only an `XDG_RUNTIME_DIR`), and the program
//! started the way the socket unit starts it ([`SocketActivated`]: Debian's
//! `systemd-socket-activate` listens, then runs it with the socket as fd 3, `LISTEN_FDS=1`),
//! answering `ssh-add -l` with the key the KMS holds ([`check_lists`]). [`super::arm64`] runs
//! the arm64 program the same way, under qemu-user.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{self as testbed, OpenSsh};

use super::elf::{AGENT, LinuxLib};
use super::{BIN_DIR, UNITS, USER_UNIT_DIR, capture, packaging_file, sha256_file, version};
use crate::step;

/// How long the program may take to answer one `ssh-add`.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The installed program: `/usr/local/bin/cosmian-ssh-agent`.
pub fn installed_path() -> PathBuf {
    installed_in(Path::new("/"))
}

/// The program installed under the install root `root`.
pub fn installed_in(root: &Path) -> PathBuf {
    root.join(BIN_DIR).join(AGENT)
}

/// What the packages install for the agent, relative to an install root: the program, the
/// units and the man pages.
pub fn installed_files() -> Vec<String> {
    let mut files = vec![format!("{BIN_DIR}/{AGENT}")];
    files.extend(UNITS.map(|unit| format!("{USER_UNIT_DIR}/{unit}")));
    files.extend(super::man::installed_files());
    files
}

/// Under `root`: the program is `lib.agent`, mode 755; the units are `packaging/systemd/`'s,
/// and the service starts the installed program; the man pages are the rendered ones
/// ([`super::man::check_installed`]).
pub fn check_installed(root: &Path, lib: &LinuxLib) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let program = installed_in(root);
    let mode = std::fs::metadata(&program).map_err(|e| format!("{}: {e}", program.display()))?.permissions().mode();
    if mode & 0o777 != 0o755 || sha256_file(&program)? != sha256_file(&lib.agent)? {
        return Err(format!(
            "{} (mode {:o}) is not {} with mode 755",
            program.display(),
            mode & 0o777,
            lib.agent.display()
        ));
    }
    for unit in UNITS {
        let path = root.join(USER_UNIT_DIR).join(unit);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text != packaging_file(&format!("systemd/{unit}"))? {
            return Err(format!("{} is not packaging/systemd/{unit}", path.display()));
        }
    }
    let service = packaging_file(&format!("systemd/{}", UNITS[1]))?;
    let exec = exec_start(&service).ok_or_else(|| format!("{} has no ExecStart=", UNITS[1]))?;
    if Path::new(exec) != installed_path() {
        return Err(format!("{} starts {exec}, not the installed {}", UNITS[1], installed_path().display()));
    }
    println!("    /{BIN_DIR}/{AGENT} (mode 755, the program built); /{USER_UNIT_DIR}/{{{}}}", UNITS.join(","));
    super::man::check_installed(root)
}

/// The program of a unit's `ExecStart=` (without systemd's `-@:+!` prefixes).
fn exec_start(unit: &str) -> Option<&str> {
    let line = unit.lines().find_map(|line| line.trim().strip_prefix("ExecStart="))?;
    line.trim_start_matches(['-', '@', ':', '+', '!']).split_whitespace().next()
}

/// `PROGRAM --version` exits 0 and names the program and this version.
pub fn check_version(mut command: Command) -> Result<(), String> {
    let out = capture(command.arg("--version"))?;
    if !(out.contains(AGENT) && out.contains(version())) {
        return Err(format!("{command:?} printed {out:?}, not {AGENT} {}", version()));
    }
    println!("    {command:?}: {}", out.trim());
    Ok(())
}

/// `systemd-analyze verify --user` of the installed units: their syntax, the service the
/// socket starts, and the program the service runs (which must exist and be executable).
pub fn verify_units() -> Result<(), String> {
    let units: Vec<PathBuf> = UNITS.iter().map(|unit| Path::new("/").join(USER_UNIT_DIR).join(unit)).collect();
    step("verify the installed systemd user units", &format!("systemd-analyze verify --user {}", units[0].display()));
    // The user manager systemd-analyze sets up needs a runtime folder, nothing running.
    let runtime = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .args(&units)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .map_err(|e| format!("cannot run systemd-analyze (Debian's systemd): {e}"))?;
    if !out.status.success() || !out.stdout.is_empty() || !out.stderr.is_empty() {
        return Err(format!("systemd-analyze verify --user reports: {}", testbed::output_text(&out)));
    }
    println!("    nothing to report");
    Ok(())
}

/// The agent started as systemd's socket unit starts it: `systemd-socket-activate -l SOCKET`
/// listens, and on the first connection runs the program with that socket as fd 3
/// (`LISTEN_FDS=1`, `LISTEN_PID` its pid). Killed when dropped.
pub struct SocketActivated {
    child: Child,
    dir: tempfile::TempDir,
}

impl SocketActivated {
    /// `program` (with its arguments, `-D` last) and the environment it gets: `env` and a
    /// `HOME` of its own (systemd-socket-activate passes only the variables it is given).
    pub fn start(program: &[OsString], env: &[(&str, &Path)]) -> Result<SocketActivated, String> {
        let dir = tempfile::Builder::new().prefix("cosmian-ssh-agent-").tempdir().map_err(|e| e.to_string())?;
        let sock = dir.path().join("socket");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).map_err(|e| e.to_string());
        let mut command = testbed::clean_command("systemd-socket-activate");
        command.arg("-l").arg(&sock).arg(format!("--setenv=HOME={}", home.display()));
        for (key, value) in env {
            command.arg(format!("--setenv={key}={}", value.display()));
        }
        command.args(program).stdin(Stdio::null()).stdout(file("stdout")?).stderr(file("stderr")?);
        let child =
            command.spawn().map_err(|e| format!("cannot run systemd-socket-activate (Debian's systemd): {e}"))?;
        let mut agent = SocketActivated { child, dir };
        let start = Instant::now();
        while !sock.exists() {
            if start.elapsed() > TIMEOUT || agent.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Err(format!("systemd-socket-activate made no socket {}:\n{}", sock.display(), agent.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    /// The socket, for `SSH_AUTH_SOCK`.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// What systemd-socket-activate and the program wrote: stderr, then stdout.
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("stderr:\n{}stdout:\n{}", read("stderr"), read("stdout"))
    }

    /// `Err` unless the program wrote nothing on stdout (it logs to its file).
    pub fn check_quiet_stdout(&self) -> Result<(), String> {
        let stdout = std::fs::read_to_string(self.dir.path().join("stdout")).map_err(|e| e.to_string())?;
        if !stdout.is_empty() {
            return Err(format!("the agent wrote on stdout: {stdout:?}"));
        }
        Ok(())
    }
}

impl Drop for SocketActivated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh-add -l` (Debian's) against `agent` lists the key whose `authorized_keys` line is
/// `authorized`, and the program keeps stdout clean. Exit status 2 is `ssh-add` not reaching
/// an agent; 1 with "The agent has no identities" an agent that answered without the key.
pub fn check_lists(agent: &SocketActivated, authorized: &str) -> Result<(), String> {
    step(
        "ssh-add -l through the socket-activated agent",
        &format!("SSH_AUTH_SOCK={} ssh-add -l", agent.sock().display()),
    );
    let expected = fingerprint(authorized)?;
    let mut ssh_add = OpenSsh::debian().command("ssh-add");
    ssh_add.arg("-l").env("SSH_AUTH_SOCK", agent.sock()).stdin(Stdio::null());
    let out = output_within(ssh_add, TIMEOUT)?;
    let listed = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) if listed.contains(&expected) => {}
        Some(2) => {
            return Err(format!("ssh-add could not reach the agent: {}\n{}", testbed::output_text(&out), agent.log()));
        }
        _ => {
            return Err(format!(
                "ssh-add -l does not list the KMS's key {expected} ({}): {}\n{}",
                out.status,
                testbed::output_text(&out),
                agent.log()
            ));
        }
    }
    agent.check_quiet_stdout()?;
    print!("{}", listed.lines().map(|line| format!("    {line}\n")).collect::<String>());
    Ok(())
}

/// The SHA-256 fingerprint (`SHA256:...`) of an `authorized_keys` line, by `ssh-keygen -l`.
fn fingerprint(authorized: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("key.pub");
    super::write(&file, format!("{}\n", authorized.trim()))?;
    let out = capture(OpenSsh::debian().command("ssh-keygen").arg("-l").arg("-f").arg(&file))?;
    out.split_whitespace()
        .find(|word| word.starts_with("SHA256:"))
        .map(str::to_owned)
        .ok_or_else(|| format!("ssh-keygen -l printed no fingerprint: {out:?}"))
}

/// Runs `command`, killed after `timeout`: its output.
fn output_within(mut command: Command, timeout: Duration) -> Result<std::process::Output, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let start = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_starts_the_installed_program_in_the_foreground() {
        let service = packaging_file(&format!("systemd/{}", UNITS[1])).unwrap();
        assert_eq!(exec_start(&service).map(Path::new), Some(installed_path().as_path()));
        assert!(service.lines().any(|line| line.trim() == format!("ExecStart={} -D", installed_path().display())));
        assert_eq!(exec_start("[Service]\nExecStart=-/bin/x -D\n"), Some("/bin/x"));
        assert_eq!(exec_start("[Service]\n"), None);
    }

    #[test]
    fn the_socket_is_the_users_alone() {
        let socket = packaging_file(&format!("systemd/{}", UNITS[0])).unwrap();
        for line in [
            "ListenStream=%t/cosmian-ssh-agent/socket",
            "SocketMode=0600",
            "DirectoryMode=0700",
            "WantedBy=sockets.target",
        ] {
            assert!(socket.lines().any(|l| l.trim() == line), "no {line:?} in\n{socket}");
        }
    }
}
