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
    "pair counts that ignore the word frequencies": (
        "01_bpe.ipynb", "counts[pair] += freq", "counts[pair] += 1", "count_pairs"),
    "pairs of symbols two apart": (
        "01_bpe.ipynb", "for pair in zip(word, word[1:]):", "for pair in zip(word, word[2:]):", "count_pairs"),
    "best pair with the first of equal counts": (
        "01_bpe.ipynb", "return max(counts, key=lambda pair: (counts[pair], pair))",
        "return max(counts, key=counts.get)", "best_pair"),
    "best pair with the smallest of equal counts": (
        "01_bpe.ipynb", "return max(counts, key=lambda pair: (counts[pair], pair))",
        "return min(counts, key=lambda pair: (-counts[pair], pair))", "best_pair"),
    "encoding with the latest merge first": (
        "01_bpe.ipynb", "pair = min(candidates, key=merges.get)", "pair = max(candidates, key=merges.get)",
        "encode_word"),
    "encoding with the leftmost known pair first": (
        "01_bpe.ipynb", "pair = min(candidates, key=merges.get)", "pair = candidates[0]", "encode_word"),
    "decoding that keeps the space of the first word marker": (
        "01_bpe.ipynb", 'return text[1:] if text.startswith(" ") else text', "return text", "decode_pieces"),
    "decoding that strips every leading space": (
        "01_bpe.ipynb", 'return text[1:] if text.startswith(" ") else text', 'return text.lstrip(" ")',
        "decode_pieces"),
    "incremental update that forgets the neighbours' old pairs": (
        "01_bpe.ipynb",
        "            if i > 0 and not fresh[-1]:  # (x, a) goes; after an occurrence, (b, a) went already\n"
        "                counts[(word[i - 1], a)] -= freq\n"
        "            if i + 2 < n:  # (b, y) goes\n"
        "                counts[(b, word[i + 2])] -= freq\n", "", "update_pair_counts"),
    "incremental update that removes the pair between two occurrences twice": (
        "01_bpe.ipynb", "if i > 0 and not fresh[-1]:", "if i > 0:", "update_pair_counts"),
    "incremental update that adds only the new symbol's left pairs": (
        "01_bpe.ipynb", "if len(out) > 1 and (fresh[-1] or fresh[-2]):", "if len(out) > 1 and fresh[-1]:",
        "update_pair_counts"),
    "training that breaks ties by insertion order": (
        "01_bpe.ipynb", "        pair = best_pair(counts)\n        merges.append(pair)",
        "        pair = max(counts, key=counts.get)\n        merges.append(pair)", "train"),
    "scores divided by d instead of its square root": (
        "02_attention.ipynb", "return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))",
        "return q @ k.transpose(-2, -1) / q.size(-1)", "attention_scores"),
    "a mask of the upper triangle": (
        "02_attention.ipynb", "return torch.tril(torch.ones(T, T, dtype=torch.bool))",
        "return torch.triu(torch.ones(T, T, dtype=torch.bool))", "my_causal_mask"),
    "a mask without the diagonal": (
        "02_attention.ipynb", "return torch.tril(torch.ones(T, T, dtype=torch.bool))",
        "return torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)", "my_causal_mask"),
    "masked scores set to 0 instead of -inf": (
        "02_attention.ipynb", 'scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))',
        "scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), 0.0)", "causal_attention"),
    "the mask applied after the softmax": (
        "02_attention.ipynb",
        'scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))\n'
        "    weights = scores.softmax(-1)  # (..., T, T)",
        "weights = scores.softmax(-1) * torch.ones(T, T).tril()", "causal_attention"),
    "dropout on the scores, before the softmax": (
        "02_attention.ipynb",
        "    weights = scores.softmax(-1)  # (..., T, T)\n    if dropout_p > 0:\n"
        "        weights = F.dropout(weights, p=dropout_p)\n",
        "    if dropout_p > 0:\n        scores = F.dropout(scores, p=dropout_p)\n"
        "    weights = scores.softmax(-1)  # (..., T, T)\n", "causal_attention"),
    "influence perturbing only the queries": (
        "02_attention.ipynb", "for x in (q2, k2, v2):", "for x in (q2,):", "influence"),
    "influence with rows and columns swapped": (
        "02_attention.ipynb", "depends[:, s] = (attend(q2, k2, v2)", "depends[s, :] = (attend(q2, k2, v2)",
        "influence"),
    "heads split by a reshape without the transpose": (
        "02_attention.ipynb", "return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)",
        "return x.reshape(B, n_heads, T, C // n_heads)", "split"),
    "heads made of interleaved channels": (
        "02_attention.ipynb", "return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)",
        "return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)", "split"),
    "heads merged without transposing back": (
        "02_attention.ipynb", "return x.transpose(1, 2).reshape(B, T, n_heads * head_dim)",
        "return x.reshape(B, T, n_heads * head_dim)", "merge"),
    "heads merged channel by channel": (
        "02_attention.ipynb", "return x.transpose(1, 2).reshape(B, T, n_heads * head_dim)",
        "return x.permute(0, 2, 3, 1).reshape(B, T, n_heads * head_dim)", "merge"),
    "q and k swapped out of the fused projection": (
        "02_attention.ipynb", "q, k, v = self.qkv(x).split(x.size(-1), dim=-1)",
        "k, q, v = self.qkv(x).split(x.size(-1), dim=-1)", "MyMultiHeadAttention"),
    "multi-head attention without its output projection": (
        "02_attention.ipynb", "return F.dropout(self.proj(merge(y)), p), None", "return F.dropout(merge(y), p), None",
        "MyMultiHeadAttention"),
    "multi-head dropout also in eval mode": (
        "02_attention.ipynb", "p = self.dropout if self.training else 0.0", "p = self.dropout", "MyMultiHeadAttention"),
    "multi-head attention without the dropout after proj": (
        "02_attention.ipynb", "return F.dropout(self.proj(merge(y)), p), None", "return self.proj(merge(y)), None",
        "MyMultiHeadAttention"),
    "attention parameters without the biases": (
        "02_attention.ipynb", "n_attention_params = (64 * 3 * 64 + 3 * 64) + (64 * 64 + 64)\n",
        "n_attention_params = 64 * 3 * 64 + 64 * 64\n", "parameters of MultiHeadAttention(64, 8)"),
    "attention parameters counted per head": (
        "02_attention.ipynb", "n_attention_params = (64 * 3 * 64 + 3 * 64) + (64 * 64 + 64)\n",
        "n_attention_params = 8 * ((64 * 3 * 8 + 3 * 8) + (8 * 64 + 64))\n", "parameters of MultiHeadAttention(64, 8)"),
    "previous-token scores on the diagonal above": (
        "02_attention.ipynb", "torch.diag(torch.full((T - 1,), 50.0), diagonal=-1)",
        "torch.diag(torch.full((T - 1,), 50.0), diagonal=1)", "previous_token_scores"),
    "previous-token scores too weak to be one-hot": (
        "02_attention.ipynb", "torch.diag(torch.full((T - 1,), 50.0), diagonal=-1)",
        "torch.diag(torch.full((T - 1,), 1.0), diagonal=-1)", "previous_token_scores"),
    "layer norm without eps": (
        "03_transformer_block.ipynb", "torch.sqrt(var + eps)", "torch.sqrt(var)", "my_layer_norm"),
    "layer norm with eps outside the square root": (
        "03_transformer_block.ipynb", "torch.sqrt(var + eps)", "(torch.sqrt(var) + eps)", "my_layer_norm"),
    "SwiGLU with a sigmoid gate": (
        "03_transformer_block.ipynb", "return (F.silu(x @ W) * (x @ V)) @ W2", "return (torch.sigmoid(x @ W) * (x @ V)) @ W2",
        "swiglu"),
    "SwiGLU gating the wrong branch": (
        "03_transformer_block.ipynb", "return (F.silu(x @ W) * (x @ V)) @ W2", "return (F.silu(x @ V) * (x @ W)) @ W2",
        "swiglu"),
    "a post-norm block": (
        "03_transformer_block.ipynb",
        "    x = x + block.attn(block.ln1(x))[0]\n    return x + block.ffn(block.ln2(x))",
        "    x = block.ln1(x + block.attn(x)[0])\n    return block.ln2(x + block.ffn(x))", "pre_norm_block"),
    "a block whose FFN reads the block's input": (
        "03_transformer_block.ipynb",
        "    x = x + block.attn(block.ln1(x))[0]\n    return x + block.ffn(block.ln2(x))",
        "    h = x + block.attn(block.ln1(x))[0]\n    return h + block.ffn(block.ln2(x))", "pre_norm_block"),
    "sines and cosines swapped": (
        "03_transformer_block.ipynb",
        "    table[:, 0::2] = torch.sin(position * inv_freq)\n    table[:, 1::2] = torch.cos(position * inv_freq)",
        "    table[:, 0::2] = torch.cos(position * inv_freq)\n    table[:, 1::2] = torch.sin(position * inv_freq)",
        "my_sinusoidal"),
    "frequencies over half the width": (
        "03_transformer_block.ipynb", "10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)",
        "10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / (d_model // 2))", "my_sinusoidal"),
    "layer norm with the unbiased variance": (
        "03_transformer_block.ipynb", "var = x.var(dim=-1, keepdim=True, unbiased=False)", "var = x.var(dim=-1, keepdim=True)",
        "my_layer_norm"),
    "one LayerNorm per block": (
        "03_transformer_block.ipynb", "cfg.n_layers * (2 * norm + attention + ffn)", "cfg.n_layers * (norm + attention + ffn)",
        "count_params"),
    "the head counted even when tied": (
        "03_transformer_block.ipynb", "    if not cfg.tie_weights:\n        n += V * C", "    n += V * C", "count_params"),
    "biases counted when there are none": (
        "03_transformer_block.ipynb", "cfg.d_ff, int(cfg.bias)", "cfg.d_ff, 1", "count_params"),
    "a position table counted for RoPE too": (
        "03_transformer_block.ipynb", 'if cfg.pos_emb == "learned":', 'if cfg.pos_emb != "sinusoidal":', "count_params"),
    "logits of the position before the changed token too": (
        "03_transformer_block.ipynb", "logits = list(range(k, T))", "logits = list(range(max(k - 1, 0), T))",
        "token_reach"),
    "loss terms only where the input changed": (
        "03_transformer_block.ipynb", "losses = list(range(max(k - 1, 0), T - 1))", "losses = list(range(k, T - 1))",
        "token_reach"),
    "loss terms taken as the logits' positions": (
        "03_transformer_block.ipynb", "losses = list(range(max(k - 1, 0), T - 1))", "losses = list(range(k, T))",
        "token_reach"),
    "a forward pass without the final LayerNorm": (
        "03_transformer_block.ipynb", "return model.lm_head(model.ln_f(x))  # (B, T, vocab_size)",
        "return model.lm_head(x)  # (B, T, vocab_size)", "gpt_forward"),
    "a forward pass without positions": (
        "03_transformer_block.ipynb", "x = model.tok_emb(idx) + model.pos_emb(torch.arange(T, device=idx.device))",
        "x = model.tok_emb(idx)", "gpt_forward"),
    "targets not shifted by one": (
        "04_training_loop.ipynb", "tokens[i + 1 : i + 1 + context_length]", "tokens[i : i + context_length]",
        "my_get_batch"),
    "window starts drawn from one position fewer": (
        "04_training_loop.ipynb", "torch.randint(len(tokens) - context_length, (batch_size,)",
        "torch.randint(len(tokens) - context_length - 1, (batch_size,)", "my_get_batch"),
    "clipping that also scales small gradients up": (
        "04_training_loop.ipynb", "scale = min(1.0, max_norm / (norm.item() + 1e-6))",
        "scale = max_norm / (norm.item() + 1e-6)", "clip_by_hand"),
    "a gradient norm without the square root": (
        "04_training_loop.ipynb", "norm = torch.sqrt(sum((g**2).sum() for g in grads))",
        "norm = sum((g**2).sum() for g in grads)", "clip_by_hand"),
    "accumulation without dividing by k": (
        "04_training_loop.ipynb", "(lm_loss(model(xm), ym) / k).backward()", "lm_loss(model(xm), ym).backward()",
        "accumulated_gradients"),
    "gradients cleared between micro-batches": (
        "04_training_loop.ipynb", "        (lm_loss(model(xm), ym) / k).backward()",
        "        model.zero_grad(set_to_none=True)\n        (lm_loss(model(xm), ym) / k).backward()",
        "accumulated_gradients"),
    "weight decay on the embeddings too": (
        "04_training_loop.ipynb", "if p.dim() >= 2 and id(p) not in embeddings", "if p.dim() >= 2", "decayed_names"),
    "weight decay on the biases and gains instead": (
        "04_training_loop.ipynb", "if p.dim() >= 2 and id(p) not in embeddings", "if p.dim() < 2", "decayed_names"),
    "bits per character without the change of base": (
        "04_training_loop.ipynb", "return loss_nats / math.log(2) / chars_per_token", "return loss_nats / chars_per_token",
        "my_bits_per_char"),
    "bits per character multiplied by characters per token": (
        "04_training_loop.ipynb", "return loss_nats / math.log(2) / chars_per_token",
        "return loss_nats / math.log(2) * chars_per_token", "my_bits_per_char"),
    "eps measured one halving too far": (
        "05_mixed_precision.ipynb", "while one + gap / 2 != one:", "while one + gap != one:", "probe_format"),
    "eps searched in float64 whatever the dtype": (
        "05_mixed_precision.ipynb", "one = torch.tensor(1.0, dtype=dtype)\n    gap = 1.0",
        "one = torch.tensor(1.0, dtype=torch.float64)\n    gap = 1.0", "probe_format"),
    "exponent bits as the bits of the largest exponent": (
        "05_mixed_precision.ipynb", "exponent_bits = round(math.log2(largest_exponent + 1)) + 1",
        "exponent_bits = largest_exponent.bit_length()", "probe_format"),
    "bf16 sums taken as exact": (
        "05_mixed_precision.ipynb", "return (256.0, 260.0)", "return (257.0, 259.0)", "bf16_sums"),
    "bf16 sums rounded down": (
        "05_mixed_precision.ipynb", "return (256.0, 260.0)", "return (256.0, 258.0)", "bf16_sums"),
    "underflow counting the zeros that were there": (
        "05_mixed_precision.ipynb", "return (nonzero.to(dtype) == 0).float().mean().item()",
        "return (values.to(dtype) == 0).float().mean().item()", "underflow_fraction"),
    "underflow counting subnormals as lost": (
        "05_mixed_precision.ipynb", "return (nonzero.to(dtype) == 0).float().mean().item()",
        "return (nonzero.to(dtype).abs() < torch.finfo(dtype).tiny).float().mean().item()", "underflow_fraction"),
    "mixed-precision step without autocast": (
        "05_mixed_precision.ipynb", "enabled=dtype != torch.float32):\n        loss = lm_loss(model(x), y)  # forward",
        "enabled=False):\n        loss = lm_loss(model(x), y)  # forward", "mixed_precision_step"),
    "mixed-precision step autocasting to float16 whatever the dtype": (
        "05_mixed_precision.ipynb", "dtype=dtype, enabled=dtype != torch.float32):\n        loss = lm_loss(model(x), y)  # forward",
        "dtype=torch.float16, enabled=dtype != torch.float32):\n        loss = lm_loss(model(x), y)  # forward",
        "mixed_precision_step"),
    "mixed-precision step clipping the scaled gradients": (
        "05_mixed_precision.ipynb", "    scaler.unscale_(optimizer)  # divide by S before clipping", "    # (no unscale_)",
        "mixed_precision_step"),
    "mixed-precision step that steps past the scaler": (
        "05_mixed_precision.ipynb", "scaler.step(optimizer)  # skipped if a gradient is inf or NaN",
        "optimizer.step()  # skipped if a gradient is inf or NaN", "mixed_precision_step"),
    "saved tensors recorded as copies": (
        "05_mixed_precision.ipynb", "        saved.append(t)\n", "        saved.append(t.clone())\n", "saved_tensors"),
    "saved tensors recorded only when they require grad": (
        "05_mixed_precision.ipynb", "        saved.append(t)\n", "        if t.requires_grad:\n            saved.append(t)\n",
        "saved_tensors"),
    "block bytes without the LayerNorm statistics and the log-sum-exp": (
        "05_mixed_precision.ipynb", "float32 = 2 * B * T * C * 4 + 2 * 2 * B * T * 4 + B * H * T * 4",
        "float32 = 2 * B * T * C * 4", "my_block_bytes"),
    "block bytes with the residual stream in the autocast type": (
        "05_mixed_precision.ipynb", "float32 = 2 * B * T * C * 4 + ", "float32 = 2 * B * T * C * act + ", "my_block_bytes"),
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
    "online-softmax merge without rescaling": (
        "11_systems.ipynb", "return m, alpha * l_a + beta * l_b, alpha[..., None] * acc_a + beta[..., None] * acc_b",
        "return m, l_a + l_b, acc_a + acc_b", "my_merge_tiles"),
    "online-softmax merge rescaling the values but not the sums": (
        "11_systems.ipynb", "return m, alpha * l_a + beta * l_b, alpha[..., None] * acc_a + beta[..., None] * acc_b",
        "return m, l_a + l_b, alpha[..., None] * acc_a + beta[..., None] * acc_b", "my_merge_tiles"),
    "online-softmax merge with the exponents' sign flipped": (
        "11_systems.ipynb", "alpha, beta = torch.exp(m_a - m), torch.exp(m_b - m)",
        "alpha, beta = torch.exp(m - m_a), torch.exp(m - m_b)", "my_merge_tiles"),
    "flash forward whose causal mask hides the diagonal": (
        "11_systems.ipynb", "future = torch.arange(j, j_end) > torch.arange(i, i_end)[:, None]",
        "future = torch.arange(j, j_end) >= torch.arange(i, i_end)[:, None]", "my_flash_forward"),
    "flash forward skipping the diagonal key block": (
        "11_systems.ipynb", "for j in range(0, i_end if causal else T, block_size):",
        "for j in range(0, i if causal else T, block_size):", "my_flash_forward"),
    "flash forward with a log-sum-exp that forgets the maximum": (
        "11_systems.ipynb", "lse[..., i:i_end] = m + torch.log(l)", "lse[..., i:i_end] = torch.log(l)",
        "my_flash_forward"),
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
    verdict = (f"✗ {exercise} ", f"✗ {exercise}:")  # check() and check_value()
    assert str(exc).startswith(verdict), str(exc)
    assert where > planted_at
    printed = capsys.readouterr().out
    assert any(v in printed for v in verdict)  # what the learner reads


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


ZERO_BUGS = {  # chapter 11's ZeRO-1 step, run on 2 processes: bug -> (old, new)
    "ZeRO-1 step without the all-gather": ("    dist.all_gather(pieces, pieces[self.rank].clone())\n", ""),
    "ZeRO-1 step where every rank updates the first shard": (
        "mine = slice(self.rank * self.shard, (self.rank + 1) * self.shard)", "mine = slice(0, self.shard)"),
}


@pytest.mark.parametrize("bug", list(ZERO_BUGS))
def test_the_11_zero_check_catches_a_planted_bug_on_real_processes(bug, monkeypatch, capsys):
    old, new = ZERO_BUGS[bug]
    monkeypatch.setenv(STRICT_ENV, "1")
    cells = code_cells("11_systems.ipynb")
    planted, at = plant(cells, old, new)
    assert "def zero_step(" in planted[at]
    failure = run_cells_with_sources([planted[0], planted[at], planted[at + 1]])
    assert failure is not None and failure[0] == 2, f"{bug}: the check printed ✓ ({failure})"
    assert isinstance(failure[1], CheckFailed), repr(failure[1])
    assert str(failure[1]).startswith("✗ rank 0's parameters after 3 ZeRO-1 steps"), str(failure[1])[:300]


def test_every_exercise_of_chapters_01_to_05_has_two_planted_bugs():
    """Each exercise's check must catch at least two plausible wrong answers (not only one)."""
    planted = {}
    for notebook, _, _, exercise in BUGS.values():
        planted[(notebook, exercise)] = planted.get((notebook, exercise), 0) + 1
    chapter = {nb for nb, _ in planted if nb[:2] in {"01", "02", "03", "04", "05"}}
    exercises = {(nb, ex) for nb, ex in planted if nb in chapter}
    assert len(exercises) >= 25
    assert [key for key in exercises if planted[key] < 2] == []
