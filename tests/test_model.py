"""Tests for tinyllm_lib.model: config validation, the pieces of the block, the GPT model and its loss,
and a logits oracle against Hugging Face's GPT2LMHeadModel."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hf_gpt2 import random_hf_gpt2

from tinyllm_lib.model import (
    GPT,
    FeedForward,
    GPTConfig,
    Rotary,
    lm_loss,
    sinusoidal_positions,
)


def small_config(**overrides):
    return GPTConfig(**{**dict(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=64),
                        **overrides})


# ---- config -------------------------------------------------------------------------------------------

def test_presets_and_overrides():
    tiny = GPTConfig.preset("tiny")
    assert (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.vocab_size, tiny.context_length, tiny.d_ff) == (
        384, 6, 6, 10000, 256, 512)
    assert GPTConfig() == tiny
    assert GPTConfig.preset("medium", vocab_size=65).vocab_size == 65
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny, small, medium"):
        GPTConfig.preset("huge")


@pytest.mark.parametrize("name, millions", [("tiny", 10), ("small", 22), ("medium", 65)])
def test_preset_parameter_counts(name, millions):
    with torch.device("meta"):
        n = GPT(GPTConfig.preset(name)).num_params()
    assert abs(n / 1e6 - millions) / millions < 0.05


@pytest.mark.parametrize("bad, message", [
    (dict(d_model=100, n_heads=3), "d_model=100 must be divisible by n_heads=3"),
    (dict(activation="gelu2"), "activation='gelu2' is not one of 'gelu', 'gelu_tanh', 'relu', 'silu', 'swiglu'"),
    (dict(pos_emb="alibi"), "pos_emb='alibi' is not one of 'sinusoidal', 'learned', 'rope'"),
    (dict(norm="mid"), "norm='mid' is not one of 'pre', 'post'"),
    (dict(n_layers=0), "n_layers=0 must be a positive integer"),
    (dict(vocab_size="100"), "vocab_size='100' must be a positive integer"),
    (dict(dropout=1.5), "dropout=1.5 must be in"),
    (dict(use_learned_pos_emb=True, pos_emb="rope"), "contradicts"),
    (dict(pos_emb="rope", d_model=12, n_heads=4), "even head size"),
])
def test_bad_config_names_field_and_allowed_values(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GPTConfig(**bad)


def test_learned_alias_and_asdict_round_trip():
    cfg = GPTConfig(use_learned_pos_emb=True)
    assert cfg.pos_emb == "learned"
    assert "use_learned_pos_emb" not in dataclasses.asdict(cfg)  # a constructor argument, not a field
    assert GPTConfig(**dataclasses.asdict(cfg)) == cfg
    assert GPTConfig.preset("tiny", use_learned_pos_emb=True).pos_emb == "learned"  # the training CLI's way
    for pos in ("sinusoidal", "rope"):
        c = GPTConfig(pos_emb=pos)
        assert GPTConfig(**dataclasses.asdict(c)) == c


@pytest.mark.parametrize("pos", ["sinusoidal", "rope"])
def test_alias_does_not_stick_when_changing_pos_emb(pos):
    cfg = GPTConfig(use_learned_pos_emb=True)
    assert dataclasses.replace(cfg, pos_emb=pos).pos_emb == pos
    assert GPTConfig(**{**dataclasses.asdict(cfg), "pos_emb": pos}).pos_emb == pos


# ---- pieces -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation, fn", [
    ("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("relu", F.relu), ("silu", F.silu),
])
def test_ffn_formula(activation, fn):
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, activation)
    x = torch.randn(2, 3, 8)
    expected = fn(x @ ffn.up.weight.T + ffn.up.bias) @ ffn.down.weight.T + ffn.down.bias
    torch.testing.assert_close(ffn(x), expected)


def test_swiglu_is_shazeer_and_parameter_fair():
    torch.manual_seed(0)
    ffn = FeedForward(12, 48, "swiglu", bias=False)
    x = torch.randn(2, 3, 12)
    W, V, W2 = ffn.gate.weight.T, ffn.up.weight.T, ffn.down.weight.T
    torch.testing.assert_close(ffn(x), (F.silu(x @ W) * (x @ V)) @ W2)
    assert ffn.up.out_features == 32  # ⅔ of 48
    gelu = FeedForward(12, 48, "gelu", bias=False)
    assert sum(p.numel() for p in ffn.parameters()) == sum(p.numel() for p in gelu.parameters())


def test_sinusoidal_table_formula():
    table = sinusoidal_positions(10, 6)
    t, i = 7, 2
    assert math.isclose(table[t, 2 * i].item(), math.sin(t / 10000 ** (2 * i / 6)), abs_tol=1e-6)
    assert math.isclose(table[t, 2 * i + 1].item(), math.cos(t / 10000 ** (2 * i / 6)), abs_tol=1e-6)


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    rope = Rotary(head_dim=8, context_length=32)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = rope(q.expand(1, 1, 32, 8))[0, 0], rope(k.expand(1, 1, 32, 8))[0, 0]
    assert math.isclose((rq[9] @ rk[4]).item(), (rq[30] @ rk[25]).item(), abs_tol=1e-4)
    torch.testing.assert_close(rq[0], q)  # position 0: no rotation
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(32))


# ---- the model ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {}, dict(pos_emb="learned"), dict(pos_emb="rope"), dict(norm="post"), dict(activation="swiglu"),
    dict(bias=False, tie_weights=False), dict(flash=False),
])
def test_forward_shape_and_causality(overrides):
    torch.manual_seed(0)
    model = GPT(small_config(**overrides)).eval()
    idx = torch.randint(0, 50, (2, 10))
    logits = model(idx)
    assert logits.shape == (2, 10, 50)
    idx2 = idx.clone()
    idx2[:, 7] = (idx2[:, 7] + 1) % 50
    torch.testing.assert_close(model(idx2)[:, :7], logits[:, :7])  # the past never sees the future
    assert not torch.allclose(model(idx2)[:, 7], logits[:, 7])


def test_positions_matter():
    """Without positions, the last token's output is the same for any order of the tokens before it."""
    torch.manual_seed(0)
    for pos in ("sinusoidal", "learned", "rope"):
        model = GPT(small_config(pos_emb=pos))
        a, b = model(torch.tensor([[3, 5, 7, 9]]))[0, -1], model(torch.tensor([[5, 3, 7, 9]]))[0, -1]
        assert not torch.allclose(a, b), pos
    model = GPT(small_config(n_layers=1))  # one layer: deeper causal stacks can infer order from the mask
    model.pos_table.zero_()  # positions removed: attention alone is blind to order
    a, b = model(torch.tensor([[3, 5, 7, 9]]))[0, -1], model(torch.tensor([[5, 3, 7, 9]]))[0, -1]
    torch.testing.assert_close(a, b)


def test_flash_switch_gives_same_logits():
    torch.manual_seed(0)
    model = GPT(small_config(flash=True))
    idx = torch.randint(0, 50, (2, 12))
    flash_logits = model(idx)
    for block in model.blocks:
        block.attn.flash = False
    torch.testing.assert_close(model(idx), flash_logits, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_and_bad_shape_raise():
    model = GPT(small_config())
    with pytest.raises(ValueError, match="sequence length 17 exceeds context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))


def closed_form_params(V, T, C, L, F, tied=True, learned_pos=False):
    """Parameters of a GPT with biases and LayerNorm, counted from the shapes on paper."""
    per_block = (2 * C  # ln1: weight and bias
                 + C * 3 * C + 3 * C  # qkv
                 + C * C + C  # attention output projection
                 + 2 * C  # ln2
                 + C * F + F + F * C + C)  # FFN up and down
    return V * C + L * per_block + 2 * C + (T * C if learned_pos else 0) + (0 if tied else V * C)


def test_weight_tying_and_num_params():
    tied = GPT(small_config())
    untied = GPT(small_config(tie_weights=False))
    learned = GPT(small_config(pos_emb="learned", tie_weights=False))
    assert tied.lm_head.weight is tied.tok_emb.weight
    # small_config: V=50, T=16, C=32, L=2, F=64; one block holds 8,544 parameters
    assert closed_form_params(50, 16, 32, 2, 64) == 18_752
    assert tied.num_params() == 18_752
    assert untied.num_params() == closed_form_params(50, 16, 32, 2, 64, tied=False) == 18_752 + 50 * 32
    assert learned.num_params() == closed_form_params(50, 16, 32, 2, 64, tied=False, learned_pos=True)
    non_embedding = 2 * 8_544 + 2 * 32  # the blocks and the final LayerNorm
    for model in (tied, untied, learned):
        assert model.num_params(non_embedding=True) == non_embedding


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=1000, context_length=16, d_model=256, n_layers=8, n_heads=4, d_ff=1024)
    model = GPT(cfg)
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.001
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[3].attn.proj.weight.std().item() - expected) < 0.0005
    assert abs(model.blocks[3].ffn.down.weight.std().item() - expected) < 0.0005
    assert (model.blocks[0].attn.qkv.bias == 0).all()


def test_lm_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[1, 2, 0, 0], [3, 0, 4, 5]])
    keep = targets != 0
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(lm_loss(logits, targets, ignore_index=0), expected)
    torch.testing.assert_close(lm_loss(logits, targets), F.cross_entropy(logits.view(-1, 7), targets.view(-1)))


def test_attention_maps_ignore_dropout_and_restore_training_mode():
    torch.manual_seed(0)
    model = GPT(small_config(dropout=0.5)).train()
    maps = model.attention_maps(torch.randint(0, 50, (2, 10)))
    for weights in maps:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "rope"])
def test_forward_under_bfloat16_autocast(pos, flash):
    torch.manual_seed(0)
    model = GPT(small_config(pos_emb=pos, flash=flash))
    idx = torch.randint(0, 50, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.shape == (2, 12, 50)
    assert torch.isfinite(logits).all()


def test_attention_maps_work_with_flash_and_restore_it():
    torch.manual_seed(0)
    model = GPT(small_config(flash=True))
    idx = torch.randint(0, 50, (1, 6))
    maps = model.attention_maps(idx)
    assert len(maps) == 2 and maps[0].shape == (1, 4, 6, 6)
    assert (maps[1].triu(1) == 0).all()
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(1, 4, 6))
    assert all(b.attn.flash for b in model.blocks)


def test_a_few_steps_fit_a_repeated_sequence():
    torch.manual_seed(0)
    model = GPT(small_config(n_layers=1))
    idx = torch.arange(16).remainder(5)[None]  # 0 1 2 3 4 0 1 2 ...
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = lm_loss(model(idx[:, :-1]), idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


# ---- oracle: Hugging Face GPT-2 ----------------------------------------------------------------------

def test_logits_match_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    hf = random_hf_gpt2(transformers, vocab_size=97, n_positions=32, n_layer=3, n_inner=4 * 48,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

    cfg = GPTConfig(vocab_size=97, context_length=32, d_model=48, n_layers=3, n_heads=4, d_ff=4 * 48,
                    activation="gelu_tanh", pos_emb="learned", norm="pre", bias=True, tie_weights=True, flash=False)
    ours = GPT(cfg).eval()
    sd = hf.state_dict()
    with torch.no_grad():
        ours.tok_emb.weight.copy_(sd["transformer.wte.weight"])
        ours.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
        for i, block in enumerate(ours.blocks):
            p = f"transformer.h.{i}."
            # HF's Conv1D stores (in, out): our nn.Linear stores (out, in), hence the transposes.
            pairs = [(block.ln1.weight, "ln_1.weight"), (block.ln1.bias, "ln_1.bias"),
                     (block.attn.qkv.weight, "attn.c_attn.weight"), (block.attn.qkv.bias, "attn.c_attn.bias"),
                     (block.attn.proj.weight, "attn.c_proj.weight"), (block.attn.proj.bias, "attn.c_proj.bias"),
                     (block.ln2.weight, "ln_2.weight"), (block.ln2.bias, "ln_2.bias"),
                     (block.ffn.up.weight, "mlp.c_fc.weight"), (block.ffn.up.bias, "mlp.c_fc.bias"),
                     (block.ffn.down.weight, "mlp.c_proj.weight"), (block.ffn.down.bias, "mlp.c_proj.bias")]
            for ours_p, hf_name in pairs:
                src = sd[p + hf_name]
                ours_p.copy_(src.T if src.dim() == 2 else src)
        ours.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
        ours.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
    assert ours.num_params() == hf.num_parameters()

    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(ours(idx), expected, atol=1e-5, rtol=0)
        for block in ours.blocks:
            block.attn.flash = True
        torch.testing.assert_close(ours(idx), expected, atol=1e-5, rtol=0)
