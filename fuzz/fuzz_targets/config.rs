//! The ckms configuration file (`KmsConfig::parse`): any text gives a configuration or an
//! error, never a panic; neither the error nor a warning repeats a secret of the file (the
//! access token, a PKCS#12 password, the proxy's password or header).
#![no_main]

use cosmian_pkcs11::internals::KmsConfig;
use libfuzzer_sys::fuzz_target;

/// The secret the seeds carry.
const TOKEN: &str = "fuzz-secret-token-0123456789";

/// The settings whose values are secrets.
const SECRET_KEYS: [&str; 5] = [
    "access_token",
    "tls_client_pkcs12_password",
    "ssl_client_pkcs12_password",
    "basic_auth_password",
    "custom_auth_header",
];

/// Whether every occurrence of [`TOKEN`] in `text` is the value of a secret setting, so that
/// quoting it back would be a leak. Elsewhere, e.g. inside a key's name (`ignoring unknown key
/// ...` quotes names, and the fuzzer splices the token into them), it is not a secret.
fn token_only_in_secrets(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(TOKEN)).collect();
    !lines.is_empty()
        && lines.iter().all(|l| {
            let Some((key, value)) = l.split_once('=') else { return false };
            SECRET_KEYS.contains(&key.trim()) && value.contains(TOKEN)
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let said = match KmsConfig::parse(text, std::path::Path::new("/fuzz/kms.toml")) {
        Ok((_, warnings)) => warnings.join("\n"),
        Err(error) => error,
    };
    if token_only_in_secrets(text) {
        assert!(!said.contains(TOKEN), "a secret was repeated: {said}");
    }
});
