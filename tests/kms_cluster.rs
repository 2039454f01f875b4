//! The KMS behind a balancer, as Cosmian's high-availability guide deploys it (issue 20): KMS
//! servers are stateless, several run on one PostgreSQL behind haproxy, and a client is given
//! the balancer's URL only. All of it from Debian 12's packages (`postgresql`, `haproxy`).
//!
//! - A cluster of two KMS nodes: `cosmian-ssh-agent` and `ssh -I` with the provider keep logging
//!   in (Debian's OpenSSH 9.2) while one node is killed, brought back, then the other: no login
//!   fails, and the agent is never restarted.
//! - A balancer that closes idle connections: the agent's kept-alive connection is closed by
//!   haproxy between two logins; the second login succeeds at once.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    Ckms, CosmianAgent, Haproxy, KmsServer, OpenSsh, Postgres, Sshd, current_user, output_text as text, provider_lib,
    ssh_command, write_provider_config,
};

/// The agent cargo built with this test.
const AGENT: &str = env!("CARGO_BIN_EXE_cosmian-ssh-agent");

/// What happens to the cluster before each phase of the first test; logins run throughout.
const PHASES: [&str; 5] = ["both nodes up", "node 1 killed", "node 1 back", "node 2 killed", "node 2 back"];
/// Logins of each kind (agent, `ssh -I`) in every phase, at least.
const LOGINS_PER_PHASE: usize = 10;
/// How long one phase may take to collect its logins.
const PHASE_TIMEOUT: Duration = Duration::from_secs(40);

/// The provider's environment (the agent's or `ssh -I`'s): the configuration, a debug log in
/// `logs`, keys tagged `ssh-auth`.
fn provider_env(config: &Path, logs: &Path) -> [(&'static str, PathBuf); 4] {
    [
        ("COSMIAN_KMS_CLI_CONF", config.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", "ssh-auth".into()),
    ]
}

/// The agent's key of this type (`ssh-ed25519`, `ecdsa-sha2-nistp256`) as `ssh-add -L` prints
/// it: the line sshd is given to authorize.
fn listed_key(agent: &CosmianAgent, key_type: &str) -> String {
    let out = agent.command(OpenSsh::debian(), "ssh-add").arg("-L").output().unwrap();
    assert!(out.status.success(), "ssh-add -L: {}\nagent:\n{}", text(&out), agent.log());
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let key = listed.lines().find(|l| l.starts_with(&format!("{key_type} ")));
    key.unwrap_or_else(|| panic!("the agent lists no {key_type} key:\n{listed}")).to_owned()
}

/// Did the login print `marker` and exit 0?
fn logged_in(out: &Output, marker: &str) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker
}

/// How many logins sshd accepted with a key of this type (`ED25519`, `ECDSA`).
fn accepted(sshd: &Sshd, key_type: &str) -> usize {
    let accepted = format!("Accepted publickey for {} from 127.0.0.1", current_user());
    sshd.log().lines().filter(|l| l.contains(&accepted) && l.contains(&format!("ssh2: {key_type} "))).count()
}

/// The last `lines` lines of a log, for failure messages.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A way to log in: runs `echo MARKER` on an sshd.
type LogsIn<'a> = dyn Fn(&str) -> Output + Sync + 'a;

/// One login of the first test.
struct Login {
    kind: &'static str,
    /// The phase it started in.
    phase: usize,
    ok: bool,
    /// The output, kept for failures only.
    failure: Option<String>,
}

/// Sets the flag when dropped, a panic included: the login threads stop, so the scope ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Two KMS 5.28 nodes on one PostgreSQL 15 behind haproxy (TCP mode, health checks), keys
/// created with `ckms` through the balancer. A running `cosmian-ssh-agent` given the balancer's
/// URL serves an Ed25519 key to OpenSSH 9.2 (which cannot take Ed25519 from a provider), and
/// `ssh -I` with the provider signs with a P-256 key, both logging in continuously, one after
/// the other, while node 1 is killed, started again, then node 2 killed and started again.
/// Every login of every phase succeeds, sshd accepted each, the agent never exited, haproxy
/// saw each node go down (and up), and both nodes signed.
#[test]
fn no_login_fails_while_the_nodes_of_a_cluster_are_killed_and_restarted() {
    let started = Instant::now();
    let postgres = Postgres::start();
    let database = postgres.kms_args();
    let database: Vec<&str> = database.iter().map(String::as_str).collect();
    // One after the other: the first creates the tables, the second finds them.
    let mut nodes = [KmsServer::start_with_args(&database), KmsServer::start_with_args(&database)];
    let haproxy = Haproxy::start(&[nodes[0].port(), nodes[1].port()], Duration::from_secs(30));
    let ckms = Ckms::at_url(&haproxy.url(), "");
    let p256 = ckms.create_ec_key_pair("nist-p256", &["ssh-auth"]).private_id;
    let ed25519 = ckms.create_ec_key_pair("ed25519", &["ssh-auth"]).private_id;

    let logs = tempfile::tempdir().unwrap();
    let config = write_provider_config(logs.path(), &haproxy.url(), "");
    let env = provider_env(&config, logs.path());
    let mut agent = CosmianAgent::start(Path::new(AGENT), env.clone(), &[]);
    let openssh = OpenSsh::debian();
    let agent_sshd = Sshd::start_on(openssh, &listed_key(&agent, "ssh-ed25519"), "");
    let provider_sshd = Sshd::start_on(openssh, &listed_key(&agent, "ecdsa-sha2-nistp256"), "");
    let sock = agent.sock();
    let lib = provider_lib();
    let through_agent =
        |marker: &str| ssh_command(&agent_sshd).env("SSH_AUTH_SOCK", &sock).run(&format!("echo {marker}"));
    let with_provider = |marker: &str| {
        let ssh = env.iter().fold(ssh_command(&provider_sshd).provider(&lib), |ssh, (k, v)| ssh.env(k, v));
        ssh.run(&format!("echo {marker}"))
    };
    let set_up = started.elapsed();

    let phase = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let logins: Mutex<Vec<Login>> = Mutex::new(Vec::new());
    let count = |kind: &str, in_phase: usize| {
        logins.lock().unwrap().iter().filter(|l| l.kind == kind && l.phase == in_phase).count()
    };
    let logins_started = Instant::now();
    thread::scope(|scope| {
        let kinds: [(&'static str, &LogsIn); 2] = [("agent", &through_agent), ("ssh -I", &with_provider)];
        for (kind, login) in kinds {
            let (phase, stop, logins) = (&phase, &stop, &logins);
            scope.spawn(move || {
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let in_phase = phase.load(Ordering::SeqCst);
                    let marker = format!("login-{n}");
                    let out = login(&marker);
                    let ok = logged_in(&out, &marker);
                    let failure =
                        (!ok).then(|| format!("{kind} login {n} in phase {}: {}", PHASES[in_phase], text(&out)));
                    logins.lock().unwrap().push(Login { kind, phase: in_phase, ok, failure });
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        for (current, name) in PHASES.iter().enumerate() {
            let deadline = Instant::now() + PHASE_TIMEOUT;
            while count("agent", current) < LOGINS_PER_PHASE || count("ssh -I", current) < LOGINS_PER_PHASE {
                assert!(Instant::now() < deadline, "phase \"{name}\": too few logins after {PHASE_TIMEOUT:?}");
                thread::sleep(Duration::from_millis(50));
            }
            match current + 1 {
                1 => nodes[0].stop(),
                2 => nodes[0].restart(),
                3 => nodes[1].stop(),
                4 => nodes[1].restart(),
                _ => break,
            }
            phase.store(current + 1, Ordering::SeqCst);
        }
    });

    let logins = logins.into_inner().unwrap();
    let elapsed = logins_started.elapsed();
    let mut summary = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        let of = |kind: &str| logins.iter().filter(|l| l.kind == kind && l.phase == i).count();
        let failed = logins.iter().filter(|l| l.phase == i && !l.ok).count();
        summary.push(format!("{name}: {} agent + {} ssh -I logins, {failed} failed", of("agent"), of("ssh -I")));
    }
    println!("set-up {set_up:.1?}, logins {elapsed:.1?}:\n  {}", summary.join("\n  "));
    let failures: Vec<&str> = logins.iter().filter_map(|l| l.failure.as_deref()).collect();
    let provider_log = std::fs::read_to_string(logs.path().join("cosmian-pkcs11.log")).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} logins failed:\n{}\n{}\n--- agent ---\n{}\n--- haproxy ---\n{}\n--- provider log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        summary.join("\n"),
        agent.log(),
        tail(&haproxy.log(), 40),
        tail(&provider_log, 60)
    );
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());

    // sshd saw each login, with the key each path signs with.
    let of = |kind: &str| logins.iter().filter(|l| l.kind == kind).count();
    assert_eq!(accepted(&agent_sshd, "ED25519"), of("agent"), "{}", agent_sshd.log());
    assert_eq!(accepted(&provider_sshd, "ECDSA"), of("ssh -I"), "{}", provider_sshd.log());
    // The balancer took each killed node out and the restarted one back.
    let log = haproxy.log();
    for event in ["kms/node1 is DOWN", "kms/node1 is UP", "kms/node2 is DOWN"] {
        assert!(log.contains(event), "haproxy never said \"{event}\":\n{log}");
    }
    // Both nodes signed for each: the keys one node created are the other's too (one
    // database), and a kill cut the agent's kept-alive connection at least once (it signs
    // on the node it is connected to, and moved).
    for (i, node) in nodes.iter().enumerate() {
        let events = node.audit_events();
        for (who, key) in [("the agent", &ed25519), ("ssh -I", &p256)] {
            let signed = events.iter().any(|e| e.operation == "Sign" && e.object_uid.as_ref() == Some(key));
            assert!(signed, "node {} never signed for {who}:\n{}", i + 1, tail(&node.log(), 20));
        }
    }
}

/// haproxy closing connections idle for 1 s (`timeout client`/`timeout server`), in front of
/// one KMS: the agent logs in, its kept-alive connection sits idle until haproxy closes it
/// (haproxy logs the session ended by the idle timeout), then the next login succeeds at once
/// (ssh exits 0, sshd accepted it) over a new connection (haproxy logs another session), and
/// the KMS signed twice; the agent never exited.
#[test]
fn a_login_after_the_balancer_closed_the_idle_connection_succeeds_at_once() {
    let started = Instant::now();
    let kms = KmsServer::start();
    Ckms::new(&kms).create_ec_key_pair("ed25519", &["ssh-auth"]);
    let idle = Duration::from_secs(1);
    let haproxy = Haproxy::start(&[kms.port()], idle);
    let logs = tempfile::tempdir().unwrap();
    let config = write_provider_config(logs.path(), &haproxy.url(), "");
    let mut agent = CosmianAgent::start(Path::new(AGENT), provider_env(&config, logs.path()), &[]);
    let sshd = Sshd::start_on(OpenSsh::debian(), &listed_key(&agent, "ssh-ed25519"), "");
    let sock = agent.sock();
    let login = |marker: &str| ssh_command(&sshd).env("SSH_AUTH_SOCK", &sock).run(&format!("echo {marker}"));
    let closed_idle = || haproxy.sessions().iter().filter(|s| s.closed_idle()).count();
    let diagnosis = |agent: &CosmianAgent| {
        let provider_log = std::fs::read_to_string(logs.path().join("cosmian-pkcs11.log")).unwrap_or_default();
        format!(
            "--- agent ---\n{}\n--- haproxy ---\n{}\n--- provider log (tail) ---\n{}",
            agent.log(),
            haproxy.log(),
            tail(&provider_log, 40)
        )
    };

    let out = login("first");
    assert!(logged_in(&out, "first"), "first login: {}\n{}", text(&out), diagnosis(&agent));
    assert_eq!(accepted(&sshd, "ED25519"), 1, "{}", sshd.log());
    // Past the idle timeout, haproxy has closed every connection the agent kept.
    let deadline = Instant::now() + idle * 5;
    while closed_idle() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(idle * 3 / 2);
    let sessions_before = haproxy.sessions().len();
    assert!(closed_idle() > 0, "haproxy closed no idle connection:\n{}", diagnosis(&agent));

    let out = login("second");
    assert!(logged_in(&out, "second"), "second login: {}\n{}", text(&out), diagnosis(&agent));
    assert_eq!(accepted(&sshd, "ED25519"), 2, "{}", sshd.log());
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());
    // The second Sign went over a connection opened after the close: haproxy logs it once it
    // too has sat idle.
    let deadline = Instant::now() + idle * 5;
    while haproxy.sessions().len() == sessions_before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(haproxy.sessions().len() > sessions_before, "no new connection:\n{}", diagnosis(&agent));
    let signs = |kms: &KmsServer| kms.audit_events().iter().filter(|e| e.operation == "Sign").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while signs(&kms) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(signs(&kms), 2, "the KMS did not sign twice:\n{}", diagnosis(&agent));
    println!("haproxy sessions: {:?}; test took {:.1?}", haproxy.sessions(), started.elapsed());
}
