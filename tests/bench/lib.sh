# Shared by the bench scripts (run.sh, peers.sh, cluster.sh), sourced once
# each has set BENCH_NAME (its prefix in messages and in its scratch dir).
# Sets ROOT HERE B LINKD PY WSPATH, TMP (removed at exit, copied to
# BENCH_KEEP=DIR first when set) and PIDS (what the script started: TERM at
# exit, KILL after 2 s), and the helpers below.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/bench
B=$ROOT/build/bench
read -r -a LINKD <<< "${LINKD_CMD:-$ROOT/linkd}"
WSPATH=/ws/bench
PY=/usr/bin/python3

TMP=$(mktemp -d "/tmp/linkd-$BENCH_NAME.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  [ -n "${BENCH_KEEP:-}" ] && { mkdir -p "$BENCH_KEEP" && cp -r "$TMP"/. "$BENCH_KEEP"/ 2>/dev/null; }
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
say() { echo "$BENCH_NAME: $*" >&2; }
now() { date +%s.%N; }
T_START=$(now)
ulimit -n "$(ulimit -Hn)" 2>/dev/null

# bench_build TOOL...: builds what is older than its source under $B (exits on
# a failed build). Tools: loadws baresrv tlsmem clusterfan benchsvc (which
# brings the nanopb code of proto/linkd.proto).
newer() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null)" ]; }
bench_build() {
  local t tls=(-luv -lwslay -lmbedtls -lmbedx509 -lmbedcrypto)
  mkdir -p "$B"
  for t in "$@"; do
    case $t in
      benchsvc)
        if newer "$B/linkd.pb.c" "$ROOT/proto/linkd.proto" "$ROOT/proto/linkd.options"; then
          protoc --plugin=protoc-gen-nanopb=/usr/bin/protoc-gen-nanopb -I"$ROOT/proto" \
            --nanopb_opt=-f"$ROOT/proto/linkd.options" --nanopb_out="$B" "$ROOT/proto/linkd.proto" || exit 1
          gcc -O2 -I"$B" -c "$B/linkd.pb.c" -o "$B/linkd.pb.o" || exit 1
        fi
        newer "$B/benchsvc" "$HERE/benchsvc.c++" "$B/linkd.pb.o" || continue
        g++ -O2 -std=c++20 -Wall -Wextra -I"$B" "$HERE/benchsvc.c++" "$B/linkd.pb.o" -l:libprotobuf-nanopb.a -o "$B/benchsvc" || exit 1 ;;
      loadws | baresrv)
        newer "$B/$t" "$HERE/$t.c++" || continue
        g++ -O2 -std=c++20 -Wall -Wextra "$HERE/$t.c++" -o "$B/$t" "${tls[@]}" || exit 1 ;;
      tlsmem)
        newer "$B/$t" "$HERE/$t.c++" || continue
        g++ -O2 -std=c++20 -Wall -Wextra "$HERE/$t.c++" -o "$B/$t" "${tls[@]:2}" || exit 1 ;;
      clusterfan)
        newer "$B/$t" "$HERE/$t.c++" || continue
        g++ -O2 -std=c++20 -Wall -Wextra "$HERE/$t.c++" -o "$B/$t" || exit 1 ;;
      *) say "bench_build: no tool '$t'"; exit 1 ;;
    esac
  done
}

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# cpu_ticks PID...: user + system ticks of these processes, summed; rss_kib PID...: their RSS, summed
cpu_ticks() { local p s=0; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$s"; }
rss_kib() { local p s=0; for p in "$@"; do s=$((s + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$s"; }
wait_for() {  # wait_for SECONDS CMD...: polls every WAIT_STEP s (0.05)
  local end now; printf -v end '%(%s)T' -1; end=$((end + $1)); shift
  until "$@" >/dev/null 2>&1; do
    printf -v now '%(%s)T' -1; [ "$now" -ge "$end" ] && return 1; sleep "${WAIT_STEP:-0.05}"
  done
}
# pin CPUS PID...: every thread of these processes on these CPUs (taskset)
pin() { local c=$1 p; shift; for p in "$@"; do taskset -a -p -c "$c" "$p" >/dev/null 2>&1; done; }
established() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }   # connections to a local port
fewer_than() { [ "$(established "$1")" -lt "$2" ]; }
# field KEY FILE: value of KEY=... in loadws's (or clusterfan's) RESULT lines
field() { grep -h '^RESULT' "$2" 2>/dev/null | tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}' | tail -n 1; }
