//! `cargo xtask install [--prefix DIR]`: for people who build from source. Builds the release
//! library with cargo and copies it into `DIR/lib` (default `/usr/local/lib`, where
//! ssh-agent's default allow-list takes it): written next to the target and renamed over it,
//! so that a process that has the old library loaded keeps a valid mapping. Through sudo when
//! the folder is not writable.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, run, step};

const DEFAULT_PREFIX: &str = "/usr/local";

fn file_name() -> String {
    format!("{}cosmian_pkcs11{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// `cargo xtask install ARGS`.
pub fn install(args: &[String]) -> Result<(), String> {
    let prefix = match args {
        [] => PathBuf::from(DEFAULT_PREFIX),
        [flag, dir] if flag == "--prefix" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask install [--prefix DIR]".into()),
    };
    let installed = build_and_copy(&prefix)?;
    println!("\ninstalled {}\n  ssh -I {} user@host", installed.display(), installed.display());
    Ok(())
}

/// Builds the release library and copies it into `prefix/lib`; where it is now (also
/// `cargo xtask package-test`'s check of this command, in a temporary folder).
pub fn build_and_copy(prefix: &Path) -> Result<PathBuf, String> {
    cargo("build the release library", &["build", "--release", "--locked", "-p", "cosmian-pkcs11"])?;
    let built = crate::target_dir().join("release").join(file_name());
    let lib_dir = prefix.join("lib");
    let target = lib_dir.join(file_name());
    let staged = lib_dir.join(format!(".{}.new", file_name()));
    step("install it", &format!("install -m 0755 {} {}", built.display(), target.display()));
    let copy = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&lib_dir)?;
        std::fs::copy(&built, &staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&staged, &target)
    };
    match copy() {
        Ok(()) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!("    {} is not writable: through sudo", lib_dir.display());
            run(Command::new("sudo").args(["install", "-d", "-m", "0755"]).arg(&lib_dir))?;
            run(Command::new("sudo").args(["install", "-m", "0755"]).arg(&built).arg(&staged))?;
            run(Command::new("sudo").args(["mv", "-f"]).arg(&staged).arg(&target))?;
            Ok(target)
        }
        Err(e) => Err(format!("cannot install {}: {e}", target.display())),
    }
}
