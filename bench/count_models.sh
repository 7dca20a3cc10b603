#!/bin/sh
# Instruction counts (valgrind's callgrind) of the prenorm-bench-models rows,
# N forwards of each row x architecture, one callgrind.out file each.
#
#   bench/count_models.sh <build-dir> <out-dir> [row ...]
#
# <build-dir> holds bench/prenorm-count-forwards, built for valgrind (no
# AVX-512, no FMA; see bench/README.md):
#   cmake -S . -B build/callgrind -DCMAKE_BUILD_TYPE=Release -DPRENORM_NATIVE=OFF \
#     -DCMAKE_CXX_FLAGS='-march=x86-64-v3 -mno-fma -g' -DPRENORM_BUILD_BENCHMARKS=ON \
#     -DPRENORM_BUILD_TESTS=OFF -DPRENORM_BUILD_EXAMPLES=OFF
#   cmake --build build/callgrind --target prenorm-count-forwards
# Rows (default: all): gpt3_small_128 gpt3_small_512 vit_ti16_1 vit_ti16_16
# vit_s16_1 vit_s16_16 vit_b16_1 decode_512; also block_vit_ti16_16 (one
# block of the ViT-Ti b16 forward, BM_block_forward). Output files are
# <out-dir>/<row>.<arch>.out (callgrind) and .log (the program's output).
# Environment: FORWARDS (default 1), CPU (the core to pin to, default 0),
# EIGEN_CACHES (default 49152,2097152,503316480: the sizes Eigen detects
# natively on the benchmark machine; under valgrind it would see valgrind's
# virtual CPU and block its products differently).
#
# GLIBC_TUNABLES raises glibc's rep stosb / rep movsb thresholds, so that memset
# and memcpy use their vector loops at every size: valgrind counts each
# iteration of a rep-prefixed instruction, i.e. one Ir per byte for rep stosb,
# which made Eigen's zeroing of a 128 x 50257 logits buffer (25.7 MB) count
# 25.7 M Ir in some architectures and 0.8 M (vector stores) in others.
set -eu
export GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x7fffffffffffffff:glibc.cpu.x86_rep_movsb_threshold=0x7fffffffffffffff

build=$1
out=$2
shift 2
rows=${*:-"gpt3_small_128 gpt3_small_512 vit_ti16_1 vit_ti16_16 vit_s16_1 vit_s16_16 vit_b16_1 decode_512"}
forwards=${FORWARDS:-1}
cpu=${CPU:-0}
caches=${EIGEN_CACHES:-49152,2097152,503316480}
exe=$build/bench/prenorm-count-forwards
mkdir -p "$out"

for row in $rows; do
  case $row in
    gpt3_small_128) args="gpt3_small BATCH 1 128" ;;
    gpt3_small_512) args="gpt3_small BATCH 1 512" ;;
    vit_ti16_1) args="vit_ti16 BATCH 1 197" ;;
    vit_ti16_16) args="vit_ti16 BATCH 16 197" ;;
    vit_s16_1) args="vit_s16 BATCH 1 197" ;;
    vit_s16_16) args="vit_s16 BATCH 16 197" ;;
    vit_b16_1) args="vit_b16 BATCH 1 197" ;;
    decode_512) args="--decode gpt3_small BATCH 1 512" ;;
    block_vit_ti16_16) args="--block vit_ti16 BATCH 16 197" ;;
    *) echo "count_models.sh: unknown row $row" >&2; exit 2 ;;
  esac
  for arch in pre_ln pre_rmsnorm pre_crmsnorm no_norm; do
    # BATCH stands for the architecture, between the model and the batch.
    set -- $(echo "$args" | sed "s/BATCH/$arch/")
    OMP_NUM_THREADS=1 taskset -c "$cpu" valgrind --tool=callgrind --collect-atstart=no \
      --toggle-collect='*prenorm_counted_forwards*' \
      --callgrind-out-file="$out/$row.$arch.out" \
      "$exe" --forwards="$forwards" --eigen-cache-sizes="$caches" "$@" >"$out/$row.$arch.log" 2>&1
    echo "$row $arch: $(grep -o 'Collected : [0-9]*' "$out/$row.$arch.log")"
  done
done
