//! `cosmian-ssh-agent`: an ssh-agent serving the KMS keys the provider offers (see
//! `src/agent` and `man cosmian-ssh-agent`). All of it lives in the library, so that the agent
//! and the PKCS#11 provider share one configuration, KMS client, key list and signing code.

fn main() -> std::process::ExitCode {
    cosmian_pkcs11::agent::main(&mut std::io::stdout(), &mut std::io::stderr())
}
