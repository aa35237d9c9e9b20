#!/usr/bin/env bash
# The service link: Unix socket (mode, stale file, single owner), registration
# and its refusals, bad frames closing one link only, heartbeat, services metric.
. "$(dirname "$0")/lib.sh"

linkd_start --max-body-size 8k --max-frame-size 96k || exit 0

expect_eq "service socket mode is 0660" "$(stat -c %a "$LINKD_SOCK")" 660
expect_eq "service socket is a socket" "$(stat -c %F "$LINKD_SOCK")" socket

svc_start good --name good --instance good-1 --route 'GET /good/:x' --send-heartbeat \
  || fail "service registers" "$(cat "$SVC_OUT")"
expect_match "RegisterResult carries linkd's max frame size (96k)" "$(grep '^READY' "${SVC_OUTS[good]}")" '"max_frame_bytes": 98304'
expect_match "RegisterResult carries linkd's version" "$(grep '^READY' "${SVC_OUTS[good]}")" '"linkd_version": "[^"]+"'
wait_for 5 svc_grep good '^HEARTBEAT \{"reply": true\}'
check "linkd answers a service heartbeat with reply=true" svc_grep good '^HEARTBEAT \{"reply": true\}'
expect_eq "metrics: linkd_services = 1" "$(metric linkd_services)" 1

# Registration refusals (RegisterResult ok=false with a reason, link closed)
svc_start conflict --name intruder --instance i-1 --route 'GET /good/:x'
expect_match "route owned by another service: refused with a reason" "$(cat "$SVC_OUT")" '^REFUSED .+'
svc_start conflict2 --name intruder2 --instance i-2 --route 'GET /good/:y'
expect_match "same pattern with another param name: refused as a conflict" "$(cat "$SVC_OUT")" '^REFUSED .+'
svc_start noname --name '' --instance n-1 --route 'GET /nn'
expect_match "empty service name: refused" "$(cat "$SVC_OUT")" '^REFUSED .+'
svc_start badpat --name badpat --instance b-1 --route 'GET no-slash'
expect_match "route pattern without leading /: refused" "$(cat "$SVC_OUT")" '^REFUSED .+'
svc_start dupself --name dupself --instance d-1 --route 'GET /dup/:a' --route 'GET /dup/:b'
expect_match "conflicting routes within one registration: refused" "$(cat "$SVC_OUT")" '^REFUSED .+'
svc_start first1 --first http_response
wait_for 5 svc_grep first1 '^LINK_CLOSED'
check "first frame not RegisterService: link closed" svc_grep first1 '^LINK_CLOSED'
svc_start same --name good --instance good-2 --route 'GET /good/:x' \
  || fail "a second instance of the same service (same routes) is accepted" "$(cat "$SVC_OUT")"
S0=$(metric linkd_services)
expect_eq "metrics: linkd_services counts services, not instances, nor refused links" "$S0" "$(( 1 + $(svc_count dupself '^READY') ))"
svc_kill same
svc_start extra --name extra --instance extra-1 --route 'GET /extra' || fail "another service registers" "$(cat "$SVC_OUT")"
expect_eq "metrics: linkd_services + 1 with another service" "$(metric linkd_services)" $((S0 + 1))
svc_kill extra
wait_for 5 metric_is linkd_services "$S0"
expect_eq "metrics: linkd_services back after that service leaves" "$(metric linkd_services)" "$S0"
http GET /good/2
expect_eq "the remaining instance serves after the other instance left" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["instance"]' 2>&1)" 200/good-1

# Bad frames close that link only, with nothing else affected
for mode in garbage badvarint badproto oversize; do
  svc_start "bad-$mode" --name "bad$mode" --instance "x-$mode" --route "GET /bad$mode" --garbage "$mode" \
    || fail "service ($mode) registers" "$(cat "$SVC_OUT")"
  wait_for 5 svc_grep "bad-$mode" '^LINK_CLOSED'
  check "$mode frame: linkd closes that link" svc_grep "bad-$mode" '^LINK_CLOSED'
  check "$mode frame: linkd still running" linkd_alive
  http GET /good/1
  expect_eq "$mode frame: other service still served" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["instance"]' 2>&1)" 200/good-1
done
wait_for 5 metric_is linkd_services "$S0"
expect_eq "metrics: closed bad links not counted" "$(metric linkd_services)" "$S0"
check "linkd logs a reason for closing a bad link" grep -qiE 'frame|decode|oversize|protobuf' "$LINKD_LOG"

# A frame over the limit that is in fact a valid HTTP response (over --max-frame-size)
svc_start bigresp --name bigresp --instance br-1 --route 'GET /br' || fail "bigresp registers"
http GET '/br?size=200000'
expect_match "service response frame over --max-frame-size: 5xx to the client, not a hang" "$HTTP_STATUS" '^5[0-9][0-9]$'
wait_for 5 svc_grep bigresp '^LINK_CLOSED'
check "service response frame over --max-frame-size: link closed" svc_grep bigresp '^LINK_CLOSED'

# A second linkd on the same socket refuses to start; the first keeps its socket
P2=$(free_port)
"${LINKD[@]}" --listen "127.0.0.1:$P2" --socket "$LINKD_SOCK" >"$T_TMP/second.log" 2>&1 &
L2=$!; track "$L2"
wait_exit "$L2" 10
expect_match "second linkd on the same socket exits non-zero" "$WAIT_RC" '^[1-9][0-9]*$'
expect_match "second linkd says why" "$(cat "$T_TMP/second.log")" '.'
check "first linkd's socket still there" test -S "$LINKD_SOCK"
svc_start after --name after --instance after-1 --route 'GET /after' || fail "services still register with the first linkd" "$(cat "$SVC_OUT")"
http GET /after
expect_eq "first linkd still routes after the refused start" "$HTTP_STATUS" 200
check "first linkd still running" linkd_alive

# Stale socket file (nobody listening) is replaced
linkd_stop
STALE=$T_TMP/stale.sock
$PY -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$STALE"
check "stale socket file exists before start" test -S "$STALE"
LINKD_SOCK=$STALE LINKD_PORT=
if linkd_start --socket-mode 0600; then
  svc_start stale --name st --instance st-1 --route 'GET /st' || fail "service registers on the replaced stale socket" "$(cat "$SVC_OUT")"
  http GET /st
  expect_eq "stale socket file replaced: routing works" "$HTTP_STATUS" 200
  expect_eq "--socket-mode 0600 applied" "$(stat -c %a "$STALE")" 600
  linkd_stop
fi
# After a clean stop the socket file is removed
check "socket file removed on clean shutdown" test ! -e "$STALE"

# A regular file at the socket path is not clobbered
REG=$T_TMP/regular.file
echo keep >"$REG"
P3=$(free_port)
"${LINKD[@]}" --listen "127.0.0.1:$P3" --socket "$REG" >"$T_TMP/reg.log" 2>&1 &
L3=$!; track "$L3"
wait_exit "$L3" 10
expect_match "a regular file at the socket path: linkd refuses to start" "$WAIT_RC" '^[1-9][0-9]*$'
expect_eq "the regular file is left alone" "$(cat "$REG" 2>&1)" keep

# Socket directory created when missing
LINKD_SOCK=$T_TMP/sub/dir/linkd.sock LINKD_PORT=
if linkd_start; then
  check "missing socket directory created (the default ./run/linkd.sock needs it)" test -S "$T_TMP/sub/dir/linkd.sock"
  linkd_stop
fi
exit 0
