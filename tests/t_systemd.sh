#!/usr/bin/env bash
# systemd notification protocol, as Type=notify + WatchdogSec= use it: linkd sends
# READY=1 (with STATUS=) once it listens, WATCHDOG=1 every WATCHDOG_USEC/2, and
# STOPPING=1 on SIGTERM before exiting 0 — to $NOTIFY_SOCKET, a datagram socket
# (a path, or "@name" in the abstract namespace). A small Python listener plays systemd.
. "$(dirname "$0")/lib.sh"

# notify.py ADDRESS LOG : binds a datagram socket, one JSON line per datagram in LOG.
cat >"$T_TMP/notify.py" <<'EOF'
import json, os, socket, sys, time
addr, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
with open(log, "a") as f:
    f.write(json.dumps({"t": time.monotonic(), "msg": "LISTENING"}) + "\n"); f.flush()
    while True:
        data, _ = s.recvfrom(65536)
        f.write(json.dumps({"t": time.monotonic(), "msg": data.decode("utf-8", "replace")}) + "\n"); f.flush()
EOF

# notify_start ADDRESS : starts the listener; sets NLOG.
NN=0
notify_start() {
  NN=$((NN+1)); NLOG=$T_TMP/notify.$NN.log; : >"$NLOG"
  $PY -u "$T_TMP/notify.py" "$1" "$NLOG" 2>"$NLOG.err" &
  track $!
  wait_for 10 grep -q LISTENING "$NLOG" || { log "listener: $(cat "$NLOG.err")"; return 1; }
}
# nl_count REGEX : datagrams holding a line matching REGEX (lines are KEY=VALUE)
nl_count() { $PY - "$NLOG" "$1" <<'EOF'
import json, re, sys
n = 0
for line in open(sys.argv[1]):
    m = json.loads(line)["msg"]
    if m != "LISTENING" and any(re.fullmatch(sys.argv[2], l) for l in m.split("\n")): n += 1
print(n)
EOF
}
nl_has() { [ "$(nl_count "$1")" -ge "${2:-1}" ]; }
nl_dump() { $PY -c 'import json,sys; print(" | ".join(json.loads(l)["msg"].replace("\n","\\n") for l in open(sys.argv[1]))[:400])' "$NLOG"; }
# watchdog_stats : seconds between the first and the last WATCHDOG=1, and their count
watchdog_stats() { $PY - "$NLOG" <<'EOF'
import json, sys
t = [json.loads(l)["t"] for l in open(sys.argv[1]) if "WATCHDOG=1" in json.loads(l)["msg"].split("\n")]
print(len(t), round(t[-1] - t[0], 3) if len(t) > 1 else 0)
EOF
}

# term_wait PID : SIGTERM, then sets RC to the exit status (or "timeout" after 15 s).
# Not in $(...): only the shell that started linkd can `wait` for its status.
term_wait() {
  kill -TERM "$1" 2>/dev/null
  if wait_for 15 _not_running "$1"; then wait "$1" 2>/dev/null; RC=$?; else RC=timeout; fi
}

# start_notified ADDRESS [env...] : linkd with NOTIFY_SOCKET=ADDRESS (+ env), WATCHDOG_PID = its own pid
ORIG=("${LINKD[@]}")
start_notified() {
  local addr=$1; shift
  LINKD_PORT= LINKD_SOCK=$T_TMP/linkd.$NN.sock
  LINKD=(env NOTIFY_SOCKET="$addr" "$@" bash -c 'export WATCHDOG_PID=$$; exec "$@"' linkd "${ORIG[@]}")
  linkd_start --shutdown-timeout 2s
  local rc=$?
  LINKD=("${ORIG[@]}")
  return $rc
}

# ---------------------------------------------------------------- path socket
notify_start "$T_TMP/notify.sock" || fail "notify listener starts"
if start_notified "$T_TMP/notify.sock" WATCHDOG_USEC=2000000; then
  if wait_for 10 nl_has 'READY=1'; then pass "READY=1 sent to \$NOTIFY_SOCKET"
  else fail "READY=1 sent to \$NOTIFY_SOCKET" "datagrams: $(nl_dump)"; fi
  # READY means listening: /health answers at once, no retry
  HS=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$LINKD_URL/health")
  expect_eq "after READY=1 /health answers" "$HS" 200
  if nl_has 'STATUS=.+'; then pass "STATUS= sent (with or before READY)"
  else fail "STATUS= sent (with or before READY)" "datagrams: $(nl_dump)"; fi
  ready_n=$(nl_count 'READY=1')
  expect_eq "READY=1 sent once" "$ready_n" 1

  # WATCHDOG_USEC=2 s -> a ping about every second; at least 2 within a bounded wait
  if wait_for 12 nl_has 'WATCHDOG=1' 3; then
    pass "WATCHDOG=1 repeats (>= 3 pings)"
    read -r wn wspan <<<"$(watchdog_stats)"
    # Loose sanity only: 3+ pings span >= ~1 s at a 1 s period, and they are not a flood.
    if $PY -c "import sys; n,s=$wn,$wspan; sys.exit(0 if s >= 0.9 and n <= s/0.25 + 2 else 1)"; then
      pass "WATCHDOG=1 paced by WATCHDOG_USEC/2 ($wn pings over ${wspan}s)"
    else
      fail "WATCHDOG=1 paced by WATCHDOG_USEC/2" "$wn pings over ${wspan}s (want about 1/s)"
    fi
  else
    fail "WATCHDOG=1 repeats (>= 3 pings)" "$(nl_count 'WATCHDOG=1') pings; datagrams: $(nl_dump)"
  fi

  term_wait "$LINKD_PID"
  expect_eq "SIGTERM: exit status 0" "$RC" 0
  if nl_has 'STOPPING=1'; then pass "SIGTERM: STOPPING=1 sent"
  else fail "SIGTERM: STOPPING=1 sent" "datagrams: $(nl_dump)"; fi
  # STOPPING=1 comes after READY=1
  order=$($PY -c '
import json,sys
m=[json.loads(l)["msg"].split("\n") for l in open(sys.argv[1])]
r=[i for i,x in enumerate(m) if "READY=1" in x]; s=[i for i,x in enumerate(m) if "STOPPING=1" in x]
print("ok" if r and s and r[0] < s[0] else "bad")' "$NLOG")
  expect_eq "READY=1 precedes STOPPING=1" "$order" ok
fi

# ---------------------------------------------------------------- abstract namespace
ABS="@linkd-test-$$-$RANDOM"
notify_start "$ABS" || fail "abstract notify listener starts"
if start_notified "$ABS" WATCHDOG_USEC=2000000; then
  if wait_for 10 nl_has 'READY=1'; then pass "abstract @name: READY=1 received"
  else fail "abstract @name: READY=1 received" "datagrams: $(nl_dump)"; fi
  if wait_for 12 nl_has 'WATCHDOG=1' 2; then pass "abstract @name: WATCHDOG=1 repeats"
  else fail "abstract @name: WATCHDOG=1 repeats" "$(nl_count 'WATCHDOG=1') pings"; fi
  term_wait "$LINKD_PID"
  expect_eq "abstract @name: SIGTERM exit 0" "$RC" 0
  if nl_has 'STOPPING=1'; then pass "abstract @name: STOPPING=1 received"
  else fail "abstract @name: STOPPING=1 received" "datagrams: $(nl_dump)"; fi
fi

# ---------------------------------------------------------------- no watchdog requested
# Without WATCHDOG_USEC (or with WATCHDOG_PID naming another process) there are no pings.
notify_start "$T_TMP/notify-nowd.sock" || fail "listener starts"
if start_notified "$T_TMP/notify-nowd.sock"; then
  wait_for 10 nl_has 'READY=1' || true
  # An absence needs a window: 2.5 s, in which WATCHDOG_USEC=2 s would have given 2 pings.
  end=$(( $(date +%s%N) + 2500000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do nl_has 'WATCHDOG=1' && break; sleep 0.1; done
  expect_eq "no WATCHDOG_USEC: no WATCHDOG=1 pings" "$(nl_count 'WATCHDOG=1')" 0
  linkd_stop
fi
notify_start "$T_TMP/notify-otherpid.sock" || fail "listener starts"
LINKD_PORT= LINKD_SOCK=$T_TMP/other.sock
LINKD=(env NOTIFY_SOCKET="$T_TMP/notify-otherpid.sock" WATCHDOG_USEC=1000000 WATCHDOG_PID=1 "${ORIG[@]}")
if linkd_start; then
  LINKD=("${ORIG[@]}")
  wait_for 10 nl_has 'READY=1' || true
  end=$(( $(date +%s%N) + 2000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do nl_has 'WATCHDOG=1' && break; sleep 0.1; done
  expect_eq "WATCHDOG_PID of another process: no pings" "$(nl_count 'WATCHDOG=1')" 0
  linkd_stop
fi
LINKD=("${ORIG[@]}")

# ---------------------------------------------------------------- unreachable socket
# A NOTIFY_SOCKET nobody listens on must not stop linkd from serving.
LINKD_PORT= LINKD_SOCK=$T_TMP/nobody.sock
LINKD=(env NOTIFY_SOCKET="$T_TMP/nobody-listens.sock" WATCHDOG_USEC=1000000 "${ORIG[@]}")
if linkd_start; then
  pass "NOTIFY_SOCKET with no listener: linkd still serves"
  term_wait "$LINKD_PID"
  expect_eq "NOTIFY_SOCKET with no listener: SIGTERM exit 0" "$RC" 0
fi
LINKD=("${ORIG[@]}")
exit 0
