"""The per-user temporal split and the offline evaluation (training/evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sessionrec.cli import main
from sessionrec.errors import InvalidArgument
from sessionrec.events import EventRecord, EventType, SessionRecord
from sessionrec.store import EventColumns, Store
from training.evaluate import evaluate, split_temporal_fraction
from training.metrics import POPULARITY, RANKING_METRICS

pytestmark = pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")


def columns(rows: list[tuple[str, str, int]]) -> EventColumns:
    """(user, item, ts) rows; EventColumns come ordered by time, so they are sorted here."""
    rows = sorted(rows, key=lambda r: r[2])
    n = len(rows)
    users = np.empty(n, dtype=object)
    items = np.empty(n, dtype=object)
    users[:] = [r[0] for r in rows]
    items[:] = [r[1] for r in rows]
    return EventColumns(
        users,
        items,
        np.full(n, int(EventType.ITEM_VIEW), dtype=np.int8),
        np.full(n, -1, dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=np.int64),
    )


def pairs(cols: EventColumns) -> set[tuple[str, int]]:
    return set(zip(cols.user_id.tolist(), cols.ts_ms.tolist(), strict=True))


def test_the_last_20_percent_of_each_user_by_time_go_to_test() -> None:
    rows = []
    # u1: 10 events, interleaved in time with u2 (5 events), u3 (1) and u4 (2)
    rows += [("u1", f"i{t}", t * 10) for t in range(10)]
    rows += [("u2", f"j{t}", t * 10 + 5) for t in range(5)]
    rows += [("u3", "k0", 33)]
    rows += [("u4", "m0", 1), ("u4", "m1", 99)]
    events = columns(rows)
    train, test = split_temporal_fraction(events, 0.2)
    assert len(train) + len(test) == len(events)
    assert pairs(test) == {
        ("u1", 80),
        ("u1", 90),  # 20% of 10 = 2: the two latest
        ("u2", 45),  # 20% of 5 = 1
        ("u4", 99),  # at least one for a user with two events
    }
    assert ("u3", 33) in pairs(train)  # a single event stays in training
    assert pairs(train) | pairs(test) == pairs(events)
    # Test items of each user are never older than their training items.
    for user in ("u1", "u2", "u4"):
        train_ts = train.ts_ms[train.user_id == user]
        test_ts = test.ts_ms[test.user_id == user]
        assert train_ts.max() < test_ts.min()
    # Both halves keep the time order.
    assert np.all(np.diff(train.ts_ms) >= 0)
    assert np.all(np.diff(test.ts_ms) >= 0)


def test_the_split_follows_time_not_item_or_user_order() -> None:
    rows = [("zed", "late", 500), ("zed", "b", 100), ("zed", "a", 200), ("amy", "x", 300)]
    rows += [("zed", "c", 400), ("amy", "y", 50)]
    train, test = split_temporal_fraction(columns(rows), 0.25)
    assert sorted(zip(test.user_id.tolist(), test.item_id.tolist(), strict=True)) == [
        ("amy", "x"),
        ("zed", "late"),
    ]
    assert len(train) == 4


def test_every_user_keeps_at_least_one_training_event() -> None:
    events = columns([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3)])
    train, test = split_temporal_fraction(events, 0.9)
    assert len(train) == 1 and train.item_id.tolist() == ["a"]
    assert test.item_id.tolist() == ["b", "c"]


def test_an_empty_split() -> None:
    train, test = split_temporal_fraction(columns([]), 0.2)
    assert len(train) == len(test) == 0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_the_fraction_must_be_between_0_and_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_temporal_fraction(columns([("u", "i", 1)]), fraction)


def test_evaluate_ranks_a_personalized_model_above_popularity() -> None:
    """Two groups (A: 6 users, B: 4 users), each user's last item by time is held
    out; popularity recommends group-A items to everyone, item-kNN follows the group."""
    rows = []
    t = 0
    for prefix, n_users, item in (("a", 6, "A"), ("b", 4, "B")):
        for u in range(n_users):
            for i in range(5):
                rows.append((f"{prefix}{u}", f"{item}{(u + i) % 5}", t))
                t += 1
    results = evaluate(columns(rows), "itemknn", {"K": 10, "num_threads": 1}, k=3)
    by_name = {r.algorithm: r for r in results}
    assert set(by_name) == {"itemknn", "popular"}
    knn, pop = by_name["itemknn"].metrics, by_name["popular"].metrics
    assert knn["users"] == pop["users"] == 10.0
    # Every held-out item is the one unseen item of the user's group.
    assert knn["hit_rate"] == pytest.approx(1.0)
    assert pop["hit_rate"] < knn["hit_rate"]
    assert by_name["itemknn"].to_dict()["k"] == 3


def two_groups() -> list[tuple[str, str, int]]:
    """The rows of the test above: group A (6 users) and B (4 users), items rotated
    per user so that each user's held-out item is one the others saw in training."""
    rows = []
    t = 0
    for prefix, n_users, item in (("a", 6, "A"), ("b", 4, "B")):
        for u in range(n_users):
            for i in range(5):
                rows.append((f"{prefix}{u}", f"{item}{(u + i) % 5}", t))
                t += 1
    return rows


def test_evaluate_reports_every_metric_at_every_k_with_intervals() -> None:
    events = columns(two_groups())
    params = {"K": 10, "num_threads": 1}
    results = evaluate(events, "itemknn", params, k=3, ks=(1, 5), bootstrap=200, seed=1)
    for result in results:
        at = result.at
        assert at is not None
        assert at.ks == (1, 3, 5)  # the main k is always included
        assert at.users == 10 and at.n_resamples == 200 and at.seed == 1
        # the main-k metrics are the k=3 column, old keys and new
        assert result.metrics == {**at.means[3], "users": 10.0}
        for k in at.ks:
            assert set(at.means[k]) == {*RANKING_METRICS, POPULARITY, "coverage"}
            assert all(len(v) == 10 for v in at.per_user[k].values())
            for name, (lo, hi) in at.ci[k].items():
                assert lo <= at.means[k][name] <= hi
        assert result.run["protocol"] == "temporal-fraction"
        assert result.run["test_users"] == result.run["evaluated_users"] == 10
        assert result.run["train_events"] + result.run["test_events"] == len(events)
        out = json.loads(json.dumps(result.to_dict()))
        assert out["k"] == 3 and out["ndcg"] == pytest.approx(at.means[3]["ndcg"], abs=1e-6)
        assert set(out["at"]) == set(out["ci"]) == {"1", "3", "5"}
        assert out["ci"]["3"]["ndcg"][0] <= out["at"]["3"]["ndcg"] <= out["ci"]["3"]["ndcg"][1]
    knn, pop = (r.at for r in results)
    assert knn is not None and pop is not None
    assert knn.means[1]["hit_rate"] == pytest.approx(1.0)
    # popularity recommends the most popular items: its bias is the higher
    assert pop.means[3][POPULARITY] > knn.means[3][POPULARITY]
    again = evaluate(events, "itemknn", params, k=3, ks=(1, 5), bootstrap=200, seed=1)
    assert [r.at.ci for r in again if r.at] == [r.at.ci for r in results if r.at]


def test_evaluate_without_bootstrap_has_no_intervals() -> None:
    (result,) = evaluate(columns(two_groups()), "popular", k=2, ks=(2,), bootstrap=0)
    assert result.at is not None and result.at.ci == {}
    assert "ci" not in result.to_dict() and set(result.to_dict()["at"]) == {"2"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ks": (0, 5)}, "ks"), ({"bootstrap": -1}, "bootstrap"), ({"confidence": 1.0}, "confidence")],
)
def test_evaluate_checks_the_new_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        evaluate(columns(two_groups()), "popular", **kwargs)


def fill(store: Store) -> None:
    events, sessions = [], []
    for user, item, t in two_groups():
        if not any(s.session_id == "s-" + user for s in sessions):
            sessions.append(SessionRecord("s-" + user, user, t, t))
        ts = 1_000_000 + 1000 * t
        view = int(EventType.ITEM_VIEW)
        events.append(EventRecord(f"{user}-{item}", "s-" + user, user, view, ts, item))
    store.append_events(events, sessions)


def test_cli_evaluate_reports_several_k_intervals_and_html(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(store)
    report = tmp_path / "report.html"
    argv = ["evaluate", "--db", store.url, "--algorithm", "itemknn", "--K", "10"]
    argv += ["--num-threads", "1", "--k", "3", "--ks", "1,5", "--bootstrap", "100"]
    argv += ["--seed", "4", "--html", str(report), "--quiet"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 3 and out["ks"] == [1, 3, 5]
    assert (out["bootstrap"], out["seed"], out["html"]) == (100, 4, str(report))
    assert out["split"]["evaluated_users"] == 10
    by_name = {r["algorithm"]: r for r in out["results"]}
    assert set(by_name) == {"itemknn", "popular"}
    knn = by_name["itemknn"]
    assert knn["ndcg"] == knn["at"]["3"]["ndcg"] and "map" in knn["at"]["5"]
    assert knn["ci"]["1"]["hit_rate"] == [1.0, 1.0]
    assert out["ndcg_ratio_vs_popular"] == pytest.approx(
        knn["ndcg"] / by_name["popular"]["ndcg"], abs=1e-3
    )
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "itemknn" in page


def test_cli_evaluate_rejects_bad_ks(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--db", store.url, "--ks", "5,zero"])
    assert exc.value.code == 2
    assert "--ks" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "model_seed"), [([], 4), (["--random-state", "9"], 9)])
def test_cli_evaluate_seed_also_seeds_the_model_unless_random_state_does(
    store: Store, capsys: pytest.CaptureFixture[str], extra: list[str], model_seed: int
) -> None:
    fill(store)
    argv = ["evaluate", "--db", store.url, "--algorithm", "als", "--factors", "2"]
    argv += ["--iterations", "1", "--num-threads", "1", "--k", "3", "--ks", "3"]
    argv += ["--bootstrap", "0", "--seed", "4", "--quiet", *extra]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed"] == 4 and out["bootstrap"] == 0
    by_name = {r["algorithm"]: r for r in out["results"]}
    assert by_name["als"]["params"]["random_state"] == model_seed
    assert "ci" not in by_name["als"]


def test_evaluate_on_each_split_method(group_events) -> None:  # type: ignore[no-untyped-def]
    """Every split of training.splits can drive evaluation; last-session needs sessions."""
    for method in ("temporal-fraction", "global-time"):
        results = evaluate(group_events, "popular", split_method=method, bootstrap=0, ks=(5,))
        assert results[0].run["protocol"] == method
    with pytest.raises(ValueError, match="session"):
        evaluate(group_events, "popular", split_method="last-session", bootstrap=0)
