//! Unloading: after C_Finalize and dlclose, no thread of the module is left in the process; and
//! valgrind's memcheck over repeated load / initialize / enumerate / sign / finalize / unload
//! cycles finds no memory definitely lost. Against a real KMS.
//!
//! A plain `main` (`harness = false` in Cargo.toml): no test-harness threads come and go while
//! the threads are counted. The valgrind run is this same executable, started again with
//! `COSMIAN_PKCS11_UNLOAD_CYCLES=N`, which only runs the cycles.

use std::path::Path;
use std::process::Command;
use std::ptr::null_mut;
use std::time::Instant;

use cosmian_pkcs11_testbed::{provider_lib, write_provider_config, Ckms, KeyKind, KmsServer};
use cryptoki_sys::*;

/// In the child: how many cycles to run.
const CYCLES_ENV: &str = "COSMIAN_PKCS11_UNLOAD_CYCLES";
/// Cycles under valgrind: enough to see a leak per cycle, few enough to stay short in CI.
const CYCLES: usize = 4;

macro_rules! call {
    ($list:expr, $f:ident ( $($arg:expr),* )) => {
        unsafe { ($list.$f.expect(stringify!($f)))($($arg),*) }
    };
}

fn ok(what: &str, rv: CK_RV) {
    assert_eq!(rv, CKR_OK, "{what}: 0x{rv:X}");
}

/// The names of the threads of this process.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default().trim().to_owned())
        .collect();
    names.sort();
    names
}

/// Loads the module, initializes it, lists every object and its label, signs once with each
/// private key, finalizes; returns the library still loaded, for the caller to unload.
fn cycle(lib: &Path) -> libloading::Library {
    let library = unsafe { libloading::Library::new(lib) }.unwrap();
    let get_list: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList") }.unwrap();
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    ok("C_GetFunctionList", unsafe { get_list(&mut list) });
    let f = unsafe { &*list };
    ok("C_Initialize", call!(f, C_Initialize(null_mut())));
    let mut slot: CK_SLOT_ID = 0;
    let mut count: CK_ULONG = 1;
    ok("C_GetSlotList", call!(f, C_GetSlotList(1, &mut slot, &mut count)));
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
    let mut signed = 0;
    for &object in &objects[..found as usize] {
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
    ok("C_Finalize", call!(f, C_Finalize(null_mut())));
    library
}

fn main() {
    let lib = provider_lib();
    if let Ok(cycles) = std::env::var(CYCLES_ENV) {
        for _ in 0..cycles.parse::<usize>().unwrap() {
            drop(cycle(&lib));
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list`: this file's checks, as the harness would name them.
        println!("unload: test");
        return;
    }

    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
    let dir = kms.dir().join("client");
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("COSMIAN_KMS_CLI_CONF", write_provider_config(&dir, &kms.url(), ""));
    std::env::set_var("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs"));
    std::env::set_var("COSMIAN_PKCS11_LOGGING_LEVEL", "debug");

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
    println!("test result: ok. 1 passed");
}
