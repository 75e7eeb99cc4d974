#!/usr/bin/env bash
# The GPU acceptance run, on a machine with an NVIDIA GPU (H100/H200 class) and nothing built
# there: unpacks what scripts/gpu-pack.sh packed, then benchmarks the Fibonacci guest at ~5M and
# ~50M cycles, core and compressed, through the embedded pipeline with the CUDA task-runner and,
# side by side in the same run, with SP1's GPU prover called directly (sp1-gpu-direct). Every
# proof is verified with the stock sp1-sdk verifier, a tampered copy must be refused, and the
# public values must equal the CPU executor's. Results go to $OUT (or /tmp/gpu-check).
#
#   scripts/gpu-check.sh [PACKED_DIR]     # default .gpu; about 5-8 minutes on an H200
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=$(cd "${1:-.gpu}" && pwd)
OUT=${OUT:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/proofjobs-gpu}
mkdir -p "$OUT" "$WORK/bin"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
started=$(date +%s)
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
uname -r; nproc; free -g | head -2

echo "== unpack"
for name in task-runner-cuda proofctl; do
  if command -v xz >/dev/null; then xz -dc "$PACK/$name.xz" > "$WORK/bin/$name"
  else python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$PACK/$name.xz" > "$WORK/bin/$name"; fi
  chmod +x "$WORK/bin/$name"
done
ln -sfn task-runner-cuda "$WORK/bin/sp1-gpu-direct"
mkdir -p "$WORK/pg"
if command -v xz >/dev/null; then xz -dc "$PACK/postgres.tar.xz"
else python3 -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$PACK/postgres.tar.xz"; fi | tar -C "$WORK/pg" -xf -
# Embedded mode runs PostgreSQL as the `postgres` user when started as root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd -r -M -s /bin/sh postgres 2>/dev/null || echo 'postgres:x:991:991::/tmp:/bin/sh' >> /etc/passwd
fi
chmod 755 "$WORK" "$WORK/pg" 2>/dev/null || true
export PATH="$WORK/pg/pgserver/pginstall/bin:$WORK/bin:$PATH"
export PROOFJOBS_TASK_RUNNER="$WORK/bin/task-runner-cuda" PROOFJOBS_PROVER=cuda
echo "unpacked in $(( $(date +%s) - started )) s"

# Runner logs (start-up, GPU found, peak GPU memory) come back with the results.
export PROOFJOBS_BENCH_KEEP=1
save_logs() {
  tar -C /tmp -cf - $(cd /tmp && ls -d proofjobs-*/logs 2>/dev/null) 2>/dev/null | xz -T0 > "$OUT/runner-logs.tar.xz" || true
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv || true
  echo "== ended after $(( $(date +%s) - started )) s"
}
trap save_logs EXIT
for mcycles in ${GPU_CHECK_MCYCLES:-5 50}; do
  echo "== fibonacci ~${mcycles}M cycles: pipeline (CUDA runner) vs sp1-gpu-direct"
  timeout "${GPU_CHECK_BENCH_TIMEOUT:-300}" proofctl bench fibonacci "$mcycles" --modes core,compressed \
    --baseline-bin "$WORK/bin/sp1-gpu-direct" --check | tee "$OUT/bench-${mcycles}M.md" \
    || echo "== bench at ${mcycles}M cycles FAILED (exit $?)"
done
