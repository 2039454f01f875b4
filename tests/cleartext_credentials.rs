//! No credential in cleartext: with `server_url = "http://<not loopback>"` and a credential
//! to send (access token, PIN mode), the provider builds no KMS client at all: one ERROR line
//! names the file and the setting, no request is even tried (no `KMS request` line in a
//! trace-level log, the listing returns at once), no key is listed and C_Login in PIN mode
//! fails. With `pkcs11_allow_cleartext_credentials = true` it tries, and warns.
//! The address is TEST-NET-1 (RFC 5737), never routed: no test here needs the network.
//! The PIN-mode login runs in a child process of its own, with the provider's environment.

mod platform_support;

use std::path::Path;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{child_part, function_list, provider_lib, run_in_child, ssh_keygen_d};
use cryptoki_sys::*;
use platform_support::{folder, provider_env, provider_log, text};

const REMOTE: &str = "http://192.0.2.1:9";
const TOKEN: &str = "s3cr3t-cleartext-token";

/// Writes `kms.toml` in `dir`: `top` lines, then `[http_config]` with `server_url` and `http`.
fn config(dir: &Path, top: &str, http: &str) -> std::path::PathBuf {
    let path = dir.join("kms.toml");
    std::fs::write(&path, format!("{top}\n[http_config]\nserver_url = \"{REMOTE}\"\n{http}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// `ssh-keygen -D` with this configuration, trace-level logs in `dir/logs`, short timeouts:
/// (how long it took, what it printed, the provider's log).
fn list(dir: &Path, config: &Path) -> (Duration, String, String) {
    let logs = dir.join("logs");
    let started = Instant::now();
    let out = ssh_keygen_d(&provider_lib())
        .envs(provider_env(config, &logs))
        .env("COSMIAN_PKCS11_CONNECT_TIMEOUT_MS", "1500")
        .env("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", "1500")
        .env("COSMIAN_PKCS11_DISK_CACHE_SECONDS", "0")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ecdsa"), "{}", text(&out));
    (elapsed, text(&out), provider_log(&logs))
}

#[test]
fn credentials_never_go_over_http_to_a_remote_host_unless_allowed() {
    if child_part().is_some() {
        return a_pin_mode_login_fails_at_once();
    }
    let root = tempfile::tempdir().unwrap();

    // ---- refused: nothing is sent, one ERROR line says why and how to allow it ------------
    let dir = folder(root.path(), "refused");
    let path = config(&dir, "", &format!("access_token = \"{TOKEN}\""));
    let (elapsed, printed, log) = list(&dir, &path);
    let error =
        log.lines().find(|l| l.contains(" ERROR ")).unwrap_or_else(|| panic!("no ERROR line:\n{log}\n{printed}"));
    assert!(
        error.contains(&path.display().to_string()) && error.contains("pkcs11_allow_cleartext_credentials = true"),
        "{error}"
    );
    assert!(log.contains(" TRACE "), "the log is at trace level:\n{log}");
    assert!(!log.contains("KMS request"), "no request was even tried:\n{log}");
    assert!(elapsed < Duration::from_millis(1500), "returned at once, not after a connect timeout: {elapsed:?}");
    assert!(!log.contains(TOKEN) && !printed.contains(TOKEN));

    // ---- allowed: it tries (and fails: the address is never routed), warning first ---------
    let dir = folder(root.path(), "allowed");
    let path = config(&dir, "pkcs11_allow_cleartext_credentials = true", &format!("access_token = \"{TOKEN}\""));
    let (_, printed, log) = list(&dir, &path);
    let warning = log
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("cleartext"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("allowed by pkcs11_allow_cleartext_credentials = true"), "{warning}");
    assert!(log.contains("KMS request"), "the request was tried:\n{log}\n{printed}");
    assert!(!log.contains(TOKEN) && !printed.contains(TOKEN));

    // ---- PIN mode, refused: C_Login fails at once and sends nothing ---------------------------
    let dir = folder(root.path(), "pin");
    let path = config(&dir, "pkcs11_use_pin_as_access_token = true", "");
    run_in_child("PIN mode", provider_env(&path, &dir.join("logs")));
    let log = provider_log(&dir.join("logs"));
    assert!(log.lines().any(|l| l.contains(" ERROR ") && l.contains("pkcs11_allow_cleartext_credentials")), "{log}");
    assert!(!log.contains("KMS request") && !log.contains(TOKEN), "{log}");
}

/// In the child, PIN mode with the configuration the parent named: C_Login fails at once.
fn a_pin_mode_login_fails_at_once() {
    // `f`: the provider's static function table (the library is never unloaded).
    let f = function_list();
    // SAFETY: NULL initialization arguments are allowed (no locking callbacks).
    assert_eq!(unsafe { f.C_Initialize.unwrap()(null_mut()) }, CKR_OK);
    // SAFETY: CK_TOKEN_INFO is a C struct of integers and byte arrays: all-zero bits are valid.
    let mut token: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: `token` is a live local CK_TOKEN_INFO the provider fills in.
    assert_eq!(unsafe { f.C_GetTokenInfo.unwrap()(1, &mut token) }, CKR_OK);
    assert_ne!(token.flags & CKF_LOGIN_REQUIRED, 0, "still a PIN-mode token");
    let mut session = 0;
    // SAFETY: NULL application data and no notify callback are allowed; `session` is a live
    // local the provider writes the new handle into.
    assert_eq!(unsafe { f.C_OpenSession.unwrap()(1, CKF_SERIAL_SESSION, null_mut(), None, &mut session) }, CKR_OK);
    let mut pin = TOKEN.as_bytes().to_vec();
    let started = Instant::now();
    // SAFETY: `pin` is a live buffer of `pin.len()` bytes.
    let rv = unsafe { f.C_Login.unwrap()(session, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG) };
    assert_eq!(rv, CKR_DEVICE_ERROR);
    assert!(started.elapsed() < Duration::from_secs(1));
    // SAFETY: CK_SESSION_INFO is a C struct of integers: all-zero bits are valid.
    let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live local CK_SESSION_INFO the provider fills in.
    assert_eq!(unsafe { f.C_GetSessionInfo.unwrap()(session, &mut info) }, CKR_OK);
    assert_eq!(info.state, CKS_RO_PUBLIC_SESSION, "not logged in");
    // SAFETY: NULL is the reserved argument C_Finalize requires.
    assert_eq!(unsafe { f.C_Finalize.unwrap()(null_mut()) }, CKR_OK);
}
