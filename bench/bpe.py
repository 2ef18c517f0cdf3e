#!/usr/bin/env python
"""Race our BPE tokenizer against Hugging Face `tokenizers` and `tiktoken` on Tiny Shakespeare.

Prints every figure and every ratio, measured in this one run on this machine:
  1. training to vocab 10,000, byte and character flavour, against HF's BPE trainer with the
     matching pre-tokenizer (ByteLevel / Metaspace)               target: ours <= 3x HF's time
  2. the naive trainer (recount every pair after each merge) against the fast one, to vocab 512,
     both from the same word counts and timed the same way (best of --repeat runs each)
                                                                   target: fast >= 10x faster
     and, for scale, the chapter's naive loop over every word occurrence against the naive loop
     over word counts, on the first 30 merges (one run each)
  3. encoding the whole corpus (a cold cache), beside HF and tiktoken's "gpt2"
                                                                   target: >= 1 MB/s
  4. compression (UTF-8 bytes per token) at vocab 2,000 and 10,000, beside HF's

    python bench/bpe.py                  # about a minute, most of it the naive trainers
    python bench/bpe.py --naive-vocab 300   # shorter naive runs

Exit status 1 if a target is missed. Needs the dev extras (tokenizers, tiktoken).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

from tinyllm_lib import bpe
from tinyllm_lib.corpus import data_path, load_corpus
from tinyllm_lib.tokenizer import GPT2_SPLIT, SPECIALS, BPETokenizer

WALK_MERGES = 30  # merges of the occurrence-walking naive loop (about 0.2 s each)


def timed_runs(fn, *args, repeat: int = 1):
    """(wall time in seconds of each of `repeat` runs of `fn(*args)`, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return times, result


def timed(fn, *args, repeat: int = 1):
    """(best wall time in seconds of `fn(*args)` over `repeat` runs, the last result)."""
    times, result = timed_runs(fn, *args, repeat=repeat)
    return min(times), result


def naive_from_counts(words: dict[tuple[int, ...], int], tokens: list, num_merges: int) -> list[tuple[int, int]]:
    """The naive trainer given what the fast one gets: distinct words and their counts.

    `bpe.train_merges_naive` with a dict instead of a list of occurrences: the same recount of every
    pair after each merge and the same tie-break, so the race measures the fast trainer's bookkeeping
    alone, not the counting of repeated words.
    """
    tokens = list(tokens)
    merges = []
    for _ in range(num_merges):
        counts = bpe.count_pairs(words)
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], tokens[p[0]], tokens[p[1]], -p[0], -p[1]))
        new = len(tokens)
        tokens.append(tokens[best[0]] + tokens[best[1]])
        merges.append(best)
        words = {bpe.merge(w, best, new): f for w, f in words.items()}
    return merges


def hf_train(text: str, vocab_size: int, byte_level: bool):
    """HF's BPE trainer with the pre-tokenizer of the same flavour, on the same text, line by line."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<UNK>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tok


def tiktoken_gpt2():
    """tiktoken's "gpt2" encoding, offline, from the course's copies of GPT-2's two files."""
    import tiktoken

    cache = tempfile.mkdtemp(prefix="tiktoken_")
    shutil.copy(data_path("gpt2_vocab.bpe"), os.path.join(cache, "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"))
    shutil.copy(data_path("gpt2_encoder.json"), os.path.join(cache, "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"))
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return tiktoken.get_encoding("gpt2")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--naive-vocab", type=int, default=512, help="vocab size of the naive-vs-fast race")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each trainer in the race (best counts)")
    args = parser.parse_args(argv)

    text = load_corpus("tinyshakespeare")
    n_bytes = len(text.encode("utf-8"))
    print(f"Tiny Shakespeare: {len(text):,} characters, {n_bytes:,} bytes; {os.cpu_count()} CPU cores")
    ok = True

    print("\n1. train to vocab 10,000 (ours: one process; HF: its default threads)")
    ours, hf = {}, {}
    for byte_level, hf_name in ((True, "ByteLevel"), (False, "Metaspace")):
        flavour = "byte" if byte_level else "char"
        t_ours, ours[flavour] = timed(BPETokenizer(byte_level=byte_level).train, text, 10_000)
        t_hf, hf[flavour] = timed(hf_train, text, 10_000, byte_level)
        ratio = t_ours / t_hf
        ok &= ratio <= 3
        print(f"   {flavour} flavour: ours {t_ours:6.2f} s | HF BpeTrainer + {hf_name:9} {t_hf:6.2f} s | "
              f"ours/HF = {ratio:4.2f}x (target <= 3x) {verdict(ratio <= 3)}")

    print(f"\n2. naive vs fast trainer, byte flavour, to vocab {args.naive_vocab}")
    base = [s.encode() for s in SPECIALS] + [bytes([b]) for b in range(256)]
    n_merges = args.naive_vocab - len(base)
    occurrences = [tuple(len(SPECIALS) + b for b in w.encode("utf-8")) for w in GPT2_SPLIT.findall(text)]
    word_counts = dict(Counter(occurrences))  # the input of both trainers in the race, made once
    print(f"   input: {len(occurrences):,} words, {len(word_counts):,} distinct, with their counts "
          f"(best of {args.repeat} runs each)")
    fast_times, fast_merges = timed_runs(bpe.train_merges, word_counts, base, n_merges, repeat=args.repeat)
    naive_times, naive_merges = timed_runs(naive_from_counts, word_counts, base, n_merges, repeat=args.repeat)
    t_fast, t_naive = min(fast_times), min(naive_times)
    same = naive_merges == fast_merges == list(BPETokenizer(byte_level=True).train(text, args.naive_vocab).merges)
    speedup = t_naive / t_fast
    ok &= same and speedup >= 10
    print(f"   naive (word counts) {t_naive:6.2f} s | fast (word counts) {t_fast:5.3f} s | fast is {speedup:4.0f}x "
          f"faster (target >= 10x) {verdict(speedup >= 10)} | same {n_merges} merges: {same}")
    # What counting distinct words once buys: the chapter's naive loop walks every occurrence. Each
    # naive merge costs about the same, so a few merges show the factor (all 252 take minutes).
    k = min(WALK_MERGES, n_merges)
    t_walk, walk_merges = timed(bpe.train_merges_naive, occurrences, base, k)
    t_counted, counted_merges = timed(naive_from_counts, word_counts, base, k)
    print(f"   for scale, first {k} merges, one run each: the chapter's naive loop over all {len(occurrences):,} "
          f"occurrences {t_walk:5.2f} s | over word counts {t_counted:5.2f} s | {t_walk / t_counted:3.0f}x "
          f"| same merges: {walk_merges == counted_merges == fast_merges[:k]}")
    ok &= walk_merges == counted_merges == fast_merges[:k]

    print("\n3. encode the whole corpus (cold cache)")
    gpt2 = tiktoken_gpt2()
    t_encode = {}
    for flavour in ("byte", "char"):
        fresh = BPETokenizer.from_dict(ours[flavour].to_dict())  # an empty encode cache
        t_encode[flavour], ids = timed(fresh.encode, text)
        mbps = n_bytes / t_encode[flavour] / 1e6
        exact = fresh.decode(ids) == text
        ok &= mbps >= 1 and exact
        print(f"   {f'ours ({flavour}, 10k)':27} {t_encode[flavour]:5.2f} s  {mbps:5.2f} MB/s (target >= 1 MB/s) "
              f"{verdict(mbps >= 1)} | round trip exact: {exact}")
    t_hf_enc, _ = timed(lambda: hf["byte"].encode(text))
    t_tt, _ = timed(lambda: gpt2.encode(text, allowed_special="all"))
    t_ours_gpt2, ours_gpt2_ids = timed(
        lambda: BPETokenizer.from_gpt2(data_path("gpt2_encoder.json"), data_path("gpt2_vocab.bpe")).encode(text))
    same_gpt2 = ours_gpt2_ids == gpt2.encode(text, allowed_special="all")
    print(f"   {'HF tokenizers (byte, 10k)':27} {t_hf_enc:5.2f} s  {n_bytes / t_hf_enc / 1e6:5.2f} MB/s")
    print(f"   {'tiktoken gpt2':27} {t_tt:5.2f} s  {n_bytes / t_tt / 1e6:5.2f} MB/s")
    print(f"   ours, GPT-2 merges (load + encode) {t_ours_gpt2:5.2f} s | identical to tiktoken: {same_gpt2}")
    ok &= same_gpt2
    t_ours_byte = t_encode["byte"]  # encode only, cold cache: comparable with HF's and tiktoken's times
    print(f"   ratios: ours/HF time = {t_ours_byte / t_hf_enc:4.2f}x, ours/tiktoken time = {t_ours_byte / t_tt:4.2f}x")

    print("\n4. compression on the whole corpus: UTF-8 bytes per token (higher = fewer tokens)")
    for vocab in (2_000, 10_000):
        row = []
        for byte_level, flavour in ((True, "byte"), (False, "char")):
            tok = ours[flavour] if vocab == 10_000 else BPETokenizer(byte_level=byte_level).train(text, vocab)
            theirs = hf[flavour] if vocab == 10_000 else hf_train(text, vocab, byte_level)
            b_ours = n_bytes / len(tok.encode(text))
            b_hf = n_bytes / len(theirs.encode(text).ids)
            row.append(f"{flavour}: ours {b_ours:4.2f}, HF {b_hf:4.2f} (ours/HF {b_ours / b_hf:4.2f}x)")
        print(f"   vocab {vocab:6,}  " + " | ".join(row))
    print(f"   GPT-2 (50,257 tokens, trained on web text): {n_bytes / len(ours_gpt2_ids):4.2f}")

    print("\nall targets met" if ok else "\nsome targets MISSED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
