#!/usr/bin/env bash
# Failure proof: 10,000 WebSocket connections churning. tests/bench/loadws
# (churn mode) keeps 10,000 slots busy: each opens a connection, joins one of
# 100 rooms through the bench service (tests/bench/benchsvc, a reply after
# the join), holds it a random time up to 3 s, closes it (in turn: close
# handshake, FIN without a close frame, RST) and opens again. Two rounds of
# CHURN_S seconds. Checked: every connection opened and got its reply, none was
# refused or closed by linkd; afterwards every connection, membership and room
# is gone; linkd's RSS (VmRSS) does not grow from one round to the next (no
# leak), and is back within a few MiB of its baseline: what stays resident is
# the high-water mark of the connection/room tables' touched pages and of the
# heap, ~0.5 KiB per connection open at the peak. Prints:
#   # churn: N connections opened, RSS baseline X KiB, peak Y KiB, after Z KiB
. "$(dirname "$0")/lib.sh"

SLOTS=$(( 10000 / T_SLOW ))          # 10,000 natively; 2,000 under valgrind/qemu
CHURN_S=${CHURN_S:-10}                # seconds per round
ROUNDS=2
GROWTH_KIB=1024                       # round 2 may end at most this much above round 1
# After the connections are gone linkd gives back what they used (tables_trim,
# every 2 s: table pages above the highest slot in use, empty hash indexes,
# the wslay/TLS pools, the freed heap): RSS must come back to within
# BACK_KIB of the baseline, what stays being code pages first run by the
# churn and heap fragments.
BACK_KIB=1536
case "${LINKD_CMD:-}" in *qemu*) BACK_KIB=6144 ;; esac   # qemu's own translation caches grow too
SAN=0
case "${LINKD_CMD:-}" in *asan*) SAN=1 ;; esac
VALGRIND=0
case "${LINKD_CMD:-}" in *valgrind*) VALGRIND=1 ;; esac
if [ "$SAN" = 1 ]; then
  # ASan keeps freed blocks in a quarantine (256 MiB by default) before reuse:
  # a small one, so that RSS measures linkd's memory and not the quarantine's.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=8:thread_local_quarantine_size_kb=64"
  GROWTH_KIB=$((8 * 1024)); BACK_KIB=$((64 * 1024))
fi

# ---------- the tools (as tests/bench/run.sh builds them), rebuilt when stale
B=$ROOT/build/bench
mkdir -p "$B"
stale() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null)" ]; }
build() {   # build OUT CMD... : into a temporary file, then in place (atomic)
  local out=$1; shift
  "$@" -o "$out.tmp.$$" >"$T_TMP/build.log" 2>&1 && mv -f "$out.tmp.$$" "$out" && return 0
  rm -f "$out.tmp.$$"
  fail "build $(basename "$out")" "$(tail -n 5 "$T_TMP/build.log" | tr '\n' ' ' | cut -c1-300)"
  return 1
}
if stale "$B/linkd.pb.o" "$ROOT/proto/linkd.proto" "$ROOT/proto/linkd.options"; then
  mkdir -p "$T_TMP/pb"
  protoc --plugin=protoc-gen-nanopb=/usr/bin/protoc-gen-nanopb -I"$ROOT/proto" \
    --nanopb_opt=-f"$ROOT/proto/linkd.options" --nanopb_out="$T_TMP/pb" "$ROOT/proto/linkd.proto" \
    && cp "$T_TMP/pb/linkd.pb.h" "$T_TMP/pb/linkd.pb.c" "$B/" \
    && build "$B/linkd.pb.o" gcc -O2 -I"$B" -c "$B/linkd.pb.c" || exit 0
fi
if stale "$B/loadws" "$TESTS/bench/loadws.c++"; then
  build "$B/loadws" g++ -O2 -std=c++20 -Wall -Wextra "$TESTS/bench/loadws.c++" -luv -lwslay -lmbedtls -lmbedx509 -lmbedcrypto || exit 0
fi
if stale "$B/benchsvc" "$TESTS/bench/benchsvc.c++" "$B/linkd.pb.o"; then
  build "$B/benchsvc" g++ -O2 -std=c++20 -Wall -Wextra -I"$B" "$TESTS/bench/benchsvc.c++" "$B/linkd.pb.o" \
    -l:libprotobuf-nanopb.a || exit 0
fi

# ---------- linkd and the bench service
linkd_start --max-connections $((SLOTS + 2000)) --max-memberships $((SLOTS * 2 + 1000)) --max-rooms 1000 \
  --log-level warn || exit 0
"$B/benchsvc" "$LINKD_SOCK" /ws/churn >"$T_TMP/svc.out" 2>"$T_TMP/svc.err" &
track $!
wait_for 10 grep -q registered "$T_TMP/svc.out" || { fail "the bench service registers" "$(tail -n 3 "$T_TMP/svc.err")"; exit 0; }

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$LINKD_PID/status"; }
rss_back() { [ "$(rss)" -le $((base + BACK_KIB)) ]; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$LINKD_PID/status"; }
field() { tr ' ' '\n' <"$2" | awk -F= -v k="$1" '$1==k {print $2}' | tail -n 1; }
all_gone() { metric_is linkd_ws_connections 0 && metric_is linkd_memberships 0 && metric_is linkd_rooms 0; }
base=$(rss)
total=0
max_open=0
declare -a AFTER
for r in $(seq "$ROUNDS"); do
  out=$T_TMP/churn.$r
  timeout -k 5 $((CHURN_S + 60 * T_SLOW)) "$B/loadws" --url "ws://127.0.0.1:$LINKD_PORT/ws/churn" -n "$SLOTS" \
    -t "$CHURN_S" --churn-hold 3 --churn-rooms 100 --concurrency 500 --src-ips 8 \
    --timeout $((CHURN_S + 50 * T_SLOW)) -q churn >"$out" 2>"$out.err"
  rc=$?
  res=$(grep '^RESULT churn' "$out")
  opened=$(field opened "$out"); opened=${opened:-0}
  total=$((total + opened))
  log "round $r: ${res#RESULT } $(grep first_error "$out" | cut -c1-200)"
  expect_match "round $r: loadws churned and reported (exit $rc)" "$rc $res" '^0 RESULT churn'
  check "round $r: connections opened ($opened), each one answered, none refused or closed by linkd" \
    test "$opened" -gt 0 -a "$(field exchanged "$out")" = "$opened" -a "$(field failed "$out")" = 0 \
      -a "$(field error_replies "$out")" = 0 -a "$(field closed_by_server "$out")" = 0 -a "$(field live "$out")" = 0
  check "round $r: afterwards every connection, membership and room is gone" wait_for $((10 * T_SLOW)) all_gone
  # linkd gives table pages, pools and freed heap back every 2 s (tables_trim)
  [ "$VALGRIND" = 1 ] || wait_for $((6 * T_SLOW)) rss_back   # (valgrind's RSS never comes back: no wait)
  AFTER[$r]=$(rss)
  mo=$(field max_open "$out"); mo=${mo:-0}
  [ "$mo" -gt "$max_open" ] && max_open=$mo
  log "round $r: at most $mo open at once; linkd RSS after: ${AFTER[$r]} KiB"
done
peak=$(hwm)
after=${AFTER[$ROUNDS]}
echo "# churn: $total connections opened (at most $max_open at once), RSS baseline $base KiB, peak $peak KiB, after $after KiB (after round 1: ${AFTER[1]} KiB)"
if [ "$VALGRIND" = 1 ]; then
  pass "RSS bounds (skipped under valgrind: its RSS is valgrind's shadow memory and freed-block queue; its leak check at exit covers leaks)"
else
  check "RSS does not grow from one round to the next: ${AFTER[1]} -> $after KiB (at most +$GROWTH_KIB)" \
    test "$after" -le $((AFTER[1] + GROWTH_KIB))
  check "churn: $total connections opened ($max_open at once), RSS baseline $base KiB, peak $peak KiB, after $after KiB: back within $BACK_KIB KiB of the baseline" \
    test "$after" -le $((base + BACK_KIB))
fi
http GET /health
expect_eq "linkd still answers /health" "$HTTP_STATUS" 200
exit 0
