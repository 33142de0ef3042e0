"""One typed configuration: defaults, ``SESSIONREC_*`` environment overrides,
command-line overrides, and validation at start (in the spirit of Gorse's
``config.go``).

Precedence: explicit overrides (CLI flags) > environment > defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sessionrec.errors import ConfigError

DEFAULT_DB_URL = "sqlite:///data/sessionrec.db"
ENV_PREFIX = "SESSIONREC_"


@dataclass(frozen=True)
class Config:
    #: Store URL: ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``.
    db_url: str = DEFAULT_DB_URL
    #: Directory holding model versions and the ``CURRENT`` pointer.
    models_dir: str = "models"
    host: str = "127.0.0.1"
    port: int = 50051
    #: A session with no event for this long closes with TIMEOUT.
    session_timeout_s: float = 1800.0
    #: How often open sessions are checked for the inactivity timeout.
    reaper_interval_s: float = 30.0
    #: How often the models directory is checked for a new current version (0: never).
    model_poll_interval_s: float = 30.0
    #: Events may be at most this far in the future (device clock skew).
    max_clock_skew_s: float = 600.0
    #: Largest TrackEvents batch.
    max_events_per_call: int = 500
    #: Events per second per user that TrackEvents accepts (a burst of 2 s worth,
    #: at least one batch; per server process; 0: no limit).
    rate_limit_user_events_per_s: float = 0.0
    #: Recommend and GetOffers calls per second per user (burst: twice that; 0: no limit).
    rate_limit_user_calls_per_s: float = 0.0
    #: Calls the server works on at once; more are refused at once with
    #: RESOURCE_EXHAUSTED instead of queueing (load shedding).
    max_concurrent_rpcs: int = 256
    #: Largest request message accepted (bytes); larger: RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4 * 1024 * 1024
    #: gRPC worker threads (per process).
    workers: int = 8
    #: Server processes sharing the port (SO_REUSEPORT): the primary writes the
    #: store; the others answer reads and forward the rest (``service.workers``).
    processes: int = 1
    #: Seconds in-flight calls get to finish on SIGTERM.
    grace_s: float = 5.0
    #: How many of a user's most recent item events feed the live fold-in.
    history_limit: int = 500
    #: Events of the user's active session weigh this many times more in the fold-in.
    live_session_boost: float = 5.0
    #: MiB per process for what recent users' histories make (their weighted row,
    #: the session models' scores, the fold-in), reused by their next call until
    #: an event of theirs is stored (0: nothing kept).
    history_cache_mb: int = 32
    #: Largest UpsertItems batch.
    max_items_per_call: int = 1000
    #: Share of a recommendation's slots offered to catalog items the model cannot
    #: score yet (no interactions); at least one slot from n >= 5 when > 0 (0: off).
    cold_item_share: float = 0.1
    #: Share of users (stable hash of the user id) who get no offers, to measure uplift.
    offer_holdout_share: float = 0.1
    #: Push candidates: no sends in [start, end) hours of the user's local time
    #: (UTC when the user never reported an offset), at most max_per_user pushes
    #: per user in any cap window.
    push_quiet_start_hour: int = 22
    push_quiet_end_hour: int = 8
    push_max_per_user: int = 1
    push_cap_window_days: float = 7.0
    #: How often the catalog cache checks the store for changes made elsewhere
    #: (the CLI, another server); this server's own upserts show at once (0: never).
    catalog_refresh_interval_s: float = 5.0
    #: How often the server builds the analytics days that changed (so that
    #: GetSessionStats reads them ready-made); 0: never, queries build them.
    analytics_refresh_interval_s: float = 60.0
    #: SQLite ``synchronous`` pragma: FULL survives power loss, NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    log_level: str = "INFO"
    #: TLS: PEM certificate chain and private key files, both or neither (neither:
    #: plaintext, for a loopback address or behind a TLS-terminating proxy).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Lifetime of the session tokens StartSession hands out.
    session_token_ttl_s: float = 86400.0
    #: Calls per second per API key (token bucket, per server process; 0: no limit),
    #: and how many calls a key may save up (0: twice the rate, at least 1).
    rate_limit_per_key_rps: float = 0.0
    rate_limit_burst: int = 0

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Config:
        """Defaults, then ``SESSIONREC_<FIELD>`` from ``env``, then non-None ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.name, f.type, raw)
        types = {f.name: f.type for f in fields(cls)}
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            if key not in types:
                raise ConfigError(f"{key}: unknown setting")
            values[key] = _coerce(key, types[key], value) if isinstance(value, str) else value
        for key, value in values.items():
            kind = _kind(types[key])
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "str": isinstance(value, str),
            }[kind]
            if not ok:
                raise ConfigError(f"{key}: expected {kind}, got {value!r}")
        config = cls(**values)
        config.validate()
        return config

    def replace(self, **changes: Any) -> Config:
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        if not (self.db_url.startswith("sqlite://") or self.db_url.startswith("postgresql://")):
            raise ConfigError(f"db_url: unsupported URL {self.db_url!r} (use sqlite:///path.db)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be 0..65535, got {self.port}")
        positive = (
            "session_timeout_s",
            "reaper_interval_s",
            "max_clock_skew_s",
            "grace_s",
            "live_session_boost",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # also refuses NaN
                raise ConfigError(f"{name}: must be a finite number > 0, got {value}")
        if not (math.isfinite(self.model_poll_interval_s) and self.model_poll_interval_s >= 0):
            raise ConfigError("model_poll_interval_s: must be a finite number >= 0")
        for name in ("catalog_refresh_interval_s", "analytics_refresh_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}: must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.cold_item_share) and 0 <= self.cold_item_share <= 1):
            raise ConfigError(
                f"cold_item_share: must be a number between 0 and 1, got {self.cold_item_share}"
            )
        if not (math.isfinite(self.offer_holdout_share) and 0 <= self.offer_holdout_share < 1):
            raise ConfigError(
                "offer_holdout_share: must be a number >= 0 and < 1, "
                f"got {self.offer_holdout_share}"
            )
        for name in ("push_quiet_start_hour", "push_quiet_end_hour"):
            if not 0 <= getattr(self, name) <= 23:
                raise ConfigError(f"{name}: must be an hour 0..23, got {getattr(self, name)}")
        if not (math.isfinite(self.push_cap_window_days) and self.push_cap_window_days > 0):
            raise ConfigError("push_cap_window_days: must be a finite number > 0")
        for name in (
            "max_events_per_call",
            "max_items_per_call",
            "workers",
            "processes",
            "history_limit",
            "push_max_per_user",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.sqlite_synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigError("sqlite_synchronous: must be OFF, NORMAL, FULL or EXTRA")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("log_level: must be DEBUG, INFO, WARNING or ERROR")
        self._validate_security()

    def _validate_security(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_cert_file
                else ("tls_key_file", "tls_cert_file")
            )
            raise ConfigError(f"{missing}: required with {given} (TLS needs both, or neither)")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{name}: no such file {path!r}")
        if not (math.isfinite(self.session_token_ttl_s) and self.session_token_ttl_s > 0):
            raise ConfigError(
                f"session_token_ttl_s: must be a finite number > 0, got {self.session_token_ttl_s}"
            )
        for name in ("rate_limit_user_events_per_s", "rate_limit_user_calls_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}: must be a finite number >= 0, got {value}")
        if self.max_concurrent_rpcs < 1:
            raise ConfigError(f"max_concurrent_rpcs: must be >= 1, got {self.max_concurrent_rpcs}")
        if not 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ConfigError(
                f"max_message_bytes: must be between 1 KiB and 64 MiB, got {self.max_message_bytes}"
            )
        rps = self.rate_limit_per_key_rps
        if not (math.isfinite(rps) and rps >= 0):
            raise ConfigError(f"rate_limit_per_key_rps: must be a finite number >= 0, got {rps}")
        if self.history_cache_mb < 0:
            raise ConfigError(f"history_cache_mb: must be >= 0, got {self.history_cache_mb}")
        if self.rate_limit_burst < 0:
            raise ConfigError(f"rate_limit_burst: must be >= 0, got {self.rate_limit_burst}")


def _kind(type_name: Any) -> str:
    return type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str")


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = _kind(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot parse {ENV_PREFIX}{name.upper()}={raw!r}") from exc
    return raw
