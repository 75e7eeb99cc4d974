#!/usr/bin/env bash
# Builds a real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler, kubectl and a test
# kube-controller-manager with a short Job backoff) from the Go module proxy, through a wrapper
# module that pins k8s.io/kubernetes' staging modules to their published versions. The binaries
# are cached outside the repo, keyed by version; a cached build is reused.
#
#   tests/k8s/build-control-plane.sh            # prints the directory holding the binaries
#
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.34.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.14}
CACHE=${PROOFJOBS_K8S_CACHE:-$HOME/.cache/proofjobs/k8s}
OUT="$CACHE/bin-v$K8S_VERSION-etcd$ETCD_VERSION"
here=$(cd "$(dirname "$0")" && pwd)

if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ] && [ -x "$OUT/kube-scheduler" ] && [ -x "$OUT/kubectl" ] && [ -x "$OUT/etcd" ]; then
  echo "$OUT"; exit 0
fi
command -v go >/dev/null || { echo "go is required to build the control plane" >&2; exit 1; }
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
staging="0.${K8S_VERSION#1.}"
work="$CACHE/src-v$K8S_VERSION"
mkdir -p "$work/kcm" "$OUT"
cp "$here/kcm/main.go" "$work/kcm/main.go"
cd "$work"
[ -f go.mod ] || go mod init proofjobs.invalid/controlplane >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import sys,json;print(json.load(sys.stdin)["GoMod"])')
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod"); do
  go mod edit -replace="$m=$m@v$staging"
done
go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
go get "k8s.io/kubernetes@v$K8S_VERSION" >&2
go get "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-scheduler@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-controller-manager/app@v$K8S_VERSION" "k8s.io/kubernetes/pkg/controller/job@v$K8S_VERSION" >&2
go mod tidy >&2 || true
ld="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
export CGO_ENABLED=0
go build -trimpath -ldflags "$ld" -o "$OUT/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -trimpath -ldflags "$ld" -o "$OUT/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler >&2
go build -trimpath -ldflags "$ld" -o "$OUT/kube-controller-manager" ./kcm >&2
[ -x "$OUT/kubectl" ] || { go get "k8s.io/kubernetes/cmd/kubectl@v$K8S_VERSION" >&2; go build -trimpath -ldflags "$ld" -o "$OUT/kubectl" k8s.io/kubernetes/cmd/kubectl >&2; }
# etcd: its own small wrapper (its go.mod has replace directives, so `go install` is refused).
mkdir -p "$work/etcd" && cd "$work/etcd"
[ -f go.mod ] || go mod init proofjobs.invalid/etcd >/dev/null 2>&1
go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3 >&2
echo "$OUT"
