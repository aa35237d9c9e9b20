#!/usr/bin/env bash
# Runs linkd's fuzz harnesses one after another (make fuzz calls it):
#   tests/fuzz/run.sh SECONDS NAME...
# Each harness (build/fuzz/NAME) fuzzes for SECONDS on one core, starting
# from its committed seeds (tests/fuzz/corpus/NAME) and the corpus earlier
# runs grew (build/fuzz/corpus/NAME), and prints one line:
#   fuzz NAME: N runs, K crashes
# Crash, leak, timeout and out-of-memory inputs are kept under
# build/fuzz/crashes/NAME/; the full libFuzzer output is build/fuzz/NAME.log.
# Exit status 1 if any harness crashed.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
secs=${1:?seconds}; shift
FUZZ=build/fuzz
status=0
for name in "$@"; do
  bin=$FUZZ/$name
  work=$FUZZ/corpus/$name
  crashes=$FUZZ/crashes/$name
  log=$FUZZ/$name.log
  mkdir -p "$work" "$crashes"
  dict=()
  [ -f "tests/fuzz/dict/$name.dict" ] && dict=(-dict="tests/fuzz/dict/$name.dict")
  before=$(find "$crashes" -type f | wc -l)
  start=$(date +%s)
  # -close_fd_mask=2: linkd's own log lines are dropped; libFuzzer's and the
  # sanitizers' reports still come through (libFuzzer dups stderr first).
  "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -close_fd_mask=2 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "${dict[@]}" "$work" "tests/fuzz/corpus/$name" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  after=$(find "$crashes" -type f | wc -l)
  n=$((after - before))
  # a sanitizer report without an artifact (e.g. a crash while loading) still counts
  if [ "$n" -eq 0 ] && [ "$rc" -ne 0 ]; then n=1; fi
  # every run's figures, for totals across runs
  echo "$(date -u +%FT%TZ) $name runs=${runs:-0} seconds=$(( $(date +%s) - start )) crashes=$n" >>"$FUZZ/history.txt"
  echo "fuzz $name: ${runs:-0} runs, $n crashes"
  if [ "$n" -ne 0 ]; then
    status=1
    echo "  see $log and $crashes/" >&2
  fi
done
exit $status
