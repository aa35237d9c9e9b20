#!/usr/bin/env bash
# make bench-peers: linkd against what users would pick instead, in one run,
# with one load tool (loadws) on one machine, the same four workloads each:
#
#   memory   RSS of all the target's processes at 0 and at N idle WebSocket
#            connections -> KiB per connection
#   echo     C connections x D messages in flight -> msgs/s, p50, p99 (median of runs)
#   fan-out  N connections in one room, one message from a member to the room
#            -> time until the last member has it (median of rounds)
#   HTTP     wrk on GET /bench/hello answered by a backend
#
# About 6 minutes. Targets (each its own processes, all started at the
# beginning and running side by side; the fan-out rounds of all targets are
# interleaved, the echo runs alternate between targets; see
# tests/bench/README.md, "Peers"):
#   linkd     linkd + the C++ bench service (benchsvc, nanopb)
#   linkd-ts  linkd + tssvc.mjs, the same handlers on the TypeScript SDK (linkd-sdk)
#   socketio  Socket.IO 4.8 (sio.js), websocket transport only; loadws speaks
#             Engine.IO/Socket.IO framing to it (--proto socketio): acks, rooms
#   pushpin   Pushpin (Debian) + zurl in front of pushback.js: WebSocket-over-HTTP
#             for the messages, its publish API for the room, its HTTP proxy
#   ws        peer.js: one Node process on the npm ws package, answering itself
#   bare      baresrv: libuv + wslay, answering itself, no service hop (the limit)
#
# Bounded (no step starts after BENCH_BUDGET s, each step has its own bound),
# loopback only, stops everything it started, never fails on a time.
# Knobs (env): BENCH_N=10000 BENCH_ECHO_C=50 BENCH_ECHO_D=8 BENCH_ECHO_T=3
#   BENCH_ECHO_RUNS=5 BENCH_ROUNDS=21 BENCH_WRK_T=5 BENCH_WRK_C=50
#   BENCH_BUDGET=600 BENCH_JOIN_INFLIGHT=200 BENCH_FAN_SLOT_MS=700
#   BENCH_STEPS="fanout echo http" (a subset)
#   BENCH_FAN_PIN=1 (fan-out: load tools on CPU 0, targets on the others; 0: unpinned)
#   BENCH_PUSHPIN_LOG=2 (Pushpin's log level; its logs are kept in BENCH_KEEP=DIR)
#   PEERS="linkd linkd-ts socketio pushpin ws bare" (a subset, in this order; linkd-ts-ref
#     with BENCH_TS_REF_SDK=DIR: tssvc.mjs on another build of the SDK, e.g. an older one)
#   LINKD_CMD (another linkd binary)
BENCH_NAME=peers
. "$(dirname "$0")/lib.sh"
N=${BENCH_N:-10000}
ECHO_C=${BENCH_ECHO_C:-50}
ECHO_D=${BENCH_ECHO_D:-8}
ECHO_T=${BENCH_ECHO_T:-3}
ECHO_RUNS=${BENCH_ECHO_RUNS:-5}
ROUNDS=${BENCH_ROUNDS:-21}
WRK_T=${BENCH_WRK_T:-5}
WRK_C=${BENCH_WRK_C:-50}
JOIN_INFLIGHT=${BENCH_JOIN_INFLIGHT:-200}
BUDGET=${BENCH_BUDGET:-600}
WANT=${PEERS:-linkd linkd-ts socketio pushpin ws bare}
STEPS=${BENCH_STEPS:-fanout echo http}
PP_LOG=${BENCH_PUSHPIN_LOG:-1}
# Debian packages this run needs beyond the Makefile's (installed on first use)
PEER_DEBS="pushpin condure zurl wrk curl"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------- what the run needs: Debian packages, npm packages, the tools, the SDK
missing=()
for d in $PEER_DEBS; do
  dpkg-query -W -f='${Status}\n' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$TMP/apt.log" 2>&1 ||
    say "apt-get install failed: $(tail -n 2 "$TMP/apt.log" | tr '\n' ' ')"
fi
bench_build loadws benchsvc baresrv
npm_ci() {  # npm_ci DIR: npm ci when node_modules is missing or older than the lock
  local d=$1
  if [ ! -f "$d/node_modules/.package-lock.json" ] || [ "$d/package-lock.json" -nt "$d/node_modules/.package-lock.json" ]; then
    say "npm ci in ${d#$ROOT/}"
    (cd "$d" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.log" 2>&1 || {
      say "npm ci in ${d#$ROOT/} failed: $(tail -n 2 "$TMP/npm.log" | tr '\n' ' ')"; return 1; }
  fi
}
NODE_OK=1
npm_ci "$HERE" || NODE_OK=0
SDK_OK=1
npm_ci "$ROOT/sdk/typescript" || SDK_OK=0
if [ "$SDK_OK" = 1 ] && { [ ! -f "$ROOT/sdk/typescript/dist/index.js" ] ||
     [ -n "$(find "$ROOT/sdk/typescript/src" "$ROOT/sdk/typescript/package.json" "$ROOT/proto/linkd.proto" -newer "$ROOT/sdk/typescript/dist/index.js" -print -quit 2>/dev/null)" ]; }; then
  say "building sdk/typescript"
  (cd "$ROOT/sdk/typescript" && timeout 300 npm run --silent build) >"$TMP/sdk-build.log" 2>&1 || {
    say "SDK build failed: $(tail -n 3 "$TMP/sdk-build.log" | tr '\n' ' ')"; SDK_OK=0; }
fi
command -v wrk >/dev/null || say "wrk not found: no HTTP figures"
command -v node >/dev/null && command -v npm >/dev/null || { say "node/npm not found (make deps installs Debian's nodejs): Node peers skipped"; NODE_OK=0; SDK_OK=0; }

# ---------- state (helpers: tests/bench/lib.sh)
HZ=$(getconf CLK_TCK)
declare -A R       # R[target.figure]=value
declare -A PORT URL LWARGS PROCS MAIN
TARGETS=()

# linkd with a service: start_linkd TARGET SERVICE-COMMAND...
start_linkd() {
  local t=$1; shift
  PORT[$t]=$(free_port)
  local sock=$TMP/$t.sock
  "${LINKD[@]}" --listen "127.0.0.1:${PORT[$t]}" --socket "$sock" \
    --max-connections $((N + 2000)) --max-memberships $((N * 2 + 1000)) --max-rooms 1000 \
    --max-connections-per-user 0 --max-connections-per-ip 0 --rate-limit 0 \
    --log-level warn >"$TMP/$t.log" 2>&1 &
  local lp=$!
  PIDS+=("$lp")
  if ! { wait_for 10 curl -sf -m 1 -o /dev/null "http://127.0.0.1:${PORT[$t]}/health" && wait_for 5 test -S "$sock"; }; then
    say "$t: linkd did not start: $(tail -n 3 "$TMP/$t.log" | tr '\n' ' ')"; return 1
  fi
  "$@" "$sock" "$WSPATH" >"$TMP/$t.svc.out" 2>"$TMP/$t.svc.err" &
  local sp=$!
  PIDS+=("$sp")
  if ! wait_for 15 grep -q registered "$TMP/$t.svc.out"; then
    say "$t: service did not register: $(tail -n 3 "$TMP/$t.svc.err" | tr '\n' ' ')"; return 1
  fi
  MAIN[$t]=$lp
  PROCS[$t]="$lp $sp"
  URL[$t]="ws://127.0.0.1:${PORT[$t]}$WSPATH"
  LWARGS[$t]=""
}

# a single process answering itself: start_single TARGET READY-WORD COMMAND...
start_single() {
  local t=$1 word=$2; shift 2
  PORT[$t]=$(free_port)
  "$@" "${PORT[$t]}" >"$TMP/$t.out" 2>&1 &
  local p=$!
  PIDS+=("$p")
  wait_for 15 grep -q "$word" "$TMP/$t.out" || { say "$t did not start: $(tail -n 3 "$TMP/$t.out" | tr '\n' ' ')"; return 1; }
  MAIN[$t]=$p
  PROCS[$t]=$p
  URL[$t]="ws://127.0.0.1:${PORT[$t]}$WSPATH"
  LWARGS[$t]=""
}

# Pushpin from Debian: its runner starts condure, pushpin-proxy and
# pushpin-handler; zurl (its HTTP client, for WebSocket-over-HTTP) is started
# here with queues big enough for 10k connections (the runner's zurl
# template has in_hwm 1000 and refuses 127.*); the handler's message_rate
# (2500/s by default) is raised so that a publish to 10k is not throttled.
start_pushpin() {
  local t=pushpin d=$TMP/pushpin
  command -v pushpin >/dev/null && command -v zurl >/dev/null || { say "pushpin/zurl not installed: no Pushpin figures"; return 1; }
  mkdir -p "$d/run" "$d/log"
  PORT[$t]=$(free_port)
  local bport pubport p2 p3 p4
  bport=$(free_port); pubport=$(free_port); p2=$(free_port); p3=$(free_port); p4=$(free_port)
  echo "* 127.0.0.1:$bport,over_http" >"$d/routes"
  sed -e "s#^rundir=.*#rundir=$d/run#" -e "s#^logdir=.*#logdir=$d/log#" -e "s#^http_port=.*#http_port=${PORT[$t]}#" \
      -e "s#^services=.*#services=condure,pushpin-proxy,pushpin-handler#" -e "s#^routesfile=.*#routesfile=$d/routes#" \
      -e "s#^message_rate=.*#message_rate=1000000#" -e "s#^message_hwm=.*#message_hwm=1000000#" \
      -e "s#^push_in_http_port=.*#push_in_http_port=$pubport#" -e "s#^push_in_http_addr=.*#push_in_http_addr=127.0.0.1#" \
      -e "s#tcp://127.0.0.1:5560#tcp://127.0.0.1:$p2#" -e "s#tcp://127.0.0.1:5562#tcp://127.0.0.1:$p3#" -e "s#tcp://127.0.0.1:5563#tcp://127.0.0.1:$p4#" \
      -e "s#^updates_check=.*#updates_check=off#" \
      /etc/pushpin/pushpin.conf >"$d/pushpin.conf"
  sed -i '/^\[proxy\]/a zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in\nzurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream\nzurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out' "$d/pushpin.conf"
  sed -e "s#{{ rundir }}#$d/run#g; s#{{ ipc_prefix }}#pushpin-#g; s#^max_open_requests=.*#max_open_requests=20000#; s#^in_hwm=.*#in_hwm=100000#; s#^out_hwm=.*#out_hwm=100000#" \
      /usr/lib/pushpin/runner/zurl.conf.template >"$d/zurl.conf"
  node "$HERE/pushback.js" "$bport" "http://127.0.0.1:$pubport/publish/" >"$d/back.out" 2>&1 &
  local bp=$!
  PIDS+=("$bp")
  zurl --config="$d/zurl.conf" --logfile="$d/log/zurl.log" --loglevel="$PP_LOG" >/dev/null 2>&1 &
  local zp=$!
  PIDS+=("$zp")
  pushpin --config "$d/pushpin.conf" --loglevel "$PP_LOG" >"$d/pushpin.out" 2>&1 &
  local pp=$!
  PIDS+=("$pp")
  if ! { wait_for 10 grep -q listening "$d/back.out" && wait_for 15 curl -sf -m 1 -o /dev/null "http://127.0.0.1:${PORT[$t]}/bench/hello"; }; then
    say "pushpin did not start: $(tail -n 3 "$d/pushpin.out" "$d/back.out" | tr '\n' ' ')"; return 1
  fi
  local kids
  kids=$(cat "$d"/run/*.pid 2>/dev/null | tr '\n' ' ')
  MAIN[$t]=$pp
  PROCS[$t]="$pp $kids $zp $bp"
  URL[$t]="ws://127.0.0.1:${PORT[$t]}$WSPATH"
  # Pushpin refuses upgrades (502) when 200 handshakes, each an OPEN request
  # to the backend, are in flight at once: it gets 50
  LWARGS[$t]="--concurrency 50"
}

for t in $WANT; do
  case $t in
    linkd) start_linkd linkd "$B/benchsvc" && TARGETS+=(linkd) ;;
    linkd-ts) [ "$SDK_OK" = 1 ] && start_linkd linkd-ts node "$HERE/tssvc.mjs" && TARGETS+=(linkd-ts) ;;
    linkd-ts-ref)   # tssvc.mjs on another build of the SDK (BENCH_TS_REF_SDK=DIR), for a before/after
      [ -n "${BENCH_TS_REF_SDK:-}" ] && start_linkd linkd-ts-ref env LINKD_SDK_DIR="$BENCH_TS_REF_SDK" node "$HERE/tssvc.mjs" &&
        TARGETS+=(linkd-ts-ref) ;;
    socketio)
      if [ "$NODE_OK" = 1 ] && start_single socketio listening node "$HERE/sio.js"; then
        URL[socketio]="ws://127.0.0.1:${PORT[socketio]}/socket.io/?EIO=4&transport=websocket"
        LWARGS[socketio]="--proto socketio"
        TARGETS+=(socketio)
      fi ;;
    pushpin) [ "$NODE_OK" = 1 ] && start_pushpin && TARGETS+=(pushpin) ;;
    ws) [ "$NODE_OK" = 1 ] && start_single ws listening node "$HERE/peer.js" && TARGETS+=(ws) ;;
    bare) start_single bare listening "$B/baresrv" && TARGETS+=(bare) ;;
    *) say "unknown target $t" ;;
  esac
done
[ "${#TARGETS[@]}" -gt 0 ] || { say "no target started"; exit 0; }
say "targets: ${TARGETS[*]}"
sleep 1   # let every target settle
for t in "${TARGETS[@]}"; do
  # shellcheck disable=SC2086
  R[$t.rss0]=$(rss_kib ${PROCS[$t]})
  R[$t.cpu0]=$(cpu_ticks ${PROCS[$t]})
done

alive() { kill -0 "${MAIN[$1]}" 2>/dev/null && return 0; say "$1 is gone"; return 1; }
# settle TARGET: until its processes are quiet (under 5 % of a core over 0.5 s;
# 30 s at most): what a test set off (e.g. Pushpin telling its backend about
# 10k closed connections) must not run into the next target's test.
settle() {
  local t=$1 c0 c1 end=$(( $(date +%s) + 30 ))
  # shellcheck disable=SC2086
  c0=$(cpu_ticks ${PROCS[$t]})
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 0.5
    # shellcheck disable=SC2086
    c1=$(cpu_ticks ${PROCS[$t]})
    [ $((c1 - c0)) -le $((HZ / 40)) ] && return 0
    c0=$c1
  done
  say "$t still busy after 30 s"
}
in_budget() {
  awk -v s="$T_START" -v e="$(now)" -v b="$BUDGET" 'BEGIN{exit !(e-s < b)}' && return 0
  say "time budget (${BUDGET}s) spent: skipping $*"; return 1
}

# ---------- memory at N idle connections, then the fan-out on them.
# One loadws per target opens N connections (all at once, see start_conns:
# the RSS is read once a target's N are open and idle), makes them join the
# room and holds them. Then every loadws is signalled at once and they take
# turns, round by round (target i's rounds at i*SLOT + k*(targets*SLOT)):
# every target's rounds spread over the same minute, under the same
# background load.
# Each period, every target has one turn of SLOT ms, Pushpin a longer one
# at the end (its rounds take up to ~1.5 s); the others' order is shuffled
# from one period to the next (the same shuffle every run), so that no
# target always comes first, or always after the same other one.
SLOT=${BENCH_FAN_SLOT_MS:-700}
NCPU=$(nproc)
FAN_PIN=${BENCH_FAN_PIN:-1}
[ "$NCPU" -ge 2 ] && command -v taskset >/dev/null || FAN_PIN=0
PP_SLOT=$((2 * SLOT + 200))
declare -A LW
ROT=()
for t in $WANT; do [ "$t" = pushpin ] || ROT+=("$t"); done
PERIOD=$(( ${#ROT[@]} * SLOT ))
[[ " $WANT " == *" pushpin "* ]] && PERIOD=$((PERIOD + PP_SLOT))
declare -A TURN   # TURN[k.target]: its place in period k
for ((k = 0; k < ROUNDS; k++)); do
  i=0
  while read -r _ t; do TURN[$k.$t]=$i; i=$((i + 1)); done < <(
    for t in "${ROT[@]}"; do echo "$(echo "period $k $t" | cksum | cut -d' ' -f1) $t"; done | sort -n)
done
schedule() {  # schedule TARGET: its rounds' start offsets (ms), comma-separated
  local t=$1 k out=""
  for ((k = 0; k < ROUNDS; k++)); do
    if [ "$t" = pushpin ]; then out+="$((k * PERIOD + ${#ROT[@]} * SLOT)),"
    else out+="$((k * PERIOD + ${TURN[$k.$t]} * SLOT)),"; fi
  done
  echo "${out%,}"
}

# The load tools open their connections all at once, interleaved: the
# kernel's socket lookup costs more for older sockets (they sit behind newer
# ones in the established hash's chains), and with the targets opened one
# after the other the first one's rounds were ~15 % slower (linkd first:
# linkd/bare 1.11-1.19; the same run with bare first: 1.00).
start_conns() {
  local t=$1 out=$TMP/$1.fan
  R[$t.load]=$(cut -d' ' -f1 /proc/loadavg)
  rm -f "$out.ready" "$out.joined" "$out.done"
  # shellcheck disable=SC2086
  "$B/loadws" --url "${URL[$t]}" ${LWARGS[$t]} -n "$N" -r "$ROUNDS" --except-sender --join-inflight "$JOIN_INFLIGHT" \
    --ready "$out.ready" --joined "$out.joined" --done "$out.done" \
    --round-at "$(schedule "$t")" \
    --timeout $((240 + ROUNDS * PERIOD / 1000)) -q fanout >"$out" 2>"$out.err" &
  LW[$t]=$!
  PIDS+=("${LW[$t]}")
}
# Once its N are open: the RSS, then the joins (false: the caller lets the load tool go).
open_target() {
  local t=$1 out=$TMP/$1.fan lw=${LW[$1]}
  if ! wait_for 90 test -s "$out.ready"; then
    say "$t: $N connections did not open within 90 s"; return 1
  fi
  sleep 1   # let the server finish what each connection set off
  # shellcheck disable=SC2086
  R[$t.rss_n]=$(rss_kib ${PROCS[$t]})
  R[$t.conn]=$(sed -n 's/^connected=\([0-9]*\).*/\1/p' "$out.ready")
  R[$t.connect_s]=$(field connect_s "$out")
  kill -USR1 "$lw" 2>/dev/null
  if ! wait_for 90 test -s "$out.joined"; then
    say "$t: the joins were not answered within 90 s"; return 1
  fi
  settle "$t"
}
fanout_all() {
  local t ts=() end
  for t in "${TARGETS[@]}"; do [ -n "${LW[$t]:-}" ] && ts+=("$t"); done
  [ "${#ts[@]}" -gt 0 ] || return
  say "fan-out: ${#ts[@]} targets taking turns, $ROUNDS rounds each (about $((ROUNDS * PERIOD / 1000)) s)"
  # The load tools stand for clients on other machines: pinned to CPU 0 and
  # every target to the other CPUs, none shares its core with the tool that
  # times it (unpinned, the scheduler put linkd's load tool on linkd's core
  # for much of a round while the other core idled: tests/bench/README.md)
  local rest=1; [ "$NCPU" -gt 2 ] && rest="1-$((NCPU - 1))"
  if [ "$FAN_PIN" = 1 ]; then
    # shellcheck disable=SC2086
    for t in "${ts[@]}"; do pin 0 "${LW[$t]}"; pin "$rest" ${PROCS[$t]}; done
    say "fan-out: the load tools on CPU 0, the targets on CPU $rest (BENCH_FAN_PIN=0: unpinned)"
  fi
  for t in "${ts[@]}"; do kill -USR1 "${LW[$t]}" 2>/dev/null; done
  for t in "${ts[@]}"; do WAIT_STEP=0.5 wait_for $((60 + ROUNDS * PERIOD / 1000)) test -s "$TMP/$t.fan.done"; done
  # shellcheck disable=SC2086
  [ "$FAN_PIN" = 1 ] && for t in "${ts[@]}"; do pin "0-$((NCPU - 1))" ${PROCS[$t]}; done   # echo and HTTP: unpinned
  for t in "${ts[@]}"; do
    local out=$TMP/$t.fan
    R[$t.fan]=$(field median_ms "$out")
    R[$t.fan_each]=$(field each "$out")
    R[$t.members]=$(field fanout_members "$out")
    R[$t.fan_first]=$(field first_median_ms "$out")
    grep -q first_error "$out" && say "$t fan-out: $(grep -h first_error "$out")"
    kill -USR1 "${LW[$t]}" 2>/dev/null
  done
  for t in "${ts[@]}"; do wait "${LW[$t]}" 2>/dev/null; done
  for t in "${ts[@]}"; do wait_for 30 fewer_than "${PORT[$t]}" 10; done
  for t in "${ts[@]}"; do settle "$t"; done
}

test_echo() {
  local t=$1 i=$2 out=$TMP/$1.echo.$2 c0 c1 t0 t1 m
  # shellcheck disable=SC2086
  c0=$(cpu_ticks ${PROCS[$t]}); t0=$(now)
  # shellcheck disable=SC2086
  "$B/loadws" --url "${URL[$t]}" ${LWARGS[$t]} -c "$ECHO_C" -d "$ECHO_D" -t "$ECHO_T" --timeout $((ECHO_T + 20)) -q \
    echo >"$out" 2>"$out.err"
  # shellcheck disable=SC2086
  c1=$(cpu_ticks ${PROCS[$t]}); t1=$(now)
  grep -q first_error "$out" && say "$t echo: $(grep -h first_error "$out")"
  m=$(field msgs_per_s "$out")
  [ -n "$m" ] || return
  echo "$m $(field p50_ms "$out") $(field p99_ms "$out") $(field errors "$out") \
$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$HZ" 'BEGIN{printf "%.0f", 100*(b-a)/hz/(e-s)}') $(cut -d' ' -f1 /proc/loadavg)" >>"$TMP/$t.echo.runs"
  wait_for 10 fewer_than "${PORT[$t]}" 5
  settle "$t"
}
echo_median() {
  local t=$1 f=$TMP/$1.echo.runs line
  [ -s "$f" ] || return
  line=$(sort -n "$f" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
  read -r "R[$t.echo]" "R[$t.p50]" "R[$t.p99]" "R[$t.echo_err]" "R[$t.echo_cpu]" "R[$t.echo_load]" <<<"$line"
  R[$t.echo_runs]=$(awk '{printf "%s%s", (NR>1?",":""), $1}' "$f")
}

test_wrk() {
  local t=$1 out=$TMP/$1.wrk c0 c1 t0 t1
  # shellcheck disable=SC2086
  c0=$(cpu_ticks ${PROCS[$t]}); t0=$(now)
  timeout $((WRK_T + 20)) wrk -t2 -c"$WRK_C" -d"${WRK_T}s" "http://127.0.0.1:${PORT[$t]}/bench/hello" >"$out" 2>&1
  # shellcheck disable=SC2086
  c1=$(cpu_ticks ${PROCS[$t]}); t1=$(now)
  R[$t.http]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  R[$t.http_cpu]=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$HZ" 'BEGIN{printf "%.0f", 100*(b-a)/hz/(e-s)}')
  local bad
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  [ -n "$bad" ] && { say "$t GET /bench/hello: $bad non-2xx responses"; R[$t.http_bad]=$bad; }
  wait_for 10 fewer_than "${PORT[$t]}" 5
  settle "$t"
}

step() { [[ " $STEPS " == *" $1 "* ]]; }
if step fanout; then
  for t in "${TARGETS[@]}"; do alive "$t" && start_conns "$t"; done
  for t in "${TARGETS[@]}"; do
    [ -n "${LW[$t]:-}" ] || continue
    in_budget "$t connections" && open_target "$t" && continue
    kill -TERM "${LW[$t]}" 2>/dev/null; unset "LW[$t]"   # no fan-out for this one
  done
  fanout_all
fi
if step echo; then
  for i in $(seq "$ECHO_RUNS"); do
    for t in "${TARGETS[@]}"; do alive "$t" && in_budget "$t echo" && test_echo "$t" "$i"; done
  done
fi
for t in "${TARGETS[@]}"; do echo_median "$t"; done
if step http && command -v wrk >/dev/null; then
  for t in "${TARGETS[@]}"; do alive "$t" && in_budget "$t wrk" && test_wrk "$t"; done
fi
sleep 0.5
for t in "${TARGETS[@]}"; do
  # shellcheck disable=SC2086
  R[$t.rss_end]=$(rss_kib ${PROCS[$t]})
  # shellcheck disable=SC2086
  R[$t.cpu_s]=$(awk -v a="${R[$t.cpu0]}" -v b="$(cpu_ticks ${PROCS[$t]})" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz}')
  local_list=""
  for p in ${PROCS[$t]}; do
    n=$(ps -o comm= -p "$p" 2>/dev/null); [ -n "$n" ] || continue
    local_list+="$n $(awk '/^VmRSS:/ {printf "%.0f", $2/1024}' "/proc/$p/status" 2>/dev/null) MiB $(awk -v hz="$HZ" '{printf "%.1f", ($14+$15)/hz}' "/proc/$p/stat" 2>/dev/null) s; "
  done
  R[$t.procs]=${local_list%; }
done

# ---------- the table
num() { local x=${R[$1]:-}; [[ $x =~ ^[0-9.]+$ ]] && echo "$x"; }
for t in "${TARGETS[@]}"; do
  a=${R[$t.rss0]:-}; b=${R[$t.rss_n]:-}; n=${R[$t.conn]:-}
  if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $n =~ ^[0-9]+$ && $n -gt 0 ]]; then
    R[$t.kib]=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN{printf "%.2f", (b-a)/n}')
  fi
done
# ratio A B: A/B with two decimals, or "-"
ratio() {
  local a b
  a=$(num "$1"); b=$(num "$2")
  if [ -n "$a" ] && [ -n "$b" ] && awk -v b="$b" 'BEGIN{exit !(b>0)}'; then awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}'
  else echo "-"; fi
}
cell() {  # value (ratio to linkd's: linkd / this, or this / linkd for times)
  local t=$1 f=$2 v r
  v=${R[$t.$f]:-}
  [ -n "$v" ] || { echo "n/a"; return; }
  echo "$v"
}
W=12
printf '\n'
echo "Linkd against its peers — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m), Node $(node --version 2>/dev/null), Socket.IO $(node -p 'require("'"$HERE"'/node_modules/socket.io/package.json").version' 2>/dev/null), $(pushpin --version 2>/dev/null | head -n 1)"
echo "(N=$N; echo: $ECHO_C conns x $ECHO_D in flight, ${ECHO_T}s, median of $ECHO_RUNS; fan-out: median of $ROUNDS rounds, sender excepted; HTTP: wrk -t2 -c$WRK_C -d${WRK_T}s GET /bench/hello)"
echo "load average at the start: $LOAD_START"
echo
printf '| %-12s | %11s | %7s | %9s | %7s | %7s | %7s | %9s | %7s | %9s | %7s | %5s |\n' target "KiB/conn" "÷linkd" "echo/s" "÷linkd" "p50 ms" "p99 ms" "fan ms" "÷linkd" "HTTP/s" "÷linkd" load
printf '|%s|\n' "--------------|-------------|---------|-----------|---------|---------|---------|-----------|---------|-----------|---------|------"
for t in "${TARGETS[@]}"; do
  # the ratios: this target against linkd (C++ service); KiB and fan-out ms: smaller is better
  printf '| %-12s | %11s | %7s | %9s | %7s | %7s | %7s | %9s | %7s | %9s | %7s | %5s |\n' "$t" \
    "$(cell "$t" kib)" "$(ratio "$t.kib" linkd.kib)" "$(cell "$t" echo)" "$(ratio "$t.echo" linkd.echo)" \
    "$(cell "$t" p50)" "$(cell "$t" p99)" "$(cell "$t" fan)" "$(ratio "$t.fan" linkd.fan)" \
    "$(cell "$t" http)" "$(ratio "$t.http" linkd.http)" "$(cell "$t" load)"
done
echo
# the goals (issue 11), each: figure, bound, met or not
goal() {  # goal TEXT VALUE OP BOUND
  local text=$1 v=$2 op=$3 bound=$4 res
  if [ "$v" = "-" ] || [ -z "$v" ]; then res="not measured"
  elif awk -v v="$v" -v b="$bound" -v op="$op" 'BEGIN{exit !((op=="<=" && v<=b) || (op==">=" && v>=b))}'; then res="met"
  else res="NOT MET"; fi
  printf '| %-62s | %6s | %2s %-5s | %-12s |\n' "$text" "$v" "$op" "$bound" "$res"
}
printf '| %-62s | %6s | %8s | %-12s |\n' "goal" "ratio" "bound" "result"
printf '|%s|\n' "----------------------------------------------------------------|--------|----------|--------------"
goal "KiB per idle connection: linkd / Socket.IO" "$(ratio linkd.kib socketio.kib)" "<=" 0.067
goal "KiB per idle connection: linkd / Pushpin" "$(ratio linkd.kib pushpin.kib)" "<=" 0.2
goal "echo msgs/s, C++ service: linkd / Socket.IO" "$(ratio linkd.echo socketio.echo)" ">=" 2
goal "echo msgs/s, C++ service: linkd / Pushpin" "$(ratio linkd.echo pushpin.echo)" ">=" 3
goal "fan-out to $N, time: linkd / Socket.IO" "$(ratio linkd.fan socketio.fan)" "<=" 0.65
goal "fan-out to $N, time: linkd / bare libuv+wslay" "$(ratio linkd.fan bare.fan)" "<=" 1.15
goal "fan-out to $N, time, TypeScript service: linkd-ts / bare" "$(ratio linkd-ts.fan bare.fan)" "<=" 1.15
goal "echo msgs/s, TypeScript SDK service: linkd-ts / Node ws peer" "$(ratio linkd-ts.echo ws.echo)" ">=" 1.3
echo
echo "KiB/conn: (RSS of all the target's processes at $N idle connections − at 0) / connections; linkd's include the service's."
echo "÷linkd: this target's figure divided by linkd's (C++ service) from the same run."
for t in "${TARGETS[@]}"; do
  echo "$t: RSS $(awk -v k="${R[$t.rss0]:-0}" 'BEGIN{printf "%.1f", k/1024}') MiB at 0, $(awk -v k="${R[$t.rss_n]:-0}" 'BEGIN{printf "%.1f", k/1024}') MiB at ${R[$t.conn]:-?} conns (opened in ${R[$t.connect_s]:-?} s), $(awk -v k="${R[$t.rss_end]:-0}" 'BEGIN{printf "%.1f", k/1024}') MiB at the end; CPU ${R[$t.cpu_s]:-?} s over the run, ${R[$t.echo_cpu]:-?}% of a core during echo, ${R[$t.http_cpu]:-?}% during wrk; fan-out members ${R[$t.members]:-?} (first one reached after ${R[$t.fan_first]:-?} ms, median), rounds (ms/members) ${R[$t.fan_each]:-n/a}; echo runs ${R[$t.echo_runs]:-n/a} (load ${R[$t.echo_load]:-?}); processes: ${R[$t.procs]:-?}"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v s="$T_START" -v e="$(now)" 'BEGIN{printf "peers: done in %.0f s\n", e-s}' >&2
exit 0
