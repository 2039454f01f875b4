//! Where the provider's logs go: a file (never stdout, which would corrupt `ssh-keygen -D`),
//! and on macOS also the unified log (subsystem `com.cosmian.pkcs11`). The subscriber is the
//! provider's own, entered around each PKCS#11 call: the host process's global subscriber,
//! if it has one, is left alone.
//!
//! `COSMIAN_PKCS11_LOGGING_LEVEL`: trace, debug, info, warn (default), error or off.
//! `COSMIAN_PKCS11_LOGGING_FOLDER`: the folder of `cosmian-pkcs11.log`; by default
//! `$XDG_STATE_HOME/cosmian-pkcs11` (`~/.local/state/cosmian-pkcs11`) on Linux and
//! `~/Library/Logs/cosmian-pkcs11` on macOS. The file is created at the first line written.
//!
//! The folder is created 0700 and the file 0600 (the log names key ids, hosts and errors);
//! the file is opened without following a symbolic link, so a link planted at its path
//! (say, to a file of the user's that another user wants truncated or filled) is not
//! written through: the lines are dropped instead, silently, as for any unwritable file.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing::Dispatch;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

pub const FILE_NAME: &str = "cosmian-pkcs11.log";

/// The provider's subscriber, built on first use.
pub fn dispatch() -> &'static Dispatch {
    static DISPATCH: OnceLock<Dispatch> = OnceLock::new();
    DISPATCH.get_or_init(build)
}

/// The log folder in use.
pub fn folder() -> Option<PathBuf> {
    match std::env::var_os("COSMIAN_PKCS11_LOGGING_FOLDER") {
        Some(f) if !f.is_empty() => Some(PathBuf::from(f)),
        _ => default_folder(),
    }
}

#[cfg(target_os = "macos")]
fn default_folder() -> Option<PathBuf> {
    dirs::home_dir().map(|h| h.join("Library/Logs/cosmian-pkcs11"))
}

#[cfg(not(target_os = "macos"))]
fn default_folder() -> Option<PathBuf> {
    dirs::state_dir().or_else(|| dirs::home_dir().map(|h| h.join(".local/state"))).map(|d| d.join("cosmian-pkcs11"))
}

fn level() -> LevelFilter {
    std::env::var("COSMIAN_PKCS11_LOGGING_LEVEL").ok().and_then(|l| l.trim().parse().ok()).unwrap_or(LevelFilter::WARN)
}

fn build() -> Dispatch {
    let level = level();
    let file_layer = folder().map(|dir| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_thread_ids(true)
            .with_thread_names(true)
            .with_writer(LazyFile { path: dir.join(FILE_NAME), file: Mutex::new(None) })
    });
    let registry = tracing_subscriber::registry().with(file_layer.with_filter(level));
    #[cfg(target_os = "macos")]
    let registry = registry.with(tracing_oslog::OsLogger::new("com.cosmian.pkcs11", "default").with_filter(level));
    Dispatch::new(registry)
}

/// Appends to the log file, creating it (and its folder) at the first line. A file that
/// cannot be opened swallows the lines: logging never fails a PKCS#11 call.
struct LazyFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

struct LineWriter<'a>(&'a LazyFile);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = crate::files::open_private_append(&self.0.path).ok();
        }
        if let Some(f) = guard.as_mut() {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LazyFile {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn write_line(path: &Path) {
        let log = LazyFile { path: path.to_owned(), file: Mutex::new(None) };
        assert_eq!(log.make_writer().write(b"a line\n").unwrap(), 7, "a line is never refused");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_folder_is_0700_and_the_file_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cosmian-pkcs11").join(FILE_NAME);
        write_line(&path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a line\n");
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A file left wider by an earlier version is narrowed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_line(&path);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_symlink_at_the_log_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join(FILE_NAME);
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_line(&path);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "nothing written through the link");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        // A dangling link is not followed either (no file created at its target).
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("absent"), &dangling).unwrap();
        write_line(&dangling);
        assert!(!dir.path().join("absent").exists());
    }
}
