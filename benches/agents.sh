#!/usr/bin/env bash
# Agent-fleet figures for keelson (a benchmark, not a timed test: it prints, it asserts nothing).
#
# For every N in $AGENTS and every datastore in $DATASTORES, a fresh release server (on
# SQLite, or on a fresh database of the machine's PostgreSQL) gets N simulated agents from
# `keelson loadgen` (the real agent code: join, certificate, websocket tunnel, heartbeats
# through the server, all in one process). Prints per run:
#   - time from starting loadgen until all N+1 nodes are Ready (and until all N tunnels are open),
#   - server RSS after all are Ready and $SETTLE s idle,
#   - server CPU and datastore statements/s over the next $WINDOW s of idle,
#   - loadgen's RSS and CPU (informative: N agents in one process).
# Then one real `keelson agent` (x86_64): idle RSS after $SETTLE s; and, where qemu-aarch64
# and the cross setup (.ci/cross-setup) exist, the same for the aarch64 musl agent under
# qemu-user (that RSS includes the emulator).
#
# Usage: benches/agents.sh
#   AGENTS="10 1000"           agent counts
#   DATASTORES="sqlite postgres"
#   SETTLE=20 WINDOW=20        idle seconds before the RSS sample / of the CPU+statements window
#   READY_TIMEOUT=300          seconds to wait for all nodes Ready
#   KEELSON_BIN=path           prebuilt binary (default: cargo build --release, into
#                              $CARGO_TARGET_DIR or target/)
#   KEELSON_AARCH64_BIN=path   prebuilt aarch64 binary (default: .ci/cross-build if set up)
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres   the PostgreSQL to use (trust auth)
#   KEEP_LOGS=dir              copy the servers' and agents' logs there before cleaning up
set -euo pipefail
# Benchmarks run keelson in the machine's own network namespace: its nodes must not program
# the machine's networking (pod routes and vxlan, Service rules, the cluster DNS address).
export KEELSON_FLANNEL_BACKEND=none KEELSON_DISABLE_KUBE_PROXY=true KEELSON_DISABLE=coredns
cd "$(dirname "$0")/.."
repo=$PWD

agents_list=${AGENTS:-10 1000}
datastores=${DATASTORES:-sqlite postgres}
settle=${SETTLE:-20}
window=${WINDOW:-20}
ready_timeout=${READY_TIMEOUT:-300}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}

log() { printf '[agents] %s\n' "$*" >&2; }
die() { printf '[agents] ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ cleanup
tmp=$(mktemp -d /tmp/keelson-agents.XXXXXX)
pids=()
dbs=()
stop_pid() { # stop_pid PID [seconds]: SIGTERM, then SIGKILL after the grace
  local p=$1 grace=${2:-15} i
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$p" 2>/dev/null; then
    log "pid $p still running ${grace}s after SIGTERM: SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
}
drop_db() { psql -qAt -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1 || true; }
cleanup() {
  set +e
  trap - INT TERM
  local p d
  for p in ${pids[@]+"${pids[@]}"}; do kill -TERM "$p" 2>/dev/null; done
  for p in ${pids[@]+"${pids[@]}"}; do stop_pid "$p" 15; done
  for d in ${dbs[@]+"${dbs[@]}"}; do drop_db "$d"; done
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    (cd "$tmp" && find . -name '*.log' -exec cp --parents {} "$KEEP_LOGS" \;)
    log "logs copied to $KEEP_LOGS"
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
forget_pid() { local p keep=(); for p in ${pids[@]+"${pids[@]}"}; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=(${keep[@]+"${keep[@]}"}); }

# ------------------------------------------------------------------ binary, limits
if [ -n "${KEELSON_BIN:-}" ]; then
  bin=$(realpath "$KEELSON_BIN")
else
  log "cargo build --release"
  cargo build --release --quiet
  target_dir=${CARGO_TARGET_DIR:-target}
  bin=$(realpath "$target_dir/release/keelson")
fi
[ -x "$bin" ] || die "no binary at $bin"
# N agents hold N tunnels (server) and N sockets plus files (loadgen).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for n in $agents_list; do
  [ "$((n * 3 + 256))" -le "$(ulimit -n)" ] || log "warning: open-files limit $(ulimit -n) may be too low for $n agents"
done

# ------------------------------------------------------------------ helpers
: > "$tmp/none.yaml"
clk=$(getconf CLK_TCK)
ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rollup() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
# utime + stime in clock ticks (fields 14, 15; the comm field may hold spaces).
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
pct() { awk -v t="$1" -v s="$2" -v c="$clk" 'BEGIN {printf "%.1f %%", 100 * t / c / s}'; }
secs() { awk -v m="$1" 'BEGIN {printf "%.2f s", m / 1000}'; }

# Server state of the current run.
srv_pid= srv_port= srv_dir= srv_db=
api() { # api PATH: GET with the admin client certificate
  curl -s --max-time 20 --cacert "$srv_dir/ca.pem" --cert "$srv_dir/cert.pem" --key "$srv_dir/key.pem" \
    "https://127.0.0.1:$srv_port$1"
}
metric() { { api /metrics || true; } | awk -v m="$1" '$1 == m {print $2}'; }
ready_nodes() {
  api /api/v1/nodes | jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length' 2>/dev/null || echo 0
}

start_server() { # start_server NAME DATASTORE(sqlite|postgres)
  srv_dir=$tmp/$1
  mkdir -p "$srv_dir"
  srv_port=$(free_port)
  local args=(server --config "$tmp/none.yaml" --data-dir "$srv_dir/data" --bind-address 127.0.0.1
              --https-listen-port "$srv_port" --write-kubeconfig "$srv_dir/kubeconfig.yaml" --node-name bench)
  srv_db=
  if [ "$2" = postgres ]; then
    srv_db=keelson_agents_$$_$1
    srv_db=${srv_db//-/_}
    dbs+=("$srv_db")
    drop_db "$srv_db"
    args+=(--datastore-endpoint "postgres://$PGUSER@$PGHOST:$PGPORT/$srv_db")
  fi
  "$bin" "${args[@]}" >"$srv_dir/server.log" 2>&1 &
  srv_pid=$!
  pids+=("$srv_pid")
  local deadline=$((SECONDS + 60))
  until [ "$(curl -sk --max-time 2 "https://127.0.0.1:$srv_port/readyz" 2>/dev/null)" = ok ] \
      && [ -s "$srv_dir/kubeconfig.yaml" ]; do
    kill -0 "$srv_pid" 2>/dev/null || { cat "$srv_dir/server.log" >&2; die "server $1 exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$srv_dir/server.log" >&2; die "server $1 not ready in 60 s"; }
    sleep 0.05
  done
  local k f
  for k in certificate-authority-data:ca client-certificate-data:cert client-key-data:key; do
    f=${k#*:}; k=${k%%:*}
    awk -v k="$k:" '$1 == k {print $2; exit}' "$srv_dir/kubeconfig.yaml" | base64 -d >"$srv_dir/$f.pem"
  done
  until [ "$(ready_nodes)" -ge 1 ]; do sleep 0.05; done
}
stop_server() {
  stop_pid "$srv_pid" 15
  forget_pid "$srv_pid"
  if [ -n "$srv_db" ]; then drop_db "$srv_db"; fi
}

# Prints up to 6 distinct WARN/ERROR messages of a log (timestamps and node names folded).
log_problems() { # log_problems LABEL FILE
  local count
  count=$(grep -cE ' (WARN|ERROR) ' "$2" || true)
  [ "$count" -gt 0 ] || return 0
  notes+=("$1: $count WARN/ERROR lines; distinct messages (count, first seen):")
  while IFS= read -r line; do notes+=("    $line"); done < <(
    grep -E ' (WARN|ERROR) ' "$2" \
      | sed -E 's/^[0-9T:.-]+Z +//' \
      | awk '{key = $0; gsub(/(node|name)=[^ ]+/, "node=…", key); gsub(/[0-9]+/, "#", key)
              if (!(key in n)) {order[++k] = key; first[key] = $0}; n[key]++}
             END {for (i = 1; i <= k && i <= 6; i++) printf "%5d  %s\n", n[order[i]], first[order[i]]}')
}

rows=()
notes=()

# ------------------------------------------------------------------ fleet runs
run_fleet() { # run_fleet DATASTORE N
  local ds=$1 n=$2 label want poll t0 now t_ready= t_tun= ready=0 tun=0
  label=$([ "$ds" = postgres ] && echo PostgreSQL || echo SQLite)
  log "$label, $n agents: starting a fresh server"
  start_server "$ds-$n" "$ds"
  want=$((n + 1))
  # Listing N nodes costs the server about 2 KiB per node: poll less often for big fleets.
  poll=$(awk -v n="$n" 'BEGIN {p = n / 2000; if (p < 0.1) p = 0.1; printf "%.1f", p}')

  mkdir -p "$srv_dir/agents"
  t0=$(ms)
  "$bin" loadgen --server "https://127.0.0.1:$srv_port" --token "$(cat "$srv_dir/data/server/token")" \
    --agents "$n" -d "$srv_dir/agents" >"$srv_dir/loadgen.log" 2>&1 &
  local lg=$!
  pids+=("$lg")
  while :; do
    kill -0 "$lg" 2>/dev/null || { tail -n 20 "$srv_dir/loadgen.log" >&2; die "loadgen exited"; }
    kill -0 "$srv_pid" 2>/dev/null || { tail -n 20 "$srv_dir/server.log" >&2; die "server exited"; }
    now=$(ms)
    if [ -z "$t_tun" ]; then
      tun=$(metric keelson_tunnels); tun=${tun:-0}
      [ "$tun" -ge "$n" ] && t_tun=$((now - t0))
    fi
    ready=$(ready_nodes)
    if [ "$ready" -ge "$want" ]; then t_ready=$(($(ms) - t0)); break; fi
    if [ $((now - t0)) -ge $((ready_timeout * 1000)) ]; then break; fi
    sleep "$poll"
  done
  local ready_txt tun_txt
  if [ -n "$t_ready" ]; then
    ready_txt=$(secs "$t_ready")
    log "$label, $n agents: all $want nodes Ready after $ready_txt"
  else
    ready_txt="not reached: $ready of $want Ready after ${ready_timeout} s"
    log "$label, $n agents: $ready_txt"
    notes+=("$label, $n agents: only $ready of $want nodes Ready after ${ready_timeout} s (tunnels open: $(metric keelson_tunnels), join requests: $(metric keelson_join_requests_total))")
  fi
  if [ -n "$t_tun" ]; then
    tun_txt=$(secs "$t_tun")
  elif [ -n "$t_ready" ] && [ "$(metric keelson_tunnels)" -ge "$n" ] 2>/dev/null; then
    tun_txt="≤ $(secs "$t_ready")" # the tunnels opened within the last poll, before all were Ready
  else
    tun_txt="not reached: $(metric keelson_tunnels) of $n"
  fi

  log "$label, $n agents: idle ${settle} s, then a ${window} s window"
  sleep "$settle"
  local s_rss s_hwm l_rss l_hwm
  s_rss=$(kib "$srv_pid" VmRSS); s_hwm=$(kib "$srv_pid" VmHWM)
  l_rss=$(kib "$lg" VmRSS); l_hwm=$(kib "$lg" VmHWM)
  local st0 st1 sc0 sc1 lc0 lc1 w0 w1
  st0=$(metric keelson_datastore_statements_total); sc0=$(ticks "$srv_pid"); lc0=$(ticks "$lg"); w0=$(ms)
  sleep "$window"
  st1=$(metric keelson_datastore_statements_total); sc1=$(ticks "$srv_pid"); lc1=$(ticks "$lg"); w1=$(ms)
  local el rate
  el=$(awk -v a="$w0" -v b="$w1" 'BEGIN {print (b - a) / 1000}')
  rate=$(awk -v a="$st0" -v b="$st1" -v s="$el" 'BEGIN {printf "%.2f", (b - a) / s}')
  # Sanity after the window: still all Ready, all tunnels open, none refused.
  local ready_end tun_end opened refused joins
  ready_end=$(ready_nodes); tun_end=$(metric keelson_tunnels)
  opened=$(metric keelson_tunnels_opened_total); refused=$(metric keelson_tunnels_refused_total)
  joins=$(metric keelson_join_requests_total)
  if [ "$ready_end" -ne "$want" ] || [ "${tun_end:-0}" -ne "$n" ] || [ "${opened:-0}" -ne "$n" ] || [ "${refused:-0}" -ne 0 ]; then
    notes+=("$label, $n agents, after the window: $ready_end of $want Ready, tunnels open $tun_end, opened $opened, refused $refused, join requests $joins")
  fi

  rows+=("| $label | $n | $ready_txt | $tun_txt | $(mib "$s_rss") (peak $(mib "$s_hwm")) | $(pct $((sc1 - sc0)) "$el") | $rate | $(mib "$l_rss") (peak $(mib "$l_hwm")) | $(pct $((lc1 - lc0)) "$el") |")

  stop_pid "$lg" 30
  forget_pid "$lg"
  stop_server
  log_problems "$label, $n agents, server log" "$srv_dir/server.log"
  log_problems "$label, $n agents, loadgen log" "$srv_dir/loadgen.log"
  rm -rf "$srv_dir/agents" "$srv_dir/data"
}

for ds in $datastores; do
  case $ds in sqlite | postgres) ;; *) die "unknown datastore $ds (sqlite, postgres)" ;; esac
  for n in $agents_list; do run_fleet "$ds" "$n"; done
done

# ------------------------------------------------------------------ real agents
agent_rows=()
run_agent() { # run_agent LABEL NODE-NAME COMMAND...: one agent against the current server
  local label=$1 node=$2; shift 2
  local dir=$srv_dir/$node
  mkdir -p "$dir"
  local before t0 p
  before=$(ready_nodes)
  t0=$(ms)
  "$@" agent --config "$tmp/none.yaml" --server "https://127.0.0.1:$srv_port" \
    --token "$(cat "$srv_dir/data/server/token")" -d "$dir/data" --node-name "$node" >"$dir/agent.log" 2>&1 &
  p=$!
  pids+=("$p")
  until [ "$(ready_nodes)" -gt "$before" ]; do
    kill -0 "$p" 2>/dev/null || { tail -n 20 "$dir/agent.log" >&2; die "$label agent exited"; }
    [ $(($(ms) - t0)) -lt $((ready_timeout * 1000)) ] || { tail -n 20 "$dir/agent.log" >&2; die "$label agent not Ready"; }
    sleep 0.1
  done
  local t_ready=$(($(ms) - t0)) c0 c1
  c0=$(ticks "$p")
  sleep "$settle"
  c1=$(ticks "$p")
  local rss hwm pss private
  rss=$(kib "$p" VmRSS); hwm=$(kib "$p" VmHWM)
  # RSS counts file pages shared with other processes; PSS splits them, private is its own.
  pss=$(rollup "$p" Pss); private=$(($(rollup "$p" Private_Clean) + $(rollup "$p" Private_Dirty)))
  agent_rows+=("| $label: start to node Ready | $(secs "$t_ready") |")
  agent_rows+=("| $label: idle RSS after ${settle} s | $(mib "$rss") (peak $(mib "$hwm"); PSS $(mib "$pss"), private $(mib "$private")) |")
  agent_rows+=("| $label: idle CPU over those ${settle} s | $(pct $((c1 - c0)) "$settle") |")
  stop_pid "$p" 15
  forget_pid "$p"
  log_problems "$label agent log" "$dir/agent.log"
}

log "real agents: starting a fresh SQLite server"
start_server real sqlite
run_agent "one real agent, x86_64 release" real-x86-64 "$bin"

# aarch64 musl agent under qemu-user, only where the cross setup already exists.
. targets/triples.sh
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
a64=${KEELSON_AARCH64_BIN:-}
a64_note=
if [ -z "$qemu" ]; then
  a64_note="skipped: qemu-aarch64 (or qemu-aarch64-static) not found"
elif [ -z "$a64" ]; then
  missing=()
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=("aarch64-linux-gnu-gcc")
  rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-musl || missing+=("rustup target aarch64-unknown-linux-musl")
  [ -f "$KEELSON_CROSS_CACHE/arm64/.complete" ] || missing+=("musl-dev for arm64 in $KEELSON_CROSS_CACHE")
  if [ ${#missing[@]} -gt 0 ]; then
    a64_note="skipped: cross setup missing (${missing[*]}); run .ci/cross-setup aarch64-unknown-linux-musl"
  else
    log "building the aarch64 musl agent: .ci/cross-build aarch64-unknown-linux-musl"
    if .ci/cross-build aarch64-unknown-linux-musl >&2; then
      a64=$(realpath "${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-musl/release/keelson")
    else
      a64_note="skipped: .ci/cross-build aarch64-unknown-linux-musl failed"
    fi
  fi
fi
if [ -n "$a64" ] && [ -n "$qemu" ]; then
  run_agent "one real agent, aarch64 musl under $(basename "$qemu") (RSS includes the emulator)" real-aarch64 "$qemu" "$a64"
elif [ -n "$a64_note" ]; then
  agent_rows+=("| one real agent, aarch64 musl under qemu-user | $a64_note |")
fi
stop_server

# ------------------------------------------------------------------ report
pg_version=$(psql -qAt -c 'SHOW server_version' 2>/dev/null || echo "?")
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), Linux $(uname -r), $(date -u +%Y-%m-%d)"
echo "binary: $("$bin" --version | head -n1), $(awk -v s="$(stat -c %s "$bin")" 'BEGIN {printf "%.2f MiB", s/1048576}'); PostgreSQL $pg_version; open files limit $(ulimit -n)"
echo "one fresh server per row; idle = no API clients, agents heartbeating; RSS after ${settle} s idle; CPU and statements over the next ${window} s"
echo
echo "| datastore | agents | loadgen start → all N+1 nodes Ready | → all N tunnels open | server RSS | server CPU | datastore statements/s | loadgen RSS | loadgen CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| figure | value |"
echo "|---|---|"
printf '%s\n' "${agent_rows[@]}"
if [ ${#notes[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${notes[@]}"
fi
