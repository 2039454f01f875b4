#!/usr/bin/env bash
# Installs what `cargo xtask dist` needs to build and check the release artifacts, and caches
# the slow parts outside the work tree, like scripts/install-test-bed.sh:
#   - Debian packages: lintian, rpm (rpmbuild, rpmsign), rpmlint, ruby, ruby-minitest,
#     rubocop, opensc and p11-kit-modules (the Homebrew formula's checks and its `test do`),
#     binutils (objdump), python3-venv; apt-utils, createrepo-c, dnf, gnupg (the signed apt and
#     dnf repositories and their tests); for the macOS cross build
#     (`cargo xtask dist-macos-cross`): clang-16 (the link driver), lld-16 (ld64.lld), llvm-16
#     (llvm-otool, llvm-nm, llvm-objdump, llvm-lipo: the checks of the Mach-O file); p7zip-full
#     and cpio (the .pkg unpacked by tools that are not its writer); qemu-user (qemu-aarch64:
#     `cargo xtask package-test` runs Debian's arm64 ssh-keygen on the arm64 library); systemd
#     (systemd-analyze verifies the agent's user units, systemd-socket-activate starts the
#     installed agent as its socket unit does; nothing is started at install); go-md2man
#     (renders docs/man/*.md into the packages' man pages) and man-db (`man --warnings` checks
#     them; `cargo xtask package-test` asks `man` for the installed ones).
#   - dpkg's foreign architecture arm64 (a SYSTEM CHANGE: `dpkg --add-architecture arm64`, then
#     `apt-get update` indexes Debian's arm64 packages too; nothing arm64 is installed). The
#     arm64 run check (xtask/src/package/arm64.rs) downloads Debian's arm64 openssh-client and
#     its libraries with `apt-get download PKG:arm64` and unpacks them into a sysroot cached
#     in $COSMIAN_PKCS11_CACHE/arm64-sysroot. Undo: `dpkg --remove-architecture arm64`.
#   - rustup: the aarch64-unknown-linux-gnu standard library (the arm64 Linux library), and the
#     aarch64-apple-darwin and x86_64-apple-darwin ones.
#   - PyPI, in a venv at $COSMIAN_PKCS11_CACHE/venv: ziglang (the linker and the glibc 2.28
#     stubs cargo-zigbuild uses; also compiles the Mach-O signing fixture), PyYAML.
#   - crates.io, into $COSMIAN_PKCS11_CACHE/tools/bin: cargo-zigbuild, cargo-bundle-licenses,
#     rcodesign (apple-codesign: a quick build for signing only, see RCODESIGN_ARGS below);
#     the supply-chain tools: cargo-auditable (the dependency list embedded in the release
#     library and agent), cargo-cyclonedx (the SBOM), cargo-deny (the license and source
#     policy of `cargo xtask tidy`, deny.toml).
# On macOS (`cargo xtask dist-macos`), only rcodesign, with notarization.
# With arguments, only the crates.io tools they name (e.g. `cargo-deny`, what `cargo xtask tidy`
# asks for): nothing on the system, on Linux and on macOS alike.
# Every version is pinned. Idempotent: a second run finds everything in place in a second.
# Prints the two folders to put first on PATH, then the cache folder, as KEY=VALUE lines on its
# last three lines.
set -euo pipefail

ZIGBUILD_VERSION=0.24.1
BUNDLE_LICENSES_VERSION=5.0.0
APPLE_CODESIGN_VERSION=0.29.0
ZIGLANG_VERSION=0.15.2
PYYAML_VERSION=6.0.2
AUDITABLE_VERSION=0.7.7
CYCLONEDX_VERSION=0.5.9
DENY_VERSION=0.20.2
# The crates.io tools named as arguments (ALL empty); no argument: everything (ALL=1).
ONLY=" $* "
ALL=""; [ $# -gt 0 ] || ALL=1
# rcodesign, on Linux, signs and verifies the Mach-O fixture of `cargo xtask package-test`: it
# is built without the default `notarize` feature (the AWS SDK: Apple's notary service uploads
# to S3) and unoptimized, without debug info, which signs a fixture as fast and builds in 40%
# of the CPU time (measured: 166 s of CPU against 424 s for a release build without
# `notarize`; the release build with `notarize` took 753 s wall on a loaded machine).
# On macOS (`cargo xtask dist-macos`: notarization, real artifacts), the full release build.
MACOS=""; [ "$(uname -s)" = Darwin ] && MACOS=1
if [ -n "$MACOS" ]; then
  default_args=""
else
  default_args="--no-default-features --debug --config profile.dev.debug=0"
fi
RCODESIGN_ARGS="${RCODESIGN_ARGS-$default_args}"

CACHE="${COSMIAN_PKCS11_CACHE:-$HOME/.cache/cosmian-pkcs11}"
TOOLS="$CACHE/tools"
VENV="$CACHE/venv"
log() { printf '[packaging-tools] %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------------------
if [ -n "$ALL" ] && [ -z "$MACOS" ] && command -v dpkg-query >/dev/null; then
  # The arm64 index first, so that an `apt-get update` below (when a package is missing)
  # refreshes it too. Known when apt has a candidate for an arm64 package.
  arm64_candidate="$(apt-cache policy openssh-client:arm64 2>/dev/null || true)"
  if ! grep -qx arm64 <<<"$(dpkg --print-foreign-architectures)" \
    || ! grep -q 'Candidate: [0-9]' <<<"$arm64_candidate"; then
    log "dpkg --add-architecture arm64; apt-get update (Debian's arm64 packages for the arm64 run check)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq >&2
  fi
  "$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" lintian rpm rpmlint ruby ruby-minitest rubocop opensc p11-kit-modules binutils python3-venv \
    clang-16 lld-16 llvm-16 p7zip-full cpio qemu-user apt-utils gnupg createrepo-c dnf systemd \
    go-md2man man-db
fi

# --- rustup -----------------------------------------------------------------------------
# On macOS too (dist-macos builds both architectures). Quick when they are there.
if [ -n "$ALL" ]; then
  targets=(aarch64-apple-darwin x86_64-apple-darwin)
  [ -n "$MACOS" ] || targets+=(aarch64-unknown-linux-gnu)
  installed_targets="$(rustup target list --installed)"
  for target in "${targets[@]}"; do
    grep -qx "$target" <<<"$installed_targets" || { log "rustup target add $target"; rustup target add "$target" >&2; }
  done
fi

# --- PyPI -------------------------------------------------------------------------------
venv_ok() {
  local frozen; frozen="$("$VENV/bin/python" -m pip freeze 2>/dev/null)" || return 1
  grep -qx "ziglang==$ZIGLANG_VERSION" <<<"$frozen" && grep -qx "PyYAML==$PYYAML_VERSION" <<<"$frozen"
}
if [ -n "$ALL" ] && [ -z "$MACOS" ] && ! venv_ok; then
  log "installing ziglang $ZIGLANG_VERSION and PyYAML $PYYAML_VERSION into $VENV"
  # Debian's python3, not a pyenv or conda shim that may lack venv.
  python=/usr/bin/python3; [ -x "$python" ] || python=python3
  "$python" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "pyyaml==$PYYAML_VERSION" >&2
fi

# --- crates.io --------------------------------------------------------------------------
# $1 crate, $2 version, $3 binary, then extra `cargo install` arguments.
cargo_tool() {
  local crate="$1" version="$2" bin="$3"; shift 3
  local args="$*"
  [ -n "$ALL" ] || [[ "$ONLY" == *" $crate "* ]] || return 0
  local stamp="$TOOLS/.$crate-$version${args// /}"
  if [ ! -x "$TOOLS/bin/$bin" ] || [ ! -e "$stamp" ]; then
    log "building $crate $version from crates.io"
    local start=$SECONDS
    # In cargo's own temporary folder, not the caller's CARGO_TARGET_DIR.
    env -u CARGO_TARGET_DIR cargo install --locked --force "$crate@$version" --root "$TOOLS" "$@" >&2
    touch "$stamp"
    log "built $crate in $((SECONDS - start)) s"
  fi
}
# On macOS, only what the arguments name (`cargo xtask tidy` asks for cargo-deny).
if [ -z "$MACOS" ] || [ -z "$ALL" ]; then
  cargo_tool cargo-zigbuild "$ZIGBUILD_VERSION" cargo-zigbuild
  cargo_tool cargo-bundle-licenses "$BUNDLE_LICENSES_VERSION" cargo-bundle-licenses
  cargo_tool cargo-auditable "$AUDITABLE_VERSION" cargo-auditable
  cargo_tool cargo-cyclonedx "$CYCLONEDX_VERSION" cargo-cyclonedx
  cargo_tool cargo-deny "$DENY_VERSION" cargo-deny
fi
# shellcheck disable=SC2086 # RCODESIGN_ARGS is a list of arguments
cargo_tool apple-codesign "$APPLE_CODESIGN_VERSION" rcodesign --bin rcodesign $RCODESIGN_ARGS

log "cargo tools: $TOOLS/bin"
log "venv:        $VENV/bin"
echo "PACKAGING_TOOLS_BIN=$TOOLS/bin"
echo "PACKAGING_VENV_BIN=$VENV/bin"
echo "PACKAGING_CACHE=$CACHE"
