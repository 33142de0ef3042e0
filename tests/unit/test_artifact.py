"""Model artifacts (training/artifact.py): save/load round trip, the CURRENT pointer,
refusal of corrupted or tampered files, and serving recommendations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sessionrec.errors import ArtifactError, NotFound
from sessionrec.events import EventType, ItemEvent
from sessionrec.store import EventColumns
from training.artifact import (
    CURRENT_FILE,
    NPZ_ALIGN,
    ModelArtifact,
    _read_npz,
    current_version,
    list_versions,
    load_artifact,
    load_current,
    save_artifact,
    set_current,
)
from training.data import Interactions, build_interactions
from training.models import ALGORITHMS, create_model
from training.weighting import EventWeights

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")

PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 4, "iterations": 5, "random_state": 0, "num_threads": 1},
    "bpr": {"factors": 4, "iterations": 20, "random_state": 0, "num_threads": 1},
    "lmf": {"factors": 4, "iterations": 20, "random_state": 0, "num_threads": 1},
    "itemknn": {"K": 20, "num_threads": 1},
    "ease": {"regularization": 10.0},
    "popular": {},
    "trending": {},
}
VIEW = int(EventType.ITEM_VIEW)


@pytest.fixture
def interactions(group_events: EventColumns) -> Interactions:
    return build_interactions(group_events, EventWeights())


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def save(models_dir: Path, interactions: Interactions, name: str = "itemknn", **kw: Any):
    model = create_model(name, **PARAMS[name])
    model.fit(interactions.matrix)
    return save_artifact(models_dir, model, interactions, EventWeights(), **kw)


def seen(*items: str, type: int = VIEW) -> list[ItemEvent]:
    return [ItemEvent(item, type, None, 1000 + i) for i, item in enumerate(items)]


def folder(models_dir: Path, version: str) -> Path:
    return models_dir / "versions" / version


def rewrite_npz(
    models_dir: Path, version: str, arrays: dict[str, np.ndarray], writer: Any = np.savez
) -> None:
    """Writes new arrays and a matching checksum, as a careful tamperer would."""
    npz = folder(models_dir, version) / "model.npz"
    with open(npz, "wb") as fh:
        writer(fh, **arrays)
    restamp(models_dir, version, arrays=sorted(arrays))


def restamp(models_dir: Path, version: str, **changes: Any) -> None:
    """Gives meta.json the checksum of the model.npz there now (and ``changes``)."""
    npz = folder(models_dir, version) / "model.npz"
    meta_path = folder(models_dir, version) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"]["model.npz"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


def stored_arrays(models_dir: Path, version: str) -> dict[str, np.ndarray]:
    with np.load(folder(models_dir, version) / "model.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def edit_meta(models_dir: Path, version: str, **changes: Any) -> None:
    meta_path = folder(models_dir, version) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


# -------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_save_then_load_current_gives_the_same_recommendations(
    name: str, models_dir: Path, interactions: Interactions
) -> None:
    saved = save(models_dir, interactions, name)
    loaded = load_current(models_dir)
    assert loaded is not None
    assert loaded.version == saved.version
    assert loaded.algorithm == name
    assert loaded.params == saved.params
    assert loaded.weights == saved.weights
    assert loaded.items.ids.tolist() == saved.items.ids.tolist()
    assert loaded.users.ids.tolist() == saved.users.ids.tolist()
    assert np.array_equal(loaded.popularity, saved.popularity)
    for history in (seen("A0", "A3"), seen("B2"), []):
        before = saved.recommend(history, 5)
        after = loaded.recommend(history, 5)
        assert after.item_ids == before.item_ids
        assert after.scores == before.scores
        assert after.strategy == before.strategy
        assert after.reasons == before.reasons


def test_a_loaded_artifact_looks_users_up_only_when_asked(
    models_dir: Path, interactions: Interactions
) -> None:
    saved = save(models_dir, interactions, "als")
    loaded = load_artifact(models_dir, saved.version)
    assert loaded.users._lookup is None  # serving never looks users up: no dict built
    assert list(loaded.users.ids) == list(interactions.users.ids)
    for user in ("a00", "b03", "nobody"):
        assert loaded.users.number(user) == interactions.users.number(user)
    assert "a01" in loaded.users and len(loaded.users) == len(interactions.users)


def test_meta_describes_the_artifact(models_dir: Path, interactions: Interactions) -> None:
    saved = save(models_dir, interactions, extra_meta={"note": "unit"})
    meta = json.loads((folder(models_dir, saved.version) / "meta.json").read_text())
    assert meta["algorithm"] == "itemknn"
    assert meta["version"] == saved.version
    assert (meta["users"], meta["items"]) == (20, 20)
    assert meta["interactions"] == 200
    assert meta["note"] == "unit"
    npz = folder(models_dir, saved.version) / "model.npz"
    assert meta["sha256"]["model.npz"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert set(meta["arrays"]) >= {"users", "items", "popularity"}


# ------------------------------------------------------------------ CURRENT
def test_current_pointer_and_list_versions(models_dir: Path, interactions: Interactions) -> None:
    assert current_version(models_dir) is None
    assert load_current(models_dir) is None
    assert list_versions(models_dir) == []
    v1 = save(models_dir, interactions).version
    v2 = save(models_dir, interactions, "popular", make_current=False).version
    assert v1 != v2
    assert current_version(models_dir) == v1
    assert list_versions(models_dir) == sorted([v1, v2])
    set_current(models_dir, v2)
    assert current_version(models_dir) == v2
    assert (models_dir / CURRENT_FILE).read_text() == v2 + "\n"
    current = load_current(models_dir)
    assert current is not None and current.algorithm == "popular"
    # Nothing temporary is left behind.
    assert sorted(p.name for p in models_dir.iterdir()) == ["CURRENT", "versions"]
    assert sorted(p.name for p in (models_dir / "versions").iterdir()) == sorted([v1, v2])


def test_set_current_to_a_missing_version_changes_nothing(
    models_dir: Path, interactions: Interactions
) -> None:
    v1 = save(models_dir, interactions).version
    with pytest.raises(NotFound, match=r"^version: "):
        set_current(models_dir, "20000101T000000000Z-als")
    assert current_version(models_dir) == v1


def test_a_failed_save_leaves_no_version_and_keeps_current(
    models_dir: Path, interactions: Interactions
) -> None:
    v1 = save(models_dir, interactions).version
    # Mixed key types cannot be sorted into meta.json: the save fails after model.npz.
    with pytest.raises(TypeError):
        save(models_dir, interactions, extra_meta={1: "x", "a": "y"})
    assert list_versions(models_dir) == [v1]
    assert current_version(models_dir) == v1
    assert sorted(p.name for p in (models_dir / "versions").iterdir()) == [v1]


# ---------------------------------------------------------------- refusals
def test_a_flipped_byte_in_model_npz_is_refused(
    models_dir: Path, interactions: Interactions
) -> None:
    version = save(models_dir, interactions).version
    npz = folder(models_dir, version) / "model.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(models_dir, version)
    with pytest.raises(ArtifactError, match="checksum"):
        load_current(models_dir)


def test_a_missing_model_npz_is_refused(models_dir: Path, interactions: Interactions) -> None:
    version = save(models_dir, interactions).version
    (folder(models_dir, version) / "model.npz").unlink()
    with pytest.raises(ArtifactError, match=r"model\.npz"):
        load_artifact(models_dir, version)


def test_unreadable_meta_is_refused(models_dir: Path, interactions: Interactions) -> None:
    version = save(models_dir, interactions).version
    (folder(models_dir, version) / "meta.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"meta\.json"):
        load_artifact(models_dir, version)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"algorithm": "xgboost"}, "unknown algorithm 'xgboost'", id="algorithm"),
        pytest.param({"format": "pickle"}, "unknown artifact format", id="format"),
        pytest.param({"format_version": 99}, "unknown artifact format", id="format_version"),
        pytest.param({"arrays": ["items", "users"]}, "differ from meta.json", id="arrays-fewer"),
        pytest.param({"arrays": []}, "differ from meta.json", id="arrays-none"),
        pytest.param({"sha256": {}}, "checksum", id="no-checksum"),
        # A known algorithm whose arrays are not there.
        pytest.param(
            {"algorithm": "als", "params": {}}, "inconsistent artifact", id="other-algorithm"
        ),
        # Parameters the algorithm does not have (tampered, or written by another release).
        pytest.param({"params": {"K": 20, "num_threads": 1, "foo": 1}}, "foo", id="unknown-param"),
        pytest.param({"algorithm": "als"}, "not a parameter of als", id="other-algorithm-params"),
    ],
)
def test_tampered_meta_is_refused(
    models_dir: Path, interactions: Interactions, changes: dict, message: str
) -> None:
    version = save(models_dir, interactions).version
    edit_meta(models_dir, version, **changes)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(models_dir, version)


@pytest.mark.parametrize("name", ["popularity", "model.sim_data"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_with_a_matching_checksum_are_refused(
    models_dir: Path, interactions: Interactions, name: str, bad: float
) -> None:
    version = save(models_dir, interactions).version
    arrays = stored_arrays(models_dir, version)
    arrays[name] = arrays[name].copy()
    arrays[name][0] = bad
    rewrite_npz(models_dir, version, arrays)
    with pytest.raises(ArtifactError, match=f"array {name} holds NaN or infinity"):
        load_artifact(models_dir, version)


def test_an_object_array_is_refused_because_pickle_is_off(
    models_dir: Path, interactions: Interactions
) -> None:
    version = save(models_dir, interactions).version
    arrays = stored_arrays(models_dir, version)
    users = np.empty(len(arrays["users"]), dtype=object)
    users[:] = arrays["users"].tolist()
    arrays["users"] = users  # np.savez pickles object arrays
    rewrite_npz(models_dir, version, arrays)
    npz = folder(models_dir, version) / "model.npz"
    with np.load(npz, allow_pickle=True) as data:  # it is a valid file...
        assert data["users"].tolist() == users.tolist()
    with pytest.raises(ArtifactError, match=r"cannot read model\.npz"):  # ...but not loaded
        load_artifact(models_dir, version)


def test_a_vocabulary_that_does_not_fit_the_model_is_refused(
    models_dir: Path, interactions: Interactions
) -> None:
    version = save(models_dir, interactions).version
    arrays = stored_arrays(models_dir, version)
    arrays["popularity"] = arrays["popularity"][:-1]
    rewrite_npz(models_dir, version, arrays)
    with pytest.raises(ArtifactError, match="items"):
        load_artifact(models_dir, version)


@pytest.mark.parametrize("version", ["20000101T000000000Z-als", "../models", ".hidden", "a/b"])
def test_loading_a_missing_version_raises_not_found(
    models_dir: Path, interactions: Interactions, version: str
) -> None:
    save(models_dir, interactions)
    with pytest.raises(NotFound, match=r"^version: "):
        load_artifact(models_dir, version)


def test_current_pointing_to_a_missing_version_raises_not_found(
    models_dir: Path, interactions: Interactions
) -> None:
    save(models_dir, interactions)
    (models_dir / CURRENT_FILE).write_text("gone\n")
    with pytest.raises(NotFound):
        load_current(models_dir)


# ----------------------------------------------------------------- serving
@pytest.fixture
def knn(models_dir: Path, interactions: Interactions) -> ModelArtifact:
    save(models_dir, interactions, "itemknn")
    loaded = load_current(models_dir)
    assert loaded is not None
    return loaded


def test_recommend_is_personalized_and_excludes_seen_items(knn: ModelArtifact) -> None:
    rec = knn.recommend(seen("B0", "B1"), 5)
    assert rec.strategy == "personalized"
    assert len(rec.item_ids) == 5
    assert all(item.startswith("B") for item in rec.item_ids)
    assert not {"B0", "B1"} & set(rec.item_ids)
    assert rec.scores == sorted(rec.scores, reverse=True)
    assert all(r in ("similar to B0 you viewed", "similar to B1 you viewed") for r in rec.reasons)


def test_recommend_fills_up_with_unrelated_items_explained_as_history_matches(
    knn: ModelArtifact,
) -> None:
    rec = knn.recommend(seen("B0", "B1"), 10)
    assert rec.item_ids[:8] == [f"B{i}" for i in range(2, 10)]
    # Nothing relates the rest to the history; popularity breaks the tie.
    assert rec.item_ids[8:] == ["A0", "A1"]
    assert rec.reasons[8:] == ["matches your history", "matches your history"]


def test_recommend_with_include_seen_keeps_seen_items(knn: ModelArtifact) -> None:
    rec = knn.recommend(seen("B0", "B1"), 10, include_seen=True)
    assert set(rec.item_ids) == {f"B{i}" for i in range(10)}


def test_recommend_honours_exclude(knn: ModelArtifact) -> None:
    rec = knn.recommend(seen("B0"), 9, exclude=["B5", "B7", "unknown-item"])
    assert not {"B0", "B5", "B7"} & set(rec.item_ids)
    assert rec.item_ids[:7] == ["B1", "B2", "B3", "B4", "B6", "B8", "B9"]


def test_recommend_names_the_strongest_event_in_the_reason(knn: ModelArtifact) -> None:
    history = [
        ItemEvent("A3", int(EventType.ITEM_VIEW), None, 1),
        ItemEvent("A3", int(EventType.PURCHASE), None, 2),
    ]
    rec = knn.recommend(history, 3)
    assert rec.reasons == ["similar to A3 you bought"] * 3
    cart = knn.recommend([ItemEvent("A3", int(EventType.ADD_TO_CART), 10, 1)], 1)
    assert cart.reasons == ["similar to A3 you added to your cart"]


@pytest.mark.parametrize(
    "history",
    [
        [],
        seen("never-seen-item"),
        [ItemEvent("A0", int(EventType.SEARCH), None, 1)],  # weight 0
    ],
    ids=["empty", "unknown-items", "zero-weight"],
)
def test_recommend_falls_back_to_popularity(knn: ModelArtifact, history) -> None:
    rec = knn.recommend(history, 3)
    assert rec.strategy == "popular"
    expected = ["A1", "A2", "A3"] if history and history[0].item_id == "A0" else ["A0", "A1", "A2"]
    assert rec.item_ids == expected
    assert rec.scores == [12.0, 12.0, 12.0]
    assert rec.reasons == ["popular: 12 users"] * 3


def test_a_popularity_artifact_always_answers_popular(
    models_dir: Path, interactions: Interactions
) -> None:
    artifact = save(models_dir, interactions, "popular")
    rec = artifact.recommend(seen("B0", "B1"), 3)
    assert rec.strategy == "popular"
    assert rec.item_ids == ["A0", "A1", "A2"]


def test_similar_items(knn: ModelArtifact) -> None:
    items, scores = knn.similar_items("A2", 4)
    assert len(items) == 4
    assert "A2" not in items
    assert all(item.startswith("A") for item in items)
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(NotFound, match=r"^item_id: "):
        knn.similar_items("nope", 3)


@pytest.mark.parametrize(
    ("name", "breakage"),
    [
        ("als", "narrow-factors"),
        ("als", "one-dimensional-factors"),
        ("bpr", "narrow-factors"),
        ("lmf", "narrow-factors"),
        ("itemknn", "non-square-similarity"),
    ],
)
def test_arrays_that_do_not_fit_together_are_refused(
    models_dir: Path, interactions: Interactions, name: str, breakage: str
) -> None:
    """Arrays with a valid checksum but inconsistent shapes never reach serving."""
    artifact = save(models_dir, interactions, name)
    arrays = stored_arrays(models_dir, artifact.version)
    if breakage == "narrow-factors":
        arrays["model.item_factors"] = arrays["model.item_factors"][:, :-1].copy()
    elif breakage == "one-dimensional-factors":
        arrays["model.item_factors"] = arrays["model.item_factors"].ravel().copy()
    else:
        arrays["model.sim_shape"] = np.asarray(
            [len(interactions.items) - 1, len(interactions.items)]
        )
    rewrite_npz(models_dir, artifact.version, arrays)
    with pytest.raises(ArtifactError, match="inconsistent"):
        load_artifact(models_dir, artifact.version)


def test_non_finite_event_weights_in_meta_are_refused(
    models_dir: Path, interactions: Interactions
) -> None:
    artifact = save(models_dir, interactions, "popular")
    edit_meta(models_dir, artifact.version, weights={"type_weights": {"ITEM_VIEW": float("nan")}})
    with pytest.raises(ArtifactError):
        load_artifact(models_dir, artifact.version)


def test_versions_and_current_are_readable_by_other_users(
    models_dir: Path, interactions: Interactions
) -> None:
    """A server may run as another user than the trainer."""
    import stat

    artifact = save(models_dir, interactions, "popular")
    version_dir = folder(models_dir, artifact.version)
    assert stat.S_IMODE(version_dir.stat().st_mode) & 0o005 == 0o005
    for path in (version_dir / "model.npz", version_dir / "meta.json", models_dir / "CURRENT"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o004, path


def test_a_scaled_model_serves_rows_scaled_like_training(
    models_dir: Path, group_events: EventColumns
) -> None:
    weights = EventWeights(scaling="bm25")
    scaled = build_interactions(group_events, weights)
    assert scaled.scaling is not None
    model = create_model("als", **PARAMS["als"])
    model.fit(scaled.matrix)
    saved = save_artifact(models_dir, model, scaled, weights)
    loaded = load_current(models_dir)
    assert loaded is not None and loaded.scaling is not None
    assert np.allclose(loaded.scaling.idf, scaled.scaling.idf)
    history = seen("A0", "A1")
    assert loaded.recommend(history, 5).item_ids == saved.recommend(history, 5).item_ids


# ------------------------------------------------------------- mapped arrays
def _owner(array: np.ndarray) -> Any:
    """What finally holds ``array``'s memory (None: the array itself)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    base = array.base
    return base.obj if isinstance(base, memoryview) else base


def test_saved_arrays_are_aligned_views_of_one_mapping_of_the_file(
    models_dir: Path, interactions: Interactions
) -> None:
    import mmap

    saved = save(models_dir, interactions, "als")
    npz = folder(models_dir, saved.version) / "model.npz"
    mapped = _read_npz(npz)
    expected = stored_arrays(models_dir, saved.version)  # numpy's own reader agrees
    assert sorted(mapped) == sorted(expected)
    for name, array in mapped.items():
        assert array.dtype == expected[name].dtype and np.array_equal(array, expected[name])
        assert array.ctypes.data % NPZ_ALIGN == 0, name
        assert isinstance(_owner(array), mmap.mmap), name
    assert len({id(_owner(a)) for a in mapped.values()}) == 1
    loaded = load_artifact(models_dir, saved.version)
    assert isinstance(_owner(loaded.model.item_factors), mmap.mmap)  # served in place


def test_a_write_to_a_loaded_array_stays_in_that_artifact(
    models_dir: Path, interactions: Interactions
) -> None:
    saved = save(models_dir, interactions, "als")
    npz = folder(models_dir, saved.version) / "model.npz"
    before = npz.read_bytes()
    first, second = (load_artifact(models_dir, saved.version) for _ in range(2))
    history = seen("A0", "A3")
    expected = second.recommend(history, 5)
    first.model.item_factors[:] = 0.0  # copy-on-write: writable, private
    assert np.array_equal(second.model.item_factors, saved.model.item_factors)
    assert second.recommend(history, 5).item_ids == expected.item_ids
    assert npz.read_bytes() == before
    assert load_artifact(models_dir, saved.version).recommend(history, 5) == expected


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed], ids=["savez", "compressed"])
def test_an_npz_written_by_numpy_still_loads(
    models_dir: Path, interactions: Interactions, writer: Any
) -> None:
    """Artifacts written before the aligned layout (np.savez), or recompressed."""
    saved = save(models_dir, interactions, "als")
    arrays = stored_arrays(models_dir, saved.version)
    rewrite_npz(models_dir, saved.version, arrays, writer)
    loaded = load_artifact(models_dir, saved.version)
    for name, array in _read_npz(folder(models_dir, saved.version) / "model.npz").items():
        assert array.flags.aligned and np.array_equal(array, arrays[name]), name
    history = seen("A0", "A3")
    assert loaded.recommend(history, 5) == saved.recommend(history, 5)


def test_an_array_longer_than_its_member_is_refused(
    models_dir: Path, interactions: Interactions
) -> None:
    saved = save(models_dir, interactions, "als")
    npz = folder(models_dir, saved.version) / "model.npz"
    data = npz.read_bytes()
    n = len(saved.popularity)
    shape = f"'shape': ({n},)".encode()
    assert data.count(shape) >= 1
    at = data.index(b"popularity.npy")  # the member's own header comes after its name
    at = data.index(shape, at)
    longer = f"'shape': ({n * 1000},)".encode()
    # The .npy header is padded with spaces to its length: eat into the padding.
    end = data.index(b"\n", at)
    padded = (longer + data[at + len(shape) : end].rstrip(b" ")).ljust(end - at)
    npz.write_bytes(data[:at] + padded + data[end:])
    restamp(models_dir, saved.version)
    with pytest.raises(ArtifactError, match=r"cannot read model\.npz.*popularity"):
        load_artifact(models_dir, saved.version)
