"""Confidence weights: how much an event says about a user's interest in an item.

weight(event) = type_weight[type] + dwell_bonus * min(dwell_ms / dwell_saturation_ms, 1)

Defaults (documented in the README): ITEM_VIEW 1, CLICK 1, ADD_TO_CART 3,
PURCHASE 5, OFFER_REDEEMED 2; SCREEN_VIEW, SEARCH, OFFER_IMPRESSION and CUSTOM 0
(they carry no item preference). A view's dwell adds up to ``dwell_bonus`` (1.0)
once it reaches ``dwell_saturation_ms`` (60 s); unknown dwell adds nothing.
The weights of a user's events on one item add up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sessionrec.events import VIEW_TYPES, EventType

DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "SCREEN_VIEW": 0.0,
    "ITEM_VIEW": 1.0,
    "ADD_TO_CART": 3.0,
    "PURCHASE": 5.0,
    "CLICK": 1.0,
    "SEARCH": 0.0,
    "OFFER_IMPRESSION": 0.0,
    "OFFER_REDEEMED": 2.0,
    "CUSTOM": 0.0,
}


@dataclass(frozen=True)
class EventWeights:
    type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    dwell_bonus: float = 1.0
    dwell_saturation_ms: int = 60_000

    def __post_init__(self) -> None:
        for name, value in self.type_weights.items():
            if name not in EventType.__members__:
                raise ValueError(f"type_weights: unknown event type {name!r}")
            if value < 0:
                raise ValueError(f"type_weights[{name}]: must be >= 0, got {value}")
        if self.dwell_bonus < 0:
            raise ValueError("dwell_bonus: must be >= 0")
        if self.dwell_saturation_ms <= 0:
            raise ValueError("dwell_saturation_ms: must be > 0")

    def table(self) -> np.ndarray:
        """Weight per event type number (index = EventType value)."""
        out = np.zeros(max(EventType) + 1, dtype=np.float32)
        for name, value in self.type_weights.items():
            out[EventType[name]] = value
        return out

    def weigh(self, types: np.ndarray, dwell_ms: np.ndarray) -> np.ndarray:
        """Vectorised weights; ``dwell_ms`` < 0 means unknown."""
        types = np.asarray(types, dtype=np.int64)
        dwell = np.asarray(dwell_ms, dtype=np.float64)
        valid = (types >= 0) & (types <= max(EventType))
        base = np.where(valid, self.table()[np.clip(types, 0, max(EventType))], 0.0)
        is_view = np.isin(types, [int(t) for t in VIEW_TYPES])
        bonus = np.where(
            is_view & (dwell > 0) & (base > 0),
            self.dwell_bonus * np.minimum(dwell / self.dwell_saturation_ms, 1.0),
            0.0,
        )
        return (base + bonus).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventWeights:
        weights = dict(DEFAULT_TYPE_WEIGHTS)
        weights.update({k: float(v) for k, v in data.get("type_weights", {}).items()})
        return cls(
            type_weights=weights,
            dwell_bonus=float(data.get("dwell_bonus", 1.0)),
            dwell_saturation_ms=int(data.get("dwell_saturation_ms", 60_000)),
        )
