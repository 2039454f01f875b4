# cosmian-pkcs11 @VERSION@: rendered by `cargo xtask dist` from packaging/homebrew/ of
# https://github.com/cosmian/cosmian-pkcs11 (change it there, not in the tap).
class CosmianPkcs11 < Formula
  desc "PKCS#11 provider for OpenSSH with SSH keys held in a Cosmian KMS"
  homepage "https://github.com/cosmian/cosmian-pkcs11"
  url "https://github.com/cosmian/cosmian-pkcs11/releases/download/v@VERSION@/cosmian-pkcs11-@VERSION@.tar.gz"
  sha256 "@SHA256@"
  license "Apache-2.0"

  livecheck do
    url :stable
    strategy :github_latest
  end

  depends_on "go-md2man" => :build
  depends_on "rust" => :build
  depends_on "opensc" => :test

  def install
    system "cargo", "build", "--release", "--locked", "--package", "cosmian-pkcs11",
           "--lib", "--bin", "cosmian-ssh-agent"
    lib.install "target/release/#{shared_library("libcosmian_pkcs11")}"
    bin.install "target/release/cosmian-ssh-agent"
    # The man pages, from the Markdown sources the .deb and .rpm render the same way.
    system "go-md2man", "-in", "docs/man/cosmian-ssh-agent.1.md", "-out", "cosmian-ssh-agent.1"
    system "go-md2man", "-in", "docs/man/cosmian-pkcs11.conf.5.md", "-out", "cosmian-pkcs11.conf.5"
    man1.install "cosmian-ssh-agent.1"
    man5.install "cosmian-pkcs11.conf.5"
    # The licences of the crates built in; Homebrew copies LICENSE (Apache-2.0) into the
    # prefix itself, as it does every licence file at the top of the source.
    doc.install "THIRDPARTY.yml"
  end

  def caveats
    provider = "#{opt_lib}/#{shared_library("libcosmian_pkcs11")}"
    text = <<~EOS
      ssh -I and PKCS11Provider load the module from any path:
        ssh -I #{provider} user@host

      ssh-agent only loads providers under /usr/lib*/ and /usr/local/lib*/, checked after
      resolving symlinks, and a Homebrew install resolves into #{HOMEBREW_CELLAR}: run an
      agent that also allows it, then add the provider:
        eval "$(ssh-agent -P '/usr/lib*/*,/usr/local/lib*/*,#{HOMEBREW_CELLAR}/cosmian-pkcs11/*')"
        ssh-add -s #{provider}

      The module reads the ckms configuration: ~/.cosmian/kms.toml.
    EOS
    text += <<~EOS

      cosmian-ssh-agent serves the same keys to any ssh client, no provider to load. Start it
      with your session (launchd on macOS, a systemd user service on Linux):
        brew services start cosmian-pkcs11
      or for this shell only:
        eval "$(#{opt_bin}/cosmian-ssh-agent -s)"
    EOS
    if OS.linux?
      text += <<~EOS
        The service listens on $XDG_RUNTIME_DIR/cosmian-ssh-agent/socket:
          export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/cosmian-ssh-agent/socket"
      EOS
    end
    if OS.mac?
      text += <<~EOS

        macOS: Apple's own /usr/bin/ssh (macOS 15.2 and later) runs PKCS#11 providers in a
        system helper that refuses every third-party library, signed or not, but it talks to
        cosmian-ssh-agent. With the service started, add to ~/.ssh/config:
          IdentityAgent ~/Library/Caches/cosmian-ssh-agent/socket
        For ssh -I, use Homebrew's OpenSSH, for ssh, ssh-add and ssh-agent alike:
          brew install openssh
          #{HOMEBREW_PREFIX}/bin/ssh -I #{provider} user@host
        and start #{HOMEBREW_PREFIX}/bin/ssh-agent with -P as above (the agent launchd starts
        is Apple's). The signed .pkg of the release installs a real file into /usr/local/lib,
        which every ssh-agent accepts without -P.
      EOS
    end
    text
  end

  service do
    run [opt_bin/"cosmian-ssh-agent", "-D"]
    keep_alive true
  end

  test do
    # OpenSC's pkcs11-tool, a PKCS#11 client, loads the module as ssh does: C_Initialize reads
    # ~/.cosmian/kms.toml, C_GetInfo names the library and its version, C_GetSlotList and
    # C_GetTokenInfo show the token named after the configured KMS. None of these calls
    # contacts the KMS (the test has no network).
    (testpath/".cosmian").mkpath
    config = testpath/".cosmian/kms.toml"
    config.write <<~TOML
      [http_config]
      server_url = "https://127.0.0.1:9"
      access_token = "not-a-token"
    TOML
    config.chmod 0600
    pkcs11_tool = Formula["opensc"].opt_bin/"pkcs11-tool"
    provider = lib/shared_library("libcosmian_pkcs11")

    info = shell_output("#{pkcs11_tool} --module #{provider} --show-info")
    assert_match(/^Manufacturer\s+cosmian\s*$/, info)
    assert_match(/^Library\s+Cosmian KMS PKCS#11 provider \(ver #{Regexp.escape(version.major_minor.to_s)}\)/, info)

    slots = shell_output("#{pkcs11_tool} --module #{provider} --list-slots")
    assert_match(/token label\s*: Cosmian KMS 127\.0\.0\.1:9\s*$/, slots)

    assert_match version.to_s, shell_output("#{bin}/cosmian-ssh-agent --version")
  end
end
