"""Storage behind one interface, chosen by URL."""

from __future__ import annotations

from sessionrec.errors import ConfigError
from sessionrec.store.base import (
    ApiKeyRecord,
    EventColumns,
    OfferCounts,
    OfferLogEntry,
    OfferOutcome,
    Store,
)

__all__ = [
    "ApiKeyRecord",
    "EventColumns",
    "OfferCounts",
    "OfferLogEntry",
    "OfferOutcome",
    "Store",
    "open_store",
    "sqlite_path_from_url",
]


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs.db`` -> ``/abs.db``;
    ``sqlite:///:memory:`` -> ``:memory:``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(f"db_url: expected sqlite:///path, got {url!r}")
    path = url[len(prefix) :]
    if not path:
        raise ConfigError("db_url: sqlite URL has no path")
    return path


def open_store(url: str, *, synchronous: str = "FULL", readonly: bool = False) -> Store:
    """Opens (and creates or migrates) the store named by ``url``
    (``sqlite:///path`` or ``postgresql://user:password@host:port/db``);
    ``readonly``: reads what another process writes (a server's worker process).
    ``synchronous`` is SQLite's."""
    if url.startswith("sqlite:"):
        from sessionrec.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path_from_url(url), synchronous=synchronous, readonly=readonly)
    if url.startswith(("postgresql://", "postgres://")):
        from sessionrec.store.postgres import PostgresStore

        return PostgresStore(url, readonly=readonly)
    raise ConfigError(f"db_url: unsupported store URL {url!r}")
