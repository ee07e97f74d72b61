#!/usr/bin/env python3
"""Pod runtime figures for keelson (a benchmark: it prints, it asserts nothing).

A release server (its own node tainted CriticalAddonsOnly=true:NoExecute, so workloads go to
the agent, and --runtime none) and one agent running containers with runc, both on this
machine. The image is imported air-gapped: an OCI layout tarball of Debian's busybox-static
dropped into the agent's <data-dir>/agent/images before it starts. Prints:
  - pod create -> Running (image cached), p50/p90 over N pods created one at a time, measured
    with the API directly (POST, then a watch), beside `runc run -d` of an equivalent bundle;
  - agent RSS idle with no pods, and idle with 10 running pods; per-container monitor RSS/PSS;
  - `kubectl exec -- true` round trip p50 (beside `kubectl get pod` as the kubectl anchor);
  - `kubectl logs -f` line latency p50 (the container prints /proc/uptime, read on the node);
  - pod with a new local-path claim create -> Running, beside the pods without; server RSS
    before and after the claims (the provisioner is a controller on its cache).

Usage: benches/pods.py   (root; runc, kubectl, busybox-static)
  N=20 KEELSON_BIN=target/release/keelson KEEP=dir
"""
import gzip, hashlib, http.client, io, json, os, shutil, signal, socket, ssl, statistics
import subprocess, sys, tarfile, tempfile, threading, time, base64

N = int(os.environ.get("N", "20"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[pods] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def busybox_layout(path, name):
    """An OCI layout tarball holding busybox (bin/busybox, bin/sh) as `name`."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as t:
        for d in ("bin", "tmp", "etc"):
            i = tarfile.TarInfo(d)
            i.type = tarfile.DIRTYPE
            i.mode = 0o755
            t.addfile(i)
        t.add("/bin/busybox", "bin/busybox")
        i = tarfile.TarInfo("bin/sh")
        i.type = tarfile.SYMTYPE
        i.linkname = "busybox"
        t.addfile(i)
    raw = layer_tar.getvalue()
    gz = gzip.compress(raw)
    config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "arm"),
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(raw)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz), "size": len(gz)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
                       "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}}],
    }).encode()
    with tarfile.open(path, "w") as t:
        def add(n, b):
            i = tarfile.TarInfo(n)
            i.size = len(b)
            t.addfile(i, io.BytesIO(b))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for b in (config, manifest, gz):
            add("blobs/sha256/" + sha(b)[7:], b)


class Api:
    """HTTPS to the server with the admin credentials of a kubeconfig."""

    def __init__(self, kubeconfig, tmp):
        import re
        text = open(kubeconfig).read()
        def field(k):
            return re.search(rf"{k}: (\S+)", text).group(1)
        self.server = field("server").split("//")[1]
        files = {}
        for k, n in (("certificate-authority-data", "ca"), ("client-certificate-data", "crt"), ("client-key-data", "key")):
            p = os.path.join(tmp, n + ".pem")
            open(p, "wb").write(base64.b64decode(field(k)))
            files[n] = p
        self.ctx = ssl.create_default_context(cafile=files["ca"])
        self.ctx.load_cert_chain(files["crt"], files["key"])

    def conn(self):
        host, port = self.server.rsplit(":", 1)
        return http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=60)

    def request(self, method, path, body=None):
        c = self.conn()
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data


def rss_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def smaps(pid):
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[parts[0][:-1]] = int(parts[1])
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    binary = os.environ.get("KEELSON_BIN")
    if not binary:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/keelson")
    tmp = tempfile.mkdtemp(prefix="keelson-pods-")
    procs = []
    try:
        port = free_port()
        sdir, adir = os.path.join(tmp, "server"), os.path.join(tmp, "agent")
        os.makedirs(os.path.join(adir, "agent/images"))
        busybox_layout(os.path.join(adir, "agent/images/busybox.tar"), "docker.io/library/busybox:bench")
        kc = os.path.join(tmp, "kc.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        # The agent runs in the machine's own network namespace: it must not program the
        # machine's networking (bridge, routes, Service rules, the cluster DNS address), so its
        # pods get loopback only, through a loopback-only CNI configuration.
        cni_conf = os.path.join(tmp, "net.d")
        os.makedirs(cni_conf)
        with open(os.path.join(cni_conf, "99-loopback.conflist"), "w") as f:
            f.write('{"cniVersion": "1.0.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}')
        env.update({"KEELSON_FLANNEL_BACKEND": "none", "KEELSON_DISABLE_KUBE_PROXY": "true",
                    "KEELSON_DISABLE": "coredns", "KEELSON_CNI_CONF_DIR": cni_conf})
        # DEBUG=1: both processes log at debug level (kept with KEEP=dir), for a timeline.
        debug = ["--debug"] if os.environ.get("DEBUG") else []
        slog = open(os.path.join(tmp, "server.log"), "w")
        procs.append(subprocess.Popen([binary, "server", "-d", sdir, "--https-listen-port", str(port),
                                       "--bind-address", "127.0.0.1", "--write-kubeconfig", kc,
                                       "--config", "/dev/null", "--runtime", "none", "--node-name", "bench-server",
                                       "--node-taint", "CriticalAddonsOnly=true:NoExecute"] + debug,
                                      stdout=slog, stderr=slog, env=env))
        for _ in range(300):
            if os.path.exists(os.path.join(sdir, "server/token")) and os.path.exists(kc):
                break
            time.sleep(0.1)
        token = open(os.path.join(sdir, "server/token")).read().strip()
        alog = open(os.path.join(tmp, "agent.log"), "w")
        agent = subprocess.Popen([binary, "agent", "--server", f"https://127.0.0.1:{port}", "--token", token,
                                  "-d", adir, "--node-name", "bench-agent", "--config", "/dev/null",
                                  "--runtime", "runc"] + debug, stdout=alog, stderr=alog, env=env)
        procs.append(agent)
        kubectl = ["kubectl", f"--kubeconfig={kc}"]
        for _ in range(300):
            out = subprocess.run(kubectl + ["get", "node", "bench-agent", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                                 capture_output=True, text=True)
            if out.stdout == "True":
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the agent's node never became Ready")
        api = Api(kc, tmp)
        time.sleep(10)
        idle_rss = rss_kib(agent.pid)

        # Watch pods; note when each is first seen Running.
        running = {}
        ready = threading.Event()

        def watch():
            c = api.conn()
            c.request("GET", "/api/v1/namespaces/default/pods?watch=1")
            r = c.getresponse()
            ready.set()
            buf = b""
            while True:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    o = ev.get("object", {})
                    name = o.get("metadata", {}).get("name")
                    if o.get("status", {}).get("phase") == "Running" and name not in running:
                        running[name] = time.monotonic()

        threading.Thread(target=watch, daemon=True).start()
        ready.wait(10)
        loop = "while true; do cat /proc/uptime; usleep 200000; done"
        lat = []
        for i in range(N):
            name = f"p{i}"
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "c", "image": "busybox:bench", "command": ["sh", "-c", loop]}]}}
            t0 = time.monotonic()
            st, data = api.request("POST", "/api/v1/namespaces/default/pods", body)
            if st != 201:
                raise SystemExit(f"create {name}: {st} {data[:300]}")
            while name not in running:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"{name} not Running in 60 s")
                time.sleep(0.005)
            lat.append((running[name] - t0) * 1000)
        log(f"create->Running: {[round(x) for x in lat]}")

        # Bare runc, the same process from a plain busybox bundle.
        bundle = os.path.join(tmp, "bundle")
        os.makedirs(os.path.join(bundle, "rootfs/bin"))
        shutil.copy("/bin/busybox", os.path.join(bundle, "rootfs/bin/busybox"))
        os.symlink("busybox", os.path.join(bundle, "rootfs/bin/sh"))
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.load(open(os.path.join(bundle, "config.json")))
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["sh", "-c", loop]
        json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
        rroot = os.path.join(tmp, "runc-root")
        bare = []
        for i in range(N):
            t0 = time.monotonic()
            subprocess.run(["runc", "--root", rroot, "run", "-d", "--bundle", bundle, f"bench-{i}"],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bare.append((time.monotonic() - t0) * 1000)
            subprocess.run(["runc", "--root", rroot, "delete", "-f", f"bench-{i}"], check=False)

        # Idle with pods running (N >= 10 of them), memory, and the agent's system calls while
        # nothing happens (what watching N containers costs a board at rest).
        time.sleep(5)
        def syscalls(pid):
            io = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().splitlines())
            return int(io["syscr"]) + int(io["syscw"])
        sc0 = syscalls(agent.pid)
        time.sleep(5)
        idle_calls = (syscalls(agent.pid) - sc0) / 5
        pods_rss = rss_kib(agent.pid)
        monitors = [int(p) for p in subprocess.run(["pgrep", "-f", " monitor container "], capture_output=True, text=True).stdout.split()]
        mon = [smaps(p) for p in monitors]

        # kubectl round trips.
        def timed(args, n=10):
            xs = []
            for _ in range(n):
                t0 = time.monotonic()
                subprocess.run(kubectl + args, check=True, capture_output=True)
                xs.append((time.monotonic() - t0) * 1000)
            return xs
        exec_rt = timed(["exec", "p0", "--", "sh", "-c", "true"])
        get_rt = timed(["get", "pod", "p0"])

        # logs -f: the container prints the node's uptime every 0.2 s.
        f = subprocess.Popen(kubectl + ["logs", "-f", "p1", "--tail=0"], stdout=subprocess.PIPE, text=True)
        follow = []
        for _ in range(25):
            line = f.stdout.readline()
            now = float(open("/proc/uptime").read().split()[0])
            try:
                follow.append((now - float(line.split()[0])) * 1000)
            except (ValueError, IndexError):
                pass
        f.kill()

        # Pods with a claim each, made just before the pod (the built-in local-path class,
        # WaitForFirstConsumer): the scheduler picks the node, the provisioner makes the
        # volume, the node makes its directory. Measured last, so the idle figures above are
        # of the plain pods only. The provisioner is a controller on the server's cache: its
        # cost shows as the server's RSS before and after.
        server_rss_before = rss_kib(procs[0].pid)
        claim_lat = []
        for i in range(N):
            name = f"v{i}"
            claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}}
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"terminationGracePeriodSeconds": 1,
                             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
                             "containers": [{"name": "c", "image": "busybox:bench", "command": ["sh", "-c", loop],
                                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}
            t0 = time.monotonic()
            for path, obj in (("persistentvolumeclaims", claim), ("pods", body)):
                st, data = api.request("POST", f"/api/v1/namespaces/default/{path}", obj)
                if st != 201:
                    raise SystemExit(f"create {path}/{name}: {st} {data[:300]}")
            while name not in running:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"{name} (with a claim) not Running in 60 s")
                time.sleep(0.005)
            claim_lat.append((running[name] - t0) * 1000)
        log(f"create (claim + pod) -> Running: {[round(x) for x in claim_lat]}")
        time.sleep(5)
        server_rss_after = rss_kib(procs[0].pid)

        print(f"pods measured: {N}, one at a time, image cached (air-gapped import)")
        print(f"create -> Running (keelson, API POST to watch event): p50 {pct(lat, 50):.0f} ms, p90 {pct(lat, 90):.0f} ms")
        print(f"bare `runc run -d` of a busybox bundle:              p50 {pct(bare, 50):.0f} ms, p90 {pct(bare, 90):.0f} ms"
              f"  (ratio p50 {pct(lat, 50) / pct(bare, 50):.2f}x)")
        print(f"agent RSS: idle without pods {idle_rss / 1024:.1f} MiB, idle with {N} running pods {pods_rss / 1024:.1f} MiB"
              f" (+{(pods_rss - idle_rss) / N:.0f} KiB per pod)")
        if mon:
            print(f"monitors: {len(mon)}, per monitor RSS {statistics.mean(m['Rss'] for m in mon):.0f} KiB, "
                  f"PSS {statistics.mean(m['Pss'] for m in mon):.0f} KiB, private "
                  f"{statistics.mean(m.get('Private_Clean', 0) + m.get('Private_Dirty', 0) for m in mon):.0f} KiB")
            per_pod = (pods_rss - idle_rss) / N
            print(f"per running container, monitor PSS + agent growth: "
                  f"{(statistics.mean(m['Pss'] for m in mon) + per_pod) / 1024:.2f} MiB")
        print(f"agent at rest with {N} running pods: {idle_calls:.0f} read/write system calls per second")
        print(f"kubectl exec -- sh -c true: p50 {pct(exec_rt, 50):.0f} ms (kubectl get pod: p50 {pct(get_rt, 50):.0f} ms)")
        if follow:
            print(f"kubectl logs -f line latency: p50 {pct(follow, 50):.0f} ms, p90 {pct(follow, 90):.0f} ms "
                  f"(/proc/uptime resolution 10 ms)")
        print(f"create (new local-path claim + pod) -> Running: p50 {pct(claim_lat, 50):.0f} ms, "
              f"p90 {pct(claim_lat, 90):.0f} ms (+{pct(claim_lat, 50) - pct(lat, 50):.0f} ms p50 over a pod without a claim)")
        print(f"server RSS before {N} claims {server_rss_before / 1024:.1f} MiB, after {server_rss_after / 1024:.1f} MiB")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        keep = os.environ.get("KEEP")
        if keep:
            shutil.copytree(tmp, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("agent", "server"))
        subprocess.run(["sh", "-c", f"for c in $(runc --root {tmp}/agent/agent/runc list -q 2>/dev/null); do runc --root {tmp}/agent/agent/runc delete -f $c; done"], check=False)
        for uid in os.listdir(os.path.join(tmp, "agent/agent/pods")) if os.path.isdir(os.path.join(tmp, "agent/agent/pods")) else []:
            subprocess.run(["sh", "-c", f"rm -rf /var/log/pods/*_{uid}"], check=False)
        subprocess.run(["sh", "-c", f"grep ' {tmp}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
