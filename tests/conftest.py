"""Shared fixtures: real sessionrec servers on 127.0.0.1, real SQLite files, real models.

In the style of httpx's test suite: a factory fixture starts a real server
(``create_server`` on port 0) and hands back stubs on an insecure channel; the
server is stopped when the test ends. Nothing is mocked.

* ``start_server(db_path=None, models_dir=None, **config)`` -> :class:`RunningServer`
  (``make_config`` builds the same Config without starting anything)
* ``client``: one server on a fresh store with no model
* ``movielens`` (session): MovieLens 100K converted to CSV in a tmp dir, imported
  with the real ``sessionrec import`` CLI and trained with ``sessionrec train``
  (ALS, default parameters). Skipped when the dataset is absent.
* ``synthetic`` (session): a small two-cluster catalogue imported with
  ``training.importer`` and trained with ``training.pipeline.train`` (needs no
  dataset); ``make_synthetic_rows`` is its generator.
* ``movielens_copy`` / ``synthetic_copy``: a private copy (store and models) for
  one test, so tests that write never see each other's events.
* ``cli(*args)`` runs the real console script; ``sessionrec_bin`` is its path.

The store under test: SQLite files by default; with ``SESSIONREC_TEST_STORE=postgresql``
(``make test-postgres``) every store a fixture opens is a PostgreSQL database
instead, one per store path (:func:`store_url`), on a private cluster started
for the session (``tests/pgserver.py``). Tests marked ``sqlite_only`` check
SQLite itself (its files, WAL, pages) and are skipped then. To look at raw rows
of either store: ``raw_connection(path)`` (``?`` SQL on both), ``table_names``,
``store_exists``; ``write_lock_held(path)`` blocks every write from outside.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from service.server import SessionrecServer, create_server
from sessionrec.config import Config
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.pgserver import PostgresServer

# pytest loads this file as the module ``conftest``, and tests import it as
# ``tests.conftest``: one module under both names, or the second copy would
# start (and never stop) a PostgreSQL cluster of its own, and its store_url()
# would name databases the fixtures' servers never see.
if __name__ != "tests.conftest":
    sys.modules.setdefault("tests.conftest", sys.modules[__name__])

REPO = Path(__file__).resolve().parent.parent
#: The console script of the virtualenv that runs the tests.
SESSIONREC = Path(sys.executable).parent / "sessionrec"
CLI_TIMEOUT_S = 180


# ----------------------------------------------------------------- stores
#: Which store the suite runs on: "sqlite" (default) or "postgresql".
TEST_STORE = os.environ.get("SESSIONREC_TEST_STORE", "sqlite")
if TEST_STORE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"SESSIONREC_TEST_STORE: sqlite or postgresql, got {TEST_STORE!r}")


class _Postgres:
    """The session's PostgreSQL, started on first use and stopped at the end."""

    server: PostgresServer | None = None

    @classmethod
    def get(cls) -> PostgresServer:
        if cls.server is None:
            cls.server = PostgresServer().start()
            atexit.register(cls.stop)  # also when the session ends without finishing
        return cls.server

    @classmethod
    def stop(cls) -> None:
        if cls.server is not None:
            cls.server.stop()
            cls.server = None


def store_url(path: Path) -> str:
    """The URL of the store a test keeps at ``path``: that SQLite file, or (on
    PostgreSQL) the database named after the path, created on first use."""
    if TEST_STORE == "postgresql":
        return _Postgres.get().database_for(str(path))
    return "sqlite:///" + str(path)


def copy_store(src: Path, dst: Path) -> None:
    """A consistent copy of the store at ``src`` as the store at ``dst``."""
    if TEST_STORE == "postgresql":
        pg = _Postgres.get()
        source = store_url(src).rpartition("/")[2]
        pg.create_database(store_url(dst).rpartition("/")[2], template=source)
        return
    source = sqlite3.connect(src)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


@contextmanager
def raw_connection(path: Path, *, readonly: bool = False) -> Iterator[Any]:
    """A plain connection to the store at ``path`` beside the store's own (to look
    at or change raw rows), in autocommit mode: sqlite3, or on PostgreSQL a
    psycopg connection that takes the same ``?`` SQL. ``readonly``: a SQLite file
    is opened read-only (beside a live server)."""
    if TEST_STORE == "postgresql":
        import psycopg

        from sessionrec.store.postgres import _Connection

        with psycopg.connect(store_url(path), autocommit=True) as pg:
            yield _Connection(pg)
        return
    if readonly:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def table_names(conn: Any) -> set[str]:
    """The tables of the store behind ``conn`` (a :func:`raw_connection`)."""
    if TEST_STORE == "postgresql":
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {row[0] for row in conn.execute(sql).fetchall()}


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another client holds the write lock of the store at ``path`` while the
    block runs: SQLite's file lock (``BEGIN EXCLUSIVE``), or on PostgreSQL an
    EXCLUSIVE lock on every table. Reads go on; every write waits."""
    with raw_connection(path) as conn:
        if TEST_STORE == "postgresql":
            conn.execute("BEGIN")
            tables = ", ".join(sorted(table_names(conn)))
            conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
        else:
            conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def store_exists(path: Path) -> bool:
    """Whether the store at ``path`` was created: its SQLite file, or (on
    PostgreSQL) any table in the database named after it."""
    if TEST_STORE == "postgresql":
        with raw_connection(path) as conn:
            return bool(table_names(conn))
    return path.exists()


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """A PostgreSQL server for tests that need one whatever the suite's store
    (skipped, with the reason, where none can be had)."""
    from tests.pgserver import available

    why = available()
    if why is not None:
        pytest.skip(f"PostgreSQL: {why}")
    return _Postgres.get()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_STORE != "postgresql":
        return
    skip = pytest.mark.skip(reason="checks SQLite itself; this run is on PostgreSQL")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _Postgres.stop()


# ---------------------------------------------------------------- servers
@dataclass
class RunningServer:
    """A started server plus a channel and one stub per service."""

    server: SessionrecServer
    port: int
    db_path: Path
    models_dir: Path
    channel: grpc.Channel
    sessions: pb_grpc.SessionServiceStub
    recs: pb_grpc.RecommendationServiceStub
    admin: pb_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return store_url(self.db_path)


def server_config(db_path: Path, models_dir: Path, **overrides: Any) -> Config:
    """A test configuration: loopback, any free port, no model polling, and no
    ``SESSIONREC_*`` variables from the environment."""
    values: dict[str, Any] = {
        "db_url": store_url(db_path),
        "models_dir": str(models_dir),
        "port": 0,
        "host": "127.0.0.1",
        "model_poll_interval_s": 0,
        "workers": 8,
        "grace_s": 1.0,
    }
    values.update(overrides)
    return Config.load(values, env={})


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    """``make_config(db_path, models_dir, **overrides)``: the config start_server uses."""
    return server_config


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``start_server(db_path=None, models_dir=None, **config_overrides)``."""
    started: list[RunningServer] = []

    def start(
        db_path: Path | None = None, models_dir: Path | None = None, **overrides: Any
    ) -> RunningServer:
        n = len(started)
        db = Path(db_path) if db_path else tmp_path / f"server{n}.db"
        models = Path(models_dir) if models_dir else tmp_path / f"models{n}"
        running, port = create_server(server_config(db, models, **overrides))
        assert port > 0
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        rs = RunningServer(
            server=running,
            port=port,
            db_path=db,
            models_dir=models,
            channel=channel,
            sessions=pb_grpc.SessionServiceStub(channel),
            recs=pb_grpc.RecommendationServiceStub(channel),
            admin=pb_grpc.AdminServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )
        started.append(rs)
        return rs

    yield start
    for rs in reversed(started):
        rs.channel.close()
        rs.server.stop(grace=0.5)


@pytest.fixture
def client(start_server: Callable[..., RunningServer]) -> RunningServer:
    """A server on an empty store with no model."""
    return start_server()


# -------------------------------------------------------------------- CLI
@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> CliResult:
    """Runs the real ``sessionrec`` console script of this virtualenv."""
    proc = subprocess.run(
        [str(SESSIONREC), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SESSIONREC_")}


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """``cli("import", "--db", url, path)`` runs the real console script."""
    return run_cli


@pytest.fixture(scope="session")
def sessionrec_bin() -> Path:
    """Path of the ``sessionrec`` console script (for ``sessionrec serve`` processes)."""
    assert SESSIONREC.exists(), f"{SESSIONREC} missing: pip install -e . into this venv"
    return SESSIONREC


# ------------------------------------------------------------- data sets
@dataclass
class TrainedStore:
    """A store file and a models dir holding one current version."""

    db_path: Path
    models_dir: Path
    version: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        return store_url(self.db_path)


@dataclass
class MovieLens(TrainedStore):
    csv_path: Path = Path()
    rows: int = 0
    import_result: CliResult | None = None
    train_result: CliResult | None = None


def copy_trained(store: TrainedStore, into: Path) -> TrainedStore:
    into.mkdir(parents=True, exist_ok=True)
    db = into / "store.db"
    copy_store(store.db_path, db)
    models = into / "models"
    shutil.copytree(store.models_dir, models)
    return TrainedStore(db, models, store.version, dict(store.info))


@pytest.fixture(scope="session")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> MovieLens:
    """MovieLens 100K: converted into tmp, imported and trained once per session
    with the real CLI. Treat as read-only; use ``movielens_copy`` to write."""
    from training.datasets import MOVIELENS_100K, movielens_to_csv

    if not MOVIELENS_100K.exists():
        pytest.skip(f"MovieLens 100K not found at {MOVIELENS_100K} (../shared/datasets)")
    root = tmp_path_factory.mktemp("movielens")
    csv_path = root / "ml100k.csv"
    rows = movielens_to_csv(MOVIELENS_100K, csv_path)
    db = root / "ml100k.db"
    models = root / "models"
    url = store_url(db)
    imported = run_cli("import", "--db", url, str(csv_path), "--quiet")
    assert imported.returncode == 0, imported.stderr
    # A fixed live-session blend: choosing one on MovieLens costs ~30 s (tested elsewhere).
    trained = run_cli(
        "train",
        "--db",
        url,
        "--models",
        str(models),
        "--blend",
        "knn=1,rules=0.01,model=0.03",
        "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    info = trained.json()
    return MovieLens(
        db_path=db,
        models_dir=models,
        version=info["version"],
        info=info,
        csv_path=csv_path,
        rows=rows,
        import_result=imported,
        train_result=trained,
    )


@pytest.fixture
def movielens_copy(movielens: MovieLens, tmp_path: Path) -> TrainedStore:
    return copy_trained(movielens, tmp_path / "ml")


#: The synthetic catalogue: two clusters of items that users of one cluster view.
CLUSTER_A = [f"a{i:02d}" for i in range(15)]
CLUSTER_B = [f"b{i:02d}" for i in range(15)]
SYNTHETIC_USERS = 60
SYNTHETIC_PARAMS = {"factors": 8, "iterations": 10, "num_threads": 1}


def synthetic_rows(seed: int = 7) -> list[tuple[str, str, str, int]]:
    """(user, item, event type, epoch seconds): users u00..u29 view cluster A,
    u30..u59 cluster B; popularity falls with the item number."""
    rng = random.Random(seed)
    start = int(time.time()) - 5 * 24 * 3600
    rows = []
    for u in range(SYNTHETIC_USERS):
        items = CLUSTER_A if u < SYNTHETIC_USERS // 2 else CLUSTER_B
        weights = [len(items) - i for i in range(len(items))]
        chosen: set[str] = set()
        while len(chosen) < 7:
            chosen.add(rng.choices(items, weights)[0])
        for k, item in enumerate(sorted(chosen)):
            rows.append((f"u{u:02d}", item, "ITEM_VIEW", start + u * 600 + k * 30))
    return rows


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> TrainedStore:
    """A small two-cluster store, imported with training.importer and trained
    (ALS, 8 factors) with training.pipeline.train. Read-only: copy to write."""
    from sessionrec.store import open_store
    from training.importer import import_csv
    from training.pipeline import train

    root = tmp_path_factory.mktemp("synthetic")
    csv_path = root / "synthetic.csv"
    rows = synthetic_rows()
    with open(csv_path, "w") as fh:
        fh.write("user_id,item_id,event_type,timestamp\n")
        for user, item, etype, ts in rows:
            fh.write(f"{user},{item},{etype},{ts}\n")
    db = root / "synthetic.db"
    models = root / "models"
    with open_store(store_url(db)) as store:
        report = import_csv(store, csv_path)
        assert report.imported == len(rows) and not report.bad
        artifact = train(store, str(models), "als", dict(SYNTHETIC_PARAMS))
    return TrainedStore(db, models, artifact.version, {"rows": rows, "params": SYNTHETIC_PARAMS})


@pytest.fixture(scope="session")
def make_synthetic_rows() -> Callable[..., list[tuple[str, str, str, int]]]:
    """The generator behind ``synthetic``, for tests that send the events themselves."""
    return synthetic_rows


@pytest.fixture
def synthetic_copy(synthetic: TrainedStore, tmp_path: Path) -> TrainedStore:
    return copy_trained(synthetic, tmp_path / "syn")
