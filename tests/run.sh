#!/usr/bin/env bash
# Runs linkd's own unit tests (`linkd --self-test`), then every executable
# tests/t_*.sh, each under a timeout. Echoes every PASS:/FAIL: line and ends
# with "N passed, N failed". Exit 1 if anything failed or nothing ran.
#   LINKD_CMD="qemu-aarch64-static ./linkd-aarch64" tests/run.sh   # another binary
#   TESTS=http tests/run.sh                                         # only t_*http*.sh
#   T_TIMEOUT=300                                                   # per-script seconds
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
read -r -a LINKD <<< "${LINKD_CMD:-$ROOT/linkd}"
T_TIMEOUT=${T_TIMEOUT:-300}
OUT=$(mktemp -d /tmp/linkd-run.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
passed=0 failed=0

tally() {   # tally FILE : echo its PASS/FAIL lines and count them
  local f=$1 p q
  grep -E '^(PASS|FAIL):' "$f"
  p=$(grep -c '^PASS:' "$f"); q=$(grep -c '^FAIL:' "$f")
  passed=$((passed + p)); failed=$((failed + q))
}

# 1. linkd's unit tests
if [ -z "${TESTS:-}" ] || [[ self-test == *${TESTS}* ]]; then
  echo "== linkd --self-test"
  timeout -k 5 120 "${LINKD[@]}" --self-test >"$OUT/self" 2>&1
  rc=$?
  if ! grep -qE '^(PASS|FAIL):' "$OUT/self"; then
    echo "FAIL: self-test — no PASS:/FAIL: lines from '${LINKD[*]} --self-test' (exit $rc): $(head -c 300 "$OUT/self" | tr '\n' ' ')" >>"$OUT/self"
  elif [ "$rc" -ne 0 ] && ! grep -q '^FAIL:' "$OUT/self"; then
    echo "FAIL: self-test — exit status $rc" >>"$OUT/self"
  fi
  tally "$OUT/self"
fi

# 2. the shell tests
for t in tests/t_*.sh; do
  [ -x "$t" ] || continue
  name=$(basename "$t" .sh)
  if [ -n "${TESTS:-}" ] && [[ $name != *${TESTS}* ]]; then continue; fi
  echo "== $name"
  start=$(date +%s)
  timeout -k 10 "$T_TIMEOUT" "$t" >"$OUT/$name" 2>"$OUT/$name.err"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAIL: $name — timed out after ${T_TIMEOUT}s" >>"$OUT/$name"
  elif [ "$rc" -ne 0 ]; then
    echo "FAIL: $name — script exited with status $rc: $(tail -n 3 "$OUT/$name.err" | tr '\n' ' ' | cut -c1-300)" >>"$OUT/$name"
  elif ! grep -qE '^(PASS|FAIL):' "$OUT/$name"; then
    echo "FAIL: $name — no checks ran: $(tail -n 3 "$OUT/$name.err" | tr '\n' ' ' | cut -c1-300)" >>"$OUT/$name"
  fi
  tally "$OUT/$name"
  echo "   ($name: $(( $(date +%s) - start )) s)"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
