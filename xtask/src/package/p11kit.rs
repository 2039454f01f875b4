//! The p11-kit module file the packages install (`packaging/p11-kit/cosmian-pkcs11.module`),
//! checked on the installed package: installed but not enabled (no p11-kit program loads the
//! provider unless asked), then enabled system-wide the way the README says
//! (`ln -s` into `/etc/pkcs11/modules/`): `p11-kit list-modules` shows the token, and GnuTLS
//! finds and signs with the KMS's key through p11-kit alone (`p11tool` without
//! `--provider`). The link is removed whatever happened.

use std::path::Path;
use std::process::Command;

use super::capture;
use crate::step;

/// Where the packages put the module file.
pub const MODULE_FILE: &str = "/usr/share/cosmian-pkcs11/cosmian-pkcs11.module";
/// Where an administrator links it to enable it for every user.
const SYSTEM_MODULES: &str = "/etc/pkcs11/modules";

/// `env`: the provider's configuration (the KMS holding the key `private_id`).
pub fn check_registration(env: &[(&str, &Path)], private_id: &str) -> Result<(), String> {
    step("the p11-kit module file: installed, not enabled", &format!("test -f {MODULE_FILE}; p11-kit list-modules"));
    if !Path::new(MODULE_FILE).is_file() {
        return Err(format!("{MODULE_FILE} is not installed"));
    }
    let command = |program: &str| {
        let mut command = Command::new(program);
        command.envs(env.iter().copied());
        command
    };
    let modules = capture(command("p11-kit").arg("list-modules"))?;
    if modules.contains("Cosmian KMS") {
        return Err(format!("p11-kit loads the provider before anyone enabled it:\n{modules}"));
    }

    let link = Path::new(SYSTEM_MODULES).join("cosmian-pkcs11.module");
    step("enable it for every user", &format!("ln -s {MODULE_FILE} {SYSTEM_MODULES}/"));
    let created_folder = !Path::new(SYSTEM_MODULES).exists();
    std::fs::create_dir_all(SYSTEM_MODULES).map_err(|e| format!("cannot create {SYSTEM_MODULES}: {e}"))?;
    std::os::unix::fs::symlink(MODULE_FILE, &link).map_err(|e| format!("cannot link {}: {e}", link.display()))?;
    let result = enabled(command, private_id);
    let _ = std::fs::remove_file(&link);
    if created_folder {
        let _ = std::fs::remove_dir(SYSTEM_MODULES);
    }
    result
}

fn enabled(command: impl Fn(&str) -> Command, private_id: &str) -> Result<(), String> {
    let modules = capture(command("p11-kit").arg("list-modules"))?;
    let ours = modules.lines().skip_while(|l| !l.starts_with("cosmian-pkcs11:")).collect::<Vec<_>>().join("\n");
    if !ours.contains("token: Cosmian KMS 127.0.0.1:") {
        return Err(format!("p11-kit list-modules shows no Cosmian KMS token:\n{modules}"));
    }
    println!("    p11-kit list-modules: {}", ours.lines().next().unwrap_or_default());

    step("GnuTLS through p11-kit", "p11tool --list-privkeys pkcs11:; p11tool --test-sign ...");
    // Upper-case hex, as GnuTLS prints a `pkcs11:` URI.
    let id: String = private_id.bytes().map(|b| format!("%{b:02X}")).collect();
    let keys = capture(command("p11tool").args(["--list-privkeys", "pkcs11:"]))?;
    // The key's URI as p11tool prints it, the token named: among several modules, GnuTLS
    // finds a key by id alone in none of them ("Cannot import private key").
    let url = keys
        .lines()
        .filter_map(|line| line.trim().strip_prefix("URL: "))
        .find(|url| url.contains(&format!(";id={id};")))
        .ok_or_else(|| format!("p11tool (p11-kit's modules) does not list the KMS key {private_id}:\n{keys}"))?;
    // p11tool reports each step of --test-sign on stderr.
    let out = command("p11tool").args(["--test-sign", url]).output().map_err(|e| format!("cannot run p11tool: {e}"))?;
    let said = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || said.matches("... ok").count() < 3 {
        return Err(format!("p11tool --test-sign {url} ({}):\n{said}", out.status));
    }
    println!("    p11tool found the key through p11-kit, signed and verified");
    Ok(())
}
