//! What a failure of the KMS is as a PKCS#11 return code: the token is where KMS requests
//! become PKCS#11 answers.

use cryptoki_sys::*;

use crate::error::Error;
use crate::kmip::KmsError;

/// How a KMS failure reads to a PKCS#11 caller. KMS calls happen in `C_Sign`/`C_SignFinal`
/// only (enumeration failures leave the token empty instead), so every code is one the
/// specification allows for those functions (PKCS#11 3.0, 5.13): the KMS being down, slow,
/// untrusted (TLS), dropping the connection, answering 5xx or garbage is the device failing
/// (`CKR_DEVICE_ERROR`); refused credentials (401/403) are `CKR_USER_NOT_LOGGED_IN`; a request
/// the KMS refuses (422: key gone, not Active, not allowed to sign) is `CKR_FUNCTION_FAILED`.
/// The KMS's own words stay in the message, for the log.
impl From<KmsError> for Error {
    fn from(e: KmsError) -> Self {
        let rv = match &e {
            KmsError::Unreachable(_)
            | KmsError::Untrusted(_)
            | KmsError::Tls(_)
            | KmsError::Timeout(_)
            | KmsError::Dropped(_)
            | KmsError::Status(..)
            | KmsError::Malformed(_) => CKR_DEVICE_ERROR,
            KmsError::Unauthorized(_) => CKR_USER_NOT_LOGGED_IN,
            KmsError::Refused(_) => CKR_FUNCTION_FAILED,
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
            (KmsError::Unreachable("Connection refused".into()), CKR_DEVICE_ERROR),
            (KmsError::Timeout("timeout: global".into()), CKR_DEVICE_ERROR),
            (KmsError::Untrusted("invalid peer certificate: UnknownIssuer".into()), CKR_DEVICE_ERROR),
            (KmsError::Tls("received fatal alert: ProtocolVersion".into()), CKR_DEVICE_ERROR),
            (KmsError::Dropped("Peer disconnected".into()), CKR_DEVICE_ERROR),
            (KmsError::Status(500, "Internal server error".into()), CKR_DEVICE_ERROR),
            (KmsError::Status(404, "Route not supported".into()), CKR_DEVICE_ERROR),
            (KmsError::Malformed("not JSON".into()), CKR_DEVICE_ERROR),
            (KmsError::Unauthorized("HTTP 401".into()), CKR_USER_NOT_LOGGED_IN),
            (KmsError::Refused("Item_Not_Found: Sign: no valid key for id: k".into()), CKR_FUNCTION_FAILED),
            (KmsError::Refused("Permission_Denied: k is not active".into()), CKR_FUNCTION_FAILED),
        ];
        for (kms, rv) in cases {
            let text = kms.to_string();
            let e = Error::from(kms);
            assert_eq!(e.rv, rv, "{text}");
            assert_eq!(e.message, text, "the KMS's words are kept for the log");
        }
    }
}
