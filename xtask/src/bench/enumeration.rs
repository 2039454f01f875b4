//! P3, the enumeration: `C_Initialize` to the end of the first public-key search for 1, 10,
//! 100 and 1,000 tagged keys, the disk cache of public keys empty (cold) then filled (warm),
//! against the same Locate (and Export, cold) from a new raw client; and its requests.

use std::time::Instant;

use cosmian_pkcs11_testbed::{KmsServer, create_p256_key_pairs, settled_audit_events};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::slot::Slot;

use super::raw::RawKmip;
use super::{Bench, Targets, Transport, failed, median, ms, operation_counts};

/// The numbers of tagged keys.
const SIZES: [usize; 4] = [1, 10, 100, 1000];

/// The tag of the `count` keys of one size.
fn tag(count: usize) -> String {
    format!("enum-{count}")
}

/// For [`Bench::new`]: the P-256 key pairs of every size, each size under its own tag.
pub(super) fn create_key_pairs(kms: &KmsServer) {
    for count in SIZES {
        create_p256_key_pairs(kms, count, &[&tag(count)]);
    }
}

impl Bench {
    pub(super) fn p3_enumeration(&self, targets: &mut Targets) -> Result<(), String> {
        println!("\nP3  enumeration: C_Initialize to the end of the first public-key search, median (ms):");
        println!("    cold: an empty disk cache (a fresh connection, the Locate, the batched Export) vs the");
        println!("    same Locate and Export from a new raw client; warm: the public keys in the disk cache");
        println!("    (a fresh connection, the Locate) vs the same Locate from a new raw client. Requests");
        println!("    counted on runs of their own, in the KMS's log (HTTP) and audit log (KMIP)");
        println!(
            "    {:>5} {:>4} {:>8} {:>8} {:>5} {:>8} {:>8} {:>5} {:>7} {:>7}  {:<14} KMIP operations, cold + warm",
            "keys", "runs", "cold", "raw", "ratio", "warm", "raw", "ratio", "cold/1", "warm/1", "HTTP cold/warm"
        );
        let (mut one_cold, mut one_warm) = (f64::NAN, f64::NAN);
        let ca = self.ca.ca_pem();
        for count in SIZES {
            let tag = tag(count); // Made by Bench::new.
            let listed = count.min(1000);
            let runs = if count >= 1000 { 5 } else { 15 };
            let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..runs + 1 {
                let _ = std::fs::remove_dir_all(self.disk_cache());
                for (cold, provider, raw) in [(true, 0, 1), (false, 2, 3)] {
                    let started = Instant::now();
                    let slot = self.open(&self.config, &tag)?;
                    let found = self.public_keys(slot)?;
                    times[provider].push(ms(started.elapsed()));
                    self.close()?;
                    let started = Instant::now();
                    let client = RawKmip::new(&self.kms, &ca);
                    let ids = client.locate(&tag)?;
                    let exported = if cold { client.export(&ids)? } else { ids.len() };
                    times[raw].push(ms(started.elapsed()));
                    if (found, exported) != (listed, listed) {
                        return Err(format!("{count} keys tagged, {found} listed, {exported} raw"));
                    }
                }
            }
            // The first run warms the server's caches.
            let [cold, cold_raw, warm, warm_raw] = times.map(|mut t| median(&mut t[1..]));
            if count == 1 {
                (one_cold, one_warm) = (cold, warm);
            }
            // Counted on runs of their own: cold, then warm.
            let _ = std::fs::remove_dir_all(self.disk_cache());
            let mark = settled_audit_events(&self.kms).len();
            let mut requests = Vec::new();
            for _ in 0..2 {
                let before = self.http_requests().len();
                let slot = self.open(&self.config, &tag)?;
                self.public_keys(slot)?;
                self.close()?;
                requests.push(self.http_requests().len() - before);
            }
            let operations = operation_counts(&settled_audit_events(&self.kms)[mark..]);
            let http = format!("{} / {}", requests[0], requests[1]);
            println!(
                "    {count:>5} {runs:>4} {cold:>8.1} {cold_raw:>8.1} {:>5.2} {warm:>8.1} {warm_raw:>8.1} {:>5.2} {:>6.1}x {:>6.1}x  {http:<14} {operations}",
                cold / cold_raw,
                warm / warm_raw,
                cold / one_cold,
                warm / one_warm
            );
            targets.push((
                format!("P3 round trips, {count} keys, cold / warm"),
                format!("{http} (<= 3)"),
                requests[0] <= 3,
            ));
            if count == 100 {
                let ratio = warm / one_warm;
                targets.push((
                    "P3 enumeration time, 100 keys / 1 key (warm)".into(),
                    format!("{ratio:.1} (<= 2)"),
                    ratio <= 2.0,
                ));
                let ratio = cold / one_cold;
                targets.push((
                    "P3 enumeration time, 100 keys / 1 key (cold)".into(),
                    format!("{ratio:.1} (<= 2)"),
                    ratio <= 2.0,
                ));
            }
        }
        println!("    (KMS 5.28 caps a Locate at 1,000 ids and ignores OffsetItems: past 1,000 keys, one more");
        println!("    Locate that brings nothing new, and the first 1,000 are offered. Cold, the KMS spends");
        println!("    most of the time exporting: the raw client takes as long)");
        if self.transport == Transport::Tls {
            println!("    (Over TLS the raw client is plain ureq: the first answer on its new connection may wait");
            println!("    ~40 ms for its delayed ACK, which the provider avoids: see src/kmip/transport.rs)");
        }
        Ok(())
    }

    fn public_keys(&self, slot: Slot) -> Result<usize, String> {
        let session = self.session(slot)?;
        let found =
            session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).map_err(failed("C_FindObjects"))?;
        Ok(found.len())
    }
}
