//! OpenSSH end to end, as users run it, on two OpenSSH releases: Debian 12's 9.2 and the
//! current release the test bed builds from source (10.3). Keys created with the real `ckms`
//! in one real KMS, shared by every case; a throw-away `sshd` per case.
//!
//! - `logins`: `ssh-keygen -D`, `ssh -I`, `PKCS11Provider`, `ssh-agent`/`ssh-add -s` (and a
//!   KMS restarted under the agent) for EC P-256, P-384, P-521, Ed25519 and RSA 2048/3072/4096;
//!   a key with a label of several hundred bytes beside them.
//! - `certificates`: an SSH CA whose key lives in the KMS signs user and host certificates;
//!   a KMS key logs in with its certificate.
//! - `signing`: `ssh-keygen -Y sign` and git commits signed with agent-held KMS keys.
//! - `cosmian_agent`: the project's own `cosmian-ssh-agent`, through the agent protocol only.
//!
//! [`suite!`] runs every case once per OpenSSH (modules `debian12` and `current`). What a
//! release cannot do (Ed25519 from a provider before 10.1, `ssh-add -s lib cert` before 9.6) is
//! asserted as such, never skipped.

mod certificates;
mod cosmian_agent;
mod logins;
mod signing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use base64::Engine;
use cosmian_pkcs11_testbed::{
    Ckms, KEY_TYPES, KeyKind, KmsServer, OpenSsh, SshAgent, SshCommand, Sshd, current_user, output_text as text,
    provider_lib, ssh_command, write_provider_config,
};

/// Runs each listed case (`module::function`, taking the `&OpenSsh`) as a test on Debian's
/// OpenSSH (module `debian12`) and on the current one (module `current`).
macro_rules! suite {
    (@cases $($module:ident::$case:ident),*) => {
        $( #[test] fn $case() { crate::$module::$case(openssh()) } )*
    };
    ($($module:ident::$case:ident),* $(,)?) => {
        /// Debian 12's OpenSSH 9.2.
        mod debian12 {
            fn openssh() -> &'static cosmian_pkcs11_testbed::OpenSsh { cosmian_pkcs11_testbed::OpenSsh::debian() }
            suite!(@cases $($module::$case),*);
        }
        /// The current OpenSSH, built by `scripts/install-openssh.sh`.
        mod current {
            fn openssh() -> &'static cosmian_pkcs11_testbed::OpenSsh { cosmian_pkcs11_testbed::OpenSsh::current() }
            suite!(@cases $($module::$case),*);
        }
    };
}

suite! {
    logins::ssh_keygen_d_lists_every_key_with_a_readable_comment,
    logins::ssh_i_logs_in_with_every_key_type,
    logins::pkcs11provider_logs_in_with_every_key_type,
    logins::the_agent_logs_in_with_every_key_type_across_a_kms_restart,
    logins::identities_only_with_the_public_key_file,
    logins::rsa_signs_with_sha512_sha256_and_sha1,
    logins::a_key_without_the_tag_is_not_offered,
    certificates::a_kms_ca_signs_user_certificates_that_sshd_checks,
    certificates::a_kms_ca_signs_host_certificates_that_ssh_trusts,
    certificates::a_kms_key_logs_in_with_its_certificate,
    signing::ssh_keygen_y_signs_with_every_agent_held_key_type,
    signing::git_commits_signed_with_an_agent_held_kms_key_verify,
    cosmian_agent::ssh_add_lists_what_ssh_keygen_d_prints,
    cosmian_agent::every_key_type_logs_in_through_the_agent,
    cosmian_agent::rsa_signs_with_each_algorithm_the_client_asks_for,
    cosmian_agent::a_certificate_in_the_folder_logs_in,
    cosmian_agent::ssh_keygen_y_signs_through_the_agent,
    cosmian_agent::a_forwarded_agent_signs_a_second_login,
}

/// The two releases are what the suite's names say.
#[test]
fn the_two_openssh_releases() {
    let (debian, current) = (OpenSsh::debian(), OpenSsh::current());
    assert!(debian.at_least(9, 2) && !debian.at_least(9, 3), "{}", debian.banner());
    assert!(current.at_least(10, 1), "the current OpenSSH must load Ed25519 keys: {}", current.banner());
    println!("OpenSSH releases tested: {} and {}", debian.banner(), current.banner());
}

/// The tag of the SSH CA's keys, which the provider offers only when told to
/// (`COSMIAN_PKCS11_SSH_KEY_TAG=ssh-ca`).
pub const CA_TAG: &str = "ssh-ca";

/// sshd counts every key ssh offers against `MaxAuthTries` (default 6), and `ssh -I` offers
/// every key of the provider, the wanted one possibly last: the suite's sshds allow more.
/// (Users pick one key per host instead: `identities_only_with_the_public_key_file`.)
pub const MANY_KEYS: &str = "MaxAuthTries 30";

/// A key pair of the KMS and its public key as OpenSSH writes it.
pub struct Key {
    pub kind: KeyKind<'static>,
    pub private_id: String,
    /// `TYPE BASE64`, without comment, made from ckms's export (not from the provider).
    pub line: String,
}

impl Key {
    /// Does this OpenSSH take such a key from a provider? Ed25519 only from 10.1.
    pub fn loads_on(&self, openssh: &OpenSsh) -> bool {
        self.kind != KeyKind::Ec("ed25519") || openssh.at_least(10, 1)
    }

    /// The key type as sshd logs it: `Accepted publickey for USER ... ssh2: ECDSA SHA256:...`.
    pub fn sshd_type(&self) -> &'static str {
        match self.kind {
            KeyKind::Ec("ed25519") => "ED25519",
            KeyKind::Ec(_) => "ECDSA",
            KeyKind::Rsa(_) => "RSA",
        }
    }

    /// Writes the public line to `path` (a `.pub` file for `-i`, `-Y sign`, `ssh-keygen -s`).
    pub fn write_pub(&self, path: &Path) -> PathBuf {
        std::fs::write(path, format!("{}\n", self.line)).unwrap();
        path.to_owned()
    }
}

pub struct Bed {
    /// Locked to restart it; see [`using_kms`].
    pub kms: Mutex<KmsServer>,
    /// Inside the KMS's folder, which the test bed removes at exit (statics are never dropped).
    pub dir: PathBuf,
    pub config: PathBuf,
    /// By [`KEY_TYPES`] name.
    pub keys: BTreeMap<&'static str, Key>,
    /// P-256, tagged `ssh-auth` and a few hundred bytes of other tags.
    pub long_label: Key,
    /// The user tags of `long_label`, in order.
    pub long_tags: Vec<String>,
    /// A P-256 pair tagged `not-ssh` only.
    pub untagged: Key,
    /// The SSH CA keys, tagged [`CA_TAG`] only: P-384 for every OpenSSH, Ed25519 for 10.1+.
    pub ca_p384: Key,
    pub ca_ed25519: Key,
}

impl Bed {
    /// The CA key this OpenSSH signs with: Ed25519 when it loads such keys, else P-384.
    pub fn ca(&self, openssh: &OpenSsh) -> &Key {
        if self.ca_ed25519.loads_on(openssh) { &self.ca_ed25519 } else { &self.ca_p384 }
    }

    /// The keys of [`KEY_TYPES`] this OpenSSH takes from a provider.
    pub fn loaded_keys<'a>(&'a self, openssh: &'a OpenSsh) -> impl Iterator<Item = (&'static str, &'a Key)> {
        self.keys.iter().filter(move |(_, key)| key.loads_on(openssh)).map(|(name, key)| (*name, key))
    }
}

/// The public line of a public key exported by ckms as PKCS#8 PEM: through
/// `ssh-keygen -i -m PKCS8` (the user's way), or, for Ed25519, which no ssh-keygen converts,
/// from the SubjectPublicKeyInfo's last 32 bytes.
fn public_line(ckms: &Ckms, kind: KeyKind, public_id: &str, dir: &Path) -> String {
    let pem = ckms.export_public_pkcs8_pem(public_id);
    if kind == KeyKind::Ec("ed25519") {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let blob = [ssh_string(b"ssh-ed25519"), ssh_string(&spki[spki.len() - 32..])].concat();
        return format!("ssh-ed25519 {}", base64::engine::general_purpose::STANDARD.encode(blob));
    }
    let file = dir.join(format!("{public_id}.pem"));
    std::fs::write(&file, pem).unwrap();
    let out = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An SSH wire-format string: u32 length, then the bytes.
fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    [(bytes.len() as u32).to_be_bytes().as_slice(), bytes].concat()
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let dir = kms.dir().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let create = |kind: KeyKind<'static>, tags: &[&str]| {
            let pair = ckms.create_key_pair(kind, tags);
            Key { kind, line: public_line(&ckms, kind, &pair.public_id, &dir), private_id: pair.private_id }
        };
        let keys = KEY_TYPES.into_iter().map(|(name, kind)| (name, create(kind, &["ssh-auth", name]))).collect();
        let long_tags: Vec<String> = [
            "Schlüssel für den Bau-Server in Zürich — clé de déploiement de l'équipe « plateforme »",
            "本番環境のデプロイ用の鍵、毎週月曜日に当番のエンジニアが更新する",
            "🔑🚀 rotated every Monday by the on-call engineer, see the runbook in the wiki",
            "ops",
            "ci",
            "Ωμέγα-δοκιμή",
        ]
        .map(String::from)
        .into();
        let mut tags = vec!["ssh-auth"];
        tags.extend(long_tags.iter().map(String::as_str));
        let long_label = create(KeyKind::Ec("nist-p256"), &tags);
        let untagged = create(KeyKind::Ec("nist-p256"), &["not-ssh"]);
        let ca_p384 = create(KeyKind::Ec("nist-p384"), &[CA_TAG]);
        let ca_ed25519 = create(KeyKind::Ec("ed25519"), &[CA_TAG]);
        let config = write_provider_config(&dir, &kms.url(), "");
        Bed { kms: Mutex::new(kms), dir, config, keys, long_label, long_tags, untagged, ca_p384, ca_ed25519 }
    })
}

/// Every case holds this while it uses the KMS; [`restarting_kms`] takes it whole.
static KMS_IN_USE: RwLock<()> = RwLock::new(());

/// The bed, with the KMS up for as long as the guard lives.
pub fn using_kms() -> (&'static Bed, RwLockReadGuard<'static, ()>) {
    let bed = bed();
    (bed, KMS_IN_USE.read().unwrap_or_else(|e| e.into_inner()))
}

/// The bed, with no other case using the KMS while the guard lives: free to restart it.
pub fn restarting_kms() -> (&'static Bed, RwLockWriteGuard<'static, ()>) {
    let bed = bed();
    (bed, KMS_IN_USE.write().unwrap_or_else(|e| e.into_inner()))
}

/// A folder of the case's own for logs and files: `logs/<OpenSSH>/<name>`.
pub fn case_dir(openssh: &OpenSsh, name: &str) -> PathBuf {
    let release = openssh.banner().split(' ').next().unwrap_or_default();
    let dir = bed().dir.join("logs").join(release).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The provider's environment: the config, a log folder, and the tag to offer.
pub fn provider_env(config: &Path, logs: &Path, tag: &str) -> [(&'static str, PathBuf); 4] {
    [
        ("COSMIAN_KMS_CLI_CONF", config.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_FOLDER", logs.to_owned()),
        ("COSMIAN_PKCS11_LOGGING_LEVEL", "debug".into()),
        ("COSMIAN_PKCS11_SSH_KEY_TAG", tag.into()),
    ]
}

/// `ssh -I lib` of sshd's OpenSSH, with the provider's environment (keys tagged `ssh-auth`).
pub fn ssh_with_provider(sshd: &Sshd, logs: &Path) -> SshCommand {
    let mut ssh = ssh_command(sshd).provider(&provider_lib());
    for (k, v) in provider_env(&bed().config, logs, "ssh-auth") {
        ssh = ssh.env(k, v);
    }
    ssh
}

/// `ssh -F FILE testbed REMOTE_COMMAND` of sshd's OpenSSH, FILE an ssh config with a `Host
/// testbed` block aimed at sshd, holding `lines` (`PKCS11Provider ...`), the provider's
/// environment in ssh's.
pub fn ssh_with_config(sshd: &Sshd, logs: &Path, lines: &str, remote_command: &str) -> Output {
    let config = logs.join("ssh_config");
    let body = format!(
        "Host testbed\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  {}\n  IdentityFile {}\n  \
         UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n",
        sshd.port(),
        current_user(),
        lines.trim_end().replace('\n', "\n  "),
        logs.join("no-such-identity").display()
    );
    std::fs::write(&config, body).unwrap();
    let mut command = sshd.openssh().command("ssh");
    command.arg("-F").arg(&config).args(["testbed", remote_command]).envs(provider_env(
        &bed().config,
        logs,
        "ssh-auth",
    ));
    command.output().unwrap()
}

/// An agent of this OpenSSH allowed to load the provider from the build folder (its default
/// allow-list is `/usr/lib*/*,/usr/local/lib*/*`), holding the provider's keys
/// (`ssh-add -s lib CERTIFICATES...`). The provider runs in the agent's `ssh-pkcs11-helper`,
/// with THE AGENT's environment: the configuration goes there.
pub fn agent_with_provider(openssh: &'static OpenSsh, logs: &Path, certificates: &[&Path]) -> SshAgent {
    let lib = provider_lib();
    let agent = SshAgent::allowing(openssh, &lib, provider_env(&bed().config, logs, "ssh-auth"));
    let out = agent.add_provider_with(&lib, certificates).unwrap();
    assert!(out.status.success(), "ssh-add -s: {}\nagent:\n{}", text(&out), agent.log());
    agent
}

/// Asserts that a login ran `echo MARKER` (stdout is exactly the marker) and that sshd logged
/// the accepted key as `what` (`ECDSA`, `ED25519-CERT`, ...).
pub fn assert_logged_in(out: &Output, sshd: &Sshd, marker: &str, what: &str) {
    let banner = sshd.openssh().banner();
    assert!(out.status.success(), "{banner}, {what}: {}\nsshd:\n{}", text(out), sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), marker, "{banner}, {what}");
    let accepted = format!("Accepted publickey for {} from 127.0.0.1", current_user());
    assert!(
        sshd.log().lines().any(|l| l.contains(&accepted) && l.contains(&format!("ssh2: {what} "))),
        "{banner}: sshd did not accept a {what} key:\n{}",
        sshd.log()
    );
}
