//! The one token: the tagged key pairs of the configured KMS, kept in memory with stable
//! object handles, refreshed from the KMS when the list has aged (public keys already seen
//! come from the disk cache, `key_cache`), and the signing call.

pub(crate) mod key_cache;
mod kms_errors;
pub(crate) mod objects;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::asn1::PublicKey;
use crate::config::{KmsConfig, Secret, Settings};
use crate::error::{Error, Result};
use crate::kmip::client::KmsError;
use crate::kmip::operations::{self, RemoteKey, SignRequest};
use crate::kmip::KmsClient;
use crate::lock;
pub(crate) use key_cache::KeyCache;
pub(crate) use objects::{Attr, KeyPair, ObjectClass};

/// After a failed load, how long searches are answered from memory before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Listing the keys starts no request after this many request timeouts.
const LIST_DEADLINE_TIMEOUTS: u32 = 3;

/// The connection to the KMS, when the configuration allowed one.
pub(crate) struct Kms {
    pub config: KmsConfig,
    pub client: KmsClient,
    /// Its public keys on disk; `None` when turned off or there is no cache folder.
    pub key_cache: Option<KeyCache>,
}

/// Key pairs and the handles of their objects.
#[derive(Default)]
pub(crate) struct KeyStore {
    objects: HashMap<CK_OBJECT_HANDLE, (Arc<KeyPair>, ObjectClass)>,
    /// Handles survive refreshes: the same key keeps the same handle.
    handles: HashMap<(String, ObjectClass), CK_OBJECT_HANDLE>,
    next_handle: CK_OBJECT_HANDLE,
    /// When the list was last loaded (or last failed to load), and whether that worked.
    loaded: Option<(Instant, bool)>,
}

impl KeyStore {
    /// Replaces the key list, keeping the handles of keys that stay.
    pub(crate) fn replace(&mut self, keys: Vec<KeyPair>) {
        self.objects.clear();
        for key in keys {
            let key = Arc::new(key);
            for class in [ObjectClass::PublicKey, ObjectClass::PrivateKey] {
                let next = &mut self.next_handle;
                let handle = *self.handles.entry((key.private_id.clone(), class)).or_insert_with(|| {
                    *next += 1;
                    *next
                });
                self.objects.insert(handle, (key.clone(), class));
            }
        }
        self.handles.retain(|_, h| self.objects.contains_key(h));
    }

    pub(crate) fn object(&self, handle: CK_OBJECT_HANDLE) -> Option<(Arc<KeyPair>, ObjectClass)> {
        self.objects.get(&handle).cloned()
    }

    /// Handles of the objects matching `template`, public keys first, in handle order.
    pub(crate) fn find(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Vec<CK_OBJECT_HANDLE> {
        let mut found: Vec<_> = self
            .objects
            .iter()
            .filter(|(_, (key, class))| key.matches(*class, template))
            .map(|(h, (_, class))| (*class == ObjectClass::PrivateKey, *h))
            .collect();
        found.sort();
        found.into_iter().map(|(_, h)| h).collect()
    }

    /// Does a search with `template` need the list loaded or reloaded first? Searches for
    /// classes the token never holds don't; private-key searches (every ssh signature) only
    /// before the first load.
    fn needs_load(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)], ttl: Duration) -> bool {
        let class = template.iter().find(|(t, _)| *t == CKA_CLASS).map(|(_, v)| v.as_slice());
        let public = CKO_PUBLIC_KEY.to_ne_bytes();
        let private = CKO_PRIVATE_KEY.to_ne_bytes();
        match (self.loaded, class) {
            (_, Some(c)) if c != public && c != private => false,
            (None, _) => true,
            (Some((at, ok)), c) => {
                let age = at.elapsed();
                c != Some(&private[..]) && (age >= ttl || (!ok && age >= RETRY_AFTER_FAILURE))
            }
        }
    }
}

pub(crate) struct Token {
    pub settings: Settings,
    kms: std::result::Result<Kms, String>,
    store: Mutex<KeyStore>,
    /// Held while loading, so that concurrent searches load once.
    loading: Mutex<()>,
}

impl Token {
    /// `kms` is the configured KMS, or why there is none (the token then holds no keys).
    pub(crate) fn new(settings: Settings, kms: std::result::Result<Kms, String>) -> Self {
        Self { settings, kms, store: Mutex::default(), loading: Mutex::new(()) }
    }

    /// A token holding these keys and no KMS, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_keys(keys: Vec<KeyPair>) -> Self {
        let mut store = KeyStore::default();
        store.replace(keys);
        store.loaded = Some((Instant::now(), true));
        let settings = Settings::from_lookup(|_| None, &mut Vec::new());
        Self { settings, kms: Err("no KMS in unit tests".into()), store: Mutex::new(store), loading: Mutex::new(()) }
    }

    /// The configured KMS, if any (PIN mode: C_Login sets the client's access token).
    pub(crate) fn kms(&self) -> Option<&Kms> {
        self.kms.as_ref().ok()
    }

    /// The KMS's address, for the token label; None when not configured.
    pub(crate) fn server_url(&self) -> Option<&str> {
        self.kms.as_ref().ok().map(|k| k.config.server_url.as_str())
    }

    pub(crate) fn object(&self, handle: CK_OBJECT_HANDLE) -> Result<(Arc<KeyPair>, ObjectClass)> {
        lock(&self.store)
            .object(handle)
            .ok_or_else(|| Error::new(CKR_OBJECT_HANDLE_INVALID, format!("no object {handle}")))
    }

    /// The handles of the objects that match `template`, loading the key list first when it
    /// is missing or old.
    pub(crate) fn find(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Vec<CK_OBJECT_HANDLE> {
        let ttl = self.settings.key_cache_ttl;
        if lock(&self.store).needs_load(template, ttl) {
            let _loading = lock(&self.loading);
            // Another thread may have loaded while this one waited.
            if lock(&self.store).needs_load(template, ttl) {
                let result = self.load();
                let mut store = lock(&self.store);
                match result {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), tag = %self.settings.key_tag, "key list loaded from the KMS");
                        store.replace(keys);
                        store.loaded = Some((Instant::now(), true));
                    }
                    Err(e) => {
                        tracing::error!("cannot list the keys of the KMS: {e}");
                        store.loaded = Some((Instant::now(), false));
                    }
                }
            }
        }
        lock(&self.store).find(template)
    }

    /// Lists the tagged, active key pairs: one batched Locate of the public and the private
    /// keys (paged), then batched Exports (one message per 1,000) of the public keys the disk
    /// cache does not hold or the KMS did not confirm (none, usually: no request). All within
    /// [`LIST_DEADLINE_TIMEOUTS`] request timeouts, no request started after that.
    fn load(&self) -> std::result::Result<Vec<KeyPair>, String> {
        let kms = self.kms.as_ref().map_err(|e| format!("no KMS configured: {e}"))?;
        let vendor = &kms.config.vendor_id;
        let tag = &self.settings.key_tag;
        let deadline = Instant::now() + self.settings.request_timeout * LIST_DEADLINE_TIMEOUTS;
        let (ids, private_ids) =
            operations::locate_key_pairs(&kms.client, vendor, tag, deadline).map_err(|e| e.to_string())?;
        let cached = kms.key_cache.as_ref().map(KeyCache::load).unwrap_or_default();
        let mut known = confirmed(cached, &ids, &private_ids);
        let missing: Vec<String> = ids.iter().filter(|id| !known.contains_key(*id)).cloned().collect();
        let exported =
            operations::export_public_keys(&kms.client, vendor, &missing, deadline).map_err(|e| e.to_string())?;
        let mut to_cache = Vec::new();
        for (id, result) in missing.iter().zip(exported) {
            match result.map_err(|e| e.to_string()).and_then(|remote| key_pair(&remote, tag).map(|_| remote)) {
                Ok(remote) => {
                    to_cache.push(remote.clone());
                    known.insert(id.clone(), remote);
                }
                Err(e) => tracing::warn!(key = %id, "skipping key: {e}"),
            }
        }
        tracing::debug!(
            located = ids.len(),
            from_disk_cache = ids.len() - missing.len(),
            exported = to_cache.len(),
            "key list"
        );
        if let Some(cache) = &kms.key_cache {
            cache.store(&to_cache);
        }
        let keys = ids
            .iter()
            .filter_map(|id| known.remove(id))
            .filter_map(|remote| {
                key_pair(&remote, tag).map_err(|e| tracing::warn!(key = %remote.public_id, "skipping key: {e}")).ok()
            })
            .collect();
        Ok(keys)
    }

    /// PIN mode: checks `pin` as the KMS access token on a request of its own (one Locate; no
    /// other request ever carries an unchecked PIN), then sends it as the bearer token from now
    /// on. A PIN the KMS refuses is `CKR_PIN_INCORRECT` and is forgotten.
    pub(crate) fn use_pin_as_access_token(&self, pin: Secret) -> Result<()> {
        let kms = self.kms().ok_or_else(|| {
            Error::new(CKR_DEVICE_ERROR, "PIN mode: no KMS client (see the ERROR line logged when the library loaded)")
        })?;
        match operations::check_token(&kms.client, &kms.config.vendor_id, &self.settings.key_tag, &pin) {
            Ok(()) => {
                kms.client.set_access_token(Some(pin));
                tracing::info!("PIN mode: the KMS accepted the PIN as access token");
                Ok(())
            }
            Err(KmsError::Unauthorized(e)) => {
                Err(Error::new(CKR_PIN_INCORRECT, format!("PIN mode: the KMS refused the PIN as access token ({e})")))
            }
            Err(e) => Err(Error::new(CKR_DEVICE_ERROR, format!("PIN mode: cannot check the PIN: {e}"))),
        }
    }

    /// PIN mode: the login ended; no request carries the PIN any more.
    pub(crate) fn forget_access_token(&self) {
        if let Some(kms) = self.kms() {
            kms.client.set_access_token(None);
        }
    }

    /// Signs through the KMS. When the KMS refuses (the key is gone, not ours, not a signing
    /// key), the key's disk cache entry is dropped and the next search lists the keys again.
    pub(crate) fn sign(&self, key: &KeyPair, request: &SignRequest) -> Result<Vec<u8>> {
        let kms = self.kms.as_ref().map_err(|e| Error::new(CKR_DEVICE_ERROR, format!("no KMS configured: {e}")))?;
        let signed = operations::sign(&kms.client, &key.private_id, request);
        if let Err(KmsError::Refused(_)) = &signed {
            if let Some(cache) = &kms.key_cache {
                cache.forget(&key.private_id);
            }
            lock(&self.store).loaded = None;
        }
        signed.map_err(Error::from)
    }
}

/// The cached public keys the KMS confirmed in the Locate just made: their public id is among
/// the located `public_ids`; their private id among the tagged `Active` `private_ids`, claimed
/// by no other located entry and, for ids made by the KMS (`<private id>_pk`), that public
/// key's own. Others are exported again (one warning says how many).
fn confirmed(
    mut cached: HashMap<String, RemoteKey>,
    public_ids: &[String],
    private_ids: &[String],
) -> HashMap<String, RemoteKey> {
    let located: HashSet<&str> = public_ids.iter().map(String::as_str).collect();
    cached.retain(|id, _| located.contains(id.as_str()));
    let private: HashSet<&str> = private_ids.iter().map(String::as_str).collect();
    let mut claims: HashMap<String, usize> = HashMap::new();
    for key in cached.values() {
        *claims.entry(key.private_id.clone()).or_default() += 1;
    }
    let before = cached.len();
    cached.retain(|_, key| {
        private.contains(key.private_id.as_str())
            && claims[&key.private_id] == 1
            && key.public_id.strip_suffix("_pk").is_none_or(|own| own == key.private_id)
    });
    if cached.len() < before {
        tracing::warn!(
            entries = before - cached.len(),
            "disk cache entries the KMS does not confirm: exporting those keys again"
        );
    }
    cached
}

/// Builds the token's view of a KMS key pair.
fn key_pair(remote: &RemoteKey, selection_tag: &str) -> std::result::Result<KeyPair, String> {
    let public_key = PublicKey::from_spki(&remote.spki)?;
    let label = label(remote, selection_tag);
    Ok(KeyPair { private_id: remote.private_id.clone(), public_id: remote.public_id.clone(), label, public_key })
}

/// `CKA_LABEL`: the key's name, else its other user tags, then its id, e.g.
/// `alice-laptop (3f0c…)`; just the id when there is nothing else.
fn label(remote: &RemoteKey, selection_tag: &str) -> String {
    let described = remote.name.clone().filter(|n| !n.is_empty()).or_else(|| {
        let tags: Vec<&str> =
            remote.tags.iter().map(String::as_str).filter(|t| *t != selection_tag && !t.starts_with('_')).collect();
        (!tags.is_empty()).then(|| tags.join(","))
    });
    match described {
        Some(d) => format!("{d} ({})", remote.private_id),
        None => remote.private_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::objects::tests::{p256_pair, rsa_pair};
    use super::*;

    fn class(c: CK_ULONG) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
        (CKA_CLASS, c.to_ne_bytes().to_vec())
    }

    #[test]
    fn handles_are_stable_across_refreshes() {
        let mut s = KeyStore::default();
        s.replace(vec![p256_pair(), rsa_pair()]);
        let before = s.find(&[]);
        assert_eq!(before.len(), 4);
        s.replace(vec![rsa_pair()]);
        let after = s.find(&[]);
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|h| before.contains(h)));
        assert!(s.object(before[0]).is_none() || after.contains(&before[0]));
        s.replace(vec![p256_pair(), rsa_pair()]);
        assert_eq!(s.find(&[]).len(), 4);
    }

    #[test]
    fn public_keys_come_first() {
        let mut s = KeyStore::default();
        s.replace(vec![p256_pair(), rsa_pair()]);
        let all = s.find(&[]);
        let classes: Vec<_> = all.iter().map(|h| s.object(*h).unwrap().1).collect();
        assert_eq!(classes[..2], [ObjectClass::PublicKey; 2]);
        assert_eq!(s.find(&[class(CKO_PRIVATE_KEY), (CKA_ID, b"k1".to_vec())]).len(), 1);
    }

    #[test]
    fn private_key_searches_are_served_from_memory() {
        let mut s = KeyStore::default();
        let ttl = Duration::from_secs(60);
        assert!(s.needs_load(&[class(CKO_PRIVATE_KEY)], ttl));
        assert!(!s.needs_load(&[class(CKO_CERTIFICATE)], ttl));
        s.loaded = Some((Instant::now() - Duration::from_secs(120), true));
        assert!(s.needs_load(&[class(CKO_PUBLIC_KEY)], ttl));
        assert!(s.needs_load(&[], ttl));
        assert!(!s.needs_load(&[class(CKO_PRIVATE_KEY)], ttl));
        s.loaded = Some((Instant::now(), true));
        assert!(!s.needs_load(&[class(CKO_PUBLIC_KEY)], ttl));
        s.loaded = Some((Instant::now() - Duration::from_secs(6), false));
        assert!(s.needs_load(&[class(CKO_PUBLIC_KEY)], ttl));
    }

    #[test]
    fn cached_entries_are_used_only_as_the_kms_confirms_them() {
        let remote = |public: &str, private: &str| RemoteKey {
            public_id: public.into(),
            private_id: private.into(),
            spki: vec![],
            name: None,
            tags: vec![],
        };
        let cached: HashMap<String, RemoteKey> = [
            remote("a_pk", "a"),             // as the KMS made it: kept
            remote("b_pk", "c"),             // redirected to another tagged key
            remote("imported", "d"),         // an id of its own: its private key is located
            remote("planted_pk", "planted"), // not located
            remote("e_pk", "untagged"),      // redirected to a key the Locate did not find
            remote("f1", "f"),               // two public keys claiming one private key
            remote("f2", "f"),
        ]
        .into_iter()
        .map(|k| (k.public_id.clone(), k))
        .collect();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let public = ids(&["a_pk", "b_pk", "c_pk", "imported", "e_pk", "f1", "f2"]);
        let private = ids(&["a", "c", "d", "e", "f"]);
        let mut kept: Vec<_> = confirmed(cached, &public, &private).into_keys().collect();
        kept.sort();
        assert_eq!(kept, ["a_pk", "imported"]);
    }

    #[test]
    fn labels_say_what_the_key_is() {
        let mut r = RemoteKey {
            public_id: "id_pk".into(),
            private_id: "id".into(),
            spki: vec![],
            name: None,
            tags: vec!["ssh-auth".into(), "_pk".into()],
        };
        assert_eq!(label(&r, "ssh-auth"), "id");
        r.tags.push("alice-laptop".into());
        assert_eq!(label(&r, "ssh-auth"), "alice-laptop (id)");
        r.name = Some("deploy".into());
        assert_eq!(label(&r, "ssh-auth"), "deploy (id)");
    }
}
