//! The release artifacts users install, built and checked as users get them.
//!
//! - `cargo xtask dist`: the Linux artifacts into `target/dist/` (for x86_64 and aarch64 each
//!   the glibc 2.28 `.so` and `cosmian-ssh-agent`, the `.deb` and the `.rpm` that install both
//!   with the agent's systemd user units ([`agent`]); the source tarball and the Homebrew tap,
//!   [`homebrew`]), each checked right after it is built (see the submodules), and the signed
//!   apt and dnf repositories of those packages ([`repository`]).
//!   The man pages are rendered into both packages ([`man`]).
//! - `cargo xtask dist-macos` (on macOS): the universal `.dylib` and `cosmian-ssh-agent`, signed
//!   and notarized, and a signed, notarized and stapled `.pkg` of both with the agent's
//!   LaunchAgent ([`macos`], [`macos_pkg`]); `dist-macos-cross` the same on Linux, without
//!   Apple's SDK and services ([`macos_cross`]).
//! - `cargo xtask package-test`: `dist`, then what only a throw-away machine may do: the
//!   repositories served over HTTP on 127.0.0.1 and used by apt-get and dnf (install, logins
//!   through the installed library, the p11-kit registration, upgrade, downgrade, refusals,
//!   remove), the `.deb` and the `.rpm` beside Cosmian's `ckms` packages ([`coexistence`]),
//!   the arm64 library run by arm64 `ssh-keygen` under qemu-user ([`arm64`]), the signing
//!   plumbing of `dist-macos` on a Mach-O fixture, the release workflows, the third-party
//!   licenses file and `cargo xtask install`. `cargo xtask test` runs it.
//! - `cargo xtask licenses [--check]`: `THIRDPARTY.yml` ([`licenses`]).
//!
//! This module holds what they share: the tools (installed by
//! `scripts/install-packaging-tools.sh`), the version, the folders, templates.

mod agent;
mod arm64;
mod coexistence;
mod deb;
pub mod elf;
pub mod homebrew;
mod installed;
pub mod licenses;
pub mod macos;
pub mod macos_cross;
mod macos_pkg;
mod man;
mod p11kit;
mod repository;
mod reproducible;
mod rpm;
mod sbom;
mod workflow;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use cosmian_pkcs11_testbed::workspace_root;
use sha2::{Digest, Sha256};

use crate::step;

/// The package name everywhere: .deb, .rpm, formula, tarball.
pub const NAME: &str = "cosmian-pkcs11";
/// Where the packages put the library and their documents, relative to `/`.
pub const LIB_DIR: &str = "usr/local/lib";
pub const DOC_DIR: &str = "usr/share/doc/cosmian-pkcs11";
/// Where the packages put the agent program ([`elf::AGENT`]), relative to `/`.
pub const BIN_DIR: &str = "usr/local/bin";
/// The systemd user units of the agent (`packaging/systemd/`), installed, not enabled: the
/// socket (what users enable) and the service it starts.
pub const USER_UNIT_DIR: &str = "usr/lib/systemd/user";
pub const UNITS: [&str; 2] = ["cosmian-ssh-agent.socket", "cosmian-ssh-agent.service"];
/// The p11-kit module file, installed, not enabled (`packaging/p11-kit/`, [`p11kit`]).
pub const P11KIT_MODULE: &str = "usr/share/cosmian-pkcs11/cosmian-pkcs11.module";
/// The project's home, for the formula and the packages.
pub const HOMEPAGE: &str = "https://github.com/cosmian/cosmian-pkcs11";
/// Who signs the packages' changelog entries (`packaging/debian/control`'s `Maintainer`).
pub const MAINTAINER: &str = "Cosmian support team <tech@cosmian.com>";

/// The version of the provider (the workspace's, which the xtask shares).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Where the artifacts go: `target/dist/`.
pub fn dist_dir() -> Result<PathBuf, String> {
    let dir = crate::target_dir().join("dist");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The packaging tools' folders first on `PATH`: cargo-zigbuild, cargo-bundle-licenses,
/// rcodesign, the venv with ziglang and PyYAML; and the cache folder they live in.
pub struct Tools {
    path: OsString,
    venv_bin: PathBuf,
    cache: PathBuf,
}

impl Tools {
    /// Runs `scripts/install-packaging-tools.sh` once per process (it is idempotent and
    /// fast when everything is there).
    pub fn get() -> Result<&'static Tools, String> {
        static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
        TOOLS.get_or_init(Tools::install).as_ref().map_err(Clone::clone)
    }

    fn install() -> Result<Tools, String> {
        step("install the packaging tools", "scripts/install-packaging-tools.sh");
        let script = workspace_root().join("scripts/install-packaging-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(PathBuf::from)
                .ok_or_else(|| format!("{} printed no {key}=", script.display()))
        };
        let venv_bin = value("PACKAGING_VENV_BIN")?;
        let mut dirs = vec![value("PACKAGING_TOOLS_BIN")?, venv_bin.clone()];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        let path = std::env::join_paths(dirs).map_err(|e| format!("bad PATH: {e}"))?;
        Ok(Tools { path, venv_bin, cache: value("PACKAGING_CACHE")? })
    }

    /// `program` with the tools on `PATH`, run from the workspace root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env("PATH", &self.path).current_dir(workspace_root());
        command
    }

    /// The venv's Python, which has ziglang and PyYAML.
    pub fn python(&self) -> Command {
        self.command(self.python_path())
    }

    /// The cache of slow builds (`~/.cache/cosmian-pkcs11`, or `COSMIAN_PKCS11_CACHE`).
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Where [`Tools::python`] is.
    pub fn python_path(&self) -> PathBuf {
        self.venv_bin.join("python")
    }
}

/// The build machine's folders that end up in compiled code (panic locations, C's `__FILE__`)
/// and what the release builds write instead: the workspace becomes `/cosmian-pkcs11`, cargo's
/// home (the registry's sources) `/cargo`. Checked by [`check_no_build_paths`].
pub struct BuildPaths {
    root: PathBuf,
    cargo_home: PathBuf,
}

impl BuildPaths {
    pub fn get() -> Result<BuildPaths, String> {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| home().map(|home| home.join(".cargo")))
            .ok_or("no CARGO_HOME and no HOME")?;
        Ok(BuildPaths { root: workspace_root(), cargo_home })
    }

    /// For rustc (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`).
    pub fn rustflags(&self) -> String {
        format!(
            "--remap-path-prefix={}=/cosmian-pkcs11 --remap-path-prefix={}=/cargo",
            self.root.display(),
            self.cargo_home.display()
        )
    }

    /// For C compilers (`CFLAGS_<triple>`, or a compiler wrapper's arguments); `quote` wraps
    /// each path (`'` for a shell script, nothing for an environment variable).
    pub fn cflags_quoted(&self, quote: &str) -> String {
        format!(
            "-ffile-prefix-map={quote}{}{quote}=/cosmian-pkcs11 -ffile-prefix-map={quote}{}{quote}=/cargo",
            self.root.display(),
            self.cargo_home.display()
        )
    }

    /// [`BuildPaths::cflags_quoted`] unquoted.
    pub fn cflags(&self) -> String {
        self.cflags_quoted("")
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// No path of this machine inside the file: the workspace, the home folder (cargo's registry,
/// zig's cache), the temporary folder.
pub fn check_no_build_paths(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut paths = vec![workspace_root(), std::env::temp_dir()];
    paths.extend(home());
    for path in paths {
        let needle = path.to_string_lossy().into_owned();
        if needle.len() > 1 {
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                let end = (at + 120).min(bytes.len());
                return Err(format!(
                    "{} holds a path of the build machine: {}",
                    file.display(),
                    String::from_utf8_lossy(&bytes[at..end])
                ));
            }
        }
    }
    Ok(())
}

/// Runs a command to completion and returns its stdout; `Err` with its stderr when it fails.
pub fn capture(command: &mut Command) -> Result<String, String> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `SOURCE_DATE_EPOCH` if set, else the time of the last commit: every timestamp inside the
/// packages, so that two builds of one commit are identical.
pub fn source_date_epoch() -> Result<u64, String> {
    let text = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value,
        Err(_) => capture(Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(workspace_root()))?,
    };
    text.trim().parse().map_err(|e| format!("bad SOURCE_DATE_EPOCH {text:?}: {e}"))
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `bytes` compressed with gzip at the best level, with no name and no timestamp in the
/// header (what lintian asks of documentation, and what makes the source tarball
/// reproducible).
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).map_err(|e| format!("gzip: {e}"))?;
    encoder.finish().map_err(|e| format!("gzip: {e}"))
}

/// A file of `packaging/`, read.
pub fn packaging_file(relative: &str) -> Result<String, String> {
    let path = workspace_root().join("packaging").join(relative);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Replaces every `@KEY@` of `template` by its value; `Err` if a key is missing from the
/// template or a placeholder is left.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut text = template.to_owned();
    for (key, value) in values {
        let placeholder = format!("@{key}@");
        if !text.contains(&placeholder) {
            return Err(format!("the template has no {placeholder}"));
        }
        text = text.replace(&placeholder, value);
    }
    match leftover_placeholder(&text) {
        Some(key) => Err(format!("@{key}@ is left unrendered in:\n{text}")),
        None => Ok(text),
    }
}

/// The first `@KEY@` (upper case, digits and `_`) of `text`.
fn leftover_placeholder(text: &str) -> Option<&str> {
    text.match_indices('@').find_map(|(at, _)| {
        let rest = &text[at + 1..];
        let len =
            rest.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(rest.len());
        (len > 0 && rest[len..].starts_with('@')).then(|| &rest[..len])
    })
}

/// Writes `text` to `path`, creating its folder.
pub fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One architecture's Linux artifacts, built and checked.
pub struct Packages {
    /// The release library (its architecture, glibc 2.28 floor, three exports) and agent.
    pub lib: elf::LinuxLib,
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

/// The Linux artifacts of both architectures, in `target/dist/`.
pub struct Dist {
    /// x86_64: `libcosmian_pkcs11.so`, `cosmian-ssh-agent`, the `_amd64.deb`, the `.x86_64.rpm`.
    pub amd64: Packages,
    /// aarch64: `libcosmian_pkcs11-aarch64.so`, `cosmian-ssh-agent-aarch64`, the `_arm64.deb`,
    /// the `.aarch64.rpm`.
    pub arm64: Packages,
}

/// `cargo xtask dist`.
pub fn dist() -> Result<Dist, String> {
    let tools = Tools::get()?;
    let epoch = source_date_epoch()?;
    let dist = dist_dir()?;
    let packages = |arch| -> Result<Packages, String> {
        let start = std::time::Instant::now();
        let lib = elf::build(tools, arch, &dist)?;
        let deb = deb::build_and_check(tools, &lib, epoch, 1, &dist)?;
        let rpm = rpm::build_and_check(tools, &lib, epoch, 1, &dist)?;
        println!("\n{} built and checked in {:.0?}", arch.rpm(), start.elapsed());
        Ok(Packages { lib, deb, rpm })
    };
    let [x86_64, aarch64] = elf::Arch::ALL;
    let (amd64, arm64) = (packages(x86_64)?, packages(aarch64)?);
    let (tarball, formula) = homebrew::build_and_check(tools, &amd64.lib, &dist)?;
    let mut artifacts: Vec<&Path> = Vec::new();
    for packages in [&amd64, &arm64] {
        artifacts.extend([packages.lib.path.as_path(), &packages.lib.agent, &packages.deb, &packages.rpm]);
    }
    artifacts.extend([tarball.as_path(), &formula]);
    artifacts.extend([amd64.lib.sbom.as_path(), &arm64.lib.sbom]);
    write_checksums(&dist, repository::SUMS, &artifacts)?;
    repository::dist(tools, &[&amd64, &arm64], &dist)?;
    println!("\nartifacts in {}", dist.display());
    Ok(Dist { amd64, arm64 })
}

/// The changelog entry of packaging revision `release` of this version, when it is above the
/// first (the one `packaging/` describes): the same library packaged again, which is what the
/// newer revision the tests of upgrades build is. One line, for the .deb's and the .rpm's
/// changelogs.
pub fn revision_entry(release: u32) -> Option<String> {
    (release > 1).then(|| format!("Revision {release}: the library of {}-1, packaged again.", version()))
}

/// `epoch` (UTC) in `date`'s `format`, with English day and month names.
pub fn utc_date(tools: &Tools, epoch: u64, format: &str) -> Result<String, String> {
    let date = capture(
        tools.command("date").args(["-u", "-d", &format!("@{epoch}"), &format!("+{format}")]).env("LC_ALL", "C"),
    )?;
    Ok(date.trim().to_owned())
}

/// Builds `artifact` a second time, into a new folder and a second later, and compares the
/// two: any timestamp, host name or file order that leaks into it shows.
fn check_reproducible(artifact: &Path, build: impl Fn(&Path) -> Result<(), String>) -> Result<(), String> {
    let name = artifact.file_name().expect("an artifact is a file");
    step(&format!("check that {} is reproducible", name.to_string_lossy()), "build it again, compare SHA-256");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = tempfile::tempdir().map_err(|e| e.to_string())?;
    let second = again.path().join(name);
    build(&second)?;
    let (first, second) = (sha256_file(artifact)?, sha256_file(&second)?);
    if first != second {
        return Err(format!("{} is not reproducible: {first} then {second}", name.to_string_lossy()));
    }
    println!("    sha256 {first}, twice");
    Ok(())
}

/// `file` (`SHA256SUMS-linux`, `SHA256SUMS-macos`) in `dist`: the SHA-256 of each artifact,
/// in `sha256sum -c` format, for the release.
pub fn write_checksums(dist: &Path, file: &str, artifacts: &[&Path]) -> Result<(), String> {
    let mut sums = String::new();
    for artifact in artifacts {
        let name = artifact.strip_prefix(dist).unwrap_or(artifact);
        sums.push_str(&format!("{}  {}\n", sha256_file(artifact)?, name.display()));
    }
    write(&dist.join(file), sums)
}

/// `cargo xtask package-test`: every artifact built and checked, installed and used.
pub fn test() -> Result<(), String> {
    let tools = Tools::get()?;
    licenses::check(tools)?;
    let dist = dist()?;
    arm64::test(tools, &dist.arm64, &dist.amd64)?;
    repository::test(tools, &dist)?;
    macos_cross::dist_macos_cross()?;
    workflow::check(tools)?;
    check_install()
}

/// `cargo xtask install --prefix` into a temporary folder gives the release library,
/// executable, with the three PKCS#11 exports (`objdump -T`), and the agent, which runs.
fn check_install() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let installed =
        [Path::new("/usr/local/lib").join(crate::install::file_name()), Path::new("/usr/local/bin").join(elf::AGENT)];
    if let Some(there) = installed.iter().find(|path| path.exists()) {
        return Err(format!(
            "{} exists: the install check would replace it (a throw-away machine only)",
            there.display()
        ));
    }
    let fake_home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let block = cosmian_pkcs11_testbed::docs::shell_block("docs/install.md", "install-from-source")?;
    step("install from source as docs/install.md says", "cargo xtask install; cargo xtask install --prefix ~/.local");
    // Another HOME for `~/.local`; cargo's and rustup's homes stay where they are.
    let user_home = home().ok_or("no HOME")?;
    let mut bash = Command::new("bash");
    bash.args(["-ec", &block]).current_dir(workspace_root()).env("HOME", fake_home.path());
    for (var, default) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
        bash.env(var, std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| user_home.join(default)));
    }
    let result = crate::run(&mut bash).and_then(|()| {
        let local = fake_home.path().join(".local");
        for path in installed
            .iter()
            .cloned()
            .chain([local.join("lib").join(crate::install::file_name()), local.join("bin").join(elf::AGENT)])
        {
            let mode = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
            if mode & 0o777 != 0o755 {
                return Err(format!("{} has mode {:o}, not 755", path.display(), mode & 0o777));
            }
        }
        elf::check_exports(&installed[0])?;
        println!("    {} and ~/.local/lib (mode 755, the three exports)", installed[0].display());
        agent::check_version(Command::new(&installed[1]))
    });
    for path in &installed {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_every_placeholder() {
        let text = render("v@VERSION@ sha @SHA256@", &[("VERSION", "1.2"), ("SHA256", "ab")]);
        assert_eq!(text.unwrap(), "v1.2 sha ab");
    }

    #[test]
    fn render_refuses_missing_or_leftover_placeholders() {
        assert!(render("v@VERSION@ @SHA256@", &[("VERSION", "1")]).is_err());
        assert!(render("v@VERSION@", &[("VERSION", "1"), ("SHA256", "x")]).is_err());
        // An e-mail address is not a placeholder.
        assert!(render("tech@cosmian.com @V@", &[("V", "1")]).is_ok());
        assert!(render("tech@cosmian.com @V@ @LEFT@", &[("V", "1")]).is_err());
    }

    #[test]
    fn sha256_is_hex() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "abc").unwrap();
        assert_eq!(sha256_file(&file).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
