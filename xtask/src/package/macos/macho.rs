//! The checks of the two Mach-O files of a macOS release, the library and the agent, per
//! architecture: the same on the files cross-built on Linux (`cargo xtask dist-macos-cross`,
//! read with Debian's LLVM tools) and on the files the release ships, built with Apple's SDK,
//! signed and notarized on the Mac (`cargo xtask dist-macos`, read with Xcode's tools, which
//! are LLVM's under Apple's names): [`check`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::{MIN_MACOS, MachO, TARGETS, Universal};
use crate::package::{Tools, capture, check_no_build_paths, workspace_root};
use crate::step;

/// Debian 12's newest LLVM: `clang-16`, `ld64.lld-16`, `llvm-nm-16`, ...
pub const LLVM: &str = "16";
/// The install name, what users load it by.
pub const INSTALL_NAME: &str = "/usr/local/lib/libcosmian_pkcs11.dylib";
/// Symbols every image defines (the linker's), not part of the library's interface.
const LINKER_SYMBOLS: [&str; 2] = ["__mh_dylib_header", "___dso_handle"];
/// What the library exports, with Mach-O's leading underscore, sorted.
pub const EXPORTS: [&str; 3] = ["_C_GetFunctionList", "_C_GetInterface", "_C_GetInterfaceList"];
/// What the library and the agent may load: libSystem and the frameworks whose stubs are in
/// `packaging/macos/sdk` (the cross build links against those).
pub const LIBSYSTEM: &str = "/usr/lib/libSystem.B.dylib";
pub const FRAMEWORKS: [&str; 2] = ["CoreFoundation", "Security"];

/// [`LIBSYSTEM`] and the [`FRAMEWORKS`]' install names.
pub fn allowed_libraries() -> BTreeSet<String> {
    FRAMEWORKS
        .iter()
        .map(|f| format!("/System/Library/Frameworks/{f}.framework/Versions/A/{f}"))
        .chain([LIBSYSTEM.to_owned()])
        .collect()
}

/// The tools that read Mach-O files, which take the same arguments and print the same way:
/// Debian's LLVM on Linux (`llvm-otool-16`, ...), Xcode's on a Mac (`xcrun otool`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    Llvm,
    Xcode,
}

impl Readers {
    /// `tool`: `otool`, `nm`, `objdump` or `lipo`.
    pub fn command(self, tools: &Tools, tool: &str) -> Command {
        match self {
            Readers::Llvm => tools.command(format!("llvm-{tool}-{LLVM}")),
            Readers::Xcode => {
                let mut command = tools.command("xcrun");
                command.arg(tool);
                command
            }
        }
    }
}

/// Every check of a release's Mach-O files, per architecture: the library, and the agent where
/// they apply to an executable (no install name, no exports: its entry point is `LC_MAIN`; it
/// links the same code, so its framework imports are some of the stubs' symbols). Then no
/// path of the build machine in either.
pub fn check(tools: &Tools, readers: Readers, files: &Universal) -> Result<(), String> {
    step(
        "check the Mach-O files",
        &format!("{readers:?} tools: lipo -archs; otool -l -hv; nm -m -u, -gU; objdump --exports-trie"),
    );
    let stubs = framework_stubs()?;
    for kind in MachO::ALL {
        let path = files.get(kind);
        let run = |tool: &str, args: &[&str]| capture(readers.command(tools, tool).args(args).arg(path));
        check_archs(path, &run("lipo", &["-archs"])?)?;
        for (_, arch) in TARGETS {
            let context = |e: String| format!("{} ({arch}): {e}", kind.file_name());
            let arch_flag = format!("--arch={arch}");
            check_load_commands(kind, &run("otool", &["-arch", arch, "-l"]).map_err(context)?).map_err(context)?;
            check_header(kind, &run("otool", &["-arch", arch, "-hv"]).map_err(context)?).map_err(context)?;
            check_imports(kind, &run("nm", &["-m", "-u", &arch_flag]).map_err(context)?, &stubs).map_err(context)?;
            if kind == MachO::Dylib {
                check_export_trie(&run("objdump", &["--macho", "--exports-trie", &arch_flag]).map_err(context)?)
                    .map_err(context)?;
            }
        }
        check_no_build_paths(path)?;
    }
    check_exports(&capture(readers.command(tools, "nm").args(["-gU", "--arch=all"]).arg(&files.dylib))?)?;
    println!(
        "    {}: arm64 + x86_64, macOS {MIN_MACOS}+, install name {INSTALL_NAME}, loads libSystem + {FRAMEWORKS:?} \
         only, every import found in a stub, exports exactly {EXPORTS:?} (trie and symbol table), \
         os_log format in __TEXT,__oslogstring, no build path",
        MachO::Dylib.file_name()
    );
    println!(
        "    {}: arm64 + x86_64, MH_EXECUTE (PIE, LC_MAIN, /usr/lib/dyld), macOS {MIN_MACOS}+, loads libSystem + \
         {FRAMEWORKS:?} only, every import bound to them (from the stubs), os_log format in \
         __TEXT,__oslogstring, no build path",
        MachO::Agent.file_name()
    );
    Ok(())
}

/// The exports of every architecture of a Mach-O, from `nm -gU -arch all`, linker symbols
/// left out: `Err` unless each is exactly [`EXPORTS`].
fn check_exports(nm_output: &str) -> Result<(), String> {
    let mut by_arch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut arch = String::from("(single)");
    for line in nm_output.lines() {
        if let Some(rest) = line.split_once("(for architecture ").map(|(_, r)| r) {
            arch = rest.trim_end_matches("):").to_owned();
        } else if let Some(name) = line.split_whitespace().nth(2) {
            if !LINKER_SYMBOLS.contains(&name) {
                by_arch.entry(arch.clone()).or_default().push(name.to_owned());
            }
        }
    }
    if by_arch.is_empty() {
        return Err(format!("no exported symbol in:\n{nm_output}"));
    }
    for (arch, mut symbols) in by_arch {
        symbols.sort();
        if symbols != EXPORTS {
            return Err(format!("{arch} exports {symbols:?}, not exactly {EXPORTS:?}"));
        }
    }
    Ok(())
}

/// `lipo -archs` (or `llvm-lipo -archs`) of a universal file: `Err` unless it holds exactly
/// the [`TARGETS`]' architectures.
fn check_archs(path: &Path, lipo_archs: &str) -> Result<(), String> {
    let mut found: Vec<&str> = lipo_archs.split_whitespace().collect();
    found.sort();
    let mut expected: Vec<&str> = TARGETS.iter().map(|(_, arch)| *arch).collect();
    expected.sort();
    if found != expected {
        return Err(format!("{} holds {found:?}, not {expected:?}", path.display()));
    }
    Ok(())
}

/// `llvm-otool -l` of one architecture: macOS, [`MIN_MACOS`], the library's install name or
/// the agent's entry point and dynamic linker, only the allowed libraries (each of them), and
/// the unified log's format strings where `log show` reads them.
fn check_load_commands(kind: MachO, otool: &str) -> Result<(), String> {
    // (load command or section, its `key value` lines)
    let mut fields: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in otool.lines() {
        let Some((key, value)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let value = value.trim();
        match key {
            "cmd" => fields.push((value.to_owned(), BTreeMap::new())),
            "sectname" => fields.push((format!("section {value}"), BTreeMap::new())),
            _ => {
                if let Some((_, map)) = fields.last_mut() {
                    // `name /usr/lib/libSystem.B.dylib (offset 24)`
                    let value = value.split(" (offset ").next().unwrap_or(value);
                    map.entry(key.to_owned()).or_insert_with(|| value.to_owned());
                }
            }
        }
    }
    let of = |cmd: &'static str| fields.iter().filter(move |(c, _)| c == cmd).map(|(_, m)| m);
    let build: Vec<_> = of("LC_BUILD_VERSION").collect();
    match build.as_slice() {
        [one]
            if one.get("platform").map(String::as_str) == Some("1")
                && one.get("minos").map(String::as_str) == Some(MIN_MACOS) => {}
        _ => return Err(format!("LC_BUILD_VERSION is {build:?}, not platform 1 (macOS) minos {MIN_MACOS}")),
    }
    let id: Vec<_> = of("LC_ID_DYLIB").filter_map(|m| m.get("name")).collect();
    let dyld: Vec<_> = of("LC_LOAD_DYLINKER").filter_map(|m| m.get("name")).collect();
    let main = of("LC_MAIN").count();
    match kind {
        MachO::Dylib if id != [INSTALL_NAME] => return Err(format!("install name {id:?}, not {INSTALL_NAME}")),
        MachO::Agent if !id.is_empty() || dyld != ["/usr/lib/dyld"] || main != 1 => {
            return Err(format!(
                "not an executable run by /usr/lib/dyld: install name {id:?}, dynamic linker {dyld:?}, {main} LC_MAIN"
            ));
        }
        _ => {}
    }
    let allowed = allowed_libraries();
    let loaded: BTreeSet<String> = fields
        .iter()
        .filter(|(c, _)| {
            (c.starts_with("LC_LOAD") && c != "LC_LOAD_DYLINKER")
                || c.starts_with("LC_REEXPORT")
                || c == "LC_LAZY_LOAD_DYLIB"
        })
        .filter_map(|(_, m)| m.get("name").cloned())
        .collect();
    if loaded != allowed {
        return Err(format!("loads {loaded:?}, not exactly {allowed:?}"));
    }
    if !fields
        .iter()
        .any(|(c, m)| c == "section __oslogstring" && m.get("segname").map(String::as_str) == Some("__TEXT"))
    {
        return Err("no __TEXT,__oslogstring section: the unified-log output is not compiled in".into());
    }
    Ok(())
}

/// `llvm-otool -hv`: a dylib, or a position-independent executable, whose every import was
/// resolved at link time, two-level.
fn check_header(kind: MachO, otool: &str) -> Result<(), String> {
    let flags: BTreeSet<&str> = otool.lines().last().unwrap_or_default().split_whitespace().collect();
    let kind_flags: &[&str] = match kind {
        MachO::Dylib => &["DYLIB"],
        MachO::Agent => &["EXECUTE", "PIE"],
    };
    for needed in kind_flags.iter().chain(&["NOUNDEFS", "TWOLEVEL"]) {
        if !flags.contains(needed) {
            return Err(format!("the Mach-O header lacks {needed}: {otool}"));
        }
    }
    Ok(())
}

/// The symbols of each framework stub in `packaging/macos/sdk`.
fn framework_stubs() -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    FRAMEWORKS
        .iter()
        .map(|name| {
            let path = workspace_root()
                .join(format!("packaging/macos/sdk/System/Library/Frameworks/{name}.framework/{name}.tbd"));
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok(((*name).to_owned(), tbd_symbols(&text)))
        })
        .collect()
}

/// The symbols of a TBD v4 stub's `symbols: [ ... ]` lists.
fn tbd_symbols(tbd: &str) -> BTreeSet<String> {
    let mut symbols = BTreeSet::new();
    let mut inside = false;
    for line in tbd.lines().filter(|line| !line.trim_start().starts_with('#')) {
        let rest = if inside {
            line
        } else {
            match line.split_once("symbols:") {
                Some((_, after)) => after,
                None => continue,
            }
        };
        let (list, closed) = match rest.split_once(']') {
            Some((list, _)) => (list, true),
            None => (rest, false),
        };
        symbols.extend(list.split([',', '[', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned));
        inside = !closed;
    }
    symbols
}

/// `llvm-nm -m -u`: every import is bound to libSystem or one of [`FRAMEWORKS`] (none looked
/// up at run time), and each framework's imports are exactly its stub's symbols for the
/// library, so a stub neither lacks nor keeps a stale name; some of them for the agent.
fn check_imports(kind: MachO, nm: &str, stubs: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
    let mut by_library: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in nm.lines().filter(|line| line.contains("(undefined)")) {
        let library = line
            .rsplit_once("(from ")
            .map(|(_, from)| from.trim_end_matches(')'))
            .ok_or_else(|| format!("an import bound to no library: {line}"))?;
        let symbol = line
            .split_whitespace()
            .find(|word| word.starts_with('_') || *word == "dyld_stub_binder")
            .ok_or_else(|| format!("no symbol in {line}"))?;
        by_library.entry(library.to_owned()).or_default().insert(symbol.to_owned());
    }
    for library in by_library.keys() {
        if library != "libSystem" && !stubs.contains_key(library) {
            return Err(format!("imports from {library}, which is not allowed: {:?}", by_library[library]));
        }
    }
    for (framework, stub) in stubs {
        let used = by_library.get(framework).cloned().unwrap_or_default();
        let fits = match kind {
            MachO::Dylib => &used == stub,
            MachO::Agent => used.is_subset(stub),
        };
        if !fits {
            return Err(format!(
                "{framework}.tbd is out of date: used but not in the stub {:?}, in the stub but unused {:?}",
                used.difference(stub).collect::<Vec<_>>(),
                stub.difference(&used).collect::<Vec<_>>()
            ));
        }
    }
    if !by_library.contains_key("libSystem") {
        return Err("nothing imported from libSystem: not a Rust dylib?".into());
    }
    Ok(())
}

/// `llvm-objdump --macho --exports-trie`: the export trie holds exactly [`EXPORTS`]. (OpenSSH
/// reads the symbol table with `nlist()` before `dlopen`; dyld reads the trie.)
fn check_export_trie(objdump: &str) -> Result<(), String> {
    let mut names: Vec<&str> = objdump
        .lines()
        .skip_while(|line| !line.starts_with("Exports trie:"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    names.sort();
    if names != EXPORTS {
        return Err(format!("the export trie holds {names:?}, not exactly {EXPORTS:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `llvm-otool-16 -arch arm64 -l` of a cross-built library, shortened.
    const OTOOL_L: &str = "Load command 1\n      cmd LC_SEGMENT_64\n  cmdsize 792\n  segname __TEXT\n\
        Section\n  sectname __oslogstring\n   segname __TEXT\n      addr 0x0000000000282ff5\n\
        Load command 3\n          cmd LC_ID_DYLIB\n      cmdsize 64\n         name /usr/local/lib/libcosmian_pkcs11.dylib (offset 24)\n\
        Load command 10\n       cmd LC_BUILD_VERSION\n   cmdsize 32\n  platform 1\n       sdk 15.5\n     minos 11.0\n\
        Load command 11\n          cmd LC_LOAD_DYLIB\n      cmdsize 88\n         name /System/Library/Frameworks/Security.framework/Versions/A/Security (offset 24)\n\
        Load command 12\n          cmd LC_LOAD_DYLIB\n         name /System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation (offset 24)\n\
        Load command 13\n          cmd LC_LOAD_DYLIB\n         name /usr/lib/libSystem.B.dylib (offset 24)\n";

    /// `llvm-otool-16 -arch arm64 -l` of the cross-built agent, shortened.
    const AGENT_OTOOL_L: &str = "Load command 1\n      cmd LC_SEGMENT_64\n  segname __TEXT\n\
        Section\n  sectname __oslogstring\n   segname __TEXT\n\
        Load command 7\n          cmd LC_LOAD_DYLINKER\n      cmdsize 32\n         name /usr/lib/dyld (offset 12)\n\
        Load command 10\n       cmd LC_BUILD_VERSION\n  platform 1\n       sdk 15.5\n     minos 11.0\n\
        Load command 11\n       cmd LC_MAIN\n   cmdsize 24\n  entryoff 2520\n\
        Load command 12\n          cmd LC_LOAD_DYLIB\n         name /System/Library/Frameworks/Security.framework/Versions/A/Security (offset 24)\n\
        Load command 13\n          cmd LC_LOAD_DYLIB\n         name /System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation (offset 24)\n\
        Load command 14\n          cmd LC_LOAD_DYLIB\n         name /usr/lib/libSystem.B.dylib (offset 24)\n";

    #[test]
    fn load_commands() {
        check_load_commands(MachO::Dylib, OTOOL_L).unwrap();
        let extra =
            format!("{OTOOL_L}Load command 14\n cmd LC_LOAD_DYLIB\n name /usr/lib/libiconv.2.dylib (offset 24)\n");
        assert!(check_load_commands(MachO::Dylib, &extra).unwrap_err().contains("libiconv"));
        let old = OTOOL_L.replace("minos 11.0", "minos 10.12");
        assert!(check_load_commands(MachO::Dylib, &old).unwrap_err().contains("minos"));
        let rpath = OTOOL_L.replace("/usr/local/lib/libcosmian", "@rpath/libcosmian");
        assert!(check_load_commands(MachO::Dylib, &rpath).unwrap_err().contains("install name"));
        let no_oslog = OTOOL_L.replace("__oslogstring", "__cstring");
        assert!(check_load_commands(MachO::Dylib, &no_oslog).unwrap_err().contains("__oslogstring"));
        // A library is not the agent.
        assert!(check_load_commands(MachO::Agent, OTOOL_L).unwrap_err().contains("not an executable"));
    }

    #[test]
    fn agent_load_commands() {
        check_load_commands(MachO::Agent, AGENT_OTOOL_L).unwrap();
        assert!(check_load_commands(MachO::Dylib, AGENT_OTOOL_L).unwrap_err().contains("install name"));
        // What the agent links without -dead_strip_dylibs: Rust's standard library asks for it.
        let iconv = format!(
            "{AGENT_OTOOL_L}Load command 15\n cmd LC_LOAD_DYLIB\n name /usr/lib/libiconv.2.dylib (offset 24)\n"
        );
        assert!(check_load_commands(MachO::Agent, &iconv).unwrap_err().contains("libiconv"));
        let no_main = AGENT_OTOOL_L.replace("LC_MAIN", "LC_UNIXTHREAD");
        assert!(check_load_commands(MachO::Agent, &no_main).unwrap_err().contains("0 LC_MAIN"));
        let old = AGENT_OTOOL_L.replace("minos 11.0", "minos 10.12");
        assert!(check_load_commands(MachO::Agent, &old).unwrap_err().contains("minos"));
    }

    #[test]
    fn imports_match_the_stubs() {
        let nm = "                 (undefined) external _CFRelease (from CoreFoundation)\n\
                  (undefined) external _SecItemCopyMatching (from Security)\n\
                  (undefined) external __os_log_impl (from libSystem)\n\
                  (undefined) external dyld_stub_binder (from libSystem)\n";
        let stubs: BTreeMap<String, BTreeSet<String>> = [
            ("CoreFoundation".to_owned(), ["_CFRelease".to_owned()].into()),
            ("Security".to_owned(), ["_SecItemCopyMatching".to_owned(), "_SecTrustCopyResult".to_owned()].into()),
        ]
        .into();
        // The agent uses some of the stubs' symbols; the library must use exactly them.
        check_imports(MachO::Agent, nm, &stubs).unwrap();
        let all = format!("{nm}                 (undefined) external _SecTrustCopyResult (from Security)\n");
        check_imports(MachO::Dylib, &all, &stubs).unwrap();
        assert!(check_imports(MachO::Dylib, nm, &stubs).unwrap_err().contains("Security.tbd is out of date"));
        for kind in MachO::ALL {
            let lookup = format!("{all}                 (undefined) external _foo (dynamically looked up)\n");
            assert!(check_imports(kind, &lookup, &stubs).unwrap_err().contains("bound to no library"));
            let other = format!("{all}                 (undefined) external _objc_msgSend (from libobjc)\n");
            assert!(check_imports(kind, &other, &stubs).unwrap_err().contains("libobjc"));
            let unknown =
                format!("{all}                 (undefined) external _SecKeyCreateSignature (from Security)\n");
            assert!(check_imports(kind, &unknown, &stubs).unwrap_err().contains("_SecKeyCreateSignature"));
        }
    }

    #[test]
    fn stub_symbols_are_read_from_the_repository_files() {
        let stubs = framework_stubs().unwrap();
        assert!(stubs["Security"].contains("_SecItemCopyMatching"));
        assert!(stubs["Security"].contains("_kSecUseAuthenticationUISkip"));
        assert!(stubs["CoreFoundation"].contains("_CFRelease"));
        assert!(stubs.values().flatten().all(|s| s.starts_with('_')));
    }

    #[test]
    fn export_trie() {
        let objdump = "lib.dylib:\n\nExports trie:\n0x00001940  _C_GetFunctionList\n\
                       0x00002098  _C_GetInterfaceList\n0x00001C50  _C_GetInterface\n";
        check_export_trie(objdump).unwrap();
        let more = format!("{objdump}0x00003000  _rust_eh_personality\n");
        assert!(check_export_trie(&more).is_err());
        assert!(check_export_trie("").is_err());
    }

    #[test]
    fn header_flags() {
        let hv = "Mach header\n      magic cputype cpusubtype  caps    filetype ncmds sizeofcmds      flags\n\
                  MH_MAGIC_64   ARM64        ALL  0x00       DYLIB    16       2304   NOUNDEFS DYLDLINK TWOLEVEL NO_REEXPORTED_DYLIBS\n";
        check_header(MachO::Dylib, hv).unwrap();
        assert!(check_header(MachO::Dylib, &hv.replace("NOUNDEFS ", "")).is_err());
        assert!(check_header(MachO::Agent, hv).unwrap_err().contains("EXECUTE"));
        let exe = "Mach header\n      magic cputype cpusubtype  caps    filetype ncmds sizeofcmds      flags\n\
                   MH_MAGIC_64   ARM64        ALL  0x00     EXECUTE    19       2424   NOUNDEFS DYLDLINK TWOLEVEL PIE MH_HAS_TLV_DESCRIPTORS\n";
        check_header(MachO::Agent, exe).unwrap();
        assert!(check_header(MachO::Agent, &exe.replace(" PIE", "")).unwrap_err().contains("PIE"));
        assert!(check_header(MachO::Dylib, exe).is_err());
    }

    #[test]
    fn exports_of_every_architecture() {
        // llvm-nm -gU --arch=all of a universal library.
        let nm = "\nlib.dylib (for architecture arm64):\n\
                  0000000000000410 T _C_GetFunctionList\n\
                  0000000000000428 T _C_GetInterface\n\
                  0000000000000420 T _C_GetInterfaceList\n\
                  0000000000008000 D ___dso_handle\n\
                  0000000000008000 D __mh_dylib_header\n\
                  \nlib.dylib (for architecture x86_64):\n\
                  0000000000000450 T _C_GetFunctionList\n\
                  0000000000000480 T _C_GetInterface\n\
                  0000000000000470 T _C_GetInterfaceList\n";
        check_exports(nm).unwrap();
        let extra = format!("{nm}0000000000000490 T _rust_panic\n");
        assert!(check_exports(&extra).unwrap_err().contains("x86_64"));
        assert!(check_exports("").is_err());
    }

    #[test]
    fn both_architectures() {
        let path = Path::new("cosmian-ssh-agent");
        check_archs(path, "x86_64 arm64\n").unwrap();
        assert!(check_archs(path, "arm64\n").unwrap_err().contains("x86_64"));
        assert!(check_archs(path, "x86_64 arm64 arm64e\n").is_err());
    }
}
