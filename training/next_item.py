"""Next-item evaluation, the protocol of the session-based recommendation benchmarks.

Sessions are split by time: those that start in the last ``test_days`` are the
test set, the earlier ones train every model. Test sessions keep only items the
training data knows and need at least two of them. For every prefix of a test
session the next click is predicted; HR@k counts the predictions whose top k
holds it, MRR@k averages 1/rank (0 beyond k). Items of the prefix may be
recommended again (repeat clicks are part of the benchmark's data).

``evaluate_next_item`` reports popularity, plain SKNN (the reference), V-SKNN and
STAN-style session-kNN, sequential rules, the long-term model folded in on the
user's history plus the prefix, and the **service blend**, ranked by the very
``ModelArtifact.recommend`` call that answers ``Recommend``. ``choose_blend``
picks the blend weights on the latest training sessions, never on the test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sessionrec.errors import FailedPrecondition, InvalidArgument
from sessionrec.events import ItemEvent
from sessionrec.store import EventColumns
from training.artifact import NON_PERSONAL, ModelArtifact
from training.data import Interactions, build_interactions
from training.models import break_ties_by_popularity, create_model, item_popularity
from training.session_models import (
    BLEND_PARTS,
    CANDIDATE_KNN,
    DAY_MS,
    DEFAULT_BLEND,
    DEFAULT_KNN,
    VARIANTS,
    SequentialRules,
    SessionKNN,
    SessionRecommender,
    Sessions,
    check_blend,
    normalized,
    positive_events,
    sessions_from_events,
)
from training.weighting import EventWeights

KS = (10, 20)
#: Weights of rules and model relative to session-kNN; the small ones let a part
#: break ties and fill short lists without reordering what the others rank.
BLEND_RATIOS = (0.0, 0.01, 0.03, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def blend_grid() -> np.ndarray:
    """Weight combinations (knn, rules, model) up to scale: knn 1 with every ratio
    for the others, then rules alone or with the model, then the model alone."""
    grid = [(1.0, r, m) for r in BLEND_RATIOS for m in BLEND_RATIOS]
    grid += [(0.0, 1.0, m) for m in BLEND_RATIOS] + [(0.0, 0.0, 1.0)]
    return np.asarray(grid, dtype=np.float64)


@dataclass
class BlendChoice:
    """The session-kNN variant and blend weights ``choose_blend`` settled on."""

    knn_params: dict[str, Any]
    blend: dict[str, float]


@dataclass
class NextItemResult:
    algorithm: str
    metrics: dict[str, float]  # hr@k, mrr@k for each k
    predictions: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            **{k: round(v, 6) for k, v in self.metrics.items()},
            "predictions": self.predictions,
            "seconds": round(self.seconds, 2),
            "params": self.params,
        }


def split_sessions_by_time(
    events: EventColumns, test_days: float
) -> tuple[EventColumns, EventColumns]:
    """Events of sessions ending in the last ``test_days`` (test) and the rest."""
    if events.session_id is None:
        raise InvalidArgument("events: next-item evaluation needs session ids")
    if not (np.isfinite(test_days) and test_days > 0):
        raise InvalidArgument(f"test_days: must be a number > 0, got {test_days}")
    if len(events) == 0:
        raise FailedPrecondition("store: no item events")
    # By each session's last event, as session-rec does: no training click comes
    # after the cut.
    end: dict[str, int] = {}
    for sid, ts in zip(events.session_id.tolist(), events.ts_ms.tolist(), strict=True):
        if ts > end.get(sid, -(2**62)):
            end[sid] = ts
    cut = int(events.ts_ms.max()) - int(test_days * DAY_MS)
    test = np.fromiter(
        (end[s] >= cut for s in events.session_id.tolist()), dtype=bool, count=len(events)
    )
    return events.take(~test), events.take(test)


@dataclass
class Case:
    """One prediction: the prefix (event rows of one test session) and the target."""

    session: int
    length: int  # prefix length in events


def _cases(test: Sessions, limit: int | None, seed: int) -> list[Case]:
    if limit is not None and limit < 1:
        raise InvalidArgument(f"max_predictions: must be >= 1, got {limit}")
    cases = [Case(s, i) for s in range(len(test)) for i in range(1, len(test.session(s)))]
    if limit is not None and len(cases) > limit:
        picked = np.random.default_rng(seed).choice(len(cases), size=limit, replace=False)
        cases = [cases[i] for i in sorted(picked.tolist())]
    return cases


@dataclass
class _TestSessions:
    sessions: Sessions
    users: list[str]
    rows: list[np.ndarray]  # row numbers into the test EventColumns, click order


def _test_sessions(
    test_events: EventColumns, train: Interactions, weights: EventWeights
) -> _TestSessions:
    numbers = train.items.numbers(test_events.item_id.tolist())
    numbers[~positive_events(test_events, weights)] = -1  # impressions are not clicks
    by_session: dict[str, list[int]] = {}
    assert test_events.session_id is not None
    for r, (sid, num) in enumerate(
        zip(test_events.session_id.tolist(), numbers.tolist(), strict=True)
    ):
        if num >= 0:
            by_session.setdefault(sid, []).append(r)
    rows = [np.asarray(v, dtype=np.int64) for v in by_session.values() if len(v) >= 2]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = numbers[np.concatenate(rows)] if rows else np.zeros(0, dtype=np.int64)
    ends = np.asarray([test_events.ts_ms[r[-1]] for r in rows], dtype=np.int64)
    users = [str(test_events.user_id[r[0]]) for r in rows]
    return _TestSessions(Sessions(indptr, items.astype(np.int32), ends), users, rows)


def rank_of(scores: np.ndarray, target: int) -> int:
    """1-based position of ``target`` in the ranking ``top_k`` makes: higher scores
    first, equal scores by item number (a tie is not a shared first place)."""
    value = scores[target]
    return int((scores > value).sum() + (scores[:target] == value).sum()) + 1


class _Ranker:
    """Accumulates HR@k and MRR@k from full score vectors."""

    def __init__(self, ks: Sequence[int], popularity: np.ndarray):
        self.ks = tuple(ks)
        self.popularity = popularity
        self.hits = {k: 0.0 for k in self.ks}
        self.rr = {k: 0.0 for k in self.ks}
        self.n = 0

    def add(self, scores: np.ndarray, target: int) -> None:
        self.add_rank(rank_of(break_ties_by_popularity(scores, self.popularity), target))

    def add_rank(self, rank: int) -> None:
        self.n += 1
        for k in self.ks:
            if rank <= k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / rank

    def metrics(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {}
        for k in self.ks:
            out[f"hr@{k}"] = self.hits[k] / n
            out[f"mrr@{k}"] = self.rr[k] / n
        return out


def _history_events(events: EventColumns, rows: np.ndarray) -> list[ItemEvent]:
    return [
        ItemEvent(
            str(events.item_id[r]),
            int(events.type[r]),
            None if events.dwell_ms[r] < 0 else int(events.dwell_ms[r]),
            int(events.ts_ms[r]),
        )
        for r in rows.tolist()
    ]


def _user_histories(train_events: EventColumns, users: set[str]) -> dict[str, np.ndarray]:
    rows: dict[str, list[int]] = {}
    for r, u in enumerate(train_events.user_id.tolist()):
        if u in users:
            rows.setdefault(u, []).append(r)
    return {u: np.asarray(v, dtype=np.int64) for u, v in rows.items()}


def evaluate_next_item(
    events: EventColumns,
    algorithm: str = "ease",
    params: dict[str, Any] | None = None,
    *,
    weights: EventWeights | None = None,
    test_days: float = 30.0,
    ks: Sequence[int] = KS,
    knn_params: dict[str, Any] | None = None,
    rules_params: dict[str, Any] | None = None,
    blend: dict[str, float] | None = None,
    live_boost: float = 5.0,
    max_predictions: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[NextItemResult]:
    """Next-item HR/MRR of every session algorithm, the long-term ``algorithm``
    and the service blend (``blend``: chosen by ``choose_blend`` when None)."""
    say = progress or (lambda _msg: None)
    weights = weights or EventWeights()
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise InvalidArgument("ks: must be positive")
    train_events, test_events = split_sessions_by_time(events, test_days)
    train = build_interactions(train_events, weights)
    if train.matrix.nnz == 0:
        raise FailedPrecondition("store: no training sessions before the test period")
    n_items = len(train.items)
    sessions = sessions_from_events(train_events, train.items, weights)
    test = _test_sessions(test_events, train, weights)
    cases = _cases(test.sessions, max_predictions, seed)
    say(
        f"split: {len(sessions)} training sessions, {len(test.sessions)} test sessions, "
        f"{len(cases)} next-item predictions, {n_items} items"
    )
    if not cases:
        raise FailedPrecondition("test: no test session with two known items")
    popularity = item_popularity(train.matrix)
    results: list[NextItemResult] = []

    def run(name: str, scorer: Callable[[Case, np.ndarray], np.ndarray], p: dict[str, Any]) -> None:
        started = time.perf_counter()
        ranker = _Ranker(ks, popularity)
        for case in cases:
            seq = test.sessions.session(case.session)
            ranker.add(scorer(case, seq[: case.length]), int(seq[case.length]))
        results.append(
            NextItemResult(name, ranker.metrics(), ranker.n, time.perf_counter() - started, p)
        )
        m = results[-1].metrics
        say(f"{name:8s} HR@{ks[-1]} {m[f'hr@{ks[-1]}']:.4f}  MRR@{ks[-1]} {m[f'mrr@{ks[-1]}']:.4f}")

    def end_ms(case: Case) -> int:
        rows = test.rows[case.session]
        return int(test_events.ts_ms[rows[case.length - 1]])

    run("popular", lambda case, prefix: popularity, {})
    for name, variant in VARIANTS.items():
        knn = SessionKNN(**variant).fit(sessions, n_items)

        def knn_scores(case: Case, prefix: np.ndarray, m: SessionKNN = knn) -> np.ndarray:
            return m.score(prefix, end_ms(case))

        run(name, knn_scores, knn.params)
    rules = SequentialRules(**(rules_params or {})).fit(sessions, n_items)
    run("rules", lambda case, prefix: rules.score(prefix), rules.params)

    model = create_model(algorithm, **(params or {}))
    fit_started = time.perf_counter()
    model.fit(train.matrix)
    say(f"{algorithm}: trained in {time.perf_counter() - fit_started:.1f}s")
    if blend is None:
        chosen = choose_blend(
            train_events,
            algorithm,
            params,
            weights=weights,
            knn_params=knn_params,
            rules_params=rules_params,
            validation_days=test_days,
            live_boost=live_boost,
            seed=seed,
            progress=say,
        )
        blend, knn_params = chosen.blend, chosen.knn_params
    session = SessionRecommender.fit(
        sessions,
        n_items,
        knn_params=DEFAULT_KNN if knn_params is None else knn_params,
        rules_params=rules_params,
        blend=blend,
    )
    artifact = ModelArtifact(
        "evaluation",
        algorithm,
        model,
        train.users,
        train.items,
        popularity,
        weights,
        scaling=train.scaling,
        session=session,
    )
    histories = _user_histories(train_events, set(test.users))
    empty = np.zeros(0, dtype=np.int64)

    def start_ms(case: Case) -> int:
        return int(test_events.ts_ms[test.rows[case.session][0]])

    def history(case: Case) -> list[ItemEvent]:
        past = histories.get(test.users[case.session], empty)
        past = past[train_events.ts_ms[past] < start_ms(case)]  # nothing from the future
        now = test.rows[case.session][: case.length]
        return _history_events(train_events, past) + _history_events(test_events, now)

    def model_only(case: Case, prefix: np.ndarray) -> np.ndarray:
        return _model_scores(artifact, history(case), start_ms(case), live_boost)

    run(algorithm, model_only, model.params)

    def service(case: Case, prefix: np.ndarray) -> np.ndarray:
        rec = artifact.recommend(
            history(case),
            ks[-1],
            include_seen=True,
            live_since_ms=start_ms(case),
            live_boost=live_boost,
        )
        ranked = artifact.items.numbers(rec.item_ids)
        out = np.full(n_items, -1.0, dtype=np.float32)
        out[ranked] = np.arange(len(ranked), 0, -1, dtype=np.float32)
        return out

    service_started = time.perf_counter()
    ranker = _Ranker(ks, popularity)
    for case in cases:
        seq = test.sessions.session(case.session)
        scores = service(case, seq[: case.length])
        target = int(seq[case.length])
        ranker.add_rank(
            int((scores > scores[target]).sum()) + 1 if scores[target] >= 0 else ks[-1] + 1
        )
    results.append(
        NextItemResult(
            "blend",
            ranker.metrics(),
            ranker.n,
            time.perf_counter() - service_started,
            {"blend": session.blend, "knn": session.knn.params, "rules": session.rules.params},
        )
    )
    m = results[-1].metrics
    say(f"blend    HR@{ks[-1]} {m[f'hr@{ks[-1]}']:.4f}  MRR@{ks[-1]} {m[f'mrr@{ks[-1]}']:.4f}")
    return results


def _model_scores(
    artifact: ModelArtifact, history: list[ItemEvent], live_since_ms: int, live_boost: float
) -> np.ndarray:
    """The long-term model's scores for a history, weighted as ``recommend`` does
    (no personal model part: zeros, as the blend in ``recommend`` leaves it out)."""
    row = artifact.history_row(history, live_since_ms=live_since_ms, live_boost=live_boost)
    if row.nnz == 0 or artifact.algorithm in NON_PERSONAL:
        return np.zeros(len(artifact.items), dtype=np.float32)
    return np.asarray(artifact.model.score(row)[0])


def choose_blend(
    train_events: EventColumns,
    algorithm: str,
    params: dict[str, Any] | None = None,
    *,
    weights: EventWeights | None = None,
    knn_params: dict[str, Any] | None = None,
    rules_params: dict[str, Any] | None = None,
    validation_fraction: float = 0.1,
    validation_days: float | None = None,
    max_predictions: int = 2000,
    live_boost: float = 5.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BlendChoice:
    """The session-kNN variant and blend weights (session-kNN, rules, long-term
    model) that maximise HR@20 + MRR@20 on the latest sessions of the training
    data (the last ``validation_days``, else the last ``validation_fraction`` of
    its time span): the models are fitted on the sessions before, and every
    variant of ``VARIANTS`` (unless ``knn_params`` fixes one) with every weight
    combination of ``BLEND_GRID`` is tried on the same predictions.

    """
    say = progress or (lambda _msg: None)
    weights = weights or EventWeights()
    if train_events.session_id is None or len(train_events) == 0:
        raise InvalidArgument("events: choosing a blend needs session ids")
    span_days = (int(train_events.ts_ms.max()) - int(train_events.ts_ms.min())) / DAY_MS
    days = validation_days if validation_days else span_days * validation_fraction
    if days >= span_days / 2:  # keep most of the data to fit on
        days = span_days * validation_fraction
    fit_events, valid_events = split_sessions_by_time(train_events, max(days, 1e-3))
    variants = [knn_params] if knn_params is not None else list(CANDIDATE_KNN)
    fallback = BlendChoice(
        dict(DEFAULT_KNN if knn_params is None else knn_params), check_blend(DEFAULT_BLEND)
    )
    fit = build_interactions(fit_events, weights)
    if fit.matrix.nnz == 0:
        say("blend: too little data before the validation sessions, default blend")
        return fallback
    n_items = len(fit.items)
    sessions = sessions_from_events(fit_events, fit.items, weights)
    valid = _test_sessions(valid_events, fit, weights)
    cases = _cases(valid.sessions, max_predictions, seed)
    if not cases:
        say("blend: no validation session with two known items, default blend")
        return fallback
    knns = [SessionKNN(**v).fit(sessions, n_items) for v in variants]
    rules = SequentialRules(**(rules_params or {})).fit(sessions, n_items)
    model = create_model(algorithm, **(params or {}))
    model.fit(fit.matrix)
    popularity = item_popularity(fit.matrix)
    artifact = ModelArtifact(
        "validation",
        algorithm,
        model,
        fit.users,
        fit.items,
        popularity,
        weights,
        scaling=fit.scaling,
    )
    histories = _user_histories(fit_events, set(valid.users))
    grid = blend_grid()
    ranks = np.zeros((len(knns), len(grid), len(cases)), dtype=np.int64)
    tiny = 1e-6 * popularity / max(float(popularity.max(initial=0.0)), 1.0)
    last = min(100, len(popularity) - 1)
    most_popular = np.argpartition(-tiny, last)[: last + 1]
    empty = np.zeros(0, dtype=np.int64)
    for c, case in enumerate(cases):
        seq = valid.sessions.session(case.session)
        prefix, target = seq[: case.length], int(seq[case.length])
        rows = valid.rows[case.session]
        now = int(valid_events.ts_ms[rows[case.length - 1]])
        past = histories.get(valid.users[case.session], empty)
        past = past[fit_events.ts_ms[past] < int(valid_events.ts_ms[rows[0]])]
        hist = _history_events(fit_events, past) + _history_events(
            valid_events, rows[: case.length]
        )
        rule_part = normalized(rules.score(prefix))
        model_part = normalized(
            _model_scores(artifact, hist, int(valid_events.ts_ms[rows[0]]), live_boost)
        )
        knn_parts = [normalized(knn.score(prefix, now)) for knn in knns]
        # Only items some part scores can reach the top 20: those the session parts
        # score, the model's best 100 and the 100 most popular (popularity breaks
        # ties): any other item is outranked by 100 of these, so its rank is > 20.
        reach = np.zeros(len(popularity), dtype=bool)
        for part in (*knn_parts, rule_part):
            reach |= part > 0
        reach[most_popular] = True
        reach[np.argpartition(-(model_part + tiny), last)[: last + 1]] = True
        reach[target] = True
        items = np.flatnonzero(reach)
        at = int(np.searchsorted(items, target))
        for v, knn_part in enumerate(knn_parts):
            parts = np.vstack([knn_part[items], rule_part[items], model_part[items]])
            scores = grid @ parts + tiny[items]  # one row per weight combination
            value = scores[:, [at]]
            ranks[v, :, c] = (
                (scores > value).sum(axis=1) + (scores[:, :at] == value).sum(axis=1) + 1
            )
    hits = ranks <= 20
    hr = hits.mean(axis=2)
    mrr = np.where(hits, 1.0 / ranks, 0.0).mean(axis=2)
    # First best wins: variants and the grid are ordered simplest first.
    v, best = (int(x) for x in np.unravel_index(int(np.argmax(hr + mrr)), hr.shape))
    chosen = BlendChoice(
        dict(knns[v].params),
        check_blend(dict(zip(BLEND_PARTS, (round(float(x), 4) for x in grid[best]), strict=True))),
    )
    say(
        f"blend: {chosen} on {len(cases)} validation predictions "
        f"(HR@20 {hr[v, best]:.4f}, MRR@20 {mrr[v, best]:.4f})"
    )
    return chosen
