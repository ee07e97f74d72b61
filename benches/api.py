#!/usr/bin/env python3
"""API timing figures for keelson (a benchmark: it prints, it asserts nothing).

One fresh server on SQLite (`--runtime none`, so pods bound to its node stay Pending and add no
writes), driven by the real kubectl. Prints:
  - `kubectl apply -f` of a 20-object multi-document manifest (Namespace, ConfigMaps, Secrets,
    Deployments, Services, DaemonSet, Job, CronJob, Role, RoleBinding, ServiceAccount): wall time,
    median of 5, each into a fresh namespace; then the same 5 re-applied unchanged;
  - `kubectl get pods` (and `-w` until it has printed them all) of 5000 pods (created with concurrent POSTs and the admin client
    certificate, bound to the server's node): wall time, median of 3; the server's RSS idle
    before the pods, after creating them, and its peak (VmHWM) during the gets and overall.

Usage: python3 benches/api.py
  KEELSON_BIN=path (default: $CARGO_TARGET_DIR or target, /release/keelson; built if missing)
  PODS=5000 RUNS=5 GETS=3 WRITERS=16 KEEP=1 (keep the temporary directory)
"""
import base64, http.client, json, os, re, shutil, socket, ssl, statistics, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODS = int(os.environ.get("PODS", "5000"))
RUNS = int(os.environ.get("RUNS", "5"))
GETS = int(os.environ.get("GETS", "3"))
WRITERS = int(os.environ.get("WRITERS", "16"))
NODE = "bench-api"


def log(msg):
    print(f"[api] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def manifest(ns):
    """20 objects: 1 Namespace, 5 ConfigMaps, 4 Secrets, 2 Deployments, 2 Services, a DaemonSet,
    a Job, a CronJob, a Role, a RoleBinding and a ServiceAccount."""
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"]
    meta = lambda kind, name, api="v1": f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
    pod = ("    metadata:\n      labels:\n        app: {app}\n    spec:\n      containers:\n"
           "      - name: c\n        image: busybox:1.36\n        command: [sleep, '3600']\n"
           "        ports:\n        - containerPort: 8080\n")
    for i in range(5):
        docs.append(meta("ConfigMap", f"config-{i}") + f"data:\n  key: value-{i}\n  other: |\n    line one\n    line two\n")
    for i in range(4):
        docs.append(meta("Secret", f"secret-{i}") + f"stringData:\n  password: s3cret-{i}\n")
    for i in range(2):
        docs.append(meta("Deployment", f"web-{i}", "apps/v1")
                    + f"spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web-{i}\n  template:\n"
                    + pod.format(app=f"web-{i}"))
        docs.append(meta("Service", f"web-{i}")
                    + f"spec:\n  selector:\n    app: web-{i}\n  ports:\n  - port: 80\n    targetPort: 8080\n")
    docs.append(meta("DaemonSet", "agent", "apps/v1")
                + "spec:\n  selector:\n    matchLabels:\n      app: agent\n  template:\n" + pod.format(app="agent"))
    docs.append(meta("Job", "once", "batch/v1")
                + "spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n"
                  "      - name: c\n        image: busybox:1.36\n        command: [true]\n")
    docs.append(meta("CronJob", "nightly", "batch/v1")
                + "spec:\n  schedule: '0 3 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n"
                  "          restartPolicy: OnFailure\n          containers:\n          - name: c\n"
                  "            image: busybox:1.36\n            command: [true]\n")
    docs.append(meta("Role", "reader", "rbac.authorization.k8s.io/v1")
                + "rules:\n- apiGroups: ['']\n  resources: [configmaps, secrets]\n  verbs: [get, list, watch]\n")
    docs.append(meta("RoleBinding", "reader", "rbac.authorization.k8s.io/v1")
                + f"roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: reader\n"
                  f"subjects:\n- kind: ServiceAccount\n  name: app\n  namespace: {ns}\n")
    docs.append(meta("ServiceAccount", "app"))
    assert len(docs) == 20, len(docs)
    return "---\n".join(docs)


class Api:
    """HTTPS with the admin client certificate of a kubeconfig; one kept-alive connection per
    thread."""

    def __init__(self, kubeconfig, tmp):
        text = open(kubeconfig).read()
        field = lambda k: re.search(rf"{k}: (\S+)", text).group(1)
        self.host, port = field("server").split("//")[1].rsplit(":", 1)
        self.port = int(port)
        files = {}
        for k, n in (("certificate-authority-data", "ca"), ("client-certificate-data", "crt"),
                     ("client-key-data", "key")):
            p = os.path.join(tmp, n + ".pem")
            open(p, "wb").write(base64.b64decode(field(k)))
            files[n] = p
        self.ctx = ssl.create_default_context(cafile=files["ca"])
        self.ctx.load_cert_chain(files["crt"], files["key"])
        self.local = threading.local()

    def request(self, method, path, body=None):
        for attempt in range(3):
            c = getattr(self.local, "conn", None)
            if c is None:
                c = self.local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            try:
                c.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt == 2:
                    raise


def timed(argv):
    start = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr}")
    return took


def settle(api, quiet=2.0, limit=120):
    """Waits until the datastore revision has not moved for `quiet` seconds (controllers done)."""
    last, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit:
        _, body = api.request("GET", "/api/v1/namespaces?limit=1")
        rev = json.loads(body)["metadata"]["resourceVersion"]
        if rev != last:
            last, since = rev, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.25)


def main():
    binary = os.environ.get("KEELSON_BIN")
    if not binary:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release/keelson")
        if not os.path.exists(binary):
            log("building the release binary")
            subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="keelson-api-")
    server = None
    try:
        port = free_port()
        kc = os.path.join(tmp, "kc.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        slog = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen([binary, "server", "-d", os.path.join(tmp, "data"), "--https-listen-port", str(port),
                                   "--bind-address", "127.0.0.1", "--write-kubeconfig", kc, "--config", "/dev/null",
                                   "--runtime", "none", "--node-name", NODE], stdout=slog, stderr=slog, env=env)
        kubectl = ["kubectl", f"--kubeconfig={kc}", f"--cache-dir={os.path.join(tmp, 'kubecache')}"]
        for _ in range(600):
            if os.path.exists(kc) and subprocess.run(kubectl + ["get", "--raw", "/readyz"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not become ready; see " + os.path.join(tmp, "server.log"))
        api = Api(kc, tmp)
        # Warm kubectl's discovery cache, as any session after the first command has it.
        timed(kubectl + ["get", "nodes"])
        timed(kubectl + ["api-resources"])

        applies, reapplies = [], []
        paths = []
        for i in range(RUNS):
            path = os.path.join(tmp, f"manifest-{i}.yaml")
            open(path, "w").write(manifest(f"bench-{i}"))
            paths.append(path)
            applies.append(timed(kubectl + ["apply", "-f", path]))
            settle(api)
        for path in paths:
            reapplies.append(timed(kubectl + ["apply", "-f", path]))
        log(f"apply: {[round(t * 1000) for t in applies]} ms; re-apply: {[round(t * 1000) for t in reapplies]} ms")
        ssa = []
        for i in range(RUNS):
            path = os.path.join(tmp, f"manifest-ssa-{i}.yaml")
            open(path, "w").write(manifest(f"bench-ssa-{i}"))
            ssa.append(timed(kubectl + ["apply", "--server-side", "-f", path]))
            settle(api)

        settle(api)
        time.sleep(5)
        idle = status_kib(server.pid, "VmRSS")
        ns = "bench-pods"
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        pod = lambda i: {"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"p-{i:05d}", "namespace": ns, "labels": {"app": "bench", "n": str(i % 10)}},
                         "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox:1.36",
                                                                     "command": ["sleep", "3600"]}]}}
        failures = []
        next_i = iter(range(PODS))
        lock = threading.Lock()

        def writer():
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                st, body = api.request("POST", f"/api/v1/namespaces/{ns}/pods", pod(i))
                if st != 201:
                    failures.append((i, st, body[:200]))

        start = time.monotonic()
        threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created_in = time.monotonic() - start
        if failures:
            raise SystemExit(f"{len(failures)} pod creations failed, e.g. {failures[:3]}")
        settle(api)
        after_create = status_kib(server.pid, "VmRSS")
        peak_overall = status_kib(server.pid, "VmHWM")
        # Reset the peak so the next one is the gets' own.
        with open(f"/proc/{server.pid}/clear_refs", "w") as f:
            f.write("5")
        gets = [timed(kubectl + ["get", "pods", "-n", ns]) for _ in range(GETS)]
        peak_gets = status_kib(server.pid, "VmHWM")
        out = subprocess.run(kubectl + ["get", "pods", "-n", ns, "--no-headers"], capture_output=True, text=True).stdout
        listed = len(out.splitlines())

        def watch_start():
            """Time until `kubectl get pods -w` has printed every current pod (its start)."""
            start = time.monotonic()
            w = subprocess.Popen(kubectl + ["get", "pods", "-n", ns, "-w", "--no-headers"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            seen = 0
            for _ in w.stdout:
                seen += 1
                if seen >= listed:
                    break
            took = time.monotonic() - start
            w.kill()
            w.wait()
            return took

        watches = [watch_start() for _ in range(GETS)]

        ms = lambda xs: f"{statistics.median(xs) * 1000:.0f} ms"
        print(f"keelson API figures ({os.path.basename(binary)}: {binary}, {os.uname().machine}, "
              f"{time.strftime('%Y-%m-%d')}, SQLite)")
        print(f"kubectl apply -f, 20 objects, fresh namespace (median of {RUNS}): {ms(applies)} "
              f"(min {min(applies) * 1000:.0f}, max {max(applies) * 1000:.0f})")
        print(f"kubectl apply -f, same 20 objects unchanged (median of {RUNS}): {ms(reapplies)} "
              f"(min {min(reapplies) * 1000:.0f}, max {max(reapplies) * 1000:.0f})")
        print(f"kubectl apply --server-side -f, 20 objects, fresh namespace (median of {RUNS}): {ms(ssa)} "
              f"(min {min(ssa) * 1000:.0f}, max {max(ssa) * 1000:.0f})")
        print(f"{PODS} pods created by {WRITERS} concurrent POSTs: {created_in:.1f} s ({PODS / created_in:.0f}/s)")
        print(f"kubectl get pods, {listed} pods (median of {GETS}): {ms(gets)} "
              f"(min {min(gets) * 1000:.0f}, max {max(gets) * 1000:.0f})")
        print(f"kubectl get pods -w, until all {listed} pods are printed (median of {GETS}): {ms(watches)} "
              f"(min {min(watches) * 1000:.0f}, max {max(watches) * 1000:.0f})")
        print(f"server RSS: idle before the pods {mib(idle)}; after creating them {mib(after_create)}; "
              f"peak during the gets (VmHWM) {mib(peak_gets)}; peak overall {mib(peak_overall)}")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        if os.environ.get("KEEP"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
