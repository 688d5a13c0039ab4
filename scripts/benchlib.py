"""Shared set-up of the benchmarks: a local control plane, the fake cloud and the release binary,
plus readers of what the API server saw (its audit log) and of a process's memory."""
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binary under test: what scripts/build-release built (the static binary that ships).
BIN = os.environ.get("ACR_HELPER_BIN") or os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/aliyun-acr-credential-helper")


class Broken(Exception):
    """Something the benchmark needs did not work (as opposed to a slow result)."""


def run(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Bench:
    def __init__(self):
        # kube-controller-manager at its default 20 requests/s would pace the seeding of
        # thousands of namespaces (their "default" ServiceAccounts); it is not what is measured.
        env = dict(os.environ)
        env.setdefault("ACR_HELPER_KCM_QPS", "500")
        self.dir = run(os.path.join(ROOT, "tests/cluster/control-plane.sh"), "up", "--owner-pid", str(os.getpid()), env=env).strip()
        self.env = dict(os.environ)
        for line in open(os.path.join(self.dir, "env")):
            k, v = line.replace("export ", "", 1).strip().split("=", 1)
            self.env[k] = v
        self.kubectl_bin = os.path.join(self.env["CLUSTER_BIN"], "kubectl")
        self.benchtool_bin = os.path.join(self.env["CLUSTER_BIN"], "benchtool")
        self.procs = []
        port_file = os.path.join(self.dir, "fake.port")
        self.procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/fake-cloud/fake_cloud.py"),
                                            "--config", os.path.join(ROOT, "tests/fake-cloud/demo-config.json"),
                                            "--port-file", port_file], stderr=subprocess.DEVNULL))
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            time.sleep(0.05)
        self.fake = f"http://127.0.0.1:{open(port_file).read().strip()}"
        pki = os.path.join(self.dir, "pki")
        self.tls = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.tls.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def kubectl(self, *args):
        return run(self.kubectl_bin, *args, env=self.env)

    def benchtool(self, *args):
        """Runs tests/cluster/k8s/benchtool and returns the JSON it prints."""
        p = subprocess.run([self.benchtool_bin, *args], text=True, capture_output=True, env=self.env)
        if p.returncode != 0:
            raise Broken(f"benchtool {args[0]} failed ({p.returncode}): {p.stderr.strip()} {p.stdout.strip()}")
        return json.loads(p.stdout)

    def apply(self, obj):
        path = os.path.join(self.dir, f"apply-{time.monotonic_ns()}.json")
        with open(path, "w") as f:
            json.dump(obj, f)
        self.kubectl("apply", "-f", path)

    def controller(self, *args, metrics_port="18099", ready_timeout=120):
        log = open(os.path.join(self.dir, "logs/controller.log"), "a")
        p = subprocess.Popen([BIN, "--token-mode", "workerRole", "--sts-endpoint", self.fake,
                              "--cr-endpoint", self.fake + "/r/{region}", "--metadata-endpoint", self.fake,
                              "--metrics-addr", f"127.0.0.1:{metrics_port}", "--log-level", "warn", *args],
                             env=self.env, stdout=log, stderr=log)
        self.procs.append(p)
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status == 200:
                    return p
            except OSError:
                pass
            if p.poll() is not None:
                raise Broken(f"the controller exited with {p.returncode} before it was ready "
                             f"(see {self.dir}/logs/controller.log)")
            if time.monotonic() > deadline:
                raise Broken(f"the controller was not ready after {ready_timeout} s")
            time.sleep(0.1)

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.env["APISERVER_URL"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.tls, timeout=60) as r:
            return json.load(r)

    def fake_api(self, method, path, body=None):
        req = urllib.request.Request(self.fake + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def close(self, keep_logs=None):
        """Stops everything; `keep_logs` (a directory) keeps the processes' logs and the audit
        log (of a broken run)."""
        if keep_logs:
            import shutil
            shutil.rmtree(keep_logs, ignore_errors=True)
            shutil.copytree(os.path.join(self.dir, "logs"), keep_logs)
            shutil.copy(os.path.join(self.dir, "audit.log"), keep_logs)
            print(f"bench: logs kept in {keep_logs}", file=sys.stderr)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run([os.path.join(ROOT, "tests/cluster/control-plane.sh"), "down", self.dir])


def proc_memory(pid):
    """VmHWM and VmRSS of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid):
    """User + system CPU time a process has used, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_connections(pid, port):
    """Established TCP connections of a process to a local port (e.g. the API server's)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                n += 1
    return n


def ts(value):
    """An audit timestamp (RFC 3339, microseconds, Z) as seconds since the epoch."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Audit:
    """The API server's audit log (one JSON event per request, written when the response is
    complete; a watch is logged when it ends). read() returns the events appended since the last
    call, reduced to the fields the benchmarks use; only those `keep` accepts are kept in
    `events`."""

    def __init__(self, path, keep=None):
        self.path = path
        self.keep = keep or (lambda e: True)
        self.offset = 0
        self.partial = b""
        self.events = []

    @staticmethod
    def reduce(e):
        ref = e.get("objectRef") or {}
        return {
            "user": (e.get("user") or {}).get("username", ""),
            "ua": e.get("userAgent", ""),
            "verb": e.get("verb", ""),
            "resource": ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else ""),
            "namespace": ref.get("namespace", ""),
            "name": ref.get("name", ""),
            "code": (e.get("responseStatus") or {}).get("code", 0),
            "received": ts(e["requestReceivedTimestamp"]),
            "done": ts(e["stageTimestamp"]),
        }

    def read(self):
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    raise Broken("the audit log was rotated or truncated: events would be missed")
                f.seek(self.offset)
                chunk = f.read()
        except OSError as e:
            raise Broken(f"audit log unreadable: {e}")
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        new = []
        for line in lines:
            if not line.strip():
                continue
            try:
                e = self.reduce(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise Broken(f"audit log unreadable: {err}: {line[:200]!r}")
            if self.keep(e):
                new.append(e)
        self.events.extend(new)
        return new
