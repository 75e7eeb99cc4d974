#!/usr/bin/env bash
# Packs what the GPU check (scripts/gpu-check.sh) needs on a GPU machine that has no Rust
# toolchain and no network: the CUDA task-runner (which is also sp1-gpu-direct, SP1's GPU prover
# called directly, under that name) and proofctl, stripped and xz-compressed, plus a
# self-contained PostgreSQL (the
# `pgserver` wheel from PyPI: server binaries with no system libraries beyond zlib and glibc) for
# embedded mode. Builds nothing: run scripts/build-cuda.sh and `cargo build --release -p proofctl` first.
#
#   scripts/gpu-pack.sh [DIR]     # default .gpu (keep it out of git: it is a build output)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DIR=${1:-.gpu}
mkdir -p "$DIR"
bin="$CARGO_TARGET_DIR/release"
for name in task-runner-cuda proofctl; do
  [ -x "$bin/$name" ] || { echo "gpu-pack: $bin/$name is missing (scripts/build-cuda.sh, cargo build --release -p proofctl)" >&2; exit 1; }
  strip -o "$DIR/$name" "$bin/$name"
  xz -T2 -6 -f "$DIR/$name"
done
wheels="$HOME/.cache/proofjobs/pgserver"
if ! ls "$wheels"/pgserver-0.1.4-*.whl >/dev/null 2>&1; then
  pip3 download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$wheels" pgserver==0.1.4
fi
# Only what embedded mode runs (postgres, initdb, pg_ctl, their libraries and share files).
tmp=$(mktemp -d)
python3 -m zipfile -e "$wheels"/pgserver-0.1.4-*.whl "$tmp"
chmod +x "$tmp"/pgserver/pginstall/bin/*   # zipfile drops the mode bits
tar -C "$tmp" -cf - pgserver/pginstall/bin/postgres pgserver/pginstall/bin/initdb pgserver/pginstall/bin/pg_ctl \
  pgserver/pginstall/lib/postgresql pgserver/pginstall/share pgserver.libs | xz -T2 -9 > "$DIR/postgres.tar.xz"
rm -rf "$tmp"
du -sh "$DIR"/* >&2
echo "gpu-pack: $(du -sb "$DIR" | cut -f1) bytes in $DIR (the device tool carries at most 64 MiB with the tree)" >&2
