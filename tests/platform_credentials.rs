//! The KMS access token, against the real KMS started with bearer-token authentication
//! (`--api-token-id`: the token is the base64 of a symmetric key's bytes): read from the
//! configuration file, from the kernel keyring (`keyctl`), from the Secret Service (GNOME
//! Keyring inside `dbus-run-session`, stored with `secret-tool`), and from inside ssh-agent's
//! `ssh-pkcs11-helper`; and PIN mode (`pkcs11_use_pin_as_access_token = true`), where `ssh`
//! asks for the PIN through SSH_ASKPASS and sends it as the token. Every provider log is
//! written at trace level and checked for the token and the PINs.

mod platform_support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use cosmian_pkcs11_testbed::{
    Ckms, KeyKind, KmsServer, OpenSsh, SshAgent, Sshd, binaries, clean_command, current_user, provider_lib,
    ssh_command, write_pin_mode_config,
};
use platform_support::{
    KeyringEntry, assert_log_is_trace_and_clean, case, folder, keygen_d, provider_env, provider_log, run_ok, text,
};

/// The identifier of the symmetric key whose bytes are the token.
const TOKEN_KEY_ID: &str = "pkcs11-api-token";

struct Bed {
    kms: KmsServer,
    /// The bearer token the KMS accepts.
    token: String,
    /// The `ssh-auth` key pair's private id, and its `authorized_keys` line.
    key_id: String,
    authorized: String,
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let mut kms = KmsServer::start();
        let ckms = Ckms::new(&kms);
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
        let token = base64::engine::general_purpose::STANDARD.encode(bytes);
        let created = ckms.run(&["sym", "keys", "create", "--bytes-b64", &token, TOKEN_KEY_ID]);
        assert!(created.status.success(), "{}", text(&created));
        let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]);
        let pem = kms.dir().join("key.pem");
        std::fs::write(&pem, ckms.export_public_pkcs8_pem(&pair.public_id)).unwrap();
        let line = run_ok(Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem));
        let authorized = String::from_utf8(line.stdout).unwrap().trim().to_owned();
        // From now on every request needs `Authorization: Bearer <token>`.
        kms.restart_with_args(&["--api-token-id", TOKEN_KEY_ID]);
        Bed { kms, token, key_id: pair.private_id, authorized }
    })
}

/// The OS stores are shared by the whole machine, and each case below expects a given store to
/// hold the token for this KMS's URL (or none to): one case at a time.
fn stores() -> MutexGuard<'static, ()> {
    static STORES: Mutex<()> = Mutex::new(());
    STORES.lock().unwrap_or_else(|p| p.into_inner())
}

fn assert_offers_the_key(config: &Path, logs: &Path) {
    let out = keygen_d(config, logs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ecdsa-sha2-nistp256 ") && stdout.trim_end().ends_with(&bed().key_id),
        "{}\nprovider log:\n{}",
        text(&out),
        provider_log(logs)
    );
}

fn assert_refused(config: &Path, logs: &Path) {
    let out = keygen_d(config, logs);
    assert!(out.stdout.is_empty(), "keys offered: {}", text(&out));
    let log = provider_log(logs);
    assert!(log.contains("cannot list the keys of the KMS: KMS refused the credentials: HTTP 401"), "{log}");
}

#[test]
fn token_in_the_configuration_file() {
    let bed = bed();
    let _stores = stores();
    let dir = bed.kms.dir();
    let url = bed.kms.url();

    let (config, logs) = case(dir, "file-token", &url, &format!("access_token = \"{}\"", bed.token));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_offers_the_key(&config, &logs);
    assert!(!provider_log(&logs).contains("other users can read it"));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);

    // The same file, readable by others: it still works, and the log says to fix it.
    let (config, logs) = case(dir, "file-token-0644", &url, &format!("access_token = \"{}\"", bed.token));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_offers_the_key(&config, &logs);
    let log = provider_log(&logs);
    assert!(log.contains("WARN") && log.contains("holds access_token and other users can read it (mode 644)"), "{log}");
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);

    // No token anywhere, or a wrong one: the KMS refuses, the log says so.
    let (config, logs) = case(dir, "no-token", &url, "");
    assert_refused(&config, &logs);
    let (config, logs) = case(dir, "wrong-token", &url, "access_token = \"d3JvbmctdG9rZW4=\"");
    assert_refused(&config, &logs);
    assert_log_is_trace_and_clean(&logs, &[&bed.token, "d3JvbmctdG9rZW4="]);
}

#[test]
fn token_in_the_kernel_keyring_and_an_ssh_login() {
    let bed = bed();
    let _stores = stores();
    let url = bed.kms.url();
    let _entry = KeyringEntry::add("cosmian-kms", &url, &bed.token);
    let (config, logs) = case(bed.kms.dir(), "keyring", &url, "");
    assert_offers_the_key(&config, &logs);
    assert!(
        provider_log(&logs).contains("secret found in the OS credential store store=\"keyutils\""),
        "{}",
        provider_log(&logs)
    );

    // A whole login: the signature goes with the token too.
    let sshd = Sshd::start(&bed.authorized, "");
    let mut ssh = ssh_command(&sshd).provider(&provider_lib());
    for (k, v) in provider_env(&config, &logs) {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("echo logged-in-as-$(id -un)");
    assert!(out.status.success(), "{}\nsshd:\n{}\nprovider:\n{}", text(&out), sshd.log(), provider_log(&logs));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("logged-in-as-{}", current_user()));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);
}

/// GNOME Keyring on a private session bus: no Secret Service yet (not found, at once), then
/// the token stored with `secret-tool` (found), then the collection locked (not found, and no
/// prompt: the lookup returns at once).
#[test]
fn token_in_the_secret_service() {
    let bed = bed();
    let _stores = stores();
    let url = bed.kms.url();
    let dir = folder(bed.kms.dir(), "secret-service");
    let (config, _) = case(&dir, "config", &url, "");
    let [before, stored, locked] = ["1-no-service", "2-stored", "3-locked"].map(|n| folder(&dir, n));
    let home = folder(&dir, "home");
    let script = r#"
        set -e
        keygen() { COSMIAN_PKCS11_LOGGING_FOLDER="$1" ssh-keygen -D "$LIB" > "$1/stdout" 2> "$1/stderr" || true; }
        keygen "$BEFORE"
        bus() { dbus-send --session --print-reply --dest="$1" "$2" "$3" "$4"; }
        printf '%s' "$KEYRING_PASSWORD" | gnome-keyring-daemon --unlock --components=secrets > /dev/null
        # Until the daemon owns its name, a call would D-Bus-activate a second one that races
        # the first on the new keyring file.
        i=0
        until bus org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets | grep -q true; do
            i=$((i + 1)); [ $i -lt 200 ] || { echo "gnome-keyring did not start" >&2; exit 1; }; sleep 0.05
        done
        printf '%s' "$TOKEN" | secret-tool store --label='Cosmian KMS access token' service cosmian-kms account "$URL"
        unset TOKEN
        keygen "$STORED"
        # (`secret-tool lock` crashes in libsecret 0.20.5.)
        bus org.freedesktop.secrets /org/freedesktop/secrets org.freedesktop.Secret.Service.Lock array:objpath:/org/freedesktop/secrets/collection/login > /dev/null
        keygen "$LOCKED"
    "#;
    let started = Instant::now();
    let out = clean_command("dbus-run-session")
        .args(["--", "sh", "-c", script])
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env("KEYRING_PASSWORD", "keyring-password")
        .env("TOKEN", &bed.token)
        .env("URL", &url)
        .env("LIB", provider_lib())
        .env("BEFORE", &before)
        .env("STORED", &stored)
        .env("LOCKED", &locked)
        .envs(provider_env(&config, &before))
        .output()
        .expect("cannot run dbus-run-session (Debian package dbus)");
    assert!(out.status.success(), "{}", text(&out));
    // Three provider loads, gnome-keyring's start and two secret-tool calls.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());

    let stdout = |logs: &Path| std::fs::read_to_string(logs.join("stdout")).unwrap();
    assert!(stdout(&before).is_empty(), "{}", stdout(&before));
    assert!(provider_log(&before).contains("no Secret Service runs on the session bus"), "{}", provider_log(&before));

    let offered = stdout(&stored);
    assert!(
        offered.starts_with("ecdsa-sha2-nistp256 ") && offered.trim_end().ends_with(&bed.key_id),
        "{offered}\n{}",
        provider_log(&stored)
    );
    assert!(
        provider_log(&stored).contains("secret found in the OS credential store store=\"Secret Service\""),
        "{}",
        provider_log(&stored)
    );

    assert!(stdout(&locked).is_empty(), "{}", stdout(&locked));
    assert!(provider_log(&locked).contains("the entry is in a locked collection"), "{}", provider_log(&locked));
    for logs in [&before, &stored, &locked] {
        assert_log_is_trace_and_clean(logs, &[&bed.token, "keyring-password"]);
    }
}

/// A session bus that accepts connections and never answers: the lookup gives up after its
/// short timeout and the provider goes on (here to a KMS that refuses it, having no token).
#[test]
fn a_stalled_session_bus_does_not_hold_the_provider() {
    let bed = bed();
    let _stores = stores();
    let dir = folder(bed.kms.dir(), "stalled-bus");
    let socket = dir.join("bus.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream); // Accepted, never read nor answered.
        }
    });
    let (config, logs) = case(&dir, "case", &bed.kms.url(), "");
    let started = Instant::now();
    let out = cosmian_pkcs11_testbed::ssh_keygen_d(&provider_lib())
        .envs(provider_env(&config, &logs))
        .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={}", socket.display()))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(out.stdout.is_empty() && out.status.code().is_some(), "{}", text(&out));
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let log = provider_log(&logs);
    assert!(log.contains("store=\"Secret Service\"") && log.contains("no answer within 1500 ms"), "{log}");
}

/// ssh-agent runs the provider in `ssh-pkcs11-helper`, with the agent's environment: the
/// token comes from the kernel keyring there too.
#[test]
fn ssh_agent_with_the_token_in_the_keyring() {
    let bed = bed();
    let _stores = stores();
    let url = bed.kms.url();
    let _entry = KeyringEntry::add("cosmian-kms", &url, &bed.token);
    let (config, logs) = case(bed.kms.dir(), "agent", &url, "");
    let lib = provider_lib();
    let agent = SshAgent::allowing(OpenSsh::debian(), &lib, provider_env(&config, &logs));
    let out = agent.add_provider(&lib).unwrap();
    assert!(
        out.status.success(),
        "ssh-add -s: {}\nagent:\n{}\nprovider:\n{}",
        text(&out),
        agent.log(),
        provider_log(&logs)
    );
    let listed = run_ok(agent.command("ssh-add").arg("-l"));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&bed.key_id), "{}", text(&listed));

    let sshd = Sshd::start(&bed.authorized, "");
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo via-agent");
    assert!(out.status.success(), "{}\nsshd:\n{}\nprovider:\n{}", text(&out), sshd.log(), provider_log(&logs));
    assert!(provider_log(&logs).contains("store=\"keyutils\""), "{}", provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);
}

/// The environment that makes OpenSSH ask an SSH_ASKPASS program (forced, no display needed),
/// which records its prompts in `logs/prompts` and answers with the content of `logs/pin`.
fn askpass_env(logs: &Path) -> Vec<(&'static str, PathBuf)> {
    let askpass = logs.join("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$1\" >> \"$ASKPASS_PROMPTS\"\ncat \"$ASKPASS_PIN_FILE\"\n")
        .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    vec![
        ("SSH_ASKPASS", askpass),
        ("SSH_ASKPASS_REQUIRE", "force".into()),
        ("ASKPASS_PROMPTS", logs.join("prompts")),
        ("ASKPASS_PIN_FILE", logs.join("pin")),
    ]
}

/// `ssh -I` without BatchMode, the PIN from SSH_ASKPASS; returns the outcome and the prompts
/// the program was shown.
fn ssh_with_pin(sshd: &Sshd, config: &Path, logs: &Path, pin: &str) -> (std::process::Output, String) {
    std::fs::write(logs.join("pin"), format!("{pin}\n")).unwrap();
    let mut ssh = ssh_command(sshd).provider(&provider_lib()).opt("-o").opt("BatchMode=no");
    for (k, v) in provider_env(config, logs).into_iter().chain(askpass_env(logs)) {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("echo pin-login");
    (out, std::fs::read_to_string(logs.join("prompts")).unwrap_or_default())
}

#[test]
fn pin_mode_ssh_asks_for_the_pin_and_sends_it_as_the_token() {
    let bed = bed();
    let dir = folder(bed.kms.dir(), "pin-mode");
    let sshd = Sshd::start(&bed.authorized, "");
    let expected_prompt = format!("Enter PIN for 'Cosmian KMS {}': ", bed.kms.url().trim_start_matches("http://"));

    let logs = folder(&dir, "right-pin");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), "");
    let (out, prompts) = ssh_with_pin(&sshd, &config, &logs, &bed.token);
    assert!(out.status.success(), "{}\nsshd:\n{}\nprovider:\n{}", text(&out), sshd.log(), provider_log(&logs));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pin-login");
    assert_eq!(prompts.lines().collect::<Vec<_>>(), [expected_prompt.as_str()], "one prompt, for this token");
    assert!(provider_log(&logs).contains("the KMS accepted the PIN as access token"), "{}", provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);

    let wrong_pin = "V3JvbmdQaW4tbm90LXRoZS10b2tlbg==";
    let logs = folder(&dir, "wrong-pin");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), "");
    let (out, prompts) = ssh_with_pin(&sshd, &config, &logs, wrong_pin);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PIN incorrect") && stderr.contains("Permission denied"), "{}", text(&out));
    assert_eq!(prompts.lines().count(), 1, "{prompts}");
    assert!(provider_log(&logs).contains("the KMS refused the PIN as access token"), "{}", provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[&bed.token, wrong_pin]);

    // Where nobody may be asked (BatchMode=yes), OpenSSH reads CKF_LOGIN_REQUIRED and gives up
    // on the token before opening a session: nothing reaches the KMS.
    let logs = folder(&dir, "batch-mode");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), "");
    let mut ssh = ssh_command(&sshd).provider(&provider_lib());
    for (k, v) in provider_env(&config, &logs) {
        ssh = ssh.env(k, v);
    }
    let out = ssh.run("true");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pin required"), "{}", text(&out));
    assert!(!provider_log(&logs).contains("KMS request"), "{}", provider_log(&logs));

    // ssh-add -s asks for the PIN and hands it to the agent's ssh-pkcs11-helper, which logs in.
    let logs = folder(&dir, "agent");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), "");
    std::fs::write(logs.join("pin"), format!("{}\n", bed.token)).unwrap();
    let lib = provider_lib();
    let agent = SshAgent::allowing(OpenSsh::debian(), &lib, provider_env(&config, &logs));
    let added = agent.command("ssh-add").arg("-s").arg(&lib).envs(askpass_env(&logs)).output().unwrap();
    assert!(
        added.status.success(),
        "ssh-add -s: {}\nagent:\n{}\nprovider:\n{}",
        text(&added),
        agent.log(),
        provider_log(&logs)
    );
    let out = ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo via-agent");
    assert!(out.status.success(), "{}\nprovider:\n{}", text(&out), provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);

    // ssh-keygen -D asks too, and then lists the key.
    let logs = folder(&dir, "keygen");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), "");
    std::fs::write(logs.join("pin"), format!("{}\n", bed.token)).unwrap();
    let out = cosmian_pkcs11_testbed::ssh_keygen_d(&provider_lib())
        .envs(provider_env(&config, &logs))
        .envs(askpass_env(&logs))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim_end().ends_with(&bed.key_id),
        "{}\n{}",
        text(&out),
        provider_log(&logs)
    );
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);
}

/// The switch lives at the top level of the ckms file because ckms 5.28 refuses unknown keys
/// in `[http_config]` but accepts them at the top: the same file serves ckms and the provider.
#[test]
fn pin_mode_configuration_is_accepted_by_ckms() {
    let bed = bed();
    let logs = folder(bed.kms.dir(), "pin-mode-ckms");
    let config = write_pin_mode_config(&logs, &bed.kms.url(), &format!("access_token = \"{}\"\n", bed.token));
    let out = clean_command(&binaries().ckms)
        .env("CKMS_CONF", &config)
        .args(["locate", "--tag", "ssh-auth"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ckms refused the PIN-mode file: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&bed.key_id), "{}", text(&out));

    // The provider, in PIN mode, ignores the file's token and says so.
    let out = keygen_d(&config, &logs);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(provider_log(&logs).contains("access_token is ignored"), "{}", provider_log(&logs));
    assert_log_is_trace_and_clean(&logs, &[&bed.token]);
}
