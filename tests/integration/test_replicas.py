"""Several ``sessionrec serve`` replicas on one PostgreSQL database.

Each replica is a real ``sessionrec serve`` process on its own port; they share
nothing but the database (and the models folder). What a demanding deployment
needs of them:

* events sent to one replica shape the recommendations another returns, at once;
* killing a replica (SIGKILL) loses no event it acknowledged;
* an idle session times out exactly once, whichever replica's reaper gets to it;
* below the servers, two stores on one database agree on every race the
  single SQLite writer used to rule out: the same event stored twice at once,
  two reapers, offer caps, the catalog's change counter.

Skipped, with the reason, where no PostgreSQL can be had.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sessionrec.events import EndReason, EventRecord, SessionRecord
from sessionrec.items import ItemRecord
from sessionrec.offers import IMPRESSION, TREATED, Offer, OfferTarget
from sessionrec.store import OfferLogEntry, open_store
from sessionrec.store.postgres import PostgresStore
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import CLUSTER_A, CLUSTER_B, TrainedStore, synthetic_rows
from tests.integration.support import ServerProcess, now_ms, view, wait_for
from tests.pgserver import PostgresServer

RPC_S = 10


@pytest.fixture
def shared_db(postgres: PostgresServer) -> str:
    """A fresh database for this test."""
    return postgres.create_database("replicas_" + uuid.uuid4().hex[:12])


@pytest.fixture
def trained_db(shared_db: str, synthetic: TrainedStore, tmp_path: Path) -> tuple[str, Path]:
    """The synthetic two-cluster history in the shared database, and a copy of
    the model trained on it."""
    from training.importer import import_csv

    csv_path = tmp_path / "synthetic.csv"
    rows = synthetic_rows()
    with open(csv_path, "w") as fh:
        fh.write("user_id,item_id,event_type,timestamp\n")
        fh.writelines(f"{u},{i},{t},{s}\n" for u, i, t, s in rows)
    with open_store(shared_db) as store:
        assert import_csv(store, csv_path).imported == len(rows)
    models = tmp_path / "models"
    shutil.copytree(synthetic.models_dir, models)
    return shared_db, models


@pytest.fixture
def replicas(sessionrec_bin: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """``replicas.start(db_url, models, n, **env)`` is done by the tests through this list."""
    started: list[ServerProcess] = []
    yield started
    for sp in started:
        sp.stop()


def start_replicas(
    started: list[ServerProcess],
    exe: Path,
    db_url: str,
    models: Path,
    tmp_path: Path,
    n: int,
    **env: str,
) -> list[ServerProcess]:
    new = [
        ServerProcess(exe, db_url, models, tmp_path / f"replica{len(started) + k}.log", **env)
        for k in range(n)
    ]
    started.extend(new)
    for sp in new:
        sp.wait_serving(timeout_s=90)
    return new


# ------------------------------------------------------------ through gRPC
def test_events_sent_to_one_replica_shape_recommendations_from_another_at_once(
    replicas: list[ServerProcess],
    trained_db: tuple[str, Path],
    sessionrec_bin: Path,
    tmp_path: Path,
) -> None:
    db_url, models = trained_db
    a, b = start_replicas(replicas, sessionrec_bin, db_url, models, tmp_path, 2)
    user = "newcomer"
    before = b.recs.Recommend(pb.RecommendRequest(user_id=user, n=5), timeout=RPC_S)
    # A newcomer gets the popular items, of both clusters.
    assert any(i.item_id in CLUSTER_A for i in before.items), before

    sid = a.sessions.StartSession(pb.StartSessionRequest(user_id=user), timeout=RPC_S).session_id
    seen = CLUSTER_B[:3]
    acked = a.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, session_id=sid) for i in seen]), timeout=RPC_S
    )
    assert acked.accepted == 3
    # At once, on the other replica: the live session (stored by A) shapes B's answer.
    after = b.recs.Recommend(pb.RecommendRequest(user_id=user, n=5, session_id=sid), timeout=RPC_S)
    items = [i.item_id for i in after.items]
    assert items and all(i in CLUSTER_B for i in items), items
    assert not set(items) & set(seen)  # what the user just saw is not offered again
    assert after.model_version == before.model_version
    # B sees A's session as its own: it can end it.
    ended = b.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=RPC_S)
    assert ended.event_count == 3 and not ended.active


def test_killing_a_replica_loses_no_acknowledged_event(
    replicas: list[ServerProcess],
    shared_db: str,
    synthetic: TrainedStore,
    sessionrec_bin: Path,
    tmp_path: Path,
) -> None:
    a, b = start_replicas(replicas, sessionrec_bin, shared_db, synthetic.models_dir, tmp_path, 2)
    acked: list[str] = []
    errors: list[grpc.StatusCode] = []

    def send(target: ServerProcess, prefix: str, batches: int) -> None:
        sid = target.sessions.StartSession(
            pb.StartSessionRequest(user_id=prefix), timeout=RPC_S
        ).session_id
        for n in range(batches):  # bounded: stops at the first failure
            ids = [f"{prefix}-{n}-{k}" for k in range(20)]
            events = [
                view(CLUSTER_A[k % 15], session_id=sid, event_id=e) for k, e in enumerate(ids)
            ]
            try:
                reply = target.sessions.TrackEvents(
                    pb.TrackEventsRequest(events=events), timeout=RPC_S
                )
            except grpc.RpcError as exc:
                errors.append(exc.code())
                return
            assert reply.accepted == len(ids)
            acked.extend(ids)

    sender = threading.Thread(target=send, args=(a, "to-a", 10_000))
    sender.start()
    assert wait_for(lambda: len(acked) >= 400, timeout_s=60), a.log()
    a.kill9()  # mid-stream: a call may be in flight
    sender.join(timeout=60)
    assert not sender.is_alive()
    # The call in flight, or the next one, fails: UNAVAILABLE when the connection
    # is refused or broken; a stream the dying transport reset reads CANCELLED
    # (seen once in CI). Either way the batch was not acknowledged.
    assert errors and errors[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), errors
    # The other replica goes on taking events.
    send(b, "to-b", 5)
    with open_store(shared_db) as store, store.read_snapshot() as snap:
        stored = {r[0] for r in snap.execute("SELECT event_id FROM events")}
    lost = [e for e in acked if e not in stored]
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"
    assert sum(e.startswith("to-b") for e in stored) == 100


def test_idle_sessions_time_out_exactly_once_across_replicas(
    replicas: list[ServerProcess],
    shared_db: str,
    synthetic: TrainedStore,
    sessionrec_bin: Path,
    tmp_path: Path,
) -> None:
    three = start_replicas(
        replicas,
        sessionrec_bin,
        shared_db,
        synthetic.models_dir,
        tmp_path,
        3,
        SESSIONREC_SESSION_TIMEOUT_S="1",
        SESSIONREC_REAPER_INTERVAL_S="0.1",
    )
    sessions = []
    for k in range(30):
        target = three[k % 3]
        sid = target.sessions.StartSession(
            pb.StartSessionRequest(user_id=f"idle-{k}"), timeout=RPC_S
        ).session_id
        target.sessions.TrackEvents(
            pb.TrackEventsRequest(events=[view(CLUSTER_A[k % 15], session_id=sid)]),
            timeout=RPC_S,
        )
        sessions.append(sid)
    store = PostgresStore(shared_db)
    try:

        def all_closed() -> bool:
            found = store.get_sessions(sessions)
            return len(found) == 30 and not any(s.is_open for s in found.values())

        assert wait_for(all_closed, timeout_s=30, interval_s=0.2)
        for s in store.get_sessions(sessions).values():
            assert s.end_reason == EndReason.TIMEOUT
            assert s.ended_at_ms == s.last_event_at_ms
        # Every replica's reaper ran over the same sessions; each was closed by one.
        time.sleep(0.5)  # a few more reaper rounds, which must find nothing
        closed = [
            int(n) for sp in three for n in re.findall(r"closed (\d+) idle sessions", sp.log())
        ]
        assert sum(closed) == 30, closed
    finally:
        store.close()


def test_a_catalog_change_on_one_replica_reaches_the_others_by_notice(
    replicas: list[ServerProcess],
    trained_db: tuple[str, Path],
    sessionrec_bin: Path,
    tmp_path: Path,
) -> None:
    db_url, models = trained_db
    # Polling every hour: only the change notice can bring the change in time.
    a, b = start_replicas(
        replicas,
        sessionrec_bin,
        db_url,
        models,
        tmp_path,
        2,
        SESSIONREC_CATALOG_REFRESH_INTERVAL_S="3600",
    )
    request = pb.RecommendRequest(user_id="u00", n=5)  # a cluster-A user
    top = b.recs.Recommend(request, timeout=RPC_S).items[0].item_id
    catalog = pb_grpc.CatalogServiceStub(a.channel)
    reply = catalog.UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id=top, available=False)]), timeout=RPC_S
    )
    assert reply.inserted == 1
    acked = time.monotonic()

    def gone_on_b() -> bool:
        items = [i.item_id for i in b.recs.Recommend(request, timeout=RPC_S).items]
        return len(items) == 5 and top not in items

    assert wait_for(gone_on_b, timeout_s=10, interval_s=0.01), b.log()
    took = time.monotonic() - acked
    assert took < 5, f"B saw the change after {took:.2f} s"


# ----------------------------------------------------- two stores, one database
def _session(sid: str, user: str = "u", at: int = 1000) -> SessionRecord:
    return SessionRecord(sid, user, started_at_ms=at, last_event_at_ms=at, last_seen_ms=at)


def _race(*jobs: object) -> list[object]:
    """Runs the callables at once (a barrier releases them together)."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(k: int, job: object) -> None:
        barrier.wait(timeout=30)
        results[k] = job()  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(k, j)) for k, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.fixture
def two_stores(shared_db: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    first, second = PostgresStore(shared_db), PostgresStore(shared_db)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_the_same_events_stored_at_once_by_two_servers_are_stored_once(two_stores) -> None:
    first, second = two_stores
    first.start_session(_session("s"))
    batch = [EventRecord(f"e{k}", "s", "u", 2, 1000 + k, item_id=f"i{k % 7}") for k in range(300)]
    results = _race(*(lambda s=s: s.append_events(batch) for s in (first, second, first, second)))
    assert sum(r.accepted for r in results) == 300  # type: ignore[attr-defined]
    assert first.count_events() == 300
    session = second.get_session("s")
    assert session is not None and session.event_count == 300


def test_two_reapers_close_each_idle_session_once(two_stores) -> None:
    first, second = two_stores
    for k in range(200):
        first.start_session(_session(f"s{k}", user=f"u{k}"))
    results = _race(*(lambda s=s: s.expire_sessions(5000) for s in (first, second) * 3))
    closed = [sid for r in results for sid in r]  # type: ignore[attr-defined]
    assert sorted(closed) == sorted(f"s{k}" for k in range(200))  # each once


def test_offer_caps_hold_across_servers(two_stores) -> None:
    first, second = two_stores
    offer = Offer(
        "o1", "PERCENT_OFF", 10.0, OfferTarget(whole_catalog=True), title="10% off", max_per_user=3
    )
    first.upsert_offers([offer])

    def show(store: PostgresStore, k: int) -> list[str | None]:
        entry = OfferLogEntry(f"log{k}", "o1", "u", "s", IMPRESSION, now_ms(), TREATED)
        return store.record_offer_log([entry], {"o1": offer})

    results = _race(
        *(lambda s=s, k=k: show(s, k) for k in range(10) for s in [(first, second)[k % 2]])
    )
    recorded = [r for r in results if r == [None]]
    assert len(recorded) == 3
    counts = second.offer_counts(["o1"], "u", "s")["o1"]
    assert counts.impressions == counts.user_impressions == 3


def test_the_catalog_counter_never_repeats_across_servers(two_stores) -> None:
    first, second = two_stores

    def upsert(store: PostgresStore, k: int) -> int:
        return store.upsert_items([ItemRecord(f"item{k}", title=f"t{k}")]).catalog_version

    versions = _race(
        *(lambda s=s, k=k: upsert(s, k) for k in range(8) for s in [(first, second)[k % 2]])
    )
    assert sorted(versions) == list(range(1, 9))  # type: ignore[type-var]
    assert [i.version for i in first.catalog_items()] == list(range(1, 9))
