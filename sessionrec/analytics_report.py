"""The product team's session analytics page (:func:`write_report`).

Built on :mod:`sessionrec.analytics`: :func:`write_report` computes
:func:`~sessionrec.analytics.session_stats` and
:func:`~sessionrec.analytics.screen_flows` on a store file and writes
:func:`render_html` of them. The page is one self-contained HTML file in the
style of :mod:`training.report` and :mod:`sessionrec.offer_report`: inline CSS,
every plot a base64 PNG drawn by matplotlib's Agg canvas (no pyplot state), no
scripts and nothing to fetch. It shows headline cards, the session-length
histogram, an hour-of-day x weekday activity heatmap (UTC), screens with views,
dwell and skip rate, entry and exit screens, the top items, the retention of the
first-session cohort, end reasons and the most common screen-to-screen flows.

All user text (screen names, item ids, the title) is escaped in the HTML and
drawn without mathtext parsing in the plots. A store without sessions still
gives a page, with "no data" notes in place of the plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sessionrec.analytics import (
    EXIT,
    SEGMENTS,
    DbPath,
    load_session_data,
    screen_flows,
    session_stats,
)
from sessionrec.analytics_days import CacheWriter

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from sessionrec.html_page import escape as _e
from sessionrec.html_page import figure, page_start, percent_axis
from sessionrec.html_page import png as _png
from sessionrec.isotime import EPOCH, parse_iso_ms

__all__ = [
    "DEFAULT_TITLE",
    "FLOW_STEPS",
    "FLOW_TOP",
    "PLATFORMS",
    "WEEKDAYS",
    "describe_period",
    "parse_iso_ms",
    "render_html",
    "write_report",
]

DEFAULT_TITLE = "sessionrec session analytics"
#: Platform names (``sessionrec.v1.Platform``) and their numbers in the store.
PLATFORMS: dict[str, int] = {"IOS": 1, "ANDROID": 2, "WEB": 3, "OTHER": 4}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: Screen views of each session that the flows look at, and how many flows are shown.
FLOW_STEPS = 5
FLOW_TOP = 20
#: Rows of the screens table and bars of the skip-rate plot.
TABLE_SCREENS = 50
PLOT_SCREENS = 15
#: Rows of the entry / exit tables.
TABLE_ENDS = 15
LABEL_CHARS = 28

BLUE = "#0969da"
GREY = "#8c959f"
GREEN = "#1a7f37"
ORANGE = "#bf8700"


# -- entry points ------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    when = EPOCH + timedelta(milliseconds=int(ms))
    if when.hour == when.minute == when.second == when.microsecond == 0:
        return when.strftime("%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00")


def describe_period(start_ms: int | None, end_ms: int | None) -> str:
    """The period of sessions starting in ``[start_ms, end_ms)``, in words (UTC)."""
    if start_ms is None and end_ms is None:
        return "all sessions"
    if end_ms is None:
        return f"sessions starting from {_iso(start_ms or 0)} UTC"
    if start_ms is None:
        return f"sessions starting before {_iso(end_ms)} UTC"
    return f"sessions starting from {_iso(start_ms)} until before {_iso(end_ms)} UTC"


def write_report(
    path: str | Path,
    db: DbPath,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    platform: int | None = None,
    app_version: str | None = None,
    segment: str | None = None,
    title: str = DEFAULT_TITLE,
    cache: CacheWriter | None = None,
) -> dict[str, Any]:
    """Computes the session statistics and screen flows of the store file (or
    ``sqlite:///`` URL) ``db`` for sessions starting in ``[start_ms, end_ms)``
    (and of ``platform``/``app_version``/``segment`` when given), writes the page
    to ``path`` and returns the statistics (``SessionStats.to_dict()``).
    ``cache`` keeps the analytics days that had to be built.

    Raises ``ValueError`` (an empty period, not a store) and ``FileNotFoundError``
    (no store file); nothing is written then."""
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ValueError(
            f"the period is empty: start ({_iso(start_ms)}) is not before the end ({_iso(end_ms)})"
        )
    if platform is not None and platform not in PLATFORMS.values():
        raise ValueError(f"platform: unknown platform number {platform!r}")
    if segment is not None and segment not in SEGMENTS:
        raise ValueError(f"segment: expected one of {', '.join(SEGMENTS)}, got {segment!r}")
    data = load_session_data(
        db,
        start_ms=start_ms,
        end_ms=end_ms,
        platform=platform,
        app_version=app_version,
        segment=segment,
        cache=cache,
    )
    stats = session_stats(db, data=data).to_dict()
    flows = screen_flows(db, max_steps=FLOW_STEPS, top=FLOW_TOP, data=data)
    page = render_html(
        stats, flows, title=title, period=describe_period(start_ms, end_ms), max_steps=FLOW_STEPS
    )
    Path(path).write_text(page, encoding="utf-8")
    return stats


def render_html(
    stats: Mapping[str, Any],
    flows: Sequence[Sequence[Any]],
    *,
    title: str = DEFAULT_TITLE,
    period: str = "all sessions",
    max_steps: int | None = FLOW_STEPS,
) -> str:
    """One self-contained HTML page of ``stats`` (``SessionStats.to_dict()``, or
    its JSON read back) and ``flows`` (``(from, to, count)`` from
    :func:`~sessionrec.analytics.screen_flows`, counted over the first
    ``max_steps`` screen views of each session). All text is escaped."""
    sessions = _int(stats.get("sessions"))
    parts = [
        *page_start(title),
        f'<p class="sub">{_e(_subtitle(stats, period))}</p>',
        _cards(stats),
    ]
    if not sessions:
        parts.append('<p class="nodata">No sessions in this period: nothing to show.</p>')
    parts += _duration_section(stats)
    parts += _activity_section(stats)
    parts += _screens_section(stats)
    parts += _ends_section(stats)
    parts += _flows_section(flows, max_steps)
    parts += _items_section(stats)
    parts += _retention_section(stats)
    parts += _end_reasons_section(stats)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Generated {generated} by sessionrec.</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- formatting --------------------------------------------------------------------------------


def _is_num(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _int(value: Any) -> int:
    return int(value) if _is_num(value) else 0


def _fmt_ms(value: Any) -> str:
    """A duration in ms for people: 850 ms, 12.3 s, 4.5 min, 2.1 h."""
    if not _is_num(value):
        return "-"
    ms = float(value)
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def _pct(value: Any) -> str:
    return f"{float(value):.1%}" if _is_num(value) else "-"


def _fmt(value: Any, digits: int = 2) -> str:
    if not _is_num(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):,.{digits}f}"


def _label(text: Any, chars: int = LABEL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _subtitle(stats: Mapping[str, Any], period: str) -> str:
    filters = stats.get("filters") or {}
    bits = [period]
    platform = filters.get("platform")
    if platform is not None:
        names = {v: k for k, v in PLATFORMS.items()}
        bits.append(f"platform {names.get(platform, platform)}")
    if filters.get("app_version") is not None:
        bits.append(f"app version {filters['app_version']}")
    segment = filters.get("segment")
    if segment is not None:
        bits.append(
            {"NEW_USER": "first sessions only", "RETURNING_USER": "returning users only"}.get(
                segment, str(segment)
            )
        )
    if _is_num(stats.get("skip_below_ms")):
        bits.append(f"a skip is a screen view shorter than {_fmt_ms(stats['skip_below_ms'])}")
    return " · ".join(bits)


def _cards(stats: Mapping[str, Any]) -> str:
    duration = stats.get("duration_ms") or {}
    cards = [
        ("Sessions", _fmt(stats.get("sessions"))),
        ("Users", _fmt(stats.get("users"))),
        ("Sessions per user", _fmt(stats.get("sessions_per_user"))),
        ("Median session length", _fmt_ms(duration.get("p50"))),
        ("p90 session length", _fmt_ms(duration.get("p90"))),
        ("Bounce rate", _pct(stats.get("bounce_rate"))),
    ]
    body = "".join(
        f'<div class="card"><b>{_e(value)}</b><span>{_e(name)}</span></div>'
        for name, value in cards
    )
    return f'<div class="cards">{body}</div>'


def _figure_html(alt: str, png: str, caption: str) -> str:
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _nodata(text: str) -> str:
    return f'<p class="nodata">{_e(text)}</p>'


def _table(css: str, head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """A table; ``head``: (title, left-aligned); ``rows``: cells as escaped HTML."""
    heads = "".join(
        f'<th class="l">{_e(h)}</th>' if left else f"<th>{_e(h)}</th>" for h, left in head
    )
    body = []
    for row in rows:
        cells = []
        for (_, left), cell in zip(head, row, strict=True):
            cells.append(f'<td class="l t">{cell}</td>' if left else f"<td>{cell}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    if not rows:
        body.append(f'<tr><td class="l" colspan="{len(head)}"><i>no data</i></td></tr>')
    return (
        f'<div class="scroll"><table class="{_e(css)}"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# -- sections ----------------------------------------------------------------------------------


def _bin_label(b: Mapping[str, Any]) -> str:
    lo, hi = b.get("from_s"), b.get("to_s")
    return f"≥ {lo}" if hi is None else f"{lo}\u2013{hi}"


def _duration_section(stats: Mapping[str, Any]) -> list[str]:
    hist = [b for b in stats.get("duration_histogram") or [] if isinstance(b, Mapping)]
    duration = stats.get("duration_ms") or {}
    events = stats.get("events_per_session") or {}
    out = ["<h2>Session length</h2>"]
    counts = [_int(b.get("sessions")) for b in hist]
    if sum(counts):
        out.append(
            _figure_html(
                "Session length histogram",
                _duration_figure([_bin_label(b) for b in hist], counts),
                "Sessions per length bin (seconds; fixed 1-3-10 log-spaced bins, each bin "
                "includes its lower edge). Length: from the session's start to its last event "
                "or its end, whichever is later.",
            )
        )
    else:
        out.append(_nodata("No sessions: no session-length histogram."))
    out.append(
        f'<p class="note">Median {_e(_fmt_ms(duration.get("p50")))}, '
        f"p90 {_e(_fmt_ms(duration.get('p90')))}, p99 {_e(_fmt_ms(duration.get('p99')))}. "
        f"Events per session: mean {_e(_fmt(events.get('mean')))}, "
        f"median {_e(_fmt(events.get('p50'), 1))}. "
        f"Bounces (at most one screen or item view): {_e(_fmt(stats.get('bounces')))} "
        f"({_e(_pct(stats.get('bounce_rate')))}).</p>"
    )
    return out


def _activity_section(stats: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Activity by weekday and hour (UTC)</h2>"]
    raw = stats.get("activity_utc") or []
    try:
        matrix = np.array(raw, dtype=float).reshape(7, 24)
    except ValueError:
        matrix = np.zeros((7, 24))
    if matrix.sum() > 0:
        out.append(
            _figure_html(
                "Activity heatmap",
                _activity_figure(matrix),
                "Events of the selected sessions by UTC weekday (rows, Mon..Sun) and UTC hour "
                "of day (columns, 0..23); darker is busier.",
            )
        )
    else:
        out.append(_nodata("No events: no activity heatmap."))
    return out


def _screens_section(stats: Mapping[str, Any]) -> list[str]:
    screens = [s for s in stats.get("screens") or [] if isinstance(s, Mapping)]
    skip = _fmt_ms(stats.get("skip_below_ms"))
    out = ["<h2>Screens</h2>"]
    plotted = [s for s in screens if _is_num(s.get("skip_rate"))][:PLOT_SCREENS]
    if plotted:
        out.append(
            _figure_html(
                "Skip rate per screen",
                _skip_figure(plotted),
                f"Skip rate of the {len(plotted)} most viewed screens with known dwell times: "
                f"views shorter than {skip} among the views whose dwell time is known.",
            )
        )
    else:
        out.append(_nodata("No screen views with a known dwell time: no skip-rate plot."))
    rows = [
        [
            _e(s.get("screen", "")),
            _e(_fmt(s.get("views"))),
            _e(_fmt(s.get("dwell_known"))),
            _e(_fmt_ms(s.get("dwell_median_ms"))),
            _e(_fmt_ms(s.get("dwell_total_ms"))),
            _e(_fmt(s.get("skips"))),
            _e(_pct(s.get("skip_rate"))),
        ]
        for s in screens[:TABLE_SCREENS]
    ]
    out.append(
        _table(
            "screens",
            [
                ("Screen", True),
                ("Views", False),
                ("Dwell known", False),
                ("Median dwell", False),
                ("Total dwell", False),
                (f"Skips (< {skip})", False),
                ("Skip rate", False),
            ],
            rows,
        )
    )
    if len(screens) > TABLE_SCREENS:
        out.append(
            f'<p class="note">The {TABLE_SCREENS} most viewed of {len(screens)} screens.</p>'
        )
    return out


def _ends_table(css: str, entries: Any, sessions: int) -> str:
    pairs = [p for p in entries or [] if isinstance(p, Mapping)][:TABLE_ENDS]
    rows = [
        [
            _e(p.get("screen", "")),
            _e(_fmt(p.get("sessions"))),
            _e(_pct(_int(p.get("sessions")) / sessions if sessions else None)),
        ]
        for p in pairs
    ]
    return _table(css, [("Screen", True), ("Sessions", False), ("Share", False)], rows)


def _ends_section(stats: Mapping[str, Any]) -> list[str]:
    sessions = _int(stats.get("sessions"))
    return [
        "<h2>Entry and exit screens</h2>",
        '<p class="note">The first and the last screen view of each session; share of all '
        "selected sessions (sessions without screen views have neither).</p>",
        '<div class="cols"><div><h3>Entry screens</h3>',
        _ends_table("entry", stats.get("entry_screens"), sessions),
        "</div><div><h3>Exit screens</h3>",
        _ends_table("exit", stats.get("exit_screens"), sessions),
        "</div></div>",
    ]


def _flows_section(flows: Sequence[Sequence[Any]], max_steps: int | None) -> list[str]:
    rows3 = [(str(f[0]), str(f[1]), _int(f[2])) for f in flows if len(f) == 3]
    total = sum(n for _, _, n in rows3)
    out = ["<h2>Screen flows</h2>"]
    scope = (
        f"the first {max_steps} screen views of each session"
        if max_steps is not None
        else "every screen view"
    )
    if rows3:
        out.append(
            _figure_html(
                "Top screen transitions",
                _flows_figure(rows3),
                f"The most common transitions between consecutive screen views, over {scope}; "
                'grey: sessions that end on the screen (to "(exit)").',
            )
        )
    else:
        out.append(_nodata("No screen views: no flows."))
    rows = [
        [_e(a), _e(b), _e(_fmt(n)), _e(_pct(n / total if total else None))] for a, b, n in rows3
    ]
    out.append(
        _table(
            "flows",
            [("From", True), ("To", True), ("Count", False), ("Share of listed", False)],
            rows,
        )
    )
    return out


def _items_section(stats: Mapping[str, Any]) -> list[str]:
    items = [i for i in stats.get("top_items") or [] if isinstance(i, Mapping)]
    rows = [
        [_e(k + 1), _e(i.get("item_id", "")), _e(_fmt(i.get("views")))] for k, i in enumerate(items)
    ]
    return [
        "<h2>Top items</h2>",
        '<p class="note">Item views of the selected sessions.</p>',
        _table("items", [("#", False), ("Item", True), ("Views", False)], rows),
    ]


def _retention_section(stats: Mapping[str, Any]) -> list[str]:
    retention = stats.get("retention") or {}
    cohort = _int(retention.get("cohort_users"))
    days = [d for d in retention.get("days") or [] if isinstance(d, Mapping)]
    out = ["<h2>Retention</h2>"]
    points = [
        (int(d["day"]), float(d["rate"]), _int(d.get("eligible")))
        for d in days
        if _is_num(d.get("day")) and _is_num(d.get("rate"))
    ]
    if cohort and points:
        out.append(
            _figure_html(
                "Retention curve",
                _retention_figure(points, cohort),
                "Share of the cohort (users whose first session ever is in this selection) "
                "with a session starting on or after day d (day 0: the first session, 100%); each "
                "day only counts users whose day d has come (n: eligible users).",
            )
        )
    else:
        out.append(_nodata("No cohort users with a finished retention window: no curve."))
    rows = [
        [
            _e(_fmt(d.get("day"))),
            _e(_fmt(d.get("eligible"))),
            _e(_fmt(d.get("returned"))),
            _e(_pct(d.get("rate"))),
        ]
        for d in days
    ]
    out.append(
        f'<p class="note">Cohort: {_e(_fmt(cohort))} users whose first session is selected.</p>'
    )
    out.append(
        _table(
            "retention",
            [("Day", False), ("Eligible", False), ("Returned", False), ("Rate", False)],
            rows,
        )
    )
    return out


def _end_reasons_section(stats: Mapping[str, Any]) -> list[str]:
    reasons = stats.get("end_reasons") or {}
    sessions = _int(stats.get("sessions"))
    rows = [
        [
            _e(name),
            _e(_fmt(count)),
            _e(_pct(_int(count) / sessions if sessions else None)),
        ]
        for name, count in reasons.items()
    ]
    return [
        "<h2>How sessions end</h2>",
        '<p class="note">OPEN: not ended yet; CLOSED: ended by the app; TIMEOUT: closed by '
        "the server after inactivity.</p>",
        _table("end-reasons", [("End reason", True), ("Sessions", False), ("Share", False)], rows),
    ]


# -- plots -------------------------------------------------------------------------------------


def _duration_figure(labels: Sequence[str], counts: Sequence[int]) -> str:
    fig = figure(10, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(counts))
    values = np.asarray(counts, dtype=float)
    ax.bar(x, values, 0.85, color=BLUE, alpha=0.85)
    for xi, n in zip(x, counts, strict=True):
        if n:
            ax.annotate(
                f"{n:,}",
                (float(xi), float(n)),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(x, list(labels))
    ax.set_xlabel("Session length (seconds)")
    ax.set_ylabel("Sessions")
    ax.set_ylim(0, max(1.0, float(values.max())) * 1.15)
    ax.set_title("Session length distribution")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _activity_figure(matrix: np.ndarray) -> str:
    fig = figure(10, 3.6)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="Blues", interpolation="nearest", vmin=0)
    ax.set_yticks(np.arange(7), list(WEEKDAYS))
    ax.set_xticks(np.arange(24), [str(h) for h in range(24)])
    ax.set_xticks(np.arange(-0.5, 24), minor=True)
    ax.set_yticks(np.arange(-0.5, 7), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("Hour of day (UTC)")
    ax.set_title("Events by weekday and hour of day (UTC)")
    fig.colorbar(image, ax=ax, label="Events", pad=0.01)
    return _png(fig)


def _hbar_figure(n: int) -> tuple[Figure, Any, np.ndarray]:
    fig = figure(10, max(2.4, 0.32 * n + 1.3))
    ax = fig.add_subplot()
    y = np.arange(n, dtype=float)
    ax.invert_yaxis()  # the first (largest) at the top
    ax.grid(axis="x", alpha=0.3)
    return fig, ax, y


def _skip_figure(screens: Sequence[Mapping[str, Any]]) -> str:
    fig, ax, y = _hbar_figure(len(screens))
    rates = np.array([float(s["skip_rate"]) for s in screens])
    ax.barh(y, rates, 0.7, color=ORANGE, alpha=0.85)
    for yi, rate, s in zip(y, rates, screens, strict=True):
        ax.annotate(
            f"{rate:.0%} of {_int(s.get('dwell_known')):,}",
            (float(rate), float(yi)),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    # screen names are user input: no mathtext parsing of "$...$"
    ax.set_yticks(y, [_label(s.get("screen", "")) for s in screens], parse_math=False)
    ax.set_xlim(0, 1.12)
    percent_axis(ax.xaxis)
    ax.set_xlabel("Skip rate (views with known dwell below the threshold)")
    ax.set_title("Skip rate of the most viewed screens")
    return _png(fig)


def _flows_figure(flows: Sequence[tuple[str, str, int]]) -> str:
    fig, ax, y = _hbar_figure(len(flows))
    counts = np.array([n for _, _, n in flows], dtype=float)
    colors = [GREY if b == EXIT else BLUE for _, b, _ in flows]
    ax.barh(y, counts, 0.7, color=colors, alpha=0.85)
    for yi, n in zip(y, counts, strict=True):
        ax.annotate(
            f"{int(n):,}",
            (float(n), float(yi)),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    half = LABEL_CHARS // 2 + 4
    labels = [f"{_label(a, half)} → {_label(b, half)}" for a, b, _ in flows]
    ax.set_yticks(y, labels, parse_math=False)
    ax.set_xlim(0, max(1.0, float(counts.max())) * 1.12)
    ax.set_xlabel("Transitions")
    ax.set_title("Most common screen transitions")
    return _png(fig)


def _retention_figure(points: Sequence[tuple[int, float, int]], cohort: int) -> str:
    fig = figure(10, 3.8)
    ax = fig.add_subplot()
    days = [0] + [d for d, _, _ in points]
    rates = [1.0] + [r for _, r, _ in points]
    ax.plot(days, rates, marker="o", color=GREEN, lw=2)
    ax.fill_between(days, rates, color=GREEN, alpha=0.1)
    for day, rate, eligible in points:
        ax.annotate(
            f"day {day}: {rate:.0%}\n(n={eligible:,})",
            (float(day), rate),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(days)
    ax.set_xlim(-0.5, max(days) * 1.06 + 0.5)
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    percent_axis(ax.yaxis)
    ax.set_xlabel("Days after the first session")
    ax.set_ylabel("Returned on or after day d")
    ax.set_title(f"Retention of the first-session cohort ({cohort:,} users)")
    ax.grid(alpha=0.3)
    return _png(fig)
