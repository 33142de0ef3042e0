"""Authentication and authorization on real servers: API keys and roles for
every RPC, revocation, open mode, session tokens, per-key rate limits, TLS, and
the ``sessionrec keys`` CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from service.auth import (
    RPC_ROLES,
    SessionTokens,
    is_loopback,
    method_roles,
    required_role,
)
from service.server import create_server
from sessionrec.apikeys import ROLES, create_key, hash_secret
from sessionrec.config import Config
from sessionrec.errors import ConfigError
from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from sessionrec.v1 import sessionrec_pb2_grpc as pb_grpc
from tests.conftest import TEST_STORE, raw_connection, store_url

from .support import RPC_TIMEOUT_S, rpc_error, sql_scalar, view, wait_for

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
AUTH_CODES = (UNAUTHENTICATED, PERMISSION_DENIED)
#: The session RPCs an ingest key may only use on the session of its token.
SESSION_SCOPED = {
    "/sessionrec.v1.SessionService/TrackEvents",
    "/sessionrec.v1.SessionService/StreamEvents",
    "/sessionrec.v1.SessionService/EndSession",
    "/sessionrec.v1.SessionService/GetSession",
}


def auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def make_keys(db_path: Path) -> dict[str, str]:
    """One key per role in the store at ``db_path`` (created before any server)."""
    with open_store(store_url(db_path)) as store:
        return {role: create_key(store, f"test {role}", role)[0] for role in ROLES}


@pytest.fixture
def keyed(start_server, tmp_path):
    """A server whose store holds one key per role: (server, {role: key})."""
    db = tmp_path / "keyed.db"
    keys = make_keys(db)
    return start_server(db), keys


def invoke(
    channel: grpc.Channel,
    path: str,
    request: Any = None,
    metadata: list[tuple[str, str]] | None = None,
) -> grpc.StatusCode:
    """Calls any RPC by method path (an empty request unless given): its status."""
    service_name, method_name = path.lstrip("/").split("/")
    service = pb.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[1]]
    method = service.methods_by_name[method_name]
    request_cls = getattr(pb, method.input_type.name)
    response_cls = getattr(pb, method.output_type.name)
    codec = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    try:
        if method.client_streaming:  # one request on the stream
            stream = channel.stream_stream(path, **codec)
            replies = stream(
                iter([request or request_cls()]), timeout=RPC_TIMEOUT_S, metadata=metadata
            )
            list(replies)
        else:
            call = channel.unary_unary(path, **codec)
            call(request or request_cls(), timeout=RPC_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def start(srv, key: str | None, user: str = "u1", **fields: Any) -> pb.StartSessionResponse:
    return srv.sessions.StartSession(
        pb.StartSessionRequest(user_id=user, **fields),
        timeout=RPC_TIMEOUT_S,
        metadata=auth(key) if key else None,
    )


def track(srv, key: str | None, token: str, *events: pb.Event) -> pb.TrackEventsResponse:
    return srv.sessions.TrackEvents(
        pb.TrackEventsRequest(events=events, session_token=token),
        timeout=RPC_TIMEOUT_S,
        metadata=auth(key) if key else None,
    )


def track_error(srv, key: str | None, token: str, *events: pb.Event) -> grpc.RpcError:
    request = pb.TrackEventsRequest(events=events, session_token=token)
    return rpc_error(srv.sessions.TrackEvents, request, metadata=auth(key) if key else None)


# ------------------------------------------------------------ the role table
def test_every_rpc_of_every_service_has_a_role():
    """A new RPC in the proto fails here until RPC_ROLES says who may call it."""
    roles = method_roles()
    assert len(roles) >= 18
    missing = sorted(path for path, role in roles.items() if role is None)
    assert not missing, f"RPCs without a role in service.auth.RPC_ROLES: {missing}"
    assert set(roles.values()) <= set(ROLES)
    in_proto = {path.rsplit(".", 1)[1].replace("/", ".") for path in roles}
    assert set(RPC_ROLES) == in_proto, "RPC_ROLES names RPCs that are not in the proto"


def test_the_roles_of_the_spec():
    roles = method_roles()
    prefix = "/sessionrec.v1."
    for name in ("StartSession", "TrackEvents", "EndSession", "GetSession"):
        assert roles[f"{prefix}SessionService/{name}"] == "ingest"
    for path in ("RecommendationService/Recommend", "OfferService/GetOffers"):
        assert roles[prefix + path] == "serve"
    for service in ("CatalogService", "AnalyticsService", "AdminService"):
        assert {r for p, r in roles.items() if p.startswith(f"{prefix}{service}/")} == {"admin"}
    offers = {p.rsplit("/", 1)[1]: r for p, r in roles.items() if ".OfferService/" in p}
    assert {n for n, r in offers.items() if r == "admin"} == {
        "UpsertOffers",
        "DeleteOffer",
        "ListOffers",
        "GetOfferReport",
    }


def test_an_rpc_missing_from_the_table_needs_admin_and_health_is_open():
    assert required_role("/sessionrec.v1.SessionService/SomethingNew") == "admin"
    assert required_role("/sessionrec.v1.NewService/Anything") == "admin"
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


# ------------------------------------------------------- keys on every RPC
def test_every_rpc_without_a_key_is_unauthenticated(keyed):
    srv, _ = keyed
    wrong = {}
    for path in method_roles():
        code = invoke(srv.channel, path)
        if code is not UNAUTHENTICATED:
            wrong[path] = code
    assert not wrong, wrong


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer srk_000000000000_" + "A" * 43,  # well-formed, unknown id
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
        "Bearer ",
    ],
)
def test_a_bad_key_is_unauthenticated_and_never_echoed(keyed, credential):
    srv, _ = keyed
    err = rpc_error(
        srv.admin.GetModelInfo, pb.GetModelInfoRequest(), metadata=[("authorization", credential)]
    )
    assert err.code() is UNAUTHENTICATED, err.details()
    assert (err.details() or "").startswith("authorization:")
    secret = credential.partition(" ")[2]
    assert not secret or secret not in (err.details() or "")


def test_the_right_id_with_a_wrong_secret_is_refused(keyed):
    srv, keys = keyed
    admin = keys["admin"]
    forged = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    err = rpc_error(srv.admin.GetModelInfo, pb.GetModelInfoRequest(), metadata=auth(forged))
    assert err.code() is UNAUTHENTICATED
    assert err.details() == "authorization: unknown or revoked API key"


def test_every_rpc_refuses_the_roles_below_its_own(keyed):
    srv, keys = keyed
    wrong = {}
    for path, needed in method_roles().items():
        for role in ROLES[: ROLES.index(needed or "ingest")]:
            code = invoke(srv.channel, path, metadata=auth(keys[role]))
            if code is not PERMISSION_DENIED:
                wrong[(path, role)] = code
    assert not wrong, wrong


def test_permission_denied_says_what_is_needed(keyed):
    srv, keys = keyed
    err = rpc_error(
        srv.recs.Recommend, pb.RecommendRequest(user_id="u", n=3), metadata=auth(keys["ingest"])
    )
    assert err.code() is PERMISSION_DENIED
    details = err.details() or ""
    assert "needs an API key with role serve or admin" in details
    assert "has role ingest" in details
    assert keys["ingest"].split("_", 2)[2] not in details


def test_every_rpc_accepts_its_roles_and_the_ones_above(keyed):
    """Dummy requests: any status but an auth error is fine. Ingest keys send the
    token of a session of theirs where the RPC needs one."""
    srv, keys = keyed
    wrong = {}
    for path, needed in method_roles().items():
        for role in ROLES[ROLES.index(needed or "ingest") :]:
            request, metadata = None, auth(keys[role])
            if role == "ingest" and path in SESSION_SCOPED:
                token = start(srv, keys["ingest"], user=f"acc-{path[-6:]}").session_token
                if path.endswith(("/TrackEvents", "/StreamEvents")):
                    request = pb.TrackEventsRequest(session_token=token)
                else:
                    metadata = [*metadata, ("x-session-token", token)]
            code = invoke(srv.channel, path, request, metadata)
            if code in AUTH_CODES:
                wrong[(path, role)] = code
    assert not wrong, wrong


def test_health_and_reflection_need_no_key(keyed):
    srv, _ = keyed
    reply = srv.health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(srv.channel).get_services())
    assert "sessionrec.v1.SessionService" in services


def test_a_call_with_the_right_key_succeeds(keyed):
    srv, keys = keyed
    info = srv.admin.GetModelInfo(
        pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S, metadata=auth(keys["admin"])
    )
    assert info.algorithm == "none"


# --------------------------------------------------- revocation, open mode
def test_a_revoked_key_is_refused_within_a_second(keyed, cli):
    srv, keys = keyed
    call = srv.admin.GetModelInfo
    assert call(pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S, metadata=auth(keys["admin"]))
    key_id = keys["admin"].split("_")[1]
    revoked = cli("keys", "revoke", "--db", srv.db_url, key_id)
    assert revoked.returncode == 0, revoked.stderr
    since = time.monotonic()

    def refused() -> bool:
        try:
            call(pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S, metadata=auth(keys["admin"]))
        except grpc.RpcError as exc:
            return exc.code() is UNAUTHENTICATED
        return False

    assert wait_for(refused, timeout_s=1.0, interval_s=0.02), "still accepted after 1 s"
    assert time.monotonic() - since <= 1.2
    # The other keys still work.
    assert srv.recs.Recommend(
        pb.RecommendRequest(user_id="u", n=2), timeout=RPC_TIMEOUT_S, metadata=auth(keys["serve"])
    )


def test_open_mode_until_the_first_key_then_keys_are_needed(client, caplog):
    reply = client.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S)
    assert reply.algorithm == "none"  # open: no key needed on loopback
    with open_store(client.db_url) as store:
        key, _ = create_key(store, "first", "admin")

    def needs_a_key() -> bool:
        return invoke(client.channel, "/sessionrec.v1.AdminService/GetModelInfo") is (
            UNAUTHENTICATED
        )

    assert wait_for(needs_a_key, timeout_s=2.0)
    assert client.admin.GetModelInfo(
        pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S, metadata=auth(key)
    )


def test_open_mode_logs_a_loud_warning(start_server, caplog):
    with caplog.at_level(logging.WARNING, logger="sessionrec.auth"):
        start_server()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no API keys: anyone who can reach 127.0.0.1" in w for w in warnings), warnings


def test_no_keys_on_a_non_loopback_host_refuses_to_start(tmp_path, make_config):
    config = make_config(tmp_path / "open.db", tmp_path / "m", host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"^host: '0\.0\.0\.0' is not a loopback address"):
        create_server(config)


def test_with_a_key_a_non_loopback_host_starts_and_needs_keys(tmp_path, make_config):
    db = tmp_path / "wide.db"
    keys = make_keys(db)
    running, port = create_server(make_config(db, tmp_path / "m", host="0.0.0.0"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            path = "/sessionrec.v1.AdminService/GetModelInfo"
            assert invoke(channel, path) is UNAUTHENTICATED
            assert invoke(channel, path, metadata=auth(keys["admin"])) is grpc.StatusCode.OK
            # Every key revoked: not open mode off loopback, nobody may call.
            with open_store(store_url(db)) as store:
                for k in store.list_api_keys():
                    store.revoke_api_key(k.key_id)
            time.sleep(0.7)
            assert invoke(channel, path, metadata=auth(keys["admin"])) is UNAUTHENTICATED
            assert invoke(channel, path) is UNAUTHENTICATED
    finally:
        running.stop(grace=0.2)


def test_cli_serve_without_keys_on_all_interfaces_fails_cleanly(tmp_path, cli):
    result = cli(
        "serve",
        "--db",
        store_url(tmp_path / "s.db"),
        "--models",
        str(tmp_path / "m"),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "host: '0.0.0.0' is not a loopback address" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# ----------------------------------------------------------- key storage
def test_keys_cli_create_list_revoke(tmp_path, cli):
    url = store_url(tmp_path / "k.db")
    made = cli("keys", "create", "--db", url, "--name", "ios app", "--role", "ingest")
    assert made.returncode == 0, made.stderr
    created = made.json()
    key = created["key"]
    assert key.startswith(f"srk_{created['key_id']}_")
    assert (created["name"], created["role"], created["revoked_at"]) == ("ios app", "ingest", None)
    assert "only time the key is shown" in made.stderr

    listed = cli("keys", "list", "--db", url)
    assert listed.returncode == 0, listed.stderr
    secret = key.split("_", 2)[2]
    for text in (secret, hash_secret(secret), key):
        assert text not in listed.stdout
    (entry,) = listed.json()
    assert set(entry) == {"key_id", "name", "role", "created_at", "revoked_at"}
    assert entry["key_id"] == created["key_id"] and entry["revoked_at"] is None

    revoked = cli("keys", "revoke", "--db", url, created["key_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.json()["revoked_at"] is not None
    assert cli("keys", "list", "--db", url).json()[0]["revoked_at"] == revoked.json()["revoked_at"]

    unknown = cli("keys", "revoke", "--db", url, "0123456789ab")
    assert unknown.returncode == 2
    assert "key_id: no API key '0123456789ab'" in unknown.stderr
    bad_role = cli("keys", "create", "--db", url, "--name", "x", "--role", "root")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr


def test_the_store_holds_only_a_hash_of_the_secret(tmp_path):
    db = tmp_path / "hash.db"
    with open_store(store_url(db)) as store:
        key, record = create_key(store, "backend", "serve")
    secret = key.split("_", 2)[2]
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = sql_scalar(db, "SELECT secret_hash FROM api_keys WHERE key_id = ?", (record.key_id,))
    assert stored == record.secret_hash
    with raw_connection(db) as conn:
        rows = repr(conn.execute("SELECT * FROM api_keys").fetchall())
    assert secret not in rows and key not in rows
    if TEST_STORE == "sqlite":  # nor anywhere in the file, or a WAL if one is left
        for path in db.parent.glob(db.name + "*"):
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert key.encode() not in data, path


def test_server_secrets_are_created_once(tmp_path):
    url = store_url(tmp_path / "sec.db")
    with open_store(url) as store:
        first = store.get_or_create_secret("session_token_key", 32)
        assert len(first) == 32
        assert store.get_or_create_secret("session_token_key", 32) == first
        assert store.get_or_create_secret("other", 32) != first
    with open_store(url) as store:
        assert store.get_or_create_secret("session_token_key", 32) == first


# ---------------------------------------------------------- session tokens
def test_an_ingest_key_needs_a_token_and_writes_into_its_session(keyed):
    srv, keys = keyed
    ingest = keys["ingest"]
    started = start(srv, ingest, user="tina")
    assert started.session_token and started.token_expires_at.ToMilliseconds() > time.time() * 1000

    err = track_error(srv, ingest, "", view("i1", session_id=started.session_id))
    assert err.code() is UNAUTHENTICATED
    assert (err.details() or "").startswith("session_token: required")

    # An event without session_id goes into the token's session.
    reply = track(srv, ingest, started.session_token, view("i1", event_id="t-1"), view("i2"))
    assert reply.accepted == 2
    assert sql_scalar(srv.db_path, "SELECT session_id FROM events WHERE event_id='t-1'") == (
        started.session_id
    )
    # The serve role may leave the token out.
    assert track(srv, keys["serve"], "", view("i3", session_id=started.session_id)).accepted == 1


def test_a_token_for_session_a_cannot_write_to_session_b(keyed):
    srv, keys = keyed
    ingest = keys["ingest"]
    a = start(srv, ingest, user="alice")
    b = start(srv, ingest, user="bob")
    err = track_error(srv, ingest, a.session_token, view("i1", session_id=b.session_id))
    assert err.code() is PERMISSION_DENIED
    assert (err.details() or "").startswith("events[0].session_id: a token for session")
    assert "cannot write to session" in (err.details() or "")
    err = track_error(srv, ingest, a.session_token, view("i1", user_id="bob"))
    assert err.code() is PERMISSION_DENIED
    assert (err.details() or "").startswith("events[0].user_id:")
    # One foreign event refuses the whole batch: nothing stored.
    err = track_error(srv, ingest, a.session_token, view("i1"), view("i2", session_id=b.session_id))
    assert err.code() is PERMISSION_DENIED
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 0
    # A serve key sending a token is held to it too.
    err = track_error(srv, keys["serve"], a.session_token, view("i1", session_id=b.session_id))
    assert err.code() is PERMISSION_DENIED


def test_get_and_end_session_with_an_ingest_key_touch_only_the_tokens_session(keyed):
    srv, keys = keyed
    ingest = keys["ingest"]
    a = start(srv, ingest, user="amy")
    b = start(srv, ingest, user="ben")
    get = srv.sessions.GetSession
    end = srv.sessions.EndSession

    err = rpc_error(get, pb.GetSessionRequest(session_id=a.session_id), metadata=auth(ingest))
    assert err.code() is UNAUTHENTICATED
    assert (err.details() or "").startswith("x-session-token: required")

    with_a = [*auth(ingest), ("x-session-token", a.session_token)]
    err = rpc_error(get, pb.GetSessionRequest(session_id=b.session_id), metadata=with_a)
    assert err.code() is PERMISSION_DENIED
    err = rpc_error(end, pb.EndSessionRequest(session_id=b.session_id), metadata=with_a)
    assert err.code() is PERMISSION_DENIED
    got = get(pb.GetSessionRequest(session_id=a.session_id), timeout=10, metadata=with_a)
    assert got.user_id == "amy"
    assert get(pb.GetSessionRequest(), timeout=10, metadata=with_a).session_id == a.session_id
    ended = end(pb.EndSessionRequest(), timeout=10, metadata=with_a)
    assert ended.session_id == a.session_id and not ended.active
    assert get(
        pb.GetSessionRequest(session_id=b.session_id), timeout=10, metadata=auth(keys["serve"])
    )


def test_an_expired_token_is_refused(start_server, tmp_path):
    db = tmp_path / "ttl.db"
    keys = make_keys(db)
    srv = start_server(db, session_token_ttl_s=0.3)
    started = start(srv, keys["ingest"])
    expires = started.token_expires_at.ToMilliseconds()
    assert 0 < expires - time.time() * 1000 <= 300
    time.sleep(0.5)
    err = track_error(srv, keys["ingest"], started.session_token, view("i1"))
    assert err.code() is UNAUTHENTICATED
    assert (err.details() or "").startswith("session_token: expired")
    # StartSession again with the same id: a fresh token for the same session.
    again = start(srv, keys["ingest"], session_id=started.session_id)
    assert again.session_token != started.session_token
    assert track(srv, keys["ingest"], again.session_token, view("i1")).accepted == 1


def _tampered(token: str, **claims: Any) -> str:
    head, _, signature = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    payload.update(claims)
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


def test_a_tampered_or_foreign_token_is_refused(keyed):
    srv, keys = keyed
    ingest = keys["ingest"]
    a = start(srv, ingest, user="al")
    b = start(srv, ingest, user="bo")
    forged = {
        "other session": _tampered(a.session_token, sid=b.session_id, uid="bo"),
        "longer life": _tampered(a.session_token, exp=a.token_expires_at.ToMilliseconds() + 1),
        "bad signature": a.session_token[:-3] + ("AAA" if a.session_token[-3:] != "AAA" else "BBB"),
        "another store": SessionTokens(b"k" * 32).issue(a.session_id, "al")[0],
        "garbage": "not.a-token!",
        "no dot": "abc",
    }
    for what, token in forged.items():
        err = track_error(srv, ingest, token, view("i1", session_id=b.session_id))
        assert err.code() is UNAUTHENTICATED, what
        assert (err.details() or "").startswith("session_token: "), (what, err.details())
    assert sql_scalar(srv.db_path, "SELECT COUNT(*) FROM events") == 0


def test_a_retried_start_session_returns_the_same_token(keyed):
    srv, keys = keyed
    one = start(srv, keys["ingest"], user="rita", session_id="s-rita")
    two = start(srv, keys["ingest"], user="rita", session_id="s-rita")
    assert one == two


def test_a_token_survives_a_restart_and_works_on_every_server_of_the_store(start_server, tmp_path):
    db = tmp_path / "restart.db"
    keys = make_keys(db)
    first = start_server(db)
    other = start_server(db)  # a second server on the same store agrees
    started = start(first, keys["ingest"], user="ray")
    assert track(other, keys["ingest"], started.session_token, view("i1")).accepted == 1
    first.server.stop(grace=0.2)
    other.server.stop(grace=0.2)
    again = start_server(db)
    assert track(again, keys["ingest"], started.session_token, view("i2")).accepted == 1
    assert (
        sql_scalar(
            db, "SELECT event_count FROM sessions WHERE session_id = ?", (started.session_id,)
        )
        == 2
    )


def test_open_mode_issues_tokens_but_does_not_require_them(client):
    started = start(client, None, user="oz")
    assert started.session_token
    assert track(client, None, "", view("i1", session_id=started.session_id)).accepted == 1
    assert track(client, None, started.session_token, view("i2")).accepted == 1
    err = track_error(client, None, "x.y", view("i3", session_id=started.session_id))
    assert err.code() is UNAUTHENTICATED


# ------------------------------------------------------------ rate limits
def test_the_per_key_rate_limit(start_server, tmp_path):
    db = tmp_path / "rate.db"
    keys = make_keys(db)
    srv = start_server(db, rate_limit_per_key_rps=0.5, rate_limit_burst=2)
    admin = auth(keys["admin"])
    for _ in range(2):
        srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=RPC_TIMEOUT_S, metadata=admin)
    err = rpc_error(srv.admin.GetModelInfo, pb.GetModelInfoRequest(), metadata=admin)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.details() or "").startswith("rate_limit_per_key_rps: over the limit of 0.5")
    trailing = dict(err.trailing_metadata() or ())
    assert 0 < int(trailing["retry-after-ms"]) <= 2000
    # Another key has its own bucket.
    assert srv.recs.Recommend(
        pb.RecommendRequest(user_id="u", n=1), timeout=RPC_TIMEOUT_S, metadata=auth(keys["serve"])
    )


# -------------------------------------------------------------------- TLS
def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost/127.0.0.1 and its key (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found (and the cryptography package is not installed)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_round_trip_and_plaintext_is_refused(tmp_path, make_config):
    cert, key = self_signed(tmp_path)
    db = tmp_path / "tls.db"
    keys = make_keys(db)
    config = make_config(db, tmp_path / "m", tls_cert_file=str(cert), tls_key_file=str(key))
    running, port = create_server(config)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
            admin = pb_grpc.AdminServiceStub(channel)
            info = admin.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=10, metadata=auth(keys["admin"])
            )
            assert info.algorithm == "none"
        # The key as call credentials (gRPC only sends those over a secure channel).
        both = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(keys["serve"])
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", both, options) as channel:
            recs = pb_grpc.RecommendationServiceStub(channel)
            assert recs.Recommend(pb.RecommendRequest(user_id="u", n=1), timeout=10)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            health = health_pb2_grpc.HealthStub(plain)
            with pytest.raises(grpc.RpcError) as caught:
                health.Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert caught.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
    finally:
        running.stop(grace=0.2)


def test_tls_settings_are_validated(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("not checked here")
    with pytest.raises(ConfigError, match=r"^tls_key_file: required with tls_cert_file"):
        Config.load({"tls_cert_file": str(cert)}, env={})
    with pytest.raises(ConfigError, match=r"^tls_cert_file: required with tls_key_file"):
        Config.load({"tls_key_file": str(cert)}, env={})
    with pytest.raises(ConfigError, match=r"^tls_key_file: no such file"):
        Config.load({"tls_cert_file": str(cert), "tls_key_file": str(tmp_path / "no.pem")}, env={})
    env = {"SESSIONREC_TLS_CERT_FILE": str(cert), "SESSIONREC_TLS_KEY_FILE": str(cert)}
    config = Config.load(env=env)
    assert (config.tls_cert_file, config.tls_key_file) == (str(cert), str(cert))
    for name, value in [
        ("session_token_ttl_s", 0),
        ("rate_limit_per_key_rps", -1),
        ("rate_limit_burst", -1),
    ]:
        with pytest.raises(ConfigError, match=rf"^{name}: "):
            Config.load({name: value}, env={})
