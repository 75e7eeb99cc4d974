#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts the real services (PostgreSQL, Redis),
# builds every binary the tests run as processes, and runs all tests. Heavy proving tests
# serialise themselves (one SP1 prover at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
cargo build --release --workspace --bins
cargo test --release --workspace --no-fail-fast "$@"
