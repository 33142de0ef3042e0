"""Session analytics columns, one UTC day of session starts at a time.

:mod:`sessionrec.analytics` answers every question from a few numpy columns per
session and per view event (:class:`DayColumns`). They are built here from the
store, one *day* at a time (the sessions whose ``started_at_ms`` falls on that UTC
day, with all their events), and kept in the store's ``analytics_days`` table:

* every write that changes a session or its events marks the session's start
  day as changed in the same transaction (its ``stamp`` goes up and its cached
  ``data`` is dropped), so a cached day is never stale;
* the server builds changed days in the background (:func:`build_stale`), so a
  query usually builds only the days that changed in the last minute;
* :func:`load_days` reads the cached days of a period, builds the others in the
  same read snapshot, and hands what it built (``(day, stamp, bytes)``) to a
  ``cache`` callback, which stores each only if the day's stamp has not moved
  (:meth:`~sessionrec.store.base.Store.cache_analytics_days`);
* a store file that has no ``analytics_days`` table yet (never opened by this
  version) is refused with a clear error.

A year of a busy app is 365 blobs of some tens of kilobytes: a query over it
reads and concatenates them and does numpy aggregates, where the raw SQL would
scan every event. Blobs are a small self-describing format (a JSON header of
names, dtypes and shapes, then the raw arrays, 8-byte aligned): no pickle.

Item ids are carried as 64-bit BLAKE2b hashes (``item_hash``) so that days merge
with integer operations; each day keeps its own ``item_id -> hash`` vocabulary to
name the winners. Two item ids with the same 64-bit hash would be counted as
one (probability about n² / 2⁶⁵ for n distinct items: negligible).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from sessionrec.arrays import distinct
from sessionrec.store.base import SQLReader

__all__ = [
    "DAY_MS",
    "CacheWriter",
    "DayColumns",
    "build_day",
    "build_stale",
    "decode",
    "encode",
    "item_hash",
    "load_days",
]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
_FORMAT = 1
_SCREEN_VIEW = 1
_ITEM_VIEW = 2

#: Receives built days as ``(day, stamp, data)``; returns how many it stored.
CacheWriter = Callable[[Sequence[tuple[int, int, bytes]]], object]


@dataclass(frozen=True)
class DayColumns:
    """Sessions (``s_*``, one row each, sorted by session id) and their events.

    View rows (``v_*``: screen views with a screen; ``i_*``: item views with an
    item) are in each session's event order ``(ts_ms, seq)``; ``v_session`` and
    ``i_session`` index the session rows. ``a_*``: events per session and UTC
    hour of the week (``weekday * 24 + hour``, Monday 0)."""

    s_user: np.ndarray  # str
    s_start: np.ndarray  # int64 ms
    s_duration: np.ndarray  # int64 ms
    s_platform: np.ndarray  # int64
    s_version: np.ndarray  # str
    s_end: np.ndarray  # int64 EndReason
    s_events: np.ndarray  # int64: stored events of every type
    s_views: np.ndarray  # int64: SCREEN_VIEW and ITEM_VIEW events
    v_session: np.ndarray  # int64
    v_screen: np.ndarray  # int64 index into ``screens``
    v_dwell: np.ndarray  # int64 ms, -1: unknown
    screens: np.ndarray  # str, sorted
    i_session: np.ndarray  # int64
    i_hash: np.ndarray  # int64
    item_ids: np.ndarray  # str: this day's item ids ...
    item_hashes: np.ndarray  # int64: ... and their hashes
    a_session: np.ndarray  # int64
    a_how: np.ndarray  # int64 hour of the week
    a_count: np.ndarray  # int64

    @property
    def sessions(self) -> int:
        return len(self.s_start)

    @classmethod
    def empty(cls) -> DayColumns:
        return cls(
            **{
                f.name: np.array([], dtype="<U1" if f.name in _TEXT else np.int64)
                for f in fields(cls)
            }
        )

    @classmethod
    def concat(cls, days: Sequence[DayColumns]) -> DayColumns:
        """One set of columns for several days (session indexes shifted, screen
        codes mapped to the union of the screen names)."""
        days = [d for d in days if d.sessions]
        if not days:
            return cls.empty()
        if len(days) == 1:
            return days[0]
        screens = distinct(np.concatenate([d.screens for d in days]))
        offsets = np.cumsum([0, *(d.sessions for d in days)])[:-1]
        values: dict[str, np.ndarray] = {}
        for f in fields(cls):
            name = f.name
            if name == "screens":
                values[name] = screens
            elif name == "v_screen":
                values[name] = np.concatenate(
                    [np.searchsorted(screens, d.screens)[d.v_screen] for d in days]
                )
            elif name in ("v_session", "i_session", "a_session"):
                values[name] = np.concatenate(
                    [getattr(d, name) + off for d, off in zip(days, offsets, strict=True)]
                )
            else:
                values[name] = np.concatenate([getattr(d, name) for d in days])
        return cls(**values)

    def item_names(self, hashes: np.ndarray) -> dict[int, str]:
        """The item id of each hash in ``hashes`` (those this data has)."""
        found = np.isin(self.item_hashes, hashes)
        return dict(
            zip(self.item_hashes[found].tolist(), self.item_ids[found].tolist(), strict=True)
        )


_TEXT = ("s_user", "s_version", "screens", "item_ids")


def item_hash(item_ids: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b of each id (UTF-8), as int64."""
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little", signed=True
            )
            for i in item_ids
        ],
        dtype=np.int64,
    )


def _text(values: Sequence[str]) -> np.ndarray:
    return np.array(values, dtype=str) if len(values) else np.array([], dtype="<U1")


# ------------------------------------------------------------------- build
def build_day(conn: SQLReader, day: int) -> DayColumns:
    """The columns of the sessions starting on UTC day ``day`` (days since
    1970-01-01), read through ``conn``."""
    lo, hi = day * DAY_MS, (day + 1) * DAY_MS
    sessions = conn.execute(
        """SELECT session_id, user_id, started_at_ms, last_event_at_ms,
                  COALESCE(ended_at_ms, last_event_at_ms), platform, app_version, end_reason
        FROM sessions WHERE started_at_ms >= ? AND started_at_ms < ? ORDER BY session_id""",
        (lo, hi),
    ).fetchall()
    if not sessions:
        return DayColumns.empty()
    ids, users, starts, lasts, ended, platforms, versions, ends = zip(*sessions, strict=True)
    # A session lasts until its last event or its end, whichever is later (never < 0).
    durations = np.maximum(
        np.maximum(np.array(lasts, dtype=np.int64), np.array(ended, dtype=np.int64))
        - np.array(starts, dtype=np.int64),
        0,
    )
    row_of = {sid: k for k, sid in enumerate(ids)}
    events = conn.execute(
        """SELECT session_id, type, screen, dwell_ms, item_id, ts_ms FROM events
        WHERE session_id IN (SELECT session_id FROM sessions
                             WHERE started_at_ms >= ? AND started_at_ms < ?)
        ORDER BY session_id, ts_ms, seq""",
        (lo, hi),
    ).fetchall()
    n = len(ids)
    if events:
        e_sid, e_type, e_screen, e_dwell, e_item, e_ts = zip(*events, strict=True)
    else:
        e_sid = e_type = e_screen = e_dwell = e_item = e_ts = ()
    session = np.array([row_of[s] for s in e_sid], dtype=np.int64)
    etype = np.array(e_type, dtype=np.int64)
    ts = np.array(e_ts, dtype=np.int64)

    is_screen = np.array(
        [t == _SCREEN_VIEW and s is not None for t, s in zip(e_type, e_screen, strict=True)],
        dtype=bool,
    )
    screen_names = [s for s, keep in zip(e_screen, is_screen, strict=True) if keep]
    screens = distinct(_text(screen_names))
    dwell = np.array(
        [-1 if d is None else d for d, keep in zip(e_dwell, is_screen, strict=True) if keep],
        dtype=np.int64,
    )
    is_item = np.array(
        [t == _ITEM_VIEW and i is not None for t, i in zip(e_type, e_item, strict=True)],
        dtype=bool,
    )
    item_list = [i for i, keep in zip(e_item, is_item, strict=True) if keep]
    item_ids = distinct(_text(item_list))
    item_hashes = item_hash(item_ids.tolist())
    hashes_by_id = dict(zip(item_ids.tolist(), item_hashes.tolist(), strict=True))

    hour = ts // HOUR_MS  # floor, also before 1970
    how = ((hour // 24 + 3) % 7) * 24 + hour % 24  # 1970-01-01 was a Thursday
    pairs, counts = np.unique(session * 168 + how, return_counts=True)

    is_view = (etype == _SCREEN_VIEW) | (etype == _ITEM_VIEW)
    return DayColumns(
        s_user=_text(users),
        s_start=np.array(starts, dtype=np.int64),
        s_duration=np.array(durations, dtype=np.int64),
        s_platform=np.array(platforms, dtype=np.int64),
        s_version=_text(versions),
        s_end=np.array(ends, dtype=np.int64),
        s_events=np.bincount(session, minlength=n).astype(np.int64),
        s_views=np.bincount(session[is_view], minlength=n).astype(np.int64),
        v_session=session[is_screen],
        v_screen=np.searchsorted(screens, _text(screen_names)).astype(np.int64),
        v_dwell=dwell,
        screens=screens,
        i_session=session[is_item],
        i_hash=np.array([hashes_by_id[i] for i in item_list], dtype=np.int64),
        item_ids=item_ids,
        item_hashes=item_hashes,
        a_session=(pairs // 168).astype(np.int64),
        a_how=(pairs % 168).astype(np.int64),
        a_count=counts.astype(np.int64),
    )


# ------------------------------------------------------------------ format
def encode(columns: DayColumns) -> bytes:
    """The columns as bytes: a 4-byte header length, a JSON header, the arrays."""
    header: list[list] = []
    chunks: list[bytes] = []
    offset = 0
    for f in fields(columns):
        array = np.ascontiguousarray(getattr(columns, f.name))
        raw = array.tobytes()
        header.append([f.name, array.dtype.str, len(array), offset])
        pad = -len(raw) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = json.dumps({"format": _FORMAT, "arrays": header}).encode()
    head += b" " * (-(len(head) + 4) % 8)
    return len(head).to_bytes(4, "little") + head + b"".join(chunks)


def decode(data: bytes) -> DayColumns:
    """The inverse of :func:`encode` (read-only arrays over ``data``)."""
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    if header.get("format") != _FORMAT:
        raise ValueError(f"analytics: unknown day format {header.get('format')!r}")
    base = 4 + size
    values = {
        name: np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=base + offset)
        for name, dtype, count, offset in header["arrays"]
    }
    return DayColumns(**values)


# -------------------------------------------------------------------- load
def _floor_day(ms: int) -> int:
    return ms // DAY_MS


def load_days(
    conn: SQLReader,
    start_ms: int | None,
    end_ms: int | None,
) -> tuple[DayColumns, list[tuple[int, int, bytes]]]:
    """The columns of every day that can hold a session starting in
    ``[start_ms, end_ms)`` (open bounds: all days), cached ones decoded and the
    others built; the caller still filters sessions by their exact start. Run it
    in one read transaction of ``conn`` (one snapshot). Also returns the days it
    built as ``(day, stamp, data)`` for a :data:`CacheWriter` (none when the
    store has no ``analytics_days`` table)."""
    lo = None if start_ms is None else _floor_day(start_ms)
    hi = None if end_ms is None else _floor_day(end_ms - 1)
    _check_table(conn)
    days: list[DayColumns] = []
    built: list[tuple[int, int, bytes]] = []
    rows = conn.execute(
        "SELECT day, stamp, data FROM analytics_days"
        " WHERE day >= COALESCE(?, day) AND day <= COALESCE(?, day) ORDER BY day",
        (lo, hi),
    ).fetchall()
    for day, stamp, data in rows:
        if data is not None:
            days.append(decode(data))
            continue
        columns = build_day(conn, int(day))
        days.append(columns)
        built.append((int(day), int(stamp), encode(columns)))
    return DayColumns.concat(days), built


def build_stale(conn: SQLReader, limit: int | None = None) -> list[tuple[int, int, bytes]]:
    """Builds the days without cached columns (the most recent first, at most
    ``limit``), as ``(day, stamp, data)`` for a :data:`CacheWriter`. Run it in one
    read transaction of ``conn``."""
    _check_table(conn)
    days = conn.execute(
        "SELECT day, stamp FROM analytics_days WHERE data IS NULL ORDER BY day DESC LIMIT ?",
        (2**62 if limit is None else int(limit),),
    ).fetchall()
    return [(int(d), int(stamp), encode(build_day(conn, int(d)))) for d, stamp in days]


def _check_table(conn: SQLReader) -> None:
    if conn.dialect != "sqlite":
        return  # a PostgreSQL store is always migrated by whoever opens it
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'analytics_days'"
    ).fetchone()
    if not found:
        raise ValueError(
            "analytics: this store has not been upgraded to the analytics schema yet;"
            " open it once with this version of sessionrec (any command that opens the store)"
        )
