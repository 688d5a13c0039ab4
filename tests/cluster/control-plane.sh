#!/usr/bin/env bash
# Starts and stops a real local Kubernetes control plane: etcd, kube-apiserver and
# kube-controller-manager, all on loopback, on free ports chosen at run time, with data in a fresh
# directory. Used by the integration tests, the demo and scripts/test.
#
#   control-plane.sh up [DIR] [--owner-pid PID]
#       Builds the binaries if the cache lacks them (build.sh), starts everything, waits until the
#       API server is ready, and prints DIR. DIR (default: a new temporary directory) then holds:
#         kubeconfig    admin (system:masters) kubeconfig
#         env           shell lines: KUBECONFIG, APISERVER_URL, AUDIT_LOG, CLUSTER_BIN, CLUSTER_DIR
#         audit.log     the API server's audit log (every request, Metadata level; never rotated)
#         pki/          the generated CA, serving/client certificates, ServiceAccount signing key
#         logs/         each process's output
#       With --owner-pid, a watcher stops the control plane (and removes DIR) once PID has exited,
#       so a test binary that dies never leaves processes behind. ACR_HELPER_KCM_QPS sets
#       kube-controller-manager's API rate (default 20/s, as in a real cluster; the scale
#       benchmark raises it so seeding thousands of namespaces is not paced by it).
#       ACR_HELPER_APISERVER_FLAGS adds kube-apiserver flags (split on spaces), e.g.
#       --feature-gates=WatchList=false for an API server that cannot stream initial lists.
#   control-plane.sh down DIR
#       Stops every process started for DIR, waits for them to exit, and removes DIR.
#   control-plane.sh restart-apiserver DIR
#       Stops DIR's kube-apiserver (SIGTERM, waits) and starts it again with the command line
#       recorded at `up` (DIR/apiserver.cmdline): same flags and port, same etcd and data. Returns
#       once /readyz answers (the chaos test's "API server restart").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "control-plane: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stop_pids() {
  # One at a time, in reverse start order (controller-manager, API server, etcd), so the API server
  # shuts down while etcd still answers. Each gets 10 seconds before it is killed.
  local dir="$1" pid
  [ -f "$dir/pids" ] || return 0
  for pid in $(tac "$dir/pids"); do
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
}

cmd_down() {
  local dir="${1:?usage: control-plane.sh down DIR}"
  [ -d "$dir" ] || return 0
  # The watcher runs this very command when its owner exits; it must not stop itself.
  if [ -f "$dir/watcher.pid" ] && [ "$(cat "$dir/watcher.pid")" != "$$" ]; then
    kill -TERM "$(cat "$dir/watcher.pid")" 2>/dev/null || true
  fi
  stop_pids "$dir"
  # Only remove what this script created.
  if [ -f "$dir/.control-plane" ]; then rm -rf "$dir"; fi
}

gen_pki() {
  local pki="$1"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=acr-helper-test-ca" 2>/dev/null
    # kube-apiserver serving certificate.
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # Client certificates: the admin (system:masters) and the controller-manager's own identity.
    for who in "admin:system:masters" "kube-controller-manager:"; do
      local cn="${who%%:*}" org="${who#*:}" subj
      subj="/CN=$cn"
      [ "$cn" = kube-controller-manager ] && subj="/CN=system:kube-controller-manager"
      [ -n "$org" ] && subj="/O=$org$subj"
      openssl req -newkey rsa:2048 -nodes -keyout "$cn.key" -out "$cn.csr" -subj "$subj" 2>/dev/null
      printf 'extendedKeyUsage=clientAuth\n' > client.ext
      openssl x509 -req -in "$cn.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile client.ext -out "$cn.crt" 2>/dev/null
    done
    # ServiceAccount token signing key pair.
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
  )
}

write_kubeconfig() {
  local out="$1" url="$2" pki="$3" user="$4"
  cat > "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $url
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$user.crt
    client-key: $pki/$user.key
contexts:
- name: local
  context:
    cluster: local
    user: $user
current-context: local
EOF
}

wait_for() {
  # wait_for DESCRIPTION SECONDS PID COMMAND...: polls COMMAND until it succeeds; fails early when
  # PID exits.
  local what="$1" secs="$2" pid="$3"
  shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$deadline" ] || { log "$what not ready after ${secs}s"; return 1; }
    sleep 0.2
  done
}

cmd_up() {
  local dir="" owner=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      -*) die "unknown flag $1" ;;
      *) dir="$1"; shift ;;
    esac
  done
  local bin
  bin="$("$here/build.sh")"
  if [ -z "$dir" ]; then
    dir="$(mktemp -d "${TMPDIR:-/tmp}/acr-helper-cluster.XXXXXX")"
  else
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  fi
  dir="$(cd "$dir" && pwd)"
  touch "$dir/.control-plane"
  mkdir -p "$dir/logs" "$dir/etcd"
  trap 'log "start failed; logs follow"; tail -n 30 "$dir"/logs/*.log >&2 || true; cmd_down "$dir"' ERR

  local pki="$dir/pki"
  gen_pki "$pki"

  local etcd_port etcd_peer api_port
  etcd_port="$(free_port)"
  etcd_peer="$(free_port)"
  api_port="$(free_port)"
  local url="https://127.0.0.1:$api_port"

  "$bin/etcd" --data-dir "$dir/etcd" \
    --listen-client-url "http://127.0.0.1:$etcd_port" \
    --listen-peer-url "http://127.0.0.1:$etcd_peer" >"$dir/logs/etcd.log" 2>&1 &
  local etcd_pid=$!
  echo "$etcd_pid" >> "$dir/pids"
  wait_for etcd 30 "$etcd_pid" curl -sf "http://127.0.0.1:$etcd_port/health"

  cat > "$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
# One event per request, once the response is complete; Metadata says who did what to which object.
# Event objects are kept whole (level Request): the suite's leak audit searches every Event ever
# recorded for secrets, including those of namespaces deleted since.
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Request
  resources:
  - group: ""
    resources: ["events"]
  - group: "events.k8s.io"
    resources: ["events"]
- level: Metadata
EOF

  "$bin/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer="$url" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --api-audiences="$url" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=RBAC \
    --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,DefaultStorageClass,PodSecurity,Priority,RuntimeClass,ResourceQuota,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    --audit-log-maxbackup=0 --audit-log-maxsize=1048576 --audit-log-format=json \
    --allow-privileged=true \
    --profiling=false \
    ${ACR_HELPER_APISERVER_FLAGS:-} \
    --v=1 >"$dir/logs/kube-apiserver.log" 2>&1 &
  local api_pid=$!
  echo "$api_pid" >> "$dir/pids"
  write_kubeconfig "$dir/kubeconfig" "$url" "$pki" admin
  wait_for kube-apiserver 120 "$api_pid" curl -sf --cacert "$pki/ca.crt" \
    --cert "$pki/admin.crt" --key "$pki/admin.key" "$url/readyz"
  # Its exact command line (NUL-separated argv, read once it runs), so restart-apiserver can start
  # it again the same way.
  cp "/proc/$api_pid/cmdline" "$dir/apiserver.cmdline"

  write_kubeconfig "$dir/kube-controller-manager.kubeconfig" "$url" "$pki" kube-controller-manager
  # Only the controllers a real cluster needs for namespaces and ServiceAccounts to behave as they
  # do in production: the "default" ServiceAccount in every namespace, namespace deletion,
  # garbage collection, the kube-root-ca.crt ConfigMap, the aggregated ClusterRoles (`edit`,
  # `admin` and `view` are empty without it: the tenant tests act as `edit`), and the token
  # controller that fills a `kubernetes.io/service-account-token` Secret (the token-minting
  # attack of the threat model is real here), and the Deployment and ReplicaSet controllers (the
  # node tests run a Deployment; its Pods name their node, as there is no scheduler).
  "$bin/kube-controller-manager" \
    --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --controllers=serviceaccount-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,serviceaccount-token-controller,deployment-controller,replicaset-controller \
    --use-service-account-credentials=true \
    --root-ca-file="$pki/ca.crt" \
    --service-account-private-key-file="$pki/sa.key" \
    --leader-elect=false --secure-port=0 \
    --kube-api-qps="${ACR_HELPER_KCM_QPS:-20}" --kube-api-burst="$(( ${ACR_HELPER_KCM_QPS:-20} * 3 / 2 ))" \
    --v=1 >"$dir/logs/kube-controller-manager.log" 2>&1 &
  echo "$!" >> "$dir/pids"

  # The issuer's discovery documents are public, as on ACK (whose RRSA issuer is a public URL):
  # the fake cloud fetches /openid/v1/jwks anonymously, like Alibaba's STS fetches the real one.
  "$bin/kubectl" --kubeconfig "$dir/kubeconfig" create clusterrolebinding \
    service-account-issuer-discovery-public \
    --clusterrole=system:service-account-issuer-discovery --group=system:unauthenticated >/dev/null
  # A namespace is usable by tests once its "default" ServiceAccount exists.
  wait_for "default ServiceAccount" 60 "$api_pid" \
    "$bin/kubectl" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default

  cat > "$dir/env" <<EOF
export KUBECONFIG=$dir/kubeconfig
export APISERVER_URL=$url
export AUDIT_LOG=$dir/audit.log
export CLUSTER_BIN=$bin
export CLUSTER_DIR=$dir
EOF

  if [ -n "$owner" ]; then
    # Detached from our stdout/stderr so the caller's pipes close when this script returns.
    setsid bash -c '
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      exec "$2" down "$3"
    ' _ "$owner" "$here/control-plane.sh" "$dir" </dev/null >/dev/null 2>&1 &
    echo "$!" > "$dir/watcher.pid"
  fi
  trap - ERR
  log "ready: $url (kubeconfig $dir/kubeconfig)"
  echo "$dir"
}

cmd_restart_apiserver() {
  # Stops DIR's kube-apiserver (SIGTERM; see below for when it gets SIGKILL) and starts it again with the command line recorded at `up`: same flags, same port, same etcd (its
  # data untouched). Returns once /readyz answers. The new process replaces the old one in DIR/pids,
  # so `down` and the owner watcher still stop it.
  local dir="${1:?usage: control-plane.sh restart-apiserver DIR}"
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/apiserver.cmdline" ] || die "$dir/apiserver.cmdline missing (control plane started before restart-apiserver existed?)"
  [ -f "$dir/pids" ] || die "$dir/pids missing: is the control plane up?"
  local old="" pid
  for pid in $(cat "$dir/pids"); do
    case "$(head -z -n1 "/proc/$pid/cmdline" 2>/dev/null | tr -d '\0')" in
      */kube-apiserver | kube-apiserver) old="$pid" ;;
    esac
  done
  local -a cmd
  mapfile -d '' -t cmd < "$dir/apiserver.cmdline"
  [ "${#cmd[@]}" -gt 1 ] || die "$dir/apiserver.cmdline is empty"
  local url
  url="$(sed -n 's/^export APISERVER_URL=//p' "$dir/env")"
  [ -n "$url" ] || die "no APISERVER_URL in $dir/env"
  if [ -n "$old" ]; then
    # A SIGTERM'd kube-apiserver drains its in-flight requests, flushes and closes its audit log
    # and stops listening within a second or two, but then keeps its process up to its request
    # timeout (60 s) waiting for clients' HTTP/2 connections to go away. Once it has stopped
    # listening and closed the audit log it serves nothing more: it gets 2 s more to exit, then
    # SIGKILL, so an "API server restart" is an outage of seconds, as on a real node.
    local logf="$dir/logs/kube-apiserver.log" from stopped_at=""
    from=$(( $(wc -c < "$logf") + 1 ))
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 1 600); do
      kill -0 "$old" 2>/dev/null || break
      if [ -z "$stopped_at" ] && tail -c "+$from" "$logf" | grep -q 'HTTPServerStoppedListening' \
        && tail -c "+$from" "$logf" | grep -q 'audit backend shutdown completed'; then
        stopped_at=$(date +%s)
      fi
      if [ -n "$stopped_at" ] && [ "$(date +%s)" -ge $(( stopped_at + 2 )) ]; then break; fi
      sleep 0.1
    done
    if kill -0 "$old" 2>/dev/null; then
      [ -n "$stopped_at" ] || log "kube-apiserver $old did not stop serving within 60s; killing it"
      kill -KILL "$old" 2>/dev/null || true
      while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  echo "--- restart $(date -u +%FT%TZ) ---" >> "$dir/logs/kube-apiserver.log"
  "${cmd[@]}" </dev/null >>"$dir/logs/kube-apiserver.log" 2>&1 &
  local new=$!
  if [ -n "$old" ]; then
    sed -i "s/^$old\$/$new/" "$dir/pids"
  else
    # Keep the stop order: the API server goes before etcd, after the controller-manager.
    sed -i "1a $new" "$dir/pids"
  fi
  local pki="$dir/pki"
  wait_for kube-apiserver 120 "$new" curl -sf --cacert "$pki/ca.crt" \
    --cert "$pki/admin.crt" --key "$pki/admin.key" "$url/readyz" \
    || die "kube-apiserver did not come back; see $dir/logs/kube-apiserver.log"
  log "kube-apiserver restarted: pid $old -> $new, ready at $url"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) echo "usage: control-plane.sh up [DIR] [--owner-pid PID] | down DIR | restart-apiserver DIR" >&2; exit 2 ;;
esac
