//! What a failure of the KMS is as a PKCS#11 return code: the token is where KMS requests
//! become PKCS#11 answers.

use cryptoki_sys::*;

use crate::error::Error;
use crate::kmip::{KmsError, KmsErrorKind};

/// How a KMS failure reads to a PKCS#11 caller. KMS calls happen in `C_Sign`/`C_SignFinal`
/// only (enumeration failures leave the token empty instead), so every code is one the
/// specification allows for those functions (PKCS#11 3.0, 5.13): the KMS being down, slow,
/// untrusted (TLS), dropping the connection, answering 5xx or garbage is the device failing
/// (`CKR_DEVICE_ERROR`); refused credentials (401/403) are `CKR_USER_NOT_LOGGED_IN`; a request
/// the KMS refuses (422: key gone, not Active, not allowed to sign) is `CKR_FUNCTION_FAILED`.
/// The KMS's own words stay in the message, for the log.
impl From<KmsError> for Error {
    fn from(e: KmsError) -> Self {
        let rv = match e.kind {
            KmsErrorKind::Unreachable
            | KmsErrorKind::Untrusted
            | KmsErrorKind::Tls
            | KmsErrorKind::Timeout
            | KmsErrorKind::Dropped
            | KmsErrorKind::Status(_)
            | KmsErrorKind::Malformed => CKR_DEVICE_ERROR,
            KmsErrorKind::Unauthorized => CKR_USER_NOT_LOGGED_IN,
            KmsErrorKind::Refused => CKR_FUNCTION_FAILED,
        };
        Error::new(rv, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_failures_map_to_codes_c_sign_may_return() {
        let cases = [
            (KmsError::new(KmsErrorKind::Unreachable, "Connection refused"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Timeout, "timeout: global"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Untrusted, "invalid peer certificate: UnknownIssuer"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Tls, "received fatal alert: ProtocolVersion"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Dropped, "Peer disconnected"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Status(500), "Internal server error"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Status(404), "Route not supported"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Malformed, "not JSON"), CKR_DEVICE_ERROR),
            (KmsError::new(KmsErrorKind::Unauthorized, "HTTP 401"), CKR_USER_NOT_LOGGED_IN),
            (KmsError::new(KmsErrorKind::Refused, "Item_Not_Found: Sign: no valid key for id: k"), CKR_FUNCTION_FAILED),
            (KmsError::new(KmsErrorKind::Refused, "Permission_Denied: k is not active"), CKR_FUNCTION_FAILED),
        ];
        for (kms, rv) in cases {
            let text = kms.to_string();
            let e = Error::from(kms);
            assert_eq!(e.rv, rv, "{text}");
            assert_eq!(e.message, text, "the KMS's words are kept for the log");
        }
    }
}
