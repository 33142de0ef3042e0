"""The offline steps as one call each: load -> interactions -> fit -> save.

from sessionrec.store import open_store
from training.pipeline import train

with open_store("sqlite:///data/sessionrec.db") as store:
    artifact = train(store, "models", "als", {"factors": 32})
print(artifact.version, artifact.meta["fit_seconds"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sessionrec.store import Store
from training.artifact import ModelArtifact, save_artifact
from training.data import build_interactions
from training.models import create_model
from training.weighting import EventWeights


def train(
    store: Store,
    models_dir: str,
    algorithm: str = "als",
    params: dict[str, Any] | None = None,
    *,
    weights: EventWeights | None = None,
    make_current: bool = True,
    show_progress: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ModelArtifact:
    """Trains ``algorithm`` on every stored item event and writes a new artifact version."""
    say = progress or (lambda _msg: None)
    weights = weights or EventWeights()
    model = create_model(algorithm, **(params or {}))
    started = time.perf_counter()
    events = store.item_events()
    interactions = build_interactions(events, weights)
    load_seconds = time.perf_counter() - started
    say(
        f"loaded {len(events)} item events -> {len(interactions.users)} users x "
        f"{len(interactions.items)} items, {interactions.matrix.nnz} interactions "
        f"({load_seconds:.2f}s)"
    )
    if interactions.matrix.nnz == 0:
        from sessionrec.errors import FailedPrecondition

        raise FailedPrecondition("store: no weighted item events to train on")
    fit_started = time.perf_counter()
    model.fit(interactions.matrix, show_progress=show_progress)
    fit_seconds = time.perf_counter() - fit_started
    say(f"fitted {algorithm} in {fit_seconds:.2f}s")
    artifact = save_artifact(
        models_dir,
        model,
        interactions,
        weights,
        make_current=make_current,
        extra_meta={
            "load_seconds": round(load_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "store": store.url,
        },
    )
    say(f"saved {artifact.version} to {models_dir}" + (" (current)" if make_current else ""))
    return artifact
