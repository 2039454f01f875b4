//! The man pages every package installs: for each of [`PAGES`], its go-md2man Markdown source
//! in `docs/man/` (named after the page and its section), rendered to roff by go-md2man (Debian's, from
//! `scripts/install-packaging-tools.sh`), checked (`man --warnings` reports nothing; the `.TH`
//! header is the source's title line, so the page's own date is the only one) and gzipped
//! without name or timestamp, so that the packages holding them stay byte-reproducible
//! ([`render`], into a man folder's layout: `man1/cosmian-ssh-agent.1.gz`). The .deb and the
//! .rpm install them in [`MAN_DIR`], on man's default path on Debian and RHEL alike.
//!
//! Checked as installed under any install root ([`check_installed`], through
//! [`super::agent::check_installed`]), and on the machine after `apt-get install`: `man` finds
//! and shows them ([`check_found`]); after `apt-get remove`, no longer ([`check_not_found`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use cosmian_pkcs11_testbed::workspace_root;

use super::{Tools, capture};
use crate::step;

/// Where the packages install the pages, relative to `/`: beside the agent in `/usr/local`
/// (Debian's and RHEL's man-db search it by default: `MANDATORY_MANPATH`).
pub const MAN_DIR: &str = "usr/local/share/man";
/// The pages, as name and section: `cosmian-ssh-agent(1)`, the agent program;
/// `cosmian-pkcs11.conf(5)`, the configuration of the provider and the agent.
pub const PAGES: [(&str, &str); 2] = [("cosmian-ssh-agent", "1"), ("cosmian-pkcs11.conf", "5")];
/// The folder of their sources.
const SOURCES: &str = "docs/man";
/// What both pages, as `man` shows them, hold (the test that it shows their text).
const SHOWN: &str = "COSMIAN_PKCS11_SSH_KEY_TAG";

/// One rendered page.
pub struct ManPage {
    pub name: &'static str,
    /// `1`, `5`.
    pub section: &'static str,
    /// The gzipped roff: `OUT_DIR/man1/cosmian-ssh-agent.1.gz`.
    pub path: PathBuf,
}

impl ManPage {
    /// `cosmian-ssh-agent.1.gz`.
    pub fn file_name(&self) -> String {
        file_name(self.name, self.section)
    }

    /// `man1/cosmian-ssh-agent.1.gz`: its place in a man folder.
    pub fn relative(&self) -> String {
        relative(self.name, self.section)
    }
}

fn file_name(name: &str, section: &str) -> String {
    format!("{name}.{section}.gz")
}

fn relative(name: &str, section: &str) -> String {
    format!("man{section}/{}", file_name(name, section))
}

/// The pages' paths relative to an install root: `usr/local/share/man/man1/cosmian-ssh-agent.1.gz`...
pub fn installed_files() -> Vec<String> {
    relatives().iter().map(|relative| format!("{MAN_DIR}/{relative}")).collect()
}

/// Renders every page of [`PAGES`] into `out_dir` (`man1/`, `man5/`, made as needed), gzipped,
/// and checks each: `man --warnings` says nothing, and the header is the source's.
pub fn render(tools: &Tools, out_dir: &Path) -> Result<Vec<ManPage>, String> {
    let mut pages = Vec::new();
    for (name, section) in PAGES {
        let source = workspace_root().join(SOURCES).join(format!("{name}.{section}.md"));
        let markdown =
            std::fs::read_to_string(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let roff = capture(tools.command("go-md2man").arg("-in").arg(&source))
            .map_err(|e| format!("go-md2man (Debian's go-md2man): {e}"))?;
        check_header(&markdown, &roff).map_err(|e| format!("{}: {e}", source.display()))?;
        let page = ManPage { name, section, path: out_dir.join(relative(name, section)) };
        super::write(&page.path, super::gzip(roff.as_bytes())?)?;
        lint(tools, &page.path)?;
        pages.push(page);
    }
    Ok(pages)
}

/// The roff's `.TH` line is the source's title line (`% NAME SECTION "DATE" ...`), with a date:
/// go-md2man adds none of its own.
fn check_header(markdown: &str, roff: &str) -> Result<(), String> {
    let title = markdown.lines().next().and_then(|line| line.strip_prefix("% ")).unwrap_or_default();
    if title.split('"').nth(1).is_none_or(|date| date.trim().is_empty()) {
        return Err(format!("the first line is not a title with a date (% NAME SECTION \"DATE\" ...): {title:?}"));
    }
    let headers: Vec<&str> = roff.lines().filter(|line| line.starts_with(".TH ")).collect();
    if headers != [format!(".TH {title}")] {
        return Err(format!("go-md2man wrote the headers {headers:?}, not .TH {title}"));
    }
    Ok(())
}

/// `man --warnings -l PAGE` (groff's warnings, on stderr) reports nothing.
fn lint(tools: &Tools, page: &Path) -> Result<(), String> {
    let out = tools
        .command("man")
        .args(["--warnings", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .output()
        .map_err(|e| format!("cannot run man (Debian's man-db): {e}"))?;
    let warnings = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !warnings.trim().is_empty() || out.stdout.is_empty() {
        return Err(format!("man --warnings -l {} ({}): {warnings}", page.display(), out.status));
    }
    Ok(())
}

/// Under the install root `root`: every page in [`MAN_DIR`], mode 644, the bytes [`render`]
/// makes.
pub fn check_installed(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let expected = tempfile::tempdir().map_err(|e| e.to_string())?;
    for page in render(Tools::get()?, expected.path())? {
        let installed = root.join(MAN_DIR).join(page.relative());
        let mode =
            std::fs::metadata(&installed).map_err(|e| format!("{}: {e}", installed.display()))?.permissions().mode();
        if mode & 0o777 != 0o644 || super::sha256_file(&installed)? != super::sha256_file(&page.path)? {
            return Err(format!(
                "{} (mode {:o}) is not the rendered {} with mode 644",
                installed.display(),
                mode & 0o777,
                page.file_name()
            ));
        }
    }
    println!("    /{MAN_DIR}/{{{}}} (mode 644, the pages rendered)", relatives().join(","));
    Ok(())
}

/// Every page's [`ManPage::relative`].
fn relatives() -> [String; 2] {
    PAGES.map(|(name, section)| relative(name, section))
}

/// `man` as a user runs it: the default search path (no `MANPATH`), no pager, 100 columns.
fn man(args: &[&str]) -> Command {
    let mut command = Command::new("man");
    command.args(args).env_remove("MANPATH").env("MANPAGER", "cat").env("MANWIDTH", "100");
    command
}

/// On this machine, after `apt-get install`: `man -w SECTION NAME` finds each page installed in
/// `/`[`MAN_DIR`] (man's default path), and `man SECTION NAME` shows its text.
pub fn check_found() -> Result<(), String> {
    for (name, section) in PAGES {
        step(&format!("man finds {name}({section})"), &format!("man -w {section} {name}; man {section} {name}"));
        let expected = Path::new("/").join(MAN_DIR).join(relative(name, section));
        let found = capture(&mut man(&["-w", section, name]))?;
        // Debian's /usr/local/man is a link to share/man, which man may name instead.
        let canonical = |path: &Path| path.canonicalize().map_err(|e| format!("{}: {e}", path.display()));
        if canonical(Path::new(found.trim()))? != canonical(&expected)? {
            return Err(format!("man -w {section} {name} found {found:?}, not {}", expected.display()));
        }
        let text = capture(&mut man(&[section, name]))?;
        if !text.contains(SHOWN) {
            return Err(format!("man {section} {name} does not show {SHOWN}:\n{text}"));
        }
        println!("    {}: shows {SHOWN} ({} lines)", found.trim(), text.lines().count());
    }
    Ok(())
}

/// After `apt-get remove`: `man -w` finds none of the pages.
pub fn check_not_found() -> Result<(), String> {
    for (name, section) in PAGES {
        if let Ok(found) = capture(&mut man(&["-w", section, name])) {
            return Err(format!("man -w {section} {name} still finds {}", found.trim()));
        }
    }
    println!("    man finds none of {}", relatives().join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_a_page() {
        let mut sources: Vec<String> = std::fs::read_dir(workspace_root().join(SOURCES))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        sources.sort();
        let mut pages: Vec<String> = PAGES.iter().map(|(name, section)| format!("{name}.{section}.md")).collect();
        pages.sort();
        assert_eq!(sources, pages);
        assert_eq!(
            installed_files(),
            ["usr/local/share/man/man1/cosmian-ssh-agent.1.gz", "usr/local/share/man/man5/cosmian-pkcs11.conf.5.gz"]
        );
    }

    #[test]
    fn the_header_must_be_the_sources() {
        let markdown = "% X 1 \"May 2026\" \"x\" \"User Commands\"\n\n# NAME\n";
        assert!(check_header(markdown, ".nh\n.TH X 1 \"May 2026\" \"x\" \"User Commands\"\n").is_ok());
        assert!(check_header(markdown, ".TH X 1 \"June 2027\" \"x\" \"User Commands\"\n").is_err());
        assert!(check_header(markdown, ".TH X 1\n").is_err());
        // A title without a date.
        assert!(check_header("% X 1\n", ".TH X 1\n").is_err());
    }
}
