#!/usr/bin/env bash
# prenorm's peer benchmark: prenorm, ONNX Runtime and PyTorch on the same models
# and the same CPU (README.md). Not part of CI.
#
#   bench/peers/run.sh
#
# Environment (all optional):
#   PEERS_OUT    the generated models, inputs, outputs and timings (default bench/peers/out)
#   PEERS_BUILD  prenorm's build folder (default build/peers; configured here when missing)
#   ROUNDS       timing rounds (default 3); each round times every engine in turn
#   RUNS         timed forwards per case, engine and round (default 10): their median
#   WARMUP       untimed forwards first (default 2)
#   REGENERATE=1 rewrites the models even when OUT/cases.json exists
#
# Steps: generate the models (models.py), install onnxruntime-node when missing,
# build prenorm-infer and prenorm-peers-time, check that prenorm (Pre-LN, and
# converted to Pre-CRMSNorm), ONNX Runtime and PyTorch compute the same logits
# (max relative error <= 1e-4, else exit 1), time every engine at 1 thread
# pinned to core 1 and at 2 threads on cores 0 and 1, and print the table.
# The host is shared, so a burst of other work can inflate one engine's
# median: the engines take turns in ROUNDS rounds, and the table keeps, for
# each case, engine and thread count, the lowest of its round medians.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${PEERS_OUT:-$HERE/out}
BUILD=${PEERS_BUILD:-$ROOT/build/peers}
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
PY=/usr/bin/python3  # Debian's python3-torch and python3-onnx

step() { printf '\n== %s\n' "$*" >&2; }

step "models ($OUT)"
if [[ ! -f "$OUT/cases.json" || "${REGENERATE:-0}" == 1 ]]; then
  "$PY" "$HERE/models.py" generate "$OUT"
else
  echo "present (REGENERATE=1 rewrites them)" >&2
fi

step "onnxruntime-node"
if [[ ! -d "$HERE/node_modules/onnxruntime-node" ]]; then
  # skip: its postinstall would otherwise download GPU parts.
  (cd "$HERE" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund)
fi
echo "onnxruntime-node $(node -p "require('$HERE/node_modules/onnxruntime-node/package.json').version")" >&2

step "prenorm ($BUILD)"
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPRENORM_BUILD_BENCHMARKS=ON \
    -DPRENORM_BUILD_EXAMPLES=ON -DPRENORM_BUILD_TESTS=OFF -DPRENORM_NATIVE=ON >&2
fi
cmake --build "$BUILD" --target prenorm-infer prenorm-peers-time -j2 >&2
INFER="$BUILD/examples/prenorm-infer"
TIME="$BUILD/bench/prenorm-peers-time"

# "case dir kind" per line, from cases.json.
mapfile -t CASES < <("$PY" -c 'import json, sys
for c in json.load(open(sys.argv[1])): print(c["case"], c["dir"], c["kind"])' "$OUT/cases.json")

# The input flag of a case for prenorm-infer / prenorm-peers-time.
infer_input() {  # case dir kind
  if [[ $3 == gpt ]]; then echo --tokens "$(cat "$OUT/$2/$1.tokens.txt")"
  else echo --image "$OUT/$2/$1.input.npy"; fi
}
time_input() {
  if [[ $3 == gpt ]]; then echo --tokens-file "$OUT/$2/$1.tokens.txt"
  else echo --image "$OUT/$2/$1.input.npy"; fi
}

step "numeric check (logits vs PyTorch's)"
for entry in "${CASES[@]}"; do
  read -r case dir kind <<<"$entry"
  # shellcheck disable=SC2046  # the input flag and its value are two words
  "$INFER" "$OUT/$dir/model.safetensors" $(infer_input "$case" "$dir" "$kind") \
    --logits-out "$OUT/$dir/$case.prenorm.npy" >/dev/null
  # shellcheck disable=SC2046
  "$TIME" "$OUT/$dir/model.safetensors" $(time_input "$case" "$dir" "$kind") --arch pre_crmsnorm \
    --warmup 0 --runs 1 --logits-out "$OUT/$dir/$case.prenorm_crms.npy" >/dev/null
done
node "$HERE/ort.mjs" "$OUT" --threads 2 --warmup 0 --runs 1 --outputs >/dev/null
"$PY" "$HERE/models.py" check "$OUT" --engines prenorm,prenorm_crms,ort --tolerance 1e-4

TIMES="$OUT/times.jsonl"
: >"$TIMES"
for ((round = 1; round <= ROUNDS; ++round)); do
for threads in 1 2; do
  if [[ $threads == 1 ]]; then cpus=1; else cpus=0,1; fi
  step "timing, round $round of $ROUNDS: $threads thread(s), taskset -c $cpus, $RUNS runs after $WARMUP warm-up"
  export OMP_NUM_THREADS=$threads
  for entry in "${CASES[@]}"; do
    read -r case dir kind <<<"$entry"
    for arch in pre_ln pre_crmsnorm; do
      # shellcheck disable=SC2046
      taskset -c "$cpus" "$TIME" "$OUT/$dir/model.safetensors" $(time_input "$case" "$dir" "$kind") \
        --arch "$arch" --threads "$threads" --warmup "$WARMUP" --runs "$RUNS" --label "$case" \
        | tee -a "$TIMES" >&2
    done
  done
  taskset -c "$cpus" node "$HERE/ort.mjs" "$OUT" --threads "$threads" --warmup "$WARMUP" \
    --runs "$RUNS" | tee -a "$TIMES" >&2
  taskset -c "$cpus" "$PY" "$HERE/models.py" time "$OUT" --threads "$threads" --warmup "$WARMUP" \
    --runs "$RUNS" | tee -a "$TIMES" >&2
done
done

step "results (ms: the lowest of $ROUNDS round medians of $RUNS runs; $(date -u '+%Y-%m-%d %H:%M UTC'); $(lscpu | sed -n 's/^Model name: *//p'); load $(cut -d' ' -f1-3 /proc/loadavg))"
"$PY" "$HERE/models.py" table "$TIMES"
