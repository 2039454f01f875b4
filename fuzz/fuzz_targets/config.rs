//! The ckms configuration file (`KmsConfig::parse`): any text gives a configuration or an
//! error, never a panic; neither the error nor a warning repeats a secret of the file (the
//! access token, a PKCS#12 password).
#![no_main]

use cosmian_pkcs11::internals::KmsConfig;
use libfuzzer_sys::fuzz_target;

/// The secret the seeds carry.
const TOKEN: &str = "fuzz-secret-token-0123456789";

/// Whether every occurrence of [`TOKEN`] in `text` is the value of a secret setting
/// (`access_token`, a PKCS#12 password), so that quoting it back would be a leak. Elsewhere,
/// e.g. inside a key's name (`ignoring unknown key ...` quotes names), it is not a secret.
fn token_only_in_secrets(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(TOKEN)).collect();
    !lines.is_empty()
        && lines.iter().all(|l| {
            let Some((key, value)) = l.split_once('=') else { return false };
            let key = key.trim();
            (key == "access_token" || key.ends_with("pkcs12_password")) && value.contains(TOKEN)
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
