"""Request checks shared by the servicers; every message starts with the field."""

from __future__ import annotations

import re

from sessionrec.errors import InvalidArgument

MAX_ID_LENGTH = 256
MAX_N = 1000


def require_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: required")
    return check_id(value, field)


#: ASCII control characters (a regex: checked for every id of every event).
_CONTROL = re.compile("[\x00-\x1f]")


def check_id(value: str, field: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field}: longer than {MAX_ID_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field}: contains control characters")
    return value


def ids_valid(values: tuple[str, ...]) -> bool:
    """Whether every one of ``values`` would pass ``check_id`` (one regex over
    all of them: the per-event fast path; ``check_id`` then says what is wrong)."""
    return max(map(len, values)) <= MAX_ID_LENGTH and not _CONTROL.search("".join(values))


def check_n(n: int, field: str = "n") -> int:
    if not 1 <= n <= MAX_N:
        raise InvalidArgument(f"{field}: must be between 1 and {MAX_N}, got {n}")
    return n
