"""Domain records of the offers engine (no gRPC, no storage details).

An offer is written by ``OfferService.UpsertOffers`` and ``sessionrec offers
import`` through :func:`offer_from_dict`: the gRPC message is turned into the
same dictionary a JSON/YAML file holds, so both refuse the same things with the
same messages (each starts with the field, e.g. ``offers[2].value: must be > 0``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sessionrec.errors import InvalidArgument
from sessionrec.events import MAX_TS_MS
from sessionrec.items import check_text

KINDS = ("PERCENT_OFF", "AMOUNT_OFF", "FREE_SHIPPING", "BUNDLE", "CUSTOM_OFFER")
SEGMENTS = ("ANY_USER", "NEW_USER", "RETURNING_USER")
PLATFORMS = ("PLATFORM_UNSPECIFIED", "IOS", "ANDROID", "WEB", "OTHER")
MAX_OFFER_ID = 256
MAX_TITLE = 1024
MAX_TARGETS = 10_000
#: Offer log kinds.
IMPRESSION, REDEMPTION = 1, 2
#: Offer log arms: shown to a treated user, or would have been shown to a holdout user.
TREATED, HOLDOUT = 0, 1

_FIELDS = {
    "offer_id",
    "title",
    "kind",
    "value",
    "target",
    "valid_from",
    "valid_until",
    "eligibility",
    "max_per_user",
    "max_per_session",
    "budget",
    "priority",
    "combinable",
    "single_use",
}


@dataclass(frozen=True)
class OfferTarget:
    item_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    whole_catalog: bool = False


@dataclass(frozen=True)
class Eligibility:
    segment: str = "ANY_USER"
    min_sessions: int = 0
    lapsed_days: int = 0
    platforms: tuple[int, ...] = ()
    session_items: tuple[str, ...] = ()
    cart_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Offer:
    offer_id: str
    kind: str
    value: float
    target: OfferTarget
    title: str = ""
    valid_from_ms: int | None = None
    valid_until_ms: int | None = None
    eligibility: Eligibility = field(default_factory=Eligibility)
    max_per_user: int = 0
    max_per_session: int = 0
    budget: int = 0
    priority: int = 0
    combinable: bool = False
    single_use: bool = False

    def valid_at(self, now_ms: int) -> bool:
        return (self.valid_from_ms is None or self.valid_from_ms <= now_ms) and (
            self.valid_until_ms is None or now_ms < self.valid_until_ms
        )

    def to_dict(self) -> dict[str, Any]:
        """The offer as the dictionary ``offer_from_dict`` reads (and the proto's fields)."""
        e = self.eligibility
        out: dict[str, Any] = {
            "offer_id": self.offer_id,
            "title": self.title,
            "kind": self.kind,
            "value": self.value,
            "target": {
                "item_ids": list(self.target.item_ids),
                "categories": list(self.target.categories),
                "whole_catalog": self.target.whole_catalog,
            },
            "eligibility": {
                "segment": e.segment,
                "min_sessions": e.min_sessions,
                "lapsed_days": e.lapsed_days,
                "platforms": [PLATFORMS[p] for p in e.platforms],
                "session_items": list(e.session_items),
                "cart_items": list(e.cart_items),
            },
            "max_per_user": self.max_per_user,
            "max_per_session": self.max_per_session,
            "budget": self.budget,
            "priority": self.priority,
            "combinable": self.combinable,
            "single_use": self.single_use,
        }
        if self.valid_from_ms is not None:
            out["valid_from"] = iso(self.valid_from_ms)
        if self.valid_until_ms is not None:
            out["valid_until"] = iso(self.valid_until_ms)
        return out


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def in_holdout(user_id: str, share: float) -> bool:
    """Stable assignment: the same user is always in (or out of) the holdout."""
    if share <= 0:
        return False
    digest = hashlib.sha256(b"sessionrec-holdout:" + user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


# ------------------------------------------------------------------ parsing
def offer_from_dict(data: Mapping[str, Any], where: str = "offer") -> Offer:
    """Validates and converts one offer; InvalidArgument names the field."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{where}: expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidArgument(f"{where}.{unknown[0]}: unknown field")
    offer_id = check_text(
        data.get("offer_id", ""), f"{where}.offer_id", MAX_OFFER_ID, required=True
    )
    title = check_text(data.get("title", ""), f"{where}.title", MAX_TITLE)
    kind = _choice(data.get("kind", ""), f"{where}.kind", KINDS, required=True)
    value = _number(data.get("value", 0.0), f"{where}.value")
    if value <= 0:
        raise InvalidArgument(f"{where}.value: must be > 0, got {value}")
    if kind == "PERCENT_OFF" and value > 100:
        raise InvalidArgument(f"{where}.value: a percentage must be at most 100, got {value}")
    valid_from = _time(data.get("valid_from"), f"{where}.valid_from")
    valid_until = _time(data.get("valid_until"), f"{where}.valid_until")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InvalidArgument(f"{where}.valid_until: must be after valid_from")
    return Offer(
        offer_id=offer_id,
        title=title,
        kind=kind,
        value=value,
        target=_target(data.get("target"), f"{where}.target"),
        valid_from_ms=valid_from,
        valid_until_ms=valid_until,
        eligibility=_eligibility(data.get("eligibility") or {}, f"{where}.eligibility"),
        max_per_user=_count(data.get("max_per_user", 0), f"{where}.max_per_user"),
        max_per_session=_count(data.get("max_per_session", 0), f"{where}.max_per_session"),
        budget=_count(data.get("budget", 0), f"{where}.budget"),
        priority=_integer(data.get("priority", 0), f"{where}.priority"),
        combinable=_flag(data.get("combinable", False), f"{where}.combinable"),
        single_use=_flag(data.get("single_use", False), f"{where}.single_use"),
    )


def _target(data: Any, where: str) -> OfferTarget:
    if not isinstance(data, Mapping) or not data:
        raise InvalidArgument(f"{where}: required (item_ids, categories or whole_catalog)")
    unknown = sorted(set(data) - {"item_ids", "categories", "whole_catalog"})
    if unknown:
        raise InvalidArgument(f"{where}.{unknown[0]}: unknown field")
    items = _texts(data.get("item_ids", []), f"{where}.item_ids")
    categories = _texts(data.get("categories", []), f"{where}.categories")
    whole = _flag(data.get("whole_catalog", False), f"{where}.whole_catalog")
    if (bool(items) + bool(categories) + whole) != 1:
        raise InvalidArgument(
            f"{where}: exactly one of item_ids, categories or whole_catalog is required"
        )
    return OfferTarget(items, categories, whole)


def _eligibility(data: Any, where: str) -> Eligibility:
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{where}: expected an object")
    known = {"segment", "min_sessions", "lapsed_days", "platforms", "session_items", "cart_items"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(f"{where}.{unknown[0]}: unknown field")
    platforms = []
    for i, p in enumerate(data.get("platforms", []) or []):
        name = _choice(p, f"{where}.platforms[{i}]", PLATFORMS[1:], required=True)
        platforms.append(PLATFORMS.index(name))
    return Eligibility(
        segment=_choice(
            data.get("segment", "ANY_USER") or "ANY_USER", f"{where}.segment", SEGMENTS
        ),
        min_sessions=_count(data.get("min_sessions", 0), f"{where}.min_sessions"),
        lapsed_days=_count(data.get("lapsed_days", 0), f"{where}.lapsed_days"),
        platforms=tuple(platforms),
        session_items=_texts(data.get("session_items", []), f"{where}.session_items"),
        cart_items=_texts(data.get("cart_items", []), f"{where}.cart_items"),
    )


def _texts(values: Any, where: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidArgument(f"{where}: expected a list of strings")
    if len(values) > MAX_TARGETS:
        raise InvalidArgument(f"{where}: more than {MAX_TARGETS} entries")
    out = tuple(
        check_text(v, f"{where}[{i}]", MAX_OFFER_ID, required=True) for i, v in enumerate(values)
    )
    if len(set(out)) != len(out):
        raise InvalidArgument(f"{where}: repeated entry")
    return out


def _choice(value: Any, where: str, choices: Sequence[str], *, required: bool = False) -> str:
    if not isinstance(value, str) or (value not in choices and (required or value)):
        raise InvalidArgument(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value or choices[0]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(f"{where}: must be finite")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, str) and value.lstrip("-").isdigit():  # int64 in proto JSON
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}: expected an integer, got {value!r}")
    if abs(value) > 2**53:
        raise InvalidArgument(f"{where}: out of range")
    return value


def _count(value: Any, where: str) -> int:
    number = _integer(value, where)
    if number < 0:
        raise InvalidArgument(f"{where}: must be >= 0, got {number}")
    return number


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where}: expected true or false, got {value!r}")
    return value


def _time(value: Any, where: str) -> int | None:
    """ISO 8601 / RFC 3339 text (naive: UTC) or epoch seconds -> epoch ms."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: expected a time, got {value!r}")
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):  # YAML dates
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, dt.datetime):  # YAML timestamps
        stamp = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        ms = int(stamp.timestamp() * 1000)
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where}: must be finite")
        ms = int(value * 1000)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(f"{where}: not an ISO 8601 time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidArgument(f"{where}: expected a time, got {value!r}")
    if not 0 <= ms <= MAX_TS_MS:
        raise InvalidArgument(f"{where}: out of range")
    return ms
