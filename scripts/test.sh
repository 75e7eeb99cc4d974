#!/usr/bin/env bash
# The whole test suite. Installs what is missing; runs the fast tier first (fmt, clippy -D
# warnings, unused dependencies, unit tests: scripts/fast-checks.sh), which fails the run before
# any service starts; then starts the real services (PostgreSQL, Redis, and a real Kubernetes
# control plane, built from the Go module proxy on first use and cached in ~/.cache/proofjobs/k8s),
# builds every binary the tests run as processes, and runs the tests that need them. Heavy proving
# tests serialise themselves (one SP1 prover at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fast-checks.sh
eval "$(scripts/services.sh start)"
trap 'tests/k8s/cluster.sh reset; scripts/services.sh stop' EXIT
started=$(date +%s)
eval "$(tests/k8s/cluster.sh start)"
echo "control plane up in $(( $(date +%s) - started )) s (includes its build when not cached)" >&2
cargo build --release --workspace --bins
# Stock sp1-sdk with its network feature, in a workspace of its own (tests/network-client): the
# client the network API tests run. Shares the target dir; ~7 min the first time, ~1 s after.
cargo build --release --locked --manifest-path tests/network-client/Cargo.toml
# The CUDA task-runner (SP1's GPU prover, CUDA 13.0 from PyPI) is built on every run so it cannot
# rot: ~1 s when cached, ~25 min the first time. tests/tests/gpu.rs runs it.
scripts/build-cuda.sh
# Runners load SP1's recursion keys from this cache; the first run computes it (~3 min, ~7 GB in
# ~/.cache/proofjobs/sp1-keys), later runs verify it (~30 s).
warm-keys
# The unit tiers ran above; here the tests that need the services: every integration test target,
# and the unit tests in `live` modules.
status=0
cargo test --release -p proofjobs-pipeline --lib --no-fail-fast -- live:: || status=$?
cargo test --release --workspace --no-fail-fast --test '*' "$@" || status=$?
exit $status
