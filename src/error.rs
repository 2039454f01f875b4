//! The provider's error: a PKCS#11 return code plus a message for the log. Every failure in
//! the safe core becomes one of these; the FFI layer hands back only the code.

use cryptoki_sys::*;

use crate::kmip::KmsError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub rv: CK_RV,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(rv: CK_RV, message: impl Into<String>) -> Self {
        Self { rv, message: message.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CKR 0x{:X})", self.message, self.rv)
    }
}

/// How a KMS failure reads to a PKCS#11 caller.
impl From<KmsError> for Error {
    fn from(e: KmsError) -> Self {
        let rv = match &e {
            KmsError::Unreachable(_) | KmsError::Timeout(_) | KmsError::Status(..) | KmsError::Malformed(_) => {
                CKR_DEVICE_ERROR
            }
            KmsError::Unauthorized(_) => CKR_USER_NOT_LOGGED_IN,
            KmsError::Refused(m) if m.contains("Permission_Denied") => CKR_KEY_FUNCTION_NOT_PERMITTED,
            KmsError::Refused(m) if m.contains("Not_Found") || m.contains("no valid key") => CKR_KEY_HANDLE_INVALID,
            KmsError::Refused(_) => CKR_FUNCTION_FAILED,
        };
        Error::new(rv, e.to_string())
    }
}
