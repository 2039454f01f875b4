//! `cargo xtask dist-macos-cross`: the universal macOS library and agent (`cosmian-ssh-agent`)
//! built on Linux, without Apple's SDK, checked with tools that read Mach-O, and signed and
//! packaged the way the release signs and packages them.
//!
//! - C code (ring, tracing-oslog's os_log wrapper) is compiled by zig's clang (PyPI `ziglang`,
//!   which ships macOS's libc headers and `libSystem.tbd`); `<os/log.h>`, which zig lacks, is
//!   the project's own, in `packaging/macos/sdk/usr/include`.
//! - The linker driver is Debian's clang-16 with `ld64.lld-16`, against a stub SDK assembled in
//!   `target/macos-cross/sdk`: zig's `libSystem.tbd` plus the project's text stubs of the
//!   frameworks the library imports (`packaging/macos/sdk/System/Library/Frameworks`), which
//!   list exactly the symbols it uses (the agent, linked from the same code, uses some of
//!   them). No `-undefined dynamic_lookup`: every import must be found in a stub.
//! - Build paths are remapped (`--remap-path-prefix`, `-ffile-prefix-map`), so no path of the
//!   build machine ends up in the file.
//!
//! [`macho::check`] then reads the results with LLVM's Mach-O tools (`llvm-otool`, `llvm-nm`,
//! `llvm-objdump`, `llvm-lipo`), as `dist-macos` reads the files it ships with Xcode's;
//! [`dist_macos_cross`] builds, checks, signs both with a
//! self-signed Developer ID certificate through the release's own signing code
//! ([`super::macos`]), verifies, shows that one changed byte fails the verification, zips the
//! library as the notary service takes it, and builds, signs and unpacks the `.pkg`. What only
//! a Mac or Apple can do (running them, notarization, Installer, launchd) is the release
//! workflow's.

use std::path::{Path, PathBuf};

use super::macos::macho::{self, LLVM, Readers};
use super::macos::{self, MIN_MACOS, MachO, TARGETS, Universal};
use super::{Tools, capture, workspace_root, write};

use super::elf::BuildTree;
use crate::step;

/// An LLVM tool of Debian's versioned packages (`llvm-nm` → `llvm-nm-16`).
fn llvm(tools: &Tools, name: &str) -> std::process::Command {
    tools.command(format!("{name}-{LLVM}"))
}

/// `cargo xtask dist-macos-cross`, and `cargo xtask test`'s macOS part: build, check, then sign
/// copies with a self-signed certificate as the release signs, verify them, tamper with one,
/// zip the signed library as the notary service takes it, and build the `.pkg` of them. The
/// unsigned universal files stay in `target/dist/`.
pub fn dist_macos_cross() -> Result<(), String> {
    let tools = Tools::get()?;
    let files = Universal::in_dist()?;
    build(tools, &BuildTree::here()?, &files)?;
    macho::check(tools, Readers::Llvm, &files)?;
    super::reproducible::check_macos(tools, &files)?;
    macos::signing_selftest(tools, &files)?;
    println!("\n{}\n{}", files.dylib.display(), files.agent.display());
    Ok(())
}

/// Builds both architectures in `tree` and joins each file into `files` (for a release:
/// `target/dist/libcosmian_pkcs11.dylib` and `target/dist/cosmian-ssh-agent-macos`).
pub fn build(tools: &Tools, tree: &BuildTree, files: &Universal) -> Result<(), String> {
    let work = tree.target_dir.join("macos-cross");
    let sdk = stub_sdk(tools, &work)?;
    let python = tools.python_path();
    for (target, arch) in TARGETS {
        let zig_arch = target.split('-').next().expect("a target triple");
        let bin = work.join("bin");
        // zig refuses the `--target=` the cc crate adds: the wrapper drops it and names the
        // target itself.
        let cc = bin.join(format!("cc-{target}"));
        write_script(
            &cc,
            &format!(
                "for a in \"$@\"; do shift; case \"$a\" in --target=*) ;; *) set -- \"$@\" \"$a\";; esac; done\n\
                 exec '{}' -m ziglang cc -target {zig_arch}-macos.{MIN_MACOS} -isystem '{}' \"$@\"\n",
                python.display(),
                sdk.join("usr/include").display(),
            ),
        )?;
        // clang passes `-platform_version` (which ld64.lld requires) to an ld64 it believes
        // recent: hence `-mlinker-version`.
        let linker = bin.join(format!("ld-{target}"));
        write_script(
            &linker,
            &format!(
                "exec clang-{LLVM} --target={arch}-apple-macos{MIN_MACOS} -isysroot '{}' \
                 -mlinker-version=711 --ld-path=/usr/bin/ld64.lld-{LLVM} \"$@\"\n",
                sdk.display()
            ),
        )?;
        step(
            &format!("build for {target}"),
            &format!("cargo build --release --target {target} (zig cc, clang-{LLVM} + ld64.lld-{LLVM}, stub SDK)"),
        );
        let env_target = target.replace('-', "_");
        crate::run(
            macos::release_build(tools, target, tree)?
                .env(format!("CC_{env_target}"), &cc)
                .env(format!("AR_{env_target}"), format!("llvm-ar-{LLVM}"))
                .env(format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()), &linker)
                .env("SDKROOT", &sdk),
        )?;
    }
    step("join them", &format!("llvm-lipo-{LLVM} -create"));
    for kind in MachO::ALL {
        let _ = std::fs::remove_file(files.get(kind));
        let slices: Vec<PathBuf> = TARGETS.iter().map(|(target, _)| macos::slice(tree, target, kind)).collect();
        capture(llvm(tools, "llvm-lipo").arg("-create").args(&slices).arg("-output").arg(files.get(kind)))?;
    }
    Ok(())
}

/// An executable `sh` script.
fn write_script(path: &Path, body: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    write(
        path,
        format!("#!/bin/sh\n# Written by cargo xtask dist-macos-cross (xtask/src/package/macos_cross.rs).\n{body}"),
    )?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// `target/macos-cross/sdk`: the repository's `packaging/macos/sdk` (headers, framework
/// stubs), zig's `libSystem.tbd` (also as `libc`/`libm`, as in Apple's SDK), and an
/// `SDKSettings.json` naming the SDK version zig's stubs come from.
fn stub_sdk(tools: &Tools, work: &Path) -> Result<PathBuf, String> {
    let zig_lib = capture(tools.python().args([
        "-c",
        "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'lib', 'libc', 'darwin'))",
    ]))?;
    let zig_darwin = PathBuf::from(zig_lib.trim());
    let sdk = work.join("sdk");
    let _ = std::fs::remove_dir_all(&sdk);
    copy_tree(&workspace_root().join("packaging/macos/sdk"), &sdk)?;
    let libsystem = std::fs::read(zig_darwin.join("libSystem.tbd")).map_err(|e| format!("zig's libSystem.tbd: {e}"))?;
    for name in ["libSystem.tbd", "libc.tbd", "libm.tbd"] {
        write(&sdk.join("usr/lib").join(name), &libsystem)?;
    }
    let settings = std::fs::read_to_string(zig_darwin.join("SDKSettings.json"))
        .map_err(|e| format!("zig's SDKSettings.json: {e}"))?;
    let settings: serde_json::Value =
        serde_json::from_str(&settings).map_err(|e| format!("zig's SDKSettings.json: {e}"))?;
    let sdk_version =
        settings["MinimalDisplayName"].as_str().ok_or("zig's SDKSettings.json has no MinimalDisplayName")?;
    write(
        &sdk.join("SDKSettings.json"),
        serde_json::json!({
            "CanonicalName": format!("macosx{sdk_version}"),
            "Version": sdk_version,
            "MaximumDeploymentTarget": format!("{sdk_version}.99"),
        })
        .to_string(),
    )?;
    Ok(sdk)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| format!("cannot copy {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}
