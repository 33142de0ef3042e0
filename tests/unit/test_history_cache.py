"""What a ModelArtifact keeps of the histories it served (``_prepare``): a call
whose history has not changed reuses the weighted row, the session models'
scores and the fold-in, and answers exactly as an artifact that keeps nothing."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sessionrec.config import Config, ConfigError
from sessionrec.events import EventType, ItemEvent
from sessionrec.store import EventColumns
from training.artifact import ModelArtifact, load_artifact, save_artifact
from training.data import build_interactions
from training.models import create_model
from training.session_models import SessionRecommender, sessions_from_events
from training.weighting import EventWeights

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")

VIEW = int(EventType.ITEM_VIEW)
CART = int(EventType.ADD_TO_CART)
NOW = 2_000_000_000_000
LIVE = NOW - 600_000


def shop_log(sessions: int = 80) -> EventColumns:
    """Phones (p*) followed by cases (c*), cameras (m*) by lenses (l*), and a
    few users who browse both."""
    rng = np.random.default_rng(5)
    sid, uid, iid, ts = [], [], [], []
    t = 1_000_000
    for s in range(sessions):
        kind = s % 2
        seq = ["p1", "p2", "p3", "c1", "c2"] if kind == 0 else ["m1", "m2", "m3", "l1", "l2"]
        if s % 5 == 0:
            seq = seq + (["m1"] if kind == 0 else ["p1"])
        for item in rng.permutation(seq[:3]).tolist() + seq[3:]:
            sid.append(f"s{s}")
            uid.append(f"u{s % 30}")
            iid.append(item)
            ts.append(t)
            t += 60_000
        t += 3_600_000
    n = len(sid)
    return EventColumns(
        user_id=np.array(uid),
        item_id=np.array(iid),
        type=np.full(n, VIEW, dtype=np.int64),
        dwell_ms=np.full(n, -1, dtype=np.int64),
        ts_ms=np.array(ts, dtype=np.int64),
        session_id=np.array(sid),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    log = shop_log()
    interactions = build_interactions(log, EventWeights())
    model = create_model("als", factors=4, iterations=5, random_state=0, num_threads=1)
    model.fit(interactions.matrix)
    session = SessionRecommender.fit(
        sessions_from_events(log, interactions.items),
        len(interactions.items),
        blend={"knn": 1.0, "rules": 0.5, "model": 0.5},
    )
    models_dir = tmp_path_factory.mktemp("models")
    artifact = save_artifact(models_dir, model, interactions, EventWeights(), session=session)
    return models_dir, artifact.version


def load(saved: tuple[Path, str], cache_bytes: int | None = None) -> ModelArtifact:
    if cache_bytes is None:
        return load_artifact(*saved)
    return load_artifact(*saved, prepared_cache_bytes=cache_bytes)


def history(*items: str, live: int = 2, type: int = VIEW) -> list[ItemEvent]:
    """Most recent first, as the store returns it; the last ``live`` are in the
    live session."""
    out = []
    for k, item in enumerate(items):
        age = len(items) - k
        ts = NOW - age * 60_000 if age <= live else LIVE - age * 86_400_000
        out.append(ItemEvent(item, type, 20_000, ts))
    return out[::-1]


def ask(artifact: ModelArtifact, events: list[ItemEvent], **kw: Any) -> Any:
    return artifact.recommend(events, 4, live_since_ms=LIVE, live_boost=5.0, **kw)


def test_an_unchanged_history_is_served_from_what_was_kept(saved: tuple[Path, str]) -> None:
    keeps, fresh = load(saved), load(saved, cache_bytes=0)
    events = history("p1", "c1", "p2", "m1")
    first = ask(keeps, events)
    assert (keeps.prepared_hits, keeps.prepared_misses) == (0, 1)
    again = ask(keeps, list(events))  # a new list of equal events: the next call
    assert (keeps.prepared_hits, keeps.prepared_misses) == (1, 1)
    assert first.strategy == "session"
    assert again == first == ask(fresh, events)
    assert fresh.prepared_hits == fresh.prepared_misses == 0 and not fresh._prepared
    # Request options apply after the kept part: they still count.
    shown = ask(keeps, events, exclude=[first.item_ids[0]])
    assert shown == ask(fresh, events, exclude=[first.item_ids[0]])
    assert first.item_ids[0] not in shown.item_ids
    assert keeps.prepared_hits == 2


def test_a_new_event_makes_a_new_history(saved: tuple[Path, str]) -> None:
    keeps, fresh = load(saved), load(saved, cache_bytes=0)
    events = history("p1", "m1", "m2")
    before = ask(keeps, events)
    later = [ItemEvent("p2", CART, None, NOW), *events]
    after = ask(keeps, later)
    assert keeps.prepared_misses == 2 and keeps.prepared_hits == 0
    assert after == ask(fresh, later)
    assert after != before
    # A changed detail of one event (its dwell) is a different history too.
    dwelt = [events[0]._replace(dwell_ms=1), *events[1:]]
    assert ask(keeps, dwelt) == ask(fresh, dwelt)
    assert keeps.prepared_misses == 3
    # Another live-session start is another key: the boost weighs other events.
    assert keeps.recommend(events, 4, live_since_ms=NOW - 30_000, live_boost=5.0) == (
        fresh.recommend(events, 4, live_since_ms=NOW - 30_000, live_boost=5.0)
    )
    assert keeps.prepared_misses == 4


def test_affinity_shares_what_was_kept(saved: tuple[Path, str]) -> None:
    keeps, fresh = load(saved), load(saved, cache_bytes=0)
    events = history("m1", "p1", "p2")
    ask(keeps, events)
    affinity = keeps.affinity(events, live_since_ms=LIVE, live_boost=5.0)
    assert keeps.prepared_hits == 1
    expected = fresh.affinity(events, live_since_ms=LIVE, live_boost=5.0)
    assert affinity is not None and expected is not None
    assert np.array_equal(affinity, expected)


def test_kept_arrays_cannot_be_changed_by_a_caller(saved: tuple[Path, str]) -> None:
    keeps = load(saved)
    events = history("p1", "p2")
    ask(keeps, events)
    ((prepared, _),) = keeps._prepared.values()
    assert prepared.parts is not None and prepared.vectors is not None
    arrays = [prepared.numbers, prepared.types, prepared.ts, prepared.positive, prepared.live]
    arrays += [prepared.vectors, *(a for p in prepared.parts.values() for a in (p.items, p.scores))]
    for array in arrays:
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0


def test_weights_that_change_with_the_clock_are_never_kept(saved: tuple[Path, str]) -> None:
    keeps = load(saved)
    keeps.weights = dataclasses.replace(keeps.weights, time_half_life_days=30.0)
    events = history("p1", "m1")
    assert ask(keeps, events) == ask(keeps, events)
    assert not keeps._prepared
    assert keeps.prepared_hits == keeps.prepared_misses == 0


def test_what_is_kept_stays_within_its_bytes_least_recent_dropped_first(
    saved: tuple[Path, str],
) -> None:
    keeps = load(saved)
    one = history("p1", "p2")
    ask(keeps, one)
    ((_, size),) = keeps._prepared.values()
    keeps2 = load(saved, cache_bytes=int(size * 2.5))
    users = [history("p1", "p2"), history("m1", "m2"), history("c1", "p3"), history("l1", "m3")]
    for events in users[:2]:
        ask(keeps2, events)
    ask(keeps2, users[0])  # used again: now the most recent
    assert keeps2.prepared_hits == 1
    ask(keeps2, users[2])  # over the bound: the least recently used (users[1]) goes
    assert keeps2._prepared_bytes <= keeps2.prepared_cache_bytes
    assert len(keeps2._prepared) == 2
    hits = keeps2.prepared_hits
    ask(keeps2, users[0])
    assert keeps2.prepared_hits == hits + 1
    ask(keeps2, users[1])
    assert keeps2.prepared_hits == hits + 1  # it was dropped: made again
    assert keeps2._prepared_bytes == sum(s for _, s in keeps2._prepared.values())


def test_concurrent_callers_get_what_an_artifact_keeping_nothing_gives(
    saved: tuple[Path, str],
) -> None:
    keeps, fresh = load(saved), load(saved, cache_bytes=0)
    users = [
        history("p1", "p2", "c1"),
        history("m1", "m2"),
        history("p1", "m1", "l1", "c2", live=3),
        history("p3", "c1"),
    ]
    expected = [ask(fresh, events) for events in users]
    answers: list[list[Any]] = [[] for _ in range(8)]

    def caller(k: int) -> None:
        for round_ in range(25):
            u = (k + round_) % len(users)
            answers[k].append((u, ask(keeps, list(users[u]))))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per_thread in answers:
        assert len(per_thread) == 25
        for u, answer in per_thread:
            assert answer == expected[u]
    assert keeps.prepared_hits + keeps.prepared_misses == 200
    assert keeps.prepared_misses <= 8 * len(users)  # each history made a few times at most


def test_history_cache_mb_is_checked() -> None:
    assert Config.load({}, env={}).history_cache_mb == 32
    assert Config.load({}, env={"SESSIONREC_HISTORY_CACHE_MB": "0"}).history_cache_mb == 0
    with pytest.raises(ConfigError, match="history_cache_mb"):
        Config.load({"history_cache_mb": -1}, env={})


@pytest.mark.parametrize("keep", [3, 100], ids=["keep-3", "keep-100"])
@pytest.mark.parametrize("live_since", [LIVE, None], ids=["session", "personalized"])
def test_exclusions_and_filters_take_from_the_kept_ranking_exactly(
    saved: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, keep: int, live_since: int | None
) -> None:
    """Every request option, against an artifact that keeps nothing: the kept
    best items serve when enough pass the request's exclusions and filters;
    else (few kept: ``keep`` 3) the catalog is ranked again."""
    monkeypatch.setattr("training.artifact.RANKED_KEEP", keep)
    keeps, fresh = load(saved), load(saved, cache_bytes=0)
    ids = keeps.items.ids.tolist()
    events = history("p1", "m1", "c1")
    full = fresh.recommend(events, len(ids), live_since_ms=live_since, include_seen=True)
    best = full.item_ids
    masks: list[np.ndarray | None] = [None, np.ones(len(ids), dtype=bool)]
    for drop in (best[:2], best[::2], best[1:]):
        mask = np.ones(len(ids), dtype=bool)
        mask[[ids.index(i) for i in drop]] = False
        masks.append(mask)
    options = [
        {"exclude": exclude, "allowed": mask, "include_seen": include_seen}
        for exclude in ([], best[:1], best[:3], ["not-an-item", best[-1]])
        for mask in masks
        for include_seen in (False, True)
    ]
    for n in (1, 2, 4, len(ids)):
        for kw in options:
            got = keeps.recommend(events, n, live_since_ms=live_since, live_boost=5.0, **kw)
            assert got == fresh.recommend(
                events, n, live_since_ms=live_since, live_boost=5.0, **kw
            ), (n, kw)
    assert keeps.prepared_misses == 1 and keeps.prepared_hits == 4 * len(options) - 1
    ((prepared, _),) = keeps._prepared.values()
    assert set(prepared.ranked) == {False, True}
    for idx, scores, _ in prepared.ranked.values():
        assert not idx.flags.writeable and not scores.flags.writeable
