//! OpenSC's `pkcs11-tool` (listing, its self-test, signing, its fork test) and
//! `python-pkcs11` (enumerating and signing from Python), with a P-256 and an RSA-2048 pair;
//! every signature verified with RustCrypto against the public key ckms exports.

use std::path::{Path, PathBuf};
use std::process::Output;

use cosmian_pkcs11_testbed::{KeyKind, provider_lib};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use sha2::Digest;

use crate::{Bed, hex, text};

fn bed() -> Bed {
    Bed::new(&[("p256", KeyKind::Ec("nist-p256")), ("rsa2048", KeyKind::Rsa(2048))])
}

impl Bed {
    fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let mut command = self.command("pkcs11-tool");
        command.arg("--module").arg(provider_lib()).args(args);
        self.run(&mut command, "install OpenSC with scripts/install-test-bed.sh")
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(&self.key(name).public_pem).unwrap()
    }

    fn verify_ecdsa(&self, digest: &[u8], raw: &[u8]) {
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&self.pem("p256")).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(raw).unwrap_or_else(|e| panic!("{e}: {raw:02x?}"));
        key.verify_prehash(digest, &signature).expect("the ECDSA signature verifies");
    }

    fn verify_rsa_sha256(&self, message: &[u8], signature: &[u8]) {
        let key = rsa::RsaPublicKey::from_public_key_pem(&self.pem("rsa2048")).unwrap();
        let digest = sha2::Sha256::digest(message);
        key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature).expect("the RSA signature verifies");
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The errors `pkcs11-tool --test` counts today, none of them about finding keys, reading
/// attributes or signing:
const KNOWN_SELF_TEST_ERRORS: [&str; 2] = [
    // The token has no random number generator (CKF_RNG is not set): it only signs.
    "C_GenerateRandom failed: CKR_FUNCTION_NOT_SUPPORTED",
    // C_SignUpdate with a single-part mechanism (CKM_RSA_PKCS); pkcs11-tool only takes
    // CKR_FUNCTION_NOT_SUPPORTED as "no multi-part" and then finishes with C_Sign.
    "C_SignUpdate failed: CKR_MECHANISM_INVALID",
];

#[test]
fn pkcs11_tool_lists_tests_and_signs() {
    let bed = bed();

    // ---- listing ------------------------------------------------------------------------
    let out = bed.pkcs11_tool(&["--list-slots", "--list-objects"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("token label        : Cosmian KMS 127.0.0.1:"), "{listed}");
    for (kind, id) in [("EC", &bed.key("p256").private_id), ("RSA", &bed.key("rsa2048").private_id)] {
        for class in ["Public Key Object", "Private Key Object"] {
            let id_hex = hex(id.as_bytes());
            let object = listed.split(class).skip(1).find(|o| o.contains(&id_hex));
            let object = object.unwrap_or_else(|| panic!("no {class} with ID {id}:\n{listed}"));
            assert!(object.trim_start_matches(';').trim_start().starts_with(kind), "{class} {id}:\n{object}");
        }
    }
    let private = listed.split("Private Key Object").skip(1);
    assert!(private.clone().count() == 2 && private.clone().all(|o| o.contains("never extractable")), "{listed}");

    // ---- its self-test: every RSA signature mechanism it knows -----------------------------
    // --allow-sw: the mechanisms are not flagged CKF_HW, the signing happens in the KMS.
    let out = bed.pkcs11_tool(&["--test", "--allow-sw"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for line in ["RSA-PKCS: OK", "SHA1-RSA-PKCS: OK", "SHA256-RSA-PKCS: OK"] {
        assert!(said.contains(line), "pkcs11-tool --test: no {line:?}:\n{said}");
    }
    for error in said.lines().filter(|l| l.contains("ERR:")) {
        assert!(
            KNOWN_SELF_TEST_ERRORS.iter().any(|known| error.contains(known)),
            "pkcs11-tool --test: {error}\n{said}"
        );
    }
    println!("pkcs11-tool --test --allow-sw:\n{said}");

    // ---- signing --------------------------------------------------------------------------
    let digest = sha2::Sha256::digest(b"signed by pkcs11-tool");
    let (input, output) = (bed.dir.join("digest.bin"), bed.dir.join("signature.bin"));
    std::fs::write(&input, digest).unwrap();
    let sign = |id: &str, mechanism: &str, input: &Path| {
        let args = ["--sign", "--id", &hex(id.as_bytes()), "--mechanism", mechanism];
        let io = ["--input-file", input.to_str().unwrap(), "--output-file", output.to_str().unwrap()];
        let out = bed.pkcs11_tool(&[&args[..], &io[..]].concat());
        assert!(out.status.success(), "pkcs11-tool --sign {mechanism}: {}", text(&out));
        std::fs::read(&output).unwrap()
    };
    bed.verify_ecdsa(&digest, &sign(&bed.key("p256").private_id, "ECDSA", &input));
    let message = bed.dir.join("message.txt");
    std::fs::write(&message, b"signed by pkcs11-tool with RSA").unwrap();
    bed.verify_rsa_sha256(
        b"signed by pkcs11-tool with RSA",
        &sign(&bed.key("rsa2048").private_id, "SHA256-RSA-PKCS", &message),
    );

    // ---- its fork test: C_Initialize again in a forked child --------------------------------
    let out = bed.pkcs11_tool(&["--test-fork"]);
    assert!(out.status.success(), "pkcs11-tool --test-fork: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Calling C_Initialize in forked child process"),
        "{}",
        text(&out)
    );
}

/// What a Python user writes: list the token's objects, sign with each private key.
const PYTHON: &str = r#"
import hashlib, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

lib = pkcs11.lib(sys.argv[1])
token = lib.get_token()
print("token", token.label)
with token.open() as session:
    for obj in session.get_objects():
        print("object", obj.object_class.name, obj.key_type.name, obj[Attribute.ID].decode())
    for key in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
        if key.key_type == KeyType.EC:
            signature = key.sign(hashlib.sha256(b"signed by python-pkcs11").digest(), mechanism=Mechanism.ECDSA)
        else:
            signature = key.sign(b"signed by python-pkcs11", mechanism=Mechanism.SHA256_RSA_PKCS)
        print("signature", key.key_type.name, signature.hex())
"#;

/// The venv scripts/install-reliability-tools.sh makes.
fn python() -> PathBuf {
    let cache = std::env::var_os("COSMIAN_PKCS11_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cosmian-pkcs11"));
    let python = cache.join("python-venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/install-test-bed.sh", python.display());
    python
}

#[test]
fn python_pkcs11_enumerates_and_signs() {
    let bed = bed();
    let script = bed.dir.join("client.py");
    std::fs::write(&script, PYTHON).unwrap();
    let out = bed.command(python()).arg(&script).arg(provider_lib()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.lines().any(|l| l.starts_with("token Cosmian KMS 127.0.0.1:")), "{said}");
    let mut objects: Vec<&str> = said.lines().filter(|l| l.starts_with("object ")).collect();
    objects.sort();
    let mut expected = vec![
        format!("object PRIVATE_KEY EC {}", bed.key("p256").private_id),
        format!("object PRIVATE_KEY RSA {}", bed.key("rsa2048").private_id),
        format!("object PUBLIC_KEY EC {}", bed.key("p256").private_id),
        format!("object PUBLIC_KEY RSA {}", bed.key("rsa2048").private_id),
    ];
    expected.sort();
    assert_eq!(objects, expected, "{said}");
    let signature = |kind: &str| {
        let line = said.lines().find_map(|l| l.strip_prefix(&format!("signature {kind} ")));
        unhex(line.unwrap_or_else(|| panic!("no {kind} signature:\n{said}")))
    };
    bed.verify_ecdsa(&sha2::Sha256::digest(b"signed by python-pkcs11"), &signature("EC"));
    bed.verify_rsa_sha256(b"signed by python-pkcs11", &signature("RSA"));
}
