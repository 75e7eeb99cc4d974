#!/usr/bin/env bash
# Builds the proofjobs images from the Dockerfile on a machine with no Docker engine and no
# registry access, the way the test suite does: podman (runc, cgroupfs), a debian:bookworm-slim
# base made with debootstrap (cached), and BINARIES=prebuilt with the workspace's release
# binaries, stripped into dist/. Where Docker and Docker Hub are available, build with
# `docker build --target <name> .` instead (docs/OPERATING.md).
#
#   scripts/images.sh [TARGET...]     # default: api dispatcher proofctl task-runner, and
#                                     # task-runner-cuda when scripts/build-cuda.sh has built it
#   TAG=dev (default)                 # images are localhost/proofjobs/<target>:$TAG
#
# Prints `<image> <size in bytes>` per image on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
TAG=${TAG:-dev}
targets=("$@")
cache="$HOME/.cache/proofjobs/images"
mkdir -p "$cache"

need=()
for tool in podman buildah debootstrap runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "images: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman buildah debootstrap runc >/dev/null
fi

# crun (podman's default) fails on this kind of host's hybrid cgroups; runc with cgroupfs works.
cat > "$cache/containers.conf" <<'EOF'
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$cache/containers.conf"

base=docker.io/library/debian:bookworm-slim
# The tarball's name is its recipe's version: a new recipe makes a new base.
tarball="$cache/bookworm-minbase-2.tar"
if ! podman image exists "$base" || [ "$(cat "$cache/base.from" 2>/dev/null)" != "$tarball" ]; then
  if [ ! -f "$tarball" ]; then
    echo "images: debootstrap bookworm (once, ~70 s)" >&2
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # The suites Docker Hub's debian:bookworm-slim lists, so a source build finds the same packages.
    rm -f "$rootfs/etc/apt/sources.list"
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm bookworm-updates" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" "Types: deb" "URIs: http://deb.debian.org/debian-security" \
      "Suites: bookworm-security" "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
      > "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman import "$tarball" "$base" >/dev/null
  echo "$tarball" > "$cache/base.from"
fi

# The binaries the images carry, stripped of debug info (they are ~3x smaller).
bins=(proofjobs-api proofjobs-dispatcher proofctl task-runner warm-keys)
mkdir -p dist
for b in "${bins[@]}"; do
  src="$CARGO_TARGET_DIR/release/$b"
  [ -x "$src" ] || { echo "images: $src is missing: cargo build --release --workspace --bins" >&2; exit 1; }
  if [ ! -f "dist/$b" ] || [ "$src" -nt "dist/$b" ]; then strip -o "dist/$b" "$src"; fi
done
cuda="$CARGO_TARGET_DIR/release/task-runner-cuda"
if [ -x "$cuda" ]; then
  if [ ! -f dist/task-runner-cuda ] || [ "$cuda" -nt dist/task-runner-cuda ]; then strip -o dist/task-runner-cuda "$cuda"; fi
else
  rm -f dist/task-runner-cuda
fi
if [ ${#targets[@]} -eq 0 ]; then
  targets=(api dispatcher proofctl task-runner)
  [ -f dist/task-runner-cuda ] && targets+=(task-runner-cuda)
fi

for target in "${targets[@]}"; do
  image="localhost/proofjobs/$target:$TAG"
  extra=()
  # The CUDA runtime base comes from a registry this machine cannot reach; the plain base stands
  # in (the CUDA libraries the runner loads come from the node's driver or the real base).
  [ "$target" = task-runner-cuda ] && extra+=(--build-arg "CUDA_BASE=$base")
  podman build --pull=never --quiet --target "$target" --build-arg BINARIES=prebuilt "${extra[@]}" -t "$image" . >/dev/null \
    || { echo "images: building $target failed" >&2; exit 1; }
  echo "$image $(podman image inspect --format '{{.Size}}' "$image")"
done
podman image prune -f >/dev/null 2>&1 || true
