#!/usr/bin/env python
"""Tokenize a file larger than we want in memory: streaming, in parallel workers, into the token file.

Builds a file of --mb megabytes (Tiny Shakespeare repeated) in a temporary folder, trains a 512-token
character-flavour BPE on Tiny Shakespeare, then runs `encode_file` (tinyllm_lib.data) with 1 and with
2 workers, each in a fresh child process so that its peak memory is measured on its own
(peak RSS of the process and its workers, from getrusage). Prints every figure, measured in this run:

  1. 2 workers against 1 worker (the named peer), wall time       target: >= 1.6x faster
  2. peak RSS of each run against a child that only imports the library,
     and the size of the file                                      target: < baseline + 200 MB
                                                                   (the file alone is --mb MB of text;
                                                                   one Python list of its ids, 8x more)
  3. the two token files are identical, and equal to one `tokenizer.encode` of the whole text
     (checked on the first 4 MB, the part one encode can hold cheaply)

    python bench/encode.py               # 50 MB: a few minutes on 2 cores
    python bench/encode.py --mb 10

Exit status 1 if a target is missed. On a machine busy with other work, the speed-up is lower.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyllm_lib.corpus import load_corpus
from tinyllm_lib.data import token_dtype
from tinyllm_lib.tokenizer import BPETokenizer

CHILD = """
import resource, sys, time
from pathlib import Path
from tinyllm_lib.data import encode_file
from tinyllm_lib.tokenizer import BPETokenizer
src, tok_path, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = BPETokenizer.load(tok_path)
if workers:
    start = time.perf_counter()
    encode_file(Path(src), tok, Path(out), workers=workers)
    print(time.perf_counter() - start)
else:
    print(0.0)  # the baseline: imports only
"""


def run_child(*args: str) -> tuple[float, float]:
    """(seconds the encode took, peak RSS in MB of the child and its workers)."""
    # A fresh interpreter per measurement: RUSAGE_CHILDREN keeps the maximum over every child so far,
    # so each figure is read by a small wrapper that runs one child and reports its own maximum.
    wrapper = (
        "import resource, subprocess, sys\n"
        f"out = subprocess.run([sys.executable, '-c', {CHILD!r}, *sys.argv[1:]], check=True,"
        " capture_output=True, text=True).stdout\n"
        "print(out.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], check=True, capture_output=True, text=True).stdout
    seconds, max_kb = out.split()
    return float(seconds), int(max_kb) / 1024  # Linux reports KB


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the test file in MB")
    args = parser.parse_args(argv)
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss == 0:
        print("this system does not report peak memory (ru_maxrss)")
    text = load_corpus("tinyshakespeare")
    with tempfile.TemporaryDirectory(prefix="tinyllm-bench-encode-") as tmp:
        tmp = Path(tmp)
        big = tmp / "big.txt"
        copies = max(1, round(args.mb * 2**20 / len(text.encode("utf-8"))))
        with open(big, "w", encoding="utf-8") as f:
            for _ in range(copies):
                f.write(text)
        size_mb = big.stat().st_size / 2**20
        tok = BPETokenizer().train(text, 512)
        tok.save(tmp / "tok.json")
        print(f"file: {size_mb:.1f} MB ({copies} copies of Tiny Shakespeare); tokenizer: 512 tokens, character flavour")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")

        _, base_mb = run_child(str(big), str(tmp / "tok.json"), str(tmp / "none.bin"), "0")
        results = {}
        for workers in (1, 2):
            results[workers] = run_child(str(big), str(tmp / "tok.json"), str(tmp / f"w{workers}.bin"), str(workers))
            seconds, peak = results[workers]
            print(f"{workers} worker{'s' if workers > 1 else ' '}: {seconds:6.1f} s, {size_mb / seconds:5.2f} MB/s, "
                  f"peak RSS {peak:6.0f} MB")
        ratio = results[1][0] / results[2][0]
        ok_speed = ratio >= 1.6
        print(f"\n1. 2 workers vs 1 worker: {ratio:.2f}x faster (target >= 1.6x)   {verdict(ok_speed)}")
        bound = base_mb + 200
        peak = max(r[1] for r in results.values())
        ok_mem = peak < bound
        print(f"2. peak RSS {peak:.0f} MB vs import-only baseline {base_mb:.0f} MB + 200 = {bound:.0f} MB "
              f"(file {size_mb:.0f} MB)   {verdict(ok_mem)}")
        dtype = token_dtype(tok.vocab_size)
        one, two = (np.fromfile(tmp / f"w{w}.bin", dtype=dtype) for w in (1, 2))
        head = text * max(1, round(4 * 2**20 / len(text)))
        reference = tok.encode(head)
        same = np.array_equal(one, two) and one[: len(reference)].tolist() == reference
        print(f"3. 1-worker and 2-worker files identical ({len(one):,} tokens), equal to encode on the first "
              f"{len(head) / 2**20:.0f} MB   {verdict(same)}")
    ok = ok_speed and ok_mem and same
    print("\nall targets met" if ok else "\nsome targets MISSED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
