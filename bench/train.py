#!/usr/bin/env python
"""Training-step throughput: our trainer's step against Hugging Face's GPT2LMHeadModel of the same shape.

    python bench/train.py                 # tiny preset + a CI-sized model, fp32 and bf16, batch 8 x 256
    python bench/train.py --steps 10      # more timed steps per row (default 5)

Both sides run the same full step on CPU with 2 threads: a random batch of 8 x 256 tokens, forward,
the same cross-entropy, backward, gradient clipping at 1.0 and a fused AdamW update. Ours is
`Trainer.train_step` itself (configured the GPT-2 way: learned positions, tanh GELU, biases, tied
head; flash attention); the peer is `GPT2LMHeadModel` with attn_implementation="sdpa". Steps of
the two alternate, so both see the same machine load; each figure is the median of the timed steps.
Target: ours >= 1.0x the peer's tokens/s in fp32, on every model (PASS/MISS on each fp32 row; the
bf16 rows are for information). Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyllm_lib.data import TokenData, get_batch
from tinyllm_lib.model import GPTConfig, lm_loss
from tinyllm_lib.optim import configure_optimizer
from tinyllm_lib.tokenizer import BPETokenizer
from tinyllm_lib.trainer import TrainConfig, Trainer, autocast

BATCH, CONTEXT = 8, 256
SHAPES = {
    "tiny preset": GPTConfig.preset("tiny", context_length=CONTEXT),
    "CI-sized": GPTConfig.preset("tiny", vocab_size=1000, d_model=128, n_layers=2, n_heads=4, d_ff=512,
                                 context_length=CONTEXT),
}


def gpt2_way(cfg: GPTConfig) -> GPTConfig:
    return GPTConfig(**{**cfg.__dict__, "pos_emb": "learned", "use_learned_pos_emb": True, "activation": "gelu_tanh",
                        "bias": True, "tie_weights": True, "flash": True, "dropout": 0.0})


def peer_model(cfg: GPTConfig) -> GPT2LMHeadModel:
    hf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel._from_config(hf, attn_implementation="sdpa").train()


class PeerStep:
    """The same step as Trainer.train_step, around Hugging Face's model."""

    def __init__(self, cfg: GPTConfig, tokens: np.ndarray, dtype: torch.dtype):
        self.model, self.tokens, self.dtype = peer_model(cfg), tokens, dtype
        self.optimizer = configure_optimizer(self.model, 1e-3, 0.1)
        self.generator = torch.Generator().manual_seed(0)
        self.device = torch.device("cpu")

    def __call__(self) -> torch.Tensor:
        x, y = get_batch(self.tokens, BATCH, CONTEXT, self.generator)
        with autocast(self.device, self.dtype):
            loss = lm_loss(self.model(input_ids=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def ours(cfg: GPTConfig, tokens: np.ndarray, dtype_name: str, out_dir: str):
    tokenizer = BPETokenizer()  # untrained: the step never looks at it
    data = TokenData(tokenizer, tokens, tokens, len(tokens))
    train_cfg = TrainConfig(batch_size=BATCH, max_iters=10_000, warmup_iters=0, dtype=dtype_name, out_dir=out_dir)
    trainer = Trainer(cfg, train_cfg, data, device="cpu")
    return lambda: trainer.train_step()[0]


def race(cfg: GPTConfig, dtype_name: str, steps: int, warmup: int = 2) -> tuple[float, float]:
    """Median tokens/s of (ours, peer)."""
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 200_000).astype(np.uint16)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    with tempfile.TemporaryDirectory() as out_dir:
        contenders = {"ours": ours(cfg, tokens, dtype_name, out_dir), "peer": PeerStep(cfg, tokens, dtype)}
        times = {name: [] for name in contenders}
        for i in range(warmup + steps):
            for name, step in contenders.items():
                t0 = time.perf_counter()
                step().item()  # wait for the step to finish
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return tuple(BATCH * CONTEXT / statistics.median(times[name]) for name in ("ours", "peer"))


TARGET = 1.0  # ours / peer tokens per second, fp32


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (after 2 warm-up steps)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"training step, batch {BATCH} x {CONTEXT} tokens, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, peer: transformers GPT2LMHeadModel (sdpa)")
    print(f"{'model':<12} {'params':>8} {'dtype':>5} {'ours tok/s':>11} {'HF tok/s':>10} {'ratio':>7}  target")
    ok = True
    for label, shape in SHAPES.items():
        cfg = gpt2_way(shape)
        params = sum(p.numel() for p in peer_model(cfg).parameters())
        for dtype_name in ("fp32", "bf16"):
            mine, peer = race(cfg, dtype_name, args.steps)
            ratio = mine / peer
            judged = f">= {TARGET:.1f}x {verdict(ratio >= TARGET)}" if dtype_name == "fp32" else "(no target)"
            ok &= ratio >= TARGET or dtype_name != "fp32"
            print(f"{label:<12} {params / 1e6:7.2f}M {dtype_name:>5} {mine:11,.0f} {peer:10,.0f} {ratio:6.2f}x  {judged}",
                  flush=True)
    print("\nall targets met" if ok else "\nsome targets MISSED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
