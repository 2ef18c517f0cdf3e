"""`use_mine` puts the learner's code inside the library for a real run, then restores the library."""

import contextlib
import os
import re
from pathlib import Path

import pytest
import torch

from tinyllm_lib import attention, bpe, model
from tinyllm_lib.checks import CheckFailed, check
from tinyllm_lib.model import GPT, Block, GPTConfig
from tinyllm_lib.plugin import NotPluggedIn, use_mine

SDPA = attention.scaled_dot_product_attention  # the library's, kept before any patch
CFG = GPTConfig(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, flash=False)


def logits(cfg=CFG):
    """A GPT's logits; weights far from their small initial values, so that every part shows."""
    torch.manual_seed(0)
    net = GPT(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
        return net(torch.arange(12).view(2, 6) % cfg.vocab_size)


def test_a_module_function_is_replaced_counted_and_restored():
    original = bpe.count_pairs
    with use_mine(bpe, count_pairs=lambda words: {}) as plugged:
        assert bpe.train_merges_naive([(0, 1)], ["a", "b"], 3) == []
        assert plugged.calls == {"count_pairs": 1}
    assert bpe.count_pairs is original
    assert bpe.train_merges_naive([(0, 1)], ["a", "b"], 3) == [(0, 1)]


def test_restored_after_an_error_inside_the_block():
    original = attention.scaled_dot_product_attention

    def broken(*args, **kwargs):
        raise NotImplementedError

    with pytest.raises(NotImplementedError), use_mine(attention, scaled_dot_product_attention=broken):
        logits()
    assert attention.scaled_dot_product_attention is original


def test_the_learners_attention_reaches_the_model():
    reference = logits()
    seen = []

    def mine(q, k, v, causal=False, dropout_p=0.0):
        seen.append(q.shape)
        return SDPA(q, k, v, causal, dropout_p)

    with use_mine(attention, scaled_dot_product_attention=mine) as plugged:
        got = logits()
    assert plugged.calls["scaled_dot_product_attention"] == CFG.n_layers and len(seen) == CFG.n_layers
    torch.testing.assert_close(got, reference)

    def unscaled(q, k, v, causal=False, dropout_p=0.0):  # a wrong attention changes the logits
        scores = (q @ k.transpose(-2, -1)).masked_fill(~attention.causal_mask(q.size(-2)), float("-inf"))
        return scores.softmax(-1) @ v, None

    with use_mine(attention, scaled_dot_product_attention=unscaled):
        assert not torch.allclose(logits(), reference, atol=1e-4)


def test_a_function_on_a_class_becomes_a_method():
    reference = logits()

    def my_forward(self, x, rotary=None, need_weights=False):
        assert isinstance(self, Block)
        a, weights = self.attn(self.ln1(x), rotary, need_weights)
        x = x + a
        return x + self.ffn(self.ln2(x)), weights

    original = vars(Block)["forward"]
    with use_mine(Block, forward=my_forward) as plugged:
        got = logits()
    assert plugged.calls == {"forward": CFG.n_layers}
    assert vars(Block)["forward"] is original
    torch.testing.assert_close(got, reference)


def test_a_class_in_a_module_replaces_the_one_the_library_builds():
    class Mine(attention.MultiHeadAttention):
        pass

    with use_mine(model, MultiHeadAttention=Mine) as plugged:
        torch.manual_seed(0)
        net = GPT(CFG)
    assert plugged.calls == {"MultiHeadAttention": CFG.n_layers}
    assert all(isinstance(b.attn, Mine) for b in net.blocks)
    assert model.MultiHeadAttention is attention.MultiHeadAttention


def test_an_inherited_attribute_is_removed_again_not_copied_onto_the_object():
    block = Block(CFG)
    with use_mine(block, extra_repr=lambda: "mine"):
        assert block.extra_repr() == "mine"
    assert "extra_repr" not in vars(block) and block.extra_repr() == ""


def test_a_misspelt_name_is_an_error_that_suggests_the_right_one():
    with pytest.raises(AttributeError, match=r"tinyllm_lib\.bpe has no 'merg' to replace \(did you mean 'merge'\?\)"):
        with use_mine(bpe, merg=bpe.merge):
            pass
    with pytest.raises(TypeError, match="at least one"), use_mine(bpe):
        pass


def test_a_replacement_that_never_runs_is_reported():
    with pytest.raises(NotPluggedIn, match=r"your my_merge never ran: nothing called tinyllm_lib\.bpe\.merge"):
        def my_merge(word, pair, new):
            return tuple(word)

        with use_mine(bpe, merge=my_merge):
            bpe.count_pairs({(0, 1): 1})
    with use_mine(bpe, merge=my_merge, require_called=False) as plugged:
        pass
    assert plugged.calls == {"merge": 0}


def test_with_check_a_wrong_function_fails_and_a_stub_is_not_written_yet(monkeypatch, capsys):
    monkeypatch.setenv("TINYLLM_STRICT_CHECKS", "1")

    def run_with(fn):
        def run():
            with use_mine(attention, scaled_dot_product_attention=fn):
                return logits()
        return run

    def doubled(q, k, v, causal=False, dropout_p=0.0):
        out, weights = SDPA(q, k, v, causal, dropout_p)
        return 2 * out, weights

    with pytest.raises(CheckFailed, match="your attention inside a GPT differs"):
        check(run_with(doubled), reference=logits, cases=[()], name="your attention inside a GPT")

    def stub(q, k, v, causal=False, dropout_p=0.0):
        raise NotImplementedError

    assert check(run_with(stub), reference=logits, cases=[()], name="your attention inside a GPT") is False
    assert "not written yet" in capsys.readouterr().out


# ---------------------------------------------------------------- the plug-in cells of solutions/

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"

# chapter 07's cached forward pass as a learner might write it; {position} and {past} are where it goes wrong
CACHED_FORWARD = (
    'def my_cached_forward(model, idx, cache, last_only=False):\n'
    '    logits = []\n'
    '    for t in range(idx.size(1)):\n'
    '        pos = cache.length\n'
    '        x = model.tok_emb(idx[:, t:t + 1]) * math.sqrt(model.config.d_model) + model.pos_table[{position}]\n'
    '        for layer, block in enumerate(model.blocks):\n'
    '            past_k, past_v = cache.k[layer, :, :, :{past}], cache.v[layer, :, :, :{past}]\n'
    '            a, k, v = my_cached_attention(block.attn, block.ln1(x), past_k, past_v)\n'
    '            cache.k[layer, :, :, pos], cache.v[layer, :, :, pos] = k[:, :, -1], v[:, :, -1]\n'
    '            x = x + a\n'
    '            x = x + block.ffn(block.ln2(x))\n'
    '        cache.length = pos + 1\n'
    '        logits.append(model.lm_head(model.ln_f(x)))\n'
    '    logits = torch.cat(logits, dim=1)\n'
    '    return logits[:, -1:] if last_only else logits\n')

# chapter 05's mixed-precision step as a learner might write it; {dtype} and {enabled} are where it goes wrong
MIXED_STEP = (
    "def mixed_precision_step(model, optimizer, scaler, x, y, dtype, max_norm):\n"
    "    with torch.autocast('cpu', dtype={dtype}, enabled={enabled}):\n"
    "        loss = lm_loss(model(x), y)\n"
    "    scaler.scale(loss).backward()\n"
    "    scaler.unscale_(optimizer)\n"
    "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
    "    scaler.step(optimizer)\n"
    "    scaler.update()\n"
    "    optimizer.zero_grad(set_to_none=True)\n"
    "    return loss.item()\n")

# notebook -> (the plug-in check's name, {what is planted: source that redefines a learner function wrongly})
PLANTED = {
    "01_bpe.ipynb": ("your train, encode_word and update_pair_counts inside BPETokenizer", {
        "merge by string replacement": 'def merge(word, pair, new):\n'
                                       '    return tuple(" ".join(word).replace(" ".join(pair), new).split())\n',
        "encode_word that merges nothing": "def encode_word(ids, merges):\n    return list(ids)\n",
        "an update that only adds the new pairs": "def update_pair_counts(counts, word, pair, new, freq):\n"
                                                  "    merged = merge(word, pair, new)\n"
                                                  "    if len(merged) < len(word):\n"
                                                  "        for p in zip(merged, merged[1:]):\n"
                                                  "            counts[p] += freq\n"
                                                  "    return merged\n",
    }),
    "02_attention.ipynb": ("your causal_attention inside a GPT", {
        "attention without 1/sqrt(d)": "def causal_attention(q, k, v, dropout_p=0.0):\n"
                                       "    scores = (q @ k.transpose(-2, -1)).masked_fill(~causal_mask(q.size(-2)), float('-inf'))\n"
                                       "    return F.dropout(scores.softmax(-1), dropout_p) @ v\n",
        "dropout on the scores, before the softmax": (
            "def causal_attention(q, k, v, dropout_p=0.0):\n"
            "    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~causal_mask(q.size(-2)), float('-inf'))\n"
            "    return F.dropout(scores, dropout_p).softmax(-1) @ v\n"),
        "a module that drops in eval mode too": ("your MultiHeadAttention inside a GPT", (
            "class MyMultiHeadAttention(MyMultiHeadAttention):\n"
            "    def forward(self, x, rotary=None, need_weights=False):\n"
            "        q, k, v = self.qkv(x).split(x.size(-1), dim=-1)\n"
            "        y = causal_attention(split(q, self.n_heads), split(k, self.n_heads), split(v, self.n_heads), self.dropout)\n"
            "        return F.dropout(self.proj(merge(y)), self.dropout), None\n")),
    }),
    "03_transformer_block.ipynb": ("your pre_norm_block + gpt_forward inside a GPT", {
        "block without the FFN's residual": "def pre_norm_block(block, x):\n"
                                            "    x = x + block.attn(block.ln1(x))[0]\n"
                                            "    return block.ffn(block.ln2(x))\n",
        "forward without the final LayerNorm": "def gpt_forward(model, idx):\n"
                                               "    x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.size(1)))\n"
                                               "    for block in model.blocks:\n"
                                               "        x, _ = block(x)\n"
                                               "    return model.lm_head(x)\n",
        "forward without the embedding dropout": "def gpt_forward(model, idx):\n"
                                                 "    x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.size(1)))\n"
                                                 "    for block in model.blocks:\n"
                                                 "        x, _ = block(x)\n"
                                                 "    return model.lm_head(model.ln_f(x))\n",
    }),
    "05_mixed_precision.ipynb": ("your mixed-precision step inside a bf16 Trainer", {
        "the forward pass in float32 (no autocast)": MIXED_STEP.format(dtype="dtype", enabled="False"),
        "float16 autocast without a scaler": MIXED_STEP.format(dtype="torch.float16", enabled="True"),
        "the weights themselves cast to bfloat16": (
            "def mixed_precision_step(model, optimizer, scaler, x, y, dtype, max_norm):\n"
            "    model.to(dtype)\n"
            "    loss = lm_loss(model(x), y)\n"
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
            "    optimizer.step()\n"
            "    optimizer.zero_grad(set_to_none=True)\n"
            "    return loss.item()\n"),
    }),
    "09_experiments.ipynb": ("your RMSNorm, RoPE and SwiGLU inside a GPT", {
        "RMSNorm that subtracts the mean": "def my_rms_norm(x, gain, eps=1e-6):\n"
                                           "    x = x - x.mean(-1, keepdim=True)\n"
                                           "    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain\n",
        "RoPE on adjacent channel pairs": "def my_rope(x, base=10000.0):\n"
                                          "    T, hd = x.size(-2), x.size(-1)\n"
                                          "    f = base ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)\n"
                                          "    a = torch.outer(torch.arange(T, dtype=torch.float32), f)\n"
                                          "    x1, x2 = x[..., 0::2], x[..., 1::2]\n"
                                          "    return torch.cat([x1 * a.cos() - x2 * a.sin(), x1 * a.sin() + x2 * a.cos()], -1)\n",
    }),
    "07_sampling.ipynb": ("your KV cache inside generate_ids", {
        "the cache read one slot too far (the new token's empty slot)": CACHED_FORWARD.format(position="pos",
                                                                                             past="pos + 1"),
        "the new token's position off by one": CACHED_FORWARD.format(position="pos + 1", past="pos"),
    }),
    "08_custom_data.ipynb": ("your mask and padding inside a fine-tuning run", {
        "padding targets with the pad id": "def my_pad_batch(items, pad_id):\n"
                                           "    T = max(len(x) for x, _ in items)\n"
                                           "    x = torch.full((len(items), T), pad_id, dtype=torch.long)\n"
                                           "    y = torch.full((len(items), T), pad_id, dtype=torch.long)\n"
                                           "    for row, (xi, yi) in enumerate(items):\n"
                                           "        x[row, : len(xi)], y[row, : len(yi)] = xi, yi\n"
                                           "    return x, y\n",
        "the answer mask one target too far": "def my_make_example(ids, prompt_len, ignore_index):\n"
                                              "    ids = torch.tensor(ids, dtype=torch.long)\n"
                                              "    x, y = ids[:-1], ids[1:].clone()\n"
                                              "    y[:prompt_len] = ignore_index\n"
                                              "    return x, y\n",
    }),
}
STUBS = {"01_bpe.ipynb": "train", "08_custom_data.ipynb": "my_pad_batch", "02_attention.ipynb": "causal_attention",
         "03_transformer_block.ipynb": "pre_norm_block", "05_mixed_precision.ipynb": "mixed_precision_step",
         "09_experiments.ipynb": "my_rms_norm", "07_sampling.ipynb": "my_cached_forward"}
PLANTED["10_gpt2.ipynb"] = ("load_gpt2 with your map and your safetensors reader", {
    "attention's c_proj not transposed": "def my_gpt2_to_ours(tensors, cfg):\n"
                                         "    ours = gpt2_to_ours(tensors, cfg)\n"
                                         "    for i in range(cfg.n_layers):\n"
                                         "        ours[f'blocks.{i}.attn.proj.weight'] = tensors[f'h.{i}.attn.c_proj.weight']\n"
                                         "    return ours\n",
    "ln_1 and ln_2 swapped": "def my_gpt2_to_ours(tensors, cfg):\n"
                             "    ours = gpt2_to_ours(tensors, cfg)\n"
                             "    for i in range(cfg.n_layers):\n"
                             "        for kind in ('weight', 'bias'):\n"
                             "            a, b = f'blocks.{i}.ln1.{kind}', f'blocks.{i}.ln2.{kind}'\n"
                             "            ours[a], ours[b] = ours[b], ours[a]\n"
                             "    return ours\n",
})
STUBS["10_gpt2.ipynb"] = "my_gpt2_to_ours"
# Chapter 04's plug-in is its last cell now that the learning-rate experiment (exercise 8) comes before it.
PLANTED["04_training_loop.ipynb"] = ("your schedule, clipping and training step inside the Trainer", {
    "a training step that never clears its gradients": "def training_step(model, optimizer, x, y, max_norm):\n"
                                                       "    loss = lm_loss(model(x), y)\n"
                                                       "    loss.backward()\n"
                                                       "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
                                                       "    optimizer.step()\n"
                                                       "    return loss.item()\n",
    "a schedule without warmup": "def lr_at(it, max_lr, min_lr, warmup_iters, max_iters):\n"
                                 "    return get_lr(it, max_lr, min_lr, 0, max_iters)\n",
})
STUBS["04_training_loop.ipynb"] = "training_step"


@pytest.fixture(scope="module")
def solved():
    """Each solutions notebook run once, in this process: (its namespace, its last code cell)."""
    import json

    import matplotlib

    matplotlib.use("Agg")  # the experiments plot
    runs, here = {}, os.getcwd()
    os.chdir(SOLUTIONS)  # where a notebook runs: its paths are relative to its folder
    for name in PLANTED:
        nb = json.loads((SOLUTIONS / name).read_text(encoding="utf-8"))
        cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        assert "use_mine" in cells[-1], f"{name}: no plug-in cell last"
        namespace = {"__name__": "__main__"}
        for source in cells:
            exec(compile(source, name, "exec"), namespace)
        runs[name] = namespace, cells[-1]
    os.chdir(here)
    return runs


@contextlib.contextmanager
def replaced_in(namespace: dict, source: str):
    """Run `source` (a learner's redefinition) in the notebook's namespace; put the old names back after.

    The same namespace, not a copy: the notebook's functions look their helpers up in it.
    """
    before = dict(namespace)
    exec(source, namespace)
    try:
        yield
    finally:
        namespace.clear()
        namespace.update(before)


@pytest.mark.parametrize("notebook, bug", [(nb, bug) for nb, (_, bugs) in PLANTED.items() for bug in bugs])
def test_a_wrong_learner_function_reaches_the_run_and_fails_the_plug_in_check(solved, notebook, bug, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("TINYLLM_STRICT_CHECKS", "1")
    monkeypatch.chdir(SOLUTIONS)
    namespace, plug_cell = solved[notebook]
    name, bugs = PLANTED[notebook]
    source = bugs[bug]
    if isinstance(source, tuple):  # a bug that another check of the same plug-in cell catches
        name, source = source
    with replaced_in(namespace, source):
        with pytest.raises(CheckFailed, match=f"^✗ {re.escape(name)} (differs from the reference|raised)"):
            exec(plug_cell, namespace)
    assert f"✗ {name} " in capsys.readouterr().out


@pytest.mark.parametrize("notebook", list(STUBS))
def test_the_plug_in_cell_passes_with_the_solutions_and_says_not_written_yet_for_a_stub(solved, notebook, monkeypatch,
                                                                                       capsys):
    monkeypatch.setenv("TINYLLM_STRICT_CHECKS", "1")
    monkeypatch.chdir(SOLUTIONS)
    namespace, plug_cell = solved[notebook]
    name = PLANTED[notebook][0]
    exec(plug_cell, namespace)
    assert f"✓ correct: {name} matches the reference" in capsys.readouterr().out
    with replaced_in(namespace, f"def {STUBS[notebook]}(*args, **kwargs):\n    raise NotImplementedError\n"):
        exec(plug_cell, namespace)  # never raises, strict or not
    assert f"not written yet: `{STUBS[notebook]}` still raises NotImplementedError" in capsys.readouterr().out


# ---------------------------------------------------------------- chapter 06: the plug-in runs on 2 processes
# Its cells ship the learner's functions to a torchrun job through inspect.getsource, so each piece of
# source is compiled under a file name that linecache knows, as Jupyter does.

def _exec_with_source(source: str, namespace: dict, name: str) -> None:
    import linecache

    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    exec(compile(source, name, "exec"), namespace)


@pytest.fixture(scope="module")
def ddp_solved():
    """solutions/06: the setup cell, the overlapped wrapper's cell and the plug-in cell (last)."""
    import json

    nb = json.loads((SOLUTIONS / "06_ddp.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert "use_mine" in cells[-1]
    mine = next(source for source in cells if "def grad_ready(" in source)
    namespace = {"__name__": "__main__"}
    for i, source in enumerate([cells[0], mine]):
        _exec_with_source(source, namespace, f"<solutions/06_ddp.ipynb, cell {i}>")
    return namespace, cells[-1]


DDP_PLUG = "your overlapped wrapper inside the Trainer, 2 ranks"
DDP_WRONG = {  # send_bucket without the division by the world size: the sum of the ranks' gradients
    "send_bucket": "def send_bucket(self, i):\n"
                   "    flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[i]])\n"
                   "    self.in_flight.append((dist.all_reduce(flat, async_op=True), flat, self.buckets[i]))\n",
    "grad_ready": "def grad_ready(self, p):\n    raise NotImplementedError\n",
}


def test_the_06_plug_in_passes_fails_a_wrong_wrapper_and_says_not_written_yet(ddp_solved, monkeypatch, capsys):
    monkeypatch.setenv("TINYLLM_STRICT_CHECKS", "1")
    namespace, plug_cell = ddp_solved
    exec(plug_cell, namespace)
    assert f"✓ correct: {DDP_PLUG} matches the reference" in capsys.readouterr().out
    before = dict(namespace)
    try:
        _exec_with_source(DDP_WRONG["send_bucket"], namespace, "<a wrong send_bucket>")
        with pytest.raises(CheckFailed, match=f"^✗ {re.escape(DDP_PLUG)} differs from the reference"):
            exec(plug_cell, namespace)
        namespace.update(before)
        _exec_with_source(DDP_WRONG["grad_ready"], namespace, "<a stub grad_ready>")
        exec(plug_cell, namespace)  # never raises, strict or not
        assert "not written yet: `grad_ready` still raises NotImplementedError" in capsys.readouterr().out
    finally:
        namespace.clear()
        namespace.update(before)


# ---------------------------------------------------------------- chapter 11: the flash-attention plug-in
# Its notebook's ZeRO exercise runs on 2 processes, so only the cells the plug-in needs run here: the
# setup, the two function cells (not their checks) and the plug-in cell (last).
FLASH_PLUG = "your flash attention inside a GPT"
FLASH_BUGS = {  # a wrong my_flash_forward: (old, new)
    "attention that is not causal": ("            if causal:\n", "            if False:\n"),
    "scores without 1/sqrt(d)": ("s = q_i @ k[..., j:j_end, :].transpose(-2, -1) * scale",
                                 "s = q_i @ k[..., j:j_end, :].transpose(-2, -1)"),
}


def flash_cells(old: str = "", new: str = "") -> list[str]:
    import json

    nb = json.loads((SOLUTIONS / "11_systems.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert "use_mine" in cells[-1], "11_systems: no plug-in cell last"
    merge, forward = (next(s for s in cells if f"def {name}(" in s) for name in ("my_merge_tiles", "my_flash_forward"))
    if old:
        assert forward.count(old) == 1, old
        forward = forward.replace(old, new)
    return [cells[0], merge, forward, cells[-1]]


@pytest.mark.parametrize("bug", [None, *FLASH_BUGS, "stub"])
def test_the_11_plug_in_passes_fails_a_wrong_forward_and_says_not_written_yet(bug, monkeypatch, capsys):
    monkeypatch.setenv("TINYLLM_STRICT_CHECKS", "1")
    cells = flash_cells(*FLASH_BUGS.get(bug, ("", "")))
    if bug == "stub":
        cells[2] = "def my_flash_forward(*args, **kwargs):\n    raise NotImplementedError\n"
    namespace = {"__name__": "__main__"}
    for source in cells[:-1]:
        exec(source, namespace)
    if bug in FLASH_BUGS:
        with pytest.raises(CheckFailed, match=f"^✗ {re.escape(FLASH_PLUG)} differs from the reference"):
            exec(cells[-1], namespace)
    else:
        exec(cells[-1], namespace)
        expected = "not written yet: `my_flash_forward`" if bug == "stub" else f"✓ correct: {FLASH_PLUG} matches"
        assert expected in capsys.readouterr().out
