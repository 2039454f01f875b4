//! The C ABI: the three exported symbols (`C_GetFunctionList`, `C_GetInterfaceList`,
//! `C_GetInterface`), the 2.40 and 3.0 function tables, and the entry points. Every entry
//! point checks its pointers, calls the safe core in [`crate::provider`], catches any panic,
//! and returns a CK_RV.

#![allow(non_snake_case)]

/// `with_2_40_slots!(callback!([ARGS] EXTRA, ...))` calls
/// `callback!(ARGS; <every 2.40 slot, in order>, EXTRA, ...)`: the one list of the 2.40
/// slots, for the tables below and for the tests that call every slot. (The 3.0 table begins
/// as the 2.40 one; its extra slots are the EXTRAs.)
macro_rules! with_2_40_slots {
    ($callback:ident!([$($args:tt)*] $($extra:ident),* $(,)?)) => {
        $callback!($($args)*;
            C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
            C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN,
            C_SetPIN, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
            C_GetOperationState, C_SetOperationState, C_Login, C_Logout, C_CreateObject,
            C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue,
            C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
            C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt,
            C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey,
            C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
            C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
            C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
            C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair,
            C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom,
            C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent $(, $extra)*)
    };
}

mod entry;
mod unsupported;

use cryptoki_sys::*;
use entry::*;
use unsupported::*;

const VERSION_2_40: CK_VERSION = CK_VERSION { major: 2, minor: 40 };
const VERSION_3_0: CK_VERSION = CK_VERSION { major: 3, minor: 0 };

/// Builds a function table from the names of its slots, each the function of that name.
macro_rules! table {
    ($ty:ident, $version:expr; $($name:ident),*) => {
        $ty { version: $version, $($name: Some($name),)* }
    };
}

static FUNCTION_LIST: CK_FUNCTION_LIST = with_2_40_slots!(table!([CK_FUNCTION_LIST, VERSION_2_40]));

static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = with_2_40_slots!(table!(
    [CK_FUNCTION_LIST_3_0, VERSION_3_0]
    C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel, C_MessageEncryptInit,
    C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal,
    C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext,
    C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage, C_SignMessageBegin, C_SignMessageNext,
    C_MessageSignFinal, C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin,
    C_VerifyMessageNext, C_MessageVerifyFinal
));

/// The interface name of PKCS#11 3.0, NUL-terminated.
static INTERFACE_NAME: &[u8; 8] = b"PKCS 11\0";

/// The interfaces handed out by `C_GetInterface`/`C_GetInterfaceList`: "PKCS 11" 3.0 (the
/// default) and 2.40. WRITABLE on purpose: clients may write into the `CK_INTERFACE` they are
/// given (OpenSC's pkcs11-spy replaces `pFunctionList` with its own table), which would fault
/// on read-only memory. Only ever accessed through raw pointers.
static mut INTERFACES: [CK_INTERFACE; 2] = [
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut std::os::raw::c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut std::os::raw::c_void,
        flags: 0,
    },
];

/// Pointers to the entries of [`INTERFACES`].
fn interfaces() -> [*mut CK_INTERFACE; 2] {
    let base = std::ptr::addr_of_mut!(INTERFACES) as *mut CK_INTERFACE;
    // SAFETY: one past `base` is the second element of the two-element static array.
    let second = unsafe { base.add(1) };
    [base, second]
}

/// The PKCS#11 2.40 entry point.
///
/// # Safety
/// `ppFunctionList` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn C_GetFunctionList(ppFunctionList: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    entry::guard("C_GetFunctionList", || {
        // SAFETY: `ppFunctionList` is NULL or a writable pointer, by this function's contract.
        let out = unsafe { entry::out(ppFunctionList) }?;
        *out = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

/// The PKCS#11 3.0 interfaces: "PKCS 11" 3.0 (default) and 2.40.
///
/// # Safety
/// `pulCount` is NULL or valid for reading and writing a `CK_ULONG`; `pInterfacesList` is NULL
/// or valid for writing `*pulCount` interfaces.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn C_GetInterfaceList(
    pInterfacesList: *mut CK_INTERFACE,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    entry::guard("C_GetInterfaceList", || {
        let all: Vec<CK_INTERFACE> = interfaces()
            .iter()
            .map(|i| {
                // SAFETY: an entry of INTERFACES, static and initialized.
                unsafe { i.read() }
            })
            .collect();
        // SAFETY: `fill_list`'s contract is this function's.
        unsafe { entry::fill_list(pInterfacesList, pulCount, &all) }
    })
}

/// Looks an interface up by name, version and flags; NULL name or version pick the default.
///
/// # Safety
/// `pInterfaceName` is NULL or a NUL-terminated string; `pVersion` is NULL or valid for reading
/// a `CK_VERSION`; `ppInterface` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn C_GetInterface(
    pInterfaceName: *mut CK_UTF8CHAR,
    pVersion: *mut CK_VERSION,
    ppInterface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    entry::guard("C_GetInterface", || {
        // SAFETY: `ppInterface` is NULL or a writable pointer, by this function's contract.
        let out = unsafe { entry::out(ppInterface) }?;
        if !pInterfaceName.is_null() {
            // SAFETY: not NULL, so a NUL-terminated string by this function's contract.
            let name = unsafe { std::ffi::CStr::from_ptr(pInterfaceName as *const std::os::raw::c_char) };
            if name.to_bytes() != b"PKCS 11" {
                return Err(crate::error::Error::new(CKR_ARGUMENTS_BAD, "unknown interface name"));
            }
        }
        // SAFETY: not NULL, so a readable CK_VERSION by this function's contract.
        let wanted = (!pVersion.is_null()).then(|| unsafe { *pVersion });
        let found = interfaces().into_iter().find(|i| {
            // SAFETY: an entry of INTERFACES, static and initialized.
            let function_list = unsafe { (**i).pFunctionList };
            // SAFETY: pFunctionList points at a function table, which always starts with its
            // CK_VERSION (ours, or a client's that replaced it).
            let version = unsafe { *(function_list as *const CK_VERSION) };
            // SAFETY: an entry of INTERFACES, static and initialized.
            let own_flags = unsafe { (**i).flags };
            wanted.is_none_or(|w| w.major == version.major && w.minor == version.minor) && own_flags & flags == flags
        });
        match found {
            Some(i) => {
                *out = i;
                Ok(())
            }
            None => Err(crate::error::Error::new(CKR_ARGUMENTS_BAD, "no such interface version or flags")),
        }
    })
}
