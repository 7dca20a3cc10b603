#!/usr/bin/python3
"""The models of prenorm's peer benchmark, in plain PyTorch (Debian's python3-torch).

    models.py generate OUT     the checkpoints, ONNX files, inputs and PyTorch outputs
    models.py time OUT --threads T [--runs N] [--warmup N]
                               PyTorch eager timings, one JSON line per case
    models.py check OUT        the numeric agreement of prenorm, ONNX Runtime and PyTorch
    models.py table TIMES      the table of run.sh from its JSON lines of timings

The models are Pre-LN transformers written here from scratch (no transformers
package), with deterministic random weights (torch.manual_seed(SEED)):
  gpt2      GPT-2 small: 12 layers, d 768, 12 heads, MLP 3072, vocab 50257, tied
            head, gelu_tanh, context 1024, LayerNorm eps 1e-5
  vit_ti16  ViT-Ti/16: d 192, 3 heads, 12 layers, MLP 768, 224x224, 1000 classes,
            exact GELU, LayerNorm eps 1e-12
  vit_s16   ViT-S/16: the same with d 384, 6 heads, MLP 1536
and the cases (model, batch) are gpt2_b1 (T = 128 tokens, logits of every
position), vit_ti16_b1, vit_ti16_b16, vit_s16_b1.

`generate` writes into OUT/<model>/: model.safetensors and config.json in the
Hugging Face layout prenorm reads (include/prenorm/io/hf_gpt2.hpp, hf_vit.hpp),
and for each case <case>.onnx (opset 17, fixed shapes), <case>.input.npy (token
ids int64 [1, T], or pixels float32 [B, 3, 224, 224]; GPT also tokens.txt for
prenorm) and <case>.torch.npy (PyTorch's logits, float32); and OUT/cases.json,
which ort.mjs and run.sh read.
"""

import argparse
import json
import math
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SEED = 20261203
TOKENS = 128  # GPT-2 prompt length


# --- models ------------------------------------------------------------------


class Gpt2Block(nn.Module):
    def __init__(self, d, heads, mlp, eps):
        super().__init__()
        self.heads = heads
        self.head_dim = d // heads  # a Python int: a constant in the ONNX graph
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.c_attn = nn.Linear(d, 3 * d)  # weight (3d, d): the Conv1D weight transposed
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.c_fc = nn.Linear(d, mlp)
        self.mlp_proj = nn.Linear(mlp, d)

    def forward(self, x, causal):  # x [B, T, d], causal [T, T] bool (True: may attend)
        B, T, d = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.reshape(B, T, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd))  # [B, H, T, T]
        scores = scores.masked_fill(~causal, float("-inf"))
        a = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + self.attn_proj(a)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, vocab=50257, context=1024, d=768, heads=12, layers=12, mlp=3072, eps=1e-5):
        super().__init__()
        self.config = dict(vocab=vocab, context=context, d=d, heads=heads, layers=layers, mlp=mlp,
                           eps=eps)
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(Gpt2Block(d, heads, mlp, eps) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=eps)
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).tril(),
                             persistent=False)

    def forward(self, ids):  # ids [B, T] int64 -> logits [B, T, vocab]
        T = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(T))
        causal = self.causal[:T, :T]
        for block in self.h:
            x = block(x, causal)
        return self.ln_f(x) @ self.wte.weight.t()  # the head tied to wte

    def hf_tensors(self):
        """The GPT2Model names (hf_gpt2.hpp); Conv1D weights are (in, out)."""
        t = {"wte.weight": self.wte.weight, "wpe.weight": self.wpe.weight}
        for i, b in enumerate(self.h):
            p = f"h.{i}."
            t[p + "ln_1.weight"], t[p + "ln_1.bias"] = b.ln_1.weight, b.ln_1.bias
            t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = b.c_attn.weight.t(), b.c_attn.bias
            t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = b.attn_proj.weight.t(), b.attn_proj.bias
            t[p + "ln_2.weight"], t[p + "ln_2.bias"] = b.ln_2.weight, b.ln_2.bias
            t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = b.c_fc.weight.t(), b.c_fc.bias
            t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = b.mlp_proj.weight.t(), b.mlp_proj.bias
        t["ln_f.weight"], t["ln_f.bias"] = self.ln_f.weight, self.ln_f.bias
        return t

    def hf_config(self):
        c = self.config
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "vocab_size": c["vocab"], "n_positions": c["context"], "n_ctx": c["context"],
                "n_embd": c["d"], "n_head": c["heads"], "n_layer": c["layers"],
                "n_inner": c["mlp"], "layer_norm_epsilon": c["eps"],
                "activation_function": "gelu_new", "tie_word_embeddings": True}


class VitLayer(nn.Module):
    def __init__(self, d, heads, mlp, eps):
        super().__init__()
        self.heads = heads
        self.head_dim = d // heads  # a Python int: a constant in the ONNX graph
        self.layernorm_before = nn.LayerNorm(d, eps=eps)
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attention_output = nn.Linear(d, d)
        self.layernorm_after = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Linear(d, mlp)
        self.output = nn.Linear(mlp, d)

    def forward(self, x):  # x [B, N, d]
        B, N, d = x.shape
        hd = self.head_dim
        y = self.layernorm_before(x)
        q, k, v = (f(y).reshape(B, N, self.heads, hd).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(hd))
        a = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, d)
        x = x + self.attention_output(a)
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))  # exact GELU


class Vit(nn.Module):
    def __init__(self, d, heads, layers, mlp, image=224, patch=16, channels=3, classes=1000,
                 eps=1e-12):
        super().__init__()
        self.config = dict(d=d, heads=heads, layers=layers, mlp=mlp, image=image, patch=patch,
                           channels=channels, classes=classes, eps=eps)
        patches = (image // patch) ** 2
        self.projection = nn.Conv2d(channels, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + patches, d))
        self.layer = nn.ModuleList(VitLayer(d, heads, mlp, eps) for _ in range(layers))
        self.layernorm = nn.LayerNorm(d, eps=eps)
        self.classifier = nn.Linear(d, classes)

    def forward(self, pixels):  # pixels [B, C, H, W] -> logits [B, classes]
        x = self.projection(pixels).flatten(2).transpose(1, 2)  # [B, patches, d], row by row
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embeddings
        for layer in self.layer:
            x = layer(x)
        return self.classifier(self.layernorm(x[:, 0]))

    def hf_tensors(self):
        """The ViTForImageClassification names (hf_vit.hpp); Linear weights are (out, in)."""
        e = "vit.embeddings."
        t = {e + "cls_token": self.cls_token, e + "position_embeddings": self.position_embeddings,
             e + "patch_embeddings.projection.weight": self.projection.weight,
             e + "patch_embeddings.projection.bias": self.projection.bias}
        for i, l in enumerate(self.layer):
            p = f"vit.encoder.layer.{i}."
            pairs = {"layernorm_before": l.layernorm_before,
                     "attention.attention.query": l.query, "attention.attention.key": l.key,
                     "attention.attention.value": l.value,
                     "attention.output.dense": l.attention_output,
                     "layernorm_after": l.layernorm_after,
                     "intermediate.dense": l.intermediate, "output.dense": l.output}
            for name, module in pairs.items():
                t[p + name + ".weight"], t[p + name + ".bias"] = module.weight, module.bias
        t["vit.layernorm.weight"], t["vit.layernorm.bias"] = self.layernorm.weight, self.layernorm.bias
        t["classifier.weight"], t["classifier.bias"] = self.classifier.weight, self.classifier.bias
        return t

    def hf_config(self):
        c = self.config
        return {"model_type": "vit", "architectures": ["ViTForImageClassification"],
                "hidden_size": c["d"], "num_hidden_layers": c["layers"],
                "num_attention_heads": c["heads"], "intermediate_size": c["mlp"],
                "hidden_act": "gelu", "layer_norm_eps": c["eps"], "image_size": c["image"],
                "patch_size": c["patch"], "num_channels": c["channels"], "qkv_bias": True,
                "num_labels": c["classes"]}


MODELS = {
    "gpt2": lambda: Gpt2(),
    "vit_ti16": lambda: Vit(d=192, heads=3, layers=12, mlp=768),
    "vit_s16": lambda: Vit(d=384, heads=6, layers=12, mlp=1536),
}
# case -> (model, batch)
CASES = {"gpt2_b1": ("gpt2", 1), "vit_ti16_b1": ("vit_ti16", 1),
         "vit_ti16_b16": ("vit_ti16", 16), "vit_s16_b1": ("vit_s16", 1)}


def init_weights(model, seed):
    """Deterministic random weights: matrices, embeddings and biases N(0, 0.02^2);
    LayerNorm gains 1 + N(0, 0.1^2) and biases N(0, 0.1^2), so that the
    conversion to Pre-RMSNorm / Pre-CRMSNorm has real gammas and betas to fold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.LayerNorm) \
                if "." in name else False
            if norm and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif norm:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


# --- safetensors (written and read by hand: 8-byte LE header length, JSON header, data) ---


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        array = np.frombuffer(raw, dtype="<f4", count=(end - start) // 4, offset=8 + n + start)
        out[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return out


def load_model(out, name):
    """The model `name` with the weights of OUT/<name>/model.safetensors."""
    model = MODELS[name]().eval()
    tensors = read_safetensors(out / name / "model.safetensors")
    with torch.no_grad():
        for key, t in model.hf_tensors().items():
            t.copy_(tensors[key])  # t is the parameter or its transposed view (Conv1D)
    return model


# --- commands ------------------------------------------------------------------


def case_input(name, batch, seed):
    generator = torch.Generator().manual_seed(seed + 1 + batch)
    if name == "gpt2":
        return torch.randint(0, 50257, (batch, TOKENS), generator=generator, dtype=torch.int64)
    return torch.randn(batch, 3, 224, 224, generator=generator)


def generate(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    cases = []
    for name, make in MODELS.items():
        torch.manual_seed(SEED)
        model = make().eval()
        init_weights(model, SEED)
        folder = out / name
        folder.mkdir(exist_ok=True)
        write_safetensors(folder / "model.safetensors", model.hf_tensors())
        (folder / "config.json").write_text(json.dumps(model.hf_config(), indent=2) + "\n")
        print(f"{folder}/model.safetensors: {sum(p.numel() for p in model.parameters())} parameters",
              flush=True)
        for case, (model_name, batch) in CASES.items():
            if model_name != name:
                continue
            x = case_input(name, batch, SEED)
            np.save(folder / f"{case}.input.npy", x.numpy())
            if name == "gpt2":
                (folder / f"{case}.tokens.txt").write_text(",".join(map(str, x[0].tolist())) + "\n")
            with torch.inference_mode():
                y = model(x)
            np.save(folder / f"{case}.torch.npy", y.numpy().astype(np.float32))
            input_name = "input_ids" if name == "gpt2" else "pixel_values"
            with torch.no_grad():
                torch.onnx.export(model, (x,), str(folder / f"{case}.onnx"), opset_version=17,
                                  input_names=[input_name], output_names=["logits"],
                                  do_constant_folding=True)
            cases.append({"case": case, "model": name, "batch": batch, "kind": "gpt" if name == "gpt2" else "vit",
                          "dir": name, "input": f"{case}.input.npy", "input_name": input_name,
                          "onnx": f"{case}.onnx"})
            print(f"  {case}: input {tuple(x.shape)}, logits {tuple(y.shape)}, onnx written", flush=True)
    (out / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - start))
    return statistics.median(ms), min(ms), max(ms)


def time_cases(out, threads, warmup, runs):
    torch.set_num_threads(threads)
    cases = json.loads((out / "cases.json").read_text())
    models = {}
    for c in cases:
        if c["model"] not in models:
            models[c["model"]] = load_model(out, c["model"])
        model = models[c["model"]]
        x = torch.from_numpy(np.load(out / c["dir"] / c["input"]))
        with torch.inference_mode():
            median, low, high = median_ms(lambda: model(x), warmup, runs)
        print(json.dumps({"case": c["case"], "engine": "torch", "threads": threads, "runs": runs,
                          "median_ms": median, "min_ms": low, "max_ms": high}), flush=True)


def relative_error(result, reference):
    """max |result - reference| / max |reference|, over every logit."""
    result = result.reshape(-1).astype(np.float64)
    reference = reference.reshape(-1).astype(np.float64)
    if result.shape != reference.shape:
        raise SystemExit(f"shape mismatch: {result.shape} vs {reference.shape}")
    return float(np.max(np.abs(result - reference)) / np.max(np.abs(reference)))


def check(out, engines, tolerance):
    """Compares <case>.<engine>.npy with <case>.torch.npy for every case and engine."""
    worst = 0.0
    for c in json.loads((out / "cases.json").read_text()):
        folder = out / c["dir"]
        reference = np.load(folder / f"{c['case']}.torch.npy")
        parts = []
        for engine in engines:
            e = relative_error(np.load(folder / f"{c['case']}.{engine}.npy"), reference)
            worst = max(worst, e)
            parts.append(f"{engine} {e:.2e}")
        print(f"{c['case']:13s} max relative error vs PyTorch: " + ", ".join(parts))
    status = "ok" if worst <= tolerance else "FAILED"
    print(f"worst {worst:.2e} (tolerance {tolerance:g}): {status}")
    return worst <= tolerance


ENGINES = [("prenorm_pre_ln", "prenorm pre_ln"), ("prenorm_pre_crmsnorm", "prenorm pre_crmsnorm"),
           ("ort", "ORT"), ("torch", "PyTorch")]


def table(times_file):
    """A Markdown table of the JSON lines of run.sh: per case, engine and thread
    count, the lowest of its medians (one per round)."""
    medians = {}
    for line in Path(times_file).read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        engine = d.get("engine") or "prenorm_" + d["arch"]
        key = (d["case"], engine, d["threads"])
        medians[key] = min(medians.get(key, math.inf), d["median_ms"])
    threads = sorted({key[2] for key in medians})
    print("| case | threads | " + " | ".join(f"{label} (ms)" for _, label in ENGINES)
          + " | pre_ln / ORT | pre_crmsnorm / ORT |")
    print("| --- | ---: |" + " ---: |" * (len(ENGINES) + 2))
    for t in threads:
        for case in CASES:
            row = [medians.get((case, engine, t)) for engine, _ in ENGINES]
            cells = [f"{v:.2f}" if v is not None else "-" for v in row]
            ort = row[2]
            ratios = [f"{v / ort:.2f}" if v is not None and ort else "-" for v in row[:2]]
            print(f"| {case} | {t} | " + " | ".join(cells + ratios) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("out", type=Path)
    t = sub.add_parser("time")
    t.add_argument("out", type=Path)
    t.add_argument("--threads", type=int, required=True)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--runs", type=int, default=20)
    c = sub.add_parser("check")
    c.add_argument("out", type=Path)
    c.add_argument("--engines", default="ort,prenorm,prenorm_crms")
    c.add_argument("--tolerance", type=float, default=1e-4)
    tb = sub.add_parser("table")
    tb.add_argument("times", type=Path, help="the JSON lines of the timings (run.sh: OUT/times.jsonl)")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.out)
    elif args.command == "time":
        time_cases(args.out, args.threads, args.warmup, args.runs)
    elif args.command == "table":
        table(args.times)
    else:
        sys.exit(0 if check(args.out, args.engines.split(","), args.tolerance) else 1)


if __name__ == "__main__":
    main()
