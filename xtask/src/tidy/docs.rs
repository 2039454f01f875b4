//! The documentation checked against the code and against itself:
//! - every environment variable the provider reads (`COSMIAN_PKCS11_*` and the configuration
//!   file's `COSMIAN_KMS_CLI_CONF`/`CKMS_CONF`, as written in `src/` and `platform/`) is in the
//!   configuration man page, and the page names no other;
//! - every key of the configuration file's schema (`FileSchema`, `HttpSchema`, `ProxySchema` in
//!   `src/config.rs`) is in the man page, in bold as its FORMAT section lists them (a table as
//!   its section header);
//! - every relative link of the Markdown documents leads to a file that exists and, with an
//!   anchor, to a heading of that file;
//! - every shell block of the Markdown documents is either run by a test as written (marked
//!   `<!-- run-by-test: ID -->`, and a test in `tests/` or `xtask/` runs `shell_block(.., "ID")`)
//!   or says why it is not run here (`<!-- not-run-here: why -->`): a macOS command, a real
//!   download from Cosmian's site.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cosmian_pkcs11_testbed::docs::{NOT_RUN_HERE, RUN_BY_TEST, run_by_test_id, shell_blocks};

/// The man page that documents the configuration (source of `cosmian-pkcs11.conf(5)`).
pub const CONFIG_MAN_PAGE: &str = "docs/man/cosmian-pkcs11.conf.5.md";

/// The schema structs of `src/config.rs` whose fields are the file's keys.
const SCHEMAS: [&str; 3] = ["FileSchema", "HttpSchema", "ProxySchema"];

/// Every check; `Err` lists every problem found.
pub fn check(root: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    let page = read(&root.join(CONFIG_MAN_PAGE))?;
    let code = rust_sources(&[root.join("src"), root.join("platform")])?;
    let code_vars = variables(&code);
    let page_vars = variables(&page);
    for missing in code_vars.difference(&page_vars) {
        problems.push(format!("{CONFIG_MAN_PAGE}: {missing} is read by the code but not documented"));
    }
    for extra in page_vars.difference(&code_vars) {
        problems.push(format!("{CONFIG_MAN_PAGE}: {extra} is documented but no code reads it"));
    }
    for key in schema_keys(&read(&root.join("src/config.rs"))?)? {
        // A key, in bold; a table, as its section header.
        let documented = [format!("**{key}**"), format!("[{key}]"), format!(".{key}]")];
        if !documented.iter().any(|d| page.contains(d.as_str())) {
            problems.push(format!("{CONFIG_MAN_PAGE}: the configuration key {key} (src/config.rs) is not documented"));
        }
    }
    let runners = shell_block_runners(root)?;
    for document in markdown_documents(root)? {
        problems.extend(dead_links(root, &document)?);
        problems.extend(unmarked_shell_blocks(root, &document, &runners)?);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the documentation disagrees with the code or itself:\n  {}", problems.join("\n  ")))
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every file under `folder` whose name ends with `.ext`, sorted.
pub fn files_under(folder: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| format!("cannot list {}: {e}", folder.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The text of every `.rs` file under these folders.
fn rust_sources(folders: &[PathBuf]) -> Result<String, String> {
    let mut text = String::new();
    for folder in folders {
        for file in files_under(folder, "rs")? {
            text.push_str(&read(&file)?);
            text.push('\n');
        }
    }
    Ok(text)
}

/// The configuration variables named in `text`: `COSMIAN_PKCS11_*`, `COSMIAN_KMS_CLI_CONF`,
/// `CKMS_CONF`.
fn variables(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut found = BTreeSet::new();
    for (start, _) in text.match_indices('C') {
        if start > 0 && text[..start].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let name: String = text[start..].chars().take_while(|c| is_name(*c)).collect();
        let name = name.trim_end_matches('_');
        let wanted = name.starts_with("COSMIAN_PKCS11_") || name == "COSMIAN_KMS_CLI_CONF" || name == "CKMS_CONF";
        if wanted {
            found.insert(name.to_owned());
        }
    }
    found
}

/// The keys of the file: the fields of the schema structs (a `#[serde(rename = "x")]` field is
/// `x`).
fn schema_keys(config_rs: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for schema in SCHEMAS {
        let start = config_rs
            .find(&format!("struct {schema} {{"))
            .ok_or_else(|| format!("src/config.rs has no struct {schema}"))?;
        let body = &config_rs[start..];
        let body = &body[body.find('{').unwrap_or(0) + 1..body.find("\n}").unwrap_or(body.len())];
        let mut rename = None;
        for line in body.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("#[serde(rename = \"") {
                rename = rest.split('"').next().map(str::to_owned);
            } else if let Some((field, _)) = line.split_once(':').filter(|_| !line.starts_with("//")) {
                if let Some(key) = rename.take().or_else(|| Some(field.trim().to_owned())) {
                    if !key.starts_with('#') && !key.is_empty() {
                        keys.push(key);
                    }
                }
            }
        }
    }
    Ok(keys)
}

/// README.md, CONTRIBUTING.md, SECURITY.md, CHANGELOG.md and every `.md` under `docs/`.
fn markdown_documents(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut documents: Vec<PathBuf> =
        ["README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md"].iter().map(|f| root.join(f)).collect();
    documents.extend(files_under(&root.join("docs"), "md")?);
    Ok(documents)
}

/// The relative links of `document` that lead nowhere: `[text](target)`, `target` neither a URL
/// nor a mail address.
fn dead_links(root: &Path, document: &Path) -> Result<Vec<String>, String> {
    let text = read(document)?;
    let name = document.strip_prefix(root).unwrap_or(document).display().to_string();
    let mut dead = Vec::new();
    for (at, _) in text.match_indices("](") {
        let target: String = text[at + 2..].chars().take_while(|c| *c != ')' && !c.is_whitespace()).collect();
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let linked = if file.is_empty() { document.to_owned() } else { document.with_file_name("").join(file) };
        if !linked.exists() {
            dead.push(format!("{name}: the link {target} leads to no file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let linked_text = if linked.is_file() { read(&linked)? } else { String::new() };
            if !headings(&linked_text).contains(anchor) {
                dead.push(format!("{name}: the link {target} names no heading of {}", linked.display()));
            }
        }
    }
    Ok(dead)
}

/// The text of the Rust files of `tests/` and `xtask/src` that run documentation blocks (they
/// call `shell_block`).
fn shell_block_runners(root: &Path) -> Result<String, String> {
    let mut text = String::new();
    for folder in [root.join("tests"), root.join("xtask/src")] {
        if !folder.exists() {
            continue;
        }
        for file in files_under(&folder, "rs")? {
            let code = read(&file)?;
            if code.contains("shell_block(") && !file.ends_with("testbed/src/docs.rs") {
                text.push_str(&code);
            }
        }
    }
    Ok(text)
}

/// The shell blocks of `document` that are neither run by a test (a marker whose id a runner
/// names) nor marked as not run here with a reason.
fn unmarked_shell_blocks(root: &Path, document: &Path, runners: &str) -> Result<Vec<String>, String> {
    let name = document.strip_prefix(root).unwrap_or(document).display().to_string();
    let mut problems = Vec::new();
    for block in shell_blocks(&read(document)?) {
        let marker = block.marker.as_deref().unwrap_or("");
        if let Some(id) = run_by_test_id(marker) {
            if !runners.contains(&format!("\"{id}\"")) {
                problems.push(format!("{name}:{}: the block marked run-by-test: {id} is run by no test", block.line));
            }
        } else if marker.strip_prefix(NOT_RUN_HERE).is_none_or(|why| why.trim_end_matches("-->").trim().len() <= 3) {
            problems.push(format!(
                "{name}:{}: a shell block neither run by a test ({RUN_BY_TEST} ID -->) nor marked {NOT_RUN_HERE} why -->",
                block.line
            ));
        }
    }
    Ok(problems)
}

/// GitHub's anchors of a Markdown text's headings: lower case, spaces as `-`, punctuation other
/// than `-` and `_` dropped; a repeated heading gets `-1`, `-2`...
fn headings(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !in_code) else { continue };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while anchors.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        anchors.insert(unique);
    }
    anchors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_whole() {
        let found = variables("a COSMIAN_PKCS11_SSH_KEY_TAG b XCOSMIAN_PKCS11_NOT `CKMS_CONF` COSMIAN_PKCS11_\\*");
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["CKMS_CONF", "COSMIAN_PKCS11_SSH_KEY_TAG"]);
    }

    #[test]
    fn schema_fields_and_renames_are_keys() {
        let rs = "struct FileSchema {\n    a: u8,\n    // note: no\n}\nstruct HttpSchema {\n    #[serde(default)]\n    \
                  b: bool,\n    #[serde(rename = \"c\")]\n    _c: u8,\n}\nstruct ProxySchema {\n    d: u8,\n}\n";
        assert_eq!(schema_keys(rs).unwrap(), ["a", "b", "c", "d"]);
    }

    /// The checks on this tree pass; on a copy with an undocumented variable, a key missing from
    /// the page and a dead link, each is named.
    #[test]
    fn the_tree_passes_and_each_fault_is_named() {
        let root = cosmian_pkcs11_testbed::workspace_root();
        check(&root).unwrap();
        let copy = tempfile::tempdir().unwrap();
        for dir in ["src", "platform", "docs/man"] {
            std::fs::create_dir_all(copy.path().join(dir)).unwrap();
        }
        let config = read(&root.join("src/config.rs")).unwrap();
        std::fs::write(
            copy.path().join("src/config.rs"),
            format!("{config}\nconst X: &str = \"COSMIAN_PKCS11_NEW\";\n"),
        )
        .unwrap();
        let page = read(&root.join(CONFIG_MAN_PAGE)).unwrap().replace("**verified_cert**", "verified_cert");
        std::fs::write(copy.path().join(CONFIG_MAN_PAGE), page).unwrap();
        for doc in ["README.md", "CONTRIBUTING.md", "SECURITY.md"] {
            std::fs::write(copy.path().join(doc), "# Title\n").unwrap();
        }
        // A link to a document that does not exist, built here so that no file names one.
        let missing = ["docs/", "missing-document", ".md"].concat();
        let blocks = "```sh\nrm -rf /\n```\n<!-- run-by-test: nobody-runs-this -->\n```sh\ntrue\n```\n";
        std::fs::write(
            copy.path().join("CHANGELOG.md"),
            format!("[gone]({missing}) [bad](README.md#no-such)\n{blocks}"),
        )
        .unwrap();
        let said = check(copy.path()).unwrap_err();
        for expected in [
            "COSMIAN_PKCS11_NEW is read by the code but not documented",
            "the configuration key verified_cert (src/config.rs) is not documented",
            &format!("the link {missing} leads to no file"),
            "the link README.md#no-such names no heading",
            "CHANGELOG.md:3: a shell block neither run by a test",
            "CHANGELOG.md:7: the block marked run-by-test: nobody-runs-this is run by no test",
        ] {
            assert!(said.contains(expected), "{expected}: {said}");
        }
    }

    #[test]
    fn anchors_follow_github() {
        let anchors =
            headings("# User guide\n## Key list and caches\n```\n# not a heading\n```\n## A, B: c\n## A, B: c\n");
        for a in ["user-guide", "key-list-and-caches", "a-b-c", "a-b-c-1"] {
            assert!(anchors.contains(a), "{a}: {anchors:?}");
        }
        assert!(!anchors.contains("not-a-heading"));
    }
}
