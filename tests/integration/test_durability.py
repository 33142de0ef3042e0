"""The real ``sessionrec serve`` process: acknowledged events survive kill -9,
and SIGTERM drains and exits cleanly."""

from __future__ import annotations

import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from sessionrec.v1 import sessionrec_pb2 as pb

from .support import health_status, server_process, sql_scalar, view

GRACE_S = 2.0


def test_acknowledged_events_survive_kill_9(tmp_path, sessionrec_bin):
    db = tmp_path / "x.db"
    models = tmp_path / "m"
    url = "sqlite:///" + str(db)
    acked: list[str] = []

    with server_process(sessionrec_bin, url, models, tmp_path / "serve-1.log") as first:
        sid = first.sessions.StartSession(
            pb.StartSessionRequest(user_id="dora", session_id="s-dora"), timeout=10
        ).session_id
        assert sid == "s-dora"
        for batch in range(20):
            events = [
                view(f"item-{k}", session_id=sid, event_id=f"e-{batch}-{k}") for k in range(5)
            ]
            reply = first.sessions.TrackEvents(pb.TrackEventsRequest(events=events), timeout=10)
            assert reply.accepted == 5
            acked.extend(reply.event_ids)

        # A writer keeps going while the process is killed; only what it got
        # an answer for counts as acknowledged.
        sent: list[str] = []
        in_flight_acked: list[str] = []
        wrong: list[str] = []
        stop = threading.Event()
        enough = threading.Event()

        def writer() -> None:
            for i in range(2000):  # bounded
                if stop.is_set():
                    return
                event_id = f"w-{i}"
                sent.append(event_id)
                try:
                    reply = first.sessions.TrackEvents(
                        pb.TrackEventsRequest(
                            events=[view("item-w", session_id=sid, event_id=event_id)]
                        ),
                        timeout=5,
                    )
                except grpc.RpcError:
                    return
                if reply.accepted != 1:
                    wrong.append(f"{event_id}: {reply}")
                    return
                in_flight_acked.append(event_id)
                if len(in_flight_acked) >= 30:
                    enough.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        assert enough.wait(timeout=60), first.log()
        first.kill9()
        assert first.proc.returncode == -signal.SIGKILL
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert wrong == []
    acked.extend(in_flight_acked)

    # Straight from the file, before any server touches it again.
    counted = sql_scalar(db, "SELECT COUNT(*) FROM events")
    assert len(acked) <= counted <= len(acked) + (len(sent) - len(in_flight_acked))

    with server_process(sessionrec_bin, url, models, tmp_path / "serve-2.log") as second:
        marks = ",".join("?" * len(acked))
        present = sql_scalar(
            db,
            f"SELECT COUNT(DISTINCT event_id) FROM events WHERE event_id IN ({marks})",
            tuple(acked),
        )
        assert present == len(acked), "an acknowledged event was lost"
        rows = sql_scalar(
            db, f"SELECT COUNT(*) FROM events WHERE event_id IN ({marks})", tuple(acked)
        )
        assert rows == len(acked), "an acknowledged event is stored twice"

        session = second.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
        stored_in_session = sql_scalar(
            db, "SELECT COUNT(*) FROM events WHERE session_id = ?", (sid,)
        )
        assert session.event_count == stored_in_session
        assert session.event_count >= len(acked)

        # Resending everything acknowledged after the restart stores nothing twice.
        for start in range(0, len(acked), 500):
            chunk = acked[start : start + 500]
            reply = second.sessions.TrackEvents(
                pb.TrackEventsRequest(
                    events=[view("item-0", session_id=sid, event_id=e) for e in chunk]
                ),
                timeout=10,
            )
            assert (reply.accepted, reply.duplicates) == (0, len(chunk))
        again = second.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
        assert again.event_count == session.event_count


def test_sigterm_drains_and_exits_zero(tmp_path, sessionrec_bin):
    url = "sqlite:///" + str(tmp_path / "t.db")
    with server_process(
        sessionrec_bin, url, tmp_path / "m", tmp_path / "serve.log", SESSIONREC_GRACE_S=str(GRACE_S)
    ) as sp:
        reply = sp.sessions.TrackEvents(
            pb.TrackEventsRequest(events=[view("i", user_id="tim", event_id="before-term")]),
            timeout=10,
        )
        assert reply.accepted == 1
        assert health_status(sp.channel) == health_pb2.HealthCheckResponse.SERVING

        sp.proc.send_signal(signal.SIGTERM)
        # Bounded poll: the health service says NOT_SERVING, or the server is gone.
        outcome = None
        for _ in range(200):
            try:
                status = health_status(sp.channel)
            except grpc.RpcError as exc:
                outcome = exc.code()
                break
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                outcome = "NOT_SERVING"
                break
            if sp.proc.poll() is not None:
                break
            time.sleep(0.02)
        # A stopping grpc server refuses new calls (CANCELLED), a stopped one is UNAVAILABLE.
        refused = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert outcome == "NOT_SERVING" or outcome in refused or sp.proc.poll() is not None, outcome

        # Exits on its own within the grace period (plus process start-up slack).
        returncode = sp.proc.wait(timeout=GRACE_S + 10)
        assert returncode == 0, sp.log()
        log = sp.log()
        assert "SIGTERM" in log and "stopped" in log, log

    assert sql_scalar(tmp_path / "t.db", "SELECT COUNT(*) FROM events") == 1
