//! The ssh-agent messages (draft-ietf-sshm-ssh-agent, OpenSSH's PROTOCOL.agent): a request
//! read from one framed message, and the answers encoded. Pure: no I/O, no keys (fuzzed by
//! `fuzz/fuzz_targets/agent_message.rs`).

use zeroize::Zeroizing;

use super::wire::{Reader, Writer};

/// The largest message accepted, as OpenSSH's agent (`AGENT_MAX_LEN`): a longer one closes the
/// connection.
pub(crate) const MAX_MESSAGE_LEN: usize = 256 * 1024;

const FAILURE: u8 = 5;
const SUCCESS: u8 = 6;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const ADD_IDENTITY: u8 = 17;
const REMOVE_IDENTITY: u8 = 18;
const REMOVE_ALL_IDENTITIES: u8 = 19;
const ADD_SMARTCARD_KEY: u8 = 20;
const REMOVE_SMARTCARD_KEY: u8 = 21;
const LOCK: u8 = 22;
const UNLOCK: u8 = 23;
const ADD_ID_CONSTRAINED: u8 = 25;
const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
const EXTENSION: u8 = 27;
const EXTENSION_RESPONSE: u8 = 29;
/// The protocol 1 "remove all" that OpenSSH's `ssh-add -D` still sends first.
const REMOVE_ALL_RSA_IDENTITIES: u8 = 9;

/// One request from a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// `ssh-add -l`, and every ssh before it signs.
    Identities,
    Sign {
        key_blob: &'a [u8],
        data: &'a [u8],
        flags: u32,
    },
    /// Add, remove, smartcard add/remove: this agent serves the KMS's keys only.
    ChangeIdentities,
    Lock(Zeroizing<Vec<u8>>),
    Unlock(Zeroizing<Vec<u8>>),
    /// An extension, by name; its contents are not read by this agent.
    Extension(&'a str),
    /// A message type this agent does not know.
    Unknown(u8),
}

/// Reads one message body (the bytes after the length). Malformed contents are an error: the
/// caller closes that client.
pub(crate) fn parse(body: &[u8]) -> Result<Request<'_>, String> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    let request = match kind {
        REQUEST_IDENTITIES => Request::Identities,
        SIGN_REQUEST => {
            let key_blob = r.string()?;
            let data = r.string()?;
            // OpenSSH's clients always send the flags; a missing field is malformed.
            let flags = r.u32()?;
            Request::Sign { key_blob, data, flags }
        }
        ADD_IDENTITY
        | REMOVE_IDENTITY
        | REMOVE_ALL_IDENTITIES
        | ADD_SMARTCARD_KEY
        | REMOVE_SMARTCARD_KEY
        | ADD_ID_CONSTRAINED
        | ADD_SMARTCARD_KEY_CONSTRAINED
        | REMOVE_ALL_RSA_IDENTITIES => {
            return Ok(Request::ChangeIdentities);
        }
        LOCK | UNLOCK => {
            let passphrase = Zeroizing::new(r.string()?.to_vec());
            if kind == LOCK { Request::Lock(passphrase) } else { Request::Unlock(passphrase) }
        }
        EXTENSION => return Ok(Request::Extension(r.text()?)),
        other => return Ok(Request::Unknown(other)),
    };
    r.finish()?;
    Ok(request)
}

/// `SSH_AGENT_SUCCESS` or `SSH_AGENT_FAILURE`.
pub(crate) fn status(success: bool) -> Vec<u8> {
    vec![if success { SUCCESS } else { FAILURE }]
}

/// `SSH2_AGENT_IDENTITIES_ANSWER`: (key blob, comment) pairs.
pub(crate) fn identities<'a>(keys: impl ExactSizeIterator<Item = (&'a [u8], &'a str)>) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(IDENTITIES_ANSWER).u32(u32::try_from(keys.len()).unwrap_or(0));
    for (blob, comment) in keys {
        w.string(blob).string(comment.as_bytes());
    }
    w.bytes
}

/// `SSH2_AGENT_SIGN_RESPONSE` carrying a signature blob.
pub(crate) fn signature(blob: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(SIGN_RESPONSE).string(blob);
    w.bytes
}

/// The answer to the `query` extension: the extensions this agent implements beyond `query`
/// itself (none).
pub(crate) fn query_answer() -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(EXTENSION_RESPONSE).string(b"query");
    w.bytes
}

/// The framing: a `uint32` length, then the body.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(body);
    w.bytes
}

/// Whether a body is `SSH2_AGENT_IDENTITIES_ANSWER` (for tests and the fuzz target).
#[cfg(test)]
fn read_identities(body: &[u8]) -> Result<Vec<(Vec<u8>, String)>, String> {
    let mut r = Reader::new(body);
    if r.u8()? != IDENTITIES_ANSWER {
        return Err("not an identities answer".into());
    }
    let n = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push((r.string()?.to_vec(), r.text()?.to_owned()));
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_request(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(SIGN_REQUEST).string(blob).string(data).u32(flags);
        w.bytes
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse(&[11]).unwrap(), Request::Identities);
        let sign = sign_request(b"blob", b"data", 4);
        assert_eq!(parse(&sign).unwrap(), Request::Sign { key_blob: b"blob", data: b"data", flags: 4 });
        for kind in [9, 17, 18, 19, 20, 21, 25, 26] {
            assert_eq!(parse(&[kind, 1, 2, 3]).unwrap(), Request::ChangeIdentities);
        }
        assert_eq!(parse(&[22, 0, 0, 0, 1, b'x']).unwrap(), Request::Lock(Zeroizing::new(b"x".to_vec())));
        assert_eq!(parse(&[27, 0, 0, 0, 5, b'q', b'u', b'e', b'r', b'y']).unwrap(), Request::Extension("query"));
        assert_eq!(parse(&[200]).unwrap(), Request::Unknown(200));
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[11, 0]).is_err());
        let sign = sign_request(b"blob", b"data", 4);
        assert!(parse(&sign[..sign.len() - 1]).is_err());
        assert!(parse(&[22, 0, 0, 0, 9]).is_err());
        assert!(parse(&[27, 0, 0, 0, 1, 0xff]).is_err());
    }

    #[test]
    fn identities_round_trip() {
        let keys = [(&b"k1"[..], "one"), (&b"k2"[..], "two")];
        let body = identities(keys.iter().copied());
        let read = read_identities(&body).unwrap();
        assert_eq!(read, vec![(b"k1".to_vec(), "one".to_owned()), (b"k2".to_vec(), "two".to_owned())]);
        assert_eq!(frame(&[6]), [0, 0, 0, 1, 6]);
    }
}
