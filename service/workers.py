"""Several server processes on one port (``processes`` > 1).

Python runs one thread at a time per process, so one process answers at most
one core's worth of recommendations. With ``processes = N`` the server is N
processes bound to the same port (``SO_REUSEPORT``: the kernel spreads client
*connections* over them, so a client with one channel talks to one process):

* The **primary** (the process ``sessionrec serve`` started) owns the store's
  only writing connection (one writer per file, see ``sessionrec.store.sqlite``
  on the WAL-reset bug), the background jobs (session reaper, analytics
  refresh, store probe, model polling) and an internal Unix socket.
* N-1 **workers** open the store read-only. They answer the read RPCs of
  :data:`LOCAL_METHODS` (Recommend, SimilarItems, GetItem, GetModelInfo; health
  and reflection too) themselves, and rank GetOffers too: the offers they show
  are recorded by the primary (:data:`RECORD_OFFER_LOG`, caps checked there
  against every process's impressions). Every other RPC is forwarded as raw bytes
  over the internal socket to the primary, with the caller's metadata (the
  primary checks the API key) and remaining deadline, and its answer relayed:
  message, status, details and trailing metadata (``retry-after-ms``).
* The primary tells the workers over a pipe which model version it serves and
  whether the store takes writes: a ReloadModel (answered by the primary)
  reaches every process, a moment later in the workers, and the workers'
  health follows the store's.
* A worker that dies is started again; a worker whose primary is gone exits.

Per process, as before: rate limits, the catalog snapshot (a worker sees new
items after ``catalog_refresh_interval_s``), ``threads`` and
``max_concurrent_rpcs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from service.periodic import PeriodicTask
from sessionrec.config import Config
from sessionrec.deadline import NO_DEADLINE_S, remaining_s
from sessionrec.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SessionrecError,
    Unavailable,
)
from sessionrec.offers import Offer
from sessionrec.store import OfferLogEntry
from sessionrec.v1 import sessionrec_pb2 as pb

if TYPE_CHECKING:
    from service.offers import OfferEngine

log = logging.getLogger("sessionrec.workers")

#: RPCs a worker answers itself: they only read the store.
LOCAL_METHODS = frozenset(
    {
        "/sessionrec.v1.RecommendationService/Recommend",
        "/sessionrec.v1.RecommendationService/SimilarItems",
        "/sessionrec.v1.CatalogService/GetItem",
        "/sessionrec.v1.AdminService/GetModelInfo",
        # Ranked here; its impressions are recorded by the primary (RECORD_OFFER_LOG).
        "/sessionrec.v1.OfferService/GetOffers",
    }
)
#: The primary's own service for its workers, on the internal socket only
#: (JSON bodies; not in the public API, refused from any other peer).
INTERNAL_SERVICE = "sessionrec.internal.Primary"
RECORD_OFFER_LOG = f"/{INTERNAL_SERVICE}/RecordOfferLog"
#: Request metadata not passed on (gRPC's own; the channel sets them again).
_NOT_FORWARDED = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding"})
#: How long the primary waits for a worker to start serving.
WORKER_START_TIMEOUT_S = 120.0
#: How often the primary looks for workers that died.
WORKER_CHECK_INTERVAL_S = 1.0


def forwarded_methods() -> dict[str, str]:
    """Every sessionrec RPC a worker forwards, with its kind: "unary" or "stream"
    (bidirectional; the API has no half-streaming RPC)."""
    out: dict[str, str] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if path in LOCAL_METHODS:
                continue
            if method.client_streaming != method.server_streaming:
                raise AssertionError(f"{path}: half-streaming RPCs are not forwarded")
            out[path] = "stream" if method.client_streaming else "unary"
    return out


def _timeout(context: grpc.ServicerContext) -> float | None:
    """The caller's remaining deadline for the forwarded call (None: it set none;
    gRPC reports that as a time in the far future, which as a timeout fails at once)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < NO_DEADLINE_S else None


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, Any]]:
    return [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if not key.startswith((":", "grpc-")) and key not in _NOT_FORWARDED
    ]


def _relay_error(context: grpc.ServicerContext, error: grpc.RpcError) -> None:
    """Ends the call with the primary's status, details and trailing metadata."""
    call: Any = error
    trailing = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    code = call.code() if hasattr(call, "code") else None
    details = call.details() if hasattr(call, "details") else None
    context.abort(code or grpc.StatusCode.UNAVAILABLE, details or "primary process: no answer")


class Forwarder:
    """A worker's handlers for the RPCs it passes to the primary (raw bytes both
    ways: nothing is parsed twice)."""

    def __init__(self, channel: grpc.Channel):
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for path, kind in forwarded_methods().items():
            if kind == "unary":
                self._handlers[path] = self._unary(channel.unary_unary(path))
            else:
                self._handlers[path] = self._stream(channel.stream_stream(path))

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def register(self, server: grpc.Server) -> None:
        """Puts the forwarding handlers in place of the servicers' (call it after
        adding them: grpcio keeps the last handler registered for a method)."""
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for path, handler in self._handlers.items():
            service, method = path.lstrip("/").split("/")
            by_service.setdefault(service, {})[method] = handler
        for service, handlers in by_service.items():
            server.add_registered_method_handlers(service, handlers)

    @staticmethod
    def _unary(call: grpc.UnaryUnaryMultiCallable) -> grpc.RpcMethodHandler:
        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            future: Any = call.future(
                request, metadata=_metadata(context), timeout=_timeout(context)
            )
            context.add_callback(future.cancel)  # the caller went away: so does the call
            try:
                response = future.result()
            except grpc.RpcError as exc:
                _relay_error(context, exc)
            except grpc.FutureCancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "cancelled")
            trailing = future.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            return response  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(forward)

    @staticmethod
    def _stream(call: grpc.StreamStreamMultiCallable) -> grpc.RpcMethodHandler:
        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            responses: Any = call(requests, metadata=_metadata(context), timeout=_timeout(context))
            context.add_callback(responses.cancel)
            try:
                yield from responses
            except grpc.RpcError as exc:
                _relay_error(context, exc)

        return grpc.stream_stream_rpc_method_handler(forward)


#: A status from the primary as the domain error the worker's own call ends with.
_ERROR_BY_STATUS: dict[grpc.StatusCode, type[SessionrecError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def offer_log_handler(offers: OfferEngine) -> grpc.GenericRpcHandler:
    """The primary's RECORD_OFFER_LOG: a worker's offer log entries (as lists of
    ``OfferLogEntry`` fields) recorded in the primary's store, caps checked under
    its locks against the primary's offer definitions; the answer lists, per
    entry, why it was not recorded (null: recorded)."""

    def handle(rows: Any, context: grpc.ServicerContext) -> list[str | None]:
        if not str(context.peer()).startswith("unix:"):
            raise PermissionDenied(f"{RECORD_OFFER_LOG}: only for this server's worker processes")
        try:
            entries = [OfferLogEntry(*row) for row in rows]
        except TypeError as exc:
            raise InvalidArgument(f"{RECORD_OFFER_LOG}: entries do not fit: {exc}") from None
        return offers.record_log(entries, offers.offers())  # with the primary's own calls

    return grpc.method_handlers_generic_handler(
        INTERNAL_SERVICE,
        {
            "RecordOfferLog": grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=json.loads, response_serializer=_json_bytes
            )
        },
    )


class PrimaryOfferLog:
    """A worker's ``record_offer_log``: the entries go to the primary (which
    checks caps against every process's impressions), with the caller's deadline."""

    def __init__(self, channel: grpc.Channel):
        self._call = channel.unary_unary(
            RECORD_OFFER_LOG, request_serializer=_json_bytes, response_deserializer=json.loads
        )

    def __call__(
        self, entries: Sequence[OfferLogEntry], offers: Mapping[str, Offer]
    ) -> list[str | None]:
        # The primary judges against its own (current) offer definitions.
        rows = [dataclasses.astuple(e) for e in entries]
        try:
            answer: list[str | None] = self._call(rows, timeout=remaining_s())
        except grpc.RpcError as exc:
            call: Any = exc
            code, details = call.code(), call.details() or "primary process: no answer"
            raise _ERROR_BY_STATUS.get(code, Unavailable)(details) from None
        return answer


class SkipMethods(grpc.ServerInterceptor):
    """``inner`` for every method but ``skipped`` (a worker's forwarded RPCs:
    the primary authenticates, limits and maps their errors, once)."""

    def __init__(self, inner: grpc.ServerInterceptor, skipped: frozenset[str]):
        self.inner = inner
        self.skipped = skipped

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method in self.skipped:
            return continuation(handler_call_details)
        return self.inner.intercept_service(continuation, handler_call_details)


# ------------------------------------------------------------------ worker
@dataclass(frozen=True)
class WorkerLink:
    """What a worker process is told when it starts."""

    #: The primary's internal address (``unix:/path``).
    primary: str
    #: The model version the primary serves ("" for none).
    model_version: str = ""


def worker_main(config: Config, link: WorkerLink, conn: Any) -> None:
    """A worker process: serves until the primary says stop, goes away, or SIGTERM."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s",
    )
    from service.server import create_server  # the server module imports this one

    try:
        running, _ = create_server(config, worker=link)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    done = threading.Event()

    def listen() -> None:
        """Follows the primary's messages; its going away stops this process."""
        try:
            while True:
                message = conn.recv()
                if message[0] == "stop":
                    break
                if message[0] == "model":
                    running.follow_model(message[1])
                elif message[0] == "writable":
                    running.primary_write_error = message[1]
                    running.refresh_health()
        except (EOFError, OSError):
            log.warning("the primary process is gone: stopping")
        done.set()

    signal.signal(signal.SIGTERM, lambda _signum, _frame: done.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the primary, which stops us
    try:
        conn.send(("ready", os.getpid()))
    except OSError:  # the primary went away while this worker started
        log.warning("the primary process is gone: stopping")
        done.set()
    else:
        threading.Thread(target=listen, name="primary-link", daemon=True).start()
    done.wait()
    running.stop()


@dataclass
class _Worker:
    process: Any
    conn: Any
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class WorkerPool:
    """The primary's workers: started, told the primary's state, restarted when
    they die, stopped with the server."""

    def __init__(self, config: Config, internal_address: str, count: int):
        self.config = config
        self.internal_address = internal_address
        self.count = count
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._state: dict[str, Any] = {"model": "", "writable": None}
        self._state_lock = threading.Lock()
        self._monitor: PeriodicTask | None = None
        self._stopping = False
        #: Held while workers are started or stopped: a stop waits for a restart.
        self._spawning = threading.Lock()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def start(self) -> None:
        with self._spawning:
            for _ in range(self.count):
                self._workers.append(self._spawn())
        self._monitor = PeriodicTask("worker-monitor", WORKER_CHECK_INTERVAL_S, self.restart_dead)
        self._monitor.start()

    def _spawn(self) -> _Worker:
        with self._state_lock:
            link = WorkerLink(self.internal_address, self._state["model"])
            writable = self._state["writable"]
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main, args=(self.config, link, child), name="sessionrec-worker"
        )
        process.start()
        child.close()
        if not parent.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"processes: a worker did not start in {WORKER_START_TIMEOUT_S}s")
        try:
            message = parent.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(
                f"processes: a worker exited while starting ({process.exitcode})"
            ) from None
        if message[0] != "ready":
            process.join(5)
            raise RuntimeError(f"processes: a worker failed to start: {message[1]}")
        worker = _Worker(process, parent)
        self._send(worker, ("writable", writable))
        with self._state_lock:  # the model may have changed while it started
            model = self._state["model"]
        if model != link.model_version:
            self._send(worker, ("model", model))
        log.info("worker process %d serving", process.pid)
        return worker

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        with worker.lock, contextlib.suppress(OSError):  # a dead one is restarted
            worker.conn.send(message)

    def tell(self, key: str, value: Any) -> None:
        """Records the primary's ``key`` ("model", "writable") and tells every worker."""
        with self._state_lock:
            if self._state.get(key) == value:
                return
            self._state[key] = value
        for worker in list(self._workers):
            self._send(worker, (key, value))

    def restart_dead(self) -> None:
        with self._spawning:
            for k, worker in enumerate(list(self._workers)):
                if self._stopping or worker.process.is_alive():
                    continue
                log.error(
                    "worker process %d exited (%s): starting another",
                    worker.process.pid,
                    worker.process.exitcode,
                )
                worker.conn.close()
                self._workers[k] = self._spawn()

    def stop(self, grace: float) -> None:
        """Stops every worker: each lets its calls finish for up to ``grace`` s."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.stop()
        with self._spawning:  # a worker being started (again) is stopped too
            self._stop_all(grace)

    def _stop_all(self, grace: float) -> None:
        for worker in self._workers:
            self._send(worker, ("stop",))
        deadline = time.monotonic() + grace + 10.0
        for worker in self._workers:
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker process %d did not stop: killing it", worker.process.pid)
                worker.process.kill()
                worker.process.join(5)
            worker.conn.close()
        self._workers.clear()


def check_port_free(host: str, port: int) -> None:
    """With SO_REUSEPORT a bind never fails because another server holds the port
    with it too: check the port the plain way first (OSError when taken)."""
    import socket

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), port))


def internal_socket_path(tmp_dir: str) -> str:
    return os.path.join(tmp_dir, "primary.sock")
