//! The public-key disk cache trusts nothing the KMS did not confirm, with the real KMS: an
//! entry changed to name another private key, or planted for a key the tag does not select,
//! neither redirects a signature nor offers a key; an entry whose key the KMS refuses to sign
//! with is dropped. The provider runs as OpenSSH (`ssh-keygen -D`) and in this process
//! (`cryptoki`), with a cache folder of the test's own.

use std::path::{Path, PathBuf};

use cosmian_pkcs11_testbed::{
    create_p256_key_pairs, cryptoki_session, output_text, provider_lib, settled_audit_events, ssh_keygen_d,
    write_provider_config, Ckms, KmsServer,
};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;

/// The one cache file in `cache`'s folder, as JSON.
fn cache_file(cache: &Path) -> PathBuf {
    let folder = cache.join("cosmian-pkcs11/keys");
    let files: Vec<PathBuf> = std::fs::read_dir(&folder).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn entries(file: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    json["keys"].as_array().unwrap().clone()
}

#[test]
fn a_changed_or_planted_cache_entry_neither_redirects_a_signature_nor_offers_a_key() {
    let kms = KmsServer::start();
    let [used, revoked] = <[_; 2]>::try_from(create_p256_key_pairs(&kms, 2, &["trusted"])).unwrap();
    // A key of the same user the tag does not select (say, a CA key).
    let other = create_p256_key_pairs(&kms, 1, &["not-for-ssh"]).remove(0);
    let dir = kms.dir().join("client");
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_provider_config(&dir, &kms.url(), "");
    let cache = dir.join("cache");
    let env = [
        ("COSMIAN_KMS_CLI_CONF", config.display().to_string()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", "trusted".to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".to_owned()),
        ("XDG_CACHE_HOME", cache.display().to_string()),
    ];
    let keygen_d = || {
        let out = ssh_keygen_d(&provider_lib()).envs(env.iter().cloned()).output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let offered = keygen_d();
    assert_eq!(offered.len(), 2);

    // Change the entry of `used` to sign with `other`, and plant entries for `other` and for a
    // key the KMS does not hold.
    let file = cache_file(&cache);
    let mut keys = entries(&file);
    let original = keys.iter().find(|e| e["public_id"] == used.public_id.as_str()).unwrap().clone();
    for entry in keys.iter_mut().filter(|e| e["public_id"] == used.public_id.as_str()) {
        entry["private_id"] = other.private_id.clone().into();
    }
    for (public_id, private_id) in [(other.public_id.as_str(), other.private_id.as_str()), ("planted_pk", "planted")] {
        let mut planted = original.clone();
        planted["public_id"] = public_id.into();
        planted["private_id"] = private_id.into();
        keys.push(planted);
    }
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    json["keys"] = keys.into();
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();

    assert_eq!(keygen_d(), offered, "the same two keys, neither the planted nor the redirected one");

    // In this process: the private key of `used` signs as `used`, and `other` is not offered.
    let (_pkcs11, session) = cryptoki_session(&env);
    let private_key = |id: &str| {
        let found = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.as_bytes().to_vec())])
            .unwrap();
        found.first().copied()
    };
    assert_eq!(session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).unwrap().len(), 2);
    assert!(private_key(&other.private_id).is_none(), "the untagged key is not offered");
    let digest = [7u8; 32];
    let signature = session.sign(&Mechanism::Ecdsa, private_key(&used.private_id).expect("the key"), &digest).unwrap();
    let public =
        p256::ecdsa::VerifyingKey::from_public_key_pem(&Ckms::new(&kms).export_public_pkcs8_pem(&used.public_id))
            .unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
    public.verify_prehash(&digest, &signature).expect("signed by the key offered, not by the one the entry named");
    let signed: Vec<_> =
        settled_audit_events(&kms).into_iter().filter(|e| e.operation == "Sign").map(|e| e.object_uid).collect();
    assert_eq!(signed, [Some(used.private_id.clone())]);

    // A key revoked after the listing: the KMS refuses to sign, its entry is dropped.
    let handle = private_key(&revoked.private_id).expect("listed");
    assert!(entries(&file).iter().any(|e| e["private_id"] == revoked.private_id.as_str()));
    let out = Ckms::new(&kms).run(&["ec", "keys", "revoke", "-k", &revoked.private_id, "test"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(session.sign(&Mechanism::Ecdsa, handle, &digest).is_err());
    let kept: Vec<_> = entries(&file).iter().map(|e| e["private_id"].as_str().unwrap().to_owned()).collect();
    assert!(!kept.contains(&revoked.private_id), "the refused key's entry is dropped: {kept:?}");
    assert!(kept.contains(&used.private_id), "{kept:?}");
}
