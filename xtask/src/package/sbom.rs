//! What the release library and agent are built from, told two ways, both checked against
//! Cargo.lock for their architecture:
//!
//! - the list cargo-auditable embeds in both files ([`super::elf::cargo_build`]): the section
//!   `.dep-v0`, zlib-compressed JSON, which `cargo audit bin`, syft or trivy read from an
//!   installed file. Read back (`objcopy --dump-section`), it must name exactly the crates (name
//!   and version) that Cargo.lock's resolve reaches from the provider through normal and build
//!   dependencies (`cargo metadata --filter-platform`), with every crate the library links
//!   (`cargo tree -e normal,no-proc-macro`: the features of the release build) as a runtime one;
//! - a CycloneDX SBOM (JSON, spec 1.5) of the provider's crate, the library and the agent as its
//!   parts, by cargo-cyclonedx: `cosmian-pkcs11-VERSION-ARCH.cdx.json` in `target/dist/` (in
//!   `SHA256SUMS-linux`) and [`INSTALLED`] in the packages' `/usr/share/doc/cosmian-pkcs11/`.
//!   Its components must be exactly the crates the resolve reaches through normal dependencies,
//!   and agree with the embedded list. Reproducible: its timestamp is `SOURCE_DATE_EPOCH`, the
//!   workspace's path in it becomes `/cosmian-pkcs11`, and it is generated twice, from copies of
//!   the tree in two temporary folders, and compared (the packages, byte-identical when built
//!   twice, are built from one SBOM file: that check does not see it).
//!
//! Both tools read cargo's resolve, not the features of one build: beside the crates linked,
//! they name the proc macros and the crates those use, and a few optional crates the resolve
//! keeps (zlib-rs under flate2, indexmap under toml); the check prints how many. So an advisory
//! for a crate they name may not concern the library, and one for a crate they omit does not.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::elf::{Arch, LinuxLib};
use super::{NAME, Tools, capture, version, workspace_root};
use crate::step;

/// The SBOM's name in the packages' document folder.
pub const INSTALLED: &str = "cosmian-pkcs11.cdx.json";
/// The section cargo-auditable writes.
const SECTION: &str = ".dep-v0";

/// A crate: name and version.
type Crate = (String, String);

/// The SBOM's file in `target/dist/`.
fn file_name(arch: Arch) -> String {
    format!("{NAME}-{}-{}.cdx.json", version(), arch.rpm())
}

/// Writes the SBOM of the `arch` build into `dist` (generated twice, compared); its path.
pub fn write(tools: &Tools, arch: Arch, dist: &Path) -> Result<PathBuf, String> {
    let target = arch.rust_target();
    step(
        &format!("write the SBOM of the {} library and agent", arch.rpm()),
        &format!("cargo cyclonedx --format json --spec-version 1.5 --no-build-deps --target {target}, twice"),
    );
    let epoch = super::source_date_epoch()?;
    let (first, second) = (generate(tools, target, epoch)?, generate(tools, target, epoch)?);
    let (a, b) = (super::sha256_hex(first.as_bytes()), super::sha256_hex(second.as_bytes()));
    if a != b {
        return Err(format!("the SBOM is not reproducible: {a}, then {b} from another folder"));
    }
    let path = dist.join(file_name(arch));
    super::write(&path, &first)?;
    super::check_no_build_paths(&path)?;
    println!("    {} (sha256 {a}, twice)", path.display());
    Ok(path)
}

/// cargo-cyclonedx's SBOM of the provider's crate, made in a copy of the tree in a new
/// temporary folder, whose path it names `/cosmian-pkcs11`. The copy's own name is the
/// package's: it shows in cargo's id of the package (`path+file:///…/cosmian-pkcs11#0.1.0`,
/// but `…/other#cosmian-pkcs11@0.1.0` in a folder of another name).
fn generate(tools: &Tools, target: &str, epoch: u64) -> Result<String, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = temp.path().join(NAME);
    super::reproducible::copy_tree(&workspace_root(), &root)?;
    capture(
        tools
            .command("cargo")
            .current_dir(&root)
            .args(["cyclonedx", "--format", "json", "--spec-version", "1.5", "--no-build-deps", "--target", target])
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    let written = root.join(format!("{NAME}.cdx.json"));
    let text = std::fs::read_to_string(&written).map_err(|e| format!("cannot read {}: {e}", written.display()))?;
    Ok(text.replace(&format!("path+file://{}", root.display()), "path+file:///cosmian-pkcs11"))
}

/// The embedded lists of the library and the agent, and the SBOM, against Cargo.lock.
pub fn check(tools: &Tools, lib: &LinuxLib) -> Result<(), String> {
    let target = lib.arch.rust_target();
    step(
        "check the embedded dependency lists and the SBOM against Cargo.lock",
        &format!(
            "objcopy --dump-section {SECTION}; cargo metadata --filter-platform {target}; cargo tree -e \
             normal,no-proc-macro --target {target}"
        ),
    );
    let closures = closures(tools, target)?;
    let mut lists = Vec::new();
    for file in [&lib.path, &lib.agent] {
        let list = parse_embedded(&read_section(tools, file)?)?;
        compare_embedded(&list, &closures).map_err(|e| format!("{}: {e}", file.display()))?;
        lists.push(list);
    }
    let text = std::fs::read_to_string(&lib.sbom).map_err(|e| format!("cannot read {}: {e}", lib.sbom.display()))?;
    let sbom: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", lib.sbom.display()))?;
    let components =
        compare_sbom(&sbom, target, &closures, &lists[0]).map_err(|e| format!("{}: {e}", lib.sbom.display()))?;
    println!(
        "    embedded in the library and the agent: {} crates, Cargo.lock's closure for {target} through normal \
         and build dependencies, the {} linked ones as runtime; SBOM: {components} components, the closure \
         through normal dependencies ({} not linked: proc macros, what they use, optional crates the resolve \
         keeps)",
        closures.compiled.len(),
        closures.linked.len(),
        closures.normal.len() - closures.linked.len()
    );
    Ok(())
}

/// The section [`SECTION`] of an ELF file of either architecture, decompressed.
fn read_section(tools: &Tools, file: &Path) -> Result<Vec<u8>, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (section, copy) = (temp.path().join("section"), temp.path().join("copy"));
    // An output file: without one, objcopy rewrites its input.
    capture(
        tools
            .command("objcopy")
            .args(["-I", "elf64-little", "--dump-section"])
            .arg(format!("{SECTION}={}", section.display()))
            .arg(file)
            .arg(&copy),
    )
    .map_err(|e| format!("{} has no section {SECTION} (built without cargo-auditable?): {e}", file.display()))?;
    let compressed = std::fs::read(&section).map_err(|e| e.to_string())?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| format!("{SECTION} of {}: not zlib: {e}", file.display()))?;
    Ok(json)
}

/// Cargo.lock's crates from the provider, for one target.
#[derive(Debug, Default)]
struct Closures {
    /// The provider itself.
    root: Crate,
    /// Reached through normal dependencies (proc macros and what they use included).
    normal: BTreeSet<Crate>,
    /// Reached through normal and build dependencies.
    compiled: BTreeSet<Crate>,
    /// Linked into the library: normal dependencies with the features of the release build, no
    /// proc macro.
    linked: BTreeSet<Crate>,
}

fn closures(tools: &Tools, target: &str) -> Result<Closures, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata = capture(
        tools
            .command(&cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", target]),
    )?;
    let tree = capture(
        tools
            .command(&cargo)
            .args(["tree", "-p", NAME, "-e", "normal,no-proc-macro", "--target", target, "--prefix", "none"])
            .args(["--format", "{p}", "--locked"]),
    )?;
    let metadata: Value = serde_json::from_str(&metadata).map_err(|e| format!("cargo metadata: {e}"))?;
    from_metadata(&metadata, &tree)
}

/// [`Closures`] from `cargo metadata` and `cargo tree --prefix none --format {p}`.
fn from_metadata(metadata: &Value, tree: &str) -> Result<Closures, String> {
    let str_of =
        |value: &Value, key: &str| value[key].as_str().map(str::to_owned).ok_or(format!("cargo metadata: no {key}"));
    let mut crates = BTreeMap::new();
    let mut root = None;
    for package in metadata["packages"].as_array().ok_or("cargo metadata: no packages")? {
        let krate = (str_of(package, "name")?, str_of(package, "version")?);
        if krate.0 == NAME && package["source"].is_null() {
            root = Some(str_of(package, "id")?);
        }
        crates.insert(str_of(package, "id")?, krate);
    }
    let root = root.ok_or(format!("cargo metadata: no package {NAME}"))?;
    let nodes: BTreeMap<String, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("cargo metadata: no resolve")?
        .iter()
        .map(|node| Ok((str_of(node, "id")?, node)))
        .collect::<Result<_, String>>()?;
    // The crates reached from the provider through edges of the given kinds (null: normal).
    let reach = |kinds: &[Option<&str>]| -> BTreeSet<Crate> {
        let (mut seen, mut todo) = (BTreeSet::from([root.clone()]), vec![root.clone()]);
        while let Some(id) = todo.pop() {
            let deps = nodes.get(&id).and_then(|node| node["deps"].as_array()).into_iter().flatten();
            for dep in deps {
                let wanted =
                    dep["dep_kinds"].as_array().into_iter().flatten().any(|k| kinds.contains(&k["kind"].as_str()));
                if let (true, Some(pkg)) = (wanted, dep["pkg"].as_str()) {
                    if seen.insert(pkg.to_owned()) {
                        todo.push(pkg.to_owned());
                    }
                }
            }
        }
        seen.iter().filter_map(|id| crates.get(id).cloned()).collect()
    };
    let linked = tree
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.strip_prefix('v')?.to_owned()))
        })
        .collect();
    Ok(Closures {
        root: crates[&root].clone(),
        normal: reach(&[None]),
        compiled: reach(&[None, Some("build")]),
        linked,
    })
}

/// One crate of an embedded list.
#[derive(Debug, Clone)]
struct Embedded {
    krate: Crate,
    /// `"kind": "build"` is a crate only the build uses (a build script's, a proc macro).
    runtime: bool,
    root: bool,
}

/// cargo-auditable's JSON: `{"packages": [{"name", "version", "kind"?, "root"?, ...}]}`.
fn parse_embedded(json: &[u8]) -> Result<Vec<Embedded>, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("{SECTION}: not JSON: {e}"))?;
    let packages = value["packages"].as_array().ok_or(format!("{SECTION}: no packages"))?;
    packages
        .iter()
        .map(|p| {
            let field =
                |key: &str| p[key].as_str().map(str::to_owned).ok_or(format!("{SECTION}: a package without {key}"));
            Ok(Embedded {
                krate: (field("name")?, field("version")?),
                runtime: p["kind"].as_str().unwrap_or("runtime") == "runtime",
                root: p["root"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// `Err` naming what `got` has that `want` has not, and the reverse.
fn same(what: &str, got: &BTreeSet<Crate>, want: &BTreeSet<Crate>, reference: &str) -> Result<(), String> {
    let show = |set: BTreeSet<&Crate>| set.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ");
    let (extra, missing) = (show(got.difference(want).collect()), show(want.difference(got).collect()));
    if extra.is_empty() && missing.is_empty() {
        return Ok(());
    }
    Err(format!("{what} differs from {reference}: not there: [{extra}]; missing: [{missing}]"))
}

/// The embedded list names Cargo.lock's crates (normal and build dependencies), the provider
/// as its root, and every linked crate as a runtime one.
fn compare_embedded(list: &[Embedded], closures: &Closures) -> Result<(), String> {
    let all: BTreeSet<Crate> = list.iter().map(|e| e.krate.clone()).collect();
    same("the embedded list", &all, &closures.compiled, "Cargo.lock's crates (normal and build dependencies)")?;
    let roots: Vec<&Crate> = list.iter().filter(|e| e.root).map(|e| &e.krate).collect();
    if roots != [&closures.root] {
        return Err(format!("the embedded list's root is {roots:?}, not {:?}", closures.root));
    }
    let runtime: BTreeSet<Crate> = list.iter().filter(|e| e.runtime).map(|e| e.krate.clone()).collect();
    let not_runtime: Vec<&Crate> = closures.linked.difference(&runtime).collect();
    if !not_runtime.is_empty() {
        return Err(format!("the embedded list does not mark these linked crates as runtime ones: {not_runtime:?}"));
    }
    Ok(())
}

/// The SBOM names the provider (for `target`), Cargo.lock's crates (normal dependencies) as its
/// components, and agrees with the embedded list: every runtime crate of it is there, and
/// nothing it lacks. The number of components.
fn compare_sbom(sbom: &Value, target: &str, closures: &Closures, embedded: &[Embedded]) -> Result<usize, String> {
    let krate = |c: &Value| Some((c["name"].as_str()?.to_owned(), c["version"].as_str()?.to_owned()));
    let root = krate(&sbom["metadata"]["component"]).ok_or("no metadata.component")?;
    if root != closures.root {
        return Err(format!("it describes {root:?}, not {:?}", closures.root));
    }
    let triple =
        sbom["metadata"]["properties"].as_array().into_iter().flatten().find_map(|p| {
            (p["name"] == "cdx:rustc:sbom:target:triple").then(|| p["value"].as_str().unwrap_or_default())
        });
    if triple != Some(target) {
        return Err(format!("it is for {triple:?}, not {target}"));
    }
    let components = sbom["components"].as_array().ok_or("no components")?;
    let mut listed = components
        .iter()
        .map(|c| krate(c).ok_or("a component without name or version"))
        .collect::<Result<BTreeSet<Crate>, _>>()?;
    let count = listed.len();
    listed.insert(root);
    same("the SBOM", &listed, &closures.normal, "Cargo.lock's crates (normal dependencies)")?;
    let runtime: BTreeSet<Crate> = embedded.iter().filter(|e| e.runtime).map(|e| e.krate.clone()).collect();
    let all: BTreeSet<Crate> = embedded.iter().map(|e| e.krate.clone()).collect();
    let missing: Vec<&Crate> = runtime.difference(&listed).collect();
    let unknown: Vec<&Crate> = listed.difference(&all).collect();
    if !missing.is_empty() || !unknown.is_empty() {
        return Err(format!(
            "the SBOM and the embedded list disagree: runtime crates not in the SBOM: {missing:?}; SBOM \
             components not embedded: {unknown:?}"
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(name: &str, version: &str) -> Crate {
        (name.to_owned(), version.to_owned())
    }

    /// `cargo metadata` of a provider that links `ring` (which builds with `cc`) and uses the
    /// proc macro `serde_derive`, and `cargo tree -e normal,no-proc-macro` of it.
    fn fixture() -> Closures {
        let id = |name: &str| format!("registry+https://github.com/rust-lang/crates.io-index#{name}");
        let metadata = serde_json::json!({
            "packages": [
                {"id": "path+file:///w#0.1.0", "name": NAME, "version": "0.1.0", "source": null},
                {"id": id("ring@0.17.14"), "name": "ring", "version": "0.17.14", "source": "registry"},
                {"id": id("cc@1.2.0"), "name": "cc", "version": "1.2.0", "source": "registry"},
                {"id": id("serde_derive@1.0.0"), "name": "serde_derive", "version": "1.0.0", "source": "registry"},
                {"id": id("tempfile@3.0.0"), "name": "tempfile", "version": "3.0.0", "source": "registry"},
            ],
            "resolve": {"nodes": [
                {"id": "path+file:///w#0.1.0", "deps": [
                    {"pkg": id("ring@0.17.14"), "dep_kinds": [{"kind": null}]},
                    {"pkg": id("serde_derive@1.0.0"), "dep_kinds": [{"kind": null}]},
                    {"pkg": id("tempfile@3.0.0"), "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": id("ring@0.17.14"), "deps": [{"pkg": id("cc@1.2.0"), "dep_kinds": [{"kind": "build"}]}]},
            ]},
        });
        let tree = format!("{NAME} v0.1.0 (/w)\nring v0.17.14\nring v0.17.14 (*)\n");
        from_metadata(&metadata, &tree).unwrap()
    }

    /// What cargo-auditable embeds for [`fixture`].
    fn embedded() -> Vec<Embedded> {
        let json = format!(
            r#"{{"format":1,"packages":[
                {{"name":"cc","version":"1.2.0","source":"crates.io","kind":"build"}},
                {{"name":"{NAME}","version":"0.1.0","source":"local","dependencies":[2,3],"root":true}},
                {{"name":"ring","version":"0.17.14","source":"crates.io","dependencies":[0]}},
                {{"name":"serde_derive","version":"1.0.0","source":"crates.io","kind":"build"}}]}}"#
        );
        parse_embedded(json.as_bytes()).unwrap()
    }

    fn sbom(components: &[(&str, &str)]) -> Value {
        let components: Vec<Value> =
            components.iter().map(|(name, version)| serde_json::json!({"name": name, "version": version})).collect();
        serde_json::json!({
            "metadata": {
                "component": {"name": NAME, "version": "0.1.0"},
                "properties": [{"name": "cdx:rustc:sbom:target:triple", "value": "x86_64-unknown-linux-gnu"}],
            },
            "components": components,
        })
    }

    #[test]
    fn the_closures_follow_the_edge_kinds() {
        let closures = fixture();
        assert_eq!(closures.root, krate(NAME, "0.1.0"));
        let normal = BTreeSet::from([krate(NAME, "0.1.0"), krate("ring", "0.17.14"), krate("serde_derive", "1.0.0")]);
        assert_eq!(closures.normal, normal);
        let mut compiled = normal;
        compiled.insert(krate("cc", "1.2.0"));
        assert_eq!(closures.compiled, compiled);
        assert_eq!(closures.linked, BTreeSet::from([krate(NAME, "0.1.0"), krate("ring", "0.17.14")]));
    }

    #[test]
    fn the_embedded_list_matches_cargo_lock() {
        compare_embedded(&embedded(), &fixture()).unwrap();
    }

    #[test]
    fn a_changed_version_in_the_embedded_list_fails() {
        let mut list = embedded();
        list[2].krate.1 = "0.17.13".into();
        let error = compare_embedded(&list, &fixture()).unwrap_err();
        assert!(error.contains("not there: [ring 0.17.13]; missing: [ring 0.17.14]"), "{error}");
    }

    #[test]
    fn a_linked_crate_marked_build_only_fails() {
        let mut list = embedded();
        list[2].runtime = false;
        let error = compare_embedded(&list, &fixture()).unwrap_err();
        assert!(error.contains("not mark these linked crates as runtime ones") && error.contains("ring"), "{error}");
        let mut list = embedded();
        list[1].root = false;
        assert!(compare_embedded(&list, &fixture()).unwrap_err().contains("root"));
    }

    #[test]
    fn the_sbom_matches_cargo_lock_and_the_embedded_list() {
        let sbom = sbom(&[("ring", "0.17.14"), ("serde_derive", "1.0.0")]);
        assert_eq!(compare_sbom(&sbom, "x86_64-unknown-linux-gnu", &fixture(), &embedded()), Ok(2));
        let error = compare_sbom(&sbom, "aarch64-unknown-linux-gnu", &fixture(), &embedded()).unwrap_err();
        assert!(error.contains("not aarch64"), "{error}");
    }

    #[test]
    fn a_changed_version_in_the_sbom_fails() {
        let sbom = sbom(&[("ring", "0.17.15"), ("serde_derive", "1.0.0")]);
        let error = compare_sbom(&sbom, "x86_64-unknown-linux-gnu", &fixture(), &embedded()).unwrap_err();
        assert!(error.contains("not there: [ring 0.17.15]; missing: [ring 0.17.14]"), "{error}");
    }

    #[test]
    fn an_sbom_that_disagrees_with_the_embedded_list_fails() {
        // Both right about Cargo.lock, but the library embeds another ring.
        let sbom = sbom(&[("ring", "0.17.14"), ("serde_derive", "1.0.0")]);
        let mut list = embedded();
        list[2].krate.1 = "0.17.13".into();
        let error = compare_sbom(&sbom, "x86_64-unknown-linux-gnu", &fixture(), &list).unwrap_err();
        assert!(error.contains("runtime crates not in the SBOM: [(\"ring\", \"0.17.13\")]"), "{error}");
    }
}
