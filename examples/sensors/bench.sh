#!/usr/bin/env bash
# Figures for the README's Edge kit section (not a test: it never fails on a
# number). For each sampling interval (1 s, then 100 ms): a fresh linkd and
# the sensors service (build/sensors/linkd-sensors), N dashboards connected
# with tests/bench/loadws (idle mode: each joins the room "sensors" through
# the service and reads every push), then over a window of T seconds:
#   the service's CPU (user+system time / wall time) and RSS (VmRSS, VmHWM),
#   linkd's CPU and RSS, and the pushes linkd delivered (linkd_ws_messages_out_total).
# Then the sizes: the service's static binaries for arm64/armhf (make cross),
# the same linked against the shared glibc (what the service, the library and
# nanopb weigh), and the .deb packages (make deb).
#   examples/sensors/bench.sh            # N=1000 T=30
#   N=2000 T=20 examples/sensors/bench.sh
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
N=${N:-1000}
T=${T:-30}
B=build/bench
TMP=$(mktemp -d /tmp/sensors-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

make -s linkd build/sensors/linkd-sensors >&2 || exit 1
mkdir -p "$B"
if [ ! -x "$B/loadws" ] || [ tests/bench/loadws.c++ -nt "$B/loadws" ]; then
  g++ -O2 -std=c++20 -Wall -Wextra tests/bench/loadws.c++ -o "$B/loadws" -luv -lwslay -lmbedtls -lmbedx509 -lmbedcrypto || exit 1
fi

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }          # utime + stime, clock ticks
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
HZ=$(getconf CLK_TCK)

round() {   # round INTERVAL_MS
  local iv=$1 p sock lp sp wp t0 c0s c0l m0 t1 c1s c1l m1
  p=$(port); sock=$TMP/linkd-$iv.sock
  ./linkd --listen "127.0.0.1:$p" --socket "$sock" --max-connections $((N + 100)) --max-connections-per-user 0 \
    --log-level warn >"$TMP/linkd-$iv.log" 2>&1 &
  lp=$!; PIDS+=("$lp")
  for _ in $(seq 100); do curl -sf -m 1 -o /dev/null "http://127.0.0.1:$p/health" && break; sleep 0.1; done
  build/sensors/linkd-sensors --socket "$sock" --interval-ms "$iv" >/dev/null 2>"$TMP/sensors-$iv.log" &
  sp=$!; PIDS+=("$sp")
  for _ in $(seq 100); do curl -sf -m 1 -o /dev/null "http://127.0.0.1:$p/api/sensors/config" && break; sleep 0.1; done
  sleep 2
  local idle_rss; idle_rss=$(kib "$sp" VmRSS)
  "$B/loadws" --url "ws://127.0.0.1:$p/ws/sensors" -n "$N" --ready "$TMP/ready-$iv" --hold $((T + 30)) -q idle \
    >"$TMP/loadws-$iv.out" 2>&1 &
  wp=$!; PIDS+=("$wp")
  for _ in $(seq 600); do [ -s "$TMP/ready-$iv" ] && break; sleep 0.1; done
  sleep 2   # the joins are done, pushes flow
  t0=$(date +%s%N); c0s=$(ticks "$sp"); c0l=$(ticks "$lp"); m0=$(metric "$p" linkd_ws_messages_out_total)
  sleep "$T"
  t1=$(date +%s%N); c1s=$(ticks "$sp"); c1l=$(ticks "$lp"); m1=$(metric "$p" linkd_ws_messages_out_total)
  local wall=$(( (t1 - t0) / 1000000 ))
  printf '%s\n' "interval_ms=$iv dashboards=$(sed -n 's/.*connected=\([0-9]*\).*/\1/p' "$TMP/ready-$iv") window_s=$((wall / 1000))" \
    "  service: cpu=$(awk -v c=$((c1s - c0s)) -v hz="$HZ" -v w="$wall" 'BEGIN{printf "%.2f%%", 100*c/hz/(w/1000)}') rss=$(kib "$sp" VmRSS)KiB hwm=$(kib "$sp" VmHWM)KiB idle_rss_before_dashboards=${idle_rss}KiB" \
    "  linkd:   cpu=$(awk -v c=$((c1l - c0l)) -v hz="$HZ" -v w="$wall" 'BEGIN{printf "%.2f%%", 100*c/hz/(w/1000)}') rss=$(kib "$lp" VmRSS)KiB" \
    "  pushes delivered: $(awk -v d=$((m1 - m0)) -v w="$wall" -v n="$N" 'BEGIN{printf "%.0f/s (%.2f per dashboard per second)", d/(w/1000), d/(w/1000)/n}')"
  kill -TERM "$wp" "$sp" 2>/dev/null; wait "$wp" "$sp" 2>/dev/null
  kill -TERM "$lp" 2>/dev/null; wait "$lp" 2>/dev/null
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
round 1000
round 100

echo "sizes (stripped):"
for a in aarch64 armhf; do
  make -s cross ARCH=$a >/dev/null 2>&1 || { echo "  make cross ARCH=$a failed"; continue; }
  d=build/cross-$a
  cc=$(sed -n 's/^CROSS_TRIPLE_'$a' *:= *//p' cross/cross.mk)-gcc
  mf=""; [ $a = armhf ] && mf=-mthumb
  "$cc" -std=c99 -Os -flto=auto -ffunction-sections -fdata-sections $mf -Isdk/c -I$d/sdk_c examples/sensors/sensors.c \
    -s -Wl,--gc-sections -L$d -llinkd_service -lnanopb -lm -o "$TMP/sensors-dyn-$a" 2>/dev/null
  printf '  linkd-sensors %-8s static %7d bytes; against the shared glibc %7d bytes\n' "$a" \
    "$(stat -c %s $d/linkd-sensors)" "$(stat -c %s "$TMP/sensors-dyn-$a" 2>/dev/null || echo 0)"
done
make -s deb >/dev/null 2>&1 && for f in build/deb/*.deb; do printf '  %-32s %7d bytes (Installed-Size %s KiB)\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(dpkg-deb -f "$f" Installed-Size)"; done
