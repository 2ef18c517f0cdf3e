"""Sampling and generation (chapter 07): filters, the loop, the KV cache, streaming, bad input, the CLI."""

import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from tinyllm_lib.checkpoint import CHECKPOINT_VERSION, CheckpointError, save_checkpoint
from tinyllm_lib.generate import (
    Decoder,
    KVCache,
    SamplingExplorer,
    apply_repetition_penalty,
    cached_forward,
    check_sampling_args,
    compiled_step,
    filter_logits,
    generate,
    generate_ids,
    generate_tokens,
    load_model,
    main,
    min_p_filter,
    sample_next,
    stream,
    top_k_filter,
    top_p_filter,
)
from tinyllm_lib.model import GPT, GPTConfig
from tinyllm_lib.tokenizer import BPETokenizer

INF = float("-inf")
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3


def tiny_model(vocab=60, context=24, seed=0, **kw):
    """A small random model with large weights: its greedy text varies instead of repeating one token."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, context_length=context, d_model=32, n_layers=2, n_heads=4, d_ff=64, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if "emb" in name else 0.3)
    return model


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer().train(TEXT, 60)


def probs_of(logits):
    return logits.softmax(-1)


# -- the filters, on hand-computed distributions ------------------------------------------------
def test_temperature_scales_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(filter_logits(logits, temperature=0.5), torch.tensor([[4.0, 2.0, 0.0]]))
    flat = probs_of(filter_logits(logits, temperature=100.0))
    assert flat.max() - flat.min() < 0.01  # very hot: nearly uniform


def test_top_k_keeps_ties_and_larger_k_is_a_no_op():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[3.0, INF, 2.0, 2.0, INF]]
    assert top_k_filter(logits, 1).tolist() == [[3.0, INF, INF, INF, INF]]
    assert torch.equal(top_k_filter(logits, 5), logits) and torch.equal(top_k_filter(logits, 50), logits)


def test_top_p_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = lambda p: (top_p_filter(probs.log(), p) > INF).tolist()[0]  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.51) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]  # 0.95 >= 0.9
    assert kept(0.01) == [True, False, False, False]  # top-p that keeps one token
    tied = torch.tensor([[0.4, 0.2, 0.2, 0.2]])
    assert (top_p_filter(tied.log(), 0.5) > INF).tolist() == [[True, True, True, True]]  # ties with the last kept


def test_top_p_kept_mass_at_least_p():
    torch.manual_seed(0)
    logits = torch.randn(64, 100) * 3
    for p in (0.1, 0.5, 0.9, 0.99):
        kept = top_p_filter(logits, p) > INF
        mass = (probs_of(logits) * kept).sum(-1)
        assert bool((mass >= p - 1e-6).all())
        # smallest such set: without its least likely kept token (and its ties) the mass would be < p
        least = probs_of(logits).masked_fill(~kept, 2.0).amin(-1, keepdim=True)
        assert bool(((mass - (probs_of(logits) * (kept & (probs_of(logits) == least))).sum(-1)) < p + 1e-6).all())


def test_min_p_hand_computed():
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05]])
    assert (min_p_filter(probs.log(), 0.2) > INF).tolist() == [[True, True, False, False]]  # cut 0.12
    assert (min_p_filter(probs.log(), 1.0) > INF).tolist() == [[True, False, False, False]]


def test_off_values_change_nothing():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    assert torch.equal(filter_logits(logits, top_p=1.0, min_p=0.0, top_k=None), logits)
    assert torch.equal(filter_logits(logits, top_k=50), logits)


def test_filters_combine_in_order():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    out = filter_logits(logits, temperature=2.0, top_k=3, top_p=0.5)
    expected = top_p_filter(top_k_filter(logits / 2.0, 3), 0.5)
    assert torch.equal(out, expected)


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 2.0, 0.0]])
    seen = torch.tensor([[True, True, False, True]])
    assert filter_logits(logits, repetition_penalty=2.0, seen=seen).tolist() == [[1.0, -4.0, 2.0, 0.0]]


def test_greedy_and_top_k_1_agree():
    torch.manual_seed(2)
    logits = torch.randn(8, 40)
    greedy = sample_next(logits, temperature=0)
    assert torch.equal(greedy, logits.argmax(-1))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, top_k=1, generator=gen), greedy)
    assert sample_next(torch.tensor([[1.0, 3.0, 3.0]]), temperature=0).item() == 1  # tie: the lowest id


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)]]).expand(20000, 3)
    draws = sample_next(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015)
    assert set(sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0)).tolist()) == {0, 1}


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"), (dict(min_p=1.1), "min_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_settings_name_the_argument_and_range(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=.*must be"):
        check_sampling_args(**kwargs)
    if name != "max_new_tokens":
        with pytest.raises(ValueError, match=rf"^{name}="):
            generate(tiny_model(), BPETokenizer().train(TEXT, 60), "a", 3, **kwargs)


def test_generate_rejects_bad_max_new_tokens(tok):
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        generate(tiny_model(), tok, "hi", -1)


# -- the loop -----------------------------------------------------------------------------------
def naive_greedy(model, ids, n, penalty=1.0):
    """The textbook loop on the plain model: crop to the context, (penalise repeats), argmax, append."""
    seq = torch.tensor([ids])
    ctx, V = model.config.context_length, model.config.vocab_size
    logits_seen = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq[:, -ctx:])[:, -1]
            logits_seen.append(logits[0])
            seen = torch.zeros(1, V, dtype=torch.bool).scatter_(1, seq, True)
            nxt = apply_repetition_penalty(logits, seen, penalty).argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq[0, len(ids):].tolist(), torch.stack(logits_seen)


@pytest.mark.parametrize("pos_emb", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cache_equals_no_cache_past_the_context(pos_emb, norm):
    model = tiny_model(vocab=300, context=16, pos_emb=pos_emb, norm=norm, seed=3)
    prompt = [5, 9, 1, 7, 30, 2]
    n = 200  # far past context_length = 16: the window slides for 190 steps
    # A repetition penalty keeps a random model from settling on one token, so the test sees varied text.
    expected, expected_logits = naive_greedy(model, prompt, n, penalty=3.0)
    assert len(set(expected[100:])) > 20
    decoder = Decoder(model, prompt, max_new_tokens=n, temperature=0, repetition_penalty=3.0)
    got = [decoder.step().item() for _ in range(n)]
    assert got == expected
    assert generate_ids(model, prompt, n, temperature=0, repetition_penalty=3.0, use_cache=False)[0] == expected
    # The logits of every step, by the cached path's rule: one token at a time while the cache has room,
    # the window recomputed once it is full. Fed random tokens, so the logits differ at every step.
    seq = prompt + torch.randint(300, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    cache, got_logits, want_logits = KVCache(model.config, 1), [], []
    with torch.no_grad():
        for end in range(len(prompt), len(seq)):
            if end == len(prompt) or cache.length == cache.max_len:
                cache.reset()
                logits = cached_forward(model, torch.tensor([seq[max(0, end - 16):end]]), cache)[:, -1]
            else:
                logits = cached_forward(model, torch.tensor([[seq[end - 1]]]), cache)[:, -1]
            got_logits.append(logits[0])
            want_logits.append(model(torch.tensor([seq[max(0, end - 16):end]]))[0, -1])
    assert torch.allclose(torch.stack(got_logits), torch.stack(want_logits), atol=1e-4)


def test_prefill_logits_match_the_model():
    model = tiny_model(pos_emb="rope")
    idx = torch.randint(60, (2, 20))
    cache = KVCache(model.config, 2)
    with torch.no_grad():
        assert torch.allclose(cached_forward(model, idx, cache), model(idx), atol=1e-5)
        assert torch.allclose(cached_forward(model, idx[:, :1] * 0 + 3, cache)[:, -1],
                              model(torch.cat([idx, idx[:, :1] * 0 + 3], 1))[:, -1], atol=1e-5)


def test_compiled_step_equals_the_eager_step_with_padding_and_a_sliding_window():
    model = tiny_model(context=16, pos_emb="rope", seed=4)
    prompts = [[3, 4, 5, 6, 7, 8], [9], [10, 11, 12]]  # padded rows: the mask must hide the padding
    eager = generate_ids(model, prompts, 40, temperature=0)  # 40 > context_length: the window slides
    assert len(set(sum(eager, []))) > 10  # varied text, or equality would prove little
    assert generate_ids(model, prompts, 40, temperature=0, compile=True) == eager
    # a one-token prompt: its first step is already a one-token step, run by the compiled graph too
    assert generate_ids(model, [9], 30, temperature=0, compile=True) == generate_ids(model, [9], 30, temperature=0)
    assert len(compiled_step(model).graphs) == 2  # one graph per cache shape (batch 3, batch 1), not per call
    # the logits themselves, step by step, against cached_forward on a copy of the same cache
    idx, pad = torch.tensor([[3, 4, 5, 6], [0, 0, 9, 8], [0, 10, 11, 12]]), torch.tensor([0, 2, 1])
    compiled, eager_cache, cache = compiled_step(model), KVCache(model.config, 3), KVCache(model.config, 3)
    with torch.no_grad():
        for c in (cache, eager_cache):
            c.reset(pad)
            cached_forward(model, idx, c)
        for token in [7, 1, 30, 2, 44]:
            new = torch.tensor([[token], [token + 1], [token + 2]])
            want = cached_forward(model, new, eager_cache)[:, -1]
            assert torch.allclose(compiled(model, new, cache), want, atol=1e-5)
            assert cache.length == eager_cache.length
    with pytest.raises(ValueError, match="use_cache"):
        generate_ids(model, [1], 3, compile=True, use_cache=False)


def test_a_compiled_step_is_reused_until_the_weights_change():
    model = tiny_model(context=16, seed=5)
    first = compiled_step(model)
    assert compiled_step(model) is first  # compiled once per model
    before = generate_ids(model, [[1, 2]], 10, temperature=0, compile=True)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # new weights in the same tensors, as an optimizer step writes them
            p.add_(torch.randn(p.shape, generator=noise) * 0.3)
    assert compiled_step(model) is not first  # frozen weights would be stale: compiled again
    after_eager = generate_ids(model, [[1, 2]], 10, temperature=0)
    assert after_eager != before  # the change matters to the text, so the next line can fail
    assert generate_ids(model, [[1, 2]], 10, temperature=0, compile=True) == after_eager


def test_cache_memory_formula():
    cfg = GPTConfig(vocab_size=60, context_length=24, d_model=32, n_layers=3, n_heads=4, d_ff=64)
    cache = KVCache(cfg, batch_size=2)
    assert cache.nbytes == 2 * cfg.n_layers * 2 * cfg.context_length * cfg.d_model * 4


@pytest.mark.parametrize("pos_emb", ["sinusoidal", "learned", "rope"])
def test_batched_equals_one_by_one_and_padding_never_leaks(pos_emb):
    model = tiny_model(context=16, pos_emb=pos_emb, seed=4)
    prompts = [[3, 4, 5, 6, 7, 8], [9], [10, 11, 12]]
    one_by_one = [generate_ids(model, p, 30, temperature=0)[0] for p in prompts]
    assert generate_ids(model, prompts, 30, temperature=0) == one_by_one
    # the same prompts, left-padded by the caller with junk, given as a tensor and per-row lengths
    idx = torch.tensor([[3, 4, 5, 6, 7, 8], [44, 44, 44, 44, 44, 9], [50, 51, 52, 10, 11, 12]])
    assert generate_ids(model, idx, 30, lengths=[6, 1, 3], temperature=0) == one_by_one
    # uncached batched path with padding as well
    assert generate_ids(model, prompts, 30, temperature=0, use_cache=False) == one_by_one


def test_finished_rows_stop_growing():
    model = tiny_model(seed=5)
    rows = generate_ids(model, [[1, 2], [3, 4, 5]], 40, temperature=0)
    eos = rows[0][3]  # pretend the 4th token of row 0 is <EOS>
    stopped = generate_ids(model, [[1, 2], [3, 4, 5]], 40, temperature=0, eos_id=eos)
    assert stopped[0] == rows[0][:rows[0].index(eos)]
    cut = rows[1].index(eos) if eos in rows[1] else len(rows[1])
    assert stopped[1] == rows[1][:cut]


def test_seed_reproducible_and_private():
    model = tiny_model(seed=6)
    a = generate_ids(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    torch.manual_seed(123)  # the global RNG must not matter
    b = generate_ids(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    c = generate_ids(model, [1, 2, 3], 30, temperature=1.0, seed=8)
    assert a == b and a != c


def test_model_mode_restored_and_no_grad():
    model = tiny_model()
    model.train()
    for nxt in generate_tokens(model, [1, 2], 3, temperature=0):
        assert not model.training and not nxt.requires_grad
    assert model.training


def test_text_generation_stop_eos_and_stream(tok):
    model = tiny_model(vocab=tok.vocab_size, seed=7)
    full = generate(model, tok, "First", 40, temperature=0)
    assert isinstance(full, str) and len(full) > 0
    assert "".join(stream(model, tok, "First", 40, temperature=0)) == full
    assert "".join(stream(model, tok, "First", 40, seed=1)) == generate(model, tok, "First", 40, seed=1)
    stop = full[len(full) // 3: len(full) // 3 + 2]
    cut = generate(model, tok, "First", 40, temperature=0, stop=stop)
    assert cut == full[:full.index(stop)]
    assert "".join(stream(model, tok, "First", 40, temperature=0, stop=stop)) == cut
    eos_model = tiny_model(vocab=tok.vocab_size, seed=7)
    with torch.no_grad():
        eos_model.lm_head.weight[tok.eos_id] += 10 * eos_model.lm_head.weight[0]  # (tied: also the embedding)
    first = generate_ids(eos_model, tok.encode("First"), 20, temperature=0)[0]
    if tok.eos_id in first:
        assert generate(eos_model, tok, "First", 20, temperature=0) == tok.decode(
            tok.encode("First") + first[:first.index(tok.eos_id)])[len("First"):]
    batch = generate(model, tok, ["First", "All:\nSpeak"], 25, temperature=0)
    assert batch == [generate(model, tok, "First", 25, temperature=0),
                     generate(model, tok, "All:\nSpeak", 25, temperature=0)]


def test_eos_stops_text():
    tok = BPETokenizer().train(TEXT, 60)
    model = tiny_model(vocab=tok.vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit equal ... except EOS
        model.lm_head.weight[tok.eos_id] = 0.0
    model.ln_f.bias.data.zero_()
    with torch.no_grad():
        model.tok_emb.weight[tok.eos_id] = 1.0  # tied head: the EOS logit is the sum of ln_f's output
        model.ln_f.weight.data.fill_(0.0)
        model.ln_f.bias.data.fill_(1.0)
    assert generate(model, tok, "First", 30, temperature=0) == ""


def test_unknown_characters_and_empty_prompt(tok):
    model = tiny_model(vocab=tok.vocab_size)
    assert isinstance(generate(model, tok, "Zebra ☃ 漢字", 5, temperature=0), str)  # <UNK>, no crash
    assert tok.unk_id in tok.encode("☃")
    assert isinstance(generate(model, tok, "", 5, temperature=0), str)  # starts from <BOS>
    byte_tok = BPETokenizer(byte_level=True).train(TEXT, 300)
    byte_model = tiny_model(vocab=byte_tok.vocab_size)
    text = generate(byte_model, byte_tok, "héllo ☃", 8, temperature=0)
    assert text == "".join(stream(byte_model, byte_tok, "héllo ☃", 8, temperature=0))


def test_long_prompt_is_cropped_from_the_left(tok):
    model = tiny_model(vocab=tok.vocab_size, context=24)
    long_prompt = TEXT * 2
    ids = tok.encode(long_prompt)
    assert len(ids) > 24
    expected, _ = naive_greedy(model, ids, 10)
    assert generate_ids(model, ids, 10, temperature=0)[0] == expected


def test_max_new_tokens_zero(tok):
    model = tiny_model(vocab=tok.vocab_size)
    assert generate(model, tok, "First", 0) == ""
    assert generate_ids(model, [[1, 2], [3]], 0) == [[], []]


# -- the explorer, driven from Python -----------------------------------------------------------
def test_explorer_buttons_and_sliders(tok):
    import matplotlib

    matplotlib.use("Agg")
    model = tiny_model(vocab=tok.vocab_size)
    ex = SamplingExplorer(model, tok, prompt="First", max_new_tokens=15)
    ex.temperature.value = 0.0
    ex.prompt.value = "All:"
    ex.button.click()
    assert ex.sample == generate(model, tok, "All:", 15, temperature=0, seed=0)
    ex.temperature.value, ex.top_k.value, ex.top_p.value, ex.min_p.value = 1.2, 5, 0.9, 0.05
    ex.button.click()
    assert ex.sample == generate(model, tok, "All:", 15, temperature=1.2, top_k=5, top_p=0.9, min_p=0.05, seed=0)
    assert "top-k=5" in ex.figure().axes[0].get_title()  # the chart follows the sliders


# -- checkpoints and the CLI --------------------------------------------------------------------
def write_checkpoint(path, tok, model, **extra):
    save_checkpoint({"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": {}, "scaler": {},
                     "model_config": asdict(model.config), "train_config": {}, "tokenizer": tok.to_dict(),
                     "step": 1, "best_val_loss": 1.0, "rng": [], **extra}, path)


def test_load_model_errors_name_the_file(tmp_path, tok):
    with pytest.raises(CheckpointError, match="nothing.pt: no checkpoint there"):
        load_model(tmp_path / "nothing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_model(junk)
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="partial.pt: not a TinyLLM training checkpoint.*tokenizer"):
        load_model(tmp_path / "partial.pt")
    model = tiny_model(vocab=tok.vocab_size)
    write_checkpoint(tmp_path / "ok.pt", tok, model)
    broken = torch.load(tmp_path / "ok.pt", weights_only=True)
    broken["tokenizer"] = {"format": "something else"}
    torch.save(broken, tmp_path / "badtok.pt")
    with pytest.raises(CheckpointError, match="badtok.pt: .*tokenizer"):
        load_model(tmp_path / "badtok.pt")
    loaded, loaded_tok = load_model(tmp_path / "ok.pt", "cpu")
    assert generate(loaded, loaded_tok, "First", 10, temperature=0) == generate(model, tok, "First", 10, temperature=0)


def test_cli_bad_input_no_traceback(tmp_path, capsys, tok):
    write_checkpoint(tmp_path / "ok.pt", tok, tiny_model(vocab=tok.vocab_size))
    for argv, message in [
        (["--temperature", "-1"], "temperature=-1.0 is out of range"),
        (["--top_k", "0"], "top_k=0 is out of range"),
        (["--top_p", "1.5"], "top_p=1.5 is out of range"),
        (["--min_p", "2"], "min_p=2.0 is out of range"),
        (["--repetition_penalty", "0"], "repetition_penalty=0.0 is out of range"),
        (["--max_tokens", "-5"], "max_tokens=-5 is out of range"),
    ]:
        assert main(["--checkpoint", str(tmp_path / "ok.pt"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no checkpoint there" in capsys.readouterr().err


def test_cli_smoke_run_streams_text(tmp_path, tok):
    model = tiny_model(vocab=tok.vocab_size)
    write_checkpoint(tmp_path / "ok.pt", tok, model)
    run = subprocess.run([sys.executable, "-m", "tinyllm_lib.generate", "--checkpoint", str(tmp_path / "ok.pt"),
                          "--prompt", "First", "--temperature", "0", "--max_tokens", "20", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "First" + generate(model, tok, "First", 20, temperature=0) + "\n"
    run = subprocess.run([sys.executable, "-m", "tinyllm_lib.generate", "--checkpoint", str(tmp_path / "ok.pt"),
                          "--prompt", "All", "--top_k", "5", "--seed", "1", "--num_samples", "2",
                          "--max_tokens", "10"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.count("--- sample") == 2


def test_cli_answers_a_question_with_a_question_answer_checkpoint(tmp_path, capsys, tok):
    """The checkpoint's prompt template wraps the question; greedy by default; the answer alone, cut at <EOS>."""
    model = tiny_model(vocab=tok.vocab_size, context=64, seed=0)
    template = "<BOS>Question: {question}\nAnswer:"
    write_checkpoint(tmp_path / "qa.pt", tok, model, prompt_template=template)
    prompt_ids = tok.encode(template.format(question="Who are you?"))
    assert prompt_ids[0] == tok.bos_id and tok.eos_id not in prompt_ids
    # without eos_id: what the model writes, <EOS> and beyond (the penalty keeps a random model from looping)
    raw = generate_ids(model, prompt_ids, 30, temperature=0, repetition_penalty=3.0)[0]
    assert 5 <= raw.index(tok.eos_id) < 25
    answer = tok.decode(raw[: raw.index(tok.eos_id)]).strip()
    assert main(["--checkpoint", str(tmp_path / "qa.pt"), "--prompt", "Who are you?", "--max_tokens", "30",
                 "--repetition_penalty", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out == answer + "\n" and len(answer) > 5 and "Question" not in out
    assert main(["--checkpoint", str(tmp_path / "qa.pt"), "--prompt", "Who are you?", "--max_tokens", "30",
                 "--temperature", "1.5", "--seed", "0", "--num_samples", "2"]) == 0  # sampling on request
    assert capsys.readouterr().out.count("--- sample") == 2
    for bad in ["", "Who <EOS> are you?"]:
        assert main(["--checkpoint", str(tmp_path / "qa.pt"), "--prompt", bad]) == 2
        assert "qa.pt answers questions: --prompt must be a question" in capsys.readouterr().err


# -- quality against diversity, and decoding with fewer bytes per weight --------------------------
def test_distinct_n_pools_the_samples():
    from tinyllm_lib.generate import distinct_n

    assert distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    assert distinct_n([[5, 6, 7]] * 4, 2) == pytest.approx(2 / 8)  # copies of one text score low
    assert distinct_n([[1], []], 2) == 0.0


def test_mean_log_likelihood_is_the_models_own_cross_entropy_on_the_new_tokens():
    from tinyllm_lib.generate import mean_log_likelihood

    model = tiny_model()
    prompt, rows = [3, 4, 5], [[7, 8, 9, 10], [11, 12]]
    expected = []
    with torch.no_grad():
        for row in rows:
            idx = torch.tensor([prompt + row])
            logp = model(idx[:, :-1]).log_softmax(-1)[0]
            expected += [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(row)]
    assert mean_log_likelihood(model, prompt, rows) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    with pytest.raises(ValueError, match="context"):
        mean_log_likelihood(model, prompt, [[1] * 30])


def test_weight_bytes_per_token_counts_each_weight_once():
    from tinyllm_lib.generate import quantize_int8, weight_bytes_per_token

    model = tiny_model(pos_emb="learned")  # tied head; a learned position table is read one row at a time
    C = model.config.d_model
    every = sum(p.numel() for p in model.parameters()) * 4
    assert weight_bytes_per_token(model) == every - model.pos_emb.weight.nbytes + C * 4
    assert weight_bytes_per_token(model.to(torch.bfloat16)) * 2 == weight_bytes_per_token(tiny_model(pos_emb="learned"))
    q = quantize_int8(tiny_model(pos_emb="learned"))
    assert weight_bytes_per_token(q) < weight_bytes_per_token(tiny_model(pos_emb="learned")) / 2


def test_int8_weights_stay_close_and_the_cache_stays_exact():
    from tinyllm_lib.generate import Int8Linear, quantize_int8

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    err = (Int8Linear(linear)(x) - linear(x)).abs().max() / linear(x).abs().max()
    assert 0 < err < 0.02
    model = quantize_int8(tiny_model())
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    n = 2 * model.config.context_length
    assert generate_ids(model, [1, 2, 3], n, temperature=0) == generate_ids(model, [1, 2, 3], n, temperature=0,
                                                                             use_cache=False)


def test_bf16_weights_decode_with_the_cache():
    model = tiny_model().to(torch.bfloat16)
    rows = generate_ids(model, [[1, 2, 3], [4]], 30, temperature=0.8, top_k=10, seed=0)
    assert [len(r) for r in rows] == [30, 30]
    cache = KVCache(model.config, 1, dtype=torch.bfloat16)
    with torch.inference_mode():
        logits = cached_forward(model, torch.tensor([[1, 2, 3]]), cache)
        full = model(torch.tensor([[1, 2, 3]]))
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), full.float(), atol=0.05, rtol=0.02)


def test_matvec_bandwidth_is_bytes_over_seconds():
    from tinyllm_lib.generate import matvec_bandwidth

    assert 1e8 < matvec_bandwidth(8, repeats=2) < 1e13


def test_explorer_penalty_slider_and_static_grid(tok, capsys):
    import matplotlib

    from tinyllm_lib.generate import widgets_live

    matplotlib.use("Agg")
    model = tiny_model(vocab=tok.vocab_size)
    ex = SamplingExplorer(model, tok, prompt="All:", max_new_tokens=12)
    ex.temperature.value, ex.repetition_penalty.value = 0.0, 1.8
    ex.button.click()
    assert ex.sample == generate(model, tok, "All:", 12, temperature=0, repetition_penalty=1.8, seed=0)
    assert "penalty=1.8" in ex.figure().axes[0].get_title()
    grid = [dict(temperature=0.5), dict(temperature=1.5, min_p=0.1)]
    assert len([a for a in ex.figure(grid).axes if a.axison]) == 2
    ex.show(static=True, grid=grid)
    out = capsys.readouterr().out
    assert "temperature=0.5, seed=0" in out and "temperature=1.5, min_p=0.1, seed=0" in out
    assert ("All:" + generate(model, tok, "All:", 12, temperature=1.5, min_p=0.1, seed=0)) in out
    saved = sys.modules.get("google.colab")
    sys.modules["google.colab"] = type(sys)("google.colab")
    try:
        assert widgets_live()  # Colab renders ipywidgets
    finally:
        if saved is None:
            del sys.modules["google.colab"]
        else:
            sys.modules["google.colab"] = saved
