"""Every target token of a step weighs the same: the Trainer sums the per-token losses of all its
micro-batches (and processes) and divides once by their target count. Padded question-answer
batches hold different numbers of targets, so a mean per micro-batch would weigh a token of a
short answer more than one of a long answer."""

import json
import math
from pathlib import Path

import pytest
import torch
from ragged_pairs import MODEL, RaggedPairs, pad, ragged_examples, step_gradients

from tinyllm_lib import trainer as trainer_mod
from tinyllm_lib.data import prepare_data
from tinyllm_lib.distributed import launch
from tinyllm_lib.model import IGNORE_INDEX, GPTConfig, lm_loss
from tinyllm_lib.optim import get_lr
from tinyllm_lib.trainer import TrainConfig, Trainer

EXAMPLES = ragged_examples(40)


def config(tmp_path, **overrides):
    base = dict(batch_size=8, max_iters=5, warmup_iters=0, lr=1e-2, min_lr=1e-3, grad_clip=0.0, eval_iters=2,
                eval_interval=100, log_interval=1, dtype="float32", out_dir=str(tmp_path))
    return TrainConfig(**{**base, **overrides})


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def token_mean_gradients(model, rows):
    """The gradient of (sum of every target's loss) / (number of targets) over `rows`, by hand."""
    model.zero_grad(set_to_none=True)
    x, y = pad(rows)
    (lm_loss(model(x), y, reduction="sum") / (y != IGNORE_INDEX).sum()).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("micro_batch, k", [(4, 2), (2, 4), (1, 8)])
def test_accumulation_on_ragged_pairs_equals_one_batch(tmp_path, micro_batch, k):
    """k micro-batches of padded pairs give the gradients (1e-6) and, after 5 AdamW steps, the
    parameters (1e-5) of one batch of the same 8 pairs. In float64: Adam divides each gradient by its
    running RMS, which magnifies float32 rounding in the components whose gradient is near zero."""
    one = Trainer(MODEL, config(tmp_path / "one"), RaggedPairs(EXAMPLES, 8), device="cpu")
    acc = Trainer(MODEL, config(tmp_path / "acc", batch_size=micro_batch, grad_accumulation_steps=k),
                  RaggedPairs(EXAMPLES, micro_batch), device="cpu")
    one.raw_model.double(), acc.raw_model.double()  # the optimizers hold the same Parameter objects
    assert all(torch.equal(p, q) for p, q in zip(one.raw_model.parameters(), acc.raw_model.parameters()))
    seen_one, seen_acc = step_gradients(one), step_gradients(acc)
    for _ in range(5):
        loss_one, *_ = one.train_step()
        loss_acc, *_ = acc.train_step()
        assert loss_acc.item() == pytest.approx(loss_one.item(), rel=1e-6)
    scale = max(g.abs().max().item() for g in seen_one[0])
    assert max_diff(seen_acc[0], seen_one[0]) < 1e-6 * max(1.0, scale), max_diff(seen_acc[0], seen_one[0])
    assert max_diff(acc.raw_model.parameters(), one.raw_model.parameters()) < 1e-5


def test_the_step_follows_the_token_mean_and_not_the_mean_of_micro_batch_means(tmp_path):
    """The gradient is the token mean's, computed by hand; the mean of the micro-batches' means
    (what a per-micro-batch `lm_loss(...) / k` gives) is far from it on these batches."""
    trainer = Trainer(MODEL, config(tmp_path, batch_size=2, grad_accumulation_steps=4), RaggedPairs(EXAMPLES, 2),
                      device="cpu")
    reference = trainer_mod.GPT(MODEL)
    reference.load_state_dict(trainer.raw_model.state_dict())
    rows = EXAMPLES[:8]
    right = token_mean_gradients(reference, rows)
    reference.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):  # the bug: each micro-batch averaged over its own targets, then / 4
        x, y = pad(rows[i : i + 2])
        (lm_loss(reference(x), y) / 4).backward()
    wrong = [p.grad.clone() for p in reference.parameters()]
    seen = step_gradients(trainer)
    trainer.train_step()
    assert max_diff(seen[0], right) < 1e-6
    assert max_diff(wrong, right) > 1e-3  # the test can tell the two apart


def test_logged_loss_is_the_token_mean_and_tokens_per_second_counts_targets(tmp_path, monkeypatch):
    data = RaggedPairs(EXAMPLES, 4)
    trainer = Trainer(MODEL, config(tmp_path, batch_size=4, grad_accumulation_steps=2, max_iters=3), data,
                      device="cpu")
    data.train_sampler = trainer.sampler
    clock = iter(range(10_000))
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: float(next(clock)))  # 1 s between reads
    reference = trainer_mod.GPT(MODEL)
    reference.load_state_dict(trainer.raw_model.state_dict())
    x, y = pad(EXAMPLES[:8])
    first_loss = lm_loss(reference(x), y).item()  # the mean over all targets of the first step
    history = trainer.fit()
    logs = [r for r in history if "loss" in r]
    assert logs[0]["loss"] == pytest.approx(first_loss, rel=1e-6)
    targets = [int((pad(EXAMPLES[i : i + 8])[1] != IGNORE_INDEX).sum()) for i in (0, 8, 16)]
    assert [r["tok_per_s"] for r in logs] == targets  # targets trained on, not padded windows


def test_evaluation_is_token_weighted(tmp_path):
    """val_loss = summed loss / targets over the evaluation batches, not a mean of batch means."""
    data = RaggedPairs(EXAMPLES, 4)
    trainer = Trainer(MODEL, config(tmp_path, batch_size=4, eval_iters=3), data, device="cpu")
    data.train_sampler = trainer.sampler
    rows = EXAMPLES[:12]  # the validation stream's first 3 batches of 4 pairs
    x, y = pad(rows)
    with torch.no_grad():
        expected = lm_loss(trainer.raw_model(x), y).item()
    metrics = trainer.evaluate()
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)


# -- fixed-length text: the same training as the mean-per-micro-batch formula, bit for bit ---------

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def mean_per_micro_batch_step(trainer):
    """The training step before token weighting: lm_loss's mean per micro-batch, divided by k."""
    cfg, k = trainer.cfg, trainer.cfg.grad_accumulation_steps
    lr = get_lr(trainer.step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for _ in range(k):
        x, y = trainer.get_batch(trainer.data.train, trainer.batch_size, trainer.model_cfg.context_length,
                                 trainer.sampler, trainer.device)
        loss = lm_loss(trainer.model(x), y)
        (loss / k).backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(trainer.raw_model.parameters(), cfg.grad_clip or math.inf)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.step += 1
    return total / k


@pytest.mark.parametrize("k", [1, 3])
def test_fixed_length_text_trains_exactly_as_before(tmp_path, k):
    """Windows of text all hold B*T targets: the parameters stay bit-identical to the old formula's
    (with dropout on, so the random streams must match too) and the losses agree to float rounding."""
    data = prepare_data(TEXT, 80, tmp_path / "cache", name="citizens")
    cfg = GPTConfig.preset("tiny", vocab_size=data.tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4,
                           d_ff=64, context_length=32, dropout=0.1)
    train = dict(batch_size=4, grad_accumulation_steps=k, max_iters=20, warmup_iters=3, lr=3e-3, grad_clip=1.0)
    new = Trainer(cfg, config(tmp_path / "new", **train), data, device="cpu")
    new_losses = [new.train_step()[0].item() for _ in range(20)]
    old = Trainer(cfg, config(tmp_path / "old", **train), data, device="cpu")  # the same seeds
    old_losses = [mean_per_micro_batch_step(old) for _ in range(20)]
    assert all(torch.equal(p, q) for p, q in zip(new.raw_model.parameters(), old.raw_model.parameters()))
    assert new_losses == pytest.approx(old_losses, rel=2e-7, abs=0)


# -- several processes -------------------------------------------------------------------------------

def test_two_processes_on_ragged_pairs_equal_one_process():
    """2 ranks x B/2 pairs (and 2 ranks x 2 micro-batches of B/4) against 1 process x B, in float64:
    gradients after one step to 1e-6, parameters after 5 AdamW steps to 1e-5, the same logged loss."""
    out = launch(str(Path(__file__).parent / "ddp_token_weighting.py"), nproc=2, timeout=240, show=False)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    print(result)
    assert result["world_size"] == 2
    assert len(set(result["targets"])) > 4  # the shards really hold different numbers of targets
    for name in ("shards", "shards with accumulation"):
        assert result[name]["grads"] < 1e-6, result
        assert result[name]["params"] < 1e-5, result
        assert result[name]["loss"] < 1e-6, result
