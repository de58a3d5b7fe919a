"""The offline sentiment tasks: human-rated sentences shipped in the source distribution of PyPI package
vaderSentiment 3.3.2 (MIT; Hutto & Gilbert, ICWSM 2014).

``fetch`` downloads that sdist from the package index, checks it against a pinned sha256, reads the four
ground-truth files (movie sentences from Rotten Tomatoes, the source of SST; tweets; Amazon reviews; NYT
editorials) from the archive in memory and writes deterministic train/validation splits to the cache.
Binary tasks keep sentences with |rating| > 0.5 (label 1 when positive); the ``-rating`` tasks regress the
mean rating (-4..+4) of every sentence.

Why not ``pip download``: the data is only in the sdist (the wheel has the lexicons, not the rated
sentences), and pip cannot hand over an sdist without preparing its metadata, which runs the package's
``setup.py`` (``--no-build-isolation`` changes where, not whether). So nothing of the package is run: pip
is asked only for its settings (``pip config list``: the files and ``PIP_*`` variables pip itself reads, a
``[download]`` section over ``[global]``, variables over both), then the PEP 503/691 simple page
``<index>/vadersentiment/`` of index-url (default https://pypi.org/simple) and of each extra-index-url is
read with urllib (``file://`` indexes included), as are find-links folders and pages, and the first
``vaderSentiment-3.3.2.tar.gz`` found is downloaded into memory. It must hash to ``SDIST_SHA256`` (the
sha256 PyPI publishes for that file); any other file is refused before anything is written.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import http.client
import io
import json
import os
import random
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from .artifacts import atomic_write_text
from .errors import DataError, Problem

PACKAGE = "vaderSentiment==3.3.2"
PROJECT = "vadersentiment"  # the PEP 503 normalised name: the simple page's folder
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
DEFAULT_INDEX = "https://pypi.org/simple"
MAX_DOWNLOAD = 64 << 20  # the sdist is 2.4 MB; a larger answer is not it
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAIN_FILES = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
VALIDATION_SHARE = 0.2
SPLIT_SEED = 2014  # fixed: the splits are part of the task definition, not of a run
NEUTRAL_BAND = 0.5
FORMAT_VERSION = 2


def cache_dir(override: str | None = None) -> Path:
    """Where prepared data lives: task.data_dir, else $ACTLORA_CACHE, else ~/.cache/actlora."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("ACTLORA_CACHE", Path.home() / ".cache" / "actlora")) / "sentiment"


def is_prepared(root: Path) -> bool:
    marker = root / "manifest.json"
    return marker.is_file() and json.loads(marker.read_text()).get("format_version") == FORMAT_VERSION


def parse_ground_truth(raw: bytes) -> list[tuple[str, float, str]]:
    """Rows ``id<TAB>mean rating<TAB>text`` (CRLF line ends, a BOM in one file) -> (id, rating, text)."""
    rows = []
    for line in raw.decode("utf-8-sig", errors="replace").splitlines():
        line = line.strip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        rows.append((parts[0].strip(), float(parts[1]), parts[2].strip()))
    return rows


def split_rows(rows: list, seed: int = SPLIT_SEED, share: float = VALIDATION_SHARE) -> dict[str, list]:
    """A seeded, deterministic train/validation split of every sentence (binary tasks filter afterwards,
    so a sentence is in the same split for the binary and the rating task). Each split stays in shuffled
    order: the source files are sorted by sentiment, and ``max_*_examples`` takes the first N."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(len(rows) * share)
    return {"train": [rows[i] for i in order[n_val:]], "validation": [rows[i] for i in order[:n_val]]}


def prepare_from_sdist(sdist: Path, root: Path) -> dict:
    """Read the ground-truth files from the sdist in memory and write ``<root>/<domain>/<split>.jsonl``.
    Nothing of the archive is extracted to disk, and nothing is written unless every file was read."""
    try:
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.isfile() and m.name.endswith(INNER_ARCHIVE))
            inner_bytes = outer.extractfile(member).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            by_name = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
            raw = {domain: inner.extractfile(by_name[name]).read() for domain, name in DOMAIN_FILES.items()}
    except (tarfile.TarError, StopIteration, KeyError, OSError) as exc:
        raise DataError(
            Problem(
                str(sdist), f"not the expected vaderSentiment sdist ({exc!r})", "re-run `actlora data fetch`"
            )
        ) from None
    counts: dict[str, dict[str, int]] = {}
    for domain, data in raw.items():
        rows = parse_ground_truth(data)
        counts[domain] = {}
        for split, part in split_rows(rows).items():
            lines = [
                json.dumps(
                    {
                        "id": rid,
                        "text": text,
                        "rating": rating,
                        "label": (1 if rating > 0 else 0) if abs(rating) > NEUTRAL_BAND else None,
                    }
                )
                for rid, rating, text in part
            ]
            out = root / domain / f"{split}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, "\n".join(lines) + "\n")
            counts[domain][split] = len(part)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": PACKAGE,
        "split_seed": SPLIT_SEED,
        "counts": counts,
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


# --- finding and downloading the sdist without pip running it -----------------------------------------------


def pip_settings() -> dict[str, str]:
    """pip's effective settings for ``pip download``: ``[global]``, then ``[download]``, then ``PIP_*``
    variables, each over the one before (pip's own order). Without a working pip, the variables alone."""
    layers: dict[str, dict[str, str]] = {"global": {}, "download": {}, ":env:": {}}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
        )
        listing = proc.stdout if proc.returncode == 0 else ""
    except OSError:
        listing = ""
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or section not in layers:
            continue
        try:
            layers[section][name] = str(ast.literal_eval(value))  # pip prints values with %r
        except (ValueError, SyntaxError):
            layers[section][name] = value.strip("'\"")
    if not listing:
        layers[":env:"] = {
            k[4:].lower().replace("_", "-"): v for k, v in os.environ.items() if k.startswith("PIP_")
        }
    return {**layers["global"], **layers["download"], **layers[":env:"]}


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on", "y")


def _redact(url: str) -> str:
    """A URL fit for a message: without the password of ``user:password@host``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _Links(HTMLParser):
    """The ``<a href>`` targets of a PEP 503 page or find-links page, resolved against ``<base href>``."""

    def __init__(self, base: str):
        super().__init__()
        self.base, self.hrefs = base, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base" and attrs.get("href"):
            self.base = urllib.parse.urljoin(self.base, attrs["href"])
        elif tag == "a" and attrs.get("href"):
            self.hrefs.append(urllib.parse.urljoin(self.base, attrs["href"]))


def page_links(body: bytes, content_type: str, url: str) -> list[tuple[str, str, str | None]]:
    """(file name, URL, sha256 the page publishes or None) for every file a simple page lists: PEP 691 JSON
    or PEP 503 HTML."""
    if "json" in content_type:
        doc = json.loads(body)
        links = []
        for f in (doc.get("files") if isinstance(doc, dict) else None) or []:
            if isinstance(f, dict) and "filename" in f and "url" in f:
                hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
                links.append(
                    (
                        str(f["filename"]),
                        urllib.parse.urljoin(url, str(f["url"])),
                        str(hashes.get("sha256") or "").lower() or None,
                    )
                )
        return links
    parser = _Links(url)
    parser.feed(body.decode("utf-8", errors="replace"))
    links = []
    for href in parser.hrefs:
        target, _, fragment = href.partition("#")
        name = urllib.parse.unquote(urllib.parse.urlsplit(target).path.rsplit("/", 1)[-1])
        algo, _, digest = fragment.partition("=")
        links.append((name, target, digest.lower() if algo == "sha256" and digest else None))
    return links


class _Fetcher:
    """urllib with pip's cert, proxy and timeout settings, and the credentials of ``user:pw@host`` URLs
    (sent only to that host, never along a redirect)."""

    def __init__(self, settings: dict[str, str]):
        cert = settings.get("cert")
        context = ssl.create_default_context(cafile=cert if cert and os.path.isfile(cert) else None)
        handlers: list = [urllib.request.HTTPSHandler(context=context)]
        if proxy := settings.get("proxy"):
            handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
        self.opener = urllib.request.build_opener(*handlers)
        try:
            self.timeout = float(settings.get("timeout") or settings.get("default-timeout") or 60)
        except ValueError:
            self.timeout = 60.0
        self.auth: dict[str, str] = {}

    def get(self, url: str, accept: str = "*/*") -> tuple[bytes, str, str]:
        """(body, content type, final URL); a local folder reads as its ``index.html``."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = Path(urllib.request.url2pathname(parts.path))
            path = path / "index.html" if path.is_dir() else path
            with path.open("rb") as handle:
                body = handle.read(MAX_DOWNLOAD + 1)
            kind = "application/json" if path.suffix == ".json" else "text/html"
        else:
            if parts.username is not None:
                token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
                self.auth[parts.hostname] = "Basic " + base64.b64encode(token.encode()).decode()
                url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            request = urllib.request.Request(url, headers={"Accept": accept})
            if parts.hostname in self.auth:
                request.add_unredirected_header("Authorization", self.auth[parts.hostname])
            with self.opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_DOWNLOAD + 1)
                kind, url = response.headers.get_content_type(), response.geturl()
        if len(body) > MAX_DOWNLOAD:
            raise OSError(f"more than {MAX_DOWNLOAD >> 20} MiB")
        return body, kind, url


def _sources(settings: dict[str, str]) -> list[tuple[str, str]]:
    """(kind, location) to look in, in pip's order: the simple pages of index-url (unless no-index) and of
    each extra-index-url, then find-links, each a local folder (its files) or a page (its links)."""
    sources = []
    if not _true(settings.get("no-index")):
        indexes = [settings.get("index-url") or DEFAULT_INDEX, *settings.get("extra-index-url", "").split()]
        sources += [("page", index.rstrip("/") + f"/{PROJECT}/") for index in indexes]
    for location in settings.get("find-links", "").split():
        if location.startswith("file:"):
            location = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
        if "://" in location:
            sources.append(("page", location))
        else:
            path = Path(location).expanduser().resolve()
            sources.append(("folder", str(path)) if path.is_dir() else ("page", path.as_uri()))
    return sources


def download_sdist(settings: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The bytes of ``SDIST_NAME`` from the first of pip's indexes and find-links that lists it, and where
    they came from. A source that cannot be read is skipped; a listing whose published sha256 is not the
    pinned one stops the search (a wrong file is a finding, not a miss) without downloading it."""
    settings = pip_settings() if settings is None else settings
    fetcher, tried = _Fetcher(settings), []
    accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
    for kind, location in _sources(settings):
        try:
            if kind == "folder":
                links = [(f.name, f.as_uri(), None) for f in Path(location).iterdir()]
            else:
                links = page_links(*fetcher.get(location, accept))
        except (OSError, ValueError, http.client.HTTPException) as exc:  # unreachable, no such page: next
            tried.append(f"{_redact(location)} ({getattr(exc, 'reason', exc)})")
            continue
        match = next((link for link in links if link[0].lower() == SDIST_NAME.lower()), None)
        if match is None:
            tried.append(f"{_redact(location)} (no {SDIST_NAME})")
            continue
        _, url, published = match
        if published and published != SDIST_SHA256:
            raise DataError(
                Problem(
                    f"{SDIST_NAME} at {_redact(url)}",
                    f"the index publishes sha256 {published}, expected {SDIST_SHA256}",
                    "this is not the vaderSentiment 3.3.2 sdist from PyPI; check the index (pip config list)",
                )
            )
        try:
            return fetcher.get(url)[0], _redact(url)
        except (OSError, http.client.HTTPException) as exc:
            tried.append(f"{_redact(url)} ({getattr(exc, 'reason', exc)})")
    raise DataError(
        Problem(
            "actlora data fetch",
            f"could not download {SDIST_NAME}; tried: " + "; ".join(tried or ["nothing (pip no-index)"]),
            "check access to the package index (pip config list)",
        )
    )


def check_sha256(data: bytes, origin: str) -> None:
    """Refuse any file but the pinned sdist."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != SDIST_SHA256:
        raise DataError(
            Problem(
                f"{SDIST_NAME} from {origin}",
                f"sha256 is {actual}, expected {SDIST_SHA256}",
                "this is not the vaderSentiment 3.3.2 sdist from PyPI; nothing was written",
            )
        )


def fetch(root: Path | None = None, *, force: bool = False, quiet: bool = False) -> Path:
    """Download the sdist from pip's package index (no code of it runs), check its sha256 and prepare the
    splits; a no-op when prepared."""
    root = root or cache_dir()
    if is_prepared(root) and not force:
        return root
    data, origin = download_sdist()
    check_sha256(data, origin)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(tmp) / SDIST_NAME
        sdist.write_bytes(data)
        prepare_from_sdist(sdist, root)
    return root


def read_split(domain: str, split: str, data_dir: str | None) -> list[dict] | None:
    """The rows of one domain's split ({"id", "text", "rating", "label"}, label None inside the neutral
    band), fetching the data on first use; None when the data has no such split."""
    root = cache_dir(data_dir)
    if not is_prepared(root):
        if data_dir:
            raise DataError(
                Problem(
                    "task.data_dir",
                    f"{root} holds no prepared sentiment data",
                    "run `actlora data fetch --dir` there, or unset task.data_dir",
                )
            )
        fetch(root)
    path = root / domain / f"{split}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
