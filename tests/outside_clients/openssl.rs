//! OpenSSL 3 with libp11's engine (Debian's libengine-pkcs11-openssl), configured the way its
//! users do, in an OpenSSL configuration file: `openssl dgst -engine pkcs11 -keyform engine
//! -sign pkcs11:...` signs with each key type the engine supports (ECDSA P-256/384/521 and
//! RSA; libp11 0.4.12 has no EdDSA), `openssl pkey` reads the public key through the engine,
//! and OpenSSL verifies each signature with the public key ckms exported.

use cosmian_pkcs11_testbed::{KeyKind, provider_lib};

use crate::{Bed, Key, text};

const KEYS: [(&str, KeyKind); 4] = [
    ("p256", KeyKind::Ec("nist-p256")),
    ("p384", KeyKind::Ec("nist-p384")),
    ("p521", KeyKind::Ec("nist-p521")),
    ("rsa2048", KeyKind::Rsa(2048)),
];

/// The OpenSSL configuration that loads libp11's engine with the provider as its module.
fn openssl_conf(bed: &Bed) -> std::path::PathBuf {
    let out = std::process::Command::new("openssl").args(["version", "-e"]).output().expect("openssl");
    let said = String::from_utf8_lossy(&out.stdout);
    let engines = said.split('"').nth(1).unwrap_or_else(|| panic!("no ENGINESDIR in {said:?}"));
    let engine = std::path::Path::new(engines).join("pkcs11.so");
    assert!(
        engine.is_file(),
        "{} is missing: install libengine-pkcs11-openssl (scripts/install-test-bed.sh)",
        engine.display()
    );
    let conf = bed.dir.join("openssl.cnf");
    let text = format!(
        "openssl_conf = openssl_init\n\n[openssl_init]\nengines = engine_section\n\n[engine_section]\n\
         pkcs11 = pkcs11_section\n\n[pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\ninit = 0\n",
        engine.display(),
        provider_lib().display()
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

impl Bed {
    fn openssl(&self, conf: &std::path::Path, args: &[&str]) -> String {
        let mut command = self.command("openssl");
        command.env("OPENSSL_CONF", conf).args(args);
        let out = self.run(&mut command, "openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn engine_signs(&self, conf: &std::path::Path, key: &Key) {
        let message = self.dir.join(format!("{}.message", key.name));
        let signature = self.dir.join(format!("{}.openssl.sig", key.name));
        std::fs::write(&message, format!("signed through libp11's engine with {}", key.name)).unwrap();
        let uri = format!("pkcs11:id={};type=private", key.uri_id());
        let (message_arg, signature_arg) = (message.to_str().unwrap(), signature.to_str().unwrap());
        let sign = ["dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", &uri];
        self.openssl(conf, &[&sign[..], &["-out", signature_arg, message_arg]].concat());
        assert!(
            self.openssl_verifies(key, &message, &signature),
            "{}: OpenSSL does not verify the signature",
            key.name
        );
        // Checked against another message, the same signature fails: the check can fail.
        std::fs::write(&message, "another message").unwrap();
        assert!(!self.openssl_verifies(key, &message, &signature), "{}: a signature that verifies anything", key.name);
    }
}

#[test]
fn openssl_engine_signs_with_every_key_type_it_supports() {
    let bed = Bed::new(&KEYS);
    let conf = openssl_conf(&bed);
    for key in &bed.keys {
        // The public key, read through the engine, is the one ckms exported.
        let uri = format!("pkcs11:id={};type=public", key.uri_id());
        let pem =
            bed.openssl(&conf, &["pkey", "-engine", "pkcs11", "-inform", "engine", "-pubin", "-in", &uri, "-pubout"]);
        let exported = std::fs::read_to_string(&key.public_pem).unwrap();
        assert_eq!(pem.trim(), exported.trim(), "{}: the engine's public key", key.name);
        bed.engine_signs(&conf, key);
        println!("openssl dgst -engine pkcs11 -sign: {} verified", key.name);
    }
}
