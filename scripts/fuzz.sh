#!/usr/bin/env bash
# Runs every fuzz target (common/fuzz) for a fixed number of executions and prints
# the counts. Outside CI: a few minutes on 2 cores. docs/fuzzing.md explains it.
#
#   scripts/fuzz.sh                 every target, the default counts (> 10 million)
#   scripts/fuzz.sh plan names      only these targets
#   FUZZ_SCALE=10 scripts/fuzz.sh   ten times the executions
#
# cargo-fuzz needs nightly-only compiler flags (-Z sanitizer...). With only the
# stable toolchain here, RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_DIR=common/fuzz
SCALE=${FUZZ_SCALE:-1}
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: FUZZ_SCALE must be a whole number from 1 (got \"$SCALE\")" >&2; exit 2; }
# `none` is the fast default: the code under test forbids `unsafe`, and libFuzzer
# still catches every panic, overflow (debug assertions on) and runaway allocation.
SANITIZER=${FUZZ_SANITIZER:-none}

# target executions (the fast decoders get more, the TOML parsers fewer).
TARGETS=(
  "frame_decoder 3000000"
  "frame_reader 1500000"
  "names 2000000"
  "show_stat 1500000"
  "mod_status 1500000"
  "plan 500000"
  "agent_config 300000"
  "coordinator_config 300000"
)

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

wanted=("$@")
selected() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" --debug-assertions

total=0
summary=()
for entry in "${TARGETS[@]}"; do
  read -r target runs <<<"$entry"
  selected "$target" || continue
  runs=$((runs * SCALE))
  corpus="$FUZZ_DIR/corpus/$target"
  mkdir -p "$corpus"
  seeds=()
  [ -d "$FUZZ_DIR/seeds/$target" ] && seeds=("$FUZZ_DIR/seeds/$target")
  log="$FUZZ_DIR/artifacts/$target.log"
  mkdir -p "$(dirname "$log")"
  echo "== $target: $runs executions"
  if ! cargo fuzz run --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" --debug-assertions \
      "$target" "$corpus" "${seeds[@]}" -- -runs="$runs" -max_len=4096 >"$log" 2>&1; then
    tail -40 "$log"
    echo "FAILED: $target crashed; the input is in $FUZZ_DIR/artifacts/$target/ (log: $log)" >&2
    exit 1
  fi
  done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1)
  done_runs=$(awk '{print $2}' <<<"$done_line")
  secs=$(awk '{print $5}' <<<"$done_line")
  echo "   $done_line"
  total=$((total + done_runs))
  summary+=("$(printf '%-20s %12s runs %6ss' "$target" "$done_runs" "$secs")")
done

echo
printf '%s\n' "${summary[@]}"
printf '%-20s %12s runs, no crash\n' total "$total"
