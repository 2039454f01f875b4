//! Signing mechanisms: which PKCS#11 mechanisms the token offers, and for each the exact KMS
//! Sign recipe (what to send, what comes back, what to hand the caller), as measured against
//! the server (docs/kms-wire.md). Pure functions: the network call lives in `kmip::operations`.

use cryptoki_sys::*;

use crate::asn1::{self, Hash, PublicKey};
use crate::error::{Error, Result};
use crate::kmip::operations::{SignInput, SignRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
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
    /// RSA-PSS over a hash the caller computed, with this hash (from the parameters).
    RsaPss(Hash),
    /// RSA-PSS hashing the message here.
    RsaPssWith(Hash),
}

use Mechanism::*;

/// A mechanism's parameter, as the FFI layer read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parameter {
    None,
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        salt_len: CK_ULONG,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        prehash: bool,
        context_len: usize,
    },
    /// Something this provider cannot read for that mechanism.
    Unreadable,
}

/// Every mechanism type offered, in `C_GetMechanismList` order.
pub(crate) const OFFERED: [CK_MECHANISM_TYPE; 15] = [
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
    CKM_EDDSA,
    CKM_RSA_PKCS,
    CKM_SHA1_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
];

/// `CK_MECHANISM_INFO` of an offered mechanism: smallest and largest key size, flags.
pub(crate) fn info(ty: CK_MECHANISM_TYPE) -> Option<(CK_ULONG, CK_ULONG, CK_FLAGS)> {
    const EC_FLAGS: CK_FLAGS = CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
    match ty {
        CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384 | CKM_ECDSA_SHA512 => Some((256, 521, EC_FLAGS)),
        CKM_EDDSA => Some((255, 255, CKF_SIGN | CKF_EC_NAMEDCURVE)),
        t if OFFERED.contains(&t) => Some((1024, 8192, CKF_SIGN)),
        _ => None,
    }
}

fn hash_of(ty: CK_MECHANISM_TYPE) -> Option<Hash> {
    match ty {
        CKM_SHA_1 => Some(Hash::Sha1),
        CKM_SHA256 => Some(Hash::Sha256),
        CKM_SHA384 => Some(Hash::Sha384),
        CKM_SHA512 => Some(Hash::Sha512),
        _ => None,
    }
}

fn mgf_of(hash: Hash) -> CK_RSA_PKCS_MGF_TYPE {
    match hash {
        Hash::Sha1 => CKG_MGF1_SHA1,
        Hash::Sha256 => CKG_MGF1_SHA256,
        Hash::Sha384 => CKG_MGF1_SHA384,
        Hash::Sha512 => CKG_MGF1_SHA512,
    }
}

impl Mechanism {
    /// The mechanism a `C_SignInit` asks for, with its parameter checked against what the
    /// KMS can do (PSS: MGF1 with the same hash, salt as long as the hash).
    pub(crate) fn resolve(ty: CK_MECHANISM_TYPE, parameter: Parameter) -> Result<Self> {
        let bad = |why: &str| Error::new(CKR_MECHANISM_PARAM_INVALID, why.to_owned());
        let mechanism = match ty {
            CKM_ECDSA => Ecdsa,
            CKM_ECDSA_SHA256 => EcdsaWith(Hash::Sha256),
            CKM_ECDSA_SHA384 => EcdsaWith(Hash::Sha384),
            CKM_ECDSA_SHA512 => EcdsaWith(Hash::Sha512),
            CKM_EDDSA => Eddsa,
            CKM_RSA_PKCS => RsaPkcs,
            CKM_SHA1_RSA_PKCS => RsaPkcsWith(Hash::Sha1),
            CKM_SHA256_RSA_PKCS => RsaPkcsWith(Hash::Sha256),
            CKM_SHA384_RSA_PKCS => RsaPkcsWith(Hash::Sha384),
            CKM_SHA512_RSA_PKCS => RsaPkcsWith(Hash::Sha512),
            CKM_SHA1_RSA_PKCS_PSS => RsaPssWith(Hash::Sha1),
            CKM_SHA256_RSA_PKCS_PSS => RsaPssWith(Hash::Sha256),
            CKM_SHA384_RSA_PKCS_PSS => RsaPssWith(Hash::Sha384),
            CKM_SHA512_RSA_PKCS_PSS => RsaPssWith(Hash::Sha512),
            CKM_RSA_PKCS_PSS => match parameter {
                Parameter::Pss { hash, .. } => RsaPss(hash_of(hash).ok_or_else(|| bad("unsupported PSS hash"))?),
                _ => return Err(bad("CKM_RSA_PKCS_PSS needs CK_RSA_PKCS_PSS_PARAMS")),
            },
            _ => return Err(Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{ty:X} is not offered"))),
        };
        match (mechanism, parameter) {
            (RsaPss(h) | RsaPssWith(h), Parameter::Pss { hash, mgf, salt_len }) => {
                if hash_of(hash) != Some(h) {
                    return Err(bad("the PSS hash must be the mechanism's"));
                }
                if mgf != mgf_of(h) || salt_len as usize != h.output_len() {
                    return Err(bad("the KMS signs PSS with MGF1 of the same hash and a salt as long as the hash"));
                }
            }
            (RsaPssWith(_), _) => return Err(bad("PSS mechanisms need CK_RSA_PKCS_PSS_PARAMS")),
            (Eddsa, Parameter::None) => {}
            (Eddsa, Parameter::Eddsa { prehash: false, context_len: 0 }) => {}
            (Eddsa, _) => return Err(bad("only pure Ed25519 (no prehash, no context) is offered")),
            (_, Parameter::None) => {}
            (_, _) => return Err(bad("this mechanism takes no parameter")),
        }
        Ok(mechanism)
    }

    /// Can a key of this kind be used with this mechanism?
    pub(crate) fn fits(self, key: &PublicKey) -> bool {
        matches!(
            (self, key),
            (Ecdsa | EcdsaWith(_), PublicKey::Ec { .. })
                | (Eddsa, PublicKey::Ed25519 { .. })
                | (RsaPkcs | RsaPkcsWith(_) | RsaPss(_) | RsaPssWith(_), PublicKey::Rsa { .. })
        )
    }

    /// The hash computed here for multi-part signing, if the mechanism hashes.
    pub(crate) fn hash(self) -> Option<Hash> {
        match self {
            EcdsaWith(h) | RsaPkcsWith(h) | RsaPssWith(h) => Some(h),
            Ecdsa | Eddsa | RsaPkcs | RsaPss(_) => None,
        }
    }
}

/// Turns the caller's input into the KMS Sign request. `input` is the message for hashing
/// mechanisms, already hashed when `prehashed` (after C_SignUpdate).
pub(crate) fn request(mechanism: Mechanism, input: &[u8], prehashed: bool) -> Result<SignRequest> {
    let digest = |h: Hash| if prehashed { input.to_vec() } else { h.digest(input) };
    match mechanism {
        Ecdsa => {
            let hash =
                Hash::ALL.into_iter().find(|h| h.output_len() == input.len() && *h != Hash::Sha1).ok_or_else(|| {
                    Error::new(
                        CKR_DATA_LEN_RANGE,
                        format!(
                            "CKM_ECDSA input of {} bytes: the KMS signs SHA-256/384/512 hashes (32, 48 or 64 bytes)",
                            input.len()
                        ),
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
        RsaPss(h) if input.len() != h.output_len() => Err(Error::new(
            CKR_DATA_LEN_RANGE,
            format!("CKM_RSA_PKCS_PSS input of {} bytes where the {h:?} hash has {}", input.len(), h.output_len()),
        )),
        RsaPss(h) => Ok(SignRequest::rsa_pss(h, input.to_vec())),
        RsaPssWith(h) => Ok(SignRequest::rsa_pss(h, digest(h))),
    }
}

/// Turns the KMS's signature into what the caller expects, checking its size.
pub(crate) fn finish(mechanism: Mechanism, key: &PublicKey, signature: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: String| Error::new(CKR_DEVICE_ERROR, format!("KMS signature unusable: {what}"));
    let out = match (mechanism, key) {
        (Ecdsa | EcdsaWith(_), PublicKey::Ec { curve, .. }) => {
            asn1::ecdsa_der_to_raw(&signature, *curve).map_err(bad)?
        }
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
    fn every_offered_mechanism_resolves_and_has_info() {
        let pss = |h: CK_MECHANISM_TYPE, mgf, salt_len| Parameter::Pss { hash: h, mgf, salt_len };
        for ty in OFFERED {
            assert!(info(ty).is_some());
            let param = match ty {
                CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS => pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
                CKM_SHA1_RSA_PKCS_PSS => pss(CKM_SHA_1, CKG_MGF1_SHA1, 20),
                CKM_SHA384_RSA_PKCS_PSS => pss(CKM_SHA384, CKG_MGF1_SHA384, 48),
                CKM_SHA512_RSA_PKCS_PSS => pss(CKM_SHA512, CKG_MGF1_SHA512, 64),
                _ => Parameter::None,
            };
            assert!(Mechanism::resolve(ty, param).is_ok(), "{ty:#x}");
        }
        assert_eq!(Mechanism::resolve(CKM_RSA_X_509, Parameter::None).unwrap_err().rv, CKR_MECHANISM_INVALID);
        assert!(info(CKM_RSA_X_509).is_none());
    }

    #[test]
    fn parameters_the_kms_cannot_honour_are_refused() {
        let invalid = |ty, p| Mechanism::resolve(ty, p).unwrap_err().rv == CKR_MECHANISM_PARAM_INVALID;
        assert!(invalid(CKM_RSA_PKCS_PSS, Parameter::None));
        assert!(invalid(CKM_RSA_PKCS_PSS, Parameter::Pss { hash: CKM_SHA256, mgf: CKG_MGF1_SHA256, salt_len: 0 }));
        assert!(invalid(CKM_RSA_PKCS_PSS, Parameter::Pss { hash: CKM_SHA256, mgf: CKG_MGF1_SHA1, salt_len: 32 }));
        assert!(invalid(
            CKM_SHA384_RSA_PKCS_PSS,
            Parameter::Pss { hash: CKM_SHA256, mgf: CKG_MGF1_SHA256, salt_len: 32 }
        ));
        assert!(invalid(CKM_ECDSA, Parameter::Unreadable));
        assert!(invalid(CKM_EDDSA, Parameter::Eddsa { prehash: true, context_len: 0 }));
        assert!(invalid(CKM_EDDSA, Parameter::Eddsa { prehash: false, context_len: 3 }));
        assert_eq!(Mechanism::resolve(CKM_EDDSA, Parameter::Eddsa { prehash: false, context_len: 0 }), Ok(Eddsa));
    }

    #[test]
    fn pss_input_is_a_hash_of_the_parameter_s_length() {
        assert_eq!(request(RsaPss(Hash::Sha384), &[1; 32], false).unwrap_err().rv, CKR_DATA_LEN_RANGE);
        assert_eq!(
            request(RsaPss(Hash::Sha384), &[1; 48], false).unwrap(),
            SignRequest::rsa_pss(Hash::Sha384, vec![1; 48])
        );
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
        let mut di = hex::decode("3031300D060960864801650304020105000420").unwrap();
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
