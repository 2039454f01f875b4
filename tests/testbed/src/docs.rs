//! The shell blocks of the documentation that tests run as written. A block is marked in its
//! Markdown file by the comment on the line before its fence, `<!-- run-by-test: ID -->`; every
//! other shell block says why it is not run here (`<!-- not-run-here: why -->`), which
//! `cargo xtask tidy` enforces.

use std::path::Path;

/// The marker of a block that a test runs.
pub const RUN_BY_TEST: &str = "<!-- run-by-test:";
/// The marker of a block that no test can run on this machine, and why.
pub const NOT_RUN_HERE: &str = "<!-- not-run-here:";
/// The fences of shell blocks.
pub const SHELL_FENCES: [&str; 4] = ["```sh", "```bash", "```shell", "```console"];

/// One shell block of a Markdown text: its marker line (if any), its first line number and
/// its text.
#[derive(Debug, PartialEq, Eq)]
pub struct ShellBlock {
    pub marker: Option<String>,
    pub line: usize,
    pub text: String,
}

/// Every shell block of `markdown`, in order.
pub fn shell_blocks(markdown: &str) -> Vec<ShellBlock> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        if SHELL_FENCES.contains(&fence) {
            let marker = i.checked_sub(1).map(|p| lines[p].trim()).filter(|l| l.starts_with("<!--")).map(str::to_owned);
            let end = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with("```")).unwrap_or(lines.len());
            let text = lines[i + 1..end].iter().map(|l| format!("{l}\n")).collect();
            blocks.push(ShellBlock { marker, line: i + 2, text });
            i = end;
        }
        i += 1;
    }
    blocks
}

/// The id of a `run-by-test` marker.
pub fn run_by_test_id(marker: &str) -> Option<&str> {
    marker.strip_prefix(RUN_BY_TEST)?.strip_suffix("-->").map(str::trim).filter(|id| !id.is_empty())
}

/// The text of the shell block of `document` (relative to the workspace) marked
/// `<!-- run-by-test: id -->`, to run as a test: the documentation's own commands.
pub fn shell_block(document: &str, id: &str) -> Result<String, String> {
    let path = crate::workspace_root().join(document);
    let markdown = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    shell_blocks(&markdown)
        .into_iter()
        .find(|block| block.marker.as_deref().and_then(run_by_test_id) == Some(id))
        .map(|block| block.text)
        .ok_or_else(|| format!("{}: no shell block marked {RUN_BY_TEST} {id} -->", Path::new(document).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_and_their_markers() {
        let md = "text\n<!-- run-by-test: a -->\n```sh\necho 1\necho 2\n```\n\n```sh\nls\n```\n```toml\nx = 1\n```\n";
        let blocks = shell_blocks(md);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].marker.as_deref().and_then(run_by_test_id), Some("a"));
        assert_eq!(blocks[0].text, "echo 1\necho 2\n");
        assert_eq!(blocks[0].line, 4);
        assert_eq!(blocks[1].marker, None);
        assert_eq!(run_by_test_id("<!-- run-by-test:  -->"), None);
    }
}
