"""The serving benchmark (issue 8), a section of ``python -m bench.run``.

Every figure of the real server beside its ceiling, measured in the same run,
on the same machine, with the same load generator and the same request bytes:

* Data and model: the "training at scale" log (``bench.run.scale_log``: 50,000
  users, 20,000 items with latent taste groups and Zipf popularity, sessions of
  a few events; 1M events by default, copied from the scale section's store
  when that ran in the same invocation) and ALS with 64 factors trained through
  the real pipeline (``training.pipeline.train``, session models included:
  the training time reported). A second version is trained for the reload test
  (its session blend fixed to the first one's, to save the blend search).
* The real server (``bench.run.server_process``) in its own process; the
  ceiling (``bench.ceiling``) in its own process(es): bare handlers doing the
  same top-k over the same item-factor matrix, no store, no interceptors.
* The load generator: ``client_processes`` processes (multiprocessing spawn),
  each with its own gRPC channels (grpc.aio) and a share of the in-flight
  window, sending pre-serialized requests and checking every response; the
  CPU it used is reported beside the server's. Sequential calls are made from
  this process with the blocking stub.

Phases (each bounded by a number of calls or a number of seconds):

* Recommend with a live session (each of ``live_sessions`` users got a session
  with 3-10 fresh ITEM_VIEWs before, not timed): sequential (p50/p99/p99.9 and
  QPS: the "1 in flight" figure), then QPS and p50/p99 at 16 and 64 in flight.
* GetOffers (n=3, 20 offers, impressions recorded) the same way.
* The live-session loop, 64 in flight: each loop tracks one new ITEM_VIEW in a
  live session (TrackEvents), then asks Recommend for that session's user, whose
  history has just changed (the real-time path: nothing kept of it helps). The
  figure is Recommend calls/s and their latency.
* TrackEvents, 100 events per call (client event ids, so dedup runs; events of
  open sessions), at 1, 4 and 16 in flight; StreamEvents with one event per
  request, one stream and 4 concurrent streams.
* Reload under load (real server only): Recommend at ``reload_window`` in
  flight for ``reload_seconds`` while ``AdminService.ReloadModel`` alternates
  between the two versions; failed calls counted, p99 of the calls that started
  during a reload.
* Memory: the server's VmRSS (process tree) after loading, after the traffic.
* Bare SQLite (``bench.ceiling.sqlite_ceiling``): 100-event transactions into an
  events-shaped table, synchronous FULL (the server's default) and NORMAL, and FULL
  with random event ids (UUIDs, as apps send them: each insert lands on its own page
  of the event-id index).

Any RPC error or unexpected response outside the reload phase ends the run
(``BenchError``). Nothing is asserted about timings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import random
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.ceiling import CeilingSpec, OfferDef, ceiling_servers, free_port, sqlite_ceiling
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 30.0
RECOMMEND = "/sessionrec.v1.RecommendationService/Recommend"
GET_OFFERS = "/sessionrec.v1.OfferService/GetOffers"
TRACK = "/sessionrec.v1.SessionService/TrackEvents"
STREAM = "/sessionrec.v1.SessionService/StreamEvents"
RESPONSES: dict[str, Any] = {
    RECOMMEND: pb.RecommendResponse,
    GET_OFFERS: pb.GetOffersResponse,
    TRACK: pb.TrackEventsResponse,
    STREAM: pb.StreamEventsResponse,
}
#: Phases the ceiling measures again with several processes (the rest need only one).
MULTI_PROCESS_PHASES = ("recommend_64", "offers_64", "live_64", "track_16")


@dataclass(frozen=True)
class ServingSpec:
    #: Events of the synthetic log (50,000 users x 20,000 items, ``bench.run.ScaleSpec``).
    events: int = 1_000_000
    factors: int = 64
    #: Let the pipeline choose the session blend on held-out sessions (about a
    #: minute whatever the log size); False: ``DEFAULT_BLEND`` (``--quick``).
    search_blend: bool = True
    #: Users with a live session (3-10 fresh views each) that Recommend and GetOffers use.
    live_sessions: int = 512
    seq_calls: int = 3000
    seq_warmup: int = 200
    #: Seconds per in-flight phase (after a warm-up of ``warmup_seconds`` per method).
    window_seconds: float = 3.0
    warmup_seconds: float = 1.0
    windows: tuple[int, ...] = (16, 64)
    track_windows: tuple[int, ...] = (1, 4, 16)
    track_batch: int = 100
    #: At most this many TrackEvents calls per phase (all with new event ids) ...
    track_calls: int = 4000
    #: ... and at most this many seconds.
    track_seconds: float = 3.0
    #: In-flight windows of the live-session loop: each call tracks one new
    #: ITEM_VIEW of a live session, then asks Recommend for its user (the call's
    #: history is new: nothing kept helps it).
    live_windows: tuple[int, ...] = (64,)
    #: Loops prepared per client process (each with its own event id), at most.
    live_calls: int = 12_000
    stream_counts: tuple[int, ...] = (1, 4)
    #: Single-event requests per stream, at most, and seconds at most.
    stream_events: int = 60_000
    stream_seconds: float = 3.0
    #: Requests a stream may have sent and not yet seen acked (bounds the queue,
    #: so that the ack latency means something and the phase ends on time).
    stream_window: int = 1000
    reload_seconds: float = 8.0
    reload_window: int = 64
    #: Pause between two ReloadModel calls.
    reload_gap_s: float = 0.5
    client_processes: int = 2
    #: Connections per client process. SO_REUSEPORT hashes each connection to one
    #: server process: with 4 in all, 1 run in 8 put every one on the same process
    #: of two (measured: one run at 176 QPS, one process busy, against 350-420);
    #: with 16 that is a 1-in-30,000 chance, and a 5:11 split still keeps both busy.
    channels_per_client: int = 8
    #: Real server worker processes (the ``processes`` setting); None: not passed.
    server_processes: int | None = None
    #: Request threads per process (the ``workers`` setting) of the real server
    #: and of the ceiling alike; None: the server's default.
    workers: int | None = None
    #: The real server's ``history_cache_mb``; None: its default. The phases ask
    #: about the same live sessions again and again, so with it on nearly every
    #: call finds its history's work kept; 0 measures calls that do not.
    history_cache_mb: int | None = None
    #: Ceiling process counts to measure; the best is the ceiling.
    ceiling_processes: tuple[int, ...] = (1, 2)
    sqlite_batches: int = 3000
    sqlite_seconds: float = 3.0
    sqlite_prefill: int = 100_000
    seed: int = 8


QUICK = ServingSpec(
    events=200_000,
    search_blend=False,
    live_sessions=256,
    seq_calls=1000,
    seq_warmup=100,
    window_seconds=2.0,
    warmup_seconds=0.5,
    track_calls=1000,
    track_seconds=2.0,
    live_calls=6000,
    stream_events=20_000,
    stream_seconds=2.0,
    reload_seconds=5.0,
    ceiling_processes=(1,),
    sqlite_batches=1000,
    sqlite_seconds=2.0,
    sqlite_prefill=50_000,
)


# ------------------------------------------------------------------ /proc
def _proc_tree(roots: Sequence[int]) -> list[int]:
    """The processes ``roots`` and all their descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """User + system CPU seconds of the process trees under ``roots``."""
    total = 0.0
    for pid in _proc_tree(roots):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_memory_mib(roots: Sequence[int]) -> dict[str, float]:
    """Summed VmRSS and VmHWM (peak) of the process trees under ``roots``, MiB."""
    rss = hwm = 0.0
    for pid in _proc_tree(roots):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1]) / 1024
    return {"rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)}


# ----------------------------------------------------------- load generator
def _problem(method: str, resp: Any, expected: int) -> str | None:
    """What is wrong with a response (None: nothing)."""
    if method == RECOMMEND:
        if len(resp.items) != expected:
            return f"Recommend: {len(resp.items)} items, expected {expected}"
    elif method == GET_OFFERS:
        if len(resp.offers) != expected and not resp.holdout:
            return f"GetOffers: {len(resp.offers)} offers, expected {expected}"
    elif resp.rejected or resp.accepted + resp.duplicates != expected:
        first = resp.rejected[0].reason if resp.rejected else ""
        return (
            f"{'StreamEvents' if method == STREAM else 'TrackEvents'}: {resp.accepted} accepted, "
            f"{resp.duplicates} duplicates, {len(resp.rejected)} rejected of {expected} {first}"
        )
    return None


def track_requests(gen: dict[str, Any]) -> list[bytes]:
    """TrackEvents requests with new client event ids: ``calls`` of ``batch`` events
    (20% screen views, 70% item views with a dwell time, 10% add-to-cart), ten
    consecutive events per session, over ``sessions``."""
    rng = random.Random(gen["seed"])
    items, sessions, batch, tag = gen["items"], gen["sessions"], gen["batch"], gen["tag"]
    out = []
    for c in range(gen["calls"]):
        events = []
        for j in range(batch):
            sid = sessions[((c * batch + j) // 10) % len(sessions)]
            roll = rng.random()
            if roll < 0.2:
                event = pb.Event(session_id=sid, type=pb.SCREEN_VIEW, screen="product")
            elif roll < 0.9:
                event = pb.Event(
                    session_id=sid,
                    type=pb.ITEM_VIEW,
                    item_id=rng.choice(items),
                    dwell_ms=rng.randint(1_000, 90_000),
                )
            else:
                event = pb.Event(
                    session_id=sid, type=pb.ADD_TO_CART, item_id=rng.choice(items), value=19.99
                )
            event.event_id = f"{tag}-{c}-{j}"
            events.append(event)
        out.append(pb.TrackEventsRequest(events=events).SerializeToString())
    return out


def live_requests(gen: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The live-session loop's calls: (a TrackEvents of one new ITEM_VIEW in the
    live session of ``gen["recommend"][i]``, that Recommend request), from
    ``gen["offset"]`` on, ``gen["calls"]`` of them."""
    rng = random.Random(gen["seed"])
    recommend, sessions = gen["recommend"], gen["sessions"]
    items, tag, offset = gen["items"], gen["tag"], gen["offset"]
    out = []
    for c in range(gen["calls"]):
        k = (offset + c) % len(recommend)
        event = pb.Event(
            event_id=f"{tag}-{c}",
            session_id=sessions[k],
            type=pb.ITEM_VIEW,
            item_id=rng.choice(items),
            dwell_ms=rng.randint(1_000, 60_000),
        )
        out.append((pb.TrackEventsRequest(events=[event]).SerializeToString(), recommend[k]))
    return out


async def _live(channels: list[Any], cmd: dict[str, Any], go: Callable[[], Any]) -> dict:
    """The live-session loop: each lane tracks an event, then asks Recommend for
    the user whose session got it; the Recommend call's latency is recorded."""
    import asyncio

    loops = live_requests(cmd["generate"])
    track = [
        ch.unary_unary(
            TRACK, request_serializer=None, response_deserializer=pb.TrackEventsResponse.FromString
        )
        for ch in channels
    ]
    recommend = [
        ch.unary_unary(
            RECOMMEND,
            request_serializer=None,
            response_deserializer=pb.RecommendResponse.FromString,
        )
        for ch in channels
    ]
    run = _Run(False)
    issued = 0
    ran_out = False
    go_at = await go()
    deadline = go_at + cmd["seconds"]
    cpu0 = time.process_time()

    async def lane(j: int) -> None:
        nonlocal issued, ran_out
        while not run.stop and time.perf_counter() < deadline:
            if issued >= len(loops):
                ran_out = True
                return
            event, request = loops[issued]
            issued += 1
            try:
                tracked = await track[j % len(track)](event, timeout=RPC_TIMEOUT_S)
                problem = _problem(TRACK, tracked, 1)
                if problem is not None:
                    run.error("BAD_RESPONSE", problem, True)
                    return
                started = time.perf_counter()
                resp = await recommend[j % len(recommend)](request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                run.error(exc.code().name, str(exc.details()), True)
                return
            elapsed = time.perf_counter() - started
            problem = _problem(RECOMMEND, resp, cmd["expected"])
            if problem is not None:
                run.error("BAD_RESPONSE", problem, True)
                return
            run.latencies.append(elapsed)

    await asyncio.gather(*(lane(j) for j in range(cmd["window"])))
    if ran_out and not run.stop:
        run.error(
            "TOO_FEW_LOOPS", f"all {len(loops)} prepared loops used before the deadline", True
        )
    return _result(run, go_at, cpu0, calls=len(run.latencies))


def _stream_requests(gen: dict[str, Any]) -> list[bytes]:
    """Single-event StreamEvents requests (item views with new event ids)."""
    rng = random.Random(gen["seed"])
    items, sid, tag = gen["items"], gen["session"], gen["tag"]
    return [
        pb.TrackEventsRequest(
            events=[
                pb.Event(
                    session_id=sid,
                    event_id=f"{tag}-{k}",
                    type=pb.ITEM_VIEW,
                    item_id=rng.choice(items),
                    dwell_ms=rng.randint(1_000, 90_000),
                )
            ]
        ).SerializeToString()
        for k in range(gen["events"])
    ]


class _Run:
    """What one client process records during a phase."""

    def __init__(self, record_starts: bool) -> None:
        self.latencies: list[float] = []
        self.starts: list[float] | None = [] if record_starts else None
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []
        self.versions: Counter[str] = Counter()
        self.stop = False

    def error(self, kind: str, detail: str, fail_fast: bool) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}")
        if fail_fast:
            self.stop = True


async def _unary(channels: list[Any], cmd: dict[str, Any], go: Callable[[], Any]) -> dict:
    import asyncio

    method, window = cmd["method"], cmd["window"]
    requests: list[bytes] = cmd.get("requests") or track_requests(cmd["generate"])
    expected, cycle, fail_fast = cmd["expected"], cmd["cycle"], cmd["fail_fast"]
    max_calls = cmd.get("max_calls") or (math.inf if cycle else len(requests))
    deserialize = RESPONSES[method].FromString
    calls = [
        ch.unary_unary(method, request_serializer=None, response_deserializer=deserialize)
        for ch in channels
    ]
    run = _Run(cmd.get("record_starts", False))
    issued = 0
    offset = cmd.get("offset", 0)
    go_at = await go()
    deadline = go_at + cmd["seconds"]
    cpu0 = time.process_time()

    async def lane(j: int) -> None:
        nonlocal issued
        call = calls[j % len(calls)]
        while not run.stop and issued < max_calls:
            started = time.perf_counter()
            if started >= deadline:
                return
            request = requests[(offset + issued) % len(requests)]
            issued += 1
            try:
                resp = await call(request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                run.error(exc.code().name, str(exc.details()), fail_fast)
                continue
            elapsed = time.perf_counter() - started
            problem = _problem(method, resp, expected)
            if problem is not None:
                run.error("BAD_RESPONSE", problem, fail_fast)
                continue
            run.latencies.append(elapsed)
            if run.starts is not None:
                run.starts.append(started)
            if cmd.get("versions"):
                run.versions[resp.model_version] += 1

    await asyncio.gather(*(lane(j) for j in range(window)))
    return _result(run, go_at, cpu0, calls=len(run.latencies))


async def _streams(channels: list[Any], cmd: dict[str, Any], go: Callable[[], Any]) -> dict:
    """Concurrent StreamEvents calls with grpc.aio (a writer task per stream)."""
    import asyncio

    per_stream = [_stream_requests(g) for g in cmd["generate"]]
    run = _Run(False)
    go_at = await go()
    deadline = go_at + cmd["seconds"]
    cpu0 = time.process_time()
    acked = 0

    async def one(k: int, requests: list[bytes]) -> None:
        nonlocal acked
        multi = channels[k % len(channels)].stream_stream(
            STREAM,
            request_serializer=None,
            response_deserializer=pb.StreamEventsResponse.FromString,
        )
        call = multi(timeout=RPC_TIMEOUT_S + cmd["seconds"])
        sent_at: list[float] = []
        window = asyncio.Semaphore(cmd["window"])

        async def writer() -> None:
            for request in requests:
                await window.acquire()
                if time.perf_counter() >= deadline or run.stop:
                    break
                sent_at.append(time.perf_counter())
                await call.write(request)
            await call.done_writing()

        writing = asyncio.ensure_future(writer())
        got = 0
        try:
            async for message in call:
                now = time.perf_counter()
                for ack in message.acks:
                    problem = _problem(STREAM, ack, 1)
                    if problem is not None:
                        run.error("BAD_RESPONSE", problem, True)
                        call.cancel()
                        break
                    run.latencies.append(now - sent_at[got])
                    got += 1
                    window.release()
                if run.stop:
                    break
        except grpc.aio.AioRpcError as exc:
            run.error(exc.code().name, str(exc.details()), True)
        await writing
        if got != len(sent_at) and not run.stop:
            run.error("MISSING_ACKS", f"{got} acks for {len(sent_at)} requests", True)
        acked += got

    await asyncio.gather(*(one(k, r) for k, r in enumerate(per_stream)))
    return _result(run, go_at, cpu0, calls=acked)


def _result(run: _Run, go_at: float, cpu0: float, calls: int) -> dict[str, Any]:
    return {
        "calls": calls,
        "latencies": np.asarray(run.latencies, dtype=np.float64),
        "starts": None if run.starts is None else np.asarray(run.starts, dtype=np.float64),
        "errors": dict(run.errors),
        "samples": run.samples,
        "versions": dict(run.versions),
        "go_at": go_at,
        "end": time.perf_counter(),
        "cpu_seconds": time.process_time() - cpu0,
    }


def _client_main(index: int, conn: Any) -> None:
    """A load-generating process: commands from the parent over ``conn``."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    #: target key -> its channels
    channels: dict[str, list[Any]] = {}

    def wait_go() -> float:
        conn.send(("ready", index))
        go_at = float(conn.recv()[1])
        time.sleep(max(0.0, go_at - time.perf_counter()))
        return go_at

    async def go() -> float:
        return await loop.run_in_executor(None, wait_go)

    async def connect(key: str, address: str, count: int) -> None:
        for ch in channels.pop(key, []):
            await ch.close()
        channels[key] = []
        for k in range(count):
            # A connection of its own per channel (no shared subchannel), so that
            # SO_REUSEPORT can spread them over the server processes.
            ch = grpc.aio.insecure_channel(
                address,
                options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", k)],
            )
            await asyncio.wait_for(ch.channel_ready(), timeout=30)
            channels[key].append(ch)

    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        try:
            if cmd["op"] == "stop":
                break
            result: Any = None
            if cmd["op"] == "connect":
                loop.run_until_complete(connect(cmd["key"], cmd["address"], cmd["channels"]))
            elif cmd["op"] == "unary":
                result = loop.run_until_complete(_unary(channels[cmd["target"]], cmd, go))
            elif cmd["op"] == "live":
                result = loop.run_until_complete(_live(channels[cmd["target"]], cmd, go))
            else:
                result = loop.run_until_complete(_streams(channels[cmd["target"]], cmd, go))
            conn.send(("done", result))
        except BaseException as exc:
            conn.send(("failed", f"client {index}: {type(exc).__name__}: {exc}"))
    for group in channels.values():
        for ch in group:
            loop.run_until_complete(ch.close())
    loop.close()


class LoadClients:
    """``processes`` client processes (spawn), each with ``channels`` connections."""

    def __init__(self, processes: int, channels: int):
        ctx = mp.get_context("spawn")
        self.channels = channels
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for k in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(k, child), name=f"bench-client-{k}")
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    def _reply(self, k: int, timeout: float = 600.0) -> Any:
        from bench.run import BenchError

        if not self.conns[k].poll(timeout):
            raise BenchError(f"load client {k}: no answer within {timeout:.0f} s")
        kind, payload = self.conns[k].recv()
        if kind == "failed":
            raise BenchError(f"load client: {payload}")
        return payload

    def connect(self, key: str, address: str | Sequence[str]) -> None:
        """Channels to ``address``, used by the commands whose target is ``key``;
        several addresses: client process k's go to ``address[k % len]``."""
        addresses = [address] if isinstance(address, str) else list(address)
        for k, conn in enumerate(self.conns):
            conn.send(
                {
                    "op": "connect",
                    "key": key,
                    "address": addresses[k % len(addresses)],
                    "channels": self.channels,
                }
            )
        for k in range(len(self.conns)):
            self._reply(k, 60)

    def run(
        self,
        cmds: Sequence[dict[str, Any] | None],
        server_pids: Sequence[int],
        during: Callable[[float], Any] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Runs one phase: ``cmds[k]`` on client k (None: idle). All clients first
        prepare (build their requests), then start at the same instant. Returns
        the clients' results and the aggregate (calls, seconds, latencies, CPU)."""
        active = [k for k, cmd in enumerate(cmds) if cmd is not None]
        for k in active:
            self.conns[k].send(cmds[k])
        for k in active:
            message = self._reply(k)
            if message != k:
                raise RuntimeError(f"load client {k}: unexpected {message!r}")
        server_cpu0 = tree_cpu_seconds(server_pids)
        go_at = time.perf_counter() + 0.02
        for k in active:
            self.conns[k].send(("go", go_at))
        extra = during(go_at) if during is not None else None
        results = [self._reply(k) for k in active]
        server_cpu = tree_cpu_seconds(server_pids) - server_cpu0
        seconds = max(r["end"] for r in results) - go_at
        calls = sum(r["calls"] for r in results)
        latencies = np.concatenate([r["latencies"] for r in results])
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return results, {
            "calls": calls,
            "seconds": seconds,
            "latencies": latencies,
            "errors": dict(errors),
            "samples": [s for r in results for s in r["samples"]],
            "client_cpu_cores": round(sum(r["cpu_seconds"] for r in results) / seconds, 2),
            "server_cpu_cores": round(server_cpu / seconds, 2),
            "go_at": go_at,
            "extra": extra,
        }

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"op": "stop"})
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def latency_ms(seconds: np.ndarray) -> dict[str, float]:
    if not len(seconds):
        return {"n": 0}
    ms = seconds * 1000.0
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return {
        "n": len(ms),
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "p999_ms": round(float(p999), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


# --------------------------------------------------------------- one target
@dataclass
class Target:
    """A server under test: the real one or a ceiling."""

    name: str
    address: str
    pids: list[int]
    processes: int

    @property
    def key(self) -> str:
        return f"{self.name}-p{self.processes}"


@dataclass
class Workload:
    """Everything both targets get, identical: request bytes and generation specs."""

    recommend: list[bytes]
    offers: list[bytes]
    items: list[str]
    ingest_sessions: list[str]
    stream_sessions: list[str]
    #: The live session each of ``recommend`` names (the live-session loop's).
    recommend_sessions: list[str] = field(default_factory=list)


def _fail_on_errors(what: str, agg: dict[str, Any]) -> None:
    from bench.run import BenchError

    if agg["errors"]:
        raise BenchError(
            f"{what}: {sum(agg['errors'].values())} failed calls {agg['errors']}; "
            f"first: {agg['samples'][:1]}"
        )


def sequential(
    target: Target, method: str, requests: Sequence[bytes], calls: int, warmup: int, expected: int
) -> dict[str, Any]:
    """One call at a time from this process (blocking stub): p50/p99/p99.9 and QPS."""
    from bench.run import BenchError

    channel = grpc.insecure_channel(target.address)
    try:
        call = channel.unary_unary(
            method, request_serializer=None, response_deserializer=RESPONSES[method].FromString
        )
        what = method.rsplit("/", 1)[1]
        latencies = np.empty(calls, dtype=np.float64)
        server_cpu0 = 0.0
        for k in range(-warmup, calls):
            if k == 0:
                server_cpu0 = tree_cpu_seconds(target.pids)
                cpu0 = time.process_time()
                began = time.perf_counter()
            request = requests[(k + warmup) % len(requests)]
            started = time.perf_counter()
            try:
                resp = call(request, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                raise BenchError(
                    f"{what} ({target.name}, sequential): {exc.code().name}: {exc.details()}"
                ) from exc
            elapsed = time.perf_counter() - started
            problem = _problem(method, resp, expected)
            if problem is not None:
                raise BenchError(f"{what} ({target.name}, sequential): {problem}")
            if k >= 0:
                latencies[k] = elapsed
        seconds = time.perf_counter() - began
        client_cpu = time.process_time() - cpu0
        server_cpu = tree_cpu_seconds(target.pids) - server_cpu0
    finally:
        channel.close()
    return {
        "in_flight": 1,
        "calls": calls,
        "seconds": round(seconds, 3),
        "qps": round(calls / seconds, 1),
        **latency_ms(latencies),
        "client_cpu_cores": round(client_cpu / seconds, 2),
        "server_cpu_cores": round(server_cpu / seconds, 2),
        "client": "this process, blocking stub",
    }


def windowed(
    clients: LoadClients,
    target: Target,
    method: str,
    requests: list[bytes],
    window: int,
    seconds: float,
    expected: int,
) -> dict[str, Any]:
    """``window`` calls in flight (spread over the client processes) for ``seconds``."""
    lanes = _split(window, len(clients))
    cmds = [
        {
            "op": "unary",
            "target": target.key,
            "method": method,
            "requests": requests,
            "offset": k * 7919,
            "window": lanes[k],
            "seconds": seconds,
            "expected": expected,
            "cycle": True,
            "fail_fast": True,
        }
        if lanes[k]
        else None
        for k in range(len(clients))
    ]
    _, agg = clients.run(cmds, target.pids)
    _fail_on_errors(f"{method.rsplit('/', 1)[1]} ({target.name}, {window} in flight)", agg)
    return {**_calls_per_s(window, agg), "client_processes": sum(1 for n in lanes if n)}


def _calls_per_s(window: int, agg: dict[str, Any]) -> dict[str, Any]:
    """A phase's calls per second, latency and CPU from ``LoadClients.run``'s aggregate."""
    return {
        "in_flight": window,
        "calls": agg["calls"],
        "seconds": round(agg["seconds"], 3),
        "qps": round(agg["calls"] / agg["seconds"], 1),
        **latency_ms(agg["latencies"]),
        "client_cpu_cores": agg["client_cpu_cores"],
        "server_cpu_cores": agg["server_cpu_cores"],
    }


def track_phase(
    clients: LoadClients,
    target: Target,
    work: Workload,
    window: int,
    spec: ServingSpec,
    tag: str,
) -> dict[str, Any]:
    """TrackEvents, ``spec.track_batch`` new events per call, ``window`` in flight."""
    lanes = _split(window, len(clients))
    active = [k for k in range(len(clients)) if lanes[k]]
    calls = _split(spec.track_calls, len(active))
    per = max(1, len(work.ingest_sessions) // len(active))
    cmds: list[dict[str, Any] | None] = [None] * len(clients)
    for n, k in enumerate(active):
        cmds[k] = {
            "op": "unary",
            "target": target.key,
            "method": TRACK,
            "generate": {
                "tag": f"{tag}-c{k}",
                "seed": zlib.crc32(f"{tag}-{k}".encode()),
                "items": work.items,
                "sessions": work.ingest_sessions[n * per : (n + 1) * per],
                "batch": spec.track_batch,
                "calls": calls[n],
            },
            "window": lanes[k],
            "seconds": spec.track_seconds,
            "expected": spec.track_batch,
            "cycle": False,
            "fail_fast": True,
        }
    _, agg = clients.run(cmds, target.pids)
    _fail_on_errors(f"TrackEvents ({target.name}, {window} in flight)", agg)
    events = agg["calls"] * spec.track_batch
    return {
        "in_flight": window,
        "events_per_call": spec.track_batch,
        "calls": agg["calls"],
        "events": events,
        "seconds": round(agg["seconds"], 3),
        "events_per_s": round(events / agg["seconds"]),
        **latency_ms(agg["latencies"]),
        "client_cpu_cores": agg["client_cpu_cores"],
        "server_cpu_cores": agg["server_cpu_cores"],
    }


def live_phase(
    clients: LoadClients,
    target: Target,
    work: Workload,
    window: int,
    spec: ServingSpec,
    tag: str,
) -> dict[str, Any]:
    """The live-session loop, ``window`` loops in flight: Recommend calls/s."""
    lanes = _split(window, len(clients))
    cmds: list[dict[str, Any] | None] = [None] * len(clients)
    for k in range(len(clients)):
        if lanes[k]:
            cmds[k] = {
                "op": "live",
                "target": target.key,
                "generate": {
                    "tag": f"{tag}-c{k}",
                    "seed": zlib.crc32(f"{tag}-{k}".encode()),
                    "items": work.items,
                    "recommend": work.recommend,
                    "sessions": work.recommend_sessions,
                    "offset": k * 7919,
                    "calls": spec.live_calls,
                },
                "window": lanes[k],
                "seconds": spec.window_seconds,
                "expected": 10,
            }
    _, agg = clients.run(cmds, target.pids)
    _fail_on_errors(f"live-session loop ({target.name}, {window} in flight)", agg)
    return _calls_per_s(window, agg)


def stream_phase(
    clients: LoadClients,
    target: Target,
    work: Workload,
    streams: int,
    spec: ServingSpec,
    tag: str,
) -> dict[str, Any]:
    """``streams`` concurrent StreamEvents calls, one event per request, each acked."""
    per_client = _split(streams, len(clients))
    cmds: list[dict[str, Any] | None] = [None] * len(clients)
    s = 0
    for k, count in enumerate(per_client):
        if not count:
            continue
        gens = []
        for _ in range(count):
            gens.append(
                {
                    "tag": f"{tag}-s{s}",
                    "seed": zlib.crc32(f"{tag}-{s}".encode()),
                    "items": work.items,
                    "session": work.stream_sessions[s % len(work.stream_sessions)],
                    "events": spec.stream_events,
                }
            )
            s += 1
        cmds[k] = {
            "op": "stream",
            "target": target.key,
            "generate": gens,
            "seconds": spec.stream_seconds,
            "window": spec.stream_window,
        }
    _, agg = clients.run(cmds, target.pids)
    _fail_on_errors(f"StreamEvents ({target.name}, {streams} streams)", agg)
    return {
        "streams": streams,
        "events_per_request": 1,
        "events": agg["calls"],
        "seconds": round(agg["seconds"], 3),
        "events_per_s": round(agg["calls"] / agg["seconds"]),
        # request sent -> its ack read (acks come after group commits)
        "ack": latency_ms(agg["latencies"]),
        "client_cpu_cores": agg["client_cpu_cores"],
        "server_cpu_cores": agg["server_cpu_cores"],
    }


def measure_all(
    clients: LoadClients,
    targets: Sequence[tuple[Target, Sequence[str] | None]],
    work: Workload,
    spec: ServingSpec,
) -> dict[str, dict[str, Any]]:
    """Every phase against every target (``None``: all phases, else only those
    named), the targets one after the other *within* each phase, so that a
    figure and its ceiling are measured minutes apart at most, whatever else the
    machine does meanwhile. The same code and request bytes for all."""
    from bench.run import say

    out: dict[str, dict[str, Any]] = {t.key: {} for t, _ in targets}

    def each(name: str) -> Iterator[Target]:
        for target, phases in targets:
            if phases is None or name in phases:
                yield target

    for prefix, method, requests, expected in (
        ("recommend", RECOMMEND, work.recommend, 10),
        ("offers", GET_OFFERS, work.offers, 3),
    ):
        for target in each(f"{prefix}_seq"):
            say(f"[bench]   {target.key}: {prefix} sequential, {spec.seq_calls:,} calls")
            out[target.key][f"{prefix}_seq"] = sequential(
                target, method, requests, spec.seq_calls, spec.seq_warmup, expected
            )
        for w in spec.windows:
            for target in each(f"{prefix}_{w}"):
                if w == max(spec.windows):  # warm-up, not recorded
                    windowed(clients, target, method, requests, w, spec.warmup_seconds, expected)
                say(f"[bench]   {target.key}: {prefix}, {w} in flight, {spec.window_seconds:g} s")
                out[target.key][f"{prefix}_{w}"] = windowed(
                    clients, target, method, requests, w, spec.window_seconds, expected
                )
    for w in spec.live_windows:
        for target in each(f"live_{w}"):
            say(f"[bench]   {target.key}: live-session loop, {w} in flight")
            out[target.key][f"live_{w}"] = live_phase(
                clients, target, work, w, spec, f"{target.key}-l{w}"
            )
    for w in spec.track_windows:
        for target in each(f"track_{w}"):
            say(f"[bench]   {target.key}: TrackEvents x{spec.track_batch}, {w} in flight")
            out[target.key][f"track_{w}"] = track_phase(
                clients, target, work, w, spec, f"{target.key}-t{w}"
            )
    for n in spec.stream_counts:
        for target in each(f"stream_{n}"):
            say(f"[bench]   {target.key}: StreamEvents, {n} stream(s), single events")
            out[target.key][f"stream_{n}"] = stream_phase(
                clients, target, work, n, spec, f"{target.key}-s{n}"
            )
    return out


def reload_under_load(
    clients: LoadClients,
    target: Target,
    work: Workload,
    spec: ServingSpec,
    versions: Sequence[str],
) -> dict[str, Any]:
    """Recommend at ``reload_window`` in flight for ``reload_seconds`` while this
    process calls ReloadModel, alternating ``versions``; failures are counted."""
    from bench.run import BenchError

    lanes = _split(spec.reload_window, len(clients))
    cmds = [
        {
            "op": "unary",
            "target": target.key,
            "method": RECOMMEND,
            "requests": work.recommend,
            "offset": k * 7919,
            "window": lanes[k],
            "seconds": spec.reload_seconds,
            "expected": 10,
            "cycle": True,
            "fail_fast": False,
            "record_starts": True,
            "versions": True,
        }
        if lanes[k]
        else None
        for k in range(len(clients))
    ]
    channel = grpc.insecure_channel(target.address)
    admin = pb_grpc.AdminServiceStub(channel)

    def reloads(go_at: float) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        time.sleep(max(0.0, go_at + 0.5 - time.perf_counter()))
        k = 0
        while time.perf_counter() < go_at + spec.reload_seconds - 1.0:
            version = versions[k % len(versions)]
            started = time.perf_counter()
            try:
                info = admin.ReloadModel(pb.ReloadModelRequest(version=version), timeout=60)
                ok, detail = info.version == version, info.version
            except grpc.RpcError as exc:
                ok, detail = False, f"{exc.code().name}: {exc.details()}"
            done.append(
                {
                    "version": version,
                    "start": started,
                    "end": time.perf_counter(),
                    "ok": ok,
                    "detail": detail,
                }
            )
            k += 1
            time.sleep(spec.reload_gap_s)
        return done

    try:
        results, agg = clients.run(cmds, target.pids, during=reloads)
        # Follow CURRENT again (a reload by name pins the version).
        admin.ReloadModel(pb.ReloadModelRequest(), timeout=60)
    except grpc.RpcError as exc:
        raise BenchError(f"ReloadModel: {exc.code().name}: {exc.details()}") from exc
    finally:
        channel.close()
    events: list[dict[str, Any]] = agg["extra"] or []
    starts = np.concatenate([r["starts"] for r in results])
    latencies = agg["latencies"]
    during = np.zeros(len(starts), dtype=bool)
    for e in events:
        during |= (starts >= e["start"]) & (starts <= e["end"])
    versions_seen: Counter[str] = Counter()
    for r in results:
        versions_seen.update(r["versions"])
    failed = sum(agg["errors"].values())
    return {
        "in_flight": spec.reload_window,
        "seconds": round(agg["seconds"], 3),
        "calls_ok": agg["calls"],
        "calls_failed": failed,
        "errors": agg["errors"],
        "error_samples": agg["samples"][:5],
        "qps": round(agg["calls"] / agg["seconds"], 1),
        "reloads": len(events),
        "reloads_failed": sum(1 for e in events if not e["ok"]),
        "reload_seconds": [round(e["end"] - e["start"], 3) for e in events],
        "reload_failures": [e["detail"] for e in events if not e["ok"]],
        "all": latency_ms(latencies),
        "during_reloads": latency_ms(latencies[during]),
        "responses_by_version": dict(versions_seen),
        "client_cpu_cores": agg["client_cpu_cores"],
        "server_cpu_cores": agg["server_cpu_cores"],
    }


# ------------------------------------------------------------- preparation
def _train_versions(
    db_url: str, models_dir: str, factors: int, search_blend: bool
) -> dict[str, Any]:
    """Child process: two ALS versions through the real pipeline. The first is
    timed as the training figure; the second (current afterwards) reuses the
    first's session blend, so the blend search runs once (or never, without
    ``search_blend``: ``DEFAULT_BLEND``)."""
    from sessionrec.store import open_store
    from training.pipeline import train
    from training.session_models import DEFAULT_BLEND

    with open_store(db_url) as store:
        started = time.perf_counter()
        first = train(
            store,
            models_dir,
            "als",
            params={"factors": factors},
            blend=None if search_blend else dict(DEFAULT_BLEND),
        )
        wall = time.perf_counter() - started
        session = first.meta.get("session") or {}
        started = time.perf_counter()
        second = train(
            store,
            models_dir,
            "als",
            params={"factors": factors, "random_state": 43},
            blend=session.get("blend"),
            knn_params=session.get("knn"),
        )
        wall_second = time.perf_counter() - started
    return {
        "versions": [first.version, second.version],
        "current": second.version,
        "params": first.params,
        "users": first.meta["users"],
        "items": first.meta["items"],
        "interactions": first.meta["interactions"],
        "train_seconds": round(wall, 3),
        "load_seconds": first.meta["load_seconds"],
        "fit_seconds": first.meta["fit_seconds"],
        "session_seconds": first.meta.get("session_seconds", 0.0),
        "save_seconds": round(
            wall
            - first.meta["load_seconds"]
            - first.meta["fit_seconds"]
            - first.meta.get("session_seconds", 0.0),
            3,
        ),
        "session_blend": session.get("blend"),
        "blend_searched": search_blend,
        "second_train_seconds": round(wall_second, 3),
    }


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _offers(items: Sequence[str], rng: random.Random) -> list[OfferDef]:
    """As ``bench.run.bench_offers``: 15 offers on 5 items each, 5 on the whole
    catalog, no caps."""
    return [
        OfferDef(f"bench-{k}", float(5 + k), tuple(rng.sample(list(items), 5)) if k < 15 else ())
        for k in range(20)
    ]


def _setup_real(
    address: str,
    offers: Sequence[OfferDef],
    live: Sequence[tuple[str, str]],
    work: Workload,
    rng: random.Random,
) -> dict[str, Any]:
    """On the real server, not timed: the offers, the live sessions with 3-10
    fresh views each, the sessions the ingestion phases write to."""
    from bench.run import BenchError, check_track, rpc

    started = time.perf_counter()
    channel = grpc.insecure_channel(address)
    try:
        sessions = pb_grpc.SessionServiceStub(channel)
        offer_stub = pb_grpc.OfferServiceStub(channel)
        resp = rpc(
            offer_stub.UpsertOffers,
            pb.UpsertOffersRequest(
                offers=[
                    pb.Offer(
                        offer_id=o.offer_id,
                        kind=o.kind,  # type: ignore[arg-type]
                        value=o.value,
                        combinable=True,
                        target=pb.OfferTarget(item_ids=list(o.item_ids))
                        if o.item_ids
                        else pb.OfferTarget(whole_catalog=True),
                    )
                    for o in offers
                ]
            ),
            "UpsertOffers",
        )
        if resp.rejected:
            raise BenchError(f"UpsertOffers: rejected {resp.rejected[0].reason}")
        opened = [(user, sid, pb.WEB) for user, sid in live]
        opened += [(f"ingest-user-{sid}", sid, pb.ANDROID) for sid in work.ingest_sessions]
        opened += [(f"stream-user-{sid}", sid, pb.IOS) for sid in work.stream_sessions]
        for user, sid, platform in opened:
            rpc(
                sessions.StartSession,
                pb.StartSessionRequest(
                    user_id=user, session_id=sid, platform=platform, app_version="bench"
                ),
                "StartSession",
            )
        views = [
            pb.Event(
                event_id=f"{sid}-view-{j}",
                session_id=sid,
                type=pb.ITEM_VIEW,
                item_id=rng.choice(work.items),
                dwell_ms=rng.randint(2_000, 60_000),
            )
            for _, sid in live
            for j in range(rng.randint(3, 10))
        ]
        for k in range(0, len(views), 100):
            batch = views[k : k + 100]
            resp = rpc(sessions.TrackEvents, pb.TrackEventsRequest(events=batch), "TrackEvents")
            check_track(resp, len(batch), "TrackEvents (live sessions)")
    finally:
        channel.close()
    return {
        "live_sessions": len(live),
        "live_views": len(views),
        "other_sessions": len(opened) - len(live),
        "seconds": round(time.perf_counter() - started, 2),
    }


@contextlib.contextmanager
def _real_server(overrides: dict[str, Any], processes: int | None) -> Iterator[tuple[Target, str]]:
    from bench.run import server_process

    if processes is not None:
        overrides = {**overrides, "processes": processes, "port": free_port()}
    with server_process(overrides) as (port, version, pid):
        yield Target("sessionrec", f"127.0.0.1:{port}", [pid], processes or 1), version


# ------------------------------------------------------------------- main
class Laps:
    """``lap(name)`` records the seconds since the previous lap (or since the
    start) under ``name`` in ``seconds``: a section's phases, back to back."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 2)
        self._clock = now


def bench_serving(tmp: Path, spec: ServingSpec, reuse_db: Path | None = None) -> dict[str, Any]:
    from bench.run import BenchError, ScaleSpec, _scale_generate, say
    from sessionrec.config import Config

    tmp.mkdir(parents=True, exist_ok=True)
    db_path = tmp / "serving.db"
    db_url = f"sqlite:///{db_path}"
    models_dir = tmp / "models"
    scale = dataclasses.replace(ScaleSpec(), events=spec.events)
    section: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    phase_seconds: dict[str, float] = {}
    section["phase_seconds"] = phase_seconds
    lap = Laps(phase_seconds)

    # ---- data and model
    if reuse_db is not None and reuse_db.is_file():
        say(f"[bench]   serving: copying the scale section's {spec.events:,}-event store")
        shutil.copyfile(reuse_db, db_path)
        for suffix in ("-wal", "-shm"):
            if Path(str(reuse_db) + suffix).is_file():
                shutil.copyfile(str(reuse_db) + suffix, str(db_path) + suffix)
        section["data"] = {"source": "copied from the training-at-scale section", "events": None}
    else:
        say(
            f"[bench]   serving: generating {spec.events:,} events ({scale.users:,} users, "
            f"{scale.items:,} items) ..."
        )
        generated = _in_child(_scale_generate, db_url, str(tmp / "matrix.npz"), scale)
        section["data"] = {
            "source": "generated (bench.run.scale_log, synchronous=OFF)",
            "generate_seconds": generated["generate_seconds"],
            "events": generated["stored_events"],
            "sessions": generated["stored_sessions"],
        }
        (tmp / "matrix.npz").unlink(missing_ok=True)
    lap("data")
    say(f"[bench]   serving: training ALS ({spec.factors} factors) + session models, twice ...")
    trained = _in_child(_train_versions, db_url, str(models_dir), spec.factors, spec.search_blend)
    section["train"] = trained
    section["data"].update(
        users=trained["users"], items=trained["items"], interactions=trained["interactions"]
    )
    say(
        f"[bench]   serving: trained in {trained['train_seconds']:.1f} s (second version "
        f"{trained['second_train_seconds']:.1f} s): {trained['users']:,} users x "
        f"{trained['items']:,} items"
    )
    lap("train")

    current = trained["current"]
    npz = models_dir / "versions" / current / "model.npz"
    with np.load(npz, allow_pickle=False) as data:
        users = [str(u) for u in data["users"].tolist()]
        items = [str(i) for i in data["items"].tolist()]
    rng = random.Random(spec.seed)
    offers = _offers(items, rng)
    live = [(u, f"live-{k}") for k, u in enumerate(rng.sample(users, spec.live_sessions))]
    work = Workload(
        recommend=[
            pb.RecommendRequest(user_id=u, session_id=s, n=10).SerializeToString() for u, s in live
        ],
        recommend_sessions=[s for _, s in live],
        offers=[
            pb.GetOffersRequest(user_id=u, session_id=s, n=3).SerializeToString() for u, s in live
        ],
        items=rng.sample(items, min(len(items), 5000)),
        ingest_sessions=[f"ingest-{k}" for k in range(64)],
        stream_sessions=[f"stream-{k}" for k in range(8)],
    )
    order = list(range(len(live)))
    rng.shuffle(order)
    work.recommend = [work.recommend[k] for k in order]
    work.recommend_sessions = [work.recommend_sessions[k] for k in order]
    work.offers = [work.offers[k] for k in order]

    # ---- bare SQLite
    say("[bench]   serving: bare SQLite, 100-event transactions (FULL, NORMAL, random ids) ...")
    sqlite_runs = {}
    # FULL_RANDOM_IDS: as FULL, with random (UUID-like) event ids as apps send them.
    for name, sync, random_ids in (
        ("FULL", "FULL", False),
        ("NORMAL", "NORMAL", False),
        ("FULL_RANDOM_IDS", "FULL", True),
    ):
        sqlite_runs[name] = _in_child(
            sqlite_ceiling,
            str(tmp / f"ceiling-{name.lower()}.db"),
            sync,
            spec.sqlite_batches,
            spec.track_batch,
            spec.sqlite_prefill,
            spec.sqlite_seconds,
            random_ids,
        )
        Path(tmp / f"ceiling-{name.lower()}.db").unlink(missing_ok=True)
    section["sqlite"] = sqlite_runs
    lap("sqlite ceiling")

    workers = spec.workers or Config().workers
    overrides = {
        "workers": workers,
        "db_url": db_url,
        "models_dir": str(models_dir),
        "host": "127.0.0.1",
        "port": 0,
        "model_poll_interval_s": 0.0,
        # The background analytics build would take a core in the middle of
        # the measurements (it is measured in its own section).
        "analytics_refresh_interval_s": 0.0,
        "history_cache_mb": (
            Config().history_cache_mb if spec.history_cache_mb is None else spec.history_cache_mb
        ),
    }
    clients = LoadClients(spec.client_processes, spec.channels_per_client)
    ceilings: dict[int, Target] = {}
    ceiling_memory: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as servers:
            # Every server runs for the whole section (an idle one costs nothing);
            # the phases go through them one after the other.
            for processes in spec.ceiling_processes:
                cspec = CeilingSpec(
                    npz_path=str(npz),
                    version=current,
                    offers=tuple(offers),
                    workers=workers,
                    processes=processes,
                )
                say(f"[bench]   serving: starting the ceiling, {processes} process(es) ...")
                port, pids = servers.enter_context(ceiling_servers(cspec))
                ceilings[processes] = Target("ceiling", f"127.0.0.1:{port}", pids, processes)
                if processes == min(spec.ceiling_processes):
                    ceiling_memory["after_load"] = tree_memory_mib(pids)
            say("[bench]   serving: starting the real server ...")
            real_target, version = servers.enter_context(
                _real_server(overrides, spec.server_processes)
            )
            if version != current:
                raise BenchError(f"server: serving {version!r}, expected {current!r}")
            memory = {"after_load": tree_memory_mib(real_target.pids)}
            section["server"] = {
                "address": real_target.address,
                "processes": spec.server_processes,
                "processes_passed": spec.server_processes is not None,
                "workers": workers,
                "model_version": version,
                "config_overrides": {
                    k: v for k, v in overrides.items() if k not in ("db_url", "models_dir")
                },
            }
            section["setup"] = _setup_real(real_target.address, offers, live, work, rng)
            for target in [*ceilings.values(), real_target]:
                clients.connect(target.key, target.address)
            lap("servers start + setup")
            first = spec.ceiling_processes[0]
            plan: list[tuple[Target, Sequence[str] | None]] = [
                (t, None if p == first else MULTI_PROCESS_PHASES) for p, t in ceilings.items()
            ]
            measured = measure_all(clients, [*plan, (real_target, None)], work, spec)
            memory["after_traffic"] = tree_memory_mib(real_target.pids)
            smallest = ceilings[min(spec.ceiling_processes)]
            ceiling_memory["after_traffic"] = tree_memory_mib(smallest.pids)
            lap("phases")
            say(
                f"[bench]   sessionrec: reload under load ({spec.reload_window} in flight, "
                f"{spec.reload_seconds:g} s)"
            )
            real = measured[real_target.key]
            real["reload"] = reload_under_load(
                clients, real_target, work, spec, trained["versions"]
            )
            memory["after_reloads"] = tree_memory_mib(real_target.pids)
            lap("reload under load")
    finally:
        clients.close()
    section["sessionrec"] = real
    section["ceiling_runs"] = {str(p): measured[t.key] for p, t in ceilings.items()}
    section["memory"] = {"sessionrec": memory, "ceiling": ceiling_memory}
    section["client"] = {
        "processes": spec.client_processes,
        "channels_per_process": spec.channels_per_client,
        "kind": "grpc.aio, pre-serialized requests, every response parsed and checked",
    }
    section["figures"] = figures(section, spec)
    return section


# ----------------------------------------------------------------- figures
def _best_ceiling(section: dict[str, Any], name: str, key: str) -> tuple[dict | None, int | None]:
    best: dict[str, Any] | None = None
    best_p: int | None = None
    for p, run in section["ceiling_runs"].items():
        fig = run.get(name)
        if fig is not None and (best is None or fig[key] > best[key]):
            best, best_p = fig, int(p)
    return best, best_p


def figures(section: dict[str, Any], spec: ServingSpec) -> dict[str, Any]:
    """Each figure of the real server with its ceiling and the ratio (1.0 = at
    the ceiling; throughput: sessionrec / ceiling, latency: ceiling / sessionrec)."""
    real = section["sessionrec"]
    out: dict[str, Any] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    def windowed_figure(name: str) -> dict[str, Any]:
        """A phase with calls in flight: QPS and latency beside the best ceiling's."""
        fig = real[name]
        ceil, p = _best_ceiling(section, name, "qps")
        assert ceil is not None
        return {
            "qps": fig["qps"],
            "p50_ms": fig["p50_ms"],
            "p99_ms": fig["p99_ms"],
            "ceiling_qps": ceil["qps"],
            "ceiling_p50_ms": ceil["p50_ms"],
            "ceiling_p99_ms": ceil["p99_ms"],
            "ceiling_processes": p,
            "ratio": ratio(fig["qps"], ceil["qps"]),
            "client_cpu_cores": fig["client_cpu_cores"],
            "server_cpu_cores": fig["server_cpu_cores"],
            "ceiling_client_cpu_cores": ceil["client_cpu_cores"],
            "ceiling_server_cpu_cores": ceil["server_cpu_cores"],
        }

    for prefix in ("recommend", "offers"):
        seq = real[f"{prefix}_seq"]
        cseq, _ = _best_ceiling(section, f"{prefix}_seq", "qps")
        assert cseq is not None
        out[f"{prefix}_seq"] = {
            **{k: seq[k] for k in ("p50_ms", "p99_ms", "p999_ms", "qps")},
            **{f"ceiling_{k}": cseq[k] for k in ("p50_ms", "p99_ms", "p999_ms", "qps")},
            "ratio_p50": ratio(cseq["p50_ms"], seq["p50_ms"]),
            "ratio_p99": ratio(cseq["p99_ms"], seq["p99_ms"]),
            "ratio_qps": ratio(seq["qps"], cseq["qps"]),
        }
        for w in spec.windows:
            out[f"{prefix}_{w}"] = windowed_figure(f"{prefix}_{w}")
    for w in spec.live_windows:
        out[f"live_{w}"] = windowed_figure(f"live_{w}")
    sqlite_full = section["sqlite"]["FULL"]["events_per_s"]
    for w in spec.track_windows:
        fig = real[f"track_{w}"]
        ceil, p = _best_ceiling(section, f"track_{w}", "events_per_s")
        assert ceil is not None
        out[f"track_{w}"] = {
            "events_per_s": fig["events_per_s"],
            "p50_ms": fig["p50_ms"],
            "p99_ms": fig["p99_ms"],
            "ceiling_events_per_s": ceil["events_per_s"],
            "ceiling_processes": p,
            "ratio": ratio(fig["events_per_s"], ceil["events_per_s"]),
            "sqlite_full_events_per_s": sqlite_full,
            "ratio_to_sqlite": ratio(fig["events_per_s"], sqlite_full),
        }
    for n in spec.stream_counts:
        fig = real[f"stream_{n}"]
        ceil, p = _best_ceiling(section, f"stream_{n}", "events_per_s")
        assert ceil is not None
        out[f"stream_{n}"] = {
            "events_per_s": fig["events_per_s"],
            "ack_p50_ms": fig["ack"].get("p50_ms"),
            "ack_p99_ms": fig["ack"].get("p99_ms"),
            "ceiling_events_per_s": ceil["events_per_s"],
            "ceiling_processes": p,
            "ratio": ratio(fig["events_per_s"], ceil["events_per_s"]),
        }
    rel = real["reload"]
    out["reload"] = {
        "calls_failed": rel["calls_failed"],
        "calls_ok": rel["calls_ok"],
        "reloads": rel["reloads"],
        "reloads_failed": rel["reloads_failed"],
        "p99_ms_during_reloads": rel["during_reloads"].get("p99_ms"),
        "p99_ms_whole_phase": rel["all"].get("p99_ms"),
        "p99_ms_without_reloads": real.get(f"recommend_{spec.reload_window}", {}).get("p99_ms"),
    }
    tr = section["train"]
    out["train"] = {
        "seconds": tr["train_seconds"],
        "fit_seconds": tr["fit_seconds"],
        "session_seconds": tr["session_seconds"],
    }
    mem = section["memory"]
    out["memory"] = {
        "rss_mib_after_load": mem["sessionrec"]["after_load"]["rss_mib"],
        "rss_mib_after_traffic": mem["sessionrec"]["after_traffic"]["rss_mib"],
        "rss_mib_after_reloads": mem["sessionrec"]["after_reloads"]["rss_mib"],
        "ceiling_rss_mib": mem["ceiling"].get("after_traffic", {}).get("rss_mib"),
    }
    # Targets of issue 8 (reported, not asserted).
    rec64 = out.get("recommend_64")
    tracks = [out[f"track_{w}"]["events_per_s"] for w in spec.track_windows]
    streams = [out[f"stream_{n}"]["events_per_s"] for n in spec.stream_counts]
    out["targets"] = {
        "recommend_64_ratio>=0.6": None if rec64 is None else (rec64["ratio"] or 0) >= 0.6,
        "recommend_64_p99<=25ms": None if rec64 is None else rec64["p99_ms"] <= 25.0,
        "recommend_seq_p50<=1.5ms": out["recommend_seq"]["p50_ms"] <= 1.5,
        "track_batched>=100k_events_per_s": max(tracks) >= 100_000,
        "stream_single>=15k_events_per_s": max(streams) >= 15_000,
        "reload_zero_failed": rel["calls_failed"] == 0 and rel["reloads_failed"] == 0,
    }
    return out


# ---------------------------------------------------------------- markdown
def _n(x: float | None, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def markdown_lines(section: dict[str, Any]) -> list[str]:
    spec = section["spec"]
    f = section["figures"]
    t = f["targets"]
    data = section["data"]
    tr = section["train"]
    srv = section["server"]
    procs = srv["processes"] if srv["processes_passed"] else "1 (setting not passed)"
    lines = [
        "",
        "## Serving (issue 8): sessionrec against its ceiling, same run, same load generator",
        "",
        f"- data: {data['users']:,} users x {data['items']:,} items, "
        f"{data['interactions']:,} interactions ({data['source']}); ALS "
        f"{tr['params']['factors']} factors + session models, model {srv['model_version']}",
        f"- sessionrec: real server, own process(es): {procs}; {srv['workers']} workers; "
        f"history_cache_mb {srv['config_overrides'].get('history_cache_mb', '?')} (a call "
        f"whose user has no event since their last call reuses what the history made; the "
        f"phases ask about the same sessions again and again, so with it on nearly every "
        f"call does); "
        f"ceiling: bare handlers, same top-k over the same item factors, "
        f"{'/'.join(str(p) for p in spec['ceiling_processes'])} process(es) measured, "
        f"the best shown (which one in brackets)",
        f"- load: {section['client']['processes']} client processes x "
        f"{section['client']['channels_per_process']} channels ({section['client']['kind']}); "
        f"sequential: one blocking stub in the parent; Recommend/GetOffers requests carry a "
        f"live session ({section['setup']['live_sessions']} sessions, "
        f"{section['setup']['live_views']:,} fresh views)",
        "- ratio: share of the ceiling, 1.00 = as good as the bare handler (throughput: "
        "sessionrec / ceiling; latency: ceiling / sessionrec)",
        "",
        "| figure | sessionrec | ceiling | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    names = {"recommend": "Recommend (live session, n=10)", "offers": "GetOffers (n=3)"}
    for prefix, label in names.items():
        s = f[f"{prefix}_seq"]
        seq_target = "p50 <= 1.5 ms" if prefix == "recommend" else ""
        lines.append(
            f"| {label}, sequential: p50 / p99 / p99.9 | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} / "
            f"{s['p999_ms']:.2f} ms | {s['ceiling_p50_ms']:.2f} / {s['ceiling_p99_ms']:.2f} / "
            f"{s['ceiling_p999_ms']:.2f} ms | {_n(s['ratio_p50'], '', 2)} (p50) | {seq_target} | "
            f"{_met(t['recommend_seq_p50<=1.5ms']) if prefix == 'recommend' else ''} |"
        )
        lines.append(
            f"| {label}, 1 in flight: QPS | {s['qps']:,.0f} | {s['ceiling_qps']:,.0f} | "
            f"{_n(s['ratio_qps'], '', 2)} | | |"
        )
        for w in spec["windows"]:
            x = f[f"{prefix}_{w}"]
            target = met = ""
            if prefix == "recommend" and w == 64:
                target = ">= 0.60 of ceiling; p99 <= 25 ms"
                met = f"{_met(t['recommend_64_ratio>=0.6'])}; {_met(t['recommend_64_p99<=25ms'])}"
            lines.append(
                f"| {label}, {w} in flight: QPS (p50 / p99) | {x['qps']:,.0f} "
                f"({x['p50_ms']:.1f} / {x['p99_ms']:.1f} ms) | {x['ceiling_qps']:,.0f} "
                f"({x['ceiling_p50_ms']:.1f} / {x['ceiling_p99_ms']:.1f} ms) "
                f"[{x['ceiling_processes']}p] | {_n(x['ratio'], '', 2)} | {target} | {met} |"
            )
    for w in spec.get("live_windows", ()):
        x = f[f"live_{w}"]
        lines.append(
            f"| Recommend right after an event of its session (the live-session loop: "
            f"TrackEvents of 1 view, then Recommend), {w} in flight: Recommend/s "
            f"(p50 / p99) | {x['qps']:,.0f} ({x['p50_ms']:.1f} / {x['p99_ms']:.1f} ms) | "
            f"{x['ceiling_qps']:,.0f} ({x['ceiling_p50_ms']:.1f} / {x['ceiling_p99_ms']:.1f} ms) "
            f"[{x['ceiling_processes']}p] | {_n(x['ratio'], '', 2)} | | |"
        )
    sq = section["sqlite"]
    for k, w in enumerate(spec["track_windows"]):
        x = f[f"track_{w}"]
        last = k == len(spec["track_windows"]) - 1
        lines.append(
            f"| TrackEvents, {spec['track_batch']} events/call, {w} in flight: events/s "
            f"(call p50 / p99) | {x['events_per_s']:,} ({x['p50_ms']:.1f} / {x['p99_ms']:.1f} ms) "
            f"| {x['ceiling_events_per_s']:,} [{x['ceiling_processes']}p]; SQLite alone "
            f"{x['sqlite_full_events_per_s']:,} | {_n(x['ratio'], '', 3)}; "
            f"{_n(x['ratio_to_sqlite'], '', 2)} of SQLite | "
            f"{'>= 100,000 (best)' if last else ''} | "
            f"{_met(t['track_batched>=100k_events_per_s']) if last else ''} |"
        )
    names, rates = (
        "FULL / NORMAL",
        f"{sq['FULL']['events_per_s']:,} / {sq['NORMAL']['events_per_s']:,}",
    )
    if "FULL_RANDOM_IDS" in sq:  # results from before it was measured have no such run
        names += " / FULL with random event ids"
        rates += f" / {sq['FULL_RANDOM_IDS']['events_per_s']:,}"
    lines.append(
        f"| SQLite alone, 100-event transactions, WAL: {names} | | {rates} events/s | | | |"
    )
    for k, n in enumerate(spec["stream_counts"]):
        x = f[f"stream_{n}"]
        last = k == len(spec["stream_counts"]) - 1
        lines.append(
            f"| StreamEvents, 1 event/request, {n} stream(s): events/s (ack p50 / p99) | "
            f"{x['events_per_s']:,} ({_n(x['ack_p50_ms'], '', 1)} / "
            f"{_n(x['ack_p99_ms'], '', 1)} ms) | {x['ceiling_events_per_s']:,} "
            f"[{x['ceiling_processes']}p] | {_n(x['ratio'], '', 2)} | "
            f"{'>= 15,000 (best)' if last else ''} | "
            f"{_met(t['stream_single>=15k_events_per_s']) if last else ''} |"
        )
    r = f["reload"]
    lines.append(
        f"| Reload under load ({spec['reload_window']} in flight, {spec['reload_seconds']:g} s, "
        f"{r['reloads']} reloads alternating 2 versions): failed calls; p99 during reloads | "
        f"{r['calls_failed']} of {r['calls_ok'] + r['calls_failed']:,} "
        f"(reloads failed: {r['reloads_failed']}); {_n(r['p99_ms_during_reloads'], ' ms', 1)} "
        f"(no reload: {_n(r['p99_ms_without_reloads'], ' ms', 1)}) | | | 0 failed | "
        f"{_met(t['reload_zero_failed'])} |"
    )
    lines.append(
        f"| Training: `training.pipeline.train` ALS {tr['params']['factors']} factors + session "
        f"models | {tr['train_seconds']:.1f} s (load {tr['load_seconds']:.1f}, fit "
        f"{tr['fit_seconds']:.1f}, session models {tr['session_seconds']:.1f}"
        f"{'' if tr.get('blend_searched', True) else '; blend not searched: DEFAULT_BLEND'}) "
        "| | | | |"
    )
    m = f["memory"]
    lines.append(
        f"| Memory: server VmRSS after loading / after the traffic / after reloads | "
        f"{_n(m['rss_mib_after_load'], ' MiB')} / {_n(m['rss_mib_after_traffic'], ' MiB')} / "
        f"{_n(m['rss_mib_after_reloads'], ' MiB')} | {_n(m['ceiling_rss_mib'], ' MiB')} "
        f"(1 process) | | | |"
    )
    # CPU: is the client what limits the figures?
    lines += [
        "",
        "CPU cores busy during each phase, client / server (the client's share is what "
        "the load generator took from a 2-core box; a server near its process count "
        "is saturated):",
        "",
        "| phase | sessionrec: client / server | ceiling: client / server |",
        "|---|---|---|",
    ]
    real = section["sessionrec"]
    for name in real:
        if name == "reload":
            continue
        ceil, p = _best_ceiling(
            section, name, "events_per_s" if name.startswith(("track", "stream")) else "qps"
        )
        x = real[name]
        c = (
            f"{ceil['client_cpu_cores']:.2f} / {ceil['server_cpu_cores']:.2f} [{p}p]"
            if ceil
            else "n/a"
        )
        lines.append(
            f"| {name} | {x['client_cpu_cores']:.2f} / {x['server_cpu_cores']:.2f} | {c} |"
        )
    rel = real["reload"]
    lines.append(
        f"| reload | {rel['client_cpu_cores']:.2f} / {rel['server_cpu_cores']:.2f} | n/a |"
    )
    lines += [
        "",
        f"Serving section phases (s): {section['phase_seconds']}",
    ]
    return lines
