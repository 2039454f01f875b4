//! The signatures: P1, the latency of `C_SignInit`+`C_Sign` per key type against the same KMIP
//! Sign from the raw client, calls interleaved; P5, signatures per second with 1 and 4 threads
//! against the raw client at the same concurrency. [`KeyType::sign_request`] gives both sides
//! the same request.

use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::KeyKind;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{Bench, KEY_TYPES, KeyType, SIGNING_TAG, Targets, failed, median, ms};
use cosmian_pkcs11::internals::Ttlv;

/// P5: how long each throughput measurement lasts, and how many of them per side.
const THROUGHPUT_WINDOW: Duration = Duration::from_millis(1500);
const THROUGHPUT_ROUNDS: usize = 8;

/// SHA-512 DigestInfo prefix: OpenSSH signs `rsa-sha2-512` by default.
const SHA512_DIGEST_INFO: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

impl KeyType {
    /// What OpenSSH hands the provider for this key (mechanism, input), and the KMIP Sign body
    /// the provider sends for it, as `src/kmip/operations.rs` builds it (docs/kms-wire.md).
    pub(super) fn sign_request(&self, private_id: &str) -> (Mechanism<'static>, Vec<u8>, String) {
        let parameters = |items: &[(&str, &str)]| {
            Ttlv::structure("CryptographicParameters", items.iter().map(|(t, v)| Ttlv::enumeration(t, v)).collect())
        };
        let (mechanism, input, items) = match self.kind {
            KeyKind::Ec("ed25519") => {
                // About what ssh signs: the session id and the userauth request.
                let message = vec![0x5A; 160];
                let items = vec![Ttlv::bytes("Data", &message)];
                (Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), message, items)
            }
            KeyKind::Ec(curve) => {
                let (hash_len, algorithm) =
                    if curve == "nist-p384" { (48, "ECDSAWithSHA384") } else { (32, "ECDSAWithSHA256") };
                let hash = vec![0x5A; hash_len];
                let items =
                    vec![parameters(&[("DigitalSignatureAlgorithm", algorithm)]), Ttlv::bytes("DigestedData", &hash)];
                (Mechanism::Ecdsa, hash, items)
            }
            KeyKind::Rsa(_) => {
                let hash = [0x5A; 64];
                let items = vec![
                    parameters(&[
                        ("PaddingMethod", "PKCS1v15"),
                        ("HashingAlgorithm", "SHA512"),
                        ("DigitalSignatureAlgorithm", "SHA512WithRSAEncryption"),
                        ("CryptographicAlgorithm", "RSA"),
                    ]),
                    Ttlv::bytes("DigestedData", &hash),
                ];
                (Mechanism::RsaPkcs, [&SHA512_DIGEST_INFO[..], &hash].concat(), items)
            }
        };
        let body =
            Ttlv::structure("Sign", std::iter::once(Ttlv::text("UniqueIdentifier", private_id)).chain(items).collect());
        (mechanism, input, body.to_json())
    }
}

impl Bench {
    pub(super) fn p1_sign_latency(&self, targets: &mut Targets) -> Result<(), String> {
        println!("\nP1  signature latency: C_SignInit+C_Sign through the .so vs the same KMIP Sign from a raw");
        println!("    client on a kept-alive connection; calls interleaved, median (ms)");
        println!("    {:<10} {:>7} {:>10} {:>10} {:>7}   target", "key", "calls", "provider", "raw KMIP", "ratio");
        let slot = self.open(&self.config, SIGNING_TAG)?;
        let session = self.session(slot)?;
        for (key_type, pair) in KEY_TYPES.iter().zip(&self.signing_keys) {
            let key = private_key(&session, &pair.private_id)?;
            let (mechanism, input, body) = key_type.sign_request(&pair.private_id);
            let provider_sign = || session.sign(&mechanism, key, &input).map(drop).map_err(failed("C_Sign"));
            for _ in 0..5 {
                provider_sign()?;
                self.raw.sign(&body)?;
            }
            let (mut provider, mut raw) = (Vec::new(), Vec::new());
            for i in 0..key_type.samples {
                for side in [i % 2, 1 - i % 2] {
                    let started = Instant::now();
                    if side == 0 {
                        provider_sign()?;
                        provider.push(ms(started.elapsed()));
                    } else {
                        self.raw.sign(&body)?;
                        raw.push(ms(started.elapsed()));
                    }
                }
            }
            let (provider, raw) = (median(&mut provider), median(&mut raw));
            let ratio = provider / raw;
            println!(
                "    {:<10} {:>7} {provider:>10.3} {raw:>10.3} {ratio:>7.2}   <= 1.10",
                key_type.name, key_type.samples
            );
            targets.push((
                format!("P1 C_Sign / raw Sign, {}", key_type.name),
                format!("{ratio:.2} (<= 1.10)"),
                ratio <= 1.10,
            ));
        }
        drop(session);
        self.close()
    }

    pub(super) fn p5_throughput(&self, targets: &mut Targets) -> Result<(), String> {
        println!(
            "\nP5  signatures per second, P-256, {THROUGHPUT_ROUNDS} windows of {:.1} s per side, \
             alternated, median",
            THROUGHPUT_WINDOW.as_secs_f64()
        );
        println!("    {:>8} {:>10} {:>10} {:>7}   target", "threads", "provider", "raw KMIP", "ratio");
        let slot = self.open(&self.config, SIGNING_TAG)?;
        let pair = &self.signing_keys[0];
        let (_, _, body) = KEY_TYPES[0].sign_request(&pair.private_id);
        for threads in [1, 4] {
            let (mut provider, mut raw) = (Vec::new(), Vec::new());
            for round in 0..THROUGHPUT_ROUNDS {
                for side in [round % 2, 1 - round % 2] {
                    if side == 1 {
                        raw.push(self.rate(threads, || Ok(|| self.raw.sign(&body)))?);
                        continue;
                    }
                    provider.push(self.rate(threads, || {
                        // Per thread: a session, and the mechanism (raw pointers, not Sync).
                        let session = self.session(slot)?;
                        let key = private_key(&session, &pair.private_id)?;
                        let (mechanism, input, _) = KEY_TYPES[0].sign_request(&pair.private_id);
                        Ok(move || session.sign(&mechanism, key, &input).map(drop).map_err(failed("C_Sign")))
                    })?);
                }
            }
            let (provider, raw) = (median(&mut provider), median(&mut raw));
            let ratio = provider / raw;
            println!("    {threads:>8} {provider:>10.0} {raw:>10.0} {ratio:>7.2}   >= 0.9");
            targets.push((
                format!("P5 signatures/s provider / raw, {threads} thread(s)"),
                format!("{ratio:.2} (>= 0.9)"),
                ratio >= 0.9,
            ));
        }
        self.close()
    }

    /// Signatures per second of `threads` threads, each signing with what `make_signer` gives
    /// it (made on the thread) for [`THROUGHPUT_WINDOW`].
    fn rate<F, S>(&self, threads: usize, make_signer: F) -> Result<f64, String>
    where
        F: Fn() -> Result<S, String> + Sync,
        S: FnMut() -> Result<(), String>,
    {
        let started = Instant::now();
        let counts: Result<Vec<usize>, String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut sign = make_signer()?;
                        let mut count = 0;
                        while started.elapsed() < THROUGHPUT_WINDOW {
                            sign()?;
                            count += 1;
                        }
                        Ok(count)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().map_err(|_| "a signing thread panicked".to_owned())?).collect()
        });
        Ok(counts?.iter().sum::<usize>() as f64 / started.elapsed().as_secs_f64())
    }
}

/// The private key whose `CKA_ID` is `id`.
fn private_key(session: &Session, id: &str) -> Result<ObjectHandle, String> {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(failed("C_FindObjects"))?;
    found.first().copied().ok_or_else(|| format!("the provider does not offer {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"tag":"Sign","value":[UniqueIdentifier, ITEMS]}` as the benchmark wrote it before it
    /// used the provider's encoder.
    fn sign_body(id: &str, items: &str) -> String {
        format!(r#"{{"tag":"Sign","value":[{{"tag":"UniqueIdentifier","type":"TextString","value":"{id}"}},{items}]}}"#)
    }

    fn parameters(items: &[(&str, &str)]) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|(tag, value)| format!(r#"{{"tag":"{tag}","type":"Enumeration","value":"{value}"}}"#))
            .collect();
        format!(r#"{{"tag":"CryptographicParameters","value":[{}]}}"#, items.join(","))
    }

    fn digested(len: usize) -> String {
        format!(r#"{{"tag":"DigestedData","type":"ByteString","value":"{}"}}"#, "5A".repeat(len))
    }

    #[test]
    fn ecdsa_sign_request() {
        let (mechanism, input, body) = KEY_TYPES[1].sign_request("k_sk");
        assert!(matches!(mechanism, Mechanism::Ecdsa));
        assert_eq!(input, [0x5A; 48]);
        let items = format!("{},{}", parameters(&[("DigitalSignatureAlgorithm", "ECDSAWithSHA384")]), digested(48));
        assert_eq!(body, sign_body("k_sk", &items));
    }

    #[test]
    fn rsa_sign_request() {
        let (mechanism, input, body) = KEY_TYPES[2].sign_request("k_sk");
        assert!(matches!(mechanism, Mechanism::RsaPkcs));
        assert_eq!(input, [&SHA512_DIGEST_INFO[..], &[0x5A; 64]].concat());
        let parameters = parameters(&[
            ("PaddingMethod", "PKCS1v15"),
            ("HashingAlgorithm", "SHA512"),
            ("DigitalSignatureAlgorithm", "SHA512WithRSAEncryption"),
            ("CryptographicAlgorithm", "RSA"),
        ]);
        assert_eq!(body, sign_body("k_sk", &format!("{parameters},{}", digested(64))));
    }

    #[test]
    fn eddsa_sign_request() {
        let (_, input, body) = KEY_TYPES[4].sign_request("k_sk");
        assert_eq!(input, [0x5A; 160]);
        let data = format!(r#"{{"tag":"Data","type":"ByteString","value":"{}"}}"#, "5A".repeat(160));
        assert_eq!(body, sign_body("k_sk", &data));
    }
}
