"""The scale benchmark behind scripts/bench-scale (see there for the phases); python3 stdlib only.

Every figure comes from the API server's audit log (what the server really received and when it
answered) or from the controller's /proc status; the driver itself never polls the API server for
progress, so it adds no load while the controller works.
"""
import argparse
import base64
import json
import math
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
from datetime import datetime, timezone

from benchlib import ROOT, Audit, Bench, Broken, free_port, proc_connections, proc_cpu_seconds, proc_memory

PULL = "aliyun-acr-credential-helper"  # the pull Secret's name (--secret-name default)
EXPIRES_AT = "aliyun-acr-credential-helper/expires-at"
MANAGED = "app.kubernetes.io/managed-by=aliyun-acr-credential-helper"
IDENTITY = "bench-scale"
CONTROLLER_UA = "aliyun-acr-credential-helper/"  # + version + " (" + identity + ")"
FLOOR_UA = "benchtool-floor"
NS_UA = "benchtool-namespaces"
REGISTRY_INFO = "- instanceId: cri-demo0000000001\n  regionId: cn-hangzhou\n"
ASIDE = ("leases", "events")  # reported apart from the controller's real work


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench-scale",
        description="Scale benchmark of the controller against a local control plane and the fake cloud.")
    ap.add_argument("legacy_n", nargs="?", type=int, metavar="N",
                    help="old form: N namespaces, all selected (same as --namespaces N --selected N)")
    ap.add_argument("--namespaces", type=int, default=1000, help="namespaces in the cluster (default 1000)")
    ap.add_argument("--selected", type=int, default=None,
                    help="of those, namespaces the ConfigMap selects by name (default: half); the floor "
                         "runs on as many extra namespaces of the same shape")
    ap.add_argument("--service-accounts", type=int, default=3,
                    help="ServiceAccounts per namespace, counting \"default\" (default 3)")
    ap.add_argument("--unrelated-secrets", type=int, default=2000,
                    help="Opaque Secrets spread over the namespaces (default 2000)")
    ap.add_argument("--latency-namespaces", type=int, default=200,
                    help="namespaces named in the ConfigMap but created only after convergence (default 200)")
    ap.add_argument("--latency-rate", type=float, default=50, help="their creation rate per second (default 50)")
    ap.add_argument("--floor-workers", type=int, default=32, help="concurrency of the raw-write floor (default 32)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor (and its namespaces): the cluster holds exactly --namespaces "
                         "(for memory at an exact shape)")
    ap.add_argument("--workers", type=int, default=None, help="the controller's --workers (default: its own)")
    ap.add_argument("--quiet-seconds", type=float, default=30, help="steady-state window after convergence (default 30)")
    ap.add_argument("--expiring-threshold", type=int, default=60, help="the ConfigMap's expiring-threshold, s (default 60)")
    ap.add_argument("--password-seconds", type=int, default=None,
                    help="registry password lifetime in the fake; default: long enough for the refresh to "
                         "come after convergence, the quiet window and the latency phase (at least 150)")
    ap.add_argument("--skip-refresh", action="store_true", help="do not wait for the forced refresh")
    ap.add_argument("--stall-timeout", type=float, default=180,
                    help="fail when the controller makes no needed write for this long (default 180 s)")
    ap.add_argument("--hostile-service-accounts", type=int, default=0,
                    help="ServiceAccounts a tenant creates in one namespace of its own, each with a large "
                         "annotation (default 0): the controller's memory must not follow them")
    ap.add_argument("--hostile-annotation-kib", type=int, default=200,
                    help="the size of each of those annotations, KiB (default 200)")
    ap.add_argument("--json", metavar="PATH", help="write the report here")
    a = ap.parse_args(argv)
    if a.legacy_n is not None:
        a.namespaces = a.legacy_n
        a.selected = a.legacy_n if a.selected is None else a.selected
    if a.selected is None:
        a.selected = max(1, a.namespaces // 2)
    if not 0 < a.selected <= a.namespaces:
        ap.error("--selected must be between 1 and --namespaces")
    if a.service_accounts < 1:
        ap.error("--service-accounts must be at least 1")
    return a


# ------------------------------------------------------------------ helpers

HOSTILE_NS = "tenant-hostile"


def seed_hostile(b, count, kib):
    """A namespace owner's ServiceAccounts, each with one annotation of `kib` KiB (the API server
    takes objects of up to about 1.5 MiB)."""
    from concurrent.futures import ThreadPoolExecutor
    try:
        b.api("POST", "/api/v1/namespaces", {"metadata": {"name": HOSTILE_NS}})
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
    blob = "x" * (kib * 1024)

    def one(i):
        try:
            b.api("POST", f"/api/v1/namespaces/{HOSTILE_NS}/serviceaccounts", {
                "metadata": {"name": f"bloat-{i:05d}", "annotations": {"tenant.example.com/blob": blob}}})
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def ns_names(prefix, n):
    return [f"{prefix}{i:05d}" for i in range(n)]


def is_controller(e):
    return e["ua"].startswith(CONTROLLER_UA)


def is_kcm(e):
    return e["user"] == "system:kube-controller-manager" or e["ua"].startswith("kube-controller-manager/")


def ok(e):
    return 200 <= e["code"] < 300


def is_pull_secret(e):
    # A create's objectRef may lack the name on some API server versions; the controller creates
    # no other Secret in a selected namespace.
    return e["resource"] == "secrets" and e["name"] in (PULL, "")


def key(e, code=True):
    return f"{e['verb']} {e['resource']}" + (f" {e['code']}" if code else "")


def counts(events, code=True):
    out = {}
    for e in events:
        k = key(e, code)
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(p * len(v)) - 1)]


def peak_concurrency(events, w0, w1):
    """Most requests in flight at once within [w0, w1] (watches excluded: they stay open)."""
    points = []
    for e in events:
        if e["verb"] == "watch" or e["done"] <= w0 or e["received"] >= w1:
            continue
        points.append((max(e["received"], w0), 1))
        points.append((e["done"], -1))
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    peak = cur = 0
    for _, d in points:
        cur += d
        peak = max(peak, cur)
    return peak


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def r3(x):
    return None if x is None else round(x, 3)


class Progress:
    """The controller's writes, followed live from the audit log."""

    def __init__(self):
        self.secret_created = {}  # ns -> first successful create of the pull Secret (event)
        self.sa_patched = {}  # (ns, sa) -> first successful patch (event)
        self.secret_updates = {}  # ns -> [successful update/patch events of the pull Secret]

    def feed(self, events):
        for e in events:
            if not is_controller(e) or not ok(e):
                continue
            if is_pull_secret(e) and e["verb"] == "create":
                self.secret_created.setdefault(e["namespace"], e)
            elif is_pull_secret(e) and e["verb"] in ("update", "patch"):
                self.secret_updates.setdefault(e["namespace"], []).append(e)
            elif e["resource"] == "serviceaccounts" and e["verb"] in ("update", "patch"):
                self.sa_patched.setdefault((e["namespace"], e["name"]), e)


def wait_for(audit, progress, ctl, what, done, stall, deadline=None, every=None):
    """Follows the audit log until done() returns (finished, remaining). Fails when the controller
    exits, when nothing progresses for `stall` seconds, or at `deadline` (wall clock)."""
    last, last_change = None, time.monotonic()
    next_every = time.monotonic()
    while True:
        progress.feed(audit.read())
        finished, remaining = done()
        if finished:
            return
        if ctl.poll() is not None:
            raise Broken(f"the controller exited ({ctl.returncode}) while waiting for {what}")
        if remaining != last:
            last, last_change = remaining, time.monotonic()
        if stall is not None and time.monotonic() - last_change > stall:
            raise Broken(f"{what}: no progress for {stall:.0f} s ({remaining} still missing)")
        if deadline is not None and time.time() > deadline:
            raise Broken(f"{what}: not done by {iso(deadline)} ({remaining} still missing)")
        if every is not None and time.monotonic() >= next_every:
            every[1]()
            next_every = time.monotonic() + every[0]
        time.sleep(0.2)


def pull_secrets(b):
    q = urllib.parse.urlencode({"labelSelector": MANAGED, "fieldSelector": f"metadata.name={PULL}"})
    return {s["metadata"]["namespace"]: s for s in b.api("GET", f"/api/v1/secrets?{q}")["items"]}


def logins(secret):
    """(username, password) pairs of a dockerconfigjson Secret."""
    raw = base64.b64decode((secret.get("data") or {}).get(".dockerconfigjson", ""))
    auths = json.loads(raw or b"{}").get("auths", {})
    return sorted({(a.get("username", ""), a.get("password", "")) for a in auths.values()})


def check_logins(b, pairs):
    """Asks the fake registry about each login: {pair: answer}."""
    return {p: b.fake_api("POST", "/_fake/registry-login", {"username": p[0], "password": p[1]}) for p in pairs}


_expiry_of_login = {}


def content_expiry(b, secret):
    """When a Secret's content stops working: the fake's own expiry of its passwords (the truth;
    asked once per login, since namespaces share them), else its expires-at annotation."""
    known = []
    for pair in logins(secret):
        if pair not in _expiry_of_login:
            answer = check_logins(b, [pair])[pair]
            _expiry_of_login[pair] = answer["expires_ms"] / 1000 if answer.get("expires_ms") else None
        if _expiry_of_login[pair] is not None:
            known.append(_expiry_of_login[pair])
    if known:
        return min(known)
    ann = (secret["metadata"].get("annotations") or {}).get(EXPIRES_AT)
    return parse_rfc3339(ann) if ann else None


# ------------------------------------------------------------------ the run

def main(argv):
    a = parse_args(argv)
    report = {"shape": {
        "namespaces": a.namespaces, "selected": a.selected, "service_accounts_per_namespace": a.service_accounts,
        "unrelated_secrets": a.unrelated_secrets, "floor_namespaces": a.selected,
        "latency_namespaces": a.latency_namespaces, "latency_rate": a.latency_rate,
        "controller_workers": a.workers, "floor_workers": a.floor_workers,
        "expiring_threshold_seconds": a.expiring_threshold,
        "hostile_service_accounts": a.hostile_service_accounts,
        "hostile_annotation_kib": a.hostile_annotation_kib}, "problems": []}
    b = None
    try:
        b = Bench()
        run(a, b, report)
        report["ok"] = True
    except Broken as e:
        report["ok"] = False
        report["broken"] = str(e)
        print(f"bench-scale: BROKEN: {e}", file=sys.stderr)
    finally:
        if b is not None:
            b.close(keep_logs=None if report.get("ok") else os.path.join(ROOT, "target/bench-scale-broken"))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
                f.write("\n")
    if report["ok"]:
        print_table(report)
        if a.json:
            print(f"\nreport: {a.json}")
    return 0 if report["ok"] else 1


def run(a, b, report):
    step = lambda msg: print(f"bench-scale: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    selected = ns_names("bench-", a.selected)
    late = ns_names("late-", a.latency_namespaces)
    sas = ["default"] + [f"app{i}" for i in range(1, a.service_accounts)]

    def keep(e):
        return (is_controller(e) or e["ua"] in (FLOOR_UA, NS_UA)
                or (is_kcm(e) and e["resource"] == "serviceaccounts" and e["verb"] == "create")
                or (e["resource"] == "configmaps" and e["namespace"] == "kube-system" and e["verb"] != "watch"))

    audit = Audit(b.env["AUDIT_LOG"], keep)

    # 1. The cluster: N namespaces (the first S of them to be selected), and S floor namespaces.
    step(f"seeding {a.namespaces} + {a.selected} namespaces x {a.service_accounts} ServiceAccounts, "
         f"{a.unrelated_secrets} unrelated Secrets")
    t = time.monotonic()
    floor_secrets = round(a.unrelated_secrets * a.selected / a.namespaces)
    b.benchtool("seed", "--prefix", "bench-", "--namespaces", str(a.namespaces),
                "--service-accounts", str(a.service_accounts), "--secrets", str(a.unrelated_secrets))
    if not a.no_floor:
        b.benchtool("seed", "--prefix", "floor-", "--namespaces", str(a.selected),
                    "--service-accounts", str(a.service_accounts), "--secrets", str(floor_secrets))
    if a.hostile_service_accounts:
        step(f"a tenant's {a.hostile_service_accounts} ServiceAccounts with {a.hostile_annotation_kib} KiB "
             f"annotations in namespace {HOSTILE_NS}")
        seed_hostile(b, a.hostile_service_accounts, a.hostile_annotation_kib)
    report["seed_seconds"] = r3(time.monotonic() - t)

    # 2. The floor: the same writes, by a plain client-go client, on the floor namespaces.
    if a.no_floor:
        f0 = f1 = 0.0
        report["floor"] = None
    else:
        step(f"floor: {a.selected} Secrets + {a.selected * a.service_accounts} ServiceAccount patches, "
             f"{a.floor_workers} workers")
        floor_client = b.benchtool("floor", "--prefix", "floor-", "--count", str(a.selected),
                                   "--workers", str(a.floor_workers))
        time.sleep(0.5)
        floor_events = [e for e in audit.read() if e["ua"] == FLOOR_UA]
        if not floor_events:
            raise Broken("the floor's requests are not in the audit log")
        f0 = min(e["received"] for e in floor_events)
        f1 = max(e["done"] for e in floor_events)
        report["floor"] = {
            "seconds": r3(f1 - f0), "client_seconds": r3(floor_client["seconds"]),
            "requests": len(floor_events), "by_verb_resource_code": counts(floor_events),
            "secrets_created": floor_client["secrets_created"], "sa_patched": floor_client["sa_patched"],
            "conflicts": floor_client["conflicts"], "peak_concurrency": peak_concurrency(floor_events, f0, f1),
            "writes_per_second": r3(len(floor_events) / max(f1 - f0, 1e-6))}

    # 3. Short passwords, so a refresh comes during the run, after the phases before it.
    refresh_after = max(90.0, 5 * (f1 - f0) + a.quiet_seconds + a.latency_namespaces / a.latency_rate + 30)
    lifetime = a.password_seconds or int(math.ceil(refresh_after + a.expiring_threshold))
    lifetime = max(lifetime, 2 * a.expiring_threshold)
    report["shape"]["password_seconds"] = lifetime
    b.fake_api("POST", "/_fake/config", {"lifetimes": {"registry_seconds": lifetime}})
    b.fake_api("POST", "/_fake/calls")  # reset the counters

    # 4. The controller, ready (watches synced) before there is any configuration.
    step("starting the controller")
    args = ["--identity", IDENTITY, "--webhook-addr", "127.0.0.1:0"]
    if a.workers:
        args += ["--workers", str(a.workers)]
    ctl = b.controller(*args, metrics_port=str(free_port()))
    report["controller_pid"] = ctl.pid
    # Ready means every watch has listed once: the initial lists, where a page of hostile objects
    # would have been held, are behind it.
    mem_listed = proc_memory(ctl.pid)
    audit.read()
    # Streamed initial lists are watches (logged only when they end); a paged list would show as
    # LIST requests.
    report["initial_lists"] = {
        "serviceaccount_list_requests": sum(1 for e in audit.events if is_controller(e)
                                            and e["resource"] == "serviceaccounts" and e["verb"] == "list")}

    # 5. Cold convergence.
    step(f"applying the ConfigMap ({a.selected} namespaces + {a.latency_namespaces} not created yet)")
    api_port = urllib.parse.urlparse(b.env["APISERVER_URL"]).port
    cpu = {"start": proc_cpu_seconds(ctl.pid)}
    b.api("POST", "/api/v1/namespaces/kube-system/configmaps", {
        "metadata": {"name": "acr-configuration", "namespace": "kube-system"},
        "data": {"watch-namespace": ",".join(selected + late), "service-account": "*",
                 "expiring-threshold": f"{a.expiring_threshold}s", "acr-registry-info": REGISTRY_INFO}})
    progress = Progress()
    need_sa = [(ns, sa) for ns in selected for sa in sas]
    total_needed = len(selected) + len(need_sa)

    def converged():
        missing = [f"Secret {ns}" for ns in selected if ns not in progress.secret_created] + \
            [f"ServiceAccount {ns}/{sa}" for ns, sa in need_sa if (ns, sa) not in progress.sa_patched]
        # Name a few, so a broken run says what never came.
        return not missing, f"{len(missing)}: {', '.join(missing[:5])}" if missing else 0

    wait_for(audit, progress, ctl, "convergence", converged, a.stall_timeout)
    cpu["converged"] = proc_cpu_seconds(ctl.pid)
    mem_converged = proc_memory(ctl.pid)
    conns = {"after_convergence": proc_connections(ctl.pid, api_port)}
    needed = [progress.secret_created[ns] for ns in selected] + [progress.sa_patched[k] for k in need_sa]
    cm = [e for e in audit.events if e["resource"] == "configmaps" and e["name"] == "acr-configuration"
          and not is_controller(e) and e["verb"] in ("create", "update", "patch") and ok(e)]
    if not cm:
        raise Broken("the ConfigMap's creation is not in the audit log")
    c0 = cm[0]["done"]
    c1 = max(e["done"] for e in needed)
    step(f"converged in {c1 - c0:.2f} s" + ("" if a.no_floor else f" (floor {f1 - f0:.2f} s)"))

    # What the Secrets hold now, and until when it works (read once, outside every window).
    old = {ns: content_expiry(b, s) for ns, s in pull_secrets(b).items()}

    # 6. Steady state: nothing changes; whatever the controller sends now is overhead.
    q0 = time.time() + 1
    step(f"steady state: watching the controller for {a.quiet_seconds:.0f} s")
    time.sleep(max(0.0, q0 - time.time()))
    cpu["quiet_start"] = proc_cpu_seconds(ctl.pid)
    time.sleep(a.quiet_seconds)
    cpu["quiet_end"] = proc_cpu_seconds(ctl.pid)
    q1 = q0 + a.quiet_seconds
    progress.feed(audit.read())

    # 7. New namespaces, already named in the ConfigMap, created at a steady rate.
    l0 = l1 = None
    if late:
        step(f"creating {len(late)} namespaces at {a.latency_rate:g}/s")
        l0 = time.time()
        cpu["latency_start"] = proc_cpu_seconds(ctl.pid)
        b.benchtool("create-namespaces", "--prefix", "late-", "--count", str(len(late)),
                    "--rate", str(a.latency_rate))

        def late_done():
            missing = sum(1 for ns in late if (ns, "default") not in progress.sa_patched)
            return missing == 0, missing

        wait_for(audit, progress, ctl, "the new namespaces", late_done, a.stall_timeout)
        l1 = time.time()
        cpu["latency_end"] = proc_cpu_seconds(ctl.pid)
        have = pull_secrets(b)
        for ns in late:
            if ns in have:
                old[ns] = content_expiry(b, have[ns])

    # 8. The forced refresh: every Secret rewritten before the content it holds expires.
    samples = {"checked": 0, "rejected": []}
    mem_refreshed = None
    targets = selected + late
    if not a.skip_refresh:
        missing_expiry = [ns for ns in targets if old.get(ns) is None]
        if missing_expiry:
            raise Broken(f"no readable pull Secret content in {len(missing_expiry)} namespaces, e.g. {missing_expiry[0]}")
        # The controller never refreshes before half a password's lifetime: writes before that are
        # not the refresh.
        not_before = {ns: old[ns] - lifetime / 2 - 1 for ns in targets}

        def refreshed():
            missing = sum(1 for ns in targets
                          if not any(e["received"] >= not_before[ns] for e in progress.secret_updates.get(ns, [])))
            return missing == 0, missing

        def sample():
            for ns in random.sample(targets, min(5, len(targets))):
                try:
                    s = b.api("GET", f"/api/v1/namespaces/{ns}/secrets/{PULL}")
                except urllib.error.HTTPError as e:
                    samples["rejected"].append({"namespace": ns, "at": iso(time.time()), "reason": f"GET: {e.code}"})
                    continue
                for pair, answer in check_logins(b, logins(s)).items():
                    samples["checked"] += 1
                    if not answer.get("valid"):
                        samples["rejected"].append({"namespace": ns, "at": iso(time.time()),
                                                    "reason": answer.get("reason")})

        step(f"waiting for the refresh (passwords live {lifetime} s, threshold {a.expiring_threshold} s; "
             f"due about {iso(min(old.values()) - a.expiring_threshold)})")
        cpu["refresh_wait_start"] = proc_cpu_seconds(ctl.pid)
        wait_for(audit, progress, ctl, "the refresh", refreshed, None,
                 deadline=max(old.values()) + 60, every=(5, sample))
        time.sleep(1)
        progress.feed(audit.read())
        mem_refreshed = proc_memory(ctl.pid)
        cpu["refreshed"] = proc_cpu_seconds(ctl.pid)
        conns["after_refresh"] = proc_connections(ctl.pid, api_port)
        after = pull_secrets(b)
        final = check_logins(b, sorted({p for s in after.values() for p in logins(s)}))
        stale = [ns for ns in targets if ns not in after or (content_expiry(b, after[ns]) or 0) <= old[ns]]

    # 9. Stop the controller so its open watches are logged too, then account for everything.
    ctl.terminate()
    try:
        ctl.wait(20)
    except subprocess.TimeoutExpired:
        ctl.kill()
        ctl.wait()
    time.sleep(1)
    progress.feed(audit.read())
    calls = b.fake_api("GET", "/_fake/calls")["calls"]
    ev = [e for e in audit.events if is_controller(e)]

    # Convergence: requests the controller sent between the ConfigMap and its last needed write.
    needed_ids = {id(e) for e in needed}
    window = [e for e in ev if c0 <= e["received"] <= c1]
    work = [e for e in window if e["resource"] not in ASIDE]
    extra = [e for e in work if id(e) not in needed_ids]
    extra_elsewhere = sorted({f"{e['verb']} {e['resource']} {e['namespace']}/{e['name']}"
                              for e in extra if e["namespace"] not in set(selected)})
    first_write = min(e["received"] for e in needed)
    report["convergence"] = {
        "seconds": r3(c1 - c0), "ratio_to_floor": None if a.no_floor else r3((c1 - c0) / max(f1 - f0, 1e-6)),
        "configmap_applied_at": iso(c0), "converged_at": iso(c1),
        "first_needed_write_after_seconds": r3(first_write - c0),
        "write_phase_seconds": r3(c1 - first_write),
        "write_phase_ratio_to_floor": None if a.no_floor else r3((c1 - first_write) / max(f1 - f0, 1e-6)),
        "needed_writes": total_needed, "extra_requests": len(extra),
        "needed_by_verb_resource_code": counts([e for e in window if id(e) in needed_ids]),
        "extra_by_verb_resource_code": counts(extra),
        "extra_outside_selected_namespaces": extra_elsewhere[:50],
        "leases_events_by_verb_resource_code": counts([e for e in window if e["resource"] in ASIDE]),
        "peak_concurrency": peak_concurrency(work, c0, c1),
        "writes_per_second": r3(total_needed / max(c1 - c0, 1e-6))}

    # Steady state.
    quiet = [e for e in ev if q0 <= e["received"] <= q1]
    report["steady_state"] = {
        "seconds": a.quiet_seconds,
        "requests_by_verb_resource": counts([e for e in quiet if e["resource"] != "leases"], code=False),
        "lease_requests_by_verb": counts([e for e in quiet if e["resource"] == "leases"], code=False),
        "requests_per_minute_excluding_leases": r3(
            sum(1 for e in quiet if e["resource"] != "leases") * 60 / a.quiet_seconds)}

    # New-namespace latency: kube-controller-manager creates "default", the controller patches it.
    if late:
        sa_created = {}
        for e in audit.events:
            if is_kcm(e) and e["resource"] == "serviceaccounts" and e["verb"] == "create" and ok(e) \
                    and e["name"] in ("default", ""):
                sa_created.setdefault(e["namespace"], e["done"])
        ns_created = {}
        for e in audit.events:
            if e["ua"] == NS_UA and e["resource"] == "namespaces" and e["verb"] == "create" and ok(e):
                ns_created.setdefault(e["name"], e["done"])
        lat, lat_ns = [], []
        for ns in late:
            patched = progress.sa_patched.get((ns, "default"))
            if patched and ns in sa_created:
                lat.append(patched["done"] - sa_created[ns])
            if patched and ns in ns_created:
                lat_ns.append(patched["done"] - ns_created[ns])
        phase = [e for e in ev if l0 <= e["received"] <= (l1 or l0) and e["resource"] not in ASIDE]
        report["new_namespace_latency"] = {
            "namespaces": len(late), "measured": len(lat),
            "p50_seconds": r3(pct(lat, 0.5)), "p99_seconds": r3(pct(lat, 0.99)), "max_seconds": r3(max(lat, default=None)),
            "from_namespace_create_p50_seconds": r3(pct(lat_ns, 0.5)),
            "from_namespace_create_p99_seconds": r3(pct(lat_ns, 0.99)),
            "requests_during_phase_by_verb_resource_code": counts(phase),
            "requests_per_new_namespace": r3(len(phase) / len(late))}
        if len(lat) < len(late):
            report["problems"].append(f"{len(late) - len(lat)} new namespaces without a measurable latency")

    # The refresh.
    if not a.skip_refresh:
        writes = {}
        for ns in targets:
            w = [e for e in progress.secret_updates.get(ns, []) if e["received"] >= not_before[ns]]
            writes[ns] = min(w, key=lambda e: e["done"])
        all_writes = [e for ns in targets for e in progress.secret_updates.get(ns, [])
                      if e["received"] >= not_before[ns]]
        r0 = min(e["received"] for e in writes.values())
        r1 = max(e["done"] for e in writes.values())
        rwin = [e for e in ev if r0 <= e["received"] <= r1 and e["resource"] not in ASIDE]
        expired = sorted(ns for ns, e in writes.items() if e["done"] >= old[ns])
        rejected_final = [f"{u}" for (u, _), ans in final.items() if not ans.get("valid")]
        report["refresh"] = {
            "seconds": r3(r1 - r0), "started_at": iso(r0),
            "started_before_expiry_seconds": r3(min(old[ns] - writes[ns]["received"] for ns in targets)),
            "last_write_before_expiry_seconds": r3(min(old[ns] - writes[ns]["done"] for ns in targets)),
            "overlapped_earlier_phases": bool(r0 < (l1 or q1)),
            "secret_writes": len(all_writes), "namespaces": len(targets),
            "requests_by_verb_resource_code": counts(rwin),
            "peak_concurrency": peak_concurrency([e for e in ev if e["resource"] not in ASIDE], r0, r1),
            "peak_concurrency_incl_leases_events": peak_concurrency(ev, r0, r1),
            "password_expired": bool(expired or samples["rejected"] or rejected_final or stale),
            "secrets_written_after_expiry": expired[:50], "secrets_written_after_expiry_count": len(expired),
            "secrets_not_renewed": stale[:50],
            "samples_checked": samples["checked"], "samples_rejected": samples["rejected"][:50],
            "final_logins_checked": len(final), "final_logins_rejected": rejected_final}
        if report["refresh"]["overlapped_earlier_phases"]:
            report["problems"].append("the refresh began before the earlier phases ended; "
                                      "raise --password-seconds for clean figures")
        if report["refresh"]["password_expired"]:
            report["problems"].append("a password expired before its Secret was rewritten")

    report["memory_kib"] = {"after_initial_lists": mem_listed, "after_convergence": mem_converged,
                            "after_refresh": mem_refreshed}
    report["cpu_seconds"] = {
        "convergence": r3(cpu["converged"] - cpu["start"]),
        "steady_state": r3(cpu["quiet_end"] - cpu["quiet_start"]),
        "latency_phase": r3(cpu["latency_end"] - cpu["latency_start"]) if late else None,
        "refresh": r3(cpu["refreshed"] - cpu["refresh_wait_start"]) if not a.skip_refresh else None,
        "note": "the controller's user+system time; refresh counts the whole wait for it"}
    report["api_server_connections"] = conns
    report["cloud_calls"] = {k: v for k, v in sorted(calls.items()) if v}
    report["timeline_seconds_after_configmap"] = {
        "converged": r3(c1 - c0), "quiet_window": [r3(q0 - c0), r3(q1 - c0)],
        "latency_phase": [r3(l0 - c0), r3(l1 - c0)] if late else None,
        "refresh": [r3(r0 - c0), r3(r1 - c0)] if not a.skip_refresh else None}


# ------------------------------------------------------------------ the table

def print_table(r):
    s, fl, cv, st = r["shape"], r["floor"], r["convergence"], r["steady_state"]
    out = []
    w = out.append

    def section(title):
        w("")
        w(title)

    def row(label, value):
        w(f"  {label:<48} {value}".rstrip())

    def breakdown(label, d):
        if not d:
            row(label, "none")
            return
        row(label, "")
        for k, v in d.items():
            w(f"      {v:>7}  {k}")

    w(f"bench-scale: {s['namespaces']} namespaces ({s['selected']} selected) x {s['service_accounts_per_namespace']} "
      f"ServiceAccounts, {s['unrelated_secrets']} unrelated Secrets; floor on {0 if fl is None else s['floor_namespaces']} more; "
      f"{s['latency_namespaces']} new namespaces at {s['latency_rate']:g}/s; passwords live {s['password_seconds']} s")
    section("cold convergence (ConfigMap applied -> last needed write)")
    row("controller", f"{cv['seconds']:.3f} s  ({cv['needed_writes']} needed writes, {cv['writes_per_second']:.0f}/s, "
                      f"first after {cv['first_needed_write_after_seconds']:.3f} s)")
    if fl:
        row(f"raw-write floor ({s['floor_workers']} workers)", f"{fl['seconds']:.3f} s  ({fl['requests']} requests, "
                                                               f"{fl['writes_per_second']:.0f}/s, {fl['conflicts']} conflicts)")
        row("ratio controller / floor", f"{cv['ratio_to_floor']:.2f}x  (from its first write: "
                                        f"{cv['write_phase_seconds']:.3f} s, {cv['write_phase_ratio_to_floor']:.2f}x)")
        row("peak concurrent requests (controller/floor)", f"{cv['peak_concurrency']} / {fl['peak_concurrency']}")
    else:
        row("raw-write floor", "skipped (--no-floor)")
        row("peak concurrent requests (controller)", f"{cv['peak_concurrency']}")
    breakdown("needed requests", cv["needed_by_verb_resource_code"])
    breakdown(f"extra requests ({cv['extra_requests']})", cv["extra_by_verb_resource_code"])
    if cv["extra_outside_selected_namespaces"]:
        row("  of which outside the selected namespaces", "")
        for x in cv["extra_outside_selected_namespaces"][:10]:
            w(f"               {x}")
    breakdown("leases/events", cv["leases_events_by_verb_resource_code"])
    section(f"steady state ({st['seconds']:g} s after convergence)")
    row("requests/minute (excluding leases)", f"{st['requests_per_minute_excluding_leases']:.1f}")
    breakdown("requests", st["requests_by_verb_resource"])
    breakdown("lease requests", st["lease_requests_by_verb"])
    lat = r.get("new_namespace_latency")
    if lat:
        section("new-namespace latency (default SA created -> controller's patch of it)")
        row("p50 / p99 / max", f"{lat['p50_seconds']} s / {lat['p99_seconds']} s / {lat['max_seconds']} s "
                               f"({lat['measured']}/{lat['namespaces']} measured)")
        row("from namespace creation p50 / p99", f"{lat['from_namespace_create_p50_seconds']} s / "
                                                 f"{lat['from_namespace_create_p99_seconds']} s")
        row("controller requests per new namespace", f"{lat['requests_per_new_namespace']:.2f}")
        breakdown("requests during the phase", lat["requests_during_phase_by_verb_resource_code"])
    rf = r.get("refresh")
    if rf:
        section("forced refresh (first -> last Secret rewrite)")
        row("duration", f"{rf['seconds']:.3f} s  ({rf['secret_writes']} Secret writes for {rf['namespaces']} namespaces)")
        row("began / ended before the old passwords expired", f"{rf['started_before_expiry_seconds']:.1f} s / "
                                                               f"{rf['last_write_before_expiry_seconds']:.1f} s")
        row("peak concurrent requests", f"{rf['peak_concurrency']} ({rf['peak_concurrency_incl_leases_events']} with leases/events)")
        breakdown("requests", rf["requests_by_verb_resource_code"])
        row("any password expired", f"{'YES' if rf['password_expired'] else 'no'}  ({rf['samples_checked']} sampled "
                                    f"logins during it, {len(rf['samples_rejected'])} rejected; "
                                    f"{rf['secrets_written_after_expiry_count']} written after expiry; "
                                    f"{len(rf['final_logins_rejected'])}/{rf['final_logins_checked']} final logins rejected)")
    m, c, k = r["memory_kib"], r["cpu_seconds"], r["api_server_connections"]
    section("controller resources")
    if s.get("hostile_service_accounts"):
        row("a tenant's ServiceAccounts",
            f"{s['hostile_service_accounts']} x {s['hostile_annotation_kib']} KiB annotations; "
            f"controller LISTs of ServiceAccounts: {r['initial_lists']['serviceaccount_list_requests']}")
    for when in ("after_initial_lists", "after_convergence", "after_refresh"):
        if m.get(when):
            row(f"VmHWM / VmRSS {when.replace('_', ' ')}",
                f"{m[when]['VmHWM'] / 1024:.1f} MiB / {m[when]['VmRSS'] / 1024:.1f} MiB")
    row("CPU s: convergence / steady / new ns / refresh",
        " / ".join("-" if c.get(x) is None else f"{c[x]:.2f}" for x in ("convergence", "steady_state", "latency_phase", "refresh")))
    row("TCP connections to the API server (conv./refr.)",
        f"{k.get('after_convergence')} / {k.get('after_refresh', '-')}")
    section("cloud calls")
    row("by API", ", ".join(f"{k} {v}" for k, v in r["cloud_calls"].items()))
    if r["problems"]:
        section("notes")
        for p in r["problems"]:
            row("-", p)
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
