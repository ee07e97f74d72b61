#!/usr/bin/env bash
# Cluster DNS figures: answers/s and p99 latency for cluster names from keelson's node DNS
# beside dnsmasq serving the same 1000 records, both driven by the same dnsperf from a client
# namespace; and the server's RSS (its own node included) before and after 1000 Services.
#
#   benches/dns.sh                 # uses target/release/keelson
#   KEELSON=target/debug/keelson benches/dns.sh
#
# Needs root, runc, iproute2, kubectl, dnsmasq and dnsperf (apt-get install -y dnsmasq-base
# dnsperf). Everything lives in three namespaces of its own (198.18.60.0/24 links, the
# 198.19.0.0/16 cluster ranges) and its work directory (the node's CNI configuration too, not
# the machine's /etc/cni/net.d), and is removed at the end. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
KEELSON=${KEELSON:-target/release/keelson}
SERVICES=${SERVICES:-1000}
SECONDS_EACH=${SECONDS_EACH:-10}
OUTSTANDING=${OUTSTANDING:-64}
CLUSTER_DNS=198.19.128.10
MASQ_IP=198.18.60.6
B=kdnsb-board-$$ M=kdnsb-mask-$$ C=kdnsb-client-$$
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for ns in $B $M $C; do ip netns delete "$ns" 2>/dev/null || true; done
  # Containers the node started would outlive it; this bench starts none.
  rm -rf "$WORK"
}
trap cleanup EXIT

for ns in $B $M $C; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n $C link add cb type veth peer name bc netns $B
ip -n $C link add cm type veth peer name mc netns $M
ip -n $C addr add 198.18.60.1/30 dev cb; ip -n $B addr add 198.18.60.2/30 dev bc
ip -n $C addr add 198.18.60.5/30 dev cm; ip -n $M addr add $MASQ_IP/30 dev mc
for l in cb cm; do ip -n $C link set $l up; done
ip -n $B link set bc up; ip -n $M link set mc up
ip -n $B route add default via 198.18.60.1
ip -n $C route add 198.19.128.0/17 via 198.18.60.2

echo "nameserver 198.18.60.1" > "$WORK/resolv.conf"
ip netns exec $B env KEELSON_RUNTIME=runc "$KEELSON" server \
  --data-dir "$WORK/data" --write-kubeconfig "$WORK/kubeconfig" --bind-address 127.0.0.1 \
  --node-name dns-bench --cluster-cidr 198.19.0.0/17 --service-cidr 198.19.128.0/17 \
  --cluster-dns $CLUSTER_DNS --resolv-conf "$WORK/resolv.conf" \
  --cni-conf-dir "$WORK/cni" > "$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=($SERVER)
kc() { ip netns exec $B kubectl --kubeconfig "$WORK/kubeconfig" "$@"; }
for _ in $(seq 120); do
  ip netns exec $B dig +short +time=1 +tries=1 @$CLUSTER_DNS kubernetes.default.svc.cluster.local 2>/dev/null | grep -q . && break
  sleep 0.5
done
sleep 20
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$SERVER/status; }
RSS_IDLE=$(rss)

for i in $(seq 0 $((SERVICES - 1))); do
  printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-%d}\nspec:\n  ports: [{name: http, port: 80}]\n' "$i"
done > "$WORK/services.yaml"
START=$(date +%s.%N)
kc create -f "$WORK/services.yaml" > /dev/null
LAST=svc-$((SERVICES - 1)).default.svc.cluster.local
until ip netns exec $C dig +short +time=1 +tries=1 @$CLUSTER_DNS "$LAST" | grep -q .; do sleep 0.2; done
ANSWERED=$(echo "$(date +%s.%N) - $START" | bc)

# The same records for dnsmasq, and one query file for both.
kc get services -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.clusterIP}{"\n"}{end}' \
  | awk '$1 ~ /^svc-/ {print "host-record=" $1 ".default.svc.cluster.local," $2}' > "$WORK/dnsmasq.conf"
awk -F'[=,]' '{print $2 " A"}' "$WORK/dnsmasq.conf" > "$WORK/queries"
ip netns exec $M dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" --no-resolv \
  --no-hosts --user=root --bind-interfaces --listen-address=$MASQ_IP --cache-size=10000 \
  --pid-file= &
PIDS+=($!)
sleep 1
sleep 20
RSS_1000=$(rss)

run() { # server label
  ip netns exec $C dnsperf -s "$1" -d "$WORK/queries" -l "$SECONDS_EACH" -q "$OUTSTANDING" -c 1 -v \
    > "$WORK/$2.out" 2>&1 || true
  local qps lost p50 p99
  qps=$(awk '/Queries per second/ {print $4}' "$WORK/$2.out")
  lost=$(awk '/Queries lost/ {print $3}' "$WORK/$2.out")
  # -v prints one line per answer, its latency (seconds) last.
  awk '$1 == ">" {print $NF}' "$WORK/$2.out" | sort -g > "$WORK/$2.lat"
  local n
  n=$(wc -l < "$WORK/$2.lat")
  p50=$(awk -v n="$n" 'NR == int(n * 0.50) + 1 {printf "%.3f", $1 * 1000}' "$WORK/$2.lat")
  p99=$(awk -v n="$n" 'NR == int(n * 0.99) + 1 {printf "%.3f", $1 * 1000}' "$WORK/$2.lat")
  printf '| %s | %s | %s ms | %s ms | %s |\n' "$2" "$qps" "$p50" "$p99" "$lost"
}

echo
echo "machine: $(nproc) cores, $(uname -m), load $(cut -d' ' -f1-3 /proc/loadavg); binary: $KEELSON"
echo "$SERVICES Services, dnsperf with $OUTSTANDING outstanding queries, ${SECONDS_EACH}s each, same client namespace"
echo
echo "| server | answers/s | p50 | p99 | lost |"
echo "|---|---|---|---|---|"
run $CLUSTER_DNS keelson
run $MASQ_IP dnsmasq
run $CLUSTER_DNS keelson-again
echo
echo "keelson server RSS (its node and cluster DNS included): idle $RSS_IDLE, with $SERVICES Services $RSS_1000"
echo "time from 'kubectl create' of $SERVICES Services to the last one answered: ${ANSWERED}s"
