"""Artifacts with an approximate item index (training/pipeline.py item_index,
training/artifact.py): trained through the real pipeline on a real store,
saved in the .npz, loaded, and served; results agree with exact search and
honour every exclusion. The catalog is small (2,000 items), so the threshold
``ann_min_items`` is lowered to make the faiss path run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sessionrec.errors import ArtifactError
from sessionrec.events import EventRecord, EventType, ItemEvent, SessionRecord
from sessionrec.store import Store
from tests.conftest import store_url
from training.ann import ExactIndex, FaissIndex
from training.artifact import VERSIONS_DIR, load_artifact
from training.pipeline import ANN_TUNE_RECALL, train

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")

N_USERS, N_ITEMS, GROUPS = 600, 2000, 20
PARAMS = {"factors": 16, "iterations": 8, "random_state": 0, "num_threads": 1}


@pytest.fixture(scope="module")
def events_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A store of 600 users in 20 taste groups over 2,000 Zipf-popular items (one
    session each); returns its folder and each user's items in order."""
    from sessionrec.store import open_store

    root = tmp_path_factory.mktemp("ann")
    rng = np.random.default_rng(5)
    group_of = rng.permutation(np.arange(N_ITEMS) % GROUPS)
    popularity = 1.0 / (np.arange(N_ITEMS) + 5.0)
    rng.shuffle(popularity)
    members = [np.flatnonzero(group_of == g) for g in range(GROUPS)]
    history: dict[str, list[str]] = {}
    events, sessions, t = [], [], 1_000_000
    for u in range(N_USERS):
        pool = members[u % GROUPS]
        p = popularity[pool] / popularity[pool].sum()
        picks = rng.choice(pool, size=int(rng.integers(5, 25)), p=p)
        user = f"u{u}"
        sessions.append(SessionRecord(f"s{u}", user, t, t))
        for k, item in enumerate(picks.tolist()):
            events.append(
                EventRecord(f"{user}-{k}", f"s{u}", user, int(EventType.ITEM_VIEW), t, f"i{item}")
            )
            t += 1000
        history[user] = [f"i{i}" for i in picks.tolist()]
    with open_store(store_url(root / "ann.db")) as store:
        store.append_events(events, sessions)
    return root, history


def train_on(root: Path, name: str, **kw: object) -> str:
    from sessionrec.store import open_store

    with open_store(store_url(root / "ann.db")) as store:
        artifact = train(store, str(root / name), "als", PARAMS, ann_min_items=1000, **kw)
    return artifact.version


@pytest.fixture(scope="module")
def trained(events_db) -> tuple[Path, str, dict[str, list[str]]]:
    """An ALS artifact with an item index (no session models): dir, version, histories."""
    root, history = events_db
    return root / "models", train_on(root, "models", session_model=False), history


@pytest.fixture(scope="module")
def trained_sessions(events_db) -> tuple[Path, str, dict[str, list[str]]]:
    """The same with session models (the default blend)."""
    root, history = events_db
    version = train_on(root, "with-sessions", blend={"knn": 1.0, "rules": 0.01, "model": 0.03})
    return root / "with-sessions", version, history


def histories(history: dict[str, list[str]], users: list[str]) -> list[list[ItemEvent]]:
    view = int(EventType.ITEM_VIEW)
    return [
        [ItemEvent(item, view, None, 1_000_000 + k) for k, item in enumerate(history[u])]
        for u in users
    ]


def test_the_index_is_tuned_saved_and_loaded(trained) -> None:
    models_dir, version, _ = trained
    meta = json.loads((models_dir / VERSIONS_DIR / version / "meta.json").read_text())
    assert meta["ann"]["kind"] == "faiss_hnsw"
    assert meta["ann"]["target_recall"] == ANN_TUNE_RECALL
    assert meta["ann"]["recall"] >= ANN_TUNE_RECALL or not meta["ann"]["target_reached"]
    assert "ann_index" in meta["arrays"]
    artifact = load_artifact(models_dir, version)
    assert isinstance(artifact.index, FaissIndex)
    assert artifact.approximate


def test_served_recommendations_agree_with_exact_search_and_skip_seen_items(trained) -> None:
    models_dir, version, history = trained
    artifact = load_artifact(models_dir, version)
    users = [f"u{u}" for u in range(0, N_USERS, 7)]
    found = overlap = 0
    for user, events in zip(users, histories(history, users), strict=True):
        approx = artifact.recommend(events, 10)
        assert approx.strategy == "personalized"
        assert len(approx.item_ids) == 10
        assert not set(approx.item_ids) & set(history[user])  # seen items never come back
        index, artifact.index = artifact.index, None
        try:
            exact = artifact.recommend(events, 10)
        finally:
            artifact.index = index
        overlap += len(set(approx.item_ids) & set(exact.item_ids))
        found += len(exact.item_ids)
    assert overlap / found >= 0.9  # recall@10 of what is served, on users it was not tuned on


def test_exclusions_and_filters_hold_with_the_index(trained) -> None:
    models_dir, version, history = trained
    artifact = load_artifact(models_dir, version)
    (events,) = histories(history, ["u3"])
    first = artifact.recommend(events, 10)
    again = artifact.recommend(events, 10, exclude=first.item_ids[:5])
    assert not set(again.item_ids) & set(first.item_ids[:5])
    assert len(again.item_ids) == 10
    allowed = np.zeros(len(artifact.items), dtype=bool)
    allowed[:40] = True  # a filter leaving 40 items: the index search falls back to exact
    narrow = artifact.recommend(events, 10, allowed=allowed)
    numbers = artifact.items.numbers(narrow.item_ids)
    assert len(narrow.item_ids) == min(
        10, 40 - len(set(history["u3"]) & set(artifact.items.ids[:40]))
    )
    assert (numbers < 40).all()


def test_a_live_session_blends_over_candidates_like_the_whole_catalog(trained_sessions) -> None:
    models_dir, version, history = trained_sessions
    artifact = load_artifact(models_dir, version)
    assert artifact.approximate and artifact.session is not None
    users = [f"u{u}" for u in range(0, N_USERS, 11)]
    overlap = found = 0
    for user, events in zip(users, histories(history, users), strict=True):
        live_since = events[-3].ts_ms  # the last three views are the live session
        approx = artifact.recommend(events, 10, live_since_ms=live_since, live_boost=5.0)
        assert approx.strategy == "session" and len(approx.item_ids) == 10
        assert not set(approx.item_ids) & set(history[user])
        index, artifact.index = artifact.index, None
        try:
            exact = artifact.recommend(events, 10, live_since_ms=live_since, live_boost=5.0)
        finally:
            artifact.index = index
        overlap += len(set(approx.item_ids) & set(exact.item_ids))
        found += len(exact.item_ids)
    assert overlap / found >= 0.9


def test_an_index_built_for_other_factors_is_refused(trained, tmp_path: Path) -> None:
    models_dir, version, _ = trained
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    folder = copy / VERSIONS_DIR / version
    with np.load(folder / "model.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    other = np.random.default_rng(0).normal(size=arrays["model.item_factors"].shape)
    arrays["ann_index"] = ExactIndex(other.astype(np.float32)).to_bytes()
    with open(folder / "model.npz", "wb") as fh:
        np.savez(fh, **arrays)
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"]["model.npz"] = hashlib.sha256((folder / "model.npz").read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="built for different item factors"):
        load_artifact(copy, version)


def test_a_catalog_below_the_threshold_gets_no_index(store: Store, tmp_path: Path) -> None:
    view = int(EventType.ITEM_VIEW)
    events = [
        EventRecord(f"e{u}-{k}", f"s{u}", f"u{u}", view, 1_000 + k, f"i{(u + k) % 30}")
        for u in range(20)
        for k in range(6)
    ]
    store.append_events(events, [SessionRecord(f"s{u}", f"u{u}", 1_000, 1_006) for u in range(20)])
    artifact = train(store, str(tmp_path / "m"), "als", PARAMS, session_model=False)
    assert artifact.index is None and "ann" not in artifact.meta
    assert load_artifact(tmp_path / "m", artifact.version).index is None


def test_the_cli_trains_with_an_index_from_the_threshold_given(events_db, capsys) -> None:
    from sessionrec.cli import main

    root, _ = events_db
    args = ["train", "--db", store_url(root / "ann.db"), "--no-session-model", "--quiet"]
    args += ["--factors", "16", "--iterations", "5"]
    assert main([*args, "--models", str(root / "cli-low"), "--ann-min-items", "1000"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert main([*args, "--models", str(root / "cli-default")]) == 0
    default = json.loads(capsys.readouterr().out)
    assert isinstance(load_artifact(root / "cli-low", low["version"]).index, FaissIndex)
    assert load_artifact(root / "cli-default", default["version"]).index is None  # 2,000 < 100,000
