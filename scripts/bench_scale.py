"""The scale benchmark behind scripts/bench-scale (see there)."""
import json
import os
import sys
import time
import urllib.request

from benchlib import Bench

N = int(sys.argv[1])
b = Bench()
try:
    names = [f"bench-{i:03d}" for i in range(N)]
    docs = []
    for ns in names:
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for sa in ("app1", "app2"):
            docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    b.apply({"apiVersion": "v1", "kind": "List", "items": docs})

    def sas():
        items = json.loads(b.kubectl("get", "serviceaccounts", "-A", "-o", "json"))["items"]
        return [s for s in items if s["metadata"]["namespace"].startswith("bench-")]

    while len(sas()) < 3 * N:  # the "default" ServiceAccounts come from kube-controller-manager
        time.sleep(0.5)
    ctl = b.controller("--webhook-addr", "127.0.0.1:0")

    audit = b.env["AUDIT_LOG"]
    offset = os.path.getsize(audit)
    t0 = time.monotonic()
    b.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
             "data": {"watch-namespace": ",".join(names), "service-account": "*",
                      "acr-registry-info": "- instanceId: cri-demo0000000001\n  regionId: cn-hangzhou\n"}})
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
    calls = json.load(urllib.request.urlopen(b.fake + "/_fake/calls"))["calls"]
    hwm = next(l.split()[1] for l in open(f"/proc/{ctl.pid}/status") if l.startswith("VmHWM"))
    print(f"namespaces: {N}, ServiceAccounts: {3 * N}")
    print(f"time from applying the ConfigMap to every ServiceAccount patched: {elapsed:.2f} s")
    print(f"API writes by the controller: {sum(writes.values())} {json.dumps(writes, sort_keys=True)}, "
          f"by response code {json.dumps(statuses, sort_keys=True)}; other requests (reads, watches): {reads}")
    print(f"cloud calls: {json.dumps({k: v for k, v in calls.items() if v}, sort_keys=True)}")
    print(f"controller peak memory (VmHWM): {int(hwm) / 1024:.1f} MiB")
finally:
    b.close()
