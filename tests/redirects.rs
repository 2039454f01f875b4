//! A misbehaving server on loopback and a `server_url` that is not a plain address, with
//! `ssh-keygen -D` as the PKCS#11 client: a redirect is never followed (nothing reaches the
//! address it names, the log names it), and a `server_url` with user info, a query or a
//! fragment is refused by a log line that does not repeat them.

mod platform_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use platform_support::{assert_log_is_trace_and_clean, case, keygen_d, provider_log, text};

/// An HTTP server on loopback that reads each request whole and gives every one this
/// `answer`; returns its port and the number of requests it has read so far.
fn serve(answer: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buffer) {
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let Some(end) = text.find("\r\n\r\n") else { continue };
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |l| l.trim().parse().unwrap_or(0));
                if request.len() >= end + 4 + length {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(answer.as_bytes());
                    break;
                }
            }
        }
    });
    (port, requests)
}

#[test]
fn a_redirect_is_an_error_that_names_the_location_and_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (target, followed) = serve("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".into());
    let location = format!("http://127.0.0.1:{target}/kmip/2_1");
    for status in ["301 Moved Permanently", "302 Found", "307 Temporary Redirect", "308 Permanent Redirect"] {
        let answer = format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
        let (hostile, asked) = serve(answer);
        let token = "redirected-t0ken";
        let lines = format!("access_token = \"{token}\"\ncustom_headers = [\"X-Secret: h3ader\"]\n");
        let (config, logs) = case(dir.path(), &status[..3], &format!("http://127.0.0.1:{hostile}"), &lines);
        let out = keygen_d(&config, &logs);
        assert!(out.stdout.is_empty(), "{status}: keys offered: {}", text(&out));
        assert!(asked.load(Ordering::SeqCst) >= 1, "{status}: the server was not asked");
        assert_eq!(followed.load(Ordering::SeqCst), 0, "{status}: the redirect was followed");
        let log = provider_log(&logs);
        let code = &status[..3];
        let why = format!("KMS answered HTTP {code}: the KMS redirects to {location}: not followed");
        assert!(
            log.lines().any(|l| l.contains(" ERROR ") && l.contains(&why)),
            "{status}: the log does not say {why:?}:\n{log}"
        );
        assert_log_is_trace_and_clean(&logs, &[token, "h3ader"]);
    }
}

#[test]
fn a_server_url_with_user_info_a_query_or_a_fragment_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in [
        ("user-info", "https://alice:pw-s3cret@127.0.0.1:9998"),
        ("query", "https://127.0.0.1:9998/kms?token=q-s3cret"),
        ("fragment", "https://127.0.0.1:9998/#f-s3cret"),
    ] {
        let (config, logs) = case(dir.path(), name, url, "");
        let out = keygen_d(&config, &logs);
        assert!(out.stdout.is_empty(), "{name}: keys offered: {}", text(&out));
        let log = provider_log(&logs);
        let why = "http_config.server_url must be http(s)://host[:port][/path], without user info";
        assert!(
            log.lines().any(|l| l.contains(" ERROR ") && l.contains(why)),
            "{name}: the log does not say {why:?}:\n{log}"
        );
        assert_log_is_trace_and_clean(&logs, &["s3cret"]);
    }
}
