#!/usr/bin/env bash
# Fuzz regression for the C library (sdk/c): every committed input of
# tests/fuzz/corpus/sdk_c (the seeds of tests/fuzz/gen_sdk_c_corpus.py and
# reproducers of past findings) is run once through the libFuzzer harness
# build/fuzz/sdk_c (ASan + UBSan, sdk/c/linkd_service.c itself included). It
# runs natively whatever LINKD_CMD says, as tests/t_fuzz_replay.sh does for
# linkd's harnesses.
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

if ! make -s build/fuzz/sdk_c >"$T_TMP/build.log" 2>&1; then
  fail "fuzz replay sdk_c" "harness build failed: $(grep -E 'error|Error' "$T_TMP/build.log" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
  exit 0
fi
files=(tests/fuzz/corpus/sdk_c/*)
if [ ! -e "${files[0]}" ]; then fail "fuzz replay sdk_c" "no corpus in tests/fuzz/corpus/sdk_c"; exit 0; fi
log=$T_TMP/sdk_c.log
UBSAN_OPTIONS=print_stacktrace=1 timeout -k 5 120 build/fuzz/sdk_c -timeout=25 "${files[@]}" >"$log" 2>&1
rc=$?
ran=$(grep -c '^Executed ' "$log")
if [ "$rc" -eq 0 ] && [ "$ran" -eq "${#files[@]}" ]; then
  pass "fuzz replay sdk_c (${#files[@]} inputs)"
else
  input=$(grep '^Running: ' "$log" | tail -n 1 | cut -d' ' -f2-)
  why=$(grep -E 'SUMMARY|ERROR|runtime error' "$log" | head -n 2 | tr '\n' ' ' | cut -c1-300)
  fail "fuzz replay sdk_c" "exit $rc after $ran of ${#files[@]} inputs; last input $input: ${why:-see log}"
fi
exit 0
