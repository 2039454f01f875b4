//! `cosmian-ssh-agent`, the project's own agent, started for one test: in the foreground on a
//! socket of its own folder, with the provider's configuration in its environment, killed when
//! dropped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::clean_command;
use crate::process::{Daemon, log_file, read_log, spawn_agent, temp_dir};
use crate::ssh::OpenSsh;

/// A running `cosmian-ssh-agent -D -a SOCKET`.
#[derive(Debug)]
pub struct CosmianAgent {
    // Fields drop in order: the process dies before its folder is deleted.
    daemon: Daemon,
    dir: TempDir,
}

impl CosmianAgent {
    /// Starts `program` (the test's `CARGO_BIN_EXE_cosmian-ssh-agent`) with these variables
    /// (the provider's configuration) added to a scrubbed environment, and more arguments
    /// (`--certificates DIR`), and waits until its socket answers.
    pub fn start<I, K, V>(program: &Path, envs: I, args: &[&OsStr]) -> CosmianAgent
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let dir = temp_dir("cosmian-agent-");
        let sock = dir.path().join("agent").join("socket");
        let log = dir.path().join("agent.log");
        let (stdout, stderr) = log_file(&log);
        let mut command = clean_command(program);
        command.arg("-D").arg("-a").arg(&sock).args(args).envs(envs).stdout(stdout).stderr(stderr);
        let daemon = spawn_agent("cosmian-ssh-agent", command, &sock, &log);
        CosmianAgent { daemon, dir }
    }

    /// The socket, for `SSH_AUTH_SOCK` or `IdentityAgent`.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("agent").join("socket")
    }

    /// What the agent wrote on stdout and stderr.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("agent.log"))
    }

    /// Is the agent's process still running?
    pub fn is_running(&mut self) -> bool {
        self.daemon.check_running().is_ok()
    }

    /// `program` (`ssh-add`, `ssh`, `ssh-keygen`) of `openssh`, talking to this agent.
    pub fn command(&self, openssh: &OpenSsh, program: &str) -> Command {
        let mut command = openssh.command(program);
        command.env("SSH_AUTH_SOCK", self.sock());
        command
    }
}
