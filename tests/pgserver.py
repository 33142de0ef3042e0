"""A private PostgreSQL cluster on 127.0.0.1 for the tests and benchmarks.

Debian's server binaries (``/usr/lib/postgresql/*/bin``, or ``$PG_BINDIR``) run
a throwaway cluster in a temporary directory on a free port: ``initdb``, then
``pg_ctl start``, then one database per store. As root the cluster runs as
the ``postgres`` user (PostgreSQL refuses root). ``SESSIONREC_TEST_PG_URL``
names an existing server instead (its databases are created and dropped
the same way).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: An existing server to use instead of a private cluster (a maintenance URL).
URL_ENV = "SESSIONREC_TEST_PG_URL"


def find_bindir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``, or None."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def available() -> str | None:
    """Why no PostgreSQL can be had here (None: one can)."""
    if os.environ.get(URL_ENV):
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'sessionrec[postgresql]')"
    if find_bindir() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql, or set PG_BINDIR)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running PostgreSQL: a private cluster (:meth:`start`) or ``$SESSIONREC_TEST_PG_URL``."""

    def __init__(self, *, durable: bool = False):
        #: ``durable``: fsync as in production (benchmarks); tests run without.
        self.durable = durable
        self.base: Path | None = None
        self.port = 0
        self.maintenance_url = os.environ.get(URL_ENV, "")
        self._as_user: list[str] = []

    def start(self) -> PostgresServer:
        if self.maintenance_url:
            return self
        why = available()
        if why is not None:
            raise RuntimeError(f"PostgreSQL: {why}")
        bindir = find_bindir()
        assert bindir is not None
        self.base = Path(tempfile.mkdtemp(prefix="sessionrec-pg-"))
        data = self.base / "data"
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chmod(self.base, 0o755)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self._run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.base}",
            "-c max_connections=400",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.base / "server.log"),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.maintenance_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def url(self, dbname: str) -> str:
        base, _, _ = self.maintenance_url.rpartition("/")
        return f"{base}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.maintenance_url, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its URL."""
        copy = f" TEMPLATE {template}" if template else ""
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._admin(f"CREATE DATABASE {name}{copy}")
        return self.url(name)

    def database_for(self, key: str) -> str:
        """The URL of the database named after ``key`` (e.g. a test's store path),
        created on first use: the same key gives the same database."""
        name = "t_" + hashlib.sha1(key.encode()).hexdigest()[:20]
        import psycopg

        with psycopg.connect(self.maintenance_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not found:
                conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.base is None:
            return
        bindir = find_bindir()
        if bindir is not None:
            subprocess.run(
                [
                    *self._as_user,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.base / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
