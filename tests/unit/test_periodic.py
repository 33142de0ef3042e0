"""PeriodicTask: runs repeatedly, survives a failing run, stops promptly."""

from __future__ import annotations

import threading

from service.periodic import PeriodicTask


def test_runs_repeatedly_survives_an_exception_and_stops() -> None:
    calls: list[int] = []
    third = threading.Event()

    def job() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        if len(calls) >= 3:
            third.set()

    task = PeriodicTask("test-job", 0.01, job)
    task.start()
    task.start()  # a second start is a no-op
    assert third.wait(timeout=10), "the job stopped after its first (failing) run"
    task.stop()
    count = len(calls)
    assert not any(t.name == "test-job" for t in threading.enumerate())
    assert len(calls) == count  # nothing runs after stop()


def test_stop_does_not_wait_out_a_long_interval() -> None:
    task = PeriodicTask("slow-job", 3600, lambda: None)
    task.start()
    task.stop(timeout=5)
    assert not any(t.name == "slow-job" for t in threading.enumerate())
