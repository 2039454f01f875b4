//! `cosmian-ssh-agent`, the project's own agent, driven only through the agent protocol
//! (`SSH_AUTH_SOCK`, `IdentityAgent`) by the real OpenSSH clients: every key type logs in,
//! Ed25519 included on OpenSSH 9.2, which cannot load it from a provider; `ssh-add -L` prints
//! what `ssh-keygen -D` prints; RSA with its three signature algorithms; a certificate; file
//! signatures; agent forwarding. Then what an agent must refuse or survive: lock, changes to
//! its keys, another user, malformed and oversized messages, 100 logins at once, the KMS
//! stopped and started under it, and its start in the background (`-s`, `-k`).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use cosmian_pkcs11_testbed::docs::shell_block;
use cosmian_pkcs11_testbed::{
    Ckms, CosmianAgent, DelayRelay, KeyKind, KmsServer, OpenSsh, Sshd, clean_command, current_user,
    output_text as text, provider_lib, ssh_command, write_pin_mode_config, write_provider_config,
};

use crate::certificates::{sign, trusting_sshd};
use crate::logins::rsa_logs_in_with_each_algorithm;
use crate::signing::{SIGNER, allowed_signers, verify};
use crate::{Bed, MANY_KEYS, assert_logged_in, case_dir, provider_env, restarting_kms, using_kms};

/// The agent cargo built with this test.
const AGENT: &str = env!("CARGO_BIN_EXE_cosmian-ssh-agent");

fn agent_program() -> &'static Path {
    Path::new(AGENT)
}

/// Our agent with the provider's configuration (keys tagged `ssh-auth`), logging to `logs`.
fn agent(bed: &Bed, logs: &Path) -> CosmianAgent {
    CosmianAgent::start(agent_program(), provider_env(&bed.config, logs, "ssh-auth"), &[])
}

/// The lines `ssh-add -L` prints through `agent`, sorted.
fn listed(agent: &CosmianAgent, openssh: &OpenSsh) -> Vec<String> {
    let out = agent.command(openssh, "ssh-add").arg("-L").output().unwrap();
    assert!(out.status.success(), "ssh-add -L: {}\nagent:\n{}", text(&out), agent.log());
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// `ssh-add -L` through our agent prints exactly what `ssh-keygen -D` of the provider prints
/// on an OpenSSH that loads every key type (10.1 and later), Ed25519 included, on this release
/// too; `ssh-add -l` shows each key's fingerprint with its label.
pub fn ssh_add_lists_what_ssh_keygen_d_prints(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let logs = case_dir(openssh, "cosmian-agent-list");
    let agent = agent(bed, &logs);
    let reference = OpenSsh::current()
        .ssh_keygen_d(&provider_lib())
        .envs(provider_env(&bed.config, &logs, "ssh-auth"))
        .output()
        .unwrap();
    assert!(reference.status.success(), "{}", text(&reference));
    let mut expected: Vec<String> = String::from_utf8_lossy(&reference.stdout).lines().map(str::to_owned).collect();
    expected.sort();
    assert_eq!(listed(&agent, openssh), expected, "{}", openssh.banner());
    assert!(expected.iter().any(|l| l.starts_with("ssh-ed25519 ")), "{expected:?}");

    let fingerprints = agent.command(openssh, "ssh-add").arg("-l").output().unwrap();
    let fingerprints = String::from_utf8_lossy(&fingerprints.stdout).to_string();
    for (name, key) in &bed.keys {
        assert!(fingerprints.contains(&format!("{name} ({})", key.private_id)), "{name}:\n{fingerprints}");
    }
}

/// Every key type logs in through the agent alone (no provider in ssh): through
/// `SSH_AUTH_SOCK`, and through `IdentityAgent` in the command line for one of them.
pub fn every_key_type_logs_in_through_the_agent(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let logs = case_dir(openssh, "cosmian-agent-logins");
    let agent = agent(bed, &logs);
    for (name, key) in &bed.keys {
        let sshd = Sshd::start_on(openssh, &key.line, MANY_KEYS);
        let marker = format!("cosmian-agent-{name}");
        let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run(&format!("echo {marker}"));
        assert_logged_in(&out, &sshd, &marker, key.sshd_type());
    }
    let key = &bed.keys["p384"];
    let sshd = Sshd::start_on(openssh, &key.line, MANY_KEYS);
    let out = ssh_command(&sshd).opt("-o").opt(format!("IdentityAgent={}", agent.sock().display())).run("echo ia");
    assert_logged_in(&out, &sshd, "ia", "ECDSA");
}

/// An RSA key signs with `rsa-sha2-512`, `rsa-sha2-256` and `ssh-rsa`, as the client asks.
pub fn rsa_signs_with_each_algorithm_the_client_asks_for(openssh: &'static OpenSsh) {
    // The KMS guard is taken inside (a second read guard in one thread could deadlock).
    let agent = agent(crate::bed(), &case_dir(openssh, "cosmian-agent-rsa"));
    rsa_logs_in_with_each_algorithm(openssh, |sshd, _| ssh_command(sshd).env("SSH_AUTH_SOCK", agent.sock()));
}

/// A certificate of a KMS key, put in the agent's certificate folder, is listed after its key
/// and logs in against `TrustedUserCAKeys`.
pub fn a_certificate_in_the_folder_logs_in(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "cosmian-agent-certificate");
    let key = &bed.keys["ed25519"];
    let folder = dir.join("certificates");
    std::fs::create_dir_all(&folder).unwrap();
    let cert = sign(
        openssh,
        bed,
        &folder,
        &key.write_pub(&folder.join("user.pub")),
        &["-I", "kms-user", "-n", current_user(), "-V", "+1h"],
    );
    // A file that is not a certificate is skipped, not fatal.
    std::fs::write(folder.join("junk-cert.pub"), "not a certificate\n").unwrap();
    let args = [OsStr::new("--certificates"), folder.as_os_str()];
    let agent = CosmianAgent::start(agent_program(), provider_env(&bed.config, &dir, "ssh-auth"), &args);
    let lines = listed(&agent, openssh);
    let cert_line = std::fs::read_to_string(&cert).unwrap();
    let cert_b64 = cert_line.split_whitespace().nth(1).unwrap();
    assert!(lines.iter().any(|l| l.split_whitespace().nth(1) == Some(cert_b64)), "{lines:?}");
    // sshd trusts the CA only: only the certificate can log in.
    let sshd = trusting_sshd(openssh, bed, &dir, "");
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo cert-from-our-agent");
    assert_logged_in(&out, &sshd, "cert-from-our-agent", "ED25519-CERT");
}

/// `ssh-keygen -Y sign` through the agent, with a P-256 and an Ed25519 key: the signatures
/// verify.
pub fn ssh_keygen_y_signs_through_the_agent(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "cosmian-agent-sshsig");
    let agent = agent(bed, &dir);
    for name in ["p256", "ed25519", "rsa4096"] {
        let key = &bed.keys[name];
        let message = dir.join(format!("{name}.txt"));
        std::fs::write(&message, format!("signed by {name} through cosmian-ssh-agent\n")).unwrap();
        let key_pub = key.write_pub(&dir.join(format!("{name}.pub")));
        let out = agent
            .command(openssh, "ssh-keygen")
            .args(["-Y", "sign", "-n", "file", "-f"])
            .arg(&key_pub)
            .arg(&message)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}\nagent:\n{}", text(&out), agent.log());
        let good = verify(
            openssh,
            &allowed_signers(&dir, key),
            &message.with_extension("txt.sig"),
            &std::fs::read(&message).unwrap(),
        );
        let said = String::from_utf8_lossy(&good.stdout);
        assert!(good.status.success() && said.contains(&format!("signature for {SIGNER}")), "{name}: {}", text(&good));
    }
}

/// `ssh -A`: on the server, the forwarded agent lists the KMS keys, and a second login from
/// there (to the same sshd) signs through it.
pub fn a_forwarded_agent_signs_a_second_login(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let agent = agent(bed, &case_dir(openssh, "cosmian-agent-forwarding"));
    let key = &bed.keys["ed25519"];
    let sshd = Sshd::start_on(openssh, &key.line, MANY_KEYS);
    let hop = format!(
        "{ssh_add} -l >/dev/null && {ssh} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o BatchMode=yes -o LogLevel=ERROR {user}@127.0.0.1 echo second-hop",
        ssh_add = openssh.program("ssh-add").display(),
        ssh = openssh.program("ssh").display(),
        port = sshd.port(),
        user = current_user()
    );
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).opt("-A").run(&hop);
    assert_logged_in(&out, &sshd, "second-hop", "ED25519");
    let accepted = format!("Accepted publickey for {}", current_user());
    assert_eq!(sshd.log().matches(&accepted).count(), 2, "two logins:\n{}", sshd.log());
}

/// `ssh-add -x` locks (nothing listed, no login), a wrong passphrase does not unlock,
/// `ssh-add -X` with the right one does. Passphrases go through `SSH_ASKPASS`, as without a
/// terminal.
#[test]
fn lock_and_unlock() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let dir = case_dir(openssh, "cosmian-agent-lock");
    let agent = agent(bed, &dir);
    let ssh_add = |flag: &str, passphrase: &str| {
        let askpass = dir.join("askpass");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{passphrase}'\n")).unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut command = agent.command(openssh, "ssh-add");
        command.arg(flag).env("SSH_ASKPASS", &askpass).env("SSH_ASKPASS_REQUIRE", "force").env("DISPLAY", ":0");
        command.stdin(Stdio::null()).output().unwrap()
    };
    let sshd = Sshd::start_on(openssh, &bed.keys["p256"].line, MANY_KEYS);
    let login = || ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo unlocked");

    let out = ssh_add("-x", "correct horse");
    assert!(out.status.success(), "lock: {}", text(&out));
    let out = ssh_add("-l", "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no identities"), "locked lists nothing: {}", text(&out));
    assert!(!login().status.success(), "logged in through a locked agent");
    assert!(!ssh_add("-X", "wrong").status.success(), "a wrong passphrase unlocked");
    let out = ssh_add("-X", "correct horse");
    assert!(out.status.success(), "unlock: {}", text(&out));
    assert_logged_in(&login(), &sshd, "unlocked", "ECDSA");
}

/// Adding a key, removing one or all: refused, and the KMS keys stay listed.
#[test]
fn its_keys_cannot_be_changed() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let dir = case_dir(openssh, "cosmian-agent-read-only");
    let agent = agent(bed, &dir);
    let before = listed(&agent, openssh);
    let local = dir.join("id_local");
    let out = openssh.command("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&local).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pub_file = bed.keys["p256"].write_pub(&dir.join("p256.pub"));
    let attempts: [(&str, Vec<&OsStr>); 4] = [
        ("add", vec![local.as_os_str()]),
        ("remove", vec![OsStr::new("-d"), pub_file.as_os_str()]),
        ("remove all", vec![OsStr::new("-D")]),
        ("add a provider", vec![OsStr::new("-s"), provider_lib().into_os_string().leak()]),
    ];
    for (what, args) in attempts {
        let out = agent.command(openssh, "ssh-add").args(args).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{what} was accepted: {}", text(&out));
    }
    assert_eq!(listed(&agent, openssh), before);
}

/// A client running as another user is disconnected even when the socket's permissions would
/// let it connect (the peer's uid is checked); the agent's own user is served.
#[test]
fn another_user_is_refused() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let dir = case_dir(openssh, "cosmian-agent-other-user");
    let agent = agent(bed, &dir);
    let sock = agent.sock();
    let folder = sock.parent().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(folder), mode(&sock)), (0o700, 0o600), "the socket is private");
    // Open the way for another user, as a careless chmod would.
    for (path, m) in [(folder.parent().unwrap(), 0o755), (folder, 0o755), (sock.as_path(), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let out = clean_command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(openssh.program("ssh-add"))
        .arg("-L")
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "another user was served: {}", text(&out));
    let log = std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap_or_default();
    assert!(log.contains("a client of another user was refused") && log.contains("uid=65534"), "{log}");
    assert!(!listed(&agent, openssh).is_empty());
}

/// A message longer than 256 KiB, a malformed one, or a client that hangs up mid-message:
/// that client is disconnected, the agent goes on serving others.
#[test]
fn malformed_and_oversized_messages_close_that_client_only() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let mut agent = agent(bed, &case_dir(openssh, "cosmian-agent-malformed"));
    let idle = UnixStream::connect(agent.sock()).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("oversized", (256 * 1024 + 1u32).to_be_bytes().to_vec()),
        ("empty", vec![0, 0, 0, 0]),
        ("truncated sign request", vec![0, 0, 0, 5, 13, 0, 0, 0, 9]),
        ("huge string inside", vec![0, 0, 0, 9, 13, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
    ];
    for (what, bytes) in cases {
        let mut client = UnixStream::connect(agent.sock()).unwrap();
        client.write_all(&bytes).unwrap();
        let mut answer = Vec::new();
        client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let read = client.read_to_end(&mut answer);
        assert!(read.is_ok() && answer.is_empty(), "{what}: not disconnected ({read:?}, {answer:?})");
    }
    let mut half = UnixStream::connect(agent.sock()).unwrap();
    half.write_all(&[0, 0, 0, 100, 11]).unwrap();
    drop(half);
    assert!(agent.is_running(), "the agent died:\n{}", agent.log());
    // The client that stayed connected all along is still served.
    let mut idle = idle;
    idle.write_all(&[0, 0, 0, 1, 11]).unwrap();
    let mut len = [0u8; 4];
    idle.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    idle.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 12, "an identities answer");
    assert!(!listed(&agent, openssh).is_empty());
}

/// 100 logins at once through one agent all succeed.
#[test]
fn a_hundred_logins_at_once() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let agent = agent(bed, &case_dir(openssh, "cosmian-agent-concurrent"));
    let sshd = Sshd::start_on(openssh, &bed.keys["p256"].line, &format!("MaxStartups 200\n{MANY_KEYS}"));
    let children: Vec<_> = (0..100)
        .map(|i| {
            ssh_command(&sshd)
                .env("SSH_AUTH_SOCK", agent.sock())
                .command(&format!("echo login-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let failed: Vec<String> = children
        .into_iter()
        .enumerate()
        .filter_map(|(i, child)| {
            let out = child.wait_with_output().unwrap();
            let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == format!("login-{i}");
            (!ok).then(|| format!("login {i}: {}", text(&out)))
        })
        .collect();
    assert!(failed.is_empty(), "{} of 100 failed:\n{}", failed.len(), failed.join("\n"));
}

/// The KMS stopped under a running agent, and another agent started while it is down: logins
/// fail cleanly (ssh says why, the agents keep running); the KMS started again: logins work
/// through both, with no restart of either.
#[test]
fn the_kms_stopped_and_started_under_a_running_agent() {
    let (bed, _only_user) = restarting_kms();
    let openssh = OpenSsh::debian();
    let mut agent = agent(bed, &case_dir(openssh, "cosmian-agent-kms-restart"));
    let sshd = Sshd::start_on(openssh, &bed.keys["ed25519"].line, MANY_KEYS);
    let login = |agent: &CosmianAgent, marker: &str| {
        ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run(&format!("echo {marker}"))
    };
    assert_logged_in(&login(&agent, "before"), &sshd, "before", "ED25519");
    let mut kms = bed.kms.lock().unwrap();
    kms.stop();
    // A second agent starts while the KMS is down: it runs, and says why it signs nothing.
    let mut late = CosmianAgent::start(
        agent_program(),
        provider_env(&bed.config, &case_dir(openssh, "cosmian-agent-kms-down-at-start"), "ssh-auth"),
        &[],
    );
    for (which, agent) in [("running", &agent), ("started while down", &late)] {
        let out = login(agent, "down");
        assert!(!out.status.success(), "{which}: logged in with the KMS down");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{which}: {}", text(&out));
    }
    let down_at = std::time::Instant::now();
    kms.restart();
    drop(kms);
    assert!(agent.is_running() && late.is_running(), "{}\n{}", agent.log(), late.log());
    assert_logged_in(&login(&agent, "after"), &sshd, "after", "ED25519");
    // A listing that failed is tried again 5 s later (as by the provider): then it signs.
    std::thread::sleep(std::time::Duration::from_secs(5).saturating_sub(down_at.elapsed()));
    assert_logged_in(&login(&late, "recovered"), &sshd, "recovered", "ED25519");
}

/// The key list is listed again in the background (thread `agent-keys`) before it gets old:
/// a listing past `COSMIAN_PKCS11_KEY_CACHE_SECONDS` is answered from it, never listed in the
/// client's own path (thread `agent-client`), and the first login already found it listed.
#[test]
fn the_key_list_is_kept_fresh_in_the_background() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let logs = case_dir(openssh, "cosmian-agent-fresh");
    let mut envs: Vec<(&str, std::path::PathBuf)> = provider_env(&bed.config, &logs, "ssh-auth").into();
    envs.push(("COSMIAN_PKCS11_KEY_CACHE_SECONDS", "6".into()));
    let agent = CosmianAgent::start(agent_program(), envs, &[]);
    let first = listed(&agent, openssh);
    std::thread::sleep(std::time::Duration::from_secs(9));
    assert_eq!(listed(&agent, openssh), first, "the keys listed after the key list's lifetime");
    let log = std::fs::read_to_string(logs.join("cosmian-pkcs11.log")).unwrap();
    let loads: Vec<&str> = log.lines().filter(|l| l.contains("key list loaded from the KMS")).collect();
    assert!(loads.iter().all(|l| l.contains("agent-keys")), "a listing in a client's path:\n{}", loads.join("\n"));
    assert!(loads.len() >= 2, "listed once only, never again in the background:\n{}", loads.join("\n"));
}

/// `eval "$(cosmian-ssh-agent -s)"`: the agent goes to the background and prints the
/// variables; a login works through them; `-k` stops it and removes its socket.
#[test]
fn started_in_the_background_and_stopped() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let dir = case_dir(openssh, "cosmian-agent-background");
    let sock = dir.join("run").join("agent.sock");
    let out = clean_command(agent_program())
        .arg("-s")
        .arg("-a")
        .arg(&sock)
        .envs(provider_env(&bed.config, &dir, "ssh-auth"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains(&format!("SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;", sock.display())), "{said}");
    let pid = said
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no SSH_AGENT_PID in {said}"))
        .to_owned();
    let sshd = Sshd::start_on(openssh, &bed.keys["p521"].line, MANY_KEYS);
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", &sock).run("echo background");
    assert_logged_in(&out, &sshd, "background", "ECDSA");

    let out = clean_command(agent_program()).arg("-k").env("SSH_AGENT_PID", &pid).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unset SSH_AUTH_SOCK;"), "{}", text(&out));
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !Path::new(&format!("/proc/{pid}")).exists() && !sock.exists()
    });
    assert!(gone, "the agent {pid} or its socket is still there");
}

/// The README's agent lines, run as written by bash (Debian's `ssh-add`, the agent from this
/// build on `PATH`, its socket under `XDG_RUNTIME_DIR`): `ssh-add -L` lists the KMS keys; the
/// agent is stopped with `-k` afterwards.
#[test]
fn the_readme_agent_lines_run_as_written() {
    let (bed, _kms) = using_kms();
    let dir = case_dir(OpenSsh::debian(), "cosmian-agent-readme");
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let block = shell_block("README.md", "agent-quick-start").unwrap();
    let script = format!("set -e\n{block}eval \"$(cosmian-ssh-agent -k)\"\n");
    let bin = agent_program().parent().unwrap();
    let out = clean_command("bash")
        .args(["-c", &script])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("XDG_RUNTIME_DIR", &runtime)
        .envs(provider_env(&bed.config, &dir, "ssh-auth"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for key in bed.keys.values() {
        let blob = key.line.split(' ').take(2).collect::<Vec<_>>().join(" ");
        assert!(listed.contains(&blob), "{blob} not listed by the README's ssh-add -L:\n{}", text(&out));
    }
    assert!(!runtime.join("cosmian-ssh-agent/socket").exists(), "the agent's socket is left after -k");
}

/// Nothing but the command's own output on stdout: `--version`, and a wrong argument is an
/// error on stderr with status 2.
#[test]
fn command_line() {
    let out = Command::new(agent_program()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("cosmian-ssh-agent {}", env!("CARGO_PKG_VERSION")));
    let out = Command::new(agent_program()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty() && String::from_utf8_lossy(&out.stderr).contains("unknown argument"),
        "{}",
        text(&out)
    );
}

/// PIN mode (`pkcs11_use_pin_as_access_token`, a KMS with bearer-token authentication): the
/// agent starts locked and lists nothing; `ssh-add -X` with a PIN the KMS refuses keeps it
/// locked, with the right one it lists the key and a login signs; `ssh-add -x` forgets the PIN.
/// The PIN is in no log.
#[test]
fn pin_mode_starts_locked_until_ssh_add_gives_the_pin() {
    let openssh = OpenSsh::debian();
    let mut kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let key = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    let pin = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let token_id = ckms.create_api_token_key(&pin);
    kms.restart_with_args(&["--api-token-id", &token_id]);
    let dir = case_dir(openssh, "cosmian-agent-pin-mode");
    let config = write_pin_mode_config(&dir, &kms.url(), "");
    let agent = CosmianAgent::start(agent_program(), provider_env(&config, &dir, "ssh-auth"), &[]);
    let askpass = dir.join("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$TEST_ANSWER\"\n").unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ssh_add = |args: &[&str], answer: &str| {
        agent
            .command(openssh, "ssh-add")
            .args(args)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("TEST_ANSWER", answer)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let no_identities = |out: &std::process::Output| {
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stdout).contains("no identities")
    };
    let out = ssh_add(&["-L"], "");
    assert!(no_identities(&out), "locked at start: {}", text(&out));
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let out = ssh_add(&["-X"], &wrong);
    assert!(!out.status.success(), "a wrong PIN unlocked: {}", text(&out));
    assert!(no_identities(&ssh_add(&["-L"], "")), "still locked after a wrong PIN");

    let out = ssh_add(&["-X"], &pin);
    assert!(out.status.success(), "{}\nagent:\n{}", text(&out), agent.log());
    let out = ssh_add(&["-L"], "");
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("ecdsa-sha2-nistp256 ") && line.lines().count() == 1, "{line}");
    assert!(line.contains(&key.private_id), "the key's label names its id: {line}");
    let sshd = Sshd::start_on(openssh, line.trim(), MANY_KEYS);
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo with-the-pin");
    assert_logged_in(&out, &sshd, "with-the-pin", "ECDSA");

    let out = ssh_add(&["-x"], "anything");
    assert!(out.status.success(), "{}", text(&out));
    assert!(no_identities(&ssh_add(&["-L"], "")), "the PIN is forgotten once locked");
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo locked");
    assert!(!out.status.success(), "a login through the locked agent: {}", text(&out));

    let log = std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap() + &agent.log();
    assert!(log.contains("PIN mode: the KMS accepted the PIN"), "{log}");
    assert!(!log.contains(&pin) && !log.contains(&wrong), "a PIN in the logs");
}

/// A login 30 s after the last one signs on the agent's kept connection: no new TCP or TLS to
/// the KMS (the KMS keeps idle connections 120 s, the agent 110 s; ureq's default of 15 s
/// would have reconnected). Counted by a relay in front of the KMS.
#[test]
fn a_login_half_a_minute_after_the_last_reuses_the_connection() {
    let (bed, _kms) = using_kms();
    let openssh = OpenSsh::debian();
    let dir = case_dir(openssh, "cosmian-agent-idle");
    let relay = DelayRelay::start(bed.kms.lock().unwrap().port(), std::time::Duration::ZERO);
    let config = write_provider_config(&dir, &format!("http://127.0.0.1:{}", relay.port()), "");
    let agent = CosmianAgent::start(agent_program(), provider_env(&config, &dir, "ssh-auth"), &[]);
    let sshd = Sshd::start_on(openssh, &bed.keys["p256"].line, MANY_KEYS);
    let login = |marker: &str| ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run(&format!("echo {marker}"));
    assert_logged_in(&login("first"), &sshd, "first", "ECDSA");
    std::thread::sleep(std::time::Duration::from_secs(30));
    relay.reset();
    assert_logged_in(&login("idle"), &sshd, "idle", "ECDSA");
    let trips = relay.round_trips();
    assert_eq!((trips.connections, trips.exchanges), (0, 1), "the Sign alone, on the kept connection");
}
