"""The check cells of solutions/ catch wrong solutions, and a wrong solution fails the tests.

Each case plants a plausible bug in one worked solution, runs the notebook's cells in order (in
this process, with strict checks on, as conftest.py sets them for every notebook kernel) and
expects the check cell of that exercise to raise. The last test runs a planted notebook the way CI
does, under `pytest --nbval-lax`, and expects it to fail.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm_lib.checks import STRICT_ENV, CheckFailed

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"

if not SOLUTIONS.is_dir():  # a checkout of the library alone, without the course notebooks
    pytest.skip("no solutions/ folder", allow_module_level=True)


def code_cells(name: str) -> list[str]:
    nb = json.loads((SOLUTIONS / name).read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def run_until_failure(cells: list[str]) -> tuple[int, BaseException] | None:
    """Execute cells in one namespace; (index, exception) of the first cell that raises, else None."""
    namespace = {"__name__": "__main__"}
    for i, source in enumerate(cells):
        try:
            exec(compile(source, f"<cell {i}>", "exec"), namespace)
        except Exception as exc:
            return i, exc
    return None


def plant(cells: list[str], old: str, new: str) -> tuple[list[str], int]:
    """Replace `old` by `new` in the one cell holding it; return the cells and that cell's index."""
    where = [i for i, source in enumerate(cells) if old in source]
    assert len(where) == 1 and cells[where[0]].count(old) == 1, f"the bug site {old!r} is not unique"
    planted = list(cells)
    planted[where[0]] = cells[where[0]].replace(old, new)
    return planted, where[0]


STRING_REPLACE_MERGE = 'tuple(" ".join(word).replace(" ".join(pair), new).split())'

BUGS = {
    "attention without 1/sqrt(d)": (
        "02_attention.ipynb", "return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))",
        "return q @ k.transpose(-2, -1)", "attention_scores"),
    "warmup starting at (it+1)/warmup": (
        "04_training_loop.ipynb", "return max_lr * it / warmup_iters", "return max_lr * (it + 1) / warmup_iters",
        "lr_at"),
    "learning rate off by a constant 9e-6": (
        "04_training_loop.ipynb", "return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))",
        "return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress)) + 9e-6", "lr_at"),
    "training step without zero_grad": (
        "04_training_loop.ipynb", "    optimizer.zero_grad(set_to_none=True)\n    return loss.item()\n    ### END SOLUTION",
        "    return loss.item()\n    ### END SOLUTION", "training_step"),
    "training step clipping after the update": (
        "04_training_loop.ipynb",
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n    optimizer.step()\n"
        "    optimizer.zero_grad(set_to_none=True)\n    return loss.item()\n    ### END SOLUTION",
        "    optimizer.step()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
        "    optimizer.zero_grad(set_to_none=True)\n    return loss.item()\n    ### END SOLUTION", "training_step"),
    "merge by string replacement": (
        "01_bpe.ipynb", "    out, i = [], 0\n", f"    return {STRING_REPLACE_MERGE}\n", "merge"),
    "merge comparing concatenated symbols": (
        "01_bpe.ipynb", "(word[i], word[i + 1]) == pair", "word[i] + word[i + 1] == pair[0] + pair[1]", "merge"),
    "train merging by string replacement": (
        "01_bpe.ipynb", "words = {merge(w, pair, pair[0] + pair[1]): f",
        'words = {tuple(" ".join(w).replace(" ".join(pair), pair[0] + pair[1]).split()): f', "train"),
    "layer norm without eps": (
        "03_transformer_block.ipynb", "torch.sqrt(var + eps)", "torch.sqrt(var)", "my_layer_norm"),
    "layer norm with eps outside the square root": (
        "03_transformer_block.ipynb", "torch.sqrt(var + eps)", "(torch.sqrt(var) + eps)", "my_layer_norm"),
    "answer mask one target too far": (
        "08_custom_data.ipynb", "y[: prompt_len - 1] = ignore_index", "y[:prompt_len] = ignore_index",
        "my_make_example"),
    "padding targets with the pad id instead of the ignore index": (
        "08_custom_data.ipynb", "y = torch.full((len(items), T), -100, dtype=torch.long)",
        "y = torch.full((len(items), T), pad_id, dtype=torch.long)", "my_pad_batch"),
    "padding on the left": (
        "08_custom_data.ipynb", "x[row, : len(xi)], y[row, : len(yi)] = xi, yi",
        "x[row, T - len(xi) :], y[row, T - len(yi) :] = xi, yi", "my_pad_batch"),
    "lookup scored by shared words, not their share": (
        "08_custom_data.ipynb", "score = len(words & theirs) / max(1, len(words | theirs))",
        "score = len(words & theirs)", "my_nearest_answer"),
    "lookup without normalising the questions": (
        "08_custom_data.ipynb", "theirs = set(normalize_answer(record[\"question\"]).split())",
        "theirs = set(record[\"question\"].split())", "my_nearest_answer"),
    "token-F1 counting a repeated word once": (
        "08_custom_data.ipynb", "shared = sum((Counter(pred) & Counter(ref)).values())",
        "shared = len(set(pred) & set(ref))", "my_token_f1"),
    "Conv1D weight copied without the transpose": (
        "10_gpt2.ipynb", "linear.weight.copy_(weight.T)", "linear.weight.copy_(weight.reshape(weight.T.shape))",
        "linear_from_conv1d"),
    "fused q|k|v split into heads without the transpose": (
        "10_gpt2.ipynb", "t.view(B, T, n_heads, C // n_heads).transpose(1, 2)", "t.reshape(B, n_heads, T, C // n_heads)",
        "qkv_heads"),
    "RMSNorm that subtracts the mean (LayerNorm without its bias)": (
        "09_experiments.ipynb", "return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * gain",
        "return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * gain",
        "my_rms_norm"),
    "RoPE rotating adjacent channels instead of halves": (
        "09_experiments.ipynb", "x1, x2 = x.chunk(2, dim=-1)", "x1, x2 = x[..., 0::2], x[..., 1::2]", "my_rope"),
    "SwiGLU with a sigmoid gate (GLU)": (
        "09_experiments.ipynb", "F.silu(ffn.gate(x))", "torch.sigmoid(ffn.gate(x))", "my_swiglu"),
    "power law fitted without subtracting the floor": (
        "09_experiments.ipynb", "np.log(L - E)", "np.log(L)", "my_fit_alpha"),
    "bootstrap interval width taken from the extreme refits": (
        "09_experiments.ipynb", "low, high = np.percentile(a, [2.5, 97.5])", "low, high = a.min(), a.max()", "widths"),
    "noise band with the population standard deviation": (
        "09_experiments.ipynb", "np.std(base_bpcs, ddof=1)", "np.std(base_bpcs)", "my_verdict"),
    "ablation judged on its best run, not its mean": (
        "09_experiments.ipynb", "np.mean(variant_bpcs) - mean", "np.min(variant_bpcs) - mean", "my_verdict"),
    "safetensors offsets counted from the start of the file": (
        "10_gpt2.ipynb", "data = bytearray(raw[8 + n + begin : 8 + n + end])", "data = bytearray(raw[begin:end])",
        "read_tensor"),
    "GPT-2 map without attention c_proj's transpose (a square matrix: no shape error)": (
        "10_gpt2.ipynb", 'conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", ', 'conv1d = ("attn.c_attn.weight", ',
        "my_gpt2_to_ours"),
    "GPT-2 map with ln_1 and ln_2 swapped (same shapes)": (
        "10_gpt2.ipynb", '"ln_1": "ln1", "ln_2": "ln2"', '"ln_1": "ln2", "ln_2": "ln1"', "my_gpt2_to_ours"),
    "GPT-2 map sending the FFN's c_proj to attention's proj": (
        "10_gpt2.ipynb", '"mlp.c_proj": "ffn.down"', '"mlp.c_proj": "attn.proj"', "my_gpt2_to_ours"),
    "distinct-2 with bigrams spanning two samples": (
        "07_sampling.ipynb", "grams = [(row[i], row[i + 1]) for row in rows for i in range(len(row) - 1)]",
        "grams = list(zip([t for row in rows for t in row], [t for row in rows for t in row][1:]))",
        "my_distinct_2"),
    "temperature applied as a product, not a division": (
        "07_sampling.ipynb", "return (logits / temperature).softmax(dim=-1)", "return (logits * temperature).softmax(dim=-1)",
        "probs_at_temperature"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_the_check_cell_catches_a_planted_bug(bug, monkeypatch, capsys):
    notebook, old, new, exercise = BUGS[bug]
    monkeypatch.setenv(STRICT_ENV, "1")
    monkeypatch.chdir(SOLUTIONS)  # where a notebook runs: its paths are relative to its folder
    cells, planted_at = plant(code_cells(notebook), old, new)
    failure = run_until_failure(cells)
    assert failure is not None, f"{bug}: every check cell of solutions/{notebook} printed ✓"
    where, exc = failure
    assert isinstance(exc, CheckFailed), f"cell {where} raised {exc!r}, not a failed check"
    assert str(exc).startswith(f"✗ {exercise} "), str(exc)
    assert where > planted_at
    assert f"✗ {exercise} " in capsys.readouterr().out  # what the learner reads


def test_the_plug_in_cell_of_04_catches_a_wrong_training_step_on_its_own(monkeypatch, capsys):
    """Without exercise 7's check, a training step that never clears its gradients still fails: inside
    the Trainer, its loss curve leaves the reference's."""
    monkeypatch.setenv(STRICT_ENV, "1")
    old, new = BUGS["training step without zero_grad"][1:3]
    cells, _ = plant(code_cells("04_training_loop.ipynb"), old, new)
    own_check = [i for i, source in enumerate(cells) if 'name="training_step"' in source]
    assert len(own_check) == 1
    cells[own_check[0]] = "pass"
    failure = run_until_failure(cells)
    assert failure is not None and isinstance(failure[1], CheckFailed), failure
    assert str(failure[1]).startswith("✗ your schedule, clipping and training step inside the Trainer"), failure
    assert "use_mine(Trainer, train_step=step_with_mine)" in cells[failure[0]]


def test_a_wrong_solution_fails_its_notebook_under_nbval(tmp_path):
    """CI's view: `pytest --nbval-lax` on solutions/02 with the 1/√d removed fails, naming the check."""
    nb = json.loads((SOLUTIONS / "02_attention.ipynb").read_text(encoding="utf-8"))
    old, new = BUGS["attention without 1/sqrt(d)"][1:3]
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert sum(old in s for s in sources) == 1
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"]).replace(old, new)
    (tmp_path / "02_attention.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's settings: no xdist, no testpaths
    env = {**os.environ, STRICT_ENV: os.environ.get(STRICT_ENV, "")}  # as conftest.py left it
    assert env[STRICT_ENV] == "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "02_attention.ipynb"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "CheckFailed" in out and "attention_scores differs from the reference" in out, out
    assert "1 failed" in out, out  # only the check cell of exercise 1


# ---------------------------------------------------------------- chapter 06: checks that run on several processes
# Its check cells ship the learner's functions to torchrun jobs through inspect.getsource, so each cell
# is compiled under a file name that linecache knows, as Jupyter does. Only the setup cell and the
# exercise's own cells run: the other exercises' jobs would only cost time.

def run_cells_with_sources(cells: list[str]) -> tuple[int, BaseException] | None:
    import linecache

    namespace = {"__name__": "__main__"}
    for i, source in enumerate(cells):
        filename = f"<solutions/06_ddp.ipynb, cell {i}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        try:
            exec(compile(source, filename, "exec"), namespace)
        except Exception as exc:
            return i, exc
    return None


DDP_BUGS = {  # bug -> (old, new, the cell defining the exercise, its check cell, what the check says first)
    "overlapped wrapper that forgets to divide by the world size": (
        "    flat /= self.world\n", "", "def grad_ready(", 'name="your overlapped wrapper on 2 ranks"',
        "✗ your overlapped wrapper on 2 ranks differs from the reference"),
    "overlapped wrapper that never copies the averages back": (
        "            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))\n", "            pass\n",
        "def grad_ready(", 'name="your overlapped wrapper on 2 ranks"',
        "✗ your overlapped wrapper on 2 ranks differs from the reference"),
    "overlapped wrapper that sends a bucket at its first gradient": (
        "if self.ready[i] == len(self.buckets[i]):", "if self.ready[i] == 1:", "def grad_ready(",
        'name="your overlapped wrapper on 2 ranks"', "✗ your overlapped wrapper on 2 ranks"),
    "overlapped wrapper with a blocking all-reduce": (
        "async_op=True)", "async_op=False)", "def grad_ready(", 'name="your overlapped wrapper on 2 ranks"',
        "✗ your overlapped wrapper on 2 ranks"),
    "ring all-gather that adds instead of copying": (
        "chunks[receive].copy_(incoming)", "chunks[receive].add_(incoming)", "def ring_all_reduce(", "PROBE_RING",
        "✗ rank 0's tensor of 3000 after ring_all_reduce"),
    "ring replaced by dist.all_reduce (right sum, no ring)": (
        "    rank, world = dist.get_rank(), dist.get_world_size()\n    right,",
        "    return dist.all_reduce(tensor)\n    right,", "def ring_all_reduce(", "PROBE_RING",
        "✗ bytes each rank sent for a tensor of 12,000 bytes"),
}


@pytest.mark.parametrize("bug", list(DDP_BUGS))
def test_the_06_check_cells_catch_a_planted_bug_on_real_processes(bug, monkeypatch, capsys):
    old, new, definition, check_cell, verdict = DDP_BUGS[bug]
    monkeypatch.setenv(STRICT_ENV, "1")
    cells = code_cells("06_ddp.ipynb")
    planted, at = plant(cells, old, new)
    assert definition in planted[at]
    (checked,) = [i for i, source in enumerate(cells) if check_cell in source and i > at]
    failure = run_cells_with_sources([planted[0], planted[at], planted[checked]])
    assert failure is not None and failure[0] == 2, f"{bug}: the check printed ✓ ({failure})"
    assert isinstance(failure[1], CheckFailed), repr(failure[1])
    assert str(failure[1]).startswith(verdict), str(failure[1])
    print(f"{bug}: {str(failure[1])[-300:]}")  # what the bug scored
    assert verdict in capsys.readouterr().out  # what the learner reads


def test_the_06_check_cells_pass_with_the_solutions(monkeypatch, capsys):
    monkeypatch.setenv(STRICT_ENV, "1")
    cells = code_cells("06_ddp.ipynb")
    ring = next(i for i, source in enumerate(cells) if "def ring_all_reduce(" in source)
    overlap = next(i for i, source in enumerate(cells) if "def grad_ready(" in source)
    assert run_cells_with_sources([cells[0], cells[ring], cells[ring + 1], cells[overlap], cells[overlap + 1]]) is None
    out = capsys.readouterr().out
    assert "✓ correct: bytes each rank sent" in out and "✓ correct: your overlapped wrapper on 2 ranks" in out, out
