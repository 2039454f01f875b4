#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet (apt-get, through
# sudo when not root); does nothing when all are there. Used by the other install scripts.
# With COSMIAN_PKCS11_NO_SYSTEM_CHANGES set (`cargo xtask test --local`) it installs nothing and
# fails, naming the missing packages.
set -euo pipefail
if ! command -v dpkg-query >/dev/null; then
  # macOS (the release workflow's test job installs its packages with brew): nothing to do.
  [ "$(uname -s)" = Darwin ] && exit 0
  printf '[debian-packages] not a Debian system: install %s yourself\n' "$*" >&2
  exit 1
fi
need_pkgs=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
[ ${#need_pkgs[@]} -gt 0 ] || exit 0
if [ -n "${COSMIAN_PKCS11_NO_SYSTEM_CHANGES:-}" ]; then
  # `cargo xtask test --local`: nothing is installed on the system.
  printf '[debian-packages] missing: %s. Install them (sudo apt-get install %s), or run `cargo xtask test`, which does\n' \
    "${need_pkgs[*]}" "${need_pkgs[*]}" >&2
  exit 1
fi
printf '[debian-packages] installing %s\n' "${need_pkgs[*]}" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
