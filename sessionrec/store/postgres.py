"""PostgreSQL store: any number of servers share one database.

* The queries are :class:`sessionrec.store.sql.SQLStore`'s, the schema
  :mod:`sessionrec.store.schema`'s (migrated under an advisory lock, so
  replicas starting together migrate once; the version is in
  ``schema_version``).
* One connection per thread (psycopg 3), opened on first use and replaced
  when it breaks. Reads run in autocommit (each statement sees the latest
  commit); :meth:`PostgresStore.read_snapshot` is one REPEATABLE READ, READ
  ONLY transaction; writes are READ COMMITTED transactions whose
  read-then-write steps lock what they read (see ``sessionrec.store.sql``).
* Waits honour the caller's deadline: a write sets ``lock_timeout`` and
  ``statement_timeout`` to what is left of it (less a reserve to answer in),
  so a call fails with Unavailable or DeadlineExceeded instead of hanging.
* Errors become the service's: a lost connection, a deadlock or a lock wait
  past the deadline is Unavailable (retry); a full disk is ResourceExhausted
  and sets :attr:`write_error` until a write succeeds again.

The URL is libpq's: ``postgresql://user:password@host:port/dbname?options``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from sessionrec import deadline
from sessionrec.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from sessionrec.events import EventRecord
from sessionrec.store.base import SQLReader
from sessionrec.store.schema import MIGRATIONS, SCHEMA_VERSION, apply_migration
from sessionrec.store.sql import EVENT_COLUMNS, SQLStore, event_params

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("sessionrec.store")

#: Of the caller's remaining time, this much (at most) is kept to answer in.
DEADLINE_RESERVE_S = 0.25
#: A statement stops this long before the caller's deadline.
STATEMENT_MARGIN_MS = 20
#: Longest wait for a lock without a caller deadline.
LOCK_TIMEOUT_MS = 5000
#: PostgreSQL's array type of each inserted event column.
_EVENT_ARRAYS = {
    "type": "bigint",
    "dwell_ms": "bigint",
    "value": "float8",
    "ts_ms": "bigint",
    "received_at_ms": "bigint",
}
_NAMES = ", ".join(EVENT_COLUMNS)
#: Inserts a batch given as one array per column (in ``event_params`` order),
#: in batch order (``seq`` follows it), skipping stored ids; returns the new ids.
_INSERT_EVENTS_SQL = (
    f"INSERT INTO events ({_NAMES}) SELECT {_NAMES} FROM unnest("
    + ", ".join(f"?::{_EVENT_ARRAYS.get(name, 'text')}[]" for name in EVENT_COLUMNS)
    + f") WITH ORDINALITY AS batch ({_NAMES}, n) ORDER BY n"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
#: The LISTEN/NOTIFY channel of change notices (:meth:`PostgresStore.listen`).
CHANNEL = "sessionrec_changes"
#: How often a listener looks at its stop flag, and waits after a failure.
LISTEN_POLL_S = 0.5
LISTEN_RETRY_S = 1.0
#: The advisory lock key that serializes migrations.
_MIGRATION_LOCK = 0x5E55_10_4EC


def _translate_sql(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (and a literal ``%`` to ``%%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.rpartition("/")
    return f"{scheme}/{userinfo.split(':', 1)[0]}:***@{tail}"


class _Connection:
    """A psycopg connection that takes the shared SQL (``?`` placeholders)."""

    dialect = "postgresql"

    def __init__(self, conn: Any):
        self.raw = conn
        self._sql: dict[str, str] = {}

    def _text(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = _translate_sql(sql)
        return text

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(self._text(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        if rows:
            cur.executemany(self._text(sql), rows)
        return cur


class _SnapshotConnection(_Connection):
    """Reads of a snapshot through server-side cursors: ``fetchmany`` holds one
    batch in memory, not the whole result (exports, reports)."""

    #: Rows per round trip when a cursor is iterated.
    ITERSIZE = 10_000

    def __init__(self, conn: Any):
        super().__init__(conn)
        self._cursors = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cursors += 1
        cur = self.raw.cursor(name=f"snapshot_{self._cursors}")
        cur.itersize = self.ITERSIZE
        cur.execute(self._text(sql), params)
        return cur


def _error(exc: Exception) -> Exception:
    """The service's error for a failed statement or connection."""
    if isinstance(exc, pg_errors.DiskFull):
        return ResourceExhausted(f"store: disk full ({exc}); nothing of this call was stored")
    if isinstance(exc, pg_errors.QueryCanceled):
        return DeadlineExceeded(
            f"store: the statement ran past the caller's deadline ({exc}); nothing was stored"
        )
    if isinstance(
        exc,
        pg_errors.LockNotAvailable | pg_errors.DeadlockDetected | pg_errors.SerializationFailure,
    ):
        return Unavailable(f"store: busy ({exc}); retry")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(f"store: PostgreSQL unavailable ({exc}); retry")
    return exc


class PostgresStore(SQLStore):
    dialect = "postgresql"
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, readonly: bool = False, connect_timeout_s: int = 10):
        if psycopg is None:
            raise RuntimeError(
                "store: postgresql:// needs psycopg; install it with"
                " pip install 'sessionrec[postgresql]'"
            )
        super().__init__()
        self.url = url
        self.readonly = readonly
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ plumbing
    def _conn(self) -> _Connection:
        """This thread's connection (autocommit; opened, or reopened, on demand)."""
        if self._closed:
            raise Unavailable("store: closed")
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.raw.closed and not conn.raw.broken:
            return conn
        try:
            raw = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout_s,
                application_name="sessionrec",
            )
        except psycopg.Error as exc:
            raise Unavailable(
                f"store: cannot connect to {redact_url(self.url)} ({exc}); retry"
            ) from exc
        conn = _Connection(raw)
        self._local.conn = conn
        with self._conns_lock:
            self._conns = [c for c in self._conns if not c.closed]
            self._conns.append(raw)
        return conn

    @contextmanager
    def _read(self) -> Iterator[_Connection]:
        try:
            yield self._conn()
        except psycopg.Error as exc:
            raise _error(exc) from exc

    @contextmanager
    def read_snapshot(self) -> Iterator[SQLReader]:
        conn = self._conn()
        try:
            with conn.raw.transaction():
                conn.raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _SnapshotConnection(conn.raw)
        except psycopg.Error as exc:
            raise _error(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        self._check_writable()
        lock_ms, statement_ms = self._timeouts_ms()
        conn = self._conn()
        try:
            with conn.raw.transaction():
                conn.raw.execute(f"SET LOCAL lock_timeout = {lock_ms}")
                if statement_ms is not None:
                    conn.raw.execute(f"SET LOCAL statement_timeout = {statement_ms}")
                yield conn
        except psycopg.Error as exc:
            error = _error(exc)
            if isinstance(exc, pg_errors.DiskFull):
                self._set_write_error(str(error))
            raise error from exc
        if self._write_error is not None:
            self._set_write_error(None)  # a write went through: space is back

    def _timeouts_ms(self) -> tuple[int, int | None]:
        """How long a write may wait for a lock (the lock timeout, or what is left
        of the caller's deadline less a reserve to answer in), and how long one
        statement may run (None: no caller deadline; else up to the deadline, so
        that a lock wait ends first, as Unavailable). DeadlineExceeded: no time."""
        left = deadline.remaining_s()
        if left is None:
            return LOCK_TIMEOUT_MS, None
        wait = min(LOCK_TIMEOUT_MS / 1000, left - min(DEADLINE_RESERVE_S, left / 4))
        if wait <= 0.001:
            raise DeadlineExceeded(
                "deadline: the caller's deadline is (nearly) over; nothing was written"
            )
        lock_ms = max(1, int(wait * 1000))
        return lock_ms, max(lock_ms + 1, int(left * 1000) - STATEMENT_MARGIN_MS)

    def recheck_space(self) -> bool:
        """PostgreSQL manages its own space: the next write tells. Clears
        :attr:`write_error` so that one is tried."""
        if self._write_error is not None:
            self._set_write_error(None)
        return True

    def _migrate(self) -> None:
        """Brings the database to SCHEMA_VERSION in one transaction, under an
        advisory lock (servers starting together migrate once)."""
        conn = self._conn()
        with conn.raw.transaction():
            if not self.readonly:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)"
                )
                conn.execute(
                    "INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING"
                )
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                version = 0  # read-only, and nobody migrated this database yet
            else:
                row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
                version = int(row[0]) if row else 0
            where = redact_url(self.url)
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"store: {where} has schema version {version}, newer than this "
                    f"sessionrec ({SCHEMA_VERSION}); upgrade sessionrec"
                )
            if self.readonly:
                if version != SCHEMA_VERSION:
                    raise RuntimeError(
                        f"store: {where} has schema version {version}, this sessionrec reads "
                        f"{SCHEMA_VERSION} (a writing server migrates it first)"
                    )
                return
            for target, migration in enumerate(MIGRATIONS, start=1):
                if version < target:
                    apply_migration(migration, conn.execute, self.dialect)
            if version < SCHEMA_VERSION:
                conn.execute(
                    "UPDATE schema_version SET version = ? WHERE id = 1", (SCHEMA_VERSION,)
                )

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for raw in conns:
            with suppress(psycopg.Error):
                raw.close()

    # ------------------------------------------------------ dialect hooks
    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        return f"{column} = ANY(?::text[])", list(values)

    def _greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def _least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    def _notify(self, c: _Connection, topic: str) -> None:
        c.execute("SELECT pg_notify(?, ?)", (CHANNEL, topic))

    def listen(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Calls ``callback(topic)`` on a thread of its own whenever a server on
        this database commits a change to ``topic`` ("catalog", "offers",
        "keys"; LISTEN/NOTIFY), and ``callback("*")`` whenever it (re)connects:
        anything may have changed while it was not listening. Returns ``stop``."""
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(
                        self.url, autocommit=True, connect_timeout=self._connect_timeout_s
                    ) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        callback("*")
                        while not stop.is_set():
                            for note in conn.notifies(timeout=LISTEN_POLL_S):
                                callback(note.payload)
                except Exception:  # a lost connection, or a failing callback
                    log.warning("store: change listener failed; retrying", exc_info=True)
                    stop.wait(LISTEN_RETRY_S)

        thread = threading.Thread(target=run, name="store-listener", daemon=True)
        thread.start()

        def stop_listening() -> None:
            stop.set()
            thread.join(timeout=LISTEN_POLL_S + 5)

        return stop_listening

    def _lock(self, c: _Connection, key: str) -> None:
        c.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def _insert_events(
        self, c: _Connection, events: Sequence[EventRecord], received: int
    ) -> list[EventRecord]:
        # ON CONFLICT DO NOTHING: of two servers storing the same event at once,
        # one inserts it and the other waits for that commit and skips it. One
        # statement of constant text (arrays, one per column): parsed and
        # planned once per connection, whatever the batch size.
        first: dict[str, EventRecord] = {}
        for e in events:
            first.setdefault(e.event_id, e)
        batch = list(first.values())
        if not batch:
            return []
        columns = [
            list(col) for col in zip(*(event_params(e, received) for e in batch), strict=True)
        ]
        stored = {r[0] for r in c.execute(_INSERT_EVENTS_SQL, columns).fetchall()}
        return [e for e in batch if e.event_id in stored]
