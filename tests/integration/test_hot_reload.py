"""Swapping models under load, and refusing a corrupted artifact."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from sessionrec.store import open_store
from sessionrec.v1 import sessionrec_pb2 as pb
from training.artifact import VERSIONS_DIR, current_version, set_current
from training.pipeline import train

from .support import assert_status

CALLS = 300


@pytest.fixture
def srv(synthetic_copy, start_server):
    return start_server(synthetic_copy.db_path, synthetic_copy.models_dir)


def train_version(srv, *, make_current: bool = True, **params) -> str:
    with open_store(srv.db_url) as store:
        artifact = train(
            store,
            str(srv.models_dir),
            "als",
            {"factors": 6, "iterations": 8, "num_threads": 1, **params},
            make_current=make_current,
        )
    return artifact.version


def test_reload_under_load_fails_no_call(srv, synthetic_copy):
    v1 = synthetic_copy.version
    v2 = train_version(srv)
    assert v2 != v1 and current_version(srv.models_dir) == v2
    # Polling is off: the server still serves v1 until told.
    assert srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v1

    threads_n = 3
    per_thread = CALLS // threads_n
    versions: list[list[str]] = [[] for _ in range(threads_n)]
    failures: list[BaseException] = []
    done = [0] * threads_n
    warmed_up = [threading.Event() for _ in range(threads_n)]
    reloaded = threading.Event()

    def load(t: int) -> None:
        for i in range(per_thread):
            if i == per_thread // 5:
                warmed_up[t].set()
            if i == per_thread * 4 // 5:
                # The reload runs concurrently with the calls before this point; the
                # last fifth waits for it (bounded) so that it surely sees the new model.
                reloaded.wait(timeout=60)
            try:
                reply = srv.recs.Recommend(
                    pb.RecommendRequest(user_id=f"u{(i + t) % 60:02d}", n=5), timeout=10
                )
            except grpc.RpcError as exc:
                failures.append(exc)
                continue
            finally:
                done[t] += 1
            if len(reply.items) != 5 or reply.strategy != "personalized":
                failures.append(AssertionError(f"call {t}/{i}: {reply}"))
            versions[t].append(reply.model_version)

    threads = [threading.Thread(target=load, args=(t,), daemon=True) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    # Every thread has been served by v1 before the swap starts.
    assert all(w.wait(timeout=60) for w in warmed_up)
    info = srv.admin.ReloadModel(pb.ReloadModelRequest(), timeout=30)
    reloaded.set()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()

    assert failures == []
    assert sum(done) == CALLS
    assert info.version == v2
    for seen in versions:
        assert len(seen) == per_thread
        assert seen[0] == v1
        assert seen[-1] == v2
        assert set(seen) == {v1, v2}
        # Once a thread saw v2, none of its later calls went back to v1.
        first_v2 = seen.index(v2)
        assert all(v == v2 for v in seen[first_v2:])
    assert srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v2


def test_reload_a_specific_version_and_back(srv, synthetic_copy):
    v1 = synthetic_copy.version
    v2 = train_version(srv, make_current=False)
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(version=v2), timeout=30).version == v2
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="u01", n=3), timeout=10)
    assert rec.model_version == v2
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(version=v1), timeout=30).version == v1


def corrupt(npz: Path) -> None:
    data = bytearray(npz.read_bytes())
    middle = len(data) // 2
    for k in range(middle, middle + 16):
        data[k] ^= 0xFF
    npz.write_bytes(bytes(data))


def test_corrupted_artifact_is_refused_and_the_old_model_keeps_serving(srv, synthetic_copy):
    v1 = synthetic_copy.version
    bad = train_version(srv, make_current=False)
    corrupt(Path(srv.models_dir) / VERSIONS_DIR / bad / "model.npz")
    set_current(srv.models_dir, bad)

    err = assert_status(
        srv.admin.ReloadModel,
        pb.ReloadModelRequest(),
        grpc.StatusCode.FAILED_PRECONDITION,
        bad,
    )
    assert "checksum" in err.details()

    info = srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.version == v1
    assert info.algorithm == "als"
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="u02", n=5), timeout=10)
    assert rec.model_version == v1
    assert rec.strategy == "personalized"
    assert len(rec.items) == 5

    # Asking for the bad version by name is refused the same way.
    assert_status(
        srv.admin.ReloadModel,
        pb.ReloadModelRequest(version=bad),
        grpc.StatusCode.FAILED_PRECONDITION,
        bad,
    )
    # A good version afterwards loads fine.
    good = train_version(srv)
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(), timeout=30).version == good
    assert srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == good


def test_poller_picks_up_a_new_version_and_skips_a_corrupted_one(synthetic_copy, start_server):
    from .support import wait_for

    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, model_poll_interval_s=0.1)
    v1 = synthetic_copy.version
    bad = train_version(srv, make_current=False)
    corrupt(Path(srv.models_dir) / VERSIONS_DIR / bad / "model.npz")
    set_current(srv.models_dir, bad)
    refused = wait_for(
        lambda: "refused" in srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).status,
        timeout_s=20,
    )
    assert refused
    assert srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v1

    v3 = train_version(srv)
    picked = wait_for(
        lambda: srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v3,
        timeout_s=20,
    )
    assert picked
    rec = srv.recs.Recommend(pb.RecommendRequest(user_id="u03", n=5), timeout=10)
    assert rec.model_version == v3


def test_a_rollback_to_a_named_version_is_not_undone_by_the_poller(synthetic_copy, start_server):
    import time

    srv = start_server(synthetic_copy.db_path, synthetic_copy.models_dir, model_poll_interval_s=0.1)
    v1 = synthetic_copy.version
    v2 = train_version(srv)  # becomes CURRENT; the poller follows it
    from .support import wait_for

    assert wait_for(
        lambda: srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v2,
        timeout_s=20,
    )
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(version=v1), timeout=30).version == v1
    time.sleep(1.0)  # ten poll intervals
    assert srv.admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == v1
    # A reload without a version follows CURRENT again.
    assert srv.admin.ReloadModel(pb.ReloadModelRequest(), timeout=30).version == v2
