#!/usr/bin/env bash
# Smoke check of the local node (node.sh), run by hand: a control plane, the fake cloud, one node
# whose registry serves fake-registry.cn-hangzhou.cr.aliyuncs.com, then
#   1. a Pod pulling <domain>/team/app:1 with the push credential in its imagePullSecrets: it must
#      succeed (exit code 0, the image's --version output in its log), and the registry log must
#      show the manifest pulled with that username;
#   2. a Pod with a wrong password: ErrImagePull/ImagePullBackOff, and a 401 for that username
#      (checked with the fake cloud) in the registry log.
# Everything is stopped and removed at the end, also on failure. Prints the times it measured.
#   tests/cluster/node/smoke.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$repo"
domain=fake-registry.cn-hangzhou.cr.aliyuncs.com

log() { echo "smoke: $*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/acr-helper-smoke.XXXXXX")"
cp_dir="" node_dir="" fake_pid=""
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -n "$node_dir" ]; then
    log "failed; the kubelet's last lines:"
    tail -n 20 "$node_dir/logs/kubelet.log" >&2 || true
  fi
  [ -z "$node_dir" ] || tests/cluster/node/node.sh down "$node_dir" || rc=1
  [ -z "$fake_pid" ] || kill "$fake_pid" 2>/dev/null || true
  [ -z "$cp_dir" ] || tests/cluster/control-plane.sh down "$cp_dir" || rc=1
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

t=$(now)
cp_dir="$(tests/cluster/control-plane.sh up --owner-pid $$)"
log "control plane up in $(since "$t")s"
# shellcheck disable=SC1091
. "$cp_dir/env"
kubectl=("$CLUSTER_BIN/kubectl" --kubeconfig "$KUBECONFIG")

# The fake cloud, with the tests' configuration (tests/support/fake_cloud.rs): the registry only
# asks its /_fake/registry-login.
cat > "$work/fake.json" <<EOF
{
  "default_region": "cn-hangzhou",
  "access_keys": {"LTAI5tFakeUserKey01": {"secret": "fake-user-secret-01", "principal": "user/ci"}},
  "roles": {"acs:ram::1234567890123456:role/acr-puller": {"max_session_seconds": 43200, "trusted_principals": ["*"]}},
  "oidc_providers": {},
  "instances": {
    "cri-fakeinstance0001": {
      "region": "cn-hangzhou",
      "endpoints": [{"EndpointType": "internet", "Enable": true, "Status": "RUNNING",
                     "Domains": [{"Domain": "$domain", "Type": "SYSTEM"}]}]
    }
  },
  "personal_regions": ["cn-hangzhou"],
  "metadata": {"role": "worker-role", "region": "cn-hangzhou", "require_token": false, "hardened_supported": true}
}
EOF
python="$(scripts/python-env)"
"$python" tests/fake-cloud/fake_cloud.py --config "$work/fake.json" --port-file "$work/fake.port" \
  </dev/null >"$work/fake.log" 2>&1 &
fake_pid=$!
for _ in $(seq 1 100); do [ -s "$work/fake.port" ] && break; sleep 0.1; done
fake_url="http://127.0.0.1:$(cat "$work/fake.port")"

t=$(now)
node_dir="$(tests/cluster/node/node.sh up "$cp_dir" --fake-url "$fake_url" --domain "$domain" --owner-pid $$)"
log "node up in $(since "$t")s"
# shellcheck disable=SC1091
. "$node_dir/env"

"${kubectl[@]}" -n default create secret docker-registry good --docker-server="$domain" \
  --docker-username="$PUSH_USER" --docker-password="$PUSH_PASSWORD" >/dev/null
"${kubectl[@]}" -n default create secret docker-registry bad --docker-server="$domain" \
  --docker-username="$PUSH_USER" --docker-password="not-the-password" >/dev/null

pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
  nodeName: $NODE_NAME
  hostNetwork: true
  automountServiceAccountToken: false
  restartPolicy: Never
  imagePullSecrets:
  - name: $2
  containers:
  - name: app
    image: $IMAGE
    imagePullPolicy: Always
    command: ["/aliyun-acr-credential-helper", "--version"]
EOF
}

# 1. The push credential: Succeeded, exit code 0.
t=$(now)
pod good good | "${kubectl[@]}" create -f - >/dev/null
"${kubectl[@]}" -n default wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s pod/good >/dev/null \
  || { "${kubectl[@]}" -n default get pod good -o yaml >&2; exit 1; }
good_secs="$(since "$t")"
code="$("${kubectl[@]}" -n default get pod good -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')"
[ "$code" = 0 ] || { log "pod good exited with $code"; exit 1; }
# Its output, from the node's pod log folder (kubectl logs would reach the kubelet by its node name).
out="$(cat "$node_dir"/kubelet/pod-logs/default_good_*/app/0.log)"
grep -q "aliyun-acr-credential-helper " <<<"$out" || { log "pod good printed: $out"; exit 1; }
python3 - "$REGISTRY_LOG" "$PUSH_USER" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
pulls = [l for l in lines if l["method"] in ("GET", "HEAD") and l["path"] == "/v2/team/app/manifests/1"
         and l["username"] == sys.argv[2] and l["status"] == 200]
assert pulls, "no manifest pull by %s in the registry log" % sys.argv[2]
EOF
log "pod good: Succeeded ${good_secs}s after its creation, exit code 0; registry log: pulled by $PUSH_USER"

# 2. A wrong password: 401, ErrImagePull/ImagePullBackOff.
t=$(now)
pod bad bad | "${kubectl[@]}" create -f - >/dev/null
reason=""
for _ in $(seq 1 300); do
  reason="$("${kubectl[@]}" -n default get pod bad -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
  case "$reason" in ErrImagePull|ImagePullBackOff) break ;; esac
  sleep 0.2
done
case "$reason" in ErrImagePull|ImagePullBackOff) ;; *) log "pod bad: waiting reason '$reason'"; exit 1 ;; esac
bad_secs="$(since "$t")"
python3 - "$REGISTRY_LOG" "$PUSH_USER" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
refused = [l for l in lines if l["username"] == sys.argv[2] and l["status"] == 401 and l["auth"] == "fake"]
assert refused, "no 401 for %s in the registry log" % sys.argv[2]
EOF
log "pod bad: $reason after ${bad_secs}s; registry log: 401 for $PUSH_USER (the fake refused the password)"

t=$(now)
tests/cluster/node/node.sh down "$node_dir"
node_dir=""
log "node down in $(since "$t")s"
echo "smoke: ok (Pod created -> Succeeded: ${good_secs}s)"
