//! The apt repository: the .debs in `pool/main/c/cosmian-pkcs11/`, an index per architecture
//! (`dists/stable/main/binary-{amd64,arm64}/Packages` and `Packages.gz`, by `apt-ftparchive
//! packages`), and `dists/stable/Release` (`apt-ftparchive release`) signed twice: `InRelease`
//! (clear-signed, what apt reads first) and `Release.gpg` (detached, for older clients).
//! SHA-256 and SHA-512 only (no MD5, no SHA-1).

use std::path::{Path, PathBuf};

use super::super::elf::Arch;
use super::super::{NAME, Tools, capture, gzip, write};
use super::signing::SigningKey;

/// The suite and the component: `Suites: stable`, `Components: main` in the `.sources`.
pub const SUITE: &str = "stable";
pub const COMPONENT: &str = "main";

/// Where the .debs go, under the apt repository's root.
pub fn pool(apt: &Path) -> PathBuf {
    apt.join(format!("pool/{COMPONENT}/{}/{NAME}", &NAME[..1]))
}

/// `dists/stable` under the apt repository's root.
pub fn suite_dir(apt: &Path) -> PathBuf {
    apt.join("dists").join(SUITE)
}

/// `apt-ftparchive` with the hashes apt uses today.
fn ftparchive(tools: &Tools, apt: &Path) -> std::process::Command {
    let mut command = tools.command("apt-ftparchive");
    command.current_dir(apt).args(["-o", "APT::FTPArchive::MD5=false", "-o", "APT::FTPArchive::SHA1=false"]);
    command
}

/// Indexes what the pool holds, for every architecture, and signs the `Release` file.
pub fn index_and_sign(tools: &Tools, key: &SigningKey, apt: &Path) -> Result<(), String> {
    let suite = suite_dir(apt);
    for arch in Arch::ALL.map(Arch::deb) {
        let packages = capture(ftparchive(tools, apt).args(["--arch", arch, "packages", "pool"]))?;
        let dir = suite.join(format!("{COMPONENT}/binary-{arch}"));
        write(&dir.join("Packages"), &packages)?;
        write(&dir.join("Packages.gz"), gzip(packages.as_bytes())?)?;
    }
    // The previous signed files go first: `release` would hash an old `Release` too.
    for old in ["Release", "InRelease", "Release.gpg"] {
        let _ = std::fs::remove_file(suite.join(old));
    }
    let architectures = Arch::ALL.map(Arch::deb).join(" ");
    let field = |name: &str, value: &str| format!("APT::FTPArchive::Release::{name}={value}");
    let mut release = ftparchive(tools, apt);
    for (name, value) in [
        ("Origin", "Cosmian"),
        ("Label", NAME),
        ("Suite", SUITE),
        ("Codename", SUITE),
        ("Architectures", architectures.as_str()),
        ("Components", COMPONENT),
        ("Description", "cosmian-pkcs11: PKCS#11 provider for SSH keys held in a Cosmian KMS"),
    ] {
        release.arg("-o").arg(field(name, value));
    }
    let text = capture(release.arg("release").arg(format!("dists/{SUITE}")))?;
    let release = suite.join("Release");
    write(&release, text)?;
    key.sign(tools, &release, &suite.join("InRelease"), true)?;
    key.sign(tools, &release, &suite.join("Release.gpg"), false)
}
