#!/usr/bin/env bash
# Service names are not held forever: with --max-services 2, two services
# that registered and went away (no connections left) make room for new
# names; their routes go with them. A service that still has WebSocket
# clients keeps its slot, path and routes.
. "$(dirname "$0")/lib.sh"

linkd_start --max-services 2 || exit 0
svc_start a --name gone-a --route 'GET /a' || fail "gone-a registers" "$(cat "$SVC_OUT")"
svc_kill a
svc_start b --name keep-b --route 'GET /b' --ws /ws/b || fail "keep-b registers" "$(cat "$SVC_OUT")"
WSC=$T_TMP/hold.py
cat >"$WSC" <<'EOF'
import sys, os, time
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS
w = WS(sys.argv[1]); w.whoami(); print('OPEN', flush=True)
time.sleep(30)
EOF
$PY -u "$WSC" "ws://127.0.0.1:$LINKD_PORT/ws/b" >"$T_TMP/hold.out" 2>&1 &
track $!
wait_for 5 grep -q OPEN "$T_TMP/hold.out" || fail "a client holds a connection on keep-b" "$(cat "$T_TMP/hold.out")"
svc_kill b
wait_for 5 metric_is linkd_service_instances 0
http GET /a
expect_eq "gone-a's route answers 503 while it is remembered" "$HTTP_STATUS" 503
svc_start c --name new-c --route 'GET /c' || fail "new-c registers" "$(cat "$SVC_OUT")"
check "a new name takes the idle service's slot" grep -q '^READY' "${SVC_OUTS[c]}"
http GET /a
expect_eq "the forgotten service's route is gone: 404" "$HTTP_STATUS" 404
http GET /c
expect_eq "the new service answers" "$HTTP_STATUS" 200
http GET /b
expect_eq "keep-b (clients still connected) is remembered: 503" "$HTTP_STATUS" 503
svc_start d --name new-d --route 'GET /d'
check "no idle slot left: the next new name is refused" grep -q '^REFUSED.*service table full' "${SVC_OUTS[d]}"
check "linkd still running" linkd_alive
