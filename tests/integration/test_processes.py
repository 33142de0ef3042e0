"""Several server processes on one port (``processes`` > 1, ``service.workers``).

No test hopes that the kernel routed a connection to a worker: a primary with
``processes=2`` (its internal Unix socket, one real worker process) is joined
by a worker built in this process (``create_server(..., worker=WorkerLink)``)
on a port of its own, and the tests call that worker directly. Its writes go
to the primary (checked in the store and through the primary), its
reads stay local (its own engine runs, the primary's does not), and the
primary's statuses, details and trailing metadata come back through it. The
real worker process is checked where that is deterministic: it follows a
ReloadModel (every answer over many fresh connections, which reach both
processes), it is restarted after SIGKILL, and it is gone after ``stop()``
and after SIGTERM of ``sessionrec serve --processes 2``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sessionrec.analytics
from service.interceptors import ErrorMappingInterceptor
from service.server import SessionrecServer, create_server
from service.workers import (
    LOCAL_METHODS,
    PrimaryOfferLog,
    WorkerLink,
    forwarded_methods,
    internal_socket_path,
    offer_log_handler,
)
from sessionrec import deadline
from sessionrec.apikeys import create_key
from sessionrec.errors import FailedPrecondition, PermissionDenied
from sessionrec.items import ItemRecord
from sessionrec.offers import IMPRESSION, TREATED, in_holdout
from sessionrec.store import OfferLogEntry, open_store
from sessionrec.store.sqlite import SQLiteStore
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import TrainedStore, copy_trained, raw_connection, store_url
from training.pipeline import train

from .support import free_port, sql_scalar, view, wait_for

RPC_S = 10.0
#: Catalog refresh of every process (a worker sees new items this late).
REFRESH_S = 0.3
#: Per-user event budget: a burst of one batch (BATCH events), then one event
#: per 20 s, so a user's second batch is refused however slow this box is.
EVENT_RATE = 0.05
BATCH = 20
FRESH_CHANNELS = 8
#: A worker process restarted after SIGKILL: the monitor looks every second,
#: a spawn takes a few seconds on a busy box.
RESTART_S = 30.0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
SERVING = health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ helpers
@dataclass
class Stubs:
    channel: grpc.Channel
    sessions: pb_grpc.SessionServiceStub
    recs: pb_grpc.RecommendationServiceStub
    catalog: pb_grpc.CatalogServiceStub
    admin: pb_grpc.AdminServiceStub
    analytics: pb_grpc.AnalyticsServiceStub
    health: health_pb2_grpc.HealthStub
    offers: pb_grpc.OfferServiceStub

    @classmethod
    def connect(cls, port: int, *, fresh: bool = False) -> Stubs:
        """Stubs on a channel to 127.0.0.1:``port``; ``fresh``: a connection of
        its own (no shared subchannel), which the kernel gives to one process."""
        options = [("grpc.use_local_subchannel_pool", 1)] if fresh else []
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        return cls(
            channel,
            pb_grpc.SessionServiceStub(channel),
            pb_grpc.RecommendationServiceStub(channel),
            pb_grpc.CatalogServiceStub(channel),
            pb_grpc.AdminServiceStub(channel),
            pb_grpc.AnalyticsServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            pb_grpc.OfferServiceStub(channel),
        )

    def close(self) -> None:
        self.channel.close()


def on_fresh_channels(port: int, call: Callable[[Stubs], Any], n: int = FRESH_CHANNELS) -> list:
    """``call`` once on each of ``n`` fresh connections to ``port``."""
    out = []
    for _ in range(n):
        stubs = Stubs.connect(port, fresh=True)
        try:
            out.append(call(stubs))
        finally:
            stubs.close()
    return out


def error_of(call: Callable[..., Any], request: Any, **kwargs: Any) -> grpc.RpcError:
    kwargs.setdefault("timeout", RPC_S)
    with pytest.raises(grpc.RpcError) as caught:
        call(request, **kwargs)
    return caught.value


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first, then ppid), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def pid_alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(ppid: int) -> list[int]:
    """Live child processes of ``ppid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and int(stat[1]) == ppid and stat[0] not in ("Z", "X"):
                out.append(int(name))
    return out


def is_worker(pid: int) -> bool:
    """A multiprocessing spawn child (not its resource tracker)."""
    return "spawn_main" in cmdline(pid)


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                inodes.add(cols[9])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def train_version(store: TrainedStore, *, make_current: bool) -> str:
    with open_store(store.db_url) as s:
        artifact = train(
            s,
            str(store.models_dir),
            "als",
            {"factors": 6, "iterations": 8, "num_threads": 1},
            make_current=make_current,
        )
    return artifact.version


def start_session(stubs: Stubs, user: str, **kwargs: Any) -> pb.StartSessionResponse:
    return stubs.sessions.StartSession(
        pb.StartSessionRequest(user_id=user), timeout=RPC_S, **kwargs
    )


def acks_of(responses: Any) -> list[pb.TrackEventsResponse]:
    return [ack for message in responses for ack in message.acks]


# ----------------------------------------------------------------- fixtures
@dataclass
class Pair:
    """A primary (``processes=2``: one real worker process) and a worker built
    in this process, each with stubs of its own port."""

    primary: SessionrecServer
    worker: SessionrecServer
    to_primary: Stubs
    to_worker: Stubs
    db_path: Path


def start_pair(
    make_config: Callable[..., Any],
    db_path: Path,
    models_dir: Path,
    model_version: str = "",
    **settings: Any,
) -> Pair:
    primary, _ = create_server(make_config(db_path, models_dir, processes=2, **settings))
    try:
        assert primary.internal_dir is not None and primary.pool is not None
        link = WorkerLink(f"unix:{internal_socket_path(primary.internal_dir)}", model_version)
        worker, _ = create_server(make_config(db_path, models_dir, **settings), worker=link)
    except BaseException:
        primary.stop(0.5)
        raise
    pair = Pair(primary, worker, Stubs.connect(primary.port), Stubs.connect(worker.port), db_path)
    for stubs in (pair.to_primary, pair.to_worker):
        grpc.channel_ready_future(stubs.channel).result(timeout=RPC_S)
    return pair


def stop_pair(pair: Pair) -> None:
    pair.to_worker.close()
    pair.to_primary.close()
    pair.worker.stop(0.5)  # before the primary: it forwards there
    pair.primary.stop(0.5)


@dataclass
class Cluster(Pair):
    older: str = ""
    newer: str = ""


@pytest.fixture(scope="module")
def cluster(synthetic, make_config, tmp_path_factory) -> Iterator[Cluster]:
    """The synthetic store (two model versions, the newer current and served),
    a primary with one worker process and an in-process worker; every process
    refreshes its catalog every REFRESH_S and limits events per user."""
    data = copy_trained(synthetic, tmp_path_factory.mktemp("processes"))
    newer = train_version(data, make_current=True)
    assert newer != data.version
    pair = start_pair(
        make_config,
        data.db_path,
        data.models_dir,
        newer,
        catalog_refresh_interval_s=REFRESH_S,
        rate_limit_user_events_per_s=EVENT_RATE,
        max_events_per_call=BATCH,
    )
    cluster = Cluster(**vars(pair), older=data.version, newer=newer)
    yield cluster
    stop_pair(cluster)


def test_the_worker_forwards_every_rpc_it_does_not_serve():
    forwarded = forwarded_methods()
    every = {
        f"/{s.full_name}/{m.name}"
        for s in pb.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert set(forwarded) == every - LOCAL_METHODS
    assert every > LOCAL_METHODS
    assert forwarded["/sessionrec.v1.SessionService/StreamEvents"] == "stream"
    assert forwarded["/sessionrec.v1.SessionService/TrackEvents"] == "unary"


# ------------------------------------------------------- writes, forwarded
def test_writes_through_a_worker_land_in_the_primary_store(cluster):
    w, db = cluster.to_worker, cluster.db_path
    started = start_session(w, "w-writer")
    sid = started.session_id
    assert sid and started.session_token
    assert sql_scalar(db, "SELECT user_id FROM sessions WHERE session_id = ?", (sid,)) == "w-writer"

    tracked = w.sessions.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                view("a01", session_id=sid, event_id="w-e1"),
                view("a02", session_id=sid, event_id="w-e2"),
                pb.Event(session_id=sid, event_id="w-e3", type=pb.SCREEN_VIEW),  # no screen
                view("a03", session_id="w-no-such-session", event_id="w-e4"),
            ]
        ),
        timeout=RPC_S,
    )
    assert (tracked.accepted, tracked.duplicates, tracked.quarantined) == (2, 0, 2)
    assert list(tracked.event_ids) == ["w-e1", "w-e2", "", ""]
    assert [(r.index, r.code) for r in tracked.rejected] == [
        (2, INVALID_ARGUMENT.value[0]),
        (3, NOT_FOUND.value[0]),
    ]
    assert tracked.rejected[0].reason.startswith("events[2].screen")
    assert tracked.rejected[1].reason.startswith("events[3].session_id")
    assert sql_scalar(db, "SELECT COUNT(*) FROM events WHERE session_id = ?", (sid,)) == 2
    quarantined = "SELECT COUNT(*) FROM quarantine WHERE event_id IN ('w-e3', 'w-e4')"
    assert sql_scalar(db, quarantined) == 2

    requests = [
        pb.TrackEventsRequest(events=[view("a04", session_id=sid, event_id="w-s1")]),
        pb.TrackEventsRequest(
            events=[
                view("a05", session_id=sid, event_id="w-s2"),
                pb.Event(session_id=sid, event_id="w-s-bad", type=pb.SCREEN_VIEW),
            ]
        ),
        pb.TrackEventsRequest(events=[view("a06", session_id=sid, event_id="w-s3")]),
    ]
    acks = acks_of(w.sessions.StreamEvents(iter(requests), timeout=RPC_S))
    assert [list(a.event_ids) for a in acks] == [["w-s1"], ["w-s2", ""], ["w-s3"]]
    assert [(a.accepted, a.quarantined) for a in acks] == [(1, 0), (1, 1), (1, 0)]
    assert acks[1].rejected[0].index == 1
    assert acks[1].rejected[0].code == INVALID_ARGUMENT.value[0]
    assert sql_scalar(db, "SELECT COUNT(*) FROM events WHERE session_id = ?", (sid,)) == 5

    # A request the primary cannot take ends the stream, after the earlier acks.
    requests = [
        pb.TrackEventsRequest(events=[view("a07", session_id=sid, event_id="w-s4")]),
        pb.TrackEventsRequest(events=[]),
        pb.TrackEventsRequest(events=[view("a08", session_id=sid, event_id="w-s5")]),
    ]
    acks = []
    with pytest.raises(grpc.RpcError) as caught:
        for message in w.sessions.StreamEvents(iter(requests), timeout=RPC_S):
            acks.extend(message.acks)
    assert caught.value.code() == INVALID_ARGUMENT
    assert caught.value.details().startswith("events: must not be empty")
    assert [list(a.event_ids) for a in acks] == [["w-s4"]]
    stored = "SELECT COUNT(*) FROM events WHERE event_id = ?"
    assert sql_scalar(db, stored, ("w-s4",)) == 1
    assert sql_scalar(db, stored, ("w-s5",)) == 0

    ended = w.sessions.EndSession(pb.EndSessionRequest(session_id=sid), timeout=RPC_S)
    assert not ended.active and ended.event_count == 6 and ended.user_id == "w-writer"
    ended_at = "SELECT ended_at_ms FROM sessions WHERE session_id = ?"
    assert sql_scalar(db, ended_at, (sid,)) is not None
    # The primary reads what the worker wrote, and GetSession (forwarded) agrees.
    direct = cluster.to_primary.sessions.GetSession(
        pb.GetSessionRequest(session_id=sid), timeout=RPC_S
    )
    assert direct == ended
    assert w.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=RPC_S) == direct

    upserted = w.catalog.UpsertItems(
        pb.UpsertItemsRequest(
            items=[pb.Item(item_id="w-item-1", title="Written via a worker", categories=["w"])]
        ),
        timeout=RPC_S,
    )
    assert (upserted.inserted, upserted.updated) == (1, 0) and not upserted.rejected
    title = "SELECT title FROM items WHERE item_id = 'w-item-1'"
    assert sql_scalar(db, title) == "Written via a worker"
    item = cluster.to_primary.catalog.GetItem(pb.GetItemRequest(item_id="w-item-1"), timeout=RPC_S)
    assert item.title == "Written via a worker" and list(item.categories) == ["w"]


def test_a_call_without_a_deadline_is_forwarded_without_one(cluster):
    w = cluster.to_worker
    started = w.sessions.StartSession.future(pb.StartSessionRequest(user_id="w-patient"))
    sid = started.result(timeout=RPC_S).session_id
    request = pb.TrackEventsRequest(events=[view("a01", session_id=sid, event_id="w-patient-1")])
    call = w.sessions.StreamEvents(iter([request]))
    timer = threading.Timer(RPC_S, call.cancel)  # bounded: a hung stream fails the test
    timer.start()
    try:
        acks = acks_of(call)
    finally:
        timer.cancel()
    assert [a.accepted for a in acks] == [1]


# ----------------------------------------------------------- reads, local
def test_a_worker_answers_reads_itself_from_what_was_just_written(cluster, monkeypatch):
    w = cluster.to_worker
    ranked: dict[str, list[str]] = {"worker": [], "primary": []}
    for name, srv in (("worker", cluster.worker), ("primary", cluster.primary)):
        real = srv.engine.recommend

        def counting(user_id: str, *args: Any, _real=real, _name=name, **kwargs: Any) -> Any:
            ranked[_name].append(user_id)
            return _real(user_id, *args, **kwargs)

        monkeypatch.setattr(srv.engine, "recommend", counting)

    # u00's imported history is all cluster A; its live session, written
    # through the worker, is cluster B.
    sid = start_session(w, "u00").session_id
    tracked = w.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view(i, session_id=sid) for i in ("b00", "b01")]),
        timeout=RPC_S,
    )
    assert tracked.accepted == 2
    live = w.recs.Recommend(pb.RecommendRequest(user_id="u00", session_id=sid, n=6), timeout=RPC_S)
    assert live.strategy == "session"
    assert live.items[0].item_id.startswith("b"), [i.item_id for i in live.items]
    assert "you viewed" in live.items[0].reason
    assert live.model_version == cluster.worker.models.current.artifact.version
    assert ranked == {"worker": ["u00"], "primary": []}

    similar = w.recs.SimilarItems(pb.SimilarItemsRequest(item_id="b00", n=3), timeout=RPC_S)
    assert len(similar.items) == 3

    # A new item, upserted through the worker: the primary has it at once, the
    # worker once its catalog refreshed.
    w.catalog.UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id="w-fresh", title="Fresh")]), timeout=RPC_S
    )
    assert cluster.primary.catalog.get("w-fresh").title == "Fresh"

    def worker_sees_it() -> pb.Item | None:
        try:
            return w.catalog.GetItem(pb.GetItemRequest(item_id="w-fresh"), timeout=RPC_S)
        except grpc.RpcError as exc:
            assert exc.code() == NOT_FOUND, exc.details()
            return None

    item = wait_for(worker_sees_it, timeout_s=20 * REFRESH_S + 5)
    assert item is not None and item.title == "Fresh"


# ---------------------------------------------------------- errors relayed
def test_the_primary_errors_come_back_through_the_worker_intact(cluster):
    w, p = cluster.to_worker, cluster.to_primary
    backwards = pb.GetSessionStatsRequest()
    backwards.start.FromMilliseconds(2_000_000_000_000)
    backwards.end.FromMilliseconds(1_000_000_000_000)
    relayed = error_of(w.analytics.GetSessionStats, backwards)
    assert relayed.code() == INVALID_ARGUMENT
    assert relayed.details() == "end: must be after start"

    missing = pb.GetSessionRequest(session_id="w-missing-session")
    relayed = error_of(w.sessions.GetSession, missing)
    direct = error_of(p.sessions.GetSession, missing)
    assert relayed.code() == direct.code() == NOT_FOUND
    assert relayed.details() == direct.details() and "w-missing-session" in relayed.details()

    sid = start_session(w, "w-greedy").session_id
    burst = [view("a01", session_id=sid, event_id=f"w-g{k}") for k in range(BATCH)]
    ok = w.sessions.TrackEvents(pb.TrackEventsRequest(events=burst), timeout=RPC_S)
    assert ok.accepted == BATCH
    refused = error_of(
        w.sessions.TrackEvents,
        pb.TrackEventsRequest(events=[view("a02", session_id=sid, event_id="w-over")]),
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.details()
    assert f"over the limit of {EVENT_RATE:g} events per second" in details
    hint = dict(refused.trailing_metadata())["retry-after-ms"]
    assert f"retry in {hint} ms" in details and int(hint) > 0
    over = "SELECT COUNT(*) FROM events WHERE event_id = 'w-over'"
    assert sql_scalar(cluster.db_path, over) == 0


def test_a_short_deadline_reaches_the_primary_through_the_worker(cluster, monkeypatch):
    """GetSessionStats runs in the primary (in this process): its work sees the
    caller's deadline, and the step after the slow stats never runs."""
    real_stats = sessionrec.analytics.session_stats
    real_screen = sessionrec.analytics.screen_anomalies
    seen: list[tuple[Any, float | None]] = []
    screened: list[int] = []
    slow_s = [0.0]

    def slow_stats(*args: Any, **kwargs: Any) -> Any:
        seen.append((getattr(kwargs.get("cache"), "__self__", None), deadline.remaining_s()))
        time.sleep(slow_s[0])
        return real_stats(*args, **kwargs)

    def counting_screen(*args: Any, **kwargs: Any) -> Any:
        screened.append(1)
        return real_screen(*args, **kwargs)

    monkeypatch.setattr(sessionrec.analytics, "session_stats", slow_stats)
    monkeypatch.setattr(sessionrec.analytics, "screen_anomalies", counting_screen)
    request = pb.GetSessionStatsRequest()
    request.start.FromMilliseconds(1_000_000_000_000)
    request.end.FromMilliseconds(1_100_000_000_000)

    cluster.to_worker.analytics.GetSessionStats(request, timeout=RPC_S)
    assert {id(store) for store, _ in seen} == {id(cluster.primary.store)}  # the primary's work
    left = seen[0][1]
    # (gRPC rounds a timeout up on the wire, by up to 1%, at each hop)
    assert left is not None and RPC_S - 5 < left <= RPC_S * 1.02 + 0.05
    assert screened == [1]  # (the screen reads stats of its own: more calls above)

    seen.clear()
    screened.clear()
    slow_s[0] = 1.0
    started = time.monotonic()
    late = error_of(cluster.to_worker.analytics.GetSessionStats, request, timeout=0.4)
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.4 + 2.0
    assert wait_for(lambda: seen, timeout_s=5)
    ((store, left),) = seen
    assert store is cluster.primary.store
    assert left is not None and left <= 0.4 * 1.02 + 0.05
    time.sleep(slow_s[0] + 0.3)  # the stats end, and the screen would start
    assert screened == []


# ----------------------------------------------------------------- models
def test_reload_model_through_a_worker_reaches_every_process(cluster):
    w = cluster.to_worker
    assert cluster.primary.models.current.artifact.version == cluster.newer
    assert w.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_S).version == cluster.newer

    info = w.admin.ReloadModel(pb.ReloadModelRequest(version=cluster.older), timeout=30)
    assert info.version == cluster.older
    assert cluster.primary.models.current.artifact.version == cluster.older

    # The real worker process follows. Fresh connections reach both processes
    # (told apart by when each loaded its model): one batch of answers must
    # come from both and all name the older version.
    def answers() -> list[tuple[str, int]]:
        return on_fresh_channels(
            cluster.primary.port,
            lambda s: (
                (i := s.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_S)).version,
                i.loaded_at.ToNanoseconds(),
            ),
        )

    last: list[list[tuple[str, int]]] = []

    def both_older() -> bool:
        last[:] = [answers()]
        versions = {version for version, _ in last[0]}
        return versions == {cluster.older} and len({at for _, at in last[0]}) == 2

    assert wait_for(both_older, timeout_s=30, interval_s=0.2), last

    # The in-process worker has no pipe from the primary: it follows when told.
    assert w.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_S).version == cluster.newer
    cluster.worker.follow_model(cluster.older)
    assert w.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_S).version == cluster.older
    loaded_at = cluster.worker.models.current
    cluster.worker.follow_model(cluster.older)  # the same version: nothing reloads
    cluster.worker.follow_model("")  # the primary has none: keep this one
    cluster.worker.follow_model("no-such-version")  # cannot load: logged, keeps serving
    assert cluster.worker.models.current is loaded_at
    rec = w.recs.Recommend(pb.RecommendRequest(user_id="u01", n=3), timeout=RPC_S)
    assert rec.model_version == cluster.older and len(rec.items) == 3


# ------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def keyed(make_config, tmp_path_factory) -> Iterator[tuple[Pair, dict[str, str]]]:
    root = tmp_path_factory.mktemp("processes-keyed")
    db = root / "keyed.db"
    with open_store(store_url(db)) as store:
        keys = {role: create_key(store, f"test {role}", role)[0] for role in ("ingest", "serve")}
    pair = start_pair(make_config, db, root / "models")
    yield pair, keys
    stop_pair(pair)


def auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_api_keys_are_checked_by_the_primary_when_forwarded_and_locally_otherwise(keyed):
    pair, keys = keyed
    w, p = pair.to_worker, pair.to_primary
    request = pb.StartSessionRequest(user_id="k-user")
    relayed = error_of(w.sessions.StartSession, request)
    direct = error_of(p.sessions.StartSession, request)
    assert relayed.code() == direct.code() == UNAUTHENTICATED
    assert relayed.details() == direct.details()
    assert relayed.details().startswith("authorization:")
    # The key goes along with a forwarded call: the primary accepts it...
    started = w.sessions.StartSession(request, timeout=RPC_S, metadata=auth(keys["ingest"]))
    count = "SELECT COUNT(*) FROM sessions WHERE session_id = ?"
    assert sql_scalar(pair.db_path, count, (started.session_id,)) == 1
    # ... and judges its role.
    stats = pb.GetSessionStatsRequest()
    denied = error_of(w.analytics.GetSessionStats, stats, metadata=auth(keys["ingest"]))
    assert denied.code() == PERMISSION_DENIED and "has role ingest" in denied.details()

    # Recommend is the worker's own: its own interceptor asks for the key.
    recommend = pb.RecommendRequest(user_id="k-user", n=3)
    local = error_of(w.recs.Recommend, recommend)
    assert local.code() == UNAUTHENTICATED and local.details().startswith("authorization:")
    local = error_of(w.recs.Recommend, recommend, metadata=auth(keys["ingest"]))
    assert local.code() == PERMISSION_DENIED
    served = w.recs.Recommend(recommend, timeout=RPC_S, metadata=auth(keys["serve"]))
    assert served.strategy == "popular"
    reply = w.health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_S)  # open
    assert reply.status == SERVING


# ------------------------------------------------------- read-only store
def make_read_only_source(path: Path) -> bytes:
    """A store at ``path`` with a secret, a key and an item; the secret."""
    with open_store(store_url(path)) as writer:
        secret = writer.get_or_create_secret("token-key", 32)
        create_key(writer, "k", "admin")
        writer.upsert_items([ItemRecord("x1", title="X")])
    return secret


def reads_and_refuses_every_write(ro: Any, secret: bytes) -> None:
    assert ro.readonly
    assert ro.get_item("x1").title == "X"
    assert len(ro.list_api_keys()) == 1
    assert ro.get_or_create_secret("token-key", 32) == secret
    writes: list[Callable[[], Any]] = [
        lambda: ro.upsert_items([ItemRecord("x2")]),
        lambda: ro.append_events([]),
        lambda: ro.expire_sessions(0),
        lambda: ro.delete_user("u"),
        lambda: ro.quarantine_events([]),
        lambda: ro.cache_analytics_days([]),
        lambda: create_key(ro, "k2", "admin"),
        lambda: ro.get_or_create_secret("another", 32),
    ]
    for write in writes:
        with pytest.raises(FailedPrecondition, match="store: "):
            write()
    assert ro.write_error is None


def test_a_read_only_store_reads_and_refuses_every_write(tmp_path):
    path = tmp_path / "ro.db"
    secret = make_read_only_source(path)
    with open_store(store_url(path), readonly=True) as ro:
        reads_and_refuses_every_write(ro, secret)
    assert sql_scalar(path, "SELECT COUNT(*) FROM items") == 1
    assert sql_scalar(path, "SELECT COUNT(*) FROM api_keys") == 1


@pytest.mark.sqlite_only  # the SQLite file: its connections are opened read-only
def test_a_read_only_sqlite_store_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "ro.db"
    secret = make_read_only_source(path)
    before = path.read_bytes()
    ro = SQLiteStore(str(path), readonly=True)
    try:
        reads_and_refuses_every_write(ro, secret)
        # No connection of it can write, whatever asks.
        for conn in (ro._writer, ro._reader()):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("DELETE FROM items")
    finally:
        ro.close()
    assert path.read_bytes() == before
    assert sql_scalar(path, "SELECT COUNT(*) FROM items") == 1


def test_a_read_only_store_needs_a_migrated_store(tmp_path):
    path = tmp_path / "plain.db"
    with raw_connection(path) as plain:
        plain.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError, match="schema version 0"):
        open_store(store_url(path), readonly=True)


@pytest.mark.sqlite_only  # an in-memory SQLite store has no other process to write it
def test_a_read_only_sqlite_store_needs_a_file(tmp_path):
    with pytest.raises(ValueError, match="readonly"):
        SQLiteStore(":memory:", readonly=True)


@pytest.mark.sqlite_only  # the SQLite file and its WAL
def test_a_read_only_store_never_writes_the_file(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(RuntimeError):
        SQLiteStore(str(missing), readonly=True)
    created = missing.exists()

    path = tmp_path / "wal.db"
    writer = SQLiteStore(str(path))
    writer._writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.upsert_items([ItemRecord("x1")])
    ro = SQLiteStore(str(path), readonly=True)
    assert ro.get_item("x1") is not None
    writer.close()  # the primary is gone first (a crash): the worker closes last
    wal = Path(str(path) + "-wal")
    in_wal = wal.stat().st_size
    ro.close()
    assert (created, wal.exists() and wal.stat().st_size) == (False, in_wal)


# ------------------------------------------------------ process management
def test_a_killed_worker_is_replaced_and_stop_ends_every_worker(make_config, tmp_path):
    running, port = create_server(make_config(tmp_path / "pm.db", tmp_path / "models", processes=2))
    pids = []
    try:
        assert running.pool is not None and running.internal_dir is not None
        assert os.path.exists(internal_socket_path(running.internal_dir))
        (first,) = running.pool.pids
        pids.append(first)
        assert first != os.getpid() and pid_alive(first)
        assert first in children(os.getpid()) and listens_on(first, port)
        assert listens_on(os.getpid(), port)
        healthy = on_fresh_channels(port, lambda s: s.health.Check(health_pb2.HealthCheckRequest()))
        assert {h.status for h in healthy} == {SERVING}

        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(first), timeout_s=10)

        def replaced() -> int | None:
            now = running.pool.pids
            if len(now) == 1 and now[0] != first and pid_alive(now[0]):
                return now[0]
            return None

        second = wait_for(replaced, timeout_s=RESTART_S, interval_s=0.1)
        assert second, f"no new worker within {RESTART_S}s: {running.pool.pids}"
        pids.append(second)
        assert listens_on(second, port)
        infos = on_fresh_channels(
            port, lambda s: s.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_S)
        )
        assert {i.algorithm for i in infos} == {"none"}
    finally:
        running.stop(0.5)
    assert [p for p in pids if pid_alive(p)] == []
    assert running.pool.pids == []
    assert not os.path.exists(running.internal_dir)


SLOW_START_HOOK = """\
import os, sys, time
if os.environ.get("TEST_SLOW_WORKER_START_S") and "--multiprocessing-fork" in sys.argv:
    time.sleep(float(os.environ["TEST_SLOW_WORKER_START_S"]))
"""


def test_stop_while_a_worker_restarts_leaves_no_worker(make_config, tmp_path, monkeypatch):
    """A replacement worker that takes longer than usual to start (a busy host;
    here a sitecustomize hook in the spawned interpreter sleeps 7 s)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_START_HOOK)
    running, _ = create_server(make_config(tmp_path / "r.db", tmp_path / "models", processes=2))
    replacements: list[int] = []
    monitor = running.pool._monitor._thread  # the thread that restarts workers
    try:
        (first,) = running.pool.pids
        before = set(children(os.getpid()))
        path = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
        monkeypatch.setenv("TEST_SLOW_WORKER_START_S", "7")
        os.kill(first, signal.SIGKILL)

        def replacement() -> list[int]:
            return [p for p in children(os.getpid()) if p not in before and is_worker(p)]

        replacements = wait_for(replacement, timeout_s=10) or []
        assert replacements, "no replacement worker started"
    finally:
        running.stop(0.5)
        monkeypatch.delenv("TEST_SLOW_WORKER_START_S")
    left = [p for p in replacements if pid_alive(p)]
    for pid in left:  # do not leave it running
        os.kill(pid, signal.SIGKILL)
    # Its restart, failing now, logs a traceback: let that be done before this
    # test's failure is formatted (ast.parse is not thread-safe in Python 3.11).
    monitor.join(timeout=30)
    assert not monitor.is_alive()
    assert left == []


def test_a_taken_port_fails_the_start_naming_the_address(cluster, make_config, tmp_path):
    workers_before = {p for p in children(os.getpid()) if is_worker(p)}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=re.escape(f"127.0.0.1:{port}")):
            create_server(
                make_config(tmp_path / "a.db", tmp_path / "models", port=port, processes=2)
            )
    # Taken by another server with several processes (SO_REUSEPORT) too.
    port = cluster.primary.port
    with pytest.raises(OSError, match=re.escape(f"127.0.0.1:{port}")):
        create_server(make_config(tmp_path / "b.db", tmp_path / "models", port=port, processes=2))
    assert {p for p in children(os.getpid()) if is_worker(p)} == workers_before


# -------------------------------------------------------------------- CLI
def test_sessionrec_serve_with_two_processes(sessionrec_bin, synthetic_copy, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONREC_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(sessionrec_bin),
                "serve",
                "--db",
                synthetic_copy.db_url,
                "--models",
                str(synthetic_copy.models_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--processes",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    descendants: list[int] = []
    try:

        def workers() -> list[int]:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{log_path.read_text()}")
            return [p for p in children(proc.pid) if is_worker(p)]

        def serving() -> bool:
            try:
                stubs = Stubs.connect(port, fresh=True)
                try:
                    reply = stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                finally:
                    stubs.close()
            except grpc.RpcError:
                return False
            return reply.status == SERVING and bool(workers())

        assert wait_for(serving, timeout_s=90, interval_s=0.2), log_path.read_text()
        (worker,) = workers()
        descendants = children(proc.pid)
        assert listens_on(worker, port) and listens_on(proc.pid, port)

        def session_and_recommend(stubs: Stubs) -> pb.RecommendResponse:
            user = f"cli-{len(tracked)}"
            sid = start_session(stubs, user).session_id
            reply = stubs.sessions.TrackEvents(
                pb.TrackEventsRequest(events=[view("a01", session_id=sid)]), timeout=RPC_S
            )
            tracked.append(reply.accepted)
            return stubs.recs.Recommend(pb.RecommendRequest(user_id=user, n=3), timeout=RPC_S)

        tracked: list[int] = []
        replies = on_fresh_channels(port, session_and_recommend, n=6)
        assert tracked == [1] * 6
        assert all(len(r.items) == 3 and r.model_version == synthetic_copy.version for r in replies)
        stored = "SELECT COUNT(*) FROM events WHERE user_id LIKE 'cli-%'"
        assert sql_scalar(synthetic_copy.db_path, stored) == 6

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    left = wait_for(lambda: not [p for p in descendants if pid_alive(p)], timeout_s=10)
    assert left, [(p, cmdline(p)) for p in descendants if pid_alive(p)]


# ------------------------------------------------- offers, ranked by workers
def users_by_arm(cluster: Cluster, prefix: str) -> tuple[list[str], list[str]]:
    """Users named ``prefix``-k, split into (treated, holdout)."""
    share = cluster.primary.config.offer_holdout_share
    names = [f"{prefix}-{k}" for k in range(200)]
    return (
        [u for u in names if not in_holdout(u, share)],
        [u for u in names if in_holdout(u, share)],
    )


def test_a_worker_ranks_offers_and_the_primary_records_them_within_caps(cluster, monkeypatch):
    w, p, db = cluster.to_worker, cluster.to_primary, cluster.db_path
    engine = cluster.worker.sessions.offer_recorder.__self__  # the worker's OfferEngine
    ranked_here: list[str] = []
    get_offers = engine.get_offers
    monkeypatch.setattr(
        engine,
        "get_offers",
        lambda user, *a, **kw: ranked_here.append(user) or get_offers(user, *a, **kw),
    )
    treated, holdout = users_by_arm(cluster, "w-offers")
    once = pb.Offer(
        offer_id="w-once",
        title="once per user",
        kind=pb.PERCENT_OFF,
        value=10.0,
        combinable=True,
        max_per_user=1,
        target=pb.OfferTarget(whole_catalog=True),
    )
    # Defined through the primary: the worker ranks it on its next call.
    assert not p.offers.UpsertOffers(pb.UpsertOffersRequest(offers=[once]), timeout=RPC_S).rejected
    user = treated[0]
    shown = w.offers.GetOffers(pb.GetOffersRequest(user_id=user, n=5), timeout=RPC_S)
    assert [o.offer_id for o in shown.offers] == ["w-once"]
    assert ranked_here == [user]  # by the worker itself, not forwarded
    logged = "SELECT COUNT(*) FROM offer_log WHERE offer_id = 'w-once' AND user_id = ? AND arm = ?"
    assert sql_scalar(db, logged, (user, 0)) == 1  # recorded in the primary's store
    # The cap counts impressions of every process: neither shows it again.
    for stubs in (p, w):
        again = stubs.offers.GetOffers(pb.GetOffersRequest(user_id=user, n=5), timeout=RPC_S)
        assert "w-once" not in [o.offer_id for o in again.offers]
    assert sql_scalar(db, logged, (user, 0)) == 1
    # A preview through the worker records nothing; a holdout user's exposure is.
    other = treated[1]
    preview = w.offers.GetOffers(
        pb.GetOffersRequest(user_id=other, n=5, preview=True), timeout=RPC_S
    )
    assert [o.offer_id for o in preview.offers] == ["w-once"]
    assert sql_scalar(db, logged, (other, 0)) == 0
    held = w.offers.GetOffers(pb.GetOffersRequest(user_id=holdout[0], n=5), timeout=RPC_S)
    assert held.holdout and not held.offers
    assert sql_scalar(db, logged, (holdout[0], 1)) == 1
    p.offers.DeleteOffer(pb.DeleteOfferRequest(offer_id="w-once"), timeout=RPC_S)


def test_the_internal_offer_log_answers_its_socket_only(cluster, tmp_path):
    # The handler on a server of its own, listening on TCP and on a Unix socket
    # (the primary's public port is shared with its worker process: a
    # connection there may not reach it).
    engine = cluster.primary.sessions.offer_recorder.__self__  # the primary's OfferEngine
    server = grpc.server(
        ThreadPoolExecutor(max_workers=2), interceptors=[ErrorMappingInterceptor()]
    )
    server.add_generic_rpc_handlers((offer_log_handler(engine),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{tmp_path}/internal.sock")
    server.start()
    try:
        entry = ["internal-log-1", "no-such-offer", "internal-user", None, IMPRESSION, 1, TREATED]
        for address in (f"127.0.0.1:{port}", f"unix:{tmp_path}/internal.sock"):
            with grpc.insecure_channel(address) as channel:
                record = PrimaryOfferLog(channel)
                entries = [OfferLogEntry(*entry)]
                if address.startswith("unix:"):
                    assert record(entries, {}) == [None]
                else:
                    with pytest.raises(PermissionDenied, match="worker processes"):
                        record(entries, {})
        logged = "SELECT COUNT(*) FROM offer_log WHERE log_id = 'internal-log-1'"
        assert sql_scalar(cluster.db_path, logged) == 1
    finally:
        server.stop(0)
