"""Shared set-up of the benchmarks: a local control plane, the fake cloud and the release binary."""
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/aliyun-acr-credential-helper")


def run(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


class Bench:
    def __init__(self):
        self.dir = run(os.path.join(ROOT, "tests/cluster/control-plane.sh"), "up", "--owner-pid", str(os.getpid())).strip()
        self.env = dict(os.environ)
        for line in open(os.path.join(self.dir, "env")):
            k, v = line.replace("export ", "", 1).strip().split("=", 1)
            self.env[k] = v
        self.kubectl_bin = os.path.join(self.env["CLUSTER_BIN"], "kubectl")
        self.procs = []
        port_file = os.path.join(self.dir, "fake.port")
        self.procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/fake-cloud/fake_cloud.py"),
                                            "--config", os.path.join(ROOT, "tests/fake-cloud/demo-config.json"),
                                            "--port-file", port_file], stderr=subprocess.DEVNULL))
        while not os.path.exists(port_file):
            time.sleep(0.05)
        self.fake = f"http://127.0.0.1:{open(port_file).read().strip()}"
        pki = os.path.join(self.dir, "pki")
        self.tls = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.tls.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def kubectl(self, *args):
        return run(self.kubectl_bin, *args, env=self.env)

    def apply(self, obj):
        path = os.path.join(self.dir, f"apply-{time.monotonic_ns()}.json")
        with open(path, "w") as f:
            json.dump(obj, f)
        self.kubectl("apply", "-f", path)

    def controller(self, *args, metrics_port="18099"):
        log = open(os.path.join(self.dir, "logs/controller.log"), "a")
        p = subprocess.Popen([BIN, "--token-mode", "workerRole", "--sts-endpoint", self.fake,
                              "--cr-endpoint", self.fake + "/r/{region}", "--metadata-endpoint", self.fake,
                              "--metrics-addr", f"127.0.0.1:{metrics_port}", "--log-level", "warn", *args],
                             env=self.env, stdout=log, stderr=log)
        self.procs.append(p)
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status == 200:
                    return p
            except OSError:
                pass
            time.sleep(0.1)

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.env["APISERVER_URL"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.tls, timeout=30) as r:
            return json.load(r)

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        subprocess.run([os.path.join(ROOT, "tests/cluster/control-plane.sh"), "down", self.dir])
