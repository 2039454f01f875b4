//! The provider's error: a PKCS#11 return code plus a message for the log. Every failure in
//! the safe core becomes one of these; the FFI layer hands back only the code.

use cryptoki_sys::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub rv: CK_RV,
    pub message: String,
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(rv: CK_RV, message: impl Into<String>) -> Self {
        Self { rv, message: message.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CKR 0x{:X})", self.message, self.rv)
    }
}
