//! Reliability under faults and load, through the C ABI (the `cryptoki` crate) and through
//! OpenSSH: a KMS that is down, stalls, answers garbage, 500, 422 or 401; a kept-alive
//! connection the KMS dropped; a KMS restarted under ssh-agent; threads signing at once; a
//! stalled signature that must hold up no other session.
//!
//! Faults come from [`FaultProxy`], a loopback HTTP relay in front of the real KMS that
//! forwards each request or, on command, stalls, answers garbage or an HTTP error, drops the
//! connection or stops listening. It is not a mock: every successful answer is the real KMS's.
//!
//! The KMS and its key are made once per test process. A test that loads the module does so in
//! a child process of its own (PKCS#11 state is per process), aimed at a relay of its own, with
//! a 1.5 s request timeout; the child asks its parent to stop and start the KMS. The tests take
//! turns, since they share the KMS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, OpenSsh, SshAgent, Sshd, ask_parent, child_part, free_port, provider_lib,
    run_in_child_serving, ssh_command, ssh_keygen_d, write_provider_config,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::Digest;

/// The module's request timeout in a module's child (`COSMIAN_PKCS11_REQUEST_TIMEOUT_MS`).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Slack on top of a timeout for "it did not hang" bounds: a shared, loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

// ---- the fault-injecting relay ----------------------------------------------------------

/// What [`FaultProxy`] does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relays to the real KMS (one upstream connection per client connection).
    Forward,
    /// Reads the request and never answers (keeps the connection open).
    Stall,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Answers HTTP 200 with a body that is not JSON-TTLV.
    NotKmip,
    /// Answers this status with this text body, as the KMS does.
    Status(u16, &'static str),
    /// Reads the request and closes the connection without a word.
    CloseWithoutAnswer,
    /// Closes a connection without answering when a request arrives on it after the first:
    /// a kept-alive connection the server has dropped. First requests are relayed.
    DropReused,
    /// Not listening at all: connections are refused.
    Refuse,
}

struct Relay {
    port: u16,
    upstream: Option<u16>,
    mode: Mutex<Mode>,
    listener: Mutex<Option<TcpListener>>,
    /// Open client connections by number, to cut them all when the mode becomes
    /// [`Mode::Refuse`].
    live: Mutex<Vec<(usize, TcpStream)>>,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// A loopback HTTP relay that injects faults; see [`Mode`].
#[derive(Clone)]
struct FaultProxy(Arc<Relay>);

fn bind(port: u16) -> TcpListener {
    // std sets SO_REUSEADDR on Unix: the port can be bound again after Refuse.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    listener.set_nonblocking(true).unwrap();
    listener
}

impl FaultProxy {
    /// A relay in front of the KMS on `upstream` (`None`: a bare fault listener).
    fn start(upstream: Option<u16>, mode: Mode) -> FaultProxy {
        let port = free_port();
        let relay = Arc::new(Relay {
            port,
            upstream,
            mode: Mutex::new(Mode::Forward),
            listener: Mutex::new(Some(bind(port))),
            live: Mutex::default(),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let proxy = FaultProxy(relay.clone());
        proxy.set(mode);
        std::thread::spawn(move || accept_loop(relay));
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    fn set(&self, mode: Mode) {
        let relay = &self.0;
        *relay.mode.lock().unwrap() = mode;
        let mut listener = relay.listener.lock().unwrap();
        if mode == Mode::Refuse {
            *listener = None;
            for (_, connection) in relay.live.lock().unwrap().drain(..) {
                let _ = connection.shutdown(Shutdown::Both);
            }
        } else if listener.is_none() {
            *listener = Some(bind(relay.port));
        }
    }

    /// Requests received so far (whatever was done with them).
    fn requests(&self) -> usize {
        self.0.requests.load(Ordering::SeqCst)
    }
}

fn accept_loop(relay: Arc<Relay>) {
    loop {
        let accepted = relay.listener.lock().unwrap().as_ref().map(TcpListener::accept);
        match accepted {
            Some(Ok((stream, _))) => {
                stream.set_nonblocking(false).unwrap();
                let number = relay.connections.fetch_add(1, Ordering::SeqCst);
                relay.live.lock().unwrap().push((number, stream.try_clone().unwrap()));
                let relay = relay.clone();
                std::thread::spawn(move || {
                    serve(stream.try_clone().unwrap(), &relay);
                    // Closed for good, whatever clone of it is left.
                    let _ = stream.shutdown(Shutdown::Both);
                    relay.live.lock().unwrap().retain(|(n, _)| *n != number);
                });
            }
            Some(Err(e)) if e.kind() != std::io::ErrorKind::WouldBlock => panic!("accept: {e}"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Reads one HTTP/1.1 message framed by `Content-Length` (requests from ureq, answers from
/// the KMS); `None` at a clean end of stream.
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    let mut length = 0;
    loop {
        let before = message.len();
        if reader.read_until(b'\n', &mut message)? == 0 {
            return if message.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        let line = String::from_utf8_lossy(&message[before..]).to_ascii_lowercase();
        assert!(!line.starts_with("transfer-encoding"), "the relay only frames by content-length: {line}");
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let start = message.len();
    message.resize(start + length, 0);
    reader.read_exact(&mut message[start..])?;
    Ok(Some(message))
}

fn serve(client: TcpStream, relay: &Relay) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    let mut served = 0;
    while let Ok(Some(request)) = read_message(&mut reader) {
        relay.requests.fetch_add(1, Ordering::SeqCst);
        let mode = *relay.mode.lock().unwrap();
        let answer: Vec<u8> = match mode {
            Mode::Forward => match forward(relay.upstream, &mut upstream, &request) {
                Some(answer) => answer,
                None => return,
            },
            Mode::DropReused if served == 0 => match forward(relay.upstream, &mut upstream, &request) {
                Some(answer) => answer,
                None => return,
            },
            Mode::Stall => {
                // Hold the connection until the client gives up.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return;
            }
            Mode::Garbage => {
                let _ = client.write_all(b"\x00\x07SSH-2.0-not-http\xff\xfe\r\n\r\n");
                return;
            }
            Mode::NotKmip => http(200, "this is {not JSON-TTLV"),
            Mode::Status(code, body) => http(code, body),
            Mode::CloseWithoutAnswer | Mode::DropReused | Mode::Refuse => return,
        };
        if client.write_all(&answer).is_err() {
            return;
        }
        served += 1;
    }
}

fn http(code: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} Fault\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Relays one request to the KMS on this client connection's upstream connection.
fn forward(
    port: Option<u16>,
    upstream: &mut Option<(BufReader<TcpStream>, TcpStream)>,
    request: &[u8],
) -> Option<Vec<u8>> {
    if upstream.is_none() {
        let stream = TcpStream::connect(("127.0.0.1", port?)).ok()?;
        *upstream = Some((BufReader::new(stream.try_clone().ok()?), stream));
    }
    let (reader, writer) = upstream.as_mut()?;
    writer.write_all(request).ok()?;
    let answer = read_message(reader).ok().flatten();
    if answer.is_none() {
        *upstream = None;
    }
    answer
}

// ---- the module, a KMS, a key ------------------------------------------------------------

/// In a module's child: the KMS's port.
const KMS_PORT: &str = "RELIABILITY_TEST_KMS_PORT";
/// In a module's child: the private key's id.
const KEY_ID: &str = "RELIABILITY_TEST_KEY_ID";
/// In a module's child: the public key, a PKCS#8 PEM file.
const KEY_PEM: &str = "RELIABILITY_TEST_KEY_PEM";
/// What a module's child asks its parent: to stop the KMS...
const STOP_THE_KMS: &str = "stop the KMS";
/// ...and to start it again, on the same port and database.
const START_THE_KMS: &str = "start the KMS";

/// What the tests share, in the test process.
struct Bed {
    kms: Mutex<KmsServer>,
    /// Logs and configurations, inside the KMS's folder (removed by the test bed at exit).
    dir: PathBuf,
    private_id: String,
    /// The key's `authorized_keys` line, from ckms's export.
    authorized: String,
}

/// The module in a child process: its relay, the key and its verifier.
struct Module {
    proxy: FaultProxy,
    /// The module's log file.
    log: PathBuf,
    pkcs11: Pkcs11,
    slot: Slot,
    private_id: String,
    verifier: p256::ecdsa::VerifyingKey,
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
        let pem = ckms.export_public_pkcs8_pem(&pair.public_id);
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let pem_file = dir.join("key.pem");
        std::fs::write(&pem_file, &pem).unwrap();
        let converted = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem_file).output().unwrap();
        assert!(converted.status.success(), "{}", String::from_utf8_lossy(&converted.stderr));
        let authorized = String::from_utf8(converted.stdout).unwrap().trim().to_owned();
        Bed { kms: Mutex::new(kms), dir, private_id: pair.private_id, authorized }
    })
}

/// The tests share the KMS (and one restarts it): one at a time.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// In the test process: its turn, then this test run again in a child with the module's
/// environment, serving its requests to stop and start the KMS; `None` once the child passed.
/// In the child: the module, loaded once.
fn module() -> Option<&'static Module> {
    let Some(dir) = child_part() else {
        let _turn = turn();
        let bed = bed();
        let dir = bed.dir.join(std::thread::current().name().expect("a test thread"));
        let env = [
            ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml").display().to_string()),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs").display().to_string()),
            ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
            ("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT.as_millis().to_string()),
            (KMS_PORT, bed.kms.lock().unwrap().port().to_string()),
            (KEY_ID, bed.private_id.clone()),
            (KEY_PEM, bed.dir.join("key.pem").display().to_string()),
        ];
        std::fs::create_dir_all(&dir).unwrap();
        run_in_child_serving(dir.to_str().unwrap(), env, |request| {
            let mut kms = bed.kms.lock().unwrap();
            match request {
                STOP_THE_KMS => kms.stop(),
                START_THE_KMS => kms.restart(),
                other => panic!("the child asked {other:?}"),
            }
            "done".to_owned()
        });
        return None;
    };
    static MODULE: OnceLock<Module> = OnceLock::new();
    Some(MODULE.get_or_init(|| {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        let pem = std::fs::read_to_string(var(KEY_PEM)).unwrap();
        let verifier = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();
        let proxy = FaultProxy::start(Some(var(KMS_PORT).parse().unwrap()), Mode::Forward);
        let dir = PathBuf::from(dir);
        write_provider_config(&dir, &proxy.url(), "");
        let pkcs11 = Pkcs11::new(provider_lib()).expect("dlopen the provider");
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let log = dir.join("logs").join("cosmian-pkcs11.log");
        Module { proxy, log, pkcs11, slot, private_id: var(KEY_ID), verifier }
    }))
}

/// In a module's child: the module.
fn loaded() -> &'static Module {
    module().expect("the module is loaded in a child process")
}

fn session() -> Session {
    loaded().pkcs11.open_ro_session(loaded().slot).unwrap()
}

/// The private key, found as ssh finds it before each signature: by class and CKA_ID.
fn private_key(s: &Session) -> ObjectHandle {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(loaded().private_id.as_bytes().to_vec())];
    let found = s.find_objects(&template).unwrap();
    assert_eq!(found.len(), 1);
    found[0]
}

/// One CKM_ECDSA signature over SHA-256(`message`), verified.
fn sign(s: &Session, message: &str) -> Result<(), Error> {
    let digest = sha2::Sha256::digest(message.as_bytes());
    let raw = s.sign(&Mechanism::Ecdsa, private_key(s), &digest)?;
    let signature = p256::ecdsa::Signature::from_slice(&raw).unwrap();
    loaded().verifier.verify_prehash(&digest, &signature).unwrap_or_else(|e| panic!("{message}: {e}"));
    Ok(())
}

fn log_len() -> usize {
    std::fs::metadata(&loaded().log).map(|m| m.len() as usize).unwrap_or(0)
}

fn log_since(offset: usize) -> String {
    let log = std::fs::read(&loaded().log).unwrap_or_default();
    String::from_utf8_lossy(&log[offset.min(log.len())..]).into_owned()
}

// ---- faults at signing time --------------------------------------------------------------

/// Each fault, once the key list is loaded: C_Sign answers the code error.rs names, within
/// the request timeout, with a log line saying what happened; the next signature, with the
/// KMS back, works on the same session.
#[test]
fn every_kms_fault_gives_its_code_in_time_and_a_log_line() {
    let Some(module) = module() else {
        return;
    };
    let s = session();
    sign(&s, "before the faults").unwrap();
    let cases = [
        (Mode::Refuse, RvError::DeviceError, "KMS unreachable", 0),
        (Mode::Stall, RvError::DeviceError, "KMS did not answer in time", 1),
        (Mode::Garbage, RvError::DeviceError, "KMS answer not understood", 1),
        (Mode::NotKmip, RvError::DeviceError, "KMS answer not understood: not KMIP JSON-TTLV", 1),
        (
            Mode::Status(500, "Internal server error"),
            RvError::DeviceError,
            "KMS answered HTTP 500: Internal server error",
            1,
        ),
        (
            Mode::Status(422, "Item_Not_Found: Sign: no valid key for id: x"),
            RvError::FunctionFailed,
            "KMS refused the request: Item_Not_Found",
            1,
        ),
        (Mode::Status(401, ""), RvError::UserNotLoggedIn, "KMS refused the credentials: HTTP 401", 1),
        // Sent again once on a new connection, then given up.
        (Mode::CloseWithoutAnswer, RvError::DeviceError, "KMS closed the connection without answering", 2),
    ];
    for (mode, expected, words, requests) in cases {
        module.proxy.set(mode);
        let (log_start, requests_before) = (log_len(), module.proxy.requests());
        let started = Instant::now();
        let result = sign(&s, &format!("during {mode:?}"));
        let took = started.elapsed();
        match result {
            Err(Error::Pkcs11(rv, _)) => assert_eq!(rv, expected, "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(took < REQUEST_TIMEOUT + SLACK, "{mode:?}: C_Sign took {took:?}");
        if mode == Mode::Stall {
            assert!(took >= REQUEST_TIMEOUT - Duration::from_millis(100), "the timeout ended it: {took:?}");
        }
        let log = log_since(log_start);
        assert_eq!(module.proxy.requests() - requests_before, requests, "{mode:?}: requests sent; log:\n{log}");
        assert!(
            log.lines().any(|l| l.contains(" WARN ") && l.contains(&format!("C_Sign: {words}"))),
            "{mode:?}: no warning saying {words:?}:\n{log}"
        );
        println!("fault {mode:?}: {expected:?} after {took:?}, {requests} request(s)");

        module.proxy.set(Mode::Forward);
        sign(&s, &format!("after {mode:?}")).unwrap_or_else(|e| panic!("after {mode:?}: {e}"));
    }
}

/// A kept-alive connection that the KMS dropped is found dead only when the signature request
/// is on it: the signature is sent again, once, on a new connection, and succeeds.
#[test]
fn a_signature_on_a_dropped_kept_alive_connection_is_sent_again_once() {
    let Some(module) = module() else {
        return;
    };
    let s = session();
    sign(&s, "warms a connection").unwrap();
    module.proxy.set(Mode::DropReused);
    let (log_start, requests_before) = (log_len(), module.proxy.requests());
    sign(&s, "on the dropped connection").unwrap();
    let log = log_since(log_start);
    assert_eq!(module.proxy.requests() - requests_before, 2, "one dropped, one answered; log:\n{log}");
    assert!(log.contains("KMS request failed, trying again") && log.contains("operation=\"Sign\""), "{log}");
}

/// The KMS killed under a loaded module: C_Sign fails cleanly (the relay, like a load
/// balancer, drops the connection); once the KMS is back, the next signature works, same
/// module, same session, nothing re-initialized.
#[test]
fn a_kms_restarted_under_the_module_serves_the_next_signature() {
    if module().is_none() {
        return;
    }
    let s = session();
    sign(&s, "before the restart").unwrap();
    ask_parent(STOP_THE_KMS);
    // The relay cannot reach the KMS: it drops the connection, as a load balancer would.
    let err = sign(&s, "while the KMS is down").unwrap_err();
    assert!(matches!(err, Error::Pkcs11(RvError::DeviceError, _)), "{err}");
    ask_parent(START_THE_KMS);
    sign(&s, "after the restart").unwrap();
}

// ---- concurrency -------------------------------------------------------------------------

/// 4 threads with their own sessions, 1,000 signatures each, each one found, signed and
/// verified as ssh does it (C_FindObjects by CKA_ID, C_SignInit, C_Sign), all at once on
/// 2 cores: no error, no deadlock, every signature valid.
#[test]
fn four_threads_sign_a_thousand_times_each() {
    const THREADS: usize = 4;
    const EACH: usize = 1000;
    if module().is_none() {
        return;
    }
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let s = session();
                    for i in 0..EACH {
                        sign(&s, &format!("thread {t} signature {i}"))
                            .unwrap_or_else(|e| panic!("thread {t} #{i}: {e}"));
                    }
                    EACH
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let took = started.elapsed();
    assert_eq!(done, THREADS * EACH);
    println!(
        "{done} signatures verified on {THREADS} threads in {took:?} ({:.0}/s through the relay)",
        done as f64 / took.as_secs_f64()
    );
}

/// While one session's C_Sign waits on a stalled KMS, another session searches objects and
/// reads attributes at once: no lock is held across the network for unrelated sessions.
#[test]
fn a_stalled_signature_holds_up_no_other_session() {
    let Some(module) = module() else {
        return;
    };
    // The key list loaded first, as by a module that has served before: the other session's
    // searches are answered from it.
    private_key(&session());
    module.proxy.set(Mode::Stall);
    let requests_before = module.proxy.requests();
    std::thread::scope(|scope| {
        let signing = scope.spawn(|| {
            let stuck = session();
            stuck.sign(&Mechanism::Ecdsa, private_key(&stuck), &[1; 32])
        });
        // Wait until the signature request is in the stalled KMS's hands.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while module.proxy.requests() == requests_before {
            assert!(Instant::now() < deadline, "the signature request never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let other = session();
        let started = Instant::now();
        for _ in 0..10 {
            let found = private_key(&other);
            let attributes = other.get_attributes(found, &[AttributeType::Label, AttributeType::Id]).unwrap();
            assert_eq!(attributes.len(), 2);
            let public = other.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).unwrap();
            assert_eq!(public.len(), 1);
        }
        let took = started.elapsed();
        assert!(!signing.is_finished(), "the stalled signature ended before the other session was served");
        assert!(took < Duration::from_millis(500), "another session waited {took:?} on the stalled one");
        println!("10 searches and attribute reads on another session while C_Sign stalled: {took:?}");
        let result = signing.join().unwrap();
        assert!(matches!(result, Err(Error::Pkcs11(RvError::DeviceError, _))), "{result:?}");
    });
}

// ---- faults at enumeration time, in processes of their own ---------------------------------

use cosmian_pkcs11_testbed::output_text as text;

/// The environment of a provider in a process of its own, aimed at `url`, logging into `logs`.
fn provider_env(url: &str, logs: &Path) -> Vec<(&'static str, String)> {
    std::fs::create_dir_all(logs).unwrap();
    let config = write_provider_config(logs, url, "");
    vec![
        ("COSMIAN_KMS_CLI_CONF", config.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
        ("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT.as_millis().to_string()),
    ]
}

/// `ssh-keygen -D` (the listing every ssh does first) against a KMS that is down, stalls or
/// answers garbage, 500, 422 or 401: no key, no crash, within the timeout, and a log line
/// saying why. Read-only requests are retried after a refused connection, not after a stall.
#[test]
fn enumeration_faults_leave_an_empty_token_in_time_and_say_why() {
    let _turn = turn();
    let cases = [
        (Mode::Refuse, "KMS unreachable", 3),
        (Mode::Stall, "KMS did not answer in time", 1),
        (Mode::Garbage, "KMS answer not understood", 1),
        (Mode::Status(500, "Internal server error"), "KMS answered HTTP 500: Internal server error", 1),
        (Mode::Status(503, "Service Unavailable"), "KMS answered HTTP 503", 3),
        (Mode::Status(422, "Invalid Request: bad"), "KMS refused the request: Invalid Request", 1),
        (Mode::Status(401, ""), "KMS refused the credentials: HTTP 401", 1),
    ];
    for (mode, words, attempts) in cases {
        let listener = FaultProxy::start(None, mode);
        let logs =
            bed().dir.join(format!("enumeration-{}", format!("{mode:?}").replace(|c: char| !c.is_alphanumeric(), "-")));
        let started = Instant::now();
        let out = ssh_keygen_d(&provider_lib()).envs(provider_env(&listener.url(), &logs)).output().unwrap();
        let took = started.elapsed();
        assert!(out.status.code().is_some(), "{mode:?}: ssh-keygen crashed: {}", text(&out));
        assert!(out.stdout.is_empty(), "{mode:?}: {}", text(&out));
        assert!(took < REQUEST_TIMEOUT + SLACK, "{mode:?}: took {took:?}");
        let log = std::fs::read_to_string(logs.join("cosmian-pkcs11.log")).unwrap_or_default();
        let line = format!("cannot list the keys of the KMS: {words}");
        assert!(log.contains(&line), "{mode:?}: no {line:?} in\n{log}");
        if attempts > 1 {
            assert!(log.contains(&format!("{attempts} attempts")), "{mode:?}: not retried {attempts} times:\n{log}");
        } else {
            assert!(!log.contains("trying again"), "{mode:?}: retried:\n{log}");
        }
        if mode != Mode::Refuse {
            assert_eq!(listener.requests(), attempts, "{mode:?}");
        }
        println!("enumeration fault {mode:?}: empty token after {took:?}, {attempts} attempt(s)");
    }
}

/// `ssh -I` with the KMS down goes on to its next identity (a local key) and logs in, in at
/// most 3 s.
#[test]
fn ssh_with_the_kms_down_moves_on_to_the_next_identity_within_3_s() {
    let _turn = turn();
    let dir = bed().dir.join("ssh-kms-down");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("id_local");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let sshd = Sshd::start(&std::fs::read_to_string(key.with_extension("pub")).unwrap(), "");
    let down = format!("http://127.0.0.1:{}", free_port());
    let mut ssh = ssh_command(&sshd).provider(&provider_lib()).opt("-i").opt(&key);
    for (k, v) in provider_env(&down, &dir) {
        ssh = ssh.env(k, v);
    }
    let started = Instant::now();
    let out = ssh.run("echo local");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "local");
    assert!(took <= Duration::from_secs(3), "ssh took {took:?} with the KMS down");
    println!("ssh -I with the KMS down, logged in with the local key in {took:?}");
}

// ---- recovery under ssh-agent -------------------------------------------------------------

/// The agent holds the provider (`ssh-add -s`); the KMS is stopped and started again; the next
/// login through the agent signs without the provider being added again.
#[test]
fn ssh_agent_signs_again_after_the_kms_restarts() {
    let _turn = turn();
    let bed = bed();
    let lib = provider_lib();
    let logs = bed.dir.join("agent");
    let kms_url = bed.kms.lock().unwrap().url();
    let agent = SshAgent::allowing(OpenSsh::debian(), &lib, provider_env(&kms_url, &logs));
    let out = agent.add_provider(&lib).unwrap();
    assert!(out.status.success(), "ssh-add -s: {}\nagent:\n{}", text(&out), agent.log());

    let sshd = Sshd::start(&bed.authorized, "");
    let login = || ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo via-agent");
    let out = login();
    assert!(out.status.success(), "before the restart: {}\nagent:\n{}", text(&out), agent.log());

    let mut kms = bed.kms.lock().unwrap();
    kms.stop();
    let out = login();
    assert!(!out.status.success(), "logged in through the agent with the KMS down");
    kms.restart();
    drop(kms);
    let started = Instant::now();
    let out = login();
    assert!(out.status.success(), "after the restart: {}\nagent:\n{}\nsshd:\n{}", text(&out), agent.log(), sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-agent");
    println!("login through ssh-agent after the KMS restarted: {:?}", started.elapsed());
}
