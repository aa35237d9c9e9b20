#!/usr/bin/env bash
# The admin console (issue 14): --admin-listen serves one embedded page and a
# small JSON API. Here: the page (gzip, CSP, size, self-contained); the API
# through tests/admin_check.py (auth refused/allowed, figures against /metrics,
# the per-second series, push and disconnect doing what they say and logged,
# hostile input on the admin port); then the access rule's configurations:
# loopback without JWT is open, a public address without JWT is refused at
# start (exit 2), a public address with JWT starts and wants --admin-role, a
# reload cannot take the JWT away from a public console.
. "$(dirname "$0")/lib.sh"

SECRET=admin-test-secret
# tok CLAIMS-JSON : an HS256 JWT ("exp":"now+N" is relative)
tok() {
  $PY - "$1" "$SECRET" <<'EOF'
import sys, json, hmac, hashlib, base64, time
c = json.loads(sys.argv[1]); key = sys.argv[2].encode()
for k, v in list(c.items()):
    if isinstance(v, str) and v.startswith('now'):
        c[k] = int(time.time()) + int(v[3:] or 0)
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b'=').decode()
h = b(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode()); p = b(json.dumps(c).encode())
print(h + '.' + p + '.' + b(hmac.new(key, (h + '.' + p).encode(), hashlib.sha256).digest()))
EOF
}
ADMIN_TOK=$(tok '{"sub":"u-root","roles":["admin"],"exp":"now+900"}')
OPS_TOK=$(tok '{"sub":"u-ops","roles":["ops"],"exp":"now+900"}')

# astatus URL [curl args] : the HTTP status of a GET
astatus() { curl -s -m $((5 * T_SLOW)) -o /dev/null -w '%{http_code}' "$@"; }

# ---------------------------------------------------------------- the page
APORT=$(free_port)
AURL="http://127.0.0.1:$APORT"
linkd_start --jwt-secret "$SECRET" --admin-listen "127.0.0.1:$APORT" --max-connections 300 --max-http-connections 100 \
  --max-rooms 500 --max-memberships 2000 --max-services 16 --max-message-size 32k --max-outbound 512k --rate-limit 1000 \
  --max-connections-per-user 4 --history-memory 1m || exit 0

GZ=$ROOT/build/admin_page.gz
size=$(stat -c %s "$GZ" 2>/dev/null || echo missing)
if [ "$size" != missing ] && [ "$size" -le 16384 ]; then pass "the page is at most 16 KiB gzip'ed ($size bytes)"
else fail "the page is at most 16 KiB gzip'ed" "build/admin_page.gz: $size bytes"; fi

curl -s -m 5 -D "$T_TMP/page.h" -o "$T_TMP/page.gz" "$AURL/"
head=$(tr -d '\r' <"$T_TMP/page.h" | tr '\n' ' ')
expect_match "GET / on the admin port: 200 text/html, no token needed" "$head" '^HTTP/1\.1 200 .*[Cc]ontent-[Tt]ype: text/html'
expect_match "the page is sent gzip'ed (Content-Encoding: gzip)" "$head" '[Cc]ontent-[Ee]ncoding: gzip'
expect_match "the page has a strict CSP (default-src 'self'; scripts and styles inline only; images data:)" "$head" \
  "Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
expect_match "the page may not be framed (X-Frame-Options: DENY)" "$head" 'X-Frame-Options: DENY'
if gzip -dc "$T_TMP/page.gz" 2>/dev/null | cmp -s - "$ROOT/admin/index.html"; then pass "the page served is admin/index.html"
else fail "the page served is admin/index.html" "gunzip of the body differs (linkd built before the page changed? run make)"; fi
expect_eq "the body is the build's gzip (same size)" "$(stat -c %s "$T_TMP/page.gz")" "$size"
expect_eq "GET /index.html: the same page" "$(curl -s -m 5 "$AURL/index.html" | cmp -s - "$T_TMP/page.gz" && echo same)" same
expect_eq "HEAD /: 200" "$(curl -s -m 5 -I -o /dev/null -w '%{http_code}' "$AURL/")" 200
# self-contained: nothing fetched from elsewhere (the CSP would block it anyway)
refs=$(grep -oiE '(src|href|url|action)\s*[=(]\s*["'"'"']?(https?:)?//[^"'"'"' )>]*|@import|<script[^>]*src=|<link[^>]*stylesheet' "$ROOT/admin/index.html" | head -3)
expect_eq "the page loads nothing from elsewhere (no external script, style, font or image)" "${refs:-none}" none

# ---------------------------------------------------------------- the API
svc_start chat --name chat --instance chat-1 --version 2.3.4 --ws /ws/chat --route 'GET /chat/hello' \
  --route 'GET /chat/admin-only auth roles=ops' || { fail "service chat registers" "$(cat "$SVC_OUT")"; exit 0; }
CHAT_PID=$SVC_PID CHAT_OUT=$SVC_OUT
svc_start other --name other --ws /ws/other || fail "service other registers"
svc_start plain --name plain --route 'GET /plain/x' || fail "service plain registers"
timeout -k 5 $((90 * T_SLOW)) $PY "$TESTS/admin_check.py" "$LINKD_URL" "$AURL" "$SECRET" "$CHAT_OUT" "$LINKD_LOG" "$LINKD_PID" "$CHAT_PID"
rc=$?
[ "$rc" = 0 ] || fail "admin_check.py finishes" "exit $rc"
check "linkd alive after the API checks" linkd_alive
linkd_stop

# ---------------------------------------------------------------- access rule
# loopback without any JWT: open (the SSH-tunnel case)
APORT=$(free_port)
LINKD_PORT=; linkd_start --admin-listen "127.0.0.1:$APORT" || exit 0
svc_start lb --name lb --ws /ws/lb || fail "service lb registers"
expect_eq "loopback without JWT: /api/state open (200)" "$(astatus "http://127.0.0.1:$APORT/api/state")" 200
out=$(curl -s -m 5 -X POST -d '{"service":"lb","all":true}' "http://127.0.0.1:$APORT/api/push")
expect_eq "loopback without JWT: the actions are open too (push: 200)" "$out" '{"ok":true,"delivered":0}'
# the API only: the client port's routes and /health are not there
expect_eq "loopback without JWT: /health is not on the admin port (404)" "$(astatus "http://127.0.0.1:$APORT/health")" 404
LOG1=$LINKD_LOG
linkd_stop
if ip -6 addr show dev lo 2>/dev/null | grep -q '::1'; then
  APORT=$(free_port)
  LINKD_PORT=; linkd_start --admin-listen "[::1]:$APORT" || exit 0
  expect_eq "[::1] without JWT: starts, /api/state open" "$(astatus "http://[::1]:$APORT/api/state")" 200
  linkd_stop
fi

# a public address without JWT: refused before anything listens
# run_bad NAME ARGS... : linkd must exit 2 with the admin-listen message, and not listen
run_bad() {
  local name=$1; shift
  local port
  port=$(free_port)
  if [ -n "${ENV_ADMIN:-}" ]; then export LINKD_ADMIN_LISTEN=$ENV_ADMIN; fi
  timeout $((20 * T_SLOW)) "${LINKD[@]}" --listen "127.0.0.1:$port" --socket "$T_TMP/bad.sock" "$@" >"$T_TMP/bad.out" 2>&1
  local rc=$?
  unset LINKD_ADMIN_LISTEN
  expect_eq "$name: linkd exits 2" "$rc" 2
  expect_match "$name: the message names admin-listen, the address and the way out" "$(tr '\n' ' ' <"$T_TMP/bad.out")" \
    "admin-listen: .*(0\.0\.0\.0|\[::\]|192\.0\.2\.1).* is not a loopback address and no JWT is configured.*127\.0\.0\.1"
  if [ ! -e "$T_TMP/bad.sock" ] && ! curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/health"; then pass "$name: nothing listened"
  else fail "$name: nothing listened" "the socket or the client port was there"; fi
}
PUB=$(free_port)
run_bad "0.0.0.0 without JWT" --admin-listen "0.0.0.0:$PUB"
run_bad "[::] without JWT (--check-config)" --admin-listen "[::]:$PUB" --check-config
run_bad "a non-loopback address without JWT (--check-config)" --admin-listen "192.0.2.1:$PUB" --check-config
ENV_ADMIN="0.0.0.0:$PUB" run_bad "0.0.0.0 without JWT from LINKD_ADMIN_LISTEN (--check-config)" --check-config
expect_match "the message says where the value came from (the environment)" "$(cat "$T_TMP/bad.out")" 'LINKD_ADMIN_LISTEN'
printf 'admin_listen = 0.0.0.0:%s\n' "$PUB" >"$T_TMP/bad.conf"
run_bad "0.0.0.0 without JWT from the config file (--check-config)" --config "$T_TMP/bad.conf" --check-config

# a public address with a JWT: starts; --admin-role (here from the config file) decides
APORT=$(free_port)
CONF=$T_TMP/admin.conf
printf 'jwt_secret = %s\nadmin_role = ops\n' "$SECRET" >"$CONF"
LINKD_PORT=; linkd_start --config "$CONF" --admin-listen "0.0.0.0:$APORT" || exit 0
A="http://127.0.0.1:$APORT/api/state"
expect_eq "0.0.0.0 with JWT: starts, no token 401" "$(astatus "$A")" 401
expect_eq "0.0.0.0 with JWT, --admin-role ops: a token with admin (not ops) 403" "$(astatus "$A" -H "Authorization: Bearer $ADMIN_TOK")" 403
expect_eq "0.0.0.0 with JWT, --admin-role ops: a token with ops 200" "$(astatus "$A" -H "Authorization: Bearer $OPS_TOK")" 200
expect_match "a 403 is logged at warn naming the role" "$(cat "$LINKD_LOG")" "warn.*admin: refused .*u-root.*'ops'"
# a reload can change the role...
printf 'jwt_secret = %s\nadmin_role = admin\n' "$SECRET" >"$CONF"
n=$(grep -c 'reloaded the settings' "$LINKD_LOG")
kill -HUP "$LINKD_PID"
_reloaded() { [ "$(grep -c 'reloaded the settings' "$LINKD_LOG")" -gt "$1" ]; }
wait_for 5 _reloaded "$n"
expect_eq "after a reload to admin_role = admin: the admin token 200" "$(astatus "$A" -H "Authorization: Bearer $ADMIN_TOK")" 200
expect_eq "after the reload: the ops token 403" "$(astatus "$A" -H "Authorization: Bearer $OPS_TOK")" 403
# ...but not leave a public console without JWT
printf 'admin_role = admin\n' >"$CONF"
n=$(grep -c 'reload refused' "$LINKD_LOG")
kill -HUP "$LINKD_PID"
_refused() { [ "$(grep -c 'reload refused' "$LINKD_LOG")" -gt "$1" ]; }
if wait_for 5 _refused "$n"; then pass "a reload that removes the JWT from a public console is refused"
else fail "a reload that removes the JWT from a public console is refused" "$(tail -n 2 "$LINKD_LOG" | tr '\n' ' ')"; fi
expect_eq "after the refused reload: still 401 without a token" "$(astatus "$A")" 401
expect_eq "after the refused reload: the admin token still 200" "$(astatus "$A" -H "Authorization: Bearer $ADMIN_TOK")" 200
linkd_stop

# both actions were logged on the loopback console too (who: loopback ADDRESS)
expect_match "loopback console: the push is logged at info with who did it" "$(cat "$LOG1")" \
  "info.*admin \(loopback 127\.0\.0\.1:[0-9]+\): push 'admin\.test' to everyone .* of service 'lb': ok, delivered to 0"
exit 0
