#!/usr/bin/env bash
# Builds the local cluster's node (./node.sh) once, into a cache directory outside the repository
# keyed by the pinned versions and sources, next to the control plane's (../build.sh). Later runs
# find it and return at once. Prints the bin directory on stdout; its parent also holds
# images/pause.oci.tar, the Pod sandbox image.
#
#   bin/containerd, containerd-shim-runc-v2, ctr   ./containerd (github.com/containerd/containerd/v2)
#   bin/runc                                       ./runc (github.com/opencontainers/runc, with seccomp)
#   bin/kubelet                                    ../k8s (k8s.io/kubernetes, as the control plane)
#   bin/registry                                   ./registry (the private registry, main.go)
#   bin/pause, images/pause.oci.tar                build/pause/linux/pause.c of that k8s.io/kubernetes,
#                                                  static, packaged with buildah (no image can be pulled here)
#
# containerd, runc and the registry are modules of their own, so each resolves its dependencies
# exactly as its upstream pins them. Needs go, gcc, pkg-config, libseccomp-dev and buildah
# (scripts/setup installs them).
#
#   ACR_HELPER_CLUSTER_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/aliyun-acr-credential-helper)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$(cd "$here/../k8s" && pwd)"
cache_root="${ACR_HELPER_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliyun-acr-credential-helper}"

die() { echo "node/build.sh: $*" >&2; exit 1; }
for tool in go gcc pkg-config buildah; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/setup installs it)"
done
pkg-config --exists libseccomp || die "libseccomp-dev is not installed (scripts/setup installs it)"

# mod_version GO_MOD MODULE: the version GO_MOD requires (in a require block or on one line).
mod_version() {
  awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m { print $2; exit }' "$1"
}
k8s_version="$(mod_version "$k8s/go.mod" k8s.io/kubernetes)"
containerd_version="$(mod_version "$here/containerd/go.mod" github.com/containerd/containerd/v2)"
runc_version="$(mod_version "$here/runc/go.mod" github.com/opencontainers/runc)"
for v in "$k8s_version" "$containerd_version" "$runc_version"; do
  [ -n "$v" ] || die "a pinned version is missing from a go.mod"
done
# The key covers everything that decides the outputs: pinned modules, sources, this script and the
# toolchains (runc links Debian's libseccomp).
key="$( (cat "$here"/containerd/go.mod "$here"/containerd/go.sum "$here"/runc/go.mod "$here"/runc/go.sum \
  "$here"/registry/go.mod "$here"/registry/go.sum "$here"/registry/main.go "$k8s"/go.mod "$k8s"/go.sum \
  "$here/build.sh"; go version; gcc --version | head -n1; pkg-config --modversion libseccomp; buildah --version) \
  | sha256sum | cut -c1-16)"
out="$cache_root/node-$key"
bin="$out/bin"
pause_archive="$out/images/pause.oci.tar"

done_=1
for f in containerd containerd-shim-runc-v2 ctr runc kubelet registry pause; do
  [ -x "$bin/$f" ] || done_=0
done
if [ "$done_" = 1 ] && [ -s "$pause_archive" ]; then
  echo "$bin"
  exit 0
fi

tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/images"
ctr_=""
cleanup() {
  rm -rf "$tmp"
  [ -z "$ctr_" ] || buildah --storage-driver vfs rm "$ctr_" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export GOFLAGS=-mod=mod
start=$(date +%s)
step() { echo "node/build.sh: $1 built after $(( $(date +%s) - start ))s" >&2; }
echo "node/build.sh: building the node (containerd $containerd_version, runc $runc_version, kubelet $k8s_version) into $out; the first build takes a while" >&2

(
  cd "$here/registry"
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/bin/registry" .
)
step registry

(
  cd "$here/runc"
  # As runc's Makefile: cgo for libseccomp and nsenter, a PIE.
  CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags seccomp -ldflags="-s -w" \
    -o "$tmp/bin/runc" github.com/opencontainers/runc
)
[[ "$("$tmp/bin/runc" --version)" == *seccomp* ]] || die "runc was built without seccomp"
step runc

(
  cd "$here/containerd"
  vpkg=github.com/containerd/containerd/v2/version
  CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_zfs no_devmapper" \
    -ldflags="-s -w -X $vpkg.Version=$containerd_version -X $vpkg.Package=github.com/containerd/containerd/v2" \
    -o "$tmp/bin/" github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr
)
step "containerd, containerd-shim-runc-v2, ctr"

(
  cd "$k8s"
  # The same version variables as ../build.sh gives the control plane.
  vpkg=k8s.io/component-base/version
  kv="-X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$k8s_version" | cut -d. -f2)"
  kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $kv" -o "$tmp/bin/kubelet" k8s.io/kubernetes/cmd/kubelet
)
step kubelet

# The Pod sandbox: Kubernetes' own pause, compiled as its build/pause Makefile does.
k8s_src="$(cd "$k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
pause_tag="$(awk '$1=="TAG" && $2=="?=" {print $3}' "$k8s_src/build/pause/Makefile")"
[ -n "$pause_tag" ] || die "no TAG in $k8s_src/build/pause/Makefile"
gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag-acr-helper-test" \
  -o "$tmp/bin/pause" "$k8s_src/build/pause/linux/pause.c"
strip "$tmp/bin/pause"
step pause

# Its image, as the OCI archive node.sh imports into containerd. The name is a loopback one
# (localhost/...), so even a mistaken pull never looks up a name.
pause_ref="localhost/acr-helper-test/pause:$pause_tag"
b=(buildah --storage-driver vfs)
ctr_="$("${b[@]}" from --quiet scratch)"
"${b[@]}" copy --quiet "$ctr_" "$tmp/bin/pause" /pause >/dev/null
"${b[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr_"
img="$("${b[@]}" commit --quiet "$ctr_")"
"${b[@]}" rm "$ctr_" >/dev/null
ctr_=""
"${b[@]}" push --quiet "$img" "oci-archive:$tmp/images/pause.oci.tar:$pause_ref" >/dev/null
"${b[@]}" rmi "$img" >/dev/null
echo "$pause_ref" > "$tmp/images/pause.ref"
step "pause image ($pause_ref)"

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "node/build.sh: node built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
