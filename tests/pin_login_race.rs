//! PIN mode (`pkcs11_use_pin_as_access_token = true`) under concurrent `C_Login` calls, against
//! the real KMS with bearer-token authentication (`--api-token-id`): in every round, threads
//! log in at once with the right PIN and with a wrong one, each on its own session. Exactly
//! one login succeeds, a right PIN is never refused (no request carries another thread's
//! unchecked PIN), and the token is then really logged in with a working access token: it lists
//! the key pair and signs with it (memory and disk caches off, so both go to the KMS). The test
//! runs in a child process of its own, with the provider's environment.

use std::io::Read;
use std::ptr::null_mut;
use std::sync::{Arc, Barrier};

use base64::Engine;
use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, body_in_child, function_list, output_text as text, write_pin_mode_config,
};
use cryptoki_sys::*;

#[test]
fn concurrent_logins_with_right_and_wrong_pins_leave_a_working_token() {
    let Some(dir) = body_in_child(|dir| {
        [
            ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs")),
            ("COSMIAN_PKCS11_KEY_CACHE_SECONDS", "0".into()),
            ("COSMIAN_PKCS11_DISK_CACHE_SECONDS", "0".into()),
        ]
    }) else {
        return;
    };
    let mut kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    let pin = base64::engine::general_purpose::STANDARD.encode(bytes);
    let created = ckms.run(&["sym", "keys", "create", "--bytes-b64", &pin, "pin-race-token"]);
    assert!(created.status.success(), "{}", text(&created));
    ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    kms.restart_with_args(&["--api-token-id", "pin-race-token"]);

    write_pin_mode_config(&dir, &kms.url(), "");

    // `f`: the provider's static function table (the library is never unloaded).
    let f = function_list();
    // SAFETY: CK_C_INITIALIZE_ARGS holds optional function pointers (all-zero is None), flags and
    // a pointer (all-zero is NULL): all-zero bits are valid.
    let mut args = CK_C_INITIALIZE_ARGS { flags: CKF_OS_LOCKING_OK, ..unsafe { std::mem::zeroed() } };
    // SAFETY: `args` is a live local CK_C_INITIALIZE_ARGS, only read by C_Initialize.
    assert_eq!(unsafe { f.C_Initialize.unwrap()((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()) }, CKR_OK);

    let pins = [pin.clone(), "d3JvbmcgcGlu".to_owned(), pin.clone(), "YW5vdGhlciB3cm9uZyBvbmU=".to_owned()];
    for round in 0..12 {
        let barrier = Arc::new(Barrier::new(pins.len()));
        let threads: Vec<_> = pins
            .iter()
            .map(|p| {
                let (mut p, barrier) = (p.clone().into_bytes(), barrier.clone());
                std::thread::spawn(move || {
                    let mut session = 0;
                    // SAFETY: NULL application data and no notify callback are allowed; `session`
                    // is a live local the provider writes the new handle into.
                    let opened =
                        unsafe { f.C_OpenSession.unwrap()(1, CKF_SERIAL_SESSION, null_mut(), None, &mut session) };
                    assert_eq!(opened, CKR_OK);
                    barrier.wait();
                    // SAFETY: `p` is this thread's own PIN buffer, of `p.len()` bytes, alive
                    // during the call (the provider copies what it keeps).
                    (session, unsafe { f.C_Login.unwrap()(session, CKU_USER, p.as_mut_ptr(), p.len() as CK_ULONG) })
                })
            })
            .collect();
        let results: Vec<(CK_SESSION_HANDLE, CK_RV)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for ((_, rv), p) in results.iter().zip(&pins) {
            let allowed: &[CK_RV] = if *p == pin {
                &[CKR_OK, CKR_USER_ALREADY_LOGGED_IN]
            } else {
                &[CKR_PIN_INCORRECT, CKR_USER_ALREADY_LOGGED_IN]
            };
            assert!(allowed.contains(rv), "round {round}: {results:x?}");
        }
        assert_eq!(results.iter().filter(|(_, rv)| *rv == CKR_OK).count(), 1, "round {round}: {results:x?}");

        // Logged in: the token works (listing and signing go to the KMS with the PIN).
        let session = results[0].0;
        {
            // SAFETY: CK_SESSION_INFO is a C struct of integers: all-zero bits are valid.
            let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a live local CK_SESSION_INFO the provider fills in.
            assert_eq!(unsafe { f.C_GetSessionInfo.unwrap()(session, &mut info) }, CKR_OK);
            assert_eq!(info.state, CKS_RO_USER_FUNCTIONS, "round {round}");
            let mut class = CKO_PRIVATE_KEY.to_ne_bytes();
            let mut template = [CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: class.as_mut_ptr().cast(),
                ulValueLen: class.len() as CK_ULONG,
            }];
            // SAFETY: `template` is one live CK_ATTRIBUTE (the count passed), whose value points
            // to `class`, a live local of the length it gives.
            assert_eq!(unsafe { f.C_FindObjectsInit.unwrap()(session, template.as_mut_ptr(), 1) }, CKR_OK);
            let (mut key, mut n) = (0, 0);
            // SAFETY: room for 1 handle in `key` (the count passed); `n` is a live local.
            assert_eq!(unsafe { f.C_FindObjects.unwrap()(session, &mut key, 1, &mut n) }, CKR_OK);
            // SAFETY: takes a handle only.
            assert_eq!(unsafe { f.C_FindObjectsFinal.unwrap()(session) }, CKR_OK);
            assert_eq!(n, 1, "round {round}: the logged-in token lists the key");
            let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: null_mut(), ulParameterLen: 0 };
            // SAFETY: `mechanism` is a live local CK_MECHANISM with no parameter (NULL, length 0).
            assert_eq!(unsafe { f.C_SignInit.unwrap()(session, &mut mechanism, key) }, CKR_OK);
            let (mut digest, mut sig, mut sig_len) = ([7u8; 32], [0u8; 64], 64 as CK_ULONG);
            // SAFETY: `digest` holds the 32 bytes passed, `sig` the 64 bytes `sig_len` says,
            // all live locals.
            let rv = unsafe { f.C_Sign.unwrap()(session, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut sig_len) };
            assert_eq!(rv, CKR_OK, "round {round}: the logged-in token signs");
            // SAFETY: takes a handle only.
            assert_eq!(unsafe { f.C_Logout.unwrap()(session) }, CKR_OK);
            for (s, _) in &results {
                // SAFETY: takes a handle only.
                assert_eq!(unsafe { f.C_CloseSession.unwrap()(*s) }, CKR_OK);
            }
        }
    }
    // SAFETY: NULL is the reserved argument C_Finalize requires.
    assert_eq!(unsafe { f.C_Finalize.unwrap()(null_mut()) }, CKR_OK);
}
