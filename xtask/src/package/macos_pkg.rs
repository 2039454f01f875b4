//! The macOS `.pkg`, built the same way on Linux (`dist-macos-cross`) and on the Mac
//! (`dist-macos`), then signed by [`super::macos`]: a flat package (a xar archive holding a
//! `Distribution` and one component with its `PackageInfo`, BOM and cpio payload, as
//! `productbuild` lays it out) that installs [`pkg_files`] under `/` and runs nothing at
//! install time. On Linux, [`check_pkg`] unpacks it with tools that are not its writer.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::elf::AGENT;
use super::macos::{Universal, DYLIB, IDENTIFIER};
use super::{capture, packaging_file, version, workspace_root, BIN_DIR, LIB_DIR, NAME};
use crate::step;

/// The LaunchAgent's label, also the agent's code signature identifier.
pub const LAUNCH_AGENT_LABEL: &str = "com.cosmian.ssh-agent";
/// The LaunchAgent (`packaging/macos/`), installed into [`LAUNCH_AGENTS_DIR`].
pub const LAUNCH_AGENT: &str = "com.cosmian.ssh-agent.plist";
pub const LAUNCH_AGENTS_DIR: &str = "Library/LaunchAgents";

/// A file of the `.pkg`'s payload: where it installs (relative to `/`), its mode, its content.
#[derive(Debug, PartialEq, Eq)]
pub struct PkgFile {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// What the `.pkg` installs, and nothing else: the library into `/usr/local/lib` (a real file
/// there is what every ssh-agent accepts), the agent into `/usr/local/bin`, both 0755, and the
/// agent's LaunchAgent (`packaging/macos/`, 0644), installed, not enabled: launchd skips it
/// until a user enables it (`Disabled`), and nothing runs at install time.
pub fn pkg_files(files: &Universal) -> Result<Vec<PkgFile>, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let plist = workspace_root().join("packaging/macos").join(LAUNCH_AGENT);
    Ok(vec![
        PkgFile { path: format!("{LIB_DIR}/{DYLIB}"), mode: 0o755, bytes: read(&files.dylib)? },
        PkgFile { path: format!("{BIN_DIR}/{AGENT}"), mode: 0o755, bytes: read(&files.agent)? },
        PkgFile { path: format!("{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}"), mode: 0o644, bytes: read(&plist)? },
    ])
}

/// Every folder the payload's files are in (`usr`, `usr/local`, ...), sorted: parents first.
fn pkg_folders(files: &[PkgFile]) -> BTreeSet<String> {
    files.iter().flat_map(|file| file.path.match_indices('/').map(|(at, _)| file.path[..at].to_owned())).collect()
}

/// The `.pkg` (a flat package, as `productbuild` lays it out) installing [`pkg_files`] under
/// `/`, the same on Linux and on the Mac: embala-pkg's xar writer and BOM, and this project's
/// `PackageInfo` and `Distribution` (`packaging/macos/pkg/`), because embala-pkg, like
/// `pkgbuild`, writes `overwrite-permissions="true"`: the folders the payload names
/// (`/usr/local/bin`, `/usr/local/lib`, which Homebrew owns on Intel Macs, `/Library`) would
/// get the package's owner and mode. With `"false"`, Installer creates a missing folder
/// root:wheel 0755 and leaves an existing one as it is.
pub fn build_pkg(files: &Universal, pkg: &Path) -> Result<(), String> {
    step(
        "build the .pkg",
        &format!(
            "a flat package installing /{LIB_DIR}/{DYLIB}, /{BIN_DIR}/{AGENT}, /{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}"
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
    let cpio = payload_cpio(&payload, &folders);
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

/// The payload as `pkgbuild` writes it: an odc ("070707") cpio archive of `.`, the folders
/// (0755) and the files, sorted (parents first), owned by 0:0, dated 2000-01-01 (a fixed date,
/// as embala-pkg dates its own).
fn payload_cpio(files: &[PkgFile], folders: &BTreeSet<String>) -> Vec<u8> {
    const MTIME: u64 = 946_684_800;
    let mut out = Vec::new();
    let mut record = |inode: usize, name: &str, mode: u32, data: &[u8]| {
        let nlink = if mode & 0o40000 != 0 { 2 } else { 1 };
        // magic, dev, ino, mode, uid, gid, nlink, rdev, mtime, name size, file size (octal).
        let (zero, name_size, size) = ("000000", name.len() + 1, data.len());
        out.extend_from_slice(
            format!(
                "070707{zero}{inode:06o}{mode:06o}{zero}{zero}{nlink:06o}{zero}{MTIME:011o}{name_size:06o}{size:011o}"
            )
            .as_bytes(),
        );
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(data);
    };
    let mut entries: Vec<(String, u32, &[u8])> = vec![(".".into(), 0o40755, &[])];
    entries.extend(folders.iter().map(|folder| (format!("./{folder}"), 0o40755, &[][..])));
    entries.extend(files.iter().map(|file| (format!("./{}", file.path), 0o100000 | file.mode, file.bytes.as_slice())));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let last = entries.len();
    for (inode, (name, mode, data)) in entries.into_iter().enumerate() {
        record(inode, &name, mode, data);
    }
    record(last, "TRAILER!!!", 0, &[]);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Unpacks a `.pkg` with tools that are not its writer (7-Zip reads xar; gzip and cpio the
/// payload): one component installing to `/` without `overwrite-permissions`, a BOM, and a
/// payload of exactly `files` (each byte for byte, with its mode) in root-owned 0755 folders;
/// its LaunchAgent as launchd reads it ([`check_launch_agent`]).
pub fn check_pkg(pkg: &Path, files: &[PkgFile]) -> Result<(), String> {
    step("unpack the .pkg", "7z x; gzip -dc Payload | cpio -itv, cpio -idm");
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let xar = work.path().join("xar");
    capture(Command::new("7z").arg("x").arg(format!("-o{}", xar.display())).arg(pkg))?;
    let component = xar.join(format!("{NAME}.pkg"));
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let info = String::from_utf8_lossy(&read(&component.join("PackageInfo"))?).into_owned();
    for needed in [
        format!("identifier=\"{IDENTIFIER}\""),
        "install-location=\"/\"".to_owned(),
        "overwrite-permissions=\"false\"".to_owned(),
    ] {
        if !info.contains(&needed) {
            return Err(format!("PackageInfo lacks {needed}:\n{info}"));
        }
    }
    if !read(&component.join("Bom"))?.starts_with(b"BOMStore") {
        return Err("the component's Bom is not a BOM store".into());
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
    let expected: BTreeSet<String> = [".".to_owned()]
        .into_iter()
        .chain(pkg_folders(files).iter().map(|folder| format!("./{folder}")))
        .map(|folder| format!("drwxr-xr-x 0:0 {folder}"))
        .chain(files.iter().map(|file| {
            let mode = if file.mode == 0o755 { "-rwxr-xr-x" } else { "-rw-r--r--" };
            format!("{mode} 0:0 ./{}", file.path)
        }))
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
    check_launch_agent(&payload.join(LAUNCH_AGENTS_DIR).join(LAUNCH_AGENT))?;
    println!(
        "    {}: installs under / (overwrite-permissions=\"false\"), identical to the files signed:",
        pkg.display()
    );
    print!("{}", listed.iter().map(|line| format!("      {line}\n")).collect::<String>());
    Ok(())
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

    #[test]
    fn the_payload_is_its_files_in_their_folders_as_cpio_reads_it() {
        let files = [
            file("usr/local/lib/libcosmian_pkcs11.dylib", 0o755, b"library"),
            file("usr/local/bin/cosmian-ssh-agent", 0o755, b"agent"),
            file("Library/LaunchAgents/com.cosmian.ssh-agent.plist", 0o644, b"plist"),
        ];
        let folders = pkg_folders(&files);
        let expected = ["Library", "Library/LaunchAgents", "usr", "usr/local", "usr/local/bin", "usr/local/lib"];
        assert_eq!(folders.iter().map(String::as_str).collect::<Vec<_>>(), expected);

        let dir = tempfile::tempdir().unwrap();
        let cpio = payload_cpio(&files, &folders);
        assert_eq!(cpio.len() % 512, 0);
        std::fs::write(dir.path().join("payload"), &cpio).unwrap();
        let listed = capture(
            Command::new("cpio").args(["-itv", "--numeric-uid-gid", "--quiet", "-F"]).arg(dir.path().join("payload")),
        )
        .unwrap();
        let listed = payload_listing(&listed);
        assert!(listed.contains("-rwxr-xr-x 0:0 ./usr/local/bin/cosmian-ssh-agent"), "{listed:#?}");
        assert!(listed.contains("-rw-r--r-- 0:0 ./Library/LaunchAgents/com.cosmian.ssh-agent.plist"), "{listed:#?}");
        assert!(listed.contains("drwxr-xr-x 0:0 ./Library"), "{listed:#?}");
        assert_eq!(listed.len(), 1 + folders.len() + files.len(), "{listed:#?}");
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
