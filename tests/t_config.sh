#!/usr/bin/env bash
# Configuration: --help, bad values (exit 2 naming the setting, before anything
# listens), flag > env > file > default precedence, units.
. "$(dirname "$0")/lib.sh"

# --help lists every flag of README's table
H=$(timeout 10 "${LINKD[@]}" --help 2>&1); rc=$?
expect_eq "--help exits 0" "$rc" 0
missing=""
for f in $(grep -E '^\| `--' "$ROOT/README.md" | grep -oE '^\| `--[a-z0-9-]+' | sed 's/^| `//'); do
  grep -q -- "$f" <<<"$H" || missing="$missing $f"
done
expect_eq "--help lists every flag of the README table" "${missing:-none}" none

# bad_value NAME-REGEX CHECKNAME ARGS... : linkd must exit 2 and name the setting, and not listen
bad_value() {
  local re=$1 name=$2; shift 2
  local port; port=$(free_port)
  local sock=$T_TMP/bad.sock
  rm -f "$sock"
  timeout 10 env "${ENVS[@]}" "${LINKD[@]}" --listen "127.0.0.1:$port" --socket "$sock" "$@" >"$T_TMP/bad.out" 2>&1
  local rc=$?
  local o; o=$(tr '\n' ' ' <"$T_TMP/bad.out" | cut -c1-200)
  if [ "$rc" = 2 ] && grep -qiE -- "$re" "$T_TMP/bad.out" && [ ! -e "$sock" ]; then
    pass "$name"
  else
    fail "$name" "exit $rc (want 2), socket $( [ -e "$sock" ] && echo created || echo absent), output: $o"
  fi
}
ENVS=()
bad_value 'max[-_]connections' "bad --max-connections=abc: exit 2 naming it" --max-connections abc
bad_value 'max[-_]connections' "negative --max-connections: exit 2" --max-connections -5
bad_value 'max[-_]connections' "zero --max-connections: exit 2" --max-connections 0
bad_value 'max[-_]rooms' "bad --max-rooms: exit 2" --max-rooms 1x
bad_value 'max[-_]memberships' "bad --max-memberships: exit 2" --max-memberships ''
bad_value 'listen' "bad --listen (no port): exit 2" --listen 127.0.0.1
bad_value 'listen' "bad --listen (port 99999): exit 2" --listen 127.0.0.1:99999
bad_value 'http[-_]timeout' "bad --http-timeout unit: exit 2" --http-timeout 5x
bad_value 'max[-_]body[-_]size' "bad --max-body-size: exit 2" --max-body-size 12q
bad_value 'max[-_]header[-_]size' "bad --max-header-size: exit 2" --max-header-size big
bad_value 'max[-_]message[-_]size' "bad --max-message-size: exit 2" --max-message-size -1
bad_value 'max[-_]frame[-_]size' "bad --max-frame-size: exit 2" --max-frame-size 1.5.6
bad_value 'log[-_]level' "bad --log-level: exit 2" --log-level loud
bad_value 'outbound[-_]policy' "bad --outbound-policy: exit 2" --outbound-policy maybe
bad_value 'socket[-_]mode' "bad --socket-mode: exit 2" --socket-mode 999
bad_value 'rate[-_]limit' "bad --rate-limit: exit 2" --rate-limit fast
bad_value 'no-such-flag' "unknown flag: exit 2 naming it" --no-such-flag 1
bad_value 'max[-_]connections' "flag without its value: exit 2" --max-connections
ENVS=(LINKD_MAX_CONNECTIONS=abc)
bad_value 'max[-_]connections' "bad LINKD_MAX_CONNECTIONS env: exit 2 naming it"
ENVS=(LINKD_HTTP_TIMEOUT=soon)
bad_value 'http[-_]timeout' "bad LINKD_HTTP_TIMEOUT env: exit 2 naming it"
ENVS=()
printf '# comment\nmax_rooms = lots\n' >"$T_TMP/bad.conf"
bad_value 'max[-_]rooms' "bad max_rooms in the config file: exit 2 naming it" --config "$T_TMP/bad.conf"
printf 'no_such_setting = 1\n' >"$T_TMP/bad2.conf"
bad_value 'no_such_setting' "unknown key in the config file: exit 2 naming it" --config "$T_TMP/bad2.conf"
bad_value 'config|no such file|not found|nonexistent' "missing --config file: exit 2" --config "$T_TMP/nonexistent.conf"

# A bad value exits before anything listens: the port stays free
PORT=$(free_port)
timeout 10 "${LINKD[@]}" --listen "127.0.0.1:$PORT" --socket "$T_TMP/x.sock" --max-rooms nope >/dev/null 2>&1
check "bad value: the TCP port was never bound" $PY -c "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$PORT))"

# Precedence: flag > env > file > default, shown through --max-body-size (413 beyond)
printf 'max_body_size = 100\n' >"$T_TMP/p.conf"
body() { head -c "$1" /dev/zero | tr '\0' 'z'; }
prec_case() {   # prec_case NAME BODYLEN WANT [env...] -- [flags...]
  local name=$1 len=$2 want=$3; shift 3
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  LINKD_PORT= LINKD_SOCK=$T_TMP/prec.sock
  local save=("${LINKD[@]}")
  LINKD=(env "${envs[@]}" "${save[@]}")
  if linkd_start "$@"; then
    svc_start prec --name prec --instance prec-1 --route 'POST /b' || fail "$name: service registers"
    http POST /b -H 'Expect:' --data-binary "$(body "$len")"
    expect_eq "$name" "$HTTP_STATUS" "$want"
    svc_kill prec
    linkd_stop
  fi
  LINKD=("${save[@]}")
}
prec_case "config file value applies (150 > 100: 413)" 150 413 -- --config "$T_TMP/p.conf"
prec_case "config file value applies (90 < 100: 200)" 90 200 -- --config "$T_TMP/p.conf"
prec_case "env beats the file (150 < 200: 200)" 150 200 LINKD_MAX_BODY_SIZE=200 -- --config "$T_TMP/p.conf"
prec_case "env beats the file (250 > 200: 413)" 250 413 LINKD_MAX_BODY_SIZE=200 -- --config "$T_TMP/p.conf"
prec_case "flag beats env and file (250 < 300: 200)" 250 200 LINKD_MAX_BODY_SIZE=200 -- --config "$T_TMP/p.conf" --max-body-size 300
prec_case "LINKD_CONFIG env names the file" 150 413 LINKD_CONFIG="$T_TMP/p.conf" --
prec_case "size unit k (2k: 1500 passes)" 1500 200 -- --max-body-size 2k
prec_case "size unit k (2k: 2100 refused)" 2100 413 -- --max-body-size 2k

# Duration units: --http-timeout 500ms gives a 504 in about half a second
LINKD_PORT= LINKD_SOCK=$T_TMP/dur.sock
if linkd_start --http-timeout 500ms; then
  svc_start dur --name dur --instance dur-1 --route 'GET /d' || fail "dur service registers"
  t0=$(date +%s%N); http GET '/d?noreply=1'; ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  expect_eq "--http-timeout 500ms: 504" "$HTTP_STATUS" 504
  expect_match "--http-timeout 500ms: answered in 0.4-1.5 s (${ms} ms)" "$ms" '^([4-9][0-9][0-9]|1[0-4][0-9][0-9])$'
  check "log lines carry a level" grep -qiE '(^|[^a-z])(info|warn|error|debug)([^a-z]|$)' "$LINKD_LOG"
  linkd_stop
fi

# SIGTERM: exits 0
LINKD_PORT= LINKD_SOCK=$T_TMP/term.sock
if linkd_start; then
  kill -TERM "$LINKD_PID"
  wait_exit "$LINKD_PID" 15
  expect_eq "SIGTERM: linkd exits 0" "$WAIT_RC" 0
fi
exit 0
