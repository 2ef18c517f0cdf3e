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
