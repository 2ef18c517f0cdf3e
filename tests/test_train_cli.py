"""The `python -m tinyllm_lib.train` command line: a smoke run, resume, and every bad-input error."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tinyllm_lib.checkpoint import load_checkpoint
from tinyllm_lib.model import GPT, GPTConfig
from tinyllm_lib.tokenizer import BPETokenizer
from tinyllm_lib.train import main

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 60
TINY = ["--vocab_size", "90", "--d_model", "32", "--n_layers", "1", "--n_heads", "2", "--d_ff", "64",
        "--context_length", "32", "--batch_size", "4", "--warmup_iters", "2", "--eval_interval", "3",
        "--eval_iters", "2", "--log_interval", "1", "--dtype", "float32", "--device", "cpu"]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "play.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


def args(run_dir, *extra, out="out"):
    return ["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / out),
            "--cache_dir", str(run_dir / "cache"), *TINY, *extra]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_smoke_run_then_resume(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "6")) == 0
    out = run_dir / "out"
    assert {"latest.pt", "best.pt", "metrics.jsonl", "loss.png"} <= {p.name for p in out.iterdir()}
    state = load_checkpoint(out / "latest.pt")  # weights_only=True
    assert state["step"] == 6 and state["train_config"]["max_iters"] == 6
    assert "bits/char" in capsys.readouterr().out

    assert main(args(run_dir, "--max_iters", "9", "--resume")) == 0
    assert load_checkpoint(out / "latest.pt")["step"] == 9
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)  # one history, no repeats from step 6 on
    assert steps.count(6) == 2 and steps.count(7) == 1  # step 6: its log line and its evaluation


def test_a_second_run_without_resume_refuses_to_overwrite(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "3")) == 0
    before = snapshot(run_dir / "out")
    capsys.readouterr()
    assert main(args(run_dir, "--max_iters", "3")) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'out' / 'latest.pt'} already exists" in err and "--resume" in err and "--out_dir" in err
    assert snapshot(run_dir / "out") == before  # nothing written


def test_resume_takes_unspecified_flags_from_the_checkpoint(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "6", "--lr", "0.002", "--batch_size", "3")) == 0
    capsys.readouterr()
    data = ["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / "out"), "--cache_dir", str(run_dir / "cache")]
    assert main([*data, "--resume", "--max_iters", "9", "--device", "cpu"]) == 0  # no model or training flags
    out = capsys.readouterr().out
    assert "changed: max_iters 6 -> 9" in out and "lr" not in out.split("changed:")[1].splitlines()[0]
    state = load_checkpoint(run_dir / "out" / "latest.pt")
    assert state["step"] == 9 and state["model_config"]["d_model"] == 32
    assert state["train_config"]["lr"] == 0.002 and state["train_config"]["batch_size"] == 3
    assert state["train_config"]["dtype"] == "float32"
    assert main([*data, "--resume", "--max_iters", "10", "--lr", "0.001", "--device", "cpu"]) == 0
    assert "changed: max_iters 9 -> 10, lr 0.002 -> 0.001" in capsys.readouterr().out


def test_a_too_short_validation_split_names_the_data_file(run_dir, capsys):
    (run_dir / "short.txt").write_text(TEXT[:500], encoding="utf-8")
    argv = args(run_dir, "--max_iters", "3")
    argv[1] = str(run_dir / "short.txt")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "short.txt: the validation split has" in err and "context_length=32" in err


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--max_iters", "5", "--warmup_iters", "50"], "--warmup_iters must be between 0 and --max_iters=5"),
    (["--grad_accumulation_steps", "0"], "--grad_accumulation_steps must be a positive integer"),
    (["--d_model", "30", "--n_heads", "4"], "d_model=30 must be divisible by n_heads=4"),
    (["--dtype", "float16"], "float16 needs a CUDA GPU"),
])
def test_bad_flags_are_named(run_dir, capsys, extra, message):
    assert main(args(run_dir, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (run_dir / "out").exists()  # failed before writing anything


def test_unknown_config_is_rejected_by_name(run_dir, capsys):
    with pytest.raises(SystemExit):
        main(args(run_dir, "--config", "huge"))
    assert "--config: invalid choice: 'huge'" in capsys.readouterr().err


def test_missing_or_unreadable_data_file(run_dir, capsys):
    assert main(["--data", str(run_dir / "nope.txt"), "--out_dir", str(run_dir / "out")]) == 2
    assert f"--data {run_dir / 'nope.txt'}: no such file" in capsys.readouterr().err
    (run_dir / "binary.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    assert main(["--data", str(run_dir / "binary.txt"), "--out_dir", str(run_dir / "out")]) == 2
    assert "binary.txt: cannot read it as UTF-8 text" in capsys.readouterr().err


def test_resume_without_a_checkpoint(run_dir, capsys):
    assert main(args(run_dir, "--resume")) == 2
    assert f"{run_dir / 'out' / 'latest.pt'}: no checkpoint there" in capsys.readouterr().err
    assert not (run_dir / "out").exists()


def test_resume_refuses_corrupted_or_mismatched_checkpoints_and_overwrites_nothing(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "3")) == 0
    out = run_dir / "out"
    before = snapshot(out)

    assert main(args(run_dir, "--max_iters", "6", "--resume", "--d_model", "64")) == 2
    assert "d_model=32 in the checkpoint, 64 from the flags" in capsys.readouterr().err
    assert main(args(run_dir, "--max_iters", "6", "--resume", "--vocab_size", "80")) == 2
    assert "--vocab_size 80: the checkpoint's tokenizer has" in capsys.readouterr().err  # it keeps its tokenizer
    assert snapshot(out) == before

    (out / "latest.pt").write_bytes(before["latest.pt"][: len(before["latest.pt"]) // 2])  # torn copy
    torn = snapshot(out)
    assert main(args(run_dir, "--max_iters", "6", "--resume")) == 2
    assert "latest.pt: not a readable checkpoint" in capsys.readouterr().err
    assert snapshot(out) == torn


def test_resume_keeps_the_checkpoint_tokenizer(run_dir, capsys):
    """On --resume the model keeps the tokenizer it was trained with, even where --data would train
    another one (here a text with other words: its own tokenizer would have other merges)."""
    assert main(args(run_dir, "--max_iters", "3")) == 0
    latest = run_dir / "out" / "latest.pt"
    trained_with = load_checkpoint(latest)["tokenizer"]
    (run_dir / "play.txt").write_text(("HAMLET:\nTo be, or not to be, that is the question:\n"
                                       "Whether 'tis nobler in the mind to suffer.\n\n") * 80, encoding="utf-8")
    assert main(args(run_dir, "--max_iters", "6", "--resume")) == 0, capsys.readouterr().err
    state = load_checkpoint(latest)
    assert state["step"] == 6 and state["tokenizer"] == trained_with


def test_python_dash_m_and_console_script(run_dir):
    done = subprocess.run([sys.executable, "-m", "tinyllm_lib.train", *args(run_dir, "--max_iters", "2")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run_dir / "out" / "latest.pt")["step"] == 2
    script = shutil.which("tinyllm-train", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the tinyllm-train console script is not installed (pip install -e .)")
    helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--grad_accumulation_steps" in helped.stdout


def test_two_processes_under_torchrun(run_dir):
    """DDP on CPU with gloo: two ranks train together, only rank 0 writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tinyllm_lib.train", *args(run_dir, "--max_iters", "3", "--device", "cpu")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(run_dir / "out" / "latest.pt")
    assert state["step"] == 3 and len(state["rng"]) == 2  # one random state per rank
    assert not torch.equal(state["rng"][0]["sampler"], state["rng"][1]["sampler"])  # different batches
    assert done.stdout.count("done: validation") == 1  # rank 0 reports, rank 1 stays quiet


def test_fsdp_trains_checkpoints_and_resumes_like_ddp(run_dir):
    """--fsdp (FSDP2, chapter 11) on 2 CPU processes: the same loss curve as DDP, step for step, through
    an evaluation, a checkpoint and a resume (with gradient accumulation); the checkpoint holds full
    tensors, so one process can load it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "tinyllm_lib.train"]
    curves = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        first = args(run_dir, "--max_iters", "6", "--eval_interval", "3", "--grad_accumulation_steps", "2",
                     *extra, out=name)
        resume = ["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / name), "--cache_dir",
                  str(run_dir / "cache"), "--device", "cpu", "--resume", "--max_iters", "9", *extra]
        for argv in (first, resume):
            done = subprocess.run([*torchrun, *argv], capture_output=True, text=True, timeout=300, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
        records = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [(r["step"], r.get("loss", r.get("val_loss"))) for r in records]
    assert [s for s, _ in curves["fsdp"]] == [s for s, _ in curves["ddp"]] and curves["ddp"][-1][0] == 9
    for (_, a), (_, b) in zip(curves["ddp"], curves["fsdp"]):
        assert b == pytest.approx(a, abs=1e-4)
    state = load_checkpoint(run_dir / "fsdp" / "latest.pt")
    assert state["step"] == 9 and state["train_config"]["fsdp"] and state["optimizer"]["state"]
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])  # plain tensors, the model's own names


def test_activation_checkpointing_gives_the_same_curve(run_dir):
    """--activation_checkpointing (chapter 11) recomputes activations in backward: the same numbers."""
    curves = {}
    for name, extra in (("plain", []), ("ckpt", ["--activation_checkpointing"])):
        assert main(args(run_dir, "--max_iters", "6", *extra, out=name)) == 0
        records = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [r.get("loss", r.get("val_loss")) for r in records]
    assert curves["ckpt"] == pytest.approx(curves["plain"], abs=1e-5)
    assert load_checkpoint(run_dir / "ckpt" / "latest.pt")["train_config"]["activation_checkpointing"]


def test_fsdp_outside_torchrun_or_with_compile_is_refused(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "2", "--fsdp")) == 2
    assert "--fsdp shards the model across processes: run it under torchrun" in capsys.readouterr().err
    assert main(args(run_dir, "--max_iters", "2", "--fsdp", "--compile", out="other")) == 2
    assert "--fsdp with --compile is not supported" in capsys.readouterr().err
    assert not (run_dir / "out").exists() and not (run_dir / "other").exists()


def test_warmup_not_given_shrinks_to_a_tenth_of_a_short_run(run_dir, capsys):
    no_warmup = [a for i, a in enumerate(TINY) if "--warmup_iters" not in TINY[max(i - 1, 0):i + 1]]
    assert "--warmup_iters" not in no_warmup and len(no_warmup) == len(TINY) - 2
    base = ["--data", str(run_dir / "play.txt"), "--cache_dir", str(run_dir / "cache"), *no_warmup]
    assert main([*base, "--out_dir", str(run_dir / "short"), "--max_iters", "30"]) == 0  # default 100 > 30
    assert load_checkpoint(run_dir / "short" / "latest.pt")["train_config"]["warmup_iters"] == 3
    capsys.readouterr()
    # A warmup the user asked for is theirs: too long for the run, it is refused, naming the flag.
    assert main([*base, "--out_dir", str(run_dir / "given"), "--max_iters", "30", "--warmup_iters", "100"]) == 2
    assert "--warmup_iters" in capsys.readouterr().err
    assert not (run_dir / "given").exists()


def test_time_budget_sizes_the_schedule_from_timed_steps(run_dir):
    # A budget of 3 seconds: the 20 timed probe steps spend most of it, so the plan is a short run,
    # in whole chunks of the ten evaluations. The schedule must still be complete and consistent.
    # From a terminal, as a user runs it: the flag must reach code defined anywhere in the module.
    done = subprocess.run([sys.executable, "-m", "tinyllm_lib.train", *args(run_dir, "--time_budget", "0.05")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "time budget 0.05 min:" in out and "ms/step" in out and "-> max_iters" in out
    state = load_checkpoint(run_dir / "out" / "latest.pt")
    cfg = state["train_config"]
    first_plan = int(out.split("-> max_iters ")[1].split()[0])
    assert first_plan % 10 == 0 and first_plan >= 20  # the plan: whole chunks, at least the probe steps
    assert cfg["max_iters"] >= 20  # after any re-sizing: never fewer steps than were already trained
    assert cfg["warmup_iters"] <= first_plan // 10  # --warmup_iters 2 given; never more than a tenth
    # The whole (re-sized) schedule ran, or the budget ran out first and the run stopped at an evaluation.
    if state["step"] != cfg["max_iters"]:
        assert "stopping early" in out, out
    evals = [json.loads(line)["step"] for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert evals[-1] == state["step"]


def test_time_budget_fills_the_flags_left_out_from_its_recipe(run_dir, capsys):
    """--time_budget with only the data flags, 3 seconds: too little compute for anything but the
    smallest recipe, which trains anyway and says so; its learning rates and batch, and the dropout the
    plan chose (printed with the number of passes over the data it planned)."""
    from tinyllm_lib.budget import BUDGET_DROPOUT, BUDGET_RECIPES, MEMORISE_EPOCHS

    assert main(["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / "out"), "--cache_dir",
                 str(run_dir / "cache"), "--vocab_size", "90", "--device", "cpu", "--eval_iters", "2",
                 "--time_budget", "0.05"]) == 0
    out = capsys.readouterr().out
    smallest = BUDGET_RECIPES[0]
    assert f"recipe {smallest.name}:" in out
    assert "too short for the smallest recipe" in out and "training it anyway" in out
    state = load_checkpoint(run_dir / "out" / "latest.pt")
    model, train = state["model_config"], state["train_config"]
    shape = {k: v for k, v in smallest.model_flags().items() if k != "dropout"}
    assert {k: model[k] for k in shape} == shape
    assert model["vocab_size"] == 90  # given: kept
    recipe_train = smallest.train_flags(torch.device("cpu"))
    assert {k: train[k] for k in ("batch_size", "lr", "min_lr", "dtype")} == \
        {k: recipe_train[k] for k in ("batch_size", "lr", "min_lr", "dtype")}
    epochs = float(out.split(" epochs)")[0].split("(")[-1])
    assert model["dropout"] == (BUDGET_DROPOUT if epochs >= MEMORISE_EPOCHS else 0.0)
    assert f"dropout {model['dropout']:g}" in out


def test_budget_recipe_table_grows_with_compute():
    """A bigger budget never gets a smaller model: the rows' thresholds rise, and with them the
    parameters, width, depth and context; the learning rate falls as 1 / width."""
    from tinyllm_lib.budget import (
        BUDGET_RECIPES,
        BUDGET_VOCAB,
        SMALLEST_STEPS,
        choose_recipe,
        lr_for_width,
        steps_of,
    )

    params = [GPT(GPTConfig.preset("tiny", vocab_size=BUDGET_VOCAB, **r.model_flags())).num_params()
              for r in BUDGET_RECIPES]
    assert BUDGET_RECIPES[0].min_tflop == 0
    assert steps_of(BUDGET_RECIPES[1], BUDGET_RECIPES[1].min_tflop) >= SMALLEST_STEPS  # no row starts too short
    for small, big, n_small, n_big in zip(BUDGET_RECIPES, BUDGET_RECIPES[1:], params, params[1:]):
        assert small.min_tflop < big.min_tflop and n_small < n_big
        assert (small.d_model, small.n_layers, small.context_length) <= (big.d_model, big.n_layers, big.context_length)
        assert lr_for_width(big.d_model) < lr_for_width(small.d_model)
    # choose_recipe over a range of compute: never a smaller model for more
    chosen = [params[BUDGET_RECIPES.index(choose_recipe(c))] for c in [0, 0.5, 1, 3, 10, 30, 100, 300, 1e3, 1e4]]
    assert chosen == sorted(chosen) and chosen[0] == params[0] and chosen[-1] == params[-1]
    assert lr_for_width(BUDGET_RECIPES[0].d_model) == pytest.approx(3e-3)



def test_time_budget_buys_a_bigger_model_on_a_faster_machine_and_resume_keeps_it(run_dir, monkeypatch, capsys):
    """The same 3-second budget on a slow and on a (pretend) fast machine: the fast one gets the bigger
    recipe, with its width's learning rate; then --resume carries on with that model, not the smallest."""
    from tinyllm_lib import budget, train
    from tinyllm_lib.budget import Recipe

    rows = (Recipe("S", 0.0, d_model=16, n_layers=1, n_heads=2, context_length=16),
            Recipe("M", 1.0, d_model=32, n_layers=2, n_heads=2, context_length=32, dropout=0.1))
    monkeypatch.setattr(budget, "BUDGET_RECIPES", rows)
    monkeypatch.setattr(train, "BUDGET_RECIPES", rows)
    base = ["--data", str(run_dir / "play.txt"), "--cache_dir", str(run_dir / "cache"), "--vocab_size", "90",
            "--device", "cpu", "--eval_iters", "2"]
    for rate, name, out in ((1e-9, "S", "slow"), (1.0, "M", "fast")):  # TFLOP/s
        monkeypatch.setattr(budget, "compute_rate", lambda trainer, rate=rate: rate)
        assert main([*base, "--out_dir", str(run_dir / out), "--time_budget", "0.05"]) == 0
        printed = capsys.readouterr().out
        assert f"recipe {name}:" in printed
        assert "\nplay: " in printed  # the data line names the corpus, not the last flag the recipe set
        model = load_checkpoint(run_dir / out / "latest.pt")["model_config"]
        recipe = rows[0] if name == "S" else rows[1]
        assert (model["d_model"], model["n_layers"], model["context_length"]) == \
            (recipe.d_model, recipe.n_layers, recipe.context_length)
    state = load_checkpoint(run_dir / "fast" / "latest.pt")
    assert state["model_config"]["dropout"] == 0.1  # the recipe's own dropout, not the plan's
    assert state["train_config"]["lr"] == pytest.approx(budget.lr_for_width(32))
    # Resumed on a slow machine, without --time_budget: the run keeps the model it was given.
    monkeypatch.setattr(budget, "compute_rate", lambda trainer: 1e-9)
    assert main([*base, "--out_dir", str(run_dir / "fast"), "--resume", "--max_iters", str(state["step"] + 4)]) == 0
    assert "recipe" not in capsys.readouterr().out
    resumed = load_checkpoint(run_dir / "fast" / "latest.pt")
    assert resumed["step"] == state["step"] + 4 and resumed["model_config"] == state["model_config"]


def test_time_budget_with_a_shape_flag_keeps_the_given_shape(run_dir, monkeypatch, capsys):
    """A shape flag says which model: the budget then sizes the schedule only (no recipe is chosen)."""
    from tinyllm_lib import budget

    monkeypatch.setattr(budget, "compute_rate", lambda trainer: 1.0)  # a fast machine: would choose big
    assert main(["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / "out"), "--cache_dir",
                 str(run_dir / "cache"), "--vocab_size", "90", "--device", "cpu", "--eval_iters", "2",
                 "--d_model", "32", "--n_heads", "2", "--time_budget", "0.05"]) == 0
    assert "recipe" not in capsys.readouterr().out
    assert load_checkpoint(run_dir / "out" / "latest.pt")["model_config"]["d_model"] == 32


def test_time_budget_plans_from_the_timings_it_measured(run_dir):
    """plan_time_budget: a long budget gives as many steps as the measured step time allows."""
    from tinyllm_lib.budget import BUDGET_PLACEHOLDER_ITERS, plan_time_budget
    from tinyllm_lib.data import prepare_data
    from tinyllm_lib.model import GPTConfig
    from tinyllm_lib.trainer import TrainConfig, Trainer

    data = prepare_data(TEXT, 90, run_dir / "cache", name="play")
    model_cfg = GPTConfig.preset("tiny", vocab_size=data.tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                 d_ff=64, context_length=32)
    trainer = Trainer(model_cfg, TrainConfig(batch_size=4, max_iters=BUDGET_PLACEHOLDER_ITERS, eval_iters=2,
                                             dtype="float32", out_dir=str(run_dir / "plan")), data, device="cpu")
    t0 = time.perf_counter()
    plan = plan_time_budget(trainer, minutes=60, start=t0)
    elapsed = time.perf_counter() - t0
    assert trainer.step == 20 and plan.step_time > 0 and plan.eval_time > 0
    assert plan.max_iters % 10 == 0
    # max_iters = the probe steps + whatever the hour left after them and 13 evaluations holds, rounded down
    assert plan.max_iters <= 20 + (3600 - 13 * plan.eval_time) / plan.step_time
    assert plan.max_iters >= 20 + (3600 - elapsed - 13 * plan.eval_time) / plan.step_time - 11
    assert trainer.cfg.max_iters == plan.max_iters and trainer.cfg.warmup_iters == 100
    with pytest.raises(ValueError, match="from step 0"):
        plan_time_budget(trainer, minutes=1)


def test_time_budget_resizes_the_run_when_the_machine_slows_down(run_dir, monkeypatch, capsys):
    """A machine three times slower after the first chunk: the run re-plans, still finishes its cosine
    (last step = max_iters, lr = min_lr) and ends within the budget. A fake clock makes it exact."""
    from tinyllm_lib import budget
    from tinyllm_lib.data import prepare_data
    from tinyllm_lib.model import GPTConfig
    from tinyllm_lib.trainer import TrainConfig, Trainer

    data = prepare_data(TEXT, 90, run_dir / "cache", name="play")
    model_cfg = GPTConfig.preset("tiny", vocab_size=data.tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2,
                                 d_ff=32, context_length=16)
    trainer = Trainer(model_cfg, TrainConfig(batch_size=2, max_iters=budget.BUDGET_PLACEHOLDER_ITERS, eval_iters=1,
                                             min_lr=1e-4, dtype="float32", out_dir=str(run_dir / "slow")),
                      data, device="cpu")
    clock = {"now": 0.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])
    step, evaluate = trainer.train_step, trainer.evaluate

    def timed_step():
        clock["now"] += 0.01 if trainer.step < 60 else 0.03  # 10 ms a step, then 30 ms
        return step()

    def timed_evaluate():
        clock["now"] += 0.05
        return evaluate()

    monkeypatch.setattr(trainer, "train_step", timed_step)
    monkeypatch.setattr(trainer, "evaluate", timed_evaluate)
    plan = budget.fit_time_budget(trainer, minutes=0.1, start=0.0)  # 6 s: about 500 steps at the first pace
    first_plan = int(capsys.readouterr().out.split("-> max_iters ")[1].split()[0])
    assert first_plan > 400  # planned at 10 ms a step
    assert trainer.step == trainer.cfg.max_iters == plan.max_iters  # the whole (re-sized) cosine ran
    assert trainer.step < 300  # fewer steps than the first plan: later steps cost three times as much
    assert clock["now"] <= 6.0 + 0.5  # on time, give or take one chunk's rounding
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4, rel=0.05)
    evaluations = [r["step"] for r in trainer.history if "val_loss" in r]
    assert len(evaluations) <= 10 + 1, evaluations  # the probe's, then one per chunk: none added mid-chunk


@pytest.mark.parametrize("minutes, dropout", [(0.02, 0.0), (0.5, 0.2)])
def test_time_budget_turns_dropout_on_only_for_runs_long_enough_to_memorise(run_dir, monkeypatch, minutes, dropout):
    """auto_dropout: at 10 ms a step, 1.2 s make a few passes over the tiny text, 30 s make many more than
    MEMORISE_EPOCHS; every dropout layer of the model, and the config saved with it, follow the plan."""
    from tinyllm_lib import budget
    from tinyllm_lib.attention import MultiHeadAttention
    from tinyllm_lib.data import prepare_data
    from tinyllm_lib.model import GPTConfig
    from tinyllm_lib.trainer import TrainConfig, Trainer

    data = prepare_data(TEXT, 90, run_dir / "cache", name="play")
    model_cfg = GPTConfig.preset("tiny", vocab_size=data.tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2,
                                 d_ff=32, context_length=16, dropout=0.0)
    trainer = Trainer(model_cfg, TrainConfig(batch_size=2, max_iters=budget.BUDGET_PLACEHOLDER_ITERS, eval_iters=1,
                                             dtype="float32", out_dir=str(run_dir / "drop")), data, device="cpu")
    clock = {"now": 0.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])
    step = trainer.train_step

    def timed_step():
        clock["now"] += 0.01
        return step()

    monkeypatch.setattr(trainer, "train_step", timed_step)
    plan = budget.plan_time_budget(trainer, minutes)
    assert (plan.epochs >= budget.MEMORISE_EPOCHS) == (dropout > 0)
    assert plan.epochs == pytest.approx(plan.max_iters * 2 * 16 / len(data.train))
    budget.set_dropout(trainer, budget.BUDGET_DROPOUT if plan.epochs >= budget.MEMORISE_EPOCHS else 0.0)
    rates = [m.p for m in trainer.raw_model.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.dropout for m in trainer.raw_model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(rates) > 3 and set(rates) == {dropout}
    assert trainer.state_dict()["model_config"]["dropout"] == dropout


@pytest.mark.parametrize("extra, message", [
    (["--time_budget", "0"], "--time_budget must be > 0 minutes"),
    (["--time_budget", "5", "--resume"], "--time_budget plans a new run from step 0"),
])
def test_time_budget_bad_input(run_dir, capsys, extra, message):
    assert main(args(run_dir, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (run_dir / "out").exists()


# -- question-answer pairs (a .json file, chapter 08) and fine-tuning (--init_from) -------------------------------
PAIRS = [{"id": i, "question": f"Who is {name}?", "answer": f"{name} is in the play."}
         for i, name in enumerate(["Romeo", "Juliet", "the east", "the sun", "the light", "a window", "soft",
                                   "the window", "art thou", "Romeo Romeo", "O Romeo", "yonder"], start=1)]
QA_FLAGS = ["--batch_size", "4", "--eval_interval", "2", "--eval_iters", "2", "--log_interval", "1",
            "--dtype", "float32", "--device", "cpu"]


def qa_args(run_dir, *extra, out="qa"):
    (run_dir / "pairs.json").write_text(json.dumps(PAIRS), encoding="utf-8")
    return ["--data", str(run_dir / "pairs.json"), "--out_dir", str(run_dir / out), "--cache_dir",
            str(run_dir / "cache"), *QA_FLAGS, *extra]


def test_json_data_trains_question_answer_pairs_from_scratch(run_dir, capsys):
    shape = ["--vocab_size", "100", "--d_model", "32", "--n_layers", "1", "--n_heads", "2", "--d_ff", "64",
             "--context_length", "32"]
    assert main(qa_args(run_dir, *shape, "--max_iters", "4")) == 0
    assert "pairs: 11 training / 1 validation pairs" in capsys.readouterr().out  # id 10 is held out
    state = load_checkpoint(run_dir / "qa" / "latest.pt")
    assert state["step"] == 4 and state["prompt_template"] == "<BOS>Question: {question}\nAnswer:"
    tokenizer = BPETokenizer.from_dict(state["tokenizer"])  # trained on the wrapped pairs: every character known
    assert tokenizer.unk_id not in tokenizer.encode("".join(p["question"] + p["answer"] for p in PAIRS))
    assert state["model_config"]["vocab_size"] == tokenizer.vocab_size <= 100
    assert main(qa_args(run_dir, "--max_iters", "6", "--resume")) == 0  # resumes with the checkpoint's tokenizer
    assert load_checkpoint(run_dir / "qa" / "latest.pt")["step"] == 6
    assert load_checkpoint(run_dir / "qa" / "best.pt")["prompt_template"] == state["prompt_template"]


def test_time_budget_on_pairs_counts_epochs_in_pairs_and_keeps_the_given_model(run_dir, capsys):
    """On question-answer pairs a pass is over the pairs (a batch row is one pair), and the text recipe
    of BUDGET_RECIPES (context 64 would cut the pairs) is not applied: the preset and the flags rule."""
    shape = ["--vocab_size", "100", "--d_model", "32", "--n_layers", "1", "--n_heads", "2", "--d_ff", "64",
             "--context_length", "32"]
    assert main(qa_args(run_dir, *shape, "--time_budget", "0.05")) == 0
    out = capsys.readouterr().out
    planned = int(out.split("-> max_iters ")[1].split()[0])
    epochs = float(out.split(" epochs)")[0].split("(")[-1])
    assert epochs == pytest.approx(planned * 4 / 11, abs=0.06)  # batch 4, 11 training pairs
    state = load_checkpoint(run_dir / "qa" / "latest.pt")
    assert state["train_config"]["lr"] == 1e-3 and state["model_config"]["context_length"] == 32  # not the recipe's


def test_a_text_checkpoint_records_no_prompt_template(run_dir):
    assert main(args(run_dir, "--max_iters", "2")) == 0
    assert load_checkpoint(run_dir / "out" / "latest.pt")["prompt_template"] is None


@pytest.mark.parametrize("data", ["pairs", "text"])
def test_init_from_fine_tunes_the_pretrained_weights_with_their_tokenizer(run_dir, capsys, data):
    assert main(args(run_dir, "--max_iters", "3", "--dropout", "0.1")) == 0  # the "pretrained" text model
    pre = load_checkpoint(run_dir / "out" / "latest.pt")
    # lr 1e-9: after one step the weights are still the pretrained ones, which a fresh model's are not
    tune = ["--init_from", str(run_dir / "out" / "latest.pt"), "--max_iters", "1", "--lr", "1e-9",
            "--min_lr", "0", "--dropout", "0"]
    argv = qa_args(run_dir, *tune, out="tuned") if data == "pairs" else [
        "--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / "tuned"), "--cache_dir", str(run_dir / "cache"),
        *QA_FLAGS, *tune]
    assert main(argv) == 0
    assert f"fine-tuning {run_dir / 'out' / 'latest.pt'} (step 3), with its tokenizer" in capsys.readouterr().out
    tuned = load_checkpoint(run_dir / "tuned" / "latest.pt")
    assert tuned["tokenizer"] == pre["tokenizer"]  # reused, never retrained
    assert tuned["model_config"] == {**pre["model_config"], "dropout": 0.0}  # the shape; --dropout may change
    assert tuned["step"] == 1
    for name, weight in pre["model"].items():
        assert torch.allclose(tuned["model"][name], weight, atol=1e-6), name
    assert (tuned["prompt_template"] is not None) == (data == "pairs")


def test_a_fine_tune_on_text_resumes(run_dir, capsys):
    assert main(args(run_dir, "--max_iters", "3", "--vocab_size", "100")) == 0  # the "pretrained" model
    tune = ["--data", str(run_dir / "play.txt"), "--out_dir", str(run_dir / "tuned"), "--cache_dir",
            str(run_dir / "cache"), "--init_from", str(run_dir / "out" / "latest.pt"), "--batch_size", "4",
            "--eval_interval", "2", "--eval_iters", "2", "--dtype", "float32", "--device", "cpu"]
    assert main([*tune, "--max_iters", "2"]) == 0
    resume = [a for a in tune if a not in ("--init_from", str(run_dir / "out" / "latest.pt"))]
    assert main([*resume, "--max_iters", "4", "--resume"]) == 0, capsys.readouterr().err
    tuned = load_checkpoint(run_dir / "tuned" / "latest.pt")
    assert tuned["step"] == 4
    assert tuned["tokenizer"] == load_checkpoint(run_dir / "out" / "latest.pt")["tokenizer"]


@pytest.mark.parametrize("extra, message", [
    (["--resume"], "cannot be combined with --resume"),
    (["--d_model", "64", "--n_layers", "2"], "cannot be combined with --d_model, --n_layers"),
    (["--config", "small"], "cannot be combined with --config"),
    (["--style", "llama"], "cannot be combined with --style"),
    (["--context_length", "16"], "cannot be combined with --context_length"),
])
def test_init_from_refuses_resume_and_shape_flags(run_dir, capsys, extra, message):
    assert main(args(run_dir, "--max_iters", "2")) == 0
    capsys.readouterr()
    assert main(qa_args(run_dir, "--init_from", str(run_dir / "out" / "latest.pt"), *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --init_from starts a new run from {run_dir / 'out' / 'latest.pt'}") and message in err
    assert not (run_dir / "qa").exists()


def test_init_from_a_missing_checkpoint_and_bad_pairs_are_named(run_dir, capsys):
    assert main(qa_args(run_dir, "--init_from", str(run_dir / "nope.pt"))) == 2
    assert f"{run_dir / 'nope.pt'}: no checkpoint there" in capsys.readouterr().err
    (run_dir / "bad.json").write_text(json.dumps([{"id": 1, "question": "Who?"}]), encoding="utf-8")
    argv = qa_args(run_dir)
    argv[1] = str(run_dir / "bad.json")
    assert main(argv) == 2
    assert f"{run_dir / 'bad.json'}: entry 0 (id 1): field 'answer' is missing" in capsys.readouterr().err
