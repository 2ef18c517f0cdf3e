"""Schedule, optimizer groups, accumulation, checkpoints, exact resume, NaN guard (tinyllm_lib.optim, .trainer,
.checkpoint, .train)."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from tinyllm_lib import trainer as trainer_mod
from tinyllm_lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
)
from tinyllm_lib.data import get_batch, prepare_data
from tinyllm_lib.guards import TrainingDiverged
from tinyllm_lib.model import GPT, GPTConfig, lm_loss
from tinyllm_lib.optim import configure_optimizer, get_lr
from tinyllm_lib.trainer import (
    TrainConfig,
    Trainer,
    bits_per_char,
    resolve_dtype,
)

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(TEXT, 80, tmp_path_factory.mktemp("cache"), name="citizens")


def model_cfg(data, **overrides):
    base = dict(vocab_size=data.tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                context_length=32, dropout=0.1)
    return GPTConfig.preset("tiny", **{**base, **overrides})


def train_cfg(out_dir, **overrides):
    base = dict(batch_size=4, max_iters=12, warmup_iters=3, lr=3e-3, min_lr=3e-4, eval_interval=6,
                eval_iters=2, log_interval=1, dtype="float32", out_dir=str(out_dir))
    return TrainConfig(**{**base, **overrides})


def losses(history):
    return [r["loss"] for r in history if "loss" in r]


# -- schedule ---------------------------------------------------------------------------------------

def test_lr_warmup_is_linear_from_zero():
    assert get_lr(0, 1e-3, 1e-4, 100, 1000) == 0.0
    assert get_lr(25, 1e-3, 1e-4, 100, 1000) == pytest.approx(2.5e-4)
    assert get_lr(99, 1e-3, 1e-4, 100, 1000) == pytest.approx(9.9e-4)


def test_lr_cosine_values():
    assert get_lr(100, 1e-3, 1e-4, 100, 1000) == pytest.approx(1e-3)  # peak right after warmup
    assert get_lr(550, 1e-3, 1e-4, 100, 1000) == pytest.approx(5.5e-4)  # half-way: mean of max and min
    quarter = 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4))
    assert get_lr(325, 1e-3, 1e-4, 100, 1000) == pytest.approx(quarter)
    assert get_lr(1000, 1e-3, 1e-4, 100, 1000) == pytest.approx(1e-4)
    assert get_lr(5000, 1e-3, 1e-4, 100, 1000) == pytest.approx(1e-4)  # flat after max_iters
    decay = [get_lr(i, 1e-3, 1e-4, 100, 1000) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_lr_without_warmup_and_with_warmup_equal_to_max_iters():
    assert get_lr(0, 1e-3, 0.0, 0, 10) == pytest.approx(1e-3)
    assert get_lr(10, 1e-3, 1e-4, 10, 10) == pytest.approx(1e-4)


def test_bits_per_char():
    assert bits_per_char(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_char(2 * math.log(2), 4.0) == pytest.approx(0.5)


# -- optimizer -------------------------------------------------------------------------------------

def test_weight_decay_on_linear_matrices_only(data):
    model = GPT(model_cfg(data, pos_emb="learned"))
    decay, no_decay = configure_optimizer(model, 1e-3, 0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    linear_weights = {id(m.weight) for m in model.modules()
                      if isinstance(m, nn.Linear) and m.weight is not model.tok_emb.weight}
    assert {id(p) for p in decay["params"]} == linear_weights
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.tok_emb.weight) in no_decay_ids and id(model.pos_emb.weight) in no_decay_ids
    assert all(id(m.weight) in no_decay_ids for m in model.modules() if isinstance(m, nn.LayerNorm))
    # every parameter exactly once (the tied LM head is the embedding)
    assert sorted(map(id, decay["params"] + no_decay["params"])) == sorted(map(id, model.parameters()))


# -- the training step -----------------------------------------------------------------------------

def test_accumulation_matches_one_big_batch(data, tmp_path):
    """4 micro-batches of 2 with loss / 4 take the same step as one batch of 8 (same windows)."""
    cfg = model_cfg(data, dropout=0.0)
    big = Trainer(cfg, train_cfg(tmp_path / "a", batch_size=8, warmup_iters=0), data, device="cpu")
    small = Trainer(cfg, train_cfg(tmp_path / "b", batch_size=2, grad_accumulation_steps=4, warmup_iters=0),
                    data, device="cpu")
    small.raw_model.load_state_dict(big.raw_model.state_dict())
    loss_big, norm_big, _ = big.train_step()
    loss_small, norm_small, _ = small.train_step()
    assert loss_small.item() == pytest.approx(loss_big.item(), abs=1e-5)
    assert norm_small.item() == pytest.approx(norm_big.item(), rel=1e-4)
    for p, q in zip(big.raw_model.parameters(), small.raw_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_gradient_clipping_matches_clipping_by_hand(data, tmp_path):
    """With a small grad_clip, AdamW receives the gradients scaled to that norm, as a hand clip gives.

    After one step AdamW's first moment is exactly (1 - beta1) x the gradient it was given, so it
    shows the clipped gradients (Adam's update itself hardly depends on their scale).
    """
    cfg, max_norm = model_cfg(data, dropout=0.0), 0.05
    trainer = Trainer(cfg, train_cfg(tmp_path, grad_clip=max_norm, warmup_iters=0), data, device="cpu")
    reference = GPT(cfg)
    reference.load_state_dict(trainer.raw_model.state_dict())
    same_batches = torch.Generator().set_state(trainer.sampler.get_state())
    x, y = get_batch(data.train, trainer.cfg.batch_size, cfg.context_length, same_batches)
    lm_loss(reference(x), y).backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    assert norm > 10 * max_norm  # the clip must bite for this test to mean anything
    clipped = [g * (max_norm / (norm + 1e-6)) for g in grads]  # global norm max_norm, directions kept

    _, grad_norm, _ = trainer.train_step()
    assert grad_norm.item() == pytest.approx(norm, rel=1e-4)  # the norm reported is the one before clipping
    beta1 = trainer.cfg.beta1
    for p, g in zip(trainer.raw_model.parameters(), clipped, strict=True):
        torch.testing.assert_close(trainer.optimizer.state[p]["exp_avg"], (1 - beta1) * g, rtol=1e-4, atol=1e-10)


def test_training_lowers_the_loss_and_writes_its_files(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path, max_iters=30, eval_interval=15), data, device="cpu")
    history = trainer.fit()
    evals = [r for r in history if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 0.5
    assert {p.name for p in tmp_path.iterdir()} >= {"latest.pt", "best.pt", "metrics.jsonl"}
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 30
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(history)


def test_bfloat16_autocast_trains_on_cpu(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path, dtype="bfloat16"), data, device="cpu")
    assert trainer.dtype == torch.bfloat16
    loss, _, _ = trainer.train_step()
    assert math.isfinite(loss.item())
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())  # master weights stay fp32
    idx = torch.zeros(2, 8, dtype=torch.long)
    with trainer_mod.autocast(trainer.device, trainer.dtype):
        assert trainer.raw_model(idx).dtype == torch.bfloat16  # the matmuls really ran in bf16


def fp16_trainer(data, out_dir, monkeypatch):
    """The fp16 + GradScaler path on a CPU (the CLI only allows fp16 on CUDA; torch can do it here)."""
    monkeypatch.setattr(trainer_mod, "resolve_dtype", lambda name, device: torch.float16)
    trainer = Trainer(model_cfg(data), train_cfg(out_dir), data, device="cpu")
    monkeypatch.undo()
    return trainer


def test_float16_with_grad_scaler_steps_and_round_trips_through_a_checkpoint(data, tmp_path, monkeypatch):
    trainer = fp16_trainer(data, tmp_path, monkeypatch)
    assert trainer.dtype == torch.float16 and trainer.scaler.is_enabled()
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    for _ in range(3):
        loss, _, _ = trainer.train_step()
        assert math.isfinite(loss.item())
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.raw_model.parameters()))
    saved = trainer.scaler.state_dict()
    assert saved and saved["scale"] > 0
    trainer.evaluate_and_save()
    state = load_checkpoint(tmp_path / "latest.pt")
    again = fp16_trainer(data, tmp_path, monkeypatch)
    again.load_state_dict(state)
    assert again.scaler.state_dict() == saved
    # a change of dtype on resume: fp16 -> fp32 ignores the scaler state, fp32 -> fp16 starts a fresh one
    fp32 = Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu")
    fp32.load_state_dict(state)
    fp32_state = fp32.state_dict()
    assert fp32_state["scaler"] == {}
    fp16_trainer(data, tmp_path, monkeypatch).load_state_dict(fp32_state)


def test_dtype_choices():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float16 needs a CUDA GPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("float8", cpu)


def test_auto_dtype_on_cuda_gives_fp16_where_bf16_is_only_emulated(monkeypatch):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # an older GPU: bf16 only through emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert asked == [False]


@pytest.mark.parametrize("field, value, flag", [("lr", -1.0, "--lr"), ("warmup_iters", 50, "--warmup_iters"),
                                                ("batch_size", 0, "--batch_size"), ("min_lr", 1.0, "--min_lr"),
                                                ("dtype", "int8", "--dtype")])
def test_train_config_names_the_bad_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{"max_iters": 10, "warmup_iters": 2, field: value})


# -- checkpoints -----------------------------------------------------------------------------------

def test_exact_resume(data, tmp_path):
    """Train 2N steps ≡ train N, stop, resume in a fresh Trainer, train N more: identical losses."""
    straight = Trainer(model_cfg(data), train_cfg(tmp_path / "straight"), data, device="cpu")
    straight.fit()
    Trainer(model_cfg(data), train_cfg(tmp_path / "resumed"), data, device="cpu").fit(until=6)
    resumed = Trainer(model_cfg(data), train_cfg(tmp_path / "resumed"), data, device="cpu")
    resumed.load_state_dict(load_checkpoint(tmp_path / "resumed" / "latest.pt"))
    assert resumed.step == 6
    resumed.fit()
    assert len(losses(straight.history)) == 12
    assert losses(resumed.history) == losses(straight.history)  # bit for bit
    for p, q in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.equal(p, q)


def test_latest_carries_the_best_val_loss_and_best_is_a_copy(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path, max_iters=12, eval_interval=4), data, device="cpu")
    trainer.fit(until=8)
    val = [r["val_loss"] for r in trainer.history if "val_loss" in r]
    latest = load_checkpoint(tmp_path / "latest.pt")
    assert latest["best_val_loss"] == min(val) == trainer.best_val_loss  # not the value before this evaluation
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best_val_loss"] == min(val) and best["step"] == [0, 4, 8][val.index(min(val))]
    if val[-1] == min(val):
        assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "latest.pt").read_bytes()
    resumed = Trainer(model_cfg(data), train_cfg(tmp_path, max_iters=12, eval_interval=4), data, device="cpu")
    resumed.load_state_dict(latest)
    assert resumed.best_val_loss == min(val)
    resumed.best_val_loss = -math.inf  # nothing can beat it: best.pt must stay as it is
    best_bytes = (tmp_path / "best.pt").read_bytes()
    resumed.fit()
    assert (tmp_path / "best.pt").read_bytes() == best_bytes


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(data, tmp_path):
    straight = Trainer(model_cfg(data), train_cfg(tmp_path / "straight"), data, device="cpu")
    straight.fit()
    interrupted = Trainer(model_cfg(data), train_cfg(tmp_path / "resumed"), data, device="cpu")
    real_step = interrupted.train_step

    def step_then_ctrl_c():
        out = real_step()
        if interrupted.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C in the terminal would
        return out

    interrupted.train_step = step_then_ctrl_c
    previous = signal.getsignal(signal.SIGINT)
    interrupted.fit()
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored
    assert interrupted.interrupted and interrupted.step == 4
    assert load_checkpoint(tmp_path / "resumed" / "latest.pt")["step"] == 4
    resumed = Trainer(model_cfg(data), train_cfg(tmp_path / "resumed"), data, device="cpu")
    resumed.load_state_dict(load_checkpoint(tmp_path / "resumed" / "latest.pt"))
    resumed.fit()
    assert losses(resumed.history) == losses(straight.history)  # bit for bit


def test_resume_tolerates_a_torn_last_metrics_line(data, tmp_path, capsys):
    Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu").fit(until=6)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a crash while appending
    resumed = Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu")
    resumed.load_state_dict(load_checkpoint(tmp_path / "latest.pt"))
    assert f"metrics.jsonl:{len(lines) + 1}: dropping a torn last line" in capsys.readouterr().err
    assert metrics.read_text().splitlines() == lines and len(resumed.history) == len(lines)
    metrics.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a metrics record"):
        Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu").load_state_dict(
            load_checkpoint(tmp_path / "latest.pt"))
    assert json.loads(metrics.read_text().splitlines()[0])["step"] == 0


def test_rng_state_saves_no_gpu_state_on_a_cpu_run():
    assert "cuda" not in rng_state(torch.Generator(), torch.device("cpu"))


def test_a_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint({"step": 1, "w": torch.ones(2)}, path)

    def dies_half_way(obj, f):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 truncated")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2, "w": torch.zeros(2)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["latest.pt"]  # no temporary file left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(garbage)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    with pytest.raises(CheckpointError, match="partial.pt: not a TinyLLM training checkpoint"):
        load_checkpoint(partial)


def test_checkpoint_refuses_a_different_model_or_tokenizer(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu")
    state = trainer.state_dict()
    other = Trainer(model_cfg(data, d_model=64), train_cfg(tmp_path), data, device="cpu")
    with pytest.raises(CheckpointError, match="d_model=32 in the checkpoint, 64 from the flags"):
        other.load_state_dict(state, source="run/latest.pt")
    state["tokenizer"] = {**state["tokenizer"], "merges": state["tokenizer"]["merges"][:-1]}
    with pytest.raises(CheckpointError, match="tokenizer differs"):
        trainer.load_state_dict(state, source="run/latest.pt")


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu")
    state = trainer.state_dict()
    del state["model_config"]["norm_type"]  # a checkpoint from before RMSNorm (chapter 09) was added
    Trainer(model_cfg(data), train_cfg(tmp_path), data, device="cpu").load_state_dict(state)
    with pytest.raises(CheckpointError, match="norm_type='layernorm' in the checkpoint, 'rmsnorm' from the flags"):
        Trainer(model_cfg(data, norm_type="rmsnorm"), train_cfg(tmp_path), data, device="cpu").load_state_dict(state)


def test_model_from_checkpoint_gives_the_trained_model(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path, max_iters=3, eval_interval=3), data, device="cpu")
    trainer.fit()
    model, tokenizer = model_from_checkpoint(tmp_path / "latest.pt")
    idx = torch.tensor([tokenizer.encode("First Citizen")])
    trainer.raw_model.eval()
    assert torch.equal(model(idx), trainer.raw_model(idx))


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    trainer = Trainer(model_cfg(data), train_cfg(tmp_path, max_iters=20, log_interval=2), data, device="cpu")
    trainer.fit(until=6)
    good = (tmp_path / "latest.pt").read_bytes()
    with torch.no_grad():
        trainer.raw_model.tok_emb.weight[0, 0] = float("nan")  # what an overflow would leave behind
    with pytest.raises(TrainingDiverged, match="Last good checkpoint: .*latest.pt \\(step 6\\)"):
        trainer.fit()
    assert trainer.step <= 8  # stopped at the next check, not at the end
    assert (tmp_path / "latest.pt").read_bytes() == good
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 6


def test_shakespeare_checkpoint_trains_once_then_returns_the_saved_model(tmp_path):
    from tinyllm_lib.checkpoint import CheckpointError, model_from_checkpoint
    from tinyllm_lib.train import shakespeare_checkpoint

    best = shakespeare_checkpoint(quick=True, root=tmp_path)
    assert best == tmp_path / "checkpoints" / "shakespeare-quick" / "best.pt" and best.is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the run appeared in one rename
    model, tokenizer = model_from_checkpoint(best)
    assert model.config.vocab_size == tokenizer.vocab_size == 256
    written = best.stat().st_mtime_ns
    assert shakespeare_checkpoint(quick=True, root=tmp_path) == best and best.stat().st_mtime_ns == written
    (tmp_path / "other" / "checkpoints" / "shakespeare-quick").mkdir(parents=True)  # a folder without best.pt
    with pytest.raises(CheckpointError, match="holds no best.pt"):
        shakespeare_checkpoint(quick=True, root=tmp_path / "other")
