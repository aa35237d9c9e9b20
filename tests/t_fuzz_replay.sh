#!/usr/bin/env bash
# Fuzz regression: every committed corpus file (tests/fuzz/corpus/NAME/:
# seeds and the reproducers of past findings) is run once through its
# libFuzzer harness (build/fuzz/replay/NAME: -O0, ASan + UBSan, linkd.c++
# itself included). One PASS/FAIL line per harness. The harnesses run natively
# whatever LINKD_CMD says (they are not the daemon binary).
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

NAMES="http ws service jwt config"
make -s -k -j2 fuzz-replay-build >"$T_TMP/build.log" 2>&1   # -O0 builds: quicker to make, the same sanitizers

for name in $NAMES; do
  bin=build/fuzz/replay/$name
  # a harness that did not build: its own errors (make -q: up to date?)
  if ! make -s -q "$bin" 2>/dev/null; then
    make -s "$bin" >"$T_TMP/build.$name.log" 2>&1
    fail "fuzz replay $name" "harness build failed: $(grep -E 'error|Error' "$T_TMP/build.$name.log" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
    continue
  fi
  files=(tests/fuzz/corpus/"$name"/*)
  if [ ! -e "${files[0]}" ]; then fail "fuzz replay $name" "no corpus in tests/fuzz/corpus/$name"; continue; fi
  log=$T_TMP/$name.log
  # -close_fd_mask=2 drops linkd's log lines; sanitizer reports still show.
  UBSAN_OPTIONS=print_stacktrace=1 timeout -k 5 120 "$bin" -close_fd_mask=2 -timeout=25 "${files[@]}" >"$log" 2>&1
  rc=$?
  ran=$(grep -c '^Executed ' "$log")
  if [ "$rc" -eq 0 ] && [ "$ran" -eq "${#files[@]}" ]; then
    pass "fuzz replay $name (${#files[@]} inputs)"
  else
    input=$(grep '^Running: ' "$log" | tail -n 1 | cut -d' ' -f2-)
    why=$(grep -E 'SUMMARY|ERROR|fuzz fixture|runtime error' "$log" | head -n 2 | tr '\n' ' ' | cut -c1-300)
    fail "fuzz replay $name" "exit $rc after $ran of ${#files[@]} inputs; last input $input: ${why:-see log}"
  fi
done
