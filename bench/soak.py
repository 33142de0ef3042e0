"""A bounded soak (issue 7), a section of ``python -m bench.run``.

The real server runs in its own process on a fresh store that holds the
synthetic 100k-event log (``bench.run.synthetic_log``) and an ALS model trained
on it. Then, for ``--soak-seconds`` (120 by default), several client threads
against 127.0.0.1 only, each in a loop that stops by itself at the deadline:

* ingest clients: a session for a random user, then TrackEvents batches of 20
  events (item views with client event ids, screen views, an add-to-cart), one
  batch in 10 re-sent as a retrying client would, and one event in 50 invalid
  (so the quarantine path runs too), EndSession after a few batches;
* serving clients: Recommend for random users, every other one with the
  session an ingest client is writing to.

Reported per 10-second window: calls and p99 latency per kind, errors by status
code, and the server's resident memory (``VmRSS``); then the totals, the p99
drift (median p99 of the last three windows over that of the first three, after
a warm-up window) and the memory growth from the end of the warm-up to the end.
Unexpected errors (anything but the deliberately invalid events) are counted,
not fatal. Nothing is asserted.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

WINDOW_S = 10.0


@dataclass(frozen=True)
class SoakSpec:
    seconds: float = 120.0
    ingest_clients: int = 3
    serve_clients: int = 3
    batch: int = 20
    seed: int = 3


@dataclass
class Window:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    rss_mib: float = 0.0


class Recorder:
    def __init__(self, started: float):
        self.started = started
        self.lock = threading.Lock()
        self.windows: list[Window] = []
        #: Deliberately invalid events the server kept apart (quarantined).
        self.quarantined = 0

    def window(self, now: float) -> Window:
        k = int((now - self.started) // WINDOW_S)
        while len(self.windows) <= k:
            self.windows.append(Window())
        return self.windows[k]

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.window(time.perf_counter()).latencies.setdefault(kind, []).append(seconds)

    def error(self, kind: str, code: grpc.StatusCode) -> None:
        with self.lock:
            self.window(time.perf_counter()).errors[f"{kind}:{code.name}"] += 1


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(recorder: Recorder, kind: str, call: Any, request: Any) -> Any:
    started = time.perf_counter()
    try:
        reply = call(request, timeout=10)
    except grpc.RpcError as exc:
        recorder.error(kind, exc.code())
        return None
    recorder.ok(kind, time.perf_counter() - started)
    return reply


def _ingest(
    channel: grpc.Channel,
    recorder: Recorder,
    deadline: float,
    spec: SoakSpec,
    client: int,
    live: list[tuple[str, str] | None],
    users: list[str],
    items: list[str],
) -> None:
    rng = random.Random(spec.seed * 100 + client)
    stub = pb_grpc.SessionServiceStub(channel)
    n = 0
    while time.perf_counter() < deadline:
        user = rng.choice(users)
        started = _timed(
            recorder, "StartSession", stub.StartSession, pb.StartSessionRequest(user_id=user)
        )
        if started is None:
            continue
        sid = started.session_id
        live[client] = (user, sid)
        for _ in range(rng.randint(2, 6)):
            if time.perf_counter() >= deadline:
                break
            events = []
            for _ in range(spec.batch):
                n += 1
                roll = rng.random()
                eid = f"soak-{client}-{n}"
                if roll < 0.02:  # invalid on purpose: a screen view without a screen
                    events.append(pb.Event(session_id=sid, event_id=eid, type=pb.SCREEN_VIEW))
                elif roll < 0.3:
                    events.append(
                        pb.Event(session_id=sid, event_id=eid, type=pb.SCREEN_VIEW, screen="home")
                    )
                elif roll < 0.35:
                    events.append(
                        pb.Event(
                            session_id=sid,
                            event_id=eid,
                            type=pb.ADD_TO_CART,
                            item_id=rng.choice(items),
                        )
                    )
                else:
                    events.append(
                        pb.Event(
                            session_id=sid,
                            event_id=eid,
                            type=pb.ITEM_VIEW,
                            item_id=rng.choice(items),
                        )
                    )
            request = pb.TrackEventsRequest(events=events)
            reply = _timed(recorder, "TrackEvents", stub.TrackEvents, request)
            if rng.random() < 0.1:  # a retry of the same batch: stored once
                reply = _timed(recorder, "TrackEvents", stub.TrackEvents, request) or reply
            if reply is not None:
                with recorder.lock:
                    recorder.quarantined += reply.quarantined
        _timed(recorder, "EndSession", stub.EndSession, pb.EndSessionRequest(session_id=sid))


def _serve(
    channel: grpc.Channel,
    recorder: Recorder,
    deadline: float,
    spec: SoakSpec,
    client: int,
    live: list[tuple[str, str] | None],
    users: list[str],
) -> None:
    rng = random.Random(spec.seed * 1000 + client)
    stub = pb_grpc.RecommendationServiceStub(channel)
    k = 0
    while time.perf_counter() < deadline:
        k += 1
        writing = [s for s in live if s is not None]
        if k % 2 and writing:  # the live session of a user an ingest client writes for
            user, sid = rng.choice(writing)
            request = pb.RecommendRequest(user_id=user, session_id=sid, n=10)
        else:
            request = pb.RecommendRequest(user_id=rng.choice(users), n=10)
        _timed(recorder, "Recommend", stub.Recommend, request)


def bench_soak(tmp: Path, spec: SoakSpec) -> dict[str, Any]:
    from bench.run import BenchError, say, server_process, synthetic_log
    from sessionrec.store import open_store
    from training.importer import import_csv
    from training.pipeline import train

    tmp.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{tmp / 'soak.db'}"
    models = tmp / "models"
    csv_path = tmp / "events.csv"
    synthetic_log(csv_path)
    with open_store(db_url) as store:
        import_csv(store, csv_path)
        train(store, str(models), "als", session_model=False)
    users = [f"u{k}" for k in range(1, 944)]
    items = [f"i{k}" for k in range(1, 1683)]
    say(
        f"[bench]   soak: {spec.ingest_clients} ingest + {spec.serve_clients} serving clients "
        f"for {spec.seconds:.0f} s"
    )
    overrides = {"db_url": db_url, "models_dir": str(models), "port": 0}
    with server_process(overrides) as (port, version, pid):
        if not version:
            raise BenchError("soak: the server loaded no model")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started = time.perf_counter()
        recorder = Recorder(started)
        deadline = started + spec.seconds
        live: list[tuple[str, str] | None] = [None] * spec.ingest_clients
        ingest = [
            threading.Thread(
                target=_ingest, args=(channel, recorder, deadline, spec, c, live, users, items)
            )
            for c in range(spec.ingest_clients)
        ]
        serve = [
            threading.Thread(
                target=_serve, args=(channel, recorder, deadline, spec, c, live, users)
            )
            for c in range(spec.serve_clients)
        ]
        threads = ingest + serve
        crashed: list[BaseException] = []
        for t in threads:  # a client that dies ends the run (not a silent gap)
            target = t._target  # type: ignore[attr-defined]
            t._target = _catching(target, crashed)  # type: ignore[attr-defined]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=1.0)
            with recorder.lock:
                recorder.window(time.perf_counter()).rss_mib = _rss_mib(pid)
        channel.close()
    if crashed:
        raise BenchError(f"soak: a client crashed: {crashed[0]!r}")
    return summarize(recorder, spec)


def _catching(target: Any, crashed: list[BaseException]) -> Any:
    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            crashed.append(exc)
            raise

    return run


def summarize(recorder: Recorder, spec: SoakSpec) -> dict[str, Any]:
    windows = recorder.windows[: int(spec.seconds // WINDOW_S)]  # whole windows only
    rows = []
    for k, w in enumerate(windows):
        row: dict[str, Any] = {"window": k, "rss_mib": round(w.rss_mib, 1)}
        for kind, values in sorted(w.latencies.items()):
            ms = np.asarray(values) * 1000
            row[kind] = {"calls": len(values), "p99_ms": round(float(np.percentile(ms, 99)), 2)}
        row["errors"] = dict(w.errors)
        rows.append(row)
    errors: Counter = Counter()
    calls: Counter = Counter()
    for w in recorder.windows:
        errors.update(w.errors)
        for kind, values in w.latencies.items():
            calls[kind] += len(values)
    expected = {k: v for k, v in errors.items() if k == "TrackEvents:INVALID_ARGUMENT"}
    unexpected = {k: v for k, v in errors.items() if k not in expected}

    def drift(kind: str) -> float | None:
        p99 = [r[kind]["p99_ms"] for r in rows[1:] if kind in r]  # window 0: warm-up
        if len(p99) < 6:
            return None
        return round(statistics.median(p99[-3:]) / statistics.median(p99[:3]), 2)

    rss = [r["rss_mib"] for r in rows[1:] if r["rss_mib"] == r["rss_mib"]]
    return {
        "spec": {
            "seconds": spec.seconds,
            "ingest_clients": spec.ingest_clients,
            "serve_clients": spec.serve_clients,
            "batch": spec.batch,
        },
        "calls": dict(calls),
        "errors_unexpected": unexpected,
        "errors_expected": expected,
        "quarantined_events": recorder.quarantined,
        "p99_drift": {kind: drift(kind) for kind in ("Recommend", "TrackEvents")},
        "rss_mib_after_warmup": rss[0] if rss else None,
        "rss_mib_end": rss[-1] if rss else None,
        "rss_growth_mib": round(rss[-1] - rss[0], 1) if rss else None,
        "windows": rows,
    }


def markdown_lines(section: dict[str, Any]) -> list[str]:
    spec = section["spec"]
    lines = [
        "",
        f"## Soak ({spec['seconds']:.0f} s, {spec['ingest_clients']} ingest + "
        f"{spec['serve_clients']} serving clients)",
        "",
        "| window | Recommend calls / p99 | TrackEvents calls / p99 | server RSS | errors |",
        "|---|---|---|---|---|",
    ]
    for r in section["windows"]:
        rec, tr = r.get("Recommend", {}), r.get("TrackEvents", {})
        lines.append(
            f"| {r['window'] * WINDOW_S:.0f}-{(r['window'] + 1) * WINDOW_S:.0f} s | "
            f"{rec.get('calls', 0)} / {rec.get('p99_ms', float('nan')):.1f} ms | "
            f"{tr.get('calls', 0)} / {tr.get('p99_ms', float('nan')):.1f} ms | "
            f"{r['rss_mib']:.0f} MiB | {sum(r['errors'].values())} |"
        )
    lines += [
        "",
        f"Calls: {section['calls']}. Unexpected errors: {section['errors_unexpected'] or 'none'}; "
        f"deliberately invalid events quarantined: {section['quarantined_events']:,}. "
        f"p99 drift (last 3 windows / first 3 after the warm-up): {section['p99_drift']}. "
        f"Server RSS {section['rss_mib_after_warmup']} MiB after the warm-up, "
        f"{section['rss_mib_end']} MiB at the end ({section['rss_growth_mib']:+} MiB).",
    ]
    return lines
