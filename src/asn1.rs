//! ASN.1 the provider reads and writes: public keys (SubjectPublicKeyInfo from the KMS),
//! ECDSA signatures (DER from the KMS, raw `r||s` for PKCS#11), DigestInfo (what
//! `CKM_RSA_PKCS` callers hand in) and the DER forms of `CKA_EC_PARAMS`/`CKA_EC_POINT`.
//! Parsing goes through RustCrypto's `der`/`spki`; nothing here panics on hostile input.

use der::asn1::{ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoRef;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The NIST curves the provider serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
            Curve::P384 => ObjectIdentifier::new_unwrap("1.3.132.0.34"),
            Curve::P521 => ObjectIdentifier::new_unwrap("1.3.132.0.35"),
        }
    }

    fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        [Curve::P256, Curve::P384, Curve::P521].into_iter().find(|c| c.oid() == *oid)
    }

    /// Bytes of one coordinate, and of each half of a raw signature.
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// `CKA_EC_PARAMS`: the DER of the curve's OID.
    pub(crate) fn ec_params(self) -> Vec<u8> {
        self.oid().to_der().unwrap_or_default()
    }
}

/// `CKA_EC_PARAMS` of Ed25519 (RFC 8410 OID, the form OpenSSH 10.1+ and pkcs11-tool accept).
pub(crate) fn ed25519_ec_params() -> Vec<u8> {
    OID_ED25519.to_der().unwrap_or_default()
}

/// A public key as the KMS hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian modulus and exponent, no leading zeros.
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// Uncompressed point `04||X||Y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519 {
        key: [u8; 32],
    },
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

#[derive(der::Sequence)]
struct EcdsaSignature<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki(der_bytes: &[u8]) -> Result<Self, String> {
        let spki =
            SubjectPublicKeyInfoRef::from_der(der_bytes).map_err(|e| format!("bad SubjectPublicKeyInfo: {e}"))?;
        let key = spki.subject_public_key.as_bytes().ok_or("public key bit string has unused bits")?;
        match spki.algorithm.oid {
            OID_RSA => {
                let rsa = RsaPublicKey::from_der(key).map_err(|e| format!("bad RSA public key: {e}"))?;
                Ok(PublicKey::Rsa {
                    modulus: rsa.modulus.as_bytes().to_vec(),
                    exponent: rsa.public_exponent.as_bytes().to_vec(),
                })
            }
            OID_EC => {
                let oid: ObjectIdentifier = spki
                    .algorithm
                    .parameters
                    .ok_or("EC key without curve parameters")?
                    .decode_as()
                    .map_err(|e| format!("EC parameters are not a named curve: {e}"))?;
                let curve = Curve::from_oid(&oid).ok_or_else(|| format!("unsupported curve {oid}"))?;
                if key.len() != 1 + 2 * curve.field_len() || key[0] != 4 {
                    return Err(format!("{curve:?} point is not uncompressed ({} bytes)", key.len()));
                }
                Ok(PublicKey::Ec { curve, point: key.to_vec() })
            }
            OID_ED25519 => {
                let key: [u8; 32] = key.try_into().map_err(|_| "Ed25519 key is not 32 bytes")?;
                Ok(PublicKey::Ed25519 { key })
            }
            other => Err(format!("unsupported key algorithm {other}")),
        }
    }

    /// The DER SubjectPublicKeyInfo of this key (`CKA_PUBLIC_KEY_INFO`).
    pub fn to_spki(&self) -> Vec<u8> {
        use der::asn1::{AnyRef, BitString, Null};
        let encode = || -> der::Result<Vec<u8>> {
            let (oid, parameters, key) = match self {
                PublicKey::Rsa { modulus, exponent } => {
                    let key =
                        RsaPublicKey { modulus: UintRef::new(modulus)?, public_exponent: UintRef::new(exponent)? };
                    (OID_RSA, Some(Null.to_der()?), key.to_der()?)
                }
                PublicKey::Ec { curve, point } => (OID_EC, Some(curve.ec_params()), point.clone()),
                PublicKey::Ed25519 { key } => (OID_ED25519, None, key.to_vec()),
            };
            let parameters = parameters.as_deref().map(AnyRef::try_from).transpose()?;
            spki::SubjectPublicKeyInfo {
                algorithm: spki::AlgorithmIdentifier { oid, parameters },
                subject_public_key: BitString::from_bytes(&key)?,
            }
            .to_der()
        };
        encode().unwrap_or_default()
    }

    /// Most bytes a signature by this key takes.
    pub(crate) fn signature_len(&self) -> usize {
        match self {
            PublicKey::Rsa { modulus, .. } => modulus.len(),
            PublicKey::Ec { curve, .. } => 2 * curve.field_len(),
            PublicKey::Ed25519 { .. } => 64,
        }
    }
}

/// `CKA_EC_POINT`: the point wrapped in a DER OCTET STRING (OpenSSH refuses a bare point).
pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    OctetStringRef::new(bytes).and_then(|o| o.to_der()).unwrap_or_default()
}

/// A DER ECDSA signature turned into raw `r||s`, each half left-padded to the curve size.
pub fn ecdsa_der_to_raw(der_sig: &[u8], curve: Curve) -> Result<Vec<u8>, String> {
    let sig = EcdsaSignature::from_der(der_sig).map_err(|e| format!("bad DER ECDSA signature: {e}"))?;
    let n = curve.field_len();
    let mut out = vec![0u8; 2 * n];
    for (half, int) in [sig.r, sig.s].iter().enumerate() {
        let bytes = int.as_bytes();
        if bytes.len() > n {
            return Err(format!("ECDSA signature component longer than {n} bytes"));
        }
        let end = (half + 1) * n;
        out[end - bytes.len()..end].copy_from_slice(bytes);
    }
    Ok(out)
}

/// The hash functions the provider meets in DigestInfos and mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub(crate) const ALL: [Hash; 4] = [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512];

    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DER prefix that precedes the hash in a PKCS#1 v1.5 DigestInfo.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
                0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
                0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
                0x04, 0x40,
            ],
        }
    }

    /// Hashes `data` in one go.
    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish()
    }
}

/// Splits a DER DigestInfo into its hash function and hash.
pub fn parse_digest_info(data: &[u8]) -> Option<(Hash, &[u8])> {
    Hash::ALL
        .into_iter()
        .find_map(|h| data.strip_prefix(h.digest_info_prefix()).filter(|d| d.len() == h.output_len()).map(|d| (h, d)))
}

/// Incremental hashing for the `CKM_*_WITH_SHA*` mechanisms.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(hash: Hash) -> Self {
        use sha2::Digest;
        match hash {
            Hash::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Hash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Hash::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Hash::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn curve_params_are_the_der_oids_openssh_expects() {
        assert_eq!(Curve::P256.ec_params(), hex("06082A8648CE3D030107"));
        assert_eq!(Curve::P384.ec_params(), hex("06052B81040022"));
        assert_eq!(Curve::P521.ec_params(), hex("06052B81040023"));
        assert_eq!(ed25519_ec_params(), hex("06032B6570"));
    }

    #[test]
    fn ec_point_is_wrapped_with_long_form_lengths() {
        assert_eq!(octet_string(&[4; 65])[..3], [0x04, 0x41, 0x04]);
        assert_eq!(octet_string(&[4; 97])[..3], [0x04, 0x61, 0x04]);
        assert_eq!(octet_string(&[4; 133])[..4], [0x04, 0x81, 0x85, 0x04]);
    }

    #[test]
    fn ed25519_spki_as_the_kms_sends_it() {
        let mut spki = hex("302A300506032B6570032100");
        spki.extend([7u8; 32]);
        assert_eq!(PublicKey::from_spki(&spki).unwrap(), PublicKey::Ed25519 { key: [7; 32] });
    }

    #[test]
    fn ecdsa_short_components_are_left_padded() {
        // r = 0x01 (one byte), s = 0x80.. (needs a leading zero in DER)
        let mut der_sig = vec![0x30, 0x00, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00];
        der_sig.extend([0x80; 32]);
        der_sig[1] = (der_sig.len() - 2) as u8;
        let raw = ecdsa_der_to_raw(&der_sig, Curve::P256).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(raw[..31], [0; 31]);
        assert_eq!(raw[31], 1);
        assert_eq!(raw[32..], [0x80; 32]);
    }

    #[test]
    fn ecdsa_rejects_garbage_and_oversized() {
        assert!(ecdsa_der_to_raw(b"", Curve::P256).is_err());
        assert!(ecdsa_der_to_raw(&[0x30, 0x02, 0x05, 0x00], Curve::P256).is_err());
        let mut big = vec![0x30, 0x46, 0x02, 0x21, 0x01];
        big.extend([1; 32]);
        big.extend([0x02, 0x21, 0x01]);
        big.extend([1; 32]);
        assert!(ecdsa_der_to_raw(&big, Curve::P256).is_err());
    }

    #[test]
    fn digest_info_is_recognised_exactly() {
        for h in Hash::ALL {
            let mut di = h.digest_info_prefix().to_vec();
            di.extend(vec![9; h.output_len()]);
            assert_eq!(parse_digest_info(&di), Some((h, &vec![9u8; h.output_len()][..])));
            di.push(0);
            assert_eq!(parse_digest_info(&di), None);
        }
        assert_eq!(parse_digest_info(&[0; 32]), None);
    }

    #[test]
    fn hashes_match_known_vectors() {
        assert_eq!(Hash::Sha256.digest(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(Hash::Sha1.digest(b"abc")[..4], [0xa9, 0x99, 0x3e, 0x36]);
    }
}
