//! The public keys already fetched from a KMS, kept on disk between processes: every `ssh`
//! is a new process, and exporting N public keys costs the KMS N lookups, while a Locate of
//! the same N ids costs about one. With the cache an enumeration is one Locate plus one batched
//! Export of the keys not seen before (none, usually).
//!
//! What is kept can be kept: a KMIP object's key material and its link to its private key
//! never change. The Locate that precedes every use of the cache asks for the tag and the
//! `Active` state, so a key that lost its tag, was revoked or destroyed is not offered even
//! while its entry lives. Only the label (name, other tags) can lag, for `max_age` at most,
//! after which the key is exported again.
//!
//! Nothing read is trusted unchecked: the folder and the file must belong to the user and be
//! writable by nobody else (else the file is ignored, with a warning, and not written);
//! entries dated in the future are expired; and the caller uses an entry only if the KMS
//! located both its public id and its private id among the tagged, `Active` keys
//! (`Token::load`). An entry whose private key the KMS refused to sign with is dropped
//! ([`KeyCache::forget`]).
//!
//! The file also keeps, per selection tag, the last key list the KMS gave (its public ids,
//! when, and to which client identity: `KmsClient::identity`, a digest of the configuration
//! and its credentials): while it is younger than the in-memory key list's lifetime
//! (`COSMIAN_PKCS11_KEY_CACHE_SECONDS`) and the identity is the same, a process may answer its
//! first search from it without waiting for the KMS, and confirms it in the background
//! (`Token::find`). Keys the KMS no longer lists are dropped from the file when it says so.
//!
//! One JSON file per KMS URL in the user's cache folder (`~/.cache/cosmian-pkcs11/keys`,
//! `~/Library/Caches/cosmian-pkcs11/keys`), written whole to a temporary file then renamed
//! (concurrent processes: the last writer wins, nobody reads half a file), folder 0700 and file
//! 0600. Files not written to for `max_age` are removed. Any trouble reading or writing only
//! costs the Exports: it is logged and the KMS answers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kmip::operations::RemoteKey;
use crate::platform::files::{check_private, create_private_folder, write_private_file};

/// Larger files are not read (a thousand keys take about 400 KB).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// The public keys of one KMS, on disk.
#[derive(Debug, Clone)]
pub(crate) struct KeyCache {
    file: PathBuf,
    server_url: String,
    max_age: Duration,
}

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    server_url: String,
    keys: Vec<Entry>,
    /// The last key list the KMS gave, per selection tag (files written before it: none).
    #[serde(default)]
    listings: BTreeMap<String, Listing>,
}

/// A key list the KMS gave for one tag.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Listing {
    /// The public ids of the keys listed, in the KMS's order.
    public_ids: Vec<String>,
    /// When, seconds since the Unix epoch.
    listed_at: u64,
    /// To which client identity (`KmsClient::identity`).
    identity: String,
}

/// What the cache held when read: its fresh keys by public id, and the key lists.
#[derive(Default)]
pub(crate) struct Cached {
    pub keys: HashMap<String, RemoteKey>,
    listings: BTreeMap<String, Listing>,
}

impl Cached {
    /// The key list the KMS gave for `tag` to `identity` less than `fresh_for` ago (and not
    /// later than now), if it lists a key and every key of it is cached: the public keys, in the
    /// KMS's order.
    pub(crate) fn listing(&self, tag: &str, identity: &str, fresh_for: Duration) -> Option<Vec<RemoteKey>> {
        let listing = self.listings.get(tag)?;
        let now = now();
        let fresh = listing.listed_at <= now && now - listing.listed_at < fresh_for.as_secs();
        if !fresh || listing.identity != identity || listing.public_ids.is_empty() {
            return None;
        }
        listing.public_ids.iter().map(|id| self.keys.get(id).cloned()).collect()
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct Entry {
    public_id: String,
    private_id: String,
    /// DER SubjectPublicKeyInfo, hex.
    spki: String,
    name: Option<String>,
    tags: Vec<String>,
    /// When it was exported from the KMS, seconds since the Unix epoch.
    exported_at: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl KeyCache {
    /// The cache of the KMS at `server_url` in `folder`; `None` when `max_age` is zero (off).
    pub(crate) fn new(folder: PathBuf, server_url: &str, max_age: Duration) -> Option<Self> {
        if max_age.is_zero() {
            return None;
        }
        let name: String = server_url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        Some(Self { file: folder.join(format!("{name}.json")), server_url: server_url.to_owned(), max_age })
    }

    /// The file, for tests.
    #[cfg(test)]
    fn file(&self) -> &Path {
        &self.file
    }

    /// The keys exported less than `max_age` ago, by public id, and the key lists. Empty when
    /// the file is missing, unreadable, for another KMS or not understood.
    pub(crate) fn load(&self) -> Cached {
        let content = self.read();
        let keys = content
            .keys
            .into_iter()
            .filter(|e| self.fresh(e, now()))
            .filter_map(|e| {
                let spki = hex::decode(&e.spki).ok()?;
                let key =
                    RemoteKey { public_id: e.public_id, private_id: e.private_id, spki, name: e.name, tags: e.tags };
                Some((key.public_id.clone(), key))
            })
            .collect();
        Cached { keys, listings: content.listings }
    }

    /// Whether `entry` was exported less than `max_age` before `now`, and not after it.
    fn fresh(&self, entry: &Entry, now: u64) -> bool {
        entry.exported_at > now.saturating_sub(self.max_age.as_secs()) && entry.exported_at <= now
    }

    /// Drops the entries of the private key `private_id` (the KMS refused to sign with it), and
    /// their ids from the key lists.
    pub(crate) fn forget(&self, private_id: &str) {
        let mut content = self.read();
        let forgotten: Vec<String> =
            content.keys.iter().filter(|e| e.private_id == private_id).map(|e| e.public_id.clone()).collect();
        if forgotten.is_empty() {
            return;
        }
        content.keys.retain(|e| e.private_id != private_id);
        for listing in content.listings.values_mut() {
            listing.public_ids.retain(|id| !forgotten.contains(id));
        }
        if let Err(e) = self.write(&content) {
            tracing::warn!(file = %self.file.display(), "cannot drop a refused key from the public-key cache: {e}");
        }
    }

    /// Records a listing of `tag` for `identity` that found `listed` (public ids, in the KMS's
    /// order) and exported `exported`: the keys just exported (replacing older entries of the
    /// same ids), the key list of `tag`, and without their entries the keys `before` listed for
    /// `tag` and the KMS no longer does; expired entries and files dropped. Writes the file only
    /// when that changes something, or when the key list is older than half of `fresh_for` (so
    /// that it stays fresh while in use).
    pub(crate) fn update(
        &self,
        before: &Cached,
        listing: (&str, &str),
        listed: &[String],
        exported: &[RemoteKey],
        fresh_for: Duration,
    ) {
        let (tag, identity) = listing;
        let now = now();
        let known = before.listings.get(tag);
        let unchanged = known.is_some_and(|l| {
            l.public_ids == listed
                && l.identity == identity
                && l.listed_at <= now
                && now - l.listed_at < fresh_for.as_secs() / 2
        });
        if exported.is_empty() && unchanged {
            return;
        }
        let gone: Vec<&String> =
            known.into_iter().flat_map(|l| &l.public_ids).filter(|id| !listed.contains(id)).collect();
        let mut content = self.read();
        let fresh: HashMap<&str, &RemoteKey> = exported.iter().map(|k| (k.public_id.as_str(), k)).collect();
        content.keys.retain(|e| {
            self.fresh(e, now) && !fresh.contains_key(e.public_id.as_str()) && !gone.contains(&&e.public_id)
        });
        content.keys.extend(exported.iter().map(|k| Entry {
            public_id: k.public_id.clone(),
            private_id: k.private_id.clone(),
            spki: hex::encode_upper(&k.spki),
            name: k.name.clone(),
            tags: k.tags.clone(),
            exported_at: now,
        }));
        let listing = Listing { public_ids: listed.to_vec(), listed_at: now, identity: identity.to_owned() };
        content.listings.insert(tag.to_owned(), listing);
        content.server_url.clone_from(&self.server_url);
        let count = content.keys.len();
        match self.write(&content) {
            Ok(()) => {
                tracing::debug!(file = %self.file.display(), keys = count, dropped = gone.len(), "public keys cached")
            }
            Err(e) => tracing::warn!(file = %self.file.display(), "cannot cache the public keys: {e}"),
        }
        self.remove_old_files();
    }

    /// Adds exported keys, as a listing that exported them does (tests of the file's rules).
    #[cfg(test)]
    fn store(&self, exported: &[RemoteKey]) {
        self.update(&Cached::default(), ("test", "id"), &[], exported, Duration::ZERO);
    }

    fn read(&self) -> CacheFile {
        let read = || -> Result<CacheFile, String> {
            let folder = self.file.parent().unwrap_or(Path::new("."));
            check_private(folder, &std::fs::symlink_metadata(folder).map_err(|e| e.to_string())?)?;
            let file = std::fs::File::open(&self.file).map_err(|e| e.to_string())?;
            check_private(&self.file, &file.metadata().map_err(|e| e.to_string())?)?;
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_BYTES), &mut text)
                .map_err(|e| e.to_string())?;
            let parsed: CacheFile = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
            if parsed.server_url != self.server_url {
                return Err(format!("it is the cache of {}", parsed.server_url));
            }
            Ok(parsed)
        };
        read().unwrap_or_else(|e| {
            if self.file.exists() {
                tracing::warn!(file = %self.file.display(), "ignoring the public-key cache: {e}");
            }
            CacheFile::default()
        })
    }

    fn write(&self, content: &CacheFile) -> std::io::Result<()> {
        let folder = self.file.parent().unwrap_or(Path::new("."));
        create_private_folder(folder)?;
        check_private(folder, &std::fs::symlink_metadata(folder)?).map_err(std::io::Error::other)?;
        let json = serde_json::to_vec(content).map_err(std::io::Error::other)?;
        let temporary = folder.join(format!(".{}.{}", std::process::id(), now_nanos()));
        let written = write_private_file(&temporary, &json).and_then(|()| std::fs::rename(&temporary, &self.file));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// Removes the files (of other KMSs, of old test runs, temporary files a crash left) not
    /// written for `max_age`: the folder is ours.
    fn remove_old_files(&self) {
        let Some(Ok(entries)) = self.file.parent().map(std::fs::read_dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > self.max_age));
            if old && path.is_file() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> RemoteKey {
        RemoteKey {
            public_id: format!("{id}_pk"),
            private_id: id.to_owned(),
            spki: vec![0x30, 0x03, 1, 2, 3],
            name: Some(format!("name of {id}")),
            tags: vec!["ssh-auth".into(), "laptop".into()],
        }
    }

    fn cache(folder: &Path) -> KeyCache {
        KeyCache::new(folder.join("keys"), "https://kms.example.com:9998", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn stored_keys_come_back_and_merge_with_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        assert!(cache.load().keys.is_empty(), "no file yet");
        cache.store(&[key("a"), key("b")]);
        let mut renamed = key("b");
        renamed.name = Some("renamed".into());
        cache.store(&[renamed.clone(), key("c")]);
        let loaded = cache.load().keys;
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded["a_pk"], key("a"));
        assert_eq!(loaded["b_pk"], renamed);
        assert_eq!(cache.file().file_name().unwrap(), "https___kms.example.com_9998.json");
    }

    #[test]
    fn the_folder_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.store(&[key("a")]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.file()), 0o600);
        assert_eq!(mode(cache.file().parent().unwrap()), 0o700);
        let leftovers: Vec<_> =
            std::fs::read_dir(cache.file().parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn expired_entries_are_neither_loaded_nor_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let old = now() - 3601;
        let entry = |id: &str, exported_at| Entry {
            public_id: format!("{id}_pk"),
            private_id: id.into(),
            spki: "300301".into(),
            name: None,
            tags: vec![],
            exported_at,
        };
        cache
            .write(&CacheFile {
                server_url: cache.server_url.clone(),
                keys: vec![entry("old", old), entry("new", now())],
                ..CacheFile::default()
            })
            .unwrap();
        assert_eq!(cache.load().keys.into_keys().collect::<Vec<_>>(), ["new_pk"]);
        cache.store(&[key("c")]);
        assert_eq!(cache.read().keys.len(), 2, "the expired entry was dropped");
    }

    #[test]
    fn a_broken_or_foreign_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        for content in ["", "{not json", r#"{"server_url":"https://other:9998","keys":[]}"#, "[1,2]"] {
            std::fs::create_dir_all(cache.file().parent().unwrap()).unwrap();
            std::fs::write(cache.file(), content).unwrap();
            assert!(cache.load().keys.is_empty(), "{content:?}");
        }
        let other = KeyCache::new(dir.path().join("keys"), "https://other:9998", Duration::from_secs(60)).unwrap();
        other.store(&[key("x")]);
        std::fs::copy(other.file(), cache.file()).unwrap();
        assert!(cache.load().keys.is_empty(), "another KMS's keys are not this one's");
        cache.store(&[key("a")]);
        assert_eq!(cache.load().keys.len(), 1);
        // An entry with a bad hex key is skipped, not fatal.
        let mut text = std::fs::read_to_string(cache.file()).unwrap();
        text = text.replace("\"3003010203\"", "\"zz\"");
        std::fs::write(cache.file(), text).unwrap();
        assert!(cache.load().keys.is_empty());
    }

    #[test]
    fn unwritable_folders_are_survived() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let cache = KeyCache::new(blocker.join("keys"), "http://k", Duration::from_secs(60)).unwrap();
        cache.store(&[key("a")]);
        assert!(cache.load().keys.is_empty());
    }

    #[test]
    fn files_not_written_for_max_age_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KeyCache::new(dir.path().join("keys"), "http://k", Duration::from_secs(1)).unwrap();
        let stale = KeyCache::new(dir.path().join("keys"), "http://old-test-kms", Duration::from_secs(1)).unwrap();
        stale.store(&[key("x")]);
        let crashed_write = dir.path().join("keys/.1234.5678");
        std::fs::write(&crashed_write, "{").unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        cache.store(&[key("a")]);
        assert!(!stale.file().exists());
        assert!(!crashed_write.exists());
        assert!(cache.file().exists());
    }

    #[test]
    fn entries_dated_in_the_future_are_expired() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.store(&[key("a")]);
        let mut content = cache.read();
        content.keys.push(Entry { exported_at: now() + 3600, ..content.keys[0].clone() });
        content.keys[1].public_id = "future_pk".into();
        cache.write(&content).unwrap();
        assert_eq!(cache.load().keys.into_keys().collect::<Vec<_>>(), ["a_pk"]);
        cache.store(&[key("b")]);
        assert!(cache.read().keys.iter().all(|e| e.public_id != "future_pk"), "not kept either");
    }

    #[test]
    fn a_file_or_folder_others_can_write_is_ignored_and_not_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.store(&[key("a")]);
        let chmod = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        let folder = cache.file().parent().unwrap().to_owned();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A file others can write: not read; replaced by a private one (the folder is ours).
        for bad in [0o620, 0o602] {
            cache.store(&[key("a")]);
            chmod(cache.file(), bad);
            assert!(cache.load().keys.is_empty(), "file mode {bad:o}");
            cache.store(&[key("b")]);
            assert_eq!(mode(cache.file()), 0o600);
            assert_eq!(
                cache.load().keys.into_keys().collect::<Vec<_>>(),
                ["b_pk"],
                "file mode {bad:o}: its entries were not kept"
            );
        }
        // A folder others can write: neither read nor written.
        for bad in [0o770, 0o703] {
            chmod(&folder, bad);
            assert!(cache.load().keys.is_empty(), "folder mode {bad:o}");
            let before = std::fs::read(cache.file()).unwrap();
            cache.store(&[key("c")]);
            assert_eq!(std::fs::read(cache.file()).unwrap(), before, "folder mode {bad:o}: not written");
            chmod(&folder, 0o700);
            assert_eq!(cache.load().keys.len(), 1);
        }
        // A cache folder that is a symbolic link (to a folder of ours) is not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&folder, &link).unwrap();
        let linked = KeyCache::new(link, "https://kms.example.com:9998", Duration::from_secs(3600)).unwrap();
        assert!(linked.load().keys.is_empty());
    }

    #[test]
    fn a_file_of_another_user_is_ignored() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.store(&[key("a")]);
        let ours = std::fs::metadata(cache.file()).unwrap().uid();
        if ours == 0 {
            // Root can give the file away.
            std::os::unix::fs::chown(cache.file(), Some(4242), None).unwrap();
            assert!(cache.load().keys.is_empty());
        } else {
            let root_owned = Path::new("/etc/passwd");
            let error = check_private(root_owned, &std::fs::metadata(root_owned).unwrap()).unwrap_err();
            assert!(error.contains("belongs to user 0"), "{error}");
        }
    }

    #[test]
    fn a_refused_key_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        cache.store(&[key("a"), key("b")]);
        cache.forget("a");
        assert_eq!(cache.load().keys.into_keys().collect::<Vec<_>>(), ["b_pk"]);
    }

    #[test]
    fn the_key_list_of_a_tag_is_served_while_fresh_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let fresh_for = Duration::from_secs(300);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cache.update(&Cached::default(), ("ssh-auth", "me"), &ids(&["b_pk", "a_pk"]), &[key("a"), key("b")], fresh_for);
        let cached = cache.load();
        assert_eq!(cached.listing("ssh-auth", "me", fresh_for), Some(vec![key("b"), key("a")]), "in the KMS's order");
        assert_eq!(cached.listing("other-tag", "me", fresh_for), None);
        assert_eq!(cached.listing("ssh-auth", "me", Duration::ZERO), None, "not fresh");
        assert_eq!(cached.listing("ssh-auth", "another client", fresh_for), None, "given to another identity");
        // A key list naming a key the cache does not hold is not served.
        cache.forget("a");
        assert_eq!(
            cache.load().listing("ssh-auth", "me", fresh_for),
            Some(vec![key("b")]),
            "forgotten from the list too"
        );
        let mut content = cache.read();
        content.listings.get_mut("ssh-auth").unwrap().public_ids.push("missing_pk".into());
        cache.write(&content).unwrap();
        assert_eq!(cache.load().listing("ssh-auth", "me", fresh_for), None);
        // Nor one dated in the future, nor an empty one.
        let mut content = cache.read();
        content.listings.insert(
            "later".into(),
            Listing { public_ids: ids(&["b_pk"]), listed_at: now() + 60, identity: "me".into() },
        );
        content
            .listings
            .insert("empty".into(), Listing { public_ids: vec![], listed_at: now(), identity: "me".into() });
        cache.write(&content).unwrap();
        assert_eq!(cache.load().listing("later", "me", fresh_for), None);
        assert_eq!(cache.load().listing("empty", "me", fresh_for), None);
    }

    #[test]
    fn keys_the_kms_no_longer_lists_are_dropped_and_an_unchanged_list_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let fresh_for = Duration::from_secs(300);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cache.update(&Cached::default(), ("t", "me"), &ids(&["a_pk", "b_pk"]), &[key("a"), key("b")], fresh_for);
        cache.update(&Cached::default(), ("u", "me"), &ids(&["c_pk"]), &[key("c")], fresh_for);
        let inode = || std::fs::metadata(cache.file()).unwrap().ino();
        let written = inode();
        cache.update(&cache.load(), ("t", "me"), &ids(&["a_pk", "b_pk"]), &[], fresh_for);
        assert_eq!(inode(), written, "nothing new: not written");
        cache.update(&cache.load(), ("t", "me"), &ids(&["a_pk"]), &[], fresh_for);
        let cached = cache.load();
        let mut kept: Vec<_> = cached.keys.keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, ["a_pk", "c_pk"], "b is no longer listed: dropped; c, of another tag, kept");
        assert_eq!(cached.listing("t", "me", fresh_for), Some(vec![key("a")]));
        // An old list is written again when confirmed, so that it stays fresh while in use.
        let mut content = cache.read();
        content.listings.get_mut("t").unwrap().listed_at = now() - 200;
        cache.write(&content).unwrap();
        let written = inode();
        cache.update(&cache.load(), ("t", "me"), &ids(&["a_pk"]), &[], fresh_for);
        assert_ne!(inode(), written);
        assert!(cache.read().listings["t"].listed_at >= now() - 1);
    }

    #[test]
    fn zero_max_age_turns_the_cache_off() {
        assert!(KeyCache::new(PathBuf::from("/x"), "http://k", Duration::ZERO).is_none());
    }
}
