//! ckms's proxy settings, `[http_config.proxy_params]`, with the real KMS on loopback and a
//! small `CONNECT` proxy of this file in front of it: the provider (cryptoki, in a child process
//! of its own per case) lists the KMS's keys through a `CONNECT` tunnel, with Basic or custom
//! proxy credentials that never reach its trace-level log, goes direct for a host of the
//! exclusion list, and logs one clear error when the proxy refuses. The KMS's name in
//! `server_url`, `kms.proxy-only.test`, is one only the proxy resolves (to the KMS on
//! 127.0.0.1): a direct connection cannot work, as the control cases check.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine;
use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, TestCa, child_command, child_part, create_p256_key_pairs, cryptoki_session,
};
use cryptoki::object::{Attribute, ObjectClass};

const TAG: &str = "proxied";
/// A name only the test proxy knows: it maps it to the KMS on 127.0.0.1.
const PROXY_ONLY_HOST: &str = "kms.proxy-only.test";
/// The proxy variables of the environment, cleared in every child unless a case sets one.
const PROXY_VARIABLES: [&str; 8] =
    ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"];

/// What the test proxy answers to a `CONNECT`.
#[derive(Clone, Debug)]
enum Rule {
    /// 200 to anyone, then relays.
    Open,
    /// 200 only with this `Proxy-Authorization` value, else 407.
    Requires(String),
    /// 407 to everyone.
    Refuse,
}

/// One `CONNECT` the proxy read: its request line and its `Proxy-Authorization` value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Connect {
    request_line: String,
    authorization: Option<String>,
}

/// An HTTP `CONNECT` proxy on 127.0.0.1 that maps [`PROXY_ONLY_HOST`] to 127.0.0.1, records
/// every `CONNECT` (and every TCP connection), and answers by its [`Rule`].
struct ConnectProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Connect>>>,
    connections: Arc<Mutex<usize>>,
}

impl ConnectProxy {
    fn start(rule: Rule) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                *count.lock().unwrap() += 1;
                let (record, rule) = (record.clone(), rule.clone());
                thread::spawn(move || serve(client, &rule, &record));
            }
        });
        ConnectProxy { port, seen, connections }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Connect> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// One client of the proxy: reads the `CONNECT` head byte by byte (nothing of the tunnel is
/// read before the answer), records it, answers, and relays both ways.
fn serve(mut client: TcpStream, rule: &Rule, record: &Mutex<Vec<Connect>>) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) if head.len() < 16 << 10 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let authorization = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization").then(|| value.trim().to_owned())
    });
    record.lock().unwrap().push(Connect { request_line: request_line.clone(), authorization: authorization.clone() });
    let allowed = match rule {
        Rule::Open => true,
        Rule::Requires(expected) => authorization.as_deref() == Some(expected),
        Rule::Refuse => false,
    };
    let target = request_line.strip_prefix("CONNECT ").and_then(|rest| rest.split(' ').next()).unwrap_or_default();
    let upstream = match target.rsplit_once(':') {
        Some((PROXY_ONLY_HOST, port)) => TcpStream::connect(("127.0.0.1", port.parse().unwrap_or(0))),
        _ => TcpStream::connect(target),
    };
    let upstream = match upstream {
        Ok(upstream) if allowed => upstream,
        _ => {
            let status = if allowed { "502 Bad Gateway" } else { "407 Proxy Authentication Required" };
            let answer = format!(
                "HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(answer.as_bytes());
            return;
        }
    };
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
        return;
    }
    let (mut client_in, mut upstream_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut upstream_out);
        let _ = upstream_out.shutdown(Shutdown::Write);
    });
    let (mut upstream_in, mut client_out) = (upstream, client);
    let _ = std::io::copy(&mut upstream_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
}

/// A KMS holding two key pairs tagged [`TAG`].
fn kms_with_keys(args: &[&str]) -> KmsServer {
    let kms = KmsServer::start_with_args(args);
    create_p256_key_pairs(&kms, 2, &[TAG]);
    kms
}

/// A case: its folder (configuration, log, cache) under `root`, the configuration written.
fn case(root: &Path, name: &str, config: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kms.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dir
}

/// What one provider, in a child process, made of the case in `dir` (with `env` added): the
/// public keys it listed (`None` if the search failed), the child's output, its log.
struct Listing {
    found: Option<usize>,
    out: Output,
    log: String,
}

impl Listing {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

fn list(dir: &Path, env: &[(&str, String)]) -> Listing {
    let mut command = child_command("lists keys");
    for variable in PROXY_VARIABLES {
        command.env_remove(variable);
    }
    let out = command
        .env("COSMIAN_KMS_CLI_CONF", dir.join("kms.toml"))
        .env("COSMIAN_PKCS11_SSH_KEY_TAG", TAG)
        .env("COSMIAN_PKCS11_LOGGING_FOLDER", dir.join("logs"))
        .env("COSMIAN_PKCS11_LOGGING_LEVEL", "trace")
        .env("COSMIAN_PKCS11_REQUEST_TIMEOUT_MS", "4000")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found = stdout.lines().find_map(|l| l.strip_prefix("found ")).and_then(|n| n.trim().parse().ok());
    let log = std::fs::read_to_string(dir.join("logs").join("cosmian-pkcs11.log")).unwrap_or_default();
    assert!(out.status.success(), "the child failed: {out:?}\n{log}");
    Listing { found, out, log }
}

/// Run by [`list`] in a child process (one provider per process, its environment set by the
/// parent): searches the public keys and prints `found N`, or `failed ...`.
fn child_lists_keys() {
    let (_pkcs11, session) = cryptoki_session();
    match session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]) {
        Ok(found) => println!("found {}", found.len()),
        Err(e) => println!("failed {e}"),
    }
}

fn proxy_only_config(kms: &KmsServer, proxy_lines: &str) -> String {
    let url = format!("http://{PROXY_ONLY_HOST}:{}", kms.port());
    format!("[http_config]\nserver_url = \"{url}\"\n{proxy_lines}\n")
}

fn the_keys_are_listed_through_the_connect_proxy_of_proxy_params() {
    let kms = kms_with_keys(&[]);
    let root = tempfile::tempdir().unwrap();
    let proxy = ConnectProxy::start(Rule::Open);
    let elsewhere = ConnectProxy::start(Rule::Refuse);

    // Control: without proxy_params, the name does not resolve and nothing is listed.
    let listed = list(&case(root.path(), "direct", &proxy_only_config(&kms, "")), &[]);
    assert_ne!(listed.found, Some(2), "{PROXY_ONLY_HOST} resolved without the proxy:\n{}", listed.log);

    // With it (and a proxy in the environment, which proxy_params overrides, as ckms ignores it).
    let lines = format!("[http_config.proxy_params]\nurl = \"{}\"\nexclusion_list = []", proxy.url());
    let dir = case(root.path(), "proxied", &proxy_only_config(&kms, &lines));
    let listed = list(&dir, &[("HTTPS_PROXY", elsewhere.url()), ("HTTP_PROXY", elsewhere.url())]);
    assert_eq!(listed.found, Some(2), "{:?}\n{}", listed.out, listed.log);
    let connect = format!("CONNECT {PROXY_ONLY_HOST}:{} HTTP/1.1", kms.port());
    let seen = proxy.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|c| c.request_line == connect && c.authorization.is_none()),
        "{seen:?}"
    );
    assert_eq!(elsewhere.connections(), 0, "the environment's proxy was used");
    let info = format!("proxy={}", proxy.url());
    assert!(
        listed
            .log
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("CONNECT proxy of proxy_params") && l.contains(&info)),
        "the log does not name the proxy:\n{}",
        listed.log
    );
    assert_eq!(listed.stderr(), "");
}

/// Also ckms 5.28 itself, with the same `proxy_params`: it creates the key through the proxy.
fn an_https_kms_is_reached_through_the_tunnel_with_its_own_tls() {
    let ca = TestCa::new();
    let args = ca.kms_args();
    let kms = KmsServer::start_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let root = tempfile::tempdir().unwrap();
    let proxy = ConnectProxy::start(Rule::Open);
    let proxy_lines = format!("[http_config.proxy_params]\nurl = \"{}\"\nexclusion_list = []", proxy.url());
    let ckms = Ckms::with_http_config(&kms, &format!("accept_invalid_certs = true\n{proxy_lines}"));
    ckms.create_key_pair(KeyKind::Ec("nist-p256"), &[TAG]);
    let connect = format!("CONNECT 127.0.0.1:{} HTTP/1.1", kms.port());
    let by_ckms = proxy.seen().len();
    assert!(by_ckms > 0 && proxy.seen().iter().all(|c| c.request_line == connect), "{:?}", proxy.seen());
    let config = format!("[http_config]\nserver_url = \"{}\"\n{}\n{proxy_lines}\n", kms.url(), ca.verified_cert_line());
    let listed = list(&case(root.path(), "https", &config), &[]);
    assert_eq!(listed.found, Some(1), "{:?}\n{}", listed.out, listed.log);
    let seen = proxy.seen();
    assert!(seen.len() > by_ckms && seen.iter().all(|c| c.request_line == connect), "{seen:?}");
}

fn basic_and_custom_proxy_credentials_are_sent_and_never_logged() {
    let kms = kms_with_keys(&[]);
    let root = tempfile::tempdir().unwrap();
    let password = "pr0xy-s3cret-pw";
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}")));
    let custom = "Bearer pr0xy-t0ken-h3ader";
    for (name, lines, expected, secrets) in [
        (
            "basic",
            format!("basic_auth_username = \"alice\"\nbasic_auth_password = \"{password}\""),
            basic.clone(),
            vec![password, basic.as_str()],
        ),
        ("custom", format!("custom_auth_header = \"{custom}\""), custom.to_owned(), vec![custom]),
    ] {
        let proxy = ConnectProxy::start(Rule::Requires(expected.clone()));
        let lines = format!("[http_config.proxy_params]\nurl = \"{}\"\nexclusion_list = []\n{lines}", proxy.url());
        let listed = list(&case(root.path(), name, &proxy_only_config(&kms, &lines)), &[]);
        assert_eq!(listed.found, Some(2), "{name}: {:?}\n{}", listed.out, listed.log);
        let seen = proxy.seen();
        assert!(!seen.is_empty() && seen.iter().all(|c| c.authorization.as_deref() == Some(&expected)), "{seen:?}");
        assert!(listed.log.contains(" TRACE "), "{name}: the log is not at trace level");
        let stdout = String::from_utf8_lossy(&listed.out.stdout);
        for secret in secrets {
            assert!(!listed.log.contains(secret) && !stdout.contains(secret), "{name}: a secret reached the log");
            assert!(!listed.stderr().contains(secret), "{name}: a secret reached stderr");
        }
    }
}

fn a_host_of_the_exclusion_list_is_reached_directly() {
    let kms = kms_with_keys(&[]);
    let root = tempfile::tempdir().unwrap();
    for (name, host, exclusions) in
        [("address", "127.0.0.1", "[\"192.0.2.1\", \"127.0.0.1\"]"), ("domain", "localhost", "[\".localhost\"]")]
    {
        // A proxy that would refuse: listing works only if it is never asked.
        let proxy = ConnectProxy::start(Rule::Refuse);
        let config = format!(
            "[http_config]\nserver_url = \"http://{host}:{}\"\n[http_config.proxy_params]\nurl = \"{}\"\nexclusion_list = {exclusions}\n",
            kms.port(),
            proxy.url()
        );
        let listed = list(&case(root.path(), name, &config), &[]);
        assert_eq!(listed.found, Some(2), "{name}: {:?}\n{}", listed.out, listed.log);
        assert_eq!(proxy.connections(), 0, "{name}: the proxy was asked: {:?}", proxy.seen());
    }
}

fn a_proxy_that_refuses_is_one_clear_error_line() {
    let kms = kms_with_keys(&[]);
    let root = tempfile::tempdir().unwrap();
    let proxy = ConnectProxy::start(Rule::Refuse);
    let lines = format!(
        "[http_config.proxy_params]\nurl = \"{}\"\nexclusion_list = []\nbasic_auth_username = \"alice\"\nbasic_auth_password = \"wr0ng-pw\"",
        proxy.url()
    );
    let listed = list(&case(root.path(), "refused", &proxy_only_config(&kms, &lines)), &[]);
    assert!(matches!(listed.found, None | Some(0)), "{:?}\n{}", listed.out, listed.log);
    assert!(!proxy.seen().is_empty(), "the proxy was not asked");
    let why =
        format!("answered \"HTTP/1.1 407 Proxy Authentication Required\" to CONNECT {PROXY_ONLY_HOST}:{}", kms.port());
    let errors: Vec<&str> = listed.log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains(&why) && errors[0].contains(&proxy.url()),
        "not one ERROR line saying {why:?}:\n{}",
        listed.log
    );
    assert!(!listed.log.contains("wr0ng-pw"));
    assert_eq!(listed.stderr(), "", "the provider wrote on stderr");
}

fn without_proxy_params_the_environment_proxy_is_used_as_before_but_never_socks() {
    let kms = kms_with_keys(&[]);
    let root = tempfile::tempdir().unwrap();
    let proxy = ConnectProxy::start(Rule::Open);
    let dir = case(root.path(), "environment", &proxy_only_config(&kms, ""));
    let listed = list(&dir, &[("HTTP_PROXY", proxy.url())]);
    assert_eq!(listed.found, Some(2), "{:?}\n{}", listed.out, listed.log);
    let connect = format!("CONNECT {PROXY_ONLY_HOST}:{} HTTP/1.1", kms.port());
    assert!(proxy.seen().iter().any(|c| c.request_line == connect), "{:?}", proxy.seen());
    assert!(listed.log.contains("the KMS is reached through the proxy the environment names"), "{}", listed.log);
    // NO_PROXY naming the host: direct, so the name does not resolve.
    let listed =
        list(&dir, &[("HTTP_PROXY", proxy.url()), ("NO_PROXY", format!(".proxy-only.test,{PROXY_ONLY_HOST}"))]);
    assert_ne!(listed.found, Some(2), "{}", listed.log);
    // A SOCKS proxy (not supported): a warning, and the KMS reached directly.
    let config = format!("[http_config]\nserver_url = \"{}\"\n", kms.url());
    let listed = list(&case(root.path(), "socks", &config), &[("ALL_PROXY", "socks5h://127.0.0.1:9".to_owned())]);
    assert_eq!(listed.found, Some(2), "{:?}\n{}", listed.out, listed.log);
    assert!(listed.log.lines().any(|l| l.contains(" WARN ") && l.contains("SOCKS proxy")), "{}", listed.log);
}

/// A plain `main` (`harness = false`): the same binary is the child of [`list`] (one provider
/// per process) and the parent running each case in turn.
fn main() {
    if child_part().is_some() {
        return child_lists_keys();
    }
    let cases: [(&str, fn()); 6] = [
        (
            "the_keys_are_listed_through_the_connect_proxy_of_proxy_params",
            the_keys_are_listed_through_the_connect_proxy_of_proxy_params,
        ),
        (
            "an_https_kms_is_reached_through_the_tunnel_with_its_own_tls",
            an_https_kms_is_reached_through_the_tunnel_with_its_own_tls,
        ),
        (
            "basic_and_custom_proxy_credentials_are_sent_and_never_logged",
            basic_and_custom_proxy_credentials_are_sent_and_never_logged,
        ),
        ("a_host_of_the_exclusion_list_is_reached_directly", a_host_of_the_exclusion_list_is_reached_directly),
        ("a_proxy_that_refuses_is_one_clear_error_line", a_proxy_that_refuses_is_one_clear_error_line),
        (
            "without_proxy_params_the_environment_proxy_is_used_as_before_but_never_socks",
            without_proxy_params_the_environment_proxy_is_used_as_before_but_never_socks,
        ),
    ];
    for (name, case) in cases {
        eprintln!("test {name} ...");
        case();
        eprintln!("test {name} ... ok");
    }
}
