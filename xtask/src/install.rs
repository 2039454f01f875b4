//! `cargo xtask install [--prefix DIR]`: for people who build from source. Builds the release
//! library and agent with cargo and copies them into `DIR/lib` (default `/usr/local/lib`, where
//! ssh-agent's default allow-list takes it) and `DIR/bin` (`cosmian-ssh-agent`): each written
//! next to its target and renamed over it, so that a process that has the old file loaded
//! keeps a valid mapping. Through sudo when the folder is not writable.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::package::elf::AGENT;
use crate::{cargo, run, step};

const DEFAULT_PREFIX: &str = "/usr/local";

pub fn file_name() -> String {
    format!("{}cosmian_pkcs11{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// `cargo xtask install [--prefix DIR]`.
pub fn install(prefix: Option<PathBuf>) -> Result<(), String> {
    let prefix = prefix.unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
    let Installed { lib, agent } = build_and_copy(&prefix)?;
    println!(
        "\ninstalled {} and {}\n  ssh -I {} user@host\n  {} -D -a SOCKET",
        lib.display(),
        agent.display(),
        lib.display(),
        agent.display()
    );
    Ok(())
}

/// Where [`build_and_copy`] put the library and the agent.
pub struct Installed {
    pub lib: PathBuf,
    pub agent: PathBuf,
}

/// Builds the release library and agent and copies them into `prefix/lib` and `prefix/bin`
/// (also `cargo xtask package-test`'s check of this command, in a temporary folder).
pub fn build_and_copy(prefix: &Path) -> Result<Installed, String> {
    cargo(
        "build the release library and agent",
        &["build", "--release", "--locked", "-p", "cosmian-pkcs11", "--lib", "--bin", AGENT],
    )?;
    let built = crate::target_dir().join("release");
    Ok(Installed {
        lib: copy(&built.join(file_name()), &prefix.join("lib"))?,
        agent: copy(&built.join(AGENT), &prefix.join("bin"))?,
    })
}

/// `install -m 0755 built dir/`, through a staged file renamed over the target.
fn copy(built: &Path, dir: &Path) -> Result<PathBuf, String> {
    let name = built.file_name().expect("a file").to_string_lossy();
    let target = dir.join(&*name);
    let staged = dir.join(format!(".{name}.new"));
    step("install it", &format!("install -m 0755 {} {}", built.display(), target.display()));
    let copy = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::copy(built, &staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&staged, &target)
    };
    match copy() {
        Ok(()) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!("    {} is not writable: through sudo", dir.display());
            run(Command::new("sudo").args(["install", "-d", "-m", "0755"]).arg(dir))?;
            run(Command::new("sudo").args(["install", "-m", "0755"]).arg(built).arg(&staged))?;
            run(Command::new("sudo").args(["mv", "-f"]).arg(&staged).arg(&target))?;
            Ok(target)
        }
        Err(e) => Err(format!("cannot install {}: {e}", target.display())),
    }
}
