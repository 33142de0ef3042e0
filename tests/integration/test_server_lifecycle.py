"""Starting and stopping servers: a taken port, a second server on the same
store, stop() releasing everything."""

from __future__ import annotations

import socket

import grpc
import pytest

from service.server import create_server
from sessionrec.v1 import sessionrec_pb2 as pb
from tests.conftest import store_url

from .support import rpc_error, sql_scalar, view


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that something else is listening on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_create_server_on_a_taken_port_raises_oserror(tmp_path, taken_port, make_config):
    """create_server documents ``OSError("could not bind <address>")`` for a taken port."""
    config = make_config(tmp_path / "p.db", tmp_path / "m", port=taken_port)
    with pytest.raises(OSError, match=f"127.0.0.1:{taken_port}"):
        create_server(config)


def test_cli_serve_on_a_taken_port_fails_cleanly(tmp_path, taken_port, cli):
    result = cli(
        "serve",
        "--db",
        store_url(tmp_path / "p.db"),
        "--models",
        str(tmp_path / "m"),
        "--host",
        "127.0.0.1",
        "--port",
        str(taken_port),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{taken_port}" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_stop_refuses_new_calls_and_keeps_the_data(start_server):
    srv = start_server()
    reply = srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("i1", user_id="stan", event_id="st-1")]), timeout=10
    )
    assert reply.accepted == 1
    srv.server.stop(grace=0.5)
    err = rpc_error(srv.recs.Recommend, pb.RecommendRequest(user_id="stan", n=3))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    # A new server on the same file sees everything acknowledged before.
    again = start_server(srv.db_path, srv.models_dir)
    assert again.port != 0
    assert sql_scalar(again.db_path, "SELECT COUNT(*) FROM events WHERE event_id='st-1'") == 1
    dup = again.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("i1", user_id="stan", event_id="st-1")]), timeout=10
    )
    assert (dup.accepted, dup.duplicates) == (0, 1)


def test_two_servers_share_one_store(start_server, tmp_path):
    one = start_server(tmp_path / "shared.db", tmp_path / "m")
    two = start_server(tmp_path / "shared.db", tmp_path / "m")
    assert one.port != two.port
    sid = one.sessions.StartSession(pb.StartSessionRequest(user_id="sue"), timeout=10).session_id
    reply = two.sessions.TrackEvents(
        pb.TrackEventsRequest(events=[view("i1", session_id=sid, event_id="sh-1")]), timeout=10
    )
    assert reply.accepted == 1
    assert one.sessions.GetSession(pb.GetSessionRequest(session_id=sid)).event_count == 1
