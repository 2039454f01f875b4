//! The Linux kernel key store (keyutils): a `user` key described `SERVICE:ACCOUNT`, searched
//! in the session keyring, then in the user keyring (shared by every process of the user,
//! including the `ssh-pkcs11-helper` that ssh-agent starts). Two system calls, no daemon:
//! `keyctl(KEYCTL_SEARCH)` and `keyctl(KEYCTL_READ)`.

use std::ffi::CString;

use zeroize::Zeroizing;

// From <linux/keyctl.h> (kernel ABI).
const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
const KEYCTL_SEARCH: libc::c_long = 10;
const KEYCTL_READ: libc::c_long = 11;

/// The payload of the `user` key `SERVICE:ACCOUNT`, if one is reachable and readable.
pub(super) fn lookup(service: &str, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let description = CString::new(format!("{service}:{account}")).map_err(|_| "a NUL byte in the key description")?;
    let mut refused = None;
    for keyring in [KEY_SPEC_SESSION_KEYRING, KEY_SPEC_USER_KEYRING] {
        let Some(id) = search(keyring, &description)? else { continue };
        match read(id) {
            Ok(payload) => return Ok(Some(payload)),
            // Found but not readable (its permissions): another keyring may hold a readable one.
            Err(e) => refused = Some(format!("key {id} found but not readable: {e}")),
        }
    }
    refused.map_or(Ok(None), Err)
}

/// The id of the key, or None when the keyring does not hold it.
fn search(keyring: libc::c_long, description: &CString) -> Result<Option<libc::c_long>, String> {
    // SAFETY: keyctl(KEYCTL_SEARCH, keyring, type, description, dest) reads two NUL-terminated
    // strings that outlive the call; dest 0 links the result nowhere.
    let id =
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SEARCH, keyring, c"user".as_ptr(), description.as_ptr(), 0) };
    if id >= 0 {
        return Ok(Some(id));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        // Not there, expired, revoked, or no such keyring: not found.
        Some(libc::ENOKEY | libc::EKEYEXPIRED | libc::EKEYREVOKED | libc::ENOENT) => Ok(None),
        _ => Err(format!("keyctl search: {error}")),
    }
}

/// The payload of key `id`, in a buffer wiped when dropped (as is every smaller buffer tried
/// before it).
fn read(id: libc::c_long) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buffer = Zeroizing::new(Vec::new());
    loop {
        // SAFETY: keyctl(KEYCTL_READ, id, buffer, length) writes at most `length` bytes into
        // `buffer` and returns the payload's full size.
        let size = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_READ, id, buffer.as_mut_ptr(), buffer.len()) };
        if size < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let size = size as usize;
        if size <= buffer.len() {
            buffer.truncate(size);
            return Ok(buffer);
        }
        // The first call (or a key updated in between) asks for more room: a new buffer, the
        // old one wiped as it is dropped (growing it in place could leave a copy behind).
        buffer = Zeroizing::new(vec![0; size]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_key_is_not_found() {
        assert_eq!(lookup("cosmian-kms-unit-test", &format!("absent-{}", std::process::id())), Ok(None));
    }

    /// A key added here is read back in a buffer wiped when dropped (the type says so).
    #[test]
    fn a_key_is_read_into_a_wiped_buffer() {
        let account = format!("unit-{}", std::process::id());
        let description = CString::new(format!("cosmian-kms-unit-test:{account}")).unwrap();
        // SAFETY: add_key(type, description, payload, length, keyring) reads its arguments.
        let id = unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                description.as_ptr(),
                b"s3cret".as_ptr(),
                6usize,
                KEY_SPEC_SESSION_KEYRING,
            )
        };
        if id < 0 {
            eprintln!("no session keyring here: {}", std::io::Error::last_os_error());
            return;
        }
        let found: Result<Option<Zeroizing<Vec<u8>>>, String> = lookup("cosmian-kms-unit-test", &account);
        // SAFETY: keyctl(KEYCTL_UNLINK = 9, key, keyring) has no memory arguments.
        unsafe { libc::syscall(libc::SYS_keyctl, 9 as libc::c_long, id, KEY_SPEC_SESSION_KEYRING) };
        assert_eq!(found.unwrap().as_deref().map(|v| v.as_slice()), Some(&b"s3cret"[..]));
    }
}
