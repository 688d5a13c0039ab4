"""The webhook latency benchmark behind scripts/bench-webhook (see there)."""
import base64
import http.client
import json
import socket
import ssl
import sys
import time

from benchlib import Bench

N = int(sys.argv[1])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def create_many(b, ns, prefix):
    times, patched = [], 0
    for i in range(N):
        t = time.perf_counter()
        sa = b.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": f"{prefix}-{i}"}})
        times.append((time.perf_counter() - t) * 1000)
        patched += any(r.get("name") == "aliyun-acr-credential-helper" for r in sa.get("imagePullSecrets") or [])
    times.sort()
    return times, patched


def pct(times, p):
    return times[min(len(times) - 1, int(len(times) * p))]


b = Bench()
try:
    b.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-wh"}})
    port = free_port()
    b.controller("--webhook-addr", f"127.0.0.1:{port}", "--webhook-url", f"https://127.0.0.1:{port}/mutate",
                 "--webhook-cert-sans", "127.0.0.1")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
              "data": {"watch-namespace": "bench-wh", "service-account": "*",
                       "acr-registry-info": "- instanceId: cri-demo0000000001\n  regionId: cn-hangzhou\n",
                       "webhook-configuration": "enable: false\n"}}
    b.apply(config)
    time.sleep(2)
    base, _ = create_many(b, "bench-wh", "plain")
    config["data"]["webhook-configuration"] = "enable: true\nfailure-policy: Ignore\ntimeout-seconds: 10\n"
    b.apply(config)
    # Wait until the API server calls the webhook (registered, certificate loaded).
    i = 0
    while True:
        i += 1
        sa = b.api("POST", "/api/v1/namespaces/bench-wh/serviceaccounts", {"metadata": {"name": f"probe-{i}"}})
        if sa.get("imagePullSecrets"):
            break
        time.sleep(0.2)
    hooked, patched = create_many(b, "bench-wh", "hooked")

    # The webhook alone: AdmissionReviews posted straight to it over one TLS connection.
    secret = json.loads(b.kubectl("-n", "kube-system", "get", "secret",
                                  "aliyun-acr-credential-helper-webhook-tls", "-o", "json"))
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    ctx = ssl.create_default_context(cadata=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    direct = []
    for i in range(N):
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "name": f"direct-{i}", "namespace": "bench-wh", "operation": "CREATE", "userInfo": {"username": "bench"},
            "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"direct-{i}", "namespace": "bench-wh"}}}}
        body = json.dumps(review)
        t = time.perf_counter()
        conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
        answer = json.load(conn.getresponse())
        direct.append((time.perf_counter() - t) * 1000)
        assert answer["response"]["allowed"] is True
    direct.sort()

    # Pod injection: Pods in a namespace whose ServiceAccounts are never patched, so every Pod
    # reaches the Pod webhook (the API server does not call it for a Pod that already has the
    # reference through its ServiceAccount).
    b.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-wh-pods"}})
    config["data"]["watch-namespace"] = "bench-wh,bench-wh-pods"
    config["data"]["patch-service-accounts"] = "false"
    config["data"]["webhook-configuration"] = "enable: true\n"
    b.apply(config)
    for _ in range(100):
        try:
            b.api("GET", "/api/v1/namespaces/bench-wh-pods/serviceaccounts/default")
            break
        except Exception:
            time.sleep(0.2)

    def pod(name):
        return {"metadata": {"name": name}, "spec": {"serviceAccountName": "default", "containers": [
            {"name": "c", "image": "fake-registry.cn-hangzhou.cr.aliyuncs.com/ns/app:1"}]}}

    def create_pods(prefix):
        times, injected = [], 0
        for i in range(N):
            t = time.perf_counter()
            p = b.api("POST", "/api/v1/namespaces/bench-wh-pods/pods", pod(f"{prefix}-{i}"))
            times.append((time.perf_counter() - t) * 1000)
            injected += any(r.get("name") == "aliyun-acr-credential-helper"
                            for r in p["spec"].get("imagePullSecrets") or [])
        times.sort()
        return times, injected

    pod_base, _ = create_pods("plain")
    config["data"]["webhook-configuration"] = "enable: true\npod-injection: true\n"
    b.apply(config)
    i = 0
    while True:
        i += 1
        p = b.api("POST", "/api/v1/namespaces/bench-wh-pods/pods", pod(f"probe-{i}"))
        if p["spec"].get("imagePullSecrets"):
            break
        time.sleep(0.2)
    pod_hooked, injected = create_pods("hooked")
    # A new connection: the webhook closes one left idle longer than its client timeout (10 s).
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    pod_direct = []
    for i in range(N):
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": f"00000000-0000-0000-0001-{i:012d}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": f"direct-{i}", "namespace": "bench-wh-pods", "operation": "CREATE",
            "userInfo": {"username": "bench"}, "object": dict(pod(f"direct-{i}"), apiVersion="v1", kind="Pod")}}
        body = json.dumps(review)
        t = time.perf_counter()
        conn.request("POST", "/mutate-pods", body, {"Content-Type": "application/json"})
        answer = json.load(conn.getresponse())
        pod_direct.append((time.perf_counter() - t) * 1000)
        assert answer["response"]["allowed"] is True and answer["response"].get("patch")
    pod_direct.sort()

    print(f"ServiceAccount creations, {N} each, sequential, measured at the client:")
    print(f"  without the webhook: p50 {pct(base, 0.5):.2f} ms, p99 {pct(base, 0.99):.2f} ms")
    print(f"  with the webhook:    p50 {pct(hooked, 0.5):.2f} ms, p99 {pct(hooked, 0.99):.2f} ms "
          f"({patched}/{N} created with the reference)")
    print(f"The webhook alone ({N} AdmissionReviews over one TLS connection): "
          f"p50 {pct(direct, 0.5):.3f} ms, p99 {pct(direct, 0.99):.3f} ms")
    print(f"Pod creations, {N} each, sequential, measured at the client:")
    print(f"  without Pod injection: p50 {pct(pod_base, 0.5):.2f} ms, p99 {pct(pod_base, 0.99):.2f} ms")
    print(f"  with Pod injection:    p50 {pct(pod_hooked, 0.5):.2f} ms, p99 {pct(pod_hooked, 0.99):.2f} ms "
          f"({injected}/{N} stored with the reference)")
    print(f"The Pod webhook alone ({N} AdmissionReviews over one TLS connection): "
          f"p50 {pct(pod_direct, 0.5):.3f} ms, p99 {pct(pod_direct, 0.99):.3f} ms")
finally:
    b.close()
