"""Padded, answer-masked batches whose rows hold very different numbers of targets, for the Trainer.

`RaggedPairs` stands in for chapter 08's `QATokenData`: its `get_batch` serves fixed examples in
order, each batch right-padded to its longest row, so a test can cut the same examples into one
batch, k micro-batches or one shard per process and compare the gradients.
"""

import os
from types import SimpleNamespace

import torch

from tinyllm_lib.model import IGNORE_INDEX, GPTConfig

VOCAB, CONTEXT = 48, 24
MODEL = GPTConfig.preset("tiny", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                         context_length=CONTEXT, dropout=0.0)  # no dropout: masks would differ


def ragged_examples(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (x, y) pairs: a prompt of 3..8 masked targets, then 1..15 answer targets (lengths vary 4-20)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = int(torch.randint(3, 9, (), generator=g))
        answer = 1 + (i * 7) % 15  # short and long answers mixed in every batch
        ids = torch.randint(4, VOCAB, (prompt + answer + 1,), generator=g)
        x, y = ids[:-1].clone(), ids[1:].clone()
        y[: prompt - 1] = IGNORE_INDEX  # the question's targets: not trained
        out.append((x, y))
    return out


def pad(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(x) for x, _ in rows)
    x = torch.zeros(len(rows), T, dtype=torch.long)  # pad id 0
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        x[i, : len(a)], y[i, : len(b)] = a, b
    return x, y


class RaggedPairs:
    """What the Trainer reads from its data, serving `examples` in order: step s, micro-batch m.

    Each batch of the whole job holds `global_batch` examples; under torchrun, rank r takes its
    contiguous share (the RANK and WORLD_SIZE environment variables), as a sharded sampler would.
    """

    def __init__(self, examples, global_batch: int, world_size: int = 1, rank: int = 0):
        self.examples, self.global_batch, self.world_size, self.rank = examples, global_batch, world_size, rank
        self.tokenizer = SimpleNamespace(vocab_size=VOCAB, to_dict=lambda: {"vocab": VOCAB})
        self.train, self.val = "train", "val"  # the names the Trainer hands back to get_batch
        self.val_chars_per_token = 1.0
        self.served = {"train": 0, "val": 0, "eval train": 0}  # global batches served so far, per stream
        self.train_sampler = None  # set to a trainer's sampler to tell its batches from evaluation's

    @classmethod
    def from_env(cls, examples, global_batch: int):
        return cls(examples, global_batch, int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")))

    def get_batch(self, dataset, batch_size, context_length, generator, device="cpu", split=""):
        assert batch_size * self.world_size == self.global_batch, (batch_size, self.world_size, self.global_batch)
        evaluating = self.train_sampler is not None and generator is not self.train_sampler
        stream = "eval train" if dataset == "train" and evaluating else dataset
        start = (self.served[stream] * self.global_batch) % len(self.examples)
        self.served[stream] += 1
        rows = self.examples[start : start + self.global_batch]
        mine = rows[self.rank * batch_size : (self.rank + 1) * batch_size]
        x, y = pad(mine)
        return x.to(device), y.to(device)


def step_gradients(trainer) -> list[list[torch.Tensor]]:
    """Record the gradients the optimizer receives at each step (after clipping, before the update)."""
    seen, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([p.grad.detach().clone() for p in trainer.raw_model.parameters()])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return seen
