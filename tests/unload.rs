//! Unloading: after C_Finalize and dlclose, no thread of the module is left in the process; and
//! valgrind's memcheck over repeated load / initialize / enumerate / sign / finalize / unload
//! cycles finds no memory definitely lost. Against a real KMS.
//!
//! With background work in flight too: the key list answered from the disk cache while the
//! module's thread has the KMS (200 ms away, behind a relay) confirm it, then C_Finalize at
//! once (the thread is gone when it returns), or dlclose without C_Finalize, as
//! ssh-pkcs11-helper unloads: glibc keeps a library mapped while thread-local destructors of
//! its code are pending (the caller's thread has some), so the thread ends on its own, within
//! the listing's bound, and at the process's exit the library's destructor interrupts it and
//! joins it (the valgrind run ends that way: its log says so). Valgrind finds nothing lost.
//! With `CKF_LIBRARY_CANT_CREATE_OS_THREADS` the module lists and signs without ever starting a
//! thread.
//!
//! A plain `main` (`harness = false` in Cargo.toml): no test-harness threads come and go while
//! the threads are counted. The checks run in a child process, this same executable started
//! again with the provider's environment (the configuration file is rewritten to aim at the
//! relay or at the KMS); the valgrind run is this same executable again, started with
//! `COSMIAN_PKCS11_UNLOAD_CYCLES=N`, which only runs the cycles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    Ckms, DelayRelay, KeyKind, KmsServer, RELAY_THREAD, body_in_child, provider_lib, write_provider_config,
};
use cryptoki_sys::*;

/// In the valgrind run: how many cycles to run.
const CYCLES_ENV: &str = "COSMIAN_PKCS11_UNLOAD_CYCLES";
/// In the valgrind run: the URL of the slow relay in front of the KMS.
const RELAYED_URL_ENV: &str = "COSMIAN_PKCS11_UNLOAD_RELAYED_URL";
/// The name of the module's thread (see `token::THREAD_NAME`).
const MODULE_THREAD: &str = "cosmian-pkcs11";
/// Cycles under valgrind: enough to see a leak per cycle, few enough to stay short in CI.
const CYCLES: usize = 4;

macro_rules! call {
    ($list:expr, $f:ident ( $($arg:expr),* )) => {
        // SAFETY: `$f` comes from the provider's own function table, read while the library is
        // loaded, so it has the PKCS#11 signature; every call site passes pointers to live locals
        // or buffers with their true lengths, or NULL where the specification allows it.
        unsafe { ($list.$f.expect(stringify!($f)))($($arg),*) }
    };
}

fn ok(what: &str, rv: CK_RV) {
    assert_eq!(rv, CKR_OK, "{what}: 0x{rv:X}");
}

/// The names of the threads of this process, the relay's (the test's own) left out.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default().trim().to_owned())
        .filter(|name| name != RELAY_THREAD)
        .collect();
    names.sort();
    names
}

/// The threads of this process named as the module names its own.
fn module_threads() -> usize {
    threads().iter().filter(|name| *name == MODULE_THREAD).count()
}

/// Polls `done` every 10 ms for at most `patience`: how long it took, or `None`.
fn within(patience: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() > patience {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the library is mapped in this process.
fn mapped(lib: &Path) -> bool {
    let lib = lib.canonicalize().unwrap_or(lib.to_owned());
    std::fs::read_to_string("/proc/self/maps").unwrap().contains(lib.to_str().unwrap())
}

/// Loads the module and initializes it (with `flags`, if any): the library, to unload, and
/// its function list, valid while the library is loaded.
fn load(lib: &Path, flags: Option<CK_FLAGS>) -> (libloading::Library, &'static CK_FUNCTION_LIST) {
    // SAFETY: dlopen of the provider built from this workspace: it has no constructor of its
    // own (its state starts at C_Initialize), so loading it runs no code that could misbehave.
    let library = unsafe { libloading::Library::new(lib) }.unwrap();
    // SAFETY: the provider exports C_GetFunctionList with exactly this PKCS#11 signature; the
    // symbol is only used in this function, while `library` is loaded.
    let get_list: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList") }.unwrap();
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: `list` is a live local the function writes the table's address into.
    ok("C_GetFunctionList", unsafe { get_list(&mut list) });
    // SAFETY: C_GetFunctionList answered CKR_OK (`ok` panics otherwise), so `list` points to the
    // provider's static CK_FUNCTION_LIST; it stays valid while `library` is loaded, and every
    // caller stops using `f` before it unloads the library it gets back.
    let f = unsafe { &*list };
    match flags {
        None => ok("C_Initialize", call!(f, C_Initialize(null_mut()))),
        Some(flags) => {
            let mut args = CK_C_INITIALIZE_ARGS {
                CreateMutex: None,
                DestroyMutex: None,
                LockMutex: None,
                UnlockMutex: None,
                flags,
                pReserved: null_mut(),
            };
            ok("C_Initialize", call!(f, C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())));
        }
    }
    (library, f)
}

/// Opens a session and lists every object (the key list loads, or is answered from the disk
/// cache while the module confirms it): the session and the objects.
fn list(f: &CK_FUNCTION_LIST) -> (CK_SESSION_HANDLE, Vec<CK_OBJECT_HANDLE>) {
    let mut slot: CK_SLOT_ID = 0;
    let mut count: CK_ULONG = 1;
    ok("C_GetSlotList", call!(f, C_GetSlotList(1, &mut slot, &mut count)));
    // SAFETY: CK_TOKEN_INFO is a C struct of integers and byte arrays: all-zero bits are valid.
    let mut token: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    ok("C_GetTokenInfo", call!(f, C_GetTokenInfo(slot, &mut token)));
    let mut session: CK_SESSION_HANDLE = 0;
    ok("C_OpenSession", call!(f, C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut session)));
    ok("C_FindObjectsInit", call!(f, C_FindObjectsInit(session, null_mut(), 0)));
    let mut objects = [0 as CK_OBJECT_HANDLE; 16];
    let mut found: CK_ULONG = 0;
    ok("C_FindObjects", call!(f, C_FindObjects(session, objects.as_mut_ptr(), 16, &mut found)));
    ok("C_FindObjectsFinal", call!(f, C_FindObjectsFinal(session)));
    assert_eq!(found, 2, "one key pair: two objects");
    (session, objects[..found as usize].to_vec())
}

/// Loads the module, initializes it, lists every object and its label, signs once with each
/// private key, finalizes; returns the library still loaded, for the caller to unload.
fn cycle(lib: &Path) -> libloading::Library {
    let (library, f) = load(lib, None);
    sign_with_each(f);
    ok("C_Finalize", call!(f, C_Finalize(null_mut())));
    library
}

/// Lists every object and its label, signs once with each private key, closes the session.
fn sign_with_each(f: &CK_FUNCTION_LIST) {
    let (session, objects) = list(f);
    let mut signed = 0;
    for &object in &objects {
        let mut class: CK_OBJECT_CLASS = 0;
        let mut label = [0u8; 256];
        let mut template = [
            CK_ATTRIBUTE { type_: CKA_CLASS, pValue: (&mut class as *mut CK_ULONG).cast(), ulValueLen: 8 },
            CK_ATTRIBUTE { type_: CKA_LABEL, pValue: label.as_mut_ptr().cast(), ulValueLen: 256 },
        ];
        ok("C_GetAttributeValue", call!(f, C_GetAttributeValue(session, object, template.as_mut_ptr(), 2)));
        if class == CKO_PRIVATE_KEY {
            let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: null_mut(), ulParameterLen: 0 };
            ok("C_SignInit", call!(f, C_SignInit(session, &mut mechanism, object)));
            let mut digest = [7u8; 32];
            let mut signature = [0u8; 64];
            let mut len: CK_ULONG = 64;
            ok("C_Sign", call!(f, C_Sign(session, digest.as_mut_ptr(), 32, signature.as_mut_ptr(), &mut len)));
            assert_eq!(len, 64);
            signed += 1;
        }
    }
    assert_eq!(signed, 1);
    ok("C_CloseSession", call!(f, C_CloseSession(session)));
}

/// What a cycle with background work in flight saw.
struct InFlight {
    /// The module's thread ran after the listing (it names itself a moment after it starts).
    running: bool,
    /// The module's threads when C_Finalize returned, if it was called.
    after_finalize: Option<usize>,
    /// The module's threads, and whether the library was still mapped, right after dlclose.
    after_dlclose: (usize, bool),
}

/// Loads the module (the configuration aims at the slow relay, and the disk cache holds the key
/// list), initializes it and lists the keys: the list is answered from the
/// disk cache and the module's thread confirms it. Then at once C_Finalize and dlclose
/// (`finalize`), or dlclose alone.
fn cycle_in_flight(lib: &Path, finalize: bool) -> InFlight {
    let (library, f) = load(lib, None);
    list(f);
    let running = within(Duration::from_millis(300), || module_threads() == 1).is_some();
    let after_finalize = finalize.then(|| {
        ok("C_Finalize", call!(f, C_Finalize(null_mut())));
        module_threads()
    });
    drop(library);
    InFlight { running, after_finalize, after_dlclose: (module_threads(), mapped(lib)) }
}

/// The configuration file the environment names, aimed at `server_url` (the provider reads it at
/// each C_Initialize).
fn aim_at(server_url: &str) {
    let config = PathBuf::from(std::env::var_os("COSMIAN_KMS_CLI_CONF").expect("a configuration"));
    write_provider_config(config.parent().unwrap(), server_url, "");
}

fn main() {
    let lib = provider_lib();
    if let Ok(cycles) = std::env::var(CYCLES_ENV) {
        for _ in 0..cycles.parse::<usize>().unwrap() {
            drop(cycle(&lib));
        }
        if let Ok(relayed) = std::env::var(RELAYED_URL_ENV) {
            aim_at(&relayed);
            for finalize in [true, false] {
                cycle_in_flight(&lib, finalize);
            }
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list`: this file's checks, as the harness would name them.
        println!("unload: test");
        return;
    }
    let Some(dir) = body_in_child(|dir| {
        [
            ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs")),
            ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
            ("XDG_CACHE_HOME", dir.join("cache")),
        ]
    }) else {
        return;
    };

    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    write_provider_config(&dir, &kms.url(), "");

    // ---- no thread left behind ----------------------------------------------------------
    let before = threads();
    let library = cycle(&lib);
    let loaded = threads();
    drop(library);
    let after = threads();
    println!(
        "unload: threads before loading {}, after C_Finalize {}, after dlclose {}",
        before.len(),
        loaded.len(),
        after.len()
    );

    // ---- without threads: CKF_LIBRARY_CANT_CREATE_OS_THREADS --------------------------------
    // The disk cache is warm (the cycle above): with threads allowed, the listing would start
    // the module's thread. With the flag, it is made in this thread, and no thread ever starts.
    let relay = DelayRelay::start(kms.port(), Duration::from_millis(200));
    let relayed = format!("http://127.0.0.1:{}", relay.port());
    aim_at(&relayed);
    drop(cycle(&lib)); // The relay's URL has a disk cache of its own: warm it.

    let (library, f) = load(&lib, Some(CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK));
    let started = Instant::now();
    list(f);
    let listing = started.elapsed();
    let threads_listing = module_threads();
    sign_with_each(f);
    let threads_signing = module_threads();
    ok("C_Finalize", call!(f, C_Finalize(null_mut())));
    drop(library);
    println!(
        "unload: without threads, the listing took {listing:?} (the KMS 400 ms away), module threads while listing \
         {threads_listing}, after signing {threads_signing}"
    );

    // ---- background work in flight ---------------------------------------------------------
    let mut in_flight = Vec::new();
    for finalize in [true, false] {
        let seen = cycle_in_flight(&lib, finalize);
        let ended = within(Duration::from_secs(10), || module_threads() == 0);
        let settled = threads();
        println!(
            "unload: {} with the key list's confirmation in flight (its thread running: {}): module threads \
             after C_Finalize {:?}, after dlclose {} (library still mapped: {}), none after {ended:?}; threads {} \
             (before loading {})",
            if finalize { "C_Finalize then dlclose" } else { "dlclose without C_Finalize" },
            seen.running,
            seen.after_finalize,
            seen.after_dlclose.0,
            seen.after_dlclose.1,
            settled.len(),
            before.len()
        );
        in_flight.push((finalize, seen, ended, settled));
    }
    aim_at(&kms.url());
    let log_path = dir.join("logs").join("cosmian-pkcs11.log");
    let log_mark = std::fs::read_to_string(&log_path).map_or(0, |l| l.len());

    // ---- valgrind memcheck over repeated cycles -------------------------------------------
    let report = dir.join("valgrind.log");
    let started = Instant::now();
    let status = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
        ])
        .arg(format!("--log-file={}", report.display()))
        .arg(std::env::current_exe().unwrap())
        .env(CYCLES_ENV, CYCLES.to_string())
        .env(RELAYED_URL_ENV, &relayed)
        // Under valgrind the executable's own path is valgrind's: name the library.
        .env("COSMIAN_PKCS11_LIB", &lib)
        .status()
        .unwrap_or_else(|e| panic!("cannot run valgrind ({e}): install it with scripts/install-test-bed.sh"));
    let took = started.elapsed();
    let log = std::fs::read_to_string(&report).unwrap();
    let summary =
        |key: &str| log.lines().find(|l| l.contains(key)).map(|l| l.split_once(key).unwrap().1.trim().to_owned());
    let definitely = summary("definitely lost:").unwrap_or_else(|| {
        assert!(log.contains("All heap blocks were freed"), "no leak summary in the valgrind log:\n{log}");
        "0 bytes in 0 blocks".into()
    });
    let errors = summary("ERROR SUMMARY:").unwrap_or_default();
    let heap = summary("total heap usage:").unwrap_or_default();
    println!(
        "unload: valgrind memcheck, {CYCLES} load/initialize/enumerate/sign/finalize/unload cycles in {took:?}: \
         heap {heap}; definitely lost {definitely}; errors {errors}"
    );
    // Both measured and printed first, then judged.
    assert!(definitely.starts_with("0 bytes in 0 blocks"), "memory definitely lost:\n{log}");
    assert!(status.success(), "valgrind reported errors ({status}):\n{log}");
    assert_eq!(loaded, before, "the module keeps threads after C_Finalize");
    assert_eq!(after, before, "the module left threads behind after dlclose");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let (before_valgrind, valgrind_run) = log.split_at(log_mark);
    assert!(
        valgrind_run.contains("key list confirmation interrupted: the provider is finalizing"),
        "the valgrind run ended with the confirmation in flight: the library's destructor interrupts it:\n{valgrind_run}"
    );
    assert!(listing >= Duration::from_millis(800), "without threads the listing waits for the KMS: {listing:?}");
    assert_eq!(
        (threads_listing, threads_signing),
        (0, 0),
        "a thread started despite CKF_LIBRARY_CANT_CREATE_OS_THREADS"
    );
    for (finalize, seen, ended, settled) in in_flight {
        let how = if finalize { "C_Finalize then dlclose" } else { "dlclose without C_Finalize" };
        assert!(seen.running, "{how}: the confirmation was not in flight: the check proves nothing\n{before_valgrind}");
        if finalize {
            assert_eq!(seen.after_finalize, Some(0), "{how}: the module's thread outlived C_Finalize");
        }
        if !seen.after_dlclose.1 {
            assert_eq!(seen.after_dlclose.0, 0, "{how}: the library is unmapped, its thread still runs");
        }
        assert!(ended.is_some(), "{how}: the module's thread still runs 10 s later\n{before_valgrind}");
        assert_eq!(settled, before, "{how}: threads left behind");
    }
    println!("test result: ok. 1 passed");
}
