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
//! - P1 ([`signing`]): `C_SignInit`+`C_Sign` latency per key type versus the same KMIP Sign
//!   (same JSON body) from a minimal client ([`raw`], ureq) on a kept-alive connection, calls
//!   interleaved;
//! - P2 ([`logins`]): an `ssh -I` login versus a login with a local key file of the same type,
//!   same sshd (the public key in the disk cache after the first login, as for a user);
//! - P3 ([`enumeration`]): enumeration (`C_Initialize` to the end of the first public-key
//!   search) for 1, 10, 100 and 1,000 tagged keys, and its requests, with the disk cache of
//!   public keys empty (cold) and filled (warm);
//! - P4 ([`logins`]): the requests of a full `ssh -I` login, cold and warm;
//! - P5 ([`signing`]): signatures per second with 1 and 4 threads versus the raw client, same
//!   concurrency;
//! - P6 ([`startup`]): what TLS costs a process, `ssh-keygen -D` with the disk cache warm over
//!   TLS against over HTTP: wall time and CPU time;
//! - R ([`remote`], `remote`): the KMS (over TLS) and sshd as far away as a chosen one-way
//!   delay (`--delay-ms`, 0 and 25 by default), behind relays that count the KMS round trips of
//!   `ssh-keygen -D`, `ssh -I` and the agent path, and the time a login adds over a local key
//!   file; the largest resident set of `ssh-keygen -D` listing N keys (`--keys`, 1,000).
//!
//! This module holds what the parts share: [`run`], the [`Bench`] set-up (the KMS, its keys,
//! the provider loaded, the raw client), the key types, and the figures' helpers.
//!
//! Requests are counted outside the provider: the KMS's log (one line per HTTP request, which
//! a proxy cannot read inside TLS), a [`CountingProxy`] on the wire (TCP connections) and the
//! KMS's audit log (KMIP operations, batch items included).
//! Figures only, never assertions: the machine is shared and noisy. `tests/performance.rs`
//! asserts the counts.

mod enumeration;
mod logins;
mod raw;
mod remote;
mod signing;
mod startup;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cosmian_pkcs11_testbed::{
    self as testbed, Ckms, CountingProxy, KeyKind, KeyPair, KmsServer, TestCa, settled_audit_events,
    write_provider_config,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::{cargo, install_test_bed, step};
use raw::RawKmip;

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

/// The targets of a run: what, the figure against the target, met.
type Targets = Vec<(String, String, bool)>;

/// `Err` with what failed.
fn failed<E: Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
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

/// Runs the benchmark, or the parts named (`p1` ... `p6`, `remote`), over TLS, `--http` or
/// `--both` (the remote part is over TLS), and prints its report.
pub fn run(args: &[String]) -> Result<(), String> {
    const PARTS: [&str; 7] = ["p1", "p2", "p3", "p4", "p5", "p6", "remote"];
    let mut transports = vec![Transport::Tls];
    let mut parts = Vec::new();
    let mut remote = remote::Remote::default();
    let mut args_left = args.iter().map(|a| a.to_lowercase());
    while let Some(arg) = args_left.next() {
        let mut number = |what: &str| {
            let value = args_left.next().unwrap_or_default();
            value.parse::<u64>().map_err(|_| format!("bench: {what} takes a number, not {value:?}"))
        };
        match arg.as_str() {
            "--http" => transports = vec![Transport::Http],
            "--tls" => transports = vec![Transport::Tls],
            "--both" => transports = vec![Transport::Http, Transport::Tls],
            "--delay-ms" => remote.delays = vec![0, number("--delay-ms")?],
            "--keys" => remote.keys = number("--keys")? as usize,
            part if PARTS.contains(&part) => parts.push(arg),
            _ => {
                return Err(format!(
                    "bench: unknown argument {arg} (parts: {}; --http, --tls, --both; remote: --delay-ms MS, --keys N)",
                    PARTS.join(" ")
                ));
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

    let mut bench = Bench::new(lib, wanted("p3"), wanted("remote").then_some(remote.keys))?;
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
    if wanted("remote") {
        if bench.transport != Transport::Tls {
            bench.serve(Transport::Tls)?;
        }
        bench.remote(&remote, &mut targets)?;
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
    /// A KMS over HTTP with the signing keys (made by ckms), for P3 the tagged key pairs of
    /// every size ([`enumeration::create_key_pairs`]), for the remote part the keys whose
    /// listing's memory it measures ([`remote::create_key_pairs`]); the test CA.
    fn new(lib: PathBuf, enumeration: bool, remote_keys: Option<usize>) -> Result<Self, String> {
        let kms = KmsServer::start();
        let dir = kms.dir().join("bench");
        std::fs::create_dir_all(&dir).map_err(failed("create the bench folder"))?;
        println!("    KMS log {}", kms.log_path().display());
        let ckms = Ckms::new(&kms);
        let signing_keys = KEY_TYPES.iter().map(|k| ckms.create_key_pair(k.kind, &[SIGNING_TAG, k.tag])).collect();
        if enumeration {
            enumeration::create_key_pairs(&kms);
        }
        if let Some(count) = remote_keys {
            remote::create_key_pairs(&kms, count);
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
                // SAFETY: before the provider is loaded: the only other threads (the test bed's
                // process spawner) reach the environment through std alone, which locks it; no
                // C code reads it meanwhile.
                unsafe { std::env::remove_var(key) };
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
            // SAFETY: between C_Finalize (which joins the provider's threads) and the next
            // C_Initialize; the bench's other threads (the test bed's spawner, relays) reach the
            // environment through std alone, which locks it; no C code reads it meanwhile.
            unsafe { std::env::set_var(key, value) };
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
