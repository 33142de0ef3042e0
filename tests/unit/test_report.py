"""The HTML report of an evaluation (training/report.py), rendered on a real evaluation
of small synthetic data, and, where Chromium is installed, opened in a headless browser."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from html_support import Page, chromium, screenshot
from matplotlib import image as mpimg

from sessionrec.events import EventType
from sessionrec.store import EventColumns
from training.evaluate import EvaluationResult, evaluate
from training.report import write_html_report

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")

PLOTS = 4  # metrics with intervals, NDCG against k, per-user NDCG, popularity bias


def synthetic_events(seed: int = 0, n_users: int = 120) -> EventColumns:
    """Three groups of users, each viewing a random part of its own 15 items in a
    random order, plus two of 8 shared items of skewed popularity."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, int]] = []
    t = 0
    shared = np.arange(8, 0, -1) / np.arange(8, 0, -1).sum()
    for u in range(n_users):
        group = u % 3
        items = [f"g{group}-{i}" for i in rng.permutation(15)[: rng.integers(6, 12)]]
        items += [f"pop-{i}" for i in rng.choice(8, size=2, replace=False, p=shared)]
        for i in rng.permutation(len(items)).tolist():
            rows.append((f"u{u}", items[i], t))
            t += int(rng.integers(1, 5))
    n = len(rows)
    users = np.empty(n, dtype=object)
    users[:] = [r[0] for r in rows]
    item_ids = np.empty(n, dtype=object)
    item_ids[:] = [r[1] for r in rows]
    return EventColumns(
        users,
        item_ids,
        np.full(n, int(EventType.ITEM_VIEW), dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=np.int64),
    )


@pytest.fixture(scope="module")
def results() -> list[EvaluationResult]:
    return evaluate(
        synthetic_events(),
        "itemknn",
        {"K": 20, "num_threads": 1},
        k=5,
        ks=(1, 5, 10),
        bootstrap=300,
        seed=0,
    )


@pytest.fixture(scope="module")
def report(results: list[EvaluationResult], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert write_html_report(path, results, title="Evaluation <synthetic>") == path
    return path


def test_the_report_is_one_self_contained_html_file(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<html") == 1 and "<style>" in text
    page = Page()
    page.feed(text)
    assert page.external == []  # no scripts, stylesheets or links to fetch
    assert "Evaluation &lt;synthetic&gt;" in text  # escaped
    assert len(page.images) == PLOTS
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :], validate=True)
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 300 and pixels.shape[1] > 800
        assert np.ptp(pixels[..., :3]) > 0.5  # a drawing, not a blank


def test_the_report_has_every_number_and_the_run(
    report: Path, results: list[EvaluationResult]
) -> None:
    page = Page()
    page.feed(report.read_text(encoding="utf-8"))
    assert page.tables == ["numbers", "run", "algorithms"]
    cells = [c.strip() for c in page.cells]
    for result in results:
        assert result.at is not None
        for k in result.at.ks:
            for name in ("ndcg", "map", "coverage", "popularity_percentile"):
                assert any(c.startswith(f"{result.at.means[k][name]:.4f}") for c in cells), (
                    result.algorithm,
                    k,
                    name,
                )
            lo, hi = result.at.ci[k]["ndcg"]
            assert any(c.endswith(f"{lo:.3f}\u2013{hi:.3f}") for c in cells)
    run = results[0].run
    for key in ("protocol", "test_fraction", "seed", "bootstrap", "train_events", "test_users"):
        assert key in cells
        assert str(run[key]) in cells
    assert "Catalog coverage" in cells and "MAP" in cells and "itemknn" in cells


def test_the_report_without_intervals(results: list[EvaluationResult], tmp_path: Path) -> None:
    bare = []
    for result in results:
        assert result.at is not None
        bare.append(replace(result, at=replace(result.at, ci={})))
    path = write_html_report(tmp_path / "bare.html", bare, run={"protocol": "<x>"})
    text = path.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == PLOTS
    assert "evaluated without bootstrap" in text and "&lt;x&gt;" in text


def test_the_report_needs_results_with_metrics_at_k(
    results: list[EvaluationResult], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="results"):
        write_html_report(tmp_path / "r.html", [])
    with pytest.raises(ValueError, match="itemknn"):
        write_html_report(tmp_path / "r.html", [replace(results[0], at=None)])


@pytest.mark.skipif(chromium() is None, reason="no chromium binary found")
def test_the_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    pixels = screenshot(report, tmp_path)
    assert np.ptp(pixels[..., :3]) > 0.5  # not all one colour


def test_the_server_does_not_load_matplotlib_until_a_report_is_drawn() -> None:
    """matplotlib costs a serving process about 30 MiB and half a second: it is
    imported by the first figure drawn, not by the server's modules."""
    code = (
        "import sys, service.server, training.artifact\n"
        "assert not [m for m in sys.modules if m.startswith('matplotlib')], 'loaded early'\n"
        "from sessionrec.html_page import figure, png\n"
        "fig = figure(2, 1)\n"
        "fig.add_subplot().plot([0, 1], [1, 0])\n"
        "assert png(fig).startswith('iVBOR')\n"  # base64 of the PNG signature
        "assert 'matplotlib.figure' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
