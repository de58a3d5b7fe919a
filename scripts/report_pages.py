"""Write the committed results' reports again from their JSON, and a screenshot of each HTML page beside it.

    python scripts/report_pages.py [FOLDER ...]   # default: the committed results folders

For each folder, ``actlora report`` (nothing is probed, trained or plotted again) writes every study's and
comparison's Markdown, its charts linked, and one self-contained HTML page; headless Chromium (Debian:
``apt-get install chromium``; another binary with $CHROMIUM) then renders each page at 1200 x 2400 to
``<name>_page.png``. The tests drive Chromium through ``chromium`` below too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = (
    "results/frontier_minilm_movies",
    "results/studies/minilm",
    "results/studies/minilm_training_regime",
    "results/studies/smollm2",
    "results/sweep_movies_demo",
    "results/frontier_smollm2_movies",
    "results/main_minilm_movies_demo",
)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# headless, and nothing that reaches for the network (this machine's network is closed: without these,
# Chromium retries refused connections) or does first-run work
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium(page: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium on the file ``page`` with a new, empty profile; returns what it printed on
    stdout (the DOM, with --dump-dom)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, Path(page).resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    return done.stdout


def screenshot(page: Path, png: Path) -> Path:
    """``page`` rendered at 1200 x 2400 into ``png``."""
    chromium(page, "--window-size=1200,2400", f"--screenshot={Path(png).resolve()}")
    return png


def main(folders: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from actlora_cli.studies import render_reports

    for folder in folders or FOLDERS:
        for path in render_reports(ROOT / folder):
            print(path.relative_to(ROOT))
            if path.suffix == ".html":
                print(screenshot(path, path.with_name(f"{path.stem}_page.png")).relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
