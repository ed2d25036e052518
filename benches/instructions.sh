#!/usr/bin/env bash
# Client instructions per lock cycle of `dragonlock bench`, counted by callgrind: repeatable on a
# noisy machine, where CPU time is not.
#
#   benches/instructions.sh NODES CONCURRENCY [more bench arguments...]
#   benches/instructions.sh 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 64 --no-wake-on-release
#
# Runs the bench twice under callgrind on the same nodes, for 32 and 96 cycles per worker (1,000
# and 3,000 at one worker), and divides the difference of the two counts by the difference of
# the cycles, so that start-up, connects and the report cancel out. Prints the count with and
# without the histograms' work (hdrhistogram: the bench's, not the client's). With `--baseline`
# the single loop runs too, after dragonlock: its count is this one less the count without it.
# Build the CLI first (`cargo build --release --features cli`); needs valgrind. Runs take a
# few seconds each at 64 workers. Start no other benchmark meanwhile.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
nodes=$1
concurrency=$2
shift 2
bin=${DRAGONLOCK_BIN:-$(dirname "$0")/../target/release/dragonlock}
[ -x "$bin" ] || { echo "no $bin: cargo build --release --features cli" >&2; exit 1; }
if [ "$concurrency" -eq 1 ]; then
  few=1000
  many=3000
else
  few=$((concurrency * 32))
  many=$((concurrency * 96))
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# Instructions of one run: the whole program, and the histograms' functions alone.
count() {
  local ops=$1
  shift
  local out=$dir/$ops.out
  valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
    "$bin" bench --nodes "$nodes" --concurrency "$concurrency" --ops "$ops" \
    --duration 120s --warmup 0s "$@" >"$dir/$ops.log" 2>&1 || {
    cat "$dir/$ops.log" >&2
    exit 1
  }
  callgrind_annotate --threshold=100 --inclusive=no --auto=no "$out" | awk '
    /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
    /hdrhistogram/ && $2 ~ /^\(/ { gsub(",", "", $1); hist += $1 }
    END { printf "%d %d\n", total, hist }'
}

read -r total_few hist_few < <(count "$few" "$@")
read -r total_many hist_many < <(count "$many" "$@")
cycles=$((many - few))
awk -v t="$((total_many - total_few))" -v h="$((hist_many - hist_few))" -v n="$cycles" 'BEGIN {
  printf "instructions per lock cycle: %.0f (%.0f without the histograms'"'"' work), over %d cycles\n",
    t / n, (t - h) / n, n }'
