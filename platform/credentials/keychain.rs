//! The macOS login Keychain: a generic password with this service and account. User
//! interaction is disabled during the lookup, so an item whose access list does not include
//! the calling program (ssh, ssh-keygen, ssh-pkcs11-helper) fails instead of raising a dialog
//! that nobody may be there to answer. Compiled on macOS only (not testable on Linux CI).

use security_framework::item::{ItemClass, ItemSearchOptions, Limit, SearchResult};
use security_framework::os::macos::keychain::SecKeychain;
use zeroize::Zeroizing;

/// `errSecItemNotFound`.
const NOT_FOUND: i32 = -25300;

/// The password, in a buffer wiped when dropped (the Security framework's own copy, a
/// `CFData` it releases, is not ours to wipe).
pub fn lookup(service: &str, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    // Re-enabled when dropped.
    let _no_prompt = SecKeychain::disable_user_interaction().map_err(|e| format!("cannot disable prompts: {e}"))?;
    let found = ItemSearchOptions::new()
        .class(ItemClass::generic_password())
        .service(service)
        .account(account)
        .load_data(true)
        .limit(Limit::Max(1))
        .skip_authenticated_items(true)
        .search();
    match found {
        Ok(results) => Ok(results.into_iter().find_map(|r| match r {
            SearchResult::Data(data) => Some(Zeroizing::new(data)),
            _ => None,
        })),
        Err(e) if e.code() == NOT_FOUND => Ok(None),
        Err(e) => Err(format!("Keychain search: {e}")),
    }
}
