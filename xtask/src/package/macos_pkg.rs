//! The macOS `.pkg`, built the same way on Linux (`dist-macos-cross`) and on the Mac
//! (`dist-macos`), then signed by [`super::macos`]: a flat package (a xar archive holding a
//! `Distribution` and one component with its `PackageInfo`, BOM and cpio payload, as
//! `productbuild` lays it out) that installs [`pkg_files`] under `/` and runs nothing at
//! install time. Its payload holds those files and no folder; its BOM, a tree, names their
//! folders too, and `overwrite-permissions="false"` tells Installer to leave the owner and mode
//! of a folder that exists as they are. On Linux, [`check_pkg`] unpacks it with tools that are
//! not its writer, reads its BOM ([`bom`]) and runs docs/install.md's uninstall on the
//! unpacked files ([`check_uninstall`]).

mod bom;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::elf::AGENT;
use super::macos::{DYLIB, IDENTIFIER, LICENSE_FILES, Universal};
use super::{BIN_DIR, LIB_DIR, NAME, capture, packaging_file, version, workspace_root};
use crate::step;

/// The LaunchAgent's label, also the agent's code signature identifier.
pub const LAUNCH_AGENT_LABEL: &str = "com.cosmian.ssh-agent";
/// The LaunchAgent (`packaging/macos/`), installed into [`LAUNCH_AGENTS_DIR`].
pub const LAUNCH_AGENT: &str = "com.cosmian.ssh-agent.plist";
pub const LAUNCH_AGENTS_DIR: &str = "Library/LaunchAgents";

/// A file of the `.pkg`'s payload: where it installs (relative to `/`), its mode, its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgFile {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// Where the `.pkg` puts [`LICENSE_FILES`] (`/usr/share` is the system's, on macOS).
pub const PKG_DOC_DIR: &str = "usr/local/share/doc/cosmian-pkcs11";

/// What the `.pkg` installs, and nothing else: the library into `/usr/local/lib` (a real file
/// there is what every ssh-agent accepts), the agent into `/usr/local/bin`, both 0755, the
/// agent's LaunchAgent (`packaging/macos/`, 0644), installed, not enabled: launchd skips it
/// until a user enables it (`Disabled`), and nothing runs at install time; the licence files
/// into [`PKG_DOC_DIR`] (0644).
pub fn pkg_files(files: &Universal) -> Result<Vec<PkgFile>, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let plist = workspace_root().join("packaging/macos").join(LAUNCH_AGENT);
    let mut payload = vec![
        PkgFile { path: format!("{LIB_DIR}/{DYLIB}"), mode: 0o755, bytes: read(&files.dylib)? },
        PkgFile { path: format!("{BIN_DIR}/{AGENT}"), mode: 0o755, bytes: read(&files.agent)? },
        PkgFile { path: format!("{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}"), mode: 0o644, bytes: read(&plist)? },
    ];
    for name in LICENSE_FILES {
        payload.push(PkgFile {
            path: format!("{PKG_DOC_DIR}/{name}"),
            mode: 0o644,
            bytes: read(&workspace_root().join(name))?,
        });
    }
    Ok(payload)
}

/// Every folder the payload's files are in (`usr`, `usr/local`, ...), sorted: parents first.
fn pkg_folders(files: &[PkgFile]) -> BTreeSet<String> {
    files.iter().flat_map(|file| file.path.match_indices('/').map(|(at, _)| file.path[..at].to_owned())).collect()
}

/// The `.pkg` (a flat package, as `productbuild` lays it out) installing [`pkg_files`] under
/// `/`, the same on Linux and on the Mac: embala-pkg's xar writer and BOM, this project's cpio
/// payload ([`payload_cpio`]: the files, no folder), and its `PackageInfo` and `Distribution`
/// (`packaging/macos/pkg/`), because embala-pkg, like `pkgbuild`, writes
/// `overwrite-permissions="true"`: the folders the BOM names (`/usr/local/bin`,
/// `/usr/local/lib`, which Homebrew owns on Intel Macs, `/Library`) would get the package's
/// owner and mode. With `"false"`, Installer creates a missing folder root:wheel 0755 (as the
/// BOM records it) and leaves an existing one as it is.
pub fn build_pkg(files: &Universal, pkg: &Path) -> Result<(), String> {
    step(
        "build the .pkg",
        &format!(
            "a flat package installing /{LIB_DIR}/{DYLIB}, /{BIN_DIR}/{AGENT}, /{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}, \
             /{PKG_DOC_DIR}/{{{}}}",
            LICENSE_FILES.join(",")
        ),
    );
    let payload = pkg_files(files)?;
    let folders = pkg_folders(&payload);
    // The BOM of a staged copy (embala-pkg reads the modes there), owned by root:wheel.
    let stage = tempfile::tempdir().map_err(|e| e.to_string())?;
    for file in &payload {
        use std::os::unix::fs::PermissionsExt;
        let path = stage.path().join(&file.path);
        super::write(&path, &file.bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).map_err(|e| e.to_string())?;
    }
    let bom = embala_pkg::write_bom(stage.path(), 0, 0).map_err(|e| format!("cannot write the BOM: {e}"))?;
    let cpio = payload_cpio(&payload);
    // pkgbuild's count: every file's 512-byte blocks and one per folder, in KiB.
    let blocks: usize = payload.iter().map(|f| f.bytes.len().div_ceil(512)).sum::<usize>() + folders.len();
    let kbytes = blocks.div_ceil(2).to_string();
    let count = (1 + folders.len() + payload.len()).to_string();
    let both = [("IDENTIFIER", IDENTIFIER), ("VERSION", version()), ("INSTALL_KBYTES", kbytes.as_str())];
    let package_info = super::render(
        &packaging_file("macos/pkg/PackageInfo")?,
        &[&both[..], &[("NUMBER_OF_FILES", &count)]].concat(),
    )?;
    let title = ("TITLE", "Cosmian PKCS#11 provider for OpenSSH");
    let distribution =
        super::render(&packaging_file("macos/pkg/Distribution")?, &[&both[..], &[("NAME", NAME), title]].concat())?;
    let payload_gz = super::gzip(&cpio)?;
    let component = format!("{NAME}.pkg");
    use embala_pkg::{XarEntry, XarEntryKind::*};
    fn file<'a>(name: &'a str, data: &'a [u8], store: bool) -> XarEntry<'a> {
        XarEntry { name, kind: File { data, mode: 0o644, store } }
    }
    let entries = [
        XarEntry {
            name: &component,
            kind: Directory {
                mode: 0o700,
                children: vec![
                    file("Bom", &bom, false),
                    // Already gzipped: stored as is, as productbuild does.
                    file("Payload", &payload_gz, true),
                    file("PackageInfo", package_info.as_bytes(), false),
                ],
            },
        },
        file("Distribution", distribution.as_bytes(), false),
    ];
    let mut archive = Vec::new();
    embala_pkg::write_xar(&entries, &mut archive).map_err(|e| format!("cannot write {}: {e}", pkg.display()))?;
    super::write(pkg, archive)
}

/// The payload: an odc ("070707") cpio archive, as `pkgbuild` writes it, of the files alone,
/// sorted, owned by 0:0, dated 2000-01-01 (a fixed date, as embala-pkg dates the BOM's
/// entries). No entry for `.` nor for a folder: nothing in it describes `/usr/local` or
/// `/usr/local/lib`; the BOM alone names them.
fn payload_cpio(files: &[PkgFile]) -> Vec<u8> {
    const MTIME: u64 = 946_684_800;
    let mut out = Vec::new();
    let mut record = |inode: usize, name: &str, mode: u32, data: &[u8]| {
        // magic, dev, ino, mode, uid, gid, nlink, rdev, mtime, name size, file size (octal).
        let (zero, name_size, size) = ("000000", name.len() + 1, data.len());
        out.extend_from_slice(
            format!("070707{zero}{inode:06o}{mode:06o}{zero}{zero}000001{zero}{MTIME:011o}{name_size:06o}{size:011o}")
                .as_bytes(),
        );
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(data);
    };
    let mut entries: Vec<(String, u32, &[u8])> =
        files.iter().map(|file| (format!("./{}", file.path), 0o100000 | file.mode, file.bytes.as_slice())).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let last = entries.len() + 1;
    for (inode, (name, mode, data)) in entries.into_iter().enumerate() {
        record(inode + 1, &name, mode, data);
    }
    record(last, "TRAILER!!!", 0, &[]);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Unpacks a `.pkg` with tools that are not its writer (7-Zip reads xar; gzip and cpio the
/// payload; [`bom`] the BOM): one component installing to `/` without `overwrite-permissions`;
/// a payload of exactly `files` (each byte for byte, with its mode, 0:0), with no entry for a
/// folder nor for `.`; a BOM of exactly `files` (mode, 0:0, size, `cksum` CRC) and the folders
/// they are in (root:wheel 0755), which `numberOfFiles` counts; its LaunchAgent as launchd reads
/// it; docs/install.md's uninstall, run on the unpacked files, removes exactly them.
pub fn check_pkg(pkg: &Path, files: &[PkgFile]) -> Result<(), String> {
    step("unpack the .pkg", "7z x; gzip -dc Payload | cpio -itv, cpio -idm; read the Bom");
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let xar = work.path().join("xar");
    capture(Command::new("7z").arg("x").arg(format!("-o{}", xar.display())).arg(pkg))?;
    let component = xar.join(format!("{NAME}.pkg"));
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let bom = bom::read(&read(&component.join("Bom"))?)?;
    let info = String::from_utf8_lossy(&read(&component.join("PackageInfo"))?).into_owned();
    for needed in [
        format!("identifier=\"{IDENTIFIER}\""),
        "install-location=\"/\"".to_owned(),
        "overwrite-permissions=\"false\"".to_owned(),
        format!("numberOfFiles=\"{}\"", bom.len()),
    ] {
        if !info.contains(&needed) {
            return Err(format!("PackageInfo lacks {needed}:\n{info}"));
        }
    }
    if !read(&xar.join("Distribution"))?.windows(NAME.len()).any(|w| w == NAME.as_bytes()) {
        return Err("the Distribution does not name the component".into());
    }
    let payload = work.path().join("payload");
    std::fs::create_dir_all(&payload).map_err(|e| e.to_string())?;
    let unpack = |cpio: &str| {
        let script = format!("gzip -dc '{}' | cpio {cpio} --quiet", component.join("Payload").display());
        capture(Command::new("sh").args(["-c", &script]).current_dir(&payload))
    };
    let listed = payload_listing(&unpack("-itv --numeric-uid-gid")?);
    let expected: BTreeSet<String> = files
        .iter()
        .map(|file| {
            let mode = if file.mode == 0o755 { "-rwxr-xr-x" } else { "-rw-r--r--" };
            format!("{mode} 0:0 ./{}", file.path)
        })
        .collect();
    if listed != expected {
        return Err(format!("the payload holds {listed:#?}, not {expected:#?}"));
    }
    unpack("-idm")?;
    for file in files {
        if read(&payload.join(&file.path))? != file.bytes {
            return Err(format!("the payload's {} differs from the file built", file.path));
        }
    }
    check_bom(&bom, files, &payload)?;
    check_launch_agent(&payload.join(LAUNCH_AGENTS_DIR).join(LAUNCH_AGENT))?;
    println!(
        "    {}: installs under / (overwrite-permissions=\"false\"), identical to the files signed, no folder \
         in the payload:",
        pkg.display()
    );
    print!("{}", listed.iter().map(|line| format!("      {line}\n")).collect::<String>());
    let block = cosmian_pkcs11_testbed::docs::shell_block("docs/install.md", UNINSTALL_BLOCK)?;
    let removed = check_uninstall(&block, &bom, &payload)?;
    println!("    docs/install.md's uninstall, run on them, removes exactly these {} files", removed.len());
    Ok(())
}

/// The BOM lists `files` (their mode, owner 0:0, size and `cksum` CRC, computed here by
/// coreutils' `cksum` from the unpacked copies in `unpacked`) and, as a BOM is a tree, `.` and
/// the folders they are in, root:wheel 0755, and nothing else.
fn check_bom(bom: &[bom::BomEntry], files: &[PkgFile], unpacked: &Path) -> Result<(), String> {
    let line = |path: &str, mode: u16, size: u32, checksum: u32| format!("{path} {mode:o} 0:0 {size} {checksum}");
    let found: BTreeSet<String> =
        bom.iter().map(|e| format!("{} {:o} {}:{} {} {}", e.path, e.mode, e.uid, e.gid, e.size, e.checksum)).collect();
    let mut expected: BTreeSet<String> =
        [".".to_owned()].into_iter().chain(pkg_folders(files)).map(|folder| line(&folder, 0o40755, 0, 0)).collect();
    for file in files {
        let cksum = capture(Command::new("cksum").arg(unpacked.join(&file.path)))?;
        let crc = cksum.split_whitespace().next().and_then(|crc| crc.parse().ok()).ok_or("cksum printed no CRC")?;
        let size = u32::try_from(file.bytes.len()).map_err(|e| e.to_string())?;
        expected.insert(line(&file.path, 0o100000 | file.mode as u16, size, crc));
    }
    if found != expected {
        return Err(format!(
            "the BOM lists {:#?}\nwhere it should list {:#?}",
            found.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&found).collect::<Vec<_>>()
        ));
    }
    println!(
        "    its BOM: the {} files (mode, 0:0, size, cksum), `.` and the {} folders they are in (root:wheel 0755)",
        files.len(),
        bom.iter().filter(|e| e.is_dir && e.path != ".").count()
    );
    Ok(())
}

/// The shell block of docs/install.md that uninstalls the `.pkg`.
pub const UNINSTALL_BLOCK: &str = "pkg-uninstall";

/// Runs `block` (docs/install.md's uninstall) with bash on a copy of the installed files
/// under `root`, as it runs on a Mac: `pkgutil` answers from the BOM (`--files`, `--only-files`,
/// `--only-dirs`: the receipt is the BOM; `--forget`), `sudo` runs its command, `launchctl`
/// does nothing, and `rm` / `rmdir` take the absolute paths they are given under `root`.
/// `Err` unless it removes exactly the BOM's files, then the package's own folder
/// ([`PKG_DOC_DIR`]), forgets the package last, and leaves no file under `root`. Returns the
/// files removed.
pub fn check_uninstall(block: &str, bom: &[bom::BomEntry], root: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = work.path().join("bin");
    let listing = |keep: &dyn Fn(&bom::BomEntry) -> bool| -> String {
        bom.iter().filter(|e| e.path != "." && keep(e)).map(|e| format!("{}\n", e.path)).collect()
    };
    let listings =
        [("files", listing(&|_| true)), ("only-files", listing(&|e| !e.is_dir)), ("only-dirs", listing(&|e| e.is_dir))];
    for (name, text) in &listings {
        super::write(&work.path().join(name), text)?;
    }
    // Absolute paths re-rooted under $ROOT, each logged.
    let rerooted = |tool: &str| {
        format!(
            "n=$#\nfor a in \"$@\"; do case \"$a\" in /*) echo \"{tool} $a\" >> \"$LOG\"; a=\"$ROOT$a\";; esac; \
             set -- \"$@\" \"$a\"; done\nshift $n\nexec /bin/{tool} \"$@\"\n"
        )
    };
    let pkgutil = format!(
        "echo \"pkgutil $*\" >> \"$LOG\"\ncase \"$*\" in\n\
         \x20 \"--files {IDENTIFIER}\") cat \"$LISTINGS/files\";;\n\
         \x20 \"--only-files --files {IDENTIFIER}\"|\"--files {IDENTIFIER} --only-files\") cat \"$LISTINGS/only-files\";;\n\
         \x20 \"--only-dirs --files {IDENTIFIER}\"|\"--files {IDENTIFIER} --only-dirs\") cat \"$LISTINGS/only-dirs\";;\n\
         \x20 \"--forget {IDENTIFIER}\") echo \"Forgot package '{IDENTIFIER}' on '/'.\";;\n\
         \x20 *) echo \"pkgutil (stand-in): $* is not emulated\" >&2; exit 1;;\nesac\n"
    );
    let stand_ins = [
        ("sudo", "exec \"$@\"\n".to_owned()),
        ("launchctl", "echo \"launchctl $*\" >> \"$LOG\"\n".to_owned()),
        ("pkgutil", pkgutil),
        ("rm", rerooted("rm")),
        ("rmdir", rerooted("rmdir")),
    ];
    for (name, body) in &stand_ins {
        let path = bin.join(name);
        super::write(&path, format!("#!/bin/sh\n{body}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let log = work.path().join("log");
    super::write(&log, "")?;
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(work.path())
        .env("PATH", path)
        .env("ROOT", root)
        .env("LOG", &log)
        .env("LISTINGS", work.path())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let log = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the uninstall failed ({}):\n{}\n{log}",
            out.status,
            cosmian_pkcs11_testbed::output_text(&out)
        ));
    }
    let logged = |tool: &str| -> Vec<String> {
        log.lines().filter_map(|line| line.strip_prefix(tool)?.strip_prefix(' ')).map(str::to_owned).collect()
    };
    let removed: BTreeSet<String> = logged("rm").into_iter().collect();
    let files: BTreeSet<String> = bom.iter().filter(|e| !e.is_dir).map(|e| format!("/{}", e.path)).collect();
    if removed != files {
        return Err(format!("the uninstall removes {removed:#?}, not the package's files {files:#?}\n{log}"));
    }
    if logged("rmdir") != [format!("/{PKG_DOC_DIR}")] {
        return Err(format!(
            "the uninstall removes the folders {:?}, not /{PKG_DOC_DIR} alone\n{log}",
            logged("rmdir")
        ));
    }
    if log.lines().last() != Some(format!("pkgutil --forget {IDENTIFIER}").as_str()) {
        return Err(format!("the uninstall does not end with pkgutil --forget {IDENTIFIER}:\n{log}"));
    }
    let left = capture(Command::new("find").arg(root).args(["-not", "-type", "d"]))?;
    if !left.trim().is_empty() {
        return Err(format!("the uninstall leaves:\n{left}"));
    }
    Ok(removed.into_iter().collect())
}

/// `cpio -itv --numeric-uid-gid`: `MODE UID:GID NAME` per entry.
fn payload_listing(cpio: &str) -> BTreeSet<String> {
    cpio.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} {}:{} {}", fields.first()?, fields.get(2)?, fields.get(3)?, fields.last()?))
        })
        .collect()
}

/// The LaunchAgent as launchd reads it (Python's plistlib parses it): exactly the label
/// [`LAUNCH_AGENT_LABEL`], the installed agent in the foreground (`-D`: launchd keeps it),
/// started when loaded and kept alive, and `Disabled` (installed, not enabled: launchd skips it
/// at login until the user runs `launchctl enable`). Nothing else: no `Sockets` (the agent binds
/// its default socket itself), no output file.
pub fn check_launch_agent(plist: &Path) -> Result<(), String> {
    let json = capture(
        Command::new("python3")
            .args(["-c", "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))"])
            .arg(plist),
    )
    .map_err(|e| format!("plistlib cannot read {}: {e}", plist.display()))?;
    let found: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let expected = serde_json::json!({
        "Label": LAUNCH_AGENT_LABEL,
        "ProgramArguments": [format!("/{BIN_DIR}/{AGENT}"), "-D"],
        "RunAtLoad": true,
        "KeepAlive": true,
        "Disabled": true,
    });
    if found != expected {
        return Err(format!("{} holds {found}, not {expected}", plist.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, bytes: &[u8]) -> PkgFile {
        PkgFile { path: path.to_owned(), mode, bytes: bytes.to_vec() }
    }

    fn files() -> Vec<PkgFile> {
        vec![
            file("usr/local/lib/libcosmian_pkcs11.dylib", 0o755, b"library"),
            file("usr/local/bin/cosmian-ssh-agent", 0o755, b"agent"),
            file("Library/LaunchAgents/com.cosmian.ssh-agent.plist", 0o644, b"plist"),
            file("usr/local/share/doc/cosmian-pkcs11/LICENSE", 0o644, b"licence"),
            file("usr/local/share/doc/cosmian-pkcs11/THIRDPARTY.yml", 0o644, b"third parties"),
        ]
    }

    #[test]
    fn the_payload_is_its_files_and_no_folder_as_cpio_reads_it() {
        let files = files();
        let dir = tempfile::tempdir().unwrap();
        let cpio = payload_cpio(&files);
        assert_eq!(cpio.len() % 512, 0);
        std::fs::write(dir.path().join("payload"), &cpio).unwrap();
        let listed = capture(
            Command::new("cpio").args(["-itv", "--numeric-uid-gid", "--quiet", "-F"]).arg(dir.path().join("payload")),
        )
        .unwrap();
        let listed = payload_listing(&listed);
        assert!(listed.contains("-rwxr-xr-x 0:0 ./usr/local/bin/cosmian-ssh-agent"), "{listed:#?}");
        assert!(listed.contains("-rw-r--r-- 0:0 ./Library/LaunchAgents/com.cosmian.ssh-agent.plist"), "{listed:#?}");
        assert!(listed.iter().all(|line| !line.starts_with('d')), "{listed:#?}");
        assert_eq!(listed.len(), files.len(), "{listed:#?}");
    }

    /// The BOM embala-pkg writes of the staged files (as `build_pkg` stages them), read back.
    fn bom_of(files: &[PkgFile]) -> (tempfile::TempDir, Vec<bom::BomEntry>) {
        use std::os::unix::fs::PermissionsExt;
        let stage = tempfile::tempdir().unwrap();
        for file in files {
            let path = stage.path().join(&file.path);
            crate::package::write(&path, &file.bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode)).unwrap();
        }
        let entries = bom::read(&embala_pkg::write_bom(stage.path(), 0, 0).unwrap()).unwrap();
        (stage, entries)
    }

    #[test]
    fn the_bom_lists_the_files_and_their_folders_root_wheel_0755() {
        let files = files();
        let (stage, entries) = bom_of(&files);
        check_bom(&entries, &files, stage.path()).unwrap();
        let folders: Vec<&str> = entries.iter().filter(|e| e.is_dir).map(|e| e.path.as_str()).collect();
        assert!(folders.contains(&"usr/local/lib") && folders.contains(&"."), "{folders:?}");
        // A BOM that would give /usr/local/lib another owner or mode, or list another file.
        let mut owned = entries.clone();
        owned.iter_mut().filter(|e| e.path == "usr/local/lib").for_each(|e| e.uid = 501);
        let err = check_bom(&owned, &files, stage.path()).unwrap_err();
        eprintln!("broken BOM (owner): {err}");
        assert!(err.contains("usr/local/lib 40755 501:0"), "{err}");
        let (_, more) = bom_of(&[files.clone(), vec![file("usr/local/lib/other.dylib", 0o755, b"x")]].concat());
        let err = check_bom(&more, &files, stage.path()).unwrap_err();
        eprintln!("broken BOM (a file more): {err}");
        assert!(err.contains("usr/local/lib/other.dylib"), "{err}");
        // A file whose bytes differ from the BOM's size and CRC.
        std::fs::write(stage.path().join("usr/local/bin/cosmian-ssh-agent"), b"agenT").unwrap();
        let err = check_bom(&entries, &files, stage.path()).unwrap_err();
        eprintln!("broken BOM (changed bytes): {err}");
        assert!(err.contains("usr/local/bin/cosmian-ssh-agent"), "{err}");
    }

    #[test]
    fn the_documented_uninstall_removes_exactly_the_payload() {
        let files = files();
        let (_, entries) = bom_of(&files);
        let installed = || {
            let root = tempfile::tempdir().unwrap();
            for file in &files {
                crate::package::write(&root.path().join(&file.path), &file.bytes).unwrap();
            }
            root
        };
        let block = cosmian_pkcs11_testbed::docs::shell_block("docs/install.md", UNINSTALL_BLOCK).unwrap();
        let root = installed();
        let removed = check_uninstall(&block, &entries, root.path()).unwrap();
        assert_eq!(removed.len(), files.len());
        assert!(!root.path().join(PKG_DOC_DIR).exists());
        assert!(root.path().join("usr/local/lib").is_dir());
        // What a broken procedure prints.
        let refused = |block: String, needle: &str| {
            let err = check_uninstall(&block, &entries, installed().path()).unwrap_err();
            eprintln!("broken for `{needle}`: {err}");
            assert!(err.contains(needle), "{needle}: {err}");
        };
        refused(block.replace("--only-files ", ""), "rm");
        refused(block.lines().filter(|l| !l.contains("--forget")).map(|l| format!("{l}\n")).collect(), "--forget");
        refused(block.lines().filter(|l| !l.contains("rmdir")).map(|l| format!("{l}\n")).collect(), "alone");
        // The library alone removed; or one file more than the package's.
        let listing = format!("pkgutil --only-files --files {IDENTIFIER}");
        refused(block.replace(&listing, "echo usr/local/lib/libcosmian_pkcs11.dylib"), "Directory not empty");
        refused(
            block.replace(&listing, &format!("({listing}; echo usr/local/lib/libother.dylib)")),
            "not the package's files",
        );
    }

    #[test]
    fn the_launch_agent_is_what_launchd_needs_and_nothing_else() {
        let plist = workspace_root().join("packaging/macos").join(LAUNCH_AGENT);
        check_launch_agent(&plist).unwrap();
        let text = std::fs::read_to_string(&plist).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let variant = dir.path().join(LAUNCH_AGENT);
        let refused = |text: String, needle: &str| {
            std::fs::write(&variant, text).unwrap();
            let err = check_launch_agent(&variant).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        // In the background, launchd would lose it (and restart it forever: KeepAlive).
        refused(text.replace("\t\t<string>-D</string>\n", ""), "ProgramArguments");
        // Socket activation: the agent binds its own socket.
        let sockets = "\t<key>Sockets</key>\n\t<dict>\n\t\t<key>Listeners</key>\n\t\t<dict/>\n\t</dict>\n</dict>";
        refused(text.replace("</dict>\n</plist>", &format!("{sockets}\n</plist>")), "Sockets");
        // Enabled at install: every user would get it at the next login without opting in.
        refused(text.replace("<key>Disabled</key>\n\t<true/>", "<key>Disabled</key>\n\t<false/>"), "Disabled");
        // Not a property list at all.
        refused(text.replace("</plist>", ""), "plistlib cannot read");
    }
}
