#!/usr/bin/env bash
# The realtime benchmark of README.md ("The realtime hot path"), one
# deployment at a time: starts the deployment on loopback ports, runs
# `switchboard-bench realtime` against it with every process's pid (so the
# server CPU counts them all, nats-server included), and stops it.
#
#   tests/bench/realtime.sh DEPLOYMENT [switchboard-bench realtime options]
#
# DEPLOYMENT:
#   embedded            switchboard all
#   all-nats            nats-server -js & switchboard all --nats-url …
#   per-role            nats-server -js & switchboard session, detection,
#                       statistics and edge as four processes
#   per-role-unbatched  per-role with --detection-streams 0 (one detection
#                       stream per session, the path before batching)
#   two-edges           nats-server -js & two `switchboard all` (the bench
#                       spreads sessions over both edges)
#
# Options after DEPLOYMENT go to the bench (default: --sessions 50
# --duration-secs 10). SWITCHBOARD_BIN picks another build's binaries
# (default: target/release), to measure a "before" build the same way.
#
# The per-role deployments run each role with ROLE_WORKER_THREADS tokio
# worker threads (default 1: five processes and the bench share this
# machine's cores, as pods limited to 1 CPU would get by default);
# ROLE_WORKER_THREADS=2 measures them with one thread per core instead.
# `all` keeps its default (one per core). Their edge keeps
# DETECTION_STREAMS lanes (default 1) to the one detection replica.
# Ports 18400-18409 and 14400 on 127.0.0.1 must be free.
set -euo pipefail

deployment=${1:?"usage: $0 embedded|all-nats|per-role|per-role-unbatched|two-edges [bench options]"}
shift
bench_options=("$@")
if [ ${#bench_options[@]} -eq 0 ]; then
  bench_options=(--sessions 50 --duration-secs 10)
fi
bin=${SWITCHBOARD_BIN:-target/release}
[ -x "$bin/switchboard" ] || { echo "no $bin/switchboard: cargo build --release first" >&2; exit 1; }
bench=${SWITCHBOARD_BENCH:-target/release/switchboard-bench}

state=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

host=127.0.0.1
start() { # name, command...
  local name=$1; shift
  "$@" >"$state/$name.log" 2>&1 &
  pids+=($!)
}
wait_http() { # url
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not ready: $1" >&2; exit 1
}
wait_port() { # port
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not listening: $1" >&2; exit 1
}
nats() {
  start nats nats-server -a $host -p 14400 -js -sd "$state/jetstream"
  wait_port 14400
}

edges=()
case $deployment in
  embedded)
    start all "$bin/switchboard" all --http-addr $host:18400
    edges=(ws://$host:18400)
    ;;
  all-nats)
    nats
    start all "$bin/switchboard" all --http-addr $host:18400 --nats-url nats://$host:14400
    edges=(ws://$host:18400)
    ;;
  two-edges)
    nats
    start all-a "$bin/switchboard" all --http-addr $host:18400 --nats-url nats://$host:14400
    start all-b "$bin/switchboard" all --http-addr $host:18401 --nats-url nats://$host:14400
    edges=(ws://$host:18400 ws://$host:18401)
    ;;
  per-role | per-role-unbatched)
    nats
    # Only the roles' (the bench's own bare server keeps its default);
    # TOKIO_WORKER_THREADS as well, for builds before --worker-threads.
    threads=${ROLE_WORKER_THREADS:-1}
    # One detection replica here: one lane to it (DETECTION_STREAMS; the
    # default of 2 is for spreading over replicas behind one URL, and to
    # one replica it only halves the batches). As variables, which builds
    # without the options ignore.
    lanes=${DETECTION_STREAMS:-1}
    [ "$deployment" = per-role-unbatched ] && lanes=0
    role=(env SWITCHBOARD_WORKER_THREADS="$threads" TOKIO_WORKER_THREADS="$threads"
      SWITCHBOARD_DETECTION_STREAMS="$lanes" "$bin/switchboard")
    start session "${role[@]}" session --grpc-addr $host:18402 --nats-url nats://$host:14400
    start detection "${role[@]}" detection --grpc-addr $host:18403
    wait_port 18402
    start statistics "${role[@]}" statistics --grpc-addr $host:18404 \
      --nats-url nats://$host:14400 --session-url http://$host:18402
    wait_port 18403; wait_port 18404
    start edge "${role[@]}" edge --http-addr $host:18400 --nats-url nats://$host:14400 \
      --session-url http://$host:18402 --detection-url http://$host:18403 \
      --statistics-url http://$host:18404
    edges=(ws://$host:18400)
    ;;
  *)
    echo "unknown deployment: $deployment" >&2; exit 2 ;;
esac
for edge in "${edges[@]}"; do wait_http "${edge/ws:/http:}/ready"; done

arguments=()
for edge in "${edges[@]}"; do arguments+=(--edge "$edge"); done
for pid in "${pids[@]}"; do arguments+=(--edge-pid "$pid"); done
echo "# $deployment: $bin/switchboard, pids ${pids[*]}"
"$bench" realtime "${arguments[@]}" "${bench_options[@]}"
