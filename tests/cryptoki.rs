//! The built library loaded through `dlopen` by the `cryptoki` crate, against a real KMS with
//! keys created by the real `ckms`: enumeration, attributes, every signing mechanism, each
//! signature checked by an independent verifier (RustCrypto).
//!
//! The KMS and its keys are made once per test process; each test runs in a child process of its
//! own (PKCS#11 state is per process), where the module is loaded with the provider's
//! environment; the a-thousand-signatures test signs on 4 threads, with their own sessions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use cosmian_pkcs11_testbed::{
    Ckms, KEY_TYPES, KeyKind, KmsServer, child_part, provider_lib, run_in_child, write_provider_config,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use sha2::Digest;

/// In a child: the KMS's URL.
const KMS_URL: &str = "CRYPTOKI_TEST_KMS_URL";
/// In a child: the key pairs, `name private-id public-id` per line, in [`KEY_TYPES`]'s order.
const KEYS: &str = "CRYPTOKI_TEST_KEYS";
/// In a child: the private key without the tag.
const UNTAGGED: &str = "CRYPTOKI_TEST_UNTAGGED";

/// The module in a child process, and what the parent made.
struct Bed {
    ckms: Ckms,
    pkcs11: Pkcs11,
    slot: Slot,
    /// name -> (private id, public id)
    keys: BTreeMap<&'static str, (String, String)>,
    untagged: String,
}

/// In the parent: the KMS and its keys (made once), and this test run again in a child with the
/// provider's environment; `None` once the child passed. In the child: the module.
fn bed() -> Option<&'static Bed> {
    if child_part().is_some() {
        return Some(module());
    }
    static KMS: OnceLock<(KmsServer, Vec<(&'static str, PathBuf)>)> = OnceLock::new();
    let (_kms, env) = KMS.get_or_init(|| {
        let kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let mut keys = String::new();
        for (name, kind) in KEY_TYPES {
            let pair = ckms.create_key_pair(kind, &["ssh-auth", name]);
            keys.push_str(&format!("{name} {} {}\n", pair.private_id, pair.public_id));
        }
        let untagged = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["not-ssh"]).private_id;
        // Inside the KMS's folder, which the test bed removes at exit (statics are never dropped).
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let env = vec![
            ("COSMIAN_KMS_CLI_CONF", write_provider_config(&dir, &kms.url(), "")),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs")),
            ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
            (KMS_URL, kms.url().into()),
            (KEYS, keys.into()),
            (UNTAGGED, untagged.into()),
        ];
        (kms, env)
    });
    run_in_child("module", env.iter().cloned());
    None
}

/// In a child: the module, loaded and initialized once; the keys the parent made.
fn module() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        let listed = var(KEYS);
        let mut lines = listed.lines().map(|line| line.split(' ').map(str::to_owned).collect::<Vec<_>>());
        let keys = KEY_TYPES
            .iter()
            .map(|(name, _)| match lines.next().as_deref() {
                Some([listed, private, public]) if listed == name => (*name, (private.clone(), public.clone())),
                other => panic!("{KEYS}: {other:?} for {name}"),
            })
            .collect();
        let pkcs11 = Pkcs11::new(provider_lib()).expect("dlopen the provider");
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
        let slots = pkcs11.get_slots_with_token().unwrap();
        assert_eq!(slots.len(), 1, "one slot with a token");
        Bed { ckms: Ckms::at_url(&var(KMS_URL), ""), pkcs11, slot: slots[0], keys, untagged: var(UNTAGGED) }
    })
}

fn session() -> Session {
    let bed = module();
    bed.pkcs11.open_rw_session(bed.slot).unwrap()
}

fn find(session: &Session, template: &[Attribute]) -> Vec<ObjectHandle> {
    session.find_objects(template).unwrap()
}

fn private_key(session: &Session, name: &str) -> ObjectHandle {
    let id = module().keys[name].0.as_bytes().to_vec();
    let found = find(session, &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id), Attribute::Sign(true)]);
    assert_eq!(found.len(), 1, "private key {name}");
    found[0]
}

fn public_value(session: &Session, name: &str, ty: AttributeType) -> Vec<u8> {
    let id = module().keys[name].0.as_bytes().to_vec();
    let found = find(session, &[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)]);
    assert_eq!(found.len(), 1, "public key {name}");
    match session.get_attributes(found[0], &[ty]).unwrap().pop() {
        Some(Attribute::EcPoint(v) | Attribute::Modulus(v) | Attribute::PublicExponent(v) | Attribute::EcParams(v)) => {
            v
        }
        other => panic!("{name} {ty:?}: {other:?}"),
    }
}

/// The point inside CKA_EC_POINT's DER OCTET STRING.
fn ec_point(session: &Session, name: &str) -> Vec<u8> {
    let der = public_value(session, name, AttributeType::EcPoint);
    assert_eq!(der[0], 0x04, "{name}: CKA_EC_POINT must be a DER OCTET STRING");
    let (len, header) = match der[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (der[2] as usize, 3),
        other => panic!("unexpected length byte {other:#x}"),
    };
    assert_eq!(der.len(), header + len);
    der[header..].to_vec()
}

#[test]
fn the_token_is_ready_for_batch_ssh() {
    let Some(bed) = bed() else {
        return;
    };
    let info = bed.pkcs11.get_token_info(bed.slot).unwrap();
    assert!(info.token_initialized());
    assert!(!info.login_required(), "OpenSSH in batch mode gives up on tokens that want a PIN");
    assert!(info.label().starts_with("Cosmian KMS 127.0.0.1:"), "{}", info.label());
    assert_eq!(bed.pkcs11.get_library_info().unwrap().manufacturer_id(), "cosmian");
    let mechanisms = bed.pkcs11.get_mechanism_list(bed.slot).unwrap();
    for m in [MechanismType::ECDSA, MechanismType::EDDSA, MechanismType::RSA_PKCS, MechanismType::SHA256_RSA_PKCS] {
        assert!(mechanisms.contains(&m), "{m}");
    }
}

#[test]
fn lists_exactly_the_tagged_key_pairs_with_meaningful_labels() {
    let Some(bed) = bed() else {
        return;
    };
    let s = session();
    let publics = find(&s, &[Attribute::Class(ObjectClass::PUBLIC_KEY)]);
    let privates = find(&s, &[Attribute::Class(ObjectClass::PRIVATE_KEY)]);
    assert_eq!(publics.len(), KEY_TYPES.len());
    assert_eq!(privates.len(), KEY_TYPES.len());
    let mut labels = Vec::new();
    for h in &publics {
        let attrs = s.get_attributes(*h, &[AttributeType::Label, AttributeType::Id]).unwrap();
        let (Attribute::Label(label), Attribute::Id(id)) = (&attrs[0], &attrs[1]) else { panic!("{attrs:?}") };
        let label = String::from_utf8(label.clone()).unwrap();
        let id = String::from_utf8(id.clone()).unwrap();
        assert_ne!(id, bed.untagged, "a key without the tag is offered");
        let name = bed
            .keys
            .iter()
            .find(|(_, (private, _))| *private == id)
            .map(|(n, _)| *n)
            .expect("CKA_ID is a private key id");
        assert_eq!(label, format!("{name} ({id})"));
        labels.push(label);
    }
    assert_eq!(labels.len(), KEY_TYPES.len());
    // Nothing that is not a key pair of the tag.
    assert!(find(&s, &[Attribute::Class(ObjectClass::CERTIFICATE)]).is_empty());
    assert!(find(&s, &[Attribute::Class(ObjectClass::SECRET_KEY)]).is_empty());
}

#[test]
fn private_keys_are_found_as_openssh_looks_for_them() {
    let Some(bed) = bed() else {
        return;
    };
    let s = session();
    for (name, (private_id, public_id)) in &bed.keys {
        let by_id = private_key(&s, name);
        // The retry without CKA_SIGN, and the compatibility search by the public key's id.
        let plain =
            find(&s, &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(private_id.as_bytes().to_vec())]);
        let by_pk =
            find(&s, &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(public_id.as_bytes().to_vec())]);
        assert_eq!(plain, [by_id]);
        assert_eq!(by_pk, [by_id]);
        let attrs = s
            .get_attributes(
                by_id,
                &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::AlwaysAuthenticate],
            )
            .unwrap();
        assert_eq!(
            attrs,
            [Attribute::Sensitive(true), Attribute::Extractable(false), Attribute::AlwaysAuthenticate(false)]
        );
        // Private material is refused; cryptoki leaves out what the module called sensitive.
        let secret = s
            .get_attributes(by_id, &[AttributeType::Value, AttributeType::PrivateExponent, AttributeType::Sign])
            .unwrap();
        assert_eq!(secret, [Attribute::Sign(true)], "{name}");
    }
}

#[test]
fn public_attributes_match_what_ckms_exports() {
    let Some(bed) = bed() else {
        return;
    };
    let s = session();
    use p256::pkcs8::DecodePublicKey;
    for (name, kind) in KEY_TYPES {
        let pem = bed.ckms.export_public_pkcs8_pem(&bed.keys[name].1);
        match (name, kind) {
            ("p256", _) => {
                let k = p256::PublicKey::from_public_key_pem(&pem).unwrap();
                assert_eq!(ec_point(&s, name), p256::EncodedPoint::from(k).as_bytes());
                assert_eq!(public_value(&s, name, AttributeType::EcParams), hex("06082A8648CE3D030107"));
            }
            ("p384", _) => {
                let k = p384::PublicKey::from_public_key_pem(&pem).unwrap();
                assert_eq!(ec_point(&s, name), p384::EncodedPoint::from(k).as_bytes());
                assert_eq!(public_value(&s, name, AttributeType::EcParams), hex("06052B81040022"));
            }
            ("p521", _) => {
                let k = p521::PublicKey::from_public_key_pem(&pem).unwrap();
                assert_eq!(ec_point(&s, name), p521::EncodedPoint::from(k).as_bytes());
                assert_eq!(public_value(&s, name, AttributeType::EcParams), hex("06052B81040023"));
            }
            ("ed25519", _) => {
                let k = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).unwrap();
                assert_eq!(ec_point(&s, name), k.as_bytes());
                assert_eq!(public_value(&s, name, AttributeType::EcParams), hex("06032B6570"));
                let id = bed.keys[name].0.as_bytes().to_vec();
                let h = find(&s, &[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)])[0];
                assert_eq!(
                    s.get_attributes(h, &[AttributeType::KeyType]).unwrap(),
                    [Attribute::KeyType(KeyType::EC_EDWARDS)]
                );
            }
            (_, KeyKind::Rsa(bits)) => {
                use rsa::traits::PublicKeyParts;
                let k = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
                assert_eq!(public_value(&s, name, AttributeType::Modulus), k.n().to_bytes_be());
                assert_eq!(public_value(&s, name, AttributeType::PublicExponent), k.e().to_bytes_be());
                assert_eq!(k.n().bits(), bits as usize);
            }
            _ => unreachable!(),
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Verifies an ECDSA raw `r||s` signature over `prehash` with the named key.
fn verify_ecdsa(s: &Session, name: &str, prehash: &[u8], sig: &[u8]) -> Result<(), String> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let point = ec_point(s, name);
    let err = |e: p256::ecdsa::Error| e.to_string();
    match name {
        "p256" => p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .and_then(|k| k.verify_prehash(prehash, &p256::ecdsa::Signature::from_slice(sig)?))
            .map_err(err),
        "p384" => p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .and_then(|k| k.verify_prehash(prehash, &p384::ecdsa::Signature::from_slice(sig)?))
            .map_err(err),
        "p521" => p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .and_then(|k| k.verify_prehash(prehash, &p521::ecdsa::Signature::from_slice(sig)?))
            .map_err(err),
        _ => Err(format!("{name} is not an EC key")),
    }
}

fn verify_rsa_pkcs1(s: &Session, name: &str, hash: &str, digest: &[u8], sig: &[u8]) {
    let n = rsa::BigUint::from_bytes_be(&public_value(s, name, AttributeType::Modulus));
    let e = rsa::BigUint::from_bytes_be(&public_value(s, name, AttributeType::PublicExponent));
    let key = rsa::RsaPublicKey::new(n, e).unwrap();
    let scheme = match hash {
        "sha1" => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
        "sha256" => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        "sha384" => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        _ => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
    };
    key.verify(scheme, digest, sig).unwrap_or_else(|e| panic!("{name} {hash}: {e}"));
}

fn digests(message: &[u8]) -> [(&'static str, Vec<u8>); 4] {
    [
        ("sha1", sha1::Sha1::digest(message).to_vec()),
        ("sha256", sha2::Sha256::digest(message).to_vec()),
        ("sha384", sha2::Sha384::digest(message).to_vec()),
        ("sha512", sha2::Sha512::digest(message).to_vec()),
    ]
}

#[test]
fn ecdsa_every_mechanism_verifies() {
    if bed().is_none() {
        return;
    }
    let s = session();
    let message = b"ecdsa: every mechanism".as_slice();
    for name in ["p256", "p384", "p521"] {
        let key = private_key(&s, name);
        let width = match name {
            "p256" => 64,
            "p384" => 96,
            _ => 132,
        };
        for (hash, digest) in digests(message).into_iter().skip(1) {
            // RustCrypto cannot verify a prehash shorter than half the field (P-521 with
            // SHA-256; openssl verifies the KMS's signature): no independent check there.
            if 2 * digest.len() < width / 2 {
                continue;
            }
            // The caller hashes (what OpenSSH does)...
            let raw = s.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
            assert_eq!(raw.len(), width, "{name} raw r||s width");
            verify_ecdsa(&s, name, &digest, &raw).unwrap_or_else(|e| panic!("{name} CKM_ECDSA over {hash}: {e}"));
            // ...or the module does, in one part and in several.
            let mechanism = match hash {
                "sha256" => Mechanism::EcdsaSha256,
                "sha384" => Mechanism::EcdsaSha384,
                _ => Mechanism::EcdsaSha512,
            };
            let one = s.sign(&mechanism, key, message).unwrap();
            verify_ecdsa(&s, name, &digest, &one).unwrap_or_else(|e| panic!("{name} {mechanism:?}: {e}"));
            s.sign_init(&mechanism, key).unwrap();
            for part in message.chunks(5) {
                s.sign_update(part).unwrap();
            }
            let multi = s.sign_final().unwrap();
            verify_ecdsa(&s, name, &digest, &multi).unwrap_or_else(|e| panic!("{name} multi-part {mechanism:?}: {e}"));
        }
        // A hash the KMS cannot take as such.
        let err = s.sign(&Mechanism::Ecdsa, key, &[7; 20]).unwrap_err();
        assert!(matches!(err, Error::Pkcs11(RvError::DataLenRange, _)), "{err}");
    }
}

#[test]
fn eddsa_verifies() {
    if bed().is_none() {
        return;
    }
    let s = session();
    let key = private_key(&s, "ed25519");
    let point: [u8; 32] = ec_point(&s, "ed25519").try_into().unwrap();
    let verifier = ed25519_dalek::VerifyingKey::from_bytes(&point).unwrap();
    for message in [&b""[..], b"short", &[0xA5; 4096]] {
        let sig = s.sign(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), key, message).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        verifier.verify_strict(message, &sig).unwrap();
    }
    // EdDSA signs in one part only.
    s.sign_init(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), key).unwrap();
    assert!(s.sign_update(b"x").is_err());
}

#[test]
fn rsa_pkcs1_every_mechanism_and_size_verifies() {
    if bed().is_none() {
        return;
    }
    let s = session();
    let message = b"rsa: every mechanism".as_slice();
    for name in ["rsa2048", "rsa3072", "rsa4096"] {
        let key = private_key(&s, name);
        for (hash, digest) in digests(message) {
            // CKM_RSA_PKCS over a DigestInfo, as OpenSSH builds it.
            let prefix = match hash {
                "sha1" => "3021300906052B0E03021A05000414",
                "sha256" => "3031300D060960864801650304020105000420",
                "sha384" => "3041300D060960864801650304020205000430",
                _ => "3051300D060960864801650304020305000440",
            };
            let digest_info = [hex(prefix), digest.clone()].concat();
            let sig = s.sign(&Mechanism::RsaPkcs, key, &digest_info).unwrap();
            verify_rsa_pkcs1(&s, name, hash, &digest, &sig);
            let mechanism = match hash {
                "sha1" => Mechanism::Sha1RsaPkcs,
                "sha256" => Mechanism::Sha256RsaPkcs,
                "sha384" => Mechanism::Sha384RsaPkcs,
                _ => Mechanism::Sha512RsaPkcs,
            };
            let sig = s.sign(&mechanism, key, message).unwrap();
            verify_rsa_pkcs1(&s, name, hash, &digest, &sig);
            s.sign_init(&mechanism, key).unwrap();
            s.sign_update(&message[..3]).unwrap();
            s.sign_update(&message[3..]).unwrap();
            verify_rsa_pkcs1(&s, name, hash, &digest, &s.sign_final().unwrap());
        }
        // Raw RSA input is refused: the KMS signs hashes only.
        let err = s.sign(&Mechanism::RsaPkcs, key, &[1; 32]).unwrap_err();
        assert!(matches!(err, Error::Pkcs11(RvError::DataInvalid, _)), "{err}");
    }
}

#[test]
fn mechanism_and_key_must_agree() {
    if bed().is_none() {
        return;
    }
    let s = session();
    let err = s.sign(&Mechanism::RsaPkcs, private_key(&s, "p256"), &[0; 51]).unwrap_err();
    assert!(matches!(err, Error::Pkcs11(RvError::KeyTypeInconsistent, _)), "{err}");
    let err = s.sign(&Mechanism::Ecdsa, private_key(&s, "rsa2048"), &[0; 32]).unwrap_err();
    assert!(matches!(err, Error::Pkcs11(RvError::KeyTypeInconsistent, _)), "{err}");
}

/// 1,000 signatures per curve, on 4 threads with their own sessions, every one verified: a
/// short r or s (about 1 in 128) must be left-padded, or OpenSSH rejects the login.
#[test]
fn a_thousand_ecdsa_signatures_per_curve_all_verify() {
    if bed().is_none() {
        return;
    }
    const PER_CURVE: usize = 1000;
    const THREADS: usize = 4;
    for name in ["p256", "p384", "p521"] {
        let padded: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    scope.spawn(move || {
                        let s = session();
                        let key = private_key(&s, name);
                        let mut padded = 0;
                        for i in (t..PER_CURVE).step_by(THREADS) {
                            let message = format!("{name} signature {i}");
                            let digest = match name {
                                "p256" => sha2::Sha256::digest(&message).to_vec(),
                                "p384" => sha2::Sha384::digest(&message).to_vec(),
                                _ => sha2::Sha512::digest(&message).to_vec(),
                            };
                            let sig = s.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                            verify_ecdsa(&s, name, &digest, &sig).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
                            let half = sig.len() / 2;
                            if sig[0] == 0 || sig[half] == 0 {
                                padded += 1;
                            }
                        }
                        padded
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert!(padded > 0, "{name}: no short r or s in {PER_CURVE} signatures: the padding path was not exercised");
    }
}

#[test]
fn rsa_pss_verifies_with_the_parameters_the_kms_supports() {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
    if bed().is_none() {
        return;
    }
    let s = session();
    let message = b"rsa-pss".as_slice();
    let n = rsa::BigUint::from_bytes_be(&public_value(&s, "rsa2048", AttributeType::Modulus));
    let e = rsa::BigUint::from_bytes_be(&public_value(&s, "rsa2048", AttributeType::PublicExponent));
    let verifier = rsa::RsaPublicKey::new(n, e).unwrap();
    let key = private_key(&s, "rsa2048");
    for (hash, digest) in digests(message) {
        type Scheme = fn() -> rsa::Pss;
        type WithHash = fn(PkcsPssParams) -> Mechanism<'static>;
        let (hash_alg, mgf, scheme, mechanism): (_, _, Scheme, WithHash) = match hash {
            "sha1" => {
                (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, rsa::Pss::new::<sha1::Sha1>, Mechanism::Sha1RsaPkcsPss)
            }
            "sha256" => (
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                rsa::Pss::new::<sha2::Sha256>,
                Mechanism::Sha256RsaPkcsPss,
            ),
            "sha384" => (
                MechanismType::SHA384,
                PkcsMgfType::MGF1_SHA384,
                rsa::Pss::new::<sha2::Sha384>,
                Mechanism::Sha384RsaPkcsPss,
            ),
            _ => (
                MechanismType::SHA512,
                PkcsMgfType::MGF1_SHA512,
                rsa::Pss::new::<sha2::Sha512>,
                Mechanism::Sha512RsaPkcsPss,
            ),
        };
        let params = PkcsPssParams { hash_alg, mgf, s_len: (digest.len() as u64).into() };
        let raw = s.sign(&Mechanism::RsaPkcsPss(params), key, &digest).unwrap();
        verifier.verify(scheme(), &digest, &raw).unwrap_or_else(|e| panic!("CKM_RSA_PKCS_PSS {hash}: {e}"));
        let hashed = s.sign(&mechanism(params), key, message).unwrap();
        verifier.verify(scheme(), &digest, &hashed).unwrap_or_else(|e| panic!("{hash} RSA-PSS: {e}"));
        // A salt length the KMS does not use is refused up front.
        let odd = PkcsPssParams { s_len: 0u64.into(), ..params };
        let err = s.sign(&Mechanism::RsaPkcsPss(odd), key, &digest).unwrap_err();
        assert!(matches!(err, Error::Pkcs11(RvError::MechanismParamInvalid, _)), "{err}");
    }
}
