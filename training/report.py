"""One self-contained HTML page of an offline evaluation (:func:`write_html_report`).

Inline CSS, every plot a base64 PNG drawn by matplotlib (Agg, no pyplot state):
each metric with its confidence interval per algorithm, NDCG against k, the
per-user NDCG distribution, and the popularity bias of the recommendations
against the catalog; then every number in a table and the run's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sessionrec.html_page import escape as _e
from sessionrec.html_page import figure, page_start
from sessionrec.html_page import png as _png
from training.evaluate import EvaluationResult
from training.metrics import CATALOG_POPULARITY_PERCENTILE, POPULARITY, RANKING_METRICS

#: Readable names of the metrics, in table order.
LABELS = {
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "hit_rate": "Hit rate",
    "mrr": "MRR",
    "map": "MAP",
    "coverage": "Catalog coverage",
    POPULARITY: "Popularity percentile",
}


def write_html_report(
    path: str | Path,
    results: Sequence[EvaluationResult],
    *,
    run: Mapping[str, Any] | None = None,
    title: str = "sessionrec offline evaluation",
) -> Path:
    """Writes the report of ``results`` (one per algorithm, from
    :func:`training.evaluate.evaluate`) to ``path``; ``run``: the run's parameters
    (default: the first result's ``run``). Returns the path."""
    if not results:
        raise ValueError("results: need at least one evaluation result")
    missing = [r.algorithm for r in results if r.at is None]
    if missing:
        raise ValueError(f"results: {missing[0]} has no metrics at k (evaluate it with ks)")
    run = dict(run if run is not None else results[0].run)
    path = Path(path)
    path.write_text(render_html(results, run=run, title=title), encoding="utf-8")
    return path


def render_html(results: Sequence[EvaluationResult], *, run: Mapping[str, Any], title: str) -> str:
    main_k = results[0].k
    figures = [
        (
            f"Metrics at k={main_k}",
            _metrics_figure(results, main_k),
            _ci_note(results),
        ),
        ("NDCG against k", _ndcg_by_k_figure(results), "Shaded: the confidence interval."),
        (
            f"Per-user NDCG@{main_k}",
            _ndcg_distribution_figure(results, main_k),
            "Users with at least one hit; the legend gives the share of users without any.",
        ),
        (
            "Popularity bias",
            _popularity_figure(results, main_k),
            "Popularity percentile of an item: its rank by number of training users among all "
            "catalog items, 0 (least popular) to 1 (most popular). The catalog's mean is 0.5; "
            "higher means the recommendations lean on popular items.",
        ),
    ]
    parts = [
        *page_start(title),
        f'<p class="sub">{_e(_subtitle(run))}</p>',
        _cards(results, main_k),
    ]
    for heading, png, caption in figures:
        parts.append(f"<h2>{_e(heading)}</h2>")
        parts.append(
            f'<figure><img alt="{_e(heading)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append("<h2>All numbers</h2>")
    parts.append(f'<p class="note">{_e(_ci_note(results))}</p>')
    parts.append(_numbers_table(results))
    parts.append("<h2>Run</h2>")
    parts.append(_run_table(run))
    parts.append("<h2>Algorithms</h2>")
    parts.append(_algorithms_table(results))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Generated {generated} by sessionrec.</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- plots -------------------------------------------------------------------------------------


def _colors(n: int) -> list[str]:
    palette = ["#0969da", "#bf8700", "#1a7f37", "#cf222e", "#8250df", "#57606a", "#e16f24"]
    return [palette[i % len(palette)] for i in range(n)]


def _interval(result: EvaluationResult, k: int, name: str) -> tuple[float, float] | None:
    assert result.at is not None
    return result.at.ci.get(k, {}).get(name)


def _metrics_figure(results: Sequence[EvaluationResult], k: int) -> str:
    names = [*RANKING_METRICS, "coverage"]
    fig = figure(10, 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(results)
    x = np.arange(len(names))
    for i, (result, color) in enumerate(zip(results, _colors(len(results)), strict=True)):
        assert result.at is not None
        means = np.array([result.at.means[k].get(n, 0.0) for n in names])
        err = np.zeros((2, len(names)))
        for j, n in enumerate(names):
            ci = _interval(result, k, n)
            if ci is not None:
                err[:, j] = [max(0.0, means[j] - ci[0]), max(0.0, ci[1] - means[j])]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width, label=result.algorithm, color=color, alpha=0.85)
        has_ci = [_interval(result, k, n) is not None for n in names]
        ax.errorbar(
            pos[has_ci],
            means[has_ci],
            yerr=err[:, has_ci],
            fmt="none",
            ecolor="#24292f",
            capsize=3,
            lw=1,
        )
    ax.set_xticks(x, [LABELS[n] for n in names])
    ax.set_ylabel(f"Mean over users at k={k}")
    ax.set_ylim(0, 1.05 * max(1e-9, _ymax(results, k, names)))
    ax.set_title(f"Ranking metrics at k={k} per algorithm (error bars: confidence interval)")
    ax.legend(title="Algorithm")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _ymax(results: Sequence[EvaluationResult], k: int, names: Sequence[str]) -> float:
    top = 0.0
    for result in results:
        assert result.at is not None
        for n in names:
            ci = _interval(result, k, n)
            top = max(top, result.at.means[k].get(n, 0.0), ci[1] if ci else 0.0)
    return min(1.0, top * 1.1) if top < 0.9 else 1.0


def _ndcg_by_k_figure(results: Sequence[EvaluationResult]) -> str:
    fig = figure(10, 4)
    ax = fig.add_subplot()
    for result, color in zip(results, _colors(len(results)), strict=True):
        assert result.at is not None
        ks = list(result.at.ks)
        means = [result.at.means[k]["ndcg"] for k in ks]
        ax.plot(ks, means, marker="o", color=color, label=result.algorithm)
        cis = [_interval(result, k, "ndcg") for k in ks]
        if all(ci is not None for ci in cis):
            lo = [ci[0] for ci in cis if ci is not None]
            hi = [ci[1] for ci in cis if ci is not None]
            ax.fill_between(ks, lo, hi, color=color, alpha=0.15)
    ax.set_xlabel("k (length of the recommended list)")
    ax.set_ylabel("NDCG@k")
    ax.set_xticks(sorted({k for r in results if r.at for k in r.at.ks}))
    ax.set_ylim(bottom=0)
    ax.set_title("NDCG against k per algorithm")
    ax.legend(title="Algorithm")
    ax.grid(alpha=0.3)
    return _png(fig)


def _ndcg_distribution_figure(results: Sequence[EvaluationResult], k: int) -> str:
    fig = figure(10, 4)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 21).tolist()
    for result, color in zip(results, _colors(len(results)), strict=True):
        assert result.at is not None
        values = result.at.per_user[k]["ndcg"]
        zero = float(np.mean(values == 0)) if len(values) else 0.0
        hit = values[values > 0]
        weights = np.full(len(hit), 100.0 / len(values)) if len(values) else None
        ax.hist(
            hit,
            bins=bins,
            weights=weights,
            histtype="stepfilled",
            alpha=0.35,
            color=color,
            edgecolor=color,
            linewidth=1.5,
            label=f"{result.algorithm} ({zero:.0%} of users score 0)",
        )
    ax.set_xlabel(f"NDCG@{k} of one user")
    ax.set_ylabel("Share of evaluated users (%)")
    ax.set_xlim(0, 1)
    ax.set_title(f"Distribution of per-user NDCG@{k} (users with at least one hit)")
    ax.legend(title="Algorithm")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _popularity_figure(results: Sequence[EvaluationResult], k: int) -> str:
    fig = figure(10, 4.2)
    left, right = fig.subplots(1, 2)
    colors = _colors(len(results))
    ks = sorted({kk for r in results if r.at for kk in r.at.ks})
    width = 0.8 / len(results)
    x = np.arange(len(ks))
    for i, (result, color) in enumerate(zip(results, colors, strict=True)):
        assert result.at is not None
        means = np.array([result.at.means.get(kk, {}).get(POPULARITY, np.nan) for kk in ks])
        err = np.zeros((2, len(ks)))
        for j, kk in enumerate(ks):
            ci = _interval(result, kk, POPULARITY)
            if ci is not None and np.isfinite(means[j]):
                err[:, j] = [max(0.0, means[j] - ci[0]), max(0.0, ci[1] - means[j])]
        pos = x - 0.4 + width * (i + 0.5)
        left.bar(pos, means, width, color=color, alpha=0.85, label=result.algorithm)
        left.errorbar(pos, means, yerr=err, fmt="none", ecolor="#24292f", capsize=3, lw=1)
    left.axhline(CATALOG_POPULARITY_PERCENTILE, color="#24292f", ls="--", lw=1, label="catalog")
    left.set_xticks(x, [f"k={kk}" for kk in ks])
    left.set_ylim(0, 1.15)  # room above the bars for the legend
    left.set_yticks(np.linspace(0, 1, 6))
    left.set_ylabel("Mean popularity percentile of the top k")
    left.set_title("Recommended vs catalog popularity")
    left.legend(fontsize=8, loc="upper center", ncol=len(results) + 1)
    left.grid(axis="y", alpha=0.3)
    bins = np.linspace(0, 1, 21).tolist()
    right.axvline(CATALOG_POPULARITY_PERCENTILE, color="#24292f", ls="--", lw=1, label="catalog")
    for result, color in zip(results, colors, strict=True):
        assert result.at is not None
        values = result.at.per_user[k].get(POPULARITY)
        if values is None or not len(values):
            continue
        values = values[np.isfinite(values)]
        right.hist(
            values,
            bins=bins,
            weights=np.full(len(values), 100.0 / max(1, len(values))),
            histtype="stepfilled",
            alpha=0.35,
            color=color,
            edgecolor=color,
            linewidth=1.5,
            label=result.algorithm,
        )
    right.set_xlim(0, 1)
    right.set_xlabel(f"Mean popularity percentile of one user's top {k}")
    right.set_ylabel("Share of evaluated users (%)")
    right.set_title(f"Per-user popularity of the top {k}")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    return _png(fig)


# -- tables ------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 4) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _subtitle(run: Mapping[str, Any]) -> str:
    bits = []
    if "protocol" in run:
        bits.append(f"Protocol: {run['protocol']}")
    if "test_fraction" in run:
        bits.append(f"test fraction {run['test_fraction']}")
    if "evaluated_users" in run:
        bits.append(f"{run['evaluated_users']} evaluated users")
    if "items" in run:
        bits.append(f"{run['items']} items")
    return " · ".join(bits)


def _ci_note(results: Sequence[EvaluationResult]) -> str:
    at = results[0].at
    if at is None or not at.ci:
        return "No confidence intervals (evaluated without bootstrap)."
    return (
        f"Intervals: {at.confidence:.0%} percentile bootstrap over users, "
        f"{at.n_resamples} resamples, seed {at.seed}."
    )


def _cards(results: Sequence[EvaluationResult], k: int) -> str:
    cards = []
    for result in results:
        assert result.at is not None
        ndcg = result.at.means[k]["ndcg"]
        cards.append(
            f'<div class="card"><span>{_e(result.algorithm)}</span>'
            f"<b>{_fmt(ndcg)}</b><span>NDCG@{k}</span></div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _numbers_table(results: Sequence[EvaluationResult]) -> str:
    names = [*RANKING_METRICS, "coverage", POPULARITY]
    head = "".join(f"<th>{_e(LABELS[n])}</th>" for n in names)
    rows = [
        '<table class="numbers"><thead><tr><th class="l">Algorithm</th><th>k</th>'
        f"<th>Users</th>{head}</tr></thead><tbody>"
    ]
    for result in results:
        assert result.at is not None
        for k in result.at.ks:
            cells = []
            for n in names:
                value = result.at.means[k].get(n)
                if value is None:
                    cells.append("<td>-</td>")
                    continue
                ci = _interval(result, k, n)
                extra = ""
                if ci is not None:
                    extra = f'<br><span class="ci">{_fmt(ci[0], 3)}&ndash;{_fmt(ci[1], 3)}</span>'
                cells.append(f"<td>{_fmt(value)}{extra}</td>")
            rows.append(
                f'<tr><td class="l">{_e(result.algorithm)}</td><td>{k}</td>'
                f"<td>{result.at.users}</td>{''.join(cells)}</tr>"
            )
    rows.append("</tbody></table>")
    return "".join(rows)


def _run_table(run: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><th class="l">{_e(key)}</th><td class="l">{_e(_value(value))}</td></tr>'
        for key, value in run.items()
    )
    return f'<table class="run"><tbody>{rows}</tbody></table>'


def _algorithms_table(results: Sequence[EvaluationResult]) -> str:
    rows = "".join(
        f'<tr><td class="l">{_e(r.algorithm)}</td><td>{r.fit_seconds:.2f}</td>'
        f'<td class="l">{_e(_value(r.params))}</td></tr>'
        for r in results
    )
    return (
        '<table class="algorithms"><thead><tr><th class="l">Algorithm</th>'
        '<th>Fit seconds</th><th class="l">Parameters</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items()) or "(defaults)"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)
