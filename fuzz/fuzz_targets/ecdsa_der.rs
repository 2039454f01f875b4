//! DER ECDSA signatures as the KMS returns them (`ecdsa_der_to_raw`), for every curve: an error
//! or exactly two field-sized halves, never a panic.
#![no_main]

use cosmian_pkcs11::internals::{Curve, ecdsa_der_to_raw};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for curve in [Curve::P256, Curve::P384, Curve::P521] {
        if let Ok(raw) = ecdsa_der_to_raw(data, curve) {
            assert_eq!(raw.len(), 2 * curve.field_len());
        }
    }
});
