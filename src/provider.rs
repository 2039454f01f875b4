//! The PKCS#11 API in safe Rust: slot, token, sessions, object search, attributes and
//! signing, with the specification's state rules and return codes. The FFI layer only
//! converts C arguments into calls here.

use std::sync::atomic::{AtomicBool, Ordering};

use cryptoki_sys::*;

// What the C ABI layer (src/ffi) uses besides `Provider`, all through this module: the
// mechanisms offered, the mechanism parameters and attribute answers it converts, the logger.
pub(crate) use crate::platform::logging::dispatch as logger;
pub(crate) use crate::signing::{OFFERED as MECHANISMS, Parameter};
pub(crate) use crate::token::{Attr, Template};

use crate::asn1::Hasher;
pub(crate) use crate::config::Secret;
use crate::config::{KmsConfig, Settings};
use crate::error::{Error, Result};
use crate::kmip::KmsClient;
use crate::lock;
use crate::platform;
use crate::session::{FindOp, Sessions, SignOp};
use crate::signing::{self, Mechanism};
use crate::token::{KeyCache, Kms, ObjectClass, Token};

/// The only slot.
pub(crate) const SLOT_ID: CK_SLOT_ID = 1;

/// Most data one signature accepts, C_Sign or C_SignUpdate parts together: beyond it
/// `CKR_DATA_LEN_RANGE` ends the operation (an SSH signature signs a few hundred bytes).
pub(crate) const MAX_SIGN_DATA: usize = 16 << 20;

/// What a signing call hands back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SignOutput {
    /// Size query (no buffer): the operation goes on.
    Length(usize),
    /// The buffer is too small for this many bytes: the operation goes on.
    TooSmall(usize),
    /// Done: the operation is over.
    Signature(Vec<u8>),
}

pub(crate) struct Provider {
    pub token: Token,
    sessions: Sessions,
    logged_in: AtomicBool,
    /// Held by C_Login from its check to its end, and by the end of a login, so that
    /// concurrent logins and logouts leave `logged_in` and the access token consistent.
    login_lock: std::sync::Mutex<()>,
    /// PIN mode (`pkcs11_use_pin_as_access_token`): the token requires a login, and the PIN
    /// is the KMS access token, kept in memory only until the login ends.
    pin_mode: bool,
    /// The process that initialized; a forked child must initialize again.
    pub pid: u32,
}

fn check_slot(slot: CK_SLOT_ID) -> Result<()> {
    if slot == SLOT_ID { Ok(()) } else { Err(Error::new(CKR_SLOT_ID_INVALID, format!("no slot {slot}"))) }
}

impl Provider {
    /// Reads the configuration and environment. No network: the KMS is first contacted by
    /// the first object search. Without `may_create_threads` (the caller's
    /// `CKF_LIBRARY_CANT_CREATE_OS_THREADS`), all the work happens in the caller's threads.
    pub(crate) fn from_environment(may_create_threads: bool) -> Self {
        let mut warnings = Vec::new();
        let settings = Settings { may_create_threads, ..Settings::from_env(&mut warnings) };
        let mut pin_mode = false;
        let kms = platform::config_paths::find()
            .ok_or_else(|| {
                format!(
                    "no configuration file found (set COSMIAN_KMS_CLI_CONF or CKMS_CONF, or create one of {})",
                    platform::config_paths::default_locations().join(", ")
                )
            })
            .and_then(|path| KmsConfig::load(&path))
            .and_then(|(mut config, config_warnings)| {
                warnings.extend(config_warnings);
                config.fill_from_store(
                    |service, account| platform::credentials::lookup(service, account).map(|s| Secret::new(s.as_str())),
                    &mut warnings,
                );
                // PIN mode stands even when the client is refused: C_Login must then fail.
                pin_mode = config.use_pin_as_access_token;
                warnings.extend(config.cleartext_check()?);
                let client = KmsClient::new(&config, &settings)?;
                let key_cache = platform::config_paths::key_cache_folder()
                    .and_then(|folder| KeyCache::new(folder, &config.server_url, settings.disk_cache_max_age));
                Ok(Kms { config, client, key_cache })
            });
        for w in &warnings {
            tracing::warn!("{w}");
        }
        match &kms {
            Ok(k) => {
                tracing::info!(server = %k.config.server_url, config = %k.config.source.display(), tag = %settings.key_tag, "configured")
            }
            Err(e) => tracing::error!("the token will hold no keys: {e}"),
        }
        if pin_mode {
            tracing::info!("PIN mode: the token requires a login; the PIN is the KMS access token");
        }
        Self { pin_mode, ..Self::new(Token::new(settings, kms)) }
    }

    pub(crate) fn new(token: Token) -> Self {
        Self {
            token,
            sessions: Sessions::default(),
            logged_in: AtomicBool::new(false),
            login_lock: Default::default(),
            pin_mode: false,
            pid: std::process::id(),
        }
    }

    /// The provider's end (C_Finalize, or the library unloaded without it): the token's
    /// background work ends, waited for at most the request timeout when `wait`, else
    /// interrupted at once. No thread of the provider is left.
    pub(crate) fn end_background_work(&self, wait: bool) {
        let patience = if wait { self.token.settings.request_timeout } else { std::time::Duration::ZERO };
        self.token.end_background_work(patience);
    }

    /// Whether the token requires C_Login (PIN mode): `CKF_LOGIN_REQUIRED`.
    pub(crate) fn login_required(&self) -> bool {
        self.pin_mode
    }

    // ---- slot and token ---------------------------------------------------------------

    pub(crate) fn slot_ids(&self) -> Vec<CK_SLOT_ID> {
        vec![SLOT_ID]
    }

    pub(crate) fn check_slot(&self, slot: CK_SLOT_ID) -> Result<()> {
        check_slot(slot)
    }

    /// The token label: `Cosmian KMS <host:port>`.
    pub(crate) fn token_label(&self) -> String {
        let host = self
            .token
            .server_url()
            .map(|u| u.split("://").nth(1).unwrap_or(u).trim_end_matches('/').to_owned())
            .unwrap_or_else(|| "(not configured)".into());
        format!("Cosmian KMS {host}")
    }

    /// Open sessions, and open read-write sessions.
    pub(crate) fn session_counts(&self) -> (usize, usize) {
        self.sessions.count()
    }

    pub(crate) fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        ty: CK_MECHANISM_TYPE,
    ) -> Result<(CK_ULONG, CK_ULONG, CK_FLAGS)> {
        check_slot(slot)?;
        signing::info(ty).ok_or_else(|| Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{ty:X} is not offered")))
    }

    // ---- sessions -----------------------------------------------------------------------

    pub(crate) fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        check_slot(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::new(CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKF_SERIAL_SESSION must be set"));
        }
        Ok(self.sessions.open(slot, flags))
    }

    pub(crate) fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.sessions.close(session)?;
        if self.sessions.count().0 == 0 {
            self.end_login();
        }
        Ok(())
    }

    pub(crate) fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        check_slot(slot)?;
        self.sessions.close_all();
        self.end_login();
        Ok(())
    }

    /// Slot, state and flags of a session.
    pub(crate) fn session_info(&self, session: CK_SESSION_HANDLE) -> Result<(CK_SLOT_ID, CK_STATE, CK_FLAGS)> {
        let s = self.sessions.get(session)?;
        let s = lock(&s);
        let rw = s.flags & CKF_RW_SESSION != 0;
        let state = match (rw, self.logged_in.load(Ordering::SeqCst)) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        Ok((s.slot, state, s.flags))
    }

    /// Logs the user in. Without PIN mode it succeeds without effect (credentials come from
    /// the configuration). In PIN mode the PIN becomes the KMS access token, checked at once
    /// with one Locate: a PIN the KMS refuses is `CKR_PIN_INCORRECT` and is forgotten.
    pub(crate) fn login(&self, session: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        self.sessions.get(session)?;
        match user_type {
            CKU_USER => {}
            CKU_CONTEXT_SPECIFIC => return Ok(()),
            CKU_SO => return Err(Error::new(CKR_USER_TYPE_INVALID, "this token has no security officer")),
            _ => return Err(Error::new(CKR_USER_TYPE_INVALID, format!("user type {user_type}"))),
        }
        let _login = lock(&self.login_lock);
        if self.logged_in.load(Ordering::SeqCst) {
            return Err(Error::new(CKR_USER_ALREADY_LOGGED_IN, "already logged in"));
        }
        if self.pin_mode {
            self.use_pin_as_access_token(pin)?;
        }
        self.logged_in.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// PIN mode: the token checks the PIN and uses it as the access token (see
    /// [`Token::use_pin_as_access_token`]). The caller holds `login_lock`.
    fn use_pin_as_access_token(&self, pin: &[u8]) -> Result<()> {
        let pin = std::str::from_utf8(pin).map(str::trim).unwrap_or("");
        if pin.is_empty() {
            return Err(Error::new(
                CKR_PIN_INCORRECT,
                "PIN mode: the PIN (the KMS access token) is empty or not UTF-8",
            ));
        }
        self.token.use_pin_as_access_token(Secret::new(pin))
    }

    pub(crate) fn logout(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.sessions.get(session)?;
        if !self.logged_in.load(Ordering::SeqCst) {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "not logged in"));
        }
        self.end_login();
        Ok(())
    }

    /// The login ends (C_Logout, or the last session closed); in PIN mode the PIN is dropped.
    fn end_login(&self) {
        let _login = lock(&self.login_lock);
        self.logged_in.store(false, Ordering::SeqCst);
        if self.pin_mode {
            self.token.forget_access_token();
        }
    }

    /// PIN mode before C_Login: the KMS would refuse every request, so the token shows no
    /// object and signs nothing (OpenSSH then asks for the PIN and searches again).
    fn needs_login(&self) -> bool {
        self.pin_mode && !self.logged_in.load(Ordering::SeqCst)
    }

    // ---- objects ------------------------------------------------------------------------

    pub(crate) fn find_init(&self, session: CK_SESSION_HANDLE, template: &Template) -> Result<()> {
        let s = self.sessions.get(session)?;
        if lock(&s).find.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE, "a search is already active"));
        }
        // The search may load the key list over the network: no session lock held meanwhile.
        let handles = if self.needs_login() { Vec::new() } else { self.token.find(template) };
        let mut s = lock(&s);
        if s.find.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE, "a search is already active"));
        }
        s.find = Some(FindOp { handles, next: 0 });
        Ok(())
    }

    pub(crate) fn find_next(&self, session: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let s = self.sessions.get(session)?;
        let mut s = lock(&s);
        let op = s.find.as_mut().ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no active search"))?;
        let end = op.handles.len().min(op.next.saturating_add(max));
        let out = op.handles[op.next..end].to_vec();
        op.next = end;
        Ok(out)
    }

    pub(crate) fn find_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        let s = self.sessions.get(session)?;
        let mut s = lock(&s);
        s.find.take().map(drop).ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no active search"))
    }

    /// The values of `types` on an object, one answer per type.
    pub(crate) fn attributes(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Attr>> {
        self.sessions.get(session)?;
        let (key, class) = self.token.object(object)?;
        Ok(types.iter().map(|t| key.attribute(class, *t)).collect())
    }

    // ---- signing ------------------------------------------------------------------------

    pub(crate) fn sign_init(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        parameter: Parameter,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let s = self.sessions.get(session)?;
        let mut s = lock(&s);
        if s.sign.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE, "a signature is already active"));
        }
        if self.needs_login() {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "PIN mode: log in first"));
        }
        let mechanism = Mechanism::resolve(mechanism, parameter)?;
        let (key, class) = self.token.object(key).map_err(|e| Error::new(CKR_KEY_HANDLE_INVALID, e.message))?;
        if class != ObjectClass::PrivateKey {
            return Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED, "only private keys sign"));
        }
        if !mechanism.fits(&key.public_key) {
            return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, format!("{mechanism:?} does not fit this key")));
        }
        s.sign = Some(SignOp { key, mechanism, hasher: None, total: 0 });
        Ok(())
    }

    /// Single-part signature.
    pub(crate) fn sign(&self, session: CK_SESSION_HANDLE, data: &[u8], capacity: Option<usize>) -> Result<SignOutput> {
        self.finish_signature(session, capacity, |op| {
            if op.hasher.is_some() {
                return Err(Error::new(CKR_OPERATION_ACTIVE, "C_Sign after C_SignUpdate: finish with C_SignFinal"));
            }
            if data.len() > MAX_SIGN_DATA {
                return Err(Error::new(CKR_DATA_LEN_RANGE, format!("at most {MAX_SIGN_DATA} bytes are signed")));
            }
            Ok((data.to_vec(), false))
        })
    }

    pub(crate) fn sign_update(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        let s = self.sessions.get(session)?;
        let mut s = lock(&s);
        let op = s.sign.as_mut().ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no active signature"))?;
        let Some(hash) = op.mechanism.hash() else {
            s.sign = None;
            return Err(Error::new(CKR_MECHANISM_INVALID, "this mechanism signs in one part only (C_Sign)"));
        };
        op.total = op.total.saturating_add(data.len());
        if op.total > MAX_SIGN_DATA {
            s.sign = None;
            return Err(Error::new(CKR_DATA_LEN_RANGE, format!("at most {MAX_SIGN_DATA} bytes are signed")));
        }
        op.hasher.get_or_insert_with(|| Hasher::new(hash)).update(data);
        Ok(())
    }

    pub(crate) fn sign_final(&self, session: CK_SESSION_HANDLE, capacity: Option<usize>) -> Result<SignOutput> {
        self.finish_signature(session, capacity, |op| match (op.hasher.clone(), op.mechanism.hash()) {
            (Some(h), _) => Ok((h.finish(), true)),
            // C_SignFinal straight after C_SignInit signs the empty message.
            (None, Some(_)) => Ok((Vec::new(), false)),
            (None, None) => Err(Error::new(CKR_MECHANISM_INVALID, "this mechanism signs in one part only (C_Sign)")),
        })
    }

    /// The shared end of C_Sign and C_SignFinal: size query, short buffer, KMS round trip.
    /// `input` gives the bytes to sign and whether they are already hashed.
    fn finish_signature(
        &self,
        session: CK_SESSION_HANDLE,
        capacity: Option<usize>,
        input: impl FnOnce(&SignOp) -> Result<(Vec<u8>, bool)>,
    ) -> Result<SignOutput> {
        let s = self.sessions.get(session)?;
        let mut s = lock(&s);
        let op = s.sign.as_ref().ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no active signature"))?;
        let len = op.key.public_key.signature_len();
        match capacity {
            None => return Ok(SignOutput::Length(len)),
            Some(c) if c < len => return Ok(SignOutput::TooSmall(len)),
            Some(_) => {}
        }
        // From here on the operation ends, whatever happens.
        let Some(op) = s.sign.take() else {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED, "no active signature"));
        };
        let (bytes, prehashed) = input(&op)?;
        let request = signing::request(op.mechanism, &bytes, prehashed)?;
        // Only this session's lock is held during the KMS call.
        let signature = self.token.sign(&op.key, &request)?;
        signing::finish(op.mechanism, &op.key.public_key, signature).map(SignOutput::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::objects::tests::{p256_pair, rsa_pair};

    fn provider() -> Provider {
        Provider::new(Token::with_keys(vec![p256_pair(), rsa_pair()]))
    }

    #[test]
    fn sessions_need_the_serial_flag_and_a_valid_slot() {
        let p = provider();
        assert_eq!(p.open_session(SLOT_ID, 0).unwrap_err().rv, CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        assert_eq!(p.open_session(7, CKF_SERIAL_SESSION).unwrap_err().rv, CKR_SLOT_ID_INVALID);
        let h = p.open_session(SLOT_ID, CKF_SERIAL_SESSION | CKF_RW_SESSION).unwrap();
        assert_eq!(p.session_info(h).unwrap().1, CKS_RW_PUBLIC_SESSION);
        assert_eq!(p.session_counts(), (1, 1));
        p.close_session(h).unwrap();
        assert_eq!(p.close_session(h).unwrap_err().rv, CKR_SESSION_HANDLE_INVALID);
    }

    #[test]
    fn login_is_accepted_without_effect() {
        let p = provider();
        let h = p.open_session(SLOT_ID, CKF_SERIAL_SESSION).unwrap();
        assert_eq!(p.logout(h).unwrap_err().rv, CKR_USER_NOT_LOGGED_IN);
        p.login(h, CKU_USER, b"").unwrap();
        assert_eq!(p.session_info(h).unwrap().1, CKS_RO_USER_FUNCTIONS);
        assert_eq!(p.login(h, CKU_USER, b"").unwrap_err().rv, CKR_USER_ALREADY_LOGGED_IN);
        assert_eq!(p.login(h, CKU_SO, b"").unwrap_err().rv, CKR_USER_TYPE_INVALID);
        p.logout(h).unwrap();
    }

    #[test]
    fn pin_mode_shows_nothing_before_a_login_the_kms_accepts() {
        let p = Provider { pin_mode: true, ..provider() };
        assert!(p.login_required() && !provider().login_required());
        let h = p.open_session(SLOT_ID, CKF_SERIAL_SESSION).unwrap();
        p.find_init(h, &Template::default()).unwrap();
        assert!(p.find_next(h, 10).unwrap().is_empty());
        p.find_final(h).unwrap();
        assert_eq!(p.sign_init(h, CKM_ECDSA, Parameter::None, 1).unwrap_err().rv, CKR_USER_NOT_LOGGED_IN);
        assert_eq!(p.login(h, CKU_USER, b" \n").unwrap_err().rv, CKR_PIN_INCORRECT);
        // No KMS to check the PIN against: not logged in.
        assert_eq!(p.login(h, CKU_USER, b"s3cr3t").unwrap_err().rv, CKR_DEVICE_ERROR);
        assert_eq!(p.session_info(h).unwrap().1, CKS_RO_PUBLIC_SESSION);
        assert_eq!(p.logout(h).unwrap_err().rv, CKR_USER_NOT_LOGGED_IN);
    }

    #[test]
    fn search_state_machine() {
        let p = provider();
        let h = p.open_session(SLOT_ID, CKF_SERIAL_SESSION).unwrap();
        assert_eq!(p.find_next(h, 1).unwrap_err().rv, CKR_OPERATION_NOT_INITIALIZED);
        p.find_init(h, &Template::class(CKO_PUBLIC_KEY)).unwrap();
        assert_eq!(p.find_init(h, &Template::default()).unwrap_err().rv, CKR_OPERATION_ACTIVE);
        let mut seen = Vec::new();
        loop {
            let got = p.find_next(h, 1).unwrap();
            if got.is_empty() {
                break;
            }
            seen.extend(got);
        }
        assert_eq!(seen.len(), 2);
        p.find_final(h).unwrap();
        assert_eq!(p.find_final(h).unwrap_err().rv, CKR_OPERATION_NOT_INITIALIZED);
        p.find_init(h, &Template::class(CKO_PRIVATE_KEY).and(CKA_ID, b"k1_pk")).unwrap();
        let private = p.find_next(h, 10).unwrap();
        assert_eq!(private.len(), 1);
        let attrs = p.attributes(h, private[0], &[CKA_ID, CKA_VALUE, CKA_MODULUS]).unwrap();
        assert_eq!(attrs, [Attr::Value(b"k1".to_vec()), Attr::Sensitive, Attr::Invalid]);
        assert_eq!(p.attributes(h, 9999, &[CKA_ID]).unwrap_err().rv, CKR_OBJECT_HANDLE_INVALID);
    }

    #[test]
    fn sign_state_machine_without_network() {
        let p = provider();
        let h = p.open_session(SLOT_ID, CKF_SERIAL_SESSION).unwrap();
        p.find_init(h, &Template::class(CKO_PRIVATE_KEY).and(CKA_ID, b"k1")).unwrap();
        let ec = p.find_next(h, 1).unwrap()[0];
        p.find_final(h).unwrap();
        p.find_init(h, &Template::class(CKO_PUBLIC_KEY).and(CKA_ID, b"k1")).unwrap();
        let ec_pub = p.find_next(h, 1).unwrap()[0];
        p.find_final(h).unwrap();

        assert_eq!(p.sign(h, b"x", None).unwrap_err().rv, CKR_OPERATION_NOT_INITIALIZED);
        assert_eq!(p.sign_init(h, CKM_RSA_PKCS, Parameter::None, ec).unwrap_err().rv, CKR_KEY_TYPE_INCONSISTENT);
        assert_eq!(p.sign_init(h, CKM_ECDSA, Parameter::None, ec_pub).unwrap_err().rv, CKR_KEY_FUNCTION_NOT_PERMITTED);
        assert_eq!(p.sign_init(h, CKM_ECDSA, Parameter::None, 4242).unwrap_err().rv, CKR_KEY_HANDLE_INVALID);
        assert_eq!(p.sign_init(h, CKM_AES_CBC, Parameter::None, ec).unwrap_err().rv, CKR_MECHANISM_INVALID);
        p.sign_init(h, CKM_ECDSA, Parameter::None, ec).unwrap();
        assert_eq!(p.sign_init(h, CKM_ECDSA, Parameter::None, ec).unwrap_err().rv, CKR_OPERATION_ACTIVE);
        // Size query and short buffer keep the operation.
        assert_eq!(p.sign(h, &[0; 32], None).unwrap(), SignOutput::Length(64));
        assert_eq!(p.sign(h, &[0; 32], Some(10)).unwrap(), SignOutput::TooSmall(64));
        // Bad input ends it, before any network.
        assert_eq!(p.sign(h, &[0; 7], Some(64)).unwrap_err().rv, CKR_DATA_LEN_RANGE);
        assert_eq!(p.sign(h, &[0; 32], Some(64)).unwrap_err().rv, CKR_OPERATION_NOT_INITIALIZED);
        // Single-part mechanisms refuse C_SignUpdate.
        p.sign_init(h, CKM_ECDSA, Parameter::None, ec).unwrap();
        assert_eq!(p.sign_update(h, b"x").unwrap_err().rv, CKR_MECHANISM_INVALID);
        assert_eq!(p.sign_final(h, Some(64)).unwrap_err().rv, CKR_OPERATION_NOT_INITIALIZED);
        // Without a KMS, a real signature fails cleanly.
        p.sign_init(h, CKM_ECDSA_SHA256, Parameter::None, ec).unwrap();
        p.sign_update(h, b"part").unwrap();
        assert_eq!(p.sign(h, b"x", Some(64)).unwrap_err().rv, CKR_OPERATION_ACTIVE);
        p.sign_init(h, CKM_ECDSA_SHA256, Parameter::None, ec).unwrap();
        p.sign_update(h, b"part").unwrap();
        assert_eq!(p.sign_final(h, Some(64)).unwrap_err().rv, CKR_DEVICE_ERROR);
    }
}
