#!/usr/bin/env bash
# Starts and stops a real node for the local control plane (../control-plane.sh): a kubelet, its
# containerd (with runc) and a private TLS registry that checks every credential with the fake
# cloud, all on 127.0.0.1, on free ports, with data in a fresh directory. No bridge network, no
# private-range address, no /etc/hosts edit: Pods on this node use hostNetwork, and every
# registry name given with --domain (and any other, so that no name is ever looked up) is mapped
# to the loopback registry by containerd's hosts.toml.
#
#   node.sh up CONTROL_PLANE_DIR --fake-url URL --domain D [--domain D2 ...]
#              [--credential-provider CONFIG --provider-bin-dir DIR] [--name NAME] [--owner-pid PID]
#       Builds the binaries if the cache lacks them (build.sh), starts the registry, containerd and
#       the kubelet for the Node NAME (default node-1; several nodes may run at once, each with
#       its own directory, ports and containerd), waits until the Node object exists, pushes the
#       project's image (built by scripts/build-image when buildah lacks it) into the registry as
#       <first domain>/team/app:1, and prints the node directory. It then holds:
#         env        shell lines (export K=V): NODE_NAME, NODE_DIR, REGISTRY (127.0.0.1:port),
#                    REGISTRY_LOG, REGISTRY_CA, CONTAINERD_SOCK, KUBELET_LOG, PUSH_USER,
#                    PUSH_PASSWORD, IMAGE (<first domain>/team/app:1)
#         registry.log  one JSON line per registry request: time, method, path, ns (the registry
#                    name pulled from), username, status, auth (push, fake or none) and reason
#                    (the fake's, when it refused)
#         logs/      each process's output (kubelet.log, containerd.log, registry.log)
#         pki/       the test CA (ca.crt) and the registry's serving certificate
#       The registry accepts the push credential (PUSH_USER/PUSH_PASSWORD), and any other
#       username/password only while the fake cloud's /_fake/registry-login says it is valid.
#       With --credential-provider, the kubelet gets --image-credential-provider-config CONFIG
#       and --image-credential-provider-bin-dir DIR. With --owner-pid, a watcher runs `down` once
#       PID has exited, so a test binary that dies never leaves a node behind.
#   node.sh down NODE_DIR
#       Deletes nothing in the cluster (the Node and its Pods stay, as after a node crash): stops
#       the kubelet, kills the containers, stops containerd and the registry, unmounts what is
#       left, removes the cgroup folders containerd made, and removes NODE_DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

log() { echo "node: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() {
  # wait_for DESCRIPTION SECONDS PID COMMAND...: polls COMMAND until it succeeds; fails early when
  # PID exits.
  local what="$1" secs="$2" pid="$3"
  shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || { log "$what: its process exited"; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "$what not ready after ${secs}s"; return 1; }
    sleep 0.2
  done
}

alive() {
  # A process that has exited but is not reaped yet (a zombie: the node's processes outlive the
  # `up` that started them, and their new parent may reap late) counts as gone.
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [ -n "$state" ] && [ "$state" != Z ]
}

stop_pids() {
  # SIGTERM to each PID at once, then up to 10 seconds for all, then SIGKILL.
  local pid left
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    [ "$left" = 1 ] || return 0
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# The kubelet sets six kernel tunables at start when they differ from what it wants
# (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, ...; protectKernelDefaults
# only turns that into a fatal error). These test machines are shared, so the node runs in a
# mount namespace of its own where each differing /proc/sys file is covered by a file holding the
# kubelet's value: it finds them set and changes nothing. The machine's real values never change.
# The same namespace keeps every mount containerd and the kubelet make (container root
# filesystems, the kubelet's bind-mounted root dir, volumes) off the machine's mount table: they
# vanish with the node's processes. /var/log/containers, where the kubelet links container logs
# (a fixed path), is covered there by a folder of the node's.
kubelet_sysctls="vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000"

# Runs "${in_ns[@]}" COMMAND in that namespace. nsenter execs COMMAND (it forks only to enter a
# PID namespace), so a COMMAND started with & has $! as its own PID.
in_ns=()

gen_pki() {
  local pki="$1"; shift
  local san="IP:127.0.0.1,DNS:localhost" d
  for d in "$@"; do san="$san,DNS:$d"; done
  mkdir -p "$pki/trust"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=acr-helper-test-registry-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout registry.key -out registry.csr \
      -subj "/CN=acr-helper-test-registry" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > registry.ext
    openssl x509 -req -in registry.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile registry.ext -out registry.crt 2>/dev/null
    rm -f registry.csr registry.ext ca.srl
    # buildah's --cert-dir reads every *.crt as a CA and wants a *.cert for every *.key: a folder
    # with the CA alone.
    cp ca.crt trust/ca.crt
  )
}

write_runc_wrapper() {
  local out="$1" runc="$2"
  cat > "$out" <<EOF
#!/bin/sh
# containerd runs this instead of runc (the runtime's BinaryName), on the test node only.
# CAP_SYS_RESOURCE is not in the capability bounding set of these test machines
# (CapBnd 000001fffeffffff), so no process here, root included, may lower its oom_score_adj
# below 0. The kubelet asks -998 for every Pod sandbox (-997 for Guaranteed containers), and runc
# init then dies with "failed to update /proc/self/oom_score_adj: Permission denied". So a
# negative process.oomScoreAdj in the bundle's config.json (or an exec's process.json) is raised
# to 0 before the real runc runs; nothing else changes. A property of the test machines, not of
# clusters.
prev=""
for arg in "\$@"; do
  file=""
  case "\$prev" in
    --bundle|-b) file="\$arg/config.json" ;;
    --process|-p) file="\$arg" ;;
  esac
  case "\$arg" in
    --bundle=*|-b=*) file="\${arg#*=}/config.json" ;;
    --process=*) file="\${arg#*=}" ;;
  esac
  if [ -n "\$file" ] && [ -f "\$file" ]; then
    sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/' "\$file"
  fi
  prev="\$arg"
done
exec "$runc" "\$@"
EOF
  chmod +x "$out"
}

write_containerd_config() {
  local c="$1" pause_ref="$2"
  cat > "$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
temp = "$c/tmp"
imports = []
oom_score = 0

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "$c/opt/image-verifier/bin"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$pause_ref"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$c/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$c/runc-wrapper"
        Root = "$c/runc"
        SystemdCgroup = false
  # No CNI: Pods here use hostNetwork (the Node stays NotReady, which does not stop them).
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$c/cni/bin"]
    conf_dir = "$c/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

write_hosts() {
  # Every --domain D goes to the loopback registry: the host entry, and the server too (after a
  # 401 at the host entry containerd falls back to the server; were that the real D, it would
  # look the name up). So does every other name (_default), so that no image name, however
  # mistaken, is ever looked up: the registry then answers 401 or 404, and its log's "ns" says
  # which name was pulled.
  local certs="$1" registry="$2" ca="$3" d
  shift 3
  for d in "$@" _default; do
    mkdir -p "$certs/$d"
    cat > "$certs/$d/hosts.toml" <<EOF
server = "https://$registry"
ca = "$ca"

[host."https://$registry"]
  capabilities = ["pull", "resolve"]
  ca = "$ca"
EOF
  done
}

write_kubelet_config() {
  local k="$1" port="$2" healthz="$3"
  cat > "$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
evictionHard: {}
failSwapOn: false
localStorageCapacityIsolation: false
# Its own oom_score_adj: the default -999 cannot be set here (see the runc wrapper).
oomScoreAdj: 0
podLogsDir: $k/pod-logs
volumePluginDir: $k/volume-plugins
serializeImagePulls: false
EOF
}

image_ref() {
  local version
  version="$(awk -F'"' '/^version = /{print $2; exit}' "$repo/Cargo.toml")"
  echo "aliyun-acr-credential-helper:$version"
}

up_failed() {
  local rc=$?
  [ "$rc" != 0 ] || return 0
  log "start failed; logs follow"
  tail -n 30 "$dir"/logs/*.log >&2 || true
  cmd_down "$dir" || true
  exit "$rc"
}

cmd_up() {
  local cp="" fake="" provider="" provider_bin="" name="node-1" owner=""
  local domains=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --fake-url) fake="${2:?--fake-url needs a URL}"; shift 2 ;;
      --domain) domains+=("${2:?--domain needs a name}"); shift 2 ;;
      --credential-provider) provider="${2:?--credential-provider needs a file}"; shift 2 ;;
      --provider-bin-dir) provider_bin="${2:?--provider-bin-dir needs a folder}"; shift 2 ;;
      --name) name="${2:?--name needs a name}"; shift 2 ;;
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      -*) die "unknown flag $1" ;;
      *) [ -z "$cp" ] || die "one control plane directory only"; cp="$1"; shift ;;
    esac
  done
  if [ -z "$cp" ] || [ ! -f "$cp/env" ]; then
    die "usage: node.sh up CONTROL_PLANE_DIR --fake-url URL --domain D ... (no ${cp:-CONTROL_PLANE_DIR}/env)"
  fi
  cp="$(cd "$cp" && pwd)"
  [ -n "$fake" ] || die "--fake-url is required"
  [ "${#domains[@]}" -gt 0 ] || die "at least one --domain is required"
  if [ -n "$provider" ] || [ -n "$provider_bin" ]; then
    if [ -z "$provider" ] || [ -z "$provider_bin" ]; then
      die "--credential-provider and --provider-bin-dir go together"
    fi
    provider="$(realpath "$provider")"
    provider_bin="$(realpath "$provider_bin")"
  fi
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "--name $name is not a valid Node name"
  local cluster_bin kubeconfig
  # shellcheck disable=SC1091,SC2153 # the control plane's env file sets CLUSTER_BIN
  cluster_bin="$(. "$cp/env" && echo "$CLUSTER_BIN")"
  kubeconfig="$cp/kubeconfig"
  local kubectl=("$cluster_bin/kubectl" --kubeconfig "$kubeconfig")
  if "${kubectl[@]}" get node "$name" >/dev/null 2>&1; then
    log "warning: a Node $name exists already; its new kubelet takes it over"
  fi

  local bin
  bin="$("$here/build.sh")"
  local pause_archive pause_ref
  pause_archive="$(dirname "$bin")/images/pause.oci.tar"
  pause_ref="$(cat "$(dirname "$bin")/images/pause.ref")"
  local image
  image="$(image_ref)"
  if ! buildah --storage-driver vfs inspect --type image "$image" >/dev/null 2>&1; then
    log "$image is not in buildah's storage: scripts/build-image"
    "$repo/scripts/build-image" >&2
  fi

  dir="$(mktemp -d "${TMPDIR:-/tmp}/acr-helper-node.XXXXXX")"
  touch "$dir/.node"
  mkdir -p "$dir/logs"
  echo "$bin" > "$dir/bin"
  # Any failure from here on (set -e or die) stops what was started and removes the directory.
  trap up_failed EXIT
  local start=$SECONDS

  # The node's mount namespace (see kubelet_sysctls above), held by a process that only sleeps.
  local kv path want have
  mkdir -p "$dir/sysctl/vm" "$dir/sysctl/kernel/keys" "$dir/kubelet/containers-logs" /var/log/containers
  local binds=""
  for kv in $kubelet_sysctls; do
    path="/proc/sys/${kv%%=*}"
    want="${kv#*=}"
    have="$(cat "$path")"
    if [ "$have" != "$want" ]; then
      echo "$want" > "$dir/sysctl/${kv%%=*}"
      binds="$binds $dir/sysctl/${kv%%=*}:$path"
    fi
  done
  unshare --mount --propagation private -- bash -c '
    set -e
    for b in $2; do mount --bind "${b%%:*}" "${b#*:}"; done
    mount --bind "$1/kubelet/containers-logs" /var/log/containers
    touch "$1/ns.ready"
    exec sleep infinity
  ' _ "$dir" "$binds" </dev/null >"$dir/logs/ns.log" 2>&1 &
  echo "$!" > "$dir/ns.pid"
  in_ns=(nsenter --mount="/proc/$!/ns/mnt" --)
  wait_for "node mount namespace" 10 "$!" test -f "$dir/ns.ready"

  # The registry.
  gen_pki "$dir/pki" "${domains[@]}"
  local push_user=acr-helper-push push_password
  push_password="$(openssl rand -hex 24)"
  "$bin/registry" --listen 127.0.0.1:0 --port-file "$dir/registry.port" \
    --cert "$dir/pki/registry.crt" --key "$dir/pki/registry.key" --fake-url "$fake" \
    --push-user "$push_user" --push-password "$push_password" --log "$dir/registry.log" \
    </dev/null >"$dir/logs/registry.log" 2>&1 &
  local registry_pid=$!
  echo "$registry_pid" > "$dir/registry.pid"
  wait_for registry 10 "$registry_pid" test -s "$dir/registry.port"
  local registry
  registry="127.0.0.1:$(cat "$dir/registry.port")"
  wait_for registry 10 "$registry_pid" curl -s --cacert "$dir/pki/ca.crt" -o /dev/null "https://$registry/v2/"

  # Push the test image while containerd and the kubelet start.
  local target="${domains[0]}/team/app:1"
  buildah --storage-driver vfs push --quiet --cert-dir "$dir/pki/trust" \
    --creds "$push_user:$push_password" "$image" "docker://$registry/team/app:1" \
    </dev/null >"$dir/logs/push.log" 2>&1 &
  local push_pid=$!

  # containerd.
  local c="$dir/containerd"
  mkdir -p "$c/root" "$c/state" "$c/tmp" "$c/opt" "$c/runc" "$c/certs.d" "$c/cni/bin" "$c/cni/net.d"
  write_runc_wrapper "$c/runc-wrapper" "$bin/runc"
  write_hosts "$c/certs.d" "$registry" "$dir/pki/ca.crt" "${domains[@]}"
  write_containerd_config "$c" "$pause_ref"
  # The shim is found on containerd's PATH.
  "${in_ns[@]}" env PATH="$bin:$PATH" "$bin/containerd" --config "$c/config.toml" \
    </dev/null >"$dir/logs/containerd.log" 2>&1 &
  local containerd_pid=$!
  echo "$containerd_pid" > "$dir/containerd.pid"
  local ctr=("$bin/ctr" --address "$c/containerd.sock" --namespace k8s.io)
  wait_for containerd 30 "$containerd_pid" "${ctr[@]}" version
  "${in_ns[@]}" "${ctr[@]}" images import --platform linux/amd64 "$pause_archive" >"$dir/logs/pause-import.log" 2>&1
  local images
  images="$("${ctr[@]}" images ls -q 2>>"$dir/logs/pause-import.log")"
  grep -qxF "$pause_ref" <<<"$images" || die "the pause image $pause_ref was not imported"

  # The kubelet.
  local k="$dir/kubelet" port healthz
  mkdir -p "$k/root" "$k/pod-logs" "$k/volume-plugins"
  port="$(free_port)"
  healthz="$(free_port)"
  write_kubelet_config "$k" "$port" "$healthz"
  local provider_args=()
  if [ -n "$provider" ]; then
    provider_args=(--image-credential-provider-config "$provider" --image-credential-provider-bin-dir "$provider_bin")
  fi
  "${in_ns[@]}" "$bin/kubelet" --config "$k/config.yaml" --kubeconfig "$kubeconfig" --root-dir "$k/root" \
    --hostname-override "$name" --node-ip 127.0.0.1 \
    --container-runtime-endpoint "unix://$c/containerd.sock" \
    "${provider_args[@]}" --v=2 </dev/null >"$dir/logs/kubelet.log" 2>&1 &
  local kubelet_pid=$!
  echo "$kubelet_pid" > "$dir/kubelet.pid"
  # Registered (or, for a Node left by an earlier kubelet, taken over) once the Node shows this
  # kubelet's port.
  node_has_port() {
    [ "$("${kubectl[@]}" get node "$name" -o jsonpath='{.status.daemonEndpoints.kubeletEndpoint.Port}')" = "$port" ]
  }
  wait_for "Node $name" 120 "$kubelet_pid" node_has_port

  if ! wait "$push_pid"; then
    cat "$dir/logs/push.log" >&2
    die "pushing $image to the registry failed"
  fi

  cat > "$dir/env" <<EOF
export NODE_NAME=$name
export NODE_DIR=$dir
export REGISTRY=$registry
export REGISTRY_LOG=$dir/registry.log
export REGISTRY_CA=$dir/pki/ca.crt
export CONTAINERD_SOCK=$c/containerd.sock
export KUBELET_LOG=$dir/logs/kubelet.log
export PUSH_USER=$push_user
export PUSH_PASSWORD=$push_password
export IMAGE=$target
EOF

  if [ -n "$owner" ]; then
    setsid bash -c '
      # Until the owner has exited (gone, or a zombie not yet reaped).
      while grep -qs "^State:[[:space:]]*[^Z[:space:]]" "/proc/$1/status"; do sleep 1; done
      exec "$2" down "$3"
    ' _ "$owner" "$here/node.sh" "$dir" </dev/null >/dev/null 2>&1 &
    echo "$!" > "$dir/watcher.pid"
  fi
  trap - EXIT
  log "ready in $(( SECONDS - start ))s: Node $name, registry https://$registry ($target), dir $dir"
  echo "$dir"
}

cgroup_dirs() {
  # The cgroup folders of one container, under every cgroup v1 controller (and v2's unified tree).
  local id="$1"
  ls -d /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id" 2>/dev/null || true
}

cmd_down() {
  local dir="${1:?usage: node.sh down NODE_DIR}"
  [ -d "$dir" ] || return 0
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/.node" ] || die "$dir is not a node directory"
  # The watcher runs this very command when its owner exits; it must not stop itself.
  if [ -f "$dir/watcher.pid" ] && [ "$(cat "$dir/watcher.pid")" != "$$" ]; then
    kill -TERM "$(cat "$dir/watcher.pid")" 2>/dev/null || true
  fi
  local pid kubelet containerd registry holder
  kubelet="$(cat "$dir/kubelet.pid" 2>/dev/null || true)"
  containerd="$(cat "$dir/containerd.pid" 2>/dev/null || true)"
  registry="$(cat "$dir/registry.pid" 2>/dev/null || true)"
  holder="$(cat "$dir/ns.pid" 2>/dev/null || true)"
  [ -z "$kubelet" ] || stop_pids "$kubelet"

  # The containers: the kubelet stops none when it stops, and their shims outlive containerd.
  local c="$dir/containerd" bin ids=() id
  bin="$(cat "$dir/bin" 2>/dev/null || true)"
  if [ -n "$bin" ] && [ -S "$c/containerd.sock" ] && [ -n "$containerd" ] && alive "$containerd"; then
    mapfile -t ids < <(timeout 10 "$bin/ctr" --address "$c/containerd.sock" --namespace k8s.io containers ls -q 2>/dev/null || true)
  fi
  # Also any container folder left in runc's state (a containerd that died first).
  if [ -d "$c/runc/k8s.io" ]; then
    for id in "$c"/runc/k8s.io/*; do [ -d "$id" ] && ids+=("$(basename "$id")"); done
  fi
  local d
  for id in "${ids[@]}"; do
    for d in $(cgroup_dirs "$id"); do
      for pid in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
  done
  # shellcheck disable=SC2086 # an empty PID is no argument
  stop_pids $containerd $registry
  # The shims (containerd-shim-runc-v2 -namespace k8s.io -id ID -address <our socket>).
  local p cmdline
  for p in /proc/[0-9]*; do
    cmdline="$({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null || true)"
    if [[ "$cmdline" == *"-address $c/containerd.sock "* ]]; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  [ -z "$holder" ] || stop_pids "$holder"
  rm -f "$dir"/*.pid

  # The node's own mounts lived in its namespace, gone with its processes; anything under the
  # node directory still mounted in ours (a kubelet or containerd from elsewhere) is unmounted,
  # deepest first.
  local m
  for _ in 1 2 3 4 5; do
    mapfile -t m < <(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -ru)
    [ "${#m[@]}" -gt 0 ] || break
    for d in "${m[@]}"; do umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true; done
  done
  # The cgroup folders containerd made (k8s.io/<id> under each controller), and k8s.io itself
  # when no other node uses it. rmdir removes only empty ones.
  for id in "${ids[@]}"; do
    for d in $(cgroup_dirs "$id"); do
      for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$d" 2>/dev/null && break; sleep 0.2; done
    done
  done
  rmdir /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io 2>/dev/null || true

  if awk -v d="$dir/" 'index($5, d) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
    die "$dir still has mounts; not removing it"
  fi
  rm -rf --one-file-system "$dir"
}

case "${1:-}" in
  up) shift; dir=""; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) echo "usage: node.sh up CONTROL_PLANE_DIR --fake-url URL --domain D [--domain D2 ...] [--credential-provider CONFIG --provider-bin-dir DIR] [--name NAME] [--owner-pid PID] | node.sh down NODE_DIR" >&2; exit 2 ;;
esac
