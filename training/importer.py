"""Historical import of the canonical CSV.

Header required: ``user_id,item_id,event_type,timestamp``; optional
``session_id,event_id,screen,dwell_ms,value``. ``timestamp`` is epoch seconds
(integer or fractional) or ISO 8601 (naive means UTC). ``event_type`` is an
``EventType`` name (``ITEM_VIEW``, ``item_view``) or number.

* Bad rows are reported with their line numbers; good rows still load.
* Rows without ``session_id`` are grouped per user into sessions split at gaps
  longer than the inactivity timeout; imported sessions are closed (TIMEOUT at
  their last event) and get their dwell times derived like live ones.
* Rows without ``event_id`` get a deterministic one (a hash of the row's
  content), so importing the same file twice stores nothing twice.

Other formats (MovieLens, DIGINETICA, YooChoose, a mapped CSV: ``training.formats``)
only supply a row reader yielding ``(line, EventRecord)``; ``import_rows`` does the
rest (session ownership checks, sessionizing, batched idempotent storing) for all.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from sessionrec.events import (
    ITEM_REQUIRED,
    MAX_DWELL_MS,
    MAX_TS_MS,
    EndReason,
    EventRecord,
    EventType,
    SessionRecord,
)
from sessionrec.store import Store

REQUIRED_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
OPTIONAL_COLUMNS = ("session_id", "event_id", "screen", "dwell_ms", "value")
BATCH = 10_000


class ImportFormatError(ValueError):
    """The file as a whole cannot be imported (e.g. a missing column)."""


@dataclass
class BadRow:
    line: int
    reason: str


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    duplicates: int = 0
    sessions: int = 0
    #: Rows read but deliberately not imported (e.g. below ``--min-rating``).
    skipped: int = 0
    seconds: float = 0.0
    bad: list[BadRow] = field(default_factory=list)

    def to_dict(self, max_bad: int = 100) -> dict:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "bad_rows": len(self.bad),
            "sessions": self.sessions,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad[:max_bad]],
        }


_CONTROL = re.compile("[\x00-\x1f]")


def parse_timestamp_ms(text: str) -> int:
    text = text.strip()
    if not text:
        raise ValueError("timestamp: empty")
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or not 0 <= seconds * 1000 <= MAX_TS_MS:
            raise ValueError(f"timestamp: out of range: {text!r}")
        return round(seconds * 1000)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp: not epoch seconds or ISO 8601: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    ts_ms = int(parsed.timestamp() * 1000)
    if not 0 <= ts_ms <= MAX_TS_MS:
        raise ValueError(f"timestamp: out of range: {text!r}")
    return ts_ms


def _text(row: Mapping[str, str], name: str) -> str:
    value = (row.get(name) or "").strip()
    if _CONTROL.search(value):
        raise ValueError(f"{name}: contains control characters")
    if len(value) > 256:
        raise ValueError(f"{name}: longer than 256 characters")
    return value


def _number(row: Mapping[str, str], name: str) -> float | None:
    text = (row.get(name) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {text!r}")
    return value


@functools.lru_cache(maxsize=256)
def _event_type(text: str) -> EventType:
    try:
        return EventType.parse(text)
    except (KeyError, ValueError):
        raise ValueError(f"event_type: unknown {text!r}") from None


def event_id(parts: Sequence[str]) -> str:
    """The deterministic id of an imported event without one: a hash of ``parts``."""
    return "imp-" + hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:24]


def row_event(
    row: Mapping[str, str],
    *,
    ts_ms: int | None = None,
    id_parts: Sequence[str] | None = None,
    properties: dict[str, str] | None = None,
) -> EventRecord:
    """One canonical row (column name -> text) as an event; ``ValueError`` names
    the bad field. ``ts_ms`` replaces the ``timestamp`` column when the reader
    computed the time itself; ``id_parts`` (hashed into the id of a row without
    ``event_id``) replace the canonical identity of user, item, type, time,
    session and screen."""
    user = _text(row, "user_id")
    if not user:
        raise ValueError("user_id: empty")
    etype = _event_type(row.get("event_type") or "")
    item = _text(row, "item_id") or None
    if etype in ITEM_REQUIRED and not item:
        raise ValueError(f"item_id: required for {etype.name}")
    if ts_ms is None:
        ts_ms = parse_timestamp_ms(row.get("timestamp") or "")
    dwell_value = _number(row, "dwell_ms")
    dwell = None
    if dwell_value is not None:
        if not 0 <= dwell_value <= MAX_DWELL_MS:
            raise ValueError(f"dwell_ms: must be between 0 and {MAX_DWELL_MS}")
        dwell = int(dwell_value)
    value = _number(row, "value")
    session = _text(row, "session_id")
    screen = _text(row, "screen") or None
    eid = _text(row, "event_id")
    if not eid:
        if id_parts is None:
            id_parts = [user, item or "", str(int(etype)), str(ts_ms), session, screen or ""]
        eid = event_id(id_parts)
    return EventRecord(
        event_id=eid,
        session_id=session,
        user_id=user,
        type=int(etype),
        ts_ms=ts_ms,
        item_id=item,
        screen=screen,
        dwell_ms=dwell,
        value=value,
        properties=properties or {},
    )


def read_events(fh: TextIO, report: ImportReport) -> Iterator[tuple[int, EventRecord]]:
    """Valid rows as (line number, event); bad rows go to ``report.bad``."""
    reader = csv.DictReader(fh)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ImportFormatError(f"header: missing required column(s) {', '.join(missing)}")
    reader.fieldnames = header
    for row in reader:
        report.rows += 1
        line = reader.line_num
        if None in row:  # more fields than the header
            report.bad.append(BadRow(line, "row: more fields than the header"))
            continue
        try:
            yield line, row_event(row)
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))


def sessionize(events: list[EventRecord], timeout_ms: int) -> list[SessionRecord]:
    """Assigns session ids to events without one (gap > timeout starts a new
    session) and returns a closed session record for every session."""
    events.sort(key=lambda e: (e.user_id, e.ts_ms))
    sessions: dict[str, SessionRecord] = {}
    current: dict[str, SessionRecord] = {}
    for e in events:
        if not e.session_id:
            open_one = current.get(e.user_id)
            if open_one is None or e.ts_ms - open_one.last_event_at_ms > timeout_ms:
                sid = "imp-" + hashlib.sha1(f"{e.user_id}\x1f{e.ts_ms}".encode()).hexdigest()[:20]
                open_one = SessionRecord(sid, e.user_id, e.ts_ms, e.ts_ms)
                current[e.user_id] = open_one
                sessions[sid] = open_one
            e.session_id = open_one.session_id
            open_one.last_event_at_ms = e.ts_ms
            continue
        s = sessions.get(e.session_id)
        if s is None:
            sessions[e.session_id] = SessionRecord(e.session_id, e.user_id, e.ts_ms, e.ts_ms)
        else:
            s.started_at_ms = min(s.started_at_ms, e.ts_ms)
            s.last_event_at_ms = max(s.last_event_at_ms, e.ts_ms)
    for s in sessions.values():
        s.ended_at_ms = s.last_event_at_ms
        s.end_reason = EndReason.TIMEOUT
    return list(sessions.values())


#: A format's row reader: valid rows as (line number, event); it counts every data
#: row in ``report.rows`` and appends bad ones to ``report.bad``.
RowReader = Callable[[TextIO, ImportReport], Iterable[tuple[int, EventRecord]]]


def import_rows(
    store: Store,
    rows: Iterable[tuple[int, EventRecord]],
    report: ImportReport,
    *,
    session_timeout_s: float = 1800.0,
    show_progress: bool = False,
) -> ImportReport:
    """Stores the rows a reader yields: a session id belongs to one user (in the
    rows and in the store; other users' rows are bad rows), rows without one are
    sessionized by the inactivity timeout, and events go to the store in batches
    (idempotent on event id). Fills in ``report`` and returns it."""
    parsed = list(tqdm(rows, desc="read", unit=" rows", disable=not show_progress))
    # A session id must belong to one user, in the file and in the store.
    given = {e.session_id for _, e in parsed if e.session_id}
    owners = {sid: s.user_id for sid, s in store.get_sessions(given).items()} if given else {}
    kept: list[EventRecord] = []
    for line, e in parsed:
        if e.session_id:
            owner = owners.setdefault(e.session_id, e.user_id)
            if owner != e.user_id:
                report.bad.append(
                    BadRow(
                        line, f"session_id: {e.session_id!r} used by two users (it is {owner!r}'s)"
                    )
                )
                continue
        kept.append(e)
    report.bad.sort(key=lambda b: b.line)
    sessions = sessionize(kept, int(session_timeout_s * 1000))
    by_id = {s.session_id: s for s in sessions}
    report.sessions = len(sessions)
    bar = tqdm(total=len(kept), desc="store", unit=" events", disable=not show_progress)
    for start in range(0, len(kept), BATCH):
        chunk = kept[start : start + BATCH]
        chunk_sessions = [by_id[sid] for sid in dict.fromkeys(e.session_id for e in chunk)]
        result = store.append_events(chunk, chunk_sessions)
        report.imported += result.accepted
        report.duplicates += result.duplicates
        bar.update(len(chunk))
    bar.close()
    return report


def import_file(
    store: Store,
    path: str | Path,
    reader: RowReader,
    *,
    session_timeout_s: float = 1800.0,
    show_progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
    encoding: str = "utf-8",
) -> ImportReport:
    """Imports ``path`` read by ``reader`` (see ``import_rows``)."""
    report = ImportReport()
    started = time.perf_counter()
    with open(path, newline="", encoding=encoding) as fh:
        import_rows(
            store,
            reader(fh, report),
            report,
            session_timeout_s=session_timeout_s,
            show_progress=show_progress,
        )
    if on_bad_row:
        for bad in report.bad:
            on_bad_row(bad)
    report.seconds = time.perf_counter() - started
    return report


def import_csv(
    store: Store,
    path: str | Path,
    *,
    session_timeout_s: float = 1800.0,
    show_progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
) -> ImportReport:
    """Imports a canonical CSV (see the module docstring)."""
    return import_file(
        store,
        path,
        read_events,
        session_timeout_s=session_timeout_s,
        show_progress=show_progress,
        on_bad_row=on_bad_row,
    )
