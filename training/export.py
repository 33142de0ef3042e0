"""Export of the store as Parquet, partitioned by UTC day (data lakes, Spark).

Layout of ``out_dir`` (Hive-style partitions, one file per partition)::

    manifest.json                                  schema version, range, rows per partition
    events/day=YYYY-MM-DD/part-00000.parquet       by the UTC day of ts_ms
    events/_SUCCESS
    sessions/day=YYYY-MM-DD/part-00000.parquet     by the UTC day of started_at_ms
    sessions/_SUCCESS
    items/part-00000.parquet                       the whole catalog (not partitioned)
    items/_SUCCESS

The ``day`` column lives only in the directory names (read with Hive
partitioning: ``pyarrow.dataset.dataset(out / "events", partitioning="hive")``,
``spark.read.parquet(out + "/events")``). A time-partitioned table without rows
has no partition directory, only ``_SUCCESS``; its columns are in the manifest
(and in :data:`SCHEMAS`).

Everything is read through :meth:`Store.read_snapshot`, in one snapshot, so the
tables agree; rows arrive in batches (``fetchmany``) ordered by time, and each
day's file is written by one ``ParquetWriter`` that is closed as soon as the
next day starts: memory stays bounded by the batch size (SQLite's cursor
streams; PostgreSQL's snapshot reads through server-side cursors).

Safety: the export is written into a hidden staging directory beside
``out_dir`` (``.NAME.tmp-XXXX``; Spark and pyarrow ignore names starting with a
dot), every file and directory is fsynced (all at once, at the end), and the
staging directory is then renamed to ``out_dir`` in one step: readers see the
old export or the new complete one, never a half-written partition. An
``out_dir`` that exists and is not empty is refused unless ``overwrite``, and
even then only if it holds a previous export (its ``manifest.json``): the old
export is renamed aside, the new one renamed in, the old one removed. A crash
between those two renames leaves ``out_dir`` missing with both exports intact
beside it; a crash during the export leaves only the hidden staging directory
(removed on errors and interrupts; after a kill it may be deleted by hand).

No gRPC here: training code (a Spark engine) calls :func:`export_parquet`.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sessionrec.errors import SessionrecError
from sessionrec.events import EventType
from sessionrec.isotime import EPOCH
from sessionrec.store import Store
from sessionrec.store.base import SQLReader

#: Raised by every change of a column (name, type, meaning) or of the layout.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
#: Written into the manifest; ``overwrite`` replaces only directories that carry it.
FORMAT = "sessionrec-parquet-export"
COMPRESSION = "zstd"
PART = "part-00000.parquet"
DAY_MS = 86_400_000
DEFAULT_BATCH_ROWS = 50_000

_TS = pa.timestamp("ms", tz="UTC")


def _schema(table: str, *fields: pa.Field) -> pa.Schema:
    return pa.schema(
        fields,
        metadata={"sessionrec.table": table, "sessionrec.schema_version": str(SCHEMA_VERSION)},
    )


EVENTS_SCHEMA = _schema(
    "events",
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("type", pa.int32(), nullable=False),
    #: The EventType name (ITEM_VIEW, ...); null for a number this version does not know.
    pa.field("type_name", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("screen", pa.string()),
    #: null: unknown (not reported, not derivable).
    pa.field("dwell_ms", pa.int64()),
    #: True when dwell_ms was derived by the server (gap to the next event).
    pa.field("dwell_derived", pa.bool_()),
    pa.field("value", pa.float64()),
    pa.field("ts_ms", pa.int64(), nullable=False),
    pa.field("ts", _TS, nullable=False),
    #: The event's properties as a JSON object (text); null when it had none.
    pa.field("properties", pa.string()),
    pa.field("received_at_ms", pa.int64(), nullable=False),
)
SESSIONS_SCHEMA = _schema(
    "sessions",
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("platform", pa.int32()),
    pa.field("app_version", pa.string()),
    pa.field("started_at_ms", pa.int64(), nullable=False),
    pa.field("started_at", _TS, nullable=False),
    pa.field("last_event_at_ms", pa.int64(), nullable=False),
    #: null: still open.
    pa.field("ended_at_ms", pa.int64()),
    #: sessionrec.events.EndReason: 0 open, 1 closed, 2 timeout.
    pa.field("end_reason", pa.int32(), nullable=False),
    pa.field("event_count", pa.int64()),
    pa.field("total_dwell_ms", pa.int64()),
    pa.field("last_seen_ms", pa.int64(), nullable=False),
    pa.field("utc_offset_min", pa.int32()),
)
ITEMS_SCHEMA = _schema(
    "items",
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("categories", pa.list_(pa.string()), nullable=False),
    pa.field("price", pa.float64()),
    pa.field("available", pa.bool_(), nullable=False),
    #: A JSON object (text).
    pa.field("attributes", pa.string(), nullable=False),
    pa.field("created_at_ms", pa.int64(), nullable=False),
    pa.field("updated_at_ms", pa.int64(), nullable=False),
)
SCHEMAS: dict[str, pa.Schema] = {
    "events": EVENTS_SCHEMA,
    "sessions": SESSIONS_SCHEMA,
    "items": ITEMS_SCHEMA,
}
_TYPE_NAMES = {int(t): t.name for t in EventType}


class ExportError(SessionrecError):
    """The export cannot be written where asked (the message starts with the path)."""


# ------------------------------------------------------------ time bounds
def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    when = EPOCH + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- results
@dataclass
class TableSummary:
    rows: int = 0
    bytes: int = 0
    #: Partition (``day=YYYY-MM-DD``, or ``""`` for an unpartitioned table) -> rows.
    partitions: dict[str, int] = field(default_factory=dict)
    #: Partition -> bytes of its file.
    partition_bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "partitions": sum(1 for p in self.partitions if p),
            "files": len(self.partitions),
            "bytes": self.bytes,
        }


@dataclass
class ExportSummary:
    out_dir: str
    start_ms: int | None
    end_ms: int | None
    tables: dict[str, TableSummary]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out_dir,
            "format": "parquet",
            "from": _iso(self.start_ms),
            "to": _iso(self.end_ms),
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else None,
        }


# ------------------------------------------------------- column builders
def _json_text(value: Any) -> str | None:
    """JSON kept as text (SQLite) or decoded by the driver (PostgreSQL json/jsonb)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _bools(values: Sequence[Any]) -> pa.Array:
    return pa.array([None if v is None else bool(v) for v in values], pa.bool_())


def _events_table(rows: list[tuple]) -> pa.Table:
    (
        event_id,
        session_id,
        user_id,
        etype,
        item_id,
        screen,
        dwell_ms,
        dwell_derived,
        value,
        ts_ms,
        properties,
        received_at_ms,
    ) = zip(*rows, strict=True)
    ts = pa.array(ts_ms, pa.int64())
    return pa.Table.from_arrays(
        [
            pa.array(event_id, pa.string()),
            pa.array(session_id, pa.string()),
            pa.array(user_id, pa.string()),
            pa.array(etype, pa.int32()),
            pa.array([_TYPE_NAMES.get(t) for t in etype], pa.string()),
            pa.array(item_id, pa.string()),
            pa.array(screen, pa.string()),
            pa.array(dwell_ms, pa.int64()),
            _bools(dwell_derived),
            pa.array(value, pa.float64()),
            ts,
            ts.view(_TS),
            pa.array([_json_text(p) for p in properties], pa.string()),
            pa.array(received_at_ms, pa.int64()),
        ],
        schema=EVENTS_SCHEMA,
    )


def _sessions_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    started = pa.array(cols[4], pa.int64())
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.string()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.int32()),
            pa.array(cols[3], pa.string()),
            started,
            started.view(_TS),
            *(
                pa.array(col, SESSIONS_SCHEMA.field(name).type)
                for col, name in zip(
                    cols[5:],
                    (
                        "last_event_at_ms",
                        "ended_at_ms",
                        "end_reason",
                        "event_count",
                        "total_dwell_ms",
                        "last_seen_ms",
                        "utc_offset_min",
                    ),
                    strict=True,
                )
            ),
        ],
        schema=SESSIONS_SCHEMA,
    )


def _items_table(rows: list[tuple]) -> pa.Table:
    item_id, title, categories, price, available, attributes, created, updated = zip(
        *rows, strict=True
    )
    return pa.Table.from_arrays(
        [
            pa.array(item_id, pa.string()),
            pa.array(title, pa.string()),
            pa.array(
                [json.loads(c) if isinstance(c, str) else list(c) for c in categories],
                pa.list_(pa.string()),
            ),
            pa.array(price, pa.float64()),
            _bools(available),
            pa.array([_json_text(a) for a in attributes], pa.string()),
            pa.array(created, pa.int64()),
            pa.array(updated, pa.int64()),
        ],
        schema=ITEMS_SCHEMA,
    )


@dataclass(frozen=True)
class _Table:
    name: str
    schema: pa.Schema
    columns: str
    source: str
    #: The column that partitions (by UTC day) and filters by time; None: one file.
    time_column: str | None
    order_by: str
    build: Callable[[list[tuple]], pa.Table]


#: Portable SQL (SQLite and PostgreSQL): plain SELECT ... WHERE ... ORDER BY.
_TABLES = (
    _Table(
        "events",
        EVENTS_SCHEMA,
        "event_id, session_id, user_id, type, item_id, screen, dwell_ms, dwell_derived,"
        " value, ts_ms, properties, received_at_ms",
        "events",
        "ts_ms",
        "ts_ms, event_id",
        _events_table,
    ),
    _Table(
        "sessions",
        SESSIONS_SCHEMA,
        "session_id, user_id, platform, app_version, started_at_ms, last_event_at_ms,"
        " ended_at_ms, end_reason, event_count, total_dwell_ms, last_seen_ms, utc_offset_min",
        "sessions",
        "started_at_ms",
        "started_at_ms, session_id",
        _sessions_table,
    ),
    _Table(
        "items",
        ITEMS_SCHEMA,
        "item_id, title, categories, price, available, attributes, created_at_ms, updated_at_ms",
        "items",
        None,
        "item_id",
        _items_table,
    ),
)


# ------------------------------------------------------------ file system
def _fsync(path: Path, *, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:  # platforms that cannot open a directory
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _fsync_all(paths: Sequence[Path]) -> None:
    """fsyncs files and directories, many at once: the file system commits its
    journal for many callers together (430 partitions: 2 s one by one, 0.2 s so)."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        futures = [pool.submit(_fsync, path, directory=path.is_dir()) for path in paths]
        for future in futures:
            future.result()  # the first failure, if any


def _is_export(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_target(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The absolute output directory, or ExportError when the export may not go
    there: a file, or a non-empty directory (without ``overwrite``, or with it
    but not holding a previous export)."""
    out = Path(os.path.abspath(out_dir))
    if not out.name:
        raise ExportError(f"{out}: not a directory an export can replace")
    if out.is_symlink():  # renaming onto it would replace the link, not its target
        raise ExportError(f"{out}: a symbolic link (give the directory it points to)")
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise ExportError(
                    f"{out}: exists and is not empty (--overwrite replaces an export)"
                )
            if not _is_export(out):
                raise ExportError(
                    f"{out}: not empty and not a sessionrec export (no {MANIFEST}); "
                    "refusing to replace it"
                )
    return out


def _swap_in(staging: Path, out: Path, *, overwrite: bool) -> None:
    """Renames the complete staging directory to ``out`` (checked again: it may
    have changed while the export ran)."""
    check_target(out, overwrite=overwrite)
    old: Path | None = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
        else:
            out.rmdir()
    try:
        os.rename(staging, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # the previous export back in place
        raise
    _fsync(out.parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Writer:
    """One table's files: a ParquetWriter per partition, one open at a time."""

    def __init__(self, root: Path, schema: pa.Schema, summary: TableSummary, written: list[Path]):
        self.root = root
        self.schema = schema
        self.summary = summary
        #: Every file and directory made, fsynced together before the rename.
        self.written = written
        self._writer: pq.ParquetWriter | None = None
        self._partition: str | None = None
        self._path: Path | None = None

    def open(self, partition: str) -> None:
        if partition in self.summary.partitions:
            # Rows come ordered by time: a partition never comes back.
            raise ExportError(f"{self.root}: rows of {partition} arrived out of time order")
        self.close()
        directory = self.root / partition if partition else self.root
        if not directory.is_dir():
            directory.mkdir(parents=True)
            self.written.append(directory)
        self._path = directory / PART
        self._partition = partition
        self.summary.partitions[partition] = 0
        self._writer = pq.ParquetWriter(self._path, self.schema, compression=COMPRESSION)

    def write(self, partition: str, table: pa.Table) -> None:
        if partition != self._partition or self._writer is None:
            self.open(partition)
        assert self._writer is not None
        self._writer.write_table(table)
        self.summary.partitions[partition] += table.num_rows
        self.summary.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None or self._path is None or self._partition is None:
            return
        self._writer.close()
        self._writer = None
        self.written.append(self._path)
        size = self._path.stat().st_size
        self.summary.partition_bytes[self._partition] = size
        self.summary.bytes += size

    def finish(self) -> None:
        self.close()
        if not self.root.is_dir():
            self.root.mkdir(parents=True)
            self.written.append(self.root)
        marker = self.root / SUCCESS
        marker.touch()
        self.written.append(marker)


def _day_runs(ts_ms: np.ndarray) -> list[tuple[str, int, int]]:
    """(``day=YYYY-MM-DD``, start, stop) of each run of one UTC day in a sorted batch."""
    days = ts_ms // DAY_MS  # floor division: days before 1970 too
    if len(days) > 1 and bool(np.any(days[1:] < days[:-1])):
        raise ExportError("rows arrived out of time order")
    cuts = [0, *(np.flatnonzero(days[1:] != days[:-1]) + 1).tolist(), len(days)]
    return [(f"day={np.datetime64(int(days[a]), 'D')}", a, b) for a, b in itertools.pairwise(cuts)]


def _export_table(
    reader: SQLReader,
    spec: _Table,
    root: Path,
    *,
    start_ms: int | None,
    end_ms: int | None,
    batch_rows: int,
    show_progress: bool,
    written: list[Path],
) -> TableSummary:
    where: list[str] = []
    params: list[int] = []
    if spec.time_column is not None:
        # Plain comparisons on the column: an index on it can serve them.
        if start_ms is not None:
            where.append(f"{spec.time_column} >= ?")
            params.append(start_ms)
        if end_ms is not None:
            where.append(f"{spec.time_column} < ?")
            params.append(end_ms)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    total = None
    if show_progress:
        count = reader.execute(f"SELECT COUNT(*) FROM {spec.source}{condition}", params)
        total = int(count.fetchone()[0])
    summary = TableSummary()
    writer = _Writer(root, spec.schema, summary, written)
    cursor = reader.execute(
        f"SELECT {spec.columns} FROM {spec.source}{condition} ORDER BY {spec.order_by}", params
    )
    with tqdm(total=total, desc=spec.name, unit=" rows", disable=not show_progress) as bar:
        try:
            while True:
                rows = cursor.fetchmany(batch_rows)
                if not rows:
                    break
                table = spec.build(rows)
                if spec.time_column is None:
                    writer.write("", table)
                else:
                    ts = table.column(spec.time_column).to_numpy()
                    for partition, a, b in _day_runs(ts):
                        writer.write(partition, table.slice(a, b - a))
                bar.update(len(rows))
            if spec.time_column is None and not summary.partitions:
                writer.write("", spec.schema.empty_table())  # an empty catalog: 0 rows
            writer.finish()
        finally:
            writer.close()
    return summary


def _manifest(
    summary: ExportSummary, dialect: str, created_at_ms: int, specs: Sequence[_Table]
) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for spec in specs:
        t = summary.tables[spec.name]
        tables[spec.name] = {
            "path": spec.name,
            "partition_by": None
            if spec.time_column is None
            else {"day": f"UTC day of {spec.time_column} (YYYY-MM-DD)"},
            "time_filtered": spec.time_column is not None,
            "rows": t.rows,
            "bytes": t.bytes,
            "partitions": [
                {
                    "path": f"{p}/{PART}" if p else PART,
                    **({"day": p.removeprefix("day=")} if p else {}),
                    "rows": rows,
                    "bytes": t.partition_bytes.get(p, 0),
                }
                for p, rows in t.partitions.items()
            ],
            "columns": [
                {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in spec.schema
            ],
        }
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": _iso(created_at_ms),
        "store_dialect": dialect,
        "compression": COMPRESSION,
        "range": {
            "from": _iso(summary.start_ms),
            "to": _iso(summary.end_ms),
            "from_ms": summary.start_ms,
            "to_ms": summary.end_ms,
            "note": "from inclusive, to exclusive; events by ts_ms, sessions by "
            "started_at_ms; items are the whole catalog",
        },
        "tables": tables,
    }


def export_parquet(
    store: Store,
    out_dir: str | os.PathLike[str],
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[str], None] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    overwrite: bool = False,
    show_progress: bool = False,
) -> ExportSummary:
    """Writes events, sessions and the item catalog of ``store`` under ``out_dir``
    (see the module docstring for the layout and the safety rules).

    ``start_ms`` (inclusive) / ``end_ms`` (exclusive) limit events by ``ts_ms``
    and sessions by ``started_at_ms``; ``progress`` hears a line per table,
    ``show_progress`` draws tqdm bars; ``overwrite`` replaces a previous export.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows: must be >= 1, got {batch_rows}")
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ValueError(f"start_ms: must be before end_ms ({start_ms} >= {end_ms})")
    out = check_target(out_dir, overwrite=overwrite)
    began = time.perf_counter()
    created_at_ms = time.time_ns() // 1_000_000
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        tables: dict[str, TableSummary] = {}
        written: list[Path] = []
        with store.read_snapshot() as reader:
            dialect = reader.dialect
            for spec in _TABLES:
                tables[spec.name] = _export_table(
                    reader,
                    spec,
                    staging / spec.name,
                    start_ms=start_ms,
                    end_ms=end_ms,
                    batch_rows=batch_rows,
                    show_progress=show_progress,
                    written=written,
                )
                if progress is not None:
                    t = tables[spec.name]
                    progress(
                        f"export: {spec.name}: {t.rows:,} rows, {len(t.partitions)} "
                        f"file(s), {t.bytes:,} bytes"
                    )
        summary = ExportSummary(str(out), start_ms, end_ms, tables, 0.0)
        manifest = staging / MANIFEST
        manifest.write_text(
            json.dumps(_manifest(summary, dialect, created_at_ms, _TABLES), indent=2) + "\n"
        )
        # Durable before it becomes visible: a crash after the rename finds whole files.
        _fsync_all([*written, manifest, staging])
        _swap_in(staging, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - began
    return summary
