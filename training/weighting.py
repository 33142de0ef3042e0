"""Confidence weights: how much an event says about a user's interest in an item.

weight(event) = (type_weight[type] + dwell_bonus * min(dwell_ms / dwell_saturation_ms, 1))
                * (1 + recency_boost * 0.5 ** (later / recency_half_life))
                * 0.5 ** (age_days / time_half_life_days)

where ``later`` is the number of the user's item events after this one (0 for
the newest) and ``age_days`` how long ago the event happened (before the newest
event of the training data; before now when serving). Both decays are off by
default. The recency factor favours what a user did recently over what they did
long ago, counted in events rather than days so that heavy and occasional users
are treated alike; the time decay makes a popularity model a *trending* one.

Defaults (documented in the README): ITEM_VIEW 1, CLICK 1, ADD_TO_CART 3,
PURCHASE 5, OFFER_REDEEMED 2; SCREEN_VIEW, SEARCH, OFFER_IMPRESSION and CUSTOM 0
(they carry no item preference). A view's dwell adds up to ``dwell_bonus`` (1.0)
once it reaches ``dwell_saturation_ms`` (60 s); unknown dwell adds nothing. A
view with a known dwell under ``skip_below_ms`` (3 s) is a skip: it weighs
``skip_factor`` of a view (1 by default, i.e. off).
The weights of a user's events on one item add up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sessionrec.events import VIEW_TYPES, EventType

SCALINGS = ("none", "bm25", "tfidf")
#: Lowest idf kept: an item nearly every user touched still counts a little.
MIN_IDF = 0.1

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
    #: Per event type name; treat as read-only (the lookup tables are built at creation).
    type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    dwell_bonus: float = 1.0
    dwell_saturation_ms: int = 60_000
    #: A view left sooner than this (known dwell) is a skip ...
    skip_below_ms: int = 3_000
    #: ... and weighs this much of a view (0 drops it; 1, the default, treats it as a
    #: view: on MovieLens, whose "dwell" is the gap between two ratings, 0.25 cost
    #: ALS 0.02 NDCG@10; `sessionrec tune` searches it on real dwell data).
    skip_factor: float = 1.0
    #: Half-life of the recency factor, in events (0: off).
    recency_half_life: float = 0.0
    #: Extra weight of the newest event (it weighs 1 + recency_boost times more).
    recency_boost: float = 1.0
    #: Half-life of the time decay, in days (0: off).
    time_half_life_days: float = 0.0
    #: Confidence scaling of the summed user x item matrix: "none", "bm25" or
    #: "tfidf" (down-weights items everybody touches; see ``ConfidenceScaling``).
    scaling: str = "none"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8

    def __post_init__(self) -> None:
        for name, value in self.type_weights.items():
            if name not in EventType.__members__:
                raise ValueError(f"type_weights: unknown event type {name!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"type_weights[{name}]: must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.dwell_bonus) and self.dwell_bonus >= 0):
            raise ValueError("dwell_bonus: must be a finite number >= 0")
        if not self.dwell_saturation_ms > 0:
            raise ValueError("dwell_saturation_ms: must be > 0")
        if not 0 <= self.skip_factor <= 1:
            raise ValueError(f"skip_factor: must be between 0 and 1, got {self.skip_factor}")
        if self.skip_below_ms < 0:
            raise ValueError(f"skip_below_ms: must be >= 0, got {self.skip_below_ms}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling: must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not (self.bm25_k1 > 0 and 0 <= self.bm25_b <= 1):
            raise ValueError("bm25_k1: must be > 0 and bm25_b between 0 and 1")
        for name in ("recency_half_life", "recency_boost", "time_half_life_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        # Frozen: the lookup tables can be built once, here.
        views = np.zeros(max(EventType) + 1, dtype=bool)
        views[[int(t) for t in VIEW_TYPES]] = True
        table = self.table()
        for array in (table, views):
            array.flags.writeable = False
        object.__setattr__(self, "_type_table", table)
        object.__setattr__(self, "_view_table", views)
        object.__setattr__(self, "_view_bytes", views.view(np.uint8))

    @property
    def table_array(self) -> np.ndarray:
        """``table()``, made once (read only)."""
        return self._type_table  # type: ignore[attr-defined,no-any-return]

    @property
    def view_array(self) -> np.ndarray:
        """1 (uint8) per event type number whose dwell counts (the views), else 0."""
        return self._view_bytes  # type: ignore[attr-defined,no-any-return]

    def table(self) -> np.ndarray:
        """Weight per event type number (index = EventType value)."""
        out = np.zeros(max(EventType) + 1, dtype=np.float32)
        for name, value in self.type_weights.items():
            out[EventType[name]] = value
        return out

    def weigh(
        self,
        types: np.ndarray,
        dwell_ms: np.ndarray,
        later: np.ndarray | None = None,
        age_ms: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectorised weights; ``dwell_ms`` < 0 means unknown; ``later``: how many of
        the user's item events follow each one (needed when recency is on);
        ``age_ms``: how old each event is (needed when the time decay is on)."""
        base_table: np.ndarray = self._type_table  # type: ignore[attr-defined]
        view_table: np.ndarray = self._view_table  # type: ignore[attr-defined]
        types = np.asarray(types, dtype=np.int64)
        dwell = np.asarray(dwell_ms, dtype=np.float32)
        known = np.minimum(np.maximum(types, 0), len(base_table) - 1)  # np.clip costs more
        valid = known == types
        base = np.where(valid, base_table[known], np.float32(0))
        bonus_ok = valid & view_table[known] & (dwell > 0) & (base > 0)
        bonus = np.minimum(dwell / np.float32(self.dwell_saturation_ms), np.float32(1))
        weights = np.where(bonus_ok, base + np.float32(self.dwell_bonus) * bonus, base)
        # A view left within a few seconds says the user was not interested.
        skipped = valid & view_table[known] & (dwell >= 0) & (dwell < self.skip_below_ms)
        weights = np.where(skipped, weights * np.float32(self.skip_factor), weights)
        if self.recency_half_life > 0:
            if later is None:
                raise ValueError("later: required when recency_half_life is set")
            decay = np.exp2(-np.asarray(later, dtype=np.float32) / self.recency_half_life)
            weights = weights * (1 + np.float32(self.recency_boost) * decay)
        if self.time_half_life_days > 0:
            if age_ms is None:
                raise ValueError("age_ms: required when time_half_life_days is set")
            days = np.maximum(np.asarray(age_ms, dtype=np.float64), 0) / 86_400_000
            weights = weights * np.exp2(-days / self.time_half_life_days).astype(np.float32)
        return weights.astype(np.float32, copy=False)

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
            skip_below_ms=int(data.get("skip_below_ms", 3_000)),
            skip_factor=float(data.get("skip_factor", 1.0)),
            recency_half_life=float(data.get("recency_half_life", 0.0)),
            recency_boost=float(data.get("recency_boost", 1.0)),
            time_half_life_days=float(data.get("time_half_life_days", 0.0)),
            scaling=str(data.get("scaling", "none")),
            bm25_k1=float(data.get("bm25_k1", 100.0)),
            bm25_b=float(data.get("bm25_b", 0.8)),
        )


@dataclass(frozen=True)
class ConfidenceScaling:
    """BM25 or TF-IDF scaling of user rows, with the corpus statistics of the
    training matrix (stored in the artifact, so a live user's row is scaled
    exactly as training rows were). As implicit's ``bm25_weight`` and
    ``tfidf_weight``, with idf = log(users) - log1p(users who touched the item),
    floored at ``MIN_IDF``."""

    kind: str
    idf: np.ndarray
    average_length: float
    k1: float = 100.0
    b: float = 0.8

    @classmethod
    def fit(cls, matrix: Any, weights: EventWeights) -> ConfidenceScaling:
        n_users = max(matrix.shape[0], 1)
        touched = np.bincount(matrix.indices, minlength=matrix.shape[1])
        idf = np.maximum(np.log(n_users) - np.log1p(touched), MIN_IDF).astype(np.float32)
        lengths = np.asarray(matrix.sum(axis=1)).ravel()
        average = float(lengths.mean()) if len(lengths) and lengths.mean() > 0 else 1.0
        return cls(weights.scaling, idf, average, weights.bm25_k1, weights.bm25_b)

    def apply(self, matrix: Any) -> Any:
        """A scaled copy of a CSR matrix of user rows."""
        out = matrix.tocsr().astype(np.float32, copy=True)
        cols = out.indices
        if self.kind == "tfidf":
            out.data = np.sqrt(out.data) * self.idf[cols]
        elif self.kind == "bm25":
            lengths = np.asarray(out.sum(axis=1)).ravel()
            norm = (1.0 - self.b) + self.b * lengths / self.average_length
            rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
            out.data = (
                out.data * (self.k1 + 1.0) / (self.k1 * norm[rows] + out.data) * self.idf[cols]
            ).astype(np.float32)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf, "average_length": np.asarray([self.average_length])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], weights: EventWeights) -> ConfidenceScaling:
        idf = np.asarray(arrays["idf"], dtype=np.float32)
        average = float(np.asarray(arrays["average_length"]).ravel()[0])
        return cls(weights.scaling, idf, average, weights.bm25_k1, weights.bm25_b)
