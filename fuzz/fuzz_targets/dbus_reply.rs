//! The D-Bus reader of the Secret Service lookup (`dbus::parse_message`, then the answers'
//! parsers): any bytes a session bus sends give an answer or an error, never a panic, an
//! out-of-bounds read or an endless loop.
#![no_main]

use cosmian_pkcs11::internals::{dbus, secret_service};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = dbus::parse_message(data) else { return };
    let _ = secret_service::session_of(&message.body);
    let _ = secret_service::items_of(&message.body);
    let _ = secret_service::secret_of(&message.body);
});
