#!/usr/bin/env bash
# Failover of keelson's built-in virtual IP beside keepalived (VRRP) + HAProxy, in one
# network-namespace lab on this machine (not a timed test; the machine is shared and noisy,
# so compare the ratio, which both sides measure in the same run):
#   - failover time: from cutting the holder's link (bridge side down) to the first TCP
#     connection to VIP:6443 that succeeds from a client namespace (and, second figure, to the
#     first GET /readyz through the VIP that answers ok), over $runs runs each:
#     keelson (three servers, --vip with the default timings: lease 1s, renew 700ms,
#     retry 200ms) and keepalived (three instances, VRRP advert_int 1, unicast on the bridge,
#     nopreempt) with HAProxy (mode tcp) on the VIP in front of the same three keelson servers;
#     median, p90 and the ratio keelson/keepalived
#   - RSS (VmRSS) of the holder's keelson server process (API + VIP + balancer in one process)
#     and of a keelson server without --vip, against keepalived's processes plus HAProxy's
#     on the VRRP master
#
# The lab: a bridge in its own namespace; servers 198.18.0.1-3, a client 198.18.0.10 and a
# database forwarder 198.18.0.250 (socat to PostgreSQL's Unix socket), each in a namespace
# with a veth into the bridge. Every address is from 198.18.0.0/15 and lives only in these
# namespaces; nothing is routed anywhere else. Everything is removed on exit.
#
# Usage: benches/vip.sh [runs]              (default 10; about three minutes)
#   KEELSON_BIN=path  use this keelson instead of building the release binary
#   SETTLE=s          seconds to let the lab settle after restoring a link (default 4)
# Needs root, iproute2, socat, curl, keepalived, haproxy (apt-get install -y keepalived haproxy
# socat) and PostgreSQL on /var/run/postgresql with trust auth for postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
settle=${SETTLE:-4}

die() { echo "vip.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
for t in ip socat curl keepalived haproxy psql timeout; do
  command -v "$t" >/dev/null || die "$t is missing (apt-get install -y iproute2 socat curl keepalived haproxy postgresql-client coreutils)"
done
pg_socket=/var/run/postgresql/.s.PGSQL.5432
[ -S "$pg_socket" ] || die "PostgreSQL's socket $pg_socket is missing"
psql -qAt -h /var/run/postgresql -U postgres -d postgres -c 'SELECT 1' >/dev/null ||
  die "PostgreSQL does not answer on /var/run/postgresql as postgres"

bin=${KEELSON_BIN:-}
if [ -z "$bin" ]; then
  target=${CARGO_TARGET_DIR:-/tmp/vip-bench-target}
  CARGO_TARGET_DIR=$target cargo build --release --quiet
  bin=$target/release/keelson
fi
bin=$(readlink -f "$bin")

# --- the lab ---------------------------------------------------------------------------

tag=$(printf %x $$) # at most 6 hex digits: interface names stay within 15 characters
vip=198.18.0.100
db_ip=198.18.0.250
client_ip=198.18.0.10
br_ns=kbench-$tag-br
c_ns=kbench-$tag-c
db_ns=kbench-$tag-db
s_ns=(kbench-$tag-s1 kbench-$tag-s2 kbench-$tag-s3)
s_ip=(198.18.0.1 198.18.0.2 198.18.0.3)
bridge=kb$tag
database=keelson_vipbench_$tag
token=bench-token-$tag
tmp=$(mktemp -d /tmp/keelson-vip-bench-XXXXXX)
namespaces=()
pids=()

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  # Whatever still runs in the lab's namespaces was started here (socat's forks, children
  # of keepalived or haproxy).
  for ns in "${namespaces[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
  psql -qAt -h /var/run/postgresql -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ns_add NAME ROLE IP MAC: a namespace with a veth into the bridge (both ends are created in
# their namespaces directly; nothing appears in the machine's own namespace).
ns_add() {
  local ns=$1 role=$2 ip=$3 mac=$4
  ip netns add "$ns"; namespaces+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$br_ns" link add "vb$tag$role" type veth peer name "ve$tag$role" netns "$ns"
  ip -n "$br_ns" link set "vb$tag$role" master "$bridge" up
  ip -n "$ns" link set "ve$tag$role" address "$mac" up
  ip -n "$ns" addr add "$ip/24" dev "ve$tag$role"
}
ip netns add "$br_ns"; namespaces+=("$br_ns")
ip -n "$br_ns" link set lo up
ip -n "$br_ns" link add "$bridge" type bridge
ip -n "$br_ns" link set "$bridge" up
for i in 0 1 2; do ns_add "${s_ns[$i]}" "s$((i + 1))" "${s_ip[$i]}" "02:18:00:00:00:0$((i + 1))"; done
ns_add "$c_ns" c "$client_ip" 02:18:00:00:00:0a
ns_add "$db_ns" db "$db_ip" 02:18:00:00:00:fa
ip netns exec "$db_ns" socat TCP-LISTEN:5432,fork,reuseaddr "UNIX-CONNECT:$pg_socket" 2>"$tmp/socat.log" &
pids+=($!)
for _ in $(seq 100); do
  ip netns exec "${s_ns[0]}" env PGCONNECT_TIMEOUT=1 psql -qAt -h "$db_ip" -U postgres -d postgres \
    -c 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.05
done
psql -qAt -h /var/run/postgresql -U postgres -d postgres \
  -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1
: >"$tmp/empty.yaml"

# --- keelson servers ----------------------------------------------------------------------

server_pid=(0 0 0)
# start_server I FLAGS...: a keelson server in namespace I, on its own data dir.
start_server() {
  local i=$1; shift
  mkdir -p "$tmp/s$i/home"
  HOME=$tmp/s$i/home ip netns exec "${s_ns[$i]}" "$bin" server --config "$tmp/empty.yaml" \
    --data-dir "$tmp/s$i/data" --write-kubeconfig "$tmp/s$i/kubeconfig.yaml" \
    --node-name "bench-s$((i + 1))" --node-ip "${s_ip[$i]}" --token "$token" \
    --datastore-endpoint "postgres://postgres@$db_ip:5432/$database" "$@" \
    >>"$tmp/s$i/log" 2>&1 &
  server_pid[$i]=$!
  pids+=($!)
}
ready() { [ "$(ip netns exec "${s_ns[$1]}" curl -sk --max-time 2 "https://${s_ip[$1]}:6443/readyz" 2>/dev/null)" = ok ]; }
wait_ready() {
  for _ in $(seq 600); do
    ready "$1" && return 0
    kill -0 "${server_pid[$1]}" 2>/dev/null || { tail -20 "$tmp/s$1/log" >&2; die "server s$(($1 + 1)) exited"; }
    sleep 0.1
  done
  tail -20 "$tmp/s$1/log" >&2; die "server s$(($1 + 1)) not ready within 60 s"
}
stop_servers() {
  for i in 0 1 2; do kill -TERM "${server_pid[$i]}" 2>/dev/null || true; done
  for i in 0 1 2; do wait "${server_pid[$i]}" 2>/dev/null || true; done
}
# holders: the server indexes whose namespace holds the VIP.
holders() {
  local i out=()
  for i in 0 1 2; do
    ip -n "${s_ns[$i]}" -o addr show | grep -q " inet $vip/" && out+=("$i")
  done
  echo "${out[@]}"
}
wait_one_holder() {
  local h
  for _ in $(seq 300); do
    h=$(holders)
    [ -n "$h" ] && [ "${h// /}" = "$h" ] && { echo "$h"; return 0; }
    sleep 0.05
  done
  die "no single holder of $vip within 15 s (holders: $(holders))"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# ns_rss NS COMM: the summed VmRSS of the processes named COMM in namespace NS.
ns_rss() {
  local sum=0 p
  for p in $(ip netns pids "$1"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] && sum=$((sum + $(rss_kib "$p")))
  done
  echo "$sum"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

# --- one failover -------------------------------------------------------------------------

# failover_once H: cuts server H's link and prints two figures in milliseconds from the cut:
# the first TCP connection to VIP:6443 that succeeds from the client (every attempt starts
# after the cut; a dead path is abandoned after 100 ms), and the first GET /readyz through
# the VIP that answers "ok" (the serving certificate verified against the cluster CA). Then
# restores the link.
failover_once() {
  local h=$1 t0 out
  t0=$EPOCHREALTIME
  ip -n "$br_ns" link set "vb${tag}s$((h + 1))" down
  out=$(ip netns exec "$c_ns" bash -c '
    vip=$0 ca=$1
    deadline=$((${EPOCHREALTIME%.*} + 30))
    until timeout 0.1 bash -c "exec 3<>/dev/tcp/$vip/6443" 2>/dev/null; do
      [ "${EPOCHREALTIME%.*}" -lt "$deadline" ] || { echo fail fail; exit 0; }
    done
    tcp=$EPOCHREALTIME
    until [ "$(curl -s --cacert "$ca" --connect-timeout 0.1 --max-time 1 "https://$vip:6443/readyz")" = ok ]; do
      [ "${EPOCHREALTIME%.*}" -lt "$deadline" ] || { echo "$tcp" fail; exit 0; }
    done
    echo "$tcp $EPOCHREALTIME"' "$vip" "$tmp/ca.pem")
  ip -n "$br_ns" link set "vb${tag}s$((h + 1))" up
  set -- $out
  for t in "$1" "$2"; do
    if [ "$t" = fail ]; then printf 'fail '; else awk -v a="$t0" -v b="$t" 'BEGIN {printf "%d ", (b - a) * 1000}'; fi
  done
  echo
}

# stats MS...: "median p90" of the values.
stats() {
  printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    i = int(0.9 * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR
    printf "%d %d", m, v[i] }'
}

# --- keelson ------------------------------------------------------------------------------

echo "lab $tag: keelson $bin; $runs runs each" >&2
for i in 0 1 2; do start_server "$i" --vip "$vip/24"; done
for i in 0 1 2; do wait_ready "$i"; done
grep certificate-authority-data "$tmp/s0/kubeconfig.yaml" | awk '{print $2}' | base64 -d >"$tmp/ca.pem"
h=$(wait_one_holder)
# A server refreshes the server list (which the balancer forwards to) every 5 s; let every
# server see all three, as in a cluster that has been up for a while.
sleep 6
keelson_ms=() keelson_readyz_ms=()
for r in $(seq "$runs"); do
  h=$(wait_one_holder)
  read -r ms rz <<<"$(failover_once "$h")"
  [ "$ms" = fail ] && die "keelson: no connection to $vip within 30 s of cutting s$((h + 1)) (logs in $tmp)"
  [ "$rz" = fail ] && die "keelson: no /readyz answer through $vip within 30 s of cutting s$((h + 1)) (logs in $tmp)"
  new=$(wait_one_holder)
  echo "  keelson run $r: cut s$((h + 1)), s$((new + 1)) holds $vip; TCP connect after $ms ms, /readyz ok after $rz ms" >&2
  keelson_ms+=("$ms"); keelson_readyz_ms+=("$rz")
  wait_ready "$h"
  sleep "$settle"
done
h=$(wait_one_holder)
other=$(((h + 1) % 3))
sleep 5
keelson_holder_rss=$(rss_kib "${server_pid[$h]}")
keelson_other_rss=$(rss_kib "${server_pid[$other]}")
stop_servers

# --- keepalived + HAProxy -----------------------------------------------------------------

# The same servers without --vip, each on its own address only, so HAProxy can bind the VIP;
# the VIP goes into their certificates by hand, as with any external load balancer.
for i in 0 1 2; do start_server "$i" --bind-address "${s_ip[$i]}" --tls-san "$vip"; done
for i in 0 1 2; do wait_ready "$i"; done
for i in 0 1 2; do
  ip netns exec "${s_ns[$i]}" sysctl -qw net.ipv4.ip_nonlocal_bind=1
  peers=""
  for j in 0 1 2; do [ "$j" = "$i" ] || peers+="    ${s_ip[$j]}"$'\n'; done
  cat >"$tmp/keepalived-$i.conf" <<EOF
global_defs {
  router_id bench_s$((i + 1))
  enable_script_security
}
vrrp_instance VIP {
  state BACKUP
  nopreempt
  interface ve${tag}s$((i + 1))
  virtual_router_id 51
  priority 100
  advert_int 1
  unicast_src_ip ${s_ip[$i]}
  unicast_peer {
$peers  }
  virtual_ipaddress {
    $vip/32 dev ve${tag}s$((i + 1))
  }
}
EOF
  cat >"$tmp/haproxy-$i.cfg" <<EOF
global
  maxconn 4096
  nbthread 2
defaults
  mode tcp
  timeout connect 3s
  timeout client 1h
  timeout server 1h
frontend vip
  bind $vip:6443
  default_backend api
backend api
  balance leastconn
  option httpchk GET /readyz
  default-server check check-ssl verify none inter 2s rise 2 fall 3
  server s1 ${s_ip[0]}:6443
  server s2 ${s_ip[1]}:6443
  server s3 ${s_ip[2]}:6443
EOF
  ip netns exec "${s_ns[$i]}" keepalived -n -l -D -P -G -f "$tmp/keepalived-$i.conf" \
    -p "$tmp/keepalived-$i.pid" -r "$tmp/keepalived-vrrp-$i.pid" >"$tmp/keepalived-$i.log" 2>&1 &
  pids+=($!)
  ip netns exec "${s_ns[$i]}" haproxy -db -f "$tmp/haproxy-$i.cfg" >"$tmp/haproxy-$i.log" 2>&1 &
  pids+=($!)
done
h=$(wait_one_holder)
sleep 6
keepalived_ms=() keepalived_readyz_ms=()
for r in $(seq "$runs"); do
  h=$(wait_one_holder)
  read -r ms rz <<<"$(failover_once "$h")"
  [ "$ms" = fail ] && die "keepalived: no connection to $vip within 30 s of cutting s$((h + 1)) (logs in $tmp)"
  [ "$rz" = fail ] && die "keepalived: no /readyz answer through $vip within 30 s of cutting s$((h + 1)) (logs in $tmp)"
  new=$(wait_one_holder)
  echo "  keepalived run $r: cut s$((h + 1)), s$((new + 1)) holds $vip; TCP connect after $ms ms, /readyz ok after $rz ms" >&2
  keepalived_ms+=("$ms"); keepalived_readyz_ms+=("$rz")
  wait_ready "$h"
  sleep "$settle"
done
h=$(wait_one_holder)
sleep 5
keepalived_rss=$(ns_rss "${s_ns[$h]}" keepalived)
haproxy_rss=$(ns_rss "${s_ns[$h]}" haproxy)
plain_rss=$(rss_kib "${server_pid[$h]}")

# --- report -------------------------------------------------------------------------------

read -r k_med k_p90 <<<"$(stats "${keelson_ms[@]}")"
read -r v_med v_p90 <<<"$(stats "${keepalived_ms[@]}")"
read -r kr_med kr_p90 <<<"$(stats "${keelson_readyz_ms[@]}")"
read -r vr_med vr_p90 <<<"$(stats "${keepalived_readyz_ms[@]}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), kernel $(uname -r), $(date -u +%Y-%m-%d)"
echo "keelson: $bin; compared with: $(keepalived --version 2>&1 | head -1), $(haproxy -v | head -1 | cut -d' ' -f1-3)"
echo
echo "| failover after a cut link ($runs runs each) | first TCP connect, median | p90 | first /readyz ok, median | p90 |"
echo "|---|---|---|---|---|"
echo "| keelson --vip (lease 1s, renew deadline 700ms, retry 200ms) | $k_med ms | $k_p90 ms | $kr_med ms | $kr_p90 ms |"
echo "| keepalived VRRP (advert_int 1, unicast, nopreempt) + HAProxy | $v_med ms | $v_p90 ms | $vr_med ms | $vr_p90 ms |"
echo "| ratio keelson / keepalived (medians) | $(ratio "$k_med" "$v_med") | | $(ratio "$kr_med" "$vr_med") | |"
echo
echo "runs, keelson, TCP connect: ${keelson_ms[*]} ms"
echo "runs, keelson, /readyz ok: ${keelson_readyz_ms[*]} ms"
echo "runs, keepalived, TCP connect: ${keepalived_ms[*]} ms"
echo "runs, keepalived, /readyz ok: ${keepalived_readyz_ms[*]} ms"
echo
echo "| RSS (VmRSS) | |"
echo "|---|---|"
echo "| keelson server holding the VIP (API + VIP + balancer, one process) | $(mib "$keelson_holder_rss") |"
echo "| keelson server with --vip, not holding it | $(mib "$keelson_other_rss") |"
echo "| keelson server without --vip (behind keepalived + HAProxy) | $(mib "$plain_rss") |"
echo "| keelson VIP + balancer: holder minus server without --vip | $(mib $((keelson_holder_rss - plain_rss))) |"
echo "| keepalived on the VRRP master (parent + VRRP child) | $(mib "$keepalived_rss") |"
echo "| HAProxy on the VRRP master (mode tcp, 2 threads, 3 checked backends) | $(mib "$haproxy_rss") |"
echo "| keepalived + HAProxy | $(mib $((keepalived_rss + haproxy_rss))) |"
