"""The real-node benchmark behind scripts/bench-node (see there); python3 stdlib only.

One fresh control plane, the fake cloud, the release binary, and two real nodes
(tests/cluster/node/node.sh): node A pulls with the pull Secrets the controller writes, node B
with no Secret at all, through the credential provider (this binary's `credential-provider`).
Every figure comes from what the API server, the kubelet and the registry recorded, or from
polling the Pod's status every 50 ms; nothing is asserted on a timing.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime

from benchlib import BIN, ROOT, Bench, Broken, free_port

DOMAIN = "demo-registry.cn-hangzhou.cr.aliyuncs.com"
VPC_DOMAIN = "demo-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
INSTANCE = "cri-demo0000000001"
NODE_SH = os.path.join(ROOT, "tests/cluster/node/node.sh")
PULLED = re.compile(r"in ([0-9.]+)(ms|s) \(")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))] if v else None


def node_up(b, name, provider=None):
    args = [NODE_SH, "up", b.dir, "--fake-url", b.fake, "--domain", DOMAIN, "--domain", VPC_DOMAIN,
            "--name", name, "--owner-pid", str(os.getpid())]
    if provider:
        args += ["--credential-provider", provider[0], "--provider-bin-dir", provider[1]]
    out = subprocess.run(args, text=True, capture_output=True)
    if out.returncode != 0:
        raise Broken(f"node.sh up {name} failed: {out.stderr[-2000:]}")
    node_dir = out.stdout.strip()
    env = {}
    for line in open(os.path.join(node_dir, "env")):
        k, v = line.replace("export ", "", 1).strip().split("=", 1)
        env[k] = v.strip("'\"")
    env["NODE_DIR"] = node_dir
    return env


def node_down(env):
    subprocess.run([NODE_SH, "down", env["NODE_DIR"]], capture_output=True)


def pod(name, node, image, sa="default"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "hostNetwork": True, "automountServiceAccountToken": False,
                     "serviceAccountName": sa, "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always",
                                     "command": ["/aliyun-acr-credential-helper", "--version"]}]}}


def wait_started(b, ns, name, timeout=120):
    """Polls until the container has started (running or already exited); returns when, the
    exit code (None while running), and whether a pull failed first (the kubelet backs off and
    tries again)."""
    deadline = time.monotonic() + timeout
    failed = False
    while time.monotonic() < deadline:
        p = b.api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        for c in (p.get("status") or {}).get("containerStatuses") or []:
            state = c.get("state") or {}
            if "terminated" in state:
                return time.monotonic(), state["terminated"].get("exitCode"), failed
            if "running" in state:
                return time.monotonic(), None, failed
            waiting = (state.get("waiting") or {}).get("reason", "")
            failed = failed or waiting in ("ErrImagePull", "ImagePullBackOff")
        time.sleep(0.05)
    raise Broken(f"{ns}/{name} did not start within {timeout} s")


def pulled_ms(b, ns, name):
    """The kubelet's own figure for the pull (its `Pulled` Event: "... in 512ms (...)")."""
    events = b.api("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    for e in events:
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == "Pulled":
            m = PULLED.search(e.get("message", ""))
            if m:
                return float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
    return None


def registry_lines(env):
    try:
        with open(env["REGISTRY_LOG"]) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def namespace(b, name):
    b.api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            b.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return
        except Exception:  # noqa: BLE001 (404 until kube-controller-manager made it)
            time.sleep(0.02)
    raise Broken(f"no default ServiceAccount in {name}")


def main(argv):
    ap = argparse.ArgumentParser(prog="scripts/bench-node")
    ap.add_argument("--namespaces", type=int, default=20, help="new namespaces, one Pod each (default 20)")
    ap.add_argument("--pulls", type=int, default=10, help="pulls per node for the provider comparison (default 10)")
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    report = {"namespaces": a.namespaces, "pulls": a.pulls}
    b = Bench()
    nodes = []
    work = tempfile.mkdtemp(prefix="bench-node-")
    try:
        step = lambda m: print(f"bench-node: {m}", file=sys.stderr, flush=True)  # noqa: E731
        step("node A (pull Secrets)")
        a_env = node_up(b, "node-a")
        nodes.append(a_env)
        # Node B: the credential provider, as the node's RAM role (the fake's metadata service).
        bin_dir = os.path.join(work, "bin")
        os.makedirs(bin_dir)
        os.symlink(BIN, os.path.join(bin_dir, "aliyun-acr-credential-helper"))
        provider_args = ["credential-provider", "--region", "cn-hangzhou", "--sts-endpoint", b.fake,
                         "--cr-endpoint", b.fake + "/r/{region}", "--metadata-endpoint", b.fake,
                         "--instance", f"{DOMAIN}={INSTANCE}", "--instance", f"{VPC_DOMAIN}={INSTANCE}"]
        config = os.path.join(work, "credential-provider.json")
        with open(config, "w") as f:
            json.dump({"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
                       "providers": [{"name": "aliyun-acr-credential-helper",
                                      "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                                      "matchImages": ["*.*.cr.aliyuncs.com"], "defaultCacheDuration": "1m",
                                      "args": provider_args}]}, f)
        step("node B (credential provider)")
        b_env = node_up(b, "node-b", (config, bin_dir))
        nodes.append(b_env)

        webhook_port = free_port()
        ctl = b.controller("--identity", "bench-node", "--webhook-addr", f"127.0.0.1:{webhook_port}",
                           "--webhook-url", f"https://127.0.0.1:{webhook_port}/mutate",
                           "--webhook-cert-sans", "127.0.0.1", metrics_port=str(free_port()))
        names = [f"bench-node-{i:02d}" for i in range(a.namespaces)]
        b.api("POST", "/api/v1/namespaces/kube-system/configmaps", {
            "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
            "data": {"watch-namespace": ",".join(names + ["bench-node-warm"]), "service-account": "*",
                     "acr-registry-info": f"- instanceId: {INSTANCE}\n  regionId: cn-hangzhou\n",
                     "webhook-configuration": "pod-injection: true\n"}})
        # Warm: the Pod webhook registered and its certificate loaded, the image on node A once.
        namespace(b, "bench-node-warm")
        deadline = time.monotonic() + 60
        while True:
            probe = b.api("POST", "/api/v1/namespaces/bench-node-warm/pods?dryRun=All",
                          pod("probe", "node-a", a_env["IMAGE"]))
            if any(r.get("name") == "aliyun-acr-credential-helper"
                   for r in probe["spec"].get("imagePullSecrets") or []):
                break
            if time.monotonic() > deadline:
                raise Broken("the Pod webhook never added the reference")
            time.sleep(0.2)
        b.api("POST", "/api/v1/namespaces/bench-node-warm/pods", pod("warm", "node-a", a_env["IMAGE"]))
        wait_started(b, "bench-node-warm", "warm")

        # 1. Namespace created -> its first Pod's container started (the Pod is created as soon
        #    as the namespace's default ServiceAccount exists; Pod injection gives it the
        #    reference; the kubelet pulls with imagePullPolicy Always).
        step(f"{a.namespaces} new namespaces, one Pod each, on node A")
        latencies, round_trips, backed_off = [], [], 0
        for ns in names:
            before = len(registry_lines(a_env))
            t0 = time.monotonic()
            namespace(b, ns)
            b.api("POST", f"/api/v1/namespaces/{ns}/pods", pod("first", "node-a", a_env["IMAGE"]))
            started, code, failed = wait_started(b, ns, "first")
            latencies.append(started - t0)
            backed_off += failed
            time.sleep(0.3)  # the registry logs a request once it is answered
            round_trips.append(len(registry_lines(a_env)) - before)
            if code not in (0, None):
                raise Broken(f"{ns}/first exited {code}")
        report["namespace_to_running_seconds"] = {"p50": pct(latencies, 50), "p99": pct(latencies, 99),
                                                  "max": max(latencies)}
        report["registry_requests_per_pull"] = {"p50": pct(round_trips, 50), "max": max(round_trips)}
        report["first_pulls_that_failed"] = backed_off
        # From the audit log: when each namespace's pull Secret was created, against its
        # creation and its Pod's.
        times = {}
        with open(os.path.join(b.dir, "audit.log")) as f:
            for line in f:
                e = json.loads(line)
                ref = e.get("objectRef") or {}
                ns, res, verb = ref.get("namespace") or ref.get("name"), ref.get("resource"), e.get("verb")
                code = (e.get("responseStatus") or {}).get("code", 0)
                if verb != "create" or not 200 <= code < 300 or ns not in names:
                    continue
                kind = {"namespaces": "ns", "secrets": "secret", "pods": "pod"}.get(res)
                if kind and not (kind == "secret" and ref.get("name") != "aliyun-acr-credential-helper"):
                    times.setdefault(ns, {})[kind] = datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        secret_after_ns = [t["secret"] - t["ns"] for t in times.values() if "secret" in t and "ns" in t]
        after_pod = sum(1 for t in times.values() if "secret" in t and "pod" in t and t["secret"] > t["pod"])
        report["secret_created_after_namespace_seconds"] = {"p50": pct(secret_after_ns, 50),
                                                           "p99": pct(secret_after_ns, 99)}
        report["secrets_created_after_their_pod"] = after_pod

        # 2. The credential provider's cost per pull, as the kubelet reports it: node B (plugin,
        #    no Secret) against node A (a pull Secret), the same image, imagePullPolicy Always.
        step(f"{a.pulls} pulls on each node")
        namespace(b, "bench-node-nosecret")
        secret_ms, provider_ms = [], []
        for i in range(a.pulls):
            b.api("POST", f"/api/v1/namespaces/{names[0]}/pods", pod(f"a-{i}", "node-a", a_env["IMAGE"]))
            wait_started(b, names[0], f"a-{i}")
            b.api("POST", "/api/v1/namespaces/bench-node-nosecret/pods", pod(f"b-{i}", "node-b", b_env["IMAGE"]))
            wait_started(b, "bench-node-nosecret", f"b-{i}")
        time.sleep(1)
        for i in range(a.pulls):
            secret_ms.append(pulled_ms(b, names[0], f"a-{i}"))
            provider_ms.append(pulled_ms(b, "bench-node-nosecret", f"b-{i}"))
        if None in secret_ms or None in provider_ms:
            raise Broken("a Pulled Event without a duration")
        report["pull_ms_kubelet"] = {
            "pull_secret": {"p50": pct(secret_ms, 50), "p99": pct(secret_ms, 99)},
            "provider_first": provider_ms[0],
            "provider_cached": {"p50": pct(provider_ms[1:], 50), "p99": pct(provider_ms[1:], 99)},
            "added_first_ms": provider_ms[0] - pct(secret_ms, 50),
            "added_cached_ms": pct(provider_ms[1:], 50) - pct(secret_ms, 50)}
        report["ok"] = True
        ctl.terminate()
    except Broken as e:
        report["ok"] = False
        report["broken"] = str(e)
        print(f"bench-node: BROKEN: {e}", file=sys.stderr)
    finally:
        keep = os.environ.get("ACR_HELPER_BENCH_NODE_LOGS")
        for n in nodes:
            if keep:
                import shutil
                os.makedirs(keep, exist_ok=True)
                for f in ("logs/kubelet.log", "registry.log"):
                    src = os.path.join(n["NODE_DIR"], f)
                    if os.path.exists(src):
                        shutil.copy(src, os.path.join(keep, n["NODE_NAME"] + "-" + os.path.basename(f)))
            node_down(n)
        b.close(keep_logs=None if report.get("ok") else os.path.join(ROOT, "target/bench-node-broken"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    if report.get("ok"):
        r = report
        print(f"namespace created -> first Pod's container started ({r['namespaces']} namespaces): "
              f"p50 {r['namespace_to_running_seconds']['p50']:.2f} s, p99 {r['namespace_to_running_seconds']['p99']:.2f} s")
        sa = r["secret_created_after_namespace_seconds"]
        print(f"pull Secret created after its namespace: p50 {sa['p50'] * 1000:.0f} ms, p99 {sa['p99'] * 1000:.0f} ms; "
              f"after its Pod: {r['secrets_created_after_their_pod']} of {r['namespaces']}")
        print(f"registry requests per pull: p50 {r['registry_requests_per_pull']['p50']}, "
              f"max {r['registry_requests_per_pull']['max']}; first pulls that failed and were retried: "
              f"{r['first_pulls_that_failed']} of {r['namespaces']}")
        p = r["pull_ms_kubelet"]
        print(f"pull as the kubelet reports it ({r['pulls']} each): pull Secret p50 {p['pull_secret']['p50']:.0f} ms; "
              f"credential provider first {p['provider_first']:.0f} ms (+{p['added_first_ms']:.0f}), "
              f"cached p50 {p['provider_cached']['p50']:.0f} ms (+{p['added_cached_ms']:.0f})")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
