//! The implemented PKCS#11 entry points: pointer checks and C struct conversions around
//! calls into [`Provider`]. Nothing here decides anything the core could decide.
//!
//! Every entry point is an unsafe C function whose caller, the PKCS#11 client, must keep the
//! specification's pointer contract (each `# Safety` section says it for that function): a
//! pointer argument is NULL or valid for what PKCS#11 does with it (an output pointer writable
//! for one value of its type, an input array readable for the length given with it, an output
//! buffer writable for the length the caller states), properly aligned, and used by nothing
//! else during the call. Each raw-pointer operation is an `unsafe` block of its own, with the
//! reason it is sound (`clippy::multiple_unsafe_ops_per_block`, `clippy::undocumented_unsafe_blocks`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};

use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::provider::{Attr, MAX_SIGN_DATA, MECHANISMS, Parameter, Provider, SignOutput, Template, logger};

/// The initialized provider, between C_Initialize and C_Finalize.
static PROVIDER: RwLock<Option<Arc<Provider>>> = RwLock::new(None);

/// Caps on caller-supplied templates: at most `MAX_TEMPLATE_LEN` attributes
/// (`CKR_ARGUMENTS_BAD` beyond, in C_FindObjectsInit and C_GetAttributeValue), each search
/// value at most `MAX_TEMPLATE_VALUE` bytes (`CKR_ATTRIBUTE_VALUE_INVALID`); no key of this
/// token has more attributes, nor a value that long. Data to sign: see `MAX_SIGN_DATA`.
const MAX_TEMPLATE_VALUE: CK_ULONG = 64 << 10;
const MAX_TEMPLATE_LEN: CK_ULONG = 64;
/// Longest PIN accepted by C_Login (`CKR_PIN_LEN_RANGE` beyond): in PIN mode the PIN is the
/// KMS access token, and an OIDC token may be long. `ulMaxPinLen` in PIN mode.
const MAX_PIN_LEN: CK_ULONG = 16 << 10;

/// Runs an entry point's body with the provider's logger, turning errors into their code and
/// a panic into CKR_GENERAL_ERROR. Nothing unwinds into the caller.
pub(super) fn guard(name: &'static str, body: impl FnOnce() -> Result<()>) -> CK_RV {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        tracing::dispatcher::with_default(logger(), || {
            #[cfg(test)]
            if panic_injection::ARMED.with(std::cell::Cell::get) {
                panic!("panic injected into {name}");
            }
            let result = body();
            match &result {
                Ok(()) => tracing::trace!("{name}: ok"),
                // The token (the KMS) failing, or refusing our credentials: worth a line at the
                // default level. A caller's mistake is only debug.
                Err(e)
                    if matches!(
                        e.rv,
                        CKR_DEVICE_ERROR | CKR_FUNCTION_FAILED | CKR_GENERAL_ERROR | CKR_USER_NOT_LOGGED_IN
                    ) =>
                {
                    tracing::warn!("{name}: {e}")
                }
                Err(e) => tracing::debug!("{name}: {e}"),
            }
            result
        })
    }));
    match outcome {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => e.rv,
        Err(_) => {
            // The logger itself may be what panicked: keep this path free of it.
            CKR_GENERAL_ERROR
        }
    }
}

/// The answer of a function the provider does not implement (see `unsupported.rs`): `rv`,
/// or `CKR_CRYPTOKI_NOT_INITIALIZED` before C_Initialize. No logging, nothing that unwinds.
pub(super) fn stub(rv: CK_RV) -> CK_RV {
    catch_unwind(|| if provider().is_ok() { rv } else { CKR_CRYPTOKI_NOT_INITIALIZED }).unwrap_or(CKR_GENERAL_ERROR)
}

fn bad_args(what: &str) -> Error {
    Error::new(CKR_ARGUMENTS_BAD, what.to_owned())
}

/// A caller's output pointer.
///
/// # Safety
/// `p` is NULL, or aligned and valid for reads and writes of a `T`, and nothing else reads or
/// writes that `T` during `'a`.
pub(super) unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T> {
    // SAFETY: NULL gives None; otherwise valid and unaliased for 'a, by this function's contract.
    unsafe { p.as_mut() }.ok_or_else(|| bad_args("NULL output pointer"))
}

/// A caller's input array; NULL is allowed for an empty one.
///
/// # Safety
/// When `len` is not 0 and at most `max`, `p` is NULL, or aligned and valid for reading `len`
/// values of `T`, which nothing writes during `'a`.
unsafe fn input<'a, T>(p: *const T, len: CK_ULONG, max: CK_ULONG) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(bad_args("NULL pointer with a non-zero length"));
    }
    if len > max {
        return Err(Error::new(CKR_DATA_LEN_RANGE, format!("length {len} is beyond what this token accepts")));
    }
    // SAFETY: `p` is not NULL and `len` is neither 0 nor beyond `max`, so by this function's
    // contract `p` is valid for reading `len` values, unchanged during 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// The two-call list pattern: NULL list → count; short list → count and BUFFER_TOO_SMALL.
///
/// # Safety
/// `count` is NULL or valid for reading and writing a `CK_ULONG`; `list` is NULL or valid for
/// writing as many `T` as `*count` says on entry; neither overlaps `items` or the other.
pub(super) unsafe fn fill_list<T: Copy>(list: *mut T, count: *mut CK_ULONG, items: &[T]) -> Result<()> {
    // SAFETY: `count` is NULL or valid for a CK_ULONG, by this function's contract.
    let count = unsafe { out(count) }?;
    let available = *count;
    *count = items.len() as CK_ULONG;
    if list.is_null() {
        return Ok(());
    }
    if (available as usize) < items.len() {
        return Err(Error::new(CKR_BUFFER_TOO_SMALL, "list too short"));
    }
    // SAFETY: `list` is not NULL and holds `available` >= `items.len()` values (checked above),
    // writable and not overlapping `items` by this function's contract.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len()) };
    Ok(())
}

/// A blank-padded, not NUL-terminated PKCS#11 text field.
fn pad<const N: usize>(text: &str) -> [CK_UTF8CHAR; N] {
    let mut field = [b' '; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
    field
}

fn provider() -> Result<Arc<Provider>> {
    let guard = crate::read(&PROVIDER);
    match guard.as_ref() {
        Some(p) if p.pid == std::process::id() => Ok(p.clone()),
        _ => Err(Error::new(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Initialize has not been called")),
    }
}

fn library_version() -> CK_VERSION {
    let part = |s: &str| s.parse::<u8>().unwrap_or(0);
    CK_VERSION { major: part(env!("CARGO_PKG_VERSION_MAJOR")), minor: part(env!("CARGO_PKG_VERSION_MINOR")) }
}

// ---- general ----------------------------------------------------------------------------

/// # Safety
/// `pInitArgs` is NULL or valid for reading a `CK_C_INITIALIZE_ARGS`.
pub(super) unsafe extern "C" fn C_Initialize(pInitArgs: *mut std::os::raw::c_void) -> CK_RV {
    guard("C_Initialize", || {
        let mut may_create_threads = true;
        // SAFETY: NULL gives None; otherwise a readable CK_C_INITIALIZE_ARGS, by this function's
        // contract.
        if let Some(args) = unsafe { (pInitArgs as *const CK_C_INITIALIZE_ARGS).as_ref() } {
            if !args.pReserved.is_null() {
                return Err(bad_args("pReserved must be NULL"));
            }
            let callbacks = [
                args.CreateMutex.is_some(),
                args.DestroyMutex.is_some(),
                args.LockMutex.is_some(),
                args.UnlockMutex.is_some(),
            ];
            let given = callbacks.iter().filter(|c| **c).count();
            if given != 0 && given != 4 {
                return Err(bad_args("mutex callbacks must be all given or none"));
            }
            if given == 4 && args.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(Error::new(CKR_CANT_LOCK, "only OS locking is supported"));
            }
            // The caller's promise about its own threads (GnuTLS makes it): the provider then
            // resolves the KMS's name and connects in the caller's thread (kmip::resolver).
            may_create_threads = args.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0;
        }
        let mut state = crate::write(&PROVIDER);
        if let Some(p) = state.as_ref() {
            if p.pid == std::process::id() {
                return Err(Error::new(CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialized"));
            }
            // A forked child starts afresh. The parent's provider is left to the parent, never
            // dropped here: its connection is the parent's, and its background thread was not
            // copied by fork (joining it would wait forever).
            tracing::debug!(parent = p.pid, "initializing again in a forked child");
            std::mem::forget(state.take());
        }
        *state = Some(Arc::new(Provider::from_environment(may_create_threads)));
        Ok(())
    })
}

/// # Safety
/// None: `pReserved` is only compared with NULL.
pub(super) unsafe extern "C" fn C_Finalize(pReserved: *mut std::os::raw::c_void) -> CK_RV {
    guard("C_Finalize", || {
        provider()?;
        if !pReserved.is_null() {
            return Err(bad_args("pReserved must be NULL"));
        }
        let finished = crate::write(&PROVIDER).take();
        // Outside the lock: a call still running in another thread finishes meanwhile.
        if let Some(p) = finished {
            p.end_background_work(true);
        }
        Ok(())
    })
}

/// Run when the library is unloaded (`dlclose`: ssh-pkcs11-helper unloads without
/// C_Finalize) or the process exits, with the provider still initialized in this process: its
/// background work is interrupted and its thread joined, so that no thread runs the library's
/// code once it is unmapped. Skipped when another thread holds the provider's lock, or the
/// provider is a forked parent's.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".fini_array")]
static AT_UNLOAD: extern "C" fn() = at_unload;

#[cfg(target_os = "linux")]
extern "C" fn at_unload() {
    let _ = catch_unwind(|| {
        let Ok(mut state) = PROVIDER.try_write() else { return };
        if state.as_ref().is_some_and(|p| p.pid == std::process::id()) {
            let finished = state.take();
            drop(state);
            if let Some(p) = finished {
                p.end_background_work(false);
            }
        }
    });
}

/// # Safety
/// `pInfo` is NULL or valid for writing a `CK_INFO`.
pub(super) unsafe extern "C" fn C_GetInfo(pInfo: *mut CK_INFO) -> CK_RV {
    guard("C_GetInfo", || {
        provider()?;
        // SAFETY: `pInfo` is NULL or a writable CK_INFO, by this function's contract.
        let info = unsafe { out(pInfo) }?;
        *info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
            manufacturerID: pad("cosmian"),
            flags: 0,
            libraryDescription: pad("Cosmian KMS PKCS#11 provider"),
            libraryVersion: library_version(),
        };
        Ok(())
    })
}

// ---- slot and token ---------------------------------------------------------------------

/// # Safety
/// `pulCount` is NULL or valid for reading and writing a `CK_ULONG`; `pSlotList` is NULL or
/// valid for writing `*pulCount` slot IDs.
pub(super) unsafe extern "C" fn C_GetSlotList(
    _tokenPresent: CK_BBOOL,
    pSlotList: *mut CK_SLOT_ID,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    guard("C_GetSlotList", || {
        let slots = provider()?.slot_ids();
        // SAFETY: `fill_list`'s contract is this function's.
        unsafe { fill_list(pSlotList, pulCount, &slots) }
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writing a `CK_SLOT_INFO`.
pub(super) unsafe extern "C" fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_SLOT_INFO) -> CK_RV {
    guard("C_GetSlotInfo", || {
        provider()?.check_slot(slotID)?;
        // SAFETY: `pInfo` is NULL or a writable CK_SLOT_INFO, by this function's contract.
        let info = unsafe { out(pInfo) }?;
        *info = CK_SLOT_INFO {
            slotDescription: pad("Cosmian KMS"),
            manufacturerID: pad("cosmian"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: library_version(),
            firmwareVersion: library_version(),
        };
        Ok(())
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writing a `CK_TOKEN_INFO`.
pub(super) unsafe extern "C" fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_TOKEN_INFO) -> CK_RV {
    guard("C_GetTokenInfo", || {
        let p = provider()?;
        p.check_slot(slotID)?;
        // SAFETY: `pInfo` is NULL or a writable CK_TOKEN_INFO, by this function's contract.
        let info = unsafe { out(pInfo) }?;
        let (sessions, rw_sessions) = p.session_counts();
        let label = p.token_label();
        *info = CK_TOKEN_INFO {
            label: pad(&label),
            manufacturerID: pad("cosmian"),
            model: pad("KMS"),
            serialNumber: pad(&format!("{:016x}", fnv1a(label.as_bytes()))),
            // CKF_LOGIN_REQUIRED only in PIN mode: otherwise credentials come from the
            // configuration, and OpenSSH in batch mode gives up on tokens that want a PIN.
            flags: CKF_TOKEN_INITIALIZED
                | CKF_USER_PIN_INITIALIZED
                | if p.login_required() { CKF_LOGIN_REQUIRED } else { 0 },
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw_sessions as CK_ULONG,
            ulMaxPinLen: if p.login_required() { MAX_PIN_LEN } else { 0 },
            ulMinPinLen: if p.login_required() { 1 } else { 0 },
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: library_version(),
            firmwareVersion: library_version(),
            utcTime: pad(""),
        };
        Ok(())
    })
}

/// A stable serial number from the token label.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// # Safety
/// `pulCount` is NULL or valid for reading and writing a `CK_ULONG`; `pMechanismList` is NULL
/// or valid for writing `*pulCount` mechanism types.
pub(super) unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: *mut CK_MECHANISM_TYPE,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    guard("C_GetMechanismList", || {
        provider()?.check_slot(slotID)?;
        // SAFETY: `fill_list`'s contract is this function's.
        unsafe { fill_list(pMechanismList, pulCount, &MECHANISMS) }
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writing a `CK_MECHANISM_INFO`.
pub(super) unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard("C_GetMechanismInfo", || {
        let (min, max, flags) = provider()?.mechanism_info(slotID, type_)?;
        // SAFETY: `pInfo` is NULL or a writable CK_MECHANISM_INFO, by this function's contract.
        let info = unsafe { out(pInfo) }?;
        *info = CK_MECHANISM_INFO { ulMinKeySize: min, ulMaxKeySize: max, flags };
        Ok(())
    })
}

// ---- sessions ---------------------------------------------------------------------------

/// # Safety
/// `phSession` is NULL or valid for writing a `CK_SESSION_HANDLE`. (`pApplication` and
/// `Notify` are not used.)
pub(super) unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    _pApplication: *mut std::os::raw::c_void,
    _Notify: CK_NOTIFY,
    phSession: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard("C_OpenSession", || {
        let p = provider()?;
        // SAFETY: `phSession` is NULL or a writable handle, by this function's contract.
        let handle = unsafe { out(phSession) }?;
        *handle = p.open_session(slotID, flags)?;
        Ok(())
    })
}

/// # Safety
/// None: no pointer arguments.
pub(super) unsafe extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CloseSession", || provider()?.close_session(hSession))
}

/// # Safety
/// None: no pointer arguments.
pub(super) unsafe extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    guard("C_CloseAllSessions", || provider()?.close_all_sessions(slotID))
}

/// # Safety
/// `pInfo` is NULL or valid for writing a `CK_SESSION_INFO`.
pub(super) unsafe extern "C" fn C_GetSessionInfo(hSession: CK_SESSION_HANDLE, pInfo: *mut CK_SESSION_INFO) -> CK_RV {
    guard("C_GetSessionInfo", || {
        let (slotID, state, flags) = provider()?.session_info(hSession)?;
        // SAFETY: `pInfo` is NULL or a writable CK_SESSION_INFO, by this function's contract.
        let info = unsafe { out(pInfo) }?;
        *info = CK_SESSION_INFO { slotID, state, flags, ulDeviceError: 0 };
        Ok(())
    })
}

/// # Safety
/// `pPin` is NULL or valid for reading `ulPinLen` bytes.
pub(super) unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: *mut CK_UTF8CHAR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    guard("C_Login", || {
        // The PIN is never logged; in PIN mode it is the KMS access token, else it is ignored.
        let p = provider()?;
        // SAFETY: `pPin` is NULL or readable for `ulPinLen` bytes, by this function's contract.
        let pin = unsafe { input(pPin, ulPinLen, MAX_PIN_LEN) }.map_err(|e| match e.rv {
            CKR_DATA_LEN_RANGE => Error::new(CKR_PIN_LEN_RANGE, format!("a PIN is at most {MAX_PIN_LEN} bytes")),
            _ => e,
        })?;
        p.login(hSession, userType, pin)
    })
}

/// # Safety
/// None: no pointer arguments.
pub(super) unsafe extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_Logout", || provider()?.logout(hSession))
}

// ---- objects ----------------------------------------------------------------------------

/// # Safety
/// `pTemplate` is NULL or valid for reading `ulCount` attributes, and the `pValue` of each is
/// NULL or valid for reading its `ulValueLen` bytes.
pub(super) unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_FindObjectsInit", || {
        let p = provider()?;
        let mut template = Vec::new();
        if ulCount > MAX_TEMPLATE_LEN {
            return Err(bad_args(&format!("a search template has at most {MAX_TEMPLATE_LEN} attributes")));
        }
        // SAFETY: `pTemplate` is NULL or readable for `ulCount` attributes, by this function's
        // contract.
        for attr in unsafe { input(pTemplate, ulCount, MAX_TEMPLATE_LEN) }? {
            // SAFETY: each `pValue` is NULL or readable for its `ulValueLen` bytes, by this
            // function's contract.
            let value = unsafe { input(attr.pValue as *const u8, attr.ulValueLen, MAX_TEMPLATE_VALUE) }
                .map_err(|e| Error::new(CKR_ATTRIBUTE_VALUE_INVALID, e.message))?;
            template.push((attr.type_, value.to_vec()));
        }
        p.find_init(hSession, &Template::new(template))
    })
}

/// # Safety
/// `pulObjectCount` is NULL or valid for writing a `CK_ULONG`; `phObject` is NULL or valid for
/// writing `ulMaxObjectCount` handles.
pub(super) unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: *mut CK_OBJECT_HANDLE,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: *mut CK_ULONG,
) -> CK_RV {
    guard("C_FindObjects", || {
        let p = provider()?;
        // SAFETY: `pulObjectCount` is NULL or a writable CK_ULONG, by this function's contract.
        let count = unsafe { out(pulObjectCount) }?;
        if phObject.is_null() && ulMaxObjectCount > 0 {
            return Err(bad_args("NULL object array"));
        }
        let found = p.find_next(hSession, ulMaxObjectCount as usize)?;
        if !found.is_empty() {
            // SAFETY: `find_next` returns at most `ulMaxObjectCount` handles, so here that is not
            // 0 and `phObject` is not NULL (checked above): writable for them by this function's
            // contract, and not overlapping the Vec `found`.
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), phObject, found.len()) };
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

/// # Safety
/// None: no pointer arguments.
pub(super) unsafe extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_FindObjectsFinal", || provider()?.find_final(hSession))
}

/// Fills each attribute independently; the first problem met is the call's code, and every
/// other attribute is still filled, as the specification asks.
///
/// # Safety
/// `pTemplate` is NULL or valid for reading and writing `ulCount` attributes, and the `pValue`
/// of each is NULL or valid for writing its `ulValueLen` bytes, not overlapping the template.
pub(super) unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_GetAttributeValue", || {
        let p = provider()?;
        if pTemplate.is_null() && ulCount > 0 {
            return Err(bad_args("NULL template"));
        }
        if ulCount > MAX_TEMPLATE_LEN {
            return Err(bad_args(&format!("a template has at most {MAX_TEMPLATE_LEN} attributes")));
        }
        let template = if ulCount == 0 {
            &mut [][..]
        } else {
            // SAFETY: `pTemplate` is not NULL (checked above), so by this function's contract
            // it is readable and writable for `ulCount` attributes, used by nothing else.
            unsafe { std::slice::from_raw_parts_mut(pTemplate, ulCount as usize) }
        };
        let types: Vec<_> = template.iter().map(|a| a.type_).collect();
        let values = p.attributes(hSession, hObject, &types)?;
        let mut rv = CKR_OK;
        for (attr, value) in template.iter_mut().zip(values) {
            let problem = match value {
                Attr::Value(v) if attr.pValue.is_null() => {
                    attr.ulValueLen = v.len() as CK_ULONG;
                    None
                }
                Attr::Value(v) if (attr.ulValueLen as usize) >= v.len() => {
                    // SAFETY: `pValue` is not NULL (previous arm) and holds `ulValueLen` >=
                    // `v.len()` writable bytes by this function's contract; `v` is our own Vec.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), attr.pValue as *mut u8, v.len()) };
                    attr.ulValueLen = v.len() as CK_ULONG;
                    None
                }
                Attr::Value(_) => Some(CKR_BUFFER_TOO_SMALL),
                Attr::Sensitive => Some(CKR_ATTRIBUTE_SENSITIVE),
                Attr::Invalid => Some(CKR_ATTRIBUTE_TYPE_INVALID),
            };
            if let Some(code) = problem {
                attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                if rv == CKR_OK {
                    rv = code;
                }
            }
        }
        match rv {
            CKR_OK => Ok(()),
            code => Err(Error::new(code, "some attributes could not be returned")),
        }
    })
}

/// The keys live in the KMS, which says nothing of the memory they take: a valid object's
/// size is `CK_UNAVAILABLE_INFORMATION` with `CKR_INFORMATION_SENSITIVE`, which the
/// specification lists among C_GetObjectSize's answers.
///
/// # Safety
/// `pulSize` is NULL or valid for writing a `CK_ULONG`.
pub(super) unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: *mut CK_ULONG,
) -> CK_RV {
    guard("C_GetObjectSize", || {
        provider()?.attributes(hSession, hObject, &[])?;
        // SAFETY: `pulSize` is NULL or a writable CK_ULONG, by this function's contract.
        let size = unsafe { out(pulSize) }?;
        *size = CK_UNAVAILABLE_INFORMATION;
        Err(Error::new(CKR_INFORMATION_SENSITIVE, "the size of a key held in the KMS is not known"))
    })
}

// ---- signing ----------------------------------------------------------------------------

/// # Safety
/// `pMechanism` is NULL or valid for reading a `CK_MECHANISM`, whose `pParameter` is NULL or
/// valid for reading its `ulParameterLen` bytes.
pub(super) unsafe extern "C" fn C_SignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SignInit", || {
        let p = provider()?;
        // SAFETY: NULL gives None; otherwise a readable CK_MECHANISM, by this function's contract.
        let mechanism = unsafe { pMechanism.as_ref() }.ok_or_else(|| bad_args("NULL mechanism"))?;
        // SAFETY: its `pParameter` is NULL or readable for `ulParameterLen` bytes, by this
        // function's contract.
        let parameter = unsafe { read_parameter(mechanism) };
        p.sign_init(hSession, mechanism.mechanism, parameter, hKey)
    })
}

/// Reads a mechanism's parameter as the C struct its mechanism defines; a parameter of the
/// wrong size is `Unreadable` (the core answers CKR_MECHANISM_PARAM_INVALID).
///
/// # Safety
/// `mechanism.pParameter` is NULL or valid for reading `mechanism.ulParameterLen` bytes.
unsafe fn read_parameter(mechanism: &CK_MECHANISM) -> Parameter {
    let (p, len) = (mechanism.pParameter, mechanism.ulParameterLen as usize);
    if p.is_null() {
        return if len == 0 { Parameter::None } else { Parameter::Unreadable };
    }
    match mechanism.mechanism {
        CKM_RSA_PKCS_PSS
        | CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS
            if len == std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() =>
        {
            // SAFETY: `p` is not NULL and readable for `len` bytes (this function's contract),
            // exactly one CK_RSA_PKCS_PSS_PARAMS, read unaligned; any bits are valid for it.
            let pss = unsafe { std::ptr::read_unaligned(p as *const CK_RSA_PKCS_PSS_PARAMS) };
            Parameter::Pss { hash: pss.hashAlg, mgf: pss.mgf, salt_len: pss.sLen }
        }
        CKM_EDDSA if len == std::mem::size_of::<CK_EDDSA_PARAMS>() => {
            // SAFETY: `p` is not NULL and readable for `len` bytes (this function's contract),
            // exactly one CK_EDDSA_PARAMS, read unaligned. Its pointer field is not followed.
            let eddsa = unsafe { std::ptr::read_unaligned(p as *const CK_EDDSA_PARAMS) };
            Parameter::Eddsa { prehash: eddsa.phFlag != 0, context_len: eddsa.ulContextDataLen as usize }
        }
        _ => Parameter::Unreadable,
    }
}

/// Hands a signing outcome back through the C length/buffer pair.
///
/// # Safety
/// For `SignOutput::Signature(sig)`, `pSignature` is valid for writing `sig.len()` bytes.
unsafe fn deliver(outcome: SignOutput, pSignature: *mut CK_BYTE, len: &mut CK_ULONG) -> Result<()> {
    match outcome {
        SignOutput::Length(n) => {
            *len = n as CK_ULONG;
            Ok(())
        }
        SignOutput::TooSmall(n) => {
            *len = n as CK_ULONG;
            Err(Error::new(CKR_BUFFER_TOO_SMALL, format!("the signature needs {n} bytes")))
        }
        SignOutput::Signature(sig) => {
            // SAFETY: writable for `sig.len()` bytes by this function's contract; `sig` is ours.
            unsafe { std::ptr::copy_nonoverlapping(sig.as_ptr(), pSignature, sig.len()) };
            *len = sig.len() as CK_ULONG;
            Ok(())
        }
    }
}

/// Data to sign: only its first `MAX_SIGN_DATA + 1` bytes are read, enough for the provider
/// to see it is too long (`CKR_DATA_LEN_RANGE`, which ends the operation).
///
/// # Safety
/// `p` is NULL or valid for reading `len` bytes, which nothing writes during `'a`.
unsafe fn sign_input<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8]> {
    let cap = MAX_SIGN_DATA as CK_ULONG + 1;
    // SAFETY: reads at most `len` bytes of `p`, which this function's contract makes readable.
    unsafe { input(p, len.min(cap), cap) }
}

/// # Safety
/// `pData` is NULL or valid for reading `ulDataLen` bytes; `pulSignatureLen` is NULL or valid
/// for reading and writing a `CK_ULONG`; `pSignature` is NULL or valid for writing
/// `*pulSignatureLen` bytes; none overlaps another.
pub(super) unsafe extern "C" fn C_Sign(
    hSession: CK_SESSION_HANDLE,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    pulSignatureLen: *mut CK_ULONG,
) -> CK_RV {
    guard("C_Sign", || {
        let p = provider()?;
        // SAFETY: `pulSignatureLen` is NULL or a writable CK_ULONG, by this function's contract.
        let len = unsafe { out(pulSignatureLen) }?;
        // SAFETY: `pData` is NULL or readable for `ulDataLen` bytes, by this function's contract.
        let data = unsafe { sign_input(pData, ulDataLen) }?;
        let capacity = (!pSignature.is_null()).then_some(*len as usize);
        let outcome = p.sign(hSession, data, capacity)?;
        // SAFETY: the provider returns a signature only when given a capacity (so `pSignature`
        // is not NULL) of at least its length: writable for it, by this function's contract.
        unsafe { deliver(outcome, pSignature, len) }
    })
}

/// # Safety
/// `pPart` is NULL or valid for reading `ulPartLen` bytes.
pub(super) unsafe extern "C" fn C_SignUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: *mut CK_BYTE,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    guard("C_SignUpdate", || {
        let p = provider()?;
        // SAFETY: `pPart` is NULL or readable for `ulPartLen` bytes, by this function's contract.
        p.sign_update(hSession, unsafe { sign_input(pPart, ulPartLen) }?)
    })
}

/// # Safety
/// `pulSignatureLen` is NULL or valid for reading and writing a `CK_ULONG`; `pSignature` is NULL
/// or valid for writing `*pulSignatureLen` bytes, not overlapping it.
pub(super) unsafe extern "C" fn C_SignFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: *mut CK_BYTE,
    pulSignatureLen: *mut CK_ULONG,
) -> CK_RV {
    guard("C_SignFinal", || {
        let p = provider()?;
        // SAFETY: `pulSignatureLen` is NULL or a writable CK_ULONG, by this function's contract.
        let len = unsafe { out(pulSignatureLen) }?;
        let capacity = (!pSignature.is_null()).then_some(*len as usize);
        let outcome = p.sign_final(hSession, capacity)?;
        // SAFETY: the provider returns a signature only when given a capacity (so `pSignature`
        // is not NULL) of at least its length: writable for it, by this function's contract.
        unsafe { deliver(outcome, pSignature, len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_blank_padded_and_cut_on_char_boundaries() {
        assert_eq!(&pad::<8>("ab"), b"ab      ");
        assert_eq!(&pad::<4>("abcdef"), b"abcd");
        assert_eq!(&pad::<3>("aé"), b"a\xc3\xa9");
        assert_eq!(&pad::<2>("aé"), b"a ");
    }

    #[test]
    fn panics_become_general_error() {
        assert_eq!(guard("test", || panic!("boom")), CKR_GENERAL_ERROR);
        assert_eq!(guard("test", || Err(Error::new(CKR_DATA_INVALID, "x"))), CKR_DATA_INVALID);
        assert_eq!(guard("test", || Ok(())), CKR_OK);
    }
}

/// Proof that no panic leaves the library: with a panic injected into every guarded body (on
/// the test's thread only), every slot of both function tables and the three exported symbols
/// are called through their C ABI. A panic unwinding out of an `extern "C"` function aborts
/// the whole test process, so passing means every one of them caught it.
#[cfg(test)]
mod panic_injection {
    use super::super::{C_GetFunctionList, C_GetInterface, C_GetInterfaceList, FUNCTION_LIST, FUNCTION_LIST_3_0};
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;

    use cosmian_pkcs11_testbed::CallZeroed;

    thread_local! {
        /// When set, [`guard`] panics instead of running the entry point's body.
        pub(super) static ARMED: Cell<bool> = const { Cell::new(false) };
    }

    macro_rules! call_all {
        ($table:expr; $($f:ident),*) => {
            vec![$((
                stringify!($f),
                // SAFETY: every slot is ours, and takes all-zero arguments (NULL pointers are
                // checked before any use).
                unsafe { $table.$f.expect(stringify!($f)).call_zeroed() },
            )),*]
        };
    }

    /// The names of the functions the ffi layer implements (rather than stubs): every C
    /// function named `C_*` defined in entry.rs and mod.rs.
    fn implemented() -> BTreeSet<&'static str> {
        [include_str!("entry.rs"), include_str!("mod.rs")]
            .iter()
            .flat_map(|source| source.split("extern \"C\" fn ").skip(1))
            .map(|rest| &rest[..rest.find('(').unwrap_or(0)])
            .filter(|name| name.starts_with("C_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect()
    }

    #[test]
    fn every_entry_point_catches_a_panic() {
        ARMED.with(|a| a.set(true));
        let mut calls = with_2_40_slots!(call_all!([FUNCTION_LIST]));
        calls.extend(with_2_40_slots!(call_all!([FUNCTION_LIST_3_0] C_GetInterfaceList, C_GetInterface,
            C_LoginUser, C_SessionCancel, C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin,
            C_EncryptMessageNext, C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage,
            C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit,
            C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal,
            C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext,
            C_MessageVerifyFinal)));
        // SAFETY: NULL pointers are within each function's contract.
        calls.push(("C_GetFunctionList", unsafe { C_GetFunctionList(std::ptr::null_mut()) }));
        // SAFETY: as above.
        calls.push(("C_GetInterfaceList", unsafe { C_GetInterfaceList(std::ptr::null_mut(), std::ptr::null_mut()) }));
        calls.push((
            "C_GetInterface",
            // SAFETY: as above.
            unsafe { C_GetInterface(std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0) },
        ));
        ARMED.with(|a| a.set(false));
        assert_eq!(calls.len(), 68 + 92 + 3);

        let mut guarded = BTreeSet::new();
        for (name, rv) in calls {
            match rv {
                CKR_GENERAL_ERROR => {
                    guarded.insert(name);
                }
                // A stub (`stub`: not initialized here, as no unit test initializes).
                CKR_CRYPTOKI_NOT_INITIALIZED => {
                    assert!(!implemented().contains(name), "{name} is implemented but not guarded")
                }
                other => panic!("{name} ran its body despite the injected panic (0x{other:X})"),
            }
        }
        assert_eq!(guarded, implemented(), "every implemented function, and only those, went through guard");
        assert!(guarded.len() >= 25, "{guarded:?}");
    }
}
