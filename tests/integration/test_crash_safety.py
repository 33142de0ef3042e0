"""kill -9 under load, again and again: acknowledged means stored, exactly once.

The real ``sessionrec serve`` process on one store (a SQLite file, or a
PostgreSQL database that outlives the killed server). Four client threads
send TrackEvents batches with client event ids; some batches are deliberately
sent twice after their acknowledgement (a client whose answer got lost). The
server is killed with SIGKILL at random moments (seeded) while they write,
``KILLS`` times, and restarted on the same file; a batch without an answer is
sent again after the restart, as a retrying client would. Everything is
bounded: each round runs at most ``MAX_CALLS_PER_ROUND`` calls per client and
ends with the kill.

At the end, straight from the store after a last kill -9:

* every acknowledged event id is stored exactly once, and nothing else is
  (every batch was eventually acknowledged);
* the sessions agree with the events: ``event_count`` is the number of stored
  events of each session, no event lacks its session, no user has two open
  sessions;
* ``PRAGMA integrity_check`` is ok (SQLite).
"""

from __future__ import annotations

import random
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import TEST_STORE, raw_connection, store_url

from .support import ServerProcess, view

SEED = 7_2024
#: Kills under load; the final round ends with one more.
KILLS = 5
CLIENTS = 4
MAX_CALLS_PER_ROUND = 400
#: Share of acknowledged batches sent once more (their answer "got lost").
RESEND_SHARE = 0.2
CALL_TIMEOUT_S = 5.0


@dataclass
class Client:
    """One client thread's state across server restarts."""

    number: int
    rng: random.Random
    #: Clients 0 and 1 name their sessions (StartSession); 2 and 3 send user
    #: ids only and the server finds or opens their session.
    session_id: str = ""
    batches: int = 0
    #: The batch sent without an answer yet: sent again after the restart.
    pending: list[str] | None = None
    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    resent_batches: int = 0
    retried_batches: int = 0
    #: Retried batches the killed server had stored before it could answer.
    retried_found_stored: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return f"crash-user-{self.number}"

    def new_batch(self) -> list[str]:
        self.batches += 1
        size = self.rng.randint(1, 12)
        return [f"c{self.number}-b{self.batches}-e{k}" for k in range(size)]

    def request(self, ids: list[str]) -> pb.TrackEventsRequest:
        where = {"session_id": self.session_id} if self.session_id else {"user_id": self.user_id}
        return pb.TrackEventsRequest(
            events=[view(f"item-{zlib.crc32(e.encode()) % 50}", event_id=e, **where) for e in ids]
        )


def run_round(
    client: Client, stub: pb_grpc.SessionServiceStub, killed: threading.Event, final: bool
) -> None:
    """Sends batches until a call fails (the server was killed) or, in the
    final round, until the pending batch is acknowledged."""

    def failed(exc: grpc.RpcError, what: str) -> None:
        if not killed.is_set():  # a failure the kill does not explain
            client.problems.append(f"{what}: {exc.code()} {exc.details()}")

    if client.number < 2:
        client.session_id = f"crash-session-{client.number}"
        try:  # idempotent: the same id every round
            stub.StartSession(
                pb.StartSessionRequest(user_id=client.user_id, session_id=client.session_id),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            failed(exc, "StartSession")
            return
    for _ in range(MAX_CALLS_PER_ROUND):
        if final and client.pending is None:
            return
        retry = client.pending is not None
        ids = client.pending if client.pending is not None else client.new_batch()
        client.pending = ids
        client.sent.update(ids)
        try:
            reply = stub.TrackEvents(client.request(ids), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            failed(exc, f"TrackEvents {ids[0]}")
            return  # unanswered: stays pending for the next server
        if reply.accepted + reply.duplicates != len(ids) or list(reply.event_ids) != ids:
            client.problems.append(f"{ids[0]}: {reply}")
        if retry:
            client.retried_batches += 1
            client.retried_found_stored += reply.duplicates > 0
        elif reply.duplicates:
            client.problems.append(f"{ids[0]}: a new batch reported duplicates: {reply}")
        client.acked.update(ids)
        client.pending = None
        if client.rng.random() < RESEND_SHARE:
            try:
                again = stub.TrackEvents(client.request(ids), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                failed(exc, f"resent {ids[0]}")
                return  # acknowledged already: nothing is pending
            client.resent_batches += 1
            if (again.accepted, again.duplicates) != (0, len(ids)):
                client.problems.append(f"{ids[0]} sent again was stored again: {again}")


def one_round(
    exe: Path, url: str, models: Path, log: Path, clients: list[Client], wait_s: float | None
) -> ServerProcess:
    """Starts a server, lets the clients write, and kills it with SIGKILL after
    ``wait_s`` (None: once every client is done, the final round)."""
    server = ServerProcess(exe, url, models, log)
    try:
        server.wait_serving()
        stub = pb_grpc.SessionServiceStub(server.channel)
        killed = threading.Event()
        final = wait_s is None
        threads = [
            threading.Thread(target=run_round, args=(c, stub, killed, final), daemon=True)
            for c in clients
        ]
        for thread in threads:
            thread.start()
        if wait_s is not None:
            time.sleep(wait_s)
        else:
            for thread in threads:
                thread.join(timeout=60)
        killed.set()
        server.kill9()
        assert server.proc.returncode == -signal.SIGKILL, server.log()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
    finally:
        server.stop()
    return server


def test_acknowledged_events_are_stored_exactly_once_across_kill_9(tmp_path, sessionrec_bin):
    rng = random.Random(SEED)
    db = tmp_path / "crash.db"
    url = store_url(db)
    models = tmp_path / "models"
    clients = [Client(n, random.Random(rng.random())) for n in range(CLIENTS)]

    for round_no in range(KILLS):
        acked_before = sum(len(c.acked) for c in clients)
        one_round(
            sessionrec_bin,
            url,
            models,
            tmp_path / f"serve-{round_no}.log",
            clients,
            wait_s=rng.uniform(0.3, 1.2),
        )
        # Progress each round: the server really ran under load when killed.
        assert sum(len(c.acked) for c in clients) > acked_before, f"round {round_no}"
    # A last server takes every batch still unanswered, then dies the same way.
    one_round(sessionrec_bin, url, models, tmp_path / "serve-final.log", clients, wait_s=None)

    problems = [p for c in clients for p in c.problems]
    assert problems == []
    assert all(c.pending is None for c in clients)
    acked = set().union(*(c.acked for c in clients))
    sent = set().union(*(c.sent for c in clients))
    assert acked == sent
    assert sum(c.resent_batches for c in clients) > 0
    assert sum(c.retried_batches for c in clients) > 0

    with raw_connection(db) as conn:
        if TEST_STORE == "sqlite":  # PostgreSQL itself was never killed
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events"
        ).fetchone()
        assert rows == distinct, "an event id is stored twice"
        stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        assert stored == acked, (
            f"lost {len(acked - stored)} acknowledged, {len(stored - acked)} never sent"
        )
        for c in clients:
            mine = conn.execute(
                "SELECT COUNT(*) FROM events WHERE user_id = ?", (c.user_id,)
            ).fetchone()[0]
            assert mine == len(c.acked), c.user_id
        # The session counters move in the events' transaction: always equal.
        wrong = conn.execute(
            "SELECT s.session_id, s.event_count, COUNT(e.seq) FROM sessions s"
            " LEFT JOIN events e ON e.session_id = s.session_id"
            " GROUP BY s.session_id HAVING s.event_count != COUNT(e.seq)"
        ).fetchall()
        assert wrong == []
        orphans = conn.execute(
            "SELECT COUNT(*) FROM events WHERE session_id NOT IN (SELECT session_id FROM sessions)"
        ).fetchone()[0]
        assert orphans == 0
        two_open = conn.execute(
            "SELECT user_id FROM sessions WHERE ended_at_ms IS NULL"
            " GROUP BY user_id HAVING COUNT(*) > 1"
        ).fetchall()
        assert two_open == []
