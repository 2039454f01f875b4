//! JSON-TTLV: the KMIP 2.1 JSON encoding the Cosmian KMS speaks.
//!
//! Every item is an object whose keys come in the order `tag`, `type`, `value`; structures
//! omit `type` and hold an array of items. The server parses by position, so the encoder
//! writes the keys in that order explicitly rather than trusting a map's ordering.

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

    /// Decodes JSON text.
    pub fn from_json(text: &[u8]) -> Result<Self, DecodeError> {
        let json: Json = serde_json::from_slice(text).map_err(|e| DecodeError(format!("not JSON: {e}")))?;
        Self::from_value(&json, 0)
    }

    fn from_value(json: &Json, depth: usize) -> Result<Self, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError("nested too deeply".into()));
        }
        let obj = json.as_object().ok_or_else(|| DecodeError("an item is not an object".into()))?;
        let tag =
            obj.get("tag").and_then(Json::as_str).ok_or_else(|| DecodeError("an item has no tag".into()))?.to_owned();
        let raw = obj.get("value").ok_or_else(|| DecodeError(format!("{tag} has no value")))?;
        let bad = |what: &str| DecodeError(format!("{tag}: {what}"));
        let value = match obj.get("type").and_then(Json::as_str).unwrap_or("Structure") {
            "Structure" => Value::Structure(
                raw.as_array()
                    .ok_or_else(|| bad("structure value is not an array"))?
                    .iter()
                    .map(|item| Self::from_value(item, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            "Integer" => Value::Integer(json_int(raw).ok_or_else(|| bad("bad Integer"))?),
            "LongInteger" => Value::LongInteger(json_int(raw).ok_or_else(|| bad("bad LongInteger"))?),
            "Interval" => {
                Value::Interval(json_int(raw).and_then(|i| u64::try_from(i).ok()).ok_or_else(|| bad("bad Interval"))?)
            }
            "BigInteger" => Value::BigInteger(
                raw.as_str()
                    .and_then(|s| s.strip_prefix("0x"))
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| bad("bad BigInteger"))?,
            ),
            "Enumeration" => Value::Enumeration(match raw {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return Err(bad("bad Enumeration")),
            }),
            "Boolean" => Value::Boolean(raw.as_bool().ok_or_else(|| bad("bad Boolean"))?),
            "TextString" => Value::TextString(raw.as_str().ok_or_else(|| bad("bad TextString"))?.to_owned()),
            "ByteString" => {
                Value::ByteString(raw.as_str().and_then(|h| hex::decode(h).ok()).ok_or_else(|| bad("bad ByteString"))?)
            }
            "DateTime" => Value::DateTime(match raw {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return Err(bad("bad DateTime")),
            }),
            other => return Err(bad(&format!("unknown type {other:?}"))),
        };
        Ok(Ttlv { tag, value })
    }
}

/// An integer given as a JSON number or as a `0x` hex string (LongInteger's form).
fn json_int(raw: &Json) -> Option<i64> {
    match raw {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => {
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
