"""sessionrec benchmark suite: ``python -m bench.run [--quick] [--out bench/results.json]``.

What it measures, in order, all on this machine and against 127.0.0.1 only:

1. Import: MovieLens 100K (``training.datasets.MOVIELENS_100K``) converted to the
   canonical CSV, then loaded into a fresh SQLite file by the real importer
   (``training.importer.import_csv``). Without the dataset a synthetic 100k-event
   log with latent user/item groups is generated instead (the output says so).
2. Training: ``training.pipeline.train`` (load from the store + ALS fit + save),
   and the bare ``implicit`` ALS fit on the same matrix for comparison.
3. Serving: the real server (``service.server.create_server``, port 0) runs in a
   separate process on the imported store and the trained model; this process is
   the client.

   * Recommend latency, one call at a time; every other call goes with a live
     session that got 3-10 fresh ITEM_VIEWs just before (those set-up calls are
     not timed). Repeated; the table shows the median over repeats.
   * Only when the serving section (7) is left out (``--no-serving``), which
     supersedes them: Recommend throughput with 64 requests in flight (gRPC
     futures, one client thread, a bounded window), half of them with a live
     session; TrackEvents ingestion, 100 events per call, one call at a time and
     4 in flight; StreamEvents, one stream of single-event requests.

4. Training at scale (issue 3; in the default run, with ``--quick`` only if
   ``--scale`` is given, alone with ``--scale-only``, left out with ``--no-scale``):
   a synthetic 1M-event log (50,000 users, 20,000 items, Zipf-like popularity,
   latent taste groups, sessions of a few events) written through
   ``store.append_events`` into a fresh SQLite file (``synchronous=OFF``, for
   generating only), then the bare ``implicit`` ALS fit and
   ``training.pipeline.train`` alternately, 3 times each, each in a fresh
   process: medians, the ratio train / bare, and peak memory per process.

5. Session analytics at scale (issue 6; in the default run, alone with
   ``--analytics-only``, left out with ``--no-analytics`` or ``--quick``): a
   synthetic year of app sessions (1M events) and GetSessionStats latency over
   it, cold and cached (:mod:`bench.analytics`).
6. Soak (issue 7; in the default run, alone with ``--soak-only``, left out with
   ``--no-soak`` or ``--quick``): several clients mixing ingestion and
   recommendations for ``--soak-seconds``; error counts, p99 drift and the
   server's memory growth (:mod:`bench.soak`).
7. Serving against its ceiling (issue 8; in the default run, smaller with
   ``--quick``, alone with ``--serving-only``, left out with ``--no-serving``):
   Recommend and GetOffers (sequential p50/p99/p99.9, QPS at 1/16/64 in
   flight), TrackEvents and StreamEvents ingestion, model reload under load,
   training time and memory on a 50,000 x 20,000 catalog with 64-factor ALS,
   each beside the bare handler doing the same top-k on the same matrix
   (:mod:`bench.serving`, :mod:`bench.ceiling`). Runs after the training-at-scale
   section and reuses its generated store when both run.
8. Approximate nearest neighbours (:mod:`bench.ann`, when present).
9. Replicas on one PostgreSQL (in the default run, alone with ``--replicas-only``,
   left out with ``--no-replicas`` or ``--quick``; about 2-3 min): TrackEvents
   events/s and Recommend QPS with one and two ``sessionrec serve`` replicas on one
   durable PostgreSQL database, and one replica on SQLite, with the CPU cores of
   the clients, the replicas and PostgreSQL (:mod:`bench.replicas`). Without a
   PostgreSQL server the section records why and is skipped.

Numbers are printed as a markdown table and written as JSON (``--out``). Nothing
is asserted about timings; any RPC error (or a rejected event) ends the run with
a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.analytics import AnalyticsSpec, bench_analytics
from bench.analytics import markdown_lines as analytics_markdown
from bench.replicas import ReplicasSpec, bench_replicas
from bench.replicas import markdown_lines as replicas_markdown
from bench.serving import QUICK as SERVING_QUICK
from bench.serving import ServingSpec, bench_serving, track_requests
from bench.serving import markdown_lines as serving_markdown
from bench.soak import SoakSpec, bench_soak
from bench.soak import markdown_lines as soak_markdown
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 30.0


def _load_ann() -> Any:
    """``bench.ann`` (approximate nearest neighbours, another section's module)
    when it exists, else None."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("bench.ann") is None:
        return None
    return importlib.import_module("bench.ann")


# ANN section (bench/ann.py: AnnSpec, QUICK, bench_ann(spec), markdown_lines(result)),
# imported by name so that this suite runs while that module is absent or broken.
_ANN = _load_ann()


@dataclass(frozen=True)
class Profile:
    name: str
    #: Sequential Recommend: calls per repeat, and repeats.
    seq_calls: int
    seq_repeats: int
    #: Concurrent Recommend: requests (after a warm-up), and requests in flight.
    conc_requests: int
    conc_window: int
    conc_repeats: int
    #: TrackEvents: calls per variant and events per call.
    track_calls: int
    track_batch: int
    #: Training repeats (pipeline and bare fit each).
    train_repeats: int


PROFILES = {
    # 1,200 sequential calls and 3 training repeats (were 2,000 and 5): with the
    # session-blend search a MovieLens train takes about half a minute, and the
    # serving section (bench/serving.py) measures Recommend at scale.
    "default": Profile("default", 1200, 3, 5000, 64, 1, 300, 100, 3),
    "quick": Profile("quick", 400, 3, 1500, 64, 1, 100, 100, 3),
}


class BenchError(RuntimeError):
    """A failed RPC or a rejected event: the benchmark is not valid."""


# ------------------------------------------------------------------ helpers


def bare_als_fit_seconds(matrix: Any) -> float:
    """Seconds for implicit's own CPU ALS fit with the model's default parameters."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from training.models import ALGORITHMS

    p = ALGORITHMS["als"].defaults
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=p["factors"],
            regularization=p["regularization"],
            alpha=p["alpha"],
            iterations=p["iterations"],
            random_state=p["random_state"],
            num_threads=p["num_threads"],
        )
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        return time.perf_counter() - started


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "implicit": version("implicit"),
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "protobuf": version("protobuf"),
        "sessionrec": version("sessionrec"),
    }


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rpc(call: Callable[..., Any], request: Any, what: str) -> Any:
    try:
        return call(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise BenchError(f"{what}: {exc.code().name}: {exc.details()}") from exc


def check_track(resp: pb.TrackEventsResponse, sent: int, what: str) -> None:
    if resp.rejected:
        first = resp.rejected[0]
        raise BenchError(
            f"{what}: {len(resp.rejected)} of {sent} events rejected "
            f"(first: #{first.index}: {first.reason})"
        )
    if resp.accepted + resp.duplicates != sent:
        raise BenchError(f"{what}: {resp.accepted} accepted of {sent}")


# ------------------------------------------------------------------ dataset
def synthetic_log(path: Path, *, events: int = 100_000, seed: int = 7) -> dict[str, Any]:
    """A MovieLens-sized log (943 users, 1682 items) with 19 latent groups: each
    user draws 80% of their items from one or two groups, skewed to popular items."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_groups = 943, 1682, 19
    item_group = rng.permutation(np.arange(n_items) % n_groups)
    popularity = rng.zipf(1.6, n_items).clip(max=500).astype(np.float64)
    members = [np.flatnonzero(item_group == g) for g in range(n_groups)]
    per_user = rng.lognormal(mean=0.0, sigma=0.9, size=n_users)
    counts = np.maximum(rng.multinomial(events - 20 * n_users, per_user / per_user.sum()), 0) + 20
    start = 874_724_710  # Sept 1997, like MovieLens
    span = 215 * 24 * 3600
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "event_type", "timestamp"])
        for user in range(n_users):
            groups = rng.choice(n_groups, size=rng.integers(1, 3), replace=False)
            pool = np.concatenate([members[g] for g in groups])
            p_pool = popularity[pool] / popularity[pool].sum()
            k = int(counts[user])
            in_group = rng.random(k) < 0.8
            picks = np.where(
                in_group,
                rng.choice(pool, size=k, p=p_pool),
                rng.choice(n_items, size=k, p=popularity / popularity.sum()),
            )
            # Sessions of a few events, 20 s to 3 min apart, spread over the user's months.
            stamps: list[int] = []
            while len(stamps) < k:
                clock = start + int(rng.integers(0, span))
                for _ in range(min(k - len(stamps), 1 + int(rng.poisson(7)))):
                    clock += int(rng.integers(20, 180))
                    stamps.append(clock)
            for item, ts in zip(picks.tolist(), stamps, strict=True):
                writer.writerow([f"u{user + 1}", f"i{item + 1}", "ITEM_VIEW", ts])
    return {
        "rows": int(counts.sum()),
        "latent_groups": n_groups,
        "seed": seed,
    }


def prepare_dataset(tmp: Path, movielens: Path, force_synthetic: bool) -> tuple[Path, dict]:
    from training.datasets import movielens_to_csv

    out = tmp / "events.csv"
    if not force_synthetic and movielens.is_file():
        rows = movielens_to_csv(movielens, out)
        return out, {"name": "MovieLens 100K", "source": str(movielens), "rows": rows}
    info = synthetic_log(out)
    reason = "--synthetic given" if force_synthetic else f"{movielens} not found"
    info["name"] = f"synthetic 100k-event log with latent groups ({reason})"
    return out, info


# ------------------------------------------------------------- import/train
def bench_import(db_url: str, csv_path: Path, synchronous: str) -> dict[str, Any]:
    from sessionrec.store import open_store
    from training.importer import import_csv

    started = time.perf_counter()
    with open_store(db_url, synchronous=synchronous) as store:
        report = import_csv(store, csv_path)
        events, sessions = store.count_events(), store.count_sessions()
    wall = time.perf_counter() - started
    if report.bad:
        raise BenchError(f"import: {len(report.bad)} bad rows (first: {report.bad[0]})")
    return {
        "rows": report.rows,
        "imported": report.imported,
        "sessions": report.sessions,
        "stored_events": events,
        "stored_sessions": sessions,
        "import_seconds": round(report.seconds, 3),
        "wall_seconds": round(wall, 3),
        "rows_per_s": round(report.rows / report.seconds),
    }


def bench_train(db_url: str, models_dir: Path, repeats: int, synchronous: str) -> dict[str, Any]:

    from sessionrec.store import open_store
    from training.data import build_interactions
    from training.pipeline import train
    from training.weighting import EventWeights

    pipeline_runs = []
    artifact = None
    with open_store(db_url, synchronous=synchronous) as store:
        for _ in range(repeats):
            started = time.perf_counter()
            artifact = train(store, str(models_dir), "als")
            pipeline_runs.append(
                {
                    "wall_seconds": time.perf_counter() - started,
                    "load_seconds": artifact.meta["load_seconds"],
                    "fit_seconds": artifact.meta["fit_seconds"],
                    # session-kNN index, rules and the blend chosen on held-out sessions
                    "session_seconds": artifact.meta.get("session_seconds", 0.0),
                }
            )
        matrix = build_interactions(store.item_events(), EventWeights()).matrix.tocsr()
    assert artifact is not None
    bare = [bare_als_fit_seconds(matrix) for _ in range(repeats)]
    return {
        "algorithm": "als",
        "params": artifact.params,
        "version": artifact.version,
        "users": artifact.meta["users"],
        "items": artifact.meta["items"],
        "interactions": artifact.meta["interactions"],
        "repeats": repeats,
        "pipeline_wall_seconds": median_of(pipeline_runs, "wall_seconds"),
        "pipeline_load_seconds": median_of(pipeline_runs, "load_seconds"),
        "pipeline_fit_seconds": median_of(pipeline_runs, "fit_seconds"),
        "pipeline_session_seconds": median_of(pipeline_runs, "session_seconds"),
        "bare_implicit_fit_seconds": round(statistics.median(bare), 3),
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in pipeline_runs],
        "bare_runs": [round(b, 3) for b in bare],
        "_users": artifact.users.ids.tolist(),
        "_items": artifact.items.ids.tolist(),
    }


# --------------------------------------------------------- training at scale
@dataclass(frozen=True)
class ScaleSpec:
    """The synthetic log of the "training at scale" section (issue 3)."""

    events: int = 1_000_000
    users: int = 50_000
    items: int = 20_000
    #: Latent taste groups: every item is in one, every user likes one or two.
    groups: int = 50
    #: Share of a user's events drawn from their own groups (the rest: global popularity).
    in_group: float = 0.8
    #: Item popularity ~ 1 / (rank + zipf_offset) ** zipf_exponent (ranks shuffled over items).
    zipf_exponent: float = 1.0
    zipf_offset: float = 5.0
    #: A new session starts before an event with this probability (geometric
    #: session lengths, mean 1 / p = 4 events).
    new_session_p: float = 0.25
    #: Events per ``store.append_events`` call (whole sessions, so about this many).
    batch: int = 10_000
    repeats: int = 3
    seed: int = 11


def scale_log(spec: ScaleSpec) -> dict[str, np.ndarray]:
    """The whole log as numpy columns, users' events in time order.

    Every user gets at least 2 events, the rest spread by a log-normal activity
    weight; items come from the user's one or two taste groups (``in_group``) or
    from the global Zipf-like popularity; sessions are a few events, 20 s to 3 min
    apart, each user's sessions in time order over 180 days."""
    rng = np.random.default_rng(spec.seed)
    n_users, n_items, n_groups = spec.users, spec.items, spec.groups
    ranks = rng.permutation(n_items)
    popularity = 1.0 / (ranks + spec.zipf_offset) ** spec.zipf_exponent
    item_group = rng.permutation(np.arange(n_items) % n_groups)
    members = [np.flatnonzero(item_group == g) for g in range(n_groups)]
    group_cdf = [np.cumsum(popularity[m]) / popularity[m].sum() for m in members]
    global_cdf = np.cumsum(popularity) / popularity.sum()

    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    minimum = 2
    counts = rng.multinomial(spec.events - minimum * n_users, activity / activity.sum()) + minimum
    user = np.repeat(np.arange(n_users), counts)
    n = len(user)
    # Each user's taste: one or two groups; an in-group event picks one of them.
    first = rng.integers(0, n_groups, n_users)
    second = np.where(rng.random(n_users) < 0.5, rng.integers(0, n_groups, n_users), first)
    group = np.where(rng.random(n) < 0.5, first[user], second[user])
    item = np.empty(n, dtype=np.int64)
    uniform = rng.random(n)
    own = rng.random(n) < spec.in_group
    for g in range(n_groups):
        where = np.flatnonzero(own & (group == g))
        picks = np.searchsorted(group_cdf[g], uniform[where], side="right")
        item[where] = members[g][np.minimum(picks, len(members[g]) - 1)]
    where = np.flatnonzero(~own)
    item[where] = np.minimum(np.searchsorted(global_cdf, uniform[where], side="right"), n_items - 1)

    # Sessions: a new one at each user's first event, else with probability p.
    starts_here = rng.random(n) < spec.new_session_p
    starts_here[np.concatenate(([0], np.cumsum(counts)[:-1]))] = True
    session = np.cumsum(starts_here) - 1
    n_sessions = int(session[-1]) + 1
    session_user = user[starts_here]
    start_ms = 1_700_000_000_000  # Nov 2023
    span_ms = 180 * 24 * 3600 * 1000
    begin = rng.integers(start_ms, start_ms + span_ms, n_sessions)
    begin = begin[np.lexsort((begin, session_user))]  # each user's sessions in time order
    gaps = rng.integers(20_000, 180_000, n)
    gaps[starts_here] = 0
    elapsed = np.cumsum(gaps)
    first_event = np.flatnonzero(starts_here)
    ts = begin[session] + elapsed - elapsed[first_event][session]

    roll = rng.random(n)
    etype = np.where(roll < 0.9, 2, np.where(roll < 0.97, 3, 4))  # view / add to cart / purchase
    dwell = np.where(etype == 2, rng.integers(1_000, 90_000, n), -1)
    return {
        "user": user,
        "item": item,
        "session": session,
        "ts": ts,
        "type": etype,
        "dwell": dwell,
        "session_begin": begin,
        "session_end": ts[np.concatenate((first_event[1:] - 1, [n - 1]))],
        "session_user": session_user,
    }


def _rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of this address
    space. ``ru_maxrss`` would be the same figure but for one thing: it survives
    ``exec``, so in a spawned child it can never be lower than the parent's RSS
    at the fork (it is kept in ``ru_maxrss_mib`` for reference). Elsewhere:
    ``ru_maxrss``."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return _ru_maxrss_mib()


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def _scale_generate(db_url: str, npz_path: str, spec: ScaleSpec) -> dict[str, Any]:
    """Child process: writes the log through the real store, then saves the
    training matrix (``build_interactions`` on ``store.item_events()``) for the
    bare fits."""
    import scipy.sparse as sp

    from sessionrec.events import EndReason, EventRecord, SessionRecord
    from sessionrec.store import open_store
    from training.data import build_interactions
    from training.weighting import EventWeights

    rss_start = _rss_mib()
    started = time.perf_counter()
    log = scale_log(spec)
    arrays_seconds = time.perf_counter() - started
    # Sessions in order of their start time, so the log grows forward in time.
    order = np.argsort(log["session_begin"], kind="stable")
    sizes = np.bincount(log["session"], minlength=len(order))
    offsets = np.concatenate(([0], np.cumsum(sizes)))  # events are grouped by session
    cuts = np.searchsorted(
        np.cumsum(sizes[order]), np.arange(spec.batch, len(log["user"]), spec.batch)
    )
    accepted = duplicates = calls = 0
    with open_store(db_url, synchronous="OFF") as store:
        write_started = time.perf_counter()
        for chunk in np.split(order, np.unique(cuts + 1)):
            if not len(chunk):
                continue
            idx = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in chunk.tolist()])
            events = [
                EventRecord(
                    event_id=f"e{i}",
                    session_id=f"s{s}",
                    user_id=f"u{u}",
                    type=t,
                    ts_ms=ts,
                    item_id=f"i{it}",
                    dwell_ms=d if d >= 0 else None,
                )
                for i, s, u, t, ts, it, d in zip(
                    idx.tolist(),
                    log["session"][idx].tolist(),
                    log["user"][idx].tolist(),
                    log["type"][idx].tolist(),
                    log["ts"][idx].tolist(),
                    log["item"][idx].tolist(),
                    log["dwell"][idx].tolist(),
                    strict=True,
                )
            ]
            sessions = [
                SessionRecord(
                    session_id=f"s{s}",
                    user_id=f"u{u}",
                    started_at_ms=b,
                    last_event_at_ms=e,
                    ended_at_ms=e,
                    end_reason=EndReason.TIMEOUT,
                )
                for s, u, b, e in zip(
                    chunk.tolist(),
                    log["session_user"][chunk].tolist(),
                    log["session_begin"][chunk].tolist(),
                    log["session_end"][chunk].tolist(),
                    strict=True,
                )
            ]
            result = store.append_events(events, sessions)
            accepted += result.accepted
            duplicates += result.duplicates
            calls += 1
        write_seconds = time.perf_counter() - write_started
        stored_events, stored_sessions = store.count_events(), store.count_sessions()
        generate_seconds = time.perf_counter() - started
        rss_generate = _rss_mib()
        matrix_started = time.perf_counter()
        matrix = build_interactions(store.item_events(), EventWeights()).matrix.tocsr()
        matrix_seconds = time.perf_counter() - matrix_started
    sp.save_npz(npz_path, matrix, compressed=False)
    db_path = Path(db_url.removeprefix("sqlite:///"))
    db_bytes = sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))
    return {
        "generate_seconds": round(generate_seconds, 3),
        "generate_arrays_seconds": round(arrays_seconds, 3),
        "store_write_seconds": round(write_seconds, 3),
        "append_events_calls": calls,
        "accepted": accepted,
        "duplicates": duplicates,
        "stored_events": stored_events,
        "stored_sessions": stored_sessions,
        "db_mib": round(db_bytes / 2**20, 1),
        "matrix_build_seconds": round(matrix_seconds, 3),
        "users": matrix.shape[0],
        "items": matrix.shape[1],
        "interactions": int(matrix.nnz),
        "peak_rss_mib_start": rss_start,
        "peak_rss_mib_generate": rss_generate,
        "peak_rss_mib": _rss_mib(),
        "ru_maxrss_mib": _ru_maxrss_mib(),
    }


def _scale_train(db_url: str, models_dir: str) -> dict[str, Any]:
    """Child process: one ``training.pipeline.train(store, models_dir, "als")``."""
    from sessionrec.store import open_store
    from training.pipeline import train

    with open_store(db_url) as store:
        rss_before = _rss_mib()
        started = time.perf_counter()
        # Like with like: the bare fit builds no session models (their cost is
        # measured on the serving dataset, see bench_train's session_seconds).
        artifact = train(store, models_dir, "als", session_model=False)
        wall = time.perf_counter() - started
    return {
        "wall_seconds": round(wall, 3),
        "load_seconds": artifact.meta["load_seconds"],
        "fit_seconds": artifact.meta["fit_seconds"],
        "save_seconds": round(
            wall - artifact.meta["load_seconds"] - artifact.meta["fit_seconds"], 3
        ),
        "version": artifact.version,
        "params": artifact.params,
        "users": artifact.meta["users"],
        "items": artifact.meta["items"],
        "interactions": artifact.meta["interactions"],
        "peak_rss_mib_before": rss_before,
        "peak_rss_mib": _rss_mib(),
        "ru_maxrss_mib": _ru_maxrss_mib(),
    }


def _scale_bare(npz_path: str) -> dict[str, Any]:
    """Child process: one bare ``implicit`` ALS fit (the model's defaults, BLAS at
    1 thread as the model does) on the saved matrix."""
    import scipy.sparse as sp

    matrix = sp.load_npz(npz_path).tocsr()
    rss_before = _rss_mib()
    fit = bare_als_fit_seconds(matrix)
    from training.models import ALGORITHMS

    return {
        "fit_seconds": round(fit, 3),
        "params": dict(ALGORITHMS["als"].defaults),
        "peak_rss_mib_before": rss_before,
        "peak_rss_mib": _rss_mib(),
        "ru_maxrss_mib": _ru_maxrss_mib(),
    }


def bench_train_scale(tmp: Path, spec: ScaleSpec) -> dict[str, Any]:
    """Generates the large log into a fresh SQLite file, then alternates bare fit /
    pipeline train, each in a fresh process (so its peak RSS is its own)."""
    from concurrent.futures import ProcessPoolExecutor

    tmp.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{tmp / 'scale.db'}"
    npz_path = str(tmp / "scale-matrix.npz")
    models_dir = str(tmp / "models")

    def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(fn, *args).result()

    say(
        f"[bench]   generating {spec.events:,} events ({spec.users:,} users, "
        f"{spec.items:,} items) into {tmp / 'scale.db'} (synchronous=OFF) ..."
    )
    generated = in_child(_scale_generate, db_url, npz_path, spec)
    say(
        f"[bench]   generated in {generated['generate_seconds']:.1f} s: "
        f"{generated['users']:,} x {generated['items']:,}, "
        f"{generated['interactions']:,} interactions"
    )
    if generated["stored_events"] != spec.events or generated["duplicates"]:
        raise BenchError(
            f"scale: stored {generated['stored_events']} events of {spec.events} "
            f"({generated['duplicates']} duplicates)"
        )
    bare: list[dict[str, Any]] = []
    pipeline: list[dict[str, Any]] = []
    for r in range(spec.repeats):
        bare.append(in_child(_scale_bare, npz_path))
        say(f"[bench]   repeat {r + 1}/{spec.repeats}: bare fit {bare[-1]['fit_seconds']:.2f} s")
        pipeline.append(in_child(_scale_train, db_url, models_dir))
        run_ = pipeline[-1]
        say(
            f"[bench]   repeat {r + 1}/{spec.repeats}: train {run_['wall_seconds']:.2f} s "
            f"(load {run_['load_seconds']:.2f} s, fit {run_['fit_seconds']:.2f} s)"
        )
    first = pipeline[0]
    if (first["users"], first["items"], first["interactions"]) != (
        generated["users"],
        generated["items"],
        generated["interactions"],
    ):
        raise BenchError("scale: the pipeline trained on a different matrix than the bare fit")
    train_median = median_of(pipeline, "wall_seconds")
    bare_median = median_of(bare, "fit_seconds")
    return {
        "spec": dataclasses.asdict(spec),
        "generation": generated,
        "users": first["users"],
        "items": first["items"],
        "interactions": first["interactions"],
        "params": first["params"],
        "repeats": spec.repeats,
        "order": "interleaved: bare, train, bare, train, ... (each in a fresh process)",
        "pipeline_wall_seconds": train_median,
        "pipeline_load_seconds": median_of(pipeline, "load_seconds"),
        "pipeline_fit_seconds": median_of(pipeline, "fit_seconds"),
        "pipeline_save_seconds": median_of(pipeline, "save_seconds"),
        "bare_implicit_fit_seconds": bare_median,
        "ratio_train_to_bare": round(train_median / bare_median, 2),
        "target_ratio": 2.0,
        "pipeline_peak_rss_mib": max(r["peak_rss_mib"] for r in pipeline),
        "pipeline_rss_before_mib": max(r["peak_rss_mib_before"] for r in pipeline),
        "bare_peak_rss_mib": max(r["peak_rss_mib"] for r in bare),
        "bare_rss_before_mib": max(r["peak_rss_mib_before"] for r in bare),
        "runs": pipeline,
        "bare_runs": bare,
    }


# ------------------------------------------------------------------- server
def _server_main(overrides: dict[str, Any], conn: Any) -> None:
    """Child process: run the real server until the parent says stop."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    from service.server import create_server
    from sessionrec.config import Config

    try:
        running, port = create_server(Config.load(overrides, env={}))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    loaded = running.models.current
    conn.send(("ready", port, loaded.artifact.version if loaded else "", os.getpid()))
    with contextlib.suppress(EOFError):
        conn.recv()
    running.stop(grace=2.0)


@contextlib.contextmanager
def server_process(overrides: dict[str, Any]) -> Iterator[tuple[int, str, int]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(overrides, child), name="sessionrec-server")
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.25):
            if not proc.is_alive():
                raise BenchError(f"server: process exited ({proc.exitcode}) before it was ready")
            if time.monotonic() > deadline:
                raise BenchError("server: did not start within 120 s")
        message = parent.recv()
        if message[0] != "ready":
            raise BenchError(f"server: failed to start: {message[1]}")
        yield message[1], message[2], message[3]
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


@dataclass
class Stubs:
    sessions: pb_grpc.SessionServiceStub
    recs: pb_grpc.RecommendationServiceStub
    admin: pb_grpc.AdminServiceStub
    offers: pb_grpc.OfferServiceStub


def start_live_session(
    stubs: Stubs,
    user: str,
    items: Sequence[str],
    rng: random.Random,
    tag: str,
    n_views: int | None = None,
) -> str:
    """Opens a session for ``user`` with ``n_views`` fresh ITEM_VIEWs (3-10 when None)."""
    sid = rpc(
        stubs.sessions.StartSession,
        pb.StartSessionRequest(user_id=user, platform=pb.WEB, app_version="bench"),
        "StartSession",
    ).session_id
    views = [
        pb.Event(
            event_id=f"{tag}-{j}",
            session_id=sid,
            type=pb.ITEM_VIEW,
            item_id=rng.choice(items),
            dwell_ms=rng.randint(2_000, 60_000),
        )
        for j in range(n_views if n_views is not None else rng.randint(3, 10))
    ]
    resp = rpc(stubs.sessions.TrackEvents, pb.TrackEventsRequest(events=views), "TrackEvents")
    check_track(resp, len(views), "TrackEvents (session set-up)")
    return sid


# ------------------------------------------------------------ recommend
def bench_sequential(
    stubs: Stubs, users: Sequence[str], items: Sequence[str], calls: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    with_session: list[float] = []
    without: list[float] = []
    strategies: Counter[str] = Counter()
    for i in range(calls):
        user = rng.choice(users)
        sid = ""
        if i % 2 == 0:  # issue 4: a 10-event live session against none
            sid = start_live_session(stubs, user, items, rng, f"seq{seed}-{i}", n_views=10)
        request = pb.RecommendRequest(user_id=user, session_id=sid, n=10)
        started = time.perf_counter()
        resp = rpc(stubs.recs.Recommend, request, "Recommend")
        elapsed = time.perf_counter() - started
        (with_session if sid else without).append(elapsed)
        strategies[resp.strategy] += 1
        if len(resp.items) != 10:
            raise BenchError(f"Recommend: {len(resp.items)} items for {user!r}, expected 10")
        if sid:
            rpc(stubs.sessions.EndSession, pb.EndSessionRequest(session_id=sid), "EndSession")
    return {
        **latency_summary(with_session + without),
        "with_session": latency_summary(with_session),
        "without_session": latency_summary(without),
        "strategies": dict(strategies),
    }


def bench_offers(
    stubs: Stubs, users: Sequence[str], items: Sequence[str], calls: int, seed: int
) -> dict[str, Any]:
    """GetOffers (n=3, impressions recorded) and Recommend (n=10) for the same
    users, interleaved, one at a time. 20 offers: 15 on a few items each, 5 on
    the whole catalog, no caps (every call passes every offer to ranking)."""
    rng = random.Random(seed)
    offers = [
        pb.Offer(
            offer_id=f"bench-{k}",
            kind=pb.PERCENT_OFF,
            value=float(5 + k),
            combinable=True,
            target=pb.OfferTarget(whole_catalog=True)
            if k >= 15
            else pb.OfferTarget(item_ids=rng.sample(list(items), 5)),
        )
        for k in range(20)
    ]
    rpc(stubs.offers.UpsertOffers, pb.UpsertOffersRequest(offers=offers), "UpsertOffers")
    got: list[float] = []
    rec: list[float] = []
    for _ in range(calls):
        user = rng.choice(users)
        started = time.perf_counter()
        reply = rpc(stubs.offers.GetOffers, pb.GetOffersRequest(user_id=user, n=3), "GetOffers")
        got.append(time.perf_counter() - started)
        if len(reply.offers) != 3 and not reply.holdout:
            raise BenchError(f"GetOffers: {len(reply.offers)} offers for {user!r}, expected 3")
        started = time.perf_counter()
        rpc(stubs.recs.Recommend, pb.RecommendRequest(user_id=user, n=10), "Recommend")
        rec.append(time.perf_counter() - started)
    return {
        "get_offers": latency_summary(got),
        "recommend": latency_summary(rec),
        "offers_defined": len(offers),
    }


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_window(
    call: Any, requests: Sequence[Any], window: int
) -> tuple[float, list[float], list[BaseException]]:
    """Sends ``requests`` through ``call`` (a unary-unary multi-callable, via its
    ``future``) with at most ``window`` in flight, from this one thread."""
    slots = threading.Semaphore(window)
    latencies: list[float] = []
    errors: list[BaseException] = []

    def send(request: Any) -> None:
        slots.acquire()
        started = time.perf_counter()
        future = call.future(request, timeout=RPC_TIMEOUT_S)

        def done(f: Any, started: float = started) -> None:
            try:
                exc = f.exception()
                if exc is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors.append(exc)
            except BaseException as exc:  # cancelled
                errors.append(exc)
            finally:
                slots.release()

        future.add_done_callback(done)

    started = time.perf_counter()
    for request in requests:
        send(request)
        if errors:
            break
    for _ in range(window):
        slots.acquire()
    return time.perf_counter() - started, latencies, errors


def bench_concurrent(
    stubs: Stubs,
    users: Sequence[str],
    items: Sequence[str],
    requests: int,
    window: int,
    seed: int,
    server_pid: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    # A pool of open live sessions (each with 3-10 fresh views) for half the requests.
    pool = []
    for k in range(128):
        user = rng.choice(users)
        pool.append((user, start_live_session(stubs, user, items, rng, f"conc{seed}-{k}")))

    def make(count: int) -> list[pb.RecommendRequest]:
        out = []
        for i in range(count):
            if i % 2 == 0:
                user, sid = rng.choice(pool)
                out.append(pb.RecommendRequest(user_id=user, session_id=sid, n=10))
            else:
                out.append(pb.RecommendRequest(user_id=rng.choice(users), n=10))
        return out

    run_window(stubs.recs.Recommend, make(min(300, requests)), window)  # warm-up
    batch = make(requests)
    server_before = process_cpu_seconds(server_pid)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed, latencies, errors = run_window(stubs.recs.Recommend, batch, window)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    server_after = process_cpu_seconds(server_pid)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    if errors:
        first = errors[0]
        detail = (
            f"{first.code().name}: {first.details()}" if isinstance(first, grpc.RpcError) else first
        )
        raise BenchError(f"Recommend (concurrent): {len(errors)} failed calls; first: {detail}")
    for _, sid in pool:
        rpc(stubs.sessions.EndSession, pb.EndSessionRequest(session_id=sid), "EndSession")
    return {
        "requests": len(latencies),
        "in_flight": window,
        "client_threads": 1,
        # CPU the client process used per wall second (1.0 = one full core): well
        # below 1 means the server, not the load generator, set the pace.
        "client_cpu_cores": round(client_cpu / elapsed, 2),
        "server_cpu_cores": (
            round((server_after - server_before) / elapsed, 2)
            if server_before is not None and server_after is not None
            else None
        ),
        "seconds": round(elapsed, 3),
        "qps": round(len(latencies) / elapsed, 1),
        **latency_summary(latencies),
    }


# ------------------------------------------------------------------ ingest
def bench_track(
    stubs: Stubs, items: Sequence[str], calls: int, batch: int, window: int, seed: int
) -> dict[str, Any]:
    tag = f"ingest{seed}w{window}"
    sessions = []
    for k in range(20):
        user = f"{tag}-user{k}"
        sid = rpc(
            stubs.sessions.StartSession,
            pb.StartSessionRequest(user_id=user, platform=pb.ANDROID, app_version="bench"),
            "StartSession",
        ).session_id
        sessions.append(sid)
    generate = {"seed": seed, "items": list(items), "sessions": sessions}
    generate.update(batch=batch, tag=tag, calls=calls)
    requests = [pb.TrackEventsRequest.FromString(data) for data in track_requests(generate)]

    if window == 1:
        latencies = []
        started = time.perf_counter()
        for request in requests:
            t0 = time.perf_counter()
            resp = rpc(stubs.sessions.TrackEvents, request, "TrackEvents")
            latencies.append(time.perf_counter() - t0)
            check_track(resp, batch, "TrackEvents")
        elapsed = time.perf_counter() - started
    else:
        elapsed, latencies, errors = run_window(stubs.sessions.TrackEvents, requests, window)
        if errors:
            raise BenchError(f"TrackEvents (concurrent): {len(errors)} failed calls: {errors[0]}")
    for sid in sessions:
        ended = rpc(stubs.sessions.EndSession, pb.EndSessionRequest(session_id=sid), "EndSession")
        if ended.event_count == 0:
            raise BenchError(f"EndSession: session {sid} has no events")
    events_sent = calls * batch
    return {
        "calls": calls,
        "events_per_call": batch,
        "in_flight": window,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events_sent / elapsed),
        "calls_per_s": round(calls / elapsed, 1),
        **latency_summary(latencies),
    }


def bench_stream(stubs: Stubs, items: Sequence[str], events: int) -> dict[str, Any]:
    """StreamEvents with one event per request (the hardest case for ingestion):
    events/s from the first request to the last ack, every ack checked."""
    sid = rpc(
        stubs.sessions.StartSession, pb.StartSessionRequest(user_id="stream-user"), "StartSession"
    ).session_id
    rng = random.Random(7)
    requests = [
        pb.TrackEventsRequest(
            events=[
                pb.Event(
                    session_id=sid,
                    event_id=f"stream-{k}",
                    type=pb.ITEM_VIEW,
                    item_id=rng.choice(items),
                )
            ]
        )
        for k in range(events)
    ]
    started = time.perf_counter()
    try:
        # The acks of requests committed together come in one message.
        acks = [
            ack
            for message in stubs.sessions.StreamEvents(iter(requests), timeout=300)
            for ack in message.acks
        ]
    except grpc.RpcError as exc:
        raise BenchError(f"StreamEvents: {exc.code().name}: {exc.details()}") from exc
    elapsed = time.perf_counter() - started
    accepted = sum(a.accepted for a in acks)
    if len(acks) != events or accepted != events:
        raise BenchError(f"StreamEvents: {len(acks)} acks, {accepted} accepted of {events}")
    return {
        "events": events,
        "events_per_request": 1,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
    }


# ------------------------------------------------------------------ report
def fmt_lat(d: dict[str, Any], keys: Sequence[str] = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")):
    return " / ".join(f"{d[k]:.2f}" for k in keys) + " ms"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"## sessionrec benchmark ({results['profile']})",
        "",
        f"- machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}",
        f"- versions: Python {m['python']}, grpcio {m['grpcio']}, implicit {m['implicit']}, "
        f"numpy {m['numpy']}, scipy {m['scipy']}",
    ]
    rows: list[str] = []
    if "train" in results:
        ds = results["dataset"]
        imp = results["import"]
        tr = results["train"]
        seq = results["recommend_sequential"]
        server = results["server"]
        lines += [
            f"- dataset: {ds['name']}: {imp['rows']:,} events, {tr['users']:,} users, "
            f"{tr['items']:,} items",
            f"- server: real gRPC server in a separate process on 127.0.0.1 "
            f"({server['workers']} workers, SQLite synchronous={server['sqlite_synchronous']}, "
            f"model {server['model_version']}); client: this process",
        ]
        rows += [
            f"| Import CSV -> fresh SQLite | {imp['rows']:,} rows, {imp['sessions']:,} sessions "
            f"| {imp['import_seconds']:.2f} s ({imp['rows_per_s']:,} rows/s) |",
            f"| Train ALS (`training.pipeline.train`) | load + fit + save, median of "
            f"{tr['repeats']} | {tr['pipeline_wall_seconds']:.2f} s (load "
            f"{tr['pipeline_load_seconds']:.2f} s, fit {tr['pipeline_fit_seconds']:.2f} s, "
            f"session models {tr['pipeline_session_seconds']:.2f} s) |",
            f"| Bare `implicit` ALS fit, same matrix | fit, median of {tr['repeats']} "
            f"| {tr['bare_implicit_fit_seconds']:.2f} s |",
            f"| Recommend n=10, sequential | p50 / p90 / p99 / mean, median of "
            f"{seq['repeats']} x {seq['runs'][0]['n']:,} calls | {fmt_lat(seq['median'])} |",
            f"| ... with a live session (10 fresh views) | p50 / p90 / p99 / mean "
            f"| {fmt_lat(seq['median_with_session'])} |",
            f"| ... without a session | p50 / p90 / p99 / mean "
            f"| {fmt_lat(seq['median_without_session'])} |",
            f"| ... p99 with session / p99 without | median of per-repeat ratios "
            f"| {seq['p99_ratio_session_vs_none']:.2f} |",
            f"| GetOffers n=3 ({results['offers']['offers_defined']} offers), sequential, "
            f"interleaved with Recommend | p50 / p90 / p99 / mean "
            f"| {fmt_lat(results['offers']['get_offers'])} |",
            f"| ... Recommend n=10 in the same loop | p50 / p90 / p99 / mean "
            f"| {fmt_lat(results['offers']['recommend'])} |",
            f"| ... p99 GetOffers / p99 Recommend | median of per-repeat ratios "
            f"| {results['offers']['p99_ratio_offers_vs_recommend']:.2f} |",
        ]
    if "recommend_concurrent" in results:
        conc = results["recommend_concurrent"]
        rows += [
            f"| Recommend n=10, {conc['in_flight']} in flight | QPS over {conc['requests']:,} "
            f"requests | {conc['qps']:,.0f} req/s |",
            f"| ... | p50 / p99 | {fmt_lat(conc, ('p50_ms', 'p99_ms'))} |",
            f"| ... | CPU cores busy: client / server | {conc['client_cpu_cores']} / "
            f"{conc['server_cpu_cores'] if conc['server_cpu_cores'] is not None else 'n/a'} |",
        ]
    if "track_events" in results:
        for t in results["track_events"]:
            label = "sequential" if t["in_flight"] == 1 else f"{t['in_flight']} in flight"
            rows.append(
                f"| TrackEvents, {t['events_per_call']} events/call, {label} | events/s over "
                f"{t['calls']} calls (call p50 / p99) | {t['events_per_s']:,} events/s "
                f"({fmt_lat(t, ('p50_ms', 'p99_ms'))}) |"
            )
    if "stream_events" in results:
        st = results["stream_events"]
        rows.append(
            f"| StreamEvents, 1 event/request, one stream | events/s over {st['events']:,} "
            f"requests (acks after group commits) | {st['events_per_s']:,} events/s |"
        )
    if "train_scale" in results:
        sc = results["train_scale"]
        gen = sc["generation"]
        n = sc["repeats"]
        lines.append(
            f"- training at scale: synthetic log, {gen['stored_events']:,} events, "
            f"{sc['users']:,} users x {sc['items']:,} items ({sc['interactions']:,} "
            f"interactions), {gen['stored_sessions']:,} sessions; bare fit and train "
            f"interleaved, each in a fresh process"
        )
        rows += [
            f"| Scale: generate log -> fresh SQLite (`append_events`, synchronous=OFF) "
            f"| {gen['stored_events']:,} events in {gen['append_events_calls']} calls "
            f"| {gen['generate_seconds']:.2f} s ({gen['db_mib']:,.0f} MiB, "
            f"peak RSS {gen['peak_rss_mib_generate']:,.0f} MiB) |",
            f"| Scale: train ALS (`training.pipeline.train`) | load + fit + save, median of "
            f"{n} | {sc['pipeline_wall_seconds']:.2f} s (load {sc['pipeline_load_seconds']:.2f} s, "
            f"fit {sc['pipeline_fit_seconds']:.2f} s, save {sc['pipeline_save_seconds']:.2f} s) |",
            f"| Scale: bare `implicit` ALS fit, same matrix | fit, median of {n} "
            f"| {sc['bare_implicit_fit_seconds']:.2f} s |",
            f"| Scale: train / bare fit | ratio of medians (target <= "
            f"{sc['target_ratio']:g}x, not asserted) | {sc['ratio_train_to_bare']:.2f}x |",
            f"| Scale: peak RSS (VmHWM, ~ru_maxrss) | train process / bare-fit process "
            f"(before the call: {sc['pipeline_rss_before_mib']:,.0f} / "
            f"{sc['bare_rss_before_mib']:,.0f}) | {sc['pipeline_peak_rss_mib']:,.0f} / "
            f"{sc['bare_peak_rss_mib']:,.0f} MiB |",
        ]
    if rows:
        lines += ["", "| Benchmark | Measure | Result |", "|---|---|---|", *rows]
    if "analytics" in results:
        lines += analytics_markdown(results["analytics"])
    if "soak" in results:
        lines += soak_markdown(results["soak"])
    if "serving" in results:
        lines += serving_markdown(results["serving"])
    if "ann" in results and _ANN is not None:
        lines += _ANN.markdown_lines(results["ann"])
    if "replicas" in results:
        lines += replicas_markdown(results["replicas"])
    lines += ["", f"total benchmark time: {results['total_seconds']:.1f} s"]
    return "\n".join(lines)


def median_latency(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
    return {k: median_of(runs, k) for k in keys}


def run_service(
    args: argparse.Namespace,
    profile: Profile,
    tmp: Path,
    results: dict[str, Any],
    phase: Callable[[str], contextlib.AbstractContextManager[None]],
    superseded: bool = False,
) -> None:
    """Import, train and the served benchmarks (the server in a separate process).
    ``superseded``: leave out concurrent Recommend and ingestion (the serving
    section measures them)."""
    from sessionrec.config import Config

    db_url = f"sqlite:///{tmp / 'bench.db'}"
    models_dir = tmp / "models"
    config = Config.load(
        {
            "db_url": db_url,
            "models_dir": str(models_dir),
            "host": "127.0.0.1",
            "port": 0,
            "model_poll_interval_s": 0.0,
        }
    )
    csv_path, results["dataset"] = prepare_dataset(tmp, Path(args.movielens), args.synthetic)
    say(f"[bench] dataset: {results['dataset']['name']} ({results['dataset']['rows']} rows)")

    with phase("import"):
        results["import"] = bench_import(db_url, csv_path, config.sqlite_synchronous)
    with phase("train"):
        train = bench_train(db_url, models_dir, profile.train_repeats, config.sqlite_synchronous)
    users, items = train.pop("_users"), train.pop("_items")
    results["train"] = train

    say("[bench] starting the server (separate process) ...")
    with server_process(dataclasses.asdict(config)) as (port, version, server_pid):
        if version != train["version"]:
            raise BenchError(f"server: serving {version!r}, expected {train['version']!r}")
        results["server"] = {
            "address": f"127.0.0.1:{port}",
            "process": "separate (multiprocessing spawn)",
            "workers": config.workers,
            "sqlite_synchronous": config.sqlite_synchronous,
            "history_limit": config.history_limit,
            "model_version": version,
        }
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stubs = Stubs(
            pb_grpc.SessionServiceStub(channel),
            pb_grpc.RecommendationServiceStub(channel),
            pb_grpc.AdminServiceStub(channel),
            pb_grpc.OfferServiceStub(channel),
        )
        info = rpc(stubs.admin.GetModelInfo, pb.GetModelInfoRequest(), "GetModelInfo")
        if info.version != version:
            raise BenchError(f"GetModelInfo: {info.version!r}, expected {version!r}")

        with phase("recommend sequential"):
            # Warm-up (connection, code paths, SQLite page cache): not measured.
            bench_sequential(stubs, users, items, 100, seed=args.seed + 999)
            runs = []
            for r in range(profile.seq_repeats):
                say(f"[bench]   repeat {r + 1}/{profile.seq_repeats}")
                runs.append(bench_sequential(stubs, users, items, profile.seq_calls, args.seed + r))
        results["recommend_sequential"] = {
            "repeats": profile.seq_repeats,
            "median": median_latency(runs),
            "median_with_session": median_latency([r["with_session"] for r in runs]),
            "median_without_session": median_latency([r["without_session"] for r in runs]),
            # issue 4: p99 with a 10-event live session over p99 without (target <= 2)
            "p99_ratio_session_vs_none": round(
                statistics.median(
                    r["with_session"]["p99_ms"] / r["without_session"]["p99_ms"] for r in runs
                ),
                3,
            ),
            "runs": runs,
        }
        with phase("offers vs recommend"):
            bench_offers(stubs, users, items, 100, seed=args.seed + 998)  # warm-up
            offer_runs = [
                bench_offers(stubs, users, items, profile.seq_calls // 2, args.seed + 50 + r)
                for r in range(profile.seq_repeats)
            ]
        results["offers"] = {
            "repeats": profile.seq_repeats,
            "get_offers": median_latency([r["get_offers"] for r in offer_runs]),
            "recommend": median_latency([r["recommend"] for r in offer_runs]),
            # issue 5: GetOffers p99 over Recommend p99, interleaved (target <= 2)
            "p99_ratio_offers_vs_recommend": round(
                statistics.median(
                    r["get_offers"]["p99_ms"] / r["recommend"]["p99_ms"] for r in offer_runs
                ),
                3,
            ),
            "offers_defined": offer_runs[0]["offers_defined"],
        }
        if superseded:
            # The serving section (bench/serving.py) measures these against their
            # ceilings; they run here only without it.
            channel.close()
            return
        with phase("recommend concurrent"):
            results["recommend_concurrent"] = bench_concurrent(
                stubs,
                users,
                items,
                profile.conc_requests,
                profile.conc_window,
                args.seed + 100,
                server_pid,
            )
        results["track_events"] = []
        for window in (1, 4):
            with phase(f"track events, {window} in flight"):
                results["track_events"].append(
                    bench_track(
                        stubs,
                        items,
                        profile.track_calls,
                        profile.track_batch,
                        window,
                        args.seed + 200 + window,
                    )
                )
        with phase("stream events, one per request"):
            results["stream_events"] = bench_stream(stubs, items, 10 * profile.track_calls)
        channel.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = PROFILES["quick" if args.quick else "default"]
    # The default run includes the training-at-scale section (about 1-1.5 min);
    # --quick only with --scale, and --no-scale leaves it out.
    scale = args.scale_only or args.scale or not (args.quick or args.no_scale)
    scale = scale and not args.analytics_only
    # The session analytics section (about 1.5 min): in the default run, not with --quick.
    analytics = args.analytics_only or not (args.quick or args.no_analytics or args.scale_only)
    # The soak (issue 7, --soak-seconds, 2 min by default): in the default run, or alone.
    soak = args.soak_only or not (
        args.quick or args.no_soak or args.scale_only or args.analytics_only
    )
    analytics = analytics and not args.soak_only
    scale = scale and not args.soak_only
    # Serving against its ceiling (issue 8, about 5 min; smaller with --quick).
    serving = args.serving_only or not (
        args.no_serving or args.scale_only or args.analytics_only or args.soak_only
    )
    # Approximate nearest neighbours (bench/ann.py): only when asked for (minutes).
    ann = args.ann or args.ann_only
    scale = scale and not (args.serving_only or args.ann_only)
    analytics = analytics and not (args.serving_only or args.ann_only)
    soak = soak and not (args.serving_only or args.ann_only)
    serving = serving and not args.ann_only
    # Replicas on one PostgreSQL (about 2-3 min): in the default run, or alone.
    replicas = args.replicas_only or not (
        args.quick
        or args.no_replicas
        or args.scale_only
        or args.analytics_only
        or args.soak_only
        or args.serving_only
        or args.ann_only
    )
    if args.replicas_only:
        scale = analytics = soak = serving = ann = False
    started = time.perf_counter()
    if args.replicas_only:
        name = "replicas on PostgreSQL only"
    elif args.ann_only:
        name = "approximate nearest neighbours only" + (" (quick)" if args.quick else "")
    elif args.serving_only:
        name = "serving only" + (" (quick)" if args.quick else "")
    elif args.soak_only:
        name = "soak only"
    elif args.analytics_only:
        name = "session analytics at scale only"
    elif args.scale_only:
        name = "training at scale only"
    elif args.quick:
        name = profile.name + (" + training at scale" if scale else "")
    else:
        name = profile.name + ("" if scale else " without training at scale")
    results: dict[str, Any] = {
        "profile": name,
        "machine": machine_info(),
    }
    phases: dict[str, float] = {}
    results["phase_seconds"] = phases

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        say(f"[bench] {name} ...")
        t0 = time.perf_counter()
        yield
        phases[name] = round(time.perf_counter() - t0, 2)

    with tempfile.TemporaryDirectory(prefix="sessionrec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"[bench] profile {name}; scratch {tmp}")
        only = (
            args.scale_only
            or args.analytics_only
            or args.soak_only
            or args.serving_only
            or args.ann_only
            or args.replicas_only
        )
        if not only:
            run_service(args, profile, tmp, results, phase, superseded=serving)
        if scale:
            spec = dataclasses.replace(ScaleSpec(), events=args.scale_events)
            with phase("training at scale"):
                results["train_scale"] = bench_train_scale(tmp / "scale", spec)
        if serving:
            vspec = serving_spec(args)
            # The scale section's store holds the same log when the sizes agree.
            reuse = (
                tmp / "scale" / "scale.db" if scale and args.scale_events == vspec.events else None
            )
            with phase("serving vs ceiling"):
                results["serving"] = bench_serving(tmp / "serving", vspec, reuse_db=reuse)
        if ann:
            with phase("approximate nearest neighbours"):
                results["ann"] = run_ann(args)
        if analytics:
            aspec = dataclasses.replace(AnalyticsSpec(), events=args.analytics_events)
            with phase("session analytics at scale"):
                results["analytics"] = bench_analytics(tmp / "analytics", aspec)
        if soak:
            sspec = dataclasses.replace(SoakSpec(), seconds=args.soak_seconds)
            with phase("soak"):
                results["soak"] = bench_soak(tmp / "soak", sspec)
        if replicas:
            with phase("replicas on PostgreSQL"):
                results["replicas"] = bench_replicas(tmp / "replicas", ReplicasSpec())
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def run_ann(args: argparse.Namespace) -> dict[str, Any]:
    """The ANN section (``bench.ann``): ``AnnSpec()``, or its ``QUICK`` with --quick."""
    assert _ANN is not None
    spec = _ANN.QUICK if args.quick else _ANN.AnnSpec()
    return dict(_ANN.bench_ann(spec))


def serving_spec(args: argparse.Namespace) -> ServingSpec:
    """The serving section's spec from the command line (``--quick``: smaller)."""
    spec = SERVING_QUICK if args.quick else ServingSpec()
    changes: dict[str, Any] = {}
    if args.server_processes is not None:
        changes["server_processes"] = args.server_processes
    if args.ceiling_processes:
        changes["ceiling_processes"] = tuple(args.ceiling_processes)
    if args.serving_events is not None:
        changes["events"] = args.serving_events
    if args.client_processes is not None:
        changes["client_processes"] = args.client_processes
    if args.workers is not None:
        changes["workers"] = args.workers
    if args.history_cache_mb is not None:
        changes["history_cache_mb"] = args.history_cache_mb
    return dataclasses.replace(spec, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    from training.datasets import MOVIELENS_100K

    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller run (about 3 min: no training or analytics at scale, no soak, "
        "no replicas, a smaller serving section)",
    )
    parser.add_argument("--out", default="bench/results.json", help="JSON results file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--movielens", default=str(MOVIELENS_100K), help="MovieLens 100K u.data file"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="use the synthetic log even if MovieLens exists"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="with --quick: add the training-at-scale section (in the default run already)",
    )
    parser.add_argument(
        "--no-scale", action="store_true", help="leave out the training-at-scale section"
    )
    parser.add_argument(
        "--scale-only", action="store_true", help="run only the training-at-scale section"
    )
    parser.add_argument(
        "--no-analytics",
        action="store_true",
        help="leave out the session-analytics-at-scale section (in the default run)",
    )
    parser.add_argument(
        "--analytics-only", action="store_true", help="run only the session analytics section"
    )
    parser.add_argument(
        "--analytics-events",
        type=int,
        default=AnalyticsSpec.events,
        help=f"events in the session analytics log (default {AnalyticsSpec.events:,})",
    )
    parser.add_argument("--no-soak", action="store_true", help="leave out the soak section")
    parser.add_argument("--soak-only", action="store_true", help="run only the soak section")
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=SoakSpec.seconds,
        help=f"length of the soak (default {SoakSpec.seconds:.0f} s, at least 60)",
    )
    parser.add_argument(
        "--scale-events",
        type=int,
        default=ScaleSpec.events,
        help=f"events in the training-at-scale log (default {ScaleSpec.events:,})",
    )
    parser.add_argument(
        "--serving-only", action="store_true", help="run only the serving-vs-ceiling section"
    )
    parser.add_argument(
        "--no-serving", action="store_true", help="leave out the serving-vs-ceiling section"
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=None,
        metavar="N",
        help="serving: pass processes=N to the real server (default: not passed, i.e. 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="serving: request threads per process, of the real server and the ceiling "
        "(default: the server's default)",
    )
    parser.add_argument(
        "--history-cache-mb",
        type=int,
        default=None,
        metavar="N",
        help="serving: the real server's history_cache_mb (default: the server's default; "
        "0: every call does all the work of its history)",
    )
    parser.add_argument(
        "--ceiling-processes",
        type=int,
        action="append",
        metavar="N",
        help="serving: ceiling process count (repeatable; default: 1 and 2, --quick: 1)",
    )
    parser.add_argument(
        "--serving-events",
        type=int,
        default=None,
        metavar="N",
        help=f"serving: events in the log (default {ServingSpec.events:,}, "
        f"--quick {SERVING_QUICK.events:,}; 50,000 users x 20,000 items)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=None,
        metavar="N",
        help=f"serving: load-generator processes (default {ServingSpec.client_processes})",
    )
    parser.add_argument(
        "--ann",
        action="store_true",
        help="add the approximate-nearest-neighbours section (bench/ann.py; several "
        "minutes, not in the default run)",
    )
    parser.add_argument("--ann-only", action="store_true", help="run only the ANN section")
    parser.add_argument(
        "--replicas-only",
        action="store_true",
        help="run only the replicas-on-PostgreSQL section (about 2-3 min)",
    )
    parser.add_argument(
        "--no-replicas",
        action="store_true",
        help="leave out the replicas-on-PostgreSQL section (in the default run)",
    )
    args = parser.parse_args(argv)
    if (args.ann or args.ann_only) and _ANN is None:
        parser.error("--ann, --ann-only: bench/ann.py is not there")
    if args.ann_only and (
        args.serving_only or args.scale_only or args.analytics_only or args.soak_only
    ):
        parser.error("--ann-only excludes the other --*-only flags")
    if args.replicas_only and (
        args.no_replicas
        or args.ann_only
        or args.serving_only
        or args.scale_only
        or args.analytics_only
        or args.soak_only
    ):
        parser.error("--replicas-only excludes --no-replicas and the other --*-only flags")
    if args.serving_only and (
        args.no_serving or args.scale_only or args.analytics_only or args.soak_only
    ):
        parser.error("--serving-only excludes --no-serving and the other --*-only flags")
    for flag in ("server_processes", "client_processes"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')}: at least 1")
    if args.ceiling_processes and min(args.ceiling_processes) < 1:
        parser.error("--ceiling-processes: at least 1")
    if args.serving_events is not None and args.serving_events < 2 * ScaleSpec.users:
        parser.error(f"--serving-events: at least {2 * ScaleSpec.users:,} (2 per user)")
    if args.scale_only and args.no_scale:
        parser.error("--scale-only and --no-scale exclude each other")
    if args.analytics_only and (args.no_analytics or args.scale_only):
        parser.error("--analytics-only excludes --no-analytics and --scale-only")
    if args.soak_only and (args.no_soak or args.scale_only or args.analytics_only):
        parser.error("--soak-only excludes --no-soak, --scale-only and --analytics-only")
    if args.soak_seconds < 60:
        parser.error("--soak-seconds: at least 60")
    if args.analytics_events < 10_000:
        parser.error("--analytics-events: at least 10,000")
    if args.scale_events < 2 * ScaleSpec.users:
        parser.error(f"--scale-events: at least {2 * ScaleSpec.users:,} (2 per user)")
    # Run as ``python -m bench.run`` this module is ``__main__``, and the other
    # bench modules raise ``bench.run.BenchError``, a class of their own.
    from bench.run import BenchError as ImportedBenchError

    try:
        results = run(args)
    except (BenchError, ImportedBenchError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    print(markdown(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    say(f"[bench] results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
