"""Model registry over a models directory: list, show, promote, roll back, diff.

Every version carries its algorithm, parameters, event weights, data
fingerprint, timings, library versions and — when it was evaluated — its test
metrics (``meta.json``). ``CURRENT`` names the version the servers load (they
hot-reload it); ``HISTORY`` lists the promotions, newest last, so a rollback
knows where to go back to.

Promotion compares the candidate's metrics with the current version's on the
same key metric and refuses a worse model unless forced.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessionrec.errors import FailedPrecondition, NotFound
from training.artifact import (
    current_version,
    list_versions,
    load_artifact,
    read_meta,
    set_current,
)

HISTORY_FILE = "HISTORY"
KEY_METRIC = "ndcg"
SUMMARY_KEYS = ("algorithm", "trained_at", "users", "items", "interactions", "data_fingerprint")


@dataclass
class Comparison:
    candidate: str
    current: str | None
    rows: list[tuple[str, float | None, float | None]]  # metric, current, candidate
    better: bool | None  # None when it cannot be told (no metrics on one side)

    def table(self) -> str:
        lines = [f"{'metric':<12} {'current':>10} {'candidate':>10} {'change':>9}"]
        for name, old, new in self.rows:
            change = "" if old is None or new is None else f"{new - old:+.4f}"
            lines.append(f"{name:<12} {_fmt(old):>10} {_fmt(new):>10} {change:>9}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_of(meta: dict[str, Any]) -> dict[str, float]:
    metrics = meta.get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def summary(models_dir: str | os.PathLike[str], version: str) -> dict[str, Any]:
    meta = read_meta(models_dir, version)
    out = {"version": version, **{k: meta.get(k) for k in SUMMARY_KEYS}}
    out["metrics"] = metrics_of(meta)
    out["current"] = version == current_version(models_dir)
    return out


def list_models(models_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [summary(models_dir, v) for v in list_versions(models_dir)]


def compare(
    models_dir: str | os.PathLike[str], candidate: str, current: str | None = None
) -> Comparison:
    current = current if current is not None else current_version(models_dir)
    new = metrics_of(read_meta(models_dir, candidate))
    old = metrics_of(read_meta(models_dir, current)) if current else {}
    names = sorted(set(new) | set(old), key=lambda n: (n != KEY_METRIC, n))
    rows = [(n, old.get(n), new.get(n)) for n in names if n != "users"]
    same_protocol = current is None or (
        read_meta(models_dir, candidate).get("metrics_protocol")
        == read_meta(models_dir, current).get("metrics_protocol")
    )
    if current is None:
        better: bool | None = True
    elif KEY_METRIC in new and KEY_METRIC in old and same_protocol:
        better = new[KEY_METRIC] >= old[KEY_METRIC]
    else:
        better = None  # no metrics on one side, or measured differently
    return Comparison(candidate, current, rows, better)


def promote(models_dir: str | os.PathLike[str], version: str, *, force: bool = False) -> Comparison:
    """Makes ``version`` current if it is not worse than the current one (on
    NDCG) — or if forced. The artifact is verified (checksum, shapes, a probe
    recommendation) before it becomes current."""
    load_artifact(models_dir, version)  # refuses a broken artifact
    comparison = compare(models_dir, version)
    if comparison.current == version:
        return comparison
    if not force and comparison.better is not True:
        why = (
            "it is worse than the current model"
            if comparison.better is False
            else "their metrics cannot be compared (evaluate both, or force)"
        )
        raise FailedPrecondition(f"promote: refused {version}: {why}\n{comparison.table()}")
    set_current(models_dir, version)
    _append_history(models_dir, version)
    return comparison


def rollback(models_dir: str | os.PathLike[str]) -> str:
    """Makes the previously promoted version current again."""
    history = read_history(models_dir)
    current = current_version(models_dir)
    earlier = [v for v in history if v != current]
    if not earlier:
        raise FailedPrecondition("rollback: no earlier promoted version")
    target = earlier[-1]
    load_artifact(models_dir, target)
    set_current(models_dir, target)
    _append_history(models_dir, target)
    return target


def diff(models_dir: str | os.PathLike[str], a: str, b: str) -> dict[str, Any]:
    """What differs between two versions: parameters, weights, data, metrics."""
    meta_a, meta_b = read_meta(models_dir, a), read_meta(models_dir, b)
    out: dict[str, Any] = {}
    for key in (
        "algorithm",
        "params",
        "weights",
        "data_fingerprint",
        "users",
        "items",
        "interactions",
        "library_versions",
    ):
        if meta_a.get(key) != meta_b.get(key):
            out[key] = {a: meta_a.get(key), b: meta_b.get(key)}
    comparison = compare(models_dir, b, a)
    out["metrics"] = {name: {a: old, b: new} for name, old, new in comparison.rows}
    return out


def read_history(models_dir: str | os.PathLike[str]) -> list[str]:
    path = Path(models_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    versions = []
    for line in path.read_text().splitlines():
        try:
            versions.append(json.loads(line)["version"])
        except (ValueError, KeyError):
            continue
    return versions


def _append_history(models_dir: str | os.PathLike[str], version: str) -> None:
    path = Path(models_dir) / HISTORY_FILE
    record = {"version": version, "at": dt.datetime.now(dt.UTC).isoformat()}
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def require_version(models_dir: str | os.PathLike[str], version: str) -> str:
    if version not in list_versions(models_dir):
        raise NotFound(f"version: {version!r} not found in {models_dir}")
    return version
