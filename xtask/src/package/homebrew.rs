//! The source tarball and the Homebrew tap. The tarball is `git archive` of `HEAD`, gzipped
//! without timestamp (reproducible for a commit: the Mac and Linux make the same bytes); the tap
//! is `target/dist/homebrew-tap/`, the layout of the `cosmian/homebrew-tap` repository that
//! `brew tap cosmian/tap` clones: `Formula/cosmian-pkcs11.rb`, rendered from
//! `packaging/homebrew/Formula/cosmian-pkcs11.rb` with the version and the tarball's SHA-256,
//! and its `README.md`.
//!
//! Checked here, without Homebrew: `ruby -c`; RuboCop with Homebrew's settings for formulae
//! (`packaging/homebrew/rubocop.yml`); `packaging/homebrew/check_formula.rb`, which checks the
//! stanzas, runs the formula's `test do` (OpenSC's pkcs11-tool loads the module; the agent
//! prints its version) against the release library and agent, and runs its `service do`
//! command (the agent in the foreground, which `brew services` hands to launchd or systemd)
//! until it listens on its default socket. Each check must fail on a formula broken for it.
//! Homebrew itself (`brew style`, `brew audit`, `brew install`, `brew test`, `brew services`,
//! `brew uninstall`) reads the same files in the release workflow, which `super::workflow`
//! checks. The tarball holds `LICENSE`, which Homebrew installs into the prefix, and
//! `THIRDPARTY.yml`, which the formula installs into `doc`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::elf::LinuxLib;
use super::{NAME, Tools, capture, packaging_file, render, sha256_file, version, workspace_root};
use crate::step;

/// The tap's name for `brew tap`: the GitHub repository `cosmian/homebrew-tap`.
pub const TAP: &str = "cosmian/tap";
/// The tap's folder in `target/dist/`, named as its repository.
pub const TAP_DIR: &str = "homebrew-tap";
/// The formula in the tap, and its template in `packaging/homebrew/`.
pub const FORMULA: &str = "Formula/cosmian-pkcs11.rb";

/// The rendered tap and the tarball its formula builds from.
pub struct Tap {
    pub tarball: PathBuf,
    pub sha256: String,
    /// `target/dist/homebrew-tap/Formula/cosmian-pkcs11.rb`.
    pub formula: PathBuf,
    /// The formula's text.
    pub text: String,
}

/// Makes the source tarball in `dist` and renders the tap next to it (the folder made anew).
/// Needs only git: the macOS release workflow renders the tap it installs with it.
pub fn render_tap(dist: &Path) -> Result<Tap, String> {
    let tarball = source_tarball(dist)?;
    let sha256 = sha256_file(&tarball)?;
    let dir = dist.join(TAP_DIR);
    step("render the Homebrew tap", &format!("{}/{{{FORMULA},README.md}}", dir.display()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    let text =
        render(&packaging_file(&format!("homebrew/{FORMULA}"))?, &[("VERSION", version()), ("SHA256", &sha256)])?;
    let formula = dir.join(FORMULA);
    super::write(&formula, &text)?;
    super::write(&dir.join("README.md"), packaging_file("homebrew/tap-README.md")?)?;
    println!("    brew tap {TAP} {}; brew install {TAP}/{NAME}", dir.display());
    Ok(Tap { tarball, sha256, formula, text })
}

/// Makes the tarball and the tap in `dist`, and checks the formula; returns the tarball's and
/// the formula's paths.
pub fn build_and_check(tools: &Tools, lib: &LinuxLib, dist: &Path) -> Result<(PathBuf, PathBuf), String> {
    let tap = render_tap(dist)?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;

    step("check the formula's syntax and style", "ruby -c; rubocop --config packaging/homebrew/rubocop.yml");
    capture(tools.command("ruby").arg("-c").arg(&tap.formula))?;
    rubocop(tools, &tap.formula)?;
    println!(
        "    no offense with Homebrew's RuboCop settings (RuboCop's cops; Homebrew's own run in brew style, on the Mac)"
    );
    // A variant keeps the formula's name and folder: the configuration applies to it as to the
    // formula (an exclusion by path would let both pass).
    let variant = work.path().join(TAP_DIR).join(FORMULA);
    super::write(&variant, tap.text.replacen("desc \"", "desc '", 1).replacen("\"\n  homepage", "'\n  homepage", 1))?;
    must_fail("a single-quoted desc", rubocop(tools, &variant), "Style/StringLiterals")?;

    step(
        "check the formula's stanzas and run its test do",
        &format!("ruby packaging/homebrew/check_formula.rb {} LIB_DIR BIN_DIR", tap.formula.display()),
    );
    // `lib.install` and `bin.install` put the release library and agent in the formula's `lib`
    // and `bin`: here, copies of them.
    let (lib_dir, bin_dir) = (work.path().join("lib"), work.path().join("bin"));
    let module = lib_dir.join(super::elf::FILE);
    let agent = bin_dir.join(super::elf::AGENT);
    for (from, to) in [(&lib.path, &module), (&lib.agent, &agent)] {
        std::fs::create_dir_all(to.parent().expect("in a folder")).map_err(|e| e.to_string())?;
        std::fs::copy(from, to).map_err(|e| e.to_string())?;
    }
    let dirs = (lib_dir.as_path(), bin_dir.as_path());
    let out = check_formula(tools, &tap.formula, dirs)?;
    let url = format!("{}/releases/download/v{v}/{NAME}-{v}.tar.gz", super::HOMEPAGE, v = version());
    for needed in [format!("url={url}\n"), format!("sha256={}\n", tap.sha256), format!("version={}\n", version())] {
        if !out.contains(&needed) {
            return Err(format!("check_formula.rb does not report {needed:?} for {}:\n{out}", tap.formula.display()));
        }
    }
    print!("{}", out.lines().map(|line| format!("    {line}\n")).collect::<String>());

    // The stanza check must be able to fail.
    let without_license: String =
        tap.text.lines().filter(|l| !l.trim_start().starts_with("license ")).map(|l| format!("{l}\n")).collect();
    super::write(&variant, without_license)?;
    must_fail("a formula without its license", check_formula(tools, &variant, dirs), "no license")?;
    // THIRDPARTY.yml left in the build folder: the install would ship no third-party licence.
    let licences = "doc.install \"THIRDPARTY.yml\"";
    super::write(&variant, tap.text.replace(licences, "# no licences"))?;
    let without = check_formula(tools, &variant, dirs);
    must_fail("a formula that does not install THIRDPARTY.yml", without, "THIRDPARTY.yml into doc")?;
    // A service that would go to the background: launchd and systemd would lose it.
    let foreground = "run [opt_bin/\"cosmian-ssh-agent\", \"-D\"]";
    if !tap.text.contains(foreground) {
        return Err(format!("{} has no `{foreground}`", tap.formula.display()));
    }
    super::write(&variant, tap.text.replace(foreground, "run opt_bin/\"cosmian-ssh-agent\""))?;
    must_fail("a service without -D", check_formula(tools, &variant, dirs), "service do is")?;
    // And the test block: another PKCS#11 module that loads and answers (p11-kit's trust
    // module, Debian's p11-kit-modules) in the library's place.
    // And its agent check: a program that prints no version in the agent's place.
    std::fs::copy("/bin/true", &agent).map_err(|e| e.to_string())?;
    must_fail("a silent program in the agent's place", check_formula(tools, &tap.formula, dirs), "to match")?;
    std::fs::copy(&lib.agent, &agent).map_err(|e| e.to_string())?;
    std::fs::copy(p11_kit_trust_module()?, &module).map_err(|e| e.to_string())?;
    must_fail("p11-kit's module in the library's place", check_formula(tools, &tap.formula, dirs), "to match")?;
    Ok((tap.tarball, tap.formula))
}

/// `Ok` if `result` is the error a check gives for `what`, naming `needle`.
fn must_fail(what: &str, result: Result<String, String>, needle: &str) -> Result<(), String> {
    match result {
        Err(report) if report.contains(needle) => {
            println!("    and {what} fails it ({needle})");
            Ok(())
        }
        other => Err(format!("the check does not refuse {what} with {needle:?}: {other:?}")),
    }
}

fn rubocop(tools: &Tools, formula: &Path) -> Result<String, String> {
    capture(
        tools
            .command("rubocop")
            .args(["--no-color", "--format", "emacs", "--config"])
            .arg(workspace_root().join("packaging/homebrew/rubocop.yml"))
            .arg(formula),
    )
}

/// `check_formula.rb FORMULA LIB_DIR BIN_DIR`.
fn check_formula(tools: &Tools, formula: &Path, (lib_dir, bin_dir): (&Path, &Path)) -> Result<String, String> {
    capture(
        tools
            .command("ruby")
            .arg(workspace_root().join("packaging/homebrew/check_formula.rb"))
            .arg(formula)
            .arg(lib_dir)
            .arg(bin_dir),
    )
}

/// The path of p11-kit's trust module, from `dpkg-query -L p11-kit-modules`.
fn p11_kit_trust_module() -> Result<PathBuf, String> {
    let files = capture(Command::new("dpkg-query").args(["-L", "p11-kit-modules"]))?;
    files
        .lines()
        .find(|line| line.ends_with("/pkcs11/p11-kit-trust.so"))
        .map(PathBuf::from)
        .ok_or_else(|| format!("p11-kit-modules has no pkcs11/p11-kit-trust.so:\n{files}"))
}

/// `cosmian-pkcs11-VERSION.tar.gz`: `git archive HEAD` under `cosmian-pkcs11-VERSION/`.
fn source_tarball(dist: &Path) -> Result<PathBuf, String> {
    let prefix = format!("{NAME}-{}", version());
    let tarball = dist.join(format!("{prefix}.tar.gz"));
    step("make the source tarball", &format!("git archive --prefix={prefix}/ HEAD | gzip > {}", tarball.display()));
    let git = || {
        let mut command = Command::new("git");
        command.current_dir(workspace_root());
        command
    };
    let head = capture(git().args(["rev-parse", "HEAD"]))?;
    let tar = git()
        .args(["archive", "--format=tar", &format!("--prefix={prefix}/"), "HEAD"])
        .output()
        .map_err(|e| format!("cannot run git archive: {e}"))?;
    if !tar.status.success() {
        return Err(format!("git archive failed: {}", String::from_utf8_lossy(&tar.stderr)));
    }
    super::write(&tarball, super::gzip(&tar.stdout)?)?;
    let listing = capture(Command::new("tar").arg("-tzf").arg(&tarball))?;
    for file in super::macos::LICENSE_FILES {
        if !listing.lines().any(|line| line == format!("{prefix}/{file}")) {
            return Err(format!("{} has no {prefix}/{file} (is it committed?)", tarball.display()));
        }
    }
    let dirty = capture(git().args(["status", "--porcelain", "--untracked-files=no"]))?;
    println!(
        "    from commit {}{}",
        head.trim(),
        if dirty.trim().is_empty() { "" } else { " (the work tree has uncommitted changes: they are not in it)" }
    );
    Ok(tarball)
}
