//! The provider loaded as a PKCS#11 client loads it, for tests that run it in their own
//! process: [`function_list`] (dlopen and `C_GetFunctionList`, for raw C calls) and
//! [`cryptoki_session`] (the `cryptoki` crate, initialized, a session on the token).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::Session;
use cryptoki_sys::{CK_FUNCTION_LIST, CK_RV, CKR_OK};

use crate::provider_lib;

/// The provider's 2.40 function table, from a `dlopen` that stays open until the process
/// ends (what a client like ssh does; the threads and forks of a test may use it throughout).
///
/// # Panics
/// When the library does not load or `C_GetFunctionList` fails.
pub fn function_list() -> &'static CK_FUNCTION_LIST {
    // SAFETY: dlopen of the provider built from this workspace: it has no constructor of its
    // own (its state starts at C_Initialize), so loading it runs no code that could misbehave;
    // the handle is leaked so the table stays valid for the rest of the process.
    let lib: &'static libloading::Library =
        Box::leak(Box::new(unsafe { libloading::Library::new(provider_lib()) }.expect("dlopen the provider")));
    // SAFETY: the provider exports C_GetFunctionList with exactly this PKCS#11 signature; `lib`
    // is leaked, so it outlives the symbol.
    let get_list: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList") }.expect("C_GetFunctionList");
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a live local the function writes the table's address into.
    assert_eq!(unsafe { get_list(&mut list) }, CKR_OK);
    // SAFETY: C_GetFunctionList answered CKR_OK (asserted), so `list` points to the provider's
    // static CK_FUNCTION_LIST, which lives as long as the library, which is never unloaded.
    unsafe { &*list }
}

/// Loads the provider with `cryptoki`, initializes it (OS locking) and opens a read-only
/// session on its token. The provider's configuration is the environment this process started
/// with: see [`run_in_child`](crate::run_in_child).
///
/// # Panics
/// When any step fails.
pub fn cryptoki_session() -> (Pkcs11, Session) {
    let pkcs11 = Pkcs11::new(provider_lib()).expect("load the provider");
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("C_Initialize");
    let slot = pkcs11.get_slots_with_token().expect("C_GetSlotList")[0];
    let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    (pkcs11, session)
}
