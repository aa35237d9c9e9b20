#!/usr/bin/env bash
# Measures what README reports: stripped binary sizes and idle RSS.
#   make && make cross && make cross ARCH=x86_64 && cross/measure.sh
# Idle RSS = VmRSS of a linkd with default settings once /health answers (tables
# are allocated up front, so this is the steady idle footprint). Under qemu-user
# VmRSS includes the emulator itself, so the same emulator running a static
# "pause" program of the same architecture is measured too and subtracted.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TMP=$(mktemp -d /tmp/linkd-measure.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT

kib() { awk -v b="$1" 'BEGIN { printf "%.1f KiB", b / 1024 }'; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

echo "== stripped sizes"
for f in linkd linkd-x86_64 linkd-aarch64 linkd-armhf; do
  [ -f "$f" ] || { echo "$f: not built"; continue; }
  s=$f
  if [ "$f" = linkd ]; then strip -o "$TMP/linkd.stripped" linkd; s=$TMP/linkd.stripped; fi
  kind=$(readelf -lS "$f" | grep -qE 'INTERP' && echo dynamic || echo static)
  printf '%-14s %8d bytes  %10s  %s\n' "$f" "$(stat -c %s "$s")" "$(kib "$(stat -c %s "$s")")" "$kind"
done

# idle NAME CMD... : starts linkd, waits for /health, prints VmRSS
idle() {
  local name=$1; shift
  local port; port=$(free_port)
  "$@" --listen "127.0.0.1:$port" --socket "$TMP/$name.sock" >"$TMP/$name.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 200); do
    curl -sf -m 1 -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.05
  done
  local r; r=$(rss_kib "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
  echo "$r"
}
# baseline QEMU TRIPLE : VmRSS of the emulator running a static program that only pauses
baseline() {
  printf '#include <unistd.h>\nint main(void){pause();return 0;}\n' >"$TMP/pause.c"
  "$2-gcc" -static -Os -s "$TMP/pause.c" -o "$TMP/pause-$2" || return
  "$1" "$TMP/pause-$2" & local pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 40); do [ -n "$(rss_kib "$pid")" ] && [ "$(rss_kib "$pid")" -gt 0 ] && break; sleep 0.05; done
  sleep 0.3   # let the emulator finish loading (nothing to await on a program that only pauses)
  local r; r=$(rss_kib "$pid"); kill "$pid"; wait "$pid" 2>/dev/null; echo "$r"
}

echo "== idle RSS (default settings, after /health answers)"
[ -x linkd ] && echo "native linkd (dynamic):          $(idle native ./linkd) KiB"
[ -x linkd-x86_64 ] && echo "linkd-x86_64 (static, no qemu):  $(idle x86_64 ./linkd-x86_64) KiB"
for a in aarch64:qemu-aarch64-static:aarch64-linux-gnu armhf:qemu-arm-static:arm-linux-gnueabihf; do
  IFS=: read -r arch qemu triple <<<"$a"
  [ -x "linkd-$arch" ] || continue
  total=$(idle "$arch" "$qemu" "./linkd-$arch")
  base=$(baseline "$qemu" "$triple")
  echo "linkd-$arch under $qemu: ${total} KiB (emulator + static pause program alone: ${base} KiB; difference $((total - base)) KiB)"
done
