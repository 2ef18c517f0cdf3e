"""BPETokenizer (chapter 01): round trips, determinism, special tokens, files, bad input, GPT-2 parity."""

import json
import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyllm_lib import bpe
from tinyllm_lib.corpus import DataFileError, data_path, load_corpus
from tinyllm_lib.tokenizer import GPT2_SPLIT, SPECIALS, BPETokenizer

SEED_TEXT = "low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3 + "older " * 3 + "bigger " * 3
UNICODE = ["", " ", "héllo wörld", "日本語のテキスト", "emoji 👋🏽 family 👨‍👩‍👧", "e\u0301 n\u0303 combining",
           "tabs\tand\r\nwindows lines", "  leading and trailing  ", "\x00\x01 control", "ﬁ ligature ẞ"]


@pytest.fixture(scope="module")
def english():
    try:
        return load_corpus("corpus.en")
    except DataFileError as exc:
        pytest.skip(f"corpus.en is not available: {exc}")


@pytest.fixture(scope="module")
def shakespeare():
    try:
        return load_corpus("tinyshakespeare")
    except DataFileError as exc:
        pytest.skip(f"Tiny Shakespeare is not available: {exc}")


@pytest.fixture(scope="module")
def char_tok(english):
    return BPETokenizer().train(english, vocab_size=600)


@pytest.fixture(scope="module")
def byte_tok(english):
    return BPETokenizer(byte_level=True).train(english, vocab_size=600)


# -- the seed's example and the special tokens ----------------------------------------------------

def test_seed_example_lower_lowest():
    tok = BPETokenizer().train(SEED_TEXT, vocab_size=23)
    assert tok.pieces("lower") == ["▁low", "er"]
    assert tok.pieces("lowest") == ["▁low", "est"]
    assert tok.vocab_size == 23


def test_char_words_keep_their_marker_after_several_spaces():
    tok = BPETokenizer().train(SEED_TEXT + "\n", vocab_size=24)
    assert tok.pieces("low  low") == ["▁low", "▁", "▁low"]
    assert tok.pieces("low\n  low") == ["▁low", "\n", "▁", "▁low"]
    assert tok.decode(tok.encode("low\n  low")) == "low\n  low"


@pytest.mark.parametrize("byte_level", [False, True])
def test_special_ids_and_literal_specials(byte_level, english):
    tok = BPETokenizer(byte_level=byte_level).train(english, vocab_size=400)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.decode([i]) for i in range(4)] == list(SPECIALS)
    plain = tok.encode("the end")
    assert tok.encode("the end", add_bos=True, add_eos=True) == [2, *plain, 3]
    for name, i in zip(SPECIALS, range(4)):
        assert tok.encode(name) == [i]
    text = "<BOS>Once upon a time.<EOS> <PAD><PAD>\nThe end<EOS>"
    ids = tok.encode(text)
    assert [i for i in ids if i < 4] == [2, 3, 0, 0, 3]
    assert tok.decode(ids) == text


@pytest.mark.parametrize("byte_level", [False, True])
def test_specials_in_training_text_never_merge(byte_level):
    text = "<EOS>".join(["to be or not to be"] * 50) + "<BOS><BOS><EOS><EOS>" * 20
    tok = BPETokenizer(byte_level=byte_level).train(text, vocab_size=300 if byte_level else 30)
    learned = [tok.decode([i]) for i in range(tok.first_merge_id, tok.vocab_size)]
    assert learned, "no merge was learned"
    assert not any(c in piece for piece in learned for c in "<>")  # the specials' characters are never seen
    assert tok.decode(tok.encode(text)) == text


# -- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "a", "Hello, world!", "x  y   z", " lead", "trail ", "\n\nnew\n  lines !\n",
                                  "<UNK> after", "a <UNK>b", "STOP at 42 , ok"])
def test_char_round_trip_known_characters(char_tok, english, text):
    assert set(text) <= set(english + "<>UNK"), "the test text must use characters of the training text"
    assert char_tok.decode(char_tok.encode(text)) == text


def test_char_round_trip_unicode_training_text():
    text = " ".join(UNICODE) * 3
    tok = BPETokenizer().train(text, vocab_size=120)
    for s in UNICODE:
        assert tok.decode(tok.encode(s)) == s


def test_char_unknown_characters_become_unk(char_tok):
    ids = char_tok.encode("a☃b")
    assert char_tok.unk_id in ids
    assert char_tok.decode(ids) == "a<UNK>b"
    assert char_tok.decode(char_tok.encode("snow ☃ man")) == "snow <UNK> man"  # the spaces survive


def test_char_empty_string():
    tok = BPETokenizer().train("abc abc", vocab_size=10)
    assert tok.encode("") == [] and tok.decode([]) == ""


@pytest.mark.parametrize("text", UNICODE + ["<|endoftext|>", "🙂" * 20, "\ud7ff\ue000\U0010ffff"])
def test_byte_round_trip(byte_tok, text):
    ids = byte_tok.encode(text)
    assert byte_tok.unk_id not in ids
    assert byte_tok.decode(ids) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_byte_round_trip_property(byte_tok, text):
    ids = byte_tok.encode(text)
    assert all(0 <= i < byte_tok.vocab_size for i in ids)
    assert byte_tok.decode(ids) == text


@pytest.fixture(scope="module")
def small_char_tok():
    return BPETokenizer().train("ab cd  abcd\n\tdc.ba, a  b\n\n" * 20, vocab_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(alphabet="ab cd\n\t.,"), st.sampled_from(SPECIALS))).map("".join))
def test_char_round_trip_property(small_char_tok, text):
    # Any text of known characters, literal special tokens included, comes back exactly.
    assert small_char_tok.decode(small_char_tok.encode(text)) == text


def test_whole_corpus_round_trip_and_compression(shakespeare):
    for byte_level in (False, True):
        tok = BPETokenizer(byte_level=byte_level).train(shakespeare, vocab_size=1000)
        ids = tok.encode(shakespeare)
        assert tok.decode(ids) == shakespeare
        assert len(shakespeare) / len(ids) > 2  # 1,000 tokens already halve the sequence length


# -- training: determinism, the tie-break rule, the naive reference -------------------------------

@pytest.mark.parametrize("byte_level", [False, True])
def test_training_is_deterministic(byte_level, english, tmp_path):
    for name in ("a.json", "b.json"):
        BPETokenizer(byte_level=byte_level).train(english, vocab_size=500).save(tmp_path / name)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_tie_break_prefers_the_greatest_pair():
    # Every pair occurs once: ("c","d") beats ("a","b") on the left part ...
    assert bpe.train_merges({(0, 1): 1, (2, 3): 1}, ["a", "b", "c", "d"], 1) == [(2, 3)]
    # ... equal left parts are decided by the right part ...
    assert bpe.train_merges({(0, 1): 1, (0, 3): 1}, ["a", "b", "c", "d"], 1) == [(0, 3)]
    # ... a longer token is greater than its prefix, and a higher count beats everything.
    assert bpe.train_merges({(4, 1): 1, (0, 3): 1}, ["a", "b", "c", "d", "ab"], 1) == [(4, 1)]
    assert bpe.train_merges({(0, 1): 2, (2, 3): 1}, ["a", "b", "c", "d"], 1) == [(0, 1)]
    # The byte flavour compares raw bytes: b"\xc3" (start of "é") beats b"z".
    assert bpe.train_merges({(0, 1): 1, (2, 1): 1}, [b"z", b"a", b"\xc3"], 1) == [(2, 1)]


@pytest.mark.parametrize("byte_level", [False, True])
def test_fast_trainer_matches_naive(byte_level, english):
    text = english[:40_000]
    tok = BPETokenizer(byte_level=byte_level).train(text, vocab_size=400 if byte_level else 250)
    occurrences = [tuple(tok._symbols(w)) for w in tok._words(text) if isinstance(w, str)]
    base = tok.tokens[: tok.first_merge_id]
    naive = bpe.train_merges_naive(occurrences, base, 100)
    assert len(naive) == 100
    assert bpe.train_merges(Counter(occurrences), base, 100) == naive
    # ... and the tokenizer's own training made the same first merges.
    assert list(tok.merges)[:100] == naive


def test_apply_merges_follows_merge_order():
    merges = {(1, 2): 3, (0, 1): 4}  # (1,2) was learned first, so it wins over (0,1)
    assert bpe.apply_merges([0, 1, 2], merges) == [0, 3]
    assert bpe.apply_merges([0, 1, 0, 1], merges) == [4, 4]
    assert bpe.apply_merges([2, 0], merges) == [2, 0]


def test_verbose_training_shows_progress_and_learns_the_same(capsys):
    quiet = BPETokenizer().train(SEED_TEXT, vocab_size=23)
    loud = BPETokenizer().train(SEED_TEXT, vocab_size=23, verbose=True)
    assert loud.to_dict() == quiet.to_dict()
    assert "merges" in capsys.readouterr().err


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer().train("aaaa", vocab_size=100)
    assert tok.pieces("aaaa") == ["▁aaaa"]
    assert tok.vocab_size < 100


# -- files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("byte_level", [False, True])
def test_save_load_round_trip(byte_level, english, tmp_path):
    tok = BPETokenizer(byte_level=byte_level).train(english, vocab_size=500)
    tok.save(tmp_path / "tok.json")
    back = BPETokenizer.load(tmp_path / "tok.json")
    assert back.to_dict() == tok.to_dict()
    assert BPETokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).to_dict() == tok.to_dict()
    sample = english[:5000] + " <EOS> ☃👋"
    assert back.encode(sample) == tok.encode(sample)
    data = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    assert data["format"] == "tinyllm-bpe" and data["version"] == 1 and len(data["vocab"]) == 500


def _saved(tmp_path, edit):
    tok = BPETokenizer().train(SEED_TEXT, vocab_size=23)
    d = tok.to_dict()
    edit(d)
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=2), "newer than this library"),
        (lambda d: d.pop("format"), "not a tokenizer file"),
        (lambda d: d.pop("merges"), "'merges' is missing"),
        (lambda d: d["vocab"].__setitem__(20, "lox"), "merges[3]"),
        (lambda d: d["merges"].__setitem__(0, [0, 99]), "merges[0]"),
        (lambda d: d["specials"].update({"<EOS>": 5}), "specials['<EOS>']"),
        (lambda d: d["vocab"].__setitem__(5, 7), "vocab[5]"),
        (lambda d: d.update(roles={"pad": 0}), "roles"),
    ],
)
def test_load_rejects_bad_files_naming_file_and_field(tmp_path, edit, message):
    path = _saved(tmp_path, edit)
    with pytest.raises(ValueError, match=r"tok\.json") as info:
        BPETokenizer.load(path)
    assert message in str(info.value)


def test_load_rejects_non_json_and_other_json(tmp_path):
    (tmp_path / "junk.json").write_bytes(b"\x89PNG not json")
    with pytest.raises(ValueError, match=r"junk\.json: not a tokenizer file"):
        BPETokenizer.load(tmp_path / "junk.json")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"list\.json: not a tokenizer file"):
        BPETokenizer.load(tmp_path / "list.json")
    (tmp_path / "cut.json").write_text(BPETokenizer().train("abc", 8).to_dict().__repr__()[:40])
    with pytest.raises(ValueError, match=r"cut\.json"):
        BPETokenizer.load(tmp_path / "cut.json")


# -- bad input ------------------------------------------------------------------------------------

def test_vocab_size_below_the_minimum_names_it():
    with pytest.raises(ValueError, match="minimum is 9"):  # 4 specials + a, b, c, ▁ (the space) and "\n"
        BPETokenizer().train("abc cab\n", vocab_size=8)
    with pytest.raises(ValueError, match="minimum is 260"):
        BPETokenizer(byte_level=True).train("abc", vocab_size=259)


def test_empty_or_special_only_training_text():
    with pytest.raises(ValueError, match="empty text"):
        BPETokenizer().train("", vocab_size=100)
    with pytest.raises(ValueError, match="nothing but special tokens"):
        BPETokenizer().train("<EOS><BOS>", vocab_size=100)


def test_decode_rejects_unknown_ids(char_tok):
    with pytest.raises(ValueError, match="not in this vocabulary"):
        char_tok.decode([5, char_tok.vocab_size])
    with pytest.raises(ValueError, match="not in this vocabulary"):
        char_tok.decode([-1])
    with pytest.raises(TypeError, match="token ids must be integers, got 1.5"):
        char_tok.decode([5, 1.5])
    with pytest.raises(TypeError, match="token ids must be integers"):
        char_tok.decode(["5"])


def test_decode_accepts_numpy_and_torch_ids(char_tok, byte_tok):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    for tok in (char_tok, byte_tok):
        ids = tok.encode("the cat sat")
        text = tok.decode(ids)
        assert tok.decode(np.array(ids)) == text
        assert tok.decode(np.array(ids, dtype=np.int32)) == text
        assert tok.decode(torch.tensor(ids)) == text
        assert tok.decode([np.int64(i) for i in ids]) == text


def test_char_tokenizer_without_unk_is_rejected(tmp_path):
    d = BPETokenizer().train("abc cab", vocab_size=12).to_dict()
    d["roles"]["unk"] = None
    with pytest.raises(ValueError, match=r"roles\['unk'\] is null"):
        BPETokenizer.from_dict(d)
    (tmp_path / "no_unk.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_unk\.json: roles\['unk'\] is null"):
        BPETokenizer.load(tmp_path / "no_unk.json")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    tok = BPETokenizer().train("abc cab", vocab_size=12)
    path = tmp_path / "tok.json"
    path.write_text("an older file")
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
    assert BPETokenizer.load(path).to_dict() == tok.to_dict()


# -- GPT-2 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_files():
    try:
        return data_path("gpt2_encoder.json"), data_path("gpt2_vocab.bpe")
    except DataFileError as exc:
        pytest.skip(f"GPT-2's encoder.json / vocab.bpe are not available (set TINYLLM_DATA_DIR): {exc}")


@pytest.fixture(scope="module")
def gpt2(gpt2_files):
    return BPETokenizer.from_gpt2(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files, tmp_path_factory):
    """tiktoken's "gpt2" encoding, run offline from the same two files (its cache file names)."""
    tiktoken = pytest.importorskip("tiktoken")
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    encoder_json, vocab_bpe = gpt2_files
    shutil.copy(vocab_bpe, cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(encoder_json, cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("gpt2")


def test_gpt2_vocabulary(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.specials == {"<|endoftext|>": 50256}
    assert gpt2.eos_id == gpt2.bos_id == 50256 and gpt2.unk_id is None
    assert gpt2.pad_id is None  # GPT-2 has no pad token
    assert gpt2.encode("Hello world") == [15496, 995]


GPT2_TEXTS = [
    "", "Hello world", "  leading spaces", "trailing   ", "I'm sure they'll say it's 'quoted' we've DON'T",
    "numbers 123 4567 3.14159 1,000,000", "tabs\tand\nnewlines\n\n\n  indented", "émigré naïve café",
    "中文字符 日本語 한국어", "emoji 👋🏽 👨‍👩‍👧 🏳️‍🌈", "e\u0301\u0302 combining", "<|endoftext|>",
    "a story.<|endoftext|>Another one<|endoftext|><|endoftext|>", "<|endoftext", "x\u00a0y\u2028z",
    "def f(x):\n    return x**2  # comment\n", "!!!???...---", "\x00\x1f\x7f",
]


def test_gpt2_matches_tiktoken_on_varied_texts(gpt2, tiktoken_gpt2):
    for text in GPT2_TEXTS:
        ids = gpt2.encode(text)
        assert ids == tiktoken_gpt2.encode(text, allowed_special="all"), text
        assert gpt2.decode(ids) == text


def test_gpt2_matches_tiktoken_on_corpora(gpt2, tiktoken_gpt2, shakespeare, english):
    try:
        stories = load_corpus("tinystories_sample")
    except DataFileError as exc:
        pytest.skip(f"the TinyStories sample is not available: {exc}")
    for text in (shakespeare, english, stories):
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert 50256 in gpt2.encode(stories)  # its stories are separated by a literal <|endoftext|>


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_gpt2_matches_tiktoken_property(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_loader_errors_name_file_and_line(gpt2_files, tmp_path):
    encoder_json, vocab_bpe = gpt2_files
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    lines[3] = "notatoken Ġthe"
    bad = tmp_path / "vocab.bpe"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.bpe, line 4"):
        BPETokenizer.from_gpt2(encoder_json, bad)
    (tmp_path / "encoder.json").write_text('{"a": 0, "b": 0}')
    with pytest.raises(ValueError, match=r"encoder\.json: not GPT-2's encoder.json"):
        BPETokenizer.from_gpt2(tmp_path / "encoder.json", vocab_bpe)
    latin1 = tmp_path / "latin1.bpe"
    latin1.write_bytes("#version: 0.2\nca f\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.bpe: not GPT-2's vocab\.bpe: not valid UTF-8"):
        BPETokenizer.from_gpt2(encoder_json, latin1)


def test_gpt2_split_pattern():
    assert GPT2_SPLIT.findall("I'm  here 42x") == ["I", "'m", " ", " here", " 42", "x"]


# -- streaming encode (chapter 09): any chunking of a text gives the ids of one encode ---------------------

def _chunked(text, sizes):
    """`text` cut into consecutive pieces of the given sizes (cycled), the last piece whatever is left."""
    out, i, k = [], 0, 0
    while i < len(text):
        out.append(text[i:i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


def _streamed(tok, chunks, prefix=True):
    return [i for part in tok.encode_iter(chunks, prefix=prefix) for i in part]


@pytest.fixture(scope="module")
def stories():
    try:
        return load_corpus("tinystories_sample")
    except DataFileError as exc:
        pytest.skip(f"the TinyStories sample is not available: {exc}")


@pytest.mark.parametrize("sizes", [[1], [3, 17], [1000], [10**7]])
def test_streaming_encode_equals_encode_on_shakespeare(char_tok, byte_tok, shakespeare, sizes):
    text = shakespeare[:60_000]
    for tok in (char_tok, byte_tok):
        assert _streamed(tok, _chunked(text, sizes)) == tok.encode(text)


def test_streaming_encode_equals_encode_with_endoftext_separators(gpt2, char_tok, stories):
    assert "<|endoftext|>" in stories
    for sizes in ([1], [5, 40], [512]):
        assert _streamed(gpt2, _chunked(stories, sizes)) == gpt2.encode(stories)
    as_eos = stories.replace("<|endoftext|>", "<EOS>")  # the character flavour's own separator
    assert _streamed(char_tok, _chunked(as_eos, [7, 3])) == char_tok.encode(as_eos)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="ab \n\t'.<EOS>▁é1", max_size=80), sizes=st.lists(st.integers(1, 9), min_size=1))
def test_streaming_encode_any_chunking_property(small_char_tok, byte_tok, text, sizes):
    for tok in (small_char_tok, byte_tok):
        assert _streamed(tok, _chunked(text, sizes)) == tok.encode(text)


def test_streaming_encode_holds_back_only_to_the_last_safe_cut(char_tok):
    lines = ["First line\n", "second line\n", "third"]
    parts = list(char_tok.encode_iter(lines))
    assert len(parts) == 3  # each line is released once the next one shows where it ends
    assert [i for p in parts for i in p] == char_tok.encode("".join(lines))
    # a cut continues a text: no word marker in front of the continuation
    assert _streamed(char_tok, ["line"], prefix=False) == char_tok.encode("x\nline")[len(char_tok.encode("x\n")):]


def test_streaming_encode_refuses_special_tokens_with_whitespace(char_tok):
    d = char_tok.to_dict()
    del d["specials"]["<PAD>"]
    d["vocab"][0], d["specials"]["<P D>"] = "<P D>", 0
    tok = BPETokenizer.from_dict(d)
    with pytest.raises(ValueError, match="whitespace"):
        list(tok.encode_iter(["a\nb"]))
