//! Signing mechanisms: which PKCS#11 mechanisms the token offers, and for each the exact KMS
//! Sign recipe (what to send, what comes back, what to hand the caller), as measured against
//! the server (kms-wire.md). Pure functions: the network call lives in `kmip::operations`.

use cryptoki_sys::*;

use crate::asn1::{self, Hash, PublicKey};
use crate::error::{Error, Result};
use crate::kmip::operations::{SignInput, SignRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Raw ECDSA over a hash the caller computed (OpenSSH's choice).
    Ecdsa,
    /// ECDSA hashing the message here.
    EcdsaWith(Hash),
    /// Pure Ed25519 over the message.
    Eddsa,
    /// RSA PKCS#1 v1.5 over a DigestInfo the caller built (OpenSSH's choice).
    RsaPkcs,
    /// RSA PKCS#1 v1.5 hashing the message here.
    RsaPkcsWith(Hash),
}

use Mechanism::*;

impl Mechanism {
    pub const ALL: [Mechanism; 10] = [
        Ecdsa,
        EcdsaWith(Hash::Sha256),
        EcdsaWith(Hash::Sha384),
        EcdsaWith(Hash::Sha512),
        Eddsa,
        RsaPkcs,
        RsaPkcsWith(Hash::Sha1),
        RsaPkcsWith(Hash::Sha256),
        RsaPkcsWith(Hash::Sha384),
        RsaPkcsWith(Hash::Sha512),
    ];

    pub fn ck_type(self) -> CK_MECHANISM_TYPE {
        match self {
            Ecdsa => CKM_ECDSA,
            EcdsaWith(Hash::Sha1) => CKM_ECDSA_SHA1,
            EcdsaWith(Hash::Sha256) => CKM_ECDSA_SHA256,
            EcdsaWith(Hash::Sha384) => CKM_ECDSA_SHA384,
            EcdsaWith(Hash::Sha512) => CKM_ECDSA_SHA512,
            Eddsa => CKM_EDDSA,
            RsaPkcs => CKM_RSA_PKCS,
            RsaPkcsWith(Hash::Sha1) => CKM_SHA1_RSA_PKCS,
            RsaPkcsWith(Hash::Sha256) => CKM_SHA256_RSA_PKCS,
            RsaPkcsWith(Hash::Sha384) => CKM_SHA384_RSA_PKCS,
            RsaPkcsWith(Hash::Sha512) => CKM_SHA512_RSA_PKCS,
        }
    }

    pub fn from_ck(ty: CK_MECHANISM_TYPE) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.ck_type() == ty)
    }

    /// `CK_MECHANISM_INFO`: smallest and largest key size, flags.
    pub fn info(self) -> (CK_ULONG, CK_ULONG, CK_FLAGS) {
        const EC_FLAGS: CK_FLAGS = CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
        match self {
            Ecdsa | EcdsaWith(_) => (256, 521, EC_FLAGS),
            Eddsa => (255, 255, CKF_SIGN | CKF_EC_NAMEDCURVE),
            RsaPkcs | RsaPkcsWith(_) => (1024, 8192, CKF_SIGN),
        }
    }

    /// Can a key of this kind be used with this mechanism?
    pub fn fits(self, key: &PublicKey) -> bool {
        matches!(
            (self, key),
            (Ecdsa | EcdsaWith(_), PublicKey::Ec { .. })
                | (Eddsa, PublicKey::Ed25519 { .. })
                | (RsaPkcs | RsaPkcsWith(_), PublicKey::Rsa { .. })
        )
    }

    /// The hash computed here for multi-part signing, if the mechanism hashes.
    pub fn hash(self) -> Option<Hash> {
        match self {
            EcdsaWith(h) | RsaPkcsWith(h) => Some(h),
            Ecdsa | Eddsa | RsaPkcs => None,
        }
    }
}

/// Turns the caller's input into the KMS Sign request. `input` is the message for hashing
/// mechanisms, already hashed when `prehashed` (after C_SignUpdate).
pub fn request(mechanism: Mechanism, input: &[u8], prehashed: bool) -> Result<SignRequest> {
    let digest = |h: Hash| if prehashed { input.to_vec() } else { h.digest(input) };
    match mechanism {
        Ecdsa => {
            let hash = Hash::ALL
                .into_iter()
                .find(|h| h.output_len() == input.len() && *h != Hash::Sha1)
                .ok_or_else(|| {
                    Error::new(
                        CKR_DATA_LEN_RANGE,
                        format!("CKM_ECDSA input of {} bytes: the KMS signs SHA-256/384/512 hashes (32, 48 or 64 bytes)", input.len()),
                    )
                })?;
            Ok(SignRequest::ecdsa(hash, SignInput::Digest(input.to_vec())))
        }
        EcdsaWith(h) => Ok(SignRequest::ecdsa(h, SignInput::Digest(digest(h)))),
        Eddsa => Ok(SignRequest::eddsa(input.to_vec())),
        RsaPkcs => {
            let (hash, digest) = asn1::parse_digest_info(input).ok_or_else(|| {
                Error::new(
                    CKR_DATA_INVALID,
                    "CKM_RSA_PKCS input is not a DigestInfo of SHA-1/256/384/512: the KMS cannot sign raw RSA input",
                )
            })?;
            Ok(SignRequest::rsa_pkcs1(hash, digest.to_vec()))
        }
        RsaPkcsWith(h) => Ok(SignRequest::rsa_pkcs1(h, digest(h))),
    }
}

/// Turns the KMS's signature into what the caller expects, checking its size.
pub fn finish(mechanism: Mechanism, key: &PublicKey, signature: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: String| Error::new(CKR_DEVICE_ERROR, format!("KMS signature unusable: {what}"));
    let out = match (mechanism, key) {
        (Ecdsa | EcdsaWith(_), PublicKey::Ec { curve, .. }) => asn1::ecdsa_der_to_raw(&signature, *curve).map_err(bad)?,
        _ => signature,
    };
    if out.len() != key.signature_len() {
        return Err(bad(format!("{} bytes where {} were expected", out.len(), key.signature_len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asn1::Curve;

    fn p256() -> PublicKey {
        PublicKey::Ec { curve: Curve::P256, point: vec![4; 65] }
    }

    #[test]
    fn mechanisms_round_trip_and_are_unique() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_ck(m.ck_type()), Some(m));
        }
        let mut types: Vec<_> = Mechanism::ALL.iter().map(|m| m.ck_type()).collect();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), Mechanism::ALL.len());
        assert_eq!(Mechanism::from_ck(CKM_RSA_X_509), None);
    }

    #[test]
    fn ecdsa_picks_the_algorithm_by_hash_length() {
        let r = request(Ecdsa, &[1; 48], false).unwrap();
        assert_eq!(r, SignRequest::ecdsa(Hash::Sha384, SignInput::Digest(vec![1; 48])));
        assert_eq!(request(Ecdsa, &[1; 20], false).unwrap_err().rv, CKR_DATA_LEN_RANGE);
        assert_eq!(request(Ecdsa, &[], false).unwrap_err().rv, CKR_DATA_LEN_RANGE);
    }

    #[test]
    fn hashing_mechanisms_hash_here() {
        let r = request(EcdsaWith(Hash::Sha256), b"abc", false).unwrap();
        assert_eq!(r, SignRequest::ecdsa(Hash::Sha256, SignInput::Digest(Hash::Sha256.digest(b"abc"))));
        let r = request(RsaPkcsWith(Hash::Sha512), &[5; 64], true).unwrap();
        assert_eq!(r, SignRequest::rsa_pkcs1(Hash::Sha512, vec![5; 64]));
    }

    #[test]
    fn rsa_pkcs_needs_a_digest_info() {
        assert_eq!(request(RsaPkcs, &[0; 32], false).unwrap_err().rv, CKR_DATA_INVALID);
        let mut di = crate::kmip::ttlv::hex_decode("3031300D060960864801650304020105000420").unwrap();
        di.extend([9; 32]);
        assert_eq!(request(RsaPkcs, &di, false).unwrap(), SignRequest::rsa_pkcs1(Hash::Sha256, vec![9; 32]));
    }

    #[test]
    fn finish_checks_sizes() {
        let mut der_sig = vec![0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x06];
        let raw = finish(Ecdsa, &p256(), der_sig.clone()).unwrap();
        assert_eq!((raw.len(), raw[31], raw[63]), (64, 5, 6));
        der_sig[0] = 0x31;
        assert_eq!(finish(Ecdsa, &p256(), der_sig).unwrap_err().rv, CKR_DEVICE_ERROR);
        let ed = PublicKey::Ed25519 { key: [0; 32] };
        assert_eq!(finish(Eddsa, &ed, vec![0; 64]).unwrap().len(), 64);
        assert_eq!(finish(Eddsa, &ed, vec![0; 63]).unwrap_err().rv, CKR_DEVICE_ERROR);
    }
}
