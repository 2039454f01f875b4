#!/usr/bin/env bash
# Builds a current OpenSSH for the tests (Debian 12 ships 9.2, which takes no Ed25519 key from a
# provider and has no certificates for provider keys in the agent) and caches it outside the
# work tree, in $COSMIAN_PKCS11_CACHE/openssh-VERSION (default ~/.cache/cosmian-pkcs11).
#
# The source is the upstream tarball of Debian's `openssh` source package (unstable), fetched
# from the Debian archive pool ($DEBIAN_MIRROR, default http://deb.debian.org/debian) and
# checked against a pinned SHA-256. Its `.dsc` and signature are not on the mirror any more, so
# the pin is the check. Then `./configure --prefix=CACHE/openssh-VERSION && make &&
# make install-nokeys`: ssh, sshd, ssh-agent, ssh-add, ssh-keygen in bin/ and sbin/,
# ssh-pkcs11-helper and sshd-session in libexec/.
#
# Idempotent: a complete install (marked by .installed) is kept. A failure exits non-zero: the
# tests need this OpenSSH and must fail without it, never skip.
# Prints `COSMIAN_OPENSSH=PREFIX` on its last line of stdout.
set -euo pipefail

VERSION=10.3p1
SHA256=56682a36bb92dcf4b4f016fd8ec8e74059b79a8de25c15d670d731e7d18e45f4
CACHE="${COSMIAN_PKCS11_CACHE:-$HOME/.cache/cosmian-pkcs11}"
PREFIX="$CACHE/openssh-$VERSION"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="openssh_$VERSION.orig.tar.gz"
log() { printf '[openssh] %s\n' "$*" >&2; }

# macOS (the release workflow's test job): Homebrew's OpenSSH is the current one there, and the
# one users run (Apple's /usr/bin/ssh refuses third-party providers since macOS 15.2).
if [ "$(uname -s)" = Darwin ]; then
  PREFIX="$(brew --prefix openssh)"
  [ -x "$PREFIX/bin/ssh" ] || { log "brew install openssh first"; exit 1; }
  echo "COSMIAN_OPENSSH=$PREFIX"
  exit 0
fi

if [ ! -f "$PREFIX/.installed" ]; then
  "$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" \
    build-essential curl ca-certificates libssl-dev zlib1g-dev
  log "building OpenSSH $VERSION into $PREFIX: about 3 minutes on 2 cores"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  url="$MIRROR/pool/main/o/openssh/$TARBALL"
  curl -fsSL --retry 3 -o "$work/$TARBALL" "$url" \
    || { log "cannot fetch $url (moved on in unstable? bump VERSION and SHA256)"; exit 1; }
  echo "$SHA256  $work/$TARBALL" | sha256sum -c --quiet - >&2 \
    || { log "$TARBALL does not match its pinned SHA-256"; exit 1; }
  tar -xzf "$work/$TARBALL" -C "$work"
  rm -rf "$PREFIX"
  (
    cd "$work/openssh-$VERSION"
    [ -x configure ] || autoreconf -i >&2
    # /run/sshd: the privilege separation directory Debian's sshd uses, which the test bed
    # creates before starting any sshd.
    ./configure --prefix="$PREFIX" --with-privsep-path=/run/sshd >"$work/configure.log" 2>&1 \
      || { tail -n 30 "$work/configure.log" >&2; exit 1; }
    make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
    make install-nokeys >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }
  )
  "$PREFIX/bin/ssh" -V 2>&1 | grep -q "OpenSSH_$VERSION" \
    || { log "the installed ssh is not OpenSSH $VERSION"; exit 1; }
  touch "$PREFIX/.installed"
  rm -rf "$work"; trap - EXIT
fi

log "OpenSSH $VERSION: $PREFIX"
echo "COSMIAN_OPENSSH=$PREFIX"
