"""Chapter 09: RoPE's relative positions, RMSNorm, the LLaMA-style block, equal-compute runs, the sweep
file and the scaling-law fits (tinyllm_lib.experiments, tinyllm_lib.model)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from tinyllm_lib.checkpoint import model_from_checkpoint
from tinyllm_lib.data import prepare_data
from tinyllm_lib.experiments import (
    bootstrap,
    chinchilla_law,
    compare,
    count_params,
    fit_chinchilla,
    fit_power_law,
    load_sweep,
    match_params,
    power_law,
    results_table,
    save_sweep,
    scaling_sweep,
)
from tinyllm_lib.model import GPT, STYLES, GPTConfig, RMSNorm, Rotary
from tinyllm_lib.train import build_parser, model_config_from_args
from tinyllm_lib.trainer import TrainConfig, Trainer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


def tiny(**overrides):
    return GPTConfig(**{**dict(vocab_size=64, context_length=16, d_model=32, n_layers=1, n_heads=2, d_ff=64),
                        **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, the more so on a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(TEXT, 64, tmp_path_factory.mktemp("cache"), name="hamlet")


# ---- RoPE ------------------------------------------------------------------------------------------------

def test_rope_scores_depend_only_on_the_relative_offset():
    torch.manual_seed(0)
    rope = Rotary(head_dim=8, context_length=64)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        rotated = rope(torch.stack([q, k])[None, None], torch.tensor([m, n]))[0, 0]  # (2, hd)
        return (rotated[0] @ rotated[1]).item()

    for offset in (0, 1, 5, 30):
        scores = [score(m, m - offset) for m in (offset, offset + 3, 50)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    assert abs(score(10, 9) - score(10, 4)) > 1e-3  # a different offset gives a different score


# ---- RMSNorm ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_matches_the_formula(affine):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 7 + 3  # far from zero mean: LayerNorm would give a different answer
    norm = RMSNorm(16, eps=1e-6, elementwise_affine=affine)
    gain = torch.linspace(0.1, 3.0, 16)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(gain)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * (gain if affine else 1.0)
    torch.testing.assert_close(norm(x), want)
    reference = torch.nn.RMSNorm(16, eps=1e-6, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            reference.weight.copy_(gain)
    torch.testing.assert_close(norm(x), reference(x))
    assert [n for n, _ in norm.named_parameters()] == (["weight"] if affine else [])  # no bias


def test_rmsnorm_keeps_the_input_dtype():
    x = torch.randn(2, 4, 8, dtype=torch.bfloat16)
    assert RMSNorm(8)(x).dtype == torch.bfloat16


# ---- the LLaMA-style block -------------------------------------------------------------------------------

def test_llama_style_preset_and_validation():
    cfg = GPTConfig.preset("tiny", style="llama", vocab_size=65)
    assert (cfg.norm_type, cfg.pos_emb, cfg.activation, cfg.bias) == ("rmsnorm", "rope", "swiglu", False)
    assert GPTConfig.preset("tiny") == GPTConfig.preset("tiny", style="gpt2")
    with pytest.raises(ValueError, match="norm_type='batchnorm'"):
        GPTConfig(norm_type="batchnorm")
    with pytest.raises(ValueError, match="unknown style 'mistral'"):
        GPTConfig.preset("tiny", style="mistral")
    model = GPT(tiny(**STYLES["llama"]))
    assert all(isinstance(m, RMSNorm) for m in (model.blocks[0].ln1, model.blocks[0].ln2, model.ln_f))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_an_old_config_without_norm_type_still_loads():
    old = dataclasses.asdict(tiny())
    del old["norm_type"]  # a checkpoint written before the field existed
    assert GPTConfig(**old).norm_type == "layernorm"


def test_llama_config_trains_and_round_trips_through_a_checkpoint(tmp_path, data):
    cfg = tiny(vocab_size=data.tokenizer.vocab_size, **STYLES["llama"])
    train = TrainConfig(batch_size=8, max_iters=30, lr=3e-3, warmup_iters=3, eval_interval=30, eval_iters=2,
                        dtype="float32", out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg, train, data, device="cpu")
    history = trainer.fit()
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[-1] < losses[0] - 0.5  # it learns
    model, tok = model_from_checkpoint(tmp_path / "run" / "latest.pt")
    assert model.config == cfg and tok.to_dict() == data.tokenizer.to_dict()
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    trainer.raw_model.eval()
    torch.testing.assert_close(model(idx), trainer.raw_model(idx))


def test_match_params_equalises_the_llama_block(data):
    base = tiny()
    llama = match_params(dataclasses.replace(base, **STYLES["llama"]), count_params(base))
    assert abs(count_params(llama) - count_params(base)) < 0.01 * count_params(base)
    assert llama.d_ff != base.d_ff


# ---- the command line ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, pos_emb", [([], "sinusoidal"), (["--use_learned_pos_emb"], "learned"),
                                           (["--use_learned_pos_emb", "False"], "sinusoidal"),
                                           (["--use_learned_pos_emb", "True"], "learned")])
def test_cli_use_learned_pos_emb_spellings(argv, pos_emb):
    assert model_config_from_args(build_parser().parse_args(argv)).pos_emb == pos_emb


def test_cli_style_and_switches():
    args = build_parser().parse_args(["--style", "llama", "--activation", "gelu"])
    cfg = model_config_from_args(args)
    assert (cfg.norm_type, cfg.pos_emb, cfg.activation, cfg.bias) == ("rmsnorm", "rope", "gelu", False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--use_learned_pos_emb", "maybe"])


# ---- runs at equal compute and the sweep file ------------------------------------------------------------

def test_compare_gives_equal_tokens_and_a_table(data):
    rows = compare({"gelu": tiny(vocab_size=data.tokenizer.vocab_size),
                    "relu": tiny(vocab_size=data.tokenizer.vocab_size, activation="relu")},
                   data, tokens=8 * 8 * 16, batch_size=8, eval_iters=2)
    assert [r["D"] for r in rows] == [1024, 1024]
    assert all(0 < r["val_bpc"] < 10 and r["N"] < r["params"] for r in rows)
    assert results_table(rows).splitlines()[1].startswith("gelu")


def test_sweep_is_saved_atomically_and_loads(tmp_path, data):
    path = tmp_path / "sweep.json"
    base = tiny(vocab_size=data.tokenizer.vocab_size)
    runs = scaling_sweep([dict(d_model=16, n_heads=2), dict(d_model=32)], [256, 512], data, base, path,
                         batch_size=8, eval_iters=1)
    assert len(runs) == 4 and load_sweep(path) == json.loads(json.dumps(runs))
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # no temporary file left
    bad = json.loads(path.read_text())
    bad["runs"][2]["val_bpc"] = -1
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"sweep.json: runs\[2\].val_bpc"):
        load_sweep(path)


def test_save_sweep_round_trip(tmp_path):
    save_sweep([{"N": 10, "D": 20, "val_bpc": 2.0}], tmp_path / "s.json")
    assert load_sweep(tmp_path / "s.json") == [{"N": 10, "D": 20, "val_bpc": 2.0}]


# ---- fits ------------------------------------------------------------------------------------------------

def test_power_law_fit_recovers_a_known_exponent():
    N = np.geomspace(1e4, 1e7, 6)
    rng = np.random.default_rng(0)
    L = (1.7 + 30 * N**-0.35) * np.exp(rng.normal(0, 0.002, N.size))
    fit = fit_power_law(N, L)
    assert abs(fit["alpha"] - 0.35) < 0.03 and abs(fit["E"] - 1.7) < 0.05
    np.testing.assert_allclose(power_law(N, fit), L, rtol=0.01)
    low, high = bootstrap(fit_power_law, N, L, n_boot=40)["alpha"]
    assert low <= 0.35 <= high or abs(fit["alpha"] - 0.35) < 0.01


def test_power_law_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [3, 2])


def test_chinchilla_fit_recovers_known_exponents():
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e6, 5), np.geomspace(1e5, 1e7, 3)))
    truth = {"E": 1.2, "A": 40.0, "alpha": 0.34, "B": 60.0, "beta": 0.28}
    fit = fit_chinchilla(N, D, chinchilla_law(N, D, truth))
    for k in ("alpha", "beta", "E"):
        assert abs(fit[k] - truth[k]) < 0.02, (k, fit)
