"""GPT-2 checkpoints in our GPT (tinyllm_lib.pretrained), fully offline: a tiny random GPT-2 that
`transformers` builds and saves is the oracle; the download is served from local files."""

import dataclasses
import hashlib
import json
import struct
import urllib.error
import urllib.request
from pathlib import Path

import hf_gpt2
import pytest
import torch

from tinyllm_lib import pretrained
from tinyllm_lib.corpus import DataFile, DataFileError
from tinyllm_lib.model import GPT
from tinyllm_lib.pretrained import (
    PretrainedError,
    gpt2_config,
    gpt2_from_state_dict,
    gpt2_names,
    load_gpt2,
    load_safetensors,
    read_safetensors_header,
    save_gpt2,
    save_safetensors,
    to_gpt2_state_dict,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# GPT-2 small's config.json, byte for byte as the hub serves it at the pinned revision.
GPT2_124M_CONFIG_JSON = """{
  "activation_function": "gelu_new",
  "architectures": [
    "GPT2LMHeadModel"
  ],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "task_specific_params": {
    "text-generation": {
      "do_sample": true,
      "max_length": 50
    }
  },
  "vocab_size": 50257
}"""

VOCAB, CONTEXT = 97, 32
TOLERANCE = 1e-5  # float32 rounding gives ~3e-7 here; exact GELU instead of the tanh one gives ~1e-4


def random_hf_gpt2(n_layer=3, **overrides):
    return hf_gpt2.random_hf_gpt2(transformers, **{**dict(vocab_size=VOCAB, n_positions=CONTEXT, n_layer=n_layer),
                                                   **overrides})


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_gpt2()


@pytest.fixture
def hf_folder(hf_model, tmp_path):
    folder = tmp_path / "hf"
    hf_model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def tokens(seed=1):
    return torch.randint(0, VOCAB, (2, CONTEXT), generator=torch.Generator().manual_seed(seed))


def max_diff(ours, hf, idx):
    with torch.no_grad():
        return (ours(idx) - hf(idx).logits).abs().max().item()


# ---- against Hugging Face -----------------------------------------------------------------------------

def test_safetensors_checkpoint_gives_hugging_face_logits(hf_model, hf_folder):
    ours = load_gpt2(hf_folder)
    assert not ours.training and ours.num_params() == hf_model.num_parameters()
    assert ours.config.activation == "gelu_tanh" and ours.config.pos_emb == "learned"
    idx = tokens()
    assert max_diff(ours, hf_model, idx) < TOLERANCE
    for block in ours.blocks:  # the from-scratch attention path too
        block.attn.flash = False
    assert max_diff(ours, hf_model, idx) < TOLERANCE


def test_pytorch_model_bin_fallback(hf_model, tmp_path):
    folder = tmp_path / "bin"
    hf_model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    # What older transformers wrote: the full state dict, tied lm_head.weight included.
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    assert max_diff(load_gpt2(folder), hf_model, tokens()) < TOLERANCE


def test_hub_layout_without_prefix_and_with_mask_buffers(hf_model, tmp_path):
    """The hub's GPT-2 files name tensors without 'transformer.' and carry each block's causal mask."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(3):
        sd[f"h.{i}.attn.bias"] = torch.ones(CONTEXT, CONTEXT).tril().view(1, 1, CONTEXT, CONTEXT)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "hub"
    folder.mkdir()
    save_safetensors(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    assert max_diff(load_gpt2(folder), hf_model, tokens()) < TOLERANCE


def test_untied_head_is_loaded(tmp_path):
    hf = random_hf_gpt2(n_layer=2, tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.weight.normal_(0, 0.02)  # really different from wte
    hf.save_pretrained(tmp_path / "untied")
    ours = load_gpt2(tmp_path / "untied")
    assert not ours.config.tie_weights and ours.lm_head.weight is not ours.tok_emb.weight
    assert max_diff(ours, hf, tokens()) < TOLERANCE


def test_hugging_face_reads_what_save_gpt2_writes(tmp_path):
    torch.manual_seed(0)
    cfg = gpt2_config({"vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 48, "n_layer": 2, "n_head": 4})
    ours = GPT(cfg).eval()
    save_gpt2(ours, tmp_path / "ours")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert max_diff(ours, theirs, tokens()) < TOLERANCE
    assert load_gpt2(tmp_path / "ours").state_dict().keys() == ours.state_dict().keys()


def test_save_gpt2_refuses_a_model_gpt2_cannot_describe(tmp_path):
    cfg = gpt2_config({"vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 48, "n_layer": 1, "n_head": 4})
    for change, message in [({"pos_emb": "rope"}, "pos_emb='rope'"), ({"activation": "swiglu"}, "activation='swiglu'"),
                            ({"norm": "post"}, "norm='post'")]:
        with pytest.raises(PretrainedError, match=message):
            save_gpt2(GPT(dataclasses.replace(cfg, **change)), tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


# ---- the safetensors reader and writer, against the safetensors package --------------------------------

def test_reader_matches_safetensors_package_on_hugging_face_file(hf_folder):
    from safetensors.torch import load_file

    theirs = load_file(hf_folder / "model.safetensors")
    ours = load_safetensors(hf_folder / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


def every_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    return {
        "f32": x, "f16": x.half(), "bf16": x.bfloat16(), "f64": x.double(),
        "i64": torch.arange(-3, 9).view(3, 4), "i32": torch.arange(6, dtype=torch.int32), "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
        "odd_bf16": torch.randn(7, generator=g).bfloat16(),  # an odd byte count: the next tensor is unaligned
        "after_odd": torch.randn(2, 3, generator=g),
    }


def test_reader_matches_safetensors_package_for_every_dtype(tmp_path):
    from safetensors.torch import save_file

    tensors = every_dtype()
    save_file(tensors, tmp_path / "all.safetensors")
    ours = load_safetensors(tmp_path / "all.safetensors")
    assert ours.keys() == tensors.keys()
    for k, t in tensors.items():
        assert ours[k].dtype == t.dtype and ours[k].shape == t.shape and torch.equal(ours[k], t), k


def test_writer_is_read_by_safetensors_package(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = every_dtype()
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    theirs = load_file(tmp_path / "ours.safetensors")
    for k, t in tensors.items():
        assert theirs[k].dtype == t.dtype and torch.equal(theirs[k], t), k
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    header_len = struct.unpack("<Q", (tmp_path / "ours.safetensors").read_bytes()[:8])[0]
    assert header_len % 8 == 0  # the data starts 8-byte aligned
    assert [p.name for p in tmp_path.iterdir()] == ["ours.safetensors"]  # no temporary file left


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:5], "not a safetensors file"),
    (lambda raw: struct.pack("<Q", 10**9) + raw[8:], "header length 1000000000"),
    (lambda raw: raw[:8] + b"[" + raw[9:], "header is not JSON"),
    (lambda raw: raw[:-4], "tensor 'b'.*takes 24 bytes"),
    (lambda raw: raw.replace(b'"F32"', b'"F99"', 1), "tensor 'a': unreadable header entry"),
])
def test_damaged_safetensors_files_name_the_file_and_tensor(tmp_path, damage, message):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.zeros(2), "b": torch.ones(2, 3)}, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PretrainedError, match=message) as err:
        load_safetensors(path)
    assert str(path) in str(err.value)


def test_header_lists_dtype_shape_and_offsets(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.zeros(2, dtype=torch.float16), "b": torch.ones(2, 3)}, path)
    header, start = read_safetensors_header(path)
    assert header["a"] == {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}
    assert header["b"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [4, 28]}
    assert start + 28 == path.stat().st_size


# ---- strictness -----------------------------------------------------------------------------------------

@pytest.fixture
def tiny_cfg_and_tensors(hf_model):
    """The tiny model's config and a fresh copy of its state dict, for each test to damage."""
    cfg = gpt2_config(hf_model.config.to_dict())
    return cfg, {k: v.clone() for k, v in hf_model.state_dict().items()}


def test_missing_tensor_is_named_with_its_shape(tiny_cfg_and_tensors):
    cfg, sd = tiny_cfg_and_tensors
    del sd["transformer.h.2.mlp.c_proj.weight"]
    with pytest.raises(PretrainedError, match=r"f.bin: missing 1 tensor\(s\): 'h.2.mlp.c_proj.weight' \(shape \(192, 48\)\)"):
        gpt2_from_state_dict(sd, cfg, source="f.bin")


def test_unexpected_tensor_is_named_with_its_shape(tiny_cfg_and_tensors):
    cfg, sd = tiny_cfg_and_tensors
    with pytest.raises(PretrainedError, match=r"f.bin: 1 unexpected tensor\(s\) .*'h.3.ln_1.weight' \(shape \(48,\)\)"):
        gpt2_from_state_dict({**sd, "transformer.h.3.ln_1.weight": torch.ones(48)}, cfg, source="f.bin")
    with pytest.raises(PretrainedError, match="'score.weight'"):
        gpt2_from_state_dict({**sd, "score.weight": torch.ones(2, 48)}, cfg)


@pytest.mark.parametrize("key, bad_shape, expected", [
    ("transformer.h.1.attn.c_attn.weight", (144, 48), (48, 144)),  # a Linear-layout copy: transposed by mistake
    ("transformer.wpe.weight", (64, 48), (32, 48)),
    ("transformer.ln_f.bias", (49,), (48,)),
])
def test_mis_shaped_tensor_names_key_and_both_shapes(tiny_cfg_and_tensors, key, bad_shape, expected):
    cfg, sd = tiny_cfg_and_tensors
    with pytest.raises(PretrainedError) as err:
        gpt2_from_state_dict({**sd, key: torch.zeros(bad_shape)}, cfg, source="f.bin")
    assert str(err.value) == (f"f.bin: tensor {key.removeprefix('transformer.')!r} has shape {bad_shape}, "
                              f"expected {expected}")


def test_tied_head_must_equal_the_embedding(tiny_cfg_and_tensors):
    cfg, sd = tiny_cfg_and_tensors
    with pytest.raises(PretrainedError, match="'lm_head.weight' .* is not a copy of 'wte.weight'"):
        gpt2_from_state_dict({**sd, "lm_head.weight": torch.zeros(VOCAB, 48)}, cfg)


def test_missing_weights_file_and_config(tmp_path, hf_folder):
    (hf_folder / "model.safetensors").unlink()
    with pytest.raises(PretrainedError, match="no model.safetensors or pytorch_model.bin"):
        load_gpt2(hf_folder)
    with pytest.raises(PretrainedError, match=r"config.json: no such file"):
        load_gpt2(tmp_path)
    with pytest.raises(PretrainedError, match="neither a folder nor a known checkpoint"):
        load_gpt2("gpt-5")


def test_unreadable_bin_names_the_file(tmp_path, hf_folder):
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(PretrainedError, match="pytorch_model.bin: not a readable PyTorch state dict"):
        load_gpt2(hf_folder)


@pytest.mark.parametrize("change, field", [
    ({"n_embd": "48"}, "n_embd"), ({"n_embd": 50}, "n_embd"), ({"n_layer": 0}, "n_layer"),
    ({"n_head": None}, "n_head"), ({"vocab_size": True}, "vocab_size"),
    ({"activation_function": "gelu_fast"}, "activation_function"), ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"model_type": "llama"}, "model_type"), ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"resid_pdrop": 1.0}, "resid_pdrop"), ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ({"n_inner": -1}, "n_inner"), ({"activation_function": ["gelu"]}, "activation_function"),
])
def test_bad_config_names_file_and_field(hf_folder, change, field):
    path = hf_folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(PretrainedError) as err:
        load_gpt2(hf_folder)
    assert str(err.value).startswith(f"{path}: field {field!r}")


def test_missing_field_and_broken_json(hf_folder):
    path = hf_folder / "config.json"
    fields = json.loads(path.read_text())
    del fields["n_layer"]
    path.write_text(json.dumps(fields))
    with pytest.raises(PretrainedError, match=f"{path}: field 'n_layer' is missing"):
        load_gpt2(hf_folder)
    path.write_text("{")
    with pytest.raises(PretrainedError, match=f"{path}: not valid JSON"):
        load_gpt2(hf_folder)
    path.write_text("[1, 2]")
    with pytest.raises(PretrainedError, match="expected a JSON object of fields, got a list"):
        load_gpt2(hf_folder)


def test_old_config_with_n_ctx_only():
    fields = {k: v for k, v in json.loads(GPT2_124M_CONFIG_JSON).items() if k != "n_positions"}
    assert gpt2_config({**fields, "n_ctx": 512}).context_length == 512
    with pytest.raises(PretrainedError, match="field 'n_positions' is missing"):
        gpt2_config({k: v for k, v in fields.items() if k != "n_ctx"})


def test_gpt2_small_config_and_shapes():
    cfg = gpt2_config(json.loads(GPT2_124M_CONFIG_JSON))
    assert (cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff) == (
        50257, 1024, 768, 12, 12, 3072)
    assert (cfg.activation, cfg.pos_emb, cfg.norm, cfg.bias, cfg.tie_weights) == (
        "gelu_tanh", "learned", "pre", True, True)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == 124_439_808  # the published size of "124M"
    names = gpt2_names(cfg)
    # 148 weights + 12 causal-mask buffers: the 160 tensors of the hub's model.safetensors
    assert len(names) == 148
    ours = dict(model.named_parameters())
    for hf_name, (our_name, shape, transposed) in names.items():
        assert tuple(ours[our_name].shape) == (shape[::-1] if transposed else shape), hf_name
    # The pinned config.json entry describes exactly these bytes.
    entry = pretrained.GPT2_CHECKPOINTS["gpt2"][0]
    data = GPT2_124M_CONFIG_JSON.encode()
    assert (entry.filename, entry.size, entry.sha256) == ("config.json", len(data), hashlib.sha256(data).hexdigest())


def test_round_trip_through_gpt2_names_is_exact():
    torch.manual_seed(0)
    cfg = gpt2_config({"vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 48, "n_layer": 2, "n_head": 4,
                       "tie_word_embeddings": False})
    model = GPT(cfg)
    back = gpt2_from_state_dict(to_gpt2_state_dict(model), cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ---- the download ---------------------------------------------------------------------------------------

@pytest.fixture
def served(hf_folder, tmp_path, monkeypatch):
    """GPT2_CHECKPOINTS['gpt2'] pointing at file:// copies of the tiny checkpoint; the cache in tmp."""
    entries = []
    for name in ("config.json", "model.safetensors"):
        data = (hf_folder / name).read_bytes()
        entries.append(DataFile(name, (hf_folder / name).as_uri(), hashlib.sha256(data).hexdigest(), len(data), name))
    monkeypatch.setitem(pretrained.GPT2_CHECKPOINTS, "gpt2", tuple(entries))
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no folder called "gpt2" here: the name means the published checkpoint
    return tmp_path / "cache" / "gpt2"


def test_download_verify_cache_and_reuse(served, hf_folder, hf_model):
    model = load_gpt2("gpt2")
    assert sorted(p.name for p in served.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    assert max_diff(model, hf_model, tokens()) < TOLERANCE
    for p in hf_folder.iterdir():  # the source is gone: the verified cache is used
        p.unlink()
    assert max_diff(load_gpt2("gpt2", download=False), hf_model, tokens()) < TOLERANCE


def test_truncated_cached_file_reports_both_sizes(served):
    load_gpt2("gpt2")
    weights = served / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DataFileError, match=rf"{weights}: {size - 10:,} bytes, expected {size:,}"):
        load_gpt2("gpt2")


def test_tampered_cached_file_fails_its_checksum(served):
    load_gpt2("gpt2")
    weights = served / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match="checksum mismatch"):
        load_gpt2("gpt2")


def test_bad_download_is_not_kept(served, monkeypatch):
    config, weights = pretrained.GPT2_CHECKPOINTS["gpt2"]
    monkeypatch.setitem(pretrained.GPT2_CHECKPOINTS, "gpt2",
                        (config, DataFile(weights.filename, weights.url, "0" * 64, weights.size, "wrong")))
    with pytest.raises(DataFileError, match="checksum mismatch"):
        load_gpt2("gpt2")
    assert sorted(p.name for p in served.iterdir()) == ["config.json"]


def test_offline_message_says_how_to_get_the_files(served, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what the download helper calls
    with pytest.raises(DataFileError) as err:
        load_gpt2("gpt2")
    message = str(err.value)
    for entry in pretrained.GPT2_CHECKPOINTS["gpt2"]:
        assert entry.url in message
    assert str(served) in message and "load_gpt2('path/to/that/folder')" in message and "no network" in message
    with pytest.raises(DataFileError, match="is not there"):
        load_gpt2("gpt2", download=False)


def test_a_folder_called_gpt2_wins_over_the_download(served, hf_folder, tmp_path):
    Path("gpt2").mkdir()
    for p in hf_folder.iterdir():
        (Path("gpt2") / p.name).write_bytes(p.read_bytes())
    load_gpt2("gpt2", download=False)  # no cache, no download: the folder in the current directory
    assert not served.exists()


def test_gpt2_tokenizer():
    try:
        tok = pretrained.gpt2_tokenizer()
    except DataFileError as exc:
        pytest.skip(f"GPT-2's tokenizer files are not available offline here: {exc}")
    assert tok.vocab_size == 50257
    assert tok.decode(tok.encode("Hello, world")) == "Hello, world"


def test_real_gpt2_small_when_cached():
    """Runs only where GPT-2 small is already in the cache (never downloads in the tests)."""
    try:
        model = load_gpt2("gpt2", download=False)
    except DataFileError as exc:
        pytest.skip(f"GPT-2 small is not in the cache: {exc.args[0].splitlines()[0]}")
    assert model.num_params() == 124_439_808
    tok = pretrained.gpt2_tokenizer()
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode("One, two, three, four,")]))
    assert tok.decode([logits[0, -1].argmax().item()]) == " five"


# ---- generation (chapter 07) ----------------------------------------------------------------------------

def test_greedy_tokens_match_hugging_face_generate(tmp_path):
    """50 greedy tokens, with and without chapter 07's KV cache, equal to Hugging Face's `generate`."""
    from tinyllm_lib.generate import generate_ids

    hf = random_hf_gpt2(n_positions=64)  # room for the prompt and 50 new tokens
    with torch.no_grad():
        hf.transformer.wpe.weight.normal_(0, 0.5)  # large positions: the greedy text keeps changing
    hf.generation_config.eos_token_id = None  # all 50 tokens, no end-of-text stop
    hf.save_pretrained(tmp_path / "gen")
    ours = load_gpt2(tmp_path / "gen")
    prompt = torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(3)).tolist()
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    assert len(theirs) == 50 and len(set(theirs)) > 10  # not one token repeated: a real test
    for use_cache in (True, False):
        assert generate_ids(ours, prompt, 50, temperature=0, use_cache=use_cache)[0] == theirs, use_cache


def test_generate_cli_with_a_pretrained_folder(tmp_path, capsys):
    """`python -m tinyllm_lib.generate --pretrained <folder>`: a GPT-2-shaped model with GPT-2's vocabulary."""
    from tinyllm_lib.generate import main

    try:
        pretrained.gpt2_tokenizer()
    except DataFileError as exc:
        pytest.skip(f"GPT-2's tokenizer files are not available offline here: {exc}")
    torch.manual_seed(0)
    cfg = gpt2_config({"vocab_size": 50257, "n_positions": 32, "n_embd": 8, "n_layer": 1, "n_head": 2})
    save_gpt2(GPT(cfg), tmp_path / "small")
    assert main(["--pretrained", str(tmp_path / "small"), "--prompt", "Hello", "--max_tokens", "5", "--seed", "0",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    assert main(["--pretrained", "gpt-5", "--max_tokens", "1", "--device", "cpu"]) == 2
    assert "gpt-5: neither a folder nor a known checkpoint" in capsys.readouterr().err


# ---- the chapter's offline payoff: a trained GPT-2-shaped model in Hugging Face's format ----------------

@pytest.fixture(scope="module")
def shakespeare_folder(tmp_path_factory):
    """Section 6's model in quick mode (a few seconds of training), in a folder of its own."""
    try:
        return pretrained.shakespeare_gpt2(quick=True, root=tmp_path_factory.mktemp("course"))
    except DataFileError as exc:
        pytest.skip(f"Tiny Shakespeare is not available offline here: {exc.args[0].splitlines()[0]}")


def test_trained_gpt2_round_trip_same_tokens_as_transformers(shakespeare_folder):
    """Trained, written by save_gpt2, read by transformers and by load_gpt2: the same greedy text, token for token."""
    from tinyllm_lib.generate import generate_ids
    from tinyllm_lib.tokenizer import BPETokenizer

    assert sorted(p.name for p in shakespeare_folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", pretrained.TOKENIZER_FILE])
    fields = json.loads((shakespeare_folder / "config.json").read_text())
    assert fields["activation_function"] == "gelu_new" and fields["model_type"] == "gpt2"
    tok = BPETokenizer.load(shakespeare_folder / pretrained.TOKENIZER_FILE)
    ours = load_gpt2(shakespeare_folder)
    assert ours.config.pos_emb == "learned" and ours.config.activation == "gelu_tanh" and ours.config.tie_weights
    assert ours.config.vocab_size == tok.vocab_size
    theirs = transformers.GPT2LMHeadModel.from_pretrained(shakespeare_folder).eval()
    assert theirs.num_parameters() == ours.num_params()
    theirs.generation_config.eos_token_id = None
    prompt = tok.encode("ROMEO:\n")
    n_new = ours.config.context_length - len(prompt)
    hf_tokens = theirs.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False,
                                pad_token_id=0)[0, len(prompt):].tolist()
    assert len(hf_tokens) == n_new
    for use_cache in (True, False):
        assert generate_ids(ours, prompt, n_new, temperature=0, use_cache=use_cache)[0] == hf_tokens, use_cache
    with torch.no_grad():
        idx = torch.tensor([prompt + hf_tokens])
        assert (ours(idx) - theirs(idx).logits).abs().max().item() < TOLERANCE
    assert len(set(hf_tokens)) > 1  # a trained model, not one token repeated from a random one


def test_trained_gpt2_folder_is_reused_and_an_incomplete_one_refused(shakespeare_folder, tmp_path):
    stamp = (shakespeare_folder / "model.safetensors").stat().st_mtime_ns
    root = shakespeare_folder.parents[1]
    assert pretrained.shakespeare_gpt2(quick=True, root=root) == shakespeare_folder  # no second training
    assert (shakespeare_folder / "model.safetensors").stat().st_mtime_ns == stamp
    broken = tmp_path / "checkpoints" / "shakespeare-gpt2-quick"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(PretrainedError, match="not a complete checkpoint folder"):
        pretrained.shakespeare_gpt2(quick=True, root=tmp_path)


def test_gpt2_to_ours_renames_transposes_and_ties():
    torch.manual_seed(0)
    cfg = gpt2_config({"vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 48, "n_layer": 2, "n_head": 4})
    model = GPT(cfg)
    ours = pretrained.gpt2_to_ours(to_gpt2_state_dict(model), cfg)
    assert ours.keys() == model.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    assert ours["lm_head.weight"] is ours["tok_emb.weight"]
