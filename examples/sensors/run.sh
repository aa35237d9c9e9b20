#!/usr/bin/env bash
# `make run-sensors`: starts ./linkd (with a JWT secret made for this run) and
# the sensors service (build/sensors/linkd-sensors), prints the dashboard's
# URL and an admin URL (a token with the role "admin", valid 12 hours), and
# stops both on Ctrl-C / SIGTERM.
#   LINKD_LISTEN=127.0.0.1:8080 examples/sensors/run.sh     # another address
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
RUN=$ROOT/run
SOCK=$RUN/linkd.sock
LISTEN=${LINKD_LISTEN:-0.0.0.0:3000}
PORT=${LISTEN##*:}
mkdir -p "$RUN"
say() { echo "run-sensors: $*" >&2; }
die() { say "$*"; exit 1; }

read -r -a LINKD <<< "${LINKD_CMD:-./linkd}"
[ -n "${LINKD_CMD:-}" ] || [ -x ./linkd ] || make linkd >&2 || die "building linkd failed"
[ -x build/sensors/linkd-sensors ] || make build/sensors/linkd-sensors >&2 || die "building the sensors service failed"

# An HS256 secret for this run, and an admin token signed with it (openssl).
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
HEAD=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
BODY=$(printf '{"sub":"admin","preferred_username":"admin","roles":["admin"],"exp":%d}' $(( $(date +%s) + 43200 )) | b64url)
SIG=$(printf '%s.%s' "$HEAD" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)
TOKEN=$HEAD.$BODY.$SIG

LINKD_PID= SENS_PID=
stop() {
  trap - INT TERM EXIT
  [ -n "$SENS_PID" ] && kill -TERM "$SENS_PID" 2>/dev/null
  [ -n "$LINKD_PID" ] && kill -TERM "$LINKD_PID" 2>/dev/null
  wait 2>/dev/null
  say "stopped"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

"${LINKD[@]}" --listen "$LISTEN" --socket "$SOCK" --jwt-secret "$SECRET" &
LINKD_PID=$!
for _ in $(seq 100); do
  curl -sf -m 1 -o /dev/null "http://127.0.0.1:$PORT/health" && break
  kill -0 "$LINKD_PID" 2>/dev/null || die "linkd exited"
  sleep 0.1
done
curl -sf -m 1 -o /dev/null "http://127.0.0.1:$PORT/health" || die "linkd did not answer on port $PORT"

build/sensors/linkd-sensors --socket "$SOCK" &
SENS_PID=$!
for _ in $(seq 100); do
  curl -sf -m 1 -o /dev/null "http://127.0.0.1:$PORT/api/sensors/config" && break
  kill -0 "$SENS_PID" 2>/dev/null || die "the sensors service exited"
  sleep 0.1
done

echo
echo "  Sensors dashboard:  http://localhost:$PORT/sensors/"
echo "  as admin (may change the sampling rate):"
echo "    http://localhost:$PORT/sensors/?token=$TOKEN"
echo "  History: http://localhost:$PORT/api/sensors/history    WebSocket: ws://localhost:$PORT/ws/sensors"
echo "  Ctrl-C stops linkd and the sensors service."
echo
wait -n "$LINKD_PID" "$SENS_PID"
say "a process exited"
