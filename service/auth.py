"""Authentication and authorization: API keys, roles, session tokens.

* **API keys** (:mod:`sessionrec.apikeys`) arrive as ``authorization: Bearer
  <key>`` metadata and are checked by :class:`AuthInterceptor`, the one place
  that decides who may call what: it looks the key up by id (a primary-key
  read, cached for :data:`KEY_CACHE_TTL_S`, so a revocation takes effect
  within that time), compares the secret's hash in constant time
  (``hmac.compare_digest``), checks the key's role against
  :data:`RPC_ROLES`, and takes a token from the key's rate-limit bucket. The
  caller (role, key id) is then visible to the servicer through
  :func:`current_caller` (a ``ContextVar`` set for the duration of the call).
* **Roles** are ordered (``ingest`` < ``serve`` < ``admin``); every RPC of
  every service in the proto needs one (``RPC_ROLES``; a test fails for an RPC
  without one, and at run time such an RPC needs ``admin``). Health checking and
  reflection stay open.
* **Open mode**: while the store holds no active key, calls need no key, but
  only on a loopback address (checked at start, where a non-loopback host
  without keys is refused, and on every call, where it is refused with
  UNAUTHENTICATED). The mode is decided per call from a cached "any active
  key?" check, so the first ``sessionrec keys create`` switches a running
  server to authenticated mode within :data:`KEY_CACHE_TTL_S`, no restart.
* **Session tokens** (:class:`SessionTokens`) bind a StartSession caller to one
  session and user: ``base64url(json{sid, uid, exp}) "." base64url(hmac)``
  signed with a key kept in the store (``server_secrets``), so every server on
  a store accepts every other's tokens, also after a restart. An ``ingest``
  caller must send one with TrackEvents (``session_token``) and with
  EndSession/GetSession (``x-session-token`` metadata), and can only touch
  that session.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc

from service.interceptors import abort_with
from service.limits import RateLimiter
from service.workers import INTERNAL_SERVICE
from sessionrec import apikeys
from sessionrec.config import Config
from sessionrec.errors import (
    ConfigError,
    PermissionDenied,
    SessionrecError,
    Unauthenticated,
)
from sessionrec.events import SessionRecord
from sessionrec.store import ApiKeyRecord, Store
from sessionrec.v1 import sessionrec_pb2 as pb

log = logging.getLogger("sessionrec.auth")

#: How long a looked-up key (and the "any active key?" answer) is trusted: a
#: revoked key stops working at most this long after the revocation committed.
KEY_CACHE_TTL_S = 0.5
#: Most keys (or unknown key ids) the cache holds before it starts over.
KEY_CACHE_MAX = 10_000

#: The role each RPC needs, by "Service.Method". Every RPC in the proto must be
#: here (tests/integration/test_auth.py checks it against the descriptors).
RPC_ROLES: dict[str, str] = {
    "SessionService.StartSession": "ingest",
    "SessionService.TrackEvents": "ingest",
    "SessionService.StreamEvents": "ingest",
    "SessionService.EndSession": "ingest",
    "SessionService.GetSession": "ingest",
    "RecommendationService.Recommend": "serve",
    "RecommendationService.SimilarItems": "serve",
    "OfferService.GetOffers": "serve",
    "OfferService.UpsertOffers": "admin",
    "OfferService.DeleteOffer": "admin",
    "OfferService.ListOffers": "admin",
    "OfferService.GetOfferReport": "admin",
    "CatalogService.UpsertItems": "admin",
    "CatalogService.GetItem": "admin",
    "AnalyticsService.GetSessionStats": "admin",
    "AnalyticsService.GetPushCandidates": "admin",
    "AdminService.ReloadModel": "admin",
    "AdminService.GetModelInfo": "admin",
    "AdminService.DeleteUser": "admin",
}

#: Services anyone may call: load balancers and tools must not need a key.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def method_roles() -> dict[str, str | None]:
    """Every RPC of every service in the proto, as its gRPC method path
    (``/sessionrec.v1.SessionService/StartSession``), with the role it needs
    (None: missing from :data:`RPC_ROLES`)."""
    out: dict[str, str | None] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            out[f"/{service.full_name}/{method.name}"] = RPC_ROLES.get(
                f"{service.name}.{method.name}"
            )
    return out


METHOD_ROLES = method_roles()


def required_role(method: str) -> str | None:
    """The role ``method`` needs; None for the open services. An RPC missing from
    the table needs ``admin`` (fail closed)."""
    service = method.lstrip("/").partition("/")[0]
    if service in OPEN_SERVICES:
        return None
    if service == INTERNAL_SERVICE:
        return None  # no caller's key: its handler admits the internal socket's peers only
    return METHOD_ROLES.get(method) or "admin"


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ caller
@dataclass(frozen=True)
class Caller:
    """Who is calling: ``role`` None in open mode (no keys: anyone on loopback)."""

    role: str | None
    key_id: str | None = None
    name: str = ""


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "sessionrec_caller", default=None
)


def current_caller() -> Caller | None:
    """The caller of the RPC being handled (None outside the interceptor, e.g. a
    servicer called directly, which is trusted like open mode)."""
    return _CALLER.get()


# --------------------------------------------------------------- key cache
class ApiKeyCache:
    """Keys by id and "is there any active key?", each trusted for ``ttl_s``."""

    def __init__(self, store: Store, *, ttl_s: float = KEY_CACHE_TTL_S, max_entries: int = 0):
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries or KEY_CACHE_MAX
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[ApiKeyRecord | None, float]] = {}
        self._any_active: tuple[bool, float] | None = None

    def get(self, key_id: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        with self._lock:
            hit = self._keys.get(key_id)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        key = self.store.get_api_key(key_id)
        with self._lock:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            self._keys[key_id] = (key, now)
        return key

    def clear(self) -> None:
        """Forgets every cached key (a key changed on another server)."""
        with self._lock:
            self._keys.clear()
            self._any_active = None

    def any_active(self) -> bool:
        now = time.monotonic()
        cached = self._any_active
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        active = any(k.active for k in self.store.list_api_keys())
        self._any_active = (active, now)
        return active


# ------------------------------------------------------------- interceptor
class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the API key and its role on every call but health and reflection.

    The check runs inside the handler (in the worker thread, not the server's
    polling thread) and aborts with UNAUTHENTICATED, PERMISSION_DENIED or
    RESOURCE_EXHAUSTED (with ``retry-after-ms`` trailing metadata). Register it
    before :class:`service.interceptors.ErrorMappingInterceptor`.
    """

    def __init__(
        self,
        store: Store,
        *,
        host: str,
        rate_per_key: float = 0.0,
        burst: int = 0,
        cache_ttl_s: float = KEY_CACHE_TTL_S,
    ):
        self.keys = ApiKeyCache(store, ttl_s=cache_ttl_s)
        self.host = host
        self.loopback = is_loopback(host)
        self.limiter = RateLimiter(rate_per_key, burst or None, what="calls")

    @classmethod
    def from_config(cls, store: Store, config: Config) -> AuthInterceptor:
        return cls(
            store,
            host=config.host,
            rate_per_key=config.rate_limit_per_key_rps,
            burst=config.rate_limit_burst,
        )

    def check_startup(self, *, port: int | None = None, tls: bool = False) -> None:
        """Refuses open mode off loopback (ConfigError naming ``host``); warns loudly
        about open mode on loopback, and about keys travelling in plaintext."""
        where = f"{self.host}:{port}" if port is not None else self.host
        if not self.keys.any_active():
            if not self.loopback:
                raise ConfigError(
                    f"host: {self.host!r} is not a loopback address and the store has no "
                    "active API key: create one with `sessionrec keys create --name NAME "
                    "--role admin`, or bind to 127.0.0.1"
                )
            log.warning(
                "no API keys: anyone who can reach %s can read and write everything "
                "(open mode, loopback only; create a key with `sessionrec keys create`)",
                where,
            )
        elif not self.loopback and not tls:
            log.warning(
                "no TLS on %s: API keys and session tokens travel in plaintext "
                "(set tls_cert_file/tls_key_file, or terminate TLS in front of the server)",
                where,
            )

    def authorize(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> Caller:
        """The caller of ``method``, or Unauthenticated / PermissionDenied /
        ResourceExhausted. Messages name what is needed, never the key."""
        needed = required_role(method) or "ingest"
        if not self.keys.any_active():
            if self.loopback:
                return Caller(role=None)
            raise Unauthenticated(
                "authorization: this server has no active API key and is not on a loopback "
                "address, so nobody may call it; create a key with `sessionrec keys create`"
            )
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            raise Unauthenticated(
                f"authorization: missing API key; {method} needs a key with role "
                f"{_at_least(needed)}, sent as 'authorization: Bearer <key>' metadata"
            )
        scheme, _, credential = str(values[0]).strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated(
                "authorization: expected 'Bearer <key>' (an API key from `sessionrec keys create`)"
            )
        key_id, secret = apikeys.parse_key(credential.strip())
        key = self.keys.get(key_id)
        # Unknown, revoked and wrong-secret keys get the same answer; the hash is
        # computed and compared (in constant time) either way.
        matches = apikeys.secret_matches(secret, key or _NO_KEY)
        if key is None or not key.active or not matches:
            raise Unauthenticated("authorization: unknown or revoked API key")
        if not apikeys.role_allows(key.role, needed):
            raise PermissionDenied(
                f"authorization: {method} needs an API key with role {_at_least(needed)}; "
                f"key {key.key_id} ({key.name}) has role {key.role}"
            )
        self.limiter.take(key.key_id, field="rate_limit_per_key_rps")
        return Caller(role=key.role, key_id=key.key_id, name=key.name)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or required_role(method) is None:
            return handler

        def admit(context: grpc.ServicerContext) -> Caller:
            try:
                return self.authorize(method, context.invocation_metadata())
            except SessionrecError as exc:
                abort_with(context, exc)

        def unary(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                token = _CALLER.set(admit(context))
                try:
                    return behavior(request, context)
                finally:
                    _CALLER.reset(token)

            return guarded

        def streaming(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token = _CALLER.set(admit(context))
                try:
                    yield from behavior(request, context)
                finally:
                    _CALLER.reset(token)

            return guarded

        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)


#: Compared against when a key id is unknown, so that the work does not tell.
_NO_KEY = ApiKeyRecord("", "", "", hashlib.sha256(b"no such key").hexdigest(), 0, 0)


def _at_least(role: str) -> str:
    allowed = apikeys.ROLES[apikeys.ROLES.index(role) :]
    return " or ".join(allowed)


# ---------------------------------------------------------- session tokens
TOKEN_SECRET_NAME = "session_token_key"
TOKEN_METADATA = "x-session-token"
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class SessionScope:
    """What a valid session token allows: this session, of this user."""

    session_id: str
    user_id: str
    expires_at_ms: int


class _Scoped(Protocol):
    session_id: str
    user_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    """Issues and checks session tokens (HMAC-SHA256 with a store-wide key)."""

    def __init__(self, key: bytes, ttl_s: float = 86400.0):
        if len(key) < 16:
            raise ValueError("session token key: at least 16 bytes")
        self._key = key
        self.ttl_ms = int(ttl_s * 1000)

    @classmethod
    def for_store(cls, store: Store, ttl_s: float = 86400.0) -> SessionTokens:
        return cls(store.get_or_create_secret(TOKEN_SECRET_NAME, 32), ttl_s)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(
        self, session_id: str, user_id: str, issued_at_ms: int | None = None
    ) -> tuple[str, int]:
        """A token for the session and its user, and when it expires (epoch ms):
        the TTL after ``issued_at_ms`` (default now)."""
        if issued_at_ms is None:
            issued_at_ms = time.time_ns() // 1_000_000
        expires = issued_at_ms + self.ttl_ms
        payload = json.dumps(
            {"sid": session_id, "uid": user_id, "exp": expires}, separators=(",", ":")
        ).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", expires

    def issue_for(self, session: SessionRecord) -> tuple[str, int]:
        """StartSession's token: valid for the TTL from the session's last activity
        as the server saw it (``last_seen_ms``), so that a retried StartSession
        gets the very same token; from the time of the call once half of that
        lifetime is gone (calling StartSession again refreshes an old token)."""
        now = time.time_ns() // 1_000_000
        fresh = now - session.last_seen_ms < self.ttl_ms // 2
        return self.issue(
            session.session_id, session.user_id, session.last_seen_ms if fresh else now
        )

    def verify(self, token: str, field: str = "session_token") -> SessionScope:
        """The scope of a valid token; Unauthenticated naming ``field`` when it is
        malformed, tampered with (bad signature) or expired."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise Unauthenticated(f"{field}: malformed session token")
        head, _, signature = token.partition(".")
        try:
            payload, mac = _unb64(head), _unb64(signature)
        except (binascii.Error, ValueError):
            raise Unauthenticated(f"{field}: malformed session token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise Unauthenticated(
                f"{field}: invalid signature (tampered with, or not issued by this store)"
            )
        try:
            claims = json.loads(payload)
            sid, uid, exp = claims["sid"], claims["uid"], claims["exp"]
        except (ValueError, TypeError, KeyError):
            raise Unauthenticated(f"{field}: malformed session token") from None
        if not (isinstance(sid, str) and isinstance(uid, str) and isinstance(exp, int)):
            raise Unauthenticated(f"{field}: malformed session token")
        if time.time_ns() // 1_000_000 >= exp:
            when = datetime.fromtimestamp(exp / 1000, UTC).isoformat(timespec="seconds")
            raise Unauthenticated(
                f"{field}: expired at {when}; call StartSession again (the same session_id "
                "returns the session with a fresh token)"
            )
        return SessionScope(sid, uid, exp)

    def scope(self, token: str, field: str = "session_token") -> SessionScope | None:
        """The token's scope when one is sent (checked whoever the caller is);
        None when none is sent and the caller need not send one. A caller with
        an ``ingest`` key must: Unauthenticated naming ``field``."""
        if token:
            return self.verify(token, field)
        caller = current_caller()
        if caller is not None and caller.role == "ingest":
            raise Unauthenticated(
                f"{field}: required with an ingest API key (the session_token StartSession "
                "returned)"
            )
        return None

    def scoped_session_id(self, session_id: str, context: grpc.ServicerContext) -> str:
        """EndSession/GetSession: ``session_id`` checked against the token sent as
        ``x-session-token`` metadata (required for ingest keys); an empty
        ``session_id`` means the token's session."""
        sent = [v for k, v in context.invocation_metadata() or () if k == TOKEN_METADATA]
        scope = self.scope(str(sent[0]) if sent else "", TOKEN_METADATA)
        if scope is None:
            return session_id
        if session_id and session_id != scope.session_id:
            raise PermissionDenied(
                f"session_id: a token for session {scope.session_id!r} cannot touch "
                f"session {session_id!r}"
            )
        return scope.session_id


def bind_events(events: Sequence[_Scoped], scope: SessionScope | None) -> None:
    """Puts session-less events into the token's session; PermissionDenied for an
    event of another session or user (the whole call is refused)."""
    if scope is None:
        return
    for index, event in enumerate(events):
        if not event.session_id:
            event.session_id = scope.session_id
        elif event.session_id != scope.session_id:
            raise PermissionDenied(
                f"events[{index}].session_id: a token for session {scope.session_id!r} "
                f"cannot write to session {event.session_id!r}"
            )
        if event.user_id and event.user_id != scope.user_id:
            raise PermissionDenied(
                f"events[{index}].user_id: a token for user {scope.user_id!r} cannot write "
                f"events of user {event.user_id!r}"
            )
