"""Versioned model artifacts: ``.npz`` + JSON metadata, no pickle, sha256-checked.

Layout of a models directory::

    DIR/CURRENT                       the current version's name (one line)
    DIR/versions/<version>/model.npz  arrays: vocabularies, popularity, model arrays
    DIR/versions/<version>/meta.json  algorithm, parameters, weights, counts, sha256

A version is written into a temporary folder and renamed into place, and
``CURRENT`` is replaced atomically, so a reader never sees half an artifact.
``load_artifact`` refuses a file whose checksum, keys or values are wrong.

This module is the only part of ``training`` the online service uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import mmap
import os
import platform
import shutil
import struct
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from sessionrec.arrays import contained, distinct
from sessionrec.errors import ArtifactError, NotFound, SessionrecError
from sessionrec.events import EventType, ItemEvent
from training._kernels import blend_top_k, weighted_history
from training.ann import ExactIndex, ItemIndex
from training.data import Interactions, Vocabulary, csr_row, user_row
from training.models import ALGORITHMS, Recommender, tie_breaks, top_k
from training.session_models import (
    NO_SCORES,
    SessionRecommender,
    SparseScores,
    normalized,
)
from training.weighting import ConfidenceScaling, EventWeights

FORMAT = "sessionrec-model"
FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
#: Items the long-term model contributes to a big catalog's live-session blend.
BLEND_CANDIDATES = 200
#: Algorithms that rank the same for everyone (the "popular" strategy).
NON_PERSONAL = frozenset({"popular", "trending"})
VERSIONS_DIR = "versions"
#: What the user did, by event type number (any other type: "viewed").
_VERBS = {
    int(EventType.ITEM_VIEW): "viewed",
    int(EventType.CLICK): "clicked",
    int(EventType.ADD_TO_CART): "added to your cart",
    int(EventType.PURCHASE): "bought",
    int(EventType.OFFER_REDEEMED): "redeemed an offer for",
}


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    reasons: list[str]
    #: "personalized" (history folded into the model) or "popular" (fallback)
    strategy: str


#: What one artifact keeps of the histories it served (``ModelArtifact._prepare``):
#: at most this many bytes of arrays, the least recently used dropped first.
PREPARED_CACHE_BYTES = 32 * 1024 * 1024
#: How many of a kept history's best items are kept with it (per ``include_seen``):
#: a call takes its answer from these, past its own exclusions and filters, when
#: they leave it enough; else it ranks the catalog.
RANKED_KEEP = 100


@dataclass
class _Prepared:
    """What a history makes, before any request option applies: its item
    numbers, types and times, its weighted row, which events count as interest,
    the live session's items, and (made on first use) the session models' parts,
    the user folded into the model, what the reasons name and the best items."""

    numbers: np.ndarray
    types: np.ndarray
    ts: np.ndarray
    row: Any
    positive: np.ndarray
    live: np.ndarray
    parts: dict[str, SparseScores] | None = None
    vectors: np.ndarray | None = None
    #: For the reasons: the live session's latest distinct items (at most 20),
    #: newest first, with when each was last touched and its strongest event type.
    touched: tuple[list[int], dict[int, int], dict[int, int]] | None = None
    #: For the reasons: each history item's strongest event type.
    strongest: dict[int, int] | None = None
    #: By ``include_seen``: the best items with only the history's own exclusion
    #: (indices, scores, best first), and whether they are all the items ranked.
    ranked: dict[bool, tuple[np.ndarray, np.ndarray, bool]] = field(default_factory=dict)
    #: Whether it is kept for the next call (else nothing is ranked ahead for one).
    kept: bool = False

    def nbytes(self, events: int) -> int:
        arrays = [self.numbers, self.types, self.ts, self.positive, self.live]
        arrays += [self.row.data, self.row.indices]
        if self.parts is not None:
            arrays += [a for p in self.parts.values() for a in (p.items, p.scores)]
        if self.vectors is not None:
            arrays.append(self.vectors)
        # The key holds the events themselves (about 150 bytes each), the
        # reasons' dicts up to one entry each (about 100), and the rankings.
        return sum(a.nbytes for a in arrays) + 250 * events + 4096 + 2 * RANKED_KEEP * 16


@dataclass
class ModelArtifact:
    """A trained model with everything needed to serve it.

    What a history makes (``_Prepared``) is kept, keyed by the history itself:
    a user asking again with no event stored since gets it without the
    weighting, the session models or the fold-in, and, when enough of its best
    items pass the call's filters, without ranking the catalog. A new event makes a new
    history, so nothing is ever invalidated by hand; with a time decay in the
    weights (they change with the clock) nothing is kept."""

    version: str
    algorithm: str
    model: Recommender
    users: Vocabulary
    items: Vocabulary
    popularity: np.ndarray
    weights: EventWeights
    meta: dict[str, Any] = field(default_factory=dict)
    scaling: ConfidenceScaling | None = None
    #: session-kNN + sequential rules over the live session, blended with ``model``
    session: SessionRecommender | None = None
    #: Approximate nearest neighbours over the item factors (big catalogs; ``training.ann``)
    index: ItemIndex | None = None
    #: Bytes of ``_Prepared`` kept (0: none).
    prepared_cache_bytes: int = PREPARED_CACHE_BYTES
    _prepared: OrderedDict[tuple[Any, ...], tuple[_Prepared, int]] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )
    _prepared_bytes: int = field(default=0, init=False, repr=False, compare=False)
    _prepared_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    #: Calls that found their history prepared, and calls that did not.
    prepared_hits: int = field(default=0, init=False, repr=False, compare=False)
    prepared_misses: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model.params)

    @property
    def approximate(self) -> bool:
        """Whether recommendations without a live session come from an approximate
        item index (``index``) rather than every item's score."""
        return self.index is not None and not isinstance(self.index, ExactIndex)

    @cached_property
    def _tie_breaks(self) -> np.ndarray:
        return tie_breaks(self.popularity)

    def _tie_broken(self, scores: np.ndarray) -> np.ndarray:
        """``break_ties_by_popularity`` with this artifact's popularity term, kept."""
        return np.add(scores, self._tie_breaks, dtype=np.float64)

    # ------------------------------------------------------------- serving
    def recommend(
        self,
        history: Sequence[ItemEvent],
        n: int,
        *,
        include_seen: bool = False,
        exclude: Sequence[str] = (),
        live_since_ms: int | None = None,
        live_boost: float = 1.0,
        allowed: np.ndarray | None = None,
    ) -> Recommendation:
        """Top-``n`` items for a user whose item events (any order) are ``history``.

        The history is weighted like the training data and folded into the
        model, so an event stored a moment ago counts. Events at or after
        ``live_since_ms`` (the active session) weigh ``live_boost`` times more:
        what the user does now says more about what they want next than what
        they did last month. With no usable history (or a popularity model)
        the answer is the popularity ranking. ``allowed`` (a boolean per item of
        ``self.items``) keeps only the items a caller's filters let through.
        """
        p = self._prepare(history, live_since_ms, live_boost)
        numbers, row, live = p.numbers, p.row, p.live
        seen = numbers[numbers >= 0] if not include_seen else np.zeros(0, dtype=np.int64)
        others = np.zeros(0, dtype=np.int64)
        if len(exclude):
            others = self.items.numbers(list(exclude))
            others = others[others >= 0]
        blocked = None if allowed is None else ~self._mask(allowed)
        if self.session is not None and len(live):
            parts = self._parts(p)
            personal = row.nnz > 0 and self.algorithm not in NON_PERSONAL
            vectors = self._vectors(p) if personal and self.approximate else None
            if vectors is not None:
                idx, scores = self._blend_candidates(
                    parts, vectors[0], n, _excluded(seen, others, blocked)
                )
            else:

                def blend(k: int, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    model_scores = self._model_scores(p) if personal else None
                    return self._blend_top_k(parts, model_scores, k, skip)

                idx, scores = self._kept_top(p, include_seen, n, seen, others, blocked, blend)
            reasons = self._explain_session(p, idx)
            return Recommendation(self.items.ids[idx].tolist(), scores.tolist(), reasons, "session")
        if row.nnz == 0 or self.algorithm in NON_PERSONAL:
            return self._popular(row, n, _excluded(seen, others, blocked))
        vectors = self._vectors(p) if self.approximate else None
        if vectors is not None:  # a big catalog: its item index, not every item's score
            assert self.index is not None
            idx, scores = self.index.search(vectors[0], n, _excluded(seen, others, blocked))
        else:

            def model_top(k: int, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return top_k(self._tie_broken(self._model_scores(p)), k, skip, copy=False)

            idx, scores = self._kept_top(p, include_seen, n, seen, others, blocked, model_top)
        reasons = self._explain(p, idx)
        return Recommendation(
            self.items.ids[idx].tolist(), scores.tolist(), reasons, "personalized"
        )

    def _kept_top(
        self,
        p: _Prepared,
        include_seen: bool,
        n: int,
        seen: np.ndarray,
        others: np.ndarray,
        blocked: np.ndarray | None,
        rank: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rank(n, excluded)``, the best ``n`` items leaving out ``seen`` (the
        history's own), ``others`` (the request's) and the ``blocked`` ones (a
        flag per item: the filters), taken where it can be from ``p``'s kept
        best ``RANKED_KEEP`` with ``seen`` alone left out: an item's score does
        not depend on which others are left out, so the first ``n`` of those
        that pass are the answer, when there are ``n`` of them or they were
        every item ranked."""
        if not p.kept:
            return rank(n, _excluded(seen, others, blocked))
        kept = p.ranked.get(include_seen)
        if kept is None or (len(kept[0]) < n and not kept[2]):
            want = max(n, RANKED_KEEP)
            idx, scores = rank(want, seen)
            idx.flags.writeable = scores.flags.writeable = False
            kept = (idx, scores, len(idx) < want)
            p.ranked[include_seen] = kept
        idx, scores, complete = kept
        passes = np.ones(len(idx), dtype=bool)
        if len(others):
            passes &= ~contained(idx, distinct(others))
        if blocked is not None:
            passes &= ~blocked[idx]
        chosen = np.flatnonzero(passes)[:n]
        if len(chosen) == n or complete:
            return idx[chosen], scores[chosen]
        return rank(n, _excluded(seen, others, blocked))

    def _blend_top_k(
        self,
        parts: dict[str, SparseScores],
        model_scores: np.ndarray | None,
        n: int,
        excluded: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``top_k(self._tie_broken(self.session.combine(parts, model_scores)), n,
        excluded)``, the same result in one compiled pass over the catalog."""
        assert self.session is not None
        weight = self.session.blend.get("model", 0.0)
        model = model_scores if model_scores is not None and weight else NO_SCORES
        if model.dtype == np.float32:  # normalized() of float64 scores works in float64
            total = self.session.parts_total(parts)
            total[excluded] = np.nan  # left out
            ranked = blend_top_k(total, np.ascontiguousarray(model), weight, self._tie_breaks, n)
            if ranked is not None:
                return ranked
        blended = self._tie_broken(self.session.combine(parts, model_scores))
        return top_k(blended, n, excluded, copy=False)

    def _blend_candidates(
        self, parts: dict[str, SparseScores], vector: np.ndarray, n: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The live-session blend of a big catalog (an approximate index), over
        candidates only: the items the session models score and the index's
        best ``BLEND_CANDIDATES`` by the long-term model. The session parts are
        scaled by their range over the catalog (as ``combine`` does); the
        model's scores, which only the candidates get, by their range there."""
        assert self.session is not None and self.index is not None
        best, _ = self.index.search(vector, max(2 * n, BLEND_CANDIDATES), excluded)
        candidates = distinct(np.concatenate([best, *(p.nonzero() for p in parts.values())]))
        blend = self.session.blend
        total = np.zeros(len(candidates), dtype=np.float64)
        for name, part in parts.items():
            if blend.get(name, 0.0):
                total += blend[name] * normalized(part.dense())[candidates]
        if blend.get("model", 0.0):
            total += blend["model"] * normalized(self.index.item_factors[candidates] @ vector)
        total += self._tie_breaks[candidates]
        skip = np.flatnonzero(contained(candidates, distinct(excluded)))
        idx, scores = top_k(total, n, skip)
        return candidates[idx], scores

    def affinity(
        self,
        history: Sequence[ItemEvent],
        *,
        live_since_ms: int | None = None,
        live_boost: float = 1.0,
    ) -> np.ndarray | None:
        """How much the user likes every item, in [0, 1], ranked as ``recommend``
        ranks (the live-session blend, else the long-term model); None when
        nothing personal is known (no usable history, or a popularity model
        without session models)."""
        p = self._prepare(history, live_since_ms, live_boost)
        personal = p.row.nnz > 0 and self.algorithm not in NON_PERSONAL
        model_scores = self._model_scores(p) if personal else None
        if self.session is not None and len(p.live):
            return self.session.normalized_combine(self._parts(p), model_scores)
        if model_scores is None:
            return None
        return normalized(model_scores)

    def history_row(
        self,
        history: Sequence[ItemEvent],
        *,
        live_since_ms: int | None = None,
        live_boost: float = 1.0,
    ) -> Any:
        """The weighted 1 x n_items row ``recommend`` folds into the model."""
        return self._weighted(history, live_since_ms, live_boost)[3]

    def _prepare(
        self, history: Sequence[ItemEvent], live_since_ms: int | None, live_boost: float
    ) -> _Prepared:
        """What ``history`` makes (``_Prepared``), kept when the weights do not
        change with the clock."""
        keep = self.prepared_cache_bytes > 0 and self.weights.time_half_life_days <= 0
        key = (tuple(history), live_since_ms, live_boost) if keep else None
        if key is not None:
            with self._prepared_lock:
                found = self._prepared.get(key)
                if found is not None:
                    self._prepared.move_to_end(key)
                    self.prepared_hits += 1
                    return found[0]
                self.prepared_misses += 1
        numbers, types, ts, row, positive = self._weighted(history, live_since_ms, live_boost)
        live = self._live_session(np.where(positive, numbers, -1), ts, live_since_ms)
        for array in (numbers, types, ts, positive, live):
            array.flags.writeable = False  # shared by the calls that find it kept
        prepared = _Prepared(numbers, types, ts, row, positive, live)
        if key is not None:
            if self.session is not None and len(live):
                self._parts(prepared)  # made now, so that its size is counted
            if row.nnz and self.algorithm not in NON_PERSONAL:
                self._vectors(prepared)
            size = prepared.nbytes(len(history))
            with self._prepared_lock:
                if key not in self._prepared and size <= self.prepared_cache_bytes:
                    prepared.kept = True
                    self._prepared[key] = (prepared, size)
                    self._prepared_bytes += size
                    while self._prepared_bytes > self.prepared_cache_bytes:
                        _, (_, dropped) = self._prepared.popitem(last=False)
                        self._prepared_bytes -= dropped
        return prepared

    def _parts(self, p: _Prepared) -> dict[str, SparseScores]:
        """The session models' scores of ``p``'s live session (made once)."""
        assert self.session is not None
        if p.parts is None:
            parts = self.session.parts(p.live, int(p.ts.max()))
            for part in parts.values():
                part.items.flags.writeable = part.scores.flags.writeable = False
            p.parts = parts
        return p.parts

    def _vectors(self, p: _Prepared) -> np.ndarray | None:
        """The user folded into the model (made once), or None for a model that
        scores otherwise (``Recommender.user_vectors``)."""
        if p.vectors is None:
            vectors = self.model.user_vectors(p.row)
            if vectors is None:
                return None
            vectors.flags.writeable = False
            p.vectors = vectors
        return p.vectors

    def _model_scores(self, p: _Prepared) -> np.ndarray:
        """The model's score of every item for ``p``'s user (a new array)."""
        vectors = self._vectors(p)
        if vectors is None:
            return self.model.score(p.row)[0]
        return self.model.score_vectors(vectors)[0]

    def _weighted(
        self, history: Sequence[ItemEvent], live_since_ms: int | None, live_boost: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, np.ndarray]:
        """Item numbers, types and times of ``history``, its weighted row, and which
        events weigh positively (the ones that count as interest)."""
        w = self.weights
        boosted = live_since_ms is not None and live_boost != 1.0
        if w.recency_half_life <= 0 and w.time_half_life_days <= 0:
            # The weighting as one compiled pass (the common case: no decays).
            numbers, types, ts, positive, cols, data = weighted_history(
                history if isinstance(history, list) else list(history),
                self.items.index,
                w.table_array,
                w.view_array,
                w.dwell_bonus,
                w.dwell_saturation_ms,
                w.skip_below_ms,
                w.skip_factor,
                boosted,
                live_since_ms if live_since_ms is not None else 0,
                live_boost,
            )
            row = csr_row(cols, data, len(self.items))
        else:  # recency or time decay: numpy
            numbers = self.items.numbers([e.item_id for e in history])
            types = np.fromiter((e.type for e in history), dtype=np.int64, count=len(history))
            dwell = np.fromiter(
                (-1 if e.dwell_ms is None else e.dwell_ms for e in history),
                dtype=np.int64,
                count=len(history),
            )
            ts = np.fromiter((e.ts_ms for e in history), dtype=np.int64, count=len(history))
            later = None
            if w.recency_half_life > 0:  # as in training: events after each one
                later = np.empty(len(history), dtype=np.int64)
                later[np.argsort(-ts, kind="stable")] = np.arange(len(history))
            age = None
            if w.time_half_life_days > 0:
                age = time.time_ns() // 1_000_000 - ts  # serving: before now
            weights = w.weigh(types, dwell, later, age)
            if boosted:
                weights = np.where(ts >= live_since_ms, weights * live_boost, weights)
            row = user_row(numbers, weights, len(self.items))
            positive = weights > 0
        if self.scaling is not None:
            row = self.scaling.apply(row)
        return numbers, types, ts, row, positive

    @staticmethod
    def _live_session(numbers: np.ndarray, ts: np.ndarray, live_since_ms: int | None) -> np.ndarray:
        """Item numbers of the live session's events in time order (known items only)."""
        if live_since_ms is None:
            return np.zeros(0, dtype=np.int64)
        in_session = np.flatnonzero((ts >= live_since_ms) & (numbers >= 0))
        order = in_session[np.argsort(ts[in_session], kind="stable")]
        return numbers[order]

    @staticmethod
    def _touched(p: _Prepared) -> tuple[list[int], dict[int, int], dict[int, int]]:
        """``p.touched`` (made once)."""
        if p.touched is None:
            recent_first = list(dict.fromkeys(reversed(p.live.tolist())))[:20]
            # When and how each of those items was last touched (only they are named).
            named = set(recent_first)
            last_seen: dict[int, int] = {}
            verbs: dict[int, int] = {}
            for num, t, typ in zip(
                p.numbers.tolist(), p.ts.tolist(), p.types.tolist(), strict=True
            ):
                if num in named and t >= last_seen.get(num, -1):
                    last_seen[num] = t
                    verbs[num] = max(typ, verbs.get(num, typ))
            p.touched = (recent_first, last_seen, verbs)
        return p.touched

    def _explain_session(self, p: _Prepared, recommended: np.ndarray) -> list[str]:
        """Names the live-session event behind each item: the latest live item with
        a transition rule to it ("because you viewed X a minute ago"), else the
        model's most similar history item."""
        if len(recommended) == 0 or self.session is None:
            return []
        now = max(time.time_ns() // 1_000_000, int(p.ts.max()))
        recent_first, last_seen, verbs = self._touched(p)
        # source[r]: the first s whose live item recent_first[s] has a rule leading
        # to recommended[r], len(recent_first) for none.
        none = len(recent_first)
        source = self.session.rules.sources_of(np.asarray(recent_first), recommended)
        unlinked = np.flatnonzero(source == none)
        fallback: dict[int, str] = {}
        if len(unlinked) and p.row.nnz:  # the model explains only what no rule does
            fallback = dict(
                zip(unlinked.tolist(), self._explain(p, recommended[unlinked]), strict=True)
            )
        reasons = []
        for r, s in enumerate(source.tolist()):
            if s < none:
                src = recent_first[s]
                verb = _VERBS.get(verbs.get(src, EventType.ITEM_VIEW), "viewed")
                ago = _ago(now - last_seen.get(src, now))
                reasons.append(f"because you {verb} {self.items.id(src)} {ago}")
            else:
                reasons.append(fallback.get(r, "popular in sessions like yours"))
        return reasons

    def _popular(self, row: Any, n: int, excluded: np.ndarray) -> Recommendation:
        trending = self.algorithm == "trending"
        ranking = self.model.score(row)[0] if trending else self.popularity
        idx, scores = top_k(ranking, n, excluded)
        if trending:
            reasons = [f"trending: {ranking[i]:.1f} recent weighted interactions" for i in idx]
        else:
            reasons = [f"popular: {int(self.popularity[i])} users" for i in idx]
        return Recommendation(self.items.ids[idx].tolist(), scores.tolist(), reasons, "popular")

    def _explain(self, p: _Prepared, recommended: np.ndarray) -> list[str]:
        """Names the history item most like each recommended one."""
        if len(recommended) == 0:
            return []
        sources = p.row.indices
        sims = self.model.item_similarity(sources, recommended)  # len(rec) x len(sources)
        # The most similar history item (weighting by confidence let one heavy
        # purchase "explain" items of unrelated categories).
        best = np.argmax(sims, axis=1)
        if p.strongest is None:
            strongest: dict[int, int] = {}
            for num, typ in zip(p.numbers.tolist(), p.types.tolist(), strict=True):
                if num >= 0 and (num not in strongest or typ > strongest[num]):
                    strongest[num] = typ
            p.strongest = strongest
        strongest = p.strongest
        reasons = []
        for r, b in enumerate(best.tolist()):
            if sims[r, b] <= 0:
                reasons.append("matches your history")
                continue
            src = int(sources[b])
            verb = _VERBS.get(strongest.get(src, EventType.ITEM_VIEW), "viewed")
            reasons.append(f"similar to {self.items.id(src)} you {verb}")
        return reasons

    def similar_items(
        self, item_id: str, n: int, *, allowed: np.ndarray | None = None
    ) -> tuple[list[str], list[float]]:
        """The ``n`` items most similar to ``item_id``; ``allowed`` as in ``recommend``."""
        number = self.items.number(item_id)
        if number < 0:
            raise NotFound(f"item_id: {item_id!r} is not in model {self.version}")
        if allowed is None:
            idx, scores = self.model.similar_items(number, n)
        else:
            idx, scores = self.model.similar_items(number, len(self.items))
            keep = self._mask(allowed)[idx]
            idx, scores = idx[keep][:n], scores[keep][:n]
        return self.items.ids[idx].tolist(), scores.tolist()

    def similar_items_explained(
        self, item_id: str, n: int, *, allowed: np.ndarray | None = None
    ) -> tuple[list[str], list[float], list[str]]:
        """Items like ``item_id``: the model's item similarity and, when the artifact
        has session models, co-occurrence in training sessions, each scaled to [0, 1]
        and added; each item says which signal put it there."""
        number = self.items.number(item_id)
        if number < 0:
            raise NotFound(f"item_id: {item_id!r} is not in model {self.version}")
        if self.session is None:
            ids, scores = self.similar_items(item_id, n, allowed=allowed)
            return ids, scores, [f"similar to {item_id}"] * len(ids)
        co = self.session.knn.co_occurrence(number)
        total = normalized(co)
        if self.algorithm not in NON_PERSONAL:
            sims = self.model.item_similarity(np.array([number]), np.arange(len(self.items)))[:, 0]
            total = total + normalized(np.asarray(sims, dtype=np.float32))
        total = self._tie_broken(total)
        total[number] = -np.inf
        if self.algorithm in NON_PERSONAL:
            total[co <= 0] = -np.inf  # nothing relates the others to item_id
        excluded = None if allowed is None else np.flatnonzero(~self._mask(allowed))
        idx, top_scores = top_k(total, n, excluded)
        reasons = [
            f"viewed with {item_id} in {int(co[i])} sessions"
            if co[i] > 0
            else f"similar to {item_id}"
            for i in idx.tolist()
        ]
        return self.items.ids[idx].tolist(), top_scores.tolist(), reasons

    def _mask(self, allowed: np.ndarray) -> np.ndarray:
        mask = np.asarray(allowed, dtype=bool)
        if mask.shape != (len(self.items),):
            raise ValueError(
                f"allowed: expected one flag per model item ({len(self.items)}), "
                f"got shape {mask.shape}"
            )
        return mask


def _excluded(seen: np.ndarray, others: np.ndarray, blocked: np.ndarray | None) -> np.ndarray:
    """The items a call leaves out: ``seen``, ``others`` and the ``blocked`` ones."""
    return np.concatenate([seen, others, *([] if blocked is None else [np.flatnonzero(blocked)])])


def _ago(ms: int) -> str:
    seconds = max(ms, 0) / 1000
    if seconds < 45:
        return "just now"
    if seconds < 90:
        return "a minute ago"
    if seconds < 3600:
        return f"{round(seconds / 60)} minutes ago"
    return f"{round(seconds / 3600)} hours ago" if seconds >= 5400 else "an hour ago"


# ------------------------------------------------------------------- write
def new_version(algorithm: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{algorithm}"


def save_artifact(
    models_dir: str | os.PathLike[str],
    model: Recommender,
    interactions: Interactions,
    weights: EventWeights,
    *,
    extra_meta: dict[str, Any] | None = None,
    make_current: bool = True,
    session: SessionRecommender | None = None,
    index: ItemIndex | None = None,
) -> ModelArtifact:
    """Writes a new version (atomically) and, by default, makes it current.
    ``index``: an item index over the model's item factors, saved with it."""
    root = Path(models_dir)
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    version = new_version(model.algorithm)
    while (versions / version).exists():
        version = new_version(model.algorithm)
    from training.models import item_popularity

    popularity = item_popularity(interactions.matrix)
    arrays = {
        "users": interactions.users.ids,
        "items": interactions.items.ids,
        "popularity": popularity,
        **{f"model.{k}": v for k, v in model.to_arrays().items()},
    }
    if interactions.scaling is not None:
        arrays.update({f"scaling.{k}": v for k, v in interactions.scaling.to_arrays().items()})
    if session is not None:
        arrays.update(session.to_arrays())
    if index is not None:
        arrays["ann_index"] = index.to_bytes()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=versions))
    try:
        with open(tmp / "model.npz", "wb") as fh:
            _write_npz(fh, arrays)
            fh.flush()
            os.fsync(fh.fileno())
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "algorithm": model.algorithm,
            "params": model.params,
            "weights": weights.to_dict(),
            "trained_at": dt.datetime.now(dt.UTC).isoformat(),
            "users": len(interactions.users),
            "items": len(interactions.items),
            "interactions": int(interactions.matrix.nnz),
            "events": interactions.events,
            "data_fingerprint": data_fingerprint(interactions),
            "sha256": {"model.npz": _sha256(tmp / "model.npz")},
            "arrays": sorted(arrays),
            "library_versions": _library_versions(),
            **({"session": session.describe()} if session is not None else {}),
            **({"ann": {"kind": index.kind, **index.info}} if index is not None else {}),
            **(extra_meta or {}),
        }
        _write_json(tmp / "meta.json", meta)
        # mkdtemp makes the folder private; servers may run as another user.
        os.chmod(tmp, 0o755)
        for name in ("model.npz", "meta.json"):
            os.chmod(tmp / name, 0o644)
        os.rename(tmp, versions / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(versions)
    if make_current:
        set_current(root, version)
    return ModelArtifact(
        version=version,
        algorithm=model.algorithm,
        model=model,
        users=interactions.users,
        items=interactions.items,
        popularity=popularity,
        weights=weights,
        meta=meta,
        scaling=interactions.scaling,
        session=session,
        index=index,
    )


def set_current(models_dir: str | os.PathLike[str], version: str) -> None:
    root = Path(models_dir)
    if not (root / VERSIONS_DIR / version / "meta.json").is_file():
        raise NotFound(f"version: {version!r} not found in {root}")
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=root)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; servers may run as another user
    with os.fdopen(fd, "w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT_FILE)
    _fsync_dir(root)


# -------------------------------------------------------------------- read
def current_version(models_dir: str | os.PathLike[str]) -> str | None:
    """The version ``CURRENT`` points to, or None when there is none yet."""
    try:
        text = (Path(models_dir) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def list_versions(models_dir: str | os.PathLike[str]) -> list[str]:
    versions = Path(models_dir) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if (p / "meta.json").is_file())


def load_current(models_dir: str | os.PathLike[str]) -> ModelArtifact | None:
    """Loads the current version, or returns None when the directory has none."""
    version = current_version(models_dir)
    return None if version is None else load_artifact(models_dir, version)


def load_artifact(
    models_dir: str | os.PathLike[str],
    version: str,
    *,
    prepared_cache_bytes: int = PREPARED_CACHE_BYTES,
) -> ModelArtifact:
    """Loads and verifies one version; raises ArtifactError when anything is off.
    ``prepared_cache_bytes``: what it may keep of the histories it serves."""
    folder = Path(models_dir) / VERSIONS_DIR / version
    if "/" in version or version.startswith(".") or not folder.is_dir():
        raise NotFound(f"version: {version!r} not found in {models_dir}")
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{version}: unreadable meta.json ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{version}: unknown artifact format {meta.get('format')!r}")
    algorithm = meta.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise ArtifactError(f"{version}: unknown algorithm {algorithm!r}")
    npz = folder / "model.npz"
    expected = (meta.get("sha256") or {}).get("model.npz")
    try:
        actual = _sha256(npz)
    except OSError as exc:
        raise ArtifactError(f"{version}: model.npz unreadable ({exc})") from exc
    if actual != expected:
        raise ArtifactError(f"{version}: checksum mismatch for model.npz (corrupted or tampered)")
    try:
        arrays = _read_npz(npz)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{version}: cannot read model.npz ({exc})") from exc
    if sorted(arrays) != sorted(meta.get("arrays", [])):
        raise ArtifactError(f"{version}: arrays {sorted(arrays)} differ from meta.json")
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{version}: array {name} holds NaN or infinity")
    try:
        users = Vocabulary.stored(arrays["users"])
        items = Vocabulary(arrays["items"].tolist())
        model_arrays = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
        model = ALGORITHMS[algorithm].from_arrays(meta.get("params", {}), model_arrays)
        weights = EventWeights.from_dict(meta.get("weights", {}))
        popularity = np.asarray(arrays["popularity"], dtype=np.float32)
        if model.n_items != len(items) or popularity.shape != (len(items),):
            raise ValueError(f"model has {model.n_items} items, vocabulary {len(items)}")
        scaling = None
        if weights.scaling != "none":
            scaling_arrays = {
                k[len("scaling.") :]: v for k, v in arrays.items() if k.startswith("scaling.")
            }
            scaling = ConfidenceScaling.from_arrays(scaling_arrays, weights)
            if scaling.idf.shape != (len(items),) or not scaling.average_length > 0:
                raise ValueError("scaling: statistics do not fit the vocabulary")
        session = None
        if meta.get("session") is not None:
            session = SessionRecommender.from_arrays(meta["session"], arrays, len(items))
        index = None
        if "ann_index" in arrays:
            factors = getattr(model, "item_factors", None)
            if factors is None:
                raise ValueError(f"ann_index: {algorithm} has no item factors to index")
            index = ItemIndex.from_bytes(arrays["ann_index"], factors)
        artifact = ModelArtifact(
            version=version,
            algorithm=algorithm,
            model=model,
            users=users,
            items=items,
            popularity=popularity,
            weights=weights,
            meta=meta,
            scaling=scaling,
            session=session,
            index=index,
            prepared_cache_bytes=0,  # the smoke test's probe is not kept
        )
        _smoke_test(artifact)
        artifact.prepared_cache_bytes = prepared_cache_bytes
    except (KeyError, ValueError, TypeError, IndexError, SessionrecError) as exc:
        raise ArtifactError(f"{version}: inconsistent artifact ({exc})") from exc
    return artifact


#: Where each array of a written ``model.npz`` starts (bytes into the file).
NPZ_ALIGN = 64
#: The zip extra-field id of alignment padding (as Android's zipalign writes).
_PADDING_ID = 0xD935


def _write_npz(fh: Any, arrays: dict[str, Any]) -> None:
    """``np.savez(fh, **arrays)``, with each array's data starting at a multiple
    of ``NPZ_ALIGN`` bytes into the file (padding in the member's local header,
    an extra field every zip reader skips), so ``_read_npz`` can map the arrays
    in place, aligned."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_STORED
            # Local header, name, the padding field's own 4 bytes, the zip64 field
            # (always written, as np.savez does); the .npy header is a multiple of 64.
            fixed = 30 + len(info.filename.encode("utf-8")) + 4 + 20
            pad = -(fh.tell() + fixed) % NPZ_ALIGN
            info.extra = struct.pack("<HH", _PADDING_ID, pad) + bytes(pad)
            with zf.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``model.npz`` as ``np.load(path, allow_pickle=False)``
    reads them, except that arrays stored uncompressed (``np.savez``, as
    ``save_artifact`` writes) are views of one copy-on-write mapping of the
    file, not copies: a server's processes share one copy of the model in
    memory (the page cache), and so in the CPU caches. Nothing writes to an
    artifact's arrays; a page written anyway becomes that process's own copy."""
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        members = zf.infolist()
        if not members:
            return arrays
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        for info in members:
            name = info.filename.removesuffix(".npy")
            array = (
                _mapped_member(mapped, info) if info.compress_type == zipfile.ZIP_STORED else None
            )
            if array is None:  # compressed, or a layout not mapped: read as np.load does
                with zf.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
            arrays[name] = array
    return arrays


def _mapped_member(mapped: mmap.mmap, info: zipfile.ZipInfo) -> np.ndarray | None:
    """One stored ``.npy`` member of a mapped zip file as an array over the
    mapping, or None when its header is not a plain 1.0/2.0 one."""
    start = info.header_offset
    local = mapped[start : start + 30]
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{info.filename}: no local zip header at {start}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    data_start = start + 30 + name_length + extra_length
    member = io.BytesIO(mapped[data_start : data_start + min(info.file_size, 65_536 + 16)])
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        return None
    if dtype.hasobject:
        raise ValueError(f"{info.filename}: object arrays are not loaded (allow_pickle=False)")
    count = int(np.prod(shape, dtype=np.int64))
    offset = data_start + member.tell()
    if member.tell() + count * dtype.itemsize > info.file_size:
        raise ValueError(f"{info.filename}: shorter than its header says")
    if offset % NPZ_ALIGN:  # written before NPZ_ALIGN: read, aligned, as np.load does
        return None
    flat = np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def _smoke_test(artifact: ModelArtifact) -> None:
    """One real recommendation before a model may serve: arrays that load but
    do not fit together fail here, not in a client's request."""
    if not len(artifact.items):
        raise ValueError("no items")
    probe = [ItemEvent(artifact.items.id(0), int(EventType.ITEM_VIEW), None, 0)]
    for live_since in (None, 0):  # the long-term model, then the session blend
        rec = artifact.recommend(
            probe, min(10, len(artifact.items)), include_seen=True, live_since_ms=live_since
        )
        if not all(np.isfinite(rec.scores)):
            raise ValueError("a probe recommendation scored NaN or infinity")


# ----------------------------------------------------------------- helpers
def data_fingerprint(interactions: Interactions) -> str:
    """sha256 of the training matrix and its vocabularies: same data, same print."""
    digest = hashlib.sha256()
    m = interactions.matrix.tocsr()
    for array in (
        m.indptr.astype(np.int64),
        m.indices.astype(np.int64),
        m.data.astype(np.float32),
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    for vocabulary in (interactions.users, interactions.items):
        digest.update("\x1f".join(vocabulary.ids.tolist()).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def read_meta(models_dir: str | os.PathLike[str], version: str) -> dict[str, Any]:
    """A version's meta.json (no array loading, no verification)."""
    path = Path(models_dir) / VERSIONS_DIR / version / "meta.json"
    if "/" in version or version.startswith(".") or not path.is_file():
        raise NotFound(f"version: {version!r} not found in {models_dir}")
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise ArtifactError(f"{version}: unreadable meta.json ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("implicit", "numpy", "scipy", "sessionrec"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
