"""Group commit (service/sessions.py, GroupCommit): batches of concurrent
TrackEvents callers are stored in one transaction, each caller getting its own
result, over a real SQLite store. The store's ``append_events`` is wrapped (it
still writes) to count transactions and to hold the first commit open while
other callers arrive, so the grouping is deterministic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from service.sessions import IncomingEvent, SessionManager, TrackResult
from sessionrec.errors import InvalidArgument, ResourceExhausted, SessionrecError
from sessionrec.events import EventType
from sessionrec.store import Store

VIEW = int(EventType.ITEM_VIEW)
SCREEN = int(EventType.SCREEN_VIEW)
WAIT_S = 20.0


class HeldStore:
    """Counts ``append_events`` calls; while ``hold`` is set the first call waits
    inside the transaction until ``release`` (the store writes as usual)."""

    def __init__(self, store: Store):
        self.store = store
        self.calls: list[int] = []  # events per transaction
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = False
        self._inner = store.append_events
        store.append_events = self._append  # type: ignore[method-assign]

    def _append(self, events: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(len(events))
        if self.hold and len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the first commit"
        return self._inner(events, *args, **kwargs)


@pytest.fixture
def manager(store: Store) -> Iterator[SessionManager]:
    m = SessionManager(store, max_events_per_call=100)
    yield m
    m.stop()


def views(sid: str, tag: str, n: int) -> list[IncomingEvent]:
    return [
        IncomingEvent(event_id=f"{tag}-{k}", session_id=sid, type=VIEW, item_id=f"i{k}")
        for k in range(n)
    ]


def in_threads(calls: list[Any]) -> tuple[list[Any], list[BaseException | None]]:
    """Runs each zero-argument call on its own thread; results and errors by index."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except BaseException as exc:
            errors[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "a caller never got its result"
    return results, errors


def wait_for_waiters(manager: SessionManager, count: int) -> None:
    """Until ``count`` callers wait behind the held commit."""
    deadline = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if len(manager._group._waiting) >= count:
            return
        deadline.wait(0.01)
    raise AssertionError(f"{len(manager._group._waiting)} callers waiting, expected {count}")


def behind_a_held_commit(
    manager: SessionManager, held: HeldStore, lead: list[IncomingEvent], batches: list[Any]
) -> tuple[list[Any], list[BaseException | None]]:
    """Tracks ``lead`` with its commit held open, then ``batches`` from one thread
    each; once they all wait behind it, the commit goes on. Their results and errors."""
    held.hold = True
    first = threading.Thread(target=manager.track, args=(lead,))
    first.start()
    assert held.entered.wait(WAIT_S)
    done: list[Any] = []
    calls = [lambda b=b: manager.track(b) for b in batches]
    followers = threading.Thread(target=lambda: done.extend(in_threads(calls)))
    followers.start()
    wait_for_waiters(manager, len(batches))
    held.release.set()
    first.join(WAIT_S)
    followers.join(WAIT_S)
    results, errors = done
    return results, errors


def test_callers_arriving_during_a_commit_share_the_next_one(
    manager: SessionManager, store: Store
) -> None:
    held = HeldStore(store)
    sid = manager.start("u1").session_id
    # Eight callers arrive while the first commit is open, one with a duplicate
    # of an earlier caller's event and one invalid event among valid ones.
    batches = [views(sid, f"c{k}", 5) for k in range(8)]
    batches[3].append(IncomingEvent(event_id="c0-1", session_id=sid, type=VIEW, item_id="i1"))
    batches[5].insert(0, IncomingEvent(event_id="bad", session_id=sid, type=SCREEN))
    outcomes, errors = behind_a_held_commit(manager, held, views(sid, "lead", 3), batches)
    assert errors == [None] * 8
    # Two transactions: the first caller's, then everyone who waited (all their
    # events but the invalid one).
    assert held.calls == [3, sum(len(b) for b in batches) - 1]
    for k, result in enumerate(outcomes):
        assert isinstance(result, TrackResult)
        if k == 5:  # the invalid event is rejected at its own index, the rest stored
            assert (result.accepted, [r.index for r in result.rejected]) == (5, [0])
            assert str(result.rejected[0].error).startswith("events[0].screen")
            assert result.event_ids[0] == ""
        elif k == 3:  # c0-1 was stored by caller 0 in the same transaction
            assert (result.accepted, result.duplicates) == (5, 1)
        else:
            assert (result.accepted, result.duplicates, result.rejected) == (5, 0, [])
            assert result.event_ids == [f"c{k}-{j}" for j in range(5)]
    assert store.count_events() == 3 + 8 * 5
    assert store.get_session(sid).event_count == 3 + 8 * 5  # type: ignore[union-attr]


def test_a_caller_whose_batch_has_nothing_storable_fails_alone(
    manager: SessionManager, store: Store
) -> None:
    held = HeldStore(store)
    sid = manager.start("u1").session_id
    bad = [IncomingEvent(event_id="b1", session_id=sid, type=SCREEN)]
    good = views(sid, "good", 2)
    (_, good_result), (bad_error, good_error) = behind_a_held_commit(
        manager, held, views(sid, "lead", 1), [bad, good]
    )
    assert isinstance(bad_error, InvalidArgument)
    assert str(bad_error).startswith("events[0].screen: required")
    assert good_error is None and good_result.accepted == 2
    assert store.quarantined()[0].event_id == "b1"  # kept for inspection, in that transaction
    assert len(held.calls) == 2


def test_a_failed_commit_fails_every_caller_of_its_group_and_the_next_group_goes_on(
    manager: SessionManager, store: Store
) -> None:
    sid = manager.start("u1").session_id
    manager.track(views(sid, "warm", 1))
    set_max_pages = getattr(store, "set_max_pages", None)
    if set_max_pages is None:
        pytest.skip("the store has no page cap")
    set_max_pages(1)  # every write needing a new page fails like a full disk
    big = [
        IncomingEvent(
            event_id=f"full-{t}-{k}",
            session_id=sid,
            type=VIEW,
            item_id=f"item-{t}-{k}-" + "x" * 200,
        )
        for t in range(4)
        for k in range(50)
    ]
    _, errors = in_threads(
        [lambda t=t: manager.track(big[t * 50 : (t + 1) * 50]) for t in range(4)]
    )
    assert all(isinstance(e, ResourceExhausted) for e in errors), errors
    assert store.count_events() == 1
    set_max_pages(None)
    results, errors = in_threads(
        [lambda t=t: manager.track(big[t * 50 : (t + 1) * 50]) for t in range(4)]
    )
    assert errors == [None] * 4
    assert [r.accepted for r in results] == [50] * 4
    assert store.count_events() == 1 + 200


def test_many_callers_all_get_their_own_results(manager: SessionManager, store: Store) -> None:
    sids = [manager.start(f"u{k}").session_id for k in range(4)]

    def caller(t: int) -> list[int]:
        accepted = []
        for c in range(15):
            result = manager.track(views(sids[t % 4], f"t{t}-c{c}", 7))
            accepted.append(result.accepted)
        return accepted

    results, errors = in_threads([lambda t=t: caller(t) for t in range(12)])
    assert errors == [None] * 12
    assert results == [[7] * 15] * 12
    assert store.count_events() == 12 * 15 * 7
    assert sum(store.get_session(s).event_count for s in sids) == 12 * 15 * 7  # type: ignore[union-attr]


def test_track_many_keeps_batches_apart_in_one_transaction(
    manager: SessionManager, store: Store
) -> None:
    held = HeldStore(store)
    sid = manager.start("u1").session_id
    out = manager.track_many([views(sid, "a", 2), views(sid, "a", 3), views(sid, "b", 1)])
    assert held.calls == [6]
    assert [(r.accepted, r.duplicates) for r in out] == [(2, 0), (1, 2), (1, 0)]
    with pytest.raises(SessionrecError, match="events: must not be empty"):
        manager.track_many([views(sid, "c", 1), []])
    assert held.calls == [6]  # nothing of a refused group is stored
