"""Session analytics computed straight from a SQLite store file.

:func:`session_stats` and :func:`screen_flows` open their own **read-only**
``sqlite3`` connection on the store's file (a path, or a ``sqlite:///`` URL), so
they can run beside a live server (WAL lets them read while it writes) and never
change the file. The work is done by SQL aggregates; numpy does the percentiles,
the histogram and the activity matrix.

Definitions (all of them; tests check each one by hand):

* **Selected sessions**: rows of ``sessions`` with ``started_at_ms`` in
  ``[start_ms, end_ms)`` (either bound None: open) and, when given, the exact
  ``platform`` (the ``Platform`` number) and ``app_version``. Every other
  statistic is about the selected sessions and **all** their stored events,
  whatever the events' own times (late events included). Events whose session
  is not in ``sessions`` are never counted.
* **Duration** of a session: ``last_event_at_ms - started_at_ms``, or
  ``ended_at_ms - started_at_ms`` when the session has ended later than its
  last event; never below 0. Percentiles (p50/p90/p99, in ms) use linear
  interpolation between order statistics (numpy's default).
* **Duration histogram**: fixed, roughly log-spaced (1-3-10) bin edges in
  seconds, :data:`DURATION_BIN_EDGES_S` = 0, 1, 3, 10, 30, 100, 300, 1000,
  3000, 10000; bin ``k`` holds durations in ``[edge[k], edge[k+1])`` and the last
  bin is ``[10000 s, inf)``.
* **Events per session**: stored events of the session (every type), sessions
  without events count as 0; mean and median.
* **Bounce** ("one-screen session"): a selected session with **at most one**
  view event (``SCREEN_VIEW`` or ``ITEM_VIEW``; other types do not matter),
  sessions with no view at all included. Bounce rate = bounces / sessions.
* **Screens**: ``SCREEN_VIEW`` events with a non-NULL ``screen``, grouped by
  screen and ranked by views (ties by name). ``dwell_known`` counts views
  whose ``dwell_ms`` is known (not NULL: client-sent or derived at close);
  total and median dwell are over those. **Skip rate** = views with known
  dwell ``< skip_below_ms`` / views with known dwell (None when no dwell is
  known): a view whose dwell is unknown is neither a skip nor a non-skip.
* **Top items**: ``ITEM_VIEW`` events by ``item_id``, the :data:`TOP_ITEMS`
  (20) most viewed, ties by item id.
* **Entry / exit screens**: the first and the last screen view (as above) of
  each session ordered by ``(ts_ms, seq)``, i.e. ties in time go by insertion
  order; sessions without screen views have neither. Ranked by count, then name.
* **Activity**: a 7 x 24 matrix of event counts by UTC weekday (row, 0 =
  Monday) and UTC hour of ``ts_ms`` (column).
* **Retention** by first-session cohort: a user's *first session* is their
  earliest ``started_at_ms`` in the whole store (all platforms and versions);
  the cohort is the users whose first session is one of the selected sessions
  (so it starts in the range and matches the filters). A cohort user
  *returned on day d* when they have any session (any platform or version)
  starting **at or after** ``first + d days`` ("returned on or after day d",
  so day-7 returners are also day-1 returners). Day ``d`` is only judged for
  users with ``first + d days <= now_ms``; the others are left out of that
  day's denominator (``eligible``). Rate = returned / eligible.
* **End reasons**: selected sessions per :class:`~sessionrec.events.EndReason`
  name (``OPEN`` for sessions still open), every name present (0 included).

:func:`screen_flows` counts the transitions between consecutive screen views of
a session (same ordering, self-transitions such as ``home -> home`` included)
and where sessions end (``last screen -> "(exit)"``), over the first
``max_steps`` screen views of each session: a session with more screen views
than that contributes its first ``max_steps - 1`` transitions and no exit.

Undefined values (a rate or percentile over nothing) are ``None``, never NaN,
so ``json.dumps(stats.to_dict(), allow_nan=False)`` works.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from sessionrec.analytics_days import DAY_MS, CacheWriter, DayColumns, build_stale, load_days
from sessionrec.arrays import distinct
from sessionrec.errors import InvalidArgument
from sessionrec.events import EndReason
from sessionrec.store.base import SQLReader, Store
from sessionrec.store.sqlite import SQLiteReader

__all__ = [
    "DURATION_BIN_EDGES_S",
    "EXIT",
    "RETENTION_DAYS",
    "TOP_ITEMS",
    "RetentionPoint",
    "ScreenChange",
    "ScreenStats",
    "SessionData",
    "SessionStats",
    "load_session_data",
    "refresh_days",
    "screen_anomalies",
    "screen_flows",
    "session_stats",
]

#: Lower edges (seconds) of the duration histogram's bins; the last bin is open.
DURATION_BIN_EDGES_S: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000)
#: Days after the first session at which retention is measured.
RETENTION_DAYS: tuple[int, ...] = (1, 7, 30)
#: How many of the most viewed items are listed.
TOP_ITEMS = 20
#: The pseudo-screen that ends a flow.
EXIT = "(exit)"


#: Where the analytics read: a store, or the path (or ``sqlite:///`` URL) of a
#: SQLite store file (opened read-only).
DbPath = str | PathLike[str] | Store


@dataclass(frozen=True)
class ScreenStats:
    screen: str
    views: int
    #: Views whose dwell time is known (not NULL).
    dwell_known: int
    dwell_total_ms: int
    dwell_median_ms: float | None
    #: Views with known dwell below ``skip_below_ms``.
    skips: int

    @property
    def skip_rate(self) -> float | None:
        return self.skips / self.dwell_known if self.dwell_known else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "screen": self.screen,
            "views": self.views,
            "dwell_known": self.dwell_known,
            "dwell_total_ms": self.dwell_total_ms,
            "dwell_median_ms": self.dwell_median_ms,
            "skips": self.skips,
            "skip_rate": self.skip_rate,
        }


@dataclass(frozen=True)
class RetentionPoint:
    day: int
    #: Cohort users whose day ``day`` has begun (``first + day days <= now_ms``).
    eligible: int
    #: Eligible users with a session starting at or after ``first + day days``.
    returned: int

    @property
    def rate(self) -> float | None:
        return self.returned / self.eligible if self.eligible else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "eligible": self.eligible,
            "returned": self.returned,
            "rate": self.rate,
        }


@dataclass(frozen=True)
class SessionStats:
    """What :func:`session_stats` computed (see the module docstring for definitions)."""

    start_ms: int | None
    end_ms: int | None
    platform: int | None
    app_version: str | None
    skip_below_ms: int
    now_ms: int
    sessions: int
    users: int
    duration_p50_ms: float | None
    duration_p90_ms: float | None
    duration_p99_ms: float | None
    #: Sessions per bin of :data:`DURATION_BIN_EDGES_S`.
    duration_histogram: tuple[int, ...]
    events_per_session_mean: float | None
    events_per_session_p50: float | None
    bounces: int
    screens: tuple[ScreenStats, ...]
    top_items: tuple[tuple[str, int], ...]
    entry_screens: tuple[tuple[str, int], ...]
    exit_screens: tuple[tuple[str, int], ...]
    #: 7 rows (UTC weekday, 0 = Monday) of 24 event counts (UTC hour).
    activity: tuple[tuple[int, ...], ...]
    retention_cohort: int
    retention: tuple[RetentionPoint, ...]
    end_reasons: dict[str, int] = field(hash=False)
    segment: str | None = None

    @property
    def sessions_per_user(self) -> float | None:
        return self.sessions / self.users if self.users else None

    @property
    def bounce_rate(self) -> float | None:
        return self.bounces / self.sessions if self.sessions else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with None (never NaN) for undefined values."""
        edges = DURATION_BIN_EDGES_S
        return {
            "filters": {
                "start_ms": self.start_ms,
                "end_ms": self.end_ms,
                "platform": self.platform,
                "app_version": self.app_version,
                "segment": self.segment,
            },
            "skip_below_ms": self.skip_below_ms,
            "now_ms": self.now_ms,
            "sessions": self.sessions,
            "users": self.users,
            "sessions_per_user": self.sessions_per_user,
            "duration_ms": {
                "p50": self.duration_p50_ms,
                "p90": self.duration_p90_ms,
                "p99": self.duration_p99_ms,
            },
            "duration_histogram": [
                {
                    "from_s": edges[k],
                    "to_s": edges[k + 1] if k + 1 < len(edges) else None,
                    "sessions": n,
                }
                for k, n in enumerate(self.duration_histogram)
            ],
            "events_per_session": {
                "mean": self.events_per_session_mean,
                "p50": self.events_per_session_p50,
            },
            "bounces": self.bounces,
            "bounce_rate": self.bounce_rate,
            "screens": [s.to_dict() for s in self.screens],
            "top_items": [{"item_id": i, "views": n} for i, n in self.top_items],
            "entry_screens": [{"screen": s, "sessions": n} for s, n in self.entry_screens],
            "exit_screens": [{"screen": s, "sessions": n} for s, n in self.exit_screens],
            "activity_utc": [list(row) for row in self.activity],
            "retention": {
                "cohort_users": self.retention_cohort,
                "days": [p.to_dict() for p in self.retention],
            },
            "end_reasons": dict(self.end_reasons),
        }


# ------------------------------------------------------------------ plumbing
def _resolve_path(db_path: str | PathLike[str]) -> Path:
    text = str(db_path)
    if text.startswith("sqlite:"):
        from sessionrec.store import sqlite_path_from_url

        text = sqlite_path_from_url(text)
    if text == ":memory:":
        raise ValueError("analytics: an in-memory store has no file to read")
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"analytics: no store file at {path}")
    return path


@contextmanager
def _snapshot(source: DbPath) -> Iterator[SQLReader]:
    """One read-only snapshot of ``source`` (a store, or a SQLite file)."""
    if isinstance(source, Store):
        with source.read_snapshot() as reader:
            yield reader
        return
    with _read_only(source) as conn:
        conn.execute("BEGIN")
        try:
            yield SQLiteReader(conn)
        finally:
            conn.execute("COMMIT")


@contextmanager
def _read_only(db_path: str | PathLike[str]) -> Iterator[sqlite3.Connection]:
    path = _resolve_path(db_path)
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA query_only = 1")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"events", "sessions"} <= tables:
            raise ValueError(f"analytics: {path} is not a sessionrec store (no events/sessions)")
        yield conn
    finally:
        conn.close()


#: User segments a selection can keep: the user's first session ever, or a later one.
SEGMENTS = ("NEW_USER", "RETURNING_USER")


def _float(x: Any) -> float | None:
    if x is None:
        return None
    value = float(x)
    return None if math.isnan(value) else value


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SessionData:
    """The columns of the sessions starting in a period (and matching the filters),
    with every user's first and last session start in the whole store: what
    :func:`session_stats` and :func:`screen_flows` compute from. Build it with
    :func:`load_session_data`."""

    columns: DayColumns
    #: Which session rows of ``columns`` are selected.
    selected: np.ndarray
    #: Every user of the store (sorted) with their first and last session start.
    users: np.ndarray
    #: Each session row's user, as an index into ``users``.
    session_user: np.ndarray
    first_ms: np.ndarray
    last_ms: np.ndarray
    start_ms: int | None
    end_ms: int | None
    platform: int | None
    app_version: str | None
    segment: str | None


def load_session_data(
    db_path: DbPath,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    platform: int | None = None,
    app_version: str | None = None,
    segment: str | None = None,
    cache: CacheWriter | None = None,
) -> SessionData:
    """Reads what the statistics of the sessions starting in ``[start_ms, end_ms)``
    need, in one snapshot of the store file: the cached analytics days (building
    the days that changed since, and handing them to ``cache`` to keep), and the
    users' first and last session starts."""
    if segment is not None and segment not in SEGMENTS:
        raise InvalidArgument(f"segment: expected one of {', '.join(SEGMENTS)}, got {segment!r}")
    with _snapshot(db_path) as c:
        columns, built = load_days(c, start_ms, end_ms)
        users = c.execute(
            "SELECT user_id, MIN(started_at_ms), MAX(started_at_ms) FROM sessions GROUP BY user_id"
        ).fetchall()
    if cache is not None and built:
        cache(built)
    ids = np.array([u for u, _, _ in users], dtype=str) if users else np.array([], dtype="<U1")
    first = np.array([f for _, f, _ in users], dtype=np.int64)
    last = np.array([m for _, _, m in users], dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # numpy's order, whatever SQLite's collation
    ids, first, last = ids[order], first[order], last[order]

    session_user = np.searchsorted(ids, columns.s_user)
    keep = np.ones(columns.sessions, dtype=bool)
    if start_ms is not None:
        keep &= columns.s_start >= start_ms
    if end_ms is not None:
        keep &= columns.s_start < end_ms
    if platform is not None:
        keep &= columns.s_platform == int(platform)
    if app_version is not None:
        keep &= columns.s_version == str(app_version)
    if segment is not None:
        is_first = columns.s_start == first[session_user]
        keep &= is_first if segment == "NEW_USER" else ~is_first
    return SessionData(
        columns,
        keep,
        ids,
        session_user,
        first,
        last,
        start_ms,
        end_ms,
        platform,
        app_version,
        segment,
    )


def refresh_days(db_path: DbPath, cache: CacheWriter, *, limit: int | None = None) -> int:
    """Builds the analytics days that changed since they were cached (the most
    recent first, at most ``limit``) and hands them to ``cache``. Returns how
    many were built."""
    with _snapshot(db_path) as c:
        built = build_stale(c, limit)
    if built:
        cache(built)
    return len(built)


def _group_sorted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sorted ``keys``: the distinct keys, where each run starts, and its length."""
    if not len(keys):
        empty = np.array([], dtype=np.int64)
        return keys, empty, empty
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], starts, np.diff(np.r_[starts, len(keys)])


def _ranked(names: np.ndarray, counts: np.ndarray) -> tuple[tuple[str, int], ...]:
    pairs = ((str(s), int(k)) for s, k in zip(names.tolist(), counts.tolist(), strict=True) if k)
    return tuple(sorted(pairs, key=lambda p: (-p[1], p[0])))


# ------------------------------------------------------------------ stats
def session_stats(
    db_path: DbPath,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    platform: int | None = None,
    app_version: str | None = None,
    skip_below_ms: int = 3000,
    now_ms: int | None = None,
    retention_days: Sequence[int] = RETENTION_DAYS,
    segment: str | None = None,
    cache: CacheWriter | None = None,
    data: SessionData | None = None,
) -> SessionStats:
    """Statistics of the sessions that start in ``[start_ms, end_ms)`` (and match
    ``platform``/``app_version`` when given), read from the store file ``db_path``.

    ``now_ms`` (default: the current time) decides which retention days are over.
    ``segment``: only sessions that are their user's first session ever
    (``NEW_USER``), or only the later ones (``RETURNING_USER``). ``cache``: keeps
    the analytics days this call had to build (see :mod:`sessionrec.analytics_days`).
    ``data``: what :func:`load_session_data` read for the same filters, if at hand.
    """
    if skip_below_ms < 0:
        raise ValueError("skip_below_ms: must be >= 0")
    days = tuple(int(d) for d in retention_days)
    if any(d < 1 for d in days):
        raise ValueError("retention_days: each must be >= 1")
    now = _now_ms() if now_ms is None else int(now_ms)
    if data is None:
        data = load_session_data(
            db_path,
            start_ms=start_ms,
            end_ms=end_ms,
            platform=platform,
            app_version=app_version,
            segment=segment,
            cache=cache,
        )
    col, sel = data.columns, data.selected
    n = int(sel.sum())
    durations = col.s_duration[sel]
    n_events = col.s_events[sel]
    pcts: list[float | None] = [None, None, None]
    ev_mean: float | None = None
    ev_p50: float | None = None
    if n:
        pcts = [float(v) for v in np.percentile(durations, [50, 90, 99])]
        ev_mean = float(n_events.mean())
        ev_p50 = float(np.median(n_events))
    edges_ms = np.array(DURATION_BIN_EDGES_S, dtype=np.int64) * 1000
    bins = np.searchsorted(edges_ms, durations, side="right") - 1
    histogram = np.bincount(bins, minlength=len(edges_ms))

    # Screens: views grouped by screen, known dwell sorted inside each group.
    in_sel = sel[col.v_session]
    codes, dwell = col.v_screen[in_sel], col.v_dwell[in_sel]
    views = np.bincount(codes, minlength=len(col.screens))
    known = dwell >= 0
    k_codes, k_dwell = codes[known], dwell[known]
    if len(k_dwell) and k_dwell.max() < 1 << 36:  # 795 days; always, but for odd imports
        keys = np.sort((k_codes << 36) | k_dwell)  # one sort by (screen, dwell)
        k_codes, k_dwell = keys >> 36, keys & ((1 << 36) - 1)
    else:
        order = np.lexsort((k_dwell, k_codes))
        k_codes, k_dwell = k_codes[order], k_dwell[order]
    screen_rows = []
    group_codes, starts, lengths = _group_sorted(k_codes)
    by_code = {
        int(g): (int(a), int(m)) for g, a, m in zip(group_codes, starts, lengths, strict=True)
    }
    for code in np.flatnonzero(views).tolist():
        a, m = by_code.get(code, (0, 0))
        group = k_dwell[a : a + m]
        screen_rows.append(
            ScreenStats(
                screen=str(col.screens[code]),
                views=int(views[code]),
                dwell_known=m,
                dwell_total_ms=int(group.sum()),
                dwell_median_ms=(
                    (int(group[(m - 1) // 2]) + int(group[m // 2])) / 2 if m else None
                ),
                skips=int(np.searchsorted(group, skip_below_ms, side="left")),
            )
        )
    screen_rows.sort(key=lambda s: (-s.views, s.screen))

    # Top items, ties by item id: every item tied with the last one is named.
    hashes, counts = np.unique(col.i_hash[sel[col.i_session]], return_counts=True)
    top_items: list[tuple[str, int]] = []
    if len(counts):
        cutoff = np.sort(counts)[::-1][min(TOP_ITEMS, len(counts)) - 1]
        contenders = counts >= cutoff
        tied_hashes, tied_counts = hashes[contenders].tolist(), counts[contenders].tolist()
        names = col.item_names(hashes[contenders])
        top_items = sorted(
            ((names[h], int(k)) for h, k in zip(tied_hashes, tied_counts, strict=True)),
            key=lambda p: (-p[1], p[0]),
        )[:TOP_ITEMS]

    # Entry and exit screens: first and last screen view of each session.
    v_sessions = col.v_session[in_sel]
    entry = exit_ = np.zeros(len(col.screens), dtype=np.int64)
    if len(v_sessions):
        change = np.r_[True, v_sessions[1:] != v_sessions[:-1]]
        entry = np.bincount(codes[change], minlength=len(col.screens))
        exit_ = np.bincount(codes[np.r_[change[1:], True]], minlength=len(col.screens))

    activity = np.zeros(7 * 24, dtype=np.int64)
    in_act = sel[col.a_session]
    np.add.at(activity, col.a_how[in_act], col.a_count[in_act])

    # Retention of the users whose first session is selected.
    users_sel = data.session_user[sel]
    cohort_users = distinct(users_sel)
    cohort = distinct(users_sel[col.s_start[sel] == data.first_ms[users_sel]])
    first, last = data.first_ms[cohort], data.last_ms[cohort]
    retention = []
    for d in days:
        due = first + d * DAY_MS
        eligible = due <= now
        retention.append(
            RetentionPoint(d, int(eligible.sum()), int((eligible & (last >= due)).sum()))
        )

    end_reasons = {r.name: 0 for r in EndReason}
    codes_end, count_end = np.unique(col.s_end[sel], return_counts=True)
    for code, count in zip(codes_end.tolist(), count_end.tolist(), strict=True):
        name = EndReason(code).name if code in EndReason._value2member_map_ else f"UNKNOWN_{code}"
        end_reasons[name] = end_reasons.get(name, 0) + int(count)

    return SessionStats(
        start_ms=data.start_ms,
        end_ms=data.end_ms,
        platform=data.platform,
        app_version=data.app_version,
        skip_below_ms=int(skip_below_ms),
        now_ms=now,
        sessions=n,
        users=len(cohort_users),
        duration_p50_ms=_float(pcts[0]),
        duration_p90_ms=_float(pcts[1]),
        duration_p99_ms=_float(pcts[2]),
        duration_histogram=tuple(int(k) for k in histogram),
        events_per_session_mean=_float(ev_mean),
        events_per_session_p50=_float(ev_p50),
        bounces=int((col.s_views[sel] <= 1).sum()),
        screens=tuple(screen_rows),
        top_items=tuple(top_items),
        entry_screens=_ranked(col.screens, entry),
        exit_screens=_ranked(col.screens, exit_),
        activity=tuple(tuple(int(v) for v in row) for row in activity.reshape(7, 24)),
        retention_cohort=len(cohort),
        retention=tuple(retention),
        end_reasons=end_reasons,
        segment=data.segment,
    )


def screen_flows(
    db_path: DbPath,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_steps: int | None = 5,
    top: int | None = 20,
    platform: int | None = None,
    app_version: str | None = None,
    segment: str | None = None,
    cache: CacheWriter | None = None,
    data: SessionData | None = None,
) -> list[tuple[str, str, int]]:
    """The most common screen-to-screen transitions of the selected sessions, as
    ``(from, to, count)`` sorted by count (then names), ``to`` = :data:`EXIT` where
    a session ends. Only the first ``max_steps`` screen views of each session
    count (None: all); ``top`` limits the list (None: all)."""
    if max_steps is not None and max_steps < 1:
        raise ValueError("max_steps: must be >= 1 (or None)")
    if top is not None and top < 1:
        raise ValueError("top: must be >= 1 (or None)")
    if data is None:
        data = load_session_data(
            db_path,
            start_ms=start_ms,
            end_ms=end_ms,
            platform=platform,
            app_version=app_version,
            segment=segment,
            cache=cache,
        )
    col = data.columns
    in_sel = data.selected[col.v_session]
    sessions, codes = col.v_session[in_sel], col.v_screen[in_sel]
    if not len(codes):
        return []
    _, starts, lengths = _group_sorted(sessions)
    rank = np.arange(len(codes)) - np.repeat(starts, lengths) + 1  # 1-based, per session
    has_next = np.r_[sessions[1:] == sessions[:-1], False]
    exit_code = len(col.screens)  # EXIT
    dest = np.where(has_next, np.r_[codes[1:], exit_code], exit_code)
    keep = np.ones(len(codes), dtype=bool)
    if max_steps is not None:
        keep = (rank < max_steps) | ((rank == max_steps) & ~has_next)
    pairs, counts = np.unique(codes[keep] * (exit_code + 1) + dest[keep], return_counts=True)
    names = [*col.screens.tolist(), EXIT]
    rows = [
        (names[p // (exit_code + 1)], names[p % (exit_code + 1)], int(k))
        for p, k in zip(pairs.tolist(), counts.tolist(), strict=True)
    ]
    rows.sort(key=lambda r: (-r[2], r[0], r[1]))
    return rows if top is None else rows[:top]


@dataclass(frozen=True)
class ScreenChange:
    """How a screen's dwell and skip rate moved against the previous period."""

    screen: str
    views: int
    previous_views: int
    skip_rate: float | None
    previous_skip_rate: float | None
    dwell_median_ms: float | None
    previous_dwell_median_ms: float | None

    @property
    def skip_rate_change(self) -> float | None:
        """Percentage points (as a fraction): +0.2 means 20 points more skips."""
        if self.skip_rate is None or self.previous_skip_rate is None:
            return None
        return self.skip_rate - self.previous_skip_rate

    @property
    def dwell_change(self) -> float | None:
        """Relative change of the median dwell: -0.5 means half as long."""
        if self.previous_dwell_median_ms is None or self.dwell_median_ms is None:
            return None
        if self.previous_dwell_median_ms <= 0:
            return None if self.dwell_median_ms <= 0 else math.inf
        return self.dwell_median_ms / self.previous_dwell_median_ms - 1.0

    @property
    def strength(self) -> float:
        """How much it moved, the ranking key of :func:`screen_anomalies`: skip-rate
        points plus |log2| of the dwell ratio (halving and doubling weigh the
        same, 1.0; a median moving from or to 0 counts as 4)."""
        dwell = 0.0
        if self.dwell_median_ms is not None and self.previous_dwell_median_ms is not None:
            a, b = self.dwell_median_ms, self.previous_dwell_median_ms
            dwell = abs(math.log2(a / b)) if a > 0 and b > 0 else (0.0 if a == b else 4.0)
        return abs(self.skip_rate_change or 0.0) + dwell

    def to_dict(self) -> dict[str, Any]:
        return {
            "screen": self.screen,
            "views": self.views,
            "previous_views": self.previous_views,
            "skip_rate": self.skip_rate,
            "previous_skip_rate": self.previous_skip_rate,
            "skip_rate_change": self.skip_rate_change,
            "dwell_median_ms": self.dwell_median_ms,
            "previous_dwell_median_ms": self.previous_dwell_median_ms,
            "dwell_change": (
                None
                if self.dwell_change is None or math.isinf(self.dwell_change)
                else self.dwell_change
            ),
            "strength": self.strength,
        }


def screen_anomalies(
    db_path: DbPath,
    *,
    start_ms: int,
    end_ms: int,
    platform: int | None = None,
    app_version: str | None = None,
    skip_below_ms: int = 3000,
    min_views: int = 20,
    top: int = 10,
    current: SessionStats | None = None,
    segment: str | None = None,
    cache: CacheWriter | None = None,
) -> list[ScreenChange]:
    """Screens whose skip rate or median dwell moved most in ``[start_ms, end_ms)``
    against the period of the same length just before: the "users are struggling
    here" signal. Only screens with at least ``min_views`` views of known dwell in
    both periods count (skip rate and dwell come from those); ranked by
    :attr:`ScreenChange.strength`, the ``top`` first. ``current``: the stats of
    ``[start_ms, end_ms)`` with the same filters, when already computed."""
    if end_ms <= start_ms:
        raise InvalidArgument("end_ms: must be after start_ms")
    if min_views < 1 or top < 1:
        raise InvalidArgument("min_views, top: must be >= 1")
    length = end_ms - start_ms

    def stats(a: int, b: int) -> SessionStats:
        return session_stats(
            db_path,
            start_ms=a,
            end_ms=b,
            platform=platform,
            app_version=app_version,
            skip_below_ms=skip_below_ms,
            segment=segment,
            cache=cache,
        )

    now = current if current is not None else stats(start_ms, end_ms)
    before = stats(start_ms - length, start_ms)
    previous = {s.screen: s for s in before.screens}
    changes = []
    for s in now.screens:
        p = previous.get(s.screen)
        if p is None or s.dwell_known < min_views or p.dwell_known < min_views:
            continue
        changes.append(
            ScreenChange(
                s.screen,
                s.views,
                p.views,
                s.skip_rate,
                p.skip_rate,
                s.dwell_median_ms,
                p.dwell_median_ms,
            )
        )
    changes.sort(key=lambda c: (-c.strength, c.screen))
    return changes[:top]
