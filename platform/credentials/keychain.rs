//! The macOS login Keychain: a generic password with this service and account. User
//! interaction is disabled during the lookup, so an item whose access list does not include
//! the calling program (ssh, ssh-keygen, ssh-pkcs11-helper) fails instead of raising a dialog
//! that nobody may be there to answer. Compiled on macOS only (not testable on Linux CI).

use security_framework::item::{ItemClass, ItemSearchOptions, Limit, SearchResult};
use security_framework::os::macos::keychain::SecKeychain;

/// `errSecItemNotFound`.
const NOT_FOUND: i32 = -25300;

pub fn lookup(service: &str, account: &str) -> Result<Option<Vec<u8>>, String> {
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
            SearchResult::Data(data) => Some(data),
            _ => None,
        })),
        Err(e) if e.code() == NOT_FOUND => Ok(None),
        Err(e) => Err(format!("Keychain search: {e}")),
    }
}
