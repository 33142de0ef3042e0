"""Replicas on one PostgreSQL: a section of ``python -m bench.run`` (sizing figures
for the deployment guide).

What it measures, all on this machine and against 127.0.0.1 only:

* Store: a private PostgreSQL cluster (``tests.pgserver.PostgresServer``,
  ``durable=True``: fsync and synchronous commit on, as in production) with one
  database; or the server ``$SESSIONREC_TEST_PG_URL`` names (its CPU is then
  measured only when its postmaster runs here). Without PostgreSQL the section
  records why and is skipped.
* Data: the training-at-scale generator (``bench.run.scale_log`` through
  ``bench.run._scale_generate``: 10,000 users x 5,000 items, Zipf popularity,
  latent taste groups, sessions of a few events) written through
  ``Store.append_events`` in 10,000-event batches into the PostgreSQL database
  and, the same way, into a SQLite file (the generator's ``synchronous=OFF``).
  Both are written at once (two processes); ALS is trained meanwhile on the
  SQLite copy (the same events) with ``training.pipeline.train``, the session
  blend fixed to ``DEFAULT_BLEND`` (no blend search), into one models folder
  every replica uses.
* Replicas: real ``sessionrec serve`` processes (``python -m sessionrec serve``),
  each on its own port; two on the PostgreSQL database (A and B) and one on the
  SQLite file (its ``sqlite_synchronous`` default, FULL), all with
  ``model_poll_interval_s`` and ``analytics_refresh_interval_s`` 0. All run for
  the whole section; the idle ones cost nothing.
* Load: ``bench.serving.LoadClients`` (``client_processes`` processes, grpc.aio,
  pre-serialized requests, every response checked), driven by
  ``bench.serving.track_phase`` and ``bench.serving.windowed`` unchanged. With
  one replica every client process drives it; with two, client process k
  drives replica k % 2 (each connects its channels of the phase's target to its
  own replica), so the same generator and in-flight window serve both cases.
* Phases, for PostgreSQL with 1 replica, with 2 replicas, and SQLite with 1
  replica, one after the other within each round (``rounds``; medians
  reported), after a warm-up of each:

  - TrackEvents, ``track_batch`` new events per call (client event ids; the
    events of ``ingest_sessions`` open sessions), ``track_window`` in flight in
    total, for ``track_seconds`` (at most ``track_calls`` calls);
  - Recommend with a live session (``live_sessions`` users each got 3-10 fresh
    views before, not timed), ``recommend_window`` in flight for
    ``recommend_seconds``.

  Each phase records calls per replica, p50/p99, and the CPU cores busy
  (CPU seconds over the phase's wall time) of the client processes, of each
  replica, of PostgreSQL (the postmaster and all its children, exited ones
  included), of the whole machine (``/proc/stat``) and so of everything else;
  on PostgreSQL also the WAL written per event and what the replicas'
  backends were waiting on (``pg_stat_activity`` sampled every 50 ms).

Any RPC error or unexpected response ends the run (``BenchError``). Nothing is
asserted about timings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.ceiling import free_port
from bench.serving import (
    RECOMMEND,
    Laps,
    LoadClients,
    ServingSpec,
    Target,
    Workload,
    _offers,
    _proc_tree,
    _setup_real,
    track_phase,
    tree_memory_mib,
    windowed,
)
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 30.0
#: The configurations measured, in the order of each round.
CONFIGS = ("postgres-1", "postgres-2", "sqlite-1")


@dataclass(frozen=True)
class ReplicasSpec:
    #: The synthetic log (``bench.run.ScaleSpec`` with these sizes).
    #: (100,000: PostgreSQL takes them at about 2,500-5,000 events/s through
    #: ``append_events`` here, which bounds the section's set-up time.)
    events: int = 100_000
    users: int = 10_000
    items: int = 5_000
    #: Users with a live session (3-10 fresh views each) that Recommend uses.
    live_sessions: int = 256
    #: Open sessions the TrackEvents calls write to (ten consecutive events per
    #: session in a call, so 16 calls in flight touch 160 different sessions:
    #: no row lock is contended by construction).
    ingest_sessions: int = 256
    track_window: int = 16
    track_batch: int = 100
    #: At most this many TrackEvents calls per phase (all with new event ids) ...
    track_calls: int = 1500
    #: ... and at most this many seconds.
    track_seconds: float = 2.5
    recommend_window: int = 64
    recommend_seconds: float = 2.5
    #: Warm-up per configuration and method (not recorded).
    warmup_seconds: float = 1.0
    #: Rounds over the three configurations (the figures are medians).
    rounds: int = 3
    client_processes: int = 2
    channels_per_client: int = 2
    seed: int = 12


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bench_error(message: str) -> Exception:
    from bench.run import BenchError

    return BenchError(message)


# ------------------------------------------------------------------ CPU
def cpu_seconds(roots: Sequence[int]) -> float:
    """User + system CPU seconds of the process trees under ``roots``, with the
    children each process reaped (``cutime``/``cstime``: PostgreSQL backends of
    closed connections)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _proc_tree(roots):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (``/proc/stat``: user, nice,
    system, irq, softirq), all cores together; NaN where unreadable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------- PostgreSQL
@dataclass
class Database:
    url: str
    #: The postmaster's pid, when it runs on this machine (None: not measured).
    postmaster: int | None
    settings: dict[str, str]
    how: str


def _postmaster_pid(url: str, base: Path | None) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` (the private cluster's, or
    the data directory the server reports, if readable here)."""
    candidates = [base / "data"] if base is not None else []
    if base is None:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
                if row:
                    candidates.append(Path(row[0]))
    for folder in candidates:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((folder / "postmaster.pid").read_text().split()[0])
            if Path(f"/proc/{pid}").exists():
                return pid
    return None


def _pg_settings(url: str) -> dict[str, str]:
    import psycopg

    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")
    out: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            row = conn.execute(f"SHOW {name}").fetchone()
            out[name] = str(row[0]) if row else "?"
    return out


@contextlib.contextmanager
def postgres_database() -> Iterator[Database]:
    """A fresh database on a durable private cluster (or ``$SESSIONREC_TEST_PG_URL``'s
    server), stopped or dropped afterwards. RuntimeError: none can be had."""
    root = str(Path(__file__).resolve().parents[1])  # tests/ is no installed package
    sys.path.insert(0, root)
    try:
        from tests.pgserver import URL_ENV, PostgresServer, available
    except ImportError as exc:
        raise RuntimeError(f"tests/pgserver.py cannot be imported ({exc})") from exc
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
    why = available()
    if why is not None:
        raise RuntimeError(why)
    server = PostgresServer(durable=True)
    try:
        server.start()
    except Exception as exc:
        server.stop()
        detail = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(
            f"the PostgreSQL cluster did not start: {exc} {detail.decode(errors='replace')[-300:]}"
        ) from exc
    name = "bench_replicas_" + uuid.uuid4().hex[:8]
    try:
        url = server.create_database(name)
        external = server.base is None
        yield Database(
            url=url,
            postmaster=_postmaster_pid(url, server.base),
            settings=_pg_settings(url),
            how=f"existing server (${URL_ENV})"
            if external
            else "private cluster (tests/pgserver.py, durable: fsync on)",
        )
    finally:
        if server.base is None:
            with contextlib.suppress(Exception):
                server._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.stop()


def wal_lsn(url: str) -> int | None:
    """The current WAL insert position in bytes (None: not readable)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


class WaitSampler:
    """What the replicas' backends (``application_name = 'sessionrec'``) are doing,
    sampled every ``interval_s`` from ``pg_stat_activity`` on a thread of its own:
    ``CPU`` (active, no wait event) or ``<wait_event_type>:<wait_event>``."""

    def __init__(self, url: str, interval_s: float = 0.05):
        self.url = url
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        #: The statements of the backends seen waiting for a lock (their start).
        self.lock_queries: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-wait-sampler", daemon=True)

    def _run(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as c:
            while not self._stop.is_set():
                rows = c.execute(
                    "SELECT wait_event_type, wait_event, left(query, 70)"
                    " FROM pg_stat_activity"
                    " WHERE application_name = 'sessionrec' AND state = 'active'"
                    " AND pid <> pg_backend_pid()"
                ).fetchall()
                self.samples += 1
                for kind, event, query in rows:
                    self.counts["CPU" if kind is None else f"{kind}:{event}"] += 1
                    if kind == "Lock":
                        self.lock_queries[" ".join(str(query).split())] += 1
                self._stop.wait(self.interval_s)

    def start(self) -> WaitSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        total = sum(self.counts.values())
        return {
            "samples": self.samples,
            "active_backends_mean": round(total / self.samples, 2) if self.samples else None,
            "share": {k: round(v / total, 3) for k, v in self.counts.most_common(8)}
            if total
            else {},
            "lock_waits_in": dict(self.lock_queries.most_common(3)),
        }


# ------------------------------------------------------------ replicas
class Replica:
    """``python -m sessionrec serve`` on 127.0.0.1:<free port>, its log in a file."""

    def __init__(self, name: str, db_url: str, models_dir: Path, log_path: Path):
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONREC_")}
        env.update(
            SESSIONREC_MODEL_POLL_INTERVAL_S="0",
            SESSIONREC_ANALYTICS_REFRESH_INTERVAL_S="0",
            SESSIONREC_LOG_LEVEL="WARNING",
            SESSIONREC_GRACE_S="1",
        )
        command = [sys.executable, "-m", "sessionrec", "serve", "--db", db_url]
        command += ["--models", str(models_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def wait_ready(self, version: str, timeout_s: float = 120.0) -> None:
        """Polls (bounded) until the replica answers GetModelInfo with ``version``."""
        deadline = time.monotonic() + timeout_s
        last = ""
        with grpc.insecure_channel(self.address) as channel:
            admin = pb_grpc.AdminServiceStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise _bench_error(
                        f"replica {self.name}: exited with {self.proc.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    info = admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                except grpc.RpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
                    time.sleep(0.2)
                    continue
                if info.version != version:
                    raise _bench_error(
                        f"replica {self.name}: serving {info.version!r}, expected {version!r}"
                    )
                return
        raise _bench_error(
            f"replica {self.name}: not ready after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --------------------------------------------------------- load clients
class ReplicaClients(LoadClients):
    """``bench.serving.LoadClients`` that can connect each client process to a
    replica of its own under one target key, and that measures, around every
    phase, the CPU of named process groups, of the whole machine, the WAL
    written and the PostgreSQL backends' wait events (set :attr:`groups` and
    :attr:`pg_url` first)."""

    def __init__(self, processes: int, channels: int):
        super().__init__(processes, channels)
        #: group name -> root pids; the WAL position and wait sampling (None: off).
        self.groups: dict[str, list[int]] = {}
        self.pg_url: str | None = None
        self.last: dict[str, Any] = {}

    def run(
        self,
        cmds: Sequence[dict[str, Any] | None],
        server_pids: Sequence[int],
        during: Callable[[float], Any] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Only the clients write: the WAL position before they get their commands
        # is the phase's start (the CPU is read at the go, after they prepared).
        before: dict[str, Any] = {"wal": wal_lsn(self.pg_url) if self.pg_url else None}

        def at_go(go_at: float) -> Any:
            before["cpu"] = {g: cpu_seconds(p) for g, p in self.groups.items()}
            before["machine"] = machine_busy_seconds()
            before["sampler"] = WaitSampler(self.pg_url).start() if self.pg_url else None
            return during(go_at) if during is not None else None

        results, agg = super().run(cmds, server_pids, during=at_go)
        cpu = {g: cpu_seconds(p) - before["cpu"][g] for g, p in self.groups.items()}
        machine = machine_busy_seconds() - before["machine"]
        waits = before["sampler"].stop() if before["sampler"] is not None else None
        wal_after = wal_lsn(self.pg_url) if self.pg_url else None
        seconds = agg["seconds"]
        active = [k for k, cmd in enumerate(cmds) if cmd is not None]
        self.last = {
            "per_client": [
                {"client": k, "calls": r["calls"], "cpu_seconds": round(r["cpu_seconds"], 3)}
                for k, r in zip(active, results, strict=True)
            ],
            "cpu_cores": {g: round(v / seconds, 2) for g, v in cpu.items()},
            "machine_cpu_cores": round(machine / seconds, 2),
            "wal_bytes": (
                wal_after - before["wal"]
                if wal_after is not None and before["wal"] is not None
                else None
            ),
            "pg_waits": waits,
            "load_average": load_average(),
        }
        return results, agg


# -------------------------------------------------------------- phases
@dataclass
class Deployment:
    """One measured configuration: a target and the replicas behind it."""

    name: str
    store: str
    replicas: list[Replica]
    target: Target


def _phase_record(
    clients: ReplicaClients, config: Deployment, fig: dict[str, Any], unit: int
) -> dict[str, Any]:
    """The phase's figure with the per-replica split and the CPU breakdown.
    ``unit``: events per call (TrackEvents) or 1 (Recommend)."""
    last = clients.last
    n = len(config.replicas)
    seconds = fig["seconds"]
    per_replica = [0] * n
    for c in last["per_client"]:
        per_replica[c["client"] % n] += c["calls"]
    cores = last["cpu_cores"]
    replica_cores = [cores[r.name] for r in config.replicas]
    pg_cores = cores.get("postgres") if config.store == "postgresql" else None
    own = fig["client_cpu_cores"] + sum(replica_cores) + (pg_cores or 0.0)
    rate_key = "events_per_s" if unit > 1 else "qps"
    out = dict(fig)
    out.update(
        per_replica=[
            {
                "replica": r.name,
                "calls": per_replica[k],
                rate_key: round(per_replica[k] * unit / seconds, 1),
            }
            for k, r in enumerate(config.replicas)
        ],
        replica_cpu_cores=replica_cores,
        postgres_cpu_cores=pg_cores,
        machine_cpu_cores=last["machine_cpu_cores"],
        # Busy cores not accounted for by the clients, the replicas or
        # PostgreSQL: other jobs on the machine, this parent process.
        other_cpu_cores=round(last["machine_cpu_cores"] - own, 2),
        load_average=last["load_average"],
    )
    if config.store == "postgresql":
        events = fig["calls"] * unit
        out["wal_bytes"] = last["wal_bytes"]
        if unit > 1 and last["wal_bytes"] is not None and events:
            out["wal_bytes_per_event"] = round(last["wal_bytes"] / events)
        out["pg_waits"] = last["pg_waits"]
    return out


def _track(
    clients: ReplicaClients,
    config: Deployment,
    work: Workload,
    spec: ReplicasSpec,
    tag: str,
    seconds: float,
) -> dict[str, Any]:
    sspec = dataclasses.replace(
        ServingSpec(),
        track_batch=spec.track_batch,
        track_calls=spec.track_calls,
        track_seconds=seconds,
    )
    fig = track_phase(clients, config.target, work, spec.track_window, sspec, tag)
    return _phase_record(clients, config, fig, spec.track_batch)


def _recommend(
    clients: ReplicaClients, config: Deployment, work: Workload, spec: ReplicasSpec, seconds: float
) -> dict[str, Any]:
    fig = windowed(
        clients, config.target, RECOMMEND, work.recommend, spec.recommend_window, seconds, 10
    )
    return _phase_record(clients, config, fig, 1)


# ---------------------------------------------------------- preparation
def _generate_and_train(
    pg_url: str, sqlite_url: str, tmp: Path, spec: ReplicasSpec, models_dir: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The log into both stores at once (two spawned processes), and ALS trained on
    the SQLite copy as soon as it is there, while PostgreSQL is still written."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from bench.run import ScaleSpec, _scale_generate

    scale = dataclasses.replace(ScaleSpec(), events=spec.events, users=spec.users, items=spec.items)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        started = time.perf_counter()
        pg_future = pool.submit(_scale_generate, pg_url, str(tmp / "pg-matrix.npz"), scale)
        sq_future = pool.submit(_scale_generate, sqlite_url, str(tmp / "sq-matrix.npz"), scale)
        sq = sq_future.result()
        sq["wall_seconds"] = round(time.perf_counter() - started, 2)
        say(f"[bench]   replicas: SQLite written in {sq['wall_seconds']:.1f} s; training ALS ...")
        trained = pool.submit(_train, sqlite_url, str(models_dir)).result()
        pg = pg_future.result()
        pg["wall_seconds"] = round(time.perf_counter() - started, 2)
    for name in ("pg-matrix.npz", "sq-matrix.npz"):
        (tmp / name).unlink(missing_ok=True)
    return pg, sq, trained


def _train(db_url: str, models_dir: str) -> dict[str, Any]:
    """Child process: ALS (default parameters) + session models with the fixed
    ``DEFAULT_BLEND``, made current."""
    from sessionrec.store import open_store
    from training.pipeline import train
    from training.session_models import DEFAULT_BLEND

    with open_store(db_url) as store:
        started = time.perf_counter()
        artifact = train(store, models_dir, "als", blend=dict(DEFAULT_BLEND))
        wall = time.perf_counter() - started
    return {
        "version": artifact.version,
        "params": artifact.params,
        "users": artifact.meta["users"],
        "items": artifact.meta["items"],
        "interactions": artifact.meta["interactions"],
        "train_seconds": round(wall, 2),
        "blend": "DEFAULT_BLEND (not searched)",
    }


def _pg_size_mib(url: str) -> float | None:
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return round(int(row[0]) / 2**20, 1) if row else None
    return None


# ----------------------------------------------------------------- main
def bench_replicas(tmp: Path, spec: ReplicasSpec) -> dict[str, Any]:
    """The section: ``{"skipped": reason}`` where no PostgreSQL can be had."""
    section: dict[str, Any] = {"spec": dataclasses.asdict(spec), "configs": list(CONFIGS)}
    phase_seconds: dict[str, float] = {}
    section["phase_seconds"] = phase_seconds
    section["load_average_start"] = load_average()
    lap = Laps(phase_seconds)

    tmp.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            db = stack.enter_context(postgres_database())
        except RuntimeError as exc:
            say(f"[bench]   replicas: skipped: no PostgreSQL: {exc}")
            return {"skipped": f"no PostgreSQL: {exc}", **section}
        lap("postgres start")
        _measure(tmp, spec, db, section, lap)
    section["load_average_end"] = load_average()
    section["figures"] = figures(section)
    return section


def _measure(
    tmp: Path,
    spec: ReplicasSpec,
    db: Database,
    section: dict[str, Any],
    lap: Callable[[str], None],
) -> None:
    section["postgres"] = {
        "how": db.how,
        "settings": db.settings,
        "postmaster_pid_found": db.postmaster is not None,
    }
    sqlite_path = tmp / "replicas.db"
    sqlite_url = f"sqlite:///{sqlite_path}"
    models_dir = tmp / "models"
    say(
        f"[bench]   replicas: writing {spec.events:,} events ({spec.users:,} users x "
        f"{spec.items:,} items) through Store.append_events into PostgreSQL and SQLite ..."
    )
    pg_gen, sq_gen, trained = _generate_and_train(db.url, sqlite_url, tmp, spec, models_dir)
    for gen in (pg_gen, sq_gen):
        if gen["stored_events"] != spec.events or gen["duplicates"]:
            raise _bench_error(
                f"replicas: stored {gen['stored_events']} events of {spec.events} "
                f"({gen['duplicates']} duplicates)"
            )
    pg_gen["db_mib"] = _pg_size_mib(db.url)
    section["data"] = {
        "source": "bench.run.scale_log through Store.append_events (10,000-event batches)",
        "events": pg_gen["stored_events"],
        "sessions": pg_gen["stored_sessions"],
        "postgres_write_seconds": pg_gen["store_write_seconds"],
        "postgres_events_per_s": round(spec.events / pg_gen["store_write_seconds"]),
        "postgres_mib": pg_gen["db_mib"],
        "sqlite_write_seconds": sq_gen["store_write_seconds"],
        "sqlite_events_per_s": round(spec.events / sq_gen["store_write_seconds"]),
        "sqlite_mib": sq_gen["db_mib"],
        "written_at_once": True,
    }
    section["train"] = trained
    say(
        f"[bench]   replicas: PostgreSQL written in {pg_gen['store_write_seconds']:.1f} s, "
        f"SQLite in {sq_gen['store_write_seconds']:.1f} s (at once); trained "
        f"{trained['version']} in {trained['train_seconds']:.1f} s"
    )
    lap("data + train")

    version = trained["version"]
    with np.load(models_dir / "versions" / version / "model.npz", allow_pickle=False) as data:
        users = [str(u) for u in data["users"].tolist()]
        items = [str(i) for i in data["items"].tolist()]
    rng = random.Random(spec.seed)
    live = [(u, f"live-{k}") for k, u in enumerate(rng.sample(users, spec.live_sessions))]
    recommend = [
        pb.RecommendRequest(user_id=u, session_id=s, n=10).SerializeToString() for u, s in live
    ]
    rng.shuffle(recommend)
    work = Workload(
        recommend=recommend,
        offers=[],
        items=rng.sample(items, min(len(items), 5000)),
        ingest_sessions=[f"ingest-{k}" for k in range(spec.ingest_sessions)],
        stream_sessions=[],
    )
    offers = _offers(items, rng)

    replicas: list[Replica] = []
    clients: ReplicaClients | None = None
    try:
        for name, url in (("A", db.url), ("B", db.url), ("S", sqlite_url)):
            replicas.append(Replica(name, url, models_dir, tmp / f"replica-{name}.log"))
        clients = ReplicaClients(spec.client_processes, spec.channels_per_client)
        for r in replicas:
            r.wait_ready(version)
        a, b, s = replicas
        lap("replicas start")
        section["replicas"] = {
            "command": "python -m sessionrec serve --db URL --models DIR --host 127.0.0.1 "
            "--port N (SESSIONREC_MODEL_POLL_INTERVAL_S=0, "
            "SESSIONREC_ANALYTICS_REFRESH_INTERVAL_S=0; other settings default)",
            "postgres": [a.address, b.address],
            "sqlite": s.address,
            "rss_mib_after_load": {r.name: tree_memory_mib([r.pid])["rss_mib"] for r in replicas},
        }
        # Not timed: offers, the live sessions (3-10 fresh views each) and the
        # ingestion sessions, once on the shared database (through A) and once on SQLite.
        section["setup"] = {
            "postgres": _setup_real(a.address, offers, live, work, random.Random(spec.seed + 1)),
            "sqlite": _setup_real(s.address, offers, live, work, random.Random(spec.seed + 1)),
        }
        lap("setup")

        configs = {
            "postgres-1": Deployment(
                "postgres-1", "postgresql", [a], Target("postgres-1", a.address, [a.pid], 1)
            ),
            "postgres-2": Deployment(
                "postgres-2",
                "postgresql",
                [a, b],
                Target("postgres-2", f"{a.address} + {b.address}", [a.pid, b.pid], 2),
            ),
            "sqlite-1": Deployment(
                "sqlite-1", "sqlite", [s], Target("sqlite-1", s.address, [s.pid], 1)
            ),
        }
        clients.connect(configs["postgres-1"].target.key, a.address)
        clients.connect(configs["postgres-2"].target.key, [a.address, b.address])
        clients.connect(configs["sqlite-1"].target.key, s.address)
        clients.groups = {r.name: [r.pid] for r in replicas}
        if db.postmaster is not None:
            clients.groups["postgres"] = [db.postmaster]

        def use(config: Deployment) -> None:
            clients.pg_url = db.url if config.store == "postgresql" else None

        # Warm-up (connections, each worker thread's database connection, caches).
        for name in CONFIGS:
            use(configs[name])
            say(f"[bench]   replicas: {name}: warm-up")
            _track(clients, configs[name], work, spec, f"{name}-warm", spec.warmup_seconds)
            _recommend(clients, configs[name], work, spec, spec.warmup_seconds)
        lap("warm-up")
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            n: {"track": [], "recommend": []} for n in CONFIGS
        }
        for rnd in range(spec.rounds):
            for name in CONFIGS:
                config = configs[name]
                use(config)
                track = _track(clients, config, work, spec, f"{name}-r{rnd}", spec.track_seconds)
                runs[name]["track"].append(track)
                rec = _recommend(clients, config, work, spec, spec.recommend_seconds)
                runs[name]["recommend"].append(rec)
                say(
                    f"[bench]   replicas: round {rnd + 1}/{spec.rounds} {name}: TrackEvents "
                    f"{track['events_per_s']:,} events/s (p99 {track['p99_ms']:.1f} ms), "
                    f"Recommend {rec['qps']:,.0f} QPS (p99 {rec['p99_ms']:.1f} ms); "
                    f"load {track['load_average'][0]:.1f}"
                )
        lap("phases")
        section["runs"] = runs
        section["replicas"]["rss_mib_after_traffic"] = {
            r.name: tree_memory_mib([r.pid])["rss_mib"] for r in replicas
        }
        if db.postmaster is not None:
            section["postgres"]["rss_mib_after_traffic"] = tree_memory_mib([db.postmaster])[
                "rss_mib"
            ]
        section["postgres"]["db_mib_after"] = _pg_size_mib(db.url)
    finally:
        if clients is not None:
            clients.close()
        for r in replicas:
            r.stop()
    section["client"] = {
        "processes": spec.client_processes,
        "channels_per_process": spec.channels_per_client,
        "kind": "bench.serving.LoadClients (grpc.aio, pre-serialized requests, every "
        "response checked); with 2 replicas client process k drives replica k % 2",
    }


# ------------------------------------------------------------- figures
def _median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 3) if clean else None


def _summary(runs: Sequence[dict[str, Any]], rate: str) -> dict[str, Any]:
    n = len(runs[0]["per_replica"])
    return {
        rate: _median([r[rate] for r in runs]),
        f"{rate}_runs": [r[rate] for r in runs],
        f"{rate}_per_replica": [
            _median([r["per_replica"][k][rate] for r in runs]) for k in range(n)
        ],
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "client_cpu_cores": _median([r["client_cpu_cores"] for r in runs]),
        "replica_cpu_cores": [_median([r["replica_cpu_cores"][k] for r in runs]) for k in range(n)],
        "postgres_cpu_cores": _median([r["postgres_cpu_cores"] for r in runs]),
        "machine_cpu_cores": _median([r["machine_cpu_cores"] for r in runs]),
        "other_cpu_cores": _median([r["other_cpu_cores"] for r in runs]),
        "wal_bytes_per_event": _median([r.get("wal_bytes_per_event") for r in runs]),
        "load_average_1m": [r["load_average"][0] for r in runs],
    }


def figures(section: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds, per configuration, the derived per-core rates and
    the ratios (2 replicas / 1 replica; PostgreSQL / SQLite, 1 replica each)."""
    out: dict[str, Any] = {}
    for name in CONFIGS:
        runs = section["runs"][name]
        track = _summary(runs["track"], "events_per_s")
        rec = _summary(runs["recommend"], "qps")
        for fig, rate in ((track, "events_per_s"), (rec, "qps")):
            replica_cores = sum(c or 0.0 for c in fig["replica_cpu_cores"])
            fig[f"{rate}_per_replica_core"] = (
                round(fig[rate] / replica_cores) if fig[rate] and replica_cores else None
            )
            pg = fig["postgres_cpu_cores"]
            fig[f"{rate}_per_postgres_core"] = round(fig[rate] / pg) if fig[rate] and pg else None
        out[name] = {"track": track, "recommend": rec}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    one, two, lite = out["postgres-1"], out["postgres-2"], out["sqlite-1"]
    out["ratios"] = {
        "track_2_over_1": ratio(two["track"]["events_per_s"], one["track"]["events_per_s"]),
        "recommend_2_over_1": ratio(two["recommend"]["qps"], one["recommend"]["qps"]),
        "track_postgres_over_sqlite": ratio(
            one["track"]["events_per_s"], lite["track"]["events_per_s"]
        ),
        "recommend_postgres_over_sqlite": ratio(one["recommend"]["qps"], lite["recommend"]["qps"]),
    }
    return out


# ------------------------------------------------------------ markdown
def _n(x: float | None, digits: int = 0, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"


def _cores(fig: dict[str, Any], store: str) -> str:
    replicas = " + ".join(_n(c, 2) for c in fig["replica_cpu_cores"])
    pg = _n(fig["postgres_cpu_cores"], 2) if store == "postgresql" else "-"
    return (
        f"{_n(fig['client_cpu_cores'], 2)} / {replicas} / {pg} / "
        f"{_n(fig['other_cpu_cores'], 2)} (machine {_n(fig['machine_cpu_cores'], 2)})"
    )


def markdown_lines(section: dict[str, Any]) -> list[str]:
    title = "## Replicas on one PostgreSQL (sizing; PostgreSQL vs SQLite on the same box)"
    if "skipped" in section:
        return ["", title, "", f"Skipped: {section['skipped']}."]
    spec = section["spec"]
    f = section["figures"]
    data, tr, pg = section["data"], section["train"], section["postgres"]
    one, two, lite = f["postgres-1"], f["postgres-2"], f["sqlite-1"]
    ratios = f["ratios"]
    settings = pg["settings"]
    lines = [
        "",
        title,
        "",
        f"- PostgreSQL {settings.get('server_version', '?')}: {pg['how']}; fsync="
        f"{settings.get('fsync')}, synchronous_commit={settings.get('synchronous_commit')}; "
        "SQLite: the server's default (WAL, synchronous=FULL)",
        f"- data: {data['events']:,} events, {data['sessions']:,} sessions, "
        f"{tr['users']:,} users x {tr['items']:,} items ({data['source']}; written at once: "
        f"PostgreSQL {data['postgres_events_per_s']:,} events/s, SQLite "
        f"{data['sqlite_events_per_s']:,} events/s); ALS {tr['params']['factors']} factors + "
        f"session models, {tr['blend']}, one models folder for every replica",
        "- replicas: real `sessionrec serve` processes, one port each, model polling and "
        "analytics refresh off; load: "
        f"{section['client']['processes']} client processes x "
        f"{section['client']['channels_per_process']} channels "
        "(bench.serving.LoadClients); with 2 replicas each client process drives one",
        f"- TrackEvents: {spec['track_batch']} new events per call, {spec['track_window']} "
        f"in flight in total, {spec['track_seconds']:g} s; Recommend n=10 with a live session "
        f"(3-10 fresh views), {spec['recommend_window']} in flight in total, "
        f"{spec['recommend_seconds']:g} s; medians of {spec['rounds']} rounds (configurations "
        "interleaved within each round)",
        f"- load average (1 min) at the start / end of the section: "
        f"{section['load_average_start'][0]:.2f} / {section['load_average_end'][0]:.2f}; "
        f"during the TrackEvents phases (PostgreSQL, 1 replica): "
        f"{', '.join(f'{x:.2f}' for x in one['track']['load_average_1m'])}",
        "",
        "**Caveat:** one 2-core machine runs the load generator, the replicas and "
        "PostgreSQL (and any other job on it: the 'other' cores below), so a second "
        "replica cannot double anything: the 2 / 1 ratio shows contention for the same 2 "
        "cores, not how replicas scale. Where other jobs keep the cores busy, two replica "
        "processes win a larger share of them than one, so a 2 / 1 ratio above 1 comes "
        "from cores taken from those jobs (compare the replica and 'other' cores), not "
        "from capacity. Size a real deployment from the per-core rates (events/s and QPS "
        "per replica core and per PostgreSQL core) and the WAL per event.",
        "",
        "| figure | PostgreSQL, 1 replica | PostgreSQL, 2 replicas | 2 / 1 | SQLite, 1 replica "
        "| PostgreSQL / SQLite |",
        "|---|---|---|---|---|---|",
    ]

    def per(fig: dict[str, Any], rate: str) -> str:
        return " + ".join(_n(x) for x in fig[f"{rate}_per_replica"])

    ot, tt, lt = one["track"], two["track"], lite["track"]
    orc, trc, lrc = one["recommend"], two["recommend"], lite["recommend"]
    lines += [
        f"| TrackEvents: events/s in total | {_n(ot['events_per_s'])} | "
        f"{_n(tt['events_per_s'])} | {_n(ratios['track_2_over_1'], 2)} | "
        f"{_n(lt['events_per_s'])} | {_n(ratios['track_postgres_over_sqlite'], 2)} |",
        f"| ... events/s per replica | {per(ot, 'events_per_s')} | {per(tt, 'events_per_s')} "
        f"| | {per(lt, 'events_per_s')} | |",
        f"| ... call p50 / p99 | {_n(ot['p50_ms'], 1)} / {_n(ot['p99_ms'], 1)} ms | "
        f"{_n(tt['p50_ms'], 1)} / {_n(tt['p99_ms'], 1)} ms | | {_n(lt['p50_ms'], 1)} / "
        f"{_n(lt['p99_ms'], 1)} ms | |",
        f"| ... events/s per replica core / per PostgreSQL core | "
        f"{_n(ot['events_per_s_per_replica_core'])} / "
        f"{_n(ot['events_per_s_per_postgres_core'])} | "
        f"{_n(tt['events_per_s_per_replica_core'])} / "
        f"{_n(tt['events_per_s_per_postgres_core'])} | | "
        f"{_n(lt['events_per_s_per_replica_core'])} / - | |",
        f"| ... WAL per event | {_n(ot['wal_bytes_per_event'], 0, ' B')} | "
        f"{_n(tt['wal_bytes_per_event'], 0, ' B')} | | - | |",
        f"| Recommend (live session): QPS in total | {_n(orc['qps'])} | {_n(trc['qps'])} | "
        f"{_n(ratios['recommend_2_over_1'], 2)} | {_n(lrc['qps'])} | "
        f"{_n(ratios['recommend_postgres_over_sqlite'], 2)} |",
        f"| ... QPS per replica | {per(orc, 'qps')} | {per(trc, 'qps')} | | {per(lrc, 'qps')} | |",
        f"| ... p50 / p99 | {_n(orc['p50_ms'], 1)} / {_n(orc['p99_ms'], 1)} ms | "
        f"{_n(trc['p50_ms'], 1)} / {_n(trc['p99_ms'], 1)} ms | | {_n(lrc['p50_ms'], 1)} / "
        f"{_n(lrc['p99_ms'], 1)} ms | |",
        f"| ... QPS per replica core / per PostgreSQL core | "
        f"{_n(orc['qps_per_replica_core'])} / {_n(orc['qps_per_postgres_core'])} | "
        f"{_n(trc['qps_per_replica_core'])} / {_n(trc['qps_per_postgres_core'])} | | "
        f"{_n(lrc['qps_per_replica_core'])} / - | |",
        "",
        "CPU cores busy (CPU seconds / wall seconds, medians): clients / replica(s) / "
        "PostgreSQL / other (machine busy less those):",
        "",
        "| phase | PostgreSQL, 1 replica | PostgreSQL, 2 replicas | SQLite, 1 replica |",
        "|---|---|---|---|",
        f"| TrackEvents | {_cores(ot, 'postgresql')} | {_cores(tt, 'postgresql')} | "
        f"{_cores(lt, 'sqlite')} |",
        f"| Recommend | {_cores(orc, 'postgresql')} | {_cores(trc, 'postgresql')} | "
        f"{_cores(lrc, 'sqlite')} |",
    ]
    waits = []
    for name in ("postgres-1", "postgres-2"):
        for phase in ("track", "recommend"):
            w = section["runs"][name][phase][-1].get("pg_waits") or {}
            if w.get("share"):
                top = ", ".join(f"{k} {v:.0%}" for k, v in list(w["share"].items())[:4])
                waits.append(
                    f"{name} {phase}: {w['active_backends_mean']} active backends on average; {top}"
                )
    if waits:
        lines += ["", "PostgreSQL backends (last round, sampled): " + "; ".join(waits)]
    lines += ["", f"Replicas section phases (s): {section['phase_seconds']}"]
    return lines
