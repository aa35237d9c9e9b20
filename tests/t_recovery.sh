#!/usr/bin/env bash
# Connection recovery (issue 10): a client that drops comes back with the
# token of its linkd.session message and gets its rooms and the room pushes
# it missed, in order (tests/recovery_check.py does the client side).
# Failures: a gap longer than the history, the window passed, a forged or
# another user's token, a token from before linkd restarted. Memory: a room
# flooded far past its history keeps only its history.
. "$(dirname "$0")/lib.sh"

SECRET=recovery-secret
CHK() { timeout -k 5 $((60 * T_SLOW)) $PY "$TESTS/recovery_check.py" "$1" "$LINKD_URL" "ws://127.0.0.1:$LINKD_PORT$2" "$SVC_OUT" "${@:3}"; }

linkd_start --jwt-secret "$SECRET" --rate-limit 0 --log-level warn || exit 0
svc_start rec --name rec --ws /ws --recovery 4000:50 --reconnect || { fail "service with recovery registers"; exit 0; }
for c in within history window forged flood; do CHK $c /ws; done
CHK user /ws "$SECRET"
check "linkd alive after the recovery cases" linkd_alive
check "no ghost left once the windows ended" wait_for $((8 * T_SLOW)) metric_is linkd_ws_ghosts 0
check "no history left once the rooms are empty" wait_for $((5 * T_SLOW)) metric_is linkd_history_bytes 0

# a restart: the service (--reconnect) registers again; an old token is stale
CHK restart_token /ws "$T_TMP/token.json"
linkd_stop
LINKD_PORT=$LINKD_PORT LINKD_SOCK=$LINKD_SOCK linkd_start --jwt-secret "$SECRET" --rate-limit 0 --log-level warn || exit 0
wait_for $((10 * T_SLOW)) svc_count_ge rec '^READY' 2 || fail "the service registers again after the restart"
CHK restart_resume /ws "$T_TMP/token.json"

# a path without recovery behaves as before
svc_start plain --name plain --ws /plain || fail "service without recovery registers"
CHK plain /plain

# --history-memory caps all histories together
linkd_stop
LINKD_PORT=$LINKD_PORT LINKD_SOCK=$LINKD_SOCK linkd_start --history-memory 32k --rate-limit 0 --log-level warn || exit 0
wait_for $((10 * T_SLOW)) svc_count_ge rec '^READY' 3 || fail "the service registers again"
CHK flood /ws 32768
exit 0
