"""The offline steps as one call each: load -> interactions -> fit -> save.

from sessionrec.store import open_store
from training.pipeline import train

with open_store("sqlite:///data/sessionrec.db") as store:
    artifact = train(store, "models", "als", {"factors": 32})
print(artifact.version, artifact.meta["fit_seconds"])
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sessionrec.store import EventColumns, Store
from training.ann import ItemIndex, build_item_index
from training.artifact import ModelArtifact, save_artifact
from training.data import Interactions, build_interactions
from training.models import Recommender, create_model
from training.session_models import SessionRecommender
from training.weighting import EventWeights

#: Catalogs with at least this many items get an approximate item index.
ANN_MIN_ITEMS = 100_000
#: Training users the index's search parameter is tuned on, and the recall@10
#: it must reach on them (above the 0.95 promised on users it was not tuned on).
ANN_TUNE_USERS = 200
ANN_TUNE_RECALL = 0.96


def train(
    store: Store | None,
    models_dir: str,
    algorithm: str = "als",
    params: dict[str, Any] | None = None,
    *,
    weights: EventWeights | None = None,
    make_current: bool = True,
    evaluate_k: int | None = None,
    seed: int | None = None,
    show_progress: bool = False,
    progress: Callable[[str], None] | None = None,
    session_model: bool = True,
    blend: dict[str, float] | None = None,
    knn_params: dict[str, Any] | None = None,
    ann_min_items: int = ANN_MIN_ITEMS,
    events_parquet: str | None = None,
) -> ModelArtifact:
    """Trains ``algorithm`` on every stored item event and writes a new artifact version.

    ``evaluate_k``: first measure the same configuration on the per-user
    temporal 80/20 split (test metrics at k go into the artifact's metadata,
    which ``models promote`` compares). ``make_current``: promote the new
    version unconditionally (use ``training.registry.promote`` for a guarded
    promotion).

    ``session_model``: also build the session models the server blends with the
    live session (session-kNN index, sequential rules), when the events carry
    session ids. ``blend`` / ``knn_params`` fix them; otherwise they are chosen
    on the latest training sessions (``training.next_item.choose_blend``).

    ``ann_min_items``: a factor model (ALS) over at least this many items gets
    an approximate nearest-neighbour index (``training.ann``), tuned to recall@10
    >= 0.95 against exact search on training users and saved in the artifact.

    ``events_parquet``: read the item events from a Parquet export (``sessionrec
    export``) with Spark instead of ``store`` (``training.spark_als``); neither
    ``evaluate_k`` nor session models are available then."""
    say = progress or (lambda _msg: None)
    weights = weights or EventWeights()
    params = dict(params or {})
    model = create_model(algorithm, **params)
    if seed is not None and "random_state" in model.defaults:
        model.params["random_state"] = seed
    started = time.perf_counter()
    events: EventColumns | None = None
    if events_parquet is not None:
        from training.spark_als import parquet_interactions

        if evaluate_k is not None:
            from sessionrec.errors import InvalidArgument

            raise InvalidArgument("evaluate_k: not with events_parquet (train from the store)")
        interactions = parquet_interactions(events_parquet, weights, progress=say)
    else:
        assert store is not None, "train: a store or events_parquet"
        events = store.item_events(with_sessions=session_model)
        interactions = build_interactions(events, weights)
    load_seconds = time.perf_counter() - started
    say(
        f"loaded {interactions.events if events is None else len(events)} item events -> "
        f"{len(interactions.users)} users x "
        f"{len(interactions.items)} items, {interactions.matrix.nnz} interactions "
        f"({load_seconds:.2f}s)"
    )
    if interactions.matrix.nnz == 0:
        from sessionrec.errors import FailedPrecondition

        raise FailedPrecondition("store: no weighted item events to train on")
    extra: dict[str, Any] = {}
    if evaluate_k is not None and events is not None:
        from training.splits import split
        from training.tune import Configuration, score

        train_part, test_part = split(events, "temporal-fraction", 0.2)
        metrics, _, _ = score(
            Configuration(algorithm, dict(model.params), weights),
            train_part,
            test_part,
            evaluate_k,
            seed=int(model.params.get("random_state", 42)),
            threads=int(model.params.get("num_threads", 2)),
        )
        extra["metrics"] = {k: round(float(v), 6) for k, v in metrics.items()}
        extra["metrics_protocol"] = {
            "split": "temporal-fraction",
            "test_fraction": 0.2,
            "k": evaluate_k,
        }
        say(f"holdout NDCG@{evaluate_k}: {metrics['ndcg']:.4f}")
    fit_started = time.perf_counter()
    model.fit(interactions.matrix, show_progress=show_progress)
    fit_seconds = time.perf_counter() - fit_started
    say(f"fitted {algorithm} in {fit_seconds:.2f}s")
    index = None
    if len(interactions.items) >= ann_min_items:
        index = item_index(model, interactions, int(model.params.get("random_state", 0)), say)
        if index is not None:
            extra["ann_seconds"] = index.info.get("build_seconds", 0) + index.info.get(
                "tune_seconds", 0
            )
    session = None
    if session_model and events is None:
        say("session models: not built from Parquet events")
    elif session_model and events is not None and events.session_id is not None:
        session_started = time.perf_counter()
        session = _session_models(
            events, interactions, algorithm, dict(model.params), weights, blend, knn_params, say
        )
        if session is not None:
            extra["session_seconds"] = round(time.perf_counter() - session_started, 3)
    artifact = save_artifact(
        models_dir,
        model,
        interactions,
        weights,
        make_current=False,
        session=session,
        index=index,
        extra_meta={
            "load_seconds": round(load_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "store": store.url if store is not None else None,
            **({"events_parquet": str(events_parquet)} if events_parquet is not None else {}),
            **getattr(model, "fit_info", {}),
            **extra,
        },
    )
    if make_current:
        from training.registry import promote

        promote(models_dir, artifact.version, force=True)
    say(f"saved {artifact.version} to {models_dir}" + (" (current)" if make_current else ""))
    return artifact


def item_index(
    model: Recommender, interactions: Interactions, seed: int, say: Callable[[str], None]
) -> ItemIndex | None:
    """The model's approximate item index, tuned on up to ``ANN_TUNE_USERS``
    training users (folded in from their rows, their own items excluded, as in
    serving); None for models an index cannot serve."""
    factors = getattr(model, "item_factors", None)
    matrix = interactions.matrix.tocsr()
    rng = np.random.default_rng(seed)
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    users = np.sort(rng.choice(active, size=min(ANN_TUNE_USERS, len(active)), replace=False))
    rows = matrix[users]
    vectors = model.user_vectors(rows)
    if factors is None or vectors is None:
        return None
    return build_item_index(
        factors,
        min_items=0,
        queries=vectors,
        query_exclude=[
            rows.indices[rows.indptr[r] : rows.indptr[r + 1]] for r in range(len(users))
        ],
        target_recall=ANN_TUNE_RECALL,
        seed=seed,
        progress=say,
    )


def _session_models(
    events: EventColumns,
    interactions: Interactions,
    algorithm: str,
    params: dict[str, Any],
    weights: EventWeights,
    blend: dict[str, float] | None,
    knn_params: dict[str, Any] | None,
    say: Callable[[str], None],
) -> SessionRecommender | None:
    from training.next_item import choose_blend
    from training.session_models import DEFAULT_KNN, sessions_from_events

    sessions = sessions_from_events(events, interactions.items, weights)
    if np.count_nonzero(np.diff(sessions.indptr) >= 2) < 2:
        say("session models: fewer than 2 sessions with 2 known items, none built")
        return None
    if blend is None:
        chosen = choose_blend(
            events,
            algorithm,
            params,
            weights=weights,
            knn_params=knn_params,
            max_predictions=1000,
            progress=say,
        )
        blend, knn_params = chosen.blend, chosen.knn_params
    session = SessionRecommender.fit(
        sessions,
        len(interactions.items),
        knn_params=DEFAULT_KNN if knn_params is None else knn_params,
        blend=blend,
    )
    say(f"session models: {len(sessions)} sessions, {session.rules.rules.nnz} rules, blend {blend}")
    return session


def retrain_periodically(
    store_url: str,
    models_dir: str,
    algorithm: str,
    params: dict[str, Any] | None = None,
    *,
    every_s: float,
    weights: EventWeights | None = None,
    evaluate_k: int = 10,
    max_runs: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
    session_model: bool = True,
    blend: dict[str, float] | None = None,
) -> list[tuple[str, bool]]:
    """Retrains every ``every_s`` seconds (as Gorse and Amazon Personalize do) and
    promotes a new version only when its holdout NDCG is not worse than the
    current one's. Returns (version, promoted) per run; ``stop`` ends the wait."""
    from sessionrec.errors import FailedPrecondition
    from sessionrec.store import open_store
    from training.registry import promote

    say = progress or (lambda _msg: None)
    stop = stop or threading.Event()
    outcomes: list[tuple[str, bool]] = []
    for run in itertools.count(1):
        with open_store(store_url) as store:
            artifact = train(
                store,
                models_dir,
                algorithm,
                params,
                weights=weights,
                make_current=False,
                evaluate_k=evaluate_k,
                progress=say,
                session_model=session_model,
                blend=blend,
            )
        try:
            promote(models_dir, artifact.version)
            outcomes.append((artifact.version, True))
            say(f"run {run}: promoted {artifact.version}")
        except FailedPrecondition as exc:
            outcomes.append((artifact.version, False))
            say(f"run {run}: kept the current model: {exc}")
        if (max_runs is not None and run >= max_runs) or stop.wait(every_s):
            break
    return outcomes
