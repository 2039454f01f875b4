//! The PKCS#11 objects the token shows: a public and a private key object per KMS key pair,
//! their attributes exactly as OpenSSH and other clients read them, and template matching.

use cryptoki_sys::*;

use crate::asn1::{self, PublicKey};

/// A key pair of the KMS, as the token knows it. Only public facts: the private key stays in
/// the KMS and is named by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyPair {
    pub private_id: String,
    pub public_id: String,
    /// `CKA_LABEL`: what ssh shows as the key's comment.
    pub label: String,
    pub public_key: PublicKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ObjectClass {
    PublicKey,
    PrivateKey,
}

/// The answer for one attribute of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    Value(Vec<u8>),
    /// The object has it, but will not say (private key material).
    Sensitive,
    /// The object has no such attribute.
    Invalid,
}

fn ulong(v: CK_ULONG) -> Attr {
    Attr::Value(v.to_ne_bytes().to_vec())
}

fn boolean(v: bool) -> Attr {
    Attr::Value(vec![if v { CK_TRUE } else { CK_FALSE }])
}

/// The most `CKA_LABEL` bytes the token serves. OpenSSH reads the label into a 256-byte buffer
/// (one byte kept for the NUL) in the same call as `CKA_KEY_TYPE`, and a
/// `CKR_BUFFER_TOO_SMALL` there ends the listing of the slot: that key and every key after it are lost.
pub(crate) const MAX_LABEL_LEN: usize = 255;

/// Attributes of private keys that are secret material.
const SENSITIVE: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT];

impl KeyPair {
    /// `CKA_ID`, the same on both objects of the pair: the private key's id.
    pub(crate) fn ck_id(&self) -> &[u8] {
        self.private_id.as_bytes()
    }

    /// `CKA_LABEL` as served: [`KeyPair::label`] with control characters made spaces (it
    /// ends up as the comment of an `authorized_keys` line), cut to [`MAX_LABEL_LEN`] bytes on
    /// a character boundary, marked with `…`, keeping its ` (uid)` end.
    pub(crate) fn ck_label(&self) -> String {
        let label: String = self.label.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if label.len() <= MAX_LABEL_LEN {
            return label;
        }
        let uid = format!(" ({})", self.private_id);
        let (head, tail) = match label.strip_suffix(&uid) {
            Some(head) if uid.len() < MAX_LABEL_LEN / 2 => (head, uid.as_str()),
            _ => (label.as_str(), ""),
        };
        let room = MAX_LABEL_LEN - tail.len() - '…'.len_utf8();
        let cut = (0..=room).rev().find(|&i| head.is_char_boundary(i)).unwrap_or(0);
        format!("{}…{tail}", &head[..cut])
    }

    pub(crate) fn key_type(&self) -> CK_KEY_TYPE {
        match self.public_key {
            PublicKey::Rsa { .. } => CKK_RSA,
            PublicKey::Ec { .. } => CKK_EC,
            PublicKey::Ed25519 { .. } => CKK_EC_EDWARDS,
        }
    }

    /// The value of attribute `ty` on the object of class `class`.
    pub(crate) fn attribute(&self, class: ObjectClass, ty: CK_ATTRIBUTE_TYPE) -> Attr {
        let private = class == ObjectClass::PrivateKey;
        match ty {
            CKA_CLASS => ulong(if private { CKO_PRIVATE_KEY } else { CKO_PUBLIC_KEY }),
            CKA_KEY_TYPE => ulong(self.key_type()),
            CKA_ID => Attr::Value(self.ck_id().to_vec()),
            CKA_LABEL => Attr::Value(self.ck_label().into_bytes()),
            CKA_TOKEN => boolean(true),
            // Nothing is hidden behind a login while credentials come from the configuration.
            CKA_PRIVATE => boolean(false),
            CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE | CKA_DERIVE | CKA_LOCAL => boolean(false),
            CKA_KEY_GEN_MECHANISM => ulong(CK_UNAVAILABLE_INFORMATION),
            CKA_START_DATE | CKA_END_DATE | CKA_SUBJECT => Attr::Value(Vec::new()),
            CKA_PUBLIC_KEY_INFO => Attr::Value(self.public_key.to_spki()),
            CKA_MODULUS | CKA_PUBLIC_EXPONENT | CKA_MODULUS_BITS => self.rsa_attribute(ty),
            CKA_EC_PARAMS | CKA_EC_POINT => self.ec_attribute(class, ty),
            // Capabilities.
            CKA_SIGN if private => boolean(true),
            CKA_VERIFY if !private => boolean(true),
            CKA_SIGN_RECOVER | CKA_DECRYPT | CKA_UNWRAP if private => boolean(false),
            CKA_VERIFY_RECOVER | CKA_ENCRYPT | CKA_WRAP | CKA_TRUSTED if !private => boolean(false),
            // Private key protection.
            CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE if private => boolean(true),
            CKA_EXTRACTABLE | CKA_ALWAYS_AUTHENTICATE | CKA_WRAP_WITH_TRUSTED if private => boolean(false),
            t if private && SENSITIVE.contains(&t) => Attr::Sensitive,
            _ => Attr::Invalid,
        }
    }

    fn rsa_attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> Attr {
        let PublicKey::Rsa { modulus, exponent } = &self.public_key else { return Attr::Invalid };
        match ty {
            CKA_MODULUS => Attr::Value(modulus.clone()),
            CKA_PUBLIC_EXPONENT => Attr::Value(exponent.clone()),
            _ => {
                let bits = modulus.first().map_or(0, |top| (modulus.len() * 8) as u32 - top.leading_zeros());
                ulong(bits as CK_ULONG)
            }
        }
    }

    fn ec_attribute(&self, class: ObjectClass, ty: CK_ATTRIBUTE_TYPE) -> Attr {
        let (params, point) = match &self.public_key {
            PublicKey::Ec { curve, point } => (curve.ec_params(), point.as_slice()),
            PublicKey::Ed25519 { key } => (asn1::ed25519_ec_params(), key.as_slice()),
            PublicKey::Rsa { .. } => return Attr::Invalid,
        };
        match ty {
            CKA_EC_PARAMS => Attr::Value(params),
            // A private key object carries the curve, not the point.
            CKA_EC_POINT if class == ObjectClass::PublicKey => Attr::Value(asn1::octet_string(point)),
            _ => Attr::Invalid,
        }
    }

    /// Does the object of class `class` have every attribute of `template` with that value?
    /// A private key is also found by its public key's id (`<uid>_pk`), as older providers
    /// used that as `CKA_ID`.
    pub(crate) fn matches(&self, class: ObjectClass, template: &Template) -> bool {
        template.attributes.iter().all(|(ty, wanted)| {
            if *ty == CKA_ID && class == ObjectClass::PrivateKey && wanted.as_slice() == self.public_id.as_bytes() {
                return true;
            }
            match self.attribute(class, *ty) {
                Attr::Value(v) => v == *wanted || bool_equal(&v, wanted),
                Attr::Sensitive | Attr::Invalid => false,
            }
        })
    }
}

/// A search template (`C_FindObjectsInit`), read once where it enters: the attribute values an
/// object must have, and which of the token's classes it can find.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Template {
    attributes: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    classes: Classes,
}

/// Which objects of the token a [`Template`] can find, by its `CKA_CLASS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Classes {
    /// No `CKA_CLASS`: public and private keys.
    #[default]
    Both,
    Only(ObjectClass),
    /// A class the token never holds (certificates, data...), or a `CKA_CLASS` value that is not
    /// a `CK_OBJECT_CLASS`: nothing.
    Neither,
}

impl Template {
    /// The template of `(type, value)` pairs, values as the caller gave them.
    pub(crate) fn new(attributes: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>) -> Self {
        let classes = match attributes.iter().find(|(ty, _)| *ty == CKA_CLASS) {
            None => Classes::Both,
            Some((_, value)) => match <[u8; 8]>::try_from(value.as_slice()).map(CK_OBJECT_CLASS::from_ne_bytes) {
                Ok(CKO_PUBLIC_KEY) => Classes::Only(ObjectClass::PublicKey),
                Ok(CKO_PRIVATE_KEY) => Classes::Only(ObjectClass::PrivateKey),
                _ => Classes::Neither,
            },
        };
        Template { attributes, classes }
    }

    /// Every object of `class`.
    pub(crate) fn class(class: CK_OBJECT_CLASS) -> Self {
        Template::new(vec![(CKA_CLASS, class.to_ne_bytes().to_vec())])
    }

    /// This template, and `ty` equal to `value`.
    #[cfg(test)]
    pub(crate) fn and(mut self, ty: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Self {
        self.attributes.push((ty, value.to_vec()));
        Template::new(self.attributes)
    }

    pub(crate) fn classes(&self) -> Classes {
        self.classes
    }
}

/// CK_BBOOL templates: any non-zero byte means true.
fn bool_equal(have: &[u8], wanted: &[u8]) -> bool {
    have.len() == 1 && wanted.len() == 1 && (have[0] != 0) == (wanted[0] != 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::asn1::Curve;

    pub(crate) fn p256_pair() -> KeyPair {
        let mut point = vec![4u8];
        point.extend([1u8; 64]);
        KeyPair {
            private_id: "k1".into(),
            public_id: "k1_pk".into(),
            label: "laptop (k1)".into(),
            public_key: PublicKey::Ec { curve: Curve::P256, point },
        }
    }

    pub(crate) fn rsa_pair() -> KeyPair {
        let mut modulus = vec![0xC0u8];
        modulus.extend([7u8; 255]);
        KeyPair {
            private_id: "r1".into(),
            public_id: "r1_pk".into(),
            label: "r1".into(),
            public_key: PublicKey::Rsa { modulus, exponent: vec![1, 0, 1] },
        }
    }

    fn value(a: Attr) -> Vec<u8> {
        match a {
            Attr::Value(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ec_public_key_attributes_as_openssh_reads_them() {
        let k = p256_pair();
        let point = value(k.attribute(ObjectClass::PublicKey, CKA_EC_POINT));
        assert_eq!(point[..3], [0x04, 0x41, 0x04]);
        assert_eq!(value(k.attribute(ObjectClass::PublicKey, CKA_EC_PARAMS)), Curve::P256.ec_params());
        assert_eq!(value(k.attribute(ObjectClass::PublicKey, CKA_KEY_TYPE)), CKK_EC.to_ne_bytes());
        assert_eq!(value(k.attribute(ObjectClass::PublicKey, CKA_ID)), b"k1");
        assert_eq!(value(k.attribute(ObjectClass::PrivateKey, CKA_ID)), b"k1");
        assert_eq!(k.attribute(ObjectClass::PublicKey, CKA_MODULUS), Attr::Invalid);
    }

    #[test]
    fn spki_round_trips_through_the_parser() {
        for k in [p256_pair(), rsa_pair()] {
            let spki = value(k.attribute(ObjectClass::PublicKey, CKA_PUBLIC_KEY_INFO));
            assert_eq!(PublicKey::from_spki(&spki).unwrap(), k.public_key);
        }
        let ed = KeyPair { public_key: PublicKey::Ed25519 { key: [3; 32] }, ..p256_pair() };
        let spki = value(ed.attribute(ObjectClass::PublicKey, CKA_PUBLIC_KEY_INFO));
        assert_eq!(PublicKey::from_spki(&spki).unwrap(), ed.public_key);
    }

    #[test]
    fn private_key_is_sensitive_and_never_extractable() {
        let k = rsa_pair();
        for t in [CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_COEFFICIENT] {
            assert_eq!(k.attribute(ObjectClass::PrivateKey, t), Attr::Sensitive);
        }
        assert_eq!(value(k.attribute(ObjectClass::PrivateKey, CKA_SENSITIVE)), [CK_TRUE]);
        assert_eq!(value(k.attribute(ObjectClass::PrivateKey, CKA_EXTRACTABLE)), [CK_FALSE]);
        assert_eq!(value(k.attribute(ObjectClass::PrivateKey, CKA_ALWAYS_AUTHENTICATE)), [CK_FALSE]);
        assert_eq!(value(k.attribute(ObjectClass::PrivateKey, CKA_MODULUS_BITS)), 2048u64.to_ne_bytes());
        assert_eq!(k.attribute(ObjectClass::PublicKey, CKA_VALUE), Attr::Invalid);
    }

    #[test]
    fn templates_match_every_attribute() {
        let k = p256_pair();
        let t = |ty: CK_ATTRIBUTE_TYPE, value: &[u8]| Template::default().and(ty, value);
        assert!(k.matches(ObjectClass::PublicKey, &Template::default()));
        assert!(k.matches(ObjectClass::PublicKey, &Template::class(CKO_PUBLIC_KEY)));
        assert!(!k.matches(ObjectClass::PrivateKey, &Template::class(CKO_PUBLIC_KEY)));
        let by_id = Template::class(CKO_PRIVATE_KEY).and(CKA_ID, b"k1").and(CKA_SIGN, &[1]);
        assert!(k.matches(ObjectClass::PrivateKey, &by_id));
        assert!(k.matches(ObjectClass::PrivateKey, &t(CKA_ID, b"k1_pk")));
        assert!(!k.matches(ObjectClass::PublicKey, &t(CKA_ID, b"k1_pk")));
        assert!(!k.matches(ObjectClass::PrivateKey, &t(CKA_ID, b"k2")));
        // An attribute the object lacks, or a sensitive one, excludes it.
        assert!(!k.matches(ObjectClass::PublicKey, &t(CKA_MODULUS, &[])));
        assert!(!k.matches(ObjectClass::PrivateKey, &t(CKA_VALUE, &[])));
        assert!(!k.matches(ObjectClass::PrivateKey, &t(CKA_SIGN, &[0])));
        assert!(k.matches(ObjectClass::PrivateKey, &t(CKA_SIGN, &[0xFF])));
        assert!(k.matches(ObjectClass::PublicKey, &t(CKA_LABEL, b"laptop (k1)")));
    }

    #[test]
    fn templates_know_which_classes_they_can_find() {
        assert_eq!(Template::default().classes(), Classes::Both);
        assert_eq!(Template::class(CKO_PUBLIC_KEY).classes(), Classes::Only(ObjectClass::PublicKey));
        assert_eq!(
            Template::class(CKO_PRIVATE_KEY).and(CKA_ID, b"k1").classes(),
            Classes::Only(ObjectClass::PrivateKey)
        );
        assert_eq!(Template::class(CKO_CERTIFICATE).classes(), Classes::Neither);
        // A CKA_CLASS value that is not a CK_OBJECT_CLASS finds nothing (and matches nothing).
        let short = Template::default().and(CKA_CLASS, &[3]);
        assert_eq!(short.classes(), Classes::Neither);
        assert!(!p256_pair().matches(ObjectClass::PrivateKey, &short));
    }

    #[test]
    fn labels_fit_openssh_and_keep_the_uid() {
        let id = "0b4f3c8e-5d6a-4e2b-9c1d-7a8f6e5d4c3b";
        let pair = |label: String| KeyPair { private_id: id.into(), label, ..p256_pair() };
        // Short labels are served as they are, control characters aside.
        assert_eq!(pair("laptop\n(x)\t".into()).ck_label(), "laptop (x) ");
        // Long ones, in any script, stop at 255 bytes on a character boundary, uid kept.
        for unit in ["a", "é", "鍵", "🔑", "a鍵🔑é"] {
            let long = pair(format!("{} ({id})", unit.repeat(300)));
            let label = value(long.attribute(ObjectClass::PublicKey, CKA_LABEL));
            let label = String::from_utf8(label).expect("cut on a character boundary");
            assert!(label.len() <= MAX_LABEL_LEN && label.len() > MAX_LABEL_LEN - 4, "{label}");
            assert!(label.starts_with(unit) && label.ends_with(&format!("… ({id})")), "{label}");
            assert!(long.matches(ObjectClass::PublicKey, &Template::default().and(CKA_LABEL, label.as_bytes())));
        }
        // A uid too long to keep is cut like the rest.
        let huge = KeyPair { private_id: "u".repeat(300), label: "u".repeat(300), ..p256_pair() };
        assert_eq!(huge.ck_label(), format!("{}…", "u".repeat(MAX_LABEL_LEN - 3)));
    }
}
