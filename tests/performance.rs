//! What enumeration, an ssh login and signatures cost in requests to the KMS, counted outside
//! the provider: a [`CountingProxy`] on the wire (TCP connections, HTTP requests) and the KMS's
//! own audit log (KMIP operations, batch items included). Counts only, never timings
//! (`cargo xtask bench` measures those).
//!
//! KMS 5.28 caps a Locate at 1,000 ids and ignores `OffsetItems`: past 1,000 tagged keys the
//! provider makes one extra Locate, sees nothing new, and offers the first 1,000.
//!
//! The public-key disk cache (one file per KMS URL, so per proxy here) makes an enumeration
//! through a URL seen before one batch of Locates: each test says which kind it measures, cold (a fresh
//! proxy) or warm (the same proxy again).
//!
//! The tests share one KMS and take turns ([`serial`]): the audit log is the server's.
//! `in_process_*` loads the provider in a child process of its own, with a 1 s key cache; the
//! child counts its requests with a proxy of its own and asks the parent to add a key.
//!
//! `over_tls_*` has a KMS of its own, serving HTTPS with a certificate of a test CA: there the
//! proxy counts connections only (it cannot read requests inside TLS) and the KMS's log counts
//! the HTTP requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    AuditEvent, Ckms, CountingProxy, KeyKind, KeyPair, KmsServer, Sshd, TestCa, ask_parent, child_part,
    create_p256_key_pairs, provider_lib, run_in_child_serving, settled_audit_events, ssh_command, ssh_keygen_d,
    write_provider_config,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;

/// Tags and how many P-256 key pairs carry each (created in one request per tag).
const BATCHES: [(&str, usize); 4] = [("n1", 1), ("n10", 10), ("n100", 100), ("n1001", 1001)];
/// The tag of the key ssh logs in with (made with ckms).
const LOGIN: &str = "login";
/// The tag of the in-process test's keys.
const LIVE: &str = "live";
/// The tag of the keys revoked while cached.
const REVOKED: &str = "revoked";
/// In the child of `in_process_*`: the KMS's port.
const KMS_PORT: &str = "PERFORMANCE_TEST_KMS_PORT";
/// In the child of `in_process_*`: the private key tagged [`LIVE`].
const LIVE_KEY: &str = "PERFORMANCE_TEST_LIVE_KEY";
/// What the child of `in_process_*` asks its parent: a key pair tagged [`LIVE`], created now.
const ADD_A_KEY: &str = "add a key";

/// The request lines of one enumeration: one batch of two Locates (the tagged public keys,
/// and the tagged private keys that confirm the disk cache's entries), then the batched Export.
const ENUMERATION: [&str; 2] = ["POST /kmip", "POST /kmip"];
/// An enumeration whose public keys are all in the disk cache: the batch of Locates alone.
const WARM_ENUMERATION: [&str; 1] = ["POST /kmip"];
/// What the KMS audits for the Locates of one enumeration.
fn locates() -> Vec<(String, Option<String>)> {
    vec![("Locate".to_owned(), None); 2]
}

struct Bed {
    kms: KmsServer,
    /// Inside the KMS's folder, which the test bed removes at exit (statics are never dropped).
    dir: PathBuf,
    keys: BTreeMap<&'static str, Vec<KeyPair>>,
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let kms = KmsServer::start();
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let mut keys = BTreeMap::new();
        for (tag, count) in BATCHES {
            keys.insert(tag, create_p256_key_pairs(&kms, count, &[tag]));
        }
        keys.insert(LOGIN, vec![Ckms::new(&kms).create_key_pair(KeyKind::Ec("nist-p256"), &[LOGIN])]);
        keys.insert(LIVE, create_p256_key_pairs(&kms, 1, &[LIVE]));
        keys.insert(REVOKED, create_p256_key_pairs(&kms, 2, &[REVOKED]));
        let created = keys.values().map(Vec::len).sum();
        // The server writes its audit log behind the answers: start the tests from a quiet log.
        wait_for_audit(&kms, |events| events.iter().filter(|e| e.operation == "CreateKeyPair").count() >= created);
        Bed { kms, dir, keys }
    })
}

/// One test at a time: each reads the audit log from a mark.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until the audit log satisfies `done` (one minute at most).
fn wait_for_audit(kms: &KmsServer, done: impl Fn(&[AuditEvent]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = kms.audit_events();
        if done(&events) {
            return;
        }
        assert!(Instant::now() < deadline, "the audit log did not get there; it holds {} events", events.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many events the audit log holds once events of the previous test have all come.
fn audit_mark() -> usize {
    settled_audit_events(&bed().kms).len()
}

/// The (operation, object) pairs the KMS logged after `mark` events, once there are at
/// least `expected` of them and the log has settled (so that an extra one would show).
fn audited_since(mark: usize, expected: usize) -> Vec<(String, Option<String>)> {
    let kms = &bed().kms;
    wait_for_audit(kms, |events| events.len() >= mark + expected);
    let mut events: Vec<_> =
        settled_audit_events(kms)[mark..].iter().map(|e| (e.operation.clone(), e.object_uid.clone())).collect();
    events.sort();
    events
}

/// `(operation, Some(uid))` for each uid, sorted like [`audited_since`].
fn operations_on<'a>(operation: &str, uids: impl IntoIterator<Item = &'a String>) -> Vec<(String, Option<String>)> {
    uids.into_iter().map(|uid| (operation.to_owned(), Some(uid.clone()))).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// A provider configuration that sends everything through `proxy`, and the provider's
/// environment for a process: that configuration, the tag, a log and a cache folder of the
/// test's own.
fn provider_env(name: &str, proxy: &CountingProxy, tag: &str) -> (PathBuf, Vec<(&'static str, String)>) {
    client_env(bed().dir.join(name), &proxy.url(), "", tag)
}

/// The provider's environment for a process, in `dir`: a configuration for `server_url` with
/// `extra` lines, the tag, a log and a cache folder.
fn client_env(dir: PathBuf, server_url: &str, extra: &str, tag: &str) -> (PathBuf, Vec<(&'static str, String)>) {
    std::fs::create_dir_all(&dir).unwrap();
    write_provider_config(&dir, server_url, extra);
    let env = provider_vars(&dir, tag);
    (dir, env)
}

/// The provider's variables for the configuration, log and cache folder in `dir`, and `tag`.
fn provider_vars(dir: &Path, tag: &str) -> Vec<(&'static str, String)> {
    vec![
        ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml").display().to_string()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", tag.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".to_owned()),
        ("XDG_CACHE_HOME", dir.join("cache").display().to_string()),
        // Counts, not latency: a slow CI machine decoding 1,000 keys in a debug build must not
        // time out (the default is 5 s).
        ("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", "60000".to_owned()),
    ]
}

fn provider_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap_or_default()
}

use cosmian_pkcs11_testbed::output_text as text;

/// `ssh-keygen -D` through a fresh proxy (so a cold disk cache), the provider offering the
/// keys tagged `tag`: the lines printed, the proxy, the provider's log folder.
fn keygen_d(tag: &str) -> (Vec<String>, CountingProxy, PathBuf) {
    let proxy = CountingProxy::start(bed().kms.port());
    let (lines, dir) = keygen_d_via(&proxy, tag, &[]);
    (lines, proxy, dir)
}

/// `ssh-keygen -D` through `proxy`, with `extra` environment: the lines printed, the log folder.
fn keygen_d_via(proxy: &CountingProxy, tag: &str, extra: &[(&'static str, &str)]) -> (Vec<String>, PathBuf) {
    let (dir, env) = provider_env(&format!("keygen-{tag}-{}", proxy.url().rsplit(':').next().unwrap()), proxy, tag);
    let stdout = dir.join("stdout");
    let mut child = ssh_keygen_d(&provider_lib())
        .envs(env)
        .envs(extra.iter().copied())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .spawn()
        .unwrap();
    // Generous: a listing that never ends (a Locate paging loop) must fail, not hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ssh-keygen -D still running after 120 s; {} requests so far", proxy.requests().len());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed = std::fs::read_to_string(&stdout).unwrap();
    assert!(status.success(), "ssh-keygen -D: {status}\n{printed}\nprovider log:\n{}", provider_log(&dir));
    (printed.lines().map(str::to_owned).collect(), dir)
}

#[test]
fn enumeration_is_two_round_trips_on_one_connection_for_1_10_and_100_keys_then_one() {
    let _turn = serial();
    let bed = bed();
    for (tag, count) in &BATCHES[..3] {
        let mark = audit_mark();
        let (lines, proxy, _) = keygen_d(tag);
        assert_eq!(lines.len(), *count, "{tag}: ssh-keygen -D printed {lines:?}");
        assert_eq!(proxy.requests(), ENUMERATION, "{tag}");
        assert_eq!(proxy.connections(), 1, "{tag}");
        // The KMS's side: two Locates, one Export per public key, nothing else.
        let public_ids = bed.keys[tag].iter().map(|k| &k.public_id);
        let mut expected = operations_on("Export", public_ids);
        expected.extend(locates());
        assert_eq!(audited_since(mark, count + 2), sorted(expected), "{tag}");

        // Another process, same KMS URL: the public keys come from the disk cache.
        proxy.reset();
        let mark = audit_mark();
        let (again, _) = keygen_d_via(&proxy, tag, &[]);
        assert_eq!(again, lines, "{tag}: the same keys, the same lines");
        assert_eq!(proxy.requests(), WARM_ENUMERATION, "{tag}: warm");
        assert_eq!(audited_since(mark, 2), locates(), "{tag}: warm");
    }
    // The disk cache turned off: every process exports again.
    let (_, proxy, _) = keygen_d("n1");
    proxy.reset();
    let (lines, _) = keygen_d_via(&proxy, "n1", &[("COSMIAN_PKCS11_DISK_CACHE_SECONDS", "0")]);
    assert_eq!(lines.len(), 1);
    assert_eq!(proxy.requests(), ENUMERATION, "no disk cache");
}

/// A key revoked after its public key was cached: the next process answers its listing from
/// the disk cache's key list (so it still shows the key) while the Locate, which asks for
/// active keys only, confirms it; that Locate drops the key from the cache, and the process
/// after offers the other key alone. One request each, the Locate (C_Finalize waits for it).
#[test]
fn a_revoked_key_is_dropped_by_the_next_listing_and_not_offered_after() {
    let _turn = serial();
    let bed = bed();
    let (lines, proxy, _) = keygen_d(REVOKED);
    assert_eq!(lines.len(), 2);
    let [kept, revoked] = &bed.keys[REVOKED][..] else { panic!("two keys") };
    let out = Ckms::new(&bed.kms).run(&["ec", "keys", "revoke", "-k", &revoked.private_id, "test"]);
    assert!(out.status.success(), "{}", text(&out));
    proxy.reset();
    let (lines, dir) = keygen_d_via(&proxy, REVOKED, &[]);
    assert_eq!(lines.len(), 2, "answered from the disk cache: {lines:?}");
    assert!(provider_log(&dir).contains("key list answered from the disk cache"), "{}", provider_log(&dir));
    assert_eq!(proxy.requests(), WARM_ENUMERATION, "the Locate that confirms the list");
    proxy.reset();
    let (lines, _) = keygen_d_via(&proxy, REVOKED, &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].ends_with(&format!(" {}", kept.private_id)), "the key kept is the one offered: {lines:?}");
    assert_eq!(proxy.requests(), WARM_ENUMERATION);
}

/// KMS 5.28 answers at most 1,000 ids per Locate and ignores `OffsetItems`: the second page is
/// the first one again, which ends the listing. Three round trips (two batches of two Locates,
/// the Export), the first 1,000 keys, a warning in the log.
#[test]
fn past_the_kms_locate_cap_of_1000_keys_it_is_three_round_trips() {
    let _turn = serial();
    let mark = audit_mark();
    let (lines, proxy, dir) = keygen_d("n1001");
    assert_eq!(proxy.requests(), ["POST /kmip", "POST /kmip", "POST /kmip"]);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(lines.len(), 1000);
    assert!(provider_log(&dir).contains("caps Locate at 1000"), "{}", provider_log(&dir));
    let audited = audited_since(mark, 1004);
    let count = |op: &str| audited.iter().filter(|(o, _)| o == op).count();
    assert_eq!((count("Locate"), count("Export"), audited.len()), (4, 1000, 1004));
}

#[test]
fn an_ssh_login_is_the_enumeration_plus_one_sign() {
    let _turn = serial();
    let bed = bed();
    let key = &bed.keys[LOGIN][0];
    let (authorized, _, _) = keygen_d(LOGIN);
    assert_eq!(authorized.len(), 1);
    let sshd = Sshd::start(&authorized[0], "");

    let proxy = CountingProxy::start(bed.kms.port());
    let login = |what: &str| {
        let mark = audit_mark();
        proxy.reset();
        let (dir, env) = provider_env("ssh-login", &proxy, LOGIN);
        let mut ssh = ssh_command(&sshd).provider(&provider_lib());
        for (k, v) in env {
            ssh = ssh.env(k, v);
        }
        let out = ssh.run("echo logged-in");
        assert!(
            out.status.success(),
            "{what}: {}\nsshd:\n{}\nprovider:\n{}",
            text(&out),
            sshd.log(),
            provider_log(&dir)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logged-in");
        assert_eq!(proxy.connections(), 1, "{what}: one kept-alive connection for the whole login");
        mark
    };
    let sign = ("Sign".to_owned(), Some(key.private_id.clone()));

    let mark = login("cold");
    assert_eq!(proxy.requests(), [ENUMERATION[0], ENUMERATION[1], "POST /kmip/2_1"]);
    let mut expected = vec![("Export".to_owned(), Some(key.public_id.clone()))];
    expected.extend(locates());
    expected.push(sign.clone());
    assert_eq!(audited_since(mark, 4), expected);

    // The next login: the public key from the disk cache, the physical minimum plus one
    // batch of Locates (which confirms the cached entry).
    let mark = login("warm");
    assert_eq!(proxy.requests(), ["POST /kmip", "POST /kmip/2_1"]);
    let mut expected = locates();
    expected.push(sign);
    assert_eq!(audited_since(mark, 3), expected);
}

/// The provider in a child process with `COSMIAN_PKCS11_KEY_CACHE_SECONDS=1`, as a long-lived
/// ssh-agent holds it: searches, attributes and SignInit after the load are free, a signature
/// is one request, a key added later shows at the first public-key search after the cache
/// expired and not before.
#[test]
fn in_process_only_signatures_and_expired_public_key_searches_reach_the_kms() {
    let Some(dir) = child_part() else {
        let _turn = serial();
        let bed = bed();
        let dir = bed.dir.join("in-process");
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = provider_vars(&dir, LIVE);
        env.push(("COSMIAN_PKCS11_KEY_CACHE_SECONDS", "1".to_owned()));
        env.push((KMS_PORT, bed.kms.port().to_string()));
        env.push((LIVE_KEY, bed.keys[LIVE][0].private_id.clone()));
        run_in_child_serving(dir.to_str().unwrap(), env, |request| {
            assert_eq!(request, ADD_A_KEY);
            create_p256_key_pairs(&bed.kms, 1, &[LIVE]).remove(0).private_id
        });
        return;
    };
    let kms_port = std::env::var(KMS_PORT).unwrap().parse().unwrap();
    let proxy = CountingProxy::start(kms_port);
    write_provider_config(Path::new(&dir), &proxy.url(), "");
    let pkcs11 = Pkcs11::new(provider_lib()).expect("dlopen the provider");
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_ro_session(slot).unwrap();
    assert_eq!(proxy.requests(), [] as [&str; 0], "C_Initialize, C_GetSlotList, C_OpenSession");

    let ids = |class: ObjectClass| -> Vec<String> {
        let found = session.find_objects(&[Attribute::Class(class)]).unwrap();
        found.iter().map(|h| key_id(&session, *h)).collect()
    };
    let first = &std::env::var(LIVE_KEY).unwrap();
    assert_eq!(ids(ObjectClass::PUBLIC_KEY), std::slice::from_ref(first));
    assert_eq!(proxy.requests(), ENUMERATION);

    // (c) What ssh does around every signature, from memory.
    for _ in 0..20 {
        let ssh_session = pkcs11.open_ro_session(slot).unwrap();
        let private = private_key(&ssh_session, first).expect("the private key");
        let _ = ssh_session
            .get_attributes(private, &[AttributeType::KeyType, AttributeType::Label, AttributeType::Sign])
            .unwrap();
        ssh_session.sign_init(&Mechanism::Ecdsa, private).unwrap();
    }
    assert!(
        pkcs11
            .open_ro_session(slot)
            .unwrap()
            .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
            .unwrap()
            .is_empty()
    );
    assert_eq!(proxy.requests(), ENUMERATION, "searches, attributes, SignInit");
    let signer = pkcs11.open_ro_session(slot).unwrap();
    let private = private_key(&signer, first).unwrap();
    signer.sign(&Mechanism::Ecdsa, private, &[7; 32]).unwrap();
    assert_eq!(proxy.requests(), [ENUMERATION[0], ENUMERATION[1], "POST /kmip/2_1"], "one Sign");
    assert_eq!(proxy.connections(), 1, "one kept-alive connection across sessions");

    // (d) A key added while the list is fresh is not seen, by either kind of search; after
    // the cache expired, private-key searches still answer from memory, and the next
    // public-key search reloads.
    proxy.reset();
    let mut attempts = 0;
    let (added, loaded) = loop {
        attempts += 1;
        std::thread::sleep(Duration::from_millis(1100)); // The list has expired.
        let before_load = Instant::now();
        let known = ids(ObjectClass::PUBLIC_KEY);
        let loaded = Instant::now();
        assert_eq!(
            proxy.requests(),
            WARM_ENUMERATION,
            "a public-key search after expiry reloads (a Locate: the keys are known)"
        );
        let added = ask_parent(ADD_A_KEY);
        let seen = ids(ObjectClass::PUBLIC_KEY);
        let by_id = private_key(&session, &added);
        let requests = proxy.requests();
        proxy.reset();
        if before_load.elapsed() >= Duration::from_millis(900) {
            // Too slow a machine to be sure the list had not expired yet: again.
            assert!(attempts < 5, "could not search within 1 s of a load in 5 attempts");
            continue;
        }
        assert_eq!(seen, known, "a key added before expiry is not listed");
        assert!(!seen.contains(&added));
        assert_eq!(by_id, None, "nor found by a private-key search");
        assert_eq!(requests, WARM_ENUMERATION, "no request between the load and expiry");
        break (added, loaded);
    };
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(loaded.elapsed()));
    assert_eq!(private_key(&session, &added), None, "private-key searches never reload");
    assert_eq!(proxy.requests(), [] as [&str; 0]);
    let seen = ids(ObjectClass::PUBLIC_KEY);
    assert!(seen.contains(&added), "the next public-key search after expiry lists the new key: {seen:?}");
    assert_eq!(proxy.requests(), ENUMERATION, "a Locate, and the Export of the new key only");
    assert!(private_key(&session, &added).is_some());
    assert_eq!(proxy.requests(), ENUMERATION);
    assert_eq!(proxy.connections(), 0, "no new connection: the kept-alive one serves the reloads");
}

fn key_id(session: &Session, object: cryptoki::object::ObjectHandle) -> String {
    match session.get_attributes(object, &[AttributeType::Id]).unwrap().pop() {
        Some(Attribute::Id(id)) => String::from_utf8(id).unwrap(),
        other => panic!("CKA_ID: {other:?}"),
    }
}

/// The private key with this `CKA_ID`, searched the way OpenSSH does.
fn private_key(session: &Session, id: &str) -> Option<cryptoki::object::ObjectHandle> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Sign(true),
        ])
        .unwrap();
    assert!(found.len() <= 1, "{found:?}");
    found.first().copied()
}

/// Over TLS (the test CA in `verified_cert`) a process pays one handshake and no request more:
/// an enumeration is one connection and 2 requests cold, 1 warm; a login is the warm enumeration
/// plus a Sign on the same connection. The system's roots are left out while `verified_cert`
/// verifies the KMS; when it does not, they are added and the handshake made again (one more
/// connection): a KMS the system trusts is still accepted, one nobody trusts still refused.
#[test]
fn over_tls_the_counts_are_the_same_and_the_system_roots_wait() {
    let ca = TestCa::new();
    let mut kms = KmsServer::start();
    let key = create_p256_key_pairs(&kms, 1, &[LOGIN]).remove(0);
    kms.restart_with_args(&ca.kms_args().iter().map(String::as_str).collect::<Vec<_>>());
    let proxy = CountingProxy::start(kms.port());
    let url = proxy.url().replacen("http://", "https://", 1);
    let (dir, env) = client_env(kms.dir().join("tls"), &url, &ca.verified_cert_line(), LOGIN);
    let requests_since = |mark: usize| {
        settled_audit_events(&kms);
        kms.http_requests()[mark..].to_vec()
    };
    let keygen_d = |env: &[(&'static str, String)], extra: &[(&str, &str)]| {
        proxy.reset();
        let mark = (kms.http_requests().len(), settled_audit_events(&kms).len());
        let out = ssh_keygen_d(&provider_lib())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        (lines, mark)
    };
    let operations_since = |mark: usize| -> Vec<String> {
        settled_audit_events(&kms)[mark..].iter().map(|e| e.operation.clone()).collect()
    };

    let (authorized, (http, audit)) = keygen_d(&env, &[]);
    assert_eq!(authorized.len(), 1, "{}", provider_log(&dir));
    assert_eq!(requests_since(http), ENUMERATION, "cold");
    assert_eq!(proxy.connections(), 1, "cold");
    assert_eq!(operations_since(audit), ["Locate", "Locate", "Export"]);
    let (lines, (http, _)) = keygen_d(&env, &[]);
    assert_eq!(lines, authorized);
    assert_eq!((requests_since(http), proxy.connections()), (WARM_ENUMERATION.to_vec(), 1), "warm");

    let sshd = Sshd::start(&authorized[0], "");
    proxy.reset();
    let (http, audit) = (kms.http_requests().len(), settled_audit_events(&kms).len());
    let mut ssh = ssh_command(&sshd).provider(&provider_lib());
    for (k, v) in &env {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("echo logged-in");
    assert!(out.status.success(), "{}\nprovider:\n{}", text(&out), provider_log(&dir));
    assert_eq!(requests_since(http), ["POST /kmip", "POST /kmip/2_1"], "login");
    assert_eq!(proxy.connections(), 1, "login: one connection");
    assert_eq!(operations_since(audit), ["Locate", "Locate", "Sign"]);
    assert!(
        settled_audit_events(&kms)
            .iter()
            .any(|e| e.operation == "Sign" && e.object_uid.as_deref() == Some(&key.private_id))
    );

    // verified_cert names another CA; the KMS's CA is a system root (SSL_CERT_FILE).
    let other = TestCa::new();
    let ca_file = dir.join("system-roots.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let (other_dir, env) = client_env(kms.dir().join("tls-other-ca"), &url, &other.verified_cert_line(), LOGIN);
    let (lines, (http, _)) = keygen_d(&env, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    assert_eq!(lines, authorized, "the system's roots are still trusted: {}", provider_log(&other_dir));
    assert_eq!(proxy.connections(), 2, "one handshake refused by verified_cert alone, one with the system's roots");
    assert_eq!(requests_since(http), ENUMERATION, "cold: a new configuration folder");
    let empty = dir.join("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    // Nothing in the disk cache (a warm one would be listed, never signed with): nothing listed.
    let cold = dir.join("cold-cache");
    let (lines, (http, _)) =
        keygen_d(&env, &[("SSL_CERT_FILE", empty.to_str().unwrap()), ("XDG_CACHE_HOME", cold.to_str().unwrap())]);
    assert!(lines.is_empty(), "trusted by nobody: refused");
    assert_eq!((requests_since(http).len(), proxy.connections()), (0, 2), "no request; verified_cert, then all roots");
    // Both test CAs have the same name: rustls says BadSignature rather than UnknownIssuer.
    assert!(provider_log(&other_dir).contains("invalid peer certificate"), "{}", provider_log(&other_dir));
}
