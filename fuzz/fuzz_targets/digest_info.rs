//! DigestInfo as PKCS#11 callers hand it to CKM_RSA_PKCS (`parse_digest_info`): nothing or a
//! hash of its function's length at the very end of the input, never a panic.
#![no_main]

use cosmian_pkcs11::internals::parse_digest_info;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((hash, digest)) = parse_digest_info(data) {
        assert_eq!(digest.len(), hash.output_len());
        assert!(data.ends_with(digest));
    }
});
