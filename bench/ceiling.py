"""Bare ceilings for the serving benchmark (``bench/serving.py``, issue 8).

What the real server is compared with, measured in the same run on the same
machine with the same load generator:

* ``ceiling_servers``: one or more processes (sharing a fixed port with
  ``SO_REUSEPORT``), each a bare gRPC server with the real server's thread-pool
  size and no interceptors, auth or store:

  - ``RecommendationService.Recommend``: the user's factor vector (a fixed
    per-user vector precomputed from the artifact's own item factors, looked up
    in a dict), ``item_factors @ u`` over the *same* item-factor matrix the real
    server serves (read from the trained artifact's ``model.npz``), an
    ``argpartition`` top-n, a ``RecommendResponse`` with ids and scores;
  - ``OfferService.GetOffers``: the same scores, then the offers' affinity (the
    best score among an offer's target items, the best overall for a
    whole-catalog offer) times the offer's value, the top ``n``;
  - ``SessionService.TrackEvents``: counts the events and answers like the real
    server (accepted, event ids), stores nothing;
  - ``SessionService.StreamEvents``: acks each request the same way, the acks of
    the requests already waiting together in one message, as the real server.

* ``sqlite_ceiling``: bare SQLite, 100-event batches inserted with one
  ``executemany`` in one transaction each into a table shaped like the events
  table (same columns and indexes), WAL, ``synchronous`` as given (the server's
  default FULL, and NORMAL for reference). The rows look like the benchmark's
  TrackEvents traffic (64 open sessions, ten consecutive events each). No
  dedup query, no session rows.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class OfferDef:
    offer_id: str
    value: float
    #: Target item ids; empty: the whole catalog.
    item_ids: tuple[str, ...] = ()
    kind: int = pb.PERCENT_OFF


@dataclass(frozen=True)
class CeilingSpec:
    #: The artifact's ``model.npz`` (``models_dir/versions/<version>/model.npz``).
    npz_path: str
    version: str
    offers: tuple[OfferDef, ...] = ()
    #: gRPC worker threads per process (the real server's ``workers`` default).
    workers: int = 8
    processes: int = 1
    max_concurrent_rpcs: int = 256
    seed: int = 5
    #: Item-factor rows averaged into each user's fixed vector.
    vector_items: int = 3
    #: Filled in by ``ceiling_servers``: the pids.
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    """A port that is free now (bound with SO_REUSEPORT, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BareModel:
    """The artifact's item factors, a fixed vector per user, plain top-k."""

    def __init__(self, npz_path: str, seed: int = 5, vector_items: int = 3):
        with np.load(npz_path, allow_pickle=False) as data:
            self.factors = np.ascontiguousarray(data["model.item_factors"], dtype=np.float32)
            items = data["items"].tolist()
            users = data["users"].tolist()
        if self.factors.shape[0] != len(items):
            raise ValueError(f"{npz_path}: {self.factors.shape[0]} factor rows, {len(items)} items")
        self.ids: list[str] = [str(i) for i in items]
        self.index = {item: k for k, item in enumerate(self.ids)}
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(self.ids), (len(users), vector_items))
        self.user_vectors = np.ascontiguousarray(self.factors[picks].mean(axis=1))
        self.user_row = {str(u): k for k, u in enumerate(users)}
        self.default = np.ascontiguousarray(self.factors.mean(axis=0))

    def scores(self, user_id: str) -> np.ndarray:
        row = self.user_row.get(user_id)
        u = self.default if row is None else self.user_vectors[row]
        return self.factors @ u  # type: ignore[no-any-return]

    def top(self, user_id: str, n: int) -> tuple[list[int], list[float]]:
        scores = self.scores(user_id)
        n = max(1, min(n, len(scores)))
        idx = np.argpartition(-scores, n - 1)[:n]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return idx.tolist(), scores[idx].tolist()


class BareRecommendations(pb_grpc.RecommendationServiceServicer):
    def __init__(self, model: BareModel, version: str):
        self.model = model
        self.version = version

    def Recommend(self, request, context):
        idx, scores = self.model.top(request.user_id, request.n or 10)
        ids = self.model.ids
        return pb.RecommendResponse(
            items=[
                pb.ScoredItem(item_id=ids[i], score=s) for i, s in zip(idx, scores, strict=True)
            ],
            model_version=self.version,
            strategy="personalized",
        )


class BareOffers(pb_grpc.OfferServiceServicer):
    def __init__(self, model: BareModel, offers: Sequence[OfferDef]):
        self.model = model
        self.offers = list(offers)
        targeted = [o for o in self.offers if o.item_ids]
        self.whole = [o for o in self.offers if not o.item_ids]
        self.targeted = targeted
        width = max((len(o.item_ids) for o in targeted), default=1)
        # Target item rows, padded by repeating an offer's first item.
        rows = [
            [model.index.get(i, 0) for i in (list(o.item_ids) * width)[:width]] for o in targeted
        ]
        self.targets = np.asarray(rows, dtype=np.int64).reshape(len(targeted), width)
        self.values = np.asarray([o.value for o in targeted + self.whole], dtype=np.float64)
        self.order = targeted + self.whole

    def GetOffers(self, request, context):
        scores = self.model.scores(request.user_id)
        best = float(scores.max())
        affinity = np.concatenate(
            (scores[self.targets].max(axis=1), np.full(len(self.whole), best))
        )
        ranked = affinity * self.values
        n = max(1, min(request.n or 3, len(ranked)))
        idx = np.argpartition(-ranked, n - 1)[:n]
        idx = idx[np.argsort(-ranked[idx], kind="stable")]
        return pb.GetOffersResponse(
            offers=[
                pb.RankedOffer(
                    offer_id=self.order[i].offer_id,
                    score=float(ranked[i]),
                    kind=self.order[i].kind,  # type: ignore[arg-type]
                    value=self.order[i].value,
                )
                for i in idx.tolist()
            ]
        )


_END = object()


def _ack(request: pb.TrackEventsRequest) -> pb.TrackEventsResponse:
    ids = [e.event_id for e in request.events]
    return pb.TrackEventsResponse(accepted=len(ids), event_ids=ids)


class BareSessions(pb_grpc.SessionServiceServicer):
    def __init__(self) -> None:
        self.events = 0

    def TrackEvents(self, request, context):
        resp = _ack(request)
        self.events += resp.accepted
        return resp

    def StreamEvents(self, request_iterator, context):
        """Acks like the real server: a reader thread queues the requests, and the
        acks of every request already waiting go out together in one
        ``StreamEventsResponse`` (grpcio's sync server waits for each message
        sent, so one message per request would cap the stream)."""
        waiting: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def read() -> None:
            try:
                for request in request_iterator:
                    waiting.put(request)
            finally:
                waiting.put(_END)

        threading.Thread(target=read, name="bare-stream-reader", daemon=True).start()
        while True:
            item = waiting.get()
            acks = []
            while item is not _END:
                acks.append(_ack(item))
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    item = None
                    break
            if acks:
                self.events += sum(a.accepted for a in acks)
                yield pb.StreamEventsResponse(acks=acks)
            if item is _END:
                return


def _ceiling_main(spec: CeilingSpec, port: int, conn: Any) -> None:
    """Child process: one bare server on 127.0.0.1:port until told to stop."""
    from threadpoolctl import threadpool_limits

    try:
        threadpool_limits(1, "blas")  # as the real server: no BLAS threads per call
        model = BareModel(spec.npz_path, spec.seed, spec.vector_items)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=spec.workers, thread_name_prefix="bare"),
            options=[("grpc.so_reuseport", 1)],
            maximum_concurrent_rpcs=spec.max_concurrent_rpcs,
        )
        pb_grpc.add_RecommendationServiceServicer_to_server(
            BareRecommendations(model, spec.version), server
        )
        pb_grpc.add_OfferServiceServicer_to_server(BareOffers(model, spec.offers), server)
        pb_grpc.add_SessionServiceServicer_to_server(BareSessions(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        if bound != port:
            raise OSError(f"could not bind 127.0.0.1:{port}")
        server.start()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("ready", os.getpid()))
    with contextlib.suppress(EOFError):
        conn.recv()
    server.stop(grace=1.0)


@contextlib.contextmanager
def ceiling_servers(spec: CeilingSpec) -> Iterator[tuple[int, list[int]]]:
    """Starts ``spec.processes`` bare servers on one fixed free port (SO_REUSEPORT);
    yields (port, pids)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs: list[tuple[Any, Any]] = []
    try:
        for k in range(spec.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_ceiling_main, args=(spec, port, child), name=f"bench-ceiling-{k}"
            )
            proc.start()
            procs.append((proc, parent))
        pids = []
        for proc, parent in procs:
            deadline = time.monotonic() + 60
            while not parent.poll(0.1):
                if not proc.is_alive():
                    raise RuntimeError(f"ceiling: process exited ({proc.exitcode}) before ready")
                if time.monotonic() > deadline:
                    raise RuntimeError("ceiling: did not start within 60 s")
            message = parent.recv()
            if message[0] != "ready":
                raise RuntimeError(f"ceiling: failed to start: {message[1]}")
            pids.append(int(message[1]))
        yield port, pids
    finally:
        for _, parent in procs:
            with contextlib.suppress(OSError):
                parent.send("stop")
        for proc, _ in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# ------------------------------------------------------------------ SQLite
EVENTS_DDL = (
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, "
    "session_id TEXT NOT NULL, user_id TEXT NOT NULL, type INTEGER NOT NULL, item_id TEXT, "
    "screen TEXT, dwell_ms INTEGER, dwell_derived INTEGER DEFAULT 0, value FLOAT, "
    "ts_ms INTEGER NOT NULL, properties TEXT, received_at_ms INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX idx_events_event_id ON events (event_id)",
    "CREATE INDEX idx_events_session_id_ts_ms ON events (session_id, ts_ms)",
    "CREATE INDEX events_user_items ON events(user_id, ts_ms) WHERE item_id IS NOT NULL",
)
INSERT = (
    "INSERT INTO events (event_id, session_id, user_id, type, item_id, screen, dwell_ms, "
    "value, ts_ms, properties, received_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _rows(
    tag: str, count: int, seed: int, *, sessions: int = 64, users: int = 0
) -> list[tuple[Any, ...]]:
    """Events-table rows. ``users`` 0: like the benchmark's TrackEvents traffic
    (``sessions`` open sessions of their own users, ten consecutive events per
    session); else events of random users among ``users`` (a stored log)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 20_000, count).tolist()
    dwell = rng.integers(1_000, 90_000, count).tolist()
    if users:
        owner = rng.integers(0, users, count).tolist()
        session_of = [f"s{u}-{k // 4}" for k, u in enumerate(owner)]
    else:
        owner = [(k // 10) % sessions for k in range(count)]
        session_of = [f"{tag}-session-{o}" for o in owner]
    now = int(time.time() * 1000)
    return [
        (
            f"{tag}-{k}",
            session_of[k],
            f"u{owner[k]}" if users else f"{tag}-user-{owner[k]}",
            2,
            f"i{items[k]}",
            None,
            dwell[k],
            None,
            now + k,
            None,
            now,
        )
        for k in range(count)
    ]


def sqlite_ceiling(
    path: str,
    synchronous: str,
    batches: int,
    batch: int = 100,
    prefill: int = 0,
    seconds: float | None = None,
    random_ids: bool = False,
) -> dict[str, Any]:
    """Bare SQLite: up to ``batches`` transactions of ``batch`` events each (one
    ``executemany`` per transaction), stopping after ``seconds`` if given, into a
    fresh events-shaped table in WAL mode with ``synchronous``. ``prefill`` rows
    of a stored log (random users) go in first, in one transaction (not timed).
    The timed events' ids are ``tag-k`` (each lands next to the previous one in
    the event-id index), or with ``random_ids`` random UUIDs as apps send them
    (each lands on a page of its own). Rows are built before the clock starts.
    Run it in its own process."""
    import sqlite3

    db = Path(path)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(db) + suffix).unlink()
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        for ddl in EVENTS_DDL:
            conn.execute(ddl)
        if prefill:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, _rows("pre", prefill, 1, users=50_000))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = _rows("bench", batches * batch, 2)
        if random_ids:
            ids = np.random.default_rng(3).bytes(16 * len(rows))
            rows = [(ids[16 * k : 16 * k + 16].hex(), *row[1:]) for k, row in enumerate(rows)]
        chunks = [rows[k : k + batch] for k in range(0, len(rows), batch)]
        done = 0
        started = time.perf_counter()
        deadline = started + seconds if seconds else float("inf")
        for chunk in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, chunk)
            conn.execute("COMMIT")
            done += 1
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - started
        stored = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()
    events = done * batch
    if stored != prefill + events:
        raise RuntimeError(f"sqlite ceiling: {stored} rows stored, expected {prefill + events}")
    return {
        "synchronous": synchronous.upper(),
        "journal_mode": "WAL",
        "event_ids": "random" if random_ids else "sequential",
        "batches": done,
        "events_per_batch": batch,
        "prefill_rows": prefill,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "transactions_per_s": round(done / elapsed, 1),
    }
