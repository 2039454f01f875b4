//! A hostile relay on loopback in front of the real KMS pads its answers with white space
//! (still valid JSON): an answer larger than its operation can need is refused unread (a Sign
//! answer over 80 KiB), while a padded answer within its operation's cap (a batch of Locates
//! over 200 KiB) is still read. Every answer is otherwise the real KMS's. The test runs in a
//! child process of its own, with the provider's environment.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use cosmian_pkcs11_testbed::{
    KmsServer, body_in_child, create_p256_key_pairs, cryptoki_session, write_provider_config,
};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};

/// Reads one HTTP/1.1 message (head, body by `Content-Length`); `None` at end of stream.
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Relays to the KMS on `upstream`, padding the answers to Sign and to Locates by `padding`
/// spaces; returns its port.
fn padding_relay(upstream: u16, padding: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let (mut to_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut from_client, mut from_server) = (BufReader::new(client), BufReader::new(server));
                while let Some((head, body)) = read_message(&mut from_client) {
                    let locate = body.windows(17).any(|w| w == br#""value":"Locate""#);
                    let pad = body.starts_with(br#"{"tag":"Sign""#) || locate;
                    to_server.write_all(head.as_bytes()).unwrap();
                    to_server.write_all(&body).unwrap();
                    let Some((head, mut answer)) = read_message(&mut from_server) else {
                        return;
                    };
                    if pad {
                        answer.resize(answer.len() + padding, b' ');
                    }
                    let head: String = head
                        .lines()
                        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    let head = head.trim_end_matches("\r\n").to_owned()
                        + &format!("\r\ncontent-length: {}\r\n\r\n", answer.len());
                    to_client.write_all(head.as_bytes()).unwrap();
                    to_client.write_all(&answer).unwrap();
                }
            });
        }
    });
    port
}

#[test]
fn an_answer_larger_than_its_operation_needs_is_refused_unread() {
    let Some(dir) = body_in_child(|dir| {
        [
            ("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml")),
            ("COSMIAN_PKCS11_SSH_KEY_TAG", "padded".into()),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", dir.to_owned()),
            ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
            ("XDG_CACHE_HOME", dir.join("cache")),
        ]
    }) else {
        return;
    };
    let kms = KmsServer::start();
    let key = create_p256_key_pairs(&kms, 1, &["padded"]).remove(0);
    let port = padding_relay(kms.port(), 200 << 10);
    write_provider_config(&dir, &format!("http://127.0.0.1:{port}"), "");
    let (_pkcs11, session) = cryptoki_session();
    let log = || std::fs::read_to_string(dir.join("cosmian-pkcs11.log")).unwrap_or_default();
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(key.private_id.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "a padded batch of Locates, within its cap, is read:\n{}", log());
    let signed = session.sign(&Mechanism::Ecdsa, found[0], &[7; 32]);
    assert!(signed.is_err(), "a 200 KiB Sign answer was accepted");
    let why = "bytes: refused unread";
    assert!(log().lines().any(|l| l.contains("C_Sign") && l.contains(why)), "the log does not say {why:?}:\n{}", log());
}
