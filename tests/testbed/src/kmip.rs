//! Raw KMIP to a [`KmsServer`] where `ckms` would be too slow: many key pairs in one
//! `RequestMessage`, each the very `CreateKeyPair` that `ckms ec keys create --curve nist-p256
//! --tag ...` sends (an ActivationDate, so the keys are `Active`; usage mask Unrestricted).
//! Copies of a key pair by KMIP `Import` where even one `RequestMessage` of `CreateKeyPair`
//! would be too slow (RSA-4096). And the server's audit log once it has settled, to count the operations a client caused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{AuditEvent, KeyPair, KmsServer};

/// Creates `count` P-256 key pairs carrying `tags`, in one HTTP request, and returns their
/// identifiers in order.
///
/// # Panics
/// When the server refuses the request or any of its items.
pub fn create_p256_key_pairs(kms: &KmsServer, count: usize, tags: &[&str]) -> Vec<KeyPair> {
    if count == 0 {
        return Vec::new();
    }
    let attributes = |object_type: &str, key_format: Option<&str>| {
        let mut items = vec![
            // A past date: the server activates the key at once (and records the present).
            item("ActivationDate", "DateTime", json!("2024-01-01T00:00:00Z")),
            item("CryptographicAlgorithm", "Enumeration", json!("ECDH")),
            json!({"tag": "CryptographicDomainParameters", "value": [
                item("Qlength", "Integer", json!(256)),
                item("RecommendedCurve", "Enumeration", json!("P256")),
            ]}),
            item("CryptographicUsageMask", "Integer", json!(0x0020_0000)),
        ];
        items.extend(key_format.map(|f| item("KeyFormatType", "Enumeration", json!(f))));
        items.push(item("ObjectType", "Enumeration", json!(object_type)));
        items
    };
    let mut common = attributes("PrivateKey", None);
    let tags_json = serde_json::to_string(tags).expect("tags are strings");
    common.push(json!({"tag": "Attribute", "value": [
        item("VendorIdentification", "TextString", json!("cosmian")),
        item("AttributeName", "TextString", json!("tag")),
        item("AttributeValue", "TextString", json!(tags_json)),
    ]}));
    let payload = json!([
        {"tag": "CommonAttributes", "value": common},
        {"tag": "PrivateKeyAttributes", "value": attributes("PrivateKey", Some("ECPrivateKey"))},
        {"tag": "PublicKeyAttributes", "value": attributes("PublicKey", Some("TransparentECPublicKey"))},
    ]);
    let mut message = vec![json!({"tag": "RequestHeader", "value": [
        {"tag": "ProtocolVersion", "value": [
            item("ProtocolVersionMajor", "Integer", json!(2)),
            item("ProtocolVersionMinor", "Integer", json!(1)),
        ]},
        item("BatchCount", "Integer", json!(count)),
    ]})];
    message.extend((0..count).map(|_| {
        json!({"tag": "BatchItem", "value": [
            item("Operation", "Enumeration", json!("CreateKeyPair")),
            {"tag": "RequestPayload", "value": payload},
        ]})
    }));
    let answer = post_json(kms.port(), "/kmip", &json!({"tag": "RequestMessage", "value": message}));
    let items: Vec<&Value> = children(&answer).iter().filter(|i| i["tag"] == "BatchItem").collect();
    assert_eq!(items.len(), count, "CreateKeyPair batch answered {answer}");
    items
        .into_iter()
        .map(|batch_item| {
            let field =
                |v: &Value, tag: &str| children(v).iter().find(|i| i["tag"] == tag).cloned().unwrap_or(Value::Null);
            assert_eq!(field(batch_item, "ResultStatus")["value"], "Success", "{batch_item}");
            let payload = field(batch_item, "ResponsePayload");
            let id = |tag: &str| {
                field(&payload, tag)["value"].as_str().unwrap_or_else(|| panic!("no {tag} in {payload}")).to_owned()
            };
            KeyPair { private_id: id("PrivateKeyUniqueIdentifier"), public_id: id("PublicKeyUniqueIdentifier") }
        })
        .collect()
}

/// `count` copies of the key pair `source` (made by `ckms` or [`create_p256_key_pairs`]),
/// each a new private and public key carrying `tags` and linked to each other as `ckms` links
/// a pair (`<id>` and `<id>_pk`), in one `RequestMessage` of KMIP `Import`s. For many keys of
/// a type whose generation is slow: 1,000 RSA-4096 `CreateKeyPair`s take over 20 minutes of the
/// server's CPU, 1,000 copies about 3 seconds. Returns the new pairs in order.
///
/// # Panics
/// When the server refuses the request or any of its items.
pub fn copy_key_pairs(kms: &KmsServer, source: &KeyPair, count: usize, tags: &[&str]) -> Vec<KeyPair> {
    let export = |id: &str| {
        let answer = post_json(
            kms.port(),
            "/kmip/2_1",
            &json!({"tag": "Export", "value": [
                item("UniqueIdentifier", "TextString", json!(id)),
                item("KeyFormatType", "Enumeration", json!("PKCS8")),
            ]}),
        );
        let find = |tag: &str| children(&answer).iter().find(|i| i["tag"] == tag).cloned();
        let object =
            find("PrivateKey").or_else(|| find("PublicKey")).unwrap_or_else(|| panic!("Export {id}: {answer}"));
        let attributes = find("Attributes").unwrap_or_else(|| panic!("Export {id}: no Attributes"));
        (object, attributes)
    };
    let (private_object, private_attributes) = export(&source.private_id);
    let (public_object, _) = export(&source.public_id);
    // The source's algorithm, length and usage; a past activation date (Active at once).
    let kept: Vec<Value> = children(&private_attributes)
        .iter()
        .filter(|a| {
            ["CryptographicAlgorithm", "CryptographicLength", "CryptographicUsageMask"]
                .contains(&a["tag"].as_str().unwrap_or(""))
        })
        .cloned()
        .collect();
    let tags_json = serde_json::to_string(tags).expect("tags are strings");
    let import = |id: &str, object_type: &str, object: &Value, link_type: &str, linked: &str| {
        let mut attributes = kept.clone();
        attributes.extend([
            item("ActivationDate", "DateTime", json!("2024-01-01T00:00:00Z")),
            json!({"tag": "Link", "value": [
                item("LinkType", "Enumeration", json!(link_type)),
                item("LinkedObjectIdentifier", "TextString", json!(linked)),
            ]}),
            item("ObjectType", "Enumeration", json!(object_type)),
            json!({"tag": "Attribute", "value": [
                item("VendorIdentification", "TextString", json!("cosmian")),
                item("AttributeName", "TextString", json!("tag")),
                item("AttributeValue", "TextString", json!(tags_json)),
            ]}),
        ]);
        json!({"tag": "BatchItem", "value": [
            item("Operation", "Enumeration", json!("Import")),
            {"tag": "RequestPayload", "value": [
                item("UniqueIdentifier", "TextString", json!(id)),
                item("ObjectType", "Enumeration", json!(object_type)),
                item("ReplaceExisting", "Boolean", json!(false)),
                {"tag": "Attributes", "value": attributes},
                object,
            ]},
        ]})
    };
    let pairs: Vec<KeyPair> = (0..count)
        .map(|i| {
            let private_id = format!("{}-copy-{i}-{}", source.private_id, std::process::id());
            KeyPair { public_id: format!("{private_id}_pk"), private_id }
        })
        .collect();
    let mut message = vec![json!({"tag": "RequestHeader", "value": [
        {"tag": "ProtocolVersion", "value": [
            item("ProtocolVersionMajor", "Integer", json!(2)),
            item("ProtocolVersionMinor", "Integer", json!(1)),
        ]},
        item("BatchCount", "Integer", json!(2 * count)),
    ]})];
    for pair in &pairs {
        message.push(import(&pair.private_id, "PrivateKey", &private_object, "PublicKeyLink", &pair.public_id));
        message.push(import(&pair.public_id, "PublicKey", &public_object, "PrivateKeyLink", &pair.private_id));
    }
    let answer = post_json(kms.port(), "/kmip", &json!({"tag": "RequestMessage", "value": message}));
    let succeeded = children(&answer)
        .iter()
        .filter(|i| i["tag"] == "BatchItem")
        .filter(|i| children(i).iter().any(|f| f["tag"] == "ResultStatus" && f["value"] == "Success"))
        .count();
    assert_eq!(succeeded, 2 * count, "Import batch answered {:.2000}", answer.to_string());
    pairs
}

/// The KMS's audit log once it has stopped growing for half a second: the server writes it
/// behind its answers, so a count taken right after a request may miss events still to come.
pub fn settled_audit_events(kms: &KmsServer) -> Vec<AuditEvent> {
    let mut events = kms.audit_events();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = kms.audit_events();
        if now.len() == events.len() {
            return now;
        }
        events = now;
    }
}

/// A JSON-TTLV item, keys in the order the server needs (`tag`, `type`, `value`).
fn item(tag: &str, kind: &str, value: Value) -> Value {
    json!({"tag": tag, "type": kind, "value": value})
}

fn children(structure: &Value) -> &[Value] {
    structure["value"].as_array().map_or(&[], Vec::as_slice)
}

/// One `POST` of a JSON body to `127.0.0.1:port` (plain HTTP, connection closed after), the
/// JSON answer.
///
/// # Panics
/// On a transport error or an answer other than 200 with JSON.
fn post_json(port: u16, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to the KMS on port {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("set a read timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_end(&mut answer))
        .unwrap_or_else(|e| panic!("POST {path} to the KMS failed: {e}"));
    let answer = String::from_utf8_lossy(&answer);
    let (head, json) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "POST {path}: {head}\n{}", json.chars().take(500).collect::<String>());
    serde_json::from_str(json).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {json:.500}"))
}
