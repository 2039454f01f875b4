//! The Linux kernel key store (keyutils): a `user` key described `SERVICE:ACCOUNT`, searched
//! in the session keyring, then in the user keyring (shared by every process of the user,
//! including the `ssh-pkcs11-helper` that ssh-agent starts). System calls only, no daemon,
//! through the `linux-keyutils` crate's safe wrappers of `keyctl(2)`.

use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
use zeroize::Zeroizing;

/// The largest payload of a `user` key (the kernel's limit).
const MAX_PAYLOAD: usize = 32_767;

/// The payload of the `user` key `SERVICE:ACCOUNT`, if one is reachable and readable.
pub fn lookup(service: &str, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let description = format!("{service}:{account}");
    let mut refused = None;
    for keyring in [KeyRingIdentifier::Session, KeyRingIdentifier::User] {
        let key = match KeyRing::from_special_id(keyring, false).and_then(|ring| ring.search(&description)) {
            Ok(key) => key,
            // Not there, expired, revoked, or no such keyring: not found.
            Err(
                KeyError::KeyDoesNotExist
                | KeyError::KeyringDoesNotExist
                | KeyError::KeyExpired
                | KeyError::KeyRevoked
                | KeyError::InvalidIdentifier,
            ) => continue,
            Err(e) => return Err(format!("keyctl search: {e:?}")),
        };
        // Read straight into a buffer wiped when dropped, large enough for any `user` key.
        let mut payload = Zeroizing::new(vec![0; MAX_PAYLOAD]);
        match key.read(&mut *payload) {
            Ok(size) => {
                payload.truncate(size.min(MAX_PAYLOAD));
                return Ok(Some(payload));
            }
            // Found but not readable (its permissions): another keyring may hold a readable one.
            Err(e) => refused = Some(format!("key {:?} found but not readable: {e:?}", key.get_id())),
        }
    }
    refused.map_or(Ok(None), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_key_is_not_found() {
        assert_eq!(lookup("cosmian-kms-unit-test", &format!("absent-{}", std::process::id())), Ok(None));
    }

    /// A key added to the session keyring is read back, whole.
    #[test]
    fn a_key_is_read_back() {
        let account = format!("unit-{}", std::process::id());
        let ring = KeyRing::from_special_id(KeyRingIdentifier::Session, false).expect("a session keyring");
        let key = ring.add_key(&format!("cosmian-kms-unit-test:{account}"), b"s3cret").expect("add_key");
        let found = lookup("cosmian-kms-unit-test", &account);
        let _ = key.invalidate();
        assert_eq!(found.unwrap().as_deref().map(Vec::as_slice), Some(&b"s3cret"[..]));
    }
}
