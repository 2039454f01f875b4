//! P6: what starting over TLS costs a process. `ssh-keygen -D` lists the one key of a KMS
//! whose public key is in the disk cache (the provider loads, reads its configuration,
//! connects, sends one Locate) against a KMS over HTTP and another over TLS (the test CA in
//! `verified_cert`), runs interleaved: the wall time and the CPU time of the process (user +
//! system, from `getrusage(RUSAGE_CHILDREN)` around each run), medians.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cosmian_pkcs11_testbed::{KmsServer, create_p256_key_pairs, ssh_keygen_d, write_provider_config};

use super::{Bench, Targets, Transport, failed, median, ms};

/// Runs per side, after one that fills the disk cache.
const RUNS: usize = 40;
/// The tag of the one key listed.
const TAG: &str = "startup";

pub(super) fn p6_startup(bench: &Bench, targets: &mut Targets) -> Result<(), String> {
    println!(
        "\nP6  process start-up: `ssh-keygen -D`, one key, its public key in the disk cache, against a KMS\n    \
         over HTTP and one over TLS, {RUNS} runs per side, interleaved, median (ms)"
    );
    let sides = [Transport::Http, Transport::Tls].map(|transport| kms(bench, transport));
    let [http, tls] = sides;
    let (http, tls) = (http?, tls?);
    let configs = [&http.1, &tls.1];
    let mut figures = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; // [side][wall, cpu]
    for run in 0..=RUNS {
        for side in [run % 2, 1 - run % 2] {
            let (wall, cpu) = keygen_d(bench, configs[side])?;
            if run > 0 {
                figures[side][0].push(wall);
                figures[side][1].push(cpu);
            }
        }
    }
    let [[http_wall, http_cpu], [tls_wall, tls_cpu]] = figures.map(|side| side.map(|mut f| median(&mut f)));
    println!("    {:<6} {:>9} {:>9}", "", "wall", "CPU");
    println!("    {:<6} {http_wall:>9.1} {http_cpu:>9.1}", "HTTP");
    println!("    {:<6} {tls_wall:>9.1} {tls_cpu:>9.1}", "TLS");
    let ratio = tls_wall / http_wall;
    let extra_cpu = tls_cpu - http_cpu;
    println!("    TLS / HTTP wall time {ratio:.2} (<= 2); CPU TLS - HTTP {extra_cpu:.1} ms (<= 5)");
    targets.push(("P6 ssh-keygen -D warm, wall time TLS / HTTP".into(), format!("{ratio:.2} (<= 2)"), ratio <= 2.0));
    targets.push((
        "P6 ssh-keygen -D warm, CPU time TLS - HTTP (ms)".into(),
        format!("{extra_cpu:.1} (<= 5)"),
        extra_cpu <= 5.0,
    ));
    Ok(())
}

/// A KMS serving `transport` with one key pair tagged [`TAG`] (made over HTTP, then the server
/// restarted with TLS if asked), and a provider configuration for it.
fn kms(bench: &Bench, transport: Transport) -> Result<(KmsServer, PathBuf), String> {
    let mut kms = KmsServer::start();
    create_p256_key_pairs(&kms, 1, &[TAG]);
    let trust = match transport {
        Transport::Tls => {
            let args = bench.ca.kms_args();
            kms.restart_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
            bench.ca.verified_cert_line()
        }
        Transport::Http => String::new(),
    };
    let dir = bench.dir.join("startup").join(transport.to_string());
    std::fs::create_dir_all(&dir).map_err(failed("create a folder"))?;
    let config = write_provider_config(&dir, &kms.url(), &trust);
    Ok((kms, config))
}

/// One `ssh-keygen -D` with this configuration: its wall time and CPU time (ms).
fn keygen_d(bench: &Bench, config: &Path) -> Result<(f64, f64), String> {
    let cpu = children_cpu_ms();
    let started = Instant::now();
    let out =
        ssh_keygen_d(&bench.lib).envs(bench.provider_env(config, TAG)).output().map_err(failed("ssh-keygen -D"))?;
    let wall = ms(started.elapsed());
    let cpu = children_cpu_ms() - cpu;
    (out.status.success() && !out.stdout.is_empty())
        .then_some((wall, cpu))
        .ok_or_else(|| format!("ssh-keygen -D offered nothing: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The CPU time (user + system, ms) of this process's children that have been waited for.
fn children_cpu_ms() -> f64 {
    // SAFETY: `rusage` is a C struct of integers and timevals, for which all-zero bits are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable `rusage` that getrusage fills for RUSAGE_CHILDREN.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}
