//! PIN mode (`pkcs11_use_pin_as_access_token = true`) under concurrent `C_Login` calls, against
//! the real KMS with bearer-token authentication (`--api-token-id`): in every round, threads
//! log in at once with the right PIN and with a wrong one, each on its own session. Exactly
//! one login succeeds, a right PIN is never refused (no request carries another thread's
//! unchecked PIN), and the token is then really logged in with a working access token: it lists
//! the key pair and signs with it (memory and disk caches off, so both go to the KMS).

use std::io::Read;
use std::ptr::null_mut;
use std::sync::{Arc, Barrier};

use base64::Engine;
use cosmian_pkcs11_testbed::{function_list, output_text as text, write_pin_mode_config, Ckms, KeyKind, KmsServer};
use cryptoki_sys::*;

#[test]
fn concurrent_logins_with_right_and_wrong_pins_leave_a_working_token() {
    let mut kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    let pin = base64::engine::general_purpose::STANDARD.encode(bytes);
    let created = ckms.run(&["sym", "keys", "create", "--bytes-b64", &pin, "pin-race-token"]);
    assert!(created.status.success(), "{}", text(&created));
    ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    kms.restart_with_args(&["--api-token-id", "pin-race-token"]);

    let dir = tempfile::tempdir().unwrap();
    let config = write_pin_mode_config(dir.path(), &kms.url(), "");
    std::env::set_var("COSMIAN_KMS_CLI_CONF", &config);
    std::env::set_var("COSMIAN_PKCS11_LOGGING_FOLDER", dir.path().join("logs"));
    std::env::set_var("COSMIAN_PKCS11_KEY_CACHE_SECONDS", "0");
    std::env::set_var("COSMIAN_PKCS11_DISK_CACHE_SECONDS", "0");

    let f = function_list();
    let mut args = CK_C_INITIALIZE_ARGS { flags: CKF_OS_LOCKING_OK, ..unsafe { std::mem::zeroed() } };
    assert_eq!(unsafe { f.C_Initialize.unwrap()((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()) }, CKR_OK);

    let pins = [pin.clone(), "d3JvbmcgcGlu".to_owned(), pin.clone(), "YW5vdGhlciB3cm9uZyBvbmU=".to_owned()];
    for round in 0..12 {
        let barrier = Arc::new(Barrier::new(pins.len()));
        let threads: Vec<_> = pins
            .iter()
            .map(|p| {
                let (mut p, barrier) = (p.clone().into_bytes(), barrier.clone());
                std::thread::spawn(move || unsafe {
                    let mut session = 0;
                    assert_eq!(f.C_OpenSession.unwrap()(1, CKF_SERIAL_SESSION, null_mut(), None, &mut session), CKR_OK);
                    barrier.wait();
                    (session, f.C_Login.unwrap()(session, CKU_USER, p.as_mut_ptr(), p.len() as CK_ULONG))
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
        unsafe {
            let mut info: CK_SESSION_INFO = std::mem::zeroed();
            assert_eq!(f.C_GetSessionInfo.unwrap()(session, &mut info), CKR_OK);
            assert_eq!(info.state, CKS_RO_USER_FUNCTIONS, "round {round}");
            let mut class = CKO_PRIVATE_KEY.to_ne_bytes();
            let mut template = [CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: class.as_mut_ptr().cast(),
                ulValueLen: class.len() as CK_ULONG,
            }];
            assert_eq!(f.C_FindObjectsInit.unwrap()(session, template.as_mut_ptr(), 1), CKR_OK);
            let (mut key, mut n) = (0, 0);
            assert_eq!(f.C_FindObjects.unwrap()(session, &mut key, 1, &mut n), CKR_OK);
            assert_eq!(f.C_FindObjectsFinal.unwrap()(session), CKR_OK);
            assert_eq!(n, 1, "round {round}: the logged-in token lists the key");
            let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: null_mut(), ulParameterLen: 0 };
            assert_eq!(f.C_SignInit.unwrap()(session, &mut mechanism, key), CKR_OK);
            let (mut digest, mut sig, mut sig_len) = ([7u8; 32], [0u8; 64], 64 as CK_ULONG);
            let rv = f.C_Sign.unwrap()(session, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut sig_len);
            assert_eq!(rv, CKR_OK, "round {round}: the logged-in token signs");
            assert_eq!(f.C_Logout.unwrap()(session), CKR_OK);
            for (s, _) in &results {
                assert_eq!(f.C_CloseSession.unwrap()(*s), CKR_OK);
            }
        }
    }
    assert_eq!(unsafe { f.C_Finalize.unwrap()(null_mut()) }, CKR_OK);
}
