"""Approximate nearest neighbours for large catalogs, a benchmark section.

Two parts, each in its own process (``multiprocessing`` spawn, so memory and
OpenMP settings are its own), on synthetic implicit feedback made like
``bench.run.scale_log`` makes its log (latent taste groups: every item is in
one, every user likes one or two and draws ``in_group`` of their interactions
from them, the rest from a global Zipf-like popularity; log-normal user
activity), but as a matrix only, vectorised:

* **ANN at 100k items** (``ann``): ALS (implicit, 64 factors) fitted on
  100,000 users x 100,000 items (about 20 interactions a user). Exact search
  against :func:`training.ann.build_item_index`'s faiss HNSW (tuned on its own
  synthetic user vectors, as the pipeline would without data, and then
  re-tuned on 300 real users of the fit) and the alternatives in
  ``AnnSpec.alternatives`` (IVF-Flat): build seconds, index memory, recall@10
  against exact search on 1,000 other users of the fit (their factors from the
  fit, their own items excluded, as serving does), query p50/p99 (one query at
  a time, k=10, one thread).
* **Scale** (``scale``): 1,000,000 users x 100,000 items (about 5 interactions
  a user), ALS 64 factors, 10 iterations: generation and fit seconds, peak RSS;
  then for 1,000 users what serving does per Recommend, in process: the user's
  row folded in with ``recalculate_user`` (one thread), then exact search or the
  faiss index, the user's items excluded; p50/p99 of fold-in + search, recall,
  memory of the item factors and of the index, RSS.

``python -m bench.ann [--quick] [--json PATH]`` runs it alone (``--quick``:
20k items, 100k users at scale). Targets (issue): at 100k items x 64 factors a
top-10 query well under 1 ms (p50) so that a Recommend stays within 2 ms, with
recall@10 >= 0.95 against exact. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class AnnSpec:
    # ---- part a: ANN at ``items`` items
    items: int = 100_000
    users: int = 100_000
    #: Mean interactions a user (each user has at least 2).
    mean_events: float = 20.0
    #: Users whose factors measure recall and latency, and users the re-tuning uses.
    eval_users: int = 1_000
    tune_users: int = 300
    #: faiss methods measured besides HNSW (the default): "ivf".
    alternatives: tuple[str, ...] = ("ivf",)
    # ---- part b: Recommend at scale
    scale_users: int = 1_000_000
    scale_items: int = 100_000
    scale_mean_events: float = 5.0
    #: Users whose Recommend is timed.
    scale_latency_users: int = 1_000
    # ---- both
    factors: int = 64
    iterations: int = 10
    regularization: float = 0.05
    alpha: float = 1.0
    #: Taste groups (about 500 items each at 100k items).
    groups: int = 200
    in_group: float = 0.8
    #: Item popularity ~ 1 / (rank + zipf_offset) ** zipf_exponent.
    zipf_exponent: float = 1.0
    zipf_offset: float = 5.0
    k: int = 10
    target_recall: float = 0.95
    #: Threads for the data generation's fit and the index builds (queries: one).
    threads: int = 2
    seed: int = 17
    run_ann: bool = True
    run_scale: bool = True


#: A run of a minute or so: the same code paths at 20k items.
QUICK = AnnSpec(
    items=20_000,
    users=20_000,
    eval_users=300,
    tune_users=100,
    scale_users=100_000,
    scale_items=20_000,
    scale_latency_users=300,
    groups=50,
)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def implicit_matrix(
    users: int,
    items: int,
    mean_events: float,
    *,
    groups: int = 200,
    in_group: float = 0.8,
    zipf_exponent: float = 1.0,
    zipf_offset: float = 5.0,
    seed: int = 0,
) -> sp.csr_matrix:
    """A ``users x items`` implicit-feedback matrix (float32 interaction counts).

    The model of ``bench.run.scale_log``: item popularity ~ ``1 / (rank +
    offset) ** exponent`` over shuffled ranks, every item in one taste group,
    every user liking one or two groups; a user's interactions are log-normal
    in number (at least 2, ``mean_events`` on average) and ``in_group`` of them
    come from the user's groups by popularity, the rest from global popularity.
    No Python loop over users, items or groups: 1M users take seconds."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (rng.permutation(items) + zipf_offset) ** zipf_exponent
    item_group = rng.permutation(np.arange(items) % groups)
    # One sorted array of every group's popularity CDF, group g's shifted to (g, g + 1].
    by_group = np.argsort(item_group, kind="stable")
    sorted_group = item_group[by_group]
    mass = np.cumsum(popularity[by_group])
    group_total = np.bincount(sorted_group, weights=popularity[by_group], minlength=groups)
    group_start = np.searchsorted(sorted_group, np.arange(groups))
    before = np.r_[0.0, mass][group_start]
    shifted_cdf = sorted_group + (mass - before[sorted_group]) / group_total[sorted_group]
    global_cdf = np.cumsum(popularity) / popularity.sum()

    minimum = 2
    activity = rng.lognormal(0.0, 1.0, users)
    extra = max(0, round(mean_events * users) - minimum * users)
    counts = rng.multinomial(extra, activity / activity.sum()) + minimum
    user = np.repeat(np.arange(users, dtype=np.int32), counts)
    n = len(user)
    first = rng.integers(0, groups, users)
    second = np.where(rng.random(users) < 0.5, rng.integers(0, groups, users), first)
    group = np.where(rng.random(n) < 0.5, first[user], second[user])
    uniform = rng.random(n)
    own = rng.random(n) < in_group
    item = np.empty(n, dtype=np.int32)
    at = np.searchsorted(shifted_cdf, group[own] + uniform[own], side="right")
    item[own] = by_group[np.minimum(at, items - 1)]
    at = np.searchsorted(global_cdf, uniform[~own], side="right")
    item[~own] = np.minimum(at, items - 1)
    matrix = sp.csr_matrix(
        (np.ones(n, dtype=np.float32), (user, item)), shape=(users, items), dtype=np.float32
    )
    matrix.sum_duplicates()
    return matrix


def _memory_mib() -> dict[str, float]:
    """This process's resident set now and at its peak (Linux ``/proc``; else {})."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key = "rss_mib" if line.startswith("VmRSS") else "peak_rss_mib"
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return out


def _latency(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def _generate_and_fit(
    spec: AnnSpec, users: int, items: int, mean_events: float
) -> tuple[sp.csr_matrix, Any, dict[str, Any]]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    matrix = implicit_matrix(
        users,
        items,
        mean_events,
        groups=spec.groups,
        in_group=spec.in_group,
        zipf_exponent=spec.zipf_exponent,
        zipf_offset=spec.zipf_offset,
        seed=spec.seed,
    )
    generate = time.perf_counter() - started
    say(
        f"[bench]   ann: {users:,} users x {items:,} items, {matrix.nnz:,} interactions "
        f"generated in {generate:.1f} s; fitting ALS ({spec.factors} factors, "
        f"{spec.iterations} iterations, {spec.threads} threads) ..."
    )
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=spec.factors,
            regularization=spec.regularization,
            alpha=spec.alpha,
            iterations=spec.iterations,
            random_state=spec.seed,
            num_threads=spec.threads,
        )
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        fit = time.perf_counter() - started
    say(f"[bench]   ann: fitted in {fit:.1f} s")
    norms = np.linalg.norm(model.item_factors, axis=1)
    p50, p99 = np.percentile(norms, [50, 99])
    return (
        matrix,
        model,
        {
            "users": users,
            "items": items,
            "interactions": int(matrix.nnz),
            "generate_seconds": round(generate, 2),
            "fit_seconds": round(fit, 2),
            "iterations": spec.iterations,
            "item_norm": {
                "p50": round(float(p50), 4),
                "p99": round(float(p99), 4),
                "max": round(float(norms.max()), 4),
            },
        },
    )


def _timed_searches(
    search: Callable[[np.ndarray, int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    warmup: int = 50,
) -> tuple[list[float], list[np.ndarray]]:
    for q, h in zip(queries[:warmup], histories[:warmup], strict=False):
        search(q, k, h)
    seconds, found = [], []
    for q, h in zip(queries, histories, strict=True):
        started = time.perf_counter()
        idx, _ = search(q, k, h)
        seconds.append(time.perf_counter() - started)
        found.append(idx)
    return seconds, found


def _ann_part(spec: AnnSpec) -> dict[str, Any]:
    """Child process: part a."""
    from threadpoolctl import threadpool_limits

    from training.ann import ExactIndex, FaissIndex, build_item_index, recall_at_k

    matrix, model, data = _generate_and_fit(spec, spec.users, spec.items, spec.mean_events)
    factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    user_factors = np.asarray(model.user_factors)
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    rng = np.random.default_rng(spec.seed + 1)
    chosen = rng.choice(active, spec.eval_users + spec.tune_users, replace=False)
    eval_users, tune_users = chosen[: spec.eval_users], chosen[spec.eval_users :]

    def history(u: int) -> np.ndarray:
        return matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]].astype(np.int64)

    queries = np.ascontiguousarray(user_factors[eval_users], dtype=np.float32)
    histories = [history(int(u)) for u in eval_users]
    k = spec.k
    exact = ExactIndex(factors)
    rows: list[dict[str, Any]] = []
    with threadpool_limits(1, "blas"):  # one query, one thread, as a request thread runs it
        seconds, truth = _timed_searches(exact.search, queries, histories, k)
        exact_latency = _latency(seconds)
        rows.append(
            {
                "name": "exact",
                "kind": exact.kind,
                "params": "numpy matmul + top_k",
                "build_seconds": 0.0,
                "memory_mib": 0.0,
                "recall": 1.0,
                "latency": exact_latency,
            }
        )
        say(f"[bench]   ann: exact p50 {exact_latency['p50_ms']:.3f} ms")

        def measure(name: str, index: FaissIndex) -> None:
            seconds, found = _timed_searches(index.search, queries, histories, k)
            latency = _latency(seconds)
            info = index.info
            row = {
                "name": name,
                "kind": index.kind,
                "params": ", ".join(
                    f"{key}={info[key]}"
                    for key in ("M", "ef_construction", "nlist", "search_param_name")
                    if key in info
                ).replace("search_param_name=", "")
                + f"={index.search_param}",
                "search_param": index.search_param,
                "build_seconds": info["build_seconds"],
                "tune_seconds": info["tune_seconds"],
                "tune_source": info["tune_source"],
                "tuned_recall": info["recall"],
                "target_reached": info["target_reached"],
                "tried": info["tried"],
                "memory_mib": round(index.nbytes / 2**20, 1),
                "recall": round(recall_at_k(found, truth), 4),
                "latency": latency,
                "speedup_p50": round(exact_latency["p50_ms"] / latency["p50_ms"], 1),
            }
            rows.append(row)
            say(
                f"[bench]   ann: {name} ({row['params']}): recall@{k} {row['recall']:.3f}, "
                f"p50 {latency['p50_ms']:.3f} ms, p99 {latency['p99_ms']:.3f} ms"
            )

        for method in ("hnsw", *spec.alternatives):
            index = build_item_index(
                factors,
                min_items=0,
                target_recall=spec.target_recall,
                method=method,
                k=k,
                seed=spec.seed,
                threads=spec.threads,
                progress=lambda m: say(f"[bench]   ann: {m}"),
            )
            assert isinstance(index, FaissIndex)
            measure(f"faiss {method}, tuned on synthetic users", index)
            if method == "hnsw":
                index.tune(
                    user_factors[tune_users],
                    [history(int(u)) for u in tune_users],
                    target_recall=spec.target_recall,
                    k=k,
                    source="users of the fit",
                )
                measure(f"faiss {method}, tuned on {len(tune_users)} users of the fit", index)
            del index
    return {
        "data": data,
        "eval_users": len(eval_users),
        "k": k,
        "target_recall": spec.target_recall,
        "item_factors_mib": round(factors.nbytes / 2**20, 1),
        "indexes": rows,
        **_memory_mib(),
    }


def _scale_part(spec: AnnSpec) -> dict[str, Any]:
    """Child process: part b."""
    import gc

    from threadpoolctl import threadpool_limits

    from training.ann import ExactIndex, FaissIndex, build_item_index, recall_at_k

    matrix, model, data = _generate_and_fit(
        spec, spec.scale_users, spec.scale_items, spec.scale_mean_events
    )
    after_fit = _memory_mib()
    rng = np.random.default_rng(spec.seed + 2)
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    sample = rng.choice(active, spec.scale_latency_users, replace=False)
    rows = [matrix[int(u)] for u in sample]
    # What serving keeps: the item factors (ALSRecommender drops user factors).
    model.user_factors = np.zeros((0, spec.factors), dtype=np.float32)
    model.num_threads = 1  # as ALSRecommender.from_arrays sets for serving
    factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    full_matrix = matrix
    del matrix
    gc.collect()
    serving = _memory_mib()
    index = build_item_index(
        factors,
        min_items=0,
        target_recall=spec.target_recall,
        k=spec.k,
        seed=spec.seed,
        threads=spec.threads,
        progress=lambda m: say(f"[bench]   scale: {m}"),
    )
    assert isinstance(index, FaissIndex)
    with_index = _memory_mib()
    exact = ExactIndex(factors)
    k = spec.k
    times: dict[str, list[float]] = {"fold_in": [], "exact": [], "ann": []}
    totals: dict[str, list[float]] = {"exact": [], "ann": []}
    found: dict[str, list[np.ndarray]] = {"exact": [], "ann": []}
    with threadpool_limits(1, "blas"):
        for warm in rows[:50]:
            exact.search(model.recalculate_user(0, warm), k, warm.indices)
            index.search(model.recalculate_user(0, warm), k, warm.indices)
        for row in rows:
            for name, searcher in (("exact", exact), ("ann", index)):
                started = time.perf_counter()
                user = model.recalculate_user(0, row)
                folded = time.perf_counter()
                idx, _ = searcher.search(user, k, row.indices)
                done = time.perf_counter()
                times["fold_in"].append(folded - started)
                times[name].append(done - folded)
                totals[name].append(done - started)
                found[name].append(idx)
    result: dict[str, Any] = {
        "data": data,
        "after_fit": after_fit,
        "serving_before_index": serving,
        "with_index": with_index,
        "item_factors_mib": round(factors.nbytes / 2**20, 1),
        "index": {
            "kind": index.kind,
            "info": {key: value for key, value in index.info.items() if key != "tried"},
            "memory_mib": round(index.nbytes / 2**20, 1),
        },
        "users_timed": len(rows),
        "k": k,
        "recall": round(recall_at_k(found["ann"], found["exact"]), 4),
        "latency": {
            "fold_in": _latency(times["fold_in"]),
            "exact_search": _latency(times["exact"]),
            "ann_search": _latency(times["ann"]),
            "fold_in_and_exact": _latency(totals["exact"]),
            "fold_in_and_ann": _latency(totals["ann"]),
        },
        **_memory_mib(),
    }
    result["artifact"] = _artifact_recommend(spec, full_matrix, factors, index, rows, sample)
    del full_matrix
    lat = result["latency"]
    say(
        f"[bench]   scale: fold-in + exact p50 {lat['fold_in_and_exact']['p50_ms']:.3f} ms, "
        f"fold-in + ANN p50 {lat['fold_in_and_ann']['p50_ms']:.3f} ms, "
        f"recall@{k} {result['recall']:.3f}, peak RSS {result.get('peak_rss_mib', 0):,.0f} MiB"
    )
    return result


def _artifact_recommend(
    spec: AnnSpec, matrix: Any, factors: np.ndarray, index: Any, rows: list[Any], sample: Any
) -> dict[str, Any]:
    """The serving code path itself: the model saved as a real artifact (1M-user
    vocabulary, the index in the .npz), loaded back with ``load_artifact``, and
    ``ModelArtifact.recommend`` (fold-in of the user's history as ITEM_VIEWs,
    search, seen items excluded, reasons) timed per user, with the index and
    with exact scoring (``index`` set to None on the same loaded artifact)."""
    import tempfile

    from threadpoolctl import threadpool_limits

    from sessionrec.events import EventType, ItemEvent
    from training.ann import recall_at_k
    from training.artifact import load_artifact, save_artifact
    from training.data import Interactions, Vocabulary
    from training.models import ALSRecommender
    from training.weighting import EventWeights

    params = {
        "factors": spec.factors,
        "iterations": spec.iterations,
        "regularization": spec.regularization,
        "alpha": spec.alpha,
    }
    model = ALSRecommender.from_arrays(params, {"item_factors": factors})
    users = Vocabulary([f"u{u}" for u in range(matrix.shape[0])])
    items = Vocabulary([f"i{i}" for i in range(matrix.shape[1])])
    interactions = Interactions(users, items, matrix.tocsr(), int(matrix.nnz))
    view = int(EventType.ITEM_VIEW)
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as models_dir:
        started = time.perf_counter()
        saved = save_artifact(models_dir, model, interactions, EventWeights(), index=index)
        save_seconds = time.perf_counter() - started
        before = _memory_mib()
        started = time.perf_counter()
        artifact = load_artifact(models_dir, saved.version)
        load_seconds = time.perf_counter() - started
        loaded = _memory_mib()
        npz_mib = sum(f.stat().st_size for f in Path(models_dir).rglob("*.npz")) / 2**20
    histories = [
        [ItemEvent(f"i{i}", view, None, 1_000_000 + k) for k, i in enumerate(row.indices.tolist())]
        for row in rows
    ]
    times: dict[str, list[float]] = {"ann": [], "exact": []}
    found: dict[str, list[np.ndarray]] = {"ann": [], "exact": []}
    kept = artifact.index
    with threadpool_limits(1, "blas"):
        for name in ("ann", "exact"):
            artifact.index = kept if name == "ann" else None
            for history in histories[:50]:
                artifact.recommend(history, spec.k)
            for history in histories:
                started = time.perf_counter()
                rec = artifact.recommend(history, spec.k)
                times[name].append(time.perf_counter() - started)
                found[name].append(artifact.items.numbers(rec.item_ids))
    artifact.index = kept
    ann_p50, exact_p50 = _latency(times["ann"])["p50_ms"], _latency(times["exact"])["p50_ms"]
    say(
        f"[bench]   scale: ModelArtifact.recommend p50 with the index {ann_p50:.3f} ms, "
        f"exact {exact_p50:.3f} ms"
    )
    return {
        "save_seconds": round(save_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "npz_mib": round(npz_mib, 1),
        "rss_before_load_mib": before.get("rss_mib"),
        "rss_after_load_mib": loaded.get("rss_mib"),
        "users_timed": len(histories),
        "recommend_ann": _latency(times["ann"]),
        "recommend_exact": _latency(times["exact"]),
        "recall": round(recall_at_k(found["ann"], found["exact"]), 4),
    }


def _in_child(fn: Callable[[AnnSpec], dict[str, Any]], spec: AnnSpec) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, spec).result()


def bench_ann(spec: AnnSpec) -> dict[str, Any]:
    """Both parts (as ``spec.run_ann`` / ``spec.run_scale`` say), each in a fresh process."""
    # By module path, so that the children find the functions when this runs as __main__.
    from bench import ann

    started = time.perf_counter()
    result: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    if spec.run_ann:
        say(f"[bench]   ann: part a, ANN at {spec.items:,} items")
        result["ann"] = _in_child(ann._ann_part, spec)
    if spec.run_scale:
        say(f"[bench]   scale: part b, {spec.scale_users:,} users x {spec.scale_items:,} items")
        result["scale"] = _in_child(ann._scale_part, spec)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    say(f"[bench]   ann: section done in {result['wall_seconds']:.0f} s")
    return result


def markdown_lines(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    part = result.get("ann")
    if part:
        data = part["data"]
        k = part["k"]
        lines += [
            "",
            f"## Item index (ANN) at {data['items']:,} items",
            "",
            f"ALS ({result['spec']['factors']} factors, {data['iterations']} iterations) fitted "
            f"in {data['fit_seconds']:.0f} s on {data['users']:,} synthetic users x "
            f"{data['items']:,} items ({data['interactions']:,} interactions; item factor "
            f"norms: median {data['item_norm']['p50']}, p99 {data['item_norm']['p99']}, max "
            f"{data['item_norm']['max']}). Recall@{k} against exact search and latency over "
            f"{part['eval_users']:,} users of the fit (their factors, their own items "
            f"excluded), one query at a time, k={k}, one thread. Item factors: "
            f"{part['item_factors_mib']} MiB.",
            "",
            f"| index | parameters | build s | index MiB | recall@{k} | p50 ms | p99 ms | "
            "speed-up (p50) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in part["indexes"]:
            lat = row["latency"]
            tuned = (
                f" (tuned: {row['tuned_recall']:.3f}"
                + ("" if row["target_reached"] else ", target not reached")
                + ")"
                if "tuned_recall" in row
                else ""
            )
            lines.append(
                f"| {row['name']} | {row['params']} | {row['build_seconds']:.1f} | "
                f"{row['memory_mib']:.1f} | {row['recall']:.3f}{tuned} | {lat['p50_ms']:.3f} | "
                f"{lat['p99_ms']:.3f} | {row.get('speedup_p50', 1.0):.1f}x |"
            )
        lines += [
            "",
            f"Target: p50 well under 1 ms with recall@{k} >= {part['target_recall']} "
            "(not asserted). The index memory is faiss's own copy of the vectors plus "
            "its graph or lists (the size of the serialised index).",
        ]
    scale = result.get("scale")
    if scale:
        data = scale["data"]
        lat = scale["latency"]
        info = scale["index"]["info"]
        fit_peak = scale["after_fit"].get("peak_rss_mib", 0)
        lines += [
            "",
            f"## Recommend at scale: {data['users']:,} users x {data['items']:,} items",
            "",
            f"{data['interactions']:,} interactions generated in {data['generate_seconds']:.1f} s; "
            f"ALS {result['spec']['factors']} factors, {data['iterations']} iterations, fitted "
            f"in {data['fit_seconds']:.0f} s (peak RSS {fit_peak:,.0f} MiB). Per user "
            f"({scale['users_timed']:,} users, in process, one thread): the user's row folded "
            f"in with `recalculate_user`, then the top {scale['k']} without the user's items.",
            "",
            "| what | p50 ms | p90 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, label in (
            ("fold_in", "fold-in"),
            ("exact_search", "exact search"),
            ("ann_search", "faiss search"),
            ("fold_in_and_exact", "fold-in + exact"),
            ("fold_in_and_ann", "fold-in + faiss"),
        ):
            row = lat[name]
            lines.append(
                f"| {label} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['p99_ms']:.3f} |"
            )
        lines += [
            "",
            f"Index: {scale['index']['kind']} ({info.get('search_param_name')}="
            f"{info.get('search_param')}, tuned recall {info.get('recall')}, built in "
            f"{info.get('build_seconds')} s), recall@{scale['k']} on these users "
            f"{scale['recall']:.3f}. Memory: item factors {scale['item_factors_mib']} MiB, "
            f"index {scale['index']['memory_mib']} MiB; RSS with the training state dropped "
            f"{scale['serving_before_index'].get('rss_mib', 0):,.0f} MiB, with the index "
            f"{scale['with_index'].get('rss_mib', 0):,.0f} MiB; process peak "
            f"{scale.get('peak_rss_mib', 0):,.0f} MiB.",
        ]
        art = scale.get("artifact")
        if art:
            ann, exact = art["recommend_ann"], art["recommend_exact"]
            lines += [
                "",
                "The serving code path: the model saved as a real artifact (the index in "
                f"the .npz, {art['npz_mib']:,.0f} MiB, saved in {art['save_seconds']} s), "
                f"loaded with `load_artifact` in {art['load_seconds']} s (RSS "
                f"{art['rss_before_load_mib']:,.0f} -> {art['rss_after_load_mib']:,.0f} MiB), "
                f"then `ModelArtifact.recommend(history, {scale['k']})` per user "
                f"({art['users_timed']:,} users; fold-in, search without seen items, reasons):",
                "",
                "| ModelArtifact.recommend | p50 ms | p90 ms | p99 ms |",
                "|---|---|---|---|",
                f"| with the index | {ann['p50_ms']:.3f} | {ann['p90_ms']:.3f} | "
                f"{ann['p99_ms']:.3f} |",
                f"| exact | {exact['p50_ms']:.3f} | {exact['p90_ms']:.3f} | "
                f"{exact['p99_ms']:.3f} |",
                "",
                f"Recall@{scale['k']} of what is served with the index against exact: "
                f"{art['recall']:.3f} (target: p50 <= 2 ms with recall >= 0.95; not asserted).",
            ]
    if "wall_seconds" in result:
        lines += ["", f"The section took {result['wall_seconds']:.0f} s."]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ann", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k items, 100k users at scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-scale", action="store_true", help="part a only")
    parser.add_argument("--scale-only", action="store_true", help="part b only")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else AnnSpec()
    spec = dataclasses.replace(spec, run_ann=not args.scale_only, run_scale=not args.no_scale)
    result = bench_ann(spec)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(markdown_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
