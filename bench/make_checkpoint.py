#!/usr/bin/python3
"""Writes a GPT-2-shaped Pre-LN checkpoint in the Hugging Face GPT-2 layout
(F16 safetensors + config.json), for measuring prenorm-convert at real size.

    /usr/bin/python3 bench/make_checkpoint.py OUT_DIR [--layers N] [--shards K]
        [--width D] [--heads H] [--vocab V] [--context C] [--seed S]

Defaults are GPT-2-medium's shapes (355 M parameters: 24 layers, d 1024, 16
heads, vocab 50257, context 1024). With --shards K > 1 the tensors go into K
files model-0000i-of-0000K.safetensors of about equal size, with the index
model.safetensors.index.json (the Hugging Face convention); else one
model.safetensors. The head is tied (no lm_head.weight), as in GPT-2.

Weights are random with GPT-2's scales: embeddings and linear weights
N(0, 0.02), the residual output projections N(0, 0.02 / sqrt(2 layers)),
linear biases N(0, 0.02), LayerNorm gammas N(1, 0.1) and betas N(0, 0.05)
(non-zero affines, so that the conversion folds something). Needs numpy only.
"""

import argparse
import json
import math
import os
import struct

import numpy as np


def tensors(args, rng):
    """(name, shape, scale, offset) of every tensor, in GPT-2's order."""
    d, inner, L = args.width, 4 * args.width, args.layers
    proj = 0.02 / math.sqrt(2 * max(L, 1))
    yield "wte.weight", (args.vocab, d), 0.02, 0.0
    yield "wpe.weight", (args.context, d), 0.01, 0.0
    for i in range(L):
        h = f"h.{i}."
        yield h + "ln_1.weight", (d,), 0.1, 1.0
        yield h + "ln_1.bias", (d,), 0.05, 0.0
        yield h + "attn.c_attn.weight", (d, 3 * d), 0.02, 0.0  # Conv1D: (in, out)
        yield h + "attn.c_attn.bias", (3 * d,), 0.02, 0.0
        yield h + "attn.c_proj.weight", (d, d), proj, 0.0
        yield h + "attn.c_proj.bias", (d,), 0.02, 0.0
        yield h + "ln_2.weight", (d,), 0.1, 1.0
        yield h + "ln_2.bias", (d,), 0.05, 0.0
        yield h + "mlp.c_fc.weight", (d, inner), 0.02, 0.0
        yield h + "mlp.c_fc.bias", (inner,), 0.02, 0.0
        yield h + "mlp.c_proj.weight", (inner, d), proj, 0.0
        yield h + "mlp.c_proj.bias", (d,), 0.02, 0.0
    yield "ln_f.weight", (d,), 0.1, 1.0
    yield "ln_f.bias", (d,), 0.05, 0.0


def write_file(path, entries, rng):
    """One safetensors file with `entries` [(name, shape, scale, offset)], F16."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _, _ in entries:
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text.encode())
        for name, shape, scale, shift in entries:
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(shift)
            out.write(values.astype("<f2").tobytes())
    return offset


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.width % args.heads != 0 or args.shards < 1:
        parser.error("width must be divisible by heads, and shards >= 1")
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)

    entries = list(tensors(args, rng))
    if args.shards == 1:
        total = write_file(os.path.join(args.out_dir, "model.safetensors"), entries, rng)
    else:
        # Consecutive tensors into shards of about total / K bytes each.
        sizes = [2 * math.prod(shape) for _, shape, _, _ in entries]
        target, groups, filled = sum(sizes) / args.shards, [[]], 0
        for entry, size in zip(entries, sizes):
            if filled >= target * len(groups) and len(groups) < args.shards:
                groups.append([])
            groups[-1].append(entry)
            filled += size
        weight_map, total = {}, 0
        for i, group in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            total += write_file(os.path.join(args.out_dir, name), group, rng)
            weight_map.update({entry[0]: name for entry in group})
        with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as out:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, out, indent=2)

    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": args.vocab, "n_positions": args.context, "n_ctx": args.context,
        "n_embd": args.width, "n_head": args.heads, "n_layer": args.layers, "n_inner": None,
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        "tie_word_embeddings": True, "torch_dtype": "float16",
    }
    with open(os.path.join(args.out_dir, "config.json"), "w") as out:
        json.dump(config, out, indent=2)
    print(f"{args.out_dir}: {args.layers} layers, {total} bytes of F16 tensors in "
          f"{args.shards} file(s)")


if __name__ == "__main__":
    main()
