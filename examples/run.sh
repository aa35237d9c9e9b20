#!/usr/bin/env bash
# `make run`: builds what is missing, starts ./linkd (default flags, service
# socket ./run/linkd.sock) and the chat example, prints the URL, and stops
# both on Ctrl-C / SIGTERM.
#   LINKD_LISTEN=127.0.0.1:8080 examples/run.sh    # another address (linkd reads LINKD_*)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
RUN=$ROOT/run
SOCK=$RUN/linkd.sock
LISTEN=${LINKD_LISTEN:-0.0.0.0:3000}
PORT=${LISTEN##*:}
mkdir -p "$RUN"

say() { echo "run: $*" >&2; }
die() { say "$*"; exit 1; }

# --- build -----------------------------------------------------------------------
read -r -a LINKD <<< "${LINKD_CMD:-./linkd}"   # LINKD_CMD: another binary or emulator line
[ -n "${LINKD_CMD:-}" ] || [ -x ./linkd ] || make linkd >&2 || die "building linkd failed"
command -v npm >/dev/null || die "npm not found: run 'make deps' (Debian's nodejs and npm)"
# better-sqlite3 compiles with node-gyp: Debian's Node.js headers, no download
[ -f /usr/include/node/node.h ] && export npm_config_nodedir=${npm_config_nodedir:-/usr}
npm_ready() {   # npm ci where node_modules is missing or older than the lock file
  if [ ! -f "$1/node_modules/.package-lock.json" ] || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
    say "installing npm dependencies in ${1#$ROOT/} (first run: about a minute)"
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed in $1"
  fi
}
ts_build() {    # npm run build where dist/ is missing or older than the sources
  if [ ! -d "$1/dist" ] || [ -n "$(find "$1/src" "$1/package.json" -newer "$1/dist" -print -quit)" ]; then
    (cd "$1" && rm -rf dist && npm run --silent build) >&2 || die "build failed in $1"
  fi
}
npm_ready sdk/typescript && ts_build sdk/typescript
npm_ready examples/chat && ts_build examples/chat

# --- start -------------------------------------------------------------------------
LINKD_PID= CHAT_PID=
stop() {
  trap - INT TERM EXIT
  [ -n "$CHAT_PID" ] && kill -TERM "$CHAT_PID" 2>/dev/null
  [ -n "$LINKD_PID" ] && kill -TERM "$LINKD_PID" 2>/dev/null
  wait 2>/dev/null
  say "stopped"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

"${LINKD[@]}" --listen "$LISTEN" --socket "$SOCK" &
LINKD_PID=$!
for _ in $(seq 100); do
  curl -sf -m 1 -o /dev/null "http://127.0.0.1:$PORT/health" && break
  kill -0 "$LINKD_PID" 2>/dev/null || die "linkd exited"
  sleep 0.1
done
curl -sf -m 1 -o /dev/null "http://127.0.0.1:$PORT/health" || die "linkd did not answer on port $PORT"

LINKD_SOCKET=$SOCK CHAT_DB=$RUN/chat.db node examples/chat/dist/main.js &
CHAT_PID=$!
for _ in $(seq 100); do
  curl -sf -m 1 "http://127.0.0.1:$PORT/chat/ready" 2>/dev/null | grep -q true && break
  kill -0 "$CHAT_PID" 2>/dev/null || die "the chat service exited"
  sleep 0.1
done

echo
echo "  Linkd chat: http://localhost:$PORT/   (WebSocket ws://localhost:$PORT/ws/chat)"
echo "  Ctrl-C stops linkd and the chat service."
echo
wait -n "$LINKD_PID" "$CHAT_PID"
say "a process exited"
