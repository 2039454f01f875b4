//! The Linux release library: built by cargo-zigbuild against glibc 2.28 (RHEL 8, Debian 10
//! and later), with the release profile (LTO, stripped, `panic = "unwind"`), then checked with
//! `objdump`: it exports exactly the three PKCS#11 entry points, needs no glibc symbol version
//! above 2.28, and needs only glibc's libraries, which gives the .deb's `Depends`.

use std::path::{Path, PathBuf};

use super::{capture, Tools};
use crate::step;

/// The Rust target, and cargo-zigbuild's suffix that picks the glibc version to link against.
const TARGET: &str = "x86_64-unknown-linux-gnu";
const GLIBC_SUFFIX: &str = ".2.28";
/// The newest glibc symbol version the library may need.
pub const GLIBC_FLOOR: [u32; 2] = [2, 28];
/// What the library exports, sorted.
pub const EXPORTS: [&str; 3] = ["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"];
/// The file name of the library.
pub const FILE: &str = "libcosmian_pkcs11.so";

/// The checked release library.
pub struct LinuxLib {
    /// `target/dist/libcosmian_pkcs11.so`.
    pub path: PathBuf,
    /// The newest glibc symbol version it needs, e.g. `[2, 28]`.
    pub glibc: Vec<u32>,
}

impl LinuxLib {
    /// The .deb's `Depends`: glibc at the version the library needs.
    pub fn debian_depends(&self) -> String {
        let version: Vec<String> = self.glibc.iter().map(u32::to_string).collect();
        format!("libc6 (>= {})", version.join("."))
    }
}

/// Builds the library with `cargo zigbuild --release`, copies it into `dist` and checks it.
pub fn build(tools: &Tools, dist: &Path) -> Result<LinuxLib, String> {
    let target = format!("{TARGET}{GLIBC_SUFFIX}");
    step(
        "build the release library against glibc 2.28",
        &format!("cargo zigbuild --release --target {target} -p cosmian-pkcs11"),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    crate::run(tools.command(cargo).args([
        "zigbuild",
        "--release",
        "--locked",
        "--target",
        &target,
        "-p",
        "cosmian-pkcs11",
    ]))?;
    let built = crate::target_dir().join(TARGET).join("release").join(FILE);
    let path = dist.join(FILE);
    std::fs::copy(&built, &path).map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), path.display()))?;
    check(tools, &path)
}

/// `objdump -T` and `objdump -p` of the library, checked: the three exports, glibc symbol
/// versions up to [`GLIBC_FLOOR`], and only glibc's libraries needed.
pub fn check(tools: &Tools, path: &Path) -> Result<LinuxLib, String> {
    step("check its exports and glibc floor", &format!("objdump -T -p {}", path.display()));
    let symbols = check_exports(path)?;
    let headers = capture(tools.command("objdump").arg("-p").arg(path))?;
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
    let foreign: Vec<String> =
        needed_libraries(&headers).into_iter().filter(|lib| !GLIBC_LIBRARIES.contains(&lib.as_str())).collect();
    if !foreign.is_empty() {
        return Err(format!(
            "{} needs {foreign:?}, which glibc does not provide: add them to the packages' \
             dependencies",
            path.display()
        ));
    }
    println!("    exports {EXPORTS:?}; newest glibc symbol version {glibc:?}");
    Ok(LinuxLib { path: path.to_owned(), glibc })
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
/// may need.
const GLIBC_LIBRARIES: [&str; 7] =
    ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1", "ld-linux-x86-64.so.2"];

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
    fn reads_needed_libraries() {
        let headers = "Dynamic Section:\n  NEEDED               libpthread.so.0\n  NEEDED               libc.so.6\n  FLAGS                0x0\n";
        assert_eq!(needed_libraries(headers), ["libpthread.so.0", "libc.so.6"]);
    }

    #[test]
    fn depends_on_glibc_at_the_needed_version() {
        let lib = LinuxLib { path: PathBuf::new(), glibc: vec![2, 28] };
        assert_eq!(lib.debian_depends(), "libc6 (>= 2.28)");
    }
}
