"""Faults a running server must survive, each with the behaviour it promises:

* the store locked by someone else: UNAVAILABLE within the caller's
  deadline (never a hang, never UNKNOWN), and the same batch goes through once
  the lock is released;
* the disk full (SQLite's ``max_page_count`` on the writer: SQLITE_FULL exactly
  as a full disk gives; SQLite only): RESOURCE_EXHAUSTED "store: disk full",
  nothing of the batch stored, health NOT_SERVING, SERVING again once there is room;
* a corrupted or tampered model artifact: the last good model keeps serving
  (``test_hot_reload``), the health name ``sessionrec.model`` says degraded;
* deadlines: work stops once the caller gave up.

SIGTERM (NOT_SERVING, in-flight calls finish, exit within the grace) is in
``test_durability``; kill -9 in ``test_crash_safety``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

import sessionrec.analytics
from service.server import MODEL_HEALTH, STORE_PROBE_INTERVAL_S
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import TEST_STORE, write_lock_held
from training.artifact import VERSIONS_DIR, set_current

from .support import health_status, now_ms, rpc_error, sql_scalar, view, wait_for
from .test_hot_reload import corrupt, train_version

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SESSIONS = "sessionrec.v1.SessionService"
RECOMMENDATIONS = "sessionrec.v1.RecommendationService"
#: How each store words a write that waited for a lock held elsewhere.
STORE_BUSY = "store: busy" if TEST_STORE == "postgresql" else "store: database is locked"


def error_within(call: Any, request: Any, timeout: float) -> grpc.RpcError:
    """The RpcError ``call(request, timeout=timeout)`` must raise."""
    try:
        reply = call(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"expected an error, got {reply}")


def stored(db: Path, prefix: str) -> int:
    return int(sql_scalar(db, "SELECT COUNT(*) FROM events WHERE event_id LIKE ?", (prefix + "%",)))


# ------------------------------------------------------------ locked store
def test_a_locked_store_answers_unavailable_within_the_deadline_then_takes_the_batch(
    start_server,
):
    srv = start_server()
    sids = [
        srv.sessions.StartSession(
            pb.StartSessionRequest(user_id=f"lou{k}", session_id=f"s-lou{k}"), timeout=10
        ).session_id
        for k in range(3)
    ]
    batches = [
        pb.TrackEventsRequest(
            events=[view(f"i{j}", session_id=sid, event_id=f"lock-{sid}-{j}") for j in range(3)]
        )
        for sid in sids
    ]
    deadline_s = 1.5
    # Another process (here: a connection of the test) takes the store's write lock.
    with write_lock_held(srv.db_path):
        # Three calls at once: on SQLite one waits in the busy handler, the others
        # for this server's write lock (on PostgreSQL all three wait for the table
        # locks); each answers within its own deadline.
        results: list[tuple[Any, float]] = [(None, 0.0)] * len(batches)

        def call(k: int) -> None:
            started = time.monotonic()
            try:
                outcome: Any = srv.sessions.TrackEvents(batches[k], timeout=deadline_s)
            except grpc.RpcError as exc:
                outcome = exc
            results[k] = (outcome, time.monotonic() - started)

        threads = [threading.Thread(target=call, args=(k,)) for k in range(len(batches))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # A lock held elsewhere is transient: no reason to leave the pool.
        assert health_status(srv.channel) == SERVING

    for outcome, elapsed in results:
        assert isinstance(outcome, grpc.RpcError), outcome
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE, outcome.details()
        assert outcome.details().startswith(STORE_BUSY), outcome.details()
        assert elapsed < deadline_s, elapsed
    assert stored(srv.db_path, "lock-") == 0

    for batch in batches:
        reply = srv.sessions.TrackEvents(batch, timeout=deadline_s)
        assert (reply.accepted, reply.duplicates) == (3, 0)
    assert stored(srv.db_path, "lock-") == 9


# --------------------------------------------------------------- disk full
# A full disk is simulated with SQLite's page cap (``set_max_pages``): the
# PostgreSQL store has no such cap, so these two run on SQLite only.
def big_batch(prefix: str, n: int = 200) -> pb.TrackEventsRequest:
    """Enough bytes that the batch needs new pages in the file."""
    start = now_ms() - 60_000
    return pb.TrackEventsRequest(
        events=[
            view(
                f"item-{k % 40}",
                user_id="dana",
                event_id=f"{prefix}{k}",
                timestamp_ms=start + k,
                properties={"note": "ab" * 150},
            )
            for k in range(n)
        ]
    )


@pytest.mark.sqlite_only
def test_a_full_disk_stores_nothing_reports_not_serving_and_recovers(start_server):
    srv = start_server()
    store: Any = srv.server.store
    first = srv.sessions.TrackEvents(big_batch("before-", 20), timeout=10)
    assert first.accepted == 20
    before = int(sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events"))

    # The file may not grow beyond the pages it has: SQLITE_FULL, as on a full disk.
    store.set_max_pages(1)  # SQLite keeps it at the pages in use
    batch = big_batch("full-")
    err = rpc_error(srv.sessions.TrackEvents, batch)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert err.details().startswith("store: disk full"), err.details()
    # Nothing of the batch (one transaction), nothing else either.
    assert int(sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events")) == before
    assert stored(srv.db_path, "full-") == 0

    assert health_status(srv.channel) == NOT_SERVING
    assert health_status(srv.channel, SESSIONS) == NOT_SERVING
    # Reads go on: recommendations stay up.
    assert health_status(srv.channel, RECOMMENDATIONS) == SERVING
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="dana", n=3), timeout=10)
    assert rec.strategy
    # The probe finds no room while the cap holds: still NOT_SERVING.
    time.sleep(2.5 * STORE_PROBE_INTERVAL_S)
    assert health_status(srv.channel) == NOT_SERVING
    again = rpc_error(srv.sessions.TrackEvents, batch)
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Space returns: the probe turns the server SERVING without any write.
    store.set_max_pages(None)
    assert wait_for(
        lambda: health_status(srv.channel) == SERVING, timeout_s=10 * STORE_PROBE_INTERVAL_S
    )
    assert health_status(srv.channel, SESSIONS) == SERVING
    reply = srv.sessions.TrackEvents(batch, timeout=10)
    assert (reply.accepted, reply.duplicates) == (len(batch.events), 0)
    assert stored(srv.db_path, "full-") == len(batch.events)


@pytest.mark.sqlite_only
def test_a_successful_write_clears_the_failure_at_once(start_server):
    """Without waiting for the probe: the next write that stores something."""
    srv = start_server()
    store: Any = srv.server.store
    store.set_max_pages(1)
    batch = big_batch("w-")
    assert rpc_error(srv.sessions.TrackEvents, batch).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_status(srv.channel) == NOT_SERVING
    srv.server.store_probe.stop()  # only a write may clear it now
    store.set_max_pages(None)
    assert health_status(srv.channel) == NOT_SERVING
    assert srv.sessions.TrackEvents(batch, timeout=10).accepted == len(batch.events)
    assert health_status(srv.channel) == SERVING


# ------------------------------------------------------ tampered artifacts
def rewrite_npz(version_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """New arrays with a matching checksum, as a careful tamperer would write them."""
    npz = version_dir / "model.npz"
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    meta_path = version_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"]["model.npz"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


def tamper(version_dir: Path, how: str) -> None:
    if how == "checksum":
        corrupt(version_dir / "model.npz")
        return
    with np.load(version_dir / "model.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if how == "unknown-key":
        arrays["extra"] = np.zeros(3)
    else:  # NaN in a float array
        name = next(k for k, v in arrays.items() if v.dtype.kind == "f" and v.size)
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.nan
    rewrite_npz(version_dir, arrays)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("checksum", "checksum"),
        ("unknown-key", "differ from meta.json"),
        ("nan", "NaN"),
    ],
)
def test_a_tampered_artifact_marks_the_model_degraded_while_the_old_one_serves(
    synthetic_copy, start_server, how, message
):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir)
    good = synthetic_copy.version
    assert health_status(srv.channel, MODEL_HEALTH) == SERVING

    bad = train_version(srv, make_current=False)
    tamper(Path(srv.models_dir) / VERSIONS_DIR / bad, how)
    set_current(srv.models_dir, bad)
    err = rpc_error(srv.admin.ReloadModel, pb.ReloadModelRequest())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in err.details(), err.details()

    # Degraded: the model health says so; the server as a whole serves on.
    assert health_status(srv.channel, MODEL_HEALTH) == NOT_SERVING
    assert health_status(srv.channel) == SERVING
    assert health_status(srv.channel, RECOMMENDATIONS) == SERVING
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="u02", n=5), timeout=10)
    assert rec.model_version == good and len(rec.items) == 5

    # A good artifact ends it.
    fixed = train_version(srv)
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(), timeout=30).version == fixed
    assert health_status(srv.channel, MODEL_HEALTH) == SERVING


def test_the_poller_refusing_an_artifact_marks_the_model_degraded(synthetic_copy, start_server):
    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, model_poll_interval_s=0.1)
    bad = train_version(srv, make_current=False)
    tamper(Path(srv.models_dir) / VERSIONS_DIR / bad, "nan")
    set_current(srv.models_dir, bad)
    assert wait_for(lambda: health_status(srv.channel, MODEL_HEALTH) == NOT_SERVING, timeout_s=20)
    assert health_status(srv.channel) == SERVING


def test_draining_marks_the_model_name_not_serving_too(start_server):
    srv = start_server()
    assert health_status(srv.channel, MODEL_HEALTH) == SERVING  # no model: not degraded
    srv.server.set_serving(False)
    assert health_status(srv.channel, MODEL_HEALTH) == NOT_SERVING
    srv.server.set_serving(True)


# --------------------------------------------------------------- deadlines
def test_session_stats_stop_once_the_caller_gave_up(start_server, monkeypatch):
    """The anomaly screen (a second pass as costly as the stats) is skipped when
    the caller's deadline passed during the stats."""
    srv = start_server()
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    real_stats = sessionrec.analytics.session_stats
    real_screen = sessionrec.analytics.screen_anomalies
    screened: list[int] = []
    stats_done = threading.Event()
    slow_s = [0.0]

    def slow_stats(*args: Any, **kwargs: Any) -> Any:
        try:
            time.sleep(slow_s[0])
            return real_stats(*args, **kwargs)
        finally:
            stats_done.set()

    def counting_screen(*args: Any, **kwargs: Any) -> Any:
        screened.append(1)
        return real_screen(*args, **kwargs)

    monkeypatch.setattr(sessionrec.analytics, "session_stats", slow_stats)
    monkeypatch.setattr(sessionrec.analytics, "screen_anomalies", counting_screen)
    now = now_ms()
    request = pb.GetSessionStatsRequest()
    request.start.FromMilliseconds(now - 7 * 86_400_000)
    request.end.FromMilliseconds(now)

    # With time enough, both passes run (the wiring this test relies on is real).
    assert stub.GetSessionStats(request, timeout=10).sessions == 0
    assert screened == [1] and stats_done.is_set()

    screened.clear()
    stats_done.clear()
    slow_s[0] = 0.6
    err = error_within(stub.GetSessionStats, request, 0.3)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stats_done.wait(timeout=10)
    time.sleep(0.2)  # the servicer's next step, had it gone on
    assert screened == []


def test_a_call_whose_caller_gave_up_while_queued_never_runs(start_server, monkeypatch):
    """One worker, busy: a Recommend with a short deadline waits in the queue,
    its caller gives up (DEADLINE_EXCEEDED), and the ranking never runs. (grpcio
    itself skips a handler whose call it already saw cancelled; the error
    interceptor also refuses one whose deadline passed before it started.)"""
    srv = start_server(workers=1)
    stub = pb_grpc.AnalyticsServiceStub(srv.channel)
    real_stats = sessionrec.analytics.session_stats
    release = threading.Event()
    entered = threading.Event()

    def blocking_stats(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=10)
        return real_stats(*args, **kwargs)

    monkeypatch.setattr(sessionrec.analytics, "session_stats", blocking_stats)
    ranked: list[str] = []
    real_recommend = srv.server.engine.recommend

    def counting_recommend(user_id: str, *args: Any, **kwargs: Any) -> Any:
        ranked.append(user_id)
        return real_recommend(user_id, *args, **kwargs)

    monkeypatch.setattr(srv.server.engine, "recommend", counting_recommend)

    busy = stub.GetSessionStats.future(pb.GetSessionStatsRequest(), timeout=20)
    assert entered.wait(timeout=10)
    started = time.monotonic()
    err = error_within(srv.recs.Recommend, pb.RecommendRequest(user_id="quinn", n=3), 0.2)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    release.set()
    busy.result(timeout=20)
    # The worker is free again: a fresh call runs, the abandoned one never did.
    assert srv.recs.Recommend(pb.RecommendRequest(user_id="rita", n=3), timeout=10)
    assert ranked == ["rita"]
