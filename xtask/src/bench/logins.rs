//! The `ssh -I` logins: P2, a login through the provider against one with a local key file
//! of the same type, same sshd, interleaved; P4, the requests of one login (KMS log, a proxy
//! on the wire, KMS audit log), the disk cache of public keys cold then warm.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cosmian_pkcs11_testbed::{
    CountingProxy, KeyKind, SshCommand, Sshd, settled_audit_events, ssh_command, ssh_keygen_d,
};

use super::{Bench, KEY_TYPES, KeyType, SIGNING_TAG, Targets, failed, median, ms, operation_counts};

/// P2: logins per key type and side.
const LOGINS: usize = 10;

impl Bench {
    pub(super) fn p2_ssh_login(&self, targets: &mut Targets) -> Result<(), String> {
        println!("\nP2  ssh login: `ssh -I provider` (its key alone offered) vs `ssh -i local key file` of the");
        println!("    same type, same sshd, logins interleaved, median wall time of `ssh ... true` (ms)");
        println!("    {:<10} {:>7} {:>10} {:>10} {:>7}   target", "key", "logins", "ssh -I", "ssh -i", "ratio");
        let mut authorized = self.offered(&self.config, SIGNING_TAG)?;
        let mut local_keys = Vec::new();
        for key_type in KEY_TYPES.iter().filter(|k| k.ssh_keygen.is_some()) {
            let (file, public) = self.local_key(key_type)?;
            authorized.push_str(&public);
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

    pub(super) fn p4_login_requests(&self, targets: &mut Targets) -> Result<(), String> {
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

    /// A local key file of `key_type` (made once: every pass logs in with the same file) and
    /// its `authorized_keys` line.
    pub(super) fn local_key(&self, key_type: &KeyType) -> Result<(PathBuf, String), String> {
        let local_dir = self.dir.join("local-keys");
        std::fs::create_dir_all(&local_dir).map_err(failed("create a folder"))?;
        let file = local_dir.join(key_type.tag);
        if !file.exists() {
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
        let public = std::fs::read_to_string(file.with_extension("pub")).map_err(failed("read a public key"))?;
        Ok((file, public))
    }

    /// The `authorized_keys` lines `ssh-keygen -D` prints with this configuration and tag.
    pub(super) fn offered(&self, config: &Path, tag: &str) -> Result<String, String> {
        let out =
            ssh_keygen_d(&self.lib).envs(self.provider_env(config, tag)).output().map_err(failed("ssh-keygen -D"))?;
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !lines.is_empty())
            .then_some(lines)
            .ok_or_else(|| "ssh-keygen -D offered nothing".to_owned())
    }
}

/// Runs a login (`ssh ... true`); its wall time in ms.
pub(super) fn timed_login(ssh: SshCommand) -> Result<f64, String> {
    let started = Instant::now();
    let out = ssh.run("true");
    let elapsed = ms(started.elapsed());
    out.status
        .success()
        .then_some(elapsed)
        .ok_or_else(|| format!("ssh login failed: {}", String::from_utf8_lossy(&out.stderr)))
}
