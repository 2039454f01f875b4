#!/usr/bin/env bash
# Installs what the tests and the demo need, and caches the slow parts outside the work tree:
#   - Debian packages: OpenSSH client and server, OpenSC's pkcs11-tool, OpenSSL headers.
#   - The real Cosmian KMS server 5.28.0 (non-FIPS) and ckms 5.28.0, built from crates.io
#     into $COSMIAN_PKCS11_CACHE (default ~/.cache/cosmian-pkcs11/bin).
#   - A current OpenSSH built from source (scripts/install-openssh.sh) into
#     $COSMIAN_PKCS11_CACHE/openssh-VERSION: the tests run against it and Debian's 9.2.
# Idempotent: a second run finds everything in place and returns in a second.
# Prints the two binaries' paths and OpenSSH's prefix as KEY=VALUE lines on its last three
# lines of stdout.
set -euo pipefail

KMS_VERSION=5.28.0
CACHE="${COSMIAN_PKCS11_CACHE:-$HOME/.cache/cosmian-pkcs11}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
log() { printf '[test-bed] %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------------------
# keyutils, gnome-keyring, libsecret-tools, dbus: the OS credential stores the provider reads
# (`keyctl`, `secret-tool`, inside `dbus-run-session`); openssl: the tests' certificates.
# gnutls-bin (p11tool), libengine-pkcs11-openssl (libp11's OpenSSL engine), libnss3-tools
# (modutil, certutil), p11-kit: the other PKCS#11 clients of tests/outside_clients; strace
# counts the threads a client's process creates.
"$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" openssh-client openssh-server opensc libssl-dev pkg-config \
  keyutils gnome-keyring libsecret-tools dbus openssl gnutls-bin libengine-pkcs11-openssl libnss3-tools p11-kit \
  strace postgresql haproxy

# The KMS crypto crate's build script tries to download OpenSSL first; pointing OPENSSL_DIR at
# the system OpenSSL (laid out the way it checks) skips that.
openssl_dir() {
  # macOS (the release workflow's test job): Homebrew's OpenSSL is laid out as it expects.
  if [ "$(uname -s)" = Darwin ]; then brew --prefix openssl@3; return; fi
  local d="$CACHE/openssl-system"
  local multiarch; multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
  mkdir -p "$d"
  ln -sfn /usr/include "$d/include"
  ln -sfn "/usr/lib/$multiarch" "$d/lib"
  ln -sfn /usr/lib/ssl "$d/ssl"
  echo "$d"
}

# --- The KMS server ---------------------------------------------------------------------
KMS_BIN="$BIN/cosmian_kms-$KMS_VERSION"
if [ ! -x "$KMS_BIN" ]; then
  log "building cosmian_kms_server $KMS_VERSION (non-FIPS) from crates.io: about 12 minutes on 2 cores"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # Fetch the published source through cargo itself: `cargo install` of the crate with the
  # non-fips feature downloads it, then stops on the feature bug described in docs/kms-wire.md.
  cargo install "cosmian_kms_server@$KMS_VERSION" --locked --features non-fips --root "$work/root" \
    >"$work/fetch.log" 2>&1 || true
  crate="$(ls -1 "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"cosmian_kms_server-$KMS_VERSION.crate" 2>/dev/null | head -n1)"
  [ -n "$crate" ] || { cat "$work/fetch.log" >&2; log "could not fetch cosmian_kms_server $KMS_VERSION"; exit 1; }
  tar -xzf "$crate" -C "$work"
  src="$work/cosmian_kms_server-$KMS_VERSION"
  # The one-line fix: drop the dev-dependency's feature from [features] non-fips.
  sed -i 's#"cosmian_kms_client_utils/non-fips",\{0,1\}##' "$src/Cargo.toml"
  OPENSSL_DIR="$(openssl_dir)" cargo install --locked --features non-fips --path "$src" \
    --root "$work/root" >&2
  install -m 0755 "$work/root/bin/cosmian_kms" "$KMS_BIN"
  rm -rf "$work"; trap - EXIT
fi

# --- ckms -------------------------------------------------------------------------------
CKMS_BIN="$BIN/ckms-$KMS_VERSION"
if [ ! -x "$CKMS_BIN" ]; then
  log "building ckms $KMS_VERSION (non-FIPS) from crates.io"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  OPENSSL_DIR="$(openssl_dir)" cargo install --locked "ckms@$KMS_VERSION" --features non-fips \
    --root "$work/root" >&2
  install -m 0755 "$work/root/bin/ckms" "$CKMS_BIN"
  rm -rf "$work"; trap - EXIT
fi

# --- OpenSSH, current release (about 3 minutes) ------------------------------------------
OPENSSH_LINE="$(bash "$(dirname "${BASH_SOURCE[0]}")/install-openssh.sh" | tail -n1)"

# --- valgrind, python-pkcs11, cargo-fuzz (reliability tests and fuzzing) -----------------
# Linux only: the macOS workflow runs the cryptoki and OpenSSH tests, not those.
[ "$(uname -s)" = Darwin ] || bash "$(dirname "${BASH_SOURCE[0]}")/install-reliability-tools.sh" >&2

log "KMS server: $KMS_BIN"
log "ckms:       $CKMS_BIN"
echo "COSMIAN_KMS_SERVER=$KMS_BIN"
echo "COSMIAN_CKMS=$CKMS_BIN"
echo "$OPENSSH_LINE"
