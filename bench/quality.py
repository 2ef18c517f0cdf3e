#!/usr/bin/env python
"""Quality: the best model a 2-core CPU trains on Tiny Shakespeare in N minutes, in bits per character,
raced against the classic character-level "baby GPT" recipe at the same wall-clock budget.

    python bench/quality.py                     # budgets of 2, 5 and 15 minutes (about 22 minutes)
    python bench/quality.py --minutes 0.5       # a short check that the script works

Two recipes train at the same time, each in its own process with one thread, so that both see the same
machine (the same load, the same clock) for the same number of minutes:
- **ours**: what `--time_budget` trains when no flag is given (`tinyllm_lib.budget.BUDGET_RECIPE`):
  BPE with 512 tokens, 4 layers x 128, context 64, batch 16, lr 3e-3 -> 3e-4, and dropout 0.2 only
  if the plan makes 10 or more passes over the training tokens (`MEMORISE_EPOCHS`);
- **baby GPT**: the character-level recipe nanoGPT's README runs on a CPU (4 layers x 128, 4 heads,
  block 64, batch 12, lr 1e-3 decayed to 1e-4, warmup 100, no dropout, no biases, learned positions,
  beta2 0.99), reproduced with our trainer and a character-level tokenizer (our BPE with no merges:
  the 65 characters of the text and 4 special tokens).
Each run times its first steps and sizes its warmup + cosine schedule to end with the budget, and
re-sizes the rest after each evaluation from the pace it measured (`fit_time_budget`, what
`python -m tinyllm_lib.train --time_budget MINUTES` does). The figure is the loss
over the *whole* validation split (non-overlapping windows), in bits per character, so that a
character-level and a BPE model compare. Goal: ours lower at every budget; exit status 1 if not.

One run on an idle 2-core CPU:

     budget   ours   baby GPT   ours/baby
      2 min   2.350    2.713     0.866x PASS
      5 min   2.196    2.355     0.933x PASS
     15 min   2.188    2.206     0.992x PASS   (ours: dropout 0.2, planned for 30 passes over the data)

At 15 minutes the margin is small, and ours ends barely below its own 5-minute figure: the dropout
rule (none below 10 planned passes, 0.2 above) is coarse. Before this recipe, the settings of chapter
04's section 11 (context 128, lr 2e-3, dropout 0.2 at 15 minutes) lost at 15 minutes (2.507 against
2.354 in one race on a loaded machine) and at 2 minutes (3.694 against 3.121).
The summary of every run is written to <out_dir>/quality.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tinyllm_lib.budget import BUDGET_PLACEHOLDER_ITERS, BUDGET_RECIPE, fit_time_budget
from tinyllm_lib.corpus import DATA_DIR, load_corpus
from tinyllm_lib.data import prepare_data
from tinyllm_lib.model import GPTConfig, lm_loss
from tinyllm_lib.trainer import TrainConfig, Trainer, bits_per_char

BABY_GPT = {
    "model": dict(d_model=128, n_layers=4, n_heads=4, d_ff=512, context_length=64, dropout=0.0, bias=False,
                  pos_emb="learned"),
    "vocab_size": 69,  # no merges: 65 characters + 4 special tokens
    "train": dict(batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1,
                  grad_clip=1.0, dtype="float32", eval_iters=10),
}


OURS = {"model": BUDGET_RECIPE["model"], "vocab_size": BUDGET_RECIPE["vocab_size"],
        "train": {**BUDGET_RECIPE["train"], "dtype": "float32", "eval_iters": 10},
        "auto_dropout": True}  # what --time_budget does when --dropout is not given
RECIPES = {"ours": OURS, "baby GPT": BABY_GPT}


@torch.no_grad()
def full_validation_loss(model: torch.nn.Module, tokens, context_length: int, batch_size: int = 32) -> float:
    """Mean next-token loss over every token of `tokens`, in non-overlapping windows."""
    model.eval()
    ids = torch.from_numpy(tokens[: (len(tokens) - 1) // context_length * context_length + 1].astype("int64"))
    x = ids[:-1].view(-1, context_length)  # (N, T)
    y = ids[1:].view(-1, context_length)  # (N, T)
    total = 0.0
    for i in range(0, len(x), batch_size):
        total += lm_loss(model(x[i : i + batch_size]), y[i : i + batch_size]).item() * len(x[i : i + batch_size])
    model.train()
    return total / len(x)


def train_recipe(name: str, minutes: float, out_dir: str) -> dict:
    """Train one recipe for `minutes` on one thread; returns its figures (the child process's job)."""
    torch.set_num_threads(1)
    recipe = RECIPES[name]
    data = prepare_data(load_corpus("tinyshakespeare"), recipe["vocab_size"], DATA_DIR / "cache",
                        name="tinyshakespeare")
    start = time.perf_counter()  # the tokenizer is cached for both recipes before the race starts
    model_cfg = GPTConfig.preset("tiny", vocab_size=data.tokenizer.vocab_size, **recipe["model"])
    cfg = TrainConfig(max_iters=BUDGET_PLACEHOLDER_ITERS, out_dir=out_dir, **recipe["train"])
    trainer = Trainer(model_cfg, cfg, data, device="cpu")
    with open(Path(out_dir) / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        fit_time_budget(trainer, minutes, start=start, auto_dropout=recipe.get("auto_dropout", False))
    seconds = time.perf_counter() - start
    val_loss = full_validation_loss(trainer.raw_model, data.val, model_cfg.context_length)
    return {"recipe": name, "minutes": minutes, "seconds": seconds, "steps": trainer.step,
            "tokens": trainer.step * trainer.tokens_per_step, "params": trainer.raw_model.num_params(),
            "chars_per_token": data.val_chars_per_token, "val_loss": val_loss,
            "bpc": bits_per_char(val_loss, data.val_chars_per_token),
            "settings": {**asdict(trainer.model_cfg), **asdict(trainer.cfg)}}


def race(minutes: float, out_dir: Path) -> list[dict]:
    """Both recipes at once, one process and one thread each, for `minutes`."""
    for name in RECIPES:  # tokenize first (cached), so that the race times training only
        recipe = RECIPES[name]
        prepare_data(load_corpus("tinyshakespeare"), recipe["vocab_size"], DATA_DIR / "cache", name="tinyshakespeare")
    children = []
    for name in RECIPES:
        run_dir = out_dir / f"{minutes:g}min-{name.replace(' ', '-')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        children.append(subprocess.Popen([sys.executable, __file__, "--child", name, "--minutes", str(minutes),
                                          "--out_dir", str(run_dir)], stdout=subprocess.PIPE, text=True))
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a race process failed (exit {child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0, 15.0], help="budgets (default 2 5 15)")
    parser.add_argument("--out_dir", default="runs/quality", help="one folder per run: checkpoints, metrics, log")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(train_recipe(args.child, args.minutes[0], args.out_dir)))
        return 0

    print(f"Tiny Shakespeare, {torch.get_num_threads()} cores here; both recipes train at the same time, one thread each")
    header = f"{'budget':>7} {'recipe':>9} {'params':>9} {'steps':>6} {'tokens':>10} {'chars/tok':>9} {'val bits/char':>14}"
    rows, verdicts = [], []
    for minutes in args.minutes:
        results = race(minutes, Path(args.out_dir))
        rows += results
        by_name = {r["recipe"]: r for r in results}
        ratio = by_name["ours"]["bpc"] / by_name["baby GPT"]["bpc"]
        verdicts.append((minutes, ratio))
        print(f"\n{header}")
        for r in results:
            print(f"{r['minutes']:6g}m {r['recipe']:>9} {r['params']:9,} {r['steps']:6d} {r['tokens']:10,} "
                  f"{r['chars_per_token']:9.2f} {r['bpc']:14.3f}")
        print(f"ours/baby GPT = {ratio:.3f} (goal < 1) {'PASS' if ratio < 1 else 'MISS'}")
    (Path(args.out_dir) / "quality.json").write_text(json.dumps(rows, indent=1))
    print("\nsummary: " + " | ".join(f"{m:g} min {r:.3f}x {'PASS' if r < 1 else 'MISS'}" for m, r in verdicts))
    return 0 if all(r < 1 for _, r in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
