//! Secrets kept in the operating system's credential store rather than in the plaintext
//! configuration file: the access token and the PKCS#12 password. Read only (the provider
//! never stores anything), and never in the way: a store that is absent, locked, slow or
//! refuses counts as "not found", with a debug line saying why. A secret is never logged.
//!
//! Every store names an entry the same way: a service and an account (which ones the
//! configuration asks for is its business: `config::TOKEN_SERVICE` in the provider).
//!
//! Stores, in the order they are asked:
//! - Linux: the kernel keyutils store (`user` key `SERVICE:ACCOUNT` in the session or user
//!   keyring; no daemon), then the Secret Service (attributes `service`, `account`) when a
//!   session bus and a running Secret Service exist;
//! - macOS: the login Keychain (generic password, service and account).

#[cfg(all(target_os = "linux", feature = "internals"))]
pub mod dbus;
#[cfg(all(target_os = "linux", not(feature = "internals")))]
mod dbus;
#[cfg(target_os = "macos")]
mod keychain;
#[cfg(target_os = "linux")]
mod keyutils;
#[cfg(all(target_os = "linux", feature = "internals"))]
pub mod secret_service;
#[cfg(all(target_os = "linux", not(feature = "internals")))]
mod secret_service;

use zeroize::Zeroizing;

/// A store: its name for log lines, and its lookup (`Ok(None)`: not there).
/// The secret comes back in a buffer wiped when dropped.
type Store = (&'static str, fn(&str, &str) -> Result<Option<Zeroizing<Vec<u8>>>, String>);

const STORES: &[Store] = &[
    #[cfg(target_os = "linux")]
    ("keyutils", keyutils::lookup),
    #[cfg(target_os = "linux")]
    ("Secret Service", secret_service::lookup),
    #[cfg(target_os = "macos")]
    ("login Keychain", keychain::lookup),
];

/// The secret stored for `service` and `account`, from the first store that has it.
pub fn lookup(service: &str, account: &str) -> Option<Zeroizing<String>> {
    STORES.iter().find_map(|(store, find)| match find(service, account) {
        Ok(Some(bytes)) => match to_secret(bytes) {
            Some(secret) => {
                tracing::debug!(store, service, account, "secret found in the OS credential store");
                Some(secret)
            }
            None => {
                tracing::warn!(store, service, account, "ignoring a stored secret that is empty or not UTF-8");
                None
            }
        },
        Ok(None) => {
            tracing::debug!(store, service, account, "no secret in the OS credential store");
            None
        }
        Err(why) => {
            tracing::debug!(store, service, account, "OS credential store not usable: {why}");
            None
        }
    })
}

/// The stored bytes as a secret: UTF-8, without the surrounding white space that
/// `secret-tool store` and `keyctl padd` keep from a shell's `echo` or here-string. The bytes
/// are wiped as they are dropped; only the returned string (wiped too) keeps a copy.
fn to_secret(bytes: Zeroizing<Vec<u8>>) -> Option<Zeroizing<String>> {
    let trimmed = std::str::from_utf8(&bytes).ok()?.trim();
    (!trimmed.is_empty()).then(|| Zeroizing::new(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_become_trimmed_secrets() {
        let secret = |b: &[u8]| to_secret(Zeroizing::new(b.to_vec()));
        assert_eq!(secret(b"tok\n").as_deref().map(String::as_str), Some("tok"));
        assert_eq!(secret(b"  \n"), None);
        assert_eq!(secret(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_missing_entry_is_not_found() {
        assert_eq!(lookup("cosmian-kms", "https://no-such-entry.invalid:1"), None);
    }
}
