//! The remote part: the KMS (over TLS) and sshd each behind a [`DelayRelay`] on loopback adding
//! the same one-way delay, as for a user whose KMS is in another zone or region and whose
//! server is as far. For each delay: the KMS round trips (counted by the relay: new
//! connections plus exchanges) of `ssh-keygen -D` cold and warm, of a warm `ssh -I` login, of
//! `ssh-add -s`, of a login through OpenSSH's ssh-agent and through `cosmian-ssh-agent` (its
//! first login after it started, `ssh-add -L`, then warm logins); and the time an `ssh -I` login and
//! an agent login take over a login with a local key file of the same type, in ms and in round
//! trips. Then the largest resident set of `ssh-keygen -D` listing one key and N keys, cold and
//! warm, as GNU time (`/usr/bin/time -f %M`, Debian's `time`) reports it: a child of this
//! process would carry this process's own size into its figure (Linux counts the memory image
//! a process replaces by `exec` in its peak), one of GNU time's only GNU time's, about 1 MB.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cosmian_pkcs11_testbed::{
    CosmianAgent, DelayRelay, KmsServer, OpenSsh, RoundTrips, SshAgent, SshCommand, Sshd, create_p256_key_pairs,
    ssh_command, ssh_keygen_d, write_provider_config,
};

use super::logins::timed_login;
use super::{Bench, KEY_TYPES, Targets, failed, median, ms};

/// The tag of the keys whose listing's memory is measured.
const MANY_TAG: &str = "remote-many";
/// Logins per kind and delay.
const LOGINS: usize = 12;

/// What the remote part measures: the one-way delays (ms), and how many keys are listed for
/// the memory figures.
pub(super) struct Remote {
    pub delays: Vec<u64>,
    pub keys: usize,
}

impl Default for Remote {
    fn default() -> Self {
        Remote { delays: vec![0, 25], keys: 1000 }
    }
}

/// For [`Bench::new`] (over HTTP, before TLS): the `count` P-256 key pairs tagged [`MANY_TAG`].
pub(super) fn create_key_pairs(kms: &KmsServer, count: usize) {
    create_p256_key_pairs(kms, count, &[MANY_TAG]);
}

/// `cosmian-ssh-agent`, built by cargo beside the provider library.
fn agent_program(lib: &Path) -> std::path::PathBuf {
    lib.with_file_name("cosmian-ssh-agent")
}

/// Round trips of several runs: the median total, and the distinct `connections + exchanges`.
fn summary(runs: &[RoundTrips]) -> (f64, String) {
    let mut totals: Vec<f64> = runs.iter().map(|r| r.total() as f64).collect();
    let mut kinds: Vec<String> = runs.iter().map(|r| format!("{}+{}", r.connections, r.exchanges)).collect();
    kinds.sort();
    kinds.dedup();
    (median(&mut totals), kinds.join(" "))
}

impl Bench {
    /// The remote part over TLS (the caller serves it), at each delay, then the memory figures.
    pub(super) fn remote(&self, remote: &Remote, targets: &mut Targets) -> Result<(), String> {
        println!("\nR   remote KMS: the KMS over TLS and sshd each behind a relay on loopback adding the same");
        println!("    one-way delay; KMS round trips counted by the relay (new connections + exchanges, shown");
        println!("    as c+e), one P-256 key; logins {LOGINS} of each kind interleaved, median wall time; added:");
        println!("    over `ssh -i` with a local P-256 key file, sshd as far away as the KMS");
        for &delay in &remote.delays {
            self.remote_at(delay, targets)?;
        }
        self.listing_memory(remote.keys, targets)
    }

    fn remote_at(&self, one_way_ms: u64, targets: &mut Targets) -> Result<(), String> {
        let one_way = Duration::from_millis(one_way_ms);
        let key_type = &KEY_TYPES[0];
        let kms_relay = DelayRelay::start(self.kms.port(), one_way);
        let dir = self.dir.join("remote").join(format!("{one_way_ms}ms"));
        std::fs::create_dir_all(&dir).map_err(failed("create a folder"))?;
        let url = format!("https://127.0.0.1:{}", kms_relay.port());
        let config = write_provider_config(&dir, &url, &self.trust_lines());
        let env = self.provider_env(&config, key_type.tag);
        println!("\n    one-way {one_way_ms} ms (a {} ms round trip)", 2 * one_way_ms);
        println!("    {:<34} {:>9} {:>9} {:>10} {:>9}", "action", "KMS RT", "c+e", "wall (ms)", "added");

        let round_trips = |rt: f64, kinds: &str| format!("{rt:>9.1} {kinds:>9}");
        let _ = std::fs::remove_dir_all(self.disk_cache());
        for run in ["cold", "warm"] {
            kms_relay.reset();
            let started = Instant::now();
            let out = ssh_keygen_d(&self.lib).envs(env.clone()).output().map_err(failed("ssh-keygen -D"))?;
            let wall = ms(started.elapsed());
            if !out.status.success() || out.stdout.is_empty() {
                return Err(format!("ssh-keygen -D offered nothing: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let (rt, kinds) = summary(&[kms_relay.round_trips()]);
            println!("    {:<34} {} {wall:>10.1}", format!("ssh-keygen -D, {run}"), round_trips(rt, &kinds));
            if run == "warm" && one_way_ms > 0 {
                targets.push((
                    format!("R ssh-keygen -D warm, KMS round trips, {one_way_ms} ms"),
                    format!("{rt} (<= 3)"),
                    rt <= 3.0,
                ));
            }
        }

        let (local_file, local_public) = self.local_key(key_type)?;
        let authorized = self.offered(&self.config, key_type.tag)? + &local_public;
        let sshd = Sshd::start(&authorized, "");
        let sshd_relay = DelayRelay::start(sshd.port(), one_way);
        // The first -p wins: ssh keeps the first value it reads for an option.
        let far = || ssh_command(&sshd).opt("-p").opt(sshd_relay.port().to_string());
        let via_provider = || env.iter().fold(far().provider(&self.lib), |ssh, (k, v)| ssh.env(k, v));
        let local = || far().opt("-i").opt(&local_file);

        let agent = SshAgent::allowing(OpenSsh::debian(), &self.lib, env.clone());
        kms_relay.reset();
        let started = Instant::now();
        let added = agent.add_provider(&self.lib).map_err(failed("ssh-add -s"))?;
        let wall = ms(started.elapsed());
        if !added.status.success() {
            return Err(format!("ssh-add -s: {}{}", String::from_utf8_lossy(&added.stderr), agent.log()));
        }
        // The helper may confirm its list after ssh-add returned: its round trips count too.
        std::thread::sleep(one_way * 8 + Duration::from_millis(300));
        let (rt, kinds) = summary(&[kms_relay.round_trips()]);
        println!("    {:<34} {} {wall:>10.1}", "ssh-add -s (the helper lists, warm)", round_trips(rt, &kinds));
        let via_agent = || far().env("SSH_AUTH_SOCK", agent.sock());

        // cosmian-ssh-agent, started now: its first login, then `ssh-add -L` (warm).
        let ours = CosmianAgent::start(&agent_program(&self.lib), env.clone(), &[]);
        let via_ours = || far().env("SSH_AUTH_SOCK", ours.sock());
        kms_relay.reset();
        let wall = timed_login(via_ours())?;
        let (rt, kinds) = summary(&[kms_relay.round_trips()]);
        println!("    {:<34} {} {wall:>10.1}", "cosmian-ssh-agent, first login", round_trips(rt, &kinds));
        kms_relay.reset();
        let started = Instant::now();
        let listed = ours.command(OpenSsh::debian(), "ssh-add").arg("-L").output().map_err(failed("ssh-add -L"))?;
        let wall = ms(started.elapsed());
        if !listed.status.success() {
            return Err(format!("ssh-add -L: {}{}", String::from_utf8_lossy(&listed.stderr), ours.log()));
        }
        let (rt, kinds) = summary(&[kms_relay.round_trips()]);
        println!("    {:<34} {} {wall:>10.1}", "cosmian-ssh-agent, ssh-add -L", round_trips(rt, &kinds));

        // One of each first: the page cache, sshd, the agent's connection.
        let kinds: [(&str, &dyn Fn() -> SshCommand); 4] =
            [("ssh -I", &via_provider), ("agent", &via_agent), ("ours", &via_ours), ("ssh -i", &local)];
        for (_, login) in &kinds {
            timed_login(login())?;
        }
        let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut trips = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for i in 0..LOGINS {
            for k in 0..kinds.len() {
                let k = (k + i) % kinds.len();
                kms_relay.reset();
                times[k].push(timed_login(kinds[k].1())?);
                trips[k].push(kms_relay.round_trips());
            }
        }
        let local_ms = median(&mut times[3]);
        for (k, what) in
            [(0, "ssh -I login, warm"), (1, "login through ssh-agent"), (2, "login through cosmian-ssh-agent")]
        {
            let wall = median(&mut times[k]);
            let (rt, kinds) = summary(&trips[k]);
            let over = wall - local_ms;
            let added = if one_way_ms > 0 {
                format!("{over:+.0} ms = {:.1} RT", over / (2 * one_way_ms) as f64)
            } else {
                format!("{over:+.1} ms")
            };
            println!("    {what:<34} {} {wall:>10.1} {added:>9}", round_trips(rt, &kinds));
            if one_way_ms == 0 {
                continue;
            }
            let over_rt = over / (2 * one_way_ms) as f64;
            if k == 0 {
                targets.push((
                    format!("R ssh -I warm, KMS round trips, {one_way_ms} ms"),
                    format!("{rt} (<= 3)"),
                    rt <= 3.0,
                ));
                targets.push((
                    format!("R ssh -I warm, round trips added to a login, {one_way_ms} ms"),
                    format!("{over_rt:.1} (<= 1.5)"),
                    over_rt <= 1.5,
                ));
            } else {
                let agent = if k == 1 { "ssh-agent + provider" } else { "cosmian-ssh-agent" };
                targets.push((
                    format!("R {agent} login, KMS round trips, {one_way_ms} ms"),
                    format!("{rt} (= 1)"),
                    rt <= 1.0,
                ));
            }
        }
        println!("    {:<34} {:>9} {:>9} {local_ms:>10.1}", "ssh -i local key file", "", "");
        if one_way_ms == 0 {
            println!(
                "    (at 0 ms the relay may count a TLS 1.3 ticket flight or a closing alert, which the KMS sends"
            );
            println!("    unasked, as an exchange of its own: the round trips are those at the larger delay)");
        }
        Ok(())
    }

    /// The largest resident set of `ssh-keygen -D` listing one key, then `keys` keys, each with
    /// the disk cache empty then filled, straight to the KMS.
    fn listing_memory(&self, keys: usize, targets: &mut Targets) -> Result<(), String> {
        if !Path::new(GNU_TIME).exists() {
            println!("\n    max RSS of `ssh-keygen -D`: not measured, {GNU_TIME} is missing (apt-get install time)");
            return Ok(());
        }
        println!("\n    max RSS of `ssh-keygen -D` (MB, GNU time), straight to the KMS over TLS");
        println!("    {:>6} {:>8} {:>8}", "keys", "cold", "warm");
        for (count, tag) in [(1, KEY_TYPES[0].tag), (keys, MANY_TAG)] {
            let _ = std::fs::remove_dir_all(self.disk_cache());
            let mut rss = Vec::new();
            for _ in ["cold", "warm"] {
                let mut keygen = ssh_keygen_d(&self.lib);
                keygen.envs(self.provider_env(&self.config, tag));
                let (kb, listed) = max_rss_kb(&keygen, &self.dir)?;
                if listed != count.min(1000) {
                    return Err(format!("ssh-keygen -D listed {listed} of {count} keys"));
                }
                rss.push(kb as f64 / 1024.0);
            }
            println!("    {count:>6} {:>8.1} {:>8.1}", rss[0], rss[1]);
            if count > 1 {
                targets.push((
                    format!("R ssh-keygen -D max RSS, {count} keys, cold (MB)"),
                    format!("{:.1} (<= 25)", rss[0]),
                    rss[0] <= 25.0,
                ));
            }
        }
        Ok(())
    }
}

/// GNU time, which reports the peak resident set of the command it runs.
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `command` to its end under GNU time: its largest resident set (KB) and the lines it
/// printed.
fn max_rss_kb(command: &Command, dir: &Path) -> Result<(u64, usize), String> {
    let report = dir.join("max-rss");
    let mut timed = Command::new(GNU_TIME);
    timed.args(["-f", "%M", "-o"]).arg(&report).arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    let out = timed.output().map_err(failed("run GNU time"))?;
    if !out.status.success() {
        return Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let kb = std::fs::read_to_string(&report).map_err(failed("read GNU time's report"))?;
    let kb = kb.lines().last().unwrap_or_default().trim().parse().map_err(failed("GNU time's report"))?;
    Ok((kb, String::from_utf8_lossy(&out.stdout).lines().count()))
}
