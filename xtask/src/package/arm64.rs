//! The arm64 library run, not only checked: Debian 12's arm64 `ssh-keygen -D`, a real
//! PKCS#11 client, runs under qemu-user (`qemu-aarch64 -L SYSROOT`) on this x86_64 machine,
//! loads the library unpacked from the arm64 .deb (`dpkg-deb -x`: the packaged file is the one
//! run) and lists the key the test bed's real KMS holds, which must be the public key ckms
//! exports. The same client refuses the x86_64 library: the run tells the architectures apart.
//! The arm64 agent of the same .deb runs there too: `--version`, and socket-activated as its
//! systemd unit starts it, it lists the same key to `ssh-add -l` ([`super::agent`]).
//!
//! The sysroot is Debian 12's arm64 `openssh-client` and the libraries its `ssh-keygen` loads,
//! fetched with `apt-get download PKG:arm64` (scripts/install-packaging-tools.sh adds dpkg's
//! arm64 architecture and installs qemu-user) and unpacked with `dpkg-deb -x`; it is cached in
//! `~/.cache/cosmian-pkcs11/arm64-sysroot/`, under a key made of [`PACKAGES`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cosmian_pkcs11_testbed::{self as testbed, Ckms, KeyKind, KmsServer};

use super::{BIN_DIR, LIB_DIR, Packages, Tools, capture, sha256_file};
use crate::step;

/// Debian 12's arm64 packages of the sysroot: `openssh-client` (`ssh-keygen`) and the
/// libraries `ssh-keygen` loads, with theirs: libselinux.so.1 (libselinux1, which needs
/// libpcre2-8.so.0), libcrypto.so.3 (libssl3) and glibc (libc6, which the provider needs too).
/// Changing the list makes a new sysroot.
const PACKAGES: [&str; 5] = ["openssh-client", "libc6", "libssl3", "libselinux1", "libpcre2-8-0"];

/// `cargo xtask package-test`: the arm64 .deb's library, run by arm64 `ssh-keygen -D` under
/// qemu-aarch64 against the real KMS.
pub fn test(tools: &Tools, arm64: &Packages, amd64: &Packages) -> Result<(), String> {
    let sysroot = sysroot(tools)?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    step("unpack the arm64 .deb", &format!("dpkg-deb -x {} PAYLOAD", arm64.deb.display()));
    let payload = work.path().join("payload");
    capture(tools.command("dpkg-deb").arg("-x").arg(&arm64.deb).arg(&payload))?;
    let lib = payload.join(LIB_DIR).join(super::elf::FILE);
    if sha256_file(&lib)? != sha256_file(&arm64.lib.path)? {
        return Err(format!("the .deb's {} is not {}", lib.display(), arm64.lib.path.display()));
    }

    step("a KMS with an SSH key", "ckms ec keys create --curve nist-p256 --tag ssh-auth");
    let kms = KmsServer::start();
    let ckms = Ckms::new(&kms);
    let pair = ckms.create_key_pair(KeyKind::Ec("nist-p256"), &["ssh-auth", "arm64"]);
    let pem = work.path().join("public.pem");
    super::write(&pem, ckms.export_public_pkcs8_pem(&pair.public_id))?;
    // The KMS's public key in OpenSSH's format, converted by the host's (x86_64) ssh-keygen.
    let expected = capture(Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&pem))?;
    let expected = key_of(&expected).ok_or_else(|| format!("ssh-keygen -i printed no key: {expected:?}"))?;
    let config = testbed::write_provider_config(work.path(), &kms.url(), "");

    let ssh_keygen = sysroot.join("usr/bin/ssh-keygen");
    step(
        "list it with Debian's arm64 ssh-keygen, under qemu-user",
        &format!("qemu-aarch64 -L {} {} -D {}", sysroot.display(), ssh_keygen.display(), lib.display()),
    );
    let run = |lib: &Path| {
        testbed::clean_command("qemu-aarch64")
            .arg("-L")
            .arg(&sysroot)
            .arg(&ssh_keygen)
            .arg("-D")
            .arg(lib)
            .env("COSMIAN_KMS_CLI_CONF", &config)
            .env("COSMIAN_PKCS11_LOGGING_FOLDER", work.path().join("logs"))
            .output()
            .map_err(|e| format!("cannot run qemu-aarch64: {e}"))
    };
    let start = Instant::now();
    let out = run(&lib)?;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = stdout.lines().filter_map(key_of).collect();
    if !out.status.success() || listed != [expected] {
        return Err(format!(
            "arm64 ssh-keygen -D listed {listed:?}, not the KMS's key {expected:?}\n{}",
            testbed::output_text(&out)
        ));
    }
    print!("{}", stdout.lines().map(|line| format!("    {line}\n")).collect::<String>());
    println!("    the KMS's key {}, listed by arm64 code in {elapsed:.1?}", pair.private_id);

    // The x86_64 library, same client: its dlopen fails, so the listing above came from the
    // arm64 library.
    let out = run(&amd64.lib.path)?;
    let refused = !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("dlopen");
    if !refused || String::from_utf8_lossy(&out.stdout).lines().any(|line| key_of(line).is_some()) {
        return Err(format!("arm64 ssh-keygen -D loaded the x86_64 library:\n{}", testbed::output_text(&out)));
    }
    println!("    and the same arm64 ssh-keygen cannot load the x86_64 library");

    let agent = payload.join(BIN_DIR).join(super::elf::AGENT);
    if sha256_file(&agent)? != sha256_file(&arm64.lib.agent)? {
        return Err(format!("the .deb's {} is not {}", agent.display(), arm64.lib.agent.display()));
    }
    let qemu = qemu_aarch64()?;
    step("the arm64 agent, under qemu-user", &format!("qemu-aarch64 -L SYSROOT {} --version", agent.display()));
    let mut version = testbed::clean_command(&qemu);
    version.arg("-L").arg(&sysroot).arg(&agent);
    super::agent::check_version(version)?;
    let program = [qemu.into_os_string(), "-L".into(), sysroot.into_os_string(), agent.into_os_string(), "-D".into()];
    let logs = work.path().join("logs");
    let activated = super::agent::SocketActivated::start(
        &program,
        &[("COSMIAN_KMS_CLI_CONF", &config), ("COSMIAN_PKCS11_LOGGING_FOLDER", &logs)],
    )?;
    super::agent::check_lists(&activated, expected)
}

/// `qemu-aarch64`'s path (systemd-socket-activate runs a program by its path).
fn qemu_aarch64() -> Result<PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("qemu-aarch64"))
        .find(|path| path.is_file())
        .ok_or_else(|| "no qemu-aarch64 on PATH (Debian's qemu-user: scripts/install-packaging-tools.sh)".into())
}

/// The key type and base64 blob of an `authorized_keys` line (`ecdsa-sha2-nistp256 AAAA...`),
/// without its comment; `None` for anything else.
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim();
    let (kind, rest) = line.split_once(' ')?;
    let blob = rest.split(' ').next()?;
    let known = kind.starts_with("ecdsa-sha2-") || kind == "ssh-rsa" || kind == "ssh-ed25519";
    (known && blob.starts_with("AAAA")).then(|| &line[..kind.len() + 1 + blob.len()])
}

/// The arm64 sysroot of [`PACKAGES`]: from the cache, or downloaded and unpacked into it.
fn sysroot(tools: &Tools) -> Result<PathBuf, String> {
    let key = &super::sha256_hex(PACKAGES.join("\n").as_bytes())[..16];
    let parent = tools.cache().join("arm64-sysroot");
    let sysroot = parent.join(key);
    // Written last: its presence says the sysroot is complete.
    let manifest = sysroot.join("PACKAGES");
    if manifest.is_file() {
        step("the arm64 sysroot, cached", &sysroot.display().to_string());
        return Ok(sysroot);
    }
    step(
        "build the arm64 sysroot from Debian 12's packages",
        &format!("apt-get download {}:arm64 ...; dpkg-deb -x", PACKAGES[0]),
    );
    let start = Instant::now();
    std::fs::create_dir_all(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let work = tempfile::tempdir_in(&parent).map_err(|e| e.to_string())?;
    let (debs, root) = (work.path().join("debs"), work.path().join("root"));
    std::fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    capture(tools.command("apt-get").arg("download").args(PACKAGES.map(|p| format!("{p}:arm64"))).current_dir(&debs))
        .map_err(|e| {
            format!("{e}\n(are Debian's arm64 packages indexed? scripts/install-packaging-tools.sh adds them)")
        })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| e.to_string())?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut versions = String::new();
    for deb in &files {
        capture(tools.command("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        versions.push_str(&capture(
            tools.command("dpkg-deb").args(["--show", "--showformat=${Package} ${Version} ${Architecture}\n"]).arg(deb),
        )?);
    }
    if files.len() != PACKAGES.len() || versions.lines().any(|line| !line.ends_with(" arm64")) {
        return Err(format!(
            "apt-get download gave {} packages, not {} arm64 ones:\n{versions}",
            files.len(),
            PACKAGES.len()
        ));
    }
    super::write(&root.join("PACKAGES"), &versions)?;
    // Another run may have made it meanwhile: keep theirs.
    if let Err(e) = std::fs::rename(&root, &sysroot) {
        if !manifest.is_file() {
            return Err(format!("cannot move the sysroot to {}: {e}", sysroot.display()));
        }
    }
    println!("    {} packages in {:.0?}: {}", files.len(), start.elapsed(), sysroot.display());
    Ok(sysroot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_without_comments() {
        let key = "ecdsa-sha2-nistp256 AAAAE2VjZHNh";
        assert_eq!(key_of(&format!("{key} label of the key\n")), Some(key));
        assert_eq!(key_of(key), Some(key));
        assert_eq!(key_of("ssh-keygen: cannot load provider"), None);
        assert_eq!(key_of("ssh-rsa notbase64"), None);
    }
}
