#!/usr/bin/env bash
# Prints keelson's figures (not a timed test; the machine is shared and noisy):
#   - time from start to /readyz ok, and to the node listed Ready by kubectl
#   - idle server RSS after 30 s (single server, SQLite)
#   - stripped binary size for every target built under target/<triple>/release
# Usage: benches/figures.sh [idle-seconds]   (builds the host release binary first)
set -euo pipefail
# Benchmarks run keelson in the machine's own network namespace: its nodes must not program
# the machine's networking (pod routes and vxlan, Service rules, the cluster DNS address).
export KEELSON_FLANNEL_BACKEND=none KEELSON_DISABLE_KUBE_PROXY=true KEELSON_DISABLE=coredns
cd "$(dirname "$0")/.."
idle=${1:-30}
cargo build --release --quiet
bin=target/release/keelson
tmp=$(mktemp -d)
: > "$tmp/none.yaml"
trap 'kill $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

ms() { date +%s%3N; }
start=$(ms)
"$bin" server --config "$tmp/none.yaml" --data-dir "$tmp/data" --bind-address 127.0.0.1 \
  --https-listen-port "$port" --write-kubeconfig "$tmp/kubeconfig.yaml" --node-name bench \
  >"$tmp/log" 2>&1 &
pid=$!
until [ "$(curl -sk "https://127.0.0.1:$port/readyz" 2>/dev/null)" = ok ]; do
  kill -0 $pid 2>/dev/null || { cat "$tmp/log"; exit 1; }
  sleep 0.02
done
ready=$(( $(ms) - start ))
until kubectl --kubeconfig "$tmp/kubeconfig.yaml" get node bench --no-headers 2>/dev/null | grep -q ' Ready '; do sleep 0.05; done
node_ready=$(( $(ms) - start ))

# A restart pays no first-start key generation; it is what a rebooted board sees.
kill -TERM $pid; wait $pid || true
start=$(ms)
"$bin" server --config "$tmp/none.yaml" --data-dir "$tmp/data" --bind-address 127.0.0.1 \
  --https-listen-port "$port" --write-kubeconfig "$tmp/kubeconfig.yaml" --node-name bench \
  >>"$tmp/log" 2>&1 &
pid=$!
until [ "$(curl -sk "https://127.0.0.1:$port/readyz" 2>/dev/null)" = ok ]; do sleep 0.02; done
restart_ready=$(( $(ms) - start ))

sleep "$idle"
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
hwm_kib=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(date -u +%Y-%m-%d)"
echo
echo "| figure | value |"
echo "|---|---|"
echo "| first start to /readyz ok (includes CA generation and PBKDF2 sealing) | ${ready} ms |"
echo "| first start to node Ready in kubectl | ${node_ready} ms |"
echo "| restart to /readyz ok | ${restart_ready} ms |"
echo "| idle server RSS after ${idle} s (SQLite, x86_64) | $((rss_kib / 1024)).$(( (rss_kib % 1024) * 10 / 1024 )) MiB (peak $((hwm_kib / 1024)).$(( (hwm_kib % 1024) * 10 / 1024 )) MiB) |"
for f in target/release/keelson target/*-linux-*/release/keelson; do
  [ -f "$f" ] || continue
  triple=$(echo "$f" | cut -d/ -f2); [ "$triple" = release ] && triple="x86_64 host"
  size=$(stat -c %s "$f")
  echo "| stripped binary, $triple | $(awk -v s="$size" 'BEGIN {printf "%.2f MiB", s/1048576}') |"
done
