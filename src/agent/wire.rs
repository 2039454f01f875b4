//! The SSH wire encoding the agent speaks (RFC 4251 §5 as used by draft-ietf-sshm-ssh-agent):
//! a bounded reader of `uint32`/`string`/`mpint`, a writer, and the public key and signature
//! blobs of the key types the provider serves. Hand-written: the agent needs these few
//! encodings and nothing else of an SSH library (ssh-key would bring its own key types, PEM and
//! cipher code for the same ~150 lines).

use crate::asn1::{Curve, PublicKey};

/// Reads SSH wire values from a byte slice; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!("{n} bytes announced where {} remain", self.rest.len()));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `string`: a length, then that many bytes.
    pub(crate) fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A `string` that must be UTF-8 (names).
    pub(crate) fn text(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.string()?).map_err(|_| "a name is not UTF-8".to_owned())
    }

    /// An `mpint`, as the unsigned big-endian magnitude without leading zeros.
    pub(crate) fn mpint(&mut self) -> Result<&'a [u8], String> {
        let bytes = self.string()?;
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return Err("negative mpint".into());
        }
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        Ok(&bytes[start..])
    }

    /// Fails when bytes are left over: a message carries exactly its fields.
    pub(crate) fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after the message", self.rest.len()))
        }
    }
}

/// Builds SSH wire values.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn string(&mut self, v: &[u8]) -> &mut Self {
        // Every value this agent writes is far below 4 GiB (a message is at most 256 KiB).
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.bytes.extend_from_slice(v);
        self
    }

    /// An `mpint` of an unsigned big-endian magnitude: leading zeros dropped, a zero byte added
    /// when the top bit is set.
    pub(crate) fn mpint(&mut self, magnitude: &[u8]) -> &mut Self {
        let start = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
        let magnitude = &magnitude[start..];
        if magnitude.first().is_some_and(|b| b & 0x80 != 0) {
            let mut padded = Vec::with_capacity(magnitude.len() + 1);
            padded.push(0);
            padded.extend_from_slice(magnitude);
            self.string(&padded)
        } else {
            self.string(magnitude)
        }
    }
}

/// The SSH names of a curve: the key type and the curve identifier.
fn curve_names(curve: Curve) -> (&'static str, &'static str) {
    match curve {
        Curve::P256 => ("ecdsa-sha2-nistp256", "nistp256"),
        Curve::P384 => ("ecdsa-sha2-nistp384", "nistp384"),
        Curve::P521 => ("ecdsa-sha2-nistp521", "nistp521"),
    }
}

/// The SSH key type name of a key (`ssh-rsa` for RSA, whatever the signature algorithm).
pub(crate) fn key_type(key: &PublicKey) -> &'static str {
    match key {
        PublicKey::Rsa { .. } => "ssh-rsa",
        PublicKey::Ec { curve, .. } => curve_names(*curve).0,
        PublicKey::Ed25519 { .. } => "ssh-ed25519",
    }
}

/// The public key blob (`ssh-keygen -D`, `authorized_keys`, what the agent lists).
pub(crate) fn public_key_blob(key: &PublicKey) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(key_type(key).as_bytes());
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            w.mpint(exponent).mpint(modulus);
        }
        PublicKey::Ec { curve, point } => {
            w.string(curve_names(*curve).1.as_bytes()).string(point);
        }
        PublicKey::Ed25519 { key } => {
            w.string(key);
        }
    }
    w.bytes
}

/// The plain public key blob a certificate blob certifies, read from the certificate's own
/// fields (PROTOCOL.certkeys: type, nonce, then the key's public fields).
pub(crate) fn certified_key_blob(certificate: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = Reader::new(certificate);
    let cert_type = r.text()?;
    let plain = cert_type
        .strip_suffix("-cert-v01@openssh.com")
        .ok_or_else(|| format!("{cert_type} is not an OpenSSH certificate type"))?;
    r.string()?; // nonce
    let mut w = Writer::default();
    w.string(plain.as_bytes());
    match plain {
        "ssh-rsa" => {
            let e = r.mpint()?;
            let n = r.mpint()?;
            w.mpint(e).mpint(n);
        }
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            let curve = r.string()?;
            let point = r.string()?;
            w.string(curve).string(point);
        }
        "ssh-ed25519" => {
            let key = r.string()?;
            w.string(key);
        }
        other => return Err(format!("certificates of {other} keys are not served")),
    }
    Ok(w.bytes)
}

/// The RSA signature algorithms, chosen by the sign request's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RsaAlgorithm {
    /// `ssh-rsa`: SHA-1.
    Sha1,
    /// `rsa-sha2-256` (flag `SSH_AGENT_RSA_SHA2_256`).
    Sha256,
    /// `rsa-sha2-512` (flag `SSH_AGENT_RSA_SHA2_512`).
    Sha512,
}

impl RsaAlgorithm {
    pub(crate) const FLAG_SHA2_256: u32 = 0x02;
    pub(crate) const FLAG_SHA2_512: u32 = 0x04;

    /// What OpenSSH's agent picks: SHA-512 over SHA-256 when both flags are set.
    pub(crate) fn from_flags(flags: u32) -> Self {
        if flags & Self::FLAG_SHA2_512 != 0 {
            RsaAlgorithm::Sha512
        } else if flags & Self::FLAG_SHA2_256 != 0 {
            RsaAlgorithm::Sha256
        } else {
            RsaAlgorithm::Sha1
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            RsaAlgorithm::Sha1 => "ssh-rsa",
            RsaAlgorithm::Sha256 => "rsa-sha2-256",
            RsaAlgorithm::Sha512 => "rsa-sha2-512",
        }
    }
}

/// The SSH signature blob of a raw signature as the PKCS#11 layer returns it: `r||s` for ECDSA
/// (each half one field length), 64 bytes for Ed25519, the RSA signature as is.
pub(crate) fn signature_blob(key: &PublicKey, rsa: RsaAlgorithm, raw: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    match key {
        PublicKey::Rsa { .. } => {
            w.string(rsa.name().as_bytes()).string(raw);
        }
        PublicKey::Ec { curve, .. } => {
            let (r, s) = raw.split_at(raw.len() / 2);
            let mut inner = Writer::default();
            inner.mpint(r).mpint(s);
            w.string(curve_names(*curve).0.as_bytes()).string(&inner.bytes);
        }
        PublicKey::Ed25519 { .. } => {
            w.string(b"ssh-ed25519").string(raw);
        }
    }
    w.bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpint_round_trips_with_sign_padding() {
        let mut w = Writer::default();
        w.mpint(&[0, 0, 0x80, 1]).mpint(&[0x7f]).mpint(&[]);
        assert_eq!(w.bytes, [0, 0, 0, 3, 0, 0x80, 1, 0, 0, 0, 1, 0x7f, 0, 0, 0, 0]);
        let mut r = Reader::new(&w.bytes);
        assert_eq!(r.mpint().unwrap(), [0x80, 1]);
        assert_eq!(r.mpint().unwrap(), [0x7f]);
        assert_eq!(r.mpint().unwrap(), [] as [u8; 0]);
        r.finish().unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2]);
        assert!(r.string().is_err());
        assert!(Reader::new(&[0, 0]).u32().is_err());
        assert!(Reader::new(&[0, 0, 0, 1, 0x80]).mpint().is_err());
        assert!(Reader::new(&[1]).finish().is_err());
    }

    #[test]
    fn ed25519_blob_and_its_certificate() {
        let key = PublicKey::Ed25519 { key: [7; 32] };
        let blob = public_key_blob(&key);
        assert_eq!(&blob[..15], b"\0\0\0\x0bssh-ed25519");
        let mut cert = Writer::default();
        cert.string(b"ssh-ed25519-cert-v01@openssh.com").string(&[1; 32]).string(&[7; 32]).u32(1);
        assert_eq!(certified_key_blob(&cert.bytes).unwrap(), blob);
        assert!(certified_key_blob(&blob).is_err());
    }

    #[test]
    fn ecdsa_signature_is_two_mpints() {
        let key = PublicKey::Ec { curve: Curve::P256, point: vec![4; 65] };
        let mut raw = vec![0x80; 32];
        raw.extend([0; 31]);
        raw.push(5);
        let blob = signature_blob(&key, RsaAlgorithm::Sha1, &raw);
        let mut r = Reader::new(&blob);
        assert_eq!(r.text().unwrap(), "ecdsa-sha2-nistp256");
        let mut inner = Reader::new(r.string().unwrap());
        assert_eq!(inner.mpint().unwrap(), &[0x80; 32]);
        assert_eq!(inner.mpint().unwrap(), &[5]);
        inner.finish().unwrap();
    }

    #[test]
    fn rsa_flags_pick_the_algorithm() {
        assert_eq!(RsaAlgorithm::from_flags(0), RsaAlgorithm::Sha1);
        assert_eq!(RsaAlgorithm::from_flags(2), RsaAlgorithm::Sha256);
        assert_eq!(RsaAlgorithm::from_flags(6), RsaAlgorithm::Sha512);
    }
}
