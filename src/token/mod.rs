//! The one token: the tagged key pairs of the configured KMS, kept in memory with stable
//! object handles, refreshed from the KMS when the list has aged (public keys already seen
//! come from the disk cache, `key_cache`), and the signing call.
//!
//! A process's first listing may be answered at once from the key list the disk cache keeps
//! (when that list is younger than the in-memory list's lifetime) while a thread of its own
//! ([`Confirmation`]) connects to the KMS and lists the keys as a search would: the connection
//! and the Locate then overlap with what the caller does next (ssh: its own connection and key
//! exchange). No key of such a list is signed with before the KMS confirmed it: `sign` waits
//! for the confirmation, and a key the KMS no longer lists is refused (and dropped from the
//! disk cache). Never when the caller forbade threads: the listing is then made in its thread.

pub(crate) mod key_cache;
mod kms_errors;
pub(crate) mod objects;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::asn1::PublicKey;
use crate::config::{KmsConfig, Secret, Settings};
use crate::error::{Error, Result};
use crate::kmip::KmsClient;
use crate::kmip::KmsErrorKind;
use crate::kmip::operations::{self, RemoteKey, SignRequest};
use crate::lock;
use key_cache::Cached;
pub(crate) use key_cache::KeyCache;
pub(crate) use objects::{Attr, Classes, KeyPair, ObjectClass, Template};

/// After a failed load, how long searches are answered from memory before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Listing the keys starts no request after this many request timeouts.
const LIST_DEADLINE_TIMEOUTS: u32 = 3;

/// The name of the confirmation's thread (what `/proc/<pid>/task/*/comm` shows).
pub(crate) const THREAD_NAME: &str = "cosmian-pkcs11";

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
    /// The list came from the disk cache and the KMS has not confirmed it yet.
    unconfirmed: bool,
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

    /// Whether the list holds this very key: the same private key, public id and public key.
    fn holds(&self, key: &KeyPair) -> bool {
        self.handles
            .get(&(key.private_id.clone(), ObjectClass::PrivateKey))
            .and_then(|handle| self.objects.get(handle))
            .is_some_and(|(held, _)| held.public_id == key.public_id && held.public_key == key.public_key)
    }

    /// The result of a listing: the new list, or the failure noted (the list stays).
    fn publish(&mut self, result: std::result::Result<Vec<KeyPair>, String>, tag: &str) {
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), tag = %tag, "key list loaded from the KMS");
                self.replace(keys);
                self.loaded = Some((Instant::now(), true));
                self.unconfirmed = false;
            }
            Err(e) => {
                tracing::error!("cannot list the keys of the KMS: {e}");
                self.loaded = Some((Instant::now(), false));
            }
        }
    }

    /// Handles of the objects matching `template`, public keys first, in handle order.
    pub(crate) fn find(&self, template: &Template) -> Vec<CK_OBJECT_HANDLE> {
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
    fn needs_load(&self, template: &Template, ttl: Duration) -> bool {
        match (self.loaded, template.classes()) {
            (_, Classes::Neither) => false,
            (None, _) => true,
            (Some(_), Classes::Only(ObjectClass::PrivateKey)) => false,
            (Some((at, ok)), _) => {
                let age = at.elapsed();
                age >= ttl || (!ok && age >= RETRY_AFTER_FAILURE)
            }
        }
    }
}

pub(crate) struct Token {
    pub settings: Settings,
    kms: std::result::Result<Arc<Kms>, String>,
    /// Shared with the confirmation's thread, which replaces the list when the KMS answers.
    store: Arc<Mutex<KeyStore>>,
    /// Held while loading, so that concurrent searches load once.
    loading: Mutex<()>,
    /// The confirmation of a key list answered from the disk cache, while it runs.
    confirmation: Confirmation,
    /// Set by the first listing: only it may be answered from the disk cache.
    listed: AtomicBool,
}

/// The KMS's confirmation of a key list answered from the disk cache: one thread, which lists
/// the keys as a search would, replaces the list with the KMS's, and says it is done.
#[derive(Default)]
struct Confirmation {
    thread: Mutex<Option<JoinHandle<()>>>,
    done: Arc<Done>,
}

/// A flag set once, and waited for.
#[derive(Default)]
struct Done {
    flag: Mutex<bool>,
    changed: Condvar,
}

impl Done {
    fn set(&self) {
        *lock(&self.flag) = true;
        self.changed.notify_all();
    }

    /// Waits at most `patience` for the flag; whether it is set.
    fn wait(&self, patience: Duration) -> bool {
        let flag = lock(&self.flag);
        let waited = self.changed.wait_timeout_while(flag, patience, |done| !*done);
        let (flag, _) = waited.unwrap_or_else(|poisoned| poisoned.into_inner());
        *flag
    }
}

/// Sets its [`Done`] when dropped: a confirmation that panicked still wakes who waits for it.
struct SetOnDrop(Arc<Done>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

impl Token {
    /// `kms` is the configured KMS, or why there is none (the token then holds no keys).
    pub(crate) fn new(settings: Settings, kms: std::result::Result<Kms, String>) -> Self {
        Self {
            settings,
            kms: kms.map(Arc::new),
            store: Arc::default(),
            loading: Mutex::new(()),
            confirmation: Confirmation::default(),
            listed: AtomicBool::new(false),
        }
    }

    /// A token holding these keys and no KMS, for unit tests.
    #[cfg(test)]
    pub(crate) fn with_keys(keys: Vec<KeyPair>) -> Self {
        let settings = Settings::from_lookup(|_| None, &mut Vec::new());
        let token = Self::new(settings, Err("no KMS in unit tests".into()));
        let mut store = lock(&token.store);
        store.replace(keys);
        store.loaded = Some((Instant::now(), true));
        drop(store);
        token.listed.store(true, Ordering::SeqCst);
        token
    }

    /// The configured KMS, if any (PIN mode: C_Login sets the client's access token).
    pub(crate) fn kms(&self) -> Option<&Kms> {
        self.kms.as_deref().ok()
    }

    /// Why there is no KMS (no configuration file, a broken one...), if there is none.
    pub(crate) fn configuration_error(&self) -> Option<&str> {
        self.kms.as_ref().err().map(String::as_str)
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
    pub(crate) fn find(&self, template: &Template) -> Vec<CK_OBJECT_HANDLE> {
        let ttl = self.settings.key_cache_ttl;
        if lock(&self.store).needs_load(template, ttl) {
            let _loading = lock(&self.loading);
            // Another thread may have loaded while this one waited.
            if lock(&self.store).needs_load(template, ttl) && !self.answer_from_disk_cache() {
                self.load_now();
            }
        }
        lock(&self.store).find(template)
    }

    /// For a long-lived process (the agent, between requests): lists the keys again in this
    /// thread when the list is older than `age`, or its last listing failed
    /// [`RETRY_AFTER_FAILURE`] ago, so that the requests that follow find it fresh instead of
    /// listing in their own path.
    pub(crate) fn refresh_older_than(&self, age: Duration) {
        let stale = |store: &KeyStore| match store.loaded {
            None => true,
            Some((at, ok)) => at.elapsed() >= if ok { age } else { RETRY_AFTER_FAILURE.min(age) },
        };
        if stale(&lock(&self.store)) {
            let _loading = lock(&self.loading);
            if stale(&lock(&self.store)) {
                self.load_now();
            }
        }
    }

    /// How long a key list is used before it is listed again (`COSMIAN_PKCS11_KEY_CACHE_SECONDS`).
    pub(crate) fn key_cache_ttl(&self) -> Duration {
        self.settings.key_cache_ttl
    }

    /// Lists the keys from the KMS in this thread and replaces the list. The caller holds
    /// `loading`.
    fn load_now(&self) {
        self.listed.store(true, Ordering::SeqCst);
        let result = match &self.kms {
            Ok(kms) => load(kms, &self.settings, None),
            Err(e) => Err(format!("no KMS configured: {e}")),
        };
        lock(&self.store).publish(result, &self.settings.key_tag);
    }

    /// The process's first listing, when threads are allowed (and not in PIN mode) and the disk
    /// cache holds a key list of the tag the KMS gave to this very configuration (same
    /// credentials, same route) less than `COSMIAN_PKCS11_KEY_CACHE_SECONDS` ago: answered from
    /// it, while a thread of its own asks the KMS. Whether it was. The caller holds `loading`.
    fn answer_from_disk_cache(&self) -> bool {
        if self.listed.swap(true, Ordering::SeqCst) || !self.settings.may_create_threads {
            return false;
        }
        // PIN mode: the PIN is the credential, checked by a request of its own anyway.
        let Some(kms) = self.kms.as_ref().ok().filter(|kms| !kms.config.use_pin_as_access_token) else {
            return false;
        };
        let tag = &self.settings.key_tag;
        let Some(disk) = kms.key_cache.as_ref().map(KeyCache::load) else { return false };
        let Some(listed) = disk.listing(tag, kms.client.identity(), self.settings.key_cache_ttl) else { return false };
        let keys: Vec<KeyPair> = listed.iter().filter_map(|remote| key_pair(remote, tag).ok()).collect();
        if keys.len() < listed.len() {
            return false;
        }
        let count = keys.len();
        {
            let mut store = lock(&self.store);
            store.replace(keys);
            store.loaded = Some((Instant::now(), true));
            store.unconfirmed = true;
        }
        let (kms, store, settings, done) =
            (kms.clone(), self.store.clone(), self.settings.clone(), self.confirmation.done.clone());
        let spawned = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            let _done = SetOnDrop(done);
            tracing::dispatcher::with_default(crate::platform::logging::dispatch(), || {
                let result = load(&kms, &settings, Some(disk));
                if result.is_err() && kms.client.is_shut_down() {
                    tracing::debug!("key list confirmation interrupted: the provider is finalizing");
                    return;
                }
                lock(&store).publish(result, &settings.key_tag);
            });
        });
        match spawned {
            Ok(thread) => {
                *lock(&self.confirmation.thread) = Some(thread);
                tracing::info!(keys = count, tag = %tag, "key list answered from the disk cache; the KMS confirms it meanwhile");
                true
            }
            Err(e) => {
                tracing::warn!("cannot start a thread ({e}): the key list is asked of the KMS now");
                false
            }
        }
    }

    /// Ends the confirmation, if one runs: waits for it at most `patience`, then interrupts its
    /// requests (`KmsClient::shutdown`, which no request of this token survives) and waits for
    /// its thread to end (a connection being made takes at most the connection timeout).
    pub(crate) fn end_background_work(&self, patience: Duration) {
        let Some(thread) = lock(&self.confirmation.thread).take() else { return };
        if !self.confirmation.done.wait(patience) {
            if let Ok(kms) = &self.kms {
                kms.client.shutdown();
            }
        }
        let _ = thread.join();
    }

    /// Before a signature: the key list must be the KMS's. One answered from the disk cache is
    /// waited for while the KMS confirms it (at most as long as a listing may take); if that
    /// failed, it is confirmed now in this thread, unless it failed less than
    /// [`RETRY_AFTER_FAILURE`] ago (a KMS that is down fails the signature at once, and ssh goes
    /// on; an ssh-agent signing later tries again). The key must then be in it as it was listed.
    fn check_confirmed(&self, key: &KeyPair) -> Result<()> {
        if lock(&self.store).unconfirmed {
            let started = Instant::now();
            self.confirmation.done.wait(self.settings.request_timeout * (LIST_DEADLINE_TIMEOUTS + 1));
            let failed_lately =
                |store: &KeyStore| store.loaded.is_some_and(|(at, ok)| !ok && at.elapsed() < RETRY_AFTER_FAILURE);
            if lock(&self.store).unconfirmed {
                let _loading = lock(&self.loading);
                let store = lock(&self.store);
                if store.unconfirmed && !failed_lately(&store) {
                    drop(store);
                    self.load_now();
                }
            }
            tracing::debug!(waited_ms = started.elapsed().as_millis(), "signature: the key list confirmed");
        }
        let store = lock(&self.store);
        if store.unconfirmed {
            return Err(Error::new(
                CKR_DEVICE_ERROR,
                "the KMS could not confirm the key list answered from the disk cache: nothing signed",
            ));
        }
        if !store.holds(key) {
            return Err(Error::new(
                CKR_FUNCTION_FAILED,
                format!("key {} is not among the keys the KMS lists now: not signed", key.private_id),
            ));
        }
        Ok(())
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
            Err(e) if e.kind == KmsErrorKind::Unauthorized => Err(Error::new(
                CKR_PIN_INCORRECT,
                format!("PIN mode: the KMS refused the PIN as access token ({})", e.detail),
            )),
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
        self.check_confirmed(key)?;
        let signed = operations::sign(&kms.client, &key.private_id, request);
        if signed.as_ref().is_err_and(|e| e.kind == KmsErrorKind::Refused) {
            if let Some(cache) = &kms.key_cache {
                cache.forget(&key.private_id);
            }
            lock(&self.store).loaded = None;
        }
        signed.map_err(Error::from)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.end_background_work(Duration::ZERO);
    }
}

/// Lists the tagged, active key pairs: one batched Locate of the public and the private keys
/// (paged), then batched Exports (one message per 1,000) of the public keys the disk cache does
/// not hold or the KMS did not confirm (none, usually: no request); records the list in the
/// disk cache (`disk`: what was read of it already, if anything). All within
/// [`LIST_DEADLINE_TIMEOUTS`] request timeouts, no request started after that.
fn load(kms: &Kms, settings: &Settings, disk: Option<Cached>) -> std::result::Result<Vec<KeyPair>, String> {
    let vendor = &kms.config.vendor_id;
    let tag = &settings.key_tag;
    let deadline = Instant::now() + settings.request_timeout * LIST_DEADLINE_TIMEOUTS;
    let (ids, private_ids) =
        operations::locate_key_pairs(&kms.client, vendor, tag, deadline).map_err(|e| e.to_string())?;
    let mut cached = disk.or_else(|| kms.key_cache.as_ref().map(KeyCache::load)).unwrap_or_default();
    let mut known = confirmed(std::mem::take(&mut cached.keys), &ids, &private_ids);
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
    let keys: Vec<KeyPair> = ids
        .iter()
        .filter_map(|id| known.remove(id))
        .filter_map(|remote| {
            key_pair(&remote, tag).map_err(|e| tracing::warn!(key = %remote.public_id, "skipping key: {e}")).ok()
        })
        .collect();
    if let Some(cache) = &kms.key_cache {
        let listed: Vec<String> = keys.iter().map(|k| k.public_id.clone()).collect();
        cache.update(&cached, (tag, kms.client.identity()), &listed, &to_cache, settings.key_cache_ttl);
    }
    Ok(keys)
}

/// The tagged, active key pairs, straight from the KMS (the diagnosis: `kms` without a disk
/// cache reads and writes none).
pub(crate) fn list_keys(kms: &Kms, settings: &Settings) -> std::result::Result<Vec<KeyPair>, String> {
    load(kms, settings, None)
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

    #[test]
    fn handles_are_stable_across_refreshes() {
        let mut s = KeyStore::default();
        s.replace(vec![p256_pair(), rsa_pair()]);
        let before = s.find(&Template::default());
        assert_eq!(before.len(), 4);
        s.replace(vec![rsa_pair()]);
        let after = s.find(&Template::default());
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|h| before.contains(h)));
        assert!(s.object(before[0]).is_none() || after.contains(&before[0]));
        s.replace(vec![p256_pair(), rsa_pair()]);
        assert_eq!(s.find(&Template::default()).len(), 4);
    }

    #[test]
    fn public_keys_come_first() {
        let mut s = KeyStore::default();
        s.replace(vec![p256_pair(), rsa_pair()]);
        let all = s.find(&Template::default());
        let classes: Vec<_> = all.iter().map(|h| s.object(*h).unwrap().1).collect();
        assert_eq!(classes[..2], [ObjectClass::PublicKey; 2]);
        assert_eq!(s.find(&Template::class(CKO_PRIVATE_KEY).and(CKA_ID, b"k1")).len(), 1);
    }

    #[test]
    fn private_key_searches_are_served_from_memory() {
        let mut s = KeyStore::default();
        let ttl = Duration::from_secs(60);
        assert!(s.needs_load(&Template::class(CKO_PRIVATE_KEY), ttl));
        assert!(!s.needs_load(&Template::class(CKO_CERTIFICATE), ttl));
        s.loaded = Some((Instant::now() - Duration::from_secs(120), true));
        assert!(s.needs_load(&Template::class(CKO_PUBLIC_KEY), ttl));
        assert!(s.needs_load(&Template::default(), ttl));
        assert!(!s.needs_load(&Template::class(CKO_PRIVATE_KEY), ttl));
        s.loaded = Some((Instant::now(), true));
        assert!(!s.needs_load(&Template::class(CKO_PUBLIC_KEY), ttl));
        s.loaded = Some((Instant::now() - Duration::from_secs(6), false));
        assert!(s.needs_load(&Template::class(CKO_PUBLIC_KEY), ttl));
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
    fn a_key_is_signed_with_only_as_the_confirmed_list_holds_it() {
        let token = Token::with_keys(vec![p256_pair()]);
        let key = p256_pair();
        token.check_confirmed(&key).unwrap();
        let mut other_material = key.clone();
        other_material.public_key = rsa_pair().public_key;
        assert_eq!(token.check_confirmed(&other_material).unwrap_err().rv, CKR_FUNCTION_FAILED);
        let mut other_public_id = key.clone();
        other_public_id.public_id = "planted_pk".into();
        assert_eq!(token.check_confirmed(&other_public_id).unwrap_err().rv, CKR_FUNCTION_FAILED);
        assert_eq!(token.check_confirmed(&rsa_pair()).unwrap_err().rv, CKR_FUNCTION_FAILED, "not listed");
        // A list answered from the disk cache whose confirmation ended without confirming it:
        // confirmed now, which fails here (no KMS); nothing signed. Right after that failure,
        // not tried again.
        lock(&token.store).unconfirmed = true;
        token.confirmation.done.set();
        assert_eq!(token.check_confirmed(&key).unwrap_err().rv, CKR_DEVICE_ERROR);
        let failed_at = lock(&token.store).loaded.expect("the failed attempt noted");
        assert!(!failed_at.1);
        assert_eq!(token.check_confirmed(&key).unwrap_err().rv, CKR_DEVICE_ERROR);
        assert_eq!(lock(&token.store).loaded, Some(failed_at), "not tried again within 5 s");
    }

    #[test]
    fn a_signature_waits_for_the_confirmation_in_flight() {
        let token = Arc::new(Token::with_keys(vec![p256_pair()]));
        lock(&token.store).unconfirmed = true;
        let confirming = token.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            lock(&confirming.store).publish(Ok(vec![p256_pair()]), "t");
            confirming.confirmation.done.set();
        });
        token.check_confirmed(&p256_pair()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        thread.join().unwrap();
        assert!(!Done::default().wait(Duration::from_millis(10)), "a flag nobody sets times out");
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
