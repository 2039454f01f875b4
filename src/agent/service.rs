//! What the agent answers: the provider's key list as identities (with the OpenSSH
//! certificates found for them), signatures made by the KMS through the provider's token, the
//! lock, and refusals of everything that would change the keys. One request in, one answer out;
//! no socket here (`server` owns those).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoki_sys::{CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::protocol::{self, Request};
use super::wire::{self, RsaAlgorithm};
use crate::asn1::{Curve, Hash, PublicKey};
use crate::lock;
use crate::provider::Secret;
use crate::signing::{self, Mechanism};
use crate::token::{KeyPair, Template, Token};

/// The most certificate files read from the folder, and the largest one.
const MAX_CERTIFICATE_FILES: usize = 256;
const MAX_CERTIFICATE_LEN: u64 = 64 * 1024;

/// One identity the agent lists: a key of the KMS, or a certificate of one.
pub(crate) struct Identity {
    pub blob: Vec<u8>,
    pub comment: String,
}

/// Why the agent is locked.
enum Locked {
    /// `ssh-add -x`: until `ssh-add -X` gives the same passphrase.
    Passphrase(LockHash),
    /// PIN mode (`pkcs11_use_pin_as_access_token`): the KMS token is the PIN, which the agent
    /// does not have (at start, or after `ssh-add -x` made it forget it) until `ssh-add -X`
    /// gives one the KMS accepts.
    UntilPin,
}

/// A passphrase as the lock keeps it: salted SHA-512, compared in constant time.
struct LockHash {
    salt: [u8; 16],
    hash: Zeroizing<Vec<u8>>,
}

impl LockHash {
    fn of(salt: [u8; 16], passphrase: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut h = Sha512::new();
        h.update(salt);
        h.update(passphrase);
        Zeroizing::new(h.finalize().to_vec())
    }

    fn matches(&self, passphrase: &[u8]) -> bool {
        let other = Self::of(self.salt, passphrase);
        other.iter().zip(self.hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The agent's state: the provider's token (configuration, KMS client, key list and caches,
/// shared by every client), where certificates are looked for, and the lock.
pub(crate) struct Agent {
    token: Token,
    certificates: Option<PathBuf>,
    lock: Mutex<Option<Locked>>,
    pin_mode: bool,
    failed_unlocks: AtomicU32,
}

impl Agent {
    /// The agent of `token`; in PIN mode (`pin_mode`) it starts locked, until `ssh-add -X`
    /// gives the PIN.
    pub(crate) fn new(token: Token, certificates: Option<PathBuf>, pin_mode: bool) -> Self {
        let lock = Mutex::new(pin_mode.then_some(Locked::UntilPin));
        Agent { token, certificates, lock, pin_mode, failed_unlocks: AtomicU32::new(0) }
    }

    /// PIN mode, and no PIN: nothing can be asked of the KMS.
    fn waiting_for_pin(&self) -> bool {
        matches!(*lock(&self.lock), Some(Locked::UntilPin))
    }

    /// Lists the keys now (the first login finds them loaded and the KMS connection made), then
    /// again whenever the list is half its lifetime old (`COSMIAN_PKCS11_KEY_CACHE_SECONDS`),
    /// or a few seconds after a failed listing: a request lists in its own path only when
    /// this thread could not. Runs until the process ends; with a lifetime of 0 (every request
    /// lists) it only warms up.
    pub(crate) fn keep_keys_fresh(&self) {
        if !self.waiting_for_pin() {
            let _ = self.identities();
        }
        let ttl = self.token.key_cache_ttl();
        if ttl.is_zero() {
            return;
        }
        let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            std::thread::sleep(period);
            if !self.waiting_for_pin() {
                self.token.refresh_older_than(ttl / 2);
            }
        }
    }

    fn is_locked(&self) -> bool {
        lock(&self.lock).is_some()
    }

    /// The identities, loading the key list when it is missing or older than
    /// `COSMIAN_PKCS11_KEY_CACHE_SECONDS` (the provider's freshness rules): each key, then the
    /// certificates of it found in the certificate folder.
    pub(crate) fn identities(&self) -> Vec<Identity> {
        let template = Template::class(CKO_PUBLIC_KEY);
        let keys: Vec<Arc<KeyPair>> = self
            .token
            .find(&template)
            .into_iter()
            .filter_map(|handle| self.token.object(handle).ok().map(|(key, _)| key))
            .collect();
        let certificates = self.certificates.as_deref().map(read_certificates).unwrap_or_default();
        let mut out = Vec::new();
        for key in keys {
            let blob = wire::public_key_blob(&key.public_key);
            let certified: Vec<_> = certificates.iter().filter(|c| c.certified == blob).collect();
            out.push(Identity { blob, comment: key.ck_label() });
            for c in certified {
                out.push(Identity { blob: c.blob.clone(), comment: c.comment.clone() });
            }
        }
        out
    }

    /// Answers one message body; an error means the message was malformed and the client is
    /// to be disconnected.
    pub(crate) fn answer(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let request = protocol::parse(body)?;
        if self.is_locked() {
            return Ok(match request {
                Request::Identities => protocol::identities(std::iter::empty()),
                Request::Unlock(passphrase) => protocol::status(self.unlock(&passphrase)),
                _ => protocol::status(false),
            });
        }
        Ok(match request {
            Request::Identities => {
                let identities = self.identities();
                protocol::identities(identities.iter().map(|i| (i.blob.as_slice(), i.comment.as_str())))
            }
            Request::Sign { key_blob, data, flags } => match self.sign(key_blob, data, flags) {
                Ok(signature) => protocol::signature(&signature),
                Err(e) => {
                    tracing::warn!("agent: signature refused: {e}");
                    protocol::status(false)
                }
            },
            Request::ChangeIdentities => {
                tracing::info!("agent: adding or removing identities is refused: it serves the KMS's keys");
                protocol::status(false)
            }
            Request::Lock(passphrase) => protocol::status(self.lock_with(&passphrase)),
            // Not locked: nothing to unlock (OpenSSH's agent fails it too).
            Request::Unlock(_) => protocol::status(false),
            Request::Extension("query") => protocol::query_answer(),
            Request::Extension(name) => {
                // session-bind@openssh.com matters only to keys added with destination
                // constraints, which this agent never holds: refused as OpenSSH's agent refuses
                // an extension it does not know, which ssh treats as "not supported".
                tracing::debug!(extension = name, "agent: extension not supported");
                protocol::status(false)
            }
            Request::Unknown(kind) => {
                tracing::debug!(kind, "agent: unknown message type");
                protocol::status(false)
            }
        })
    }

    /// One KMS Sign for the key (or the key of the certificate) `key_blob` names.
    fn sign(&self, key_blob: &[u8], data: &[u8], flags: u32) -> Result<Vec<u8>, String> {
        let plain = wire::certified_key_blob(key_blob).unwrap_or_else(|_| key_blob.to_vec());
        let key = self
            .identities_cached()
            .into_iter()
            .find(|key| wire::public_key_blob(&key.public_key) == plain)
            .ok_or("the key asked for is not among the KMS keys this agent serves")?;
        let rsa = RsaAlgorithm::from_flags(flags);
        let mechanism = mechanism_for(&key.public_key, rsa);
        let request = signing::request(mechanism, data, false).map_err(|e| e.to_string())?;
        let raw = self.token.sign(&key, &request).map_err(|e| e.to_string())?;
        let raw = signing::finish(mechanism, &key.public_key, raw).map_err(|e| e.to_string())?;
        tracing::info!(key = %key.private_id, "agent: signed");
        Ok(wire::signature_blob(&key.public_key, rsa, &raw))
    }

    /// The keys as last listed, without asking the KMS (a sign request follows a listing).
    fn identities_cached(&self) -> Vec<Arc<KeyPair>> {
        let template = Template::class(CKO_PRIVATE_KEY);
        self.token.find(&template).into_iter().filter_map(|h| self.token.object(h).ok().map(|(key, _)| key)).collect()
    }

    /// In PIN mode the passphrase plays no part: locking forgets the PIN, and unlocking takes
    /// the PIN again.
    fn lock_with(&self, passphrase: &[u8]) -> bool {
        if self.pin_mode {
            let mut guard = lock(&self.lock);
            self.token.forget_access_token();
            *guard = Some(Locked::UntilPin);
            tracing::info!("agent: locked (PIN mode: the PIN is forgotten)");
            return true;
        }
        if passphrase.is_empty() {
            return false;
        }
        let Some(salt) = random_salt() else {
            tracing::error!("agent: no randomness for the lock's salt: not locked");
            return false;
        };
        *lock(&self.lock) = Some(Locked::Passphrase(LockHash { salt, hash: LockHash::of(salt, passphrase) }));
        tracing::info!("agent: locked");
        true
    }

    /// A wrong passphrase (or PIN) costs a delay growing by 0.1 s per failure up to 10 s, as
    /// OpenSSH's agent does. A PIN is checked by the KMS (one request) before it is used.
    fn unlock(&self, passphrase: &[u8]) -> bool {
        let mut guard = lock(&self.lock);
        let unlocked = !passphrase.is_empty()
            && match guard.as_ref() {
                Some(Locked::Passphrase(held)) => held.matches(passphrase),
                Some(Locked::UntilPin) => match std::str::from_utf8(passphrase) {
                    Ok(pin) => match self.token.use_pin_as_access_token(Secret::new(pin)) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!("agent: {}", e.message);
                            false
                        }
                    },
                    Err(_) => false,
                },
                None => false,
            };
        if unlocked {
            *guard = None;
            self.failed_unlocks.store(0, Ordering::SeqCst);
            tracing::info!("agent: unlocked");
            return true;
        }
        drop(guard);
        let failures = self.failed_unlocks.fetch_add(1, Ordering::SeqCst).saturating_add(1).min(100);
        tracing::warn!("agent: unlock refused (wrong passphrase or PIN)");
        std::thread::sleep(Duration::from_millis(100) * failures);
        false
    }
}

/// The PKCS#11 mechanism that gives the signature SSH wants from this key.
fn mechanism_for(key: &PublicKey, rsa: RsaAlgorithm) -> Mechanism {
    match key {
        PublicKey::Ec { curve: Curve::P256, .. } => Mechanism::EcdsaWith(Hash::Sha256),
        PublicKey::Ec { curve: Curve::P384, .. } => Mechanism::EcdsaWith(Hash::Sha384),
        PublicKey::Ec { curve: Curve::P521, .. } => Mechanism::EcdsaWith(Hash::Sha512),
        PublicKey::Ed25519 { .. } => Mechanism::Eddsa,
        PublicKey::Rsa { .. } => Mechanism::RsaPkcsWith(match rsa {
            RsaAlgorithm::Sha1 => Hash::Sha1,
            RsaAlgorithm::Sha256 => Hash::Sha256,
            RsaAlgorithm::Sha512 => Hash::Sha512,
        }),
    }
}

fn random_salt() -> Option<[u8; 16]> {
    use std::io::Read;
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut salt)).ok()?;
    Some(salt)
}

/// An OpenSSH certificate read from the folder.
struct Certificate {
    blob: Vec<u8>,
    /// The key blob it certifies.
    certified: Vec<u8>,
    comment: String,
}

/// Every `*-cert.pub` of `folder` that parses; others are logged and skipped.
fn read_certificates(folder: &Path) -> Vec<Certificate> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("-cert.pub")))
        .collect();
    paths.sort();
    paths.truncate(MAX_CERTIFICATE_FILES);
    paths
        .iter()
        .filter_map(|path| match read_certificate(path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), "agent: certificate skipped: {e}");
                None
            }
        })
        .collect()
}

fn read_certificate(path: &Path) -> Result<Certificate, String> {
    use base64::Engine;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_CERTIFICATE_LEN {
        return Err(format!("larger than {MAX_CERTIFICATE_LEN} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut fields = text.split_whitespace();
    let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else {
        return Err("not an OpenSSH public key line".into());
    };
    let comment = fields.collect::<Vec<_>>().join(" ");
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    let certified = wire::certified_key_blob(&blob)?;
    let comment = if comment.is_empty() { path.display().to_string() } else { comment };
    Ok(Certificate { blob, certified, comment })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::{Reader, Writer};
    use crate::token::objects::tests::{p256_pair, rsa_pair};

    fn agent() -> Agent {
        Agent::new(Token::with_keys(vec![p256_pair(), rsa_pair()]), None, false)
    }

    fn listed(agent: &Agent) -> Vec<Vec<u8>> {
        let answer = agent.answer(&[11]).unwrap();
        let mut r = Reader::new(&answer);
        assert_eq!(r.u8().unwrap(), 12);
        (0..r.u32().unwrap())
            .map(|_| {
                let blob = r.string().unwrap().to_vec();
                r.string().unwrap();
                blob
            })
            .collect()
    }

    #[test]
    fn lists_every_key_as_ssh_blobs() {
        let blobs = listed(&agent());
        assert_eq!(blobs.len(), 2);
        assert!(blobs.iter().any(|b| b[4..].starts_with(b"ecdsa-sha2-nistp256")));
        assert!(blobs.iter().any(|b| b[4..].starts_with(b"ssh-rsa")));
    }

    #[test]
    fn changes_to_the_key_list_are_refused() {
        let agent = agent();
        for kind in [17u8, 18, 19, 20, 21, 25, 26] {
            assert_eq!(agent.answer(&[kind]).unwrap(), [5]);
        }
        assert_eq!(listed(&agent).len(), 2);
    }

    #[test]
    fn locked_agent_lists_nothing_and_signs_nothing() {
        let agent = agent();
        let lock = |kind: u8, pass: &[u8]| {
            let mut w = Writer::default();
            w.u8(kind).string(pass);
            agent.answer(&w.bytes).unwrap()
        };
        assert_eq!(lock(23, b"pw"), [5], "not locked: nothing to unlock");
        assert_eq!(lock(22, b""), [5], "an empty passphrase does not lock");
        assert_eq!(lock(22, b"pw"), [6]);
        assert!(listed(&agent).is_empty());
        let mut sign = Writer::default();
        sign.u8(13).string(&wire::public_key_blob(&p256_pair().public_key)).string(b"data").u32(0);
        assert_eq!(agent.answer(&sign.bytes).unwrap(), [5]);
        assert_eq!(lock(22, b"pw"), [5], "locking twice fails");
        assert_eq!(lock(23, b"wrong"), [5]);
        assert_eq!(lock(23, b"pw"), [6]);
        assert_eq!(listed(&agent).len(), 2);
    }

    #[test]
    fn extensions_answer_as_openssh_does() {
        let agent = agent();
        let ext = |name: &str| {
            let mut w = Writer::default();
            w.u8(27).string(name.as_bytes());
            agent.answer(&w.bytes).unwrap()
        };
        assert_eq!(ext("query"), protocol::query_answer());
        assert_eq!(ext("session-bind@openssh.com"), [5]);
        assert_eq!(ext("other@example.com"), [5]);
    }

    #[test]
    fn unknown_keys_are_not_signed_with() {
        let agent = agent();
        let mut sign = Writer::default();
        sign.u8(13).string(b"\0\0\0\x0bssh-ed25519\0\0\0\x20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").string(b"d").u32(0);
        assert_eq!(agent.answer(&sign.bytes).unwrap(), [5]);
        assert!(agent.answer(&[13, 0]).is_err(), "malformed: the client is disconnected");
    }
}
