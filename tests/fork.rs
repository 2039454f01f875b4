//! fork(2) under a loaded module, as a PKCS#11 application may do it: the parent initializes
//! and signs (key list loaded, a kept-alive connection open), forks; the child finds the
//! module not initialized, calls C_Initialize as the specification asks, and signs with its own
//! connection; the parent goes on signing with its own. And the same with the parent's key
//! list answered from the disk cache, its confirmation by the KMS in flight on the module's
//! thread when the process forks. Raw C calls, real KMS. Each test runs in a child process of
//! its own (one module per process), with the provider's environment.

use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    Ckms, DelayRelay, KeyKind, KeyPair, KmsServer, body_in_child, function_list, provider_lib, ssh_keygen_d,
    write_provider_config,
};
use cryptoki_sys::*;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::Digest;

/// Calls a function of the table, which must be there.
macro_rules! call {
    ($list:expr, $f:ident ( $($arg:expr),* )) => {
        // SAFETY: `$f` comes from the provider's own function table (C_GetFunctionList), so it
        // has the PKCS#11 signature; every call site passes pointers to live locals or buffers
        // with their true lengths, or null where the specification allows it.
        unsafe { ($list.$f.expect(stringify!($f)))($($arg),*) }
    };
}

/// Finds the private key `id`, signs SHA-256(`message`) with CKM_ECDSA and verifies it; `Err`
/// names the step that failed and its code.
fn sign_once(
    f: &CK_FUNCTION_LIST,
    id: &str,
    message: &[u8],
    verifier: &p256::ecdsa::VerifyingKey,
) -> Result<(), String> {
    let check = |what: &str, rv: CK_RV| if rv == CKR_OK { Ok(()) } else { Err(format!("{what}: 0x{rv:X}")) };
    let mut session: CK_SESSION_HANDLE = 0;
    check("C_OpenSession", call!(f, C_OpenSession(1, CKF_SERIAL_SESSION, null_mut(), None, &mut session)))?;
    let mut class = CKO_PRIVATE_KEY;
    let mut id = id.as_bytes().to_vec();
    let mut template = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&mut class as *mut CK_ULONG).cast(),
            ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
        },
        CK_ATTRIBUTE { type_: CKA_ID, pValue: id.as_mut_ptr().cast(), ulValueLen: id.len() as CK_ULONG },
    ];
    check("C_FindObjectsInit", call!(f, C_FindObjectsInit(session, template.as_mut_ptr(), 2)))?;
    let (mut key, mut found): (CK_OBJECT_HANDLE, CK_ULONG) = (0, 0);
    check("C_FindObjects", call!(f, C_FindObjects(session, &mut key, 1, &mut found)))?;
    check("C_FindObjectsFinal", call!(f, C_FindObjectsFinal(session)))?;
    if found != 1 {
        return Err(format!("{found} private keys found"));
    }
    let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: null_mut(), ulParameterLen: 0 };
    check("C_SignInit", call!(f, C_SignInit(session, &mut mechanism, key)))?;
    let mut digest = sha2::Sha256::digest(message).to_vec();
    let mut signature = [0u8; 64];
    let mut len = signature.len() as CK_ULONG;
    check("C_Sign", call!(f, C_Sign(session, digest.as_mut_ptr(), 32, signature.as_mut_ptr(), &mut len)))?;
    check("C_CloseSession", call!(f, C_CloseSession(session)))?;
    let signature = p256::ecdsa::Signature::from_slice(&signature[..len as usize]).map_err(|e| e.to_string())?;
    verifier.verify_prehash(&digest, &signature).map_err(|e| format!("the signature does not verify: {e}"))
}

/// The provider's environment for a test's child process: the configuration `dir/kms.toml`
/// (written by the test), a debug log in `dir/logs`, and the `extra` variables.
fn provider_env(dir: &Path, extra: &[(&'static str, PathBuf)]) -> Vec<(&'static str, PathBuf)> {
    let mut env = vec![
        ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs")),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
    ];
    env.extend_from_slice(extra);
    env
}

/// The module's log file, in the folder [`provider_env`] names.
fn log_file(dir: &Path) -> PathBuf {
    dir.join("logs").join("cosmian-pkcs11.log")
}

/// Forks; the child runs `child` (with the module as the parent left it) and `_exit`s with 0
/// when it returns `Ok`; the parent waits (at most 60 s) and panics, with the provider's log,
/// if the child failed.
fn in_a_forked_child(child: impl FnOnce() -> Result<(), String>, log: &Path) {
    let mark = std::fs::read_to_string(log).map_or(0, |l| l.len());
    // SAFETY: fork takes no arguments; the child only calls the module, which is made for a
    // forked child (C_Initialize again), and _exits: it never returns into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child));
        let code = match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(why)) => {
                eprintln!("fork child: {why}");
                1
            }
            Err(_) => 2,
        };
        // SAFETY: _exit takes an integer and never returns; skipping the harness's exit
        // handlers in the child is the point.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // SAFETY: `pid` is the child forked above, not reaped yet; `status` is a live local c_int
    // that waitpid writes the wait status into.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if Instant::now() > deadline {
            // SAFETY: kill takes two integers and touches no memory; `pid` is our child, still
            // running (waitpid just answered 0), so the pid names no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(log).map(|l| l[mark..].to_owned()).unwrap_or_default();
    assert!(libc::WIFEXITED(status), "the child died: wait status {status:#x}; provider log:\n{log}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "the child failed (see its stderr above); provider log:\n{log}");
    assert!(log.contains("initializing again in a forked child"), "{log}");
}

/// A KMS with one P-256 key pair tagged `ssh-auth` (made by ckms), and its verifier.
fn kms_with_a_key() -> (KmsServer, KeyPair, p256::ecdsa::VerifyingKey) {
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    let verifier =
        p256::ecdsa::VerifyingKey::from_public_key_pem(&ckms.export_public_pkcs8_pem(&pair.public_id)).unwrap();
    (kms, pair, verifier)
}

/// The child's side; `Err` says what went wrong.
fn child(f: &CK_FUNCTION_LIST, id: &str, verifier: &p256::ecdsa::VerifyingKey) -> Result<(), String> {
    let mut slots: CK_ULONG = 0;
    let rv = call!(f, C_GetSlotList(0, null_mut(), &mut slots));
    if rv != CKR_CRYPTOKI_NOT_INITIALIZED {
        return Err(format!("before C_Initialize in the child, C_GetSlotList answered 0x{rv:X}"));
    }
    let rv = call!(f, C_Initialize(null_mut()));
    if rv != CKR_OK {
        return Err(format!("C_Initialize in the child: 0x{rv:X}"));
    }
    sign_once(f, id, b"signed in the child", verifier)?;
    sign_once(f, id, b"signed again in the child", verifier)?;
    match call!(f, C_Finalize(null_mut())) {
        CKR_OK => Ok(()),
        rv => Err(format!("C_Finalize in the child: 0x{rv:X}")),
    }
}

#[test]
fn a_forked_child_initializes_again_and_signs() {
    let Some(dir) = body_in_child(|dir| provider_env(dir, &[])) else {
        return;
    };
    let (kms, pair, verifier) = kms_with_a_key();
    write_provider_config(&dir, &kms.url(), "");
    let log = log_file(&dir);

    let f = function_list();
    assert_eq!(call!(f, C_Initialize(null_mut())), CKR_OK);
    sign_once(f, &pair.private_id, b"signed in the parent before fork", &verifier).unwrap();

    in_a_forked_child(|| child(f, &pair.private_id, &verifier), &log);

    // The parent's module, key list and connection are untouched by the child's.
    sign_once(f, &pair.private_id, b"signed in the parent after fork", &verifier).unwrap();
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_OK);
    // Parent, child, child, parent: the KMS signed four times (its audit log lags a little).
    let signs = || kms.audit_events().iter().filter(|e| e.operation == "Sign" && e.failure.is_none()).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while signs() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(signs(), 4);
}

/// The parent lists the keys from a warm disk cache, the KMS 200 ms away: the confirmation of
/// the list runs on the module's thread, over the parent's connection, and has not been
/// answered when the process forks. The child never touches either: it initializes again and
/// signs over a connection of its own (the relay sees two), its own confirmation included; the
/// parent's signature then waits for its own confirmation and signs.
#[test]
fn a_fork_while_the_key_list_is_being_confirmed() {
    let env = |dir: &Path| provider_env(dir, &[("XDG_CACHE_HOME", dir.join("cache"))]);
    let Some(dir) = body_in_child(env) else {
        return;
    };
    let (kms, pair, verifier) = kms_with_a_key();
    let relay = DelayRelay::start(kms.port(), Duration::from_millis(200));
    write_provider_config(&dir, &format!("http://127.0.0.1:{}", relay.port()), "");
    let log = log_file(&dir);
    let mark = std::fs::read_to_string(&log).map_or(0, |l| l.len());
    // Another process lists first (at the default log level): the disk cache holds the key and
    // its list.
    let keygen_env = env(&dir).into_iter().filter(|(key, _)| *key != "COSMIAN_PKCS11_LOGGING_LEVEL");
    let out = ssh_keygen_d(&provider_lib()).envs(keygen_env).output().unwrap();
    assert!(out.status.success() && !out.stdout.is_empty(), "{out:?}");
    relay.reset();

    let f = function_list();
    assert_eq!(call!(f, C_Initialize(null_mut())), CKR_OK);
    let mut session: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(f, C_OpenSession(1, CKF_SERIAL_SESSION, null_mut(), None, &mut session)), CKR_OK);
    assert_eq!(call!(f, C_FindObjectsInit(session, null_mut(), 0)), CKR_OK);
    let (mut objects, mut found) = ([0 as CK_OBJECT_HANDLE; 4], 0);
    assert_eq!(call!(f, C_FindObjects(session, objects.as_mut_ptr(), 4, &mut found)), CKR_OK);
    assert_eq!(call!(f, C_FindObjectsFinal(session)), CKR_OK);
    assert_eq!(found, 2, "the key pair, answered from the disk cache");
    assert_eq!(relay.round_trips().exchanges, 0, "the confirmation is still in flight");
    in_a_forked_child(|| child(f, &pair.private_id, &verifier), &log);

    sign_once(f, &pair.private_id, b"signed in the parent after fork", &verifier).unwrap();
    assert_eq!(call!(f, C_CloseSession(session)), CKR_OK);
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_OK);
    assert_eq!(relay.round_trips().connections, 2, "the parent's connection and the child's own");
    let signs = || kms.audit_events().iter().filter(|e| e.operation == "Sign" && e.failure.is_none()).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while signs() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(signs(), 3, "child, child, parent");
    let log = std::fs::read_to_string(&log).unwrap()[mark..].to_owned();
    assert!(log.contains("key list answered from the disk cache"), "{log}");
}
