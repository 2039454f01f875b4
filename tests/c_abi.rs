//! The C ABI as a C client sees it: the library is dlopened and called through its function
//! tables with raw arguments, to check the exact return codes of the PKCS#11 specification
//! (NULL pointers, bad handles, wrong states, size queries, short buffers, per-attribute
//! errors) that higher-level clients hide. Runs against a real KMS, in a child process of its
//! own, with the provider's environment.

use std::ptr::null_mut;

use cosmian_pkcs11_testbed::{
    CallZeroed, Ckms, KeyKind, KmsServer, body_in_child, provider_lib, write_pin_mode_config, write_provider_config,
};
use cryptoki_sys::*;

/// Calls a function of a table, which must be there.
macro_rules! call {
    ($list:expr, $f:ident ( $($arg:expr),* )) => {
        // SAFETY: `$f` comes from one of the provider's own function tables, so it has the
        // PKCS#11 signature; every call site passes pointers to live locals or buffers with their
        // true lengths, or the NULL pointers and bad handles under test, which the provider checks
        // before any use (the return codes asserted here).
        unsafe { ($list.$f.expect(stringify!($f)))($($arg),*) }
    };
}

/// Every slot of a function table (all pointer-sized after the version) is non-NULL.
fn count_null_slots<T>(table: *const T) -> usize {
    let words = std::mem::size_of::<T>() / std::mem::size_of::<usize>();
    // SAFETY: `table` points to one of the provider's static function tables, alive while the
    // library is loaded; they are repr(C): a CK_VERSION padded to a word, then function pointers,
    // so `words` initialized, aligned usizes.
    let slots = unsafe { std::slice::from_raw_parts(table as *const usize, words) };
    slots[1..].iter().filter(|p| **p == 0).count()
}

/// Every slot of the 3.0 table but the four a client calls before C_Initialize, each called
/// with zeroed arguments: `(name, return code)`.
fn call_every_other_slot(f3: &CK_FUNCTION_LIST_3_0) -> Vec<(&'static str, CK_RV)> {
    macro_rules! call_all {
        ($($f:ident),*) => {
            // SAFETY: every slot is a PKCS#11 entry point of the provider: NULL pointers and 0
            // handles are arguments it must (and does) refuse with a return code, never read.
            vec![$((stringify!($f), unsafe { f3.$f.expect(stringify!($f)).call_zeroed() })),*]
        };
    }
    call_all!(
        C_Finalize,
        C_GetInfo,
        C_GetSlotList,
        C_GetSlotInfo,
        C_GetTokenInfo,
        C_GetMechanismList,
        C_GetMechanismInfo,
        C_InitToken,
        C_InitPIN,
        C_SetPIN,
        C_OpenSession,
        C_CloseSession,
        C_CloseAllSessions,
        C_GetSessionInfo,
        C_GetOperationState,
        C_SetOperationState,
        C_Login,
        C_Logout,
        C_CreateObject,
        C_CopyObject,
        C_DestroyObject,
        C_GetObjectSize,
        C_GetAttributeValue,
        C_SetAttributeValue,
        C_FindObjectsInit,
        C_FindObjects,
        C_FindObjectsFinal,
        C_EncryptInit,
        C_Encrypt,
        C_EncryptUpdate,
        C_EncryptFinal,
        C_DecryptInit,
        C_Decrypt,
        C_DecryptUpdate,
        C_DecryptFinal,
        C_DigestInit,
        C_Digest,
        C_DigestUpdate,
        C_DigestKey,
        C_DigestFinal,
        C_SignInit,
        C_Sign,
        C_SignUpdate,
        C_SignFinal,
        C_SignRecoverInit,
        C_SignRecover,
        C_VerifyInit,
        C_Verify,
        C_VerifyUpdate,
        C_VerifyFinal,
        C_VerifyRecoverInit,
        C_VerifyRecover,
        C_DigestEncryptUpdate,
        C_DecryptDigestUpdate,
        C_SignEncryptUpdate,
        C_DecryptVerifyUpdate,
        C_GenerateKey,
        C_GenerateKeyPair,
        C_WrapKey,
        C_UnwrapKey,
        C_DeriveKey,
        C_SeedRandom,
        C_GenerateRandom,
        C_GetFunctionStatus,
        C_CancelFunction,
        C_WaitForSlotEvent,
        C_LoginUser,
        C_SessionCancel,
        C_MessageEncryptInit,
        C_EncryptMessage,
        C_EncryptMessageBegin,
        C_EncryptMessageNext,
        C_MessageEncryptFinal,
        C_MessageDecryptInit,
        C_DecryptMessage,
        C_DecryptMessageBegin,
        C_DecryptMessageNext,
        C_MessageDecryptFinal,
        C_MessageSignInit,
        C_SignMessage,
        C_SignMessageBegin,
        C_SignMessageNext,
        C_MessageSignFinal,
        C_MessageVerifyInit,
        C_VerifyMessage,
        C_VerifyMessageBegin,
        C_VerifyMessageNext,
        C_MessageVerifyFinal
    )
}

fn attr(ty: CK_ATTRIBUTE_TYPE, buf: &mut [u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: if buf.is_empty() { null_mut() } else { buf.as_mut_ptr().cast() },
        ulValueLen: buf.len() as CK_ULONG,
    }
}

#[test]
fn the_c_abi_answers_as_the_specification_says() {
    let Some(dir) = body_in_child(|dir| {
        [("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")), ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs"))]
    }) else {
        return;
    };
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    write_provider_config(&dir, &kms.url(), "");

    // SAFETY: dlopen of the provider built from this workspace: it has no constructor of its
    // own (its state starts at C_Initialize), so loading it runs no code that could misbehave.
    let lib = unsafe { libloading::Library::new(provider_lib()) }.unwrap();
    // SAFETY: the provider exports C_GetFunctionList with exactly this PKCS#11 signature; `lib`
    // outlives the symbol (both live to the end of this test).
    let get_list: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList") }.unwrap();
    // SAFETY: the provider exports C_GetInterface with the PKCS#11 3.0 signature of
    // CK_C_GetInterface; `lib` outlives the symbol.
    let get_interface: libloading::Symbol<CK_C_GetInterface> = unsafe { lib.get(b"C_GetInterface") }.unwrap();
    // SAFETY: the provider exports C_GetInterfaceList with the PKCS#11 3.0 signature of
    // CK_C_GetInterfaceList; `lib` outlives the symbol.
    let get_interface_list: libloading::Symbol<CK_C_GetInterfaceList> =
        unsafe { lib.get(b"C_GetInterfaceList") }.unwrap();

    // ---- the tables: 2.40 and 3.0, no NULL slot ------------------------------------------
    // SAFETY: a NULL out-pointer is the case under test: the provider checks it before writing.
    assert_eq!(unsafe { get_list(null_mut()) }, CKR_ARGUMENTS_BAD);
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: `list` is a live local the function writes the table's address into.
    assert_eq!(unsafe { get_list(&mut list) }, CKR_OK);
    // SAFETY: C_GetFunctionList answered CKR_OK, so `list` points to the provider's static
    // CK_FUNCTION_LIST, valid while `lib` is loaded (to the end of this test), only read here.
    let f = unsafe { &*list };
    assert_eq!((f.version.major, f.version.minor), (2, 40));
    assert_eq!(count_null_slots(list), 0);

    let mut count: CK_ULONG = 0;
    // SAFETY: a NULL list asks for the count only; `count` is a live local CK_ULONG.
    assert_eq!(unsafe { get_interface_list.unwrap()(null_mut(), &mut count) }, CKR_OK);
    assert_eq!(count, 2);
    let mut one = [CK_INTERFACE { pInterfaceName: null_mut(), pFunctionList: null_mut(), flags: 0 }; 1];
    let mut short: CK_ULONG = 1;
    // SAFETY: `one` holds `short` (1) CK_INTERFACEs, the length passed; `short` is a live local.
    assert_eq!(unsafe { get_interface_list.unwrap()(one.as_mut_ptr(), &mut short) }, CKR_BUFFER_TOO_SMALL);
    assert_eq!(short, 2);
    let mut interface: *mut CK_INTERFACE = null_mut();
    // SAFETY: NULL name and version ask for the default; `interface` is a live local out-pointer.
    assert_eq!(unsafe { get_interface.unwrap()(null_mut(), null_mut(), &mut interface, 0) }, CKR_OK);
    // SAFETY: C_GetInterface answered CKR_OK, so `interface` points to an entry of the provider's
    // static, initialized INTERFACES array (src/ffi/mod.rs), valid while `lib` is loaded.
    let functions = unsafe { (*interface).pFunctionList };
    // SAFETY: the default interface is the 3.0 one: `functions` points to the provider's static
    // CK_FUNCTION_LIST_3_0, valid while `lib` is loaded, only read here.
    let f3 = unsafe { &*(functions as *const CK_FUNCTION_LIST_3_0) };
    assert_eq!((f3.version.major, f3.version.minor), (3, 0));
    assert_eq!(count_null_slots(f3 as *const CK_FUNCTION_LIST_3_0), 0);
    // Proxies such as OpenSC's pkcs11-spy write into the interface they are handed.
    // A volatile write: a plain self-assignment could be optimised away.
    // SAFETY: `interface` points to an initialized entry of INTERFACES (see above).
    let interface_flags = unsafe { (*interface).flags };
    // SAFETY: INTERFACES is a `static mut`, writable on purpose (src/ffi/mod.rs); no other
    // reference to it is alive and this test is the only thread touching it.
    let flags_field = unsafe { &mut (*interface).flags };
    // SAFETY: `flags_field` is a valid, aligned, exclusive reference to a CK_FLAGS.
    unsafe { std::ptr::write_volatile(flags_field, interface_flags) };
    // SAFETY: `interface` points to an initialized entry of INTERFACES (see above).
    let interface_name = unsafe { (*interface).pInterfaceName };
    // SAFETY: the provider's interface names are NUL-terminated static C strings ("PKCS 11").
    let name = unsafe { std::ffi::CStr::from_ptr(interface_name as *const _) };
    assert_eq!(name.to_bytes(), b"PKCS 11");
    let mut v240 = CK_VERSION { major: 2, minor: 40 };
    // SAFETY: a NUL-terminated name from a C string literal (only read), a live local version
    // and a live local out-pointer.
    assert_eq!(unsafe { get_interface.unwrap()(c"PKCS 11".as_ptr() as *mut _, &mut v240, &mut interface, 0) }, CKR_OK);
    // SAFETY: C_GetInterface answered CKR_OK: `interface` points to an entry of INTERFACES.
    assert_eq!(unsafe { (*interface).pFunctionList } as *const CK_FUNCTION_LIST, list as *const _);
    let mut v9 = CK_VERSION { major: 9, minor: 9 };
    // SAFETY: a live local version (an unknown one, the case under test) and out-pointer.
    assert_eq!(unsafe { get_interface.unwrap()(null_mut(), &mut v9, &mut interface, 0) }, CKR_ARGUMENTS_BAD);
    assert_eq!(
        // SAFETY: a NUL-terminated name from a C string literal (an unknown one, the case under
        // test), only read; a live local out-pointer.
        unsafe { get_interface.unwrap()(c"Vendor".as_ptr() as *mut _, null_mut(), &mut interface, 0) },
        CKR_ARGUMENTS_BAD
    );

    // ---- initialization states -----------------------------------------------------------
    // Before C_Initialize every function, implemented or not, answers NOT_INITIALIZED (even
    // to NULL arguments), except C_Initialize, C_GetFunctionList and the two 3.0 symbols.
    let calls = call_every_other_slot(f3);
    let slots = std::mem::size_of::<CK_FUNCTION_LIST_3_0>() / std::mem::size_of::<usize>() - 1;
    assert_eq!(calls.len() + 4, slots, "every slot of the 3.0 table is called");
    for (name, rv) in calls {
        assert_eq!(rv, CKR_CRYPTOKI_NOT_INITIALIZED, "{name} before C_Initialize");
    }
    // SAFETY: CK_INFO is a C struct of integers and byte arrays: all-zero bits are valid.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(f, C_GetInfo(&mut info)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut reserved = 0u8;
    let mut bad_args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: (&mut reserved as *mut u8).cast(),
    };
    assert_eq!(call!(f, C_Initialize((&mut bad_args as *mut CK_C_INITIALIZE_ARGS).cast())), CKR_ARGUMENTS_BAD);
    // A caller that forbids threads (GnuTLS) is served in its own threads
    // (tests/outside_clients counts them): the flag is accepted like any other.
    let mut no_threads = CK_C_INITIALIZE_ARGS {
        pReserved: null_mut(),
        flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK,
        ..bad_args
    };
    assert_eq!(call!(f, C_Initialize((&mut no_threads as *mut CK_C_INITIALIZE_ARGS).cast())), CKR_OK);
    assert_eq!(call!(f, C_GetInfo(&mut info)), CKR_OK);
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_OK);
    assert_eq!(call!(f, C_GetInfo(&mut info)), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut args = CK_C_INITIALIZE_ARGS { pReserved: null_mut(), ..bad_args };
    assert_eq!(call!(f, C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())), CKR_OK);
    assert_eq!(call!(f, C_Initialize(null_mut())), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_eq!(call!(f, C_GetInfo(null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_GetInfo(&mut info)), CKR_OK);
    assert_eq!(&info.manufacturerID[..8], b"cosmian ");

    // ---- slots, sessions, NULL pointers and bad handles ----------------------------------
    let mut slots = [0 as CK_SLOT_ID; 4];
    let mut n: CK_ULONG = 0;
    assert_eq!(call!(f, C_GetSlotList(CK_TRUE, null_mut(), null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_GetSlotList(CK_TRUE, null_mut(), &mut n)), CKR_OK);
    assert_eq!(n, 1);
    n = 0;
    assert_eq!(call!(f, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)), CKR_BUFFER_TOO_SMALL);
    n = 4;
    assert_eq!(call!(f, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)), CKR_OK);
    let slot = slots[0];
    // SAFETY: CK_TOKEN_INFO is a C struct of integers and byte arrays: all-zero bits are valid.
    let mut token: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(f, C_GetTokenInfo(slot + 100, &mut token)), CKR_SLOT_ID_INVALID);
    assert_eq!(call!(f, C_GetTokenInfo(slot, &mut token)), CKR_OK);
    assert_eq!(token.flags & CKF_LOGIN_REQUIRED, 0);
    assert_eq!((token.ulMinPinLen, token.ulMaxPinLen), (0, 0), "no PIN without PIN mode");
    assert_ne!(token.flags & CKF_TOKEN_INITIALIZED, 0);
    // SAFETY: CK_MECHANISM_INFO is a C struct of integers: all-zero bits are valid.
    let mut mech_info: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(f, C_GetMechanismInfo(slot, CKM_AES_GCM, &mut mech_info)), CKR_MECHANISM_INVALID);
    assert_eq!(call!(f, C_GetMechanismInfo(slot, CKM_ECDSA, &mut mech_info)), CKR_OK);
    assert_ne!(mech_info.flags & CKF_SIGN, 0);

    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    let mut session: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(f, C_OpenSession(slot, flags, null_mut(), None, null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(
        call!(f, C_OpenSession(slot, CKF_RW_SESSION, null_mut(), None, &mut session)),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(call!(f, C_OpenSession(slot, flags, null_mut(), None, &mut session)), CKR_OK);
    assert_eq!(call!(f, C_CloseSession(session + 1000)), CKR_SESSION_HANDLE_INVALID);
    let mut found = [0 as CK_OBJECT_HANDLE; 8];
    assert_eq!(call!(f, C_FindObjects(session, found.as_mut_ptr(), 8, &mut n)), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(call!(f, C_FindObjectsInit(session, null_mut(), 2)), CKR_ARGUMENTS_BAD);

    // ---- the private key, found as OpenSSH does ------------------------------------------
    let mut class = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut id = pair.private_id.as_bytes().to_vec();
    let mut template = [attr(CKA_CLASS, &mut class), attr(CKA_ID, &mut id)];
    assert_eq!(call!(f, C_FindObjectsInit(session, template.as_mut_ptr(), 2)), CKR_OK);
    assert_eq!(call!(f, C_FindObjectsInit(session, template.as_mut_ptr(), 2)), CKR_OPERATION_ACTIVE);
    assert_eq!(call!(f, C_FindObjects(session, found.as_mut_ptr(), 8, &mut n)), CKR_OK);
    assert_eq!(n, 1);
    let key = found[0];
    assert_eq!(call!(f, C_FindObjects(session, found.as_mut_ptr(), 8, &mut n)), CKR_OK);
    assert_eq!(n, 0);
    assert_eq!(call!(f, C_FindObjectsFinal(session)), CKR_OK);

    // ---- C_GetAttributeValue: each attribute answered on its own --------------------------
    let mut label_probe = [];
    let mut modulus = [0u8; 300];
    let mut id_short = [0u8; 1];
    let mut key_type = [0u8; std::mem::size_of::<CK_ULONG>()];
    let mut template = [
        attr(CKA_LABEL, &mut label_probe),
        attr(CKA_MODULUS, &mut modulus),
        attr(CKA_ID, &mut id_short),
        attr(CKA_KEY_TYPE, &mut key_type),
    ];
    let rv = call!(f, C_GetAttributeValue(session, key, template.as_mut_ptr(), 4));
    assert_eq!(rv, CKR_ATTRIBUTE_TYPE_INVALID, "the first problem met is the call's code");
    assert_eq!(template[0].ulValueLen as usize, pair.private_id.len(), "size query filled");
    assert_eq!(template[1].ulValueLen, CK_UNAVAILABLE_INFORMATION, "an EC key has no modulus");
    assert_eq!(template[2].ulValueLen, CK_UNAVAILABLE_INFORMATION, "too short a buffer");
    assert_eq!(CK_ULONG::from_ne_bytes(key_type), CKK_EC, "the others are still filled");
    let mut value = [0u8; 64];
    let mut template = [attr(CKA_VALUE, &mut value)];
    assert_eq!(call!(f, C_GetAttributeValue(session, key, template.as_mut_ptr(), 1)), CKR_ATTRIBUTE_SENSITIVE);
    assert_eq!(template[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let mut id_full = [0u8; 64];
    let mut template = [attr(CKA_ID, &mut id_full)];
    assert_eq!(call!(f, C_GetAttributeValue(session, key, template.as_mut_ptr(), 1)), CKR_OK);
    assert_eq!(&id_full[..template[0].ulValueLen as usize], pair.private_id.as_bytes());
    assert_eq!(call!(f, C_GetAttributeValue(session, key + 1000, template.as_mut_ptr(), 1)), CKR_OBJECT_HANDLE_INVALID);

    // ---- caps on caller-supplied templates: 64 attributes, 64 KiB a search value -----------
    let mut many: Vec<CK_ATTRIBUTE> = (0..65).map(|_| attr(CKA_ID, &mut [])).collect();
    assert_eq!(call!(f, C_GetAttributeValue(session, key, many.as_mut_ptr(), 65)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_GetAttributeValue(session, key, many.as_mut_ptr(), 64)), CKR_OK);
    let mut private = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut classes: Vec<CK_ATTRIBUTE> = (0..65).map(|_| attr(CKA_CLASS, &mut private)).collect();
    assert_eq!(call!(f, C_FindObjectsInit(session, classes.as_mut_ptr(), 65)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_FindObjectsInit(session, classes.as_mut_ptr(), 64)), CKR_OK);
    assert_eq!(call!(f, C_FindObjectsFinal(session)), CKR_OK);
    let mut long_label = vec![b'x'; (64 << 10) + 1];
    let mut search = [attr(CKA_LABEL, &mut long_label)];
    assert_eq!(call!(f, C_FindObjectsInit(session, search.as_mut_ptr(), 1)), CKR_ATTRIBUTE_VALUE_INVALID);
    search[0].ulValueLen -= 1;
    assert_eq!(call!(f, C_FindObjectsInit(session, search.as_mut_ptr(), 1)), CKR_OK, "64 KiB is accepted");
    assert_eq!(call!(f, C_FindObjectsFinal(session)), CKR_OK);

    // ---- C_GetObjectSize: what the specification allows for a size nobody knows ----------
    let mut size: CK_ULONG = 0;
    assert_eq!(call!(f, C_GetObjectSize(session, key, &mut size)), CKR_INFORMATION_SENSITIVE);
    assert_eq!(size, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(call!(f, C_GetObjectSize(session, key, null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_GetObjectSize(session, key + 1000, &mut size)), CKR_OBJECT_HANDLE_INVALID);
    assert_eq!(call!(f, C_GetObjectSize(session + 1000, key, &mut size)), CKR_SESSION_HANDLE_INVALID);

    // ---- signing: wrong state, size query, short buffer, then the signature --------------
    let digest = [0x5Au8; 32];
    let mut sig = [0u8; 64];
    let mut sig_len: CK_ULONG = 64;
    assert_eq!(
        call!(f, C_Sign(session, digest.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: null_mut(), ulParameterLen: 0 };
    assert_eq!(call!(f, C_SignInit(session, null_mut(), key)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_SignInit(session, &mut mechanism, key)), CKR_OK);
    sig_len = 0;
    assert_eq!(call!(f, C_Sign(session, digest.as_ptr() as *mut _, 32, null_mut(), &mut sig_len)), CKR_OK);
    assert_eq!(sig_len, 64, "size query");
    sig_len = 10;
    assert_eq!(
        call!(f, C_Sign(session, digest.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(sig_len, 64);
    sig_len = 64;
    assert_eq!(
        call!(f, C_Sign(session, digest.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OK,
        "the operation survived"
    );
    assert_ne!(sig, [0; 64]);
    assert_eq!(
        call!(f, C_Sign(session, digest.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED,
        "a signature ends the operation"
    );
    assert_eq!(call!(f, C_SignInit(session, &mut mechanism, key)), CKR_OK);
    assert_eq!(call!(f, C_Sign(session, null_mut(), 32, sig.as_mut_ptr(), &mut sig_len)), CKR_ARGUMENTS_BAD);

    // ---- at most 16 MiB signed, in one part or several: beyond, DATA_LEN_RANGE ends it -----
    let mut capped = 0;
    assert_eq!(call!(f, C_OpenSession(slot, flags, null_mut(), None, &mut capped)), CKR_OK);
    let mut hashing = CK_MECHANISM { mechanism: CKM_ECDSA_SHA256, pParameter: null_mut(), ulParameterLen: 0 };
    let mut half = vec![0x5Au8; 8 << 20];
    assert_eq!(call!(f, C_SignInit(capped, &mut hashing, key)), CKR_OK);
    for _ in 0..2 {
        assert_eq!(
            call!(f, C_SignUpdate(capped, half.as_mut_ptr(), half.len() as CK_ULONG)),
            CKR_OK,
            "16 MiB in all is accepted"
        );
    }
    assert_eq!(call!(f, C_SignUpdate(capped, half.as_mut_ptr(), 1)), CKR_DATA_LEN_RANGE);
    sig_len = 64;
    assert_eq!(
        call!(f, C_SignFinal(capped, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED,
        "the operation ended"
    );
    let mut over = vec![0x5Au8; (16 << 20) + 1];
    assert_eq!(call!(f, C_SignInit(capped, &mut hashing, key)), CKR_OK);
    assert_eq!(
        call!(f, C_Sign(capped, over.as_mut_ptr(), over.len() as CK_ULONG, sig.as_mut_ptr(), &mut sig_len)),
        CKR_DATA_LEN_RANGE
    );
    assert_eq!(
        call!(f, C_Sign(capped, digest.as_ptr() as *mut _, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(call!(f, C_CloseSession(capped)), CKR_OK);

    // ---- what the provider does not do ---------------------------------------------------
    let mut random = [0u8; 8];
    assert_eq!(call!(f, C_GenerateRandom(session, random.as_mut_ptr(), 8)), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(call!(f, C_EncryptInit(session, &mut mechanism, key)), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(call!(f3, C_SessionCancel(session, 0)), CKR_FUNCTION_NOT_SUPPORTED);
    // The legacy parallel-function calls: "should simply return CKR_FUNCTION_NOT_PARALLEL".
    assert_eq!(call!(f, C_GetFunctionStatus(session)), CKR_FUNCTION_NOT_PARALLEL);
    assert_eq!(call!(f, C_CancelFunction(session)), CKR_FUNCTION_NOT_PARALLEL);

    // ---- finalization ----------------------------------------------------------------------
    assert_eq!(call!(f, C_Finalize((&mut reserved as *mut u8).cast())), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_OK);
    assert_eq!(call!(f, C_GetInfo(&mut info)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(call!(f, C_CloseSession(session)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(call!(f, C_GetFunctionStatus(session)), CKR_CRYPTOKI_NOT_INITIALIZED);

    // ---- PIN mode: ulMaxPinLen is the longest PIN (access token) C_Login takes --------------
    // The same configuration file, now in PIN mode: C_Initialize reads it again.
    write_pin_mode_config(&dir, &kms.url(), "");
    assert_eq!(call!(f, C_Initialize(null_mut())), CKR_OK);
    assert_eq!(call!(f, C_GetTokenInfo(slot, &mut token)), CKR_OK);
    assert_ne!(token.flags & CKF_LOGIN_REQUIRED, 0);
    assert_eq!((token.ulMinPinLen, token.ulMaxPinLen), (1, 16 << 10));
    assert_eq!(call!(f, C_OpenSession(slot, flags, null_mut(), None, &mut session)), CKR_OK);
    let mut pin = vec![b'a'; token.ulMaxPinLen as usize + 1];
    assert_eq!(call!(f, C_Login(session, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)), CKR_PIN_LEN_RANGE);
    // The longest PIN goes to the KMS as a bearer token; this KMS checks no token.
    assert_eq!(call!(f, C_Login(session, CKU_USER, pin.as_mut_ptr(), token.ulMaxPinLen)), CKR_OK);
    assert_eq!(call!(f, C_Finalize(null_mut())), CKR_OK);
}

/// `panic = "abort"` must not build: the entry points' `catch_unwind` is what keeps a panic
/// from killing the client. rustc alone on src/lib.rs fails anyway (no dependencies given),
/// but names that reason with `-C panic=abort`, and only then.
#[test]
fn a_build_with_panic_abort_does_not_compile() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = tempfile::tempdir().unwrap();
    let errors = |strategy: &str| {
        let output = std::process::Command::new(&rustc)
            .args(["--edition", "2021", "--crate-type", "rlib", "--emit=metadata", "-C", &format!("panic={strategy}")])
            .arg("--out-dir")
            .arg(out.path())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let reason = "must be built with panic = \"unwind\"";
    assert!(errors("abort").contains(reason), "no compile_error for panic = \"abort\"");
    assert!(!errors("unwind").contains(reason));
}
