#!/usr/bin/env bash
# SIGHUP reloads the settings without a restart (issue 15, README "Reload"):
#  - SIGHUP never kills linkd: not while it reads its config at start (before
#    /health answers), not in a burst of 20, not while it shuts down;
#  - a reload under traffic loses nothing: WebSocket messages with ids, room
#    pushes and HTTP requests are all answered, no connection is dropped,
#    memberships stay, the service link is not re-registered;
#  - JWT key rotation (--jwt-keys re-read) and jwt_secret rotation;
#  - a bad reload (invalid value, broken or missing key file) changes nothing,
#    says why (file:line) and counts in linkd_reloads_failed_total;
#  - restart-only settings changed in the file are named in one log line and
#    kept; live ones apply at once (Origins, rate limit, log level, timeouts,
#    per-user cap, heartbeat);
#  - systemd: RELOADING=1 (with MONOTONIC_USEC) then READY=1 for every reload.
. "$(dirname "$0")/lib.sh"
RC_PY=$TESTS/reload_check.py
export SLOW=$T_SLOW

# ---------------------------------------------------------------- keys and tokens
# RS256 keys A and B (PEM), HS256 tokens for three secrets; all for user rl-1.
$PY - "$T_TMP" <<'EOF' || fail "make keys and tokens" "python failed"
import sys, json, base64, time, hmac, hashlib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, padding
d = sys.argv[1]
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b'=').decode()
claims = {'sub': 'rl-1', 'preferred_username': 'reload', 'exp': int(time.time()) + 3600}
def tok(alg, sign):
    h = b(json.dumps({'alg': alg, 'typ': 'JWT'}).encode()); p = b(json.dumps(claims).encode())
    return h + '.' + p + '.' + b(sign((h + '.' + p).encode()))
for name in 'AB':
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    open('%s/key%s.pem' % (d, name), 'w').write(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    open('%s/R%s' % (d, name), 'w').write(tok('RS256', lambda m: k.sign(m, padding.PKCS1v15(), hashes.SHA256())))
for i, secret in enumerate(['first-secret-1', 'second-secret-2', 'third-secret-3'], 1):
    open('%s/H%d' % (d, i), 'w').write(tok('HS256', lambda m: hmac.new(secret.encode(), m, hashlib.sha256).digest()))
EOF

# ---------------------------------------------------------------- helpers
# notify.py ADDRESS LOG : plays systemd's notify socket (as in t_systemd.sh):
# one JSON line per datagram, with the listener's CLOCK_MONOTONIC in µs.
cat >"$T_TMP/notify.py" <<'EOF'
import json, socket, sys, time
addr, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr)
with open(log, "a") as f:
    f.write(json.dumps({"us": int(time.monotonic() * 1e6), "msg": "LISTENING"}) + "\n"); f.flush()
    while True:
        data, _ = s.recvfrom(65536)
        f.write(json.dumps({"us": int(time.monotonic() * 1e6), "msg": data.decode("utf-8", "replace")}) + "\n"); f.flush()
EOF
notify_start() {
  NLOG=$T_TMP/notify.log; : >"$NLOG"
  $PY -u "$T_TMP/notify.py" "$1" "$NLOG" 2>"$NLOG.err" &
  track $!
  wait_for 10 grep -q LISTENING "$NLOG" || { fail "notify listener starts" "$(cat "$NLOG.err")"; return 1; }
}
nl_dump() { $PY -c 'import json,sys; print(" | ".join(json.loads(l)["msg"].replace("\n","\\n") for l in open(sys.argv[1]))[-600:])' "$NLOG"; }

# reload_counts : "applied failed" from /metrics (empty if linkd does not answer)
reload_counts() {
  local m; m=$(curl -s -m 5 "$LINKD_URL/metrics")
  echo "$(metric_in "$m" linkd_reloads_total) $(metric_in "$m" linkd_reloads_failed_total)"
}
_reload_sum_ge() { local a f; read -r a f <<<"$(reload_counts)"; [ -n "$a" ] && [ -n "$f" ] && [ $((a + f)) -ge "$1" ]; }
# hup_sync : SIGHUP the current linkd and wait until it has handled it
# (applied or refused: the sum of the two counters moved). 1 if it never did.
hup_sync() {
  local a f; read -r a f <<<"$(reload_counts)"
  [ -n "$a" ] && [ -n "$f" ] || { kill -HUP "$LINKD_PID" 2>/dev/null; return 1; }
  kill -HUP "$LINKD_PID" 2>/dev/null
  wait_for 10 _reload_sum_ge $((a + f + 1))
}
# hup_check NAME : hup_sync as a check
hup_check() { if hup_sync; then pass "$1"; else fail "$1" "the reload was not handled: linkd $(_is_live "$LINKD_PID" && echo "running, counters $(reload_counts)" || echo exited)"; fi; }
# conf_write FILE : stdin to FILE, replaced at once (a reload never reads half a file)
conf_write() { cat >"$1.tmp" && mv -f "$1.tmp" "$1"; }
# st PATH TOKENFILE : HTTP status of GET PATH with that bearer token
st() { curl -s -m 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$T_TMP/$2")" "$LINKD_URL$1"; }
# spawn_linkd [flags...] : like linkd_start, without waiting for /health
spawn_linkd() {
  LINKD_N=$((LINKD_N+1))
  LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/linkd.$LINKD_N.sock
  LINKD_LOG=$T_TMP/linkd.$LINKD_N.log; LINKD_URL="http://127.0.0.1:$LINKD_PORT"
  "${LINKD[@]}" --listen "127.0.0.1:$LINKD_PORT" --socket "$LINKD_SOCK" "$@" >"$LINKD_LOG" 2>&1 &
  LINKD_PID=$!
  track "$LINKD_PID"; LINKD_PIDS+=("$LINKD_PID"); LINKD_LOGS[$LINKD_PID]=$LINKD_LOG
}
logtail() { tail -n 4 "$LINKD_LOG" | tr '\n' ' ' | cut -c1-400; }

# ---------------------------------------------------------------- 1. SIGHUP never kills
# At start: the config file is a FIFO, so linkd is held inside main() reading
# it (long before /health) while it gets a SIGHUP; then one every 10 ms until
# /health answers (reload_check.py early).
mkfifo "$T_TMP/early.conf"
spawn_linkd --config "$T_TMP/early.conf"
$PY -u "$RC_PY" early "$T_TMP/early.conf" "$LINKD_PID" "$LINKD_PORT" $'# t_reload\nlog_level = info\n'
if _is_live "$LINKD_PID" && _health_ok; then
  read -r a0 f0 <<<"$(reload_counts)"
  for _ in $(seq 20); do kill -HUP "$LINKD_PID"; done
  wait_for 10 _reload_sum_ge $(( ${a0:-0} + ${f0:-0} + 1 )) || true
  # the count settles (the kernel may merge signals that arrive together)
  prev=x
  for _ in $(seq 50); do cur=$(reload_counts); [ "$cur" = "$prev" ] && break; prev=$cur; sleep 0.2; done
  read -r a1 f1 <<<"$(reload_counts)"
  check "a burst of 20 SIGHUPs: linkd still running" _is_live "$LINKD_PID"
  expect_eq "... /health answers 200" "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$LINKD_URL/health")" 200
  expect_match "... reloads applied: between 1 and 20 (signals sent together may merge), none refused (applied ${a0:-?}->${a1:-?}, refused ${f0:-?}->${f1:-?})" \
    "$(( ${a1:-0} - ${a0:-0} )) $(( ${f1:-0} - ${f0:-0} ))" '^([1-9]|1[0-9]|20) 0$'
  expect_match "... each applied reload logged" "$(grep -c 'reloaded the settings' "$LINKD_LOG")" '^([1-9][0-9]*)$'
  linkd_stop
fi

# While it shuts down: SIGTERM, then SIGHUP as fast as possible until linkd
# has exited; its exit status must be 0, never "killed by SIGHUP". (The window
# after the loop's signal handles are closed is short: several runs natively.)
trials=$([ "$T_SLOW" -gt 1 ] && echo 2 || echo 12)
bad=""
for i in $(seq "$trials"); do
  unset LINKD_PORT LINKD_SOCK
  linkd_start --shutdown-timeout 0 || break
  $PY "$RC_PY" hupstorm "$LINKD_PID" "$LINKD_PORT" 2>/dev/null   # sends the SIGTERM itself
  wait_exit "$LINKD_PID" 15
  if [ "$WAIT_RC" != 0 ]; then
    bad="$bad run $i: exit status $WAIT_RC$([ "$WAIT_RC" = 129 ] && echo ' (killed by SIGHUP)');"
    [ "$WAIT_RC" = timeout ] && { kill -KILL "$LINKD_PID"; wait "$LINKD_PID" 2>/dev/null; }
  fi
done
expect_eq "SIGTERM then SIGHUPs until linkd is gone ($trials runs): exit status 0 every time" "${bad:-none}" none
unset LINKD_PORT LINKD_SOCK

# ---------------------------------------------------------------- 2. one linkd for the rest
CONF=$T_TMP/reload.conf
BASE=$T_TMP/base.conf
printf '# t_reload base\njwt_secret = first-secret-1\nrate_limit = 0\n' >"$BASE"
conf_write "$CONF" <"$BASE"
conf_write "$T_TMP/jwt.pem" <"$T_TMP/keyA.pem"
notify_start "$T_TMP/notify.sock"
ORIG=("${LINKD[@]}")
LINKD=(env NOTIFY_SOCKET="$T_TMP/notify.sock" "${ORIG[@]}")
linkd_start --config "$CONF" --jwt-keys "$T_TMP/jwt.pem"
started=$?
LINKD=("${ORIG[@]}")
[ "$started" = 0 ] || exit 0
svc_start main --name rl --instance rl-1 --ws /ws/echo --route 'GET /api/:x' --route 'GET /private auth' --route 'POST /upload' \
  || fail "the test service registers" "$(cat "$SVC_OUT")"
wait_for 10 grep -q 'READY=1' "$NLOG" || fail "READY=1 at start" "$(nl_dump)"

# ---- reload under traffic
$PY -u "$RC_PY" traffic "$LINKD_PORT" "$LINKD_PID" "$CONF" "$BASE" "$SVC_OUT"
expect_eq "traffic: the service registered once (one 'registered' log line)" "$(grep -c "service 'rl' .*registered" "$LINKD_LOG")" 1
expect_eq "traffic: no service link closed (log)" "$(grep -cE "service link [0-9]+ closed|service 'rl' instance .* gone" "$LINKD_LOG")" 0

# ---- key rotation with --jwt-keys (RS256)
expect_eq "jwt-keys file = key A: token signed by A accepted" "$(st /private RA)" 200
expect_eq "... token signed by B refused" "$(st /private RB)" 401
cat "$T_TMP/keyA.pem" "$T_TMP/keyB.pem" | conf_write "$T_TMP/jwt.pem"
hup_check "key file now A + B, SIGHUP handled"
expect_eq "... token A still accepted" "$(st /private RA)" 200
expect_eq "... token B accepted" "$(st /private RB)" 200
conf_write "$T_TMP/jwt.pem" <"$T_TMP/keyB.pem"
hup_check "key file now B only, SIGHUP handled"
expect_eq "... token A refused (its key is gone)" "$(st /private RA)" 401
expect_eq "... token B accepted" "$(st /private RB)" 200

# ---- jwt_secret rotation in the config file
expect_eq "jwt_secret = first-secret-1: its token accepted" "$(st /private H1)" 200
expect_eq "... a token of second-secret-2 refused" "$(st /private H2)" 401
printf '# t_reload\njwt_secret = second-secret-2\nrate_limit = 0\n' | conf_write "$CONF"
hup_check "jwt_secret changed to second-secret-2, SIGHUP handled"
expect_eq "... the old secret's token now refused" "$(st /private H1)" 401
expect_eq "... the new secret's token accepted" "$(st /private H2)" 200

# ---- a bad reload changes nothing
read -r a0 f0 <<<"$(reload_counts)"
printf '# t_reload\njwt_secret = third-secret-3\nlog_level = verbose\nrate_limit = 0\n' | conf_write "$CONF"
hup_check "bad reload (log_level = verbose on line 3, and a new secret): SIGHUP handled"
read -r a1 f1 <<<"$(reload_counts)"
expect_eq "... counted as refused (linkd_reloads_failed_total ${f0:-?} -> ${f1:-?}), not applied (linkd_reloads_total ${a0:-?} -> ${a1:-?})" \
  "${f0:-x}/${f1:-y}/${a0:-x}/${a1:-y}" "0/1/${a0:-x}/${a0:-x}"
expect_eq "... the old secret still works" "$(st /private H2)" 200
expect_eq "... the new secret of the refused file does not" "$(st /private H3)" 401
expect_eq "... the keys are unchanged (token B accepted)" "$(st /private RB)" 200
expect_match "... the log says why, with file:line" "$(grep 'reload refused' "$LINKD_LOG" | tail -n 1)" \
  "reload refused, nothing changed: .*reload\.conf:3: .*log.level.*verbose"
check "... linkd still running" _is_live "$LINKD_PID"
last2=$($PY -c 'import json,sys; m=[json.loads(l)["msg"].split("\n")[0] for l in open(sys.argv[1])]; print(" ".join(m[-2:]))' "$NLOG")
expect_eq "... systemd: RELOADING=1 then READY=1 for the refused reload too" "$last2" "RELOADING=1 READY=1"

# a key file that does not parse, then one that is missing: refused; the secret
# change in the same (valid) config file is not applied either
printf '# t_reload\njwt_secret = third-secret-3\nrate_limit = 0\n' | conf_write "$CONF"
printf -- '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n' | conf_write "$T_TMP/jwt.pem"
hup_check "broken key file: SIGHUP handled"
read -r a2 f2 <<<"$(reload_counts)"
expect_eq "... refused (linkd_reloads_failed_total 2, linkd_reloads_total unchanged)" "${f2:-?}/${a2:-?}" "2/${a1:-x}"
expect_eq "... key B still accepted" "$(st /private RB)" 200
expect_eq "... the config file's new secret not applied" "$(st /private H3)/$(st /private H2)" 401/200
expect_match "... the log names the key file" "$(grep 'reload refused' "$LINKD_LOG" | tail -n 1)" \
  "reload refused, nothing changed: .*jwt-keys.*jwt\.pem"
rm -f "$T_TMP/jwt.pem"
hup_check "missing key file: SIGHUP handled"
read -r a3 f3 <<<"$(reload_counts)"
expect_eq "... refused (linkd_reloads_failed_total 3)" "${f3:-?}/${a3:-?}" "3/${a1:-x}"
expect_eq "... key B still accepted, old secret still in force" "$(st /private RB)/$(st /private H2)" 200/200
expect_match "... the log names the key file" "$(grep 'reload refused' "$LINKD_LOG" | tail -n 1)" \
  "reload refused, nothing changed: .*jwt-keys.*jwt\.pem"
mv "$CONF" "$CONF.away"
hup_check "config file gone: SIGHUP handled"
read -r a4 f4 <<<"$(reload_counts)"
expect_eq "... refused (linkd_reloads_failed_total 4)" "${f4:-?}/${a4:-?}" "4/${a1:-x}"
expect_match "... the log names the config file" "$(grep 'reload refused' "$LINKD_LOG" | tail -n 1)" \
  "reload refused, nothing changed: .*reload\.conf"
expect_eq "... key B still accepted, old secret still in force" "$(st /private RB)/$(st /private H2)" 200/200
mv "$CONF.away" "$CONF"
conf_write "$T_TMP/jwt.pem" <"$T_TMP/keyB.pem"
hup_check "key file back, SIGHUP handled"
expect_eq "... applied now: the third secret works, the second does not" "$(st /private H3)/$(st /private H2)" 200/401
check "linkd still running after the refused reloads" _is_live "$LINKD_PID"

# ---- restart-only settings: named in one line, kept; live ones in the same file applied
restart_re='reload: .* changed but only take effect at a restart: kept as they were'
n0=$(grep -cE "$restart_re" "$LINKD_LOG")
printf '# t_reload\njwt_secret = first-secret-1\nrate_limit = 0\nmax_rooms = 2\nmax_memberships = 3\nmax_body_size = 100\nmax_connections = 7\nsocket_mode = 0600\n' \
  | conf_write "$CONF"
hup_check "restart-only settings changed in the file (and the secret): SIGHUP handled"
expect_eq "... one log line for them" "$(( $(grep -cE "$restart_re" "$LINKD_LOG") - n0 ))" 1
line=$(grep -E "$restart_re" "$LINKD_LOG" | tail -n 1)
missing=""
for s in max-rooms max-memberships max-body-size max-connections socket-mode; do grep -q -- "$s" <<<"$line" || missing="$missing $s"; done
expect_eq "... naming each of them (max-rooms, max-memberships, max-body-size, max-connections, socket-mode)" "${missing:-none}" none
expect_eq "... and no live setting in it" "$(grep -cE 'jwt|rate' <<<"$line")" 0
expect_eq "... the live change in the same file applied (first secret accepted, third refused)" "$(st /private H1)/$(st /private H3)" 200/401
rooms=$($PY - "$LINKD_PORT" <<'EOF'
import os, sys
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS
w = WS('ws://127.0.0.1:%s/ws/echo' % sys.argv[1])
print(' '.join(str(bool((w.call('do.join', {'room': 'k%d' % i}) or {}).get('data', {}).get('ok'))) for i in range(4)))
w.close()
EOF
)
expect_eq "... max_rooms = 2 / max_memberships = 3 not applied: one connection joins 4 rooms" "$rooms" "True True True True"
HTTP_MAXTIME=10 http POST /upload -H 'Expect:' --data-binary "$(head -c 1000 /dev/zero | tr '\0' 'z')"
expect_eq "... max_body_size = 100 not applied: a 1000-byte body is forwarded" "$HTTP_STATUS" 200
expect_eq "... the socket keeps its mode (0660)" "$(stat -c %a "$LINKD_SOCK")" 660

# ---- live settings
printf '# t_reload live\njwt_secret = first-secret-1\nrate_limit = 0\n' >"$BASE"
conf_write "$CONF" <"$BASE"
hup_check "back to a file without restart-only changes: SIGHUP handled"
# log_level
n=$(grep -c '^linkd debug:' "$LINKD_LOG")
curl -s -m 5 -o /dev/null "$LINKD_URL/health"
expect_eq "log_level info: no debug lines" "$(grep -c '^linkd debug:' "$LINKD_LOG")" "$n"
{ cat "$BASE"; echo 'log_level = debug'; } | conf_write "$CONF"
hup_check "log_level = debug: SIGHUP handled"
curl -s -m 5 -o /dev/null "$LINKD_URL/health"
if wait_for 5 grep -q '^linkd debug:' "$LINKD_LOG"; then pass "... debug lines appear"
else fail "... debug lines appear" "log: $(logtail)"; fi
conf_write "$CONF" <"$BASE"
hup_check "log_level back to info: SIGHUP handled"
n=$(grep -c '^linkd debug:' "$LINKD_LOG")
curl -s -m 5 -o /dev/null "$LINKD_URL/health"; curl -s -m 5 -o /dev/null "$LINKD_URL/health"
expect_eq "... debug lines stop (linkd answering)" "$(grep -c '^linkd debug:' "$LINKD_LOG")/$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$LINKD_URL/health")" "$n/200"

# allowed_origins: CORS header on the next request, upgrades from other Origins 403
acao() { curl -s -m 5 -o /dev/null -D - -H 'Origin: http://app.example' "$LINKD_URL/api/cors" | tr -d '\r' | grep -i '^access-control-allow-origin:' ; }
expect_eq "no allowed_origins: no Access-Control-Allow-Origin" "$(acao)" ""
{ cat "$BASE"; echo 'allowed_origins = http://app.example'; } | conf_write "$CONF"
hup_check "allowed_origins = http://app.example: SIGHUP handled"
expect_match "... the next request gets Access-Control-Allow-Origin: http://app.example" "$(acao)" '^[Aa]ccess-[Cc]ontrol-[Aa]llow-[Oo]rigin: http://app\.example$'
hs=$($PY "$TESTS/ws_client.py" handshake 127.0.0.1 "$LINKD_PORT" /ws/echo 'Upgrade: websocket' 'Connection: Upgrade' \
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' 'Sec-WebSocket-Version: 13' 'Origin: http://evil.example' | head -n 1)
expect_match "... a WebSocket upgrade from another Origin: 403" "$hs" ' 403 '
conf_write "$CONF" <"$BASE"
hup_check "allowed_origins removed: SIGHUP handled"
expect_eq "... no Access-Control-Allow-Origin again (linkd answering)" "$(acao)/$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$LINKD_URL/health")" "/200"

# http_timeout (default 30 s): 300 ms after the reload
{ cat "$BASE"; echo 'http_timeout = 300ms'; } | conf_write "$CONF"
hup_check "http_timeout = 300ms: SIGHUP handled"
HTTP_MAXTIME=5 http GET '/api/slow?noreply=1'
expect_eq "... a request the service never answers: 504 within 5 s (30 s before)" "$HTTP_STATUS" 504
conf_write "$CONF" <"$BASE"
hup_check "http_timeout back to the default: SIGHUP handled"

# register_timeout, and reloads in a row (every 300 ms) do not hold back the housekeeping that enforces it
{ cat "$BASE"; echo 'register_timeout = 500ms'; } | conf_write "$CONF"
hup_check "register_timeout = 500ms: SIGHUP handled"
$PY -u "$RC_PY" keepup "$LINKD_PID" "$LINKD_PORT" "$LINKD_SOCK"
conf_write "$CONF" <"$BASE"
hup_check "register_timeout back to the default: SIGHUP handled"

# rate_limit on an open connection, handler_timeout, max_connections_per_user, heartbeat_interval
$PY -u "$RC_PY" live "$LINKD_PORT" "$LINKD_PID" "$CONF" "$BASE" "$T_TMP/H1"
check "linkd still running after every reload" _is_live "$LINKD_PID"

# ---- systemd: every reload was RELOADING=1 (MONOTONIC_USEC=now) then READY=1
read -r a f <<<"$(reload_counts)"
[ -n "$a" ] && [ -n "$f" ] || a=-1 f=0   # no counters: no reload can match
seq=$($PY - "$NLOG" "$(( ${a:-0} + ${f:-0} ))" <<'EOF'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
want = int(sys.argv[2])
bad, state, reloading = [], 'start', 0
for r in rows:
    lines = r['msg'].split('\n')
    if 'RELOADING=1' in lines:
        reloading += 1
        if state == 'reloading':
            bad.append('two RELOADING=1 without READY=1 between')
        m = [l for l in lines if l.startswith('MONOTONIC_USEC=')]
        if len(m) != 1 or not re.fullmatch(r'MONOTONIC_USEC=[0-9]+', m[0]):
            bad.append('RELOADING=1 without MONOTONIC_USEC: %r' % r['msg'])
        elif not (r['us'] - 10_000_000 <= int(m[0].split('=')[1]) <= r['us'] + 1000):
            bad.append('MONOTONIC_USEC %s is not CLOCK_MONOTONIC now (%d)' % (m[0], r['us']))
        state = 'reloading'
    elif 'READY=1' in lines:
        if state == 'ready':
            bad.append('READY=1 twice without RELOADING=1')
        state = 'ready'
if state != 'ready':
    bad.append('last datagram is not READY=1')
if reloading != want:
    bad.append('%d RELOADING=1 for %d reloads' % (reloading, want))
print('; '.join(bad[:3]) or 'ok %d' % reloading)
EOF
)
expect_eq "systemd: READY=1, then for each of the $(( ${a:-0} + ${f:-0} )) reloads RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC) followed by READY=1" \
  "$seq" "ok $(( ${a:-0} + ${f:-0} ))"
expect_match "systemd: STATUS= with the READY=1 after a reload" "$(grep -c 'READY=1.*STATUS=.*reloaded' "$NLOG")" '^[1-9][0-9]*$'

# ---- SIGHUP while stopping: no reload, and no READY=1 after STOPPING=1
# (a request the service never answers holds the shutdown open for up to 2 s)
{ cat "$BASE"; echo 'shutdown_timeout = 2s'; } | conf_write "$CONF"
hup_check "shutdown_timeout = 2s: SIGHUP handled"
curl -s -m 15 -o /dev/null "$LINKD_URL/api/held?noreply=1" &
track $!
wait_for 10 svc_grep main '"path": "/api/held"' || log "the held request did not reach the service"
kill -TERM "$LINKD_PID"
wait_for 10 grep -q 'STOPPING=1' "$NLOG" || log "no STOPPING=1: $(nl_dump)"
n_reloaded=$(grep -c 'reloaded the settings' "$LINKD_LOG")
kill -HUP "$LINKD_PID"
wait_exit "$LINKD_PID" $((15 * T_SLOW))
expect_eq "SIGHUP while stopping: linkd exits 0" "$WAIT_RC" 0
after=$($PY -c '
import json, sys
m = [json.loads(l)["msg"].replace("\n", "\\n") for l in open(sys.argv[1])]
i = max([k for k, x in enumerate(m) if "STOPPING=1" in x] or [len(m)])
print(" | ".join(m[i + 1:]))' "$NLOG")
expect_eq "SIGHUP while stopping: nothing after STOPPING=1 on \$NOTIFY_SOCKET (no RELOADING=1, no READY=1)" "$after" ""
expect_eq "SIGHUP while stopping: no reload applied" "$(grep -c 'reloaded the settings' "$LINKD_LOG")" "$n_reloaded"
exit 0
