"""training.pipeline.train: stored events -> a current artifact, on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionrec.errors import FailedPrecondition, InvalidArgument
from sessionrec.events import EventRecord, EventType, ItemEvent, SessionRecord
from sessionrec.store import Store
from training.artifact import current_version, list_versions, load_current
from training.pipeline import train

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
VIEW = int(EventType.ITEM_VIEW)


def fill(store: Store) -> None:
    """Group A (6 users) views items A0-A4, group B (4 users) views B0-B4."""
    events, sessions = [], []
    t = 1_000_000
    for prefix, n_users in (("a", 6), ("b", 4)):
        for u in range(n_users):
            user = f"{prefix}{u}"
            sessions.append(SessionRecord("s-" + user, user, t, t))
            for i in range(5):
                item = f"{prefix.upper()}{i}"
                events.append(EventRecord(f"{user}-{item}", "s-" + user, user, VIEW, t, item))
                t += 1000
    store.append_events(events, sessions)


def test_train_writes_a_current_artifact_from_the_store(store: Store, tmp_path: Path) -> None:
    fill(store)
    messages: list[str] = []
    models = tmp_path / "models"
    artifact = train(
        store, str(models), "itemknn", {"K": 10, "num_threads": 1}, progress=messages.append
    )
    assert current_version(models) == artifact.version
    assert list_versions(models) == [artifact.version]
    assert (len(artifact.users), len(artifact.items)) == (10, 10)
    assert artifact.meta["events"] == 50
    assert artifact.meta["store"] == store.url
    assert any("loaded 50 item events" in m for m in messages)
    loaded = load_current(models)
    assert loaded is not None
    rec = loaded.recommend([ItemEvent("B0", VIEW, None, 1)], 3)
    assert rec.strategy == "personalized"
    assert all(item.startswith("B") for item in rec.item_ids)


def test_train_without_make_current_keeps_the_pointer(store: Store, tmp_path: Path) -> None:
    fill(store)
    models = str(tmp_path / "models")
    first = train(store, models, "popular")
    second = train(store, models, "popular", make_current=False)
    assert current_version(models) == first.version
    assert sorted(list_versions(models)) == sorted([first.version, second.version])


def test_train_on_an_empty_store_fails_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(FailedPrecondition, match=r"^store: "):
        train(store, str(models), "popular")
    assert list_versions(models) == []
    assert current_version(models) is None


def test_train_rejects_bad_parameters_before_loading(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^factor: "):
        train(store, str(tmp_path / "models"), "als", {"factor": 8})
