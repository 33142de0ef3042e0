"""The real ``sessionrec serve`` process: SIGTERM drains (NOT_SERVING, in-flight
calls finish) and exits cleanly. kill -9 under load, again and again, is in
``test_crash_safety``."""

from __future__ import annotations

import signal
import time

import grpc
from grpc_health.v1 import health_pb2

from sessionrec.v1 import sessionrec_pb2 as pb
from tests.conftest import store_url, write_lock_held

from .support import health_status, server_process, sql_scalar, view

GRACE_S = 2.0


def test_sigterm_drains_and_exits_zero(tmp_path, sessionrec_bin):
    db = tmp_path / "t.db"
    url = store_url(db)
    with server_process(
        sessionrec_bin, url, tmp_path / "m", tmp_path / "serve.log", SESSIONREC_GRACE_S=str(GRACE_S)
    ) as sp:
        reply = sp.sessions.TrackEvents(
            pb.TrackEventsRequest(events=[view("i", user_id="tim", event_id="before-term")]),
            timeout=10,
        )
        assert reply.accepted == 1
        assert health_status(sp.channel) == health_pb2.HealthCheckResponse.SERVING

        # A call in flight when SIGTERM comes: it waits for the store's write
        # lock, which the test holds (the server's busy timeout outlasts it).
        with write_lock_held(db):
            in_flight = sp.sessions.TrackEvents.future(
                pb.TrackEventsRequest(events=[view("i", user_id="tim", event_id="in-flight")]),
                timeout=GRACE_S + 5,
            )
            time.sleep(0.3)
            assert not in_flight.done()
            sp.proc.send_signal(signal.SIGTERM)
            outcome = wait_until_draining(sp)
        # Within the grace period the in-flight call finishes, and is stored.
        assert in_flight.result(timeout=GRACE_S + 5).accepted == 1
        # Draining said so: NOT_SERVING, or new calls refused (a stopping grpc
        # server answers CANCELLED, a stopped one UNAVAILABLE); the server could
        # not be gone while the call was in flight.
        refused = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert outcome == "NOT_SERVING" or outcome in refused, outcome

        # Exits on its own within the grace period (plus process start-up slack).
        returncode = sp.proc.wait(timeout=GRACE_S + 10)
        assert returncode == 0, sp.log()
        log = sp.log()
        assert "SIGTERM" in log and "stopped" in log, log

    assert sql_scalar(db, "SELECT COUNT(*) FROM events") == 2


def wait_until_draining(sp) -> object:
    """Bounded poll: the health service says NOT_SERVING, or the server is gone."""
    for _ in range(200):
        try:
            status = health_status(sp.channel)
        except grpc.RpcError as exc:
            return exc.code()
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            return "NOT_SERVING"
        if sp.proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None
