//! SubjectPublicKeyInfo DER as the KMS exports public keys (`PublicKey::from_spki`): any bytes
//! give a key or an error, never a panic; a key read is written back to the same key.
#![no_main]

use cosmian_pkcs11::internals::PublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = PublicKey::from_spki(data) {
        assert_eq!(PublicKey::from_spki(&key.to_spki()), Ok(key), "SPKI does not round-trip");
    }
});
