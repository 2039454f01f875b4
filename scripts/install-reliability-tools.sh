#!/usr/bin/env bash
# Installs what the reliability tests and the fuzzing need, idempotently, caching the slow parts
# outside the work tree (COSMIAN_PKCS11_CACHE, default ~/.cache/cosmian-pkcs11):
#   - Debian packages: valgrind (tests/unload.rs), python3-venv (for the venv below), g++
#     (libFuzzer, built by cargo-fuzz).
#   - python-pkcs11 in a venv: $CACHE/python-venv (tests/outside_clients.rs).
#   - cargo-fuzz: $CACHE/tools/bin/cargo-fuzz (cargo xtask fuzz).
# Called by scripts/install-test-bed.sh; writes nothing on stdout (its caller's stdout is parsed).
set -euo pipefail

CACHE="${COSMIAN_PKCS11_CACHE:-$HOME/.cache/cosmian-pkcs11}"
PYTHON_PKCS11_VERSION=0.10.1
CARGO_FUZZ_VERSION=0.13.2
log() { printf '[reliability-tools] %s\n' "$*" >&2; }
exec 3>&1 1>&2 # everything below logs to stderr

# --- Debian packages --------------------------------------------------------------------
"$(dirname "${BASH_SOURCE[0]}")/install-debian-packages.sh" valgrind python3-venv g++

# --- python-pkcs11 ----------------------------------------------------------------------
VENV="$CACHE/python-venv"
if ! "$VENV/bin/python" -c "import pkcs11, sys, importlib.metadata as m; sys.exit(m.version('python-pkcs11') != '$PYTHON_PKCS11_VERSION')" 2>/dev/null; then
  log "installing python-pkcs11 $PYTHON_PKCS11_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "python-pkcs11==$PYTHON_PKCS11_VERSION"
fi

# --- cargo-fuzz ---------------------------------------------------------------------------
TOOLS="$CACHE/tools"
if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "building cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (about 2 minutes on 2 cores)"
  cargo install --quiet --locked "cargo-fuzz@$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi

log "python-pkcs11: $VENV/bin/python"
log "cargo-fuzz:    $TOOLS/bin/cargo-fuzz"
