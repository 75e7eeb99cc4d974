# proofjobs images. One Dockerfile, one target per component:
#
#   docker build --target api              -t <registry>/proofjobs/api:<tag> .
#   docker build --target dispatcher       -t <registry>/proofjobs/dispatcher:<tag> .
#   docker build --target proofctl         -t <registry>/proofjobs/proofctl:<tag> .
#   docker build --target task-runner      -t <registry>/proofjobs/task-runner:<tag> --build-arg WARM_KEYS=true .
#   docker build --target task-runner-cuda -t <registry>/proofjobs/task-runner-cuda:<tag> --build-arg WARM_KEYS=true .
#
# Build arguments:
#   BINARIES=source    compile in the `build-source` stage (the default; needs the crates registry
#                      and Debian's mirrors; 20-40 min on 8 cores). The CUDA runner needs
#                      CUDA_WHEELS=true (and CUDA_ARCHS for the GPU generations, default 89,90).
#   BINARIES=prebuilt  take stripped binaries from ./dist/ instead (built on a Debian bookworm
#                      host: scripts/images.sh does this; it is how the test suite builds images).
#   WARM_KEYS=true     bake SP1's recursion proving-key cache (~7 GB) into the runner images, so a
#                      node that scaled up from zero starts proving in seconds, not minutes.
#   CUDA_BASE          base of task-runner-cuda: an image with the NVIDIA CUDA 13 runtime libraries
#                      (the driver itself comes from the node through the NVIDIA container toolkit).
#
# Every runtime stage is Debian bookworm-slim plus the binary: no compiler, no package manager use
# at run time, a fixed non-root UID/GID 10001 that matches the manifests' runAsUser.
ARG BINARIES=source
ARG CUDA_BASE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---- binaries compiled from this source tree -------------------------------------------------
FROM debian:bookworm-slim AS build-source
# Rust 1.96 from Debian's security suite (rustc-web/cargo-web): no toolchain download at build time.
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates build-essential pkg-config protobuf-compiler libprotobuf-dev clang lld binutils git \
      python3 python3-pip rustc-web cargo-web \
    && rm -rf /var/lib/apt/lists/*
ENV CARGO_TARGET_DIR=/target
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between image builds (BuildKit, buildah).
RUN --mount=type=cache,target=/root/.cargo/registry --mount=type=cache,target=/target \
    cargo build --release --locked -p proofjobs-api -p proofjobs-dispatcher -p proofctl -p proofjobs-task-runner \
    && mkdir -p /out \
    && for b in proofjobs-api proofjobs-dispatcher proofctl task-runner warm-keys; do strip -o /out/$b /target/release/$b; done
# The CUDA runner: CUDA's compiler and headers as PyPI wheels, as scripts/build-cuda.sh does.
# CUDA_ARCHS: the GPU generations compiled in (89: L4/L40S, the terraform default; 90: H100/H200).
ARG CUDA_WHEELS=false
ARG CUDA_ARCHS=89,90
RUN --mount=type=cache,target=/root/.cargo/registry --mount=type=cache,target=/target \
    if [ "$CUDA_WHEELS" = true ]; then CUDA_ARCHS="$CUDA_ARCHS" scripts/build-cuda.sh && strip -o /out/task-runner-cuda /target/release/task-runner-cuda; \
    else printf '#!/bin/sh\necho "this image was built without CUDA_WHEELS=true" >&2\nexit 69\n' > /out/task-runner-cuda && chmod +x /out/task-runner-cuda; fi

# ---- binaries built outside (scripts/images.sh) ----------------------------------------------
FROM scratch AS build-prebuilt
COPY dist/ /out/

FROM build-${BINARIES} AS binaries

# ---- runtime stages ----------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to PostgreSQL, Redis and S3 endpoints (the base image built by
# scripts/images.sh already has it; on a stock base it is installed here).
RUN [ -d /etc/ssl/certs ] && [ -n "$(ls /etc/ssl/certs)" ] \
    || { apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*; }
RUN groupadd --gid 10001 proofjobs \
    && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin proofjobs

FROM runtime AS api
COPY --from=binaries /out/proofjobs-api /usr/local/bin/proofjobs-api
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/proofjobs-api"]

FROM runtime AS dispatcher
COPY --from=binaries /out/proofjobs-dispatcher /usr/local/bin/proofjobs-dispatcher
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/proofjobs-dispatcher"]

FROM runtime AS proofctl
COPY --from=binaries /out/proofctl /usr/local/bin/proofctl
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/proofctl"]

# Runner pods mount an emptyDir at /scratch (TMPDIR) and read the key cache from the image.
FROM runtime AS task-runner
ARG WARM_KEYS=false
ENV PROOFJOBS_KEY_CACHE=/var/cache/proofjobs/sp1-keys
COPY --from=binaries /out/task-runner /out/warm-keys /usr/local/bin/
RUN mkdir -p /var/cache/proofjobs/sp1-keys \
    && if [ "$WARM_KEYS" = true ]; then warm-keys; fi \
    && chown -R 10001:10001 /var/cache/proofjobs
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/task-runner"]

FROM ${CUDA_BASE} AS task-runner-cuda
ARG WARM_KEYS=false
ENV PROOFJOBS_KEY_CACHE=/var/cache/proofjobs/sp1-keys
COPY --from=binaries /out/task-runner-cuda /usr/local/bin/task-runner
COPY --from=binaries /out/warm-keys /usr/local/bin/warm-keys
RUN mkdir -p /var/cache/proofjobs/sp1-keys \
    && if [ "$WARM_KEYS" = true ]; then warm-keys; fi \
    && chown -R 10001:10001 /var/cache/proofjobs
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/task-runner"]
