#!/usr/bin/env bash
# Builds the local control plane's binaries (kube-apiserver, kube-controller-manager, kubectl,
# etcd, helm) from the Go modules pinned in ./k8s and ./helm, and the scale benchmark's client
# (benchtool, ./k8s/benchtool, on client-go of the same release) and the kubelet-code judge of
# image credentials (credprovider, ./k8s/credprovider), once, into a cache directory
# outside the repository keyed by the pinned versions and sources. Later runs find them and return
# at once. Prints the bin directory on stdout.
#
#   ACR_HELPER_CLUSTER_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/aliyun-acr-credential-helper)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${ACR_HELPER_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliyun-acr-credential-helper}"

# The key covers everything that decides the binaries: pinned modules, sources and the Go toolchain.
key="$( (cat "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/k8s/etcd/main.go "$here"/k8s/benchtool/main.go "$here"/k8s/credprovider/main.go "$here"/helm/go.mod "$here"/helm/go.sum; go version) | sha256sum | cut -c1-16)"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/k8s/go.mod")"
bin="$cache_root/control-plane-$k8s_version-$key/bin"

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/etcd" ] \
  && [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ] && [ -x "$bin/benchtool" ] \
  && [ -x "$bin/credprovider" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
tmp="$bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
ldflags="-s -w"
start=$(date +%s)
echo "build.sh: building the control plane ($k8s_version) into $bin; the first build takes a while" >&2
(
  cd "$here/k8s"
  # kube-apiserver reports its version from these variables; without them it says v0.0.0.
  vpkg=k8s.io/component-base/version
  kv="-X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$k8s_version" | cut -d. -f2)"
  kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  go build -trimpath -ldflags="$ldflags $kv" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  echo "build.sh: kube-apiserver built after $(( $(date +%s) - start ))s" >&2
  go build -trimpath -ldflags="$ldflags $kv" -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
  echo "build.sh: kube-controller-manager built after $(( $(date +%s) - start ))s" >&2
  go build -trimpath -ldflags="$ldflags $kv" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
  echo "build.sh: kubectl built after $(( $(date +%s) - start ))s" >&2
  go build -trimpath -ldflags="$ldflags" -o "$tmp/etcd" ./etcd
  echo "build.sh: etcd built after $(( $(date +%s) - start ))s" >&2
  go build -trimpath -ldflags="$ldflags" -o "$tmp/benchtool" ./benchtool
  echo "build.sh: benchtool built after $(( $(date +%s) - start ))s" >&2
  go build -trimpath -ldflags="$ldflags" -o "$tmp/credprovider" ./credprovider
  echo "build.sh: credprovider built after $(( $(date +%s) - start ))s" >&2
)
(
  cd "$here/helm"
  hv="$(awk '$1=="helm.sh/helm/v3"{print $2}' go.mod)"
  go build -trimpath -ldflags="$ldflags -X helm.sh/helm/v3/internal/version.version=$hv" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
  echo "build.sh: helm built after $(( $(date +%s) - start ))s" >&2
)
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
echo "build.sh: control plane built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
