//! JSON-TTLV as the KMS sends it (`Ttlv::from_json`): any bytes give a value or an error,
//! never a panic; what decodes encodes to JSON-TTLV that decodes again and encodes the same
//! (a BigInteger may come back sign-extended to 8 bytes: the same number, written as the
//! server writes it).
#![no_main]

use cosmian_pkcs11::internals::Ttlv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ttlv) = Ttlv::from_json(data) {
        let json = ttlv.to_json();
        let again = Ttlv::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("our own JSON-TTLV does not decode: {e}\n{json}"));
        assert_eq!(again.to_json(), json, "JSON-TTLV encoding is not stable");
    }
});
