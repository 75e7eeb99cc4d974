#!/usr/bin/env bash
# Installs what building and testing proofjobs needs from Debian's packages, when missing:
# protoc (sp1-prover-types' build script), clang + lld (the in-repo guest programs),
# PostgreSQL and Redis (state, artifacts, and the test services).
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
{ command -v clang >/dev/null || command -v clang-14 >/dev/null; } || need+=(clang)
{ command -v ld.lld >/dev/null || command -v ld.lld-14 >/dev/null; } || need+=(lld)
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged servers; ours run in private directories instead.
  $SUDO systemctl disable --now redis-server postgresql >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
