//! Ed25519 from the KMS is a signature OpenSSH accepts. Debian's OpenSSH 9.2 cannot load
//! Ed25519 keys from a provider (10.1+ can), but 9.2 VERIFIES Ed25519 signatures: the test
//! signs an SSHSIG with the provider's CKM_EDDSA (through dlopen, as any client) and checks it
//! with the real `ssh-keygen -Y verify`. The test runs in a child process of its own, with the
//! provider's environment.

use base64::Engine;
use cosmian_pkcs11_testbed::{Ckms, KeyKind, KmsServer, body_in_child, provider_lib, write_provider_config};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use sha2::Digest;

/// An SSH wire-format string: u32 length, then the bytes.
fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    [(bytes.len() as u32).to_be_bytes().as_slice(), bytes].concat()
}

fn armor(blob: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let lines: Vec<&str> = b64.as_bytes().chunks(70).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n", lines.join("\n"))
}

#[test]
fn an_sshsig_made_with_ckm_eddsa_verifies_with_ssh_keygen() {
    let Some(dir) = body_in_child(|dir| {
        [("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")), ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs"))]
    }) else {
        return;
    };
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("ed25519"), &["ssh-auth"]);
    write_provider_config(&dir, &kms.url(), "");

    let pkcs11 = Pkcs11::new(provider_lib()).unwrap();
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_ro_session(slot).unwrap();

    // Find the pair as OpenSSH 10.1+ does: the public key, then the private key by CKA_ID.
    let public = session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).unwrap();
    assert_eq!(public.len(), 1);
    let attrs = session
        .get_attributes(
            public[0],
            &[AttributeType::KeyType, AttributeType::Id, AttributeType::EcParams, AttributeType::EcPoint],
        )
        .unwrap();
    let [Attribute::KeyType(key_type), Attribute::Id(id), Attribute::EcParams(params), Attribute::EcPoint(point)] =
        &attrs[..]
    else {
        panic!("{attrs:?}")
    };
    assert_eq!(*key_type, KeyType::EC_EDWARDS);
    assert_eq!(id, pair.private_id.as_bytes());
    assert_eq!(params, &[0x06, 0x03, 0x2B, 0x65, 0x70], "CKA_EC_PARAMS: the Ed25519 OID");
    assert_eq!(point[..2], [0x04, 0x20], "CKA_EC_POINT: OCTET STRING of 32 bytes");
    let raw_key = &point[2..];
    let private = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.clone()), Attribute::Sign(true)])
        .unwrap();
    assert_eq!(private.len(), 1);

    // SSHSIG (PROTOCOL.sshsig): sign the wrapped hash of the message with CKM_EDDSA.
    let message = b"signed by a key that never left the KMS\n";
    let namespace = b"file";
    let signed = [
        b"SSHSIG".as_slice(),
        &ssh_string(namespace),
        &ssh_string(b""),
        &ssh_string(b"sha512"),
        &ssh_string(&sha2::Sha512::digest(message)),
    ]
    .concat();
    let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let signature = session.sign(&eddsa, private[0], &signed).unwrap();
    assert_eq!(signature.len(), 64);
    let public_blob = [ssh_string(b"ssh-ed25519"), ssh_string(raw_key)].concat();
    let signature_blob = [ssh_string(b"ssh-ed25519"), ssh_string(&signature)].concat();
    let sshsig = [
        b"SSHSIG".as_slice(),
        &1u32.to_be_bytes(),
        &ssh_string(&public_blob),
        &ssh_string(namespace),
        &ssh_string(b""),
        &ssh_string(b"sha512"),
        &ssh_string(&signature_blob),
    ]
    .concat();

    let b64_key = base64::engine::general_purpose::STANDARD.encode(&public_blob);
    std::fs::write(dir.join("allowed_signers"), format!("tester@example ssh-ed25519 {b64_key}\n")).unwrap();
    std::fs::write(dir.join("msg.sig"), armor(&sshsig)).unwrap();
    let verify = |data: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(dir.join("allowed_signers"))
            .args(["-I", "tester@example", "-n", "file", "-s"])
            .arg(dir.join("msg.sig"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh-keygen");
        child.stdin.take().unwrap().write_all(data).unwrap();
        child.wait_with_output().unwrap()
    };
    let good = verify(message);
    let said = String::from_utf8_lossy(&good.stdout).to_string() + &String::from_utf8_lossy(&good.stderr);
    assert!(good.status.success(), "ssh-keygen -Y verify refused the signature: {said}");
    assert!(said.contains("Good \"file\" signature for tester@example with ED25519 key"), "{said}");
    // And the check is real: another message fails.
    assert!(!verify(b"another message\n").status.success());
}
