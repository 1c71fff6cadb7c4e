#!/usr/bin/env bash
# Build deploy/Dockerfile with podman and smoke-test the image, on a machine
# that has podman but cannot pull the real base images.
#
#   sudo deploy/check-image.sh            # stand-ins (once), build, run checks
#   sudo deploy/check-image.sh standins   # only make the stand-in base images
#   sudo deploy/check-image.sh build      # only podman build
#   sudo deploy/check-image.sh run        # only the checks on an existing image
#   sudo deploy/check-image.sh compose    # optional: docker-compose.yml under
#                                         # podman-compose (see "compose" below)
#
# STAND-INS, NOT THE REAL BASE IMAGES. Unless they already exist locally, it
# makes and tags, under the exact names deploy/Dockerfile uses:
#   gcr.io/distroless/cc-debian12:nonroot   <- debootstrap --variant=minbase
#       bookworm (glibc, libgcc, CA certificates, tzdata, netbase), user and
#       group nonroot 65532, shells and apt/dpkg removed, USER 65532
#   docker.io/library/rust:1.95-bookworm    <- debootstrap minbase bookworm +
#       gcc, libc6-dev, make, pkg-config, git, ca-certificates, curl, and THIS
#       machine's Rust 1.95 toolchain (rustup layout under /usr/local/rustup,
#       /usr/local/cargo; RUSTUP_HOME, CARGO_HOME, PATH as the official image)
#       and this machine's extra CA certificates (EXTRA_CA_DIR, default
#       /usr/local/share/ca-certificates), without which cargo cannot reach
#       crates.io through a TLS-intercepting proxy
# Both carry the label switchboard.standin (inherited by the built image), so
# an image built on them is recognisable. FORCE_STANDINS=1 remakes them.
# Where the real images can be pulled, run with SKIP_STANDINS=1 instead.
#
# The checks (`run`): the image's User is 65532 and the running process's
# uid on the host is 65532; GET /health on a free loopback port; `switchboard
# probe http` inside the container (as compose's health check); a WebSocket
# on /ws/realtime answers a sample with step_detection; `podman stop`
# (SIGTERM) while a socket is open: the socket is closed with 1012, the
# container exits 0 within the drain deadline, and its log says `draining`
# then `drained` (it waited for its sockets) and not `drain deadline passed`.
#
# Needs root (podman rootful, debootstrap), podman, curl, python3, and for
# the stand-ins debootstrap and a Debian mirror (DEBIAN_MIRROR). Every host
# port is picked free at run time and bound to 127.0.0.1. Containers it
# starts are removed on exit.
#
# Environment: IMAGE (switchboard:dev), DRAIN_SECS (25), STANDIN_DIR
# (/var/tmp/switchboard-standins), DEBIAN_MIRROR (http://deb.debian.org/debian),
# RUST_SYSROOT (from `rustup run 1.95.0 rustc --print sysroot`),
# EXTRA_CA_DIR, PODMAN_OPTS (--runtime runc), PODMAN_ULIMITS (nofile and
# nproc at 1024: crun/runc fail under the default rlimits on the machine this
# was written on), BUILD_LOG (/tmp/switchboard-check-image-build.log),
# PODMAN_COMPOSE (default: podman-compose 1.6.0 in $STANDIN_DIR/venv, which
# also holds the `websockets` library deploy/ws_check.py uses),
# REPO_ROOT (the repository; default: this script's parent folder).
set -euo pipefail
cd "${REPO_ROOT:-$(dirname "$0")/..}"
ROOT=$PWD

IMAGE=${IMAGE:-switchboard:dev}
DRAIN_SECS=${DRAIN_SECS:-25}
STANDIN_DIR=${STANDIN_DIR:-/var/tmp/switchboard-standins}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
BUILDER_BASE=docker.io/library/rust:1.95-bookworm
RUST_TOOLCHAIN=1.95.0-x86_64-unknown-linux-gnu
BUILD_LOG=${BUILD_LOG:-${TMPDIR:-/tmp}/switchboard-check-image-build.log}
read -r -a PODMAN_OPTS <<<"${PODMAN_OPTS:---runtime runc}"
read -r -a ULIMITS <<<"${PODMAN_ULIMITS:---ulimit nofile=1024:1024 --ulimit nproc=1024:1024}"
STANDIN_LABEL='switchboard.standin="local stand-in made by deploy/check-image.sh, not the upstream image"'
STAMP=$(date +%s)-$$
CONTAINERS=()
TMP=$(mktemp -d /tmp/check-image.XXXXXX)

pm() { podman "${PODMAN_OPTS[@]}" "$@"; }
log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

COMPOSE_UP=0
cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do pm rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  if ((COMPOSE_UP)); then compose down -v -t 5 >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Polls CMD... every second until it succeeds or SECONDS_ elapse.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 1
  done
}

### stand-ins ###############################################################

debootstrap_into() { # DIR PACKAGES
  local dir=$1 include=$2
  if [[ ! -e $dir/.complete ]]; then
    rm -rf "$dir"
    log "debootstrap bookworm into $dir (+ $include)"
    debootstrap --variant=minbase --include="$include" bookworm "$dir" "$DEBIAN_MIRROR" \
      >"$dir.debootstrap.log" 2>&1 || { tail -20 "$dir.debootstrap.log" >&2; fail "debootstrap $dir"; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    touch "$dir/.complete"
  fi
}

make_runtime_standin() {
  local dir=$STANDIN_DIR/runtime
  debootstrap_into "$dir" ca-certificates,netbase,tzdata
  # As distroless: root, nobody and nonroot (65532); no shell, no package manager.
  grep -q '^nonroot:' "$dir/etc/passwd" \
    || echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >>"$dir/etc/passwd"
  grep -q '^nonroot:' "$dir/etc/group" || echo 'nonroot:x:65532:' >>"$dir/etc/group"
  mkdir -p "$dir/home/nonroot" && chown 65532:65532 "$dir/home/nonroot"
  rm -f "$dir"/usr/bin/{sh,bash,dash,rbash} "$dir"/usr/bin/{apt,apt-get,apt-cache,apt-config,apt-mark,apt-key} \
    "$dir"/usr/bin/dpkg "$dir"/usr/bin/dpkg-*
  rm -rf "$dir"/usr/share/{doc,man,info,locale} "$dir"/var/lib/dpkg "$dir"/var/cache/*
  log "podman import -> $RUNTIME_BASE (stand-in)"
  tar -C "$dir" --exclude=./.complete -cf - . | pm import --quiet \
    --change 'USER 65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL $STANDIN_LABEL" \
    - "$RUNTIME_BASE" >/dev/null
}

make_builder_standin() {
  local dir=$STANDIN_DIR/builder sysroot
  sysroot=${RUST_SYSROOT:-$(rustup run 1.95.0 rustc --print sysroot)}
  sysroot=$(realpath "$sysroot")
  "$sysroot/bin/rustc" --version | grep -q '^rustc 1\.95\.' || fail "$sysroot is not Rust 1.95"
  debootstrap_into "$dir" gcc,libc6-dev,make,pkg-config,git,ca-certificates,curl,xz-utils
  # CA certificates this machine adds locally (e.g. the egress proxy's):
  # cargo inside the build reaches crates.io only if it trusts them.
  local ca_dir=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
  if compgen -G "$ca_dir/*.crt" >/dev/null; then
    log "builder trusts this machine's extra CA certificates: $(cd "$ca_dir" && echo *.crt)"
    mkdir -p "$dir/usr/local/share/ca-certificates"
    cp "$ca_dir"/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null
  fi
  # The official image's layout: rustup and its proxies in $CARGO_HOME/bin,
  # the toolchain under $RUSTUP_HOME, that toolchain the default.
  local tc=$dir/usr/local/rustup/toolchains/$RUST_TOOLCHAIN
  rm -rf "$dir/usr/local/rustup" "$dir/usr/local/cargo"
  mkdir -p "$tc" "$dir/usr/local/cargo/bin"
  log "copying the Rust toolchain from $sysroot (without docs)"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$tc" -xf -
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$RUST_TOOLCHAIN" >"$dir/usr/local/rustup/settings.toml"
  install -m 0755 "$(command -v rustup)" "$dir/usr/local/cargo/bin/rustup"
  local p
  for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-lldb; do
    ln -sf rustup "$dir/usr/local/cargo/bin/$p"
  done
  log "podman import -> $BUILDER_BASE (stand-in)"
  tar -C "$dir" --exclude=./.complete -cf - . | pm import --quiet \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUST_VERSION=1.95.0' \
    --change "LABEL $STANDIN_LABEL" \
    --change 'CMD ["bash"]' \
    - "$BUILDER_BASE" >/dev/null
}

standins() {
  [[ ${SKIP_STANDINS:-0} == 1 ]] && { log "SKIP_STANDINS=1: using whatever $RUNTIME_BASE and $BUILDER_BASE are"; return; }
  [[ $(id -u) == 0 ]] || fail "run as root (debootstrap, rootful podman)"
  mkdir -p "$STANDIN_DIR"
  if [[ ${FORCE_STANDINS:-0} == 1 ]] || ! pm image exists "$RUNTIME_BASE"; then make_runtime_standin; fi
  if [[ ${FORCE_STANDINS:-0} == 1 ]] || ! pm image exists "$BUILDER_BASE"; then make_builder_standin; fi
  pm run --rm "${ULIMITS[@]}" "$BUILDER_BASE" sh -c 'cargo --version && rustc --version && cc --version | head -1' \
    || fail "the builder stand-in cannot run cargo"
  pm image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'distroless|library/rust' >&2
}

### build ###################################################################

build() {
  mkdir -p "$(dirname "$BUILD_LOG")"
  log "podman build -f deploy/Dockerfile -t $IMAGE . (log: $BUILD_LOG)"
  local start=$SECONDS
  # --network host: cargo fetches crates during the build. --pull=never: the
  # bases must be the local ones (stand-ins or pulled beforehand).
  if ! pm build --network host --pull=never "${ULIMITS[@]}" -f deploy/Dockerfile -t "$IMAGE" . >"$BUILD_LOG" 2>&1; then
    tail -40 "$BUILD_LOG" >&2
    fail "podman build (see $BUILD_LOG)"
  fi
  log "built $IMAGE in $((SECONDS - start)) s"
  pm image ls --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE" >&2
}

### run checks ##############################################################

# The script's Python tools, pinned, in $STANDIN_DIR/venv: the WebSocket
# client library of deploy/ws_check.py and podman-compose.
TOOLS_PY=$STANDIN_DIR/venv/bin/python
tools() {
  if ! "$TOOLS_PY" -c 'import websockets, podman_compose' 2>/dev/null; then
    log "installing websockets and podman-compose into $STANDIN_DIR/venv"
    python3 -m venv "$STANDIN_DIR/venv"
    "$STANDIN_DIR/venv/bin/pip" install -q 'websockets==15.0.1' 'podman-compose==1.6.0'
  fi
}

run_checks() {
  tools
  pm image exists "$IMAGE" || fail "no image $IMAGE (run: $0 build)"
  local user entry cmd
  user=$(pm image inspect --format '{{.Config.User}}' "$IMAGE")
  entry=$(pm image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")
  cmd=$(pm image inspect --format '{{json .Config.Cmd}}' "$IMAGE")
  log "image: User=$user Entrypoint=$entry Cmd=$cmd"
  [[ $user == 65532:65532 ]] || fail "image User is '$user', expected 65532:65532"
  [[ $entry == '["switchboard"]' && $cmd == '["all"]' ]] || fail "unexpected Entrypoint/Cmd"
  if pm image inspect --format '{{index .Config.Labels "switchboard.standin"}}' "$IMAGE" | grep -q stand-in; then
    log "NOTE: $IMAGE is built on a stand-in base image (label switchboard.standin)"
  fi

  local port ctr="sb-check-$STAMP"
  port=$(free_port)
  log "podman run $IMAGE (default CMD) on 127.0.0.1:$port"
  CONTAINERS+=("$ctr")
  pm run -d --name "$ctr" "${ULIMITS[@]}" -p "127.0.0.1:$port:8000" \
    -e SWITCHBOARD_DRAIN_TIMEOUT_SECS="$DRAIN_SECS" "$IMAGE" >/dev/null
  if ! wait_for 60 curl -fsS "http://127.0.0.1:$port/health"; then
    pm logs "$ctr" >&2 || true
    fail "GET /health did not answer within 60 s"
  fi
  log "GET /health: $(curl -fsS "http://127.0.0.1:$port/health")"

  local pid uid
  pid=$(pm inspect --format '{{.State.Pid}}' "$ctr")
  uid=$(ps -o uid= -p "$pid" | tr -d ' ')
  log "container process $pid runs as uid $uid on the host"
  [[ $uid == 65532 ]] || fail "process uid $uid, expected 65532"
  if pm exec "$ctr" sh -c true >/dev/null 2>&1; then
    log "NOTE: the image has a shell (distroless has none)"
  else
    log "no shell in the image (as distroless)"
  fi

  pm exec "$ctr" switchboard probe http http://127.0.0.1:8000/ready || fail "probe http /ready"
  pm exec "$ctr" switchboard probe http http://127.0.0.1:8000/health || fail "probe http /health"
  log "switchboard probe http .../ready and .../health inside the container: exit 0"

  "$TOOLS_PY" "$ROOT/deploy/ws_check.py" realtime "ws://127.0.0.1:$port/ws/realtime" >"$TMP/ws.out" \
    || fail "WebSocket /ws/realtime"
  log "WebSocket /ws/realtime:"; cat "$TMP/ws.out" >&2

  # A socket held open across SIGTERM must be told to reconnect (1012).
  "$TOOLS_PY" "$ROOT/deploy/ws_check.py" hold "ws://127.0.0.1:$port/ws/realtime" "$TMP/ready" \
    $((DRAIN_SECS + 20)) >"$TMP/hold.out" 2>&1 &
  local holder=$!
  wait_for 15 test -s "$TMP/ready" || fail "the held WebSocket did not open"

  log "podman stop (SIGTERM, grace $((DRAIN_SECS + 10)) s)"
  local start_ms took_ms code
  start_ms=$(date +%s%3N)
  pm stop -t $((DRAIN_SECS + 10)) "$ctr" >/dev/null
  took_ms=$(($(date +%s%3N) - start_ms))
  code=$(pm inspect --format '{{.State.ExitCode}}' "$ctr")
  wait "$holder" || true
  log "stopped in ${took_ms} ms, exit code $code; held socket: $(cat "$TMP/hold.out")"
  pm logs "$ctr" >"$TMP/ctr.log" 2>&1 || true
  grep -i -E 'drain|shut|stop' "$TMP/ctr.log" | tail -8 >&2 || true
  [[ $code == 0 ]] || { tail -30 "$TMP/ctr.log" >&2; fail "exit code $code after SIGTERM"; }
  ((took_ms <= (DRAIN_SECS + 5) * 1000)) || fail "took ${took_ms} ms to stop (drain deadline ${DRAIN_SECS} s)"
  grep -q '^close 1012' "$TMP/hold.out" || fail "held socket was not closed with 1012"
  grep -q 'draining' "$TMP/ctr.log" || fail "the log does not mention the drain"
  grep -q '"drained"\|drained$' "$TMP/ctr.log" || fail "the edge exited without waiting for its sockets (no 'drained')"
  if grep -q 'drain deadline passed' "$TMP/ctr.log"; then fail "the drain deadline passed"; fi
  log "OK: $IMAGE passed the checks"
}

### compose (optional) #######################################################
# docker-compose.yml, unchanged but for its host ports (free ones instead of
# the fixed 8000/8001/5005x/909x, through an override file), under podman-compose
# from PyPI, with a STAND-IN for nats:2.11-alpine: Debian's nats-server (this
# machine's, 2.9) and busybox wget (for the file's health check) on the
# distroless stand-in. podman < 4.6 cannot wait for `service_healthy`
# (podman-compose warns and starts everything at once) and, without systemd,
# runs no health-check timers: the health checks the file defines are run
# here by hand (`podman healthcheck run`) until they pass.

NATS_BASE=docker.io/library/nats:2.11-alpine
PROJECT=switchboard-check-$STAMP

make_nats_standin() {
  local ctx=$STANDIN_DIR/nats
  mkdir -p "$ctx"
  cp "$(command -v nats-server)" "$ctx/nats-server"
  cp "$(command -v busybox)" "$ctx/busybox"
  cat >"$ctx/Containerfile" <<'CONTAINERFILE'
FROM gcr.io/distroless/cc-debian12:nonroot
COPY nats-server /usr/local/bin/nats-server
COPY busybox /bin/busybox
COPY busybox /usr/local/bin/wget
USER 0:0
EXPOSE 4222 6222 8222
CMD ["nats-server"]
CONTAINERFILE
  log "podman build -> $NATS_BASE (stand-in: $(nats-server --version), busybox wget)"
  pm build -q --pull=never "${ULIMITS[@]}" \
    --label 'switchboard.standin=local stand-in for nats:2.11-alpine (Debian nats-server, busybox wget)' \
    -t "$NATS_BASE" "$ctx" >/dev/null
}

# podman-compose with this project's files, bounded in time.
compose() {
  timeout 300 "$PODMAN_COMPOSE" --podman-args="${PODMAN_OPTS[*]}" -p "$PROJECT" \
    -f docker-compose.yml -f "$TMP/ports.yml" "$@"
}

# The container of compose service $1.
ctr_of() {
  pm ps -a --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}

compose_checks() {
  pm image exists "$IMAGE" || fail "no image $IMAGE (run: $0 build)"
  if [[ ${SKIP_STANDINS:-0} != 1 ]] && ! pm image exists "$NATS_BASE"; then make_nats_standin; fi
  tools
  PODMAN_COMPOSE=${PODMAN_COMPOSE:-$STANDIN_DIR/venv/bin/podman-compose}
  log "$("$PODMAN_COMPOSE" --version 2>/dev/null | head -1)"
  cat >"$TMP/ports.yml" <<'YAML'
services:
  session: {ports: !override ["127.0.0.1::50051", "127.0.0.1::9090"]}
  detection: {ports: !override ["127.0.0.1::50052", "127.0.0.1::9090"]}
  statistics: {ports: !override ["127.0.0.1::50053", "127.0.0.1::9090"]}
  edge-1: {ports: !override ["127.0.0.1::8000"]}
  edge-2: {ports: !override ["127.0.0.1::8000"]}
YAML
  log "podman-compose up -d (project $PROJECT)"
  COMPOSE_UP=1
  compose up -d >"$TMP/up.log" 2>&1 || { tail -30 "$TMP/up.log" >&2; fail "podman-compose up"; }
  grep -E 'WARNING' "$TMP/up.log" | sort -u | sed 's/^/   /' >&2 || true

  local svc c
  for svc in nats session detection statistics edge-1 edge-2; do
    c=$(ctr_of "$svc")
    [[ -n $c ]] || fail "no container for $svc"
    wait_for 90 pm healthcheck run "$c" || { pm logs "$c" 2>&1 | tail -20 >&2; fail "$svc never healthy"; }
    log "$svc ($c): health check passes"
  done

  local p1 p2
  p1=$(pm port "$(ctr_of edge-1)" 8000/tcp | head -1 | sed 's/.*://')
  p2=$(pm port "$(ctr_of edge-2)" 8000/tcp | head -1 | sed 's/.*://')
  log "edge-1 on 127.0.0.1:$p1, edge-2 on 127.0.0.1:$p2"
  [[ $(curl -fsS "http://127.0.0.1:$p1/health") == *'"mode":"cluster"'* ]] || fail "edge-1 /health is not cluster mode"
  [[ $(curl -fsS "http://127.0.0.1:$p2/health") == *'"mode":"cluster"'* ]] || fail "edge-2 /health is not cluster mode"
  local mport
  for svc in session detection statistics; do
    mport=$(pm port "$(ctr_of "$svc")" 9090/tcp | head -1 | sed "s/.*://") || true
    [[ -n $mport ]] || continue  # an older docker-compose.yml without metrics ports
    [[ $(curl -fsS "http://127.0.0.1:$mport/metrics") == *switchboard_* ]] \
      || fail "$svc: no switchboard_ metrics on its published metrics port"
    log "$svc metrics (container 9090) on 127.0.0.1:$mport: Prometheus text"
  done

  # A session on edge-1, seen from edge-2.
  "$TOOLS_PY" "$ROOT/deploy/ws_check.py" hold "ws://127.0.0.1:$p1/ws/realtime" "$TMP/ready1" \
    $((DRAIN_SECS + 30)) >"$TMP/hold1.out" 2>&1 &
  local holder=$!
  wait_for 15 test -s "$TMP/ready1" || fail "WebSocket on edge-1 did not open"
  local sid; sid=$(cat "$TMP/ready1")
  "$TOOLS_PY" "$ROOT/deploy/ws_check.py" realtime "ws://127.0.0.1:$p2/ws/realtime" >/dev/null \
    || fail "WebSocket on edge-2"
  local stats; stats=$("$TOOLS_PY" "$ROOT/deploy/ws_check.py" stats "ws://127.0.0.1:$p2/ws/realtime")
  log "stats asked on edge-2: $stats"
  [[ $(curl -fsS "http://127.0.0.1:$p2/sessions") == *"$sid"* ]] \
    || fail "edge-2's GET /sessions does not list edge-1's session $sid"
  log "edge-2's GET /sessions lists the session held on edge-1 ($sid)"

  # Stop as Docker Compose would: the edges first (their dependencies after).
  local start_ms took_ms
  start_ms=$(date +%s%3N)
  compose stop edge-1 edge-2 >/dev/null 2>&1 || fail "podman-compose stop edge-1 edge-2"
  took_ms=$(($(date +%s%3N) - start_ms))
  wait "$holder" || true
  log "edges stopped in ${took_ms} ms; socket held on edge-1: $(cat "$TMP/hold1.out")"
  grep -q '^close 1012' "$TMP/hold1.out" || fail "edge-1's socket was not closed with 1012"
  compose stop >/dev/null 2>&1 || fail "podman-compose stop"
  local code bad=0
  for svc in edge-1 edge-2 statistics session detection nats; do
    c=$(ctr_of "$svc")
    code=$(pm inspect --format '{{.State.ExitCode}}' "$c")
    log "$svc exit code $code, restarts $(pm inspect --format '{{.RestartCount}}' "$c"); $(pm logs "$c" 2>&1 | grep -o -E '"message":"(drained|draining|grpc draining|drain deadline passed)"' | tr '\n' ' ')"
    if [[ $svc != nats && $code != 0 ]]; then bad=1; fi
  done
  ((bad == 0)) || fail "a switchboard container did not exit 0"
  for svc in edge-1 edge-2; do
    pm logs "$(ctr_of "$svc")" 2>&1 | grep -q '"message":"drained"' \
      || fail "$svc exited without waiting for its sockets (no 'drained')"
  done
  compose down -v >/dev/null 2>&1 || true
  COMPOSE_UP=0
  log "OK: docker-compose.yml under podman-compose passed the checks"
}

case ${1:-all} in
  standins) standins ;;
  build) build ;;
  run) run_checks ;;
  compose) compose_checks ;;
  all) standins; build; run_checks ;;
  *) echo "usage: $0 [all|standins|build|run|compose]" >&2; exit 2 ;;
esac
