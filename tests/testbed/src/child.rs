//! A test that loads the provider in its own process does so in a child process of the test
//! executable, one per test (or part of a test): the provider reads its configuration from the
//! environment at `C_Initialize`, and a test process never changes its own environment
//! (`set_var` in a multi-threaded test executable is a data race). The parent, the test as the
//! harness runs it, keeps what the tests share (a KMS, keys), starts this same executable again
//! for the one test with the provider's environment on the child's command, and fails with the
//! child's output when the child fails. A child asks its parent for what only the parent can do
//! (restart the KMS it holds...) with [`ask_parent`].

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::{BINARIES_ENV, binaries, clean_command, output_text, provider_lib};

/// Set in a child of [`run_in_child`]: the part of the test it runs.
const CHILD_ENV: &str = "COSMIAN_PKCS11_TEST_CHILD";
/// What starts a request of a child to its parent, in a line of the child's stdout.
const REQUEST: &str = "cosmian-pkcs11-testbed asks its parent: ";
/// What a child that passed printed: libtest's summary of one test, which a plain `main`
/// (`harness = false`) prints too.
const PASSED: &str = "test result: ok. 1 passed";

/// In a child of [`run_in_child`]: the part of the test its parent asked for; `None` in a test
/// as the harness runs it.
pub fn child_part() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// The whole test in a child: in the parent, runs the current test again in a child whose
/// environment adds `env(folder)`, for a fresh `folder`, and returns `None` once the child
/// passed; in that child, returns `Some(folder)`, where the test writes what the environment
/// names (the provider reads its configuration file at `C_Initialize`, not before).
///
/// # Panics
/// In the parent, when the child fails (see [`run_in_child`]).
pub fn body_in_child<I, K, V>(env: impl FnOnce(&Path) -> I) -> Option<PathBuf>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    if let Some(folder) = child_part() {
        return Some(folder.into());
    }
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().to_str().expect("a UTF-8 temporary folder");
    run_in_child(path, env(folder.path()));
    None
}

/// Runs the current test again in a child process of this test executable (see
/// [`child_command`]) with `env` added, where [`child_part`] is `part`. Returns the child's
/// output once it passed, having printed it as the test would have.
///
/// A libtest test must pass as one test; a plain `main` (`harness = false`) must print
/// libtest's `test result: ok. 1 passed` line.
///
/// # Panics
/// When the child fails, with its status, stdout and stderr.
pub fn run_in_child<I, K, V>(part: &str, env: I) -> Output
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    run(part, env, None)
}

/// [`run_in_child`], serving the child's requests: each request the child makes with
/// [`ask_parent`] is given to `serve`, and its answer (one line) sent back to the child.
///
/// # Panics
/// When the child fails, with its status, stdout and stderr; when `serve` panics (the child is
/// then killed).
pub fn run_in_child_serving<I, K, V>(part: &str, env: I, mut serve: impl FnMut(&str) -> String) -> Output
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    run(part, env, Some(&mut serve))
}

/// [`run_in_child_serving`]; without `serve`, the child's stdin is empty.
fn run<I, K, V>(part: &str, env: I, mut serve: Option<&mut dyn FnMut(&str) -> String>) -> Output
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = child_command(part);
    command.envs(env);
    let stdin = if serve.is_some() { Stdio::piped() } else { Stdio::null() };
    command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{:?} {:?} ({part})", command.get_program(), command.get_args().collect::<Vec<_>>());
    let mut child = Killed(command.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}")));
    let mut stderr = child.0.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let mut answers = child.0.stdin.take();
    let mut stdout = Vec::new();
    for line in BufReader::new(child.0.stdout.take().expect("piped")).split(b'\n') {
        let line = line.expect("the child's stdout");
        // A request may follow what libtest printed on the line (`test NAME ... `).
        let text = String::from_utf8_lossy(&line);
        let (Some(at), Some(serve), Some(answers)) = (text.find(REQUEST), serve.as_mut(), answers.as_mut()) else {
            stdout.extend_from_slice(&line);
            stdout.push(b'\n');
            continue;
        };
        stdout.extend_from_slice(&line[..at]);
        let answer = serve(&text[at + REQUEST.len()..]);
        assert!(!answer.contains('\n'), "an answer is one line: {answer:?}");
        // A child that ended meanwhile fails on its own, with its output.
        let _ = writeln!(answers, "{answer}").and_then(|()| answers.flush());
    }
    drop(answers);
    let status = child.0.wait().expect("wait for the child");
    let out = Output { status, stdout, stderr: stderr.join().expect("the child's stderr") };
    let passed = out.status.success() && String::from_utf8_lossy(&out.stdout).contains(PASSED);
    assert!(passed, "the child {what} failed:\n{}", output_text(&out));
    // What the test would have printed in this process (the harness shows it as it would have).
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The command that runs this test executable again as a child where [`child_part`] is `part`:
/// this process's environment without the provider's variables (see [`clean_command`]), with
/// the test bed's binaries and library named (the child never installs or searches them
/// again). For a libtest test (its thread bears its name): `--exact NAME --nocapture`.
pub fn child_command(part: &str) -> Command {
    let exe = std::env::current_exe().expect("the test executable");
    let mut command = clean_command(exe);
    let b = binaries();
    for (key, path) in BINARIES_ENV.into_iter().zip([&b.kms_server, &b.ckms, &b.openssh]) {
        command.env(key, path);
    }
    command.env("COSMIAN_PKCS11_LIB", provider_lib()).env(CHILD_ENV, part);
    if let Some(test) = std::thread::current().name().filter(|name| *name != "main") {
        command.args(["--exact", test, "--nocapture"]);
    }
    command
}

/// In a child of [`run_in_child_serving`]: sends `request` (one line) to the parent and returns
/// its answer.
///
/// # Panics
/// When this process is no such child, or the parent gave no answer.
pub fn ask_parent(request: &str) -> String {
    assert!(child_part().is_some(), "only a child asks its parent");
    assert!(!request.contains('\n'), "a request is one line: {request:?}");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{REQUEST}{request}").and_then(|()| stdout.flush()).expect("write to the parent");
    drop(stdout);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).expect("read the parent's answer");
    assert!(answer.ends_with('\n'), "the parent gave no answer to {request:?}");
    answer.pop();
    answer
}

/// A child process killed when dropped (its parent panicked before waiting for it).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
