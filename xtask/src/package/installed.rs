//! The library as a user installed it from the .deb, on the test bed (the real KMS, ckms and a
//! throw-away sshd): `ssh -I /usr/local/lib/libcosmian_pkcs11.so` logs in, an ssh-agent with
//! its DEFAULT provider allow-list (no `-P`) takes `ssh-add -s /usr/local/lib/libcosmian_pkcs11.so`
//! and logs in, and refuses the same library from the build folder; the installed
//! `cosmian-ssh-agent` and its systemd user units are checked, and the program, started by a
//! socket activation as the socket unit starts it, lists the key and logs in
//! ([`logins`], [`super::agent`]); `man` finds and shows the installed man pages
//! ([`super::man::check_found`]); after `apt-get remove`, no file, no diversion and no man page
//! is left ([`check_removed`]), after `apt-get purge`, no record in dpkg's database
//! ([`check_purged`]). The repository test
//! ([`super::repository`]) installs it with `apt-get install cosmian-pkcs11` and calls them.
//!
//! It changes the system (root, or sudo), so it runs in `cargo xtask package-test` and
//! `cargo xtask test` (throw-away CI machines), not in `dist`. Any missing piece fails it.

use std::path::Path;
use std::process::Command;

use cosmian_pkcs11_testbed::{self as testbed, Ckms, KeyKind, KmsServer, SshAgent, Sshd};

use super::elf::LinuxLib;
use super::{NAME, agent, capture, sha256_file};
use crate::step;

pub(super) const INSTALLED: &str = "/usr/local/lib/libcosmian_pkcs11.so";
const DOC: &str = "/usr/share/doc/cosmian-pkcs11";

/// `program` as root: itself when we are root, else through sudo.
pub(super) fn as_root(program: &str) -> Result<Command, String> {
    let uid = capture(Command::new("id").arg("-u"))?;
    Ok(if uid.trim() == "0" {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    })
}

/// dpkg's status of `package` (`install ok installed`...), empty when dpkg does not know it.
pub(super) fn package_status(package: &str) -> String {
    capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package])).unwrap_or_default()
}

/// `Err` when the library's or the agent's path holds a file no package owns (`cargo xtask
/// install`?): a .deb would replace it, and removing the .deb would delete it.
pub(super) fn check_path_free() -> Result<(), String> {
    for path in [Path::new(INSTALLED), &agent::installed_path()] {
        if path.exists() && !package_status(NAME).contains("ok installed") {
            return Err(format!(
                "{} exists and no package owns it (`cargo xtask install`?): the .deb would \
                 replace it, and removing the .deb would delete it. Remove it first.",
                path.display()
            ));
        }
    }
    Ok(())
}

/// After `apt-get purge`: dpkg no longer has the package (the purge ran its postrm).
pub(super) fn check_purged() -> Result<(), String> {
    let status = package_status(NAME);
    if status.is_empty() || status.ends_with(" not-installed") {
        println!("    purged: dpkg no longer has it");
        Ok(())
    } else {
        Err(format!("apt-get purge left the package status {status:?}"))
    }
}

/// After `apt-get remove`: none of the package's files, and no diversion.
pub(super) fn check_removed() -> Result<(), String> {
    let mut paths: Vec<String> =
        [INSTALLED, DOC, "/usr/share/lintian/overrides/cosmian-pkcs11", "/usr/share/cosmian-pkcs11"]
            .map(str::to_owned)
            .into();
    paths.extend(agent::installed_files().into_iter().map(|file| format!("/{file}")));
    let left: Vec<&String> = paths.iter().filter(|path| Path::new(path).exists()).collect();
    let status = package_status(NAME);
    // The diversion of ckms's copy of the library (packaging/debian/preinst) goes with it.
    let diverter = capture(Command::new("dpkg-divert").args(["--listpackage", INSTALLED]))?;
    if !left.is_empty()
        || status.contains("installed") && !status.contains("not-installed")
        || !diverter.trim().is_empty()
    {
        return Err(format!("apt-get remove left {left:?}, package status {status:?}, diversion by {diverter:?}"));
    }
    println!("    removed: no file and no diversion left, package status {status:?}");
    super::man::check_not_found()
}

/// The logins through the installed library `installed`, which must be `lib`'s, and through
/// the installed agent.
pub(super) fn logins(installed: &Path, lib: &LinuxLib) -> Result<(), String> {
    let built = lib.path.as_path();
    if sha256_file(installed)? != sha256_file(built)? {
        return Err(format!("{INSTALLED} is not the library that was checked ({})", built.display()));
    }
    for doc in ["copyright", "changelog.Debian.gz", "THIRDPARTY.yml.gz"] {
        if !Path::new(DOC).join(doc).is_file() {
            return Err(format!("{DOC}/{doc} is not installed"));
        }
    }

    step("a KMS with an SSH key, and an sshd that accepts it", "ckms ec keys create --curve nist-p256 --tag ssh-auth");
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth", "packaged"]);
    let client = kms.dir().join("packaged-client");
    std::fs::create_dir_all(&client).map_err(|e| e.to_string())?;
    let pem = client.join("key.pem");
    super::write(&pem, ckms.export_public_pkcs8_pem(&pair.public_id))?;
    let authorized = capture(Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem))?;
    let config = testbed::write_provider_config(&client, &kms.url(), "");
    let provider_env =
        [("COSMIAN_KMS_CLI_CONF", config.clone()), ("COSMIAN_PKCS11_LOGGING_FOLDER", client.join("logs"))];
    let sshd = Sshd::start(&authorized, "");

    step("log in with the installed library", &format!("ssh -I {INSTALLED} ..."));
    let mut ssh = testbed::ssh_command(&sshd).provider(installed);
    for (key, value) in &provider_env {
        ssh = ssh.env(key, value);
    }
    let out = ssh.run("echo packaged-login");
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "packaged-login" {
        return Err(format!("ssh -I {INSTALLED} failed: {}\nsshd:\n{}", testbed::output_text(&out), sshd.log()));
    }
    println!("    logged in");

    step("add it to an ssh-agent with the default allow-list", &format!("ssh-agent (no -P); ssh-add -s {INSTALLED}"));
    let agent = SshAgent::start_with(None, provider_env.iter().map(|(k, v)| (*k, v)));
    let out = agent.add_provider(installed).map_err(|e| format!("cannot run ssh-add: {e}"))?;
    if !out.status.success() {
        return Err(format!("ssh-add -s {INSTALLED} failed: {}\nagent:\n{}", testbed::output_text(&out), agent.log()));
    }
    let listed = capture(agent.command("ssh-add").arg("-l"))?;
    if !listed.contains(&pair.private_id) {
        return Err(format!("ssh-add -l does not list the key {}:\n{listed}", pair.private_id));
    }
    let out = testbed::ssh_command(&sshd).env("SSH_AUTH_SOCK", agent.sock()).run("echo via-agent");
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "via-agent" {
        return Err(format!("login through the agent failed: {}\nagent:\n{}", testbed::output_text(&out), agent.log()));
    }
    println!("    the agent took it and logged in");

    // The allow-list is in force: the same library outside /usr/lib* and /usr/local/lib* is
    // refused by this agent.
    let out = agent.add_provider(built).map_err(|e| format!("cannot run ssh-add: {e}"))?;
    if out.status.success() {
        return Err(format!("the agent accepted {}, outside its default allow-list", built.display()));
    }
    println!("    and refused the same library from {}", built.parent().unwrap_or(built).display());

    let env: Vec<(&str, &Path)> = provider_env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    super::p11kit::check_registration(&env, &pair.private_id)?;

    step("the installed agent", &format!("{} --version; its systemd user units", agent::installed_path().display()));
    agent::check_installed(Path::new("/"), lib)?;
    super::man::check_found()?;
    agent::check_version(testbed::clean_command(agent::installed_path()))?;
    agent::verify_units()?;
    let program = [agent::installed_path().into(), "-D".into()];
    let activated = agent::SocketActivated::start(&program, &env)?;
    agent::check_lists(&activated, &authorized)?;
    let out = testbed::ssh_command(&sshd).env("SSH_AUTH_SOCK", activated.sock()).run("echo via-cosmian-ssh-agent");
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "via-cosmian-ssh-agent" {
        return Err(format!(
            "login through the socket-activated agent failed: {}\n{}",
            testbed::output_text(&out),
            activated.log()
        ));
    }
    println!("    and logged in through it");
    activated.check_quiet_stdout()
}
