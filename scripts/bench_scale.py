"""The scale benchmark behind scripts/bench-scale (see there)."""
import json
import os
import subprocess
import sys
import time
import urllib.request

N = int(sys.argv[1])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/aliyun-acr-credential-helper")

def run(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout

cp_dir = run(os.path.join(ROOT, "tests/cluster/control-plane.sh"), "up", "--owner-pid", str(os.getpid())).strip()
env = dict(os.environ)
for line in open(os.path.join(cp_dir, "env")):
    k, v = line.replace("export ", "", 1).strip().split("=", 1)
    env[k] = v
kubectl = os.path.join(env["CLUSTER_BIN"], "kubectl")
procs = []
try:
    port_file = os.path.join(cp_dir, "fake.port")
    procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/fake-cloud/fake_cloud.py"),
                                   "--config", os.path.join(ROOT, "tests/fake-cloud/demo-config.json"),
                                   "--port-file", port_file], stderr=subprocess.DEVNULL))
    while not os.path.exists(port_file):
        time.sleep(0.05)
    fake = f"http://127.0.0.1:{open(port_file).read().strip()}"

    names = [f"bench-{i:03d}" for i in range(N)]
    docs = []
    for ns in names:
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for sa in ("app1", "app2"):
            docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    manifest = os.path.join(cp_dir, "bench.json")
    with open(manifest, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, f)
    run(kubectl, "apply", "-f", manifest, env=env)

    def sas():
        items = json.loads(run(kubectl, "get", "serviceaccounts", "-A", "-o", "json", env=env))["items"]
        return [s for s in items if s["metadata"]["namespace"].startswith("bench-")]

    while len(sas()) < 3 * N:  # the "default" ServiceAccounts come from kube-controller-manager
        time.sleep(0.5)

    metrics_port = "18099"
    log = open(os.path.join(cp_dir, "logs/controller.log"), "w")
    ctl = subprocess.Popen([BIN, "--token-mode", "workerRole", "--sts-endpoint", fake,
                            "--cr-endpoint", fake + "/r/{region}", "--metadata-endpoint", fake,
                            "--metrics-addr", f"127.0.0.1:{metrics_port}", "--webhook-addr", "127.0.0.1:0",
                            "--log-level", "warn"],
                           env=env, stdout=log, stderr=log)
    procs.append(ctl)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)

    audit = env["AUDIT_LOG"]
    offset = os.path.getsize(audit)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
          "data": {"watch-namespace": ",".join(names), "service-account": "*",
                   "acr-registry-info": "- instanceId: cri-demo0000000001\n  regionId: cn-hangzhou\n"}}
    cm_file = os.path.join(cp_dir, "cm.json")
    with open(cm_file, "w") as f:
        json.dump(cm, f)
    t0 = time.monotonic()
    run(kubectl, "apply", "-f", cm_file, env=env)
    while True:
        done = sum(1 for s in sas() if any(r.get("name") == "aliyun-acr-credential-helper"
                                           for r in s.get("imagePullSecrets") or []))
        if done == 3 * N:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    time.sleep(2)  # let in-flight work land before counting

    writes, reads, statuses = {}, 0, {}
    with open(audit) as f:
        f.seek(offset)
        for line in f:
            e = json.loads(line)
            if not e.get("userAgent", "").startswith("aliyun-acr-credential-helper/"):
                continue
            res = e.get("objectRef", {}).get("resource", "?")
            if res in ("leases", "events"):
                continue
            if e.get("verb") not in ("create", "update", "patch", "delete"):
                reads += 1
                continue
            code = str(e.get("responseStatus", {}).get("code", "?"))
            key = f"{e['verb']} {res}"
            writes[key] = writes.get(key, 0) + 1
            statuses[code] = statuses.get(code, 0) + 1
    calls = json.load(urllib.request.urlopen(fake + "/_fake/calls"))["calls"]
    hwm = next(l.split()[1] for l in open(f"/proc/{ctl.pid}/status") if l.startswith("VmHWM"))
    print(f"namespaces: {N}, ServiceAccounts: {3 * N}")
    print(f"time from applying the ConfigMap to every ServiceAccount patched: {elapsed:.2f} s")
    print(f"API writes by the controller: {sum(writes.values())} {json.dumps(writes, sort_keys=True)}, "
          f"by response code {json.dumps(statuses, sort_keys=True)}; other requests (reads, watches): {reads}")
    print(f"cloud calls: {json.dumps({k: v for k, v in calls.items() if v}, sort_keys=True)}")
    print(f"controller peak memory (VmHWM): {int(hwm) / 1024:.1f} MiB")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)
    subprocess.run([os.path.join(ROOT, "tests/cluster/control-plane.sh"), "down", cp_dir])
