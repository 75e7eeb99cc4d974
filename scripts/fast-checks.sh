#!/usr/bin/env bash
# The fast tier: formatting, lints, unused dependencies and the unit tests that need no service.
# scripts/test.sh runs it before starting PostgreSQL, Redis or the control plane, so a slip here
# fails the run in minutes. Unit tests that talk to a real service live in modules named `live`
# and run with the full suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
step() { echo "fast-checks: $*" >&2; }
step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path tests/network-client/Cargo.toml --check
step "cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
step "cargo machete (unused dependencies)"
command -v cargo-machete >/dev/null || cargo install cargo-machete --locked --version 0.9.2
cargo machete
step "unit tests (no services)"
cargo test --release --workspace --lib --bins --locked -- --skip live::
