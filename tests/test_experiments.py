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
    compute_frontier,
    compute_optimal,
    count_params,
    embedding_scale,
    evaluate_bpc,
    fit_chinchilla,
    fit_power_law,
    load_sweep,
    match_params,
    noise_band,
    power_law,
    results_table,
    save_sweep,
    scaling_sweep,
    train_run,
    training_flops,
    versus_band,
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


# ---- the noise band, seeds and the embedding-scale confound ----------------------------------------------

def test_noise_band_and_verdicts():
    band = noise_band([2.80, 2.82, 2.81])
    assert band == {"mean": pytest.approx(2.81), "sd": pytest.approx(0.01), "n": 3}
    assert noise_band([{"val_bpc": 2.0}, {"val_bpc": 2.2}, {"val_bpc": 2.4}])["sd"] == pytest.approx(0.2)
    assert versus_band(2.825, band).endswith("within noise")  # 1.5 sd
    assert versus_band(2.70, band).endswith("better, beyond noise")
    assert versus_band(2.84, band).endswith("worse, beyond noise")
    assert "+3.0 sd" in versus_band(2.84, band)
    with pytest.raises(ValueError, match="at least 2 runs"):
        noise_band([2.8])


def test_compare_repeats_change_the_seed_and_the_result(data):
    cfg = tiny(vocab_size=data.tokenizer.vocab_size)
    rows = compare({"base": cfg, "lr": (cfg, {"lr": 1e-2})}, data, tokens=6 * 8 * 16, repeats=2,
                   batch_size=8, eval_iters=2, seed=7)
    assert [(r["variant"], r["seed"]) for r in rows] == [("base", 7), ("base", 8), ("lr", 7), ("lr", 8)]
    assert [r["lr"] for r in rows] == [5e-3, 5e-3, 1e-2, 1e-2]
    assert rows[0]["val_bpc"] != rows[1]["val_bpc"]  # another seed: other weights, other batches
    again = compare({"base": cfg}, data, tokens=6 * 8 * 16, batch_size=8, eval_iters=2, seed=7)[0]
    assert again["val_bpc"] == rows[0]["val_bpc"]  # the same seed reproduces the run
    table = results_table(rows, noise_band(rows[:2]))
    assert "sd)" in table.splitlines()[1] and "noise" in table.splitlines()[3]


def test_evaluate_bpc_uses_fixed_windows(data):
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=data.tokenizer.vocab_size)).train()
    first = evaluate_bpc(model, data, windows=8)
    torch.manual_seed(123)  # the global RNG does not choose the windows
    assert evaluate_bpc(model, data, windows=8) == first and model.training


def test_train_run_records_a_learning_curve(data):
    row = train_run(tiny(vocab_size=data.tokenizer.vocab_size), data, 12 * 8 * 16, batch_size=8, eval_iters=2,
                    curve_points=3)
    assert [D for D, _ in row["curve"]] == [4 * 128, 8 * 128, 12 * 128]
    assert row["curve"][-1][1] == row["val_bpc"] and row["curve"][0][1] > row["val_bpc"]


@pytest.mark.parametrize("pos_emb, scale", [("sinusoidal", 1.0), ("rope", 4.0), ("learned", 4.0)])
def test_embedding_scale_sets_the_net_factor(pos_emb, scale):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb, d_model=16)).eval()
    idx = torch.randint(0, 64, (2, 16))
    handle = embedding_scale(model, scale)
    x = model._embed(idx)
    handle.remove()
    want = model.tok_emb(idx) * scale
    if pos_emb == "sinusoidal":
        want = want + model.pos_table[:16]
    elif pos_emb == "learned":
        want = want + model.pos_emb(torch.arange(16))
    torch.testing.assert_close(x, want)
    baseline = GPT(tiny(pos_emb=pos_emb, d_model=16)).eval()
    baseline.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(idx), baseline(idx))  # removed: the model is its own again


# ---- compute: 6ND, the frontier, the compute-optimal split ----------------------------------------------

def test_training_flops_and_frontier():
    assert float(training_flops(1e6, 2e7)) == 1.2e14
    C = np.array([4.0, 1.0, 2.0, 3.0, 3.0])
    L = np.array([2.6, 3.0, 3.2, 2.5, 2.7])
    assert compute_frontier(C, L).tolist() == [False, True, False, True, False]


def test_compute_optimal_minimises_the_law_along_equal_compute():
    fit = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}
    for C in (1e15, 1e18, 1e21):
        N_opt, D_opt = compute_optimal(fit, C)
        assert 6 * N_opt * D_opt == pytest.approx(C)
        N_grid = np.geomspace(N_opt / 30, N_opt * 30, 4001)
        losses = chinchilla_law(N_grid, C / (6 * N_grid), fit)
        assert N_grid[np.argmin(losses)] == pytest.approx(N_opt, rel=0.01)
    small, big = compute_optimal(fit, 1e18)[0], compute_optimal(fit, 1e19)[0]
    assert big / small == pytest.approx(10 ** (0.28 / 0.62))  # N_opt grows as C^(beta/(alpha+beta))


def test_least_squares_is_the_default_and_huber_is_an_option():
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e6, 5), np.geomspace(1e5, 1e7, 3)))
    truth = {"E": 1.2, "A": 40.0, "alpha": 0.34, "B": 60.0, "beta": 0.28}
    L = chinchilla_law(N, D, truth)
    L[0] *= 1.3  # one outlier: least squares spreads it, Huber with a tiny delta ignores it
    ls, huber = fit_chinchilla(N, D, L), fit_chinchilla(N, D, L, huber_delta=1e-3)
    miss = {name: np.abs(np.log(L[1:]) - np.log(chinchilla_law(N[1:], D[1:], f))) for name, f in
            (("ls", ls), ("huber", huber))}
    assert np.median(miss["huber"]) < np.median(miss["ls"])
