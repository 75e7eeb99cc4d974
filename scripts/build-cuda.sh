#!/usr/bin/env bash
# Builds the task-runner with SP1's GPU prover (`--features cuda`) on a machine with no GPU and no
# CUDA toolkit. CUDA 13.0's compiler, headers and static runtime come from NVIDIA's PyPI wheels and
# a CMake that knows CUDA 13 from PyPI too, installed once under ~/.cache/proofjobs/cuda-13.0.
# The runtime is linked statically and the driver is loaded at run time, so the binary starts on
# any machine and says when it has no GPU.
#
#   scripts/build-cuda.sh            # -> $CARGO_TARGET_DIR/release/{task-runner-cuda,sp1-gpu-direct}
#   CUDA_ARCHS=86,89,90,100,120 scripts/build-cuda.sh   # the GPU generations compiled in (default 90: H100/H200)
#
# The CPU task-runner the rest of the workspace uses stays in place at release/task-runner.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

CUDA_CACHE=${PROOFJOBS_CUDA_CACHE:-$HOME/.cache/proofjobs/cuda-13.0}
# One CUDA release throughout: the GPU machines' driver (580) runs CUDA 13.0 code.
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
        nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-nvtx==13.0.85)
CMAKE_WHEEL="cmake>=3.31,<4"
stamp="$CUDA_CACHE/.installed-$(echo "${WHEELS[*]} $CMAKE_WHEEL" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "build-cuda: installing CUDA 13.0 (nvcc, headers, runtime) and CMake from PyPI into $CUDA_CACHE" >&2
  command -v pip3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
  rm -rf "$CUDA_CACHE" && mkdir -p "$CUDA_CACHE"
  # One pip call: the wheels share the nvidia/ namespace folder, which --target does not merge.
  PIP_ROOT_USER_ACTION=ignore pip3 install -q --no-deps --disable-pip-version-check --target "$CUDA_CACHE/py" "${WHEELS[@]}"
  PIP_ROOT_USER_ACTION=ignore pip3 install -q --disable-pip-version-check --target "$CUDA_CACHE/cmake" "$CMAKE_WHEEL"
  cu="$CUDA_CACHE/py/nvidia/cu13"
  # nvcc's profile and CMake's FindCUDAToolkit look for lib64/ and a libcudart; the wheel has
  # lib/ and the versioned shared runtime. Offering only the static runtime under that name links
  # it into the binary (no libcudart.so needed where it runs).
  ln -sfn lib "$cu/lib64"
  ln -sfn libcudart_static.a "$cu/lib/libcudart.a"
  touch "$stamp"
fi

cu="$CUDA_CACHE/py/nvidia/cu13"
export CUDA_PATH="$cu"
export CMAKE="$CUDA_CACHE/cmake/cmake/data/bin/cmake"
export PATH="$cu/bin:$PATH"
export SP1_CUDA_ENABLED=1
export CUDA_ARCHS=${CUDA_ARCHS:-90}
"$CMAKE" --version | head -1 >&2
nvcc --version | tail -1 >&2

started=$(date +%s)
cargo build --release -p proofjobs-task-runner --features cuda --bin task-runner
cp -f "$CARGO_TARGET_DIR/release/task-runner" "$CARGO_TARGET_DIR/release/task-runner-cuda"
# Started under this name the CUDA runner is the benchmark's baseline: SP1's GPU prover, direct.
ln -sfn task-runner-cuda "$CARGO_TARGET_DIR/release/sp1-gpu-direct"
# Put the CPU runner back where the workspace's tools and tests look for it (the workspace build
# the tests use; cached, so this only relinks nothing and copies).
cargo build --release --workspace --bins
echo "build-cuda: $CARGO_TARGET_DIR/release/task-runner-cuda (CUDA_ARCHS=$CUDA_ARCHS) in $(( $(date +%s) - started )) s" >&2
