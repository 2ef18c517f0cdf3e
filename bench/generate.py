#!/usr/bin/env python
"""Generation speed against its bound: our KV-cached decoding, our uncached loop and Hugging Face's generate.

    python bench/generate.py              # the full race (a few minutes): threads, batch 1 (fp32, bf16, int8), batch 8
    python bench/generate.py --quick      # a smoke run: few tokens, one repeat, a small bandwidth test
    python bench/generate.py --threads 1  # skip the thread sweep and use this many torch threads
    python bench/generate.py --repeats 5  # more timed runs per row (default 3; the median counts)

Batch-1 decoding reads every weight once per token and does about 2 flops with it, so its speed limit
is memory bandwidth: tokens/s <= bandwidth / bytes of weights read per token. The script measures the
machine's matrix-vector bandwidth (an fp32 matvec whose matrix is far larger than the caches: bytes /
seconds, the best of several runs), computes that bound for each weight format, and prints beside each
contender's tokens/s the fraction of its bound it reaches.

Every contender writes NEW_TOKENS new tokens greedily after a 1-token prompt, with random weights, on the
CPU: the tiny preset's shape with GPT-2's choices (d_model 384, 6 layers, 6 heads, d_ff 512, vocabulary
10,000, context 256, learned positions, tanh GELU). Ours: `generate_ids` with and without the cache, with
fp32 weights, bf16 weights (`model.to(torch.bfloat16)`), bf16 weights pre-packed for oneDNN's kernels
(an experiment, through torch's private mkldnn ops) and int8 weight-only quantization (`quantize_int8`,
an experiment); and the compiled step (`compile=True`: `CompiledStep`, a static cache and one graph per
step, exported with `torch.export` and compiled by inductor) with fp32 and bf16 weights, its compilation
done in the warm-up round. The peer: `transformers.GPT2LMHeadModel.generate` (sdpa attention, its own KV
cache) at the same shape, fp32 and bf16. Runs of the contenders alternate, so all see the
same machine load.

Threads: unless --threads is given, batch-1 fp32 cached decoding is timed at 1..cpu_count threads and
the fastest count is used for everything (at batch 1 a second thread often costs more than it gives).

Targets (batch 1): our fastest fp32 row (eager or compiled step) >= 90% of the measured bound; our fastest
bf16 row >= 1.5x our fastest fp32 row where the CPU has bf16 units (AVX512-BF16 or AMX; else the row is
printed for information); cached >= 3x uncached.
The batch-8 row is for information. Exit 1 on a miss (never in --quick mode: its timings mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyllm_lib.budget import fast_bf16
from tinyllm_lib.generate import generate_ids, matvec_bandwidth, quantize_int8, weight_bytes_per_token
from tinyllm_lib.model import GPT, GPTConfig

PROMPT = 1  # the peer has 256 learned positions: 1 + 255 fed tokens fill them
CPU = torch.device("cpu")
TARGET_BOUND, TARGET_BF16, TARGET_UNCACHED = 0.90, 1.5, 3.0


class PackedBF16Linear(torch.nn.Module):
    """An experiment, not in the library: a Linear layer with its bf16 weight pre-packed by oneDNN
    (the layout its AVX512-BF16/AMX kernels read), called through torch's private mkldnn ops. Plain
    bf16 `F.linear` on one row can be slower than fp32 on a CPU; this is what the hardware can do."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(torch.bfloat16), 1)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packed_bf16(model: GPT) -> GPT | None:
    """A bf16 copy of `model` with every Linear layer pre-packed; None where torch lacks the ops."""
    import copy

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return None
    packed = copy.deepcopy(model).to(torch.bfloat16)
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PackedBF16Linear(child))
    return packed


def our_model(cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(0)  # the same random weights for every format
    return GPT(cfg).eval().to(dtype)


def peer_model(cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    hf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
                    pad_token_id=0)
    torch.manual_seed(0)
    return GPT2LMHeadModel._from_config(hf, attn_implementation="sdpa").eval().to(dtype)


def prompt_of(cfg: GPTConfig, batch: int) -> torch.Tensor:
    return torch.randint(1, cfg.vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(0))


def ours(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool = True, compile: bool = False):
    def run():
        rows = generate_ids(model, prompt, new_tokens, temperature=0, use_cache=use_cache, compile=compile)
        assert all(len(r) == new_tokens for r in rows)
        return rows
    return run


def peer(model: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int):
    mask = torch.ones_like(prompt)

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, use_cache=True)
        assert out.shape == (prompt.size(0), PROMPT + new_tokens)
        return out
    return run


def race(runs: dict, tokens: int, repeats: int) -> dict[str, float]:
    """Median tokens/s (new tokens of all rows per second) of each contender, runs interleaved."""
    times = {name: [] for name in runs}
    for i in range(repeats + 1):  # the first round warms up (allocations, kernel choice)
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def pick_threads(cfg: GPTConfig, new_tokens: int, repeats: int) -> int:
    """The thread count at which batch-1 fp32 cached decoding is fastest (each count timed in turn)."""
    model, prompt = our_model(cfg), prompt_of(cfg, 1)
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    times = {n: [] for n in counts}
    for i in range(repeats + 1):
        for n in counts:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            ours(model, prompt, new_tokens)()
            if i:
                times[n].append(time.perf_counter() - t0)
    speed = {n: new_tokens / statistics.median(t) for n, t in times.items()}
    print("threads: " + ", ".join(f"{n}: {s:,.0f} tok/s" for n, s in speed.items()), flush=True)
    return max(speed, key=speed.get)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the fastest)")
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per run (at most 255 for the peer)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 tokens, 1 repeat, small matrices")
    args = parser.parse_args(argv)
    new_tokens = 16 if args.quick else min(args.tokens, 255)
    repeats = 1 if args.quick else args.repeats
    cfg = GPTConfig.preset("tiny", pos_emb="learned", activation="gelu_tanh")  # GPT-2's choices, the peer's
    print(f"greedy generation, {new_tokens} new tokens after {PROMPT}, tiny preset shape "
          f"({cfg.d_model}/{cfg.n_layers}L/{cfg.n_heads}H, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
          f"context {cfg.context_length}), CPU, torch {torch.__version__}, "
          f"bf16 units: {'yes' if fast_bf16(CPU) else 'no'}{', QUICK: timings mean nothing' if args.quick else ''}")
    threads = args.threads or pick_threads(cfg, new_tokens, repeats)
    torch.set_num_threads(threads)
    bandwidth = matvec_bandwidth(64 if args.quick else 2048, repeats=2 if args.quick else 10)
    print(f"using {threads} thread(s); matrix-vector bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"(fp32 matvec, {'64 MB' if args.quick else '2 GB'} matrix)", flush=True)

    # batch 1: every weight format, ours and the peer
    prompt = prompt_of(cfg, 1)
    fp32, bf16 = our_model(cfg), our_model(cfg, torch.bfloat16)
    int8 = quantize_int8(fp32)
    models = {"cached fp32": fp32, "cached bf16": bf16, "cached int8": int8}
    packed = packed_bf16(fp32)
    if packed is not None:
        models["cached bf16 packed"] = packed
    runs = {name: ours(m, prompt, new_tokens) for name, m in models.items()}
    runs["compiled fp32"] = ours(fp32, prompt, new_tokens, compile=True)
    runs["compiled bf16"] = ours(bf16, prompt, new_tokens, compile=True)
    runs["uncached fp32"] = ours(fp32, prompt, new_tokens, use_cache=False)
    runs["HF fp32"] = peer(peer_model(cfg), prompt, new_tokens)
    runs["HF bf16"] = peer(peer_model(cfg, torch.bfloat16), prompt, new_tokens)
    bytes_of = {name: weight_bytes_per_token(models.get(name, fp32 if "fp32" in name else bf16)) for name in runs}
    if packed is not None:  # oneDNN's packed layout hides the bytes: the same as plain bf16
        bytes_of["cached bf16 packed"] = bytes_of["cached bf16"]
    speed = race(runs, new_tokens, repeats)
    print(f"\nbatch 1     {'MB/token':>13} {'bound tok/s':>12} {'tok/s':>8} {'of bound':>9} {'vs cached fp32':>15}")
    for name, s in speed.items():
        bound = bandwidth / bytes_of[name]
        print(f"{name:<18} {bytes_of[name] / 1e6:8.1f} {bound:12,.0f} {s:8,.0f} {s / bound:9.0%} "
              f"{s / speed['cached fp32']:14.2f}x", flush=True)
    greedy = {name: ours(m, prompt, new_tokens)()[0] for name, m in models.items()}
    greedy["compiled fp32"] = runs["compiled fp32"]()[0]
    greedy["compiled bf16"] = runs["compiled bf16"]()[0]
    for name in [n for n in greedy if n != "cached fp32"]:
        same = greedy[name] == greedy["cached fp32"]
        print(f"{name}: greedy tokens {'equal to' if same else 'differ from'} fp32's "
              "(random weights: see chapter 07 for what the formats do to a trained model's text)")

    # batch 8, fp32, for information
    prompt8 = prompt_of(cfg, 8)
    runs8 = {"cached fp32": ours(fp32, prompt8, new_tokens), "uncached fp32": ours(fp32, prompt8, new_tokens, False),
             "HF fp32": peer(peer_model(cfg), prompt8, new_tokens)}
    speed8 = race(runs8, 8 * new_tokens, repeats)
    print("\nbatch 8: " + ", ".join(f"{name} {s:,.0f} tok/s" for name, s in speed8.items()))

    best_fp32 = max(speed["cached fp32"], speed["compiled fp32"])
    checks = [(f"fastest fp32 >= {TARGET_BOUND:.0%} of the bound",
               best_fp32 / (bandwidth / bytes_of["cached fp32"]) >= TARGET_BOUND),
              (f"cached >= {TARGET_UNCACHED:g}x uncached", speed["cached fp32"] >= TARGET_UNCACHED * speed["uncached fp32"])]
    if fast_bf16(CPU):
        best_bf16 = max(s for name, s in speed.items() if "bf16" in name and not name.startswith("HF"))
        checks.append((f"fastest bf16 >= {TARGET_BF16:g}x fastest fp32", best_bf16 >= TARGET_BF16 * best_fp32))
    print()
    for what, ok in checks:
        print(f"target {what} at batch 1: {'PASS' if ok else 'MISS'}")
    if args.quick:
        return 0
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
