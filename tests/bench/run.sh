#!/usr/bin/env bash
# make bench: Linkd's figures, and the same tests against a peer (a plain
# Node.js server on the npm `ws` package) in the same run, with ratios.
#
#   memory   linkd's VmRSS at 0 and at N idle WebSocket connections -> KiB/connection
#   echo     C connections x D messages in flight through the bench service -> msgs/s, p50, p99
#   fan-out  N connections in one room, one message broadcast to it -> time to the last member
#   HTTP     wrk on GET /health and on GET /bench/hello (forwarded to the bench service)
#   TLS      a fresh linkd with --tls-listen and a fresh peer in https mode: VmRSS at 0 and
#            at N idle wss:// connections, full and resumed handshakes/s (2 x openssl
#            s_time), echo over wss:// (compared with ws:// above)
#   recovery a fresh linkd whose bench path has connection recovery on: KiB per
#            idle connection and fan-out with every push kept in the room's
#            history, against the plain linkd (BENCH_RECOVERY=1, BENCH_RECOVERY_SPEC=30000:64)
#
# Bounded in time (about 2-3 minutes; every step has its own bound), loopback
# only, stops everything it started, never fails on a time. Knobs (env):
#   BENCH_N=10000 BENCH_ECHO_C=50 BENCH_ECHO_D=8 BENCH_ECHO_T=5 BENCH_ECHO_RUNS=3 BENCH_ROUNDS=7
#   BENCH_WRK_T=5 BENCH_WRK_C=50 BENCH_SRC_IPS=1 BENCH_PEER=1 BENCH_LINKD=1
#   BENCH_TLS=1 BENCH_TLS_HS_T=3 (seconds per handshake run)
#   LINKD_CMD (another linkd binary or an emulator line)
BENCH_NAME=bench
. "$(dirname "$0")/lib.sh"
N=${BENCH_N:-10000}
ECHO_C=${BENCH_ECHO_C:-50}
ECHO_D=${BENCH_ECHO_D:-8}
ECHO_T=${BENCH_ECHO_T:-5}
ECHO_RUNS=${BENCH_ECHO_RUNS:-3}
ROUNDS=${BENCH_ROUNDS:-7}
WRK_T=${BENCH_WRK_T:-5}
WRK_C=${BENCH_WRK_C:-50}
SRC_IPS=${BENCH_SRC_IPS:-1}

# ---------- build the tools (helpers: tests/bench/lib.sh)
bench_build loadws tlsmem benchsvc
PEER=${BENCH_PEER:-1}
if [ "$PEER" = 1 ] && [ ! -d "$HERE/node_modules/ws" ]; then
  (cd "$HERE" && timeout 120 npm ci --no-audit --no-fund --silent >/dev/null 2>&1) || {
    say "npm ci failed: no peer figures"; PEER=0; }
fi
command -v wrk >/dev/null || say "wrk not found (apt-get install wrk): no HTTP figures"

declare -A R   # R[target.figure]=value

# ---------- the servers: both run for the whole bench and the tests
# alternate between them, so both see the same background load
TARGETS=()
declare -A PID PORT SVC
if [ "${BENCH_LINKD:-1}" = 1 ]; then
  PORT[linkd]=$(free_port)
  LSOCK=$TMP/linkd.sock
  say "linkd on 127.0.0.1:${PORT[linkd]}"
  "${LINKD[@]}" --listen "127.0.0.1:${PORT[linkd]}" --socket "$LSOCK" \
    --max-connections $((N + 2000)) --max-memberships $((N * 2 + 1000)) --max-rooms 1000 \
    --max-connections-per-user 0 --max-connections-per-ip 0 --rate-limit 0 \
    --log-level warn >"$TMP/linkd.log" 2>&1 &
  PID[linkd]=$!
  PIDS+=("${PID[linkd]}")
  if wait_for 10 curl -sf -m 1 -o /dev/null "http://127.0.0.1:${PORT[linkd]}/health" && wait_for 5 test -S "$LSOCK"; then
    "$B/benchsvc" "$LSOCK" "$WSPATH" >"$TMP/svc.out" 2>"$TMP/svc.err" &
    SVC[linkd]=$!
    PIDS+=("${SVC[linkd]}")
    if wait_for 10 grep -q registered "$TMP/svc.out"; then
      TARGETS+=(linkd)
    else
      say "bench service did not register: $(tail -n 3 "$TMP/svc.err" "$TMP/linkd.log" | tr '\n' ' ')"
    fi
  else
    say "linkd did not start: $(tail -n 5 "$TMP/linkd.log" | tr '\n' ' ')"
  fi
fi
if [ "$PEER" = 1 ]; then
  PORT[peer]=$(free_port)
  say "peer (node ws) on 127.0.0.1:${PORT[peer]}"
  node "$HERE/peer.js" "${PORT[peer]}" "$WSPATH" >"$TMP/peer.out" 2>&1 &
  PID[peer]=$!
  PIDS+=("${PID[peer]}")
  if wait_for 10 grep -q listening "$TMP/peer.out"; then
    TARGETS+=(peer)
  else
    say "peer did not start: $(tail -n 3 "$TMP/peer.out")"
  fi
fi
alive() {
  kill -0 "${PID[$1]}" 2>/dev/null && return 0
  say "$1 is gone"; [ "$1" = linkd ] && say "linkd log: $(tail -n 5 "$TMP/linkd.log" | tr '\n' ' ')"
  return 1
}
sleep 0.5   # let both settle
for t in "${TARGETS[@]}"; do R[$t.rss0]=$(rss_kib "${PID[$t]}"); done

# ---------- memory at N idle connections, then fan-out on the same connections
test_fanout() {
  local t=$1 pid=${PID[$1]} port=${PORT[$1]} svc=${SVC[$1]:-} out=$TMP/$1
  R[$t.load]=$(cut -d' ' -f1 /proc/loadavg)
  rm -f "$out.ready" "$out.done"
  "$B/loadws" --url "ws://127.0.0.1:$port$WSPATH" -n "$N" -r "$ROUNDS" --src-ips "$SRC_IPS" \
    --ready "$out.ready" --done "$out.done" --timeout 90 -q fanout >"$out.fan" 2>"$out.fan.err" &
  local lw=$!
  PIDS+=("$lw")
  if wait_for 60 test -s "$out.ready"; then
    sleep 1   # let the server finish what each connection set off
    R[$t.rss_n]=$(rss_kib "$pid")
    R[$t.conn]=$(field connected "$out.fan")
    [ -n "$svc" ] && R[$t.svc_rss]=$(rss_kib "$svc")
    kill -USR1 "$lw" 2>/dev/null
    # after the joins and the fan-out rounds, the same connections have carried traffic
    if wait_for 100 test -s "$out.done"; then
      sleep 0.5
      R[$t.rss_used]=$(rss_kib "$pid")
      kill -USR1 "$lw" 2>/dev/null
    fi
  else
    say "$t: $N connections did not open within 60 s"
    kill -TERM "$lw" 2>/dev/null
  fi
  wait "$lw" 2>/dev/null
  R[$t.connect_s]=$(field connect_s "$out.fan")
  R[$t.fan]=$(field median_ms "$out.fan")
  R[$t.fan_each]=$(field each "$out.fan")
  grep -q first_error "$out.fan" && say "$t fan-out: $(grep -h first_error "$out.fan")"
  # until the server has seen the connections go
  wait_for 30 fewer_than "$port" 10
}

# ---------- echo: one run; the server's CPU over the whole run (warm-up and drain included)
test_echo() {
  local t=$1 i=$2 pid=${PID[$1]} port=${PORT[$1]} svc=${SVC[$1]:-} out=$TMP/$1.echo.$2
  local c0 s0=0 t0 c1 s1=0 t1 hz
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid"); [ -n "$svc" ] && s0=$(cpu_ticks "$svc"); t0=$(now)
  "$B/loadws" --url "ws://127.0.0.1:$port$WSPATH" -c "$ECHO_C" -d "$ECHO_D" -t "$ECHO_T" --timeout $((ECHO_T + 20)) -q \
    echo >"$out" 2>"$out.err"
  c1=$(cpu_ticks "$pid"); [ -n "$svc" ] && s1=$(cpu_ticks "$svc"); t1=$(now)
  grep -q first_error "$out" && say "$t echo: $(grep -h first_error "$out")"
  local m
  m=$(field msgs_per_s "$out")
  [ -n "$m" ] || return
  # one line per run: msgs p50 p99 errors cpu svc_cpu
  echo "$m $(field p50_ms "$out") $(field p99_ms "$out") $(field errors "$out") \
$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$hz" 'BEGIN{printf "%.0f", 100*(b-a)/hz/(e-s)}') \
$(awk -v a="$s0" -v b="$s1" -v s="$t0" -v e="$t1" -v hz="$hz" 'BEGIN{printf "%.0f", 100*(b-a)/hz/(e-s)}')" >>"$TMP/$t.echo.runs"
  wait_for 10 fewer_than "$port" 5
}
echo_median() {  # the run with the median msgs/s gives every echo figure
  local t=$1 f=$TMP/$1.echo.runs line
  [ -s "$f" ] || return
  line=$(sort -n "$f" | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
  read -r "R[$t.echo]" "R[$t.p50]" "R[$t.p99]" "R[$t.echo_err]" "R[$t.echo_cpu]" "R[$t.svc_cpu]" <<<"$line"
  R[$t.echo_runs]=$(awk '{printf "%s%s", (NR>1?",":""), $1}' "$f")
}

# ---------- HTTP with wrk
test_wrk() {
  local t=$1 name=$2 path=$3 port=${PORT[$1]} out=$TMP/$1.wrk.$2
  timeout $((WRK_T + 20)) wrk -t2 -c"$WRK_C" -d"${WRK_T}s" "http://127.0.0.1:$port$path" >"$out" 2>&1
  R[$t.http_$name]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  local bad
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  if [ -n "$bad" ]; then
    say "$t GET $path: $bad non-2xx responses"
    R[$t.http_$name]="${R[$t.http_$name]}(${bad} non-2xx)"
  fi
  wait_for 10 fewer_than "$port" 5
}

# No step starts after BUDGET seconds, and no step takes more than ~90 s,
# so a server that hangs cannot keep the bench past 5 minutes.
BUDGET=${BENCH_BUDGET:-260}
in_budget() {
  awk -v s="$T_START" -v e="$(now)" -v b="$BUDGET" 'BEGIN{exit !(e-s < b)}' && return 0
  say "time budget (${BUDGET}s) spent: skipping $*"
  return 1
}
for t in "${TARGETS[@]}"; do alive "$t" && in_budget "$t fan-out" && test_fanout "$t"; done
for i in $(seq "$ECHO_RUNS"); do
  for t in "${TARGETS[@]}"; do alive "$t" && in_budget "$t echo" && test_echo "$t" "$i"; done
done
for t in "${TARGETS[@]}"; do echo_median "$t"; done
if command -v wrk >/dev/null; then
  for p in health:/health route:/bench/hello; do
    for t in "${TARGETS[@]}"; do alive "$t" && in_budget "$t wrk" && test_wrk "$t" "${p%%:*}" "${p#*:}"; done
  done
fi
sleep 0.5
for t in "${TARGETS[@]}"; do alive "$t" && R[$t.rss_end]=$(rss_kib "${PID[$t]}"); done

# ---------- recovery (issue 10): a fresh linkd whose bench path has connection
# recovery on (window 30 s, 64 pushes per room): KiB per idle connection (its
# session token and resume state) and the fan-out with every push also kept in
# the room's history, against the plain linkd above.
REC_SPEC=${BENCH_RECOVERY_SPEC:-30000:64}
if [ "${BENCH_RECOVERY:-1}" = 1 ] && [ "${BENCH_LINKD:-1}" = 1 ] && in_budget "recovery"; then
  PORT[rec]=$(free_port)
  "${LINKD[@]}" --listen "127.0.0.1:${PORT[rec]}" --socket "$TMP/linkd-rec.sock" \
    --max-connections $((N + 2000)) --max-memberships $((N * 2 + 1000)) --max-rooms 1000 \
    --max-connections-per-user 0 --max-connections-per-ip 0 --rate-limit 0 \
    --log-level warn >"$TMP/linkd-rec.log" 2>&1 &
  PID[rec]=$!
  PIDS+=("${PID[rec]}")
  if wait_for 10 curl -sf -m 1 -o /dev/null "http://127.0.0.1:${PORT[rec]}/health" && wait_for 5 test -S "$TMP/linkd-rec.sock"; then
    "$B/benchsvc" "$TMP/linkd-rec.sock" "$WSPATH" "$REC_SPEC" >"$TMP/svc-rec.out" 2>"$TMP/svc-rec.err" &
    SVC[rec]=$!
    PIDS+=("${SVC[rec]}")
    if wait_for 10 grep -q registered "$TMP/svc-rec.out"; then
      sleep 0.5
      R[rec.rss0]=$(rss_kib "${PID[rec]}")
      alive rec && test_fanout rec
      R[rec.hist]=$(curl -s -m 5 "http://127.0.0.1:${PORT[rec]}/metrics" | awk '$1 == "linkd_history_bytes" { print $2; exit }')
    else
      say "recovery: bench service did not register: $(tail -n 3 "$TMP/svc-rec.err" | tr '\n' ' ')"
    fi
  else
    say "recovery: linkd did not start: $(tail -n 3 "$TMP/linkd-rec.log" | tr '\n' ' ')"
  fi
  kill -TERM "${PID[rec]}" "${SVC[rec]:-}" 2>/dev/null
fi

# ---------- TLS (issue 9): a fresh linkd with --tls-listen (and its own benchsvc)
# and a fresh peer in https mode (Node's https + ws), started now so that their
# memory figures begin from a clean process; same certificate (EC P-256), same
# client, TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256 for both. The R keys are the
# targets' (linkd, peer) with tls_ figures.
HS_T=${BENCH_TLS_HS_T:-3}
declare -A TPID TPORT
TLS_TARGETS=()
tls_start() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/tls.key" -out "$TMP/tls.crt" -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 || { say "openssl: no certificate, no TLS figures"; return; }
  chmod 600 "$TMP/tls.key"
  if [ "${BENCH_LINKD:-1}" = 1 ]; then
    local plain
    plain=$(free_port); TPORT[linkd]=$(free_port)
    "${LINKD[@]}" --listen "127.0.0.1:$plain" --tls-listen "127.0.0.1:${TPORT[linkd]}" --tls-cert "$TMP/tls.crt" --tls-key "$TMP/tls.key" \
      --socket "$TMP/linkd-tls.sock" --max-connections $((N + 2000)) --max-memberships $((N * 2 + 1000)) --max-rooms 1000 \
      --max-connections-per-user 0 --max-connections-per-ip 0 --rate-limit 0 --log-level warn >"$TMP/linkd-tls.log" 2>&1 &
    TPID[linkd]=$!
    PIDS+=("${TPID[linkd]}")
    R[linkd.tls_metrics]="http://127.0.0.1:$plain/metrics"
    if wait_for 10 curl -sf -m 1 -o /dev/null "http://127.0.0.1:$plain/health" && wait_for 5 test -S "$TMP/linkd-tls.sock"; then
      "$B/benchsvc" "$TMP/linkd-tls.sock" "$WSPATH" >"$TMP/svc-tls.out" 2>"$TMP/svc-tls.err" &
      PIDS+=($!)
      if wait_for 10 grep -q registered "$TMP/svc-tls.out"; then TLS_TARGETS+=(linkd)
      else say "TLS: bench service did not register"; fi
    else
      say "TLS: linkd did not start: $(tail -n 3 "$TMP/linkd-tls.log" | tr '\n' ' ')"
    fi
  fi
  if [ "$PEER" = 1 ]; then
    TPORT[peer]=$(free_port)
    node "$HERE/peer.js" "${TPORT[peer]}" "$WSPATH" --tls "$TMP/tls.crt" "$TMP/tls.key" >"$TMP/peer-tls.out" 2>&1 &
    TPID[peer]=$!
    PIDS+=("${TPID[peer]}")
    if wait_for 10 grep -q listening "$TMP/peer-tls.out"; then TLS_TARGETS+=(peer)
    else say "TLS: peer did not start: $(tail -n 3 "$TMP/peer-tls.out")"; fi
  fi
  sleep 0.5
  for t in "${TLS_TARGETS[@]}"; do R[$t.tls_rss0]=$(rss_kib "${TPID[$t]}"); done
}
tls_alive() { kill -0 "${TPID[$1]}" 2>/dev/null && return 0; say "TLS $1 is gone"; return 1; }
tls_metric() { curl -s -m 5 "${R[linkd.tls_metrics]}" | awk -v n="$1" '$1 == n { print $2; exit }'; }

# N idle wss:// connections. They resume the session of the first ones (the
# ramp would otherwise take a minute of ECDSA on this machine); an idle
# connection holds the same after a full or a resumed handshake.
test_tls_idle() {
  local t=$1 pid=${TPID[$1]} port=${TPORT[$1]} out=$TMP/$1.tls
  R[$t.tls_load]=$(cut -d' ' -f1 /proc/loadavg)
  rm -f "$out.ready"
  "$B/loadws" --url "wss://127.0.0.1:$port$WSPATH" -n "$N" --resume --src-ips "$SRC_IPS" --ready "$out.ready" --timeout 90 -q \
    idle >"$out.idle" 2>"$out.idle.err" &
  local lw=$!
  PIDS+=("$lw")
  if wait_for 75 test -s "$out.ready"; then
    sleep 1
    R[$t.tls_rss_n]=$(rss_kib "$pid")
    R[$t.tls_conn]=$(sed -n 's/^connected=\([0-9]*\).*/\1/p' "$out.ready")
    if [ "$t" = linkd ]; then
      R[linkd.tls_pooled]=$(tls_metric linkd_tls_buffers_pooled)
      R[linkd.tls_open]=$(tls_metric linkd_tls_connections)
    fi
    kill -USR1 "$lw" 2>/dev/null
  else
    say "TLS $t: $N connections did not open within 75 s"
    kill -TERM "$lw" 2>/dev/null
  fi
  wait "$lw" 2>/dev/null
  R[$t.tls_connect_s]=$(field connect_s "$out.idle")
  R[$t.tls_resumed_n]=$(field tls_resumed "$out.idle")
  grep -q first_error "$out.idle" && say "TLS $t idle: $(grep -h first_error "$out.idle")"
  wait_for 30 fewer_than "$port" 10
}

# Handshakes: two openssl s_time clients at once for HS_T seconds (OpenSSL's
# client side is cheap, so the server is what limits); rate and the server's
# CPU time per handshake.
test_tls_hs() {
  local t=$1 how=$2 pid=${TPID[$1]} port=${TPORT[$1]} out=$TMP/$1.hs.$2 hz c0 c1 t0 t1 n i sp=()
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid"); t0=$(now)
  for i in 1 2; do
    timeout $((HS_T + 15)) openssl s_time -connect "127.0.0.1:$port" "-$how" -time "$HS_T" -tls1_2 \
      -cipher ECDHE-ECDSA-AES128-GCM-SHA256 >"$out.$i" 2>&1 &
    sp+=($!)
  done
  wait "${sp[@]}"
  c1=$(cpu_ticks "$pid"); t1=$(now)
  n=$(cat "$out".[12] | awk '/connections in [0-9.]+s;/ {s += $1} END {print s + 0}')
  [ "$n" -gt 0 ] || { say "TLS $t s_time -$how: $(tail -n 2 "$out.1" | tr '\n' ' ')"; return; }
  R[$t.tls_hs_$how]=$(awk -v n="$n" -v s="$t0" -v e="$t1" 'BEGIN{printf "%.0f", n/(e-s)}')
  R[$t.tls_hs_${how}_cpu]=$(awk -v n="$n" -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN{printf "%.3f", 1000*(b-a)/hz/n}')
  wait_for 10 fewer_than "$port" 5
}

test_tls_echo() {
  local t=$1 pid=${TPID[$1]} port=${TPORT[$1]} out=$TMP/$1.tls.echo hz c0 c1 t0 t1
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid"); t0=$(now)
  "$B/loadws" --url "wss://127.0.0.1:$port$WSPATH" -c "$ECHO_C" -d "$ECHO_D" -t "$ECHO_T" --timeout $((ECHO_T + 20)) -q \
    echo >"$out" 2>"$out.err"
  c1=$(cpu_ticks "$pid"); t1=$(now)
  grep -q first_error "$out" && say "TLS $t echo: $(grep -h first_error "$out")"
  R[$t.tls_echo]=$(field msgs_per_s "$out")
  R[$t.tls_p50]=$(field p50_ms "$out")
  R[$t.tls_p99]=$(field p99_ms "$out")
  R[$t.tls_echo_cpu]=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$hz" 'BEGIN{printf "%.0f", 100*(b-a)/hz/(e-s)}')
  local w=${R[$t.tls_echo]:-} p=${R[$t.echo]:-}
  if [[ $w =~ ^[0-9]+$ && $p =~ ^[0-9]+$ && $p -gt 0 ]]; then
    R[$t.tls_echo_vs_ws]=$(awk -v a="$w" -v b="$p" 'BEGIN{printf "%.2f", a/b}')
  fi
  wait_for 10 fewer_than "$port" 5
}

if [ "${BENCH_TLS:-1}" = 1 ] && in_budget "TLS"; then
  T_TLS=$(now)
  tls_start
  for t in "${TLS_TARGETS[@]}"; do tls_alive "$t" && in_budget "TLS $t idle" && test_tls_idle "$t"; done
  for how in new reuse; do
    for t in "${TLS_TARGETS[@]}"; do tls_alive "$t" && in_budget "TLS $t handshakes" && test_tls_hs "$t" "$how"; done
  done
  for t in "${TLS_TARGETS[@]}"; do tls_alive "$t" && in_budget "TLS $t echo" && test_tls_echo "$t"; done
  [ -n "${TPID[linkd]:-}" ] && R[linkd.tls_resumed_total]=$(tls_metric linkd_tls_resumed_total)
  # what mbedTLS keeps per idle connection, block by block (in-memory handshakes)
  timeout 60 "$B/tlsmem" "$TMP/tls.crt" "$TMP/tls.key" 200 >"$TMP/tlsmem.out" 2>&1 || say "tlsmem: $(tail -n 2 "$TMP/tlsmem.out")"
  R[linkd.tls_secs]=$(awk -v s="$T_TLS" -v e="$(now)" 'BEGIN{printf "%.0f", e-s}')
fi

# ---------- the table
v() { local x=${R[$1]:-}; echo "${x:-n/a}"; }
ratio() {
  local a=${R[linkd.$1]:-} b=${R[peer.$1]:-}
  a=${a%%(*}; b=${b%%(*}
  if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk -v b="$b" 'BEGIN{exit !(b>0)}'; then
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}'
  else echo "-"; fi
}
per_conn() {  # KiB per idle connection
  local t=$1 a=${R[$1.rss0]:-} b=${R[$1.rss_n]:-} n=${R[$1.conn]:-}
  if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $n =~ ^[0-9]+$ && $n -gt 0 ]]; then
    R[$t.kib_conn]=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN{printf "%.2f", (b-a)/n}')
  fi
}
per_conn linkd; per_conn peer
tls_per_conn() {
  local t=$1 a=${R[$1.tls_rss0]:-} b=${R[$1.tls_rss_n]:-} n=${R[$1.tls_conn]:-}
  if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $n =~ ^[0-9]+$ && $n -gt 0 ]]; then
    R[$t.tls_kib_conn]=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN{printf "%.2f", (b-a)/n}')
  fi
}
tls_per_conn linkd; tls_per_conn peer
per_conn rec
row() { printf '| %-44s | %14s | %14s | %10s |\n' "$1" "$(v "linkd.$2")" "$(v "peer.$2")" "$(ratio "$2")"; }

echo
echo "Linkd benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m); peer: Node $(node --version 2>/dev/null) + ws"
echo "(N=$N connections; echo: $ECHO_C connections x $ECHO_D in flight for ${ECHO_T}s, median of $ECHO_RUNS runs; fan-out: median of $ROUNDS; wrk -t2 -c$WRK_C -d${WRK_T}s)"
printf '| %-44s | %14s | %14s | %10s |\n' "figure" "linkd" "peer (ws)" "linkd/peer"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 46))" "$(printf -- '-%.0s' $(seq 16))" "$(printf -- '-%.0s' $(seq 16))" "$(printf -- '-%.0s' $(seq 12))"
row "RSS at 0 connections (KiB)" rss0
row "RSS at $N idle connections (KiB)" rss_n
row "KiB per idle connection" kib_conn
row "RSS at $N connections after fan-out (KiB)" rss_used
row "connections opened" conn
row "time to open them (s)" connect_s
row "fan-out to $N room members, median (ms)" fan
row "echo msgs/s" echo
row "echo: server CPU (% of one core)" echo_cpu
row "echo p50 latency (ms)" p50
row "echo p99 latency (ms)" p99
row "HTTP GET /health req/s" http_health
row "HTTP GET /bench/hello req/s (linkd: via svc)" http_route
row "RSS after the run, idle (KiB)" rss_end
if [ -n "${R[rec.conn]:-}" ]; then
  # linkd with recovery on against linkd with it off (the linkd column above)
  rrow() {
    local a=${R[rec.$2]:-} b=${R[linkd.$2]:-} r="-"
    if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && awk -v b="$b" 'BEGIN{exit !(b>0)}'; then
      r=$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')
    fi
    printf '| %-44s | %14s | %14s | %10s |\n' "$1" "$(v "rec.$2")" "(off) $(v "linkd.$2")" "on/off $r"
  }
  rrow "recovery on: KiB per idle connection" kib_conn
  rrow "recovery on: fan-out to $N members (ms)" fan
  rrow "recovery on: RSS after fan-out (KiB)" rss_used
fi
if [ "${#TLS_TARGETS[@]}" -gt 0 ]; then
  row "TLS: RSS, fresh process, 0 connections (KiB)" tls_rss0
  row "TLS: RSS at $N idle wss:// conns (KiB)" tls_rss_n
  row "TLS: KiB per idle wss:// connection" tls_kib_conn
  row "TLS: wss:// connections opened" tls_conn
  row "TLS: time to open them (s)" tls_connect_s
  row "TLS: full handshakes/s (2 x s_time -new)" tls_hs_new
  row "TLS: server CPU per full handshake (ms)" tls_hs_new_cpu
  row "TLS: resumed handshakes/s (s_time -reuse)" tls_hs_reuse
  row "TLS: server CPU per resumed handshake (ms)" tls_hs_reuse_cpu
  row "TLS: echo msgs/s over wss://" tls_echo
  row "TLS: wss:// echo / ws:// echo (same server)" tls_echo_vs_ws
  row "TLS: echo server CPU (% of one core)" tls_echo_cpu
  row "TLS: echo p50 latency (ms)" tls_p50
  row "TLS: echo p99 latency (ms)" tls_p99
fi
echo
echo "fan-out rounds (ms/members reached): linkd $(v linkd.fan_each); peer $(v peer.fan_each)"
echo "echo runs (msgs/s): linkd $(v linkd.echo_runs); peer $(v peer.echo_runs); errors in the median run: linkd $(v linkd.echo_err), peer $(v peer.echo_err)"
echo "linkd's figures are linkd alone; the bench service (C++, nanopb, on the Unix socket) used $(v linkd.svc_cpu)% of a core during echo and $(v linkd.svc_rss) KiB at $N connections. The peer is one Node process serving everything itself."
echo "load average (1 min) when each target started: linkd $(v linkd.load), peer $(v peer.load); other work on the machine skews the figures."
[ -n "${R[rec.conn]:-}" ] && echo "recovery: a fresh linkd, the bench path with recovery $REC_SPEC (window ms:pushes kept per room); fan-out rounds $(v rec.fan_each); history held after the rounds: $(v rec.hist) bytes; load average when it started: $(v rec.load)."
if [ "${#TLS_TARGETS[@]}" -gt 0 ]; then
  echo "TLS: fresh processes (linkd with its own benchsvc; peer: Node https + ws), TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256, EC P-256 certificate; idle wss:// connections opened by loadws (mbedTLS client) resuming the first one's session (linkd: $(v linkd.tls_resumed_n) of $(v linkd.tls_conn) resumed; peer: $(v peer.tls_resumed_n) of $(v peer.tls_conn)); at $N idle, linkd had $(v linkd.tls_open) TLS connections and $(v linkd.tls_pooled) record-buffer pairs pooled. Load average when the idle runs started: linkd $(v linkd.tls_load), peer $(v peer.tls_load). TLS rows took $(v linkd.tls_secs) s."
  [ -s "$TMP/tlsmem.out" ] && sed 's/^/tlsmem: /' "$TMP/tlsmem.out"
fi
awk -v s="$T_START" -v e="$(now)" 'BEGIN{printf "bench: done in %.0f s\n", e-s}' >&2
exit 0
