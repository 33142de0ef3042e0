"""Row readers for public dataset formats, on top of ``training.importer``.

Each format only turns its file into ``(line number, EventRecord)`` rows (bad rows
go to the report with their line); ``importer.import_rows`` does everything after
that, the same for all: session ownership checks, sessionizing, batched
idempotent storing, the ``ImportReport``.

* ``csv``: the canonical CSV (``importer.read_events``).
* ``movielens``: MovieLens ``u.data``: ``user<TAB>item<TAB>rating<TAB>epoch seconds``,
  no header. Every rating is one ``ITEM_VIEW`` (its rating kept as the event's
  ``value``); ``min_rating`` skips lower ones. No session ids: grouped by timeout.
* ``movielens-csv``: MovieLens ``ratings.csv``, header ``userId,movieId,rating,timestamp``.
* ``diginetica``: DIGINETICA (CIKM Cup 2016) clicks, ``;``-separated, header
  ``session_id;user_id;item_id;timeframe;eventdate`` (or the original camelCase
  ``sessionId;userId;itemId;timeframe;eventdate``). Time = ``eventdate`` (UTC
  midnight) + ``timeframe`` ms. Session ids are kept. ``NA`` rows of a session
  with a known user belong to that user; a session without one belongs to
  ``anon-<session_id>``. A second known user in one session: those rows are bad.
* ``yoochoose``: YooChoose clicks, ``session,timestamp,item[,category]``, no header,
  ISO 8601 times. Users are ``anon-<session_id>``; the category goes to the
  event's properties.
* ``mapped``: any CSV/TSV with a header, its columns mapped onto the canonical
  fields (``{"user_id": "uid", "item_id": "product", "timestamp": "time"}``);
  unmapped canonical fields use a column of their own name when there is one.
  ``event_type`` gives the type of rows without one; without a user column,
  users are ``anon-<session_id>``.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sessionrec.events import MAX_TS_MS, EventRecord, EventType
from sessionrec.store import Store
from training.importer import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    BadRow,
    ImportFormatError,
    ImportReport,
    RowReader,
    import_file,
    parse_timestamp_ms,
    read_events,
    row_event,
)

FORMATS = ("csv", "movielens", "movielens-csv", "diginetica", "yoochoose", "mapped")
#: Fields a ``mapped`` file's columns can be mapped onto.
FIELDS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
TIMESTAMP_UNITS = ("s", "ms")

_DIGINETICA = ("sessionid", "userid", "itemid", "timeframe", "eventdate")
_MOVIELENS_CSV = ["userid", "movieid", "rating", "timestamp"]
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)

Rows = Iterator[tuple[int, EventRecord]]


def _norm(name: str) -> str:
    """Header name for comparison: ``session_id``, ``sessionId`` -> ``sessionid``."""
    return name.strip().lower().replace("_", "")


def _rows_of_width(
    reader: Any, report: ImportReport, width: int
) -> Iterator[tuple[int, list[str]]]:
    """Non-empty CSV rows with their line number; rows of another width are bad."""
    for fields in reader:
        if not fields:
            continue
        report.rows += 1
        line = reader.line_num
        if len(fields) != width:
            report.bad.append(BadRow(line, f"row: expected {width} fields, got {len(fields)}"))
            continue
        yield line, fields


def anonymous_user(session_id: str) -> str:
    """The stable user id of an anonymous session."""
    return f"anon-{session_id}"


def _event_type_name(text: str | None, default: str | None = "ITEM_VIEW") -> str | None:
    """Validated event type name (``None`` when neither given nor defaulted)."""
    text = text if text is not None else default
    if text is None:
        return None
    try:
        return EventType.parse(text).name
    except (KeyError, ValueError):
        raise ImportFormatError(f"event_type: unknown {text!r}") from None


# ---------------------------------------------------------------- MovieLens
def _rating_event(
    user: str, item: str, rating: str, timestamp: str, min_rating: float | None, event_type: str
) -> EventRecord | None:
    """A rating as an event, or ``None`` when it is below ``min_rating``."""
    try:
        value = float(rating)
    except ValueError:
        raise ValueError(f"rating: not a number: {rating.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"rating: must be a finite number, got {rating.strip()!r}")
    if min_rating is not None and value < min_rating:
        return None
    row = {"user_id": user, "item_id": item, "event_type": event_type, "timestamp": timestamp}
    event = row_event(row)
    event.value = value
    return event


def _ratings(
    rows: Iterator[tuple[int, list[str]]],
    report: ImportReport,
    min_rating: float | None,
    event_type: str,
) -> Rows:
    """(line, [user, item, rating, timestamp, ...]) -> rating events; low ones skipped."""
    for line, fields in rows:
        try:
            user, item, rating, timestamp = fields[:4]
            event = _rating_event(user, item, rating, timestamp, min_rating, event_type)
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            continue
        if event is None:
            report.skipped += 1
            continue
        yield line, event


def read_movielens(
    fh: TextIO,
    report: ImportReport,
    *,
    min_rating: float | None = None,
    event_type: str = "ITEM_VIEW",
) -> Rows:
    """MovieLens ``u.data``: ``user, item, rating, timestamp``, tab-separated, no header."""

    def rows() -> Iterator[tuple[int, list[str]]]:
        for line, raw in enumerate(fh, 1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            report.rows += 1
            fields = text.split("\t")
            if len(fields) != 4:
                fields = text.split()
            if len(fields) != 4:
                report.bad.append(
                    BadRow(
                        line,
                        f"row: expected 4 fields (user, item, rating, timestamp), "
                        f"got {len(fields)}",
                    )
                )
                continue
            yield line, fields

    return _ratings(rows(), report, min_rating, event_type)


def read_movielens_csv(
    fh: TextIO,
    report: ImportReport,
    *,
    min_rating: float | None = None,
    event_type: str = "ITEM_VIEW",
) -> Rows:
    """MovieLens ``ratings.csv``: header ``userId,movieId,rating,timestamp``."""
    reader = csv.reader(fh)
    header = next(reader, None) or []
    if [_norm(h) for h in header[:4]] != _MOVIELENS_CSV:
        raise ImportFormatError(
            f"header: expected userId,movieId,rating,timestamp, got {','.join(header)!r}"
        )
    return _ratings(_rows_of_width(reader, report, len(header)), report, min_rating, event_type)


# --------------------------------------------------------------- DIGINETICA
def _diginetica_time(timeframe: str, eventdate: str) -> int:
    try:
        offset = int(timeframe.strip())
    except ValueError:
        raise ValueError(f"timeframe: not an integer: {timeframe!r}") from None
    if offset < 0:
        raise ValueError(f"timeframe: negative: {timeframe!r}")
    try:
        day = dt.date.fromisoformat(eventdate.strip())
    except ValueError:
        raise ValueError(f"eventdate: not a YYYY-MM-DD date: {eventdate!r}") from None
    ts_ms = (day - _EPOCH).days * _DAY_MS + offset
    if not 0 <= ts_ms <= MAX_TS_MS:
        raise ValueError(f"eventdate: out of range: {eventdate!r}")
    return ts_ms


def read_diginetica(fh: TextIO, report: ImportReport, *, event_type: str = "ITEM_VIEW") -> Rows:
    """DIGINETICA click log (see the module docstring)."""
    reader = csv.reader(fh, delimiter=";")
    header = [_norm(h) for h in next(reader, None) or []]
    missing = [c for c in _DIGINETICA if c not in header]
    if missing:
        raise ImportFormatError(
            "header: expected session_id;user_id;item_id;timeframe;eventdate "
            f"(or sessionId;userId;itemId;timeframe;eventdate), missing {', '.join(missing)}"
        )
    at = {name: header.index(name) for name in _DIGINETICA}
    # All rows first: a session's user is known only once all its rows are read.
    parsed: list[tuple[int, str, str, str, int]] = []
    for line, fields in _rows_of_width(reader, report, len(header)):
        session = fields[at["sessionid"]].strip()
        user = fields[at["userid"]].strip()
        item = fields[at["itemid"]].strip()
        try:
            if not session:
                raise ValueError("session_id: empty")
            if not item:
                raise ValueError("item_id: empty")
            ts_ms = _diginetica_time(fields[at["timeframe"]], fields[at["eventdate"]])
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            continue
        parsed.append((line, session, "" if user.upper() == "NA" else user, item, ts_ms))
    owners = _session_owners(parsed)
    etype = str(int(EventType.parse(event_type)))
    for line, session, user, item, ts_ms in parsed:
        owner = owners.get(session) or anonymous_user(session)
        if user and user != owner:
            report.bad.append(
                BadRow(line, f"session_id: {session!r} used by two users (it is {owner!r}'s)")
            )
            continue
        row = {"user_id": owner, "item_id": item, "event_type": event_type, "session_id": session}
        try:
            event = row_event(
                row, ts_ms=ts_ms, id_parts=["diginetica", session, user, item, etype, str(ts_ms)]
            )
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            continue
        yield line, event


def _session_owners(parsed: list[tuple[int, str, str, str, int]]) -> dict[str, str]:
    """Each session's known user: the one with most of its rows (ties: the earliest)."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for line, session, user, _item, ts_ms in parsed:
        if user:
            counts[session][user] += 1
            key = (session, user)
            first[key] = min(first.get(key, (ts_ms, line)), (ts_ms, line))
    return {
        session: min(users, key=lambda u: (-users[u], first[(session, u)]))
        for session, users in counts.items()
    }


# ---------------------------------------------------------------- YooChoose
def read_yoochoose(fh: TextIO, report: ImportReport, *, event_type: str = "ITEM_VIEW") -> Rows:
    """YooChoose clicks: ``session,timestamp,item[,category]``, no header."""
    reader = csv.reader(fh)
    for fields in reader:
        if not fields:
            continue
        line = reader.line_num
        if line == 1 and len(fields) >= 3 and _norm(fields[1]) in ("timestamp", "time"):
            continue  # a header line, although the format has none
        report.rows += 1
        if len(fields) not in (3, 4):
            report.bad.append(
                BadRow(
                    line,
                    f"row: expected 3 or 4 fields (session, timestamp, item[, category]), "
                    f"got {len(fields)}",
                )
            )
            continue
        session = fields[0].strip()
        category = fields[3].strip() if len(fields) == 4 else ""
        row = {
            "user_id": anonymous_user(session),
            "item_id": fields[2],
            "event_type": event_type,
            "timestamp": fields[1],
            "session_id": session,
        }
        try:
            if not session:
                raise ValueError("session_id: empty")
            if len(category) > 256:
                raise ValueError("category: longer than 256 characters")
            event = row_event(row, properties={"category": category} if category else None)
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            continue
        yield line, event


# ------------------------------------------------------------------- mapped
def _timestamp_ms(text: str, unit: str) -> int:
    if unit == "s":
        return parse_timestamp_ms(text)
    try:
        value = float(text)
    except ValueError:
        return parse_timestamp_ms(text)  # ISO 8601 needs no unit
    if not math.isfinite(value) or not 0 <= value <= MAX_TS_MS:
        raise ValueError(f"timestamp: out of range: {text.strip()!r}")
    return round(value)


def read_mapped(
    fh: TextIO,
    report: ImportReport,
    *,
    mapping: Mapping[str, str],
    delimiter: str = ",",
    event_type: str | None = None,
    timestamp_unit: str = "s",
) -> Rows:
    """A CSV/TSV with a header whose columns ``mapping`` maps onto canonical fields."""
    reader = csv.DictReader(fh, delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    absent = [f"{col!r} (for {field})" for field, col in mapping.items() if col not in header]
    if absent:
        raise ImportFormatError(f"header: no column {', '.join(absent)}")
    source = {f: mapping.get(f) or (f if f in header else None) for f in FIELDS}
    needed = [f for f in ("item_id", "timestamp") if not source[f]]
    if not source["user_id"] and not source["session_id"]:
        needed.append("user_id (or session_id)")
    if not source["event_type"] and event_type is None:
        needed.append("event_type (or a constant event type)")
    if needed:
        raise ImportFormatError(f"header: no column for {', '.join(needed)}")
    columns = {f: col for f, col in source.items() if col}
    for raw in reader:
        report.rows += 1
        line = reader.line_num
        if None in raw:
            report.bad.append(BadRow(line, "row: more fields than the header"))
            continue
        row = {f: raw.get(col) or "" for f, col in columns.items()}
        if not row.get("event_type", "").strip() and event_type is not None:
            row["event_type"] = event_type
        session = row.get("session_id", "").strip()
        if not row.get("user_id", "").strip() and session:
            row["user_id"] = anonymous_user(session)
        try:
            ts_ms = _timestamp_ms(row["timestamp"], timestamp_unit)
            event = row_event(row, ts_ms=ts_ms)
        except ValueError as exc:
            report.bad.append(BadRow(line, str(exc)))
            continue
        yield line, event


# ---------------------------------------------------------------- dispatch
def detect_format(path: str | Path) -> str:
    """The format of ``path`` by its first line (and name): ``csv`` when unsure."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = fh.readline().rstrip("\r\n")
    if set(_DIGINETICA) <= {_norm(h) for h in first.split(";")}:
        return "diginetica"
    comma = [h.strip() for h in first.split(",")]
    if [_norm(h) for h in comma[:4]] == _MOVIELENS_CSV:
        return "movielens-csv"
    if set(REQUIRED_COLUMNS) <= set(comma):
        return "csv"
    tab = first.split("\t")
    if len(tab) == 4 and all(f.strip().isdigit() for f in tab):
        return "movielens"
    if len(comma) in (3, 4) and comma[0] and _ISO_DATETIME.match(comma[1]):
        return "yoochoose"
    if Path(path).suffix.lower() in (".data", ".base", ".test"):  # u.data, u1.base, ...
        return "movielens"
    return "csv"


def default_delimiter(path: str | Path) -> str:
    return "\t" if Path(path).suffix.lower() in (".tsv", ".tab") else ","


def reader_for(
    fmt: str,
    *,
    min_rating: float | None = None,
    event_type: str | None = None,
    mapping: Mapping[str, str] | None = None,
    delimiter: str | None = None,
    timestamp_unit: str = "s",
) -> RowReader:
    """The row reader of ``fmt`` with its options; ``ImportFormatError`` for an
    unknown format or an option the format does not take."""
    if fmt not in FORMATS:
        raise ImportFormatError(f"format: unknown {fmt!r} (one of {', '.join(FORMATS)})")
    given = {
        "min_rating": min_rating is not None,
        "event_type": event_type is not None,
        "mapping": bool(mapping),
        "delimiter": delimiter is not None,
        "timestamp_unit": timestamp_unit != "s",
    }
    takes = {
        "csv": set(),
        "movielens": {"min_rating", "event_type"},
        "movielens-csv": {"min_rating", "event_type"},
        "diginetica": {"event_type"},
        "yoochoose": {"event_type"},
        "mapped": {"mapping", "event_type", "delimiter", "timestamp_unit"},
    }[fmt]
    extra = [name for name, on in given.items() if on and name not in takes]
    if extra:
        raise ImportFormatError(f"{extra[0]}: not an option of the {fmt} format")
    if min_rating is not None and not math.isfinite(min_rating):
        raise ImportFormatError("min_rating: must be a finite number")
    reader: Callable[..., Rows]
    if fmt == "csv":
        return read_events
    if fmt == "mapped":
        unknown = sorted(set(mapping or {}) - set(FIELDS))
        if unknown:
            raise ImportFormatError(
                f"mapping: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})"
            )
        if timestamp_unit not in TIMESTAMP_UNITS:
            raise ImportFormatError(f"timestamp_unit: {timestamp_unit!r} is not s or ms")
        if delimiter is not None and len(delimiter) != 1:
            raise ImportFormatError(f"delimiter: must be one character, got {delimiter!r}")
        return functools.partial(
            read_mapped,
            mapping=dict(mapping or {}),
            delimiter=delimiter or ",",
            event_type=_event_type_name(event_type, None),
            timestamp_unit=timestamp_unit,
        )
    name = _event_type_name(event_type) or EventType.ITEM_VIEW.name
    if fmt in ("movielens", "movielens-csv"):
        reader = read_movielens if fmt == "movielens" else read_movielens_csv
        return functools.partial(reader, min_rating=min_rating, event_type=name)
    reader = read_diginetica if fmt == "diginetica" else read_yoochoose
    return functools.partial(reader, event_type=name)


@dataclass(frozen=True)
class ImportPlan:
    format: str
    reader: RowReader
    encoding: str


def plan_import(
    path: str | Path,
    fmt: str | None = None,
    *,
    min_rating: float | None = None,
    event_type: str | None = None,
    mapping: Mapping[str, str] | None = None,
    delimiter: str | None = None,
    timestamp_unit: str = "s",
) -> ImportPlan:
    """How to read ``path``: its format (``None``: ``mapped`` when a mapping is
    given, else ``detect_format``), reader and encoding. Checks the options
    before anything is stored (``ImportFormatError``)."""
    if fmt is None:
        fmt = "mapped" if mapping else detect_format(path)
    if fmt == "mapped" and delimiter is None:
        delimiter = default_delimiter(path)
    reader = reader_for(
        fmt,
        min_rating=min_rating,
        event_type=event_type,
        mapping=mapping,
        delimiter=delimiter,
        timestamp_unit=timestamp_unit,
    )
    # The canonical CSV keeps import_csv's strict UTF-8; the others accept a BOM.
    return ImportPlan(fmt, reader, "utf-8" if fmt == "csv" else "utf-8-sig")


def import_dataset(
    store: Store,
    path: str | Path,
    fmt: str | None = None,
    *,
    min_rating: float | None = None,
    event_type: str | None = None,
    mapping: Mapping[str, str] | None = None,
    delimiter: str | None = None,
    timestamp_unit: str = "s",
    session_timeout_s: float = 1800.0,
    show_progress: bool = False,
    on_bad_row: Callable[[BadRow], None] | None = None,
) -> ImportReport:
    """Imports ``path`` (see ``plan_import`` and ``importer.import_rows``)."""
    plan = plan_import(
        path,
        fmt,
        min_rating=min_rating,
        event_type=event_type,
        mapping=mapping,
        delimiter=delimiter,
        timestamp_unit=timestamp_unit,
    )
    return import_file(
        store,
        path,
        plan.reader,
        session_timeout_s=session_timeout_s,
        show_progress=show_progress,
        on_bad_row=on_bad_row,
        encoding=plan.encoding,
    )
