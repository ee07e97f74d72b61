#!/usr/bin/env bash
# Hollow-node figures for keelson — SIMULATION (a benchmark, not a timed test: it prints, it
# asserts nothing).
#
# A fresh release server on SQLite or PostgreSQL (its own node tainted, so every pod lands on a hollow node)
# gets $NODES hollow nodes from `keelson loadgen`: the real agent code (join, certificate,
# tunnel, pod assignments, status reports) for every node, in one process, with the simulated
# runtime instead of containers (Running and Ready $POD_START_DELAY after binding). Once all
# nodes are Ready, one Deployment of $REPLICAS replicas is applied. Prints:
#   - seconds from apply until every pod is bound, and until every pod is Running and Ready,
#   - server RSS: peak (VmHWM over the whole run) and idle ($SETTLE s after all are Ready),
#   - server CPU and datastore statements/s over the next $WINDOW s of idle,
#   - then the duration of a rolling update of the Deployment to a new image.
# Progress is read from the SQLite file with the sqlite3 CLI, or with psql (read-only queries on the
# object table), so polling does not load the server being measured.
#
# Usage: benches/hollow.sh
#   NODES=1000 REPLICAS=3000 POD_START_DELAY=1s
#   SETTLE=20 WINDOW=20        idle seconds before the RSS sample / of the CPU+statements window
#   TIMEOUT=600                seconds to wait for nodes, then for pods, then for the rollout
#   ROLLOUT=0                  skip the rolling update measured after the idle window
#   KEELSON_BIN=path           prebuilt binary (default: cargo build --release)
#   SERVER_ARGS="--debug"      further server flags
#   DATASTORE=postgres         the machine's PostgreSQL (127.0.0.1:5432, user postgres, trust) in a
#                              database of its own, dropped afterwards (default: sqlite)
#   KEEP_LOGS=dir              copy the logs there before cleaning up
set -euo pipefail
# Benchmarks run keelson in the machine's own network namespace: its nodes must not program
# the machine's networking (pod routes and vxlan, Service rules, the cluster DNS address).
export KEELSON_FLANNEL_BACKEND=none KEELSON_DISABLE_KUBE_PROXY=true KEELSON_DISABLE=coredns
cd "$(dirname "$0")/.."

nodes=${NODES:-1000}
replicas=${REPLICAS:-3000}
start_delay=${POD_START_DELAY:-1s}
settle=${SETTLE:-20}
window=${WINDOW:-20}
timeout=${TIMEOUT:-600}
rollout=${ROLLOUT:-1}

log() { printf '[hollow] %s\n' "$*" >&2; }
die() { printf '[hollow] ERROR: %s\n' "$*" >&2; exit 1; }
datastore=${DATASTORE:-sqlite}
case "$datastore" in
  sqlite) command -v sqlite3 >/dev/null || die "sqlite3 (the CLI) is needed to read progress" ;;
  postgres) command -v psql >/dev/null || die "psql is needed for DATASTORE=postgres" ;;
  *) die "DATASTORE=$datastore: expected sqlite or postgres" ;;
esac
pgdb=keelson_hollow_$$
pg() { psql -h 127.0.0.1 -U postgres -At -F'|' -v ON_ERROR_STOP=1 "$@"; }
command -v jq >/dev/null || die "jq is needed"

# ------------------------------------------------------------------ cleanup
tmp=$(mktemp -d /tmp/keelson-hollow.XXXXXX)
pids=()
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
cleanup() {
  set +e
  trap - INT TERM
  local p
  for p in ${pids[@]+"${pids[@]}"}; do stop_pid "$p" 30; done
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    cp "$tmp"/*.log "$KEEP_LOGS"/ 2>/dev/null
    log "logs copied to $KEEP_LOGS"
  fi
  rm -rf "$tmp"
  if [ "$datastore" = postgres ]; then pg -d postgres -c "DROP DATABASE IF EXISTS $pgdb" >/dev/null 2>&1; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ binary, limits
if [ -n "${KEELSON_BIN:-}" ]; then
  bin=$(realpath "$KEELSON_BIN")
else
  log "cargo build --release"
  cargo build --release --quiet
  bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/keelson")
fi
[ -x "$bin" ] || die "no binary at $bin"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------ helpers
: > "$tmp/none.yaml"
clk=$(getconf CLK_TCK)
ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
pct() { awk -v t="$1" -v s="$2" -v c="$clk" 'BEGIN {printf "%.1f %%", 100 * t / c / s}'; }
secs() { awk -v m="$1" 'BEGIN {printf "%.1f s", m / 1000}'; }

port=$(free_port)
data=$tmp/data
db=$data/server/db/state.db
api() { curl -s --max-time 20 --cacert "$tmp/ca.pem" --cert "$tmp/cert.pem" --key "$tmp/key.pem" "https://127.0.0.1:$port$1"; }
metric() { { api /metrics || true; } | awk -v m="$1" '$1 == m {print $2}'; }
sql() {
  if [ "$datastore" = postgres ]; then
    pg -d "$pgdb" -c "$1" 2>/dev/null || echo "0|0|0|0"
  else
    sqlite3 -readonly -cmd '.timeout 5000' "file:$db?mode=ro" "$1" 2>/dev/null || echo "0|0|0|0"
  fi
}
# The stored JSON and its functions, per database.
if [ "$datastore" = postgres ]; then
  obj="convert_from(o.value, 'UTF8')::jsonb"
  conds() { echo "jsonb_array_elements(coalesce($obj->'status'->'conditions', '[]'::jsonb)) c"; }
  cfield() { echo "(c.value->>'$1')"; }
  ofield() { echo "($obj$1)"; }
  is_true() { echo "(CASE WHEN $1 THEN 1 ELSE 0 END)"; }
  num() { echo "coalesce(($1)::bigint, 0)"; }
else
  obj="CAST(o.value AS TEXT)"
  conds() { echo "json_each($obj, '\$.status.conditions') c"; }
  cfield() { echo "json_extract(c.value, '\$.$1')"; }
  ofield() { local p=${1//->>/.}; p=${p//->/.}; p=${p//\'/}; echo "json_extract($obj, '\$$p')"; }
  is_true() { echo "($1)"; }
  num() { echo "coalesce($1, 0)"; }
fi
ready_cond="EXISTS (SELECT 1 FROM $(conds) WHERE $(cfield type) = 'Ready' AND $(cfield status) = 'True')"
# Ready nodes, from the object table.
ready_nodes() {
  sql "SELECT count(*) FROM keelson_objects o WHERE o.path LIKE '/registry/nodes/%' AND $ready_cond"
}
# pods | bound | Running and Ready, of the benchmark's Deployment.
pod_counts() {
  sql "SELECT count(*),
              coalesce(sum($(is_true "$(ofield "->'spec'->>'nodeName'") IS NOT NULL")), 0),
              coalesce(sum($(is_true "$(ofield "->'status'->>'phase'") = 'Running' AND $ready_cond")), 0)
       FROM keelson_objects o WHERE o.path LIKE '/registry/pods/default/hollow-%'"
}

# ------------------------------------------------------------------ server
datastore_args=()
if [ "$datastore" = postgres ]; then
  pg -d postgres -c "CREATE DATABASE $pgdb" >/dev/null || die "cannot create database $pgdb on 127.0.0.1:5432"
  datastore_args=(--datastore-endpoint "postgres://postgres@127.0.0.1:5432/$pgdb")
fi
log "starting a release server on $datastore"
"$bin" server --config "$tmp/none.yaml" --data-dir "$data" --bind-address 127.0.0.1 "${datastore_args[@]}" \
  --https-listen-port "$port" --write-kubeconfig "$tmp/kubeconfig.yaml" --node-name bench \
  --node-taint CriticalAddonsOnly=true:NoExecute --cluster-cidr 10.0.0.0/8 \
  ${SERVER_ARGS:-} >"$tmp/server.log" 2>&1 &
srv=$!
pids+=("$srv")
deadline=$((SECONDS + 60))
until [ "$(curl -sk --max-time 2 "https://127.0.0.1:$port/readyz" 2>/dev/null)" = ok ] && [ -s "$tmp/kubeconfig.yaml" ]; do
  kill -0 "$srv" 2>/dev/null || { cat "$tmp/server.log" >&2; die "the server exited"; }
  [ "$SECONDS" -lt "$deadline" ] || die "the server was not ready in 60 s"
  sleep 0.1
done
for kv in certificate-authority-data:ca client-certificate-data:cert client-key-data:key; do
  awk -v k="${kv%%:*}:" '$1 == k {print $2; exit}' "$tmp/kubeconfig.yaml" | base64 -d >"$tmp/${kv#*:}.pem"
done

# ------------------------------------------------------------------ hollow nodes
log "loadgen: $nodes hollow nodes (simulation; pod start delay $start_delay)"
t0=$(ms)
"$bin" loadgen --server "https://127.0.0.1:$port" --token "$(cat "$data/server/token")" \
  --agents "$nodes" --name-prefix hollow -d "$tmp/agents" --pod-start-delay "$start_delay" \
  >"$tmp/loadgen.log" 2>&1 &
lg=$!
pids+=("$lg")
until [ "$(ready_nodes)" -ge $((nodes + 1)) ]; do
  kill -0 "$lg" 2>/dev/null || { tail -n 20 "$tmp/loadgen.log" >&2; die "loadgen exited"; }
  [ $(($(ms) - t0)) -lt $((timeout * 1000)) ] || die "only $(ready_nodes) of $((nodes + 1)) nodes Ready after $timeout s"
  sleep 1
done
t_nodes=$(($(ms) - t0))
log "all $((nodes + 1)) nodes Ready after $(secs "$t_nodes")"
rss_nodes=$(kib "$srv" VmRSS)

# ------------------------------------------------------------------ the Deployment
cat >"$tmp/deploy.json" <<EOF
{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hollow", "namespace": "default"},
 "spec": {"replicas": $replicas, "selector": {"matchLabels": {"app": "hollow"}},
  "template": {"metadata": {"labels": {"app": "hollow"}},
   "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}
EOF
log "applying one Deployment of $replicas replicas"
t1=$(ms)
code=$(curl -s -o "$tmp/apply.out" -w '%{http_code}' --max-time 20 --cacert "$tmp/ca.pem" --cert "$tmp/cert.pem" --key "$tmp/key.pem" \
  -X POST -H 'Content-Type: application/json' --data-binary @"$tmp/deploy.json" \
  "https://127.0.0.1:$port/apis/apps/v1/namespaces/default/deployments")
[ "$code" = 201 ] || { cat "$tmp/apply.out" >&2; die "creating the Deployment answered $code"; }
t_bound= t_ready= counts="0|0|0"
while :; do
  kill -0 "$srv" 2>/dev/null || { tail -n 20 "$tmp/server.log" >&2; die "the server exited"; }
  counts=$(pod_counts)
  IFS='|' read -r total bound ready <<<"$counts"
  now=$(($(ms) - t1))
  if [ -z "$t_bound" ] && [ "$total" -ge "$replicas" ] && [ "$bound" -ge "$replicas" ]; then
    t_bound=$now; log "all $replicas pods bound after $(secs "$t_bound")"
  fi
  if [ "$total" -ge "$replicas" ] && [ "$ready" -ge "$replicas" ]; then
    t_ready=$now; log "all $replicas pods Running and Ready after $(secs "$t_ready")"; break
  fi
  [ "$now" -lt $((timeout * 1000)) ] || { log "timed out: pods, bound, ready = $counts"; break; }
  sleep 0.5
done

# ------------------------------------------------------------------ idle
log "idle ${settle} s, then a ${window} s window"
sleep "$settle"
rss=$(kib "$srv" VmRSS); hwm=$(kib "$srv" VmHWM)
l_rss=$(kib "$lg" VmRSS); l_hwm=$(kib "$lg" VmHWM)
heap_used=$(metric 'keelson_heap_bytes{state="in_use"}'); heap_free=$(metric 'keelson_heap_bytes{state="free"}')
st0=$(metric keelson_datastore_statements_total); c0=$(ticks "$srv"); w0=$(ms)
sleep "$window"
st1=$(metric keelson_datastore_statements_total); c1=$(ticks "$srv"); w1=$(ms)
el=$(awk -v a="$w0" -v b="$w1" 'BEGIN {print (b - a) / 1000}')
rate=$(awk -v a="$st0" -v b="$st1" -v s="$el" 'BEGIN {printf "%.2f", (b - a) / s}')
deploy=$(api /apis/apps/v1/namespaces/default/deployments/hollow | jq -r '"\(.status.readyReplicas // 0)/\(.spec.replicas) ready, \(.status.availableReplicas // 0) available"')

# ------------------------------------------------------------------ rolling update
# After the idle figures, so they are not disturbed: a new image in the template, rolled out
# with the Deployment's defaults (maxSurge 25 %, maxUnavailable 25 %) until every replica is
# the new template's, Ready and available, and the old ReplicaSet has no pods.
t_roll=
if [ "$rollout" = 1 ]; then
  log "rolling update: a new image in the template"
  t2=$(ms)
  code=$(curl -s -o "$tmp/patch.out" -w '%{http_code}' --max-time 20 --cacert "$tmp/ca.pem" --cert "$tmp/cert.pem" --key "$tmp/key.pem" \
    -X PATCH -H 'Content-Type: application/merge-patch+json' \
    --data-binary '{"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}' \
    "https://127.0.0.1:$port/apis/apps/v1/namespaces/default/deployments/hollow")
  [ "$code" = 200 ] || { cat "$tmp/patch.out" >&2; die "patching the Deployment answered $code"; }
  dfield() { ofield "->'status'->>'$1'"; }
  while :; do
    kill -0 "$srv" 2>/dev/null || { tail -n 20 "$tmp/server.log" >&2; die "the server exited"; }
    st=$(sql "SELECT $(num "$(dfield updatedReplicas)"), $(num "$(dfield availableReplicas)"), $(num "$(dfield replicas)"),
                     $(num "$(dfield observedGeneration)"), $(num "$(ofield "->'metadata'->>'generation'")")
              FROM keelson_objects o WHERE o.path = '/registry/deployments/default/hollow'")
    IFS='|' read -r updated available total observed generation <<<"$st"
    now=$(($(ms) - t2))
    if [ "$observed" -ge "$generation" ] && [ "$generation" -ge 2 ] && [ "$updated" -ge "$replicas" ] \
      && [ "$available" -ge "$replicas" ] && [ "$total" -eq "$replicas" ]; then
      t_roll=$now; log "rolled out after $(secs "$t_roll")"; break
    fi
    [ "$now" -lt $((timeout * 1000)) ] || { log "timed out: updated, available, replicas = $updated, $available, $total"; break; }
    sleep 0.5
  done
fi

# ------------------------------------------------------------------ report
warns=$(grep -cE ' (WARN|ERROR) ' "$tmp/server.log" || true)
lwarns=$(grep -cE ' (WARN|ERROR) ' "$tmp/loadgen.log" || true)
echo "hollow nodes (simulation): no containers run; loadgen's simulated nodes report pods Running and Ready $start_delay after binding"
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -m), $(date -u +%Y-%m-%d); binary $("$bin" --version | head -n1); $datastore"
echo
echo "| hollow nodes (simulation), $datastore | value |"
echo "|---|---|"
echo "| nodes, pods | $nodes hollow + 1 server (tainted), one Deployment of $replicas |"
echo "| loadgen start → all nodes Ready | $(secs "$t_nodes") (server RSS then $(mib "$rss_nodes")) |"
either() { if [ -n "$1" ]; then secs "$1"; else echo "not reached in $timeout s (pods, bound, Running+Ready: $counts)"; fi; }
echo "| apply → every pod bound | $(either "$t_bound") |"
echo "| apply → every pod Running and Ready | $(either "$t_ready") |"
echo "| Deployment after settling | $deploy |"
echo "| server RSS: peak (whole run) / idle after ${settle} s | $(mib "$hwm") / $(mib "$rss") |"
if [ -n "$heap_used" ]; then
  echo "| server heap at idle: in live allocations / freed but kept (malloc's own count) | $(mib $((heap_used / 1024))) / $(mib $((heap_free / 1024))) |"
fi
echo "| server CPU at idle (${window} s) | $(pct $((c1 - c0)) "$el") |"
echo "| datastore statements/s at idle | $rate |"
echo "| loadgen RSS (informative) | $(mib "$l_rss") (peak $(mib "$l_hwm")) |"
if [ "$rollout" = 1 ]; then
  echo "| rolling update (new image, maxSurge/maxUnavailable 25 %) → every replica updated and available, no old pod | $(if [ -n "$t_roll" ]; then secs "$t_roll"; else echo "not reached in $timeout s"; fi) |"
fi
echo "| WARN/ERROR lines: server, loadgen | $warns, $lwarns |"
