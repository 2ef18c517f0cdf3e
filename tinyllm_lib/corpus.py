# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""Find, download and verify the text corpora the course trains on.

    >>> text = load_corpus("tinyshakespeare")
    >>> text[:14]
    'First Citizen:'

Where a file is looked for, in order:
  1. `$TINYLLM_DATA_DIR/<file>` (a folder you point at, e.g. a shared or offline copy);
  2. `data/<file>` in the repository (where downloads land; git-ignored);
  3. otherwise it is downloaded from its public URL into `data/`, with a progress bar.
Every file is checked against its sha256 before it is used. One source cannot be pinned that way:
Project Gutenberg edits the licence header of its books from time to time, so the King James Bible
(`load_corpus("kjv")`) is accepted either with the sha256 of the known copy or, downloaded afresh,
when it holds the first and the last verse of the Bible; its Gutenberg header and footer are removed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
ENV_VAR = "TINYLLM_DATA_DIR"


@dataclass(frozen=True)
class DataFile:
    filename: str
    url: str
    sha256: str
    size: int
    about: str
    # A source whose wrapper changes (Project Gutenberg's header): a file with another sha256 is still
    # accepted if it is at least 90% of `size` bytes and contains every one of these strings.
    markers: tuple[str, ...] = ()


_CS336 = "https://raw.githubusercontent.com/stanford-cs336/assignment1-basics/main/tests/fixtures"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"

# One entry per file: adding a corpus is adding a line here.
DATA_FILES: dict[str, DataFile] = {
    f.filename.removesuffix(".txt"): f
    for f in [
        DataFile(
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            1_115_394,
            "Tiny Shakespeare: ~40k lines of plays, 65 distinct ASCII characters",
        ),
        DataFile(
            "tinystories_sample.txt",
            f"{_CS336}/tinystories_sample.txt",
            "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43",
            3_794,
            "a few TinyStories stories separated by <|endoftext|>",
        ),
        DataFile(
            "corpus.en",
            f"{_CS336}/corpus.en",
            "617f603a49eeb8a20de9d922d11a5d70e1d362327b9e91718bea2cdcdf9816ff",
            133_027,
            "a small English web-text sample with some non-ASCII characters",
        ),
        DataFile(
            "gpt2_encoder.json",
            f"{_GPT2}/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            1_042_301,
            "GPT-2's byte-level BPE vocabulary (token -> id)",
        ),
        DataFile(
            "gpt2_vocab.bpe",
            f"{_GPT2}/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            456_318,
            "GPT-2's 50,000 BPE merges",
        ),
        DataFile(
            "kjv.txt",
            "https://www.gutenberg.org/cache/epub/10/pg10.txt",  # Project Gutenberg eBook #10
            "82fa5f3788c6a9a010fb128a0f0bf588984b5888a82058520620eded59b033ea",  # Debian's bible-kjv 4.38 text
            4_298_239,
            "the King James Bible (public domain): 66 books, about 4.3 MB of plain English",
            markers=("In the beginning God created the heaven and the earth.",
                     "The grace of our Lord Jesus Christ be with you all. Amen."),
        ),
    ]
}


class DataFileError(RuntimeError):
    """A data file is missing, cannot be downloaded, or fails its checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(name: str) -> DataFile:
    if name not in DATA_FILES:
        raise KeyError(f"unknown data file {name!r}; known: {', '.join(sorted(DATA_FILES))}")
    return DATA_FILES[name]


def _has_markers(path: Path, entry: DataFile) -> bool:
    if not entry.markers or path.stat().st_size < 0.9 * entry.size:
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    return all(marker in text for marker in entry.markers)


def _verify(path: Path, entry: DataFile) -> Path:
    actual = sha256_of(path)
    if actual != entry.sha256 and not _has_markers(path, entry):
        raise DataFileError(
            f"{path}: checksum mismatch for {entry.filename}\n"
            f"  expected sha256 {entry.sha256}\n"
            f"  actual   sha256 {actual}\n"
            f"Delete the file and run again to re-download it, or copy a good one from {entry.url}"
        )
    return path


def _download(entry: DataFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the destination, then rename: an interrupted download never looks complete.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or entry.size)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {entry.filename}") as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        _verify(tmp, entry)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def data_path(name: str, download: bool = True) -> Path:
    """Path of a verified local copy of `name` (a key of DATA_FILES), downloading it if needed.

    >>> data_path("tinyshakespeare").name
    'tinyshakespeare.txt'
    """
    entry = _entry(name)
    places = []
    if os.environ.get(ENV_VAR):
        places.append(Path(os.environ[ENV_VAR]).expanduser() / entry.filename)
    places.append(DATA_DIR / entry.filename)
    for place in places:
        if place.is_file():
            return _verify(place, entry)
    dest = DATA_DIR / entry.filename
    if not download:
        raise DataFileError(
            f"{entry.filename} not found (looked in: {', '.join(map(str, places))}).\n"
            f"Download it from {entry.url} into {DATA_DIR},\n"
            f"or copy it to a folder of your choice and set {ENV_VAR} to that folder."
        )
    try:
        _download(entry, dest)
    except OSError as exc:  # URLError, timeouts and DNS failures are all OSErrors
        raise DataFileError(
            f"could not download {entry.filename} from {entry.url} ({exc}).\n"
            f"Without a network, copy the file by hand to {dest}\n"
            f"or to a folder of your choice and set {ENV_VAR} to that folder.\n"
            f"Looked in: {', '.join(map(str, places))}. Expected sha256 {entry.sha256}."
        ) from exc
    return dest


def strip_gutenberg(text: str) -> str:
    r"""The book without Project Gutenberg's licence header and footer (a text without them is unchanged).

    >>> strip_gutenberg("licence\n*** START OF THE PROJECT GUTENBERG EBOOK 10 ***\nbook\n*** END OF THE PROJECT")
    'book\n'
    """
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start == -1:
        return text
    body = text[text.index("\n", start) + 1:]
    return body[:body.find("*** END OF")] if end != -1 else body


def load_corpus(name: str) -> str:
    """The whole text of a corpus, e.g. `load_corpus("tinyshakespeare")` -> 1,115,394 characters."""
    text = data_path(name).read_text(encoding="utf-8")
    return strip_gutenberg(text) if _entry(name).markers else text
