#!/usr/bin/env python3
"""HA figures for keelson (a benchmark, not a timed test: it prints, it asserts nothing).

For PostgreSQL and MariaDB on this machine: two release servers share one fresh database.
Prints, per database:
  - idle RSS of each server after IDLE seconds,
  - datastore statements per second of each idle server (from its /metrics counter),
  - change-feed latency: a label PATCHed through server A (timed from the moment A
    acknowledged the write) until the MODIFIED event arrives on a watch held on server B.
Usage: benches/ha_figures.py [idle-seconds] [samples]   (after `cargo build --release`)
"""
import base64, http.client, json, os, random, shutil, signal, socket, ssl, statistics
import subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/keelson")
IDLE = int(sys.argv[1]) if len(sys.argv) > 1 else 30
SAMPLES = int(sys.argv[2]) if len(sys.argv) > 2 else 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, name, endpoint, token_file=None):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.kubeconfig = os.path.join(self.dir, "kubeconfig.yaml")
        open(os.path.join(self.dir, "config.yaml"), "w").close()
        args = [BIN, "server", "--config", os.path.join(self.dir, "config.yaml"),
                "--data-dir", self.dir, "--bind-address", "127.0.0.1",
                "--https-listen-port", str(self.port), "--write-kubeconfig", self.kubeconfig,
                "--node-name", name, "--datastore-endpoint", endpoint]
        if token_file:
            args += ["--token-file", token_file]
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        self.wait_ready()
        self.ssl = self.client_context()

    def wait_ready(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().read() == b"ok" and os.path.exists(self.kubeconfig):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"server {self.dir} not ready; log:\n" + open(self.log.name).read())

    def client_context(self):
        text = open(self.kubeconfig).read()
        field = lambda k: base64.b64decode(text.split(k + ": ")[1].split("\n")[0])
        for k, f in [("certificate-authority-data", "ca.pem"), ("client-certificate-data", "cert.pem"),
                     ("client-key-data", "key.pem")]:
            open(os.path.join(self.dir, f), "wb").write(field(k))
        ctx = ssl.create_default_context(cafile=os.path.join(self.dir, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem"))
        return ctx

    def conn(self, timeout=10):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl, timeout=timeout)

    def statements(self):
        c = self.conn()
        c.request("GET", "/metrics")
        for line in c.getresponse().read().decode().splitlines():
            if line.startswith("keelson_datastore_statements_total "):
                return int(line.split()[1])
        raise SystemExit("no statement counter in /metrics")

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def latency(a, b, node, samples):
    """PATCH a label through `a`, time until `b`'s watch shows it."""
    seen, lock = {}, threading.Lock()
    c = b.conn(timeout=300)
    c.request("GET", f"/api/v1/nodes?watch=true&fieldSelector=metadata.name%3D{node}&timeoutSeconds=600")
    resp = c.getresponse()
    ready = threading.Event()

    def reader():
        while True:
            try:
                line = resp.readline()
            except (OSError, AttributeError, ValueError):
                return  # the connection was closed when the run ended
            if not line:
                return
            ev = json.loads(line)
            v = ev["object"]["metadata"].get("labels", {}).get("bench-seq")
            ready.set()
            if v is not None:
                with lock:
                    seen.setdefault(v, time.perf_counter())

    threading.Thread(target=reader, daemon=True).start()
    ready.wait(10)
    out = []
    w = a.conn()
    for i in range(samples):
        time.sleep(random.uniform(0.05, 0.4))  # writes land at random points of the poll cycle
        body = json.dumps({"metadata": {"labels": {"bench-seq": str(i)}}})
        w.request("PATCH", f"/api/v1/nodes/{node}", body, {"Content-Type": "application/merge-patch+json"})
        r = w.getresponse()
        r.read()
        acked = time.perf_counter()
        if r.status != 200:
            raise SystemExit(f"PATCH failed: {r.status}")
        deadline = acked + 5
        while time.perf_counter() < deadline:
            with lock:
                if str(i) in seen:
                    out.append(max(0.0, seen[str(i)] - acked) * 1000)
                    break
            time.sleep(0.001)
        else:
            raise SystemExit(f"event {i} never arrived on the other server")
    # Shut the socket down first: the reader thread holds the response's lock while it waits.
    try:
        c.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    return out


def run(db, endpoint, admin_create, admin_drop):
    tmp = tempfile.mkdtemp(prefix=f"keelson-bench-{db}-")
    admin_drop()
    servers = []
    try:
        a = Server(tmp, "bench-a", endpoint)
        servers.append(a)
        b = Server(tmp, "bench-b", endpoint, token_file=os.path.join(a.dir, "server/token"))
        servers.append(b)
        time.sleep(5)  # let start-up writes settle
        s0 = [s.statements() for s in servers]
        time.sleep(IDLE)
        s1 = [s.statements() for s in servers]
        rates = [(y - x) / IDLE for x, y in zip(s0, s1)]
        rss = [s.rss_mib() for s in servers]
        lat = latency(a, b, "bench-a", SAMPLES)
        q = statistics.quantiles(lat, n=20)
        print(f"| {db}: idle server RSS after {IDLE} s | {rss[0]:.1f} MiB, {rss[1]:.1f} MiB |")
        print(f"| {db}: datastore statements/s per idle server (2 servers) | {rates[0]:.2f}, {rates[1]:.2f} |")
        print(f"| {db}: change-feed latency, write on A to watch event on B ({len(lat)} samples) | "
              f"p50 {statistics.median(lat):.0f} ms, p90 {q[17]:.0f} ms, max {max(lat):.0f} ms |")
    finally:
        for s in servers:
            s.stop()
        admin_drop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    # A timeout's SIGTERM must still stop the servers and drop the databases (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not os.path.exists(BIN):
        raise SystemExit("build first: cargo build --release")
    name = f"keelson_bench_{os.getpid()}"
    print(f"machine: {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; idle {IDLE} s, {SAMPLES} latency samples")
    print("| figure | value |\n|---|---|")
    psql = lambda sql: subprocess.run(["psql", "-qAt", "-h", "127.0.0.1", "-U", "postgres", "-c", sql],
                                      check=True, capture_output=True)
    mysql = lambda sql: subprocess.run(["mariadb", "-uroot", "-e", sql], check=True, capture_output=True)
    run("PostgreSQL", f"postgres://postgres@127.0.0.1:5432/{name}", None,
        lambda: psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    run("MariaDB", f"mysql://root@tcp(127.0.0.1:3306)/{name}", None,
        lambda: mysql(f"DROP DATABASE IF EXISTS `{name}`"))


if __name__ == "__main__":
    main()
