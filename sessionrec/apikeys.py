"""API keys: roles, the key format, hashing, creation and revocation.

A key reads ``srk_<key_id>_<secret>``: ``key_id`` is 12 hex digits (public: it
names the key in listings, logs and error messages), ``secret`` is 32 random
bytes in URL-safe base64. Clients send the whole key as ``authorization:
Bearer <key>`` metadata.

Only ``sha256(secret)`` is stored. A slow password hash (bcrypt, scrypt,
argon2) protects *low-entropy* secrets against offline guessing; a 256-bit
random secret cannot be guessed, so a plain SHA-256 is as safe and keeps the
per-call check cheap (one primary-key lookup and one hash).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from sessionrec.errors import InvalidArgument, NotFound, Unauthenticated
from sessionrec.store import ApiKeyRecord, Store

__all__ = [
    "KEY_PREFIX",
    "ROLES",
    "create_key",
    "hash_secret",
    "parse_key",
    "revoke_key",
    "role_allows",
    "secret_matches",
]

#: Roles from least to most powerful; each may do everything the ones before it may.
#: ingest: mobile and web clients (sessions and events); serve: app backends
#: (recommendations, offers for a user); admin: everything.
ROLES = ("ingest", "serve", "admin")
KEY_PREFIX = "srk_"
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{20,200}")
MAX_NAME = 128


def role_allows(role: str, needed: str) -> bool:
    """Whether a key of ``role`` may call an RPC that needs ``needed``."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of the secret (no KDF needed for 256-bit random secrets)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, key: ApiKeyRecord) -> bool:
    """Constant-time comparison of the secret's hash with the stored one."""
    return hmac.compare_digest(hash_secret(secret), key.secret_hash)


def parse_key(text: str) -> tuple[str, str]:
    """``srk_<key_id>_<secret>`` -> (key_id, secret); Unauthenticated when it is
    not of that form (the message never repeats the key)."""
    if text.startswith(KEY_PREFIX):
        key_id, sep, secret = text[len(KEY_PREFIX) :].partition("_")
        if sep and _KEY_ID.fullmatch(key_id) and _SECRET.fullmatch(secret):
            return key_id, secret
    raise Unauthenticated(
        "authorization: malformed API key (expected 'Bearer srk_<key_id>_<secret>')"
    )


def create_key(store: Store, name: str, role: str) -> tuple[str, ApiKeyRecord]:
    """A new key of ``role``: returns the full key (shown once, never stored) and
    the stored record."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidArgument(f"name: must be 1..{MAX_NAME} characters")
    if role not in ROLES:
        raise InvalidArgument(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = store.create_api_key(
        ApiKeyRecord(
            key_id=key_id,
            name=name,
            role=role,
            secret_hash=hash_secret(secret),
            created_at_ms=time.time_ns() // 1_000_000,
        )
    )
    return f"{KEY_PREFIX}{key_id}_{secret}", record


def revoke_key(store: Store, key_id_or_key: str) -> ApiKeyRecord:
    """Revokes a key given by id (or as the full key); NotFound when unknown."""
    key_id = key_id_or_key
    if key_id.startswith(KEY_PREFIX):
        key_id = key_id[len(KEY_PREFIX) :].partition("_")[0]
    record = store.revoke_api_key(key_id) if _KEY_ID.fullmatch(key_id) else None
    if record is None:
        raise NotFound(f"key_id: no API key {key_id!r}")
    return record
