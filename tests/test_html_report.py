"""The HTML report pages: self-contained (no address outside the page, every image a PNG data URI), the same
tables as the JSON they were rendered from (the committed results, checked number by number), written again
from the JSON alone by ``actlora report``, and (where Debian's Chromium is installed) drawn by a real browser
with every image loaded."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from actlora_cli import html_report
from actlora_cli.analysis.report import write_study
from actlora_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAGES = {
    "results/frontier_minilm_movies": ["frontier"],
    "results/studies/minilm": ["correlation", "stability", "tasks", "thresholds"],
    "results/studies/minilm_training_regime": ["stability"],
    "results/studies/smollm2": ["stability", "thresholds"],
    "results/frontier_smollm2_movies": ["frontier"],
    "results/main_minilm_movies_demo": ["minilm_movies_demo_comparison"],
    "results/sweep_movies_demo": ["comparison"],
}
COMMITTED = [ROOT / folder / f"{name}.html" for folder, names in PAGES.items() for name in names]


class Page(HTMLParser):
    """Every tag's attributes, the images' sources, the tables as rows of cell texts, and the text of one
    element by id."""

    def __init__(self, text: str, wanted_id: str | None = None):
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.wanted_id, self.wanted, self._in_wanted = wanted_id, "", False
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.attrs += [(tag, name, value or "") for name, value in attrs]
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if self.wanted_id is not None and dict(attrs).get("id") == self.wanted_id:
            self._in_wanted = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        self._in_wanted = self._in_wanted and tag != "pre"

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_wanted:
            self.wanted += data


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _self_contained(page: Page) -> list[bytes]:
    """No attribute anywhere names an address outside the page; every image is a PNG data URI. Returns
    the images' bytes (each decodes as a PNG)."""
    assert not [
        a for a in page.attrs if a[1] in ("src", "href") and not a[2].startswith("data:image/png;base64,")
    ]
    assert not [a for a in page.attrs if "http:" in a[2] or "https:" in a[2]]
    pngs = []
    for src in page.images:
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == _png_size(data)[::-1] and pixels.std() > 0  # decodes, and is not blank
        pngs.append(data)
    return pngs


def test_page_is_self_contained_and_shows_what_the_markdown_says(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2])
    fig.savefig(tmp_path / "chart.png")
    plt.close(fig)
    (tmp_path / "fake.png").write_text("not a png")
    markdown = (
        "Intro with a [link](https://example.com/x) and <script>alert(1)</script>.\n\n"
        "| a | b |\n|---|---|\n| 0.5000 | n/a |\n\n"
        "![the chart](chart.png)\n\n![gone](missing.png)\n\n![fake](fake.png)\n\n![away](https://example.com/a.png)\n"
    )
    page_path = html_report.write(tmp_path / "r.md", markdown, "a report")
    text = page_path.read_text()
    page = Page(text)
    (png,) = _self_contained(page)
    assert png == (tmp_path / "chart.png").read_bytes()
    assert page.tables == [[["a", "b"], ["0.5000", "n/a"]]]
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, never run
    for alt in ("link", "gone", "fake", "away"):
        assert alt in text  # what cannot be shown inline stays as its text
    assert "<title>a report</title>" in text and "<h1>a report</h1>" in text


@pytest.mark.parametrize("page_path", COMMITTED, ids=lambda p: p.stem)
def test_committed_page_is_self_contained_with_the_charts_beside_it(page_path):
    page = Page(page_path.read_text())
    pngs = _self_contained(page)
    md = page_path.with_suffix(".md").read_text()
    linked = [line[line.index("](") + 2 : -1] for line in md.splitlines() if line.startswith("![")]
    assert linked and pngs == [(page_path.parent / name).read_bytes() for name in linked]
    assert page_path.with_name(f"{page_path.stem}_page.png").read_bytes().startswith(PNG_MAGIC)


def _f4(value: float) -> str:
    return f"{value:.4f}"


def _tables(folder: str, name: str) -> list[list[list[str]]]:
    return Page((ROOT / folder / f"{name}.html").read_text()).tables


def _result(folder: str, name: str) -> dict:
    return json.loads((ROOT / folder / f"{name}.json").read_text())


def test_committed_study_tables_hold_the_json_numbers():
    folder = "results/studies/minilm"
    doc = _result(folder, "thresholds")["result"]
    (table,) = _tables(folder, "thresholds")
    assert table[1:] == [[f"{round(100 * r['tau'])}%", str(r["k"]), _f4(r["C(k)"])] for r in doc["table"]]

    doc = _result(folder, "correlation")["result"]["results"]
    tables = _tables(folder, "correlation")
    assert len(tables) == len(doc)
    for table, part in zip(tables, doc.values(), strict=True):
        measures = ("pearson", "spearman", "kendall", "cosine")
        assert table[1:] == [[name, *(_f4(row[m]) for m in measures)] for name, row in part.items()]

    doc = _result(folder, "tasks")["result"]["results"]
    tables = _tables(folder, "tasks")
    for table, measure in zip(tables, ("spearman", "kendall"), strict=True):
        assert table[0] == ["Task", *doc["tasks"]]
        assert table[1:] == [[a, *(_f4(doc[measure][a][b]) for b in doc["tasks"])] for a in doc["tasks"]]

    doc = _result(folder, "stability")["result"]["results"]
    tables = _tables(folder, "stability")
    assert len(tables) == 2 * len(doc)
    for (tau, jaccard), (scorer, r) in zip(
        zip(tables[::2], tables[1::2], strict=True), doc.items(), strict=True
    ):
        assert tau[1] == [scorer, f"{_f4(r['kendall_tau']['mean'])} ± {_f4(r['kendall_tau']['std'])}"]
        assert jaccard[1:] == [[k, f"{_f4(j['mean'])} ± {_f4(j['std'])}"] for k, j in r["jaccard"].items()]


def test_committed_frontier_and_comparison_tables_hold_the_json_numbers():
    doc = _result("results/frontier_minilm_movies", "frontier")["result"]
    every_plan = _tables("results/frontier_minilm_movies", "frontier")[0]
    points = sorted(doc["points"], key=lambda q: q["device_hours"])
    assert [row[0] for row in every_plan[1:]] == [str(q["layers"]) for q in points]
    assert [row[2] for row in every_plan[1:]] == [f"{100 * q['accuracy']:.2f}" for q in points]
    assert [row[4] for row in every_plan[1:]] == [f"{3600 * q['device_hours']:.1f}" for q in points]

    doc = _result("results/sweep_movies_demo", "comparison")
    groups, runs = _tables("results/sweep_movies_demo", "comparison")
    for row, g in zip(groups[1:], doc["groups"], strict=True):
        metric = g["values"]["metric"]
        assert row[:4] == [
            g["label"],
            str(g["n"]),
            g["metric_name"],
            f"{_f4(metric['mean'])} ± {_f4(metric['std'])}",
        ]
    assert [(r[0], r[3]) for r in runs[1:]] == [(r["run"], _f4(r["metric"])) for r in doc["rows"]]


def test_report_writes_the_pages_again_from_the_json_alone(tmp_path):
    """``actlora report`` on copies of the committed results, less their Markdown and pages: the same Markdown
    and pages again (nothing depends on anything but the JSON and the PNGs); without the PNGs, the Markdown
    links none and the pages show none."""
    for committed_folder, names in PAGES.items():
        folder = tmp_path / Path(committed_folder).name
        ignore = shutil.ignore_patterns("*.md", "*.html", "*_page.png", "scores")
        shutil.copytree(ROOT / committed_folder, folder, ignore=ignore)
        result = CliRunner().invoke(app, ["report", str(folder)])
        assert result.exit_code == 0, result.output
        for name in names:
            for suffix in (".md", ".html"):
                committed = ROOT / committed_folder / f"{name}{suffix}"
                assert (folder / f"{name}{suffix}").read_text() == committed.read_text()
    for png in folder.glob("*.png"):
        png.unlink()
    assert CliRunner().invoke(app, ["report", str(folder)]).exit_code == 0
    assert "![" not in (folder / "comparison.md").read_text()
    assert Page((folder / "comparison.html").read_text()).images == []
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "holds no study or comparison JSON" in result.output


def test_write_study_links_existing_charts_and_writes_the_page(tmp_path):
    (tmp_path / "stability_x.png").write_bytes(
        (ROOT / "results/studies/minilm/stability_cka.png").read_bytes()
    )
    from actlora_cli.studies import study_markdown

    result = _result("results/studies/minilm", "stability")["result"]
    result = {**result, "results": {"x": result["results"]["cka"], "y": result["results"]["cka"]}}
    md = study_markdown("stability", result, tmp_path)
    assert md.count("![") == 1 and "![x: scores over 10 seeds](stability_x.png)" in md
    json_path, md_path, page_path = write_study(tmp_path, "stability", result, md)
    assert md_path.read_text() == md and page_path == tmp_path / "stability.html"
    page = Page(page_path.read_text())
    assert _self_contained(page) == [(tmp_path / "stability_x.png").read_bytes()]
    assert "<title>stability study: packaged:all-MiniLM-L6-v2</title>" in page_path.read_text()


# --- a real browser -----------------------------------------------------------------------------------------


def _script():
    spec = importlib.util.spec_from_file_location("report_pages", ROOT / "scripts" / "report_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = """<pre id="loaded"></pre><script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  document.getElementById("loaded").textContent = JSON.stringify(images);
});
</script></body>"""

needs_chromium = pytest.mark.skipif(
    not Path(_script().CHROMIUM).is_file(), reason="no Chromium (Debian: apt-get install chromium)"
)


@needs_chromium
@pytest.mark.parametrize("page_path", COMMITTED, ids=lambda p: p.stem)
def test_chromium_loads_every_image(tmp_path, page_path):
    """The committed page, with a script added that records each image's state after the load event, in
    headless Chromium: every image loaded at the size of the PNG it embeds."""
    text = page_path.read_text()
    probe = tmp_path / page_path.name
    probe.write_text(text.replace("</body>", CHECK))
    dom = _script().chromium(probe, "--dump-dom", "--virtual-time-budget=5000")
    loaded = json.loads(Page(dom, wanted_id="loaded").wanted)
    sizes = [_png_size(png) for png in _self_contained(Page(text))]
    assert sizes and loaded == [[True, w, h] for w, h in sizes]


@needs_chromium
def test_chromium_screenshot_shows_the_page(tmp_path):
    page = ROOT / "results/studies/minilm/thresholds.html"
    shot = _script().screenshot(page, tmp_path / "shot.png")
    assert _png_size(shot.read_bytes()) == (1200, 2400)
    pixels = matplotlib.image.imread(shot)
    # not blank: dark text and the chart's colours on the white page
    assert (pixels[..., :3].min(axis=2) < 0.3).mean() > 0.002 and np.unique(
        pixels.reshape(-1, pixels.shape[-1]), axis=0
    ).shape[0] > 50
