"""Domain errors shared by the store, training and the service.

They carry no gRPC dependency: the service maps each class to a status code in
one interceptor (``service.interceptors``). A message starts with the field it
is about, e.g. ``"n: must be between 1 and 1000, got 0"``.
"""

from __future__ import annotations


class SessionrecError(Exception):
    """Base class of every error a client may be told about."""


class InvalidArgument(SessionrecError, ValueError):
    """The request is malformed; the message names the field."""


class NotFound(SessionrecError):
    """A referenced entity (session, item, model version) does not exist."""


class FailedPrecondition(SessionrecError):
    """The system is not in a state that allows the call (e.g. no model loaded)."""


class Unavailable(SessionrecError):
    """A transient failure (database locked, an I/O error); retrying may succeed."""


class DeadlineExceeded(SessionrecError):
    """The caller's deadline passed (or was about to) before the work was done;
    the work was stopped and nothing of it was kept."""


class ResourceExhausted(SessionrecError):
    """A limit was hit (batch too large, rate limit, the store's disk full: "store:
    disk full", retry once there is room). ``retry_after_ms``: when a
    retry may succeed, if known (sent as the ``retry-after-ms`` trailing metadata)."""

    def __init__(self, message: str, *, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unauthenticated(SessionrecError):
    """The caller is not who it must be: no, an unknown or a revoked API key, or
    a missing, tampered or expired session token."""


class PermissionDenied(SessionrecError):
    """The caller is known but may not do this (its role, or its session token,
    does not cover the call)."""


class ArtifactError(SessionrecError):
    """A model artifact is missing, corrupted or of an unknown format."""


class ConfigError(SessionrecError):
    """The configuration is invalid; the message names the setting."""
