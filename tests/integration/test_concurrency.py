"""Many clients at once against one server: counters stay exact and
server-side sessionization opens one session per user."""

from __future__ import annotations

import threading

import grpc

from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc

from .support import sql_scalar, view

CLIENTS = 8


def run_together(target, n: int = CLIENTS) -> list[BaseException]:
    """Runs ``target(k)`` in n threads released at once; returns their exceptions."""
    barrier = threading.Barrier(n, timeout=30)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            barrier.wait()
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return errors


def test_concurrent_batches_into_one_session_keep_exact_counts(client):
    sid = client.sessions.StartSession(pb.StartSessionRequest(user_id="cc"), timeout=10).session_id
    channels = [grpc.insecure_channel(client.address) for _ in range(CLIENTS)]
    try:

        def send(k: int) -> None:
            stub = pb_grpc.SessionServiceStub(channels[k])
            for batch in range(5):
                events = [
                    # ids overlap between neighbouring clients: half are duplicates
                    view(f"i{j}", session_id=sid, event_id=f"cc-{(k // 2)}-{batch}-{j}")
                    for j in range(10)
                ]
                stub.TrackEvents(pb.TrackEventsRequest(events=events), timeout=30)

        assert run_together(send) == []
    finally:
        for ch in channels:
            ch.close()
    expected = (CLIENTS // 2) * 5 * 10
    assert sql_scalar(client.db_path, "SELECT COUNT(*) FROM events") == expected
    session = client.sessions.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
    assert session.event_count == expected


def test_concurrent_first_events_of_a_user_open_one_session(client):
    """Server-side sessionization: events without session_id join the user's open
    session. Several first events arriving at once must still end up in one session."""
    channels = [grpc.insecure_channel(client.address) for _ in range(CLIENTS)]
    try:
        for trial in range(3):
            user = f"racer-{trial}"

            def send(k: int, user: str = user) -> None:
                stub = pb_grpc.SessionServiceStub(channels[k])
                reply = stub.TrackEvents(
                    pb.TrackEventsRequest(events=[view(f"i{k}", user_id=user)]), timeout=30
                )
                assert reply.accepted == 1

            assert run_together(send) == []
            assert (
                sql_scalar(client.db_path, "SELECT COUNT(*) FROM events WHERE user_id = ?", (user,))
                == CLIENTS
            )
            sessions = sql_scalar(
                client.db_path, "SELECT COUNT(*) FROM sessions WHERE user_id = ?", (user,)
            )
            assert sessions == 1, f"{user}: {sessions} sessions opened for one burst of events"
    finally:
        for ch in channels:
            ch.close()
