#!/usr/bin/env bash
# The main job: build proofjobs, then make a real compressed SP1 proof of the in-repo Fibonacci
# guest (about 1M cycles) in embedded mode — api, dispatcher and task-runner on this machine —
# and verify it with the stock sp1-sdk verifier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --workspace --bins
work=${PROOFJOBS_EXAMPLE_DIR:-/tmp/proofjobs-example}
mkdir -p "$work"
proofctl example fibonacci --mcycles "${MCYCLES:-1}" --out-dir "$work"
proofctl prove --elf "$work/fibonacci.elf" --stdin "$work/fibonacci-stdin.bin" --mode "${MODE:-compressed}" --out "$work/proof.bin"
proofctl verify --elf "$work/fibonacci.elf" --proof "$work/proof.bin"
