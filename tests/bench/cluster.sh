#!/usr/bin/env bash
# make bench-cluster: cluster mode's figures (issue 13), one run, loopback only.
#
#   fan-out  N members in one room, one push to it from benchsvc (triggered by
#            member 0), time until the last member has it, median of R rounds:
#              alone    a linkd without --nats-url, N members
#              1 node   cluster node a, all N members on a (b has none)
#              2 nodes  N/2 on a, N/2 on b (the trigger on a; a's benchsvc pushes)
#   rate     K pushes back to back from a's benchsvc (K triggers from one
#            client on a) to a room of M members: on a itself, then on b
#            (every push crosses NATS): pushes/s and deliveries/s until every
#            member had all K
#   NATS     for every step, linkd_cluster_published_total on a and
#            linkd_cluster_received_total on b before and after: one NATS
#            message per push per node with members, never one per member
#            (the deltas also hold the hellos, one a second per node)
#
# Every server runs for the whole bench (nats-server, linkd alone, nodes a and
# b, a benchsvc on each); clusterfan (tests/bench/clusterfan.c++) is the client.
# Knobs: BENCH_N=10000 BENCH_ROUNDS=7 BENCH_RATE_M=10 BENCH_RATE_K=20000,
# LINKD_CMD (another linkd binary). Stops everything it started; never fails on
# a time (exit 1 only when something could not run at all).
BENCH_NAME=bench-cluster
. "$(dirname "$0")/lib.sh"
N=${BENCH_N:-10000}
ROUNDS=${BENCH_ROUNDS:-7}
RATE_M=${BENCH_RATE_M:-10}
RATE_K=${BENCH_RATE_K:-20000}

# ---------- tools (helpers: tests/bench/lib.sh)
bench_build benchsvc clusterfan
command -v nats-server >/dev/null || { say "nats-server not found (make deps)"; exit 1; }

metric() { curl -s -m 5 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2; exit }'; }
metric_is() { [ "$(metric "$1" "$2")" = "$3" ]; }
declare -A R PORT PID

# ---------- servers
NP=$(free_port)
nats-server -a 127.0.0.1 -p "$NP" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
wait_for 10 $PY -c "import socket; socket.create_connection(('127.0.0.1', $NP), 1)" || { say "nats-server did not start"; exit 1; }
# server NAME [flags]: linkd + benchsvc
server() {
  local name=$1; shift
  PORT[$name]=$(free_port)
  "${LINKD[@]}" --listen "127.0.0.1:${PORT[$name]}" --socket "$TMP/$name.sock" \
    --max-connections $((N + 2000)) --max-memberships $((N * 2 + 1000)) --max-rooms 1000 \
    --max-connections-per-user 0 --max-connections-per-ip 0 --rate-limit 0 --max-outbound 64m \
    --log-level warn "$@" >"$TMP/linkd-$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("${PID[$name]}")
  wait_for 10 curl -sf -m 1 -o /dev/null "http://127.0.0.1:${PORT[$name]}/health" && wait_for 5 test -S "$TMP/$name.sock" \
    || { say "linkd $name did not start: $(tail -n 3 "$TMP/linkd-$name.log" | tr '\n' ' ')"; exit 1; }
  "$B/benchsvc" "$TMP/$name.sock" "$WSPATH" >"$TMP/svc-$name.out" 2>"$TMP/svc-$name.err" &
  PIDS+=($!)
  wait_for 10 grep -q registered "$TMP/svc-$name.out" || { say "benchsvc on $name did not register"; exit 1; }
}
server alone
server a --nats-url "nats://127.0.0.1:$NP" --node-id bench-a
server b --nats-url "nats://127.0.0.1:$NP" --node-id bench-b
wait_for 10 metric_is "${PORT[a]}" linkd_cluster_nodes 1 && wait_for 5 metric_is "${PORT[b]}" linkd_cluster_nodes 1 \
  || { say "nodes a and b do not see each other"; exit 1; }

# NATS counters around a step: nats_before / nats_after KEY
nats_before() { R[t0]=$(now); R[pa0]=$(metric "${PORT[a]}" linkd_cluster_published_total); R[rb0]=$(metric "${PORT[b]}" linkd_cluster_received_total); }
nats_after() {
  R[$1.pub_a]=$(( $(metric "${PORT[a]}" linkd_cluster_published_total) - R[pa0] ))
  R[$1.recv_b]=$(( $(metric "${PORT[b]}" linkd_cluster_received_total) - R[rb0] ))
  R[$1.secs]=$(awk -v s="${R[t0]}" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}')
}
drained() { [ "$(metric "$1" linkd_ws_connections)" = 0 ]; }

# ---------- fan-out
# Two passes, the second in the opposite order (a step right after another
# pays for the previous step's 10k closes and TIME_WAITs), a pause between
# steps; every figure is the median of the rounds of both passes.
fan() {  # fan KEY PASS PORTS...
  local key=$1 pass=$2; shift 2
  local ports p
  ports=$(IFS=,; echo "$*")
  R[$key.load]="${R[$key.load]:+${R[$key.load]}, }$(cut -d' ' -f1 /proc/loadavg)"
  nats_before
  timeout 200 "$B/clusterfan" --ports "$ports" -n "$N" -r "$ROUNDS" --path "$WSPATH" fanout >"$TMP/$key.$pass.out" 2>"$TMP/$key.$pass.err" \
    || say "$key: clusterfan: $(tail -n 2 "$TMP/$key.$pass.err" | tr '\n' ' ')"
  nats_after "$key.$pass"
  R[$key.pub_a]=$(( ${R[$key.pub_a]:-0} + R[$key.$pass.pub_a] ))
  R[$key.recv_b]=$(( ${R[$key.recv_b]:-0} + R[$key.$pass.recv_b] ))
  R[$key.secs]=$(awk -v a="${R[$key.secs]:-0}" -v b="${R[$key.$pass.secs]}" 'BEGIN{printf "%.1f", a+b}')
  for p in "$@"; do
    for s in alone a b; do [ "${PORT[$s]}" = "$p" ] && { wait_for 60 drained "$p" || say "$s still has connections"; }; done
  done
  sleep 2
}
# rmed KEY FIELD: median of FIELD over the ROUND lines of both passes (n/a if none)
rmed() {
  cat "$TMP/$1".*.out 2>/dev/null | grep '^ROUND' | tr ' ' '\n' | awk -F= -v k="$2" '$1==k && $2>=0 {print $2}' | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "%.1f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2); else print "n/a"}'
}
rall() { cat "$TMP/$1".*.out 2>/dev/null | grep '^ROUND' | tr ' ' '\n' | awk -F= '$1=="total_ms" {printf "%s%.0f", (n++?",":""), $2}'; }
say "fan-out to $N: alone, 1 node, 2 nodes, then 2 nodes, 1 node, alone ($ROUNDS rounds each)"
fan alone 1 "${PORT[alone]}"
fan one 1 "${PORT[a]}"
fan two 1 "${PORT[a]}" "${PORT[b]}"
fan two 2 "${PORT[a]}" "${PORT[b]}"
fan one 2 "${PORT[a]}"
fan alone 2 "${PORT[alone]}"
for k in alone one two; do
  R[$k.ms]=$(rmed "$k" total_ms); R[$k.first]=$(rmed "$k" first_ms); R[$k.each]=$(rall "$k")
  R[$k.first0]=$(rmed "$k" port0_first_ms); R[$k.last0]=$(rmed "$k" port0_last_ms)
  R[$k.first1]=$(rmed "$k" port1_first_ms); R[$k.last1]=$(rmed "$k" port1_last_ms)
done

# ---------- rate
rate() {  # rate KEY TRIGGER_PORT MEMBERS_PORT
  local key=$1
  R[$key.load]=$(cut -d' ' -f1 /proc/loadavg)
  nats_before
  timeout 120 "$B/clusterfan" --trigger "$2" --members "$3" -m "$RATE_M" -k "$RATE_K" --path "$WSPATH" --room "rate-$key" rate \
    >"$TMP/$key.out" 2>"$TMP/$key.err" || say "$key: clusterfan: $(tail -n 2 "$TMP/$key.err" "$TMP/$key.out" | tr '\n' ' ')"
  nats_after "$key"
  R[$key.pps]=$(field pushes_per_s "$TMP/$key.out")
  R[$key.dps]=$(field deliveries_per_s "$TMP/$key.out")
  R[$key.delivered]=$(field delivered "$TMP/$key.out")
  R[$key.ms]=$(field ms "$TMP/$key.out")
  wait_for 30 drained "$2"; wait_for 30 drained "$3"
}
say "rate: $RATE_K pushes to $RATE_M members, same node then across nodes"
rate rlocal "${PORT[a]}" "${PORT[a]}"
rate rcross "${PORT[a]}" "${PORT[b]}"
for s in alone a b; do kill -0 "${PID[$s]}" 2>/dev/null || say "linkd $s is gone: $(tail -n 3 "$TMP/linkd-$s.log" | tr '\n' ' ')"; done
R[dropped]=$(( $(metric "${PORT[a]}" linkd_cluster_dropped_total) + $(metric "${PORT[b]}" linkd_cluster_dropped_total) ))

# ---------- the table
v() { local x=${R[$1]:-}; echo "${x:-n/a}"; }
echo
echo "Linkd cluster benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m); nats-server $(nats-server --version 2>/dev/null | awk '{print $2}'), all on loopback"
echo "(fan-out: $N members, median of 2 x $ROUNDS rounds (two passes, opposite orders); rate: $RATE_K pushes back to back to $RATE_M members)"
printf '| %-52s | %15s | %19s | %19s | %11s |\n' "step" "result" "a published (NATS)" "b received (NATS)" "load avg"
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 54))" "$(printf -- '-%.0s' $(seq 17))" "$(printf -- '-%.0s' $(seq 21))" "$(printf -- '-%.0s' $(seq 21))" "$(printf -- '-%.0s' $(seq 13))"
row() { printf '| %-52s | %15s | %19s | %19s | %11s |\n' "$1" "$2" "$3" "$4" "$5"; }
row "fan-out to $N, linkd alone (no --nats-url), ms" "$(v alone.ms)" "-" "-" "$(v alone.load)"
row "fan-out to $N, all on node a (cluster), ms" "$(v one.ms)" "$(v one.pub_a) in $(v one.secs) s" "$(v one.recv_b) in $(v one.secs) s" "$(v one.load)"
row "fan-out to $N split over a and b, ms" "$(v two.ms)" "$(v two.pub_a) in $(v two.secs) s" "$(v two.recv_b) in $(v two.secs) s" "$(v two.load)"
row "  first member on a / on b, ms" "$(v two.first0) / $(v two.first1)" "" "" ""
row "  last member on a / on b, ms" "$(v two.last0) / $(v two.last1)" "" "" ""
row "pushes/s, $RATE_M members on the pushing node a" "$(v rlocal.pps)" "$(v rlocal.pub_a) in $(v rlocal.secs) s" "$(v rlocal.recv_b) in $(v rlocal.secs) s" "$(v rlocal.load)"
row "pushes/s, $RATE_M members on b (every push crosses NATS)" "$(v rcross.pps)" "$(v rcross.pub_a) in $(v rcross.secs) s" "$(v rcross.recv_b) in $(v rcross.secs) s" "$(v rcross.load)"
row "  deliveries/s on a (local) / on b (across)" "$(v rlocal.dps) / $(v rcross.dps)" "" "" ""
echo
echo "fan-out rounds (ms): alone $(v alone.each); 1 node $(v one.each); 2 nodes $(v two.each)"
echo "until the first member had it (median, ms): alone $(v alone.first), 1 node $(v one.first), 2 nodes $(v two.first)"
echo "rate: delivered $(v rlocal.delivered) (local, $(v rlocal.ms) ms) and $(v rcross.delivered) (across, $(v rcross.ms) ms) of $((RATE_K * RATE_M))"
echo "NATS messages per push: fan-out $((2 * ROUNDS)) pushes per step (+ about one hello a second per node in every count);"
echo "  rate: $RATE_K pushes -> a published $(v rcross.pub_a), b received $(v rcross.recv_b) (members on b: $RATE_M); members on a only: b received $(v rlocal.recv_b)."
echo "linkd_cluster_dropped_total on a and b at the end: $(v dropped)"
awk -v s="$T_START" -v e="$(now)" 'BEGIN{printf "bench-cluster: done in %.0f s\n", e-s}' >&2
exit 0
