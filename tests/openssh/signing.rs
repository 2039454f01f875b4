//! Signing files and git commits with KMS keys held by `ssh-agent` (`ssh-add -s lib`):
//! `ssh-keygen -Y sign` / `-Y verify`, and `git commit -S` with `gpg.format = ssh` verified by
//! `git verify-commit` against an allowed signers file.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cosmian_pkcs11_testbed::{OpenSsh, clean_command, output_text as text};

use crate::{Key, agent_with_provider, case_dir, using_kms};

pub(crate) const SIGNER: &str = "tester@example.com";

/// An allowed signers file trusting `key` as [`SIGNER`].
pub(crate) fn allowed_signers(dir: &Path, key: &Key) -> std::path::PathBuf {
    let file = dir.join("allowed_signers");
    std::fs::write(&file, format!("{SIGNER} {}\n", key.line)).unwrap();
    file
}

/// `ssh-keygen -Y verify` of `message` against its signature, as [`SIGNER`].
pub(crate) fn verify(openssh: &OpenSsh, allowed: &Path, signature: &Path, message: &[u8]) -> Output {
    use std::io::Write;
    let mut child = openssh
        .command("ssh-keygen")
        .args(["-Y", "verify", "-n", "file", "-I", SIGNER, "-f"])
        .arg(allowed)
        .arg("-s")
        .arg(signature)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    child.wait_with_output().unwrap()
}

/// Every key type this OpenSSH loads signs a file through the agent (`ssh-keygen -Y sign -f
/// key.pub`); `ssh-keygen -Y verify` says it is good, and refuses another message.
pub fn ssh_keygen_y_signs_with_every_agent_held_key_type(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "sshsig");
    let agent = agent_with_provider(openssh, &dir, &[]);
    for (name, key) in bed.loaded_keys(openssh) {
        let message = dir.join(format!("{name}.txt"));
        std::fs::write(&message, format!("signed by {name}, a key that never left the KMS\n")).unwrap();
        let key_pub = key.write_pub(&dir.join(format!("{name}.pub")));
        let out = agent
            .command("ssh-keygen")
            .args(["-Y", "sign", "-n", "file", "-f"])
            .arg(&key_pub)
            .arg(&message)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}, {name}: ssh-keygen -Y sign: {}\nagent:\n{}",
            openssh.banner(),
            text(&out),
            agent.log()
        );
        let allowed = allowed_signers(&dir, key);
        let signature = message.with_extension("txt.sig");
        let good = verify(openssh, &allowed, &signature, &std::fs::read(&message).unwrap());
        let said = String::from_utf8_lossy(&good.stdout);
        let expected = format!("Good \"file\" signature for {SIGNER} with {} key", key.sshd_type());
        assert!(good.status.success() && said.contains(&expected), "{name}: {}", text(&good));
        assert!(!verify(openssh, &allowed, &signature, b"another message\n").status.success(), "{name}");
    }
}

/// `git commit -S` with `gpg.format = ssh` and `user.signingkey` the KMS key's public line
/// (`key::` form), the agent signing; `git verify-commit` with the allowed signers file says
/// the signature is good. Ed25519 where this OpenSSH loads it, else P-256.
pub fn git_commits_signed_with_an_agent_held_kms_key_verify(openssh: &'static OpenSsh) {
    let (bed, _kms) = using_kms();
    let dir = case_dir(openssh, "git");
    let agent = agent_with_provider(openssh, &dir, &[]);
    let key = [&bed.keys["ed25519"], &bed.keys["p256"]].into_iter().find(|k| k.loads_on(openssh)).unwrap();
    let allowed = allowed_signers(&dir, key);
    let repo = dir.join("repo");
    let git = |args: &[&str]| -> Output {
        let mut command: Command = clean_command("git");
        command
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=Tester", "-c", &format!("user.email={SIGNER}"), "-c", "gpg.format=ssh"])
            .arg("-c")
            .arg(format!("gpg.ssh.program={}", openssh.program("ssh-keygen").display()))
            .arg("-c")
            .arg(format!("user.signingkey=key::{}", key.line))
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .args(args)
            .env("HOME", &dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("SSH_AUTH_SOCK", agent.sock());
        command.output().unwrap()
    };
    std::fs::create_dir_all(&repo).unwrap();
    assert!(git(&["init", "-q"]).status.success());
    let out = git(&["commit", "-q", "--allow-empty", "-S", "-m", "signed by a key that never left the KMS"]);
    assert!(out.status.success(), "{}: git commit -S: {}\nagent:\n{}", openssh.banner(), text(&out), agent.log());
    let out = git(&["verify-commit", "HEAD"]);
    let said = String::from_utf8_lossy(&out.stderr);
    let expected = format!("Good \"git\" signature for {SIGNER} with {} key", key.sshd_type());
    assert!(
        out.status.success() && said.contains(&expected),
        "{}: git verify-commit: {}",
        openssh.banner(),
        text(&out)
    );
}
