//! An ssh-agent message body as `cosmian-ssh-agent` reads it from a client (`src/agent`): any
//! bytes give a request or an error (which disconnects that client), never a panic; a sign
//! request's key blob is also read as a certificate.
#![no_main]

use cosmian_pkcs11::internals::read_agent_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_agent_message(data);
});
