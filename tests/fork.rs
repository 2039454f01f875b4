//! fork(2) under a loaded module, as a PKCS#11 application may do it: the parent initializes
//! and signs (key list loaded, a kept-alive connection open), forks; the child finds the
//! module not initialized, calls C_Initialize as the specification asks, and signs with its own
//! connection; the parent goes on signing with its own. Raw C calls, real KMS.

use std::ptr::null_mut;

use cosmian_pkcs11_testbed::{function_list, write_provider_config, Ckms, KeyKind, KmsServer};
use cryptoki_sys::*;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::Digest;

/// Calls a function of the table, which must be there.
macro_rules! call {
    ($list:expr, $f:ident ( $($arg:expr),* )) => {
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
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    let verifier =
        p256::ecdsa::VerifyingKey::from_public_key_pem(&ckms.export_public_pkcs8_pem(&pair.public_id)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("COSMIAN_KMS_CLI_CONF", write_provider_config(dir.path(), &kms.url(), ""));
    std::env::set_var("COSMIAN_PKCS11_LOGGING_FOLDER", dir.path().join("logs"));
    std::env::set_var("COSMIAN_PKCS11_LOGGING_LEVEL", "debug");

    let f = function_list();
    assert_eq!(call!(f, C_Initialize(null_mut())), CKR_OK);
    sign_once(f, &pair.private_id, b"signed in the parent before fork", &verifier).unwrap();

    // SAFETY: the child only calls the module and _exits; it never returns into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(f, &pair.private_id, &verifier)));
        let code = match outcome {
            Ok(Ok(())) => 0,
            Ok(Err(why)) => {
                eprintln!("fork child: {why}");
                1
            }
            Err(_) => 2,
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child died: wait status {status:#x}");
    let log = std::fs::read_to_string(dir.path().join("logs").join("cosmian-pkcs11.log")).unwrap_or_default();
    assert_eq!(libc::WEXITSTATUS(status), 0, "the child failed (see its stderr above); provider log:\n{log}");
    assert!(log.contains("initializing again in a forked child"), "{log}");

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
