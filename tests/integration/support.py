"""Small helpers shared by the integration tests (no fixtures here)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import raw_connection

T = TypeVar("T")
RPC_TIMEOUT_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ts(ms: int) -> Timestamp:
    out = Timestamp()
    out.FromMilliseconds(ms)
    return out


def view(item: str, **fields: Any) -> pb.Event:
    """An ITEM_VIEW event; ``timestamp_ms`` becomes the event's timestamp."""
    at = fields.pop("timestamp_ms", None)
    event = pb.Event(type=pb.ITEM_VIEW, item_id=item, **fields)
    if at is not None:
        event.timestamp.CopyFrom(ts(at))
    return event


def rpc_error(call: Callable[..., Any], request: Any, **kwargs: Any) -> grpc.RpcError:
    """Calls ``call(request)`` and returns the RpcError it must raise."""
    try:
        response = call(request, timeout=RPC_TIMEOUT_S, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"expected an error, got {type(response).__name__}: {response}")


def assert_status(
    call: Callable[..., Any], request: Any, code: grpc.StatusCode, field: str
) -> grpc.RpcError:
    """The call fails with ``code`` and details that start with the field name."""
    err = rpc_error(call, request)
    assert err.code() == code, f"{err.code()}: {err.details()}"
    details = err.details() or ""
    assert details.startswith(field), f"details {details!r} should start with {field!r}"
    return err


def wait_for(
    condition: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.05
) -> T | None:
    """Polls ``condition`` until it returns something truthy or the deadline
    passes (a bounded loop); returns the last value."""
    deadline = time.monotonic() + timeout_s
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = condition()
    return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sql_scalar(db_path: Path, query: str, params: tuple = ()) -> Any:
    """One value read straight from the store at ``db_path`` (its own connection;
    a SQLite file is opened read-only)."""
    with raw_connection(db_path, readonly=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
    return int(reply.status)


# ------------------------------------------------------ CLI server process
class ServerProcess:
    """``sessionrec serve`` as a child process on 127.0.0.1:<free port>."""

    def __init__(self, exe: Path, db_url: str, models_dir: Path, log_path: Path, **env: str):
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONREC_")}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [
                str(exe),
                "serve",
                "--db",
                db_url,
                "--models",
                str(models_dir),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.sessions = pb_grpc.SessionServiceStub(self.channel)
        self.recs = pb_grpc.RecommendationServiceStub(self.channel)
        self.admin = pb_grpc.AdminServiceStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        """Polls the health service (bounded) until it says SERVING."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if health_status(self.channel) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not SERVING after {timeout_s}s:\n{self.log()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.channel.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.channel.close()
        self._log.close()


@contextmanager
def server_process(
    exe: Path, db_url: str, models_dir: Path, log_path: Path, **env: str
) -> Iterator[ServerProcess]:
    sp = ServerProcess(exe, db_url, models_dir, log_path, **env)
    try:
        sp.wait_serving()
        yield sp
    finally:
        sp.stop()
