"""Session analytics at scale (issue 6), a section of ``python -m bench.run``.

A synthetic app log of a year (1M events by default: about 91,000 sessions of
about 11 events, 40,000 users with log-normal activity, 12 screens visited by a
Markov chain, screen and item views with log-normal dwell, 30% of it unknown and
derived at close, clicks, carts, purchases and searches; 3 platforms, 6 app
versions, most sessions in the daytime hours) is written through
``store.append_events`` into a fresh SQLite file. Then, on that file:

* **cold**: :func:`sessionrec.analytics.session_stats` over everything with no
  analytics day cached (it builds all of them), once;
* **refresh**: the server's background job building every changed day;
* **GetSessionStats** through the real server (port 0, its own process) with the
  days cached, repeated: over all sessions; over the last 30 days with the
  anomalies against the 30 days before (what a dashboard asks); first sessions
  only on one platform;
* **one day changed**: after each of a few small event batches into sessions of
  the last day (the day a live app writes to), GetSessionStats over everything,
  which then rebuilds that day.

Target (issue 6): GetSessionStats over 1M events under 1 s. Nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

DAY_MS = 86_400_000
SCREENS = (
    "home",
    "search",
    "category",
    "product",
    "cart",
    "checkout",
    "profile",
    "settings",
    "offers",
    "orders",
    "help",
    "feed",
)


@dataclass(frozen=True)
class AnalyticsSpec:
    events: int = 1_000_000
    users: int = 40_000
    items: int = 20_000
    days: int = 365
    #: Mean events per session (geometric lengths).
    mean_session_events: int = 10
    #: Share of view events whose dwell the client sends (the rest is derived at close).
    dwell_known: float = 0.7
    #: Share of sessions closed by the app (the rest time out).
    closed: float = 0.6
    #: Events per ``append_events`` call.
    batch: int = 10_000
    #: GetSessionStats calls per query kind, and small batches into the last day.
    calls: int = 7
    changed_day_calls: int = 5
    seed: int = 5
    start_ms: int = 1_700_000_000_000


def analytics_log(spec: AnalyticsSpec) -> dict[str, np.ndarray]:
    """The whole log as numpy columns, events grouped by session in time order."""
    rng = np.random.default_rng(spec.seed)
    n_sessions = spec.events // spec.mean_session_events
    sizes = rng.geometric(1 / spec.mean_session_events, n_sessions)
    sizes = np.maximum(1, np.floor(sizes * spec.events / sizes.sum())).astype(np.int64)
    while sizes.sum() < spec.events:  # spread the rounding remainder
        sizes[rng.integers(0, len(sizes), spec.events - int(sizes.sum()))] += 1
    while sizes.sum() > spec.events:
        big = np.flatnonzero(sizes > 1)
        sizes[rng.choice(big, int(sizes.sum()) - spec.events, replace=False)] -= 1
    n_sessions = len(sizes)
    activity = rng.lognormal(0.0, 1.0, spec.users)
    session_user = rng.choice(spec.users, n_sessions, p=activity / activity.sum())
    night = np.full(7, 0.01)
    hour_p = np.r_[night, np.full(17, (1 - night.sum()) / 17)]
    hour = rng.choice(24, n_sessions, p=hour_p)
    begin = (
        spec.start_ms
        + rng.integers(0, spec.days, n_sessions) * DAY_MS
        + hour * 3_600_000
        + rng.integers(0, 3_600_000, n_sessions)
    )
    session = np.repeat(np.arange(n_sessions), sizes)
    n = len(session)
    roll = rng.random(n)
    etype = np.select(
        [roll < 0.45, roll < 0.85, roll < 0.90, roll < 0.95, roll < 0.97], [1, 2, 5, 3, 4], 6
    )
    # Screens: a first screen per session, then a Markov step per event.
    transition = rng.dirichlet(np.full(len(SCREENS), 0.3), len(SCREENS))
    screen = np.empty(n, dtype=np.int64)
    cdf = np.cumsum(transition, axis=1)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    current = rng.integers(0, len(SCREENS), n_sessions)
    uniform = rng.random(n)
    longest = int(sizes.max())
    for step in range(longest):
        alive = np.flatnonzero(sizes > step)
        at = first[alive] + step
        screen[at] = current[alive]
        nxt = (uniform[at, None] > cdf[current[alive]]).sum(axis=1)
        current[alive] = np.minimum(nxt, len(SCREENS) - 1)
    dwell = np.round(rng.lognormal(8.5, 1.2, n)).astype(np.int64)
    dwell[rng.random(n) >= spec.dwell_known] = -1
    gaps = rng.integers(2_000, 60_000, n)
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    ts = begin[session] + elapsed - elapsed[first][session]
    item = rng.zipf(1.3, n) % spec.items
    return {
        "session": session,
        "session_user": session_user,
        "session_begin": begin,
        "session_sizes": sizes,
        "type": etype,
        "screen": screen,
        "dwell": dwell,
        "ts": ts,
        "item": item,
        "platform": rng.integers(1, 4, n_sessions),
        "version": rng.integers(0, 6, n_sessions),
        "closed": rng.random(n_sessions) < spec.closed,
    }


def write_log(db_url: str, log: dict[str, np.ndarray], batch: int) -> dict[str, Any]:
    """Writes the log through the real store, sessions in order of their start."""
    from sessionrec.events import EndReason, EventRecord, SessionRecord
    from sessionrec.store import open_store

    order = np.argsort(log["session_begin"], kind="stable")
    offsets = np.r_[0, np.cumsum(log["session_sizes"])]
    columns = {k: log[k].tolist() for k in ("type", "screen", "dwell", "ts", "item")}
    users = log["session_user"].tolist()
    started = time.perf_counter()
    events: list[EventRecord] = []
    sessions: list[SessionRecord] = []
    calls = accepted = 0
    with open_store(db_url, synchronous="OFF") as store:
        for s in order.tolist():
            user = f"u{users[s]}"
            for i in range(offsets[s], offsets[s + 1]):
                kind, dwell = columns["type"][i], columns["dwell"][i]
                events.append(
                    EventRecord(
                        event_id=f"e{i}",
                        session_id=f"s{s}",
                        user_id=user,
                        type=kind,
                        ts_ms=columns["ts"][i],
                        item_id=f"i{columns['item'][i]}" if kind in (2, 3, 4) else None,
                        screen=SCREENS[columns["screen"][i]] if kind == 1 else None,
                        dwell_ms=dwell if kind in (1, 2) and dwell >= 0 else None,
                    )
                )
            last = columns["ts"][offsets[s + 1] - 1]
            closed = bool(log["closed"][s])
            sessions.append(
                SessionRecord(
                    session_id=f"s{s}",
                    user_id=user,
                    started_at_ms=int(log["session_begin"][s]),
                    last_event_at_ms=last,
                    platform=int(log["platform"][s]),
                    app_version=f"2.{int(log['version'][s])}",
                    ended_at_ms=last + (5_000 if closed else 0),
                    end_reason=EndReason.CLOSED if closed else EndReason.TIMEOUT,
                )
            )
            if len(events) >= batch:
                accepted += store.append_events(events, sessions).accepted
                calls += 1
                events, sessions = [], []
        if events:
            accepted += store.append_events(events, sessions).accepted
            calls += 1
        stored = (store.count_events(), store.count_sessions())
    return {
        "write_seconds": round(time.perf_counter() - started, 2),
        "append_events_calls": calls,
        "accepted": accepted,
        "stored_events": stored[0],
        "stored_sessions": stored[1],
    }


def _ts(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    seconds, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def bench_analytics(tmp: Path, spec: AnalyticsSpec) -> dict[str, Any]:
    from bench.run import BenchError, latency_summary, rpc, say, server_process
    from sessionrec.analytics import refresh_days, session_stats
    from sessionrec.events import EventRecord
    from sessionrec.store import open_store

    tmp.mkdir(parents=True, exist_ok=True)
    db_path = tmp / "analytics.db"
    db_url = f"sqlite:///{db_path}"
    say(f"[bench]   analytics: generating {spec.events:,} events over {spec.days} days")
    log = analytics_log(spec)
    written = write_log(db_url, log, spec.batch)
    if written["stored_events"] != spec.events:
        raise BenchError(f"analytics: stored {written['stored_events']} of {spec.events} events")
    say(
        f"[bench]   analytics: wrote {written['stored_events']:,} events, "
        f"{written['stored_sessions']:,} sessions in {written['write_seconds']:.1f} s"
    )

    # Cold: nothing cached, every day is built (and not kept).
    cold, stats = _timed(lambda: session_stats(db_path), 1)
    say(f"[bench]   analytics: cold session_stats {cold[0]:.2f} s ({stats.sessions:,} sessions)")
    with open_store(db_url) as store:
        refresh, built = _timed(lambda: refresh_days(db_path, store.cache_analytics_days), 1)
    say(f"[bench]   analytics: refresh built {built} days in {refresh[0]:.2f} s")

    end_ms = int(log["session_begin"].max()) + 1
    month = 30 * DAY_MS
    queries = {
        "all_sessions": pb.GetSessionStatsRequest(),
        "last_30_days_with_anomalies": pb.GetSessionStatsRequest(
            start=_ts(end_ms - month), end=_ts(end_ms)
        ),
        "first_sessions_android": pb.GetSessionStatsRequest(
            platform=pb.ANDROID, segment=pb.NEW_USER
        ),
    }
    last_day = int(log["session_begin"].max()) // DAY_MS
    day_sessions = np.flatnonzero(log["session_begin"] // DAY_MS == last_day)
    results: dict[str, Any] = {}
    overrides = {"db_url": db_url, "models_dir": str(tmp / "models"), "port": 0}
    # No background refresh: the "one day changed" calls must build the day themselves.
    overrides["analytics_refresh_interval_s"] = 0.0
    with server_process(overrides) as (port, _, _):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.AnalyticsServiceStub(channel)
        for name, request in queries.items():
            rpc(stub.GetSessionStats, request, f"GetSessionStats {name}")  # warm-up
            seconds, response = _timed(
                lambda r=request, n=name: rpc(stub.GetSessionStats, r, n), spec.calls
            )
            results[name] = {**latency_summary(seconds), "sessions": response.sessions}
            say(
                f"[bench]   analytics: GetSessionStats {name}: median "
                f"{statistics.median(seconds) * 1000:.0f} ms ({response.sessions:,} sessions)"
            )
        changed: list[float] = []
        with open_store(db_url) as store:
            for k in range(spec.changed_day_calls):
                sid = int(day_sessions[k % len(day_sessions)])
                at = int(log["session_begin"][sid]) + 1_000 + k
                store.append_events(
                    [
                        EventRecord(
                            event_id=f"late-{k}-{j}",
                            session_id=f"s{sid}",
                            user_id=f"u{int(log['session_user'][sid])}",
                            type=1,
                            ts_ms=at + j,
                            screen=SCREENS[j % len(SCREENS)],
                            dwell_ms=1_500 + j,
                        )
                        for j in range(10)
                    ]
                )
                seconds, _ = _timed(
                    lambda: rpc(stub.GetSessionStats, queries["all_sessions"], "changed day"), 1
                )
                changed += seconds
        results["all_sessions_after_a_change_to_the_last_day"] = latency_summary(changed)
        channel.close()
    return {
        "spec": dataclasses.asdict(spec),
        "generation": written,
        "cold_session_stats_seconds": round(cold[0], 3),
        "refresh_seconds": round(refresh[0], 3),
        "refresh_days_built": built,
        "get_session_stats": results,
        "target_ms": 1000,
    }


def markdown_lines(section: dict[str, Any]) -> list[str]:
    gen = section["generation"]
    lines = [
        "",
        f"## Session analytics at scale ({gen['stored_events']:,} events, "
        f"{gen['stored_sessions']:,} sessions, {section['spec']['days']} days)",
        "",
        "| what | median | p90 | max |",
        "|---|---|---|---|",
    ]
    for name, row in section["get_session_stats"].items():
        lines.append(
            f"| GetSessionStats {name.replace('_', ' ')} (n={row['n']}) | "
            f"{row['p50_ms']:.0f} ms | {row['p90_ms']:.0f} ms | {row['max_ms']:.0f} ms |"
        )
    lines += [
        "",
        f"Target: under {section['target_ms']} ms over all events (not asserted). "
        f"Cold (no day cached, every day built): {section['cold_session_stats_seconds']:.2f} s; "
        f"the background refresh built {section['refresh_days_built']} days in "
        f"{section['refresh_seconds']:.2f} s. Writing the log through the store took "
        f"{gen['write_seconds']:.1f} s.",
    ]
    return lines
