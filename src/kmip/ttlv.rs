//! JSON-TTLV: the KMIP 2.1 JSON encoding the Cosmian KMS speaks.
//!
//! Every item is an object whose keys come in the order `tag`, `type`, `value`; structures
//! omit `type` and hold an array of items. The server parses by position, so the encoder
//! writes the keys in that order explicitly rather than trusting a map's ordering.

use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value as Json;

/// One TTLV item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ttlv {
    pub tag: String,
    pub(crate) value: Value,
}

/// The value of an item, by KMIP type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Structure(Vec<Ttlv>),
    Integer(i64),
    LongInteger(i64),
    /// Big-endian two's complement bytes.
    BigInteger(Vec<u8>),
    /// The variant name (`"PKCS8"`); a numeric answer is kept as its text.
    Enumeration(String),
    Boolean(bool),
    TextString(String),
    ByteString(Vec<u8>),
    DateTime(String),
    Interval(u64),
}

/// What went wrong decoding a server answer.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed JSON-TTLV: {}", self.0)
    }
}

/// Deepest nesting accepted when decoding: KMIP answers are a handful of levels deep.
const MAX_DEPTH: usize = 64;

impl Ttlv {
    pub fn structure(tag: &str, items: Vec<Ttlv>) -> Self {
        Self::new(tag, Value::Structure(items))
    }
    pub fn text(tag: &str, value: &str) -> Self {
        Self::new(tag, Value::TextString(value.to_owned()))
    }
    pub fn enumeration(tag: &str, variant: &str) -> Self {
        Self::new(tag, Value::Enumeration(variant.to_owned()))
    }
    pub fn integer(tag: &str, value: i64) -> Self {
        Self::new(tag, Value::Integer(value))
    }
    pub fn bytes(tag: &str, value: &[u8]) -> Self {
        Self::new(tag, Value::ByteString(value.to_vec()))
    }
    fn new(tag: &str, value: Value) -> Self {
        Self { tag: tag.to_owned(), value }
    }

    /// The children of a structure; empty for any other type.
    pub(crate) fn children(&self) -> &[Ttlv] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    /// The first direct child with this tag.
    pub fn child(&self, tag: &str) -> Option<&Ttlv> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// The first direct child with this tag, taken out of the structure.
    pub(crate) fn into_child(self, tag: &str) -> Option<Ttlv> {
        match self.value {
            Value::Structure(items) => items.into_iter().find(|c| c.tag == tag),
            _ => None,
        }
    }

    /// All direct children with this tag.
    pub fn children_tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Ttlv> + 'a {
        self.children().iter().filter(move |c| c.tag == tag)
    }

    /// The first item with this tag anywhere below (depth first), itself included.
    pub fn find(&self, tag: &str) -> Option<&Ttlv> {
        if self.tag == tag {
            return Some(self);
        }
        self.children().iter().find_map(|c| c.find(tag))
    }

    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(s) | Value::Enumeration(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(b) | Value::BigInteger(b) => Some(b),
            _ => None,
        }
    }

    #[cfg(test)]
    fn as_integer(&self) -> Option<i64> {
        match &self.value {
            Value::Integer(i) | Value::LongInteger(i) => Some(*i),
            Value::Interval(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// Encodes to JSON text.
    pub fn to_json(&self) -> String {
        // Serializing our own types into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes JSON text (the provider decodes answers as they arrive: [`Ttlv::from_reader`]).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn from_json(text: &[u8]) -> Result<Self, DecodeError> {
        let mut json = serde_json::Deserializer::from_slice(text);
        let item =
            Item { depth: 0, batch_items: None }.deserialize(&mut json).and_then(|item| json.end().map(|()| item));
        item.map_err(decode_error)
    }

    /// Decodes the JSON `reader` gives, as it comes: neither the text nor a JSON tree is kept
    /// (an answer of 1,000 Exports is several megabytes of text), only the items. With
    /// `batch_items`, each `BatchItem` of the answer's top structure goes there as soon as it is
    /// decoded, and is left out of the answer returned: only one is ever held.
    pub(crate) fn from_reader(
        reader: impl std::io::Read,
        batch_items: Option<&mut dyn FnMut(Ttlv)>,
    ) -> Result<Self, ReadError> {
        let mut json = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 << 10, reader));
        let item = Item { depth: 0, batch_items }.deserialize(&mut json).and_then(|item| json.end().map(|()| item));
        item.map_err(|e| if e.is_io() { ReadError::Io(e.into()) } else { ReadError::Decode(decode_error(e)) })
    }
}

/// Why [`Ttlv::from_reader`] failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Reading failed (the connection, a timeout, a size cap).
    Io(std::io::Error),
    Decode(DecodeError),
}

fn decode_error(e: serde_json::Error) -> DecodeError {
    if e.is_data() { DecodeError(e.to_string()) } else { DecodeError(format!("not JSON: {e}")) }
}

/// Decodes one item, `depth` structures deep, straight from the JSON parser; its children
/// tagged `BatchItem` to `batch_items`, if given.
struct Item<'a> {
    depth: usize,
    batch_items: Option<&'a mut dyn FnMut(Ttlv)>,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = Ttlv;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Ttlv, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(D::Error::custom("nested too deeply"));
        }
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = Ttlv;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an item (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Ttlv, A::Error> {
        let (mut tag, mut kind, mut raw) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Tag => tag = Some(map.next_value_seed(Raw { items: None, batch_items: None })?),
                Key::Type => kind = Some(map.next_value_seed(Raw { items: None, batch_items: None })?),
                Key::Value => {
                    let raw_value = Raw { items: Some(self.depth + 1), batch_items: self.batch_items.take() };
                    raw = Some(map.next_value_seed(raw_value)?);
                }
                Key::Other => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        let Some(Scalar::Text(tag)) = tag else { return Err(A::Error::custom("an item has no tag")) };
        let raw = raw.ok_or_else(|| A::Error::custom(format!("{tag} has no value")))?;
        let kind = match kind {
            Some(Scalar::Text(kind)) => kind,
            _ => "Structure".to_owned(),
        };
        let value = value(&tag, &kind, raw).map_err(A::Error::custom)?;
        Ok(Ttlv { tag, value })
    }
}

/// A key of an item.
enum Key {
    Tag,
    Type,
    Value,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "tag" => Key::Tag,
                    "type" => Key::Type,
                    "value" => Key::Value,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A JSON value as an item holds it: its items (an array, decoded `depth` deep when `items` is
/// set, else skipped) or a scalar.
enum Scalar {
    Items(Vec<Ttlv>),
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    /// An object, null, or an array not decoded.
    Other,
}

/// Decodes a [`Scalar`]; arrays as items `items` deep, or skipped when `None`, their items
/// tagged `BatchItem` to `batch_items`, if given.
struct Raw<'a> {
    items: Option<usize>,
    batch_items: Option<&'a mut dyn FnMut(Ttlv)>,
}

impl<'de> DeserializeSeed<'de> for Raw<'_> {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Raw<'_> {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Scalar, A::Error> {
        let Some(depth) = self.items else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Scalar::Other);
        };
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Item { depth, batch_items: None })? {
            match self.batch_items.as_deref_mut() {
                Some(batch_items) if item.tag == "BatchItem" => batch_items(item),
                _ => items.push(item),
            }
        }
        // No room left to grow: a thousand Export answers are 70,000 items.
        items.shrink_to_fit();
        Ok(Scalar::Items(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
}

/// The value of the item `tag` of type `kind`, from its JSON value.
fn value(tag: &str, kind: &str, raw: Scalar) -> Result<Value, String> {
    let bad = |what: &str| format!("{tag}: {what}");
    let text = |raw: Scalar| match raw {
        Scalar::Text(s) => Some(s),
        _ => None,
    };
    let text_or_number = |raw: Scalar| match raw {
        Scalar::Text(s) => Some(s),
        Scalar::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(match kind {
        "Structure" => match raw {
            Scalar::Items(items) => Value::Structure(items),
            _ => return Err(bad("structure value is not an array")),
        },
        "Integer" => Value::Integer(json_int(&raw).ok_or_else(|| bad("bad Integer"))?),
        "LongInteger" => Value::LongInteger(json_int(&raw).ok_or_else(|| bad("bad LongInteger"))?),
        "Interval" => {
            Value::Interval(json_int(&raw).and_then(|i| u64::try_from(i).ok()).ok_or_else(|| bad("bad Interval"))?)
        }
        "BigInteger" => Value::BigInteger(
            text(raw)
                .and_then(|s| s.strip_prefix("0x").and_then(|h| hex::decode(h).ok()))
                .ok_or_else(|| bad("bad BigInteger"))?,
        ),
        "Enumeration" => Value::Enumeration(text_or_number(raw).ok_or_else(|| bad("bad Enumeration"))?),
        "Boolean" => match raw {
            Scalar::Bool(b) => Value::Boolean(b),
            _ => return Err(bad("bad Boolean")),
        },
        "TextString" => Value::TextString(text(raw).ok_or_else(|| bad("bad TextString"))?),
        "ByteString" => {
            Value::ByteString(text(raw).and_then(|h| hex::decode(h).ok()).ok_or_else(|| bad("bad ByteString"))?)
        }
        "DateTime" => Value::DateTime(text_or_number(raw).ok_or_else(|| bad("bad DateTime"))?),
        other => return Err(bad(&format!("unknown type {other:?}"))),
    })
}

/// An integer given as a JSON number or as a `0x` hex string (LongInteger's form).
fn json_int(raw: &Scalar) -> Option<i64> {
    match raw {
        Scalar::Number(n) => n.as_i64(),
        Scalar::Text(s) => {
            let hex = s.strip_prefix("0x")?;
            u64::from_str_radix(hex, 16).ok().map(|u| u as i64)
        }
        _ => None,
    }
}

impl Serialize for Ttlv {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ty, value): (Option<&str>, Json) = match &self.value {
            Value::Structure(items) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("tag", &self.tag)?;
                map.serialize_entry("value", items)?;
                return map.end();
            }
            Value::Integer(i) => (Some("Integer"), Json::from(*i)),
            Value::LongInteger(i) => (Some("LongInteger"), Json::from(format!("0x{:016X}", *i as u64))),
            Value::BigInteger(b) => {
                (Some("BigInteger"), Json::from(format!("0x{}", hex::encode_upper(sign_extend_to_8(b)))))
            }
            Value::Enumeration(e) => (Some("Enumeration"), Json::from(e.as_str())),
            Value::Boolean(b) => (Some("Boolean"), Json::from(*b)),
            Value::TextString(s) => (Some("TextString"), Json::from(s.as_str())),
            Value::ByteString(b) => (Some("ByteString"), Json::from(hex::encode_upper(b))),
            Value::DateTime(d) => (Some("DateTime"), Json::from(d.as_str())),
            Value::Interval(i) => (Some("Interval"), Json::from(*i)),
        };
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("tag", &self.tag)?;
        map.serialize_entry("type", &ty)?;
        map.serialize_entry("value", &value)?;
        map.end()
    }
}

/// BigIntegers travel sign-extended to a multiple of 8 bytes.
fn sign_extend_to_8(b: &[u8]) -> Vec<u8> {
    let fill = if b.first().is_some_and(|x| x & 0x80 != 0) { 0xFF } else { 0 };
    let pad = (8 - b.len() % 8) % 8;
    let mut out = vec![fill; pad];
    out.extend_from_slice(b);
    if out.is_empty() {
        out = vec![0; 8];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_in_tag_type_value_order() {
        let t = Ttlv::structure(
            "Get",
            vec![Ttlv::text("UniqueIdentifier", "k_pk"), Ttlv::enumeration("KeyFormatType", "PKCS8")],
        );
        assert_eq!(
            t.to_json(),
            r#"{"tag":"Get","value":[{"tag":"UniqueIdentifier","type":"TextString","value":"k_pk"},{"tag":"KeyFormatType","type":"Enumeration","value":"PKCS8"}]}"#
        );
    }

    #[test]
    fn scalar_encodings_match_the_server() {
        assert_eq!(
            Ttlv::bytes("Data", &[0xAB, 0x01]).to_json(),
            r#"{"tag":"Data","type":"ByteString","value":"AB01"}"#
        );
        let e = Ttlv::new("PublicExponent", Value::BigInteger(vec![1, 0, 1]));
        assert_eq!(e.to_json(), r#"{"tag":"PublicExponent","type":"BigInteger","value":"0x0000000000010001"}"#);
        let l = Ttlv::new("X", Value::LongInteger(1));
        assert_eq!(l.to_json(), r#"{"tag":"X","type":"LongInteger","value":"0x0000000000000001"}"#);
    }

    #[test]
    fn round_trips_every_type() {
        let t = Ttlv::structure(
            "S",
            vec![
                Ttlv::integer("I", -3),
                Ttlv::new("L", Value::LongInteger(1 << 40)),
                Ttlv::new("B", Value::BigInteger(vec![0, 0, 0, 0, 0, 1, 0, 1])),
                Ttlv::enumeration("E", "SHA256"),
                Ttlv::new("Bo", Value::Boolean(true)),
                Ttlv::text("T", "é\"x"),
                Ttlv::bytes("Y", &[0, 255]),
                Ttlv::new("D", Value::DateTime("2026-01-01T00:00:00Z".into())),
                Ttlv::new("Iv", Value::Interval(7)),
                Ttlv::structure("Empty", vec![]),
            ],
        );
        assert_eq!(Ttlv::from_json(t.to_json().as_bytes()).unwrap(), t);
        assert_eq!(Ttlv::from_reader(t.to_json().as_bytes(), None).unwrap(), t);
        // Keys in any order, unknown keys skipped, numbers for enumerations and dates kept as text.
        let reordered = br#"{"value":[{"x":[1,{"a":null}],"value":3,"type":"Enumeration","tag":"E"},
            {"tag":"D","value":1700000000,"type":"DateTime"}],"tag":"S"}"#;
        let t = Ttlv::from_json(reordered).unwrap();
        assert_eq!(t.child("E").and_then(Ttlv::as_text), Some("3"));
        assert_eq!(t.child("D").and_then(Ttlv::as_text), Some("1700000000"));
    }

    #[test]
    fn navigates_answers() {
        let answer = br#"{"tag":"LocateResponse","value":[{"tag":"LocatedItems","type":"Integer","value":2},
            {"tag":"UniqueIdentifier","type":"TextString","value":"a"},
            {"tag":"UniqueIdentifier","type":"TextString","value":"b"}]}"#;
        let t = Ttlv::from_json(answer).unwrap();
        assert_eq!(t.child("LocatedItems").and_then(Ttlv::as_integer), Some(2));
        let ids: Vec<_> = t.children_tagged("UniqueIdentifier").filter_map(Ttlv::as_text).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(t.find("UniqueIdentifier").and_then(Ttlv::as_text), Some("a"));
    }

    #[test]
    fn a_read_answer_hands_its_batch_items_over_one_by_one() {
        let item = |n: i64| Ttlv::structure("BatchItem", vec![Ttlv::integer("N", n)]);
        let message =
            Ttlv::structure("ResponseMessage", vec![Ttlv::structure("ResponseHeader", vec![]), item(1), item(2)]);
        let json = message.to_json();
        assert_eq!(Ttlv::from_reader(json.as_bytes(), None).unwrap(), message, "all of it without a taker");
        let mut taken = Vec::new();
        let rest = Ttlv::from_reader(json.as_bytes(), Some(&mut |item| taken.push(item))).unwrap();
        assert_eq!(taken, [item(1), item(2)]);
        assert_eq!(rest, Ttlv::structure("ResponseMessage", vec![Ttlv::structure("ResponseHeader", vec![])]));
        // What the reader fails with comes back as such; bad JSON-TTLV as a decoding error.
        struct Failing<'a>(&'a [u8]);
        impl std::io::Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut"));
                }
                let n = buf.len().min(self.0.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let cut = Ttlv::from_reader(Failing(&json.as_bytes()[..40]), None).unwrap_err();
        assert!(matches!(cut, ReadError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset));
        let bad = Ttlv::from_reader(&br#"{"tag":"X","type":"Integer","value":"nope"}"#[..], None).unwrap_err();
        assert!(matches!(&bad, ReadError::Decode(e) if e.0.contains("X: bad Integer")), "{bad:?}");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &b"<html>Internal server error</html>"[..],
            b"[]",
            b"{}",
            br#"{"tag":"X"}"#,
            br#"{"tag":"X","type":"ByteString","value":"ABC"}"#,
            br#"{"tag":"X","type":"ByteString","value":"ZZ"}"#,
            br#"{"tag":"X","type":"Integer","value":"nope"}"#,
            br#"{"tag":"X","type":"Weird","value":1}"#,
            br#"{"tag":"X","value":{"a":1}}"#,
        ] {
            assert!(Ttlv::from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", r#"{"tag":"X","value":["#.repeat(200), "]}".repeat(200));
        assert!(Ttlv::from_json(deep.as_bytes()).is_err());
    }
}
