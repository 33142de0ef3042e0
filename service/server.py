"""The sessionrec gRPC server: wiring, health, reflection, graceful shutdown.

Health (grpc.health.v1), by service name:

* ``""`` (the whole server): SERVING while it accepts calls *and* the store
  takes writes. A write that fails for lack of space or an I/O error turns it
  NOT_SERVING until a write succeeds again or a probe (every
  ``STORE_PROBE_INTERVAL_S``, only while failing; it writes nothing) finds
  room on the file system and under the page cap.
* The write-dependent services (``WRITING_SERVICES``) follow ``""``; the
  others (recommendations, admin) stay SERVING while the store is full.
* ``sessionrec.model`` (``MODEL_HEALTH``): NOT_SERVING while the newest model
  artifact asked for could not be loaded (corrupted, tampered): *degraded*,
  the last good model (or popularity) keeps serving and ``""`` stays SERVING.
  gRPC health has no "degraded" status, hence a name of its own.
* Draining (SIGTERM, ``stop()``): everything NOT_SERVING.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from service.auth import AuthInterceptor, SessionTokens
from service.catalog import Catalog
from service.interceptors import ErrorMappingInterceptor
from service.limits import RateLimiter
from service.offers import OfferEngine
from service.periodic import PeriodicTask
from service.recommender import ModelHolder, RecommendationEngine
from service.servicers import (
    AdminServicer,
    AnalyticsServicer,
    CatalogServicer,
    OfferServicer,
    RecommendationServicer,
    SessionServicer,
)
from service.sessions import SessionManager
from service.workers import (
    Forwarder,
    PrimaryOfferLog,
    SkipMethods,
    WorkerLink,
    WorkerPool,
    check_port_free,
    internal_socket_path,
    offer_log_handler,
)
from sessionrec.config import Config
from sessionrec.errors import SessionrecError
from sessionrec.store import Store, open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

log = logging.getLogger("sessionrec.server")

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in (
        "SessionService",
        "RecommendationService",
        "CatalogService",
        "OfferService",
        "AnalyticsService",
        "AdminService",
    )
)
#: The health name that says whether the newest model artifact loaded.
MODEL_HEALTH = "sessionrec.model"
#: Services that keep serving while the store cannot write.
READ_ONLY_SERVICES = frozenset(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("RecommendationService", "AdminService")
)
#: How often a server whose writes fail checks whether there is room again.
STORE_PROBE_INTERVAL_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def log_sqlite_version() -> None:
    """Logs the SQLite library version, with a warning if it has the WAL-reset bug."""
    from sessionrec.store.sqlite import sqlite_version_warning

    warning = sqlite_version_warning()
    if warning:
        log.warning("%s", warning)
    else:
        log.info("SQLite %s", sqlite3.sqlite_version)


@dataclass
class SessionrecServer:
    """A running server and the parts behind it (handy in tests)."""

    server: grpc.Server
    port: int
    config: Config
    store: Store
    sessions: SessionManager
    models: ModelHolder
    engine: RecommendationEngine
    health: health.HealthServicer
    catalog: Catalog
    analytics_refresh: PeriodicTask | None = None
    store_probe: PeriodicTask | None = None
    #: Stops the store's change listener (a store shared by several servers).
    stop_listening: Callable[[], None] | None = None
    #: Accepting calls (False before the start and while draining).
    accepting: bool = False
    #: The primary's worker processes (``processes`` > 1), and its internal socket's folder.
    pool: WorkerPool | None = None
    internal_dir: str | None = None
    #: In a worker: why the primary's store refuses writes (None: it takes them).
    primary_write_error: str | None = None
    _health_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_serving(self, serving: bool) -> None:
        self.accepting = serving
        self.refresh_health()

    def refresh_health(self) -> None:
        """Sets every health name from the state now (see the module docstring)."""
        with self._health_lock:
            store_error = getattr(self.store, "write_error", None)
            writable = store_error is None and self.primary_write_error is None
            model_ok = self.models.last_error is None
            for name in ("", *SERVICE_NAMES, MODEL_HEALTH):
                if name == MODEL_HEALTH:
                    up = self.accepting and model_ok
                elif name in READ_ONLY_SERVICES:
                    up = self.accepting
                else:
                    up = self.accepting and writable
                self.health.set(name, SERVING if up else NOT_SERVING)
            if self.pool is not None:
                self.pool.tell("writable", store_error)

    def follow_model(self, version: str) -> None:
        """A worker: serve ``version`` like the primary (a failure is logged; the
        model in use keeps serving)."""
        loaded = self.models.current
        if not version or (loaded is not None and loaded.artifact.version == version):
            return
        try:
            self.models.reload(version)
        except SessionrecError as exc:
            log.error("could not load model %s like the primary: %s", version, exc)

    def probe_store(self) -> None:
        """While writes fail: clears the failure once there is room again."""
        recheck = getattr(self.store, "recheck_space", None)
        if recheck is not None and getattr(self.store, "write_error", None) is not None:
            recheck()

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, let in-flight calls finish (up to ``grace`` s), then release everything."""
        grace = self.config.grace_s if grace is None else grace
        self.set_serving(False)
        if self.pool is not None:
            self.pool.stop(grace)
        self.server.stop(grace).wait()
        if self.internal_dir is not None:
            shutil.rmtree(self.internal_dir, ignore_errors=True)
        if self.stop_listening is not None:
            self.stop_listening()
        if self.store_probe is not None:
            self.store_probe.stop()
        self.sessions.stop()
        self.models.stop()
        self.catalog.stop()
        if self.analytics_refresh is not None:
            self.analytics_refresh.stop()
        self.store.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


#: Most analytics days one background refresh builds (the newest first).
ANALYTICS_DAYS_PER_REFRESH = 64


def refresh_analytics_days(store: Store) -> None:
    """Builds the analytics days that changed since the last run, so that
    GetSessionStats finds them cached."""
    from sessionrec.analytics import refresh_days

    built = refresh_days(store, store.cache_analytics_days, limit=ANALYTICS_DAYS_PER_REFRESH)
    if built:
        log.debug("analytics: built %d changed days", built)


def on_store_change(catalog: Catalog, auth: AuthInterceptor, topic: str) -> None:
    """Another server changed ``topic`` in the shared store ("*": anything)."""
    if topic in ("catalog", "*"):
        catalog.refresh()
    if topic in ("keys", "*"):
        auth.keys.clear()


def tls_credentials(config: Config) -> grpc.ServerCredentials:
    """Server credentials from the PEM files ``tls_cert_file`` and ``tls_key_file``."""
    with open(config.tls_key_file, "rb") as key, open(config.tls_cert_file, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


def create_server(
    config: Config, *, store: Store | None = None, worker: WorkerLink | None = None
) -> tuple[SessionrecServer, int]:
    """Builds and starts a server on ``config.host:config.port`` (port 0: any free
    port). Returns the running server and the bound port. With ``processes`` > 1
    it also starts the worker processes on the same port (``service.workers``);
    ``worker``: this is one of them."""
    # Numpy's BLAS must not spawn its own threads inside gRPC worker threads.
    threadpool_limits(1, "blas")
    store = store or open_store(
        config.db_url, synchronous=config.sqlite_synchronous, readonly=worker is not None
    )
    if store.url.startswith("sqlite:") and worker is None:
        log_sqlite_version()
    auth = AuthInterceptor.from_config(store, config)
    try:  # no API key: open mode, refused off loopback (ConfigError naming host)
        if worker is None:
            auth.check_startup(port=config.port or None, tls=bool(config.tls_cert_file))
        tokens = SessionTokens.for_store(store, config.session_token_ttl_s)
    except BaseException:
        store.close()
        raise
    sessions = SessionManager(
        store,
        timeout_s=config.session_timeout_s,
        max_clock_skew_s=config.max_clock_skew_s,
        max_events_per_call=config.max_events_per_call,
        user_events_per_s=config.rate_limit_user_events_per_s,
    )
    models = ModelHolder(
        config.models_dir, history_cache_bytes=config.history_cache_mb * 1024 * 1024
    )
    if worker is not None and worker.model_version:
        models.reload(worker.model_version)  # the primary's, pinned or not
    else:
        models.load_initial()
    catalog = Catalog(store, max_items_per_call=config.max_items_per_call)
    catalog.refresh()
    engine = RecommendationEngine(
        store,
        models,
        catalog=catalog,
        history_limit=config.history_limit,
        session_timeout_s=config.session_timeout_s,
        live_session_boost=config.live_session_boost,
        cold_item_share=config.cold_item_share,
    )
    channel = None
    if worker is not None:
        channel = grpc.insecure_channel(worker.primary, options=INTERNAL_CHANNEL_OPTIONS)
    offers = OfferEngine(
        store,
        models,
        catalog,
        holdout_share=config.offer_holdout_share,
        session_timeout_s=config.session_timeout_s,
        live_session_boost=config.live_session_boost,
        history_limit=config.history_limit,
        # A worker ranks offers itself; the primary records what it shows.
        record_log=PrimaryOfferLog(channel) if channel is not None else None,
    )
    sessions.offer_recorder = offers.record_events

    several = worker is not None or config.processes > 1
    interceptors: list[grpc.ServerInterceptor] = [auth, ErrorMappingInterceptor()]
    forwarder = None
    if channel is not None:
        forwarder = Forwarder(channel)
        interceptors = [SkipMethods(i, forwarder.methods) for i in interceptors]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            # One process: a taken port must fail the bind. Several share it.
            ("grpc.so_reuseport", 1 if several else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    pb_grpc.add_SessionServiceServicer_to_server(SessionServicer(sessions, tokens), server)
    # Recommend and GetOffers share one per-user call budget.
    user_calls = RateLimiter(config.rate_limit_user_calls_per_s, what="calls")
    pb_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationServicer(engine, user_calls), server
    )
    pb_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(catalog), server)
    pb_grpc.add_OfferServiceServicer_to_server(OfferServicer(offers, user_calls), server)
    pb_grpc.add_AnalyticsServiceServicer_to_server(
        AnalyticsServicer(store, engine, offers, config), server
    )
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(models, store), server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    if forwarder is not None:  # its RPCs are not served in this process
        forwarder.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    internal_dir = None
    try:
        if config.processes > 1 and worker is None:
            if config.port:
                check_port_free(config.host, config.port)
            internal_dir = tempfile.mkdtemp(prefix="sessionrec-")
            server.add_insecure_port(f"unix:{internal_socket_path(internal_dir)}")
            server.add_generic_rpc_handlers((offer_log_handler(offers),))
        if config.tls_cert_file:
            port = server.add_secure_port(address, tls_credentials(config))
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:  # grpcio raises instead of returning 0 since 1.5x
        port = 0
        reason = str(exc)
    else:
        reason = "port unavailable"
    if port == 0:
        models.stop()
        store.close()
        if internal_dir is not None:
            shutil.rmtree(internal_dir, ignore_errors=True)
        raise OSError(f"address: could not bind {address} ({reason})")
    running = SessionrecServer(
        server=server,
        port=port,
        config=config,
        store=store,
        sessions=sessions,
        models=models,
        engine=engine,
        health=health_servicer,
        catalog=catalog,
        internal_dir=internal_dir,
    )
    primary = worker is None
    if primary and config.analytics_refresh_interval_s > 0:
        running.analytics_refresh = PeriodicTask(
            "analytics-refresh",
            config.analytics_refresh_interval_s,
            partial(refresh_analytics_days, store),
        )
        running.analytics_refresh.start()
    add_write_listener = getattr(store, "add_write_listener", None)
    if primary and add_write_listener is not None:
        add_write_listener(lambda _error: running.refresh_health())
        running.store_probe = PeriodicTask(
            "store-probe", STORE_PROBE_INTERVAL_S, running.probe_store
        )
        running.store_probe.start()
    models.add_listener(lambda _error: running.refresh_health())
    running.set_serving(False)
    server.start()
    listen = getattr(store, "listen", None)
    if listen is not None:  # other servers share the store: hear of their changes
        running.stop_listening = listen(partial(on_store_change, catalog, auth))
    catalog.start_polling(config.catalog_refresh_interval_s)
    if primary:
        sessions.start_reaper(config.reaper_interval_s)
        models.start_polling(config.model_poll_interval_s)
    if internal_dir is not None:
        running.pool = start_workers(running, internal_dir)
    running.set_serving(True)
    return running, port


#: A worker's channel to the primary: messages were size-checked where they came in.
INTERNAL_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


def start_workers(running: SessionrecServer, internal_dir: str) -> WorkerPool:
    """Starts ``processes - 1`` workers on the primary's port; they follow the
    primary's model (every load attempt is passed on). A worker that cannot
    start stops the server."""
    config = running.config
    pool = WorkerPool(
        dataclasses.replace(config, port=running.port, processes=1),
        f"unix:{internal_socket_path(internal_dir)}",
        config.processes - 1,
    )

    def served_version() -> str:
        loaded = running.models.current
        return loaded.artifact.version if loaded is not None else ""

    pool.tell("model", served_version())
    try:
        pool.start()
    except BaseException:
        pool.stop(0)
        running.stop(0)
        raise
    running.models.add_listener(lambda _error: pool.tell("model", served_version()))
    return pool


def serve(config: Config) -> None:
    """Runs until SIGTERM/SIGINT: then NOT_SERVING, in-flight calls finish, exit."""
    running, port = create_server(config)
    loaded = running.models.current
    log.info(
        "sessionrec serving on %s:%d (store %s, model %s)",
        config.host,
        port,
        config.db_url,
        loaded.artifact.version if loaded else "none: popularity only",
    )
    shutdown = threading.Thread(target=running.stop, name="shutdown")

    def on_signal(signum: int, _frame: object) -> None:
        if shutdown.is_alive() or shutdown.ident is not None:
            return
        log.info(
            "received %s: draining for up to %.1fs", signal.Signals(signum).name, config.grace_s
        )
        shutdown.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running.wait()
    if shutdown.ident is not None:
        shutdown.join()
    log.info("sessionrec stopped")
