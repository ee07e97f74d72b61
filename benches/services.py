#!/usr/bin/env python3
"""Service rules figures for keelson (a benchmark: it prints, it asserts nothing).

A lab of network namespaces (addresses in 198.18.0.0/15 only, nothing routed elsewhere): a
board running `keelson server` (its own node with --runtime runc), an agent board joined to
it, an endpoint namespace answering on TCP 8080 and a client namespace routed through the
board. Prints:
  - time from the last of SERVICES Services x 3 endpoints created (`kubectl create -f` of one
    generated manifest, Services without selectors and their EndpointSlices) to the agent's
    and the board's `inet keelson-services` table holding all of them (goal <= 2 s);
  - the agent's RSS before and after (the node's view of the Services plus the rules' state);
  - ClusterIP connect latency beside connecting to the endpoint address directly, from the
    client through the board (median of LAT connects each, interleaved; goal <= 1.1x).

Usage: benches/services.py   (root; nft, runc, kubectl, python3)
  SERVICES=1000 LAT=500 KEELSON_BIN=target/release/keelson
"""
import os, signal, statistics, subprocess, sys, tempfile, time

SERVICES = int(os.environ.get("SERVICES", "1000"))
LAT = int(os.environ.get("LAT", "500"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("KEELSON_BIN", os.path.join(ROOT, "target/release/keelson"))
TAG = f"kbsv{os.getpid()}"
NAMESPACES = ["b", "a", "c", "e"]


def log(msg):
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def ns(x):
    return f"{TAG}-{x}"


def inns(x, cmd):
    return f"ip netns exec {ns(x)} {cmd}"


def rss_kib(pid):
    """(VmRSS, RssAnon) in KiB: file pages of the binary count in the first only."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(line.split()[1])
    return found.get("VmRSS", 0), found.get("RssAnon", 0)


def table_counts(x):
    """(Services in service-ips-v4, endpoint chains) of namespace x's table."""
    out = sh(inns(x, "nft list table inet keelson-services"), check=False).stdout
    return out.count(" : goto service-"), out.count("chain endpoint-")


def main():
    tmp = tempfile.mkdtemp(prefix="keelson-bench-svc-")
    procs = []
    try:
        for x in NAMESPACES:
            sh(f"ip netns add {ns(x)}")
            sh(f"ip -n {ns(x)} link set lo up")
        for x, net in [("c", 10), ("e", 11), ("a", 13)]:
            sh(f"ip link add b{TAG}{x} netns {ns('b')} type veth peer name v{TAG}{x} netns {ns(x)}")
            sh(f"ip -n {ns('b')} addr add 198.18.{net}.1/24 dev b{TAG}{x}")
            sh(f"ip -n {ns('b')} link set b{TAG}{x} up")
            sh(f"ip -n {ns(x)} addr add 198.18.{net}.2/24 dev v{TAG}{x}")
            sh(f"ip -n {ns(x)} link set v{TAG}{x} up")
            sh(f"ip -n {ns(x)} route add 198.18.0.0/15 via 198.18.{net}.1")
        sh(inns("b", "sysctl -qw net.ipv4.ip_forward=1"))
        echo = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind(('0.0.0.0',8080))\ns.listen(512)\nwhile True:\n    c,_=s.accept()\n"
                "    c.sendall(b'e\\n')\n    c.close()\n")
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns("e"), "python3", "-c", echo]))

        env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        env["HOME"] = tmp
        kubeconfig = f"{tmp}/kubeconfig.yaml"
        server_log = open(f"{tmp}/server.log", "w")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns("b"), BIN, "server", f"--data-dir={tmp}/server",
             f"--write-kubeconfig={kubeconfig}", "--node-name=board", "--runtime=runc",
             "--cluster-cidr=198.19.0.0/17", "--service-cidr=198.19.128.0/17",
             "--flannel-backend=none", "--tls-san=198.18.13.1",
             f"--private-registry={tmp}/none.yaml"],
            env=env, stdout=server_log, stderr=server_log)
        procs.append(server)
        deadline = time.time() + 60
        while sh(inns("b", "curl -sk --max-time 2 https://127.0.0.1:6443/readyz"), check=False).stdout != "ok":
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"the server did not start; see {tmp}/server.log")
            time.sleep(0.2)
        token = open(f"{tmp}/server/server/token").read().strip()
        agent_log = open(f"{tmp}/agent.log", "w")
        agent = subprocess.Popen(
            ["ip", "netns", "exec", ns("a"), BIN, "agent", "--server=https://198.18.13.1:6443",
             f"--token={token}", f"--data-dir={tmp}/agent", "--node-name=agent1",
             "--runtime=runc", f"--private-registry={tmp}/none.yaml"],
            env=env, stdout=agent_log, stderr=agent_log)
        procs.append(agent)
        kubectl = f"kubectl --kubeconfig={kubeconfig}"
        deadline = time.time() + 60
        while table_counts("a")[0] < 1:
            if time.time() > deadline or agent.poll() is not None:
                sys.exit(f"the agent never programmed its table; see {tmp}/agent.log")
            time.sleep(0.2)
        time.sleep(5)
        rss_before = rss_kib(agent.pid)

        # One Service with the one real endpoint, for the latency figure.
        manifest = [service("lat"), slice_of("lat", ["198.18.11.2"])]
        for i in range(SERVICES):
            eps = [f"198.18.{128 + (3 * i + k) // 250}.{(3 * i + k) % 250 + 1}" for k in range(3)]
            manifest += [service(f"s{i}"), slice_of(f"s{i}", eps)]
        # Four kubectl processes at once, each with a quarter of the objects.
        paths = []
        for part in range(4):
            paths.append(f"{tmp}/services-{part}.yaml")
            with open(paths[-1], "w") as f:
                f.write("---\n".join(manifest[part * 2::8] + manifest[part * 2 + 1::8]))
        log(f"creating {SERVICES + 1} Services and their slices")
        started = time.time()
        creates = [subprocess.Popen(inns("b", f"{kubectl} create -f {p}"), shell=True,
                                    stdout=subprocess.DEVNULL) for p in paths]
        for c in creates:
            c.wait()
        created = time.time()
        want = SERVICES + 2  # and `lat`, and `kubernetes`
        done = {}
        while len(done) < 2 and time.time() - created < 120:
            for x in ["a", "b"]:
                if x not in done:
                    svcs, chains = table_counts(x)
                    if svcs >= want and chains >= 3 * SERVICES + 2:
                        done[x] = time.time() - created
            time.sleep(0.02)
        time.sleep(5)
        rss_after = rss_kib(agent.pid)

        lat_ip = sh(inns("b", f"{kubectl} get service lat -o jsonpath={{.spec.clusterIP}}")).stdout.strip()
        timer = f"""
import socket, statistics, time
def once(addr, port):
    t = time.perf_counter()
    s = socket.create_connection((addr, port), timeout=2)
    s.recv(8)
    s.close()
    return time.perf_counter() - t
direct, cluster = [], []
for i in range({LAT}):
    direct.append(once("198.18.11.2", 8080))
    cluster.append(once("{lat_ip}", 80))
print(statistics.median(direct) * 1e6, statistics.median(cluster) * 1e6)
"""
        direct, cluster = map(float, sh(inns("c", f"python3 -c '{timer}'")).stdout.split())

        print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs; binary {BIN}")
        print(f"create of {SERVICES + 1} Services + slices took {created - started:.1f} s (4 x kubectl create -f)")
        for x, who in [("a", "agent (through the tunnel)"), ("b", "server's own node")]:
            t = done.get(x)
            print(f"last object created -> all programmed on the {who}: "
                  + (f"{t:.2f} s" if t is not None else "NOT within 120 s"))
        print(f"agent RSS: {rss_before[0] / 1024:.1f} MiB before, {rss_after[0] / 1024:.1f} MiB after "
              f"(+{(rss_after[0] - rss_before[0]) / 1024:.1f} MiB for {SERVICES} Services x 3 endpoints); "
              f"anonymous {rss_before[1] / 1024:.1f} -> {rss_after[1] / 1024:.1f} MiB "
              f"(+{(rss_after[1] - rss_before[1]) / 1024:.1f} MiB)")
        print(f"connect+first byte, median of {LAT}: direct {direct:.0f} us, ClusterIP {cluster:.0f} us "
              f"({cluster / direct:.2f}x)")
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=15)
            except Exception:
                p.kill()
        for x in NAMESPACES:
            sh(f"ip netns del {ns(x)}", check=False)
        log(f"logs in {tmp}")


def service(name):
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n"
            f"spec:\n  ports:\n  - name: web\n    port: 80\n    targetPort: 8080\n")


def slice_of(name, addresses):
    eps = "".join(f"- addresses: [\"{a}\"]\n  conditions:\n    ready: true\n" for a in addresses)
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n"
            f"  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n"
            f"addressType: IPv4\nports:\n- name: web\n  port: 8080\n  protocol: TCP\nendpoints:\n{eps}")


if __name__ == "__main__":
    main()
