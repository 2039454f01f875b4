//! The Linux release builds, one per [`Arch`] (x86_64 and aarch64): the library and the agent
//! program (`cosmian-ssh-agent`), both from one cargo-zigbuild run against glibc 2.28 (RHEL 8,
//! Debian 10 and later), with the release profile (LTO, stripped, `panic = "unwind"`), the build
//! machine's paths remapped ([`super::BuildPaths`]) and, through cargo-auditable, the list of the
//! crates they are built from embedded (section `.dep-v0`), then checked: each ELF header names
//! the architecture it was built for (the agent's loader is glibc's for it), `objdump` shows
//! that the library exports exactly the three PKCS#11 entry points, and that neither needs a
//! glibc symbol version above 2.28 nor a library glibc does not provide, which gives the .deb's
//! `Depends`; no path of the build machine is left in either; their embedded list and the SBOM
//! written beside them agree with Cargo.lock ([`super::sbom`]); and the x86_64 build, made again
//! elsewhere, gives the same bytes ([`super::reproducible`]). [`cargo_build`] is the build, in
//! whichever [`BuildTree`].

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Tools, capture};
use crate::step;

/// cargo-zigbuild's suffix to the Rust target that picks the glibc version to link against.
const GLIBC_SUFFIX: &str = ".2.28";
/// The newest glibc symbol version the library may need.
pub const GLIBC_FLOOR: [u32; 2] = [2, 28];
/// What the library exports, sorted.
pub const EXPORTS: [&str; 3] = ["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"];
/// The file name of the library.
pub const FILE: &str = "libcosmian_pkcs11.so";
/// The agent program: its cargo target, and its file name once installed.
pub const AGENT: &str = "cosmian-ssh-agent";

/// A Linux architecture the release is built for, with its names in each tool's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The Rust target (cargo-zigbuild adds the glibc version).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's architecture name (`Architecture:`, the .deb's file name).
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// RPM's architecture name (`rpmbuild --target`, `%{ARCH}`, the .rpm's file name).
    pub fn rpm(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The library's file in `target/dist/`: the release attaches both with these names, so
    /// they differ (x86_64 keeps the installed name).
    pub fn dist_file(self) -> &'static str {
        match self {
            Arch::X86_64 => FILE,
            Arch::Aarch64 => "libcosmian_pkcs11-aarch64.so",
        }
    }

    /// The agent's file in `target/dist/`, named as [`Arch::dist_file`].
    pub fn dist_agent(self) -> &'static str {
        match self {
            Arch::X86_64 => AGENT,
            Arch::Aarch64 => "cosmian-ssh-agent-aarch64",
        }
    }

    /// The ELF header's `e_machine` (`EM_X86_64`, `EM_AARCH64`).
    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// The dynamic loader glibc installs for the architecture, one of glibc's libraries.
    fn loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "ld-linux-x86-64.so.2",
            Arch::Aarch64 => "ld-linux-aarch64.so.1",
        }
    }

    /// The loader's path, which an executable names (its `PT_INTERP`): the psABI's.
    fn interpreter(self) -> &'static str {
        match self {
            Arch::X86_64 => "/lib64/ld-linux-x86-64.so.2",
            Arch::Aarch64 => "/lib/ld-linux-aarch64.so.1",
        }
    }
}

/// A checked release library, and the agent program built with it.
pub struct LinuxLib {
    /// `target/dist/libcosmian_pkcs11.so` ([`Arch::dist_file`]).
    pub path: PathBuf,
    /// `target/dist/cosmian-ssh-agent` ([`Arch::dist_agent`]).
    pub agent: PathBuf,
    /// `target/dist/cosmian-pkcs11-0.1.0-x86_64.cdx.json`: the SBOM of both ([`super::sbom`]).
    pub sbom: PathBuf,
    /// The newest glibc symbol version the library or the agent needs, e.g. `[2, 28]`.
    pub glibc: Vec<u32>,
    /// The architecture their ELF headers name.
    pub arch: Arch,
}

impl LinuxLib {
    /// The .deb's `Depends`: glibc at the version the library and the agent need.
    pub fn debian_depends(&self) -> String {
        let version: Vec<String> = self.glibc.iter().map(u32::to_string).collect();
        format!("libc6 (>= {})", version.join("."))
    }
}

/// Where a release build runs: the workspace and cargo's home (whose paths are remapped), the
/// target folder, and `home`: `None` for this process's environment, or another `HOME` for a
/// build that shares nothing with it but the toolchain, the crates' downloads and the tools
/// ([`super::reproducible`]).
pub struct BuildTree {
    pub paths: super::BuildPaths,
    pub target_dir: PathBuf,
    pub home: Option<PathBuf>,
}

impl BuildTree {
    /// This workspace, with this process's target folder and cargo home.
    pub fn here() -> Result<BuildTree, String> {
        Ok(BuildTree { paths: super::BuildPaths::get()?, target_dir: crate::target_dir(), home: None })
    }

    /// `cargo` with the packaging tools on `PATH`, run in this tree: its workspace, target
    /// folder and, with another `home`, that `HOME` and cargo home (offline; rustup's
    /// toolchains stay where they are; zig and cargo-zigbuild cache under `HOME`).
    pub fn cargo(&self, tools: &Tools) -> Result<Command, String> {
        let mut command = tools.command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        command.current_dir(&self.paths.root).env("CARGO_TARGET_DIR", &self.target_dir);
        if let Some(home) = &self.home {
            let rustup_home = std::env::var_os("RUSTUP_HOME")
                .map(PathBuf::from)
                .or_else(|| super::home().map(|home| home.join(".rustup")))
                .ok_or("no RUSTUP_HOME and no HOME")?;
            command
                .env("CARGO_NET_OFFLINE", "true")
                .env("HOME", home)
                .env("CARGO_HOME", &self.paths.cargo_home)
                .env("RUSTUP_HOME", rustup_home)
                .env_remove("XDG_CACHE_HOME")
                .env_remove("ZIG_GLOBAL_CACHE_DIR")
                .env_remove("ZIG_LOCAL_CACHE_DIR");
        }
        Ok(command)
    }
}

/// `cargo auditable zigbuild --release` of the library and the agent for `arch` in `tree`; the
/// folder they are in.
pub fn cargo_build(tools: &Tools, arch: Arch, tree: &BuildTree) -> Result<PathBuf, String> {
    let target = format!("{}{GLIBC_SUFFIX}", arch.rust_target());
    let env_target = arch.rust_target().replace('-', "_");
    let mut command = tree.cargo(tools)?;
    command
        .args(["auditable", "zigbuild", "--release", "--locked", "--target", &target, "-p", "cosmian-pkcs11"])
        .args(["--lib", "--bin", AGENT])
        .env(format!("CARGO_TARGET_{}_RUSTFLAGS", env_target.to_uppercase()), tree.paths.rustflags())
        .env(format!("CFLAGS_{env_target}"), tree.paths.cflags());
    crate::run(&mut command)?;
    Ok(tree.target_dir.join(arch.rust_target()).join("release"))
}

/// Builds the library and the agent for `arch` ([`cargo_build`], in this workspace), copies
/// them into `dist` with their SBOM, and checks them; the x86_64 ones are built again elsewhere
/// and compared.
pub fn build(tools: &Tools, arch: Arch, dist: &Path) -> Result<LinuxLib, String> {
    let target = format!("{}{GLIBC_SUFFIX}", arch.rust_target());
    step(
        &format!("build the {} release library and agent against glibc 2.28", arch.rpm()),
        &format!("cargo auditable zigbuild --release --target {target} -p cosmian-pkcs11 --lib --bin {AGENT}"),
    );
    let built = cargo_build(tools, arch, &BuildTree::here()?)?;
    let copy = |name: &str, dist_name: &str| {
        let (from, to) = (built.join(name), dist.join(dist_name));
        std::fs::copy(&from, &to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        Ok::<_, String>(to)
    };
    let path = copy(FILE, arch.dist_file())?;
    let agent = copy(AGENT, arch.dist_agent())?;
    let sbom = super::sbom::write(tools, arch, dist)?;
    let lib = check(tools, arch, &path, &agent, &sbom)?;
    if arch == Arch::X86_64 {
        super::reproducible::check(tools, &lib)?;
    }
    Ok(lib)
}

/// The library and the agent checked: ELF files for `arch` (their headers, the agent's
/// loader), and by `objdump -T` and `objdump -p`: the library's three exports, glibc symbol
/// versions up to [`GLIBC_FLOOR`], only glibc's libraries needed; no build path in either; their
/// embedded dependency list and `sbom` against Cargo.lock ([`super::sbom::check`]).
pub fn check(tools: &Tools, arch: Arch, path: &Path, agent: &Path, sbom: &Path) -> Result<LinuxLib, String> {
    step(
        &format!("check their architecture ({}), exports, glibc floor and paths", arch.rpm()),
        &format!("ELF header; objdump -T -p {} {}", path.display(), agent.display()),
    );
    let lib_glibc = check_elf(tools, arch, path, ElfType::SharedObject)?;
    let agent_glibc = check_elf(tools, arch, agent, ElfType::Executable)?;
    let glibc = lib_glibc.max(agent_glibc);
    println!(
        "    ELF machine {}; library exports {EXPORTS:?}; agent loader {}; newest glibc symbol version {glibc:?}; \
         no build path",
        arch.rpm(),
        arch.interpreter()
    );
    let lib = LinuxLib { path: path.to_owned(), agent: agent.to_owned(), sbom: sbom.to_owned(), glibc, arch };
    super::sbom::check(tools, &lib)?;
    Ok(lib)
}

/// What an ELF file of the release is: the library, or a program (PIE: `ET_DYN` too, with an
/// interpreter).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ElfType {
    SharedObject,
    Executable,
}

/// One file's checks (see [`check`]); the newest glibc symbol version it needs.
fn check_elf(tools: &Tools, arch: Arch, path: &Path, kind: ElfType) -> Result<Vec<u32>, String> {
    check_machine(path, arch)?;
    let symbols = match kind {
        ElfType::SharedObject => check_exports(path)?,
        ElfType::Executable => capture(tools.command("objdump").arg("-T").arg(path))?,
    };
    let headers = capture(tools.command("objdump").arg("-p").arg(path))?;
    let interpreter = capture(tools.command("readelf").arg("-p").arg(".interp").arg(path)).unwrap_or_default();
    match (kind, interpreter.contains(arch.interpreter())) {
        (ElfType::Executable, false) => {
            return Err(format!(
                "{} does not name {} as its loader:\n{interpreter}",
                path.display(),
                arch.interpreter()
            ));
        }
        (ElfType::SharedObject, true) => return Err(format!("{} is a program, not a library", path.display())),
        _ => {}
    }
    let glibc = glibc_versions(&symbols)
        .into_iter()
        .max()
        .ok_or_else(|| format!("{} needs no versioned glibc symbol: not a glibc build", path.display()))?;
    if glibc.as_slice() > GLIBC_FLOOR.as_slice() {
        let too_new: Vec<String> = symbols
            .lines()
            .filter(|line| glibc_version(line).is_some_and(|v| v.as_slice() > GLIBC_FLOOR.as_slice()))
            .map(str::to_owned)
            .collect();
        return Err(format!(
            "{} needs glibc symbols newer than {GLIBC_FLOOR:?}:\n{}",
            path.display(),
            too_new.join("\n")
        ));
    }
    let foreign: Vec<String> = needed_libraries(&headers)
        .into_iter()
        .filter(|lib| !GLIBC_LIBRARIES.contains(&lib.as_str()) && lib != arch.loader())
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "{} needs {foreign:?}, which glibc does not provide: add them to the packages' \
             dependencies",
            path.display()
        ));
    }
    super::check_no_build_paths(path)?;
    Ok(glibc)
}

/// `Err` unless `path` is a 64-bit little-endian ELF shared object for `arch`.
fn check_machine(path: &Path, arch: Arch) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match elf_machine(&bytes) {
        Some(machine) if machine == arch.elf_machine() => Ok(()),
        other => Err(format!(
            "{} is not a 64-bit little-endian ELF shared object for {} (e_machine {}), but {other:?}",
            path.display(),
            arch.rpm(),
            arch.elf_machine()
        )),
    }
}

/// The `e_machine` of a 64-bit little-endian ELF shared object (`ET_DYN`), `None` for anything
/// else.
fn elf_machine(bytes: &[u8]) -> Option<u16> {
    let header = bytes.get(..20)?;
    let le16 = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    // Magic, ELFCLASS64, ELFDATA2LSB, and e_type ET_DYN.
    (header[..4] == *b"\x7fELF" && header[4] == 2 && header[5] == 1 && le16(16) == 3).then(|| le16(18))
}

/// `objdump -T` of the library, `Err` unless it exports exactly [`EXPORTS`].
pub fn check_exports(path: &Path) -> Result<String, String> {
    let symbols = capture(std::process::Command::new("objdump").arg("-T").arg(path))?;
    let exports = defined_dynamic_symbols(&symbols);
    if exports != EXPORTS {
        return Err(format!("{} exports {exports:?}, not exactly {EXPORTS:?}", path.display()));
    }
    Ok(symbols)
}

/// The libraries of glibc (package `libc6` on Debian, `glibc` on RPM systems) a Rust cdylib
/// may need, besides the architecture's loader ([`Arch::loader`]).
const GLIBC_LIBRARIES: [&str; 6] =
    ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1"];

/// The names of the symbols an `objdump -T` listing defines (every section but `*UND*`),
/// sorted.
fn defined_dynamic_symbols(objdump_t: &str) -> Vec<String> {
    let mut names: Vec<String> = objdump_t
        .lines()
        .filter(|line| is_symbol_line(line) && !line.contains("*UND*"))
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A symbol line of `objdump -T` starts with a 16-digit hexadecimal value.
fn is_symbol_line(line: &str) -> bool {
    line.len() > 16 && line.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit)
}

/// Every glibc symbol version an `objdump -T` listing names (`GLIBC_2.2.5` is `[2, 2, 5]`).
fn glibc_versions(objdump_t: &str) -> Vec<Vec<u32>> {
    objdump_t.lines().filter_map(glibc_version).collect()
}

fn glibc_version(line: &str) -> Option<Vec<u32>> {
    if !is_symbol_line(line) {
        return None;
    }
    let start = line.find("GLIBC_")? + "GLIBC_".len();
    let digits: String = line[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    digits.split('.').map(|part| part.parse().ok()).collect()
}

/// The `NEEDED` entries of an `objdump -p` listing.
fn needed_libraries(objdump_p: &str) -> Vec<String> {
    objdump_p.lines().filter_map(|line| line.trim().strip_prefix("NEEDED")).map(|rest| rest.trim().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `objdump -T` of a zigbuild release library, shortened.
    const OBJDUMP_T: &str = "
libcosmian_pkcs11.so:     file format elf64-x86-64

DYNAMIC SYMBOL TABLE:
0000000000000000      DF *UND*	0000000000000000 (GLIBC_2.2.5) strlen
0000000000000000      DF *UND*	0000000000000000 (GLIBC_2.14) memcpy
0000000000000000  w   D  *UND*	0000000000000000  Base        __gmon_start__
0000000000000000      DF *UND*	0000000000000000 (GLIBC_2.28) statx
0000000000000000      DF *UND*	0000000000000000 (GLIBC_2.2.5) pthread_key_create
00000000000e1380 g    DF .text	00000000000003c4  Base        C_GetFunctionList
00000000000e1750 g    DF .text	0000000000000527  Base        C_GetInterface
00000000000e1c80 g    DF .text	00000000000004e0  Base        C_GetInterfaceList
";

    #[test]
    fn finds_the_defined_symbols_only() {
        assert_eq!(defined_dynamic_symbols(OBJDUMP_T), EXPORTS);
        let more = format!("{OBJDUMP_T}00000000000e2000 g    DF .text\t0000000000000010  Base        rust_panic\n");
        assert_ne!(defined_dynamic_symbols(&more), EXPORTS);
    }

    #[test]
    fn finds_the_newest_glibc_version() {
        assert_eq!(glibc_versions(OBJDUMP_T).into_iter().max(), Some(vec![2, 28]));
        let newer =
            format!("{OBJDUMP_T}0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.34) __libc_start_main\n");
        let max = glibc_versions(&newer).into_iter().max().unwrap();
        assert_eq!(max, vec![2, 34]);
        assert!(max.as_slice() > GLIBC_FLOOR.as_slice());
        // 2.3.4 < 2.28 < 2.28.1
        assert!([2, 3, 4].as_slice() < GLIBC_FLOOR.as_slice());
        assert!([2, 28, 1].as_slice() > GLIBC_FLOOR.as_slice());
    }

    #[test]
    fn each_architecture_has_its_own_names() {
        let [a, b] = Arch::ALL;
        assert_eq!((a, b), (Arch::X86_64, Arch::Aarch64));
        // The release attaches the files of both under their file names: they must differ.
        for name in [Arch::dist_file, Arch::dist_agent, Arch::deb, Arch::rpm, Arch::rust_target, Arch::loader] {
            assert_ne!(name(a), name(b));
        }
        assert_ne!(a.elf_machine(), b.elf_machine());
    }

    #[test]
    fn reads_the_elf_machine() {
        // The first 20 bytes of an x86_64 and of an aarch64 shared object.
        let mut header = *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0";
        assert_eq!(elf_machine(&header), Some(Arch::X86_64.elf_machine()));
        header[18] = 0xb7;
        assert_eq!(elf_machine(&header), Some(Arch::Aarch64.elf_machine()));
        // An executable (ET_EXEC), a 32-bit file, a big-endian one, a truncated one: none.
        for (at, byte) in [(16, 2), (4, 1), (5, 2)] {
            let mut other = header;
            other[at] = byte;
            assert_eq!(elf_machine(&other), None);
        }
        assert_eq!(elf_machine(&header[..19]), None);
    }

    #[test]
    fn reads_needed_libraries() {
        let headers = "Dynamic Section:\n  NEEDED               libpthread.so.0\n  NEEDED               libc.so.6\n  FLAGS                0x0\n";
        assert_eq!(needed_libraries(headers), ["libpthread.so.0", "libc.so.6"]);
    }

    #[test]
    fn depends_on_glibc_at_the_needed_version() {
        let lib = LinuxLib {
            path: PathBuf::new(),
            agent: PathBuf::new(),
            sbom: PathBuf::new(),
            glibc: vec![2, 28],
            arch: Arch::X86_64,
        };
        assert_eq!(lib.debian_depends(), "libc6 (>= 2.28)");
    }
}
