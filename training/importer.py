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
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from sessionrec.events import ITEM_REQUIRED, EndReason, EventRecord, EventType, SessionRecord
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
    seconds: float = 0.0
    bad: list[BadRow] = field(default_factory=list)

    def to_dict(self, max_bad: int = 100) -> dict:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "bad_rows": len(self.bad),
            "sessions": self.sessions,
            "seconds": round(self.seconds, 3),
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad[:max_bad]],
        }


def parse_timestamp_ms(text: str) -> int:
    text = text.strip()
    if not text:
        raise ValueError("timestamp: empty")
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp: not epoch seconds or ISO 8601: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _row_event(row: dict[str, str], line: int) -> EventRecord:
    user = (row.get("user_id") or "").strip()
    if not user:
        raise ValueError("user_id: empty")
    try:
        etype = EventType.parse(row.get("event_type") or "")
    except (KeyError, ValueError):
        raise ValueError(f"event_type: unknown {row.get('event_type')!r}") from None
    item = (row.get("item_id") or "").strip() or None
    if etype in ITEM_REQUIRED and not item:
        raise ValueError(f"item_id: required for {etype.name}")
    ts_ms = parse_timestamp_ms(row.get("timestamp") or "")
    if ts_ms < 0:
        raise ValueError("timestamp: before 1970")
    dwell_text = (row.get("dwell_ms") or "").strip()
    dwell = None
    if dwell_text:
        try:
            dwell = int(float(dwell_text))
        except ValueError:
            raise ValueError(f"dwell_ms: not a number: {dwell_text!r}") from None
        if dwell < 0:
            raise ValueError("dwell_ms: negative")
    value_text = (row.get("value") or "").strip()
    value = None
    if value_text:
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(f"value: not a number: {value_text!r}") from None
    session = (row.get("session_id") or "").strip()
    screen = (row.get("screen") or "").strip() or None
    event_id = (row.get("event_id") or "").strip()
    if not event_id:
        key = "\x1f".join([user, item or "", str(int(etype)), str(ts_ms), session, screen or ""])
        event_id = "imp-" + hashlib.sha1(key.encode()).hexdigest()[:24]
    return EventRecord(
        event_id=event_id,
        session_id=session,
        user_id=user,
        type=int(etype),
        ts_ms=ts_ms,
        item_id=item,
        screen=screen,
        dwell_ms=dwell,
        value=value,
    )


def read_events(fh: TextIO, report: ImportReport) -> Iterator[EventRecord]:
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
            yield _row_event(row, line)
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


def import_csv(
    store: Store,
    path: str | Path,
    *,
    session_timeout_s: float = 1800.0,
    show_progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as fh:
        rows = tqdm(read_events(fh, report), desc="read", unit=" rows", disable=not show_progress)
        events = list(rows)
    # A session id given in the file must belong to one user.
    owners: dict[str, str] = {}
    kept: list[EventRecord] = []
    for e in events:
        if e.session_id:
            owner = owners.setdefault(e.session_id, e.user_id)
            if owner != e.user_id:
                report.bad.append(
                    BadRow(
                        -1,
                        f"session_id: {e.session_id!r} used by two users "
                        f"({owner!r}, {e.user_id!r}); event {e.event_id}",
                    )
                )
                continue
        kept.append(e)
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
    if on_bad_row:
        for bad in report.bad:
            on_bad_row(bad)
    report.seconds = time.perf_counter() - started
    return report
