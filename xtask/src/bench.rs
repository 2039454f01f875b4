//! `cargo xtask bench`: the provider measured against the raw KMS it sits on, side by side in
//! one run, on the test bed's real KMS (loopback), with the release build of the provider (or
//! the library `COSMIAN_PKCS11_LIB` names) loaded by the `cryptoki` crate; the benchmark itself
//! (and so the raw client) runs optimized too. Prints medians, their ratios and the targets.
//!
//! Over TLS by default, as users deploy it: a test CA made here with `openssl`, the KMS started
//! with a certificate it signed, the provider's `verified_cert` and the raw client's only root
//! the CA. `--http`: over plain HTTP instead; `--both`: over HTTP, then over TLS (the keys are
//! created once, over HTTP, and the KMS restarted on the same database with TLS).
//!
//! - P1: `C_SignInit`+`C_Sign` latency per key type versus the same KMIP Sign (same JSON
//!   body) from a minimal client (ureq) on a kept-alive connection, calls interleaved;
//! - P2: an `ssh -I` login versus a login with a local key file of the same type, same sshd
//!   (the public key in the disk cache after the first login, as for a user);
//! - P3: enumeration (`C_Initialize` to the end of the first public-key search) for 1, 10,
//!   100 and 1,000 tagged keys, and its requests, with the disk cache of public keys empty
//!   (cold) and filled (warm);
//! - P4: the requests of a full `ssh -I` login, cold and warm;
//! - P5: signatures per second with 1 and 4 threads versus the raw client, same concurrency;
//! - P6 ([`startup`]): what TLS costs a process, `ssh-keygen -D` with the disk cache warm over
//!   TLS against over HTTP: wall time and CPU time.
//!
//! Requests are counted outside the provider: the KMS's log (one line per HTTP request, which
//! a proxy cannot read inside TLS), a [`CountingProxy`] on the wire (TCP connections) and the
//! KMS's audit log (KMIP operations, batch items included).
//! Figures only, never assertions: the machine is shared and noisy. `tests/performance.rs`
//! asserts the counts.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    self as testbed, create_p256_key_pairs, settled_audit_events, ssh_command, ssh_keygen_d, write_provider_config,
    Ckms, CountingProxy, KeyKind, KeyPair, KmsServer, SshCommand, Sshd, TestCa,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::{cargo, install_test_bed, step};

mod startup;

/// The tag every signing key carries (each also carries its own, see [`KeyType::tag`]).
const SIGNING_TAG: &str = "bench";

/// How the provider and the raw client reach the KMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Http,
    /// HTTPS, the server's certificate verified against the test CA.
    Tls,
}

impl Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Http => "HTTP",
            Transport::Tls => "TLS",
        })
    }
}

/// A kind of key measured in P1 and P2, and how OpenSSH signs with it.
struct KeyType {
    name: &'static str,
    kind: KeyKind<'static>,
    /// The key's own tag, so that a provider can offer it alone.
    tag: &'static str,
    /// `ssh-keygen -t ...` of a local twin, when OpenSSH 9.2 takes such keys from a provider
    /// (not Ed25519).
    ssh_keygen: Option<&'static [&'static str]>,
    /// C_Sign calls (and raw Signs) measured in P1.
    samples: usize,
}

const KEY_TYPES: [KeyType; 5] = [
    KeyType {
        name: "P-256",
        kind: KeyKind::Ec("nist-p256"),
        tag: "bench-p256",
        ssh_keygen: Some(&["-t", "ecdsa", "-b", "256"]),
        samples: 200,
    },
    KeyType {
        name: "P-384",
        kind: KeyKind::Ec("nist-p384"),
        tag: "bench-p384",
        ssh_keygen: Some(&["-t", "ecdsa", "-b", "384"]),
        samples: 200,
    },
    KeyType {
        name: "RSA-2048",
        kind: KeyKind::Rsa(2048),
        tag: "bench-rsa2048",
        ssh_keygen: Some(&["-t", "rsa", "-b", "2048"]),
        samples: 200,
    },
    KeyType {
        name: "RSA-4096",
        kind: KeyKind::Rsa(4096),
        tag: "bench-rsa4096",
        ssh_keygen: Some(&["-t", "rsa", "-b", "4096"]),
        samples: 60,
    },
    KeyType { name: "Ed25519", kind: KeyKind::Ec("ed25519"), tag: "bench-ed25519", ssh_keygen: None, samples: 200 },
];

/// P3: numbers of tagged keys.
const ENUMERATION_SIZES: [usize; 4] = [1, 10, 100, 1000];
/// P2: logins per key type and side.
const LOGINS: usize = 10;
/// P5: how long each throughput measurement lasts, and how many of them per side.
const THROUGHPUT_WINDOW: Duration = Duration::from_millis(1500);
const THROUGHPUT_ROUNDS: usize = 8;

/// SHA-512 DigestInfo prefix: OpenSSH signs `rsa-sha2-512` by default.
const SHA512_DIGEST_INFO: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

impl KeyType {
    /// What OpenSSH hands the provider for this key (mechanism, input), and the KMIP Sign body
    /// the provider sends for it, as `src/kmip/operations.rs` builds it (docs/kms-wire.md).
    fn sign_request(&self, private_id: &str) -> (Mechanism<'static>, Vec<u8>, String) {
        let parameters = |items: &[(&str, &str)]| {
            structure("CryptographicParameters", &items.iter().map(|(t, v)| enumeration(t, v)).collect::<Vec<_>>())
        };
        let (mechanism, input, items) = match self.kind {
            KeyKind::Ec("ed25519") => {
                // About what ssh signs: the session id and the userauth request.
                let message = vec![0x5A; 160];
                let items = vec![bytes("Data", &message)];
                (Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), message, items)
            }
            KeyKind::Ec(curve) => {
                let (hash_len, algorithm) =
                    if curve == "nist-p384" { (48, "ECDSAWithSHA384") } else { (32, "ECDSAWithSHA256") };
                let hash = vec![0x5A; hash_len];
                let items = vec![parameters(&[("DigitalSignatureAlgorithm", algorithm)]), bytes("DigestedData", &hash)];
                (Mechanism::Ecdsa, hash, items)
            }
            KeyKind::Rsa(_) => {
                let hash = [0x5A; 64];
                let items = vec![
                    parameters(&[
                        ("PaddingMethod", "PKCS1v15"),
                        ("HashingAlgorithm", "SHA512"),
                        ("DigitalSignatureAlgorithm", "SHA512WithRSAEncryption"),
                        ("CryptographicAlgorithm", "RSA"),
                    ]),
                    bytes("DigestedData", &hash),
                ];
                (Mechanism::RsaPkcs, [&SHA512_DIGEST_INFO[..], &hash].concat(), items)
            }
        };
        let body = structure("Sign", &[vec![text("UniqueIdentifier", private_id)], items].concat());
        (mechanism, input, body)
    }
}

// JSON-TTLV items, written as the provider writes them.
fn item(tag: &str, kind: &str, value: &str) -> String {
    format!(r#"{{"tag":"{tag}","type":"{kind}","value":{value}}}"#)
}
fn text(tag: &str, value: &str) -> String {
    item(tag, "TextString", &serde_json::Value::from(value).to_string())
}
fn enumeration(tag: &str, value: &str) -> String {
    item(tag, "Enumeration", &format!("\"{value}\""))
}
fn integer(tag: &str, value: usize) -> String {
    item(tag, "Integer", &value.to_string())
}
fn bytes(tag: &str, value: &[u8]) -> String {
    let hex: String = value.iter().map(|b| format!("{b:02X}")).collect();
    item(tag, "ByteString", &format!("\"{hex}\""))
}
fn structure(tag: &str, items: &[String]) -> String {
    format!(r#"{{"tag":"{tag}","value":[{}]}}"#, items.join(","))
}

/// `Err` with what failed.
fn failed<E: Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A minimal KMIP client: one ureq agent (kept-alive connections, as many idle ones as the
/// provider keeps; over TLS, ureq's rustls with the test CA as its only root); answers read and
/// parsed.
struct RawKmip {
    agent: ureq::Agent,
    url: String,
}

impl RawKmip {
    /// A client with no connection yet, trusting `ca` (PEM).
    fn new(kms: &KmsServer, ca: &str) -> Self {
        let roots = ureq::tls::parse_pem(ca.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
            .build();
        let agent = ureq::Agent::config_builder().max_idle_connections_per_host(4).tls_config(tls).build().into();
        Self { agent, url: kms.url() }
    }

    fn post(&self, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let mut answer = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(failed("raw KMIP request"))?;
        let text =
            answer.body_mut().with_config().limit(16 << 20).read_to_string().map_err(failed("raw KMIP answer"))?;
        serde_json::from_str(&text).map_err(|e| format!("raw KMIP answer ({e}): {text:.300}"))
    }

    fn sign(&self, body: &str) -> Result<(), String> {
        let answer = self.post("/kmip/2_1", body)?;
        let signed = children(&answer).any(|i| i["tag"] == "SignatureData");
        signed.then_some(()).ok_or_else(|| format!("Sign answered {answer:.300}"))
    }

    /// The provider's Locate, raw: the pages of the tagged active public keys (see
    /// `locate_tagged`).
    fn locate(&self, tag: &str) -> Result<Vec<String>, String> {
        let tag_json = serde_json::Value::from(vec![tag]).to_string();
        let mut ids: Vec<String> = Vec::new();
        loop {
            let attributes = structure(
                "Attributes",
                &[
                    enumeration("ObjectType", "PublicKey"),
                    enumeration("State", "Active"),
                    structure(
                        "Attribute",
                        &[
                            text("VendorIdentification", "cosmian"),
                            text("AttributeName", "tag"),
                            text("AttributeValue", &tag_json),
                        ],
                    ),
                ],
            );
            let locate =
                structure("Locate", &[integer("MaximumItems", 1000), integer("OffsetItems", ids.len()), attributes]);
            let answer = self.post("/kmip/2_1", &locate)?;
            let page: Vec<String> = children(&answer)
                .filter(|i| i["tag"] == "UniqueIdentifier")
                .filter_map(|i| i["value"].as_str().map(str::to_owned))
                .collect();
            let before = ids.len();
            let known: std::collections::HashSet<String> = ids.iter().cloned().collect();
            ids.extend(page.iter().filter(|id| !known.contains(*id)).cloned());
            if page.len() < 1000 || ids.len() == before {
                return Ok(ids);
            }
        }
    }

    /// The provider's batched Export of public keys, raw; the number of keys exported.
    fn export(&self, ids: &[String]) -> Result<usize, String> {
        let header = structure(
            "RequestHeader",
            &[
                structure("ProtocolVersion", &[integer("ProtocolVersionMajor", 2), integer("ProtocolVersionMinor", 1)]),
                integer("BatchCount", ids.len()),
            ],
        );
        let exports = ids.iter().map(|id| {
            let payload =
                structure("RequestPayload", &[text("UniqueIdentifier", id), enumeration("KeyFormatType", "PKCS8")]);
            structure("BatchItem", &[enumeration("Operation", "Export"), payload])
        });
        let message = structure("RequestMessage", &std::iter::once(header).chain(exports).collect::<Vec<_>>());
        let answer = self.post("/kmip", &message)?;
        Ok(children(&answer).filter(|i| i["tag"] == "BatchItem").count())
    }
}

fn children(structure: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    structure["value"].as_array().into_iter().flatten()
}

/// The keys, the provider and the raw client, around one KMS.
struct Bench {
    kms: KmsServer,
    /// The KMS's transport now, and the CA of its certificate over TLS.
    transport: Transport,
    ca: TestCa,
    dir: PathBuf,
    lib: PathBuf,
    /// Keeps the library loaded between C_Finalize and the next C_Initialize.
    module: Pkcs11,
    /// A provider configuration aimed straight at the KMS.
    config: PathBuf,
    signing_keys: Vec<KeyPair>,
    raw: RawKmip,
}

/// Runs the benchmark, or the parts named (`p1` ... `p6`), over TLS, `--http` or `--both`,
/// and prints its report.
pub fn run(args: &[String]) -> Result<(), String> {
    const PARTS: [&str; 6] = ["p1", "p2", "p3", "p4", "p5", "p6"];
    let mut transports = vec![Transport::Tls];
    let mut parts = Vec::new();
    for arg in args.iter().map(|a| a.to_lowercase()) {
        match arg.as_str() {
            "--http" => transports = vec![Transport::Http],
            "--tls" => transports = vec![Transport::Tls],
            "--both" => transports = vec![Transport::Http, Transport::Tls],
            part if PARTS.contains(&part) => parts.push(arg),
            _ => {
                return Err(format!(
                    "bench: unknown argument {arg} (parts: {}; --http, --tls, --both)",
                    PARTS.join(" ")
                ))
            }
        }
    }
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if cfg!(debug_assertions) {
        // The raw client is measured against the release provider: it must be optimized too.
        let mut release = vec!["run", "--release", "--quiet", "-p", "xtask", "--", "bench"];
        release.extend(args.iter().map(String::as_str));
        return cargo("build and run the benchmark optimized", &release);
    }
    install_test_bed();
    // COSMIAN_PKCS11_LIB (the test bed's variable) measures another build of the provider.
    let lib = match std::env::var_os("COSMIAN_PKCS11_LIB") {
        Some(lib) => PathBuf::from(lib),
        None => {
            cargo("build the provider, release", &["build", "--release", "-p", "cosmian-pkcs11"])?;
            release_lib()?
        }
    };
    step("measure", &format!("{} against a local KMS", lib.display()));
    let machine = machine();
    println!("{machine}");

    let mut bench = Bench::new(lib, wanted("p3"))?;
    let mut targets = Vec::new();
    for transport in transports {
        bench.serve(transport)?;
        let before = targets.len();
        if wanted("p1") {
            bench.p1_sign_latency(&mut targets)?;
        }
        if wanted("p2") {
            bench.p2_ssh_login(&mut targets)?;
        }
        if wanted("p3") {
            bench.p3_enumeration(&mut targets)?;
        }
        if wanted("p4") {
            bench.p4_login_requests(&mut targets)?;
        }
        if wanted("p5") {
            bench.p5_throughput(&mut targets)?;
        }
        for (what, _, _) in &mut targets[before..] {
            *what = format!("{transport:<4} {what}");
        }
    }
    if wanted("p6") {
        startup::p6_startup(&bench, &mut targets)?;
    }

    println!("\nTargets (load average at the end: {})", load_average());
    for (what, figure, met) in &targets {
        println!(
            "  {:<4} {what:<63} {figure:<26} {}",
            if *met { "MET" } else { "NOT" },
            if *met { "" } else { "<-- not met" }
        );
    }
    Ok(())
}

/// `target/release/libcosmian_pkcs11.so`, next to this (release) xtask.
fn release_lib() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(failed("where is xtask"))?;
    let target = exe.parent().and_then(Path::parent).ok_or("xtask is not in a cargo target folder")?;
    let file = format!("{}cosmian_pkcs11{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let lib = target.join("release").join(file);
    lib.is_file().then_some(lib.clone()).ok_or_else(|| format!("{} was not built", lib.display()))
}

/// CPU, cores, load: the figures mean little without them.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "    machine: {cores} cores ({model}), Linux {}, load average {}; shared with other work: figures are noisy",
        kernel.trim(),
        load_average()
    )
}

fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    /// A KMS over HTTP with the signing keys (made by ckms) and, for P3, the tagged key pairs
    /// of [`ENUMERATION_SIZES`]; the test CA.
    fn new(lib: PathBuf, enumeration: bool) -> Result<Self, String> {
        let kms = KmsServer::start();
        let dir = kms.dir().join("bench");
        std::fs::create_dir_all(&dir).map_err(failed("create the bench folder"))?;
        println!("    KMS log {}", kms.log_path().display());
        let ckms = Ckms::new(&kms);
        let signing_keys = KEY_TYPES.iter().map(|k| ckms.create_key_pair(k.kind, &[SIGNING_TAG, k.tag])).collect();
        if enumeration {
            for count in ENUMERATION_SIZES {
                create_p256_key_pairs(&kms, count, &[&format!("enum-{count}")]);
            }
        }
        settled_audit_events(&kms); // The server logs the creations behind its answers.
        let ca = TestCa::new();
        let config = write_provider_config(&dir, &kms.url(), "");
        // Nothing of the caller's provider settings may leak in; the rest is set per run.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("COSMIAN_PKCS11_")
                || key == "CKMS_CONF"
                || key == "COSMIAN_KMS_CLI_CONF"
            {
                std::env::remove_var(key);
            }
        }
        let module = Pkcs11::new(&lib).map_err(failed("dlopen the provider"))?;
        let raw = RawKmip::new(&kms, &ca.ca_pem());
        Ok(Bench { kms, transport: Transport::Http, ca, dir, lib, module, config, signing_keys, raw })
    }

    /// Serves `transport`: the KMS restarted (same port and database) with or without TLS if
    /// needed, a provider configuration and a raw client for it.
    fn serve(&mut self, transport: Transport) -> Result<(), String> {
        if transport != self.transport {
            let args = match transport {
                Transport::Tls => self.ca.kms_args(),
                Transport::Http => Vec::new(),
            };
            self.kms.restart_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
            self.transport = transport;
        }
        let dir = self.dir.join(transport.to_string());
        std::fs::create_dir_all(&dir).map_err(failed("create a folder"))?;
        self.config = write_provider_config(&dir, &self.kms.url(), &self.trust_lines());
        self.raw = RawKmip::new(&self.kms, &self.ca.ca_pem());
        println!("\n=== over {transport}: KMS {}", self.kms.url());
        Ok(())
    }

    /// The provider configuration's lines that trust the KMS: the test CA over TLS.
    fn trust_lines(&self) -> String {
        match self.transport {
            Transport::Tls => self.ca.verified_cert_line(),
            Transport::Http => String::new(),
        }
    }

    /// The HTTP requests the KMS has logged so far (see [`KmsServer::http_requests`]), once
    /// its logs have settled.
    fn http_requests(&self) -> Vec<&'static str> {
        settled_audit_events(&self.kms);
        self.kms.http_requests()
    }

    /// The provider's environment: a configuration, the tag, logs at `warn` and the disk cache
    /// of public keys in our folder.
    fn provider_env(&self, config: &Path, tag: &str) -> [(&'static str, String); 5] {
        [
            ("XDG_CACHE_HOME", self.disk_cache().display().to_string()),
            ("COSMIAN_KMS_CLI_CONF", config.display().to_string()),
            ("COSMIAN_PKCS11_SSH_KEY_TAG", tag.to_owned()),
            ("COSMIAN_PKCS11_LOGGING_FOLDER", self.dir.join("logs").display().to_string()),
            ("COSMIAN_PKCS11_LOGGING_LEVEL", "warn".to_owned()),
        ]
    }

    /// C_Initialize with this configuration and tag (single-threaded here: the environment
    /// is ours to set), and the slot.
    fn open(&self, config: &Path, tag: &str) -> Result<Slot, String> {
        for (key, value) in self.provider_env(config, tag) {
            std::env::set_var(key, value);
        }
        self.module
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(failed("C_Initialize"))?;
        let slots = self.module.get_slots_with_token().map_err(failed("C_GetSlotList"))?;
        slots.first().copied().ok_or_else(|| "no slot".to_owned())
    }

    /// The provider's cache folder (`XDG_CACHE_HOME`).
    fn disk_cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    fn close(&self) -> Result<(), String> {
        self.module.clone().finalize().map_err(failed("C_Finalize"))
    }

    fn session(&self, slot: Slot) -> Result<Session, String> {
        self.module.open_ro_session(slot).map_err(failed("C_OpenSession"))
    }

    /// A provider configuration that goes through `proxy` (which forwards TLS as any bytes).
    fn config_via(&self, proxy: &CountingProxy, name: &str) -> Result<PathBuf, String> {
        let dir = self.dir.join(self.transport.to_string()).join(name);
        std::fs::create_dir_all(&dir).map_err(failed("create a folder"))?;
        let url = match self.transport {
            Transport::Tls => proxy.url().replacen("http://", "https://", 1),
            Transport::Http => proxy.url(),
        };
        Ok(write_provider_config(&dir, &url, &self.trust_lines()))
    }

    fn p1_sign_latency(&self, targets: &mut Vec<(String, String, bool)>) -> Result<(), String> {
        println!("\nP1  signature latency: C_SignInit+C_Sign through the .so vs the same KMIP Sign from a raw");
        println!("    client on a kept-alive connection; calls interleaved, median (ms)");
        println!("    {:<10} {:>7} {:>10} {:>10} {:>7}   target", "key", "calls", "provider", "raw KMIP", "ratio");
        let slot = self.open(&self.config, SIGNING_TAG)?;
        let session = self.session(slot)?;
        for (key_type, pair) in KEY_TYPES.iter().zip(&self.signing_keys) {
            let key = private_key(&session, &pair.private_id)?;
            let (mechanism, input, body) = key_type.sign_request(&pair.private_id);
            let provider_sign = || session.sign(&mechanism, key, &input).map(drop).map_err(failed("C_Sign"));
            for _ in 0..5 {
                provider_sign()?;
                self.raw.sign(&body)?;
            }
            let (mut provider, mut raw) = (Vec::new(), Vec::new());
            for i in 0..key_type.samples {
                for side in [i % 2, 1 - i % 2] {
                    let started = Instant::now();
                    if side == 0 {
                        provider_sign()?;
                        provider.push(ms(started.elapsed()));
                    } else {
                        self.raw.sign(&body)?;
                        raw.push(ms(started.elapsed()));
                    }
                }
            }
            let (provider, raw) = (median(&mut provider), median(&mut raw));
            let ratio = provider / raw;
            println!(
                "    {:<10} {:>7} {provider:>10.3} {raw:>10.3} {ratio:>7.2}   <= 1.10",
                key_type.name, key_type.samples
            );
            targets.push((
                format!("P1 C_Sign / raw Sign, {}", key_type.name),
                format!("{ratio:.2} (<= 1.10)"),
                ratio <= 1.10,
            ));
        }
        drop(session);
        self.close()
    }

    fn p2_ssh_login(&self, targets: &mut Vec<(String, String, bool)>) -> Result<(), String> {
        println!("\nP2  ssh login: `ssh -I provider` (its key alone offered) vs `ssh -i local key file` of the");
        println!("    same type, same sshd, logins interleaved, median wall time of `ssh ... true` (ms)");
        println!("    {:<10} {:>7} {:>10} {:>10} {:>7}   target", "key", "logins", "ssh -I", "ssh -i", "ratio");
        let local_dir = self.dir.join("local-keys");
        std::fs::create_dir_all(&local_dir).map_err(failed("create a folder"))?;
        let mut authorized = self.offered(&self.config, SIGNING_TAG)?;
        let mut local_keys = Vec::new();
        for key_type in KEY_TYPES.iter().filter(|k| k.ssh_keygen.is_some()) {
            let file = local_dir.join(key_type.tag);
            if !file.exists() {
                // Made once: the pass over the other transport logs in with the same file.
                let made = Command::new("ssh-keygen")
                    .args(key_type.ssh_keygen.unwrap_or_default())
                    .args(["-q", "-N", "", "-f"])
                    .arg(&file)
                    .output()
                    .map_err(failed("ssh-keygen"))?;
                made.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| format!("ssh-keygen: {}", String::from_utf8_lossy(&made.stderr)))?;
            }
            authorized
                .push_str(&std::fs::read_to_string(file.with_extension("pub")).map_err(failed("read a public key"))?);
            local_keys.push((key_type, file));
        }
        let sshd = Sshd::start(&authorized, "");
        for (key_type, file) in local_keys {
            let via_kms = || {
                let mut ssh = ssh_command(&sshd).provider(&self.lib);
                for (key, value) in self.provider_env(&self.config, key_type.tag) {
                    ssh = ssh.env(key, value);
                }
                ssh
            };
            let local = || ssh_command(&sshd).opt("-i").opt(&file);
            timed_login(via_kms())?; // Warm the page cache and sshd.
            timed_login(local())?;
            let (mut kms, mut local_times) = (Vec::new(), Vec::new());
            for i in 0..LOGINS {
                if i % 2 == 0 {
                    kms.push(timed_login(via_kms())?);
                    local_times.push(timed_login(local())?);
                } else {
                    local_times.push(timed_login(local())?);
                    kms.push(timed_login(via_kms())?);
                }
            }
            let (kms, local) = (median(&mut kms), median(&mut local_times));
            let ratio = kms / local;
            // The KMS's RSA signing is slow (see the README): RSA keys get more room.
            let target = if matches!(key_type.kind, KeyKind::Rsa(_)) { 1.3 } else { 1.05 };
            println!("    {:<10} {LOGINS:>7} {kms:>10.1} {local:>10.1} {ratio:>7.2}   <= {target}", key_type.name);
            targets.push((
                format!("P2 ssh -I / ssh -i, {}", key_type.name),
                format!("{ratio:.2} (<= {target})"),
                ratio <= target,
            ));
        }
        println!("    (Ed25519: OpenSSH 9.2 takes no Ed25519 key from a provider)");
        Ok(())
    }

    /// The `authorized_keys` lines `ssh-keygen -D` prints with this configuration and tag.
    fn offered(&self, config: &Path, tag: &str) -> Result<String, String> {
        let out =
            ssh_keygen_d(&self.lib).envs(self.provider_env(config, tag)).output().map_err(failed("ssh-keygen -D"))?;
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !lines.is_empty())
            .then_some(lines)
            .ok_or_else(|| "ssh-keygen -D offered nothing".to_owned())
    }

    fn p3_enumeration(&self, targets: &mut Vec<(String, String, bool)>) -> Result<(), String> {
        println!("\nP3  enumeration: C_Initialize to the end of the first public-key search, median (ms):");
        println!("    cold: an empty disk cache (a fresh connection, the Locate, the batched Export) vs the");
        println!("    same Locate and Export from a new raw client; warm: the public keys in the disk cache");
        println!("    (a fresh connection, the Locate) vs the same Locate from a new raw client. Requests");
        println!("    counted on runs of their own, in the KMS's log (HTTP) and audit log (KMIP)");
        println!(
            "    {:>5} {:>4} {:>8} {:>8} {:>5} {:>8} {:>8} {:>5} {:>7} {:>7}  {:<14} KMIP operations, cold + warm",
            "keys", "runs", "cold", "raw", "ratio", "warm", "raw", "ratio", "cold/1", "warm/1", "HTTP cold/warm"
        );
        let (mut one_cold, mut one_warm) = (f64::NAN, f64::NAN);
        let ca = self.ca.ca_pem();
        for count in ENUMERATION_SIZES {
            let tag = format!("enum-{count}"); // Made by Bench::new.
            let listed = count.min(1000);
            let runs = if count >= 1000 { 5 } else { 15 };
            let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..runs + 1 {
                let _ = std::fs::remove_dir_all(self.disk_cache());
                for (cold, provider, raw) in [(true, 0, 1), (false, 2, 3)] {
                    let started = Instant::now();
                    let slot = self.open(&self.config, &tag)?;
                    let found = self.public_keys(slot)?;
                    times[provider].push(ms(started.elapsed()));
                    self.close()?;
                    let started = Instant::now();
                    let client = RawKmip::new(&self.kms, &ca);
                    let ids = client.locate(&tag)?;
                    let exported = if cold { client.export(&ids)? } else { ids.len() };
                    times[raw].push(ms(started.elapsed()));
                    if (found, exported) != (listed, listed) {
                        return Err(format!("{count} keys tagged, {found} listed, {exported} raw"));
                    }
                }
            }
            // The first run warms the server's caches.
            let [cold, cold_raw, warm, warm_raw] = times.map(|mut t| median(&mut t[1..]));
            if count == 1 {
                (one_cold, one_warm) = (cold, warm);
            }
            // Counted on runs of their own: cold, then warm.
            let _ = std::fs::remove_dir_all(self.disk_cache());
            let mark = settled_audit_events(&self.kms).len();
            let mut requests = Vec::new();
            for _ in 0..2 {
                let before = self.http_requests().len();
                let slot = self.open(&self.config, &tag)?;
                self.public_keys(slot)?;
                self.close()?;
                requests.push(self.http_requests().len() - before);
            }
            let operations = operation_counts(&settled_audit_events(&self.kms)[mark..]);
            let http = format!("{} / {}", requests[0], requests[1]);
            println!(
                "    {count:>5} {runs:>4} {cold:>8.1} {cold_raw:>8.1} {:>5.2} {warm:>8.1} {warm_raw:>8.1} {:>5.2} {:>6.1}x {:>6.1}x  {http:<14} {operations}",
                cold / cold_raw,
                warm / warm_raw,
                cold / one_cold,
                warm / one_warm
            );
            targets.push((
                format!("P3 round trips, {count} keys, cold / warm"),
                format!("{http} (<= 3)"),
                requests[0] <= 3,
            ));
            if count == 100 {
                let ratio = warm / one_warm;
                targets.push((
                    "P3 enumeration time, 100 keys / 1 key (warm)".into(),
                    format!("{ratio:.1} (<= 2)"),
                    ratio <= 2.0,
                ));
                let ratio = cold / one_cold;
                targets.push((
                    "P3 enumeration time, 100 keys / 1 key (cold)".into(),
                    format!("{ratio:.1} (<= 2)"),
                    ratio <= 2.0,
                ));
            }
        }
        println!("    (KMS 5.28 caps a Locate at 1,000 ids and ignores OffsetItems: past 1,000 keys, one more");
        println!("    Locate that brings nothing new, and the first 1,000 are offered. Cold, the KMS spends");
        println!("    most of the time exporting: the raw client takes as long)");
        if self.transport == Transport::Tls {
            println!("    (Over TLS the raw client is plain ureq: the first answer on its new connection may wait");
            println!("    ~40 ms for its delayed ACK, which the provider avoids: see src/kmip/transport.rs)");
        }
        Ok(())
    }

    fn public_keys(&self, slot: Slot) -> Result<usize, String> {
        let session = self.session(slot)?;
        let found =
            session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)]).map_err(failed("C_FindObjects"))?;
        Ok(found.len())
    }

    fn p4_login_requests(&self, targets: &mut Vec<(String, String, bool)>) -> Result<(), String> {
        println!(
            "\nP4  requests of one `ssh -I` login (P-256 key): KMS log (HTTP), proxy on the wire (TCP\n    connections), KMS audit log (KMIP); the public key not yet in the disk cache (cold),\n    then in it (warm)"
        );
        let authorized = self.offered(&self.config, KEY_TYPES[0].tag)?;
        let sshd = Sshd::start(&authorized, "");
        let proxy = CountingProxy::start(self.kms.port());
        let config = self.config_via(&proxy, "login")?;
        for (run, expected) in [("cold", 3), ("warm", 2)] {
            proxy.reset();
            let mark = settled_audit_events(&self.kms).len();
            let http_mark = self.kms.http_requests().len();
            let mut ssh = ssh_command(&sshd).provider(&self.lib);
            for (key, value) in self.provider_env(&config, KEY_TYPES[0].tag) {
                ssh = ssh.env(key, value);
            }
            timed_login(ssh)?;
            let operations = operation_counts(&settled_audit_events(&self.kms)[mark..]);
            let requests = &self.http_requests()[http_mark..];
            println!(
                "    {run}: HTTP {} requests on {} connection(s): {}; KMIP: {operations}",
                requests.len(),
                proxy.connections(),
                requests.join(", ")
            );
            targets.push((
                format!("P4 HTTP requests of an ssh -I login, {run} disk cache"),
                format!("{} (= {} + 1 Sign)", requests.len(), expected - 1),
                requests.len() == expected,
            ));
        }
        Ok(())
    }

    fn p5_throughput(&self, targets: &mut Vec<(String, String, bool)>) -> Result<(), String> {
        println!(
            "\nP5  signatures per second, P-256, {THROUGHPUT_ROUNDS} windows of {:.1} s per side, \
             alternated, median",
            THROUGHPUT_WINDOW.as_secs_f64()
        );
        println!("    {:>8} {:>10} {:>10} {:>7}   target", "threads", "provider", "raw KMIP", "ratio");
        let slot = self.open(&self.config, SIGNING_TAG)?;
        let pair = &self.signing_keys[0];
        let (_, _, body) = KEY_TYPES[0].sign_request(&pair.private_id);
        for threads in [1, 4] {
            let (mut provider, mut raw) = (Vec::new(), Vec::new());
            for round in 0..THROUGHPUT_ROUNDS {
                for side in [round % 2, 1 - round % 2] {
                    if side == 1 {
                        raw.push(self.rate(threads, || Ok(|| self.raw.sign(&body)))?);
                        continue;
                    }
                    provider.push(self.rate(threads, || {
                        // Per thread: a session, and the mechanism (raw pointers, not Sync).
                        let session = self.session(slot)?;
                        let key = private_key(&session, &pair.private_id)?;
                        let (mechanism, input, _) = KEY_TYPES[0].sign_request(&pair.private_id);
                        Ok(move || session.sign(&mechanism, key, &input).map(drop).map_err(failed("C_Sign")))
                    })?);
                }
            }
            let (provider, raw) = (median(&mut provider), median(&mut raw));
            let ratio = provider / raw;
            println!("    {threads:>8} {provider:>10.0} {raw:>10.0} {ratio:>7.2}   >= 0.9");
            targets.push((
                format!("P5 signatures/s provider / raw, {threads} thread(s)"),
                format!("{ratio:.2} (>= 0.9)"),
                ratio >= 0.9,
            ));
        }
        self.close()
    }

    /// Signatures per second of `threads` threads, each signing with what `make_signer` gives
    /// it (made on the thread) for [`THROUGHPUT_WINDOW`].
    fn rate<F, S>(&self, threads: usize, make_signer: F) -> Result<f64, String>
    where
        F: Fn() -> Result<S, String> + Sync,
        S: FnMut() -> Result<(), String>,
    {
        let started = Instant::now();
        let counts: Result<Vec<usize>, String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut sign = make_signer()?;
                        let mut count = 0;
                        while started.elapsed() < THROUGHPUT_WINDOW {
                            sign()?;
                            count += 1;
                        }
                        Ok(count)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().map_err(|_| "a signing thread panicked".to_owned())?).collect()
        });
        Ok(counts?.iter().sum::<usize>() as f64 / started.elapsed().as_secs_f64())
    }
}

/// The private key whose `CKA_ID` is `id`.
fn private_key(session: &Session, id: &str) -> Result<ObjectHandle, String> {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(failed("C_FindObjects"))?;
    found.first().copied().ok_or_else(|| format!("the provider does not offer {id}"))
}

/// Runs a login (`ssh ... true`); its wall time in ms.
fn timed_login(ssh: SshCommand) -> Result<f64, String> {
    let started = Instant::now();
    let out = ssh.run("true");
    let elapsed = ms(started.elapsed());
    out.status
        .success()
        .then_some(elapsed)
        .ok_or_else(|| format!("ssh login failed: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `Locate ×1, Export ×10, ...`, in the order they first appear.
fn operation_counts(events: &[testbed::AuditEvent]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for event in events {
        match counts.iter_mut().find(|(op, _)| *op == event.operation) {
            Some((_, n)) => *n += 1,
            None => counts.push((&event.operation, 1)),
        }
    }
    counts.iter().map(|(op, n)| format!("{op} x{n}")).collect::<Vec<_>>().join(", ")
}
