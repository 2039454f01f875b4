//! Sessions and the operations in progress on them (an object search, a signature). Each
//! session has its own lock, so a signature waiting on the KMS holds up no other session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cryptoki_sys::*;

use crate::asn1::Hasher;
use crate::error::{Error, Result};
use crate::lock;
use crate::signing::Mechanism;
use crate::token::KeyPair;

pub(crate) struct Session {
    pub slot: CK_SLOT_ID,
    pub flags: CK_FLAGS,
    pub find: Option<FindOp>,
    pub sign: Option<SignOp>,
}

/// The results of `C_FindObjectsInit`, handed out by `C_FindObjects`.
pub(crate) struct FindOp {
    pub handles: Vec<CK_OBJECT_HANDLE>,
    pub next: usize,
}

/// A signature started by `C_SignInit`.
pub(crate) struct SignOp {
    pub key: Arc<KeyPair>,
    pub mechanism: Mechanism,
    /// Set once `C_SignUpdate` has been called (hashing mechanisms only).
    pub hasher: Option<Hasher>,
    /// Bytes given to C_SignUpdate so far (at most `MAX_SIGN_DATA`).
    pub total: usize,
}

/// A session, and whether it is read-write (kept outside its lock for C_GetTokenInfo).
type Entry = (bool, Arc<Mutex<Session>>);

/// All open sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<CK_SESSION_HANDLE, Entry>>,
    last: Mutex<CK_SESSION_HANDLE>,
}

impl Sessions {
    pub(crate) fn open(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> CK_SESSION_HANDLE {
        let handle = {
            let mut last = lock(&self.last);
            *last += 1;
            *last
        };
        let session = Session { slot, flags, find: None, sign: None };
        lock(&self.map).insert(handle, (flags & CKF_RW_SESSION != 0, Arc::new(Mutex::new(session))));
        handle
    }

    pub(crate) fn get(&self, handle: CK_SESSION_HANDLE) -> Result<Arc<Mutex<Session>>> {
        lock(&self.map)
            .get(&handle)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| Error::new(CKR_SESSION_HANDLE_INVALID, format!("no session {handle}")))
    }

    pub(crate) fn close(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        lock(&self.map)
            .remove(&handle)
            .map(drop)
            .ok_or_else(|| Error::new(CKR_SESSION_HANDLE_INVALID, format!("no session {handle}")))
    }

    pub(crate) fn close_all(&self) {
        lock(&self.map).clear();
    }

    pub(crate) fn count(&self) -> (usize, usize) {
        let map = lock(&self.map);
        let rw = map.values().filter(|(rw, _)| *rw).count();
        (map.len(), rw)
    }
}
