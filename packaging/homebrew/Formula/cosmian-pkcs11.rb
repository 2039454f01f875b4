# Template: `cargo xtask dist` renders it into target/dist/homebrew/Formula/cosmian-pkcs11.rb
# with the version and the SHA-256 of the source tarball it makes (git archive), and the
# release workflows publish both; copy the rendered file into the tap (Formula/).
class CosmianPkcs11 < Formula
  desc "PKCS#11 provider for OpenSSH with SSH keys held in a Cosmian KMS"
  homepage "https://github.com/cosmian/cosmian-pkcs11"
  url "https://github.com/cosmian/cosmian-pkcs11/releases/download/v@VERSION@/cosmian-pkcs11-@VERSION@.tar.gz"
  sha256 "@SHA256@"
  license "Apache-2.0"

  depends_on "rust" => :build

  def install
    system "cargo", "build", "--release", "--locked", "--package", "cosmian-pkcs11", "--lib"
    lib.install "target/release/#{shared_library("libcosmian_pkcs11")}"
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
    if OS.mac?
      text += <<~EOS

        macOS: Apple's own /usr/bin/ssh (macOS 15.2 and later) runs PKCS#11 providers in a
        system helper that refuses every third-party library, signed or not. Use Homebrew's
        OpenSSH, for ssh, ssh-add and ssh-agent alike:
          brew install openssh
          #{HOMEBREW_PREFIX}/bin/ssh -I #{provider} user@host
        and start #{HOMEBREW_PREFIX}/bin/ssh-agent with -P as above (the agent launchd starts
        is Apple's). The signed .pkg of the release installs a real file into /usr/local/lib,
        which every ssh-agent accepts without -P.
      EOS
    end
    text
  end

  test do
    require "fiddle"
    module_path = lib/shared_library("libcosmian_pkcs11")
    library = Fiddle.dlopen(module_path.to_s)
    # CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR)
    get_function_list = Fiddle::Function.new(library["C_GetFunctionList"], [Fiddle::TYPE_VOIDP], Fiddle::TYPE_LONG)
    list = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP)
    assert_equal 0, get_function_list.call(list) # CKR_OK
    # The function list starts with its CK_VERSION: cryptoki 2.40.
    assert_equal [2, 40], list.ptr[0, 2].unpack("CC")
  end
end
