"""Chapter 08: question-answer data: validation errors, wrapping, the answer-only mask, padding, the snippet."""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from tinyllm_lib.data_utils import (
    IGNORE_INDEX,
    QADataError,
    create_dataloader,
    exact_match,
    format_prompt,
    is_held_out,
    load_qa_json,
    make_example,
    nearest_neighbour_answers,
    normalize_answer,
    pad_batch,
    prepare_custom_data,
    prompt_template,
    qa_token_data,
    token_f1,
    validate_record,
    wrap_pair,
)
from tinyllm_lib.generate import generate_ids
from tinyllm_lib.model import GPTConfig, lm_loss
from tinyllm_lib.tokenizer import BPETokenizer
from tinyllm_lib.trainer import TrainConfig, Trainer

HERE = Path(__file__).parent
BAD = HERE / "data" / "qa"
QA_JSON = HERE.parent / "data" / "qa.json"
PAIRS = [{"id": i, "category": "test", "question": f"What is item {w}?", "answer": f"Item {w} is a {w} thing."}
         for i, w in enumerate(["red", "blue", "green", "small", "large", "round", "square", "heavy", "light",
                                "quiet", "loud", "warm"], start=1)]


@pytest.fixture
def tok():
    text = "".join(f"Question: {p['question']}\nAnswer: {p['answer']}" for p in PAIRS)
    return BPETokenizer().train(text, vocab_size=120)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# -- validation: every error names the file, the entry (index and id) and the field -------------------------
@pytest.mark.parametrize("name, expected", [
    ("bad_json.json", ["bad_json.json, line 3, column ", "invalid JSON"]),
    ("bad_top_level.json", ["bad_top_level.json", "top level must be a list", "dict"]),
    ("bad_entry_not_object.json", ["bad_entry_not_object.json: entry 1", "expected an object", "list"]),
    ("bad_missing_answer.json", ["bad_missing_answer.json: entry 1 (id 2)", "field 'answer' is missing"]),
    ("bad_empty_question.json", ["bad_empty_question.json: entry 1 (id 2)", "field 'question' is empty"]),
    ("bad_answer_not_string.json", ["bad_answer_not_string.json: entry 1 (id 2)", "field 'answer' must be a string"]),
    ("bad_duplicate_id.json", ["bad_duplicate_id.json: entry 2 (id 1)", "field 'id'", "duplicate of entry 0"]),
    ("bad_special_token.json", ["bad_special_token.json: entry 0 (id 1)", "field 'answer'", "'<EOS>'"]),
])
def test_each_bad_file_names_file_entry_and_field(name, expected):
    with pytest.raises(QADataError) as info:
        load_qa_json(BAD / name)
    for part in expected:
        assert part in str(info.value)


def test_every_bad_file_is_tested():
    tested = {"bad_json.json", "bad_top_level.json", "bad_entry_not_object.json", "bad_missing_answer.json",
              "bad_empty_question.json", "bad_answer_not_string.json", "bad_duplicate_id.json",
              "bad_special_token.json"}
    assert {p.name for p in BAD.glob("bad_*.json")} == tested


def test_more_record_errors(tmp_path):
    cases = [
        ({"question": "Q?", "answer": None}, "field 'answer' must be a string"),
        ({"question": ["Q?"], "answer": "A."}, "field 'question' must be a string"),
        ({"question": "", "answer": "A."}, "field 'question' is empty"),
        ({"answer": "A."}, "field 'question' is missing"),
        ({"id": "7", "question": "Q?", "answer": "A."}, "field 'id' must be an integer"),
        ({"id": True, "question": "Q?", "answer": "A."}, "field 'id' must be an integer"),
        ({"category": 3, "question": "Q?", "answer": "A."}, "field 'category' must be a string"),
        ({"question": "Say <BOS>", "answer": "A."}, "field 'question' contains '<BOS>'"),
    ]
    for record, message in cases:
        with pytest.raises(QADataError, match=message):
            validate_record(record, 3, "f.json")
    with pytest.raises(QADataError, match=r"f.json: entry 3: expected an object"):
        validate_record("just text", 3, "f.json")


def test_file_level_errors(tmp_path):
    with pytest.raises(QADataError, match="no such file"):
        load_qa_json(tmp_path / "missing.json")
    with pytest.raises(QADataError, match="the list is empty"):
        load_qa_json(write(tmp_path / "empty.json", "[]"))
    (tmp_path / "latin1.json").write_bytes('[{"question": "caf\xe9", "answer": "x"}]'.encode("latin-1"))
    with pytest.raises(QADataError, match="not UTF-8"):
        load_qa_json(tmp_path / "latin1.json")


def test_valid_file_loads_stripped_with_optional_fields(tmp_path):
    path = write(tmp_path / "ok.json", [{"question": " Hi? ", "answer": "Hello. "}, PAIRS[0]])
    records = load_qa_json(path)
    assert records[0] == {"id": None, "category": None, "question": "Hi?", "answer": "Hello."}
    assert records[1]["id"] == 1 and records[1]["category"] == "test"


def test_shipped_dataset_is_valid_and_large_enough():
    records = load_qa_json(QA_JSON)
    assert len(records) >= 300
    assert all(r["id"] is not None and r["category"] for r in records)
    held = [r for i, r in enumerate(records) if is_held_out(r, i)]
    answers = {r["answer"] for i, r in enumerate(records) if not is_held_out(r, i)}
    assert len(held) >= 30
    assert all(r["answer"] in answers for r in held)  # held-out pairs are paraphrases of trained facts


# -- wrapping and the mask --------------------------------------------------------------------------------
def test_wrap_pair_format(tok):
    ids, prompt_len = wrap_pair("What is item red?", "Item red is a red thing.", tok)
    assert ids[0] == tok.bos_id == 2 and ids[-1] == tok.eos_id == 3
    assert tok.decode(ids) == "<BOS>Question: What is item red?\nAnswer: Item red is a red thing.<EOS>"
    assert ids[:prompt_len] == [tok.bos_id] + tok.encode(format_prompt("What is item red?"))
    assert tok.decode(ids[prompt_len:]) == "Item red is a red thing.<EOS>"
    no_eos, same_len = wrap_pair("What is item red?", "Item red is a red thing.", tok, add_eos=False)
    assert no_eos == ids[:-1] and same_len == prompt_len


def test_wrap_pair_byte_level():
    tok = BPETokenizer(byte_level=True).train("Question: Who?\nAnswer: Me.", vocab_size=262)
    ids, prompt_len = wrap_pair("Who?", "Me.", tok)
    assert tok.decode(ids) == "<BOS>Question: Who?\nAnswer: Me.<EOS>"
    assert tok.decode(ids[prompt_len:]) == " Me.<EOS>"


def test_mask_covers_prompt_targets_only(tok):
    ids, prompt_len = wrap_pair("What is item blue?", "Item blue is a blue thing.", tok)
    x, y = make_example(ids, prompt_len)
    assert torch.equal(x, torch.tensor(ids[:-1]))
    assert (y[: prompt_len - 1] == IGNORE_INDEX).all()  # -100, never a token id: EOS stays a target
    assert torch.equal(y[prompt_len - 1 :], torch.tensor(ids[prompt_len:]))  # every answer token and EOS
    _, y_all = make_example(ids, prompt_len, mask_prompt=False)
    assert torch.equal(y_all, torch.tensor(ids[1:]))


def test_padding_and_mask_are_ignored_by_the_loss(tok):
    items = [make_example(*wrap_pair(p["question"], p["answer"], tok)) for p in PAIRS[:3]]
    x, y = pad_batch(items, tok.pad_id)
    torch.manual_seed(0)
    logits = torch.randn(*x.shape, tok.vocab_size)
    loss = lm_loss(logits, y)
    # the same loss by hand, over the answer targets of each row only
    terms = [torch.nn.functional.cross_entropy(logits[b, t], y[b, t], reduction="sum")
             for b in range(len(items)) for t in range(x.shape[1]) if y[b, t] != IGNORE_INDEX]
    assert torch.allclose(loss, torch.stack(terms).sum() / len(terms))
    # changing logits at masked or padded positions changes nothing
    other = logits.clone()
    other[y == IGNORE_INDEX] = 100.0
    assert torch.allclose(lm_loss(other, y), loss)
    # x is padded with the pad id at the end of short rows
    shortest = min(len(i[0]) for i in items)
    assert (x[:, shortest:] == tok.pad_id).any()


def test_dataloader_shapes_and_padding(tmp_path):
    path = write(tmp_path / "data" / "pairs.json", PAIRS)
    train_ds, val_ds, tok = prepare_custom_data(path, vocab_size=120, context_length=64)
    assert len(train_ds) == 11 and len(val_ds) == 1 and val_ds.records[0]["id"] == 10
    assert tok.pad_id is not None and train_ds.ignore_index == val_ds.ignore_index == IGNORE_INDEX  # never the pad id
    loader = create_dataloader(train_ds, batch_size=4)
    batches = list(loader)
    assert [tuple(x.shape)[0] for x, _ in batches] == [4, 4, 3]
    for x, y in batches:
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape
        longest = max(len(train_ds[i][0]) for i in range(len(train_ds)))
        assert x.shape[1] <= longest
    lengths = {len(train_ds[i][0]) for i in range(len(train_ds))}
    x, y = next(iter(create_dataloader(train_ds, batch_size=len(train_ds), shuffle=False)))
    assert x.shape == (len(train_ds), max(lengths))
    again = [x for x, _ in create_dataloader(train_ds, batch_size=4, seed=0)]
    assert all(torch.equal(a, b[0]) for a, b in zip(again, batches))  # the seed fixes the shuffle


def test_split_by_id_rule_and_list():
    assert [i for i in range(1, 25) if is_held_out({"id": i}, 0)] == [10, 20]
    assert is_held_out({"id": None}, 9) and not is_held_out({"id": None}, 8)  # no id: index + 1
    assert is_held_out({"id": 3}, 0, val_ids=[3, 4]) and not is_held_out({"id": 10}, 0, val_ids=[3])


def test_prepare_with_val_ids_and_unmasked(tmp_path):
    path = write(tmp_path / "pairs.json", PAIRS)
    train_ds, val_ds, _ = prepare_custom_data(path, vocab_size=120, val_ids=[1, 2], mask_prompt=False,
                                              cache_dir=tmp_path / "c")
    assert [r["id"] for r in val_ds.records] == [1, 2] and len(train_ds) == 10
    x, y = train_ds[0]
    assert torch.equal(y, torch.tensor(train_ds.examples[0][0][1:]))
    with pytest.raises(QADataError, match="every pair is held out"):
        prepare_custom_data(path, vocab_size=120, val_ids=range(1, 13), cache_dir=tmp_path / "c")


def test_pretrained_tokenizer_is_reused_never_retrained(tmp_path, tok):
    path = write(tmp_path / "pairs.json", PAIRS)
    train_ds, _, used = prepare_custom_data(path, tokenizer=tok, cache_dir=tmp_path / "c")
    assert used is tok
    assert train_ds.examples[0][0] == wrap_pair(PAIRS[0]["question"], PAIRS[0]["answer"], tok)[0]
    with pytest.raises(ValueError, match="fine-tuning keeps the pretrained"):
        prepare_custom_data(path, tokenizer=tok, force_retrain_tokenizer=True, cache_dir=tmp_path / "c")


def test_no_eos_option(tmp_path, tok):
    path = write(tmp_path / "pairs.json", PAIRS)
    train_ds, _, _ = prepare_custom_data(path, tokenizer=tok, add_eos=False, cache_dir=tmp_path / "c")
    assert all(tok.eos_id not in ids for ids, _ in train_ds.examples)


# -- caches --------------------------------------------------------------------------------------------
def test_cached_tokenizer_from_other_data_is_refused(tmp_path):
    path = write(tmp_path / "pairs.json", PAIRS)
    _, _, first = prepare_custom_data(path, vocab_size=120, force_retrain_tokenizer=True)
    _, _, again = prepare_custom_data(path, vocab_size=120)  # same data: the cache is reused
    assert again.to_dict() == first.to_dict()
    write(path, PAIRS[:-1] + [{"question": "Something new?", "answer": "Yes, quite new."}])
    with pytest.raises(QADataError, match="trained on other data.*force_retrain_tokenizer=True"):
        prepare_custom_data(path, vocab_size=120)
    # a file of the same name elsewhere, sharing the cache folder, is refused too
    other = write(tmp_path / "elsewhere" / "pairs.json", PAIRS[:6])
    with pytest.raises(QADataError, match="pairs.json"):
        prepare_custom_data(other, vocab_size=120, cache_dir=tmp_path / "cache")
    _, _, retrained = prepare_custom_data(path, vocab_size=120, force_retrain_tokenizer=True)
    assert retrained.to_dict() != first.to_dict()


def test_cache_files_are_written_atomically(tmp_path, monkeypatch):
    path = write(tmp_path / "pairs.json", PAIRS)
    prepare_custom_data(path, vocab_size=120, force_retrain_tokenizer=True)
    cache = tmp_path / "cache"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert not [n for n in before if n.endswith(".tmp")]

    def crash(self, path):  # the disk fills up half-way through writing the new tokenizer
        Path(path).write_text("{half a tokenizer")
        raise OSError("disk full")

    monkeypatch.setattr(BPETokenizer, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_custom_data(path, vocab_size=120, force_retrain_tokenizer=True)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # old files intact, no temporary left


# -- over-long pairs ------------------------------------------------------------------------------------
def test_overlong_pairs_are_cut_with_one_warning(tmp_path, tok):
    path = write(tmp_path / "pairs.json", PAIRS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_ds, val_ds, _ = prepare_custom_data(path, tokenizer=tok, context_length=12, cache_dir=tmp_path / "c")
    assert len(caught) == 1
    n_long = sum(len(wrap_pair(p["question"], p["answer"], tok)[0]) > 13 for p in PAIRS)
    assert f"{n_long} of 12 pairs" in str(caught[0].message)
    assert all(len(x) <= 12 for ds in (train_ds, val_ds) for x, _ in (ds[i] for i in range(len(ds))))


def test_question_that_leaves_no_room_is_an_error(tmp_path, tok):
    path = write(tmp_path / "pairs.json", PAIRS[:9] + [{"id": 99, "question": "What is " + "item " * 40 + "?",
                                                        "answer": "An item."}])
    with pytest.raises(QADataError, match=r"pairs.json: entry 9 \(id 99\): field 'question' takes \d+ tokens"):
        prepare_custom_data(path, tokenizer=tok, context_length=16, cache_dir=tmp_path / "c")


# -- metrics --------------------------------------------------------------------------------------------
def test_metrics():
    assert exact_match("My name is TinyLLM!", "my name is  tinyllm") == 1.0
    assert exact_match("My name is Tiny", "My name is TinyLLM.") == 0.0
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("a cat", "the cat sat") == pytest.approx(0.4)
    assert token_f1("the the", "the cat") == pytest.approx(0.5)  # a repeated word matches once
    assert token_f1("dog", "the cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0


# -- the snippet, exactly as the README shows it --------------------------------------------------------
def test_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(BAD / "small.json", tmp_path / "data" / "my_dataset.json")
    from tinyllm_lib.data_utils import create_dataloader, prepare_custom_data  # noqa: F811
    train_ds, val_ds, tokenizer = prepare_custom_data(
        json_path="data/my_dataset.json", vocab_size=2000, context_length=128,
        force_retrain_tokenizer=True,  # retrain so BOS/EOS appear in the corpus
    )
    loader = create_dataloader(train_ds, batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == y.shape and x.shape[0] == 8
    assert len(train_ds) == 11 and len(val_ds) == 1
    assert tokenizer.bos_id == 2 and tokenizer.eos_id == 3 and tokenizer.pad_id == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert all(w.startswith("data/") for w in written) and os.getcwd() == str(tmp_path)


# -- the Trainer's view of the pairs (the train command's --data x.json) -------------------------------------
def test_prompt_template_gives_wrap_pairs_prompt(tok):
    template = prompt_template(tok)
    assert template == "<BOS>Question: {question}\nAnswer:"
    for p in PAIRS:
        ids, prompt_len = wrap_pair(p["question"], p["answer"], tok)
        assert tok.encode(template.format(question=p["question"])) == ids[:prompt_len]
    assert tok.encode(template.format(question="a {brace}?"))[0] == tok.bos_id  # the question is not a format string


def test_qa_token_data_batches_are_padded_pairs_with_question_and_padding_ignored(tmp_path, tok):
    path = write(tmp_path / "pairs.json", PAIRS)
    data = qa_token_data(path, context_length=64, tokenizer=tok, cache_dir=tmp_path / "c")
    assert data.tokenizer is tok and len(data.train) == 11 and len(data.val) == 1  # id 10 held out
    assert data.prompt_template == prompt_template(tok)
    x, y = data.get_batch(data.train, 6, 64, torch.Generator().manual_seed(0))
    rows = torch.randint(len(data.train), (6,), generator=torch.Generator().manual_seed(0)).tolist()
    assert x.shape == y.shape == (6, max(len(data.train.examples[i][0]) for i in rows) - 1)
    for b, i in enumerate(rows):
        ids, prompt_len = data.train.examples[i]
        n = len(ids) - 1
        assert x[b, :n].tolist() == ids[:-1] and (x[b, n:] == tok.pad_id).all()
        assert (y[b, : prompt_len - 1] == IGNORE_INDEX).all()  # the question
        assert y[b, prompt_len - 1 : n].tolist() == ids[prompt_len:]  # the answer and its EOS
        assert (y[b, n:] == IGNORE_INDEX).all()  # the padding
    answer_chars = sum(len(r["answer"]) + 1 for r in data.val.records)
    answer_tokens = sum(len(ids) - p for ids, p in data.val.examples)
    assert data.val_chars_per_token == pytest.approx(answer_chars / answer_tokens)


def test_qa_token_data_trains_a_tokenizer_only_without_one(tmp_path):
    path = write(tmp_path / "pairs.json", PAIRS)
    data = qa_token_data(path, context_length=64, vocab_size=120, cache_dir=tmp_path / "c")
    assert data.tokenizer.vocab_size <= 120 and data.tokenizer.bos_id != data.tokenizer.eos_id
    assert all(data.tokenizer.unk_id not in ids for ids, _ in data.train.examples)  # trained on these pairs
    write(path, PAIRS[:9])  # ids 1..9: nothing held out
    with pytest.raises(QADataError, match="pairs.json: no pair is held out for validation"):
        qa_token_data(path, context_length=64, vocab_size=120, cache_dir=tmp_path / "c")


def test_one_token_as_both_bos_and_eos_trains_pairs_that_stop(tmp_path, tok):
    """GPT-2's tokenizer has one <|endoftext|> for both ends: pairs are encoded one by one, so each
    starts and ends with it; a model trained on them answers a training question and stops there."""
    roles = tok.to_dict()
    roles["roles"] = {**roles["roles"], "bos": tok.eos_id}  # one token at both ends
    shared = BPETokenizer.from_dict(roles)
    assert shared.bos_id == shared.eos_id
    path = write(tmp_path / "pairs.json", PAIRS)
    data = qa_token_data(path, context_length=32, tokenizer=shared, cache_dir=tmp_path / "c")
    for (ids, prompt_len), rec in zip(data.train.examples, data.train.records):
        assert ids[0] == ids[-1] == shared.eos_id and shared.eos_id not in ids[1:-1]
        assert shared.decode(ids[prompt_len:-1]).strip() == rec["answer"]
    cfg = GPTConfig.preset("tiny", vocab_size=shared.vocab_size, d_model=48, n_layers=2, n_heads=4, d_ff=96,
                           context_length=32, dropout=0.0)
    trainer = Trainer(cfg, TrainConfig(batch_size=8, max_iters=600, warmup_iters=10, lr=1e-2, min_lr=1e-3,
                                       eval_interval=600, eval_iters=1, log_interval=50, dtype="float32",
                                       out_dir=str(tmp_path / "out")), data, device="cpu")
    trainer.fit()
    model = trainer.raw_model.eval()
    asked = data.train.records[:4]
    prompts = [wrap_pair(r["question"], r["answer"], shared)[0][: p] for r, (_, p) in zip(asked, data.train.examples)]
    answers = [shared.decode(row).strip() for row in generate_ids(model, prompts, 24, eos_id=shared.eos_id)]
    assert answers == [r["answer"] for r in asked]  # each answer complete, and nothing written after its end


def test_the_paraphrase_file_adds_training_pairs_only_for_half_the_held_out_twins():
    base, extra = load_qa_json(QA_JSON), load_qa_json(QA_JSON.with_name("qa_paraphrases.json"))
    ids = [r["id"] for r in base + extra]
    assert len(set(ids)) == len(ids) and not any(is_held_out(r, 0) for r in extra)  # none joins the held-out split
    questions = {normalize_answer(r["question"]) for r in base}
    assert not any(normalize_answer(r["question"]) in questions for r in extra)  # new wordings only
    train_answers = {r["answer"] for r in base if not is_held_out(r, 0)}
    assert {r["answer"] for r in extra} <= train_answers  # each is a twin's answer
    held = [r for r in base if is_held_out(r, 0)]
    rephrased = [r["id"] for r in held if r["answer"] in {e["answer"] for e in extra}]
    assert rephrased == [i for i in range(10, 340, 20)]  # ids 10, 30, ..., 330: the other half is the control


def test_nearest_neighbour_answers_take_the_closest_wording():
    train = [{"question": "Who are you?", "answer": "A"}, {"question": "What is the causal mask?", "answer": "B"},
             {"question": "What is BPE?", "answer": "C"}]
    assert nearest_neighbour_answers(train, ["Who ARE you!", "What does the causal mask do?", "Hello"]) == ["A", "B", "A"]
