//! NSS (Debian's libnss3-tools), the way its users add a module to a database: `modutil -add`,
//! `modutil -list` shows the token, `certutil -K -h all` lists the KMS's private keys, and
//! `certutil -R` signs a certificate request with each key type NSS 3.87 supports (ECDSA
//! P-256/384/521 and RSA), which OpenSSL then verifies; the request carries the public key
//! NSS read from the token, compared with the one ckms exported.

use std::path::Path;
use std::process::Command;

use cosmian_pkcs11_testbed::{KeyKind, provider_lib};

use crate::{Bed, text};

const KEYS: [(&str, KeyKind); 4] = [
    ("p256", KeyKind::Ec("nist-p256")),
    ("p384", KeyKind::Ec("nist-p384")),
    ("p521", KeyKind::Ec("nist-p521")),
    ("rsa2048", KeyKind::Rsa(2048)),
];

impl Bed {
    fn nss(&self, program: &str, args: &[&str]) -> String {
        let mut command = self.command(program);
        command.args(args);
        let out = self.run(&mut command, "install libnss3-tools with scripts/install-test-bed.sh");
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn openssl(args: &[&str], file: &Path) -> String {
    let out = Command::new("openssl").args(args).arg(file).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn nss_adds_the_module_lists_keys_and_signs() {
    let bed = Bed::new(&KEYS);
    let db = bed.dir.join("nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let password = bed.dir.join("nss-password");
    std::fs::write(&password, "\n").unwrap();
    let password = password.to_str().unwrap();
    bed.nss("certutil", &["-N", "-d", &db_arg, "--empty-password"]);
    let lib = provider_lib();
    bed.nss("modutil", &["-dbdir", &db_arg, "-add", "Cosmian KMS", "-libfile", lib.to_str().unwrap(), "-force"]);

    let token = format!("Cosmian KMS {}", bed.kms_authority());
    let modules = bed.nss("modutil", &["-dbdir", &db_arg, "-list", "Cosmian KMS"]);
    assert!(modules.contains(&token), "modutil -list: no token {token:?}:\n{modules}");

    let keys = bed.nss("certutil", &["-K", "-d", &db_arg, "-h", "all", "-f", password]);
    for key in &bed.keys {
        // certutil prints an id of printable bytes as text (the KMS's ids are UUIDs).
        assert!(keys.contains(&format!("\"{}\"", key.private_id)), "certutil -K: no key {}:\n{keys}", key.private_id);
    }

    for key in &bed.keys {
        let request = bed.dir.join(format!("{}.csr", key.name));
        let subject = format!("CN=signed by NSS with {}", key.name);
        let args =
            ["-R", "-d", &db_arg, "-h", &token, "-k", &key.hex_id(), "-s", &subject, "-Z", "SHA256", "-f", password];
        bed.nss("certutil", &[&args[..], &["-a", "-o", request.to_str().unwrap()]].concat());
        let verified = openssl(&["req", "-verify", "-noout", "-in"], &request);
        assert!(verified.contains("verify OK"), "{}: openssl req -verify: {verified}", key.name);
        let public = openssl(&["req", "-pubkey", "-noout", "-in"], &request);
        let exported = std::fs::read_to_string(&key.public_pem).unwrap();
        assert_eq!(public.trim(), exported.trim(), "{}: the request's public key", key.name);
        println!("certutil -R: {} signed, verified by OpenSSL", key.name);
    }
}
