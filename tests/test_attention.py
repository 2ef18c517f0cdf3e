"""Tests for tinyllm_lib.attention: the from-scratch attention, its mask, heads, and the flash switch."""

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm_lib.attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    plot_attention,
    scaled_dot_product_attention,
    split_heads,
)

matplotlib.use("Agg")


def naive_attention(q, k, v, causal):
    """Loop-per-query reference: softmax over the visible keys, then a weighted sum of values."""
    T, d = q.shape
    out = torch.zeros_like(v)
    for t in range(T):
        visible = t + 1 if causal else T
        scores = torch.tensor([q[t] @ k[s] / math.sqrt(d) for s in range(visible)], dtype=torch.float64)
        w = torch.exp(scores - scores.max())
        w = w / w.sum()
        out[t] = sum(w[s] * v[s] for s in range(visible))
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_matches_a_loop_per_query(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 7, 5, dtype=torch.float64).unbind(0)
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal))
    torch.testing.assert_close(weights.sum(-1), torch.ones(7, dtype=torch.float64))


def test_causal_mask_is_lower_triangle_and_weights_ignore_the_future():
    assert causal_mask(4).tolist() == [[s <= t for s in range(4)] for t in range(4)]
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 6, 4).unbind(0)
    _, weights = scaled_dot_product_attention(q, k, v, causal=True)
    assert (weights.triu(1) == 0).all()
    # changing a future value must not change earlier outputs
    v2 = v.clone()
    v2[:, -1] += 10
    out1, _ = scaled_dot_product_attention(q, k, v, causal=True)
    out2, _ = scaled_dot_product_attention(q, k, v2, causal=True)
    torch.testing.assert_close(out1[:, :-1], out2[:, :-1])
    assert not torch.allclose(out1[:, -1], out2[:, -1])


def test_split_and_merge_heads_are_inverse_and_slice_channels():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])
    torch.testing.assert_close(merge_heads(h), x)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equivalence_fp32(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 33, 16).unbind(0)
    ours, _ = scaled_dot_product_attention(q, k, v, causal=causal)
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, fused, atol=1e-6, rtol=0)


@settings(max_examples=25, deadline=None, derandomize=True)  # the same examples on every run
@given(B=st.integers(1, 3), n_heads=st.integers(1, 4), T=st.integers(1, 40), head_dim=st.integers(1, 24),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_sdpa_equivalence_any_shape(B, n_heads, T, head_dim, causal, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, B, n_heads, T, head_dim, generator=g).unbind(0)
    ours, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, n_heads, T))


@pytest.mark.parametrize("causal", [False, True])
def test_module_flash_and_from_scratch_paths_agree(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4, causal=causal, flash=True)
    x = torch.randn(2, 9, 32, requires_grad=True)
    y_flash, w = attn(x)
    assert w is None
    g_flash = torch.autograd.grad(y_flash.sum(), x)[0]
    attn.flash = False
    y_ref, weights = attn(x, need_weights=True)
    g_ref = torch.autograd.grad(y_ref.sum(), x)[0]
    assert weights.shape == (2, 4, 9, 9)
    torch.testing.assert_close(y_flash, y_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_flash, g_ref, atol=1e-5, rtol=1e-5)


def test_flash_path_refuses_to_return_weights():
    attn = MultiHeadAttention(d_model=8, n_heads=2, flash=True)
    with pytest.raises(ValueError, match="flash=False"):
        attn(torch.randn(1, 3, 8), need_weights=True)


def test_heads_are_independent():
    """Zeroing one head's value channels changes only that head's slice before the projection."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=8, n_heads=2, flash=False, bias=False)
    torch.nn.init.eye_(attn.proj.weight)  # identity projection: output channels = merged heads
    x = torch.randn(1, 4, 8)
    y, _ = attn(x)
    with torch.no_grad():
        attn.qkv.weight[16:20] = 0  # value channels of head 0
    y0, _ = attn(x)
    assert torch.allclose(y0[..., :4], torch.zeros(1, 4, 4))
    torch.testing.assert_close(y0[..., 4:], y[..., 4:])


def test_rotary_hook_is_applied_to_q_and_k_only():
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=8, n_heads=2, flash=False)
    x = torch.randn(1, 4, 8)
    seen = []

    def rotary(t):
        seen.append(t.shape)
        return t * 2.0  # doubling q and k multiplies the scores by 4

    _, w_rot = attn(x, rotary=rotary, need_weights=True)
    assert seen == [(1, 2, 4, 4), (1, 2, 4, 4)]
    q, k, _ = attn.qkv(x).split(8, dim=-1)
    scores = split_heads(q, 2) @ split_heads(k, 2).transpose(-2, -1) * 4 / 2.0  # / √head_dim
    expected = scores.masked_fill(~causal_mask(4), float("-inf")).softmax(-1)
    torch.testing.assert_close(w_rot, expected)


def test_bad_head_count_is_refused():
    with pytest.raises(ValueError, match="divisible by n_heads=3"):
        MultiHeadAttention(d_model=8, n_heads=3)


def test_plot_attention_draws_one_map_per_head_with_labels():
    weights = torch.softmax(torch.randn(3, 4, 4), -1)
    fig = plot_attention(weights, ["a", "b", "c", "d"], title="t")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3
    assert [t.get_text() for t in images[0].get_xticklabels()] == ["a", "b", "c", "d"]
    torch.testing.assert_close(torch.as_tensor(images[2].images[0].get_array()), weights[2])
    with pytest.raises(ValueError, match="2 token labels for a 4×4"):
        plot_attention(weights, ["a", "b"])


# -- dropout on the attention weights --------------------------------------------------------------

@pytest.mark.parametrize("flash", [True, False], ids=["flash", "from-scratch"])
def test_attention_dropout_acts_in_training_only(flash):
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=16, n_heads=2, dropout=0.5, flash=flash)
    attn.resid_drop = torch.nn.Identity()  # leave only the dropout on the attention weights
    plain = MultiHeadAttention(d_model=16, n_heads=2, dropout=0.0, flash=flash)
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(2, 6, 16)
    train_1, train_2 = attn.train()(x)[0], attn(x)[0]
    assert not torch.allclose(train_1, train_2)  # a fresh mask every pass
    assert not torch.allclose(train_1, plain(x)[0])
    eval_1, eval_2 = attn.eval()(x)[0], attn(x)[0]
    torch.testing.assert_close(eval_1, eval_2)
    torch.testing.assert_close(eval_1, plain.eval()(x)[0])  # evaluation: no dropout at all


def test_from_scratch_dropout_zeroes_weights_and_rescales_the_rest():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 8, 8).unbind(0)
    _, weights = scaled_dot_product_attention(q, k, v, causal=True)
    _, dropped = scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.25)
    kept = dropped != 0
    assert 0.6 < kept[weights != 0].float().mean() < 0.9  # about 75% of the weights survive
    torch.testing.assert_close(dropped[kept], weights[kept] / 0.75)
