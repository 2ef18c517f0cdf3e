"""Token data on disk and random windows (tinyllm_lib.data, exported by chapter 04)."""

import json

import numpy as np
import pytest
import torch

from tinyllm_lib import data as data_mod
from tinyllm_lib.data import cached_tokens, get_batch, prepare_data, split_text, token_dtype
from tinyllm_lib.tokenizer import BPETokenizer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer().train(TEXT, 60)


def test_split_text_keeps_order_and_every_character():
    train, val = split_text("abcdefghij", 0.3)
    assert (train, val) == ("abcdefg", "hij")
    with pytest.raises(ValueError, match="val_fraction"):
        split_text("abc", 1.5)


def test_token_dtype_is_the_smallest_that_fits():
    assert token_dtype(512) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_get_batch_targets_are_inputs_shifted_by_one():
    tokens = np.arange(1000, 1300, dtype=np.uint16)  # value = 1000 + position: windows are easy to read
    x, y = get_batch(tokens, 5, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = x[:, 0] - 1000
    for row, start in zip(x, starts.tolist()):
        assert row.tolist() == list(range(1000 + start, 1000 + start + 16))  # contiguous windows
    assert (y[:, -1] - 1000 < len(tokens)).all()


def test_get_batch_reaches_the_last_window_and_never_runs_past_the_end():
    tokens = np.arange(12, dtype=np.uint16)  # value = position; T = 4: starts 0 .. N - T - 1 = 7
    x, y = get_batch(tokens, 2000, 4, torch.Generator().manual_seed(0))
    starts = set(x[:, 0].tolist())
    assert starts == set(range(12 - 4))  # every start drawn, the last one (7) included
    assert y.max().item() == 11 and x.max().item() == 10  # the last window ends on the last token
    assert (y[:, -1] < len(tokens)).all() and torch.equal(y[:, -1], x[:, 0] + 4)


def test_get_batch_is_reproducible_from_the_generator_state():
    tokens = np.arange(500, dtype=np.uint16)
    gen = torch.Generator().manual_seed(0)
    get_batch(tokens, 2, 8, gen)
    state = gen.get_state()
    first = get_batch(tokens, 2, 8, gen)
    gen.set_state(state)
    again = get_batch(tokens, 2, 8, gen)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_get_batch_rejects_too_few_tokens():
    with pytest.raises(ValueError, match="context_length=8"):
        get_batch(np.arange(8, dtype=np.uint16), 1, 8, torch.Generator())
    with pytest.raises(ValueError, match="the validation split has 8 tokens"):
        get_batch(np.arange(8, dtype=np.uint16), 1, 8, torch.Generator(), split="the validation split")


def test_cached_tokens_round_trip_and_memmap(tmp_path, tok):
    ids = cached_tokens(TEXT, tok, tmp_path / "t.bin")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == tok.encode(TEXT)
    meta = json.loads((tmp_path / "t.bin.json").read_text())
    assert meta["n_tokens"] == len(ids) and meta["n_chars"] == len(TEXT)


def test_cached_tokens_reuses_a_fresh_cache(tmp_path, tok, monkeypatch):
    cached_tokens(TEXT, tok, tmp_path / "t.bin")

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tok, "encode", no_encoding)
    assert len(cached_tokens(TEXT, tok, tmp_path / "t.bin")) > 0


def test_cached_tokens_rebuilds_when_text_or_tokenizer_change(tmp_path, tok):
    path = tmp_path / "t.bin"
    cached_tokens(TEXT, tok, path)
    other_text = "the question is not to be\n" * 10
    assert cached_tokens(other_text, tok, path).tolist() == tok.encode(other_text)
    other_tok = BPETokenizer().train(TEXT, 40)
    assert cached_tokens(other_text, other_tok, path).tolist() == other_tok.encode(other_text)


def test_cached_tokens_rebuilds_a_truncated_file(tmp_path, tok):
    path = tmp_path / "t.bin"
    full = cached_tokens(TEXT, tok, path).tolist()
    path.write_bytes(path.read_bytes()[:10])  # an interrupted copy
    assert cached_tokens(TEXT, tok, path).tolist() == full


def test_prepare_data_trains_the_tokenizer_once(tmp_path, monkeypatch):
    first = prepare_data(TEXT, 60, tmp_path, name="hamlet")
    assert first.tokenizer.vocab_size == 60
    assert first.val_chars == len(split_text(TEXT, 0.1)[1])
    assert first.val_chars_per_token == pytest.approx(first.val_chars / len(first.val))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(data_mod.BPETokenizer, "train", no_training)
    second = prepare_data(TEXT, 60, tmp_path, name="hamlet")
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)


def test_prepare_data_rejects_empty_text(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        prepare_data("", 60, tmp_path, name="nothing")


def test_the_cache_key_includes_the_split(tmp_path):
    a = prepare_data(TEXT, 60, tmp_path, name="hamlet", val_fraction=0.1)
    b = prepare_data(TEXT, 60, tmp_path, name="hamlet", val_fraction=0.5)
    assert b.val_chars == len(split_text(TEXT, 0.5)[1]) and len(b.val) > len(a.val)
    assert len(list(tmp_path.glob("hamlet-*-bpe60.json"))) == 2  # one tokenizer per training split
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_empty_validation_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="validation split"):
        prepare_data(TEXT, 60, tmp_path, name="hamlet", val_fraction=1e-17)  # rounds to no character


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "ids.bin"
    data_mod.atomic_write(path, lambda tmp: tmp.write_bytes(b"old"))

    def dies(tmp):
        tmp.write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        data_mod.atomic_write(path, dies)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ids.bin"]


# ---- a file larger than memory, tokenized in parallel (chapter 04, section 2b; chapter 09) -------------

def test_prepare_data_from_a_file_with_workers_equals_the_string_path(tmp_path):
    text = (TEXT + "Ay, there's the rub.\n") * 30
    file = tmp_path / "corpus.txt"
    file.write_text(text, encoding="utf-8")
    ref = prepare_data(text, 60, tmp_path / "a", name="c")
    for source, workers in ((text, 2), (file, 1)):
        got = prepare_data(source, 60, tmp_path / f"b{workers}{type(source).__name__}", name="c", workers=workers)
        assert got.tokenizer.to_dict() == ref.tokenizer.to_dict()
        assert np.array_equal(got.train, ref.train) and np.array_equal(got.val, ref.val)
        assert got.val_chars == ref.val_chars
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name or p.name.endswith(".tmp")]


def test_encode_file_with_workers_equals_encode_on_shakespeare_and_stories(tmp_path):
    from tinyllm_lib.corpus import DataFileError, data_path

    try:
        files = [data_path("tinyshakespeare"), data_path("tinystories_sample")]
        gpt2 = BPETokenizer.from_gpt2(data_path("gpt2_encoder.json"), data_path("gpt2_vocab.bpe"))
    except DataFileError as exc:
        pytest.skip(f"corpus not available: {exc}")
    shakespeare = files[0].read_text(encoding="utf-8")[:200_000]
    (tmp_path / "s.txt").write_text(shakespeare, encoding="utf-8")
    char_tok = BPETokenizer().train(shakespeare[:50_000], 300)
    for path, tok in ((tmp_path / "s.txt", char_tok), (files[1], gpt2)):
        text = path.read_text(encoding="utf-8")
        out = tmp_path / "ids.bin"
        n_chars = data_mod.encode_file(path, tok, out, workers=2)
        assert n_chars == len(text)
        assert np.fromfile(out, dtype=token_dtype(tok.vocab_size)).tolist() == tok.encode(text)


def test_safe_cut_lands_between_two_non_space_characters_around_a_line_break(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("é\n\nx y\né\nb".encode())
    cut = data_mod.safe_cut_at(path, 1, path.stat().st_size)
    raw = path.read_bytes()
    assert raw[:cut].decode().endswith("y\n") and raw[cut:].decode() == "é\nb"
    assert data_mod.safe_cut_at(path, cut, path.stat().st_size) == cut
    assert data_mod.safe_cut_at(path, 0, 3) == 3  # no cut before the end given: the end
