//! The public-key disk cache trusts nothing the KMS did not confirm, with the real KMS: an
//! entry changed to name another private key, or planted for a key the tag does not select,
//! neither redirects a signature nor offers a key the KMS does not hold (a listing answered
//! from the cache shows only public keys the key list names, and the KMS's confirmation
//! corrects the entries); an entry whose key the KMS refuses to sign with is dropped. The provider runs as OpenSSH (`ssh-keygen -D`, `ssh -I`) and in a
//! test's own process (`cryptoki`, the test in a child process), with a cache folder of the
//! test's own.
//!
//! A process's first listing is answered from the disk cache's key list while the KMS confirms
//! it: a key removed from the KMS after it was cached is then listed, but never signed with;
//! its signature waits for the confirmation, is refused, the key is dropped from the cache, and
//! ssh logs in with its next key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cosmian_pkcs11_testbed::{
    Ckms, DelayRelay, KmsServer, Sshd, body_in_child, create_p256_key_pairs, cryptoki_session, output_text,
    provider_lib, settled_audit_events, ssh_command, ssh_keygen_d, write_provider_config,
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

/// The provider's environment for the configuration, log and disk cache (`cache`) in `dir`.
fn provider_env(dir: &Path, tag: &str) -> [(&'static str, String); 5] {
    [
        ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml").display().to_string()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", tag.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".to_owned()),
        ("XDG_CACHE_HOME", dir.join("cache").display().to_string()),
    ]
}

fn entries(file: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    json["keys"].as_array().unwrap().clone()
}

#[test]
fn a_changed_or_planted_cache_entry_neither_redirects_a_signature_nor_offers_a_key() {
    let Some(dir) = body_in_child(|dir| provider_env(dir, "trusted")) else {
        return;
    };
    let kms = KmsServer::start();
    let [used, revoked] = <[_; 2]>::try_from(create_p256_key_pairs(&kms, 2, &["trusted"])).unwrap();
    // A key of the same user the tag does not select (say, a CA key).
    let other = create_p256_key_pairs(&kms, 1, &["not-for-ssh"]).remove(0);
    // The KMS 300 ms away: a listing answered from the disk cache is confirmed a second later.
    let relay = DelayRelay::start(kms.port(), Duration::from_millis(300));
    write_provider_config(&dir, &format!("http://127.0.0.1:{}", relay.port()), "");
    let cache = dir.join("cache");
    let env = provider_env(&dir, "trusted");
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
    let tamper = || {
        let mut keys = entries(&file);
        let original = keys.iter().find(|e| e["public_id"] == used.public_id.as_str()).unwrap().clone();
        for entry in keys.iter_mut().filter(|e| e["public_id"] == used.public_id.as_str()) {
            entry["private_id"] = other.private_id.clone().into();
        }
        for (public_id, private_id) in
            [(other.public_id.as_str(), other.private_id.as_str()), ("planted_pk", "planted")]
        {
            let mut planted = original.clone();
            planted["public_id"] = public_id.into();
            planted["private_id"] = private_id.into();
            keys.push(planted);
        }
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        json["keys"] = keys.into();
        std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    };
    tamper();

    // The next listing is answered from the disk cache: only the public keys its key list
    // names (the redirected entry shows `used`'s key under `other`'s id; the planted entries,
    // which the list does not name, are not offered). The KMS's confirmation then exports
    // `used` again: the listing after it is the KMS's.
    let material = |lines: &[String]| {
        let mut keys: Vec<String> = lines.iter().map(|l| l.split_whitespace().nth(1).unwrap().to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(material(&keygen_d()), material(&offered), "the KMS's two public keys, and no other");
    assert_eq!(keygen_d(), offered, "the same two keys, neither the planted nor the redirected one");
    let corrected = entries(&file).into_iter().find(|e| e["public_id"] == used.public_id.as_str()).unwrap();
    assert_eq!(corrected["private_id"], used.private_id.as_str(), "the redirected entry is exported again");

    // In this process, the entry changed again: the redirected object is listed from the disk
    // cache but never signs (its signature waits for the confirmation, which does not hold it);
    // once the KMS answered, `other` is not offered, and the private key of `used` signs as
    // `used`.
    tamper();
    let (_pkcs11, session) = cryptoki_session();
    let private_key = |id: &str| {
        let found = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.as_bytes().to_vec())])
            .unwrap();
        found.first().copied()
    };
    assert_eq!(session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).unwrap().len(), 2);
    let redirected = private_key(&other.private_id).expect("listed from the disk cache");
    let digest = [7u8; 32];
    let refused = session.sign(&Mechanism::Ecdsa, redirected, &digest).unwrap_err();
    assert!(
        matches!(refused, cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::FunctionFailed, _)),
        "{refused}"
    );
    assert!(private_key(&other.private_id).is_none(), "the untagged key is not offered");
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

/// Two keys listed (so cached, with the key list); the first, the one ssh offers first, is
/// revoked and destroyed; the next `ssh -I` is answered from the disk cache, with the KMS 150 ms
/// away (so its confirmation is still in flight when ssh asks for the first signature): the
/// removed key is offered, its signature waits for the confirmation and is refused without a
/// Sign reaching the KMS, and ssh logs in with the other key. The removed key's entry is gone
/// from the cache, and the next listing offers the other key alone.
#[test]
fn a_key_removed_from_the_kms_after_it_was_cached_is_listed_never_signed_with_and_dropped() {
    let kms = KmsServer::start();
    let pairs = create_p256_key_pairs(&kms, 2, &["removed-later"]);
    let relay = DelayRelay::start(kms.port(), Duration::from_millis(150));
    let dir = kms.dir().join("removed");
    std::fs::create_dir_all(&dir).unwrap();
    write_provider_config(&dir, &format!("http://127.0.0.1:{}", relay.port()), "");
    let cache = dir.join("cache");
    let env = provider_env(&dir, "removed-later");
    let out = ssh_keygen_d(&provider_lib()).envs(env.iter().cloned()).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let authorized = String::from_utf8_lossy(&out.stdout).into_owned();
    let label = |line: &str| line.split_whitespace().last().unwrap_or_default().to_owned();
    let listed: Vec<String> = authorized.lines().map(label).collect();
    assert_eq!(listed.len(), 2, "{authorized}");
    let removed = pairs.iter().find(|p| p.private_id == listed[0]).expect("the first key listed").clone();
    let kept = pairs.iter().find(|p| p.private_id == listed[1]).expect("the second key listed").clone();

    let ckms = Ckms::new(&kms);
    for args in [
        &["ec", "keys", "revoke", "-k", &removed.private_id, "test"][..],
        &["ec", "keys", "destroy", "-k", &removed.private_id, "--remove"],
    ] {
        let out = ckms.run(args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
    let log_mark = std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap().len();

    let sshd = Sshd::start(&authorized, "");
    let ssh =
        env.iter().fold(ssh_command(&sshd).opt("-o").opt("LogLevel=DEBUG").provider(&provider_lib()), |ssh, (k, v)| {
            ssh.env(k, v)
        });
    let out = ssh.run("echo logged-in");
    let log = std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap()[log_mark..].to_owned();
    assert!(out.status.success(), "{}\nprovider:\n{log}\nsshd:\n{}", output_text(&out), sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logged-in");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let offered = |id: &str| stderr.lines().any(|l| l.contains("Offering public key") && l.contains(id));
    assert!(offered(&removed.private_id), "listed from the disk cache, so offered:\n{stderr}");
    assert!(offered(&kept.private_id), "{stderr}");
    assert!(log.contains("key list answered from the disk cache"), "{log}");
    assert!(log.contains("signature: the key list confirmed"), "the signature waited for the confirmation:\n{log}");
    let refusal = format!("key {} is not among the keys the KMS lists now: not signed", removed.private_id);
    assert!(log.contains(&refusal), "{log}");

    let signed: Vec<_> =
        settled_audit_events(&kms).into_iter().filter(|e| e.operation == "Sign").map(|e| e.object_uid).collect();
    assert_eq!(signed, [Some(kept.private_id.clone())], "never a Sign with the removed key");
    let file = cache_file(&cache);
    let kept_entries: Vec<_> = entries(&file).iter().map(|e| e["private_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kept_entries, std::slice::from_ref(&kept.private_id), "the removed key's entry is dropped");
    let out = ssh_keygen_d(&provider_lib()).envs(env.iter().cloned()).output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(label).collect();
    assert_eq!(lines, std::slice::from_ref(&kept.private_id));
}
