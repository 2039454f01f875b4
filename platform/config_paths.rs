//! Where the ckms client configuration is looked for, first match wins:
//! `COSMIAN_KMS_CLI_CONF`, `CKMS_CONF` (taken as given, even if the file is missing, so that
//! a wrong path is reported rather than silently replaced), then `~/.cosmian/kms.toml`,
//! `~/.cosmian/ckms.toml` and the system-wide `/etc/cosmian/ckms.toml` (for agents started
//! by launchd or systemd, whose environment the user does not control). Also where the
//! public-key cache lives.

use std::path::{Path, PathBuf};

/// Environment variables naming the file, in order.
pub const ENV_VARS: [&str; 2] = ["COSMIAN_KMS_CLI_CONF", "CKMS_CONF"];

/// The system-wide file.
pub const SYSTEM_FILE: &str = "/etc/cosmian/ckms.toml";

/// The files looked for when no variable is set, in order.
pub fn default_locations() -> Vec<String> {
    candidates(dirs::home_dir().as_deref()).iter().map(|p| p.display().to_string()).collect()
}

fn candidates(home: Option<&Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = home {
        files.push(home.join(".cosmian/kms.toml"));
        files.push(home.join(".cosmian/ckms.toml"));
    }
    files.push(PathBuf::from(SYSTEM_FILE));
    files
}

/// The folder of the public-key cache (`src/token/key_cache.rs`): `$XDG_CACHE_HOME` or
/// `~/.cache` on Linux, `~/Library/Caches` on macOS, then `cosmian-pkcs11/keys`.
pub fn key_cache_folder() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("cosmian-pkcs11").join("keys"))
}

/// Where `cosmian-ssh-agent` listens by default: `$XDG_RUNTIME_DIR/cosmian-ssh-agent/socket`
/// on Linux (systemd's socket unit uses the same path), `~/Library/Caches/cosmian-ssh-agent/socket`
/// on macOS (short enough for a socket address, no space to quote in `IdentityAgent`).
pub fn agent_socket() -> Option<PathBuf> {
    #[cfg(target_os = "macos")]
    let folder = dirs::home_dir().map(|h| h.join("Library/Caches/cosmian-ssh-agent"));
    #[cfg(not(target_os = "macos"))]
    let folder = dirs::runtime_dir().map(|d| d.join("cosmian-ssh-agent"));
    folder.map(|f| f.join("socket"))
}

/// Where `cosmian-ssh-agent` looks for the OpenSSH certificates (`*-cert.pub`) of the KMS keys:
/// `~/.config/cosmian-pkcs11/certificates` on Linux, `~/Library/Application
/// Support/cosmian-pkcs11/certificates` on macOS.
pub fn certificates_folder() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("cosmian-pkcs11").join("certificates"))
}

/// The configuration file to use, if any.
pub fn find() -> Option<PathBuf> {
    let chosen = choose(|k| std::env::var_os(k).map(PathBuf::from), dirs::home_dir().as_deref(), |p| p.is_file());
    match &chosen {
        Some(p) => tracing::debug!(file = %p.display(), "configuration file"),
        None => tracing::debug!("no configuration file found"),
    }
    chosen
}

fn choose(
    env: impl Fn(&str) -> Option<PathBuf>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    ENV_VARS
        .iter()
        .find_map(|k| env(k).filter(|p| !p.as_os_str().is_empty()))
        .or_else(|| candidates(home).into_iter().find(|p| exists(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let home = Path::new("/home/u");
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| PathBuf::from(v))
        };
        assert_eq!(
            choose(env(&[("CKMS_CONF", "/b"), ("COSMIAN_KMS_CLI_CONF", "/a")]), Some(home), all),
            Some("/a".into())
        );
        assert_eq!(choose(env(&[("CKMS_CONF", "/b")]), Some(home), none), Some("/b".into()));
        assert_eq!(choose(env(&[("CKMS_CONF", "")]), Some(home), all), Some("/home/u/.cosmian/kms.toml".into()));
        let only_ckms = |p: &Path| p.ends_with("ckms.toml") && p.starts_with("/home");
        assert_eq!(choose(env(&[]), Some(home), only_ckms), Some("/home/u/.cosmian/ckms.toml".into()));
        let only_etc = |p: &Path| p.starts_with("/etc");
        assert_eq!(choose(env(&[]), Some(home), only_etc), Some(SYSTEM_FILE.into()));
        assert_eq!(choose(env(&[]), None, only_etc), Some(SYSTEM_FILE.into()));
        assert_eq!(choose(env(&[]), Some(home), none), None);
    }
}
