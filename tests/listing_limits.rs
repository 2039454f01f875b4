//! Listing the keys is bounded whatever the server does, and large real listings fit in the
//! bounds:
//! - a hostile server on loopback that pages forever (every Locate answers 1,000 new ids) is
//!   asked at most 10 Locate rounds, and the public keys it listed are fetched in Export
//!   messages of at most 1,000 items each;
//! - a server that answers each round slowly gets no new round once the listing's deadline
//!   (three request timeouts) has passed, and no Export at all;
//! - the real KMS with 1,000 RSA-4096 key pairs (the largest Export answers) lists them all,
//!   in one Export message, and signs with them.
//!
//! Each case runs in a child process of its own, with the provider's environment, one after
//! the other (the deadline case is timed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, child_part, copy_key_pairs, cryptoki_session, run_in_child, settled_audit_events,
    write_provider_config,
};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use serde_json::{Value, json};

const TAG: &str = "limits";

/// A P-256 public key (DER SubjectPublicKeyInfo) for the hostile server's Export answers.
const SPKI_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d0301070342000410df2cb2ffbe769eb0920db9649bbe1f3b547b121d85ebbb3b844bd746c8a8bab79fe06eb4244ccf11a56647c379b331e107445b8fd7d793fd44513f64e554b6";

/// What the hostile server received: per `RequestMessage`, its operations in order.
type Received = Arc<Mutex<Vec<Vec<String>>>>;

fn item(tag: &str, kind: &str, value: Value) -> Value {
    json!({"tag": tag, "type": kind, "value": value})
}

fn children(v: &Value) -> &[Value] {
    v["value"].as_array().map_or(&[], Vec::as_slice)
}

fn field<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    children(v).iter().find(|c| c["tag"] == tag)
}

/// The answer of one batch item: a Locate is answered 1,000 ids never given before; an
/// Export, a P-256 public key tagged [`TAG`] whose private key is the id without `_pk`.
fn answer_item(operation: &str, payload: &Value, next_id: &mut usize) -> Value {
    let response = match operation {
        "Locate" => {
            let private = children(field(payload, "Attributes").unwrap()).iter().any(|a| a["value"] == "PrivateKey");
            let mut ids = vec![item("LocatedItems", "Integer", json!(1000))];
            ids.extend((0..1000).map(|_| {
                *next_id += 1;
                let suffix = if private { "" } else { "_pk" };
                item("UniqueIdentifier", "TextString", json!(format!("k{}{suffix}", *next_id)))
            }));
            ids
        }
        "Export" => {
            let id = field(payload, "UniqueIdentifier").unwrap()["value"].as_str().unwrap().to_owned();
            let private = id.trim_end_matches("_pk");
            vec![
                item("ObjectType", "Enumeration", json!("PublicKey")),
                item("UniqueIdentifier", "TextString", json!(id)),
                json!({"tag": "Attributes", "value": [
                    json!({"tag": "Link", "value": [
                        item("LinkType", "Enumeration", json!("PrivateKeyLink")),
                        item("LinkedObjectIdentifier", "TextString", json!(private)),
                    ]}),
                    json!({"tag": "Attribute", "value": [
                        item("VendorIdentification", "TextString", json!("cosmian")),
                        item("AttributeName", "TextString", json!("tag")),
                        item("AttributeValue", "TextString", json!(format!("[\"{TAG}\"]"))),
                    ]}),
                ]}),
                json!({"tag": "PublicKey", "value": [json!({"tag": "KeyBlock", "value": [
                    item("KeyFormatType", "Enumeration", json!("PKCS8")),
                    json!({"tag": "KeyValue", "value": [item("KeyMaterial", "ByteString", json!(SPKI_HEX.to_uppercase()))]}),
                ]})]}),
            ]
        }
        other => panic!("the provider sent {other}"),
    };
    json!({"tag": "BatchItem", "value": [
        item("Operation", "Enumeration", json!(operation)),
        item("ResultStatus", "Enumeration", json!("Success")),
        {"tag": "ResponsePayload", "value": response},
    ]})
}

/// Reads one HTTP/1.1 request (head, body by `Content-Length`); `None` at end of stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// A KMS look-alike on loopback that pages forever, waiting `delay` before each answer;
/// its port and what it received.
fn paging_server(delay: Duration) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let log = received.clone();
    std::thread::spawn(move || {
        let mut next_id = 0;
        for stream in listener.incoming().map_while(Result::ok) {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            while let Some(body) = read_request(&mut reader) {
                let request: Value = serde_json::from_slice(&body).unwrap();
                let mut operations = Vec::new();
                let mut items = vec![json!({"tag": "ResponseHeader", "value": []})];
                for batch_item in children(&request).iter().filter(|i| i["tag"] == "BatchItem") {
                    let operation = field(batch_item, "Operation").unwrap()["value"].as_str().unwrap().to_owned();
                    items.push(answer_item(&operation, field(batch_item, "RequestPayload").unwrap(), &mut next_id));
                    operations.push(operation);
                }
                log.lock().unwrap().push(operations);
                std::thread::sleep(delay);
                let answer = json!({"tag": "ResponseMessage", "value": items}).to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(answer.as_bytes())).is_err() {
                    break;
                }
            }
        }
    });
    (port, received)
}

/// The environment of a case's child: the provider's configuration, log and disk cache in
/// `dir` (the child writes the configuration), and `extra`.
fn client_env(dir: &Path, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml").display().to_string()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", TAG.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.display().to_string()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "info".to_owned()),
        ("XDG_CACHE_HOME", dir.join("cache").display().to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// In a case's child: its folder (configuration, log, disk cache), from its environment.
fn folder() -> PathBuf {
    PathBuf::from(std::env::var_os("COSMIAN_PKCS11_LOGGING_FOLDER").expect("the case's folder"))
}

/// In a case's child: the provider's configuration, aimed at `server_url`.
fn configure(server_url: &str) {
    write_provider_config(&folder(), server_url, "");
}

fn log() -> String {
    std::fs::read_to_string(folder().join("cosmian-pkcs11.log")).unwrap_or_default()
}

fn count_of(received: &Received, operation: &str) -> Vec<usize> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|ops| ops.iter().filter(|o| *o == operation).count())
        .filter(|n| *n > 0)
        .collect()
}

fn public_keys(session: &cryptoki::session::Session) -> Vec<cryptoki::object::ObjectHandle> {
    session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).unwrap()
}

/// A case: its name, its body (run in a child), the child's environment beyond [`client_env`].
type Case = (&'static str, fn(), &'static [(&'static str, &'static str)]);

/// One test, its cases one after the other, each in a child process of its own.
#[test]
fn listing_is_bounded_and_large_listings_fit() {
    let cases: [Case; 3] = [
        ("paging forever", a_server_that_pages_forever_gets_10_locate_rounds_and_bounded_export_messages, &[]),
        ("a thousand RSA-4096 keys", a_thousand_rsa_4096_key_pairs_list_in_one_export_message_and_sign, &[]),
        (
            "slow rounds",
            no_locate_round_starts_past_the_listing_deadline,
            &[("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", "500")],
        ),
    ];
    if let Some(part) = child_part() {
        let (_, case, _) = cases.iter().find(|(name, ..)| *name == part).expect("a case");
        return case();
    }
    for (name, _, extra) in cases {
        let dir = tempfile::tempdir().unwrap();
        run_in_child(name, client_env(dir.path(), extra));
    }
}

fn a_server_that_pages_forever_gets_10_locate_rounds_and_bounded_export_messages() {
    let (port, received) = paging_server(Duration::ZERO);
    configure(&format!("http://127.0.0.1:{port}"));
    let (pkcs11, session) = cryptoki_session();
    let listed = public_keys(&session).len();
    drop(session);
    pkcs11.finalize().unwrap();
    let locates = count_of(&received, "Locate");
    assert_eq!(locates, vec![2; 10], "10 rounds of a public and a private Locate:\n{}", log());
    assert!(log().contains("stopped listing after 10 Locate pages"), "{}", log());
    let exports = count_of(&received, "Export");
    assert_eq!(exports, vec![1000; 10], "10,000 public keys exported 1,000 per message");
    assert_eq!(listed, 10_000, "every exported key is offered:\n{}", log());
}

fn no_locate_round_starts_past_the_listing_deadline() {
    // Each answer takes 400 ms of a 500 ms request timeout: the deadline (3 x 500 ms) passes
    // during the fourth round.
    let (port, received) = paging_server(Duration::from_millis(400));
    configure(&format!("http://127.0.0.1:{port}"));
    let (pkcs11, session) = cryptoki_session();
    let listed = public_keys(&session).len();
    drop(session);
    pkcs11.finalize().unwrap();
    assert_eq!(listed, 0, "a listing past its deadline offers nothing");
    let rounds = count_of(&received, "Locate").len();
    assert!((2..=5).contains(&rounds), "{rounds} Locate rounds in 1.5 s of 400 ms rounds:\n{}", log());
    assert!(count_of(&received, "Export").is_empty(), "an Export after the deadline");
    assert!(
        log().contains(&format!("past its deadline after {rounds} Locate rounds")),
        "the log does not say why:\n{}",
        log()
    );
}

fn a_thousand_rsa_4096_key_pairs_list_in_one_export_message_and_sign() {
    let kms = KmsServer::start();
    let source = Ckms::new(&kms).create_key_pair(KeyKind::Rsa(4096), &["source"]);
    let pairs = copy_key_pairs(&kms, &source, 1000, &[TAG]);
    configure(&kms.url());
    let (pkcs11, session) = cryptoki_session();
    let (before, posts_before) = (settled_audit_events(&kms).len(), kms.http_requests().len());
    let keys = public_keys(&session);
    assert_eq!(keys.len(), 1000, "{}", log());
    let bits = session.get_attributes(keys[999], &[AttributeType::ModulusBits]).unwrap();
    assert!(matches!(bits[..], [Attribute::ModulusBits(b)] if u64::from(b) == 4096), "{bits:?}");
    let events = settled_audit_events(&kms);
    let count = |operation: &str| events[before..].iter().filter(|e| e.operation == operation).count();
    let posts = kms.http_requests().len() - posts_before;
    // A full first page calls for a second Locate round (answered the same by KMS 5.28), then
    // the 1,000 Exports go in one message.
    assert_eq!((count("Locate"), count("Export"), posts), (4, 1000, 3), "{}", log());
    let last = &pairs[999];
    let private = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(last.private_id.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(private.len(), 1);
    let signature = session.sign(&Mechanism::Sha256RsaPkcs, private[0], b"a thousand keys").unwrap();
    assert_eq!(signature.len(), 512);
    drop(session);
    pkcs11.finalize().unwrap();
}
