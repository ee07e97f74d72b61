#!/usr/bin/env bash
# Compares `keelson lb` with HAProxy (mode tcp, balance leastconn) in front of the same three
# backends on 127.0.0.1, in one run (not a timed test; the machine is shared and noisy):
#   - bulk throughput through each, MB/s (one stream each way, eight streams up)
#   - short request/response exchanges on open connections: requests/s, p50, p99
#   - a new connection per exchange: connections/s, p50, p99
#   - RSS (VmRSS): idle, peak during the traffic above, and with many idle connections open
# Each figure is the median of $ROUNDS rounds; the two balancers take turns within a round.
# Latencies include the load threads' own scheduling on the same cores: compare the ratios.
# Both get two threads and the same health checks (TCP connect, inter 2s rise 2 fall 3).
# The load tools and backends are one small std-only Rust program built here with rustc -O.
#
# Usage: benches/lb.sh [seconds-per-measurement]   (default 3; about two minutes in all)
#   KEELSON_BIN=path  use this keelson instead of building the release binary
#   ROUNDS=n          rounds per figure (default 3)   IDLE_CONNS=n  idle connections (default 1000)
# Needs haproxy (apt-get install -y haproxy), rustc and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
rounds=${ROUNDS:-3}
idle_conns=${IDLE_CONNS:-1000}

command -v haproxy >/dev/null || { echo "haproxy is missing: apt-get install -y haproxy" >&2; exit 1; }
bin=${KEELSON_BIN:-}
if [ -z "$bin" ]; then
  target=${CARGO_TARGET_DIR:-/tmp/lb-target}
  CARGO_TARGET_DIR=$target cargo build --release --quiet
  bin=$target/release/keelson
fi

tmp=$(mktemp -d)
# Everything this script starts runs as a background job of this shell; stop what still runs.
cleanup() {
  local running
  running=$(jobs -p)
  if [ -n "$running" ]; then
    kill $running 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# The idle-connections figure holds a few thousand sockets in this shell's children.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cat >"$tmp/tool.rs" <<'RUST'
// Backends and load for benches/lb.sh. A connection's first byte picks what the backend
// does: 'e' echo, 's' sink (read and discard), 'g' source (write zeros until closed).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const BULK: usize = 256 * 1024;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<usize>().unwrap_or_else(|_| usage());
    match arg(1).as_str() {
        "serve" => serve(&a[2..]),
        "wait" => wait(&arg(2)),
        "bulk" => bulk(&arg(2), arg(3).as_bytes()[0], num(4), num(5)),
        "pingpong" => latency(&arg(2), num(3), num(4), num(5), false),
        "connrate" => latency(&arg(2), num(3), num(4), num(5), true),
        "hold" => hold(&arg(2), num(3), num(4)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("tool serve PORT... | wait ADDR | bulk ADDR s|g STREAMS SECS | pingpong ADDR CONNS SECS SIZE | connrate ADDR THREADS SECS SIZE | hold ADDR N SECS");
    std::process::exit(2)
}

fn spawn<F: FnOnce() + Send + 'static>(f: F) -> thread::JoinHandle<()> {
    thread::Builder::new().stack_size(256 << 10).spawn(f).expect("thread")
}

fn serve(ports: &[String]) {
    for p in ports {
        let l = TcpListener::bind(("127.0.0.1", p.parse::<u16>().expect("port"))).expect("bind");
        spawn(move || {
            for s in l.incoming().flatten() {
                spawn(move || handle(s));
            }
        });
    }
    loop {
        thread::park();
    }
}

fn handle(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut mode = [0u8];
    if s.read_exact(&mut mode).is_err() {
        return; // a health check
    }
    let mut buf = vec![0u8; BULK];
    match mode[0] {
        b'e' => while let Ok(n @ 1..) = s.read(&mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        },
        b's' => while let Ok(1..) = s.read(&mut buf) {},
        b'g' => while s.write_all(&buf).is_ok() {},
        _ => {}
    }
}

fn echo_once(addr: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ex")?;
    let mut b = [0u8];
    s.read_exact(&mut b)?;
    Ok(s)
}

fn wait(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while echo_once(addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("{addr} does not echo");
            std::process::exit(1);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// MB/s through `addr`: `streams` connections sending ('s') or receiving ('g') for `secs`.
fn bulk(addr: &str, mode: u8, streams: usize, secs: usize) {
    let start = Arc::new(Barrier::new(streams));
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (addr, start) = (addr.to_owned(), start.clone());
            thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.write_all(&[mode]).expect("mode");
                let mut buf = vec![1u8; BULK];
                start.wait();
                let end = Instant::now() + Duration::from_secs(secs as u64);
                let mut moved = 0u64;
                while Instant::now() < end {
                    moved += if mode == b's' {
                        s.write_all(&buf).map(|_| BULK).expect("write") as u64
                    } else {
                        s.read(&mut buf).expect("read") as u64
                    };
                }
                moved
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    println!("{:.0}", total as f64 / secs as f64 / 1e6);
}

/// Requests/s, p50 and p99 in µs: `conns` clients trading `size`-byte messages for `secs`,
/// on one connection each, or (`fresh`) on a new connection per exchange.
fn latency(addr: &str, conns: usize, secs: usize, size: usize, fresh: bool) {
    let start = Arc::new(Barrier::new(conns));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, start) = (addr.to_owned(), start.clone());
            thread::spawn(move || {
                let mut msg = vec![7u8; size + 1];
                msg[0] = b'e';
                let mut back = vec![0u8; size];
                let mut lat = Vec::with_capacity(1 << 16);
                let open = |addr: &str| {
                    let s = TcpStream::connect(addr).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    s
                };
                let mut s = if fresh { None } else { Some(open(&addr)) };
                let mut first = true;
                start.wait();
                let end = Instant::now() + Duration::from_secs(secs as u64);
                while Instant::now() < end {
                    let t = Instant::now();
                    let (conn, bytes) = match s.as_mut() {
                        Some(c) if !first => (c, &msg[1..]),
                        Some(c) => (c, &msg[..]),
                        None => (s.insert(open(&addr)), &msg[..]),
                    };
                    conn.write_all(bytes).expect("write");
                    conn.read_exact(&mut back).expect("read");
                    lat.push(t.elapsed().as_nanos() as u64);
                    first = false;
                    if fresh {
                        s = None;
                        first = true;
                    }
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    all.sort_unstable();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)] as f64 / 1e3;
    println!("{:.0} {:.1} {:.1}", all.len() as f64 / secs as f64, pct(50), pct(99));
}

/// Opens `n` connections (one echo each), says "ready", holds them for `secs`.
fn hold(addr: &str, n: usize, secs: usize) {
    let held: Vec<TcpStream> = (0..n).map(|_| echo_once(addr).expect("hold")).collect();
    println!("ready");
    thread::sleep(Duration::from_secs(secs as u64));
    drop(held);
}
RUST
rustc -O --edition 2021 -o "$tmp/tool" "$tmp/tool.rs"
tool=$tmp/tool

ports=($(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
b1=${ports[0]} b2=${ports[1]} b3=${ports[2]} hport=${ports[3]} kport=${ports[4]}

"$tool" serve "$b1" "$b2" "$b3" &

cat >"$tmp/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend lb
  bind 127.0.0.1:$hport
  default_backend servers
backend servers
  balance leastconn
  server s1 127.0.0.1:$b1 check inter 2s rise 2 fall 3
  server s2 127.0.0.1:$b2 check inter 2s rise 2 fall 3
  server s3 127.0.0.1:$b3 check inter 2s rise 2 fall 3
EOF
haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
hpid=$!
# keelson's `lb` runs two worker threads; HAProxy gets nbthread 2 above.
"$bin" lb --listen "127.0.0.1:$kport" --backend "127.0.0.1:$b1" --backend "127.0.0.1:$b2" \
  --backend "127.0.0.1:$b3" >"$tmp/keelson.log" 2>&1 &
kpid=$!

"$tool" wait "127.0.0.1:$hport" || { cat "$tmp/haproxy.log"; exit 1; }
"$tool" wait "127.0.0.1:$kport" || { cat "$tmp/keelson.log"; exit 1; }
sleep 2

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Keeps the largest VmRSS (KiB) of pid $1 in file $2 until the pid or this sampler ends.
peak() {
  local max=0 k v _
  while [ -e "/proc/$1" ]; do
    while read -r k v _; do
      if [ "$k" = VmRSS: ] && [ "$v" -gt "$max" ]; then max=$v; echo "$max" >"$2"; fi
    done <"/proc/$1/status" || true
    sleep 0.2
  done
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

declare -A addr=([haproxy]="127.0.0.1:$hport" [keelson]="127.0.0.1:$kport")
declare -A pid=([haproxy]=$hpid [keelson]=$kpid)
declare -A res
for lb in haproxy keelson; do res[$lb.rss_idle]=$(rss "${pid[$lb]}"); done

# Each phase: a name, then the tool's command; the balancer's address goes after the command.
phases=(
  "up1 bulk s 1 $secs"
  "down1 bulk g 1 $secs"
  "up8 bulk s 8 $secs"
  "rr pingpong 32 $secs 64"
  "conn connrate 8 $secs 64"
)
samplers=()
for lb in haproxy keelson; do
  peak "${pid[$lb]}" "$tmp/peak.$lb" &
  samplers+=($!)
done
for round in $(seq "$rounds"); do
  for phase in "${phases[@]}"; do
    read -r -a p <<<"$phase"
    for lb in haproxy keelson; do
      read -r -a out <<<"$("$tool" "${p[1]}" "${addr[$lb]}" "${p[@]:2}")"
      for i in "${!out[@]}"; do res[$lb.${p[0]}.$i]+="${out[$i]} "; done
    done
  done
  echo "round $round of $rounds done" >&2
done
kill "${samplers[@]}" 2>/dev/null || true
for lb in haproxy keelson; do res[$lb.rss_peak]=$(cat "$tmp/peak.$lb"); done

# Idle connections: what each open-but-quiet client costs (agent tunnels sit like this).
for lb in haproxy keelson; do
  "$tool" hold "${addr[$lb]}" "$idle_conns" 60 >"$tmp/hold.$lb" &
  hold=$!
  until grep -q ready "$tmp/hold.$lb"; do
    kill -0 "$hold" 2>/dev/null || { echo "holding $idle_conns connections through $lb failed" >&2; exit 1; }
    sleep 0.1
  done
  sleep 1
  res[$lb.rss_held]=$(rss "${pid[$lb]}")
  kill "$hold"
  wait "$hold" 2>/dev/null || true
done

fig() { median ${res[$1]}; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
row() { # label, haproxy value, keelson value, what a better keelson figure is: higher|lower|-
  local ratio
  ratio=$(awk -v h="$2" -v k="$3" 'BEGIN {if (h > 0) printf "%.2fx", k / h; else print "-"}')
  case $4 in higher) ratio="$ratio (higher is better)" ;; lower) ratio="$ratio (lower is better)" ;; esac
  echo "| $1 | $2 | $3 | $ratio |"
}
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(date -u +%Y-%m-%d); ${secs} s per figure, median of $rounds rounds"
echo "haproxy: $(haproxy -v | awk 'NR == 1 {print $3}') (nbthread 2, mode tcp, balance leastconn); keelson: $bin (2 worker threads)"
echo
echo "| figure | HAProxy | keelson lb | keelson / HAProxy |"
echo "|---|---|---|---|"
row "upload, 1 stream (MB/s)" "$(fig haproxy.up1.0)" "$(fig keelson.up1.0)" higher
row "download, 1 stream (MB/s)" "$(fig haproxy.down1.0)" "$(fig keelson.down1.0)" higher
row "upload, 8 streams (MB/s)" "$(fig haproxy.up8.0)" "$(fig keelson.up8.0)" higher
row "64 B request/response, 32 open connections (req/s)" "$(fig haproxy.rr.0)" "$(fig keelson.rr.0)" higher
row "… p50 latency (µs)" "$(fig haproxy.rr.1)" "$(fig keelson.rr.1)" lower
row "… p99 latency (µs)" "$(fig haproxy.rr.2)" "$(fig keelson.rr.2)" lower
row "new connection per 64 B exchange, 8 clients (conn/s)" "$(fig haproxy.conn.0)" "$(fig keelson.conn.0)" higher
row "… p50 latency (µs)" "$(fig haproxy.conn.1)" "$(fig keelson.conn.1)" lower
row "… p99 latency (µs)" "$(fig haproxy.conn.2)" "$(fig keelson.conn.2)" lower
row "RSS idle (MiB)" "$(mib "${res[haproxy.rss_idle]}")" "$(mib "${res[keelson.rss_idle]}")" lower
row "RSS peak during the traffic above (MiB)" "$(mib "${res[haproxy.rss_peak]}")" "$(mib "${res[keelson.rss_peak]}")" lower
row "RSS with $idle_conns idle connections open (MiB)" "$(mib "${res[haproxy.rss_held]}")" "$(mib "${res[keelson.rss_held]}")" lower
