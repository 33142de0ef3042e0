"""ISO 8601 dates and date-times as epoch milliseconds (command-line periods)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date or date-time
    (``2024-01-31``: its UTC midnight; ``2024-01-31T12:00``,
    ``2024-01-31T12:00:00+02:00``, ``...Z``); without a zone it is UTC.
    Raises ``ValueError``."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected an ISO date or date-time like 2024-01-31 or 2024-01-31T12:00Z, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(milliseconds=1)
