#!/usr/bin/env python3
"""Summarizes the callgrind files of bench/count_models.sh as markdown tables.

    bench/callgrind_summary.py <out-dir> [--breakdown ROW ...]

Reads <out-dir>/<row>.<arch>.out (and the .log next to it for the number of
forwards) and prints
  - Ir per forward for every row and architecture, the ratio to pre_ln, and
    the share of normalization 1 - no_norm / pre_ln;
  - with --breakdown, for the rows named, where the Ir of one forward go:
    Eigen's matrix products (gebp kernel and packing, with prenorm's padded
    driver; gemv, with the masked-tail one), the
    normalization kernels (with the residual add fused into them; for
    no_norm, the residual add alone), GELU, attention (softmax and the rest of
    MultiHeadAttention), memset/memcpy (mostly Eigen zeroing a product's
    destination), and the rest.
Self costs per function come from callgrind_annotate (all functions,
--threshold=100), summed over the source files a function's lines come from.
"""

import os
import re
import subprocess
import sys

ROWS = [
    ("gpt3_small_128", "GPT-3 Small, batch 1, seq 128", "tokens"),
    ("gpt3_small_512", "GPT-3 Small, batch 1, seq 512", "tokens"),
    ("vit_ti16_1", "ViT-Ti/16, batch 1", "images"),
    ("vit_ti16_16", "ViT-Ti/16, batch 16", "images"),
    ("vit_s16_1", "ViT-S/16, batch 1", "images"),
    ("vit_s16_16", "ViT-S/16, batch 16", "images"),
    ("vit_b16_1", "ViT-B/16, batch 1", "images"),
    ("decode_512", "GPT-3 Small KV-cache step, context 512", "tokens"),
]
ARCHS = ["pre_ln", "pre_rmsnorm", "pre_crmsnorm", "no_norm"]

# (category, regex on the function name), first match wins.
CATEGORIES = [
    ("gemm", re.compile(r"gebp_kernel|gemm_pack_lhs|gemm_pack_rhs|lhs_process_one_packet|"
                        r"general_matrix_matrix_product|gemm_functor|PaddedProduct")),
    ("gemv", re.compile(r"general_matrix_vector_product|MaskedTailGemv")),
    ("norm", re.compile(r"layer_norm|rms_norm|LayerNorm|RmsNorm|CrmsNorm|normalize_rows")),
    ("residual add", re.compile(r"ArchTraits<\(prenorm::Arch\)3>::add_forward")),
    ("gelu", re.compile(r"\berff\b|Mlp<float>::forward|gelu")),
    ("attention", re.compile(r"softmax|MultiHeadAttention|expf")),
    ("memset/memcpy", re.compile(r"memset|memcpy|memmove")),
]
COLUMNS = ["gemm", "gemv", "norm", "residual add", "gelu", "attention", "memset/memcpy", "other"]

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")


def forwards_of(log_path):
    with open(log_path) as f:
        m = re.search(r"forwards=(\d+)", f.read())
    return int(m.group(1)) if m else 1


def function_costs(out_path):
    """{function: self Ir} from callgrind_annotate, summed over source files."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", out_path],
                          check=True, capture_output=True, text=True).stdout
    costs = {}
    body = text.split("file:function", 1)[1].split("\n", 2)[2]
    for line in body.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        where = m.group(2)
        fn = where.split(":", 1)[1] if ":" in where else where
        fn = re.sub(r" \[[^\]]*\]$", "", fn).strip()
        costs[fn] = costs.get(fn, 0) + ir
    return costs


def total_ir(out_path):
    with open(out_path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise ValueError(f"no totals in {out_path}")


def categorize(costs):
    cats = {c: 0 for c in COLUMNS}
    for fn, ir in costs.items():
        for name, rx in CATEGORIES:
            if rx.search(fn):
                cats[name] += ir
                break
        else:
            cats["other"] += ir
    return cats


def fmt_ir(x):
    if x >= 1e9:
        return f"{x / 1e9:.3f} G"
    return f"{x / 1e6:.1f} M"


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    out_dir = args[0]
    breakdown = args[2:] if len(args) > 1 and args[1] == "--breakdown" else []

    print("| model | " + " | ".join(ARCHS) + " | pre_rmsnorm / pre_ln | pre_crmsnorm / pre_ln | "
          "no_norm / pre_ln | norm share |")
    print("| --- |" + " ---: |" * (len(ARCHS) + 4))
    for row, title, _ in ROWS:
        paths = {a: os.path.join(out_dir, f"{row}.{a}.out") for a in ARCHS}
        if not all(os.path.exists(p) for p in paths.values()):
            continue
        ir = {a: total_ir(p) / forwards_of(p[:-4] + ".log") for a, p in paths.items()}
        base = ir["pre_ln"]
        cells = [fmt_ir(ir[a]) for a in ARCHS]
        ratios = [f"{ir[a] / base:.4f}" for a in ARCHS[1:]]
        share = f"{100 * (1 - ir['no_norm'] / base):.2f} %"
        print(f"| {title} | " + " | ".join(cells + ratios + [share]) + " |")

    for row in breakdown:
        title = dict((r, t) for r, t, _ in ROWS)[row]
        print(f"\n{title}: Ir per forward by where they are spent (share of the architecture's total)\n")
        print("| architecture | total | " + " | ".join(COLUMNS) + " |")
        print("| --- | ---: |" + " ---: |" * len(COLUMNS))
        for a in ARCHS:
            p = os.path.join(out_dir, f"{row}.{a}.out")
            n = forwards_of(p[:-4] + ".log")
            cats = categorize(function_costs(p))
            tot = total_ir(p)
            cells = [f"{fmt_ir(cats[c] / n)} ({100 * cats[c] / tot:.2f} %)" if cats[c] else "–"
                     for c in COLUMNS]
            print(f"| {a} | {fmt_ir(tot / n)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
