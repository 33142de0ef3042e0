"""The store's queries, written once for every SQL backend.

:class:`SQLStore` implements :class:`~sessionrec.store.base.Store` on a few
hooks that each backend provides: a read connection (:meth:`SQLStore._read`),
a write transaction (:meth:`SQLStore._transaction`), and the handful of
places where the dialects differ (a list parameter, two-argument MIN/MAX, row
locks, how an insert learns which rows were new). The SQL is the subset
SQLite (3.35+) and PostgreSQL share, with ``?`` placeholders.

Concurrency. SQLite has one writer per file, so a write transaction sees
nothing change under it. PostgreSQL serves many replicas at once, so every
read-then-write below is either one statement (``INSERT ... ON CONFLICT``,
``UPDATE ... WHERE ended_at_ms IS NULL RETURNING``) or holds a lock first
(:meth:`SQLStore._lock`, ``FOR UPDATE``): a session times out exactly once, a
duplicate event is stored once, caps and budgets hold across replicas, and
the catalog's change counter never repeats.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sessionrec.errors import FailedPrecondition
from sessionrec.events import (
    VIEW_TYPES,
    AppendResult,
    EndReason,
    EventRecord,
    EventType,
    ItemEvent,
    SessionRecord,
)
from sessionrec.items import ItemRecord, ItemUpsertResult
from sessionrec.offers import IMPRESSION, REDEMPTION, TREATED, Offer, offer_from_dict
from sessionrec.store.base import (
    ApiKeyRecord,
    EventColumns,
    OfferCounts,
    OfferLogEntry,
    OfferOutcome,
    QuarantinedEvent,
    Store,
)
from sessionrec.store.schema import START_DAY_SQL

VIEW_TYPES_SQL = ",".join(str(int(t)) for t in sorted(VIEW_TYPES))
SESSION_COLUMNS = (
    "session_id, user_id, platform, app_version, started_at_ms, last_event_at_ms,"
    " ended_at_ms, end_reason, event_count, total_dwell_ms, last_seen_ms, utc_offset_min"
)
SESSION_MARKS = ", ".join("?" * len(SESSION_COLUMNS.split(",")))
API_KEY_COLUMNS = "key_id, name, role, secret_hash, created_at_ms, revoked_at_ms"
ITEM_COLUMNS = (
    "item_id, title, categories, price, available, attributes, created_at_ms,"
    " updated_at_ms, version"
)
#: The columns an event is inserted with, in :func:`event_params` order.
EVENT_COLUMNS = (
    "event_id",
    "session_id",
    "user_id",
    "type",
    "item_id",
    "screen",
    "dwell_ms",
    "value",
    "ts_ms",
    "properties",
    "received_at_ms",
)
EVENT_INSERT_SQL = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)
#: Rows per ``IN (...)`` list of literal placeholders.
CHUNK = 500


def session_from_row(row: Sequence) -> SessionRecord:
    return SessionRecord(
        session_id=row[0],
        user_id=row[1],
        platform=row[2],
        app_version=row[3],
        started_at_ms=row[4],
        last_event_at_ms=row[5],
        ended_at_ms=row[6],
        end_reason=EndReason(row[7]),
        event_count=row[8],
        total_dwell_ms=row[9],
        last_seen_ms=row[10],
        utc_offset_min=row[11],
    )


def session_params(s: SessionRecord) -> tuple:
    return (
        s.session_id,
        s.user_id,
        int(s.platform),
        s.app_version,
        s.started_at_ms,
        s.last_event_at_ms,
        s.ended_at_ms,
        int(s.end_reason),
        s.event_count,
        s.total_dwell_ms,
        s.last_seen_ms,
        s.utc_offset_min,
    )


def event_params(e: EventRecord, received: int) -> tuple:
    return (
        e.event_id,
        e.session_id,
        e.user_id,
        int(e.type),
        e.item_id,
        e.screen,
        e.dwell_ms,
        e.value,
        e.ts_ms,
        json.dumps(e.properties, sort_keys=True) if e.properties else None,
        received,
    )


def _item_from_row(row: Sequence) -> ItemRecord:
    return ItemRecord(
        item_id=row[0],
        title=row[1],
        categories=tuple(json.loads(row[2])),
        price=row[3],
        available=bool(row[4]),
        attributes=json.loads(row[5]),
        created_at_ms=row[6],
        updated_at_ms=row[7],
        version=row[8],
    )


def _item_params(item: ItemRecord) -> tuple:
    return (
        item.item_id,
        item.title,
        json.dumps(list(item.categories), ensure_ascii=False),
        item.price,
        int(item.available),
        json.dumps(dict(item.attributes), sort_keys=True, ensure_ascii=False),
        item.created_at_ms,
        item.updated_at_ms,
        item.version,
    )


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLStore(Store):
    """The queries of every SQL backend; subclasses provide the connections."""

    #: ``"sqlite"`` or ``"postgresql"``.
    dialect: str
    #: Appended to a SELECT whose rows the transaction then changes (row locks).
    FOR_UPDATE = ""
    #: Only reads (a worker process): every write raises FailedPrecondition.
    readonly: bool = False

    # ------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """A connection for one or more reads (``execute(sql, params)``)."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """One write transaction (``execute``, ``executemany``), committed on exit."""

    @abc.abstractmethod
    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        """``column`` is one of ``values``: the SQL and its one parameter."""

    @abc.abstractmethod
    def _greatest(self, a: str, b: str) -> str: ...

    @abc.abstractmethod
    def _least(self, a: str, b: str) -> str: ...

    def _notify(self, c: Any, topic: str) -> None:
        """Tells the other servers on this store, once the transaction commits,
        that ``topic`` changed ("catalog", "offers", "keys"): see
        :meth:`PostgresStore.listen`. Nothing to tell with one server per file."""

    def _lock(self, c: Any, key: str) -> None:
        """Serializes the transactions that lock ``key`` until they end (a store
        with one writer has nothing to do)."""

    @abc.abstractmethod
    def _insert_events(self, c: Any, events: Sequence[EventRecord], received: int) -> list[Any]:
        """Inserts the events whose ids are not stored yet (the first of repeated
        ids in the batch); returns those, in order."""

    def __init__(self) -> None:
        self._write_error: str | None = None
        self._write_listeners: list[Callable[[str | None], None]] = []

    # --------------------------------------------------------- write health
    @property
    def write_error(self) -> str | None:
        """Why writes fail (no space, I/O error), or None: the last write went through."""
        return self._write_error

    def add_write_listener(self, listener: Callable[[str | None], None]) -> None:
        """``listener(write_error)`` hears every change of :attr:`write_error`. It
        runs on the writing thread holding the write lock: it must not use the store."""
        self._write_listeners.append(listener)

    def _set_write_error(self, error: str | None) -> None:
        if error == self._write_error:
            return
        self._write_error = error
        for listener in self._write_listeners:
            listener(error)

    def write_transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A write transaction (for the service's own tables, e.g. the push log)."""
        return self._transaction()

    # ----------------------------------------------------------- helpers
    def _start_days(self, c: Any, session_ids: Sequence[str]) -> set[int]:
        """The UTC start days of these sessions."""
        if not session_ids:
            return set()
        where, param = self._in("session_id", list(dict.fromkeys(session_ids)))
        return {
            int(r[0])
            for r in c.execute(
                f"SELECT DISTINCT {START_DAY_SQL} FROM sessions WHERE {where}", (param,)
            ).fetchall()
        }

    def _mark_days(self, c: Any, session_ids: Sequence[str], also_days: Iterable[int] = ()) -> None:
        """Marks the start days of these sessions (and ``also_days``) as changed,
        inside a transaction: their cached analytics columns are dropped and their
        stamps raised, so a cache built before cannot be stored any more. Each
        day's row stays locked until the transaction ends, so writers call this
        last; days are locked in ascending order (no deadlock between writers)."""
        days = sorted(self._start_days(c, session_ids) | set(also_days))
        if days:
            c.executemany(
                "INSERT INTO analytics_days (day) VALUES (?) ON CONFLICT (day)"
                " DO UPDATE SET stamp = analytics_days.stamp + 1, data = NULL",
                [(d,) for d in days],
            )

    def _finalize(self, c: Any, session_ids: Sequence[str]) -> None:
        """Derives unknown dwell times of view events (from the next event of the
        same session) and the sessions' total dwell (inside a transaction)."""
        if not session_ids:
            return
        ids = list(dict.fromkeys(session_ids))
        where, param = self._in("session_id", ids)
        c.execute(
            f"""UPDATE events SET dwell_ms = d.gap, dwell_derived = 1
            FROM (
                SELECT seq, LEAD(ts_ms) OVER (PARTITION BY session_id ORDER BY ts_ms, seq)
                    - ts_ms AS gap
                FROM events WHERE {where}
            ) AS d
            WHERE events.seq = d.seq AND events.dwell_ms IS NULL AND d.gap IS NOT NULL
              AND events.type IN ({VIEW_TYPES_SQL})""",
            (param,),
        )
        c.execute(
            f"""UPDATE sessions SET total_dwell_ms = COALESCE((
                SELECT SUM(dwell_ms) FROM events
                WHERE events.session_id = sessions.session_id
                  AND events.type IN ({VIEW_TYPES_SQL})
            ), 0)
            WHERE {where}""",
            (param,),
        )

    def _ids_in(self, c: Any, sql: str, ids: Sequence[str]) -> Iterator[Any]:
        """Rows of ``sql`` (with one ``{marks}`` list) for ``ids``, in chunks."""
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start : start + CHUNK]
            yield from c.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def _check_writable(self) -> None:
        if self.readonly:
            raise FailedPrecondition(
                "store: this process only reads the store (a worker process); "
                "writes go through the primary process"
            )

    # ------------------------------------------------------------ sessions
    def start_session(self, session: SessionRecord) -> SessionRecord:
        with self._transaction() as c:
            c.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({SESSION_MARKS})"
                " ON CONFLICT DO NOTHING",
                session_params(session),
            )
            self._mark_days(c, [session.session_id])
            row = c.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?",
                (session.session_id,),
            ).fetchone()
        return session_from_row(row)

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return session_from_row(row) if row else None

    def get_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionRecord]:
        with self._read() as c:
            rows = list(
                self._ids_in(
                    c,
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id IN ({{marks}})",
                    list(session_ids),
                )
            )
        return {row[0]: session_from_row(row) for row in rows}

    def find_open_session(self, user_id: str) -> SessionRecord | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions "
                "WHERE user_id = ? AND ended_at_ms IS NULL ORDER BY started_at_ms DESC LIMIT 1",
                (user_id,),
            ).fetchone()
        return session_from_row(row) if row else None

    def end_session(
        self, session_id: str, ended_at_ms: int, reason: EndReason, *, derive_last_dwell: bool
    ) -> SessionRecord | None:
        with self._transaction() as c:
            row = c.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?{self.FOR_UPDATE}",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            session = session_from_row(row)
            if not session.is_open:
                return session
            ended_at_ms = max(ended_at_ms, session.started_at_ms)
            c.execute(
                "UPDATE sessions SET ended_at_ms = ?, end_reason = ? WHERE session_id = ?",
                (ended_at_ms, int(reason), session_id),
            )
            if derive_last_dwell:
                c.execute(
                    f"""UPDATE events SET dwell_ms = ? - ts_ms, dwell_derived = 1
                    WHERE seq = (SELECT seq FROM events WHERE session_id = ?
                                 ORDER BY ts_ms DESC, seq DESC LIMIT 1)
                      AND dwell_ms IS NULL AND ts_ms <= ? AND type IN ({VIEW_TYPES_SQL})""",
                    (ended_at_ms, session_id, ended_at_ms),
                )
            self._finalize(c, [session_id])
            self._mark_days(c, [session_id])
            row = c.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return session_from_row(row)

    def expire_sessions(self, idle_before_ms: int) -> list[str]:
        with self._transaction() as c:
            # One statement: of two servers expiring at once, each session is
            # closed (and reported) by exactly one.
            ids = sorted(
                r[0]
                for r in c.execute(
                    "UPDATE sessions SET ended_at_ms = last_event_at_ms, end_reason = ?"
                    " WHERE ended_at_ms IS NULL AND last_seen_ms < ? RETURNING session_id",
                    (int(EndReason.TIMEOUT), idle_before_ms),
                ).fetchall()
            )
            if ids:
                self._finalize(c, ids)
                self._mark_days(c, ids)
        return ids

    # -------------------------------------------------------------- events
    def append_events(
        self,
        events: Sequence[EventRecord],
        new_sessions: Sequence[SessionRecord] = (),
        *,
        received_ms: int | None = None,
        close_sessions: Sequence[str] = (),
        quarantine: Sequence[QuarantinedEvent] = (),
    ) -> AppendResult:
        received = wall_ms() if received_ms is None else received_ms
        # session_id -> [count, min ts, max ts, client dwell sum]
        touched: dict[str, list[int]] = {}
        with self._transaction() as c:
            fresh = self._insert_events(c, events, received)
            accepted = len(fresh)
            for e in fresh:
                stat = touched.get(e.session_id)
                dwell = e.dwell_ms if (e.dwell_ms and e.type in VIEW_TYPES) else 0
                if stat is None:
                    touched[e.session_id] = [1, e.ts_ms, e.ts_ms, dwell]
                else:
                    stat[0] += 1
                    stat[1] = min(stat[1], e.ts_ms)
                    stat[2] = max(stat[2], e.ts_ms)
                    stat[3] += dwell
            # A session opened by this batch is stored only if one of its events was
            # (a batch of duplicates changes nothing).
            stored_new = [s for s in new_sessions if s.session_id in touched]
            if stored_new:
                c.executemany(
                    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({SESSION_MARKS})"
                    " ON CONFLICT DO NOTHING",
                    [session_params(s) for s in stored_new],
                )
            # A late event can move an open session's start to an earlier day:
            # both the day it was on and the day it is on now change.
            old_days = self._start_days(c, list(touched))
            if touched:
                # In session order: concurrent writers lock rows in one order.
                c.executemany(
                    f"""UPDATE sessions SET
                        event_count = event_count + ?,
                        total_dwell_ms = total_dwell_ms + ?,
                        started_at_ms = CASE WHEN ended_at_ms IS NULL
                            THEN {self._least("started_at_ms", "?")} ELSE started_at_ms END,
                        last_event_at_ms = CASE WHEN ended_at_ms IS NULL
                            THEN {self._greatest("last_event_at_ms", "?")}
                            ELSE last_event_at_ms END,
                        last_seen_ms = CASE WHEN ended_at_ms IS NULL
                            THEN {self._greatest("last_seen_ms", "?")} ELSE last_seen_ms END
                    WHERE session_id = ?""",
                    [(s[0], s[3], s[1], s[2], received, sid) for sid, s in sorted(touched.items())],
                )
            if close_sessions:
                c.executemany(
                    "UPDATE sessions SET ended_at_ms = last_event_at_ms, end_reason = ? "
                    "WHERE session_id = ? AND ended_at_ms IS NULL",
                    [(int(EndReason.TIMEOUT), sid) for sid in sorted(close_sessions)],
                )
            to_finalize = [s.session_id for s in stored_new if not s.is_open]
            to_finalize += close_sessions
            self._finalize(c, to_finalize)
            quarantined = self._quarantine(c, quarantine, received)
            self._mark_days(c, [*touched, *close_sessions], old_days)
        return AppendResult(
            accepted=accepted,
            duplicates=len(events) - accepted,
            quarantined=quarantined,
            fresh=frozenset(e.event_id for e in fresh),
        )

    def user_item_events(self, user_id: str, limit: int) -> list[ItemEvent]:
        with self._read() as c:
            rows = c.execute(
                "SELECT item_id, type, dwell_ms, ts_ms FROM events"
                " WHERE user_id = ? AND item_id IS NOT NULL"
                " ORDER BY ts_ms DESC, seq DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        return [ItemEvent(*r) for r in rows]

    def session_item_events(self, session_id: str, limit: int) -> list[ItemEvent]:
        with self._read() as c:
            rows = c.execute(
                "SELECT item_id, type, dwell_ms, ts_ms FROM events WHERE session_id = ? "
                "AND item_id IS NOT NULL ORDER BY ts_ms DESC, seq DESC LIMIT ?",
                (session_id, limit),
            ).fetchall()
        return [ItemEvent(*r) for r in rows]

    def user_items(self, user_id: str) -> set[str]:
        with self._read() as c:
            rows = c.execute(
                "SELECT DISTINCT item_id FROM events WHERE user_id = ? AND item_id IS NOT NULL",
                (user_id,),
            ).fetchall()
        return {r[0] for r in rows}

    def _item_event_values(self, columns: Mapping[str, str]) -> dict[str, list[Any]]:
        """Each of ``columns`` (name -> SQL expression) over the item events in
        insertion order, as one list per column."""
        with self._read() as c:
            rows = c.execute(
                f"SELECT {', '.join(columns.values())} FROM events"
                " WHERE item_id IS NOT NULL ORDER BY seq"
            ).fetchall()
        values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
        return {name: list(v) for name, v in zip(columns, values, strict=True)}

    def item_events(self, *, with_sessions: bool = False) -> EventColumns:
        columns = {
            "user_id": "user_id",
            "item_id": "item_id",
            "type": "type",
            "dwell_ms": "COALESCE(dwell_ms, -1)",
            "ts_ms": "ts_ms",
        }
        if with_sessions:
            columns["session_id"] = "session_id"
        values = self._item_event_values(columns)
        ts = np.asarray(values["ts_ms"], dtype=np.int64)
        order = np.argsort(ts, kind="stable")

        def strings(name: str) -> np.ndarray:
            out = np.empty(len(ts), dtype=object)
            out[:] = values[name]
            return out[order]

        return EventColumns(
            strings("user_id"),
            strings("item_id"),
            np.asarray(values["type"], dtype=np.int8)[order],
            np.asarray(values["dwell_ms"], dtype=np.int64)[order],
            ts[order],
            strings("session_id") if with_sessions else None,
        )

    def item_popularity(self, since_ms: int, limit: int) -> list[tuple[str, float]]:
        with self._read() as c:
            rows = c.execute(
                "SELECT item_id, COUNT(DISTINCT user_id) AS n FROM events "
                "WHERE item_id IS NOT NULL AND ts_ms >= ? GROUP BY item_id "
                "ORDER BY n DESC, item_id LIMIT ?",
                (since_ms, limit),
            ).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    # ------------------------------------------------------------- catalog
    def upsert_items(
        self, items: Sequence[ItemRecord], *, now_ms: int | None = None
    ) -> ItemUpsertResult:
        now = wall_ms() if now_ms is None else now_ms
        inserted = updated = unchanged = 0
        with self._transaction() as c:
            # Upserts one at a time: the change counter never repeats, and a
            # reader never sees a lower counter commit after a higher one.
            self._lock(c, "catalog")
            version = int(c.execute("SELECT COALESCE(MAX(version), 0) FROM items").fetchone()[0])
            stored = {
                row[0]: _item_from_row(row)
                for row in self._ids_in(
                    c,
                    f"SELECT {ITEM_COLUMNS} FROM items WHERE item_id IN ({{marks}})",
                    [i.item_id for i in items],
                )
            }
            changed: dict[str, ItemRecord] = {}
            for item in items:
                old = stored.get(item.item_id)
                if old is not None and item.same_content(old):
                    unchanged += 1
                    continue
                created = item.created_at_ms
                if old is None:
                    inserted += 1
                    created = now if created is None else created
                else:
                    updated += 1
                    created = old.created_at_ms if created is None else created
                new = dataclasses.replace(
                    item, created_at_ms=created, updated_at_ms=now, version=version + 1
                )
                stored[item.item_id] = changed[item.item_id] = new
            if changed:
                version += 1
                c.executemany(
                    f"INSERT INTO items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (item_id) DO UPDATE SET title = excluded.title,"
                    " categories = excluded.categories, price = excluded.price,"
                    " available = excluded.available, attributes = excluded.attributes,"
                    " created_at_ms = excluded.created_at_ms,"
                    " updated_at_ms = excluded.updated_at_ms, version = excluded.version",
                    [_item_params(i) for i in changed.values()],
                )
                self._notify(c, "catalog")
        return ItemUpsertResult(inserted, updated, unchanged, version)

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
        return _item_from_row(row) if row else None

    def catalog_items(self, since_version: int = 0) -> list[ItemRecord]:
        with self._read() as c:
            rows = c.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE version > ? ORDER BY version, item_id",
                (since_version,),
            ).fetchall()
        return [_item_from_row(r) for r in rows]

    def catalog_version(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT COALESCE(MAX(version), 0) FROM items").fetchone()[0])

    def user_session_stats(self, user_id: str, before_ms: int) -> tuple[int, int | None]:
        with self._read() as c:
            count, last = c.execute(
                "SELECT COUNT(*), MAX(CASE WHEN started_at_ms < ? THEN last_event_at_ms END)"
                " FROM sessions WHERE user_id = ?",
                (before_ms, user_id),
            ).fetchone()
        return int(count), None if last is None else int(last)

    # ------------------------------------------------------------- offers
    def upsert_offers(self, offers: Sequence[Offer]) -> tuple[int, int]:
        inserted = updated = 0
        with self._transaction() as c:
            c.execute("UPDATE offers_meta SET version = version + 1 WHERE id = 1")
            version = int(c.execute("SELECT version FROM offers_meta WHERE id = 1").fetchone()[0])
            for offer in offers:
                version += 1
                known = c.execute(
                    "SELECT 1 FROM offers WHERE offer_id = ?", (offer.offer_id,)
                ).fetchone()
                c.execute(
                    "INSERT INTO offers (offer_id, definition, version) VALUES (?, ?, ?)"
                    " ON CONFLICT (offer_id) DO UPDATE SET definition = excluded.definition,"
                    " version = excluded.version",
                    (offer.offer_id, json.dumps(offer.to_dict(), sort_keys=True), version),
                )
                if known:
                    updated += 1
                else:
                    inserted += 1
            self._notify(c, "offers")
        return inserted, updated

    def delete_offer(self, offer_id: str) -> bool:
        with self._transaction() as c:
            gone = c.execute("DELETE FROM offers WHERE offer_id = ?", (offer_id,)).rowcount > 0
            if gone:
                c.execute("UPDATE offers_meta SET version = version + 1 WHERE id = 1")
                self._notify(c, "offers")
            return bool(gone)

    def list_offers(self) -> list[Offer]:
        with self._read() as c:
            rows = c.execute("SELECT definition FROM offers ORDER BY offer_id").fetchall()
        return [offer_from_dict(json.loads(r[0])) for r in rows]

    def offers_version(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT version FROM offers_meta WHERE id = 1").fetchone()[0])

    def offer_counts(
        self, offer_ids: Sequence[str], user_id: str, session_id: str | None
    ) -> dict[str, OfferCounts]:
        if not offer_ids:
            return {}
        out: dict[str, OfferCounts] = {}
        marks = ",".join("?" * len(offer_ids))
        with self._read() as c:
            totals = {
                r[0]: (int(r[1]), int(r[2]))
                for r in c.execute(
                    f"SELECT offer_id, impressions, redemptions FROM offer_totals"
                    f" WHERE offer_id IN ({marks})",
                    list(offer_ids),
                )
            }
            mine = {
                r[0]: (int(r[1]), int(r[2]))
                for r in c.execute(
                    f"SELECT offer_id, COUNT(*) FILTER (WHERE kind = {IMPRESSION}),"
                    f" COUNT(*) FILTER (WHERE kind = {REDEMPTION})"
                    f" FROM offer_log WHERE user_id = ? AND arm = {TREATED}"
                    f" AND offer_id IN ({marks}) GROUP BY offer_id",
                    [user_id, *offer_ids],
                )
            }
            in_session: dict[str, int] = {}
            if session_id:
                in_session = {
                    r[0]: int(r[1])
                    for r in c.execute(
                        # "+arm": no index may use arm, or SQLite (no statistics)
                        # reads every treated impression of each offer through
                        # offer_log_kind instead of the session's through
                        # offer_log_session (2.2 ms at 5k impressions, growing).
                        f"SELECT offer_id, COUNT(*) FROM offer_log WHERE session_id = ?"
                        f" AND kind = {IMPRESSION} AND +arm = {TREATED}"
                        f" AND offer_id IN ({marks}) GROUP BY offer_id",
                        [session_id, *offer_ids],
                    )
                }
        for oid in offer_ids:
            imp, red = totals.get(oid, (0, 0))
            uimp, ured = mine.get(oid, (0, 0))
            out[oid] = OfferCounts(imp, red, uimp, ured, in_session.get(oid, 0))
        return out

    def record_offer_logs(
        self, groups: Sequence[Sequence[OfferLogEntry]], offers: Mapping[str, Offer]
    ) -> list[list[str | None]]:
        with self._transaction() as c:
            # Caps and budgets are checked and counted under the offer's lock.
            for offer_id in sorted({e.offer_id for entries in groups for e in entries}):
                self._lock(c, "offer:" + offer_id)
            # In order: a later group's entries count what the earlier ones recorded.
            return [self._record_offer_log(c, entries, offers) for entries in groups]

    def _record_offer_log(
        self, c: Any, entries: Sequence[OfferLogEntry], offers: Mapping[str, Offer]
    ) -> list[str | None]:
        out: list[str | None] = []
        for e in entries:
            if c.execute("SELECT 1 FROM offer_log WHERE log_id = ?", (e.log_id,)).fetchone():
                out.append(None)  # recorded before: idempotent
                continue
            offer = offers.get(e.offer_id)
            # Holdout exposures are counterfactual (never capped); every real
            # redemption counts against the budget, whatever the user's arm.
            limited = offer is not None and (e.arm == TREATED or e.kind == REDEMPTION)
            reason = _offer_limit(c, e, offer) if limited and offer is not None else None
            if reason is not None:
                out.append(reason)
                continue
            c.execute(
                "INSERT INTO offer_log"
                " (log_id, offer_id, user_id, session_id, kind, arm, ts_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (e.log_id, e.offer_id, e.user_id, e.session_id, e.kind, e.arm, e.ts_ms),
            )
            if e.arm == TREATED or e.kind == REDEMPTION:
                column = "impressions" if e.kind == IMPRESSION else "redemptions"
                c.execute(
                    f"INSERT INTO offer_totals (offer_id, {column}) VALUES (?, 1)"
                    f" ON CONFLICT (offer_id) DO UPDATE SET {column} = offer_totals.{column} + 1",
                    (e.offer_id,),
                )
            out.append(None)
        return out

    def offer_outcomes(self) -> list[OfferOutcome]:
        purchase = int(EventType.PURCHASE)
        with self._read() as c:
            counts = {
                (r[0], int(r[1])): (int(r[2]), int(r[3]))
                for r in c.execute(
                    f"SELECT offer_id, arm, COUNT(*) FILTER (WHERE kind = {IMPRESSION}),"
                    f" COUNT(*) FILTER (WHERE kind = {REDEMPTION})"
                    " FROM offer_log GROUP BY offer_id, arm"
                )
            }
            rows = c.execute(
                f"""WITH first AS (
                        SELECT offer_id, arm, user_id, MIN(ts_ms) AS first_ms FROM offer_log
                        WHERE kind = {IMPRESSION} GROUP BY offer_id, arm, user_id),
                    bought AS (
                        SELECT f.offer_id, f.arm, f.user_id, COUNT(e.seq) AS purchases,
                               COALESCE(SUM(e.value), 0) AS revenue
                        FROM first f LEFT JOIN events e ON e.user_id = f.user_id
                             AND e.type = {purchase} AND e.ts_ms >= f.first_ms
                             AND e.item_id IS NOT NULL
                        GROUP BY f.offer_id, f.arm, f.user_id)
                    SELECT offer_id, arm, COUNT(*), COUNT(*) FILTER (WHERE purchases > 0),
                           SUM(revenue)
                    FROM bought GROUP BY offer_id, arm"""
            ).fetchall()
        users = {(r[0], int(r[1])): (int(r[2]), int(r[3]), float(r[4])) for r in rows}
        out = []
        for key in sorted(set(counts) | set(users)):
            imp, red = counts.get(key, (0, 0))
            n, conv, revenue = users.get(key, (0, 0, 0.0))
            out.append(OfferOutcome(key[0], key[1], imp, red, n, conv, revenue))
        return out

    # --------------------------------------------------------- privacy
    def delete_user(self, user_id: str) -> dict[str, int]:
        with self._transaction() as c:
            sessions = [
                r[0]
                for r in c.execute(
                    f"SELECT session_id FROM sessions WHERE user_id = ?{self.FOR_UPDATE}",
                    (user_id,),
                ).fetchall()
            ]
            self._mark_days(c, sessions)
            in_sessions, ids = self._in("session_id", sessions)
            deleted = {
                # Events of the user's sessions (indexed), then any other event
                # carrying the user id (the store keeps both the same; this is
                # the belt to those braces, a scan).
                "events": c.execute(f"DELETE FROM events WHERE {in_sessions}", (ids,)).rowcount
                + c.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount,
                "sessions": c.execute(
                    "DELETE FROM sessions WHERE user_id = ?", (user_id,)
                ).rowcount,
                "quarantine": c.execute(
                    f"DELETE FROM quarantine WHERE user_id = ? OR {in_sessions}", (user_id, ids)
                ).rowcount,
                "offer_log": c.execute(
                    "DELETE FROM offer_log WHERE user_id = ?", (user_id,)
                ).rowcount,
                "push_log": c.execute(
                    "DELETE FROM push_log WHERE user_id = ?", (user_id,)
                ).rowcount,
            }
        return deleted

    def purge_before(
        self, before_ms: int, *, batch: int = 1000, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        totals = {"events": 0, "sessions": 0, "quarantine": 0, "offer_log": 0, "push_log": 0}
        last = self._greatest("ended_at_ms", "last_event_at_ms")
        while True:  # one short transaction per batch of sessions, so serving goes on
            with self._transaction() as c:
                sessions = [
                    r[0]
                    for r in c.execute(
                        "SELECT session_id FROM sessions WHERE ended_at_ms IS NOT NULL"
                        f" AND {last} < ? ORDER BY session_id LIMIT ?{self.FOR_UPDATE}",
                        (int(before_ms), int(batch)),
                    ).fetchall()
                ]
                if not sessions:
                    break
                self._mark_days(c, sessions)
                in_sessions, ids = self._in("session_id", sessions)
                totals["events"] += c.execute(
                    f"DELETE FROM events WHERE {in_sessions}", (ids,)
                ).rowcount
                totals["sessions"] += c.execute(
                    f"DELETE FROM sessions WHERE {in_sessions}", (ids,)
                ).rowcount
            if progress is not None:
                progress(totals["sessions"])
        with self._transaction() as c:
            totals["quarantine"] = c.execute(
                "DELETE FROM quarantine WHERE received_at_ms < ?", (int(before_ms),)
            ).rowcount
            totals["offer_log"] = c.execute(
                "DELETE FROM offer_log WHERE ts_ms < ?", (int(before_ms),)
            ).rowcount
            totals["push_log"] = c.execute(
                "DELETE FROM push_log WHERE planned_ms < ?", (int(before_ms),)
            ).rowcount
        return totals

    def quarantined(self, limit: int = 100) -> list[QuarantinedEvent]:
        with self._read() as c:
            rows = c.execute(
                "SELECT user_id, session_id, event_id, error, reason, event, received_at_ms"
                " FROM quarantine ORDER BY seq DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [QuarantinedEvent(*row) for row in rows]

    def quarantine_events(self, entries: Sequence[QuarantinedEvent]) -> int:
        with self._transaction() as c:
            return self._quarantine(c, entries, wall_ms())

    def _quarantine(self, c: Any, entries: Sequence[QuarantinedEvent], now: int) -> int:
        """Keeps rejected events with their reason; a retried one (same event id and
        reason) is kept once. Returns how many rows are new."""
        stored = 0
        for e in entries:
            stored += c.execute(
                "INSERT INTO quarantine (received_at_ms, user_id, session_id, event_id,"
                " error, reason, event) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    e.received_at_ms or now,
                    e.user_id or None,
                    e.session_id or None,
                    e.event_id or None,
                    e.error,
                    e.reason,
                    e.event,
                ),
            ).rowcount
        return stored

    # ----------------------------------------------------------- analytics
    def cache_analytics_days(self, days: Sequence[tuple[int, int, bytes]]) -> int:
        with self._transaction() as c:
            stored = 0
            for day, stamp, data in days:
                stored += c.execute(
                    "UPDATE analytics_days SET data = ? WHERE day = ? AND stamp = ?"
                    " AND data IS NULL",
                    (data, int(day), int(stamp)),
                ).rowcount
        return stored

    def count_events(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def count_sessions(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    # ------------------------------------------------- API keys and secrets
    def create_api_key(self, key: ApiKeyRecord) -> ApiKeyRecord:
        with self._transaction() as c:
            c.execute(
                f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.key_id,
                    key.name,
                    key.role,
                    key.secret_hash,
                    key.created_at_ms,
                    key.revoked_at_ms,
                ),
            )
            self._notify(c, "keys")
        return key

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        return ApiKeyRecord(*row) if row else None

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self._read() as c:
            rows = c.execute(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at_ms, key_id"
            ).fetchall()
        return [ApiKeyRecord(*r) for r in rows]

    def revoke_api_key(self, key_id: str, revoked_at_ms: int | None = None) -> ApiKeyRecord | None:
        at = wall_ms() if revoked_at_ms is None else revoked_at_ms
        with self._transaction() as c:
            c.execute(
                "UPDATE api_keys SET revoked_at_ms = ? WHERE key_id = ? AND revoked_at_ms IS NULL",
                (at, key_id),
            )
            self._notify(c, "keys")
            row = c.execute(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        return ApiKeyRecord(*row) if row else None

    def get_or_create_secret(self, name: str, nbytes: int) -> bytes:
        if self.readonly:  # the writing process created it
            with self._read() as c:
                row = c.execute(
                    "SELECT value FROM server_secrets WHERE name = ?", (name,)
                ).fetchone()
            if row is None:
                raise FailedPrecondition(f"store: no server secret {name!r} yet (read-only)")
            return bytes(row[0])
        with self._transaction() as c:
            c.execute(
                "INSERT INTO server_secrets (name, value, created_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (name, secrets.token_bytes(nbytes), wall_ms()),
            )
            row = c.execute("SELECT value FROM server_secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])


def _offer_limit(c: Any, e: OfferLogEntry, offer: Offer) -> str | None:
    """Why ``e`` would exceed its offer's caps or budget (None: it fits)."""

    def count(where: str, *args: object) -> int:
        return int(
            c.execute(
                "SELECT COUNT(*) FROM offer_log"
                f" WHERE offer_id = ? AND (arm = {TREATED} OR kind = {REDEMPTION}) AND {where}",
                (e.offer_id, *args),
            ).fetchone()[0]
        )

    if offer.budget:
        redeemed = c.execute(
            "SELECT redemptions FROM offer_totals WHERE offer_id = ?", (e.offer_id,)
        ).fetchone()
        if (int(redeemed[0]) if redeemed else 0) >= offer.budget:
            return f"offer_id: {e.offer_id!r} has used its budget of {offer.budget} redemptions"
    if offer.single_use and count(f"user_id = ? AND kind = {REDEMPTION}", e.user_id):
        return f"offer_id: {e.offer_id!r} is single-use and this user redeemed it already"
    if e.kind == IMPRESSION:
        if offer.max_per_user and (
            count(f"user_id = ? AND kind = {IMPRESSION}", e.user_id) >= offer.max_per_user
        ):
            return f"offer_id: {e.offer_id!r} reached its cap of {offer.max_per_user} per user"
        if offer.max_per_session and not e.session_id:
            return f"offer_id: {e.offer_id!r} is capped per session and needs one"
        if (
            offer.max_per_session
            and count(f"session_id = ? AND kind = {IMPRESSION}", e.session_id)
            >= offer.max_per_session
        ):
            return (
                f"offer_id: {e.offer_id!r} reached its cap of {offer.max_per_session} per session"
            )
    return None
