"""Push-notification candidates: whom to bring back, when, with what.

``push_candidates`` reads the store's ``sessions`` table through its own
read-only SQLite connection and returns, most lapsed first, the users worth a
push now. The rules:

* **Lapsing.** Only sessions that started at or before ``now_ms`` count. A user
  needs at least ``min_sessions`` of them, and then is lapsing when either

  - no session started in the last ``lapse_days`` days (time since the last
    session start >= ``lapse_days``), or
  - they dropped against their own rhythm: the time since their last session
    start exceeds ``rhythm_factor`` x the median gap between their consecutive
    session starts, and is at least one day (a daily user silent for four days
    is lapsing long before ``lapse_days``; a weekly user is not after four).

* **Never while active.** A user with an open session that received something
  within the recommender's session timeout is using the app: never a candidate.
* **Local time.** Clients may report the device's UTC offset at
  ``StartSession`` (``sessions.utc_offset_min``, minutes east of UTC). Each
  session start is read in its own session's local time; a session without an
  offset is read with the user's *most recent known* offset (the offset of
  their latest session, up to ``now_ms``, that reported one): a missing offset
  most likely means an older client of the same user, who has not moved.
  A user who never reported one is treated as living in UTC (offset 0, and
  ``utc_offset_minutes`` is None in the candidate).
* **When.** ``active_hour`` is the *local* hour holding most of the user's
  session starts (ties: the earliest hour). ``send_at_ms`` is the next start
  of that local hour strictly after ``now_ms``, converted to UTC with the
  user's most recent known offset (``utc_offset_minutes``). Offsets that are
  not whole hours (UTC+5:30) move the send time off the UTC hour. A change of
  offset between now and the send time (daylight saving, travel) is not
  foreseen: the offset is a number, not a time zone.
* **Quiet hours.** ``quiet_hours=(start, end)`` is the *local* window
  ``[start, end)`` (it wraps midnight when start > end; start == end or None:
  no quiet hours), compared with the local active hour. A user whose active
  hour lies inside it is *left out of this run* (logged), not moved: nobody is
  woken up, and nobody gets a push at an hour they do not use the app. Such
  users come back when their habits move.
* **Cap.** At most ``max_per_user`` pushes per user in any ``cap_window_days``
  window. Planned pushes are kept in the table ``push_log(user_id, planned_ms,
  created_ms)`` (created on the first recording). A user with ``max_per_user``
  rows whose ``planned_ms`` is later than ``now_ms - cap_window_days`` (future
  planned pushes included) is skipped. Since a new push is planned after
  ``now_ms``, two pushes of a user are always more than a window apart when
  ``max_per_user`` is 1.
* **Recording.** With ``record=True`` the returned candidates are written to
  ``push_log`` in one short ``BEGIN IMMEDIATE`` transaction on a separate
  connection that checks the cap again, so two concurrent runs never plan more
  than the cap (a user capped meanwhile is dropped from the result).
  ``record=False`` (a dry run) writes nothing.
* **Delivery before recording.** ``deliver(candidates)``, when given, is
  called with the final candidates *before* they are recorded: inside the
  recording transaction, after the cap is checked again, so it gets exactly
  what will be recorded. If it raises, nothing is recorded and the error
  propagates (the CLI writes its JSONL file there: a file that could not be
  written caps nobody). A dry run calls it too, with the candidates.
* **Deadline.** ``should_stop()``, when given, is asked while the sessions
  are read, before each user's item and offer, and before recording (once
  more after the write lock is taken). Once it returns True the run stops
  with ``DeadlineExceeded`` and records nothing: a caller who gave up is not
  left with users capped for pushes it never received. (The gRPC servicer
  passes "less than a small reserve of the call's deadline is left, or the
  call was cancelled"; without gRPC pass e.g. ``lambda: time.monotonic() > t``.)
* **Content.** ``item_id``/``item_reason``: the first item of
  ``RecommendationEngine.recommend(user, 1)``. ``offer_id``: the first offer of
  ``OfferEngine.get_offers(user, 1, preview=True, at_ms=send_at_ms)`` (no
  engine: ""): validity windows and lapsed-days eligibility are evaluated at
  the send time, so an offer that ends before the push goes out is never
  attached (and one that starts by then may be). A user in the offers holdout
  gets "" without asking the engine, which would log a counterfactual exposure
  for a push that is only being planned.
* **Order.** Days since the last session start, descending, then user id; at
  most ``limit`` candidates.

Every argument is checked; a bad one raises ``InvalidArgument`` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sessionrec.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    SessionrecError,
    Unavailable,
)
from sessionrec.offers import in_holdout
from sessionrec.store import Store, sqlite_path_from_url

if TYPE_CHECKING:
    from service.offers import OfferEngine
    from service.recommender import RecommendationEngine

log = logging.getLogger("sessionrec.push")

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
#: ``should_stop`` is asked every this many SQLite virtual-machine steps while
#: the sessions are read.
_PROGRESS_STEPS = 20_000
#: How long the read-only connection waits on a busy file (recording goes through
#: the store's writer and its busy timeout).
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class PushCandidate:
    user_id: str
    reason: str  # e.g. "no session for 9 days (usually every 2.0 days)"
    days_since_last_session: float
    item_id: str  # best item to show ("" if none)
    item_reason: str
    offer_id: str  # best offer eligible at send_at_ms ("" if none)
    send_at_ms: int  # UTC epoch ms: the next start of the local active_hour after now
    active_hour: int  # 0..23 local time, the hour with most of the user's session starts
    #: The offset (minutes east of UTC) send_at_ms was computed with: the user's
    #: most recent reported one; None: never reported, UTC assumed.
    utc_offset_minutes: int | None = None


@dataclass
class PushPlan:
    """One run: the candidates and how many users each rule left out."""

    candidates: list[PushCandidate] = field(default_factory=list)
    now_ms: int = 0
    lapsing: int = 0
    skipped_active: int = 0
    skipped_quiet_hours: int = 0
    skipped_cap: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "candidates": len(self.candidates),
            "lapsing": self.lapsing,
            "skipped": {
                "active_session": self.skipped_active,
                "quiet_hours": self.skipped_quiet_hours,
                "cap": self.skipped_cap,
            },
            "with_item": sum(1 for c in self.candidates if c.item_id),
            "with_offer": sum(1 for c in self.candidates if c.offer_id),
            "with_utc_offset": sum(1 for c in self.candidates if c.utc_offset_minutes is not None),
        }


@dataclass(frozen=True)
class _Lapsing:
    user_id: str
    days_since: float
    reason: str
    active_hour: int
    send_at_ms: int
    utc_offset_min: int | None


def push_candidates(
    store: Store,
    recommender: RecommendationEngine,
    offers: OfferEngine | None = None,
    *,
    now_ms: int | None = None,
    lapse_days: float = 7.0,
    rhythm_factor: float = 3.0,
    min_sessions: int = 2,
    quiet_hours: tuple[int, int] | None = (22, 8),
    max_per_user: int = 1,
    cap_window_days: float = 7.0,
    limit: int = 1000,
    record: bool = True,
    should_stop: Callable[[], bool] | None = None,
    deliver: Callable[[list[PushCandidate]], None] | None = None,
) -> list[PushCandidate]:
    """The users to bring back now, most lapsed first (rules: the module docstring)."""
    return plan_push(
        store,
        recommender,
        offers,
        now_ms=now_ms,
        lapse_days=lapse_days,
        rhythm_factor=rhythm_factor,
        min_sessions=min_sessions,
        quiet_hours=quiet_hours,
        max_per_user=max_per_user,
        cap_window_days=cap_window_days,
        limit=limit,
        record=record,
        should_stop=should_stop,
        deliver=deliver,
    ).candidates


def plan_push(
    store: Store,
    recommender: RecommendationEngine,
    offers: OfferEngine | None = None,
    *,
    now_ms: int | None = None,
    lapse_days: float = 7.0,
    rhythm_factor: float = 3.0,
    min_sessions: int = 2,
    quiet_hours: tuple[int, int] | None = (22, 8),
    max_per_user: int = 1,
    cap_window_days: float = 7.0,
    limit: int = 1000,
    record: bool = True,
    should_stop: Callable[[], bool] | None = None,
    deliver: Callable[[list[PushCandidate]], None] | None = None,
) -> PushPlan:
    """``push_candidates`` with the counts of the users each rule left out."""
    quiet = _check_args(
        now_ms,
        lapse_days,
        rhythm_factor,
        min_sessions,
        quiet_hours,
        max_per_user,
        cap_window_days,
        limit,
        record,
    )
    for name, fn in (("should_stop", should_stop), ("deliver", deliver)):
        if fn is not None and not callable(fn):
            raise InvalidArgument(f"{name}: must be callable or None, got {fn!r}")
    if recommender is None:
        raise InvalidArgument("recommender: required")
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    plan = PushPlan(now_ms=now)
    timeout_ms = int(getattr(recommender, "timeout_ms", 1800 * 1000))
    since_ms = now - int(cap_window_days * DAY_MS)
    stop = _Stop(should_stop)

    with _reading(store, stop) as conn:
        lapsing = _lapsing_users(
            conn, plan, now, lapse_days, rhythm_factor, min_sessions, quiet, timeout_ms, stop
        )
        plan.lapsing = len(lapsing) + plan.skipped_quiet_hours
        counts = _cap_counts(conn, since_ms)
    chosen: list[_Lapsing] = []
    for user in lapsing:
        if counts.get(user.user_id, 0) >= max_per_user:
            plan.skipped_cap += 1
            continue
        chosen.append(user)
        if len(chosen) >= limit:
            break

    candidates: list[PushCandidate] = []
    for user in chosen:
        stop.check(f"after the content of {len(candidates)} of {len(chosen)} candidates")
        candidates.append(_fill(user, recommender, offers))
    stop.check(f"with all {len(candidates)} candidates planned, before recording")
    if record and candidates:
        recorded = _record(store, candidates, since_ms, max_per_user, stop, deliver)
        plan.skipped_cap += len(candidates) - len(recorded)
        candidates = recorded
    elif deliver is not None:
        deliver(list(candidates))
    plan.candidates = candidates
    log.info(
        "push candidates: %d (lapsing %d; left out: %d active, %d quiet hours, %d capped)",
        len(candidates),
        plan.lapsing,
        plan.skipped_active,
        plan.skipped_quiet_hours,
        plan.skipped_cap,
    )
    return plan


class _Stop:
    """``should_stop`` asked at the checkpoints; once it said yes it stays yes."""

    def __init__(self, should_stop: Callable[[], bool] | None):
        self._ask = should_stop
        self.stopped = False

    def __call__(self) -> bool:
        if not self.stopped and self._ask is not None and self._ask():
            self.stopped = True
        return self.stopped

    def check(self, where: str) -> None:
        if self():
            log.info("push: stopped %s: the caller's deadline is (nearly) over", where)
            raise DeadlineExceeded(
                f"deadline: the caller's deadline is (nearly) over; push planning stopped "
                f"{where}, nothing recorded"
            )


# --------------------------------------------------------------- arguments
def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{name}: must be a finite number, got {value!r}")
    if value <= 0:
        raise InvalidArgument(f"{name}: must be > 0, got {value}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: must be an integer, got {value!r}")
    if value < 1:
        raise InvalidArgument(f"{name}: must be >= 1, got {value}")
    return value


def _check_args(
    now_ms: Any,
    lapse_days: Any,
    rhythm_factor: Any,
    min_sessions: Any,
    quiet_hours: Any,
    max_per_user: Any,
    cap_window_days: Any,
    limit: Any,
    record: Any,
) -> tuple[int, int] | None:
    """Raises InvalidArgument naming the first bad argument; returns the quiet
    window, or None when there is none."""
    if now_ms is not None and (
        isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0
    ):
        raise InvalidArgument(f"now_ms: must be epoch milliseconds >= 0, got {now_ms!r}")
    _number("lapse_days", lapse_days)
    _number("rhythm_factor", rhythm_factor)
    _count("min_sessions", min_sessions)
    _count("max_per_user", max_per_user)
    _number("cap_window_days", cap_window_days)
    _count("limit", limit)
    if not isinstance(record, bool):
        raise InvalidArgument(f"record: must be True or False, got {record!r}")
    if quiet_hours is None:
        return None
    if (
        not isinstance(quiet_hours, Sequence)
        or isinstance(quiet_hours, str)
        or len(quiet_hours) != 2
    ):
        raise InvalidArgument(f"quiet_hours: must be (start, end) hours, got {quiet_hours!r}")
    for hour in quiet_hours:
        if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
            raise InvalidArgument(f"quiet_hours: hours must be integers 0..23, got {quiet_hours!r}")
    start, end = quiet_hours
    return None if start == end else (start, end)


def in_quiet_hours(hour: int, quiet: tuple[int, int] | None) -> bool:
    """Whether ``hour`` lies in ``[start, end)``, wrapping midnight when start > end."""
    if quiet is None:
        return False
    start, end = quiet
    if start < end:
        return start <= hour < end
    return hour >= start or hour < end


def local_hour(ts_ms: int, utc_offset_min: int = 0) -> int:
    """The hour (0..23) on a clock ``utc_offset_min`` minutes ahead of UTC at ``ts_ms``."""
    return ((ts_ms + utc_offset_min * MINUTE_MS) // HOUR_MS) % 24


def next_hour_start(now_ms: int, hour: int, utc_offset_min: int = 0) -> int:
    """The first start of ``hour`` on a clock ``utc_offset_min`` minutes ahead of
    UTC strictly after ``now_ms``, as UTC epoch ms (offset 0: the UTC hour)."""
    shift = utc_offset_min * MINUTE_MS
    local_now = now_ms + shift
    at = local_now - local_now % DAY_MS + hour * HOUR_MS
    return (at if at > local_now else at + DAY_MS) - shift


# ------------------------------------------------------------------- store
def _store_path(store: Store) -> str:
    url = getattr(store, "url", None)
    if not isinstance(url, str) or not url:
        raise FailedPrecondition("store: push candidates need a SQLite store with a url")
    path = sqlite_path_from_url(url)
    if path == ":memory:":
        raise FailedPrecondition("store: push candidates need a file-backed SQLite store")
    return path


@contextlib.contextmanager
def _reading(store: Store, stop: _Stop) -> Iterator[Any]:
    """One read-only snapshot of the store: a SQLite file is read by a
    connection of its own, interrupted when the caller's deadline is over; a
    server store through :meth:`Store.read_snapshot` (deadline checked between
    users)."""
    if store.url.startswith("sqlite:"):
        with _read_only(_store_path(store), stop) as conn:
            yield conn
        return
    with store.read_snapshot() as reader:
        yield reader


@contextlib.contextmanager
def _read_only(path: str, stop: _Stop) -> Iterator[sqlite3.Connection]:
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise FailedPrecondition(f"store: no SQLite file at {resolved}")
    conn = sqlite3.connect(f"file:{quote(str(resolved))}?mode=ro", uri=True, timeout=0)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = 1")
        # A long read is interrupted (OperationalError "interrupted") once the
        # caller's deadline is over.
        conn.set_progress_handler(stop, _PROGRESS_STEPS)
        yield conn
    except sqlite3.OperationalError as exc:
        if stop.stopped:
            stop.check("while reading the sessions")
        raise _translate(exc) from exc
    finally:
        conn.close()


def _translate(exc: sqlite3.OperationalError) -> Exception:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return Unavailable(f"store: database is locked ({exc}); retry")
    return exc


def _cap_counts(conn: Any, since_ms: int) -> dict[str, int]:
    """Per user: pushes planned after ``since_ms`` (future ones included)."""
    rows = conn.execute(
        "SELECT user_id, COUNT(*) FROM push_log WHERE planned_ms > ? GROUP BY user_id",
        (since_ms,),
    )
    return {user: int(n) for user, n in rows}


def _lapsing_users(
    conn: Any,
    plan: PushPlan,
    now: int,
    lapse_days: float,
    rhythm_factor: float,
    min_sessions: int,
    quiet: tuple[int, int] | None,
    timeout_ms: int,
    stop: _Stop,
) -> list[_Lapsing]:
    """Lapsing users who may get a push at their local active hour, most lapsed first."""
    rows = conn.execute(
        "SELECT user_id, started_at_ms, ended_at_ms, last_seen_ms, utc_offset_min FROM sessions"
        " WHERE started_at_ms <= ? ORDER BY user_id, started_at_ms",
        (now,),
    )
    active_since = now - timeout_ms
    out: list[_Lapsing] = []
    for n, (user_id, group) in enumerate(groupby(rows, key=lambda r: r[0])):
        if n % 1000 == 999:
            stop.check(f"after reading the sessions of {n} users")
        sessions = list(group)
        if len(sessions) < min_sessions:
            continue
        if any(ended is None and seen >= active_since for _, _, ended, seen, _ in sessions):
            plan.skipped_active += 1
            continue
        starts = [int(r[1]) for r in sessions]
        days_since = (now - starts[-1]) / DAY_MS
        gaps = [b - a for a, b in pairwise(starts)]
        usual = statistics.median(gaps) / DAY_MS if gaps else None
        lapsed = days_since >= lapse_days
        dropped = usual is not None and days_since >= 1 and days_since > rhythm_factor * usual
        if not (lapsed or dropped):
            continue
        # The most recent reported offset (sessions are in start order); it
        # also stands in for the sessions that did not report one.
        offset = next((int(r[4]) for r in reversed(sessions) if r[4] is not None), None)
        fallback = offset or 0
        hours = Counter(
            local_hour(int(r[1]), fallback if r[4] is None else int(r[4])) for r in sessions
        )
        top = max(hours.values())
        active_hour = min(h for h, k in hours.items() if k == top)
        if in_quiet_hours(active_hour, quiet):
            plan.skipped_quiet_hours += 1
            log.debug(
                "push: %s left out, local active hour %02d:00 (UTC%+d min) is in quiet hours",
                user_id,
                active_hour,
                fallback,
            )
            continue
        reason = f"no session for {_days(days_since)}"
        if usual is not None:
            reason += f" (usually every {usual:.1f} days)"
        send_at = next_hour_start(now, active_hour, fallback)
        out.append(_Lapsing(user_id, days_since, reason, active_hour, send_at, offset))
    out.sort(key=lambda u: (-u.days_since, u.user_id))
    return out


def _days(days: float) -> str:
    if days < 1:
        return f"{days * 24:.0f} hours"
    whole = math.floor(days)
    return "1 day" if whole == 1 else f"{whole} days"


# ----------------------------------------------------------------- content
def _fill(
    user: _Lapsing, recommender: RecommendationEngine, offers: OfferEngine | None
) -> PushCandidate:
    item_id = item_reason = offer_id = ""
    try:
        scored = recommender.recommend(user.user_id, 1)
        if scored.item_ids:
            item_id, item_reason = scored.item_ids[0], scored.reasons[0]
    except SessionrecError as exc:
        log.warning("push: no item for %s: %s", user.user_id, exc)
    if offers is not None and not in_holdout(user.user_id, offers.holdout_share):
        try:
            # Eligible when the push goes out, not only now.
            result = offers.get_offers(user.user_id, 1, preview=True, at_ms=user.send_at_ms)
            if result.offers:
                offer_id = result.offers[0].offer.offer_id
        except SessionrecError as exc:
            log.warning("push: no offer for %s: %s", user.user_id, exc)
    return PushCandidate(
        user_id=user.user_id,
        reason=user.reason,
        days_since_last_session=round(user.days_since, 3),
        item_id=item_id,
        item_reason=item_reason,
        offer_id=offer_id,
        send_at_ms=user.send_at_ms,
        active_hour=user.active_hour,
        utc_offset_minutes=user.utc_offset_min,
    )


# --------------------------------------------------------------- recording
def _record(
    store: Store,
    candidates: list[PushCandidate],
    since_ms: int,
    max_per_user: int,
    stop: _Stop,
    deliver: Callable[[list[PushCandidate]], None] | None,
) -> list[PushCandidate]:
    """Writes the candidates still under the cap to push_log (one transaction)
    after handing them to ``deliver``; returns them. ``created_ms`` is the wall
    clock, whatever ``now_ms`` was. Through the store's own writer: one
    connection writes and checkpoints the file (``sessionrec.store.sqlite``)."""
    created = time.time_ns() // 1_000_000
    write = getattr(store, "write_transaction", None)
    if write is None:
        raise FailedPrecondition("store: recording pushes needs a SQL store's writer")
    with write() as conn:
        counts = _cap_counts(conn, since_ms)
        kept = [c for c in candidates if counts.get(c.user_id, 0) < max_per_user]
        conn.executemany(
            "INSERT INTO push_log (user_id, planned_ms, created_ms) VALUES (?, ?, ?)",
            [(c.user_id, c.send_at_ms, created) for c in kept],
        )
        # Waiting for the write lock may have used up the deadline.
        stop.check("before recording (the store's write lock was busy)")
        if deliver is not None:
            deliver(list(kept))
    return kept
