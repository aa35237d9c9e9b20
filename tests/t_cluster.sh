#!/usr/bin/env bash
# Cluster mode (issue 13): linkd nodes sharing rooms, pushes and connection
# sends over NATS. Starts its own nats-server on a free loopback port, then
# two nodes (a, b) and later a third (c), each a linkd with --nats-url and its
# own tests/svc.py instance of the service "chat" (/ws/chat). The checks are
# in tests/cluster_check.py (phases two, three, alone):
#   two    pushes to a room / everyone across nodes exactly once, except
#          lists across nodes, connection send / rooms query / close of a
#          remote connection (NOT_FOUND for a gone one and an unknown node),
#          join/leave of a remote connection refused, room interest
#   three  room counts over 3 nodes, NATS killed and restarted under traffic,
#          node c killed (SIGKILL)
#   solo   a cluster node that is alone on its NATS: room counts at once
#   alone  a node without --nats-url behaves as before
#   late   a node started before NATS answers at once and joins when NATS is up
# A linkd built without cluster support (a static cross build made with
# CLUSTER=0) refuses --nats-url with exit 2: then only "alone" runs and one
# PASS line says why the cluster checks are skipped.
. "$(dirname "$0")/lib.sh"
export T_SLOW

STATE=$T_TMP/state.json
declare -A NODE_URL NODE_PID NODE_SOCK

# ---------- a node without --nats-url (every build)
alone() {
  LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/s.sock
  linkd_start || return
  NODE_URL[s]=$LINKD_URL
  # libnats (and its OpenSSL) is loaded only with --nats-url
  expect_eq "a node alone has not loaded libnats or OpenSSL" "$(grep -cE 'libnats|libssl|libcrypto\.so' /proc/"$LINKD_PID"/maps)" 0
  svc_start s --name chat --instance chat-s --ws /ws/chat || { fail "chat service registers on the lone node" "$(tail -n 3 "$SVC_OUT")"; return; }
  printf '{"nodes":{"s":{"id":"","url":"%s","pid":%s,"svc_out":"%s"}}}\n' "$LINKD_URL" "$LINKD_PID" "$SVC_OUT" >"$T_TMP/alone.json"
  timeout $((60 * T_SLOW)) $PY "$TESTS/cluster_check.py" alone "$T_TMP/alone.json" || fail "cluster_check.py alone" "exit status $?"
}

# ---------- does this linkd have cluster support?
probe=$("${LINKD[@]}" --nats-url nats://127.0.0.1:4222 --node-id probe --check-config 2>&1)
rc=$?
if [ "$rc" -ne 0 ]; then
  if [ "$rc" = 2 ] && grep -q 'built without cluster support' <<<"$probe"; then
    # (the static cross builds: they have no NATS client, see README "Cluster")
    pass "cluster checks skipped: ${LINKD[*]##*/} has no cluster support (the static cross builds are made without the NATS client, whose source this machine's Debian archive does not serve); it refuses --nats-url with exit 2: '$(grep -o 'built without cluster support' <<<"$probe" | head -n 1)'"
    alone
    exit 0
  fi
  fail "--nats-url accepted by --check-config" "exit $rc: $(echo "$probe" | tail -n 2 | tr '\n' ' ')"
  exit 0
fi
# The default node id is the host name made one (dots to '_', at most 48
# characters); a --node-id given is taken as it is or refused.
out=$("${LINKD[@]}" --nats-url nats://127.0.0.1:4222 --node-id a.b --check-config 2>&1)
expect_eq "--node-id a.b is refused (exit 2), not changed" "$? $(grep -c "node-id: 'a.b'" <<<"$out")" "2 1"
if unshare -ru true 2>/dev/null; then
  out=$(unshare -ru sh -c 'hostname "$1"; shift; exec "$@"' sh this-is-a-very-long-host.name.example.internal.company.org \
    "${LINKD[@]}" --nats-url nats://127.0.0.1:4222 --check-config 2>&1)
  expect_eq "a host name of 58 characters with dots makes a node id (no --node-id)" "$?" 0
fi
# Without libnats on the machine, --nats-url is refused with the package to install
# (hidden in a private mount namespace, where the machine allows one).
LIBNATS=$(ldconfig -p | awk '/libnats\.so\.3\.4 /{print $NF; exit}')
if [ -n "$LIBNATS" ] && [ "${LINKD[0]}" != valgrind ] && unshare -rm true 2>/dev/null; then
  out=$(unshare -rm sh -c 'for f in "$1" "$(readlink -f "$1")"; do mount --bind /dev/null "$f" || exit 9; done; shift; exec "$@"' \
    sh "$LIBNATS" "${LINKD[@]}" --nats-url nats://127.0.0.1:4222 --check-config 2>&1)
  expect_eq "without libnats, --nats-url is refused (exit 2) naming the package" \
    "$? $(grep -c 'cluster support needs libnats 3.4 (Debian: apt install libnats3.4)' <<<"$out")" "2 1"
fi
if ! command -v nats-server >/dev/null; then
  fail "nats-server installed (make deps)" "not found"
  exit 0
fi

# ---------- NATS on a free loopback port (cluster_check.py restarts it with the same command)
NATS_PORT=$(free_port)
NATS_PIDFILE=$T_TMP/nats.pid
NATS_CMD=(nats-server -a 127.0.0.1 -p "$NATS_PORT")
nats_start() {
  "${NATS_CMD[@]}" >>"$T_TMP/nats.log" 2>&1 &
  echo $! >"$NATS_PIDFILE"
  wait_for 10 $PY -c "import socket; socket.create_connection(('127.0.0.1', $NATS_PORT), 1)"
}
# At the end: the nodes first (lib.sh checks they exit 0 on SIGTERM, NATS
# still up), then whichever nats-server runs now (cluster_check.py may have
# restarted it).
_cluster_cleanup() {
  local p
  p=$(cat "$NATS_PIDFILE" 2>/dev/null)
  _t_cleanup
  if [ -n "$p" ]; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null
  fi
}
trap _cluster_cleanup EXIT
# A node started while NATS is down should answer at once and join once NATS
# is up (T_CLUSTER_LATE=0 leaves it out).
if [ "${T_CLUSTER_LATE:-1}" = 1 ]; then
  LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/late.sock
  if linkd_start --nats-url "nats://127.0.0.1:$NATS_PORT" --node-id node-late; then
    LATE_URL=$LINKD_URL LATE_PID=$LINKD_PID
    expect_match "a node started before NATS answers /health, disconnected" "$(curl -s -m 2 "$LATE_URL/health")" '"cluster":"disconnected"'
  else
    kill -KILL "$LINKD_PID" 2>/dev/null; wait "$LINKD_PID" 2>/dev/null   # it would join the checks' cluster later
  fi
fi
nats_start || { fail "nats-server starts on 127.0.0.1:$NATS_PORT" "$(tail -n 3 "$T_TMP/nats.log")"; exit 0; }
if [ -n "${LATE_PID:-}" ]; then
  late_up() { curl -s -m 1 "$LATE_URL/health" | grep -q '"cluster":"connected"'; }
  if wait_for 5 late_up; then pass "the node started before NATS connects once NATS is up"
  else fail "the node started before NATS connects once NATS is up" "$(curl -s -m 2 "$LATE_URL/health")"; fi
  _linkd_term "$LATE_PID"
fi

# node NAME : a linkd with --node-id node-NAME and its chat service
node() {
  local n=$1
  LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/$n.sock
  linkd_start --nats-url "nats://127.0.0.1:$NATS_PORT" --node-id "node-$n" || return 1
  NODE_URL[$n]=$LINKD_URL; NODE_PID[$n]=$LINKD_PID; NODE_SOCK[$n]=$LINKD_SOCK
  [ "$n" = a ] && expect_eq "node a (--nats-url) has loaded libnats" "$(grep -c 'libnats\.so' /proc/"$LINKD_PID"/maps | sed 's/^[1-9][0-9]*$/yes/')" yes
  svc_start "$n" --name chat --instance "chat-$n" --ws /ws/chat || { fail "chat service registers on node $n" "$(tail -n 3 "$SVC_OUT")"; return 1; }
}
write_state() {
  local n sep=''
  {
    printf '{"nats":{"port":%s,"pidfile":"%s","log":"%s","cmd":["nats-server","-a","127.0.0.1","-p","%s"]},"nodes":{' \
      "$NATS_PORT" "$NATS_PIDFILE" "$T_TMP/nats.log" "$NATS_PORT"
    for n in "$@"; do
      printf '%s"%s":{"id":"node-%s","url":"%s","pid":%s,"svc_out":"%s"}' "$sep" "$n" "$n" "${NODE_URL[$n]}" "${NODE_PID[$n]}" "${SVC_OUTS[$n]}"
      sep=,
    done
    printf '}}\n'
  } >"$STATE"
}

node a && node b || exit 0
write_state a b
timeout $((90 * T_SLOW)) $PY "$TESTS/cluster_check.py" two "$STATE" || fail "cluster_check.py two" "exit status $?"

node c || exit 0
write_state a b c
timeout $((120 * T_SLOW)) $PY "$TESTS/cluster_check.py" three "$STATE" || fail "cluster_check.py three" "exit status $?"
# node c was SIGKILLed by the checks: not an exit to judge
wait "${NODE_PID[c]}" 2>/dev/null
for n in a b; do
  kill -0 "${NODE_PID[$n]}" 2>/dev/null && pass "node $n survived NATS' restart and node c's death" \
    || fail "node $n survived NATS' restart and node c's death" "$(tail -n 5 "${LINKD_LOGS[${NODE_PID[$n]}]}" | tr '\n' ' ')"
done
grep -q "node 'node-c' is here" "${LINKD_LOGS[${NODE_PID[a]}]}" && pass "node a logged node c's arrival" || fail "node a logged node c's arrival" "$(grep cluster "${LINKD_LOGS[${NODE_PID[a]}]}" | tail -n 3)"

# ---------- a node alone in its cluster (its own nats-server)
NATS2_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS2_PORT" >>"$T_TMP/nats2.log" 2>&1 &
track $!
if wait_for 10 $PY -c "import socket; socket.create_connection(('127.0.0.1', $NATS2_PORT), 1)"; then
  LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/solo.sock
  if linkd_start --nats-url "nats://127.0.0.1:$NATS2_PORT" --node-id node-solo && svc_start solo --name chat --instance chat-solo --ws /ws/chat; then
    NODE_URL[solo]=$LINKD_URL; NODE_PID[solo]=$LINKD_PID
    printf '{"nodes":{"solo":{"id":"node-solo","url":"%s","pid":%s,"svc_out":"%s"}}}\n' "$LINKD_URL" "$LINKD_PID" "$SVC_OUT" >"$T_TMP/solo.json"
    timeout $((60 * T_SLOW)) $PY "$TESTS/cluster_check.py" solo "$T_TMP/solo.json" || fail "cluster_check.py solo" "exit status $?"
    # A hostile peer on NATS: a hello whose sender id holds CR LF and a NATS
    # command (it would name the subject of an answer) is refused and counted.
    d0=$(metric linkd_cluster_dropped_total)
    $PY - "$NATS2_PORT" <<'PYEOF' || fail "a raw NATS client publishes a forged hello" "exit status $?"
import socket, sys
origin = b'x\r\nSUB > 9'
msg = b'\x0a' + bytes([len(origin)]) + origin + b'\x28\x01'   # ClusterMessage{origin, hello: true}
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)
s.recv(4096)                                                      # INFO
s.sendall(b'CONNECT {"verbose":false}\r\nPUB linkd.hb %d\r\n%s\r\nPING\r\n' % (len(msg), msg))
buf = b''
while b'PONG' not in buf:
    d = s.recv(4096)
    if not d: sys.exit(1)
    buf += d
PYEOF
    dropped_more() { [ "$(metric linkd_cluster_dropped_total)" -gt "${d0:-0}" ]; }
    if wait_for 5 dropped_more; then pass "a message from a sender id that is not a node id is refused and counted (linkd_cluster_dropped_total)"
    else fail "a message from a sender id that is not a node id is refused and counted" "dropped ${d0:-?} -> $(metric linkd_cluster_dropped_total)"; fi
    expect_match "... the node still answers /health" "$(curl -s -m 2 "$LINKD_URL/health")" '"status":"healthy"'
    # a second node without any service on that NATS: it still answers room counts
    SOLO_URL=$LINKD_URL
    LINKD_PORT=$(free_port); LINKD_SOCK=$T_TMP/quiet.sock
    if linkd_start --nats-url "nats://127.0.0.1:$NATS2_PORT" --node-id node-quiet; then
      timeout $((60 * T_SLOW)) $PY "$TESTS/cluster_check.py" quiet "$T_TMP/solo.json" || fail "cluster_check.py quiet" "exit status $?"
    fi
    LINKD_URL=$SOLO_URL
  fi
else
  fail "a second nats-server starts" "$(tail -n 3 "$T_TMP/nats2.log")"
fi

alone
exit 0
