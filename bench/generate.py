#!/usr/bin/env python
"""Generation speed: our KV-cached decoding against our uncached loop and Hugging Face's generate.

    python bench/generate.py              # 256 new tokens, batch 1 and batch 8, tiny preset shape, CPU
    python bench/generate.py --repeats 5  # more timed runs per row (default 3; the median counts)
    python bench/generate.py --threads 1  # torch threads (default 2); 1 on a machine busy with other work

Every contender writes 256 new tokens greedily after the same 8-token prompt, with random weights,
on the CPU with 2 threads (--threads): the tiny preset's shape (d_model 384, 6 layers, 6 heads, d_ff 512,
vocabulary 10,000, context 256). Ours: `generate_ids` with and without the cache. The peer:
`transformers.GPT2LMHeadModel.generate` (sdpa attention, its own KV cache) at the same shape.
Runs of the contenders alternate, so all see the same machine load. Targets: cached >= 3x uncached
and >= 2x Hugging Face, at batch 1; the batch-8 row is printed for information. Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyllm_lib.generate import generate_ids
from tinyllm_lib.model import GPT, GPTConfig

NEW_TOKENS, PROMPT = 256, 1  # the peer has 256 learned positions: 1 + 255 fed tokens fill them
TARGETS = {"uncached": 3.0, "HF": 2.0}


def our_model(cfg: GPTConfig) -> GPT:
    return GPT(cfg).eval()


def peer_model(cfg: GPTConfig) -> GPT2LMHeadModel:
    hf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
                    pad_token_id=0)
    return GPT2LMHeadModel._from_config(hf, attn_implementation="sdpa").eval()


def contenders(cfg: GPTConfig, batch: int) -> dict:
    ours, peer = our_model(cfg), peer_model(cfg)
    prompt = torch.randint(1, cfg.vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)

    def hf():
        with torch.inference_mode():
            out = peer.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
        assert out.shape == (batch, PROMPT + NEW_TOKENS)

    def run(use_cache):
        rows = generate_ids(ours, prompt, NEW_TOKENS, temperature=0, use_cache=use_cache)
        assert all(len(r) == NEW_TOKENS for r in rows)

    return {"cached": lambda: run(True), "uncached": lambda: run(False), "HF": hf}


def race(cfg: GPTConfig, batch: int, repeats: int) -> dict[str, float]:
    """Median tokens/s (new tokens of all rows per second) of each contender."""
    runs = contenders(cfg, batch)
    times = {name: [] for name in runs}
    for i in range(repeats + 1):  # the first round warms up (allocations, kernel choice)
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {name: batch * NEW_TOKENS / statistics.median(t) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", pos_emb="learned", activation="gelu_tanh")  # GPT-2's choices, the peer's
    print(f"greedy generation, {NEW_TOKENS} new tokens after {PROMPT}, tiny preset shape "
          f"({cfg.d_model}/{cfg.n_layers}L/{cfg.n_heads}H, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
          f"context {cfg.context_length}), CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"peer: transformers GPT2LMHeadModel.generate (sdpa, KV cache)")
    print(f"{'batch':>5} {'cached tok/s':>13} {'uncached tok/s':>15} {'HF tok/s':>9} "
          f"{'vs uncached':>12} {'vs HF':>7}")
    missed = []
    for batch in (1, 8):
        speed = race(cfg, batch, args.repeats)
        ratios = {name: speed["cached"] / speed[name] for name in TARGETS}
        print(f"{batch:>5} {speed['cached']:13,.0f} {speed['uncached']:15,.0f} {speed['HF']:9,.0f} "
              f"{ratios['uncached']:11.2f}x {ratios['HF']:6.2f}x", flush=True)
        if batch == 1:
            missed += [f"{name}: {ratios[name]:.2f}x < {target:g}x" for name, target in TARGETS.items()
                       if ratios[name] < target]
    for name, target in TARGETS.items():
        print(f"target cached >= {target:g}x {name} at batch 1: "
              f"{'MISS' if any(m.startswith(name) for m in missed) else 'PASS'}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
