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

from sessionrec.errors import InvalidArgument
from sessionrec.events import EndReason, EventType

__all__ = [
    "DURATION_BIN_EDGES_S",
    "EXIT",
    "RETENTION_DAYS",
    "TOP_ITEMS",
    "RetentionPoint",
    "ScreenChange",
    "ScreenStats",
    "SessionStats",
    "screen_anomalies",
    "screen_flows",
    "session_stats",
]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: Lower edges (seconds) of the duration histogram's bins; the last bin is open.
DURATION_BIN_EDGES_S: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000)
#: Days after the first session at which retention is measured.
RETENTION_DAYS: tuple[int, ...] = (1, 7, 30)
#: How many of the most viewed items are listed.
TOP_ITEMS = 20
#: The pseudo-screen that ends a flow.
EXIT = "(exit)"

_SCREEN = int(EventType.SCREEN_VIEW)
_ITEM = int(EventType.ITEM_VIEW)
_VIEWS_SQL = f"{_SCREEN}, {_ITEM}"
_IN_SEL = "session_id IN (SELECT session_id FROM sel)"

DbPath = str | PathLike[str]


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
def _resolve_path(db_path: DbPath) -> Path:
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
def _read_only(db_path: DbPath) -> Iterator[sqlite3.Connection]:
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


def _selection(
    start_ms: int | None,
    end_ms: int | None,
    platform: int | None,
    app_version: str | None,
    segment: str | None = None,
) -> tuple[str, list[Any]]:
    """The ``sel`` CTE (selected sessions) and its parameters."""
    where: list[str] = []
    params: list[Any] = []
    if segment is not None:
        if segment not in SEGMENTS:
            raise InvalidArgument(
                f"segment: expected one of {', '.join(SEGMENTS)}, got {segment!r}"
            )
        first = (
            "started_at_ms = (SELECT MIN(s2.started_at_ms) FROM sessions s2"
            " WHERE s2.user_id = sessions.user_id)"
        )
        where.append(first if segment == "NEW_USER" else f"NOT ({first})")
    if start_ms is not None:
        where.append("started_at_ms >= ?")
        params.append(int(start_ms))
    if end_ms is not None:
        where.append("started_at_ms < ?")
        params.append(int(end_ms))
    if platform is not None:
        where.append("platform = ?")
        params.append(int(platform))
    if app_version is not None:
        where.append("app_version = ?")
        params.append(str(app_version))
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    cte = (
        "sel AS (SELECT session_id, user_id, started_at_ms, last_event_at_ms, ended_at_ms,"
        f" end_reason FROM sessions{cond})"
    )
    return cte, params


def _float(x: Any) -> float | None:
    if x is None:
        return None
    value = float(x)
    return None if math.isnan(value) else value


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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
) -> SessionStats:
    """Statistics of the sessions that start in ``[start_ms, end_ms)`` (and match
    ``platform``/``app_version`` when given), read from the store file ``db_path``.

    ``now_ms`` (default: the current time) decides which retention days are over.
    ``segment``: only sessions that are their user's first session ever
    (``NEW_USER``), or only the later ones (``RETURNING_USER``).
    """
    if skip_below_ms < 0:
        raise ValueError("skip_below_ms: must be >= 0")
    days = tuple(int(d) for d in retention_days)
    if any(d < 1 for d in days):
        raise ValueError("retention_days: each must be >= 1")
    now = _now_ms() if now_ms is None else int(now_ms)
    cte, sp = _selection(start_ms, end_ms, platform, app_version, segment)
    with _read_only(db_path) as c:
        per_session = np.array(
            c.execute(
                f"""WITH {cte}, counts AS (
                    SELECT session_id, COUNT(*) AS n, SUM(type IN ({_VIEWS_SQL})) AS views
                    FROM events WHERE {_IN_SEL} GROUP BY session_id)
                SELECT MAX(0, MAX(sel.last_event_at_ms,
                                  COALESCE(sel.ended_at_ms, sel.last_event_at_ms))
                              - sel.started_at_ms),
                       COALESCE(counts.n, 0), COALESCE(counts.views, 0)
                FROM sel LEFT JOIN counts ON counts.session_id = sel.session_id""",
                sp,
            ).fetchall(),
            dtype=np.int64,
        ).reshape(-1, 3)
        users = int(
            c.execute(f"WITH {cte} SELECT COUNT(DISTINCT user_id) FROM sel", sp).fetchone()[0]
        )
        reasons = c.execute(
            f"WITH {cte} SELECT end_reason, COUNT(*) FROM sel GROUP BY end_reason", sp
        ).fetchall()
        screen_rows = c.execute(
            f"""WITH {cte}
            SELECT screen, COUNT(*), COUNT(dwell_ms), COALESCE(SUM(dwell_ms), 0),
                   COALESCE(SUM(dwell_ms < ?), 0)
            FROM events WHERE type = {_SCREEN} AND screen IS NOT NULL AND {_IN_SEL}
            GROUP BY screen ORDER BY COUNT(*) DESC, screen""",
            [*sp, int(skip_below_ms)],
        ).fetchall()
        medians = dict(
            c.execute(
                f"""WITH {cte}
                SELECT screen, AVG(dwell_ms) FROM (
                    SELECT screen, dwell_ms,
                           ROW_NUMBER() OVER (PARTITION BY screen ORDER BY dwell_ms) AS rn,
                           COUNT(*) OVER (PARTITION BY screen) AS n
                    FROM events WHERE type = {_SCREEN} AND screen IS NOT NULL
                      AND dwell_ms IS NOT NULL AND {_IN_SEL})
                WHERE rn IN ((n + 1) / 2, (n + 2) / 2) GROUP BY screen""",
                sp,
            ).fetchall()
        )
        top_items = c.execute(
            f"""WITH {cte}
            SELECT item_id, COUNT(*) AS n FROM events
            WHERE type = {_ITEM} AND item_id IS NOT NULL AND {_IN_SEL}
            GROUP BY item_id ORDER BY n DESC, item_id LIMIT {TOP_ITEMS}""",
            sp,
        ).fetchall()
        ends = c.execute(
            f"""WITH {cte}
            SELECT screen, SUM(rf = 1), SUM(rl = 1) FROM (
                SELECT screen,
                       ROW_NUMBER() OVER (PARTITION BY session_id ORDER BY ts_ms, seq) AS rf,
                       ROW_NUMBER() OVER (PARTITION BY session_id
                                          ORDER BY ts_ms DESC, seq DESC) AS rl
                FROM events WHERE type = {_SCREEN} AND screen IS NOT NULL AND {_IN_SEL})
            WHERE rf = 1 OR rl = 1 GROUP BY screen""",
            sp,
        ).fetchall()
        # Hour index floor(ts_ms / 1 h), also for times before 1970 (SQLite's % and /
        # truncate towards zero).
        hours = np.array(
            c.execute(
                f"""WITH {cte}
                SELECT (ts_ms - ((ts_ms % {HOUR_MS}) + {HOUR_MS}) % {HOUR_MS}) / {HOUR_MS} AS h,
                       COUNT(*)
                FROM events WHERE {_IN_SEL} GROUP BY h""",
                sp,
            ).fetchall(),
            dtype=np.int64,
        ).reshape(-1, 2)
        cohort = np.array(
            c.execute(
                f"""WITH {cte}, firsts AS (
                    SELECT user_id, MIN(started_at_ms) AS first_ms, MAX(started_at_ms) AS last_ms
                    FROM sessions GROUP BY user_id)
                SELECT f.first_ms, f.last_ms FROM firsts f
                WHERE EXISTS (SELECT 1 FROM sel
                              WHERE sel.user_id = f.user_id AND sel.started_at_ms = f.first_ms)""",
                sp,
            ).fetchall(),
            dtype=np.int64,
        ).reshape(-1, 2)

    durations, n_events, n_views = per_session[:, 0], per_session[:, 1], per_session[:, 2]
    n = len(per_session)
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

    activity = np.zeros((7, 24), dtype=np.int64)
    if len(hours):
        h = hours[:, 0]
        np.add.at(activity, ((h // 24 + 3) % 7, h % 24), hours[:, 1])  # 1970-01-01: Thursday

    first, last = cohort[:, 0], cohort[:, 1]
    retention = []
    for d in days:
        due = first + d * DAY_MS
        eligible = due <= now
        retention.append(
            RetentionPoint(d, int(eligible.sum()), int((eligible & (last >= due)).sum()))
        )

    end_reasons = {r.name: 0 for r in EndReason}
    for code, count in reasons:
        name = EndReason(code).name if code in EndReason._value2member_map_ else f"UNKNOWN_{code}"
        end_reasons[name] = end_reasons.get(name, 0) + int(count)

    def ranked(pairs: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(((s, int(k)) for s, k in pairs if k), key=lambda p: (-p[1], p[0])))

    return SessionStats(
        start_ms=start_ms,
        end_ms=end_ms,
        platform=platform,
        app_version=app_version,
        skip_below_ms=int(skip_below_ms),
        now_ms=now,
        sessions=n,
        users=users,
        duration_p50_ms=_float(pcts[0]),
        duration_p90_ms=_float(pcts[1]),
        duration_p99_ms=_float(pcts[2]),
        duration_histogram=tuple(int(k) for k in histogram),
        events_per_session_mean=_float(ev_mean),
        events_per_session_p50=_float(ev_p50),
        bounces=int((n_views <= 1).sum()),
        screens=tuple(
            ScreenStats(
                screen=s,
                views=int(v),
                dwell_known=int(k),
                dwell_total_ms=int(total),
                dwell_median_ms=_float(medians.get(s)),
                skips=int(skips),
            )
            for s, v, k, total, skips in screen_rows
        ),
        top_items=tuple((str(i), int(k)) for i, k in top_items),
        entry_screens=ranked([(s, f) for s, f, _ in ends]),
        exit_screens=ranked([(s, x) for s, _, x in ends]),
        activity=tuple(tuple(int(v) for v in row) for row in activity),
        retention_cohort=len(cohort),
        retention=tuple(retention),
        end_reasons=end_reasons,
        segment=segment,
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
) -> list[tuple[str, str, int]]:
    """The most common screen-to-screen transitions of the selected sessions, as
    ``(from, to, count)`` sorted by count (then names), ``to`` = :data:`EXIT` where
    a session ends. Only the first ``max_steps`` screen views of each session
    count (None: all); ``top`` limits the list (None: all)."""
    if max_steps is not None and max_steps < 1:
        raise ValueError("max_steps: must be >= 1 (or None)")
    if top is not None and top < 1:
        raise ValueError("top: must be >= 1 (or None)")
    cte, sp = _selection(start_ms, end_ms, platform, app_version)
    params: list[Any] = [*sp, EXIT]  # in the order of the ? in the text below
    steps = ""
    if max_steps is not None:
        # A pair (rn, rn + 1) lies in the first max_steps views when rn < max_steps;
        # an exit (no next view) when its view rn <= max_steps.
        steps = "WHERE rn < ? OR (rn = ? AND nxt IS NULL)"
        params += [int(max_steps), int(max_steps)]
    params.append(-1 if top is None else int(top))  # LIMIT -1: no limit
    with _read_only(db_path) as c:
        rows = c.execute(
            f"""WITH {cte}
            SELECT screen, COALESCE(nxt, ?) AS dest, COUNT(*) AS n FROM (
                SELECT screen, LEAD(screen) OVER w AS nxt, ROW_NUMBER() OVER w AS rn
                FROM events WHERE type = {_SCREEN} AND screen IS NOT NULL AND {_IN_SEL}
                WINDOW w AS (PARTITION BY session_id ORDER BY ts_ms, seq))
            {steps}
            GROUP BY screen, dest ORDER BY n DESC, screen, dest LIMIT ?""",
            params,
        ).fetchall()
    return [(str(a), str(b), int(k)) for a, b, k in rows]


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
