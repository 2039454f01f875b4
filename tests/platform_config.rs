//! Where the provider finds its configuration and where its log goes, seen from a real
//! PKCS#11 client (`ssh-keygen -D`) spawned with HOME pointed at a fresh folder: each location
//! is picked in order, the environment wins, a missing or unreadable file is reported without
//! a fallthrough or a crash; the log lands in the chosen folder at the chosen level.

mod platform_support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use cosmian_pkcs11_testbed::{Ckms, KeyKind, KmsServer, provider_lib, ssh_keygen_d};
use platform_support::{LOG_FILE, folder, provider_log, text};

const SYSTEM_FILE: &str = "/etc/cosmian/ckms.toml";

struct Bed {
    kms: KmsServer,
    key_id: String,
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let kms = KmsServer::start();
        let key_id = Ckms::new(&kms).create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth"]).private_id;
        Bed { kms, key_id }
    })
}

/// A configuration that works (the bed's KMS) or one that is broken.
fn working() -> String {
    format!("[http_config]\nserver_url = \"{}\"\n", bed().kms.url())
}
const BROKEN: &str = "this is [[ not toml";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `ssh-keygen -D` with HOME = `home`, the provider's log in `logs` at debug level, no XDG
/// variable, and `env` (the configuration variables) added.
fn keygen(home: &Path, logs: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = ssh_keygen_d(&provider_lib());
    command
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env("COSMIAN_PKCS11_LOGGING_FOLDER", logs)
        .env("COSMIAN_PKCS11_LOGGING_LEVEL", "debug");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(out.status.code().is_some(), "ssh-keygen crashed: {}", text(&out));
    out
}

/// Runs `ssh-keygen -D` and checks which file the provider chose (the debug line naming it)
/// and whether it offered the bed's key.
fn assert_chooses(step: &str, home: &Path, env: &[(&str, &Path)], chosen: &Path, offers: bool) {
    let logs = folder(home, &format!("logs-{step}"));
    let out = keygen(home, &logs, env);
    let log = provider_log(&logs);
    assert!(
        log.contains(&format!("configuration file file={}", chosen.display())),
        "{step}: not {}:\n{log}",
        chosen.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.contains(&bed().key_id), offers, "{step}: {}\n{log}", text(&out));
}

/// Creates the system-wide file for the test's duration when there is none (these machines
/// run the tests as root), and removes what it created.
struct SystemFile {
    created_dir: bool,
}

impl SystemFile {
    fn create(text: &str) -> SystemFile {
        let dir = Path::new(SYSTEM_FILE).parent().unwrap();
        let created_dir = !dir.exists();
        write(Path::new(SYSTEM_FILE), text);
        SystemFile { created_dir }
    }
}

impl Drop for SystemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SYSTEM_FILE);
        if self.created_dir {
            let _ = std::fs::remove_dir(Path::new(SYSTEM_FILE).parent().unwrap());
        }
    }
}

#[test]
fn each_location_is_picked_in_order_and_the_environment_wins() {
    let bed = bed();
    let home = folder(bed.kms.dir(), "home");
    let kms_toml = home.join(".cosmian/kms.toml");
    let ckms_toml = home.join(".cosmian/ckms.toml");

    // The system-wide file, last in line. A machine that has one keeps it (untouched).
    let _system = if Path::new(SYSTEM_FILE).exists() {
        assert_chooses("system-existing", &home, &[], Path::new(SYSTEM_FILE), false);
        None
    } else {
        let logs = folder(&home, "logs-nothing");
        let out = keygen(&home, &logs, &[]);
        assert!(out.stdout.is_empty(), "{}", text(&out));
        let log = provider_log(&logs);
        assert!(log.contains("no configuration file found") && log.contains(&kms_toml.display().to_string()), "{log}");
        let system = SystemFile::create(&working());
        assert_chooses("system", &home, &[], Path::new(SYSTEM_FILE), true);
        std::fs::write(SYSTEM_FILE, BROKEN).unwrap();
        Some(system)
    };

    // Each file found wins over the ones after it, which are broken from now on: the key is
    // offered only if the chosen file is the one read.
    write(&ckms_toml, &working());
    assert_chooses("home-ckms", &home, &[], &ckms_toml, true);
    write(&ckms_toml, BROKEN);
    write(&kms_toml, &working());
    assert_chooses("home-kms", &home, &[], &kms_toml, true);
    write(&kms_toml, BROKEN);

    let ckms_conf = home.join("ckms-conf.toml");
    write(&ckms_conf, &working());
    assert_chooses("CKMS_CONF", &home, &[("CKMS_CONF", &ckms_conf)], &ckms_conf, true);
    write(&ckms_conf, BROKEN);
    let cli_conf = home.join("cli-conf.toml");
    write(&cli_conf, &working());
    assert_chooses(
        "COSMIAN_KMS_CLI_CONF",
        &home,
        &[("COSMIAN_KMS_CLI_CONF", &cli_conf), ("CKMS_CONF", &ckms_conf)],
        &cli_conf,
        true,
    );

    // A variable naming a missing file is an error, not a fallthrough to the working files.
    write(&kms_toml, &working());
    let missing = home.join("missing.toml");
    assert_chooses("CKMS_CONF-missing", &home, &[("CKMS_CONF", &missing)], &missing, false);
    assert!(provider_log(&home.join("logs-CKMS_CONF-missing")).contains(&format!("cannot read {}", missing.display())));

    // An unreadable file (a folder): a clear line, no keys, no crash.
    let unreadable = folder(&home, "a-folder.toml");
    assert_chooses("unreadable", &home, &[("COSMIAN_KMS_CLI_CONF", &unreadable)], &unreadable, false);
    let log = provider_log(&home.join("logs-unreadable"));
    assert!(log.contains(&format!("the token will hold no keys: cannot read {}", unreadable.display())), "{log}");
}

/// `ssh-keygen -D` with the working configuration and these logging variables, HOME = `home`.
fn keygen_logging(home: &Path, level: Option<&str>, folder_var: Option<&Path>, xdg_state: Option<&Path>) -> Output {
    let config = home.join("kms.toml");
    write(&config, &working());
    let mut command: Command = ssh_keygen_d(&provider_lib());
    // XDG_CACHE_HOME removed too: the public-key disk cache goes to this HOME (a cold one).
    command
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env("COSMIAN_KMS_CLI_CONF", &config);
    if let Some(level) = level {
        command.env("COSMIAN_PKCS11_LOGGING_LEVEL", level);
    }
    if let Some(f) = folder_var {
        command.env("COSMIAN_PKCS11_LOGGING_FOLDER", f);
    }
    if let Some(x) = xdg_state {
        command.env("XDG_STATE_HOME", x);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Whatever the level, stdout holds the key lines and nothing else.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().count() == 1 && stdout.starts_with("ecdsa-sha2-nistp256 "), "{}", text(&out));
    out
}

fn levels_in(log: &str) -> Vec<&'static str> {
    ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"].into_iter().filter(|l| log.contains(&format!("Z {l} "))).collect()
}

#[test]
fn the_log_lands_in_the_chosen_folder_at_the_chosen_level() {
    let bed = bed();
    let root = folder(bed.kms.dir(), "logging");

    // Default folder: $XDG_STATE_HOME/cosmian-pkcs11, else ~/.local/state/cosmian-pkcs11.
    let home = folder(&root, "home-default");
    keygen_logging(&home, Some("info"), None, None);
    let log = std::fs::read_to_string(home.join(".local/state/cosmian-pkcs11").join(LOG_FILE)).unwrap();
    assert_eq!(levels_in(&log), [" INFO"], "{log}");
    assert!(log.contains("key list loaded from the KMS"), "{log}");
    // The public-key disk cache's default place: one file for the KMS, private.
    let cached: Vec<_> =
        std::fs::read_dir(home.join(".cache/cosmian-pkcs11/keys")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(cached.len() == 1 && cached[0].extension().is_some_and(|e| e == "json"), "{cached:?}");
    let xdg = folder(&root, "xdg-state");
    keygen_logging(&home, Some("info"), None, Some(&xdg));
    assert!(xdg.join("cosmian-pkcs11").join(LOG_FILE).is_file());

    // COSMIAN_PKCS11_LOGGING_FOLDER wins; debug adds one line per KMS request.
    let home = folder(&root, "home-debug");
    let logs = folder(&root, "debug");
    keygen_logging(&home, Some("debug"), Some(&logs), None);
    let log = provider_log(&logs);
    assert_eq!(levels_in(&log), ["DEBUG", " INFO"], "{log}");
    for operation in ["\"RequestMessage[2 Locate]\"", "\"RequestMessage[1 Export]\""] {
        let line = log
            .lines()
            .find(|l| l.contains("KMS request") && l.contains(operation))
            .unwrap_or_else(|| panic!("no {operation} line:\n{log}"));
        // Operation, status, duration.
        assert!(line.contains("status=") && line.contains("ok") && line.contains("elapsed_ms="), "{line}");
    }
    assert!(!home.join(".local/state").exists(), "the default folder was used too");

    let logs = folder(&root, "trace");
    keygen_logging(&home, Some("trace"), Some(&logs), None);
    assert!(levels_in(&provider_log(&logs)).contains(&"TRACE"));

    // The default level is warn: a clean run writes nothing, not even the file.
    let logs = folder(&root, "default-level");
    keygen_logging(&home, None, Some(&logs), None);
    assert!(!logs.join(LOG_FILE).exists(), "{}", provider_log(&logs));
    let logs = folder(&root, "off");
    keygen_logging(&home, Some("off"), Some(&logs), None);
    assert!(!logs.join(LOG_FILE).exists());
}
