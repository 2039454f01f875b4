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

fn build_and_copy(prefix: &Path) -> Result<PathBuf, String> {
    cargo("build the release library", &["build", "--release", "--locked", "-p", "cosmian-pkcs11"])?;
    let built = crate::package::target_dir().join("release").join(file_name());
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

/// For `cargo xtask package-test`: `install --prefix` into a temporary folder gives the
/// release library, executable, with the three PKCS#11 exports (`objdump -T`).
pub fn selftest() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let prefix = tempfile::tempdir().map_err(|e| e.to_string())?;
    let installed = build_and_copy(prefix.path())?;
    let mode = std::fs::metadata(&installed).map_err(|e| e.to_string())?.permissions().mode();
    if mode & 0o777 != 0o755 {
        return Err(format!("{} has mode {:o}, not 755", installed.display(), mode & 0o777));
    }
    crate::package::elf::check_exports(&installed)?;
    println!("    {} (mode 755, the three exports)", installed.display());
    Ok(())
}
