//! The release workflow, `.github/workflows/release.yml`, read as GitHub reads it (PyYAML) and
//! held to the rules of a release, one function each, whose error says which rule is broken:
//!
//! - [`trigger`]: pushed tags `v*`, nothing else;
//! - [`version_check`]: a first job, which every other job needs, whose step refuses a tag that
//!   is not `v<the Cargo version>` and a CHANGELOG.md without its `## [<version>]` section (the
//!   step is run here, on a good and on broken inputs, and must write the section as the notes);
//! - [`toolchain`]: the toolchain of `rust-toolchain.toml` (`rustup toolchain install`, the
//!   Linux container the Rust image of that version), no installer piped into a shell;
//! - [`builds`]: `cargo xtask test` then `cargo xtask dist` on Linux, `cargo xtask test-macos`,
//!   then `cargo xtask dist-macos`, the `.pkg` installed and uninstalled as docs/install.md says,
//!   Homebrew's commands on the formula;
//! - [`secrets`]: each secret in the `env` of the one step that reads it, nowhere else;
//! - [`macos_sums_signed`]: SHA256SUMS-macos signed by the repository key on Linux, after
//!   dist-macos (the job's steps are run here with a throw-away key, and on broken inputs), both
//!   checksum files' signatures checked once published;
//! - [`draft_and_publish`]: the only job that writes to the release creates a DRAFT, uploads to
//!   it, pushes the repositories, then publishes it, and needs every job before it;
//! - [`concurrency`]: one group for the whole workflow, never cancelled;
//! - [`pins`]: every action pinned by a 40-hex commit, its tag in a comment;
//! - [`permissions`]: nothing at the top; per job, only what its steps use;
//! - [`attestations`] and [`artifacts`]: every artifact `dist` and `dist-macos` make, and
//!   SHA256SUMS-macos.asc, is attested and handed to the publish job, which attaches all it
//!   receives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use super::elf::Arch;
use super::homebrew::{FORMULA, TAP, TAP_DIR};
use super::macos::{DYLIB, IDENTIFIER, SECRETS};
use super::macos_pkg::{LAUNCH_AGENT, LAUNCH_AGENT_LABEL, LAUNCH_AGENTS_DIR, UNINSTALL_BLOCK};
use super::repository::signing::SigningKey;
use super::repository::{ASC, KEYRING, REPO, SOURCES, SUMS};
use super::{NAME, Tools, capture, workspace_root};
use crate::step;

/// The release workflow, from the workspace root.
pub const WORKFLOW: &str = ".github/workflows/release.yml";
/// Apple's ssh-add, which reaches the agent launchd and `brew services` start.
const APPLE_SSH_ADD: &str = "/usr/bin/ssh-add";
/// The secret `cargo xtask dist` signs the repositories and the checksums with.
const REPO_KEY: &str = super::repository::signing::KEY_ENV;
/// The checksums of what `cargo xtask dist-macos` makes, signed on Linux by the repository key.
const MACOS_SUMS: &str = "SHA256SUMS-macos";

/// `cargo xtask package-test`'s check of the workflows: each is valid YAML; release.yml keeps
/// every rule of this module.
pub fn check(tools: &Tools) -> Result<(), String> {
    let dir = workspace_root().join(".github/workflows");
    step("check the release workflow", &format!("python3 -c 'yaml.safe_load' {}/*.yml; the rules", dir.display()));
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    paths.sort();
    for path in &paths {
        let workflow = load_yaml(tools, path)?;
        if path.ends_with("release.yml") {
            continue;
        }
        if on(&workflow)["push"]["tags"].is_array() || on(&workflow).get("release").is_some() {
            return Err(format!(
                "{} runs on tags or releases: {WORKFLOW} is the only release workflow",
                path.display()
            ));
        }
    }
    let release = Release::load(tools)?;
    for line in release.check(tools)? {
        println!("    {WORKFLOW}: {line}");
    }
    Ok(())
}

/// The workflow as PyYAML reads it, and its text (for the comments YAML drops).
pub struct Release {
    json: Value,
    text: String,
}

impl Release {
    pub fn load(tools: &Tools) -> Result<Release, String> {
        let path = workspace_root().join(WORKFLOW);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Release { json: load_yaml(tools, &path)?, text })
    }

    /// Every rule; what each found, to print.
    pub fn check(&self, tools: &Tools) -> Result<Vec<String>, String> {
        let w = &self.json;
        Ok(vec![
            trigger(w)?,
            version_check(w)?,
            toolchain(w, &toolchain_channel()?)?,
            builds(w)?,
            draft_and_publish(w)?,
            concurrency(w)?,
            pins(w, &self.text)?,
            permissions(w)?,
            secrets(w)?,
            macos_sums_signed(w, tools)?,
            attestations(w)?,
            artifacts(w)?,
        ])
    }
}

fn load_yaml(tools: &Tools, path: &Path) -> Result<Value, String> {
    let json = capture(
        tools
            .python()
            .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
            .arg(path),
    )
    .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    serde_json::from_str(&json).map_err(|e| format!("{}: {e}", path.display()))
}

/// `channel` of `rust-toolchain.toml`.
fn toolchain_channel() -> Result<String, String> {
    let path = workspace_root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|line| {
            line.trim().strip_prefix("channel")?.trim().strip_prefix('=')?.trim().strip_prefix('"')?.strip_suffix('"')
        })
        .map(str::to_owned)
        .ok_or_else(|| format!("{} names no channel", path.display()))
}

/// The workflow's `on` (PyYAML reads the key `on` as the boolean true).
fn on(workflow: &Value) -> &Value {
    workflow.get("on").or_else(|| workflow.get("true")).unwrap_or(&Value::Null)
}

fn jobs(workflow: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    workflow["jobs"].as_object().ok_or_else(|| format!("{WORKFLOW} has no jobs"))
}

/// The jobs a job names in `needs`.
fn needs(job: &Value) -> Vec<&str> {
    match &job["needs"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(all) => all.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The jobs `name` waits for, directly or through others.
fn ancestors<'a>(jobs: &'a serde_json::Map<String, Value>, name: &str) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    let mut todo: Vec<&str> = jobs.get(name).map(needs).unwrap_or_default();
    while let Some(next) = todo.pop() {
        if let Some((key, job)) = jobs.get_key_value(next) {
            if found.insert(key.as_str()) {
                todo.extend(needs(job));
            }
        }
    }
    found
}

fn steps(job: &Value) -> &[Value] {
    job["steps"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Every line of every `run:` of a job, trimmed, in order.
fn run_lines(job: &Value) -> Vec<&str> {
    steps(job).iter().filter_map(|step| step["run"].as_str()).flat_map(str::lines).map(str::trim).collect()
}

/// The first step of `job` with a `run:` line (trimmed) for which `line` holds.
fn step_with(job: &Value, line: impl Fn(&str) -> bool) -> Option<usize> {
    steps(job).iter().position(|s| s["run"].as_str().is_some_and(|r| r.lines().any(|l| line(l.trim()))))
}

/// A line that ends with the words `cargo xtask <command>` (no other argument after them).
fn runs_xtask(line: &str, command: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.ends_with(&["cargo", "xtask", command])
}

/// The job whose run lines include `cargo xtask <command>`, and its runner.
fn job_running<'a>(workflow: &'a Value, command: &str) -> Result<(&'a str, &'a Value), String> {
    jobs(workflow)?
        .iter()
        .find(|(_, job)| run_lines(job).iter().any(|line| runs_xtask(line, command)))
        .map(|(name, job)| (name.as_str(), job))
        .ok_or_else(|| format!("no job runs `cargo xtask {command}`"))
}

/// A step's `uses`, without its `@` pin.
fn action(step: &Value) -> Option<&str> {
    step["uses"].as_str().and_then(|uses| uses.split('@').next())
}

/// The lines of a `with:` input (a list of paths, one per line).
fn input_lines<'a>(step: &'a Value, input: &str) -> BTreeSet<&'a str> {
    step["with"][input].as_str().unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// Triggered by pushed tags `v*`, by nothing else (a release never runs for a branch or a pull
/// request, which would see the secrets).
pub fn trigger(workflow: &Value) -> Result<String, String> {
    let on = on(workflow);
    let tags = on["push"]["tags"].as_array().cloned().unwrap_or_default();
    let only_tags = on.as_object().is_some_and(|o| o.len() == 1)
        && on["push"].as_object().is_some_and(|p| p.len() == 1)
        && !tags.is_empty()
        && tags.iter().all(|t| t.as_str().is_some_and(|t| t.starts_with('v')));
    if !only_tags {
        return Err(format!("the trigger must be pushed tags v* alone (on: push: tags: [\"v*\"]), not {on}"));
    }
    Ok(format!("on pushed tags {}", Value::Array(tags)))
}

/// The first job (it needs none; every other job needs it, directly or not) checks that the
/// tag is `v<the Cargo version>` and that CHANGELOG.md has the version's section, which it
/// writes as the release notes. Its step is run here with bash, in a folder holding the
/// repository's Cargo.toml and a CHANGELOG.md: with the right tag and a section it must pass
/// and write the section; with another tag, without the section, with an empty section, it
/// must fail.
pub fn version_check(workflow: &Value) -> Result<String, String> {
    let jobs = jobs(workflow)?;
    let found = jobs.iter().find_map(|(name, job)| {
        let step = steps(job).iter().find(|step| {
            let run = step["run"].as_str().unwrap_or_default();
            ["GITHUB_REF_NAME", "Cargo.toml", "CHANGELOG.md"].iter().all(|word| run.contains(word))
        })?;
        Some((name.as_str(), job, step))
    });
    let (name, job, step) =
        found.ok_or("no step compares the tag (GITHUB_REF_NAME) with Cargo.toml and CHANGELOG.md")?;
    if !needs(job).is_empty() {
        return Err(format!("the version check's job {name} waits for {:?}: it must come first", needs(job)));
    }
    if let Some(other) = jobs.keys().find(|other| *other != name && !ancestors(jobs, other).contains(name)) {
        return Err(format!("the job {other} does not need {name}, the version check: it would run for any tag"));
    }
    let notes = steps(job)
        .iter()
        .filter(|s| action(s) == Some("actions/upload-artifact") && s["with"]["name"] == "notes")
        .find_map(|s| s["with"]["path"].as_str())
        .ok_or_else(|| format!("the job {name} uploads no `notes` artifact (the release notes)"))?;
    let script = step["run"].as_str().unwrap_or_default();
    let version = super::version();
    let section = "\n### Fixed\n- Something.\n\n";
    let changelog = format!(
        "# Changelog\n\n## [Unreleased]\n\n## [{version}] - 2026-01-01\n{section}## [0.0.1] - 2025-01-01\n- Old.\n"
    );
    let run = |tag: &str, changelog: &str| -> Result<(bool, String, String), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::copy(workspace_root().join("Cargo.toml"), dir.path().join("Cargo.toml")).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("CHANGELOG.md"), changelog).map_err(|e| e.to_string())?;
        let out = Command::new("bash")
            .args(["-e", "-c", script])
            .current_dir(dir.path())
            .env("GITHUB_REF_NAME", tag)
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let written = std::fs::read_to_string(dir.path().join(notes)).unwrap_or_default();
        Ok((out.status.success(), written, String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let tag = format!("v{version}");
    let (passed, written, said) = run(&tag, &changelog)?;
    if !passed || written != section {
        return Err(format!(
            "the version check fails on tag {tag} with a CHANGELOG.md that has `## [{version}]`, or does not write its \
             section to {notes}: {said}{written:?}"
        ));
    }
    let broken = [
        (format!("v{version}.1"), changelog.clone(), "a tag that is not the Cargo version"),
        (
            tag.clone(),
            changelog.replace(&format!("## [{version}]"), "## [9.9.9]"),
            "a CHANGELOG.md without the section",
        ),
        (tag.clone(), changelog.replace(section, "\n"), "an empty section"),
    ];
    for (tag, changelog, what) in &broken {
        let (passed, _, said) = run(tag, changelog)?;
        if passed {
            return Err(format!("the version check passes {what} (tag {tag})"));
        }
        if said.trim().is_empty() {
            return Err(format!("the version check refuses {what} without saying why"));
        }
    }
    Ok(format!(
        "job {name} first: tag = v<Cargo version>, CHANGELOG.md's section as the notes (run here: refuses {})",
        broken.iter().map(|(_, _, what)| *what).collect::<Vec<_>>().join(", ")
    ))
}

/// The toolchain is `rust-toolchain.toml`'s: each job that runs cargo installs it first
/// (`rustup toolchain install` reads the file), the Linux container is the Rust image of that
/// version, and no installer script is piped into a shell, no other toolchain named.
pub fn toolchain(workflow: &Value, channel: &str) -> Result<String, String> {
    for (name, job) in jobs(workflow)? {
        let lines = run_lines(job);
        for line in &lines {
            let piped_to_shell =
                line.split('|').skip(1).any(|seg| matches!(seg.split_whitespace().next(), Some("sh" | "bash")));
            let banned = ["sh.rustup.rs", "rustup-init", "rustup default", "+stable", "+nightly"];
            if piped_to_shell || banned.iter().any(|b| line.contains(b)) {
                return Err(format!("the job {name} runs `{line}`: the toolchain is rust-toolchain.toml's"));
            }
        }
        if let Some(uses) =
            steps(job).iter().filter_map(action).find(|a| a.contains("rust-toolchain") || a.contains("setup-rust"))
        {
            return Err(format!("the job {name} uses {uses}: the toolchain is rust-toolchain.toml's"));
        }
        let Some(first_cargo) =
            lines.iter().position(|line| line.split_whitespace().next() == Some("cargo") || line.contains(" cargo "))
        else {
            continue;
        };
        if !lines[..first_cargo].contains(&"rustup toolchain install") {
            return Err(format!(
                "the job {name} runs cargo without `rustup toolchain install` first (rust-toolchain.toml)"
            ));
        }
    }
    let (name, linux) = job_running(workflow, "dist")?;
    let image = linux["container"].as_str().or_else(|| linux["container"]["image"].as_str()).unwrap_or_default();
    let expected = format!("rust:{channel}-bookworm");
    if image != expected {
        return Err(format!(
            "the job {name} runs in the container {image:?}, not {expected} (Debian 12, rust-toolchain.toml's Rust)"
        ));
    }
    Ok(format!("Rust {channel} from rust-toolchain.toml in every job (rustup toolchain install; container {expected})"))
}

/// Words making one line of a `run:`.
fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The job `name` runs every command of `commands`, in order, each a line holding all its
/// words; the `Err` names the first one missing.
fn runs_in_order(job: &Value, name: &str, what: &str, commands: &[Vec<String>]) -> Result<(), String> {
    let lines = run_lines(job);
    let mut next = 0;
    for (i, command) in commands.iter().enumerate() {
        match lines[next..].iter().position(|l| command.iter().all(|w| l.contains(w.as_str()))) {
            Some(at) => next += at + 1,
            None => {
                return Err(format!(
                    "{what}: the job {name} does not run `{}` (a line with all these words) after `{}`",
                    command.join(" "),
                    if i == 0 { "its start".into() } else { commands[i - 1].join(" ") }
                ));
            }
        }
    }
    Ok(())
}

/// The job on a macOS runner that runs `commands` in order (the one that runs most of them is
/// named in the error).
fn macos_job_running<'a>(
    workflow: &'a Value,
    what: &str,
    commands: &[Vec<String>],
) -> Result<(&'a str, &'a Value), String> {
    let mut best: Option<(usize, String)> = None;
    for (name, job) in jobs(workflow)? {
        if !job["runs-on"].as_str().unwrap_or_default().starts_with("macos") {
            continue;
        }
        match runs_in_order(job, name, what, commands) {
            Ok(()) => return Ok((name.as_str(), job)),
            Err(e) => {
                let found = commands.iter().position(|c| e.contains(&format!("`{}`", c.join(" ")))).unwrap_or(0);
                if best.as_ref().is_none_or(|(most, _)| found > *most) {
                    best = Some((found, e));
                }
            }
        }
    }
    Err(best.map(|(_, e)| e).unwrap_or_else(|| format!("{what}: no job on a macOS runner")))
}

/// Homebrew's commands on the formula before the release is published, in one macOS job, in
/// this order: the tap rendered and tapped, `brew style` and `brew audit --strict`, the build
/// from the tarball made in the job (put in Homebrew's download cache: the draft's URL does not
/// answer), the licence files in the prefix, `brew test`, the formula's service started by
/// `brew services` (launchd) and reached by Apple's `ssh-add`, then stopped, `brew uninstall`.
fn brew_commands() -> Vec<Vec<String>> {
    let formula = format!("{TAP}/{NAME}");
    vec![
        words(&["cargo xtask dist-homebrew"]),
        words(&["brew tap", TAP]),
        words(&["brew style", TAP]),
        words(&["brew audit", "--strict", &formula]),
        words(&["brew --cache", "--build-from-source", &formula]),
        words(&["brew install", "--build-from-source", &formula]),
        words(&["test -f", "/LICENSE", &format!("/share/doc/{NAME}/THIRDPARTY.yml")]),
        words(&["brew test", &formula]),
        words(&["brew services start", &formula]),
        words(&[APPLE_SSH_ADD, "-l"]),
        words(&["brew services stop", &formula]),
        words(&["brew uninstall", &formula]),
    ]
}

/// Once published, in a macOS job that needs the publish job: the release's formula, tapped,
/// `brew audit --strict --online` and `brew fetch` of the published tarball.
fn published_brew_commands() -> Vec<Vec<String>> {
    let formula = format!("{TAP}/{NAME}");
    vec![
        words(&["gh release download"]),
        words(&["brew tap", TAP]),
        words(&["brew audit", "--strict", "--online", &formula]),
        words(&["brew fetch", "--build-from-source", "--force", &formula]),
    ]
}

/// What the macOS job does with the `.pkg` `dist-macos` made, in that job, in this order:
/// installs it with macOS's `installer`, compares the receipt's files with the payload's, checks
/// that the folders kept their owner and mode (`stat` before and after, compared), opts in to
/// the LaunchAgent the way users do (`launchctl enable`, then `bootstrap` into the user's GUI
/// domain), reaches the agent launchd started with Apple's `ssh-add`, then uninstalls with the
/// lines of docs/install.md's uninstall block, as written there, and checks nothing is left.
fn pkg_commands() -> Result<Vec<Vec<String>>, String> {
    let plist = format!("/{LAUNCH_AGENTS_DIR}/{LAUNCH_AGENT}");
    let mut commands = vec![
        words(&["cargo xtask dist-macos"]),
        words(&["stat -f", "before"]),
        words(&["sudo installer -pkg", "-target /"]),
        words(&["pkgutil", "--files", IDENTIFIER]),
        words(&["diff"]),
        words(&["stat -f", "after"]),
        words(&["grep -Fxvf", "after", "before", "exit 1"]),
        words(&["launchctl enable", "gui/", LAUNCH_AGENT_LABEL]),
        words(&["launchctl bootstrap", "gui/", &plist]),
        words(&[APPLE_SSH_ADD, "-l"]),
    ];
    let block = cosmian_pkcs11_testbed::docs::shell_block("docs/install.md", UNINSTALL_BLOCK)?;
    commands.extend(block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| words(&[l])));
    commands.push(words(&["is still there"]));
    Ok(commands)
}

/// Linux: one job runs `cargo xtask test`, then `cargo xtask dist` (with the repository key:
/// [`secrets`]). macOS: a job runs `cargo xtask test-macos`; the job that runs `cargo xtask
/// dist-macos` (with every Apple secret: [`secrets`]) needs it, then installs the `.pkg`
/// ([`pkg_commands`]). Homebrew's commands run in a macOS job ([`brew_commands`]), and once
/// published in a job that needs the publish job ([`published_brew_commands`]).
pub fn builds(workflow: &Value) -> Result<String, String> {
    let jobs = jobs(workflow)?;
    let (linux, job) = job_running(workflow, "dist")?;
    if !job["runs-on"].as_str().unwrap_or_default().starts_with("ubuntu") {
        return Err(format!("the job {linux} runs `cargo xtask dist` on {}, not on Linux", job["runs-on"]));
    }
    let lines = run_lines(job);
    let test = lines.iter().position(|line| runs_xtask(line, "test"));
    let dist = lines.iter().position(|line| runs_xtask(line, "dist"));
    if !matches!((test, dist), (Some(test), Some(dist)) if test < dist) {
        return Err(format!("the job {linux} does not run `cargo xtask test` before `cargo xtask dist`"));
    }
    let (test_macos, test_job) = job_running(workflow, "test-macos")?;
    let (dist_macos, dist_job) = job_running(workflow, "dist-macos")?;
    for (name, job) in [(test_macos, test_job), (dist_macos, dist_job)] {
        if !job["runs-on"].as_str().unwrap_or_default().starts_with("macos") {
            return Err(format!("the job {name} runs on {}, not on macOS", job["runs-on"]));
        }
    }
    if !ancestors(jobs, dist_macos).contains(test_macos) {
        return Err(format!(
            "the job {dist_macos} (cargo xtask dist-macos) does not need {test_macos} (cargo xtask test-macos)"
        ));
    }
    runs_in_order(dist_job, dist_macos, "the .pkg", &pkg_commands()?)?;
    let (homebrew, _) = macos_job_running(workflow, "Homebrew", &brew_commands())?;
    let (published, _) = macos_job_running(workflow, "Homebrew once published", &published_brew_commands())?;
    let publish = publish_job(workflow)?.0;
    if !ancestors(jobs, published).contains(publish) {
        return Err(format!(
            "the job {published} (brew audit --online) does not need {publish}: the release is a draft before"
        ));
    }
    Ok(format!(
        "{linux}: cargo xtask test, then dist; {test_macos}: test-macos; {dist_macos} (needs it): dist-macos, the .pkg \
         installed, launchd's agent reached, uninstalled as docs/install.md says; {homebrew}: Homebrew's {} commands; \
         {published}, after {publish}: brew audit --online, brew fetch",
        brew_commands().len()
    ))
}

/// The job that runs `gh release create`.
fn publish_job(workflow: &Value) -> Result<(&str, &Value), String> {
    jobs(workflow)?
        .iter()
        .find(|(_, job)| run_lines(job).iter().any(|line| line.contains("gh release create")))
        .map(|(name, job)| (name.as_str(), job))
        .ok_or_else(|| "no job creates the release (`gh release create ... --draft`)".to_owned())
}

/// One job writes to the release: it creates it as a DRAFT (`gh release create --draft`),
/// uploads every artifact to it, pushes the repositories to gh-pages, and publishes it last
/// (`gh release edit --draft=false`); it needs every job that does not come after it and runs
/// only when they passed (no `if:`). No other job creates, uploads to or edits a release or
/// pushes, and no release action is used.
pub fn draft_and_publish(workflow: &Value) -> Result<String, String> {
    let jobs = jobs(workflow)?;
    let (publish, job) = publish_job(workflow)?;
    for (name, other) in jobs {
        if let Some(uses) = steps(other).iter().filter_map(action).find(|a| a.contains("release")) {
            return Err(format!("the job {name} uses {uses}: the release is written by `gh` in {publish} alone"));
        }
        let writes = run_lines(other).into_iter().find(|l| {
            l.contains("git push")
                || ["create", "upload", "edit", "delete"].iter().any(|v| l.contains(&format!("gh release {v}")))
        });
        if let (true, Some(line)) = (name != publish, writes) {
            return Err(format!("the job {name} runs `{line}`: only {publish}, once every job passed, writes"));
        }
    }
    let lines = run_lines(job);
    let at = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let create = at(&|l| l.contains("gh release create"));
    if lines.iter().any(|l| l.contains("gh release create") && !l.contains("--draft")) {
        return Err(format!(
            "{publish} creates the release without --draft: a failure would leave it half-filled, public"
        ));
    }
    let upload = at(&|l| l.contains("gh release upload"));
    let push = at(&|l| l.contains("git") && l.contains("push") && l.contains("gh-pages"));
    let undraft = at(&|l| l.contains("gh release edit") && l.contains("--draft=false"));
    match (create, upload, push, undraft) {
        (Some(c), Some(u), Some(p), Some(d)) if c < u && u < d && p < d && d == lines.len() - 1 => {}
        _ => {
            return Err(format!(
                "{publish} must create a draft, upload to it, push gh-pages, then publish it last \
                 (`gh release edit ... --draft=false`): create {create:?}, upload {upload:?}, push {push:?}, publish {undraft:?}"
            ));
        }
    }
    let after: BTreeSet<&str> =
        jobs.keys().map(String::as_str).filter(|name| ancestors(jobs, name).contains(publish)).collect();
    let direct: BTreeSet<&str> = needs(job).into_iter().collect();
    let missing: Vec<&str> = jobs
        .keys()
        .map(String::as_str)
        .filter(|n| *n != publish && !after.contains(n) && !direct.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(format!("{publish} does not need {missing:?}: it would publish without them"));
    }
    if let Some(condition) = job["if"].as_str() {
        return Err(format!("{publish} runs `if: {condition}`: it must run only when every job it needs passed"));
    }
    Ok(format!("{publish} (needs {direct:?}): a draft, every artifact uploaded, gh-pages pushed, then published"))
}

/// One concurrency group for the workflow, never cancelled (a release half done stays a
/// draft; the next tag waits); no job has its own.
pub fn concurrency(workflow: &Value) -> Result<String, String> {
    let group =
        workflow["concurrency"]["group"].as_str().or_else(|| workflow["concurrency"].as_str()).unwrap_or_default();
    if group.is_empty() {
        return Err("no concurrency group: two tags would publish at once".into());
    }
    if workflow["concurrency"]["cancel-in-progress"] != Value::Bool(false)
        && !workflow["concurrency"]["cancel-in-progress"].is_null()
    {
        return Err(format!("concurrency {group}: cancel-in-progress must be false (a release is never cancelled)"));
    }
    if let Some((name, _)) = jobs(workflow)?.iter().find(|(_, job)| !job["concurrency"].is_null()) {
        return Err(format!("the job {name} has a concurrency of its own: one group for the workflow"));
    }
    Ok(format!("one concurrency group, {group}, cancel-in-progress false"))
}

/// Every `uses:` names an action by a 40-hex commit, with its tag in a comment on the line
/// (`owner/repo@<sha> # v1.2.3`): a tag can be moved, a commit cannot.
pub fn pins(workflow: &Value, text: &str) -> Result<String, String> {
    let mut pinned = BTreeMap::new();
    for (name, job) in jobs(workflow)? {
        for uses in steps(job).iter().filter_map(|s| s["uses"].as_str()).chain(job["uses"].as_str()) {
            let (action, pin) = uses.split_once('@').unwrap_or((uses, ""));
            if pin.len() != 40 || !pin.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(format!(
                    "the job {name} uses {uses}: pin it by its commit SHA (`{action}@<40 hex> # <tag>`)"
                ));
            }
            let commented = text
                .lines()
                .filter(|l| l.contains(uses))
                .all(|l| l.split_once(" # ").is_some_and(|(_, tag)| tag.trim().starts_with('v')));
            if !commented {
                return Err(format!("{uses} has no `# v<tag>` comment saying which tag the commit is"));
            }
            pinned.insert(action.to_owned(), pin.to_owned());
        }
    }
    Ok(format!(
        "{} actions, each pinned by a commit SHA with its tag: {:?}",
        pinned.len(),
        pinned.keys().collect::<Vec<_>>()
    ))
}

/// `permissions: {}` at the top; each job lists its own, and only what its steps use:
/// `contents: read` (checkout), `contents: write` where it writes the release or pushes
/// gh-pages, `id-token: write` + `attestations: write` where it attests,
/// `attestations: read` where it verifies attestations.
pub fn permissions(workflow: &Value) -> Result<String, String> {
    if workflow["permissions"] != serde_json::json!({}) {
        return Err(format!(
            "the workflow's permissions are {}: `permissions: {{}}`, each job asks for its own",
            workflow["permissions"]
        ));
    }
    let mut summary = Vec::new();
    for (name, job) in jobs(workflow)? {
        let granted =
            job["permissions"].as_object().ok_or_else(|| format!("the job {name} has no permissions of its own"))?;
        let lines = run_lines(job);
        let writes = lines
            .iter()
            .any(|l| l.contains("gh release") && !l.contains("gh release view") && !l.contains("gh release download"))
            || lines.iter().any(|l| l.contains("git") && l.contains(" push "));
        let attests = steps(job).iter().any(|s| action(s) == Some("actions/attest-build-provenance"));
        let verifies = lines.iter().any(|l| l.contains("gh attestation verify"));
        let mut needed = BTreeMap::from([("contents", if writes { "write" } else { "read" })]);
        if attests {
            needed.extend([("id-token", "write"), ("attestations", "write")]);
        } else if verifies {
            needed.insert("attestations", "read");
        }
        let granted: BTreeMap<&str, &str> =
            granted.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("?"))).collect();
        if granted != needed {
            return Err(format!("the job {name} has the permissions {granted:?}; its steps need {needed:?}, no more"));
        }
        summary
            .push(format!("{name} {}", granted.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")));
    }
    Ok(format!("permissions {{}} at the top; per job: {}", summary.join("; ")))
}

/// Every `secrets.<NAME>` of `value` (the workflow), with where it is (`jobs.<job>.steps[<i>].env.<NAME>`).
fn secret_uses(value: &Value, at: &str, found: &mut BTreeSet<(String, String)>) {
    let inner = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    match value {
        Value::String(text) => {
            for rest in text.split("secrets.").skip(1) {
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                found.insert((name, at.to_owned()));
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| secret_uses(v, &format!("{at}[{i}]"), found)),
        Value::Object(map) => map.iter().for_each(|(k, v)| secret_uses(v, &inner(k), found)),
        _ => {}
    }
}

/// Each secret reaches the steps that read it, and no other, through their `env` under its own
/// name: the repository key the `cargo xtask dist` step and the step that signs
/// SHA256SUMS-macos, each Apple secret the `cargo xtask dist-macos` step. No secret in a job's
/// or the workflow's `env`, a `with:`, a `run:`, another step.
pub fn secrets(workflow: &Value) -> Result<String, String> {
    let env = |job: &str, step: Option<usize>, name: &str| {
        (name.to_owned(), format!("jobs.{job}.steps[{}].env.{name}", step.map_or("?".into(), |i| i.to_string())))
    };
    let (linux, job) = job_running(workflow, "dist")?;
    let (dist_macos, dist_job) = job_running(workflow, "dist-macos")?;
    let (signer, _, sign_step) = macos_sums_signer(workflow)?;
    let mut expected = BTreeSet::from([
        env(linux, step_with(job, |l| runs_xtask(l, "dist")), REPO_KEY),
        env(signer, Some(sign_step), REPO_KEY),
    ]);
    let apple_step = step_with(dist_job, |l| runs_xtask(l, "dist-macos"));
    expected.extend(SECRETS.iter().map(|name| env(dist_macos, apple_step, name)));
    let mut found = BTreeSet::new();
    secret_uses(workflow, "", &mut found);
    if let Some((name, at)) = found.difference(&expected).next() {
        let readers: Vec<&str> = expected.iter().filter(|(n, _)| n == name).map(|(_, at)| at.as_str()).collect();
        return Err(format!("{at} reads secrets.{name}: a secret reaches only the steps that need it, {readers:?}"));
    }
    if let Some((name, at)) = expected.difference(&found).next() {
        return Err(format!("{at} lacks {name}: `{name}: ${{{{ secrets.{name} }}}}` in that step's env"));
    }
    Ok(format!(
        "{REPO_KEY} in {linux}'s dist step and {signer}'s signing step alone, the {} Apple secrets in {dist_macos}'s \
         dist-macos step alone",
        SECRETS.len()
    ))
}

/// The job that signs SHA256SUMS-macos (a `gpg ... --detach-sign ... SHA256SUMS-macos` line),
/// and its signing step.
fn macos_sums_signer(workflow: &Value) -> Result<(&str, &Value, usize), String> {
    jobs(workflow)?
        .iter()
        .find_map(|(name, job)| {
            let signs = |l: &str| l.starts_with("gpg ") && l.contains("--detach-sign") && l.contains(MACOS_SUMS);
            step_with(job, signs).map(|step| (name.as_str(), job, step))
        })
        .ok_or_else(|| {
            format!(
                "no job signs {MACOS_SUMS} (`gpg ... --detach-sign --armor ... {MACOS_SUMS}`): the macOS checksums \
                 would be published unsigned"
            )
        })
}

/// A throw-away key in the repository key's place, made once per process: its armoured
/// private key (the secret's form) and its public keyring (the published keyring's form).
fn throw_away_key(tools: &Tools) -> Result<&'static (String, Vec<u8>), String> {
    static KEY: OnceLock<Result<(String, Vec<u8>), String>> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = SigningKey::throw_away(tools, "cosmian-pkcs11 throw-away key of the workflow rules")?;
        let armoured = capture(key.gpg(tools).args(["--export-secret-keys", "--armor", &key.fingerprint]))?;
        Ok((armoured, key.export_public(tools, false)?))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// What a run of the signing job's steps is given: the secret, a file of the download changed
/// after its checksum, a `gpgv` first on `PATH` that accepts anything.
struct SigningRun<'a> {
    secret: &'a str,
    file_changed: bool,
    gpgv_accepts_all: bool,
}

/// Runs the `run:` steps of `job` in order with bash, as the runner does, in a folder where
/// `download` (relative) holds two files and their SHA256SUMS-macos; each step in its
/// `working-directory`, with `RUNNER_TEMP` and its `env` (the repository key's value
/// `run.secret`). `Ok(Err(why))` when a step fails; when all pass, `Ok(Ok((SHA256SUMS-macos,
/// SHA256SUMS-macos.asc)))`.
fn run_signing_job(job: &Value, download: &str, run: &SigningRun) -> Result<Result<[Vec<u8>; 2], String>, String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (dist, temp, bin) = (root.path().join(download), root.path().join("runner-temp"), root.path().join("bin"));
    for dir in [&dist, &temp, &bin] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let files = [dist.join(DYLIB), dist.join(format!("{NAME}-0.0.0.pkg"))];
    for (i, file) in files.iter().enumerate() {
        super::write(file, format!("not a Mach-O file {i}\n"))?;
    }
    super::write_checksums(&dist, MACOS_SUMS, &files.iter().map(|f| f.as_path()).collect::<Vec<_>>())?;
    if run.file_changed {
        super::write(&files[0], "changed after its checksum\n")?;
    }
    let mut path = std::ffi::OsString::new();
    if run.gpgv_accepts_all {
        use std::os::unix::fs::PermissionsExt;
        let gpgv = bin.join("gpgv");
        super::write(&gpgv, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&gpgv, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        path.push(&bin);
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    for (i, step) in steps(job).iter().enumerate() {
        let Some(script) = step["run"].as_str() else { continue };
        let mut bash = Command::new("bash");
        bash.args(["-e", "-c", script])
            .current_dir(root.path().join(step["working-directory"].as_str().unwrap_or(".")))
            .env("RUNNER_TEMP", &temp)
            .env("PATH", &path)
            .env_remove("GNUPGHOME");
        for (name, value) in step["env"].as_object().into_iter().flatten() {
            bash.env(name, if name == REPO_KEY { run.secret } else { value.as_str().unwrap_or_default() });
        }
        let out = bash.output().map_err(|e| format!("cannot run bash: {e}"))?;
        if !out.status.success() {
            let name = step["name"].as_str().map_or_else(|| format!("step {i}"), str::to_owned);
            return Ok(Err(format!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    let read = |name: String| std::fs::read(dist.join(&name)).map_err(|e| format!("no {download}/{name}: {e}"));
    Ok(read(MACOS_SUMS.to_owned()).and_then(|sums| Ok([sums, read(format!("{MACOS_SUMS}.asc"))?])))
}

/// SHA256SUMS-macos is signed by the repository key on Linux (the Mac jobs never see the key),
/// in a job that needs dist-macos and downloads what it hands over. That job's steps are run
/// here with bash ([`run_signing_job`]), a throw-away key in the secret's place: they must
/// write SHA256SUMS-macos.asc, which gpgv accepts with the throw-away public key alone; and they
/// must fail with the secret empty, with a file changed after its checksum, and with a `gpgv`
/// that accepts anything (so a changed copy too: the job checks that gpgv refuses one). Once
/// published, a job checks both checksum files' signatures with the release's keyring.
pub fn macos_sums_signed(workflow: &Value, tools: &Tools) -> Result<String, String> {
    let jobs = jobs(workflow)?;
    let (signer, job, _) = macos_sums_signer(workflow)?;
    let (dist_macos, dist_job) = job_running(workflow, "dist-macos")?;
    if !job["runs-on"].as_str().unwrap_or_default().starts_with("ubuntu") {
        return Err(format!("the job {signer} signs {MACOS_SUMS} on {}, not on Linux", job["runs-on"]));
    }
    if !ancestors(jobs, signer).contains(dist_macos) {
        return Err(format!("the job {signer} (signs {MACOS_SUMS}) does not need {dist_macos}, which makes it"));
    }
    let handed: BTreeSet<&str> = release_uploads(dist_job).into_iter().map(|(_, name, _)| name).collect();
    let download = steps(job)
        .iter()
        .filter(|s| action(s) == Some("actions/download-artifact"))
        .find(|s| s["with"]["name"].as_str().is_some_and(|n| handed.contains(n)))
        .and_then(|s| s["with"]["path"].as_str())
        .ok_or_else(|| format!("the job {signer} does not download {handed:?}, what {dist_macos} hands over"))?;
    let (armoured, keyring) = throw_away_key(tools)?;
    let good = SigningRun { secret: armoured, file_changed: false, gpgv_accepts_all: false };
    let [sums, signature] = run_signing_job(job, download, &good)?
        .map_err(|e| format!("the job {signer}, run here with a throw-away key, fails: {e}"))?;
    let checked = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (file, bytes) in [("keyring.gpg", keyring), ("sums.asc", &signature), ("sums", &sums)] {
        super::write(&checked.path().join(file), bytes)?;
    }
    let gpgv = tools
        .command("gpgv")
        .env("GNUPGHOME", checked.path())
        .current_dir(checked.path())
        .args(["--keyring", "./keyring.gpg", "sums.asc", "sums"])
        .output()
        .map_err(|e| format!("cannot run gpgv: {e}"))?;
    if !gpgv.status.success() {
        return Err(format!(
            "the {MACOS_SUMS}.asc the job {signer} writes is not a signature of {MACOS_SUMS} by the key of {REPO_KEY}: {}",
            String::from_utf8_lossy(&gpgv.stderr)
        ));
    }
    let broken = [
        (SigningRun { secret: "", ..good }, "an empty secret"),
        (SigningRun { file_changed: true, ..good }, "a file changed after its checksum"),
        (SigningRun { gpgv_accepts_all: true, ..good }, "a gpgv that accepts a changed copy"),
    ];
    for (run, what) in &broken {
        match run_signing_job(job, download, run)? {
            Ok(_) => return Err(format!("the job {signer} passes {what}")),
            Err(why) if why.ends_with(": ") => {
                return Err(format!("the job {signer} refuses {what} without saying why"));
            }
            Err(_) => {}
        }
    }
    let publish = publish_job(workflow)?.0;
    for sums in [SUMS, MACOS_SUMS] {
        let command = format!("{sums}.asc {sums}");
        let checks = jobs.iter().any(|(name, job)| {
            ancestors(jobs, name).contains(publish)
                && run_lines(job)
                    .iter()
                    .any(|l| l.contains("gpgv --keyring") && l.contains(KEYRING) && l.ends_with(&command))
        });
        if !checks {
            return Err(format!("no job after {publish} runs `gpgv --keyring ./{KEYRING} {command}` on the release"));
        }
    }
    Ok(format!(
        "{signer} (Linux, after {dist_macos}) signs {MACOS_SUMS} with {REPO_KEY} (run here: gpgv accepts the signature \
         with the public key alone; refuses {}); once published, both signatures checked with {KEYRING}",
        broken.iter().map(|(_, what)| *what).collect::<Vec<_>>().join(", ")
    ))
}

/// The `release-*` artifacts of a job: (upload step index, name, paths).
fn release_uploads(job: &Value) -> Vec<(usize, &str, BTreeSet<&str>)> {
    steps(job)
        .iter()
        .enumerate()
        .filter(|(_, s)| action(s) == Some("actions/upload-artifact"))
        .filter_map(|(i, s)| {
            s["with"]["name"].as_str().filter(|n| n.starts_with("release-")).map(|n| (i, n, input_lines(s, "path")))
        })
        .collect()
}

/// Every file a job hands over for the release (a `release-*` artifact) is the subject of an
/// `actions/attest-build-provenance` step of that job, after every `run:` step before the
/// upload (the steps that make and check the files), before the upload.
pub fn attestations(workflow: &Value) -> Result<String, String> {
    let mut attested = 0;
    for (name, job) in jobs(workflow)? {
        for (upload, artifact, paths) in release_uploads(job) {
            let attest = steps(job)[..upload].iter().rposition(|s| {
                action(s) == Some("actions/attest-build-provenance") && input_lines(s, "subject-path") == paths
            });
            let made = steps(job)[..upload].iter().rposition(|s| s["run"].is_string());
            match (made, attest) {
                (Some(made), Some(attest)) if made < attest => attested += paths.len(),
                _ => {
                    return Err(format!(
                        "the job {name} uploads {artifact} without an actions/attest-build-provenance step after its \
                         last run: step whose subject-path lists exactly its files"
                    ));
                }
            }
        }
    }
    Ok(format!("{attested} files attested (actions/attest-build-provenance) before they are handed over"))
}

/// What `cargo xtask dist` makes for the release, from the workspace root.
fn linux_artifacts() -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for arch in Arch::ALL {
        files.insert(arch.dist_file().to_owned());
        files.insert(arch.dist_agent().to_owned());
        files.insert(format!("{NAME}_*_{}.deb", arch.deb()));
        files.insert(format!("{NAME}-*.{}.rpm", arch.rpm()));
    }
    files.extend([
        format!("{NAME}-*.tar.gz"),
        // The CycloneDX SBOM of the library.
        format!("{NAME}-*.cdx.json"),
        format!("{TAP_DIR}/{FORMULA}"),
        SUMS.to_owned(),
        format!("{SUMS}.asc"),
    ]);
    files.extend([KEYRING, ASC, SOURCES, REPO].iter().map(|f| format!("repository/{f}")));
    files.into_iter().map(|f| format!("target/dist/{f}")).collect()
}

/// What `cargo xtask dist-macos` makes for the release.
fn macos_artifacts() -> BTreeSet<String> {
    [DYLIB.to_owned(), format!("{NAME}-*-macos-dylib.zip"), format!("{NAME}-*.pkg"), MACOS_SUMS.to_owned()]
        .into_iter()
        .map(|f| format!("target/dist/{f}"))
        .collect()
}

/// The job that runs `cargo xtask dist` hands over exactly [`linux_artifacts`], the one that
/// runs `dist-macos` exactly [`macos_artifacts`], the one that signs SHA256SUMS-macos its
/// signature alone (`release-*` artifacts); the publish job downloads every `release-*`
/// artifact into one folder and attaches every file of it.
pub fn artifacts(workflow: &Value) -> Result<String, String> {
    let (linux, linux_job) = job_running(workflow, "dist")?;
    let (macos, macos_job) = job_running(workflow, "dist-macos")?;
    let (signer, signer_job, _) = macos_sums_signer(workflow)?;
    let signature = BTreeSet::from([format!("target/dist/{MACOS_SUMS}.asc")]);
    for (name, job, what, expected) in [
        (linux, linux_job, "cargo xtask dist", linux_artifacts()),
        (macos, macos_job, "cargo xtask dist-macos", macos_artifacts()),
        (signer, signer_job, "signs SHA256SUMS-macos", signature),
    ] {
        let handed: BTreeSet<String> =
            release_uploads(job).into_iter().flat_map(|(_, _, paths)| paths).map(str::to_owned).collect();
        if handed != expected {
            return Err(format!(
                "the job {name} ({what}) hands over {:?} it should not and lacks {:?}",
                handed.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&handed).collect::<Vec<_>>()
            ));
        }
    }
    let (publish, job) = publish_job(workflow)?;
    let folder = steps(job)
        .iter()
        .filter(|s| action(s) == Some("actions/download-artifact"))
        .find(|s| s["with"]["pattern"] == "release-*" && s["with"]["merge-multiple"] == true)
        .and_then(|s| s["with"]["path"].as_str())
        .ok_or_else(|| {
            format!("{publish} does not download every release-* artifact into one folder (merge-multiple)")
        })?;
    if !run_lines(job).iter().any(|l| l.contains(&format!("find {folder} -type f")) && l.contains("gh release upload"))
    {
        return Err(format!(
            "{publish} does not attach every file of {folder} (find {folder} -type f ... gh release upload)"
        ));
    }
    Ok(format!(
        "{} Linux and {} macOS artifacts handed over, and {MACOS_SUMS}.asc by {signer}, all attached by {publish}",
        linux_artifacts().len(),
        macos_artifacts().len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's release.yml, as PyYAML reads it (the packaging tools' venv:
    /// `scripts/install-packaging-tools.sh`, run once per test process).
    fn release() -> Release {
        Release::load(Tools::get().unwrap()).unwrap()
    }

    /// `rule` passes on the workflow, and fails on `broken(copy)` with an error holding
    /// `needle`; prints it.
    fn refused(rule: fn(&Value) -> Result<String, String>, broken: impl Fn(&mut Value), needle: &str) {
        let mut workflow = release().json;
        rule(&workflow).unwrap();
        broken(&mut workflow);
        let err = rule(&workflow).unwrap_err();
        eprintln!("broken for `{needle}`: {err}");
        assert!(err.contains(needle), "{err}");
    }

    fn step_running<'a>(job: &'a mut Value, words: &str) -> &'a mut Value {
        job["steps"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|s| s["run"].as_str().is_some_and(|r| r.contains(words)))
            .unwrap()
    }

    /// Replaces `from` by `to` in the `run:` of the step of `job` whose run holds `from`.
    fn edit_run(workflow: &mut Value, job: &str, from: &str, to: &str) {
        let step = step_running(&mut workflow["jobs"][job], from);
        step["run"] = step["run"].as_str().unwrap().replace(from, to).into();
    }

    #[test]
    fn the_repository_workflow_keeps_every_rule() {
        check(Tools::get().unwrap()).unwrap();
    }

    #[test]
    fn trigger_refuses_branches() {
        refused(trigger, |w| w["true"]["push"]["branches"] = serde_json::json!(["main"]), "pushed tags v* alone");
        refused(trigger, |w| w["true"]["pull_request"] = serde_json::json!({}), "pushed tags v* alone");
    }

    #[test]
    fn version_check_refuses_a_step_that_lets_a_wrong_tag_through() {
        // A check of the CHANGELOG alone: any tag passes.
        refused(
            version_check,
            |w| edit_run(w, "version", "\"$GITHUB_REF_NAME\" != \"v$version\"", "-z \"$GITHUB_REF_NAME\""),
            "passes a tag that is not the Cargo version",
        );
        // A CHANGELOG looked up with grep alone: the empty section passes.
        refused(
            version_check,
            |w| edit_run(w, "version", "if ! grep -q '[^[:space:]]' notes/release-notes.txt", "if false"),
            "passes an empty section",
        );
        // A build that does not wait for it.
        refused(
            version_check,
            |w| w["jobs"]["homebrew"].as_object_mut().unwrap().remove("needs").map(drop).unwrap(),
            "homebrew does not need version",
        );
    }

    #[test]
    fn toolchain_refuses_curl_pipe_sh_and_another_image() {
        refused(
            |w| toolchain(w, "1.95.0"),
            |w| {
                step_running(&mut w["jobs"]["dist-macos"], "rustup toolchain install")["run"] =
                    "curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y".into()
            },
            "the toolchain is rust-toolchain.toml's",
        );
        refused(
            |w| toolchain(w, "1.95.0"),
            |w| w["jobs"]["linux"]["container"] = "debian:12".into(),
            "not rust:1.95.0-bookworm",
        );
        refused(
            |w| toolchain(w, "1.95.0"),
            |w| step_running(&mut w["jobs"]["homebrew"], "rustup toolchain install")["run"] = "cargo --version".into(),
            "homebrew runs cargo without `rustup toolchain install`",
        );
    }

    #[test]
    fn builds_refuse_a_linux_job_without_tests_and_a_mac_job_out_of_order() {
        refused(
            builds,
            |w| edit_run(w, "linux", "cargo xtask test\n", "cargo xtask test --local\n"),
            "does not run `cargo xtask test` before `cargo xtask dist`",
        );
        refused(builds, |w| w["jobs"]["dist-macos"]["needs"] = "version".into(), "does not need test-macos");
        // The .pkg uninstalled otherwise than docs/install.md says.
        refused(
            builds,
            |w| edit_run(w, "dist-macos", "sudo rmdir /usr/local/share/doc/cosmian-pkcs11\n", ""),
            "sudo rmdir /usr/local/share/doc/cosmian-pkcs11",
        );
        // Homebrew's audit --online before publication: the draft's URL does not answer.
        refused(builds, |w| w["jobs"]["published"]["needs"] = "version".into(), "does not need publish");
    }

    #[test]
    fn secrets_refuse_a_missing_one_and_one_in_another_step() {
        refused(
            secrets,
            |w| {
                step_running(&mut w["jobs"]["dist-macos"], "cargo xtask dist-macos")["env"]
                    .as_object_mut()
                    .unwrap()
                    .remove("APPLE_API_KEY_ID");
            },
            "jobs.dist-macos.steps[3].env.APPLE_API_KEY_ID lacks APPLE_API_KEY_ID",
        );
        // The repository key for the whole signing job: its download and its checks would see it.
        refused(
            secrets,
            |w| {
                let key = format!("${{{{ secrets.{REPO_KEY} }}}}");
                w["jobs"]["sign-macos-sums"]["env"] = serde_json::json!({ REPO_KEY: key });
            },
            "jobs.sign-macos-sums.env.COSMIAN_PKCS11_REPO_SIGNING_KEY reads secrets.COSMIAN_PKCS11_REPO_SIGNING_KEY",
        );
        refused(
            secrets,
            |w| {
                step_running(&mut w["jobs"]["sign-macos-sums"], "--detach-sign")["env"]
                    .as_object_mut()
                    .unwrap()
                    .remove(REPO_KEY);
            },
            "jobs.sign-macos-sums.steps[2].env.COSMIAN_PKCS11_REPO_SIGNING_KEY lacks",
        );
    }

    /// `macos_sums_signed` with the packaging tools (gpg).
    fn sums_signed(workflow: &Value) -> Result<String, String> {
        macos_sums_signed(workflow, Tools::get().unwrap())
    }

    #[test]
    fn a_missing_macos_signature_is_refused() {
        let unsigned = |w: &mut Value| {
            w["jobs"].as_object_mut().unwrap().remove("sign-macos-sums").unwrap();
            w["jobs"]["publish"]["needs"] =
                serde_json::json!(["version", "linux", "test-macos", "dist-macos", "homebrew"]);
        };
        refused(sums_signed, unsigned, "no job signs SHA256SUMS-macos");
        refused(artifacts, unsigned, "the macOS checksums would be published unsigned");
        refused(
            draft_and_publish,
            |w| {
                w["jobs"]["publish"]["needs"] =
                    serde_json::json!(["version", "linux", "test-macos", "dist-macos", "homebrew"])
            },
            "does not need [\"sign-macos-sums\"]",
        );
        // Signed, not handed over.
        refused(
            artifacts,
            |w| drop(w["jobs"]["sign-macos-sums"]["steps"].as_array_mut().unwrap().pop()),
            "lacks [\"target/dist/SHA256SUMS-macos.asc\"]",
        );
        refused(
            attestations,
            |w| drop(w["jobs"]["sign-macos-sums"]["steps"].as_array_mut().unwrap().remove(4)),
            "the job sign-macos-sums uploads release-macos-signature without an actions/attest-build-provenance step",
        );
        refused(
            permissions,
            |w| drop(w["jobs"]["sign-macos-sums"]["permissions"].as_object_mut().unwrap().remove("attestations")),
            "the job sign-macos-sums has the permissions",
        );
        refused(sums_signed, |w| w["jobs"]["sign-macos-sums"]["needs"] = "version".into(), "does not need dist-macos");
        // Not checked once published.
        refused(
            sums_signed,
            |w| {
                edit_run(
                    w,
                    "published",
                    "GNUPGHOME=\"$RUNNER_TEMP/empty-gnupg\" gpgv --keyring ./cosmian-pkcs11-archive-keyring.gpg \
                     SHA256SUMS-macos.asc SHA256SUMS-macos\n",
                    "",
                )
            },
            "no job after publish runs `gpgv --keyring ./cosmian-pkcs11-archive-keyring.gpg SHA256SUMS-macos.asc",
        );
    }

    #[test]
    fn the_signing_job_refuses_what_it_must_when_run_here() {
        // No check that gpgv refuses a changed copy.
        refused(
            sums_signed,
            |w| {
                edit_run(
                    w,
                    "sign-macos-sums",
                    "if gpgv --keyring \"$RUNNER_TEMP/repository-key.gpg\" SHA256SUMS-macos.asc \"$changed\"; then",
                    "if false; then",
                )
            },
            "passes a gpgv that accepts a changed copy",
        );
        // The checksums signed without checking them against the files.
        refused(
            sums_signed,
            |w| drop(w["jobs"]["sign-macos-sums"]["steps"].as_array_mut().unwrap().remove(1)),
            "passes a file changed after its checksum",
        );
        // Signed by a key of its own, not the secret's: its own gpgv, with that key, accepts it.
        refused(
            sums_signed,
            |w| {
                edit_run(
                    w,
                    "sign-macos-sums",
                    "printf '%s\\n' \"$COSMIAN_PKCS11_REPO_SIGNING_KEY\" | gpg --batch --quiet --import",
                    "gpg --batch --passphrase '' --quick-generate-key other rsa2048 sign never",
                )
            },
            "is not a signature of SHA256SUMS-macos by the key of COSMIAN_PKCS11_REPO_SIGNING_KEY",
        );
    }

    #[test]
    fn draft_and_publish_refuse_a_public_release_and_a_missing_need() {
        refused(
            draft_and_publish,
            |w| {
                w["jobs"]["publish"]["needs"] =
                    serde_json::json!(["version", "linux", "test-macos", "sign-macos-sums", "homebrew"])
            },
            "does not need [\"dist-macos\"]",
        );
        refused(
            draft_and_publish,
            |w| edit_run(w, "publish", " --draft --verify-tag", " --verify-tag"),
            "without --draft",
        );
        refused(draft_and_publish, |w| w["jobs"]["publish"]["if"] = "always()".into(), "if: always()");
        refused(
            draft_and_publish,
            |w| {
                let steps = w["jobs"]["publish"]["steps"].as_array_mut().unwrap();
                let last = steps.pop().unwrap();
                steps.insert(4, last);
            },
            "publish it last",
        );
        refused(
            draft_and_publish,
            |w| {
                w["jobs"]["linux"]["steps"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"uses": "softprops/action-gh-release@v2"}))
            },
            "uses softprops/action-gh-release",
        );
    }

    #[test]
    fn concurrency_refuses_none_and_cancelling() {
        refused(concurrency, |w| drop(w.as_object_mut().unwrap().remove("concurrency")), "no concurrency group");
        refused(
            concurrency,
            |w| w["concurrency"]["cancel-in-progress"] = true.into(),
            "cancel-in-progress must be false",
        );
    }

    #[test]
    fn pins_refuse_a_tag_and_a_missing_comment() {
        let release = release();
        pins(&release.json, &release.text).unwrap();
        let mut tagged = release.json.clone();
        tagged["jobs"]["version"]["steps"][0]["uses"] = "actions/checkout@v4".into();
        let err = pins(&tagged, &release.text).unwrap_err();
        eprintln!("broken for a tag: {err}");
        assert!(err.contains("actions/checkout@v4: pin it by its commit SHA"), "{err}");
        let uncommented = release.text.replacen(" # v7.0.1", "", 1);
        let err = pins(&release.json, &uncommented).unwrap_err();
        eprintln!("broken for a comment: {err}");
        assert!(err.contains("no `# v<tag>` comment"), "{err}");
    }

    #[test]
    fn permissions_refuse_write_all_and_an_unused_grant() {
        refused(permissions, |w| w["permissions"] = "write-all".into(), "permissions: {}");
        refused(
            permissions,
            |w| w["jobs"]["linux"]["permissions"]["contents"] = "write".into(),
            "the job linux has the permissions",
        );
        refused(
            permissions,
            |w| drop(w["jobs"]["dist-macos"]["permissions"].as_object_mut().unwrap().remove("id-token")),
            "the job dist-macos has the permissions",
        );
    }

    #[test]
    fn attestations_and_artifacts_refuse_a_file_left_out() {
        let drop_sbom = |w: &mut Value, action: &str| {
            for step in w["jobs"]["linux"]["steps"].as_array_mut().unwrap() {
                if step["uses"].as_str().is_some_and(|u| u.starts_with(action)) {
                    for input in ["path", "subject-path"] {
                        if let Some(text) = step["with"][input].as_str() {
                            step["with"][input] = text.replace("target/dist/cosmian-pkcs11-*.cdx.json\n", "").into();
                        }
                    }
                }
            }
        };
        refused(
            attestations,
            |w| drop_sbom(w, "actions/attest-build-provenance"),
            "without an actions/attest-build-provenance step",
        );
        refused(
            artifacts,
            |w| {
                drop_sbom(w, "actions/attest-build-provenance");
                drop_sbom(w, "actions/upload-artifact");
            },
            "lacks [\"target/dist/cosmian-pkcs11-*.cdx.json\"]",
        );
        refused(
            artifacts,
            |w| edit_run(w, "publish", "find assets -type f -print0 | xargs -0 gh release upload", "gh release upload"),
            "does not attach every file of assets",
        );
    }
}
