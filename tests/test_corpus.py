"""Finding, downloading and verifying corpora (tinyllm_lib.corpus), without touching the network."""

import hashlib
import urllib.error
from pathlib import Path

import pytest

from tinyllm_lib import corpus

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture
def fake_entry(tmp_path: Path, monkeypatch) -> corpus.DataFile:
    """A corpus entry served from a local file:// URL, with the data folder redirected to tmp."""
    source = tmp_path / "served" / "tiny.txt"
    source.parent.mkdir()
    source.write_bytes(TEXT)
    entry = corpus.DataFile("tiny.txt", source.as_uri(), hashlib.sha256(TEXT).hexdigest(), len(TEXT), "test")
    monkeypatch.setitem(corpus.DATA_FILES, "tiny", entry)
    monkeypatch.setattr(corpus, "DATA_DIR", tmp_path / "data")
    monkeypatch.delenv(corpus.ENV_VAR, raising=False)
    return entry


def test_downloads_verifies_and_then_reuses(fake_entry, tmp_path):
    assert corpus.load_corpus("tiny") == TEXT.decode()
    local = tmp_path / "data" / "tiny.txt"
    assert local.read_bytes() == TEXT
    Path(fake_entry.url.removeprefix("file://")).unlink()  # the source is gone: the local copy is used
    assert corpus.load_corpus("tiny") == TEXT.decode()
    assert [p.name for p in local.parent.iterdir()] == ["tiny.txt"]  # no temporary file left behind


def test_env_var_folder_comes_first(fake_entry, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.txt").write_bytes(TEXT)
    monkeypatch.setenv(corpus.ENV_VAR, str(shared))
    assert corpus.data_path("tiny") == shared / "tiny.txt"
    assert not (tmp_path / "data").exists()  # nothing was downloaded


def test_corrupted_file_reports_expected_and_actual_sha256(fake_entry, tmp_path):
    bad = tmp_path / "data" / "tiny.txt"
    bad.parent.mkdir()
    bad.write_bytes(TEXT + b"tampered")
    with pytest.raises(corpus.DataFileError) as err:
        corpus.load_corpus("tiny")
    message = str(err.value)
    assert str(bad) in message
    assert f"expected sha256 {fake_entry.sha256}" in message
    assert f"actual   sha256 {hashlib.sha256(TEXT + b'tampered').hexdigest()}" in message


def test_corrupted_download_is_not_kept(fake_entry, tmp_path, monkeypatch):
    monkeypatch.setitem(corpus.DATA_FILES, "tiny", corpus.DataFile(
        fake_entry.filename, fake_entry.url, "0" * 64, fake_entry.size, "wrong checksum"))
    with pytest.raises(corpus.DataFileError, match="checksum mismatch"):
        corpus.load_corpus("tiny")
    assert list((tmp_path / "data").iterdir()) == []


def test_no_file_and_no_network_says_where_to_put_it(fake_entry, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpus.urllib.request, "urlopen", offline)
    with pytest.raises(corpus.DataFileError) as err:
        corpus.load_corpus("tiny")
    message = str(err.value)
    assert str(tmp_path / "data" / "tiny.txt") in message
    assert corpus.ENV_VAR in message and fake_entry.url in message


def test_unknown_name_lists_known_corpora():
    with pytest.raises(KeyError, match="tinyshakespeare"):
        corpus.data_path("shakespeare-complete")


def test_real_tinyshakespeare_when_available():
    try:
        path = corpus.data_path("tinyshakespeare", download=False)
    except corpus.DataFileError as exc:
        pytest.skip(f"Tiny Shakespeare is not available offline here: {exc}")
    text = path.read_text(encoding="utf-8")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


# ---- the King James Bible: a corpus whose source changes its header -------------------------------------

def test_kjv_is_registered_with_its_source_and_markers():
    entry = corpus.DATA_FILES["kjv"]
    assert entry.filename == "kjv.txt" and "gutenberg.org" in entry.url and entry.markers


def test_kjv_found_offline_through_the_env_var(monkeypatch, tmp_path):
    shared = Path(__import__("os").environ.get(corpus.ENV_VAR, "/nonexistent"))
    if not (shared / "kjv.txt").is_file():
        pytest.skip(f"no offline copy of kjv.txt in ${corpus.ENV_VAR}")
    monkeypatch.setattr(corpus, "DATA_DIR", tmp_path / "data")  # not in the repository's data/
    monkeypatch.setattr(corpus.urllib.request, "urlopen", lambda *a, **k: pytest.fail("went to the network"))
    assert corpus.data_path("kjv", download=False) == shared / "kjv.txt"
    text = corpus.load_corpus("kjv")
    assert len(text) > 4_000_000 and "In the beginning God created the heaven and the earth." in text[:200]


def test_kjv_missing_and_offline_is_refused_clearly(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpus, "DATA_DIR", tmp_path / "data")
    monkeypatch.setenv(corpus.ENV_VAR, str(tmp_path / "empty"))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", offline)
    for download in (True, False):
        with pytest.raises(corpus.DataFileError) as err:
            corpus.data_path("kjv", download=download)
        message = str(err.value)
        assert "kjv.txt" in message and corpus.ENV_VAR in message
        assert corpus.DATA_FILES["kjv"].url in message and str(tmp_path / "empty" / "kjv.txt") in message


GUTENBERG = ("The Project Gutenberg eBook of The King James Bible\nlicence text\n"
             "*** START OF THE PROJECT GUTENBERG EBOOK 10 ***\n"
             "1:1 In the beginning God created the heaven and the earth.\n" + "1:2 And the earth was.\n" * 40 +
             "22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n"
             "*** END OF THE PROJECT GUTENBERG EBOOK 10 ***\nmore licence\n")


def test_a_fresh_gutenberg_download_is_accepted_by_its_verses_and_stripped(monkeypatch, tmp_path):
    """Gutenberg's header changes, so its sha256 cannot be pinned: the first and last verses are checked."""
    kjv = corpus.DATA_FILES["kjv"]
    monkeypatch.setitem(corpus.DATA_FILES, "kjv", corpus.DataFile(
        kjv.filename, kjv.url, kjv.sha256, len(GUTENBERG.encode()), kjv.about, kjv.markers))
    monkeypatch.setattr(corpus, "DATA_DIR", tmp_path / "data")
    monkeypatch.delenv(corpus.ENV_VAR, raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kjv.txt").write_text(GUTENBERG, encoding="utf-8")
    text = corpus.load_corpus("kjv")
    assert text.startswith("1:1 In the beginning") and text.rstrip().endswith("Amen.")
    assert "licence" not in text
    (tmp_path / "data" / "kjv.txt").write_text(GUTENBERG.replace("Amen.", "Amen"), encoding="utf-8")
    with pytest.raises(corpus.DataFileError, match="checksum mismatch"):  # not the Bible we expect
        corpus.load_corpus("kjv")


def test_strip_gutenberg_leaves_a_plain_text_alone():
    assert corpus.strip_gutenberg("Genesis 1\n\n  1 In the beginning") == "Genesis 1\n\n  1 In the beginning"
