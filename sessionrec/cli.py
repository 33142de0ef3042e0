"""``sessionrec`` command line: serve, import, train, evaluate, tune, models, catalog, offers,
keys, export.

A thin layer over ``service.server`` and the ``training`` package; progress
goes to stderr, results (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionrec.config import DEFAULT_DB_URL, Config
from sessionrec.errors import SessionrecError

if TYPE_CHECKING:
    from training.weighting import EventWeights

#: Hyper-parameter flags shared by train and evaluate (None = the model's default).
PARAM_FLAGS: dict[str, type] = {
    "factors": int,
    "iterations": int,
    "regularization": float,
    "alpha": float,
    "learning_rate": float,
    "K": int,
    "similarity": str,
    "random_state": int,
    "num_threads": int,
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", default=None, help=f"store URL (default $SESSIONREC_DB_URL or {DEFAULT_DB_URL})"
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from training.models import ALGORITHMS

    p.add_argument("--algorithm", default="als", choices=sorted(ALGORITHMS))
    for name, kind in PARAM_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the run's seed: the model's random state (unless --random-state is given) and "
        "any sampling of the run",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model parameter (JSON value), repeatable",
    )
    p.add_argument(
        "--engine",
        choices=("implicit", "spark"),
        default=None,
        help="what fits ALS: implicit (default) or Spark MLlib (pip install 'sessionrec[spark]'; "
        "same parameters, artifact and serving)",
    )
    p.add_argument(
        "--spark-master",
        default=None,
        metavar="URL",
        help="with --engine spark: the Spark master (default $SESSIONREC_SPARK_MASTER or local[*])",
    )
    p.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --engine spark: a Spark setting, e.g. spark.driver.memory=4g (repeatable)",
    )
    _add_weight_args(p)


def _add_weight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dwell-bonus",
        type=float,
        default=None,
        help="extra weight of a view with a long dwell (default 1.0)",
    )
    p.add_argument(
        "--recency-half-life",
        type=float,
        default=None,
        help="favour each user's recent events; half-life in events (0: off)",
    )
    p.add_argument(
        "--recency-boost",
        type=float,
        default=None,
        help="how much more the newest event weighs (default 1.0)",
    )
    p.add_argument(
        "--scaling",
        choices=["none", "bm25", "tfidf"],
        default=None,
        help="confidence scaling of the user x item matrix (default none)",
    )
    p.add_argument(
        "--time-half-life-days",
        type=float,
        default=None,
        help="decay every event by its age (days; 0: off; 7 for --algorithm trending)",
    )
    p.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="TYPE=W",
        help="weight of an event type, e.g. PURCHASE=8 (repeatable)",
    )


def _weights(args: argparse.Namespace) -> EventWeights:
    from training.weighting import DEFAULT_TYPE_WEIGHTS, EventWeights

    type_weights = dict(DEFAULT_TYPE_WEIGHTS)
    for item in args.weight:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SessionrecError(f"--weight: expected TYPE=W, got {item!r}")
        try:
            type_weights[name.strip().upper()] = float(raw)
        except ValueError:
            raise SessionrecError(f"--weight: {raw!r} is not a number") from None
    extra = {
        name: getattr(args, name)
        for name in (
            "dwell_bonus",
            "recency_half_life",
            "recency_boost",
            "time_half_life_days",
            "scaling",
        )
        if getattr(args, name) is not None
    }
    if getattr(args, "algorithm", None) == "trending":
        extra.setdefault("time_half_life_days", 7.0)
    try:
        return EventWeights(type_weights=type_weights, **extra)
    except ValueError as exc:
        raise SessionrecError(f"weights: {exc}") from None


def _duration_s(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m or 1h, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _model_params(args: argparse.Namespace) -> dict[str, Any]:
    from training.models import ALGORITHMS

    accepted = ALGORITHMS[args.algorithm].defaults
    params = {k: getattr(args, k) for k in PARAM_FLAGS if getattr(args, k) is not None}
    if args.seed is not None and "random_state" in accepted:
        params.setdefault("random_state", args.seed)
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SessionrecError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    engine = getattr(args, "engine", None)
    if engine == "spark" and "engine" not in accepted:
        raise SessionrecError(f"--engine: spark fits only --algorithm als, not {args.algorithm}")
    if engine is not None and "engine" in accepted:
        params["engine"] = engine
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SessionrecError(
            f"{unknown[0]}: not a parameter of {args.algorithm} "
            f"(it takes {', '.join(sorted(accepted)) or 'none'})"
        )
    return params


def _spark_setup(args: argparse.Namespace, params: dict[str, Any], *, start: bool = False) -> None:
    """Checks pyspark is there (before any data is read) and passes --spark-master
    and --spark-conf on, when Spark will run; ``start``: start Spark now, saying so
    (evaluate fits without progress messages)."""
    if params.get("engine") != "spark" and getattr(args, "events_parquet", None) is None:
        return
    from training.spark_als import configure, require_pyspark

    conf: dict[str, str] = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SessionrecError(f"--spark-conf: expected KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    require_pyspark()
    configure(args.spark_master, conf)
    if start:
        from training.spark_als import spark_session

        spark_session(progress=_stderr)


def _config(args: argparse.Namespace, **extra: Any) -> Config:
    return Config.load({"db_url": getattr(args, "db", None), **extra})


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(
        args,
        models_dir=args.models,
        host=args.host,
        port=args.port,
        session_timeout_s=args.session_timeout,
        workers=args.workers,
        processes=args.processes,
        log_level=args.log_level,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from service.server import serve

    serve(config)
    return 0


def _mapping(items: Sequence[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise SessionrecError(f"--map: expected FIELD=COLUMN, got {item!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def _delimiter(text: str | None) -> str | None:
    if text is None:
        return None
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(text, text)


def cmd_import(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.formats import plan_import
    from training.importer import ImportFormatError, import_file

    config = _config(args, session_timeout_s=args.session_timeout)
    try:
        # Format and options are checked before the store is opened (or created).
        plan = plan_import(
            args.file,
            args.format,
            min_rating=args.min_rating,
            event_type=args.event_type,
            mapping=_mapping(args.map),
            delimiter=_delimiter(args.delimiter),
            timestamp_unit=args.timestamp_unit,
        )
        with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
            report = import_file(
                store,
                args.file,
                plan.reader,
                session_timeout_s=config.session_timeout_s,
                show_progress=not args.quiet,
                on_bad_row=lambda bad: _stderr(f"{args.file}:{bad.line}: {bad.reason}"),
                encoding=plan.encoding,
            )
    except ImportFormatError as exc:
        raise SessionrecError(f"{args.file}: {exc}") from exc
    if not args.quiet and args.format is None:
        _stderr(f"{args.file}: read as {plan.format}")
    print(json.dumps(report.to_dict(max_bad=20), indent=2))
    if report.rows > report.skipped and not report.imported and not report.duplicates:
        return 2
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.pipeline import retrain_periodically, train

    config = _config(args, models_dir=args.models)
    params = _model_params(args)
    weights = _weights(args)
    if args.events_parquet is not None:
        from training.spark_als import check_parquet_weights

        for flag, value in (
            ("--db", args.db),
            ("--every", args.every),
            ("--evaluate", args.evaluate),
        ):
            if value is not None:
                raise SessionrecError(f"{flag}: not with --events-parquet (train from the store)")
        check_parquet_weights(weights)
    _spark_setup(args, params)
    if args.every is not None:
        outcomes = retrain_periodically(
            config.db_url,
            config.models_dir,
            args.algorithm,
            params,
            every_s=args.every,
            weights=weights,
            evaluate_k=args.evaluate or 10,
            max_runs=args.max_runs,
            progress=None if args.quiet else _stderr,
            session_model=not args.no_session_model,
            blend=args.blend,
        )
        print(json.dumps([{"version": v, "promoted": p} for v, p in outcomes], indent=2))
        return 0
    with (
        contextlib.nullcontext(None)
        if args.events_parquet is not None
        else open_store(config.db_url, synchronous=config.sqlite_synchronous)
    ) as store:
        artifact = train(
            store,
            config.models_dir,
            args.algorithm,
            params,
            weights=weights,
            make_current=not args.no_promote,
            evaluate_k=args.evaluate,
            show_progress=not args.quiet,
            progress=None if args.quiet else _stderr,
            session_model=not args.no_session_model,
            blend=args.blend,
            events_parquet=args.events_parquet,
            **({} if args.ann_min_items is None else {"ann_min_items": args.ann_min_items}),
        )
    meta = artifact.meta
    out = {
        "version": artifact.version,
        "algorithm": artifact.algorithm,
        "params": artifact.params,
        "users": meta["users"],
        "items": meta["items"],
        "interactions": meta["interactions"],
        "load_seconds": meta["load_seconds"],
        "fit_seconds": meta["fit_seconds"],
        "session_model": meta.get("session"),
        **({"spark": meta["spark"]} if "spark" in meta else {}),
        "current": not args.no_promote,
        "models_dir": config.models_dir,
    }
    if "metrics" in meta:
        out["metrics"] = meta["metrics"]
    print(json.dumps(out, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from sessionrec.errors import FailedPrecondition
    from sessionrec.store import open_store
    from training.artifact import save_artifact
    from training.registry import compare, promote
    from training.tune import tune

    config = _config(args, models_dir=args.models)
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise SessionrecError("--budget-minutes: must be > 0")
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        events = store.item_events(with_sessions=args.split == "last-session")
    if not len(events):
        raise SessionrecError("store: no item events to tune on (import some first)")
    result = tune(
        events,
        budget_s=None if args.budget_minutes is None else args.budget_minutes * 60,
        trials=args.trials,
        k=args.k,
        split_method=args.split,
        test_fraction=args.test_fraction,
        algorithms=tuple(a.strip() for a in args.algorithms.split(",") if a.strip()),
        seed=args.seed,
        progress=None if args.quiet else _stderr,
    )
    out = result.to_dict()
    if result.model is not None and result.interactions is not None and not args.no_save:
        artifact = save_artifact(
            config.models_dir,
            result.model,
            result.interactions,
            result.best.weights,
            make_current=False,
            extra_meta={
                "metrics": {k: round(v, 6) for k, v in result.test.items()},
                "metrics_protocol": {
                    "split": args.split,
                    "test_fraction": args.test_fraction,
                    "k": args.k,
                },
                "tuning": {
                    "trials": result.trials,
                    "validation_ndcg": result.validation_ndcg,
                    "search_seconds": round(result.search_seconds, 1),
                    "seed": args.seed,
                },
            },
        )
        out["version"] = artifact.version
        out["models_dir"] = config.models_dir
        if not args.no_promote:
            try:
                promote(config.models_dir, artifact.version, force=args.force)
                out["promoted"] = True
            except FailedPrecondition:
                out["promoted"] = False
                out["comparison"] = compare(config.models_dir, artifact.version).table()
    print(json.dumps(out, indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from training import registry
    from training.artifact import read_meta

    models_dir = Config.load({"models_dir": args.models}).models_dir
    if args.action == "list":
        print(json.dumps(registry.list_models(models_dir), indent=2))
    elif args.action == "show":
        print(json.dumps(read_meta(models_dir, args.version), indent=2))
    elif args.action == "promote":
        comparison = registry.promote(models_dir, args.version, force=args.force)
        print(comparison.table())
        print(f"current: {args.version}")
    elif args.action == "rollback":
        print(f"current: {registry.rollback(models_dir)}")
    else:
        print(json.dumps(registry.diff(models_dir, args.a, args.b), indent=2))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _ks(text: str) -> tuple[int, ...]:
    """``--ks 5,10,20``: list lengths, each >= 1."""
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 5,10,20, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 like 5,10,20, got {text!r}")
    return ks


def _blend(text: str) -> dict[str, float]:
    from training.session_models import check_blend

    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError(part)
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected knn=W,rules=W,model=W, got {text!r}"
            ) from None
    try:
        return check_blend(weights)
    except SessionrecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.evaluate import evaluate

    config = _config(args)
    _spark_setup(args, _model_params(args), start=not args.quiet)
    if args.protocol == "next-item":
        return _evaluate_next_item(args, config)
    seed = 0 if args.seed is None else args.seed
    params = _model_params(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        events = store.item_events(with_sessions=args.split == "last-session")
    if not len(events):
        raise SessionrecError("store: no item events to evaluate on (import some first)")
    results = evaluate(
        events,
        args.algorithm,
        params,
        weights=_weights(args),
        k=args.k,
        test_fraction=args.test_fraction,
        split_method=args.split,
        progress=None if args.quiet else _stderr,
        ks=args.ks or (5, 10, 20),
        bootstrap=args.bootstrap,
        seed=seed,
    )
    run = results[0].run
    out: dict[str, Any] = {
        "protocol": args.split,
        "test_fraction": args.test_fraction,
        "k": args.k,
        "ks": run["ks"],
        "bootstrap": args.bootstrap,
        "confidence": run["confidence"],
        "seed": seed,
        "split": {
            key: run[key]
            for key in (
                "train_events",
                "test_events",
                "train_users",
                "items",
                "test_users",
                "evaluated_users",
            )
        },
        "results": [r.to_dict() for r in results],
    }
    by_name = {r.algorithm: r.metrics for r in results}
    if "popular" in by_name and args.algorithm != "popular" and by_name["popular"]["ndcg"] > 0:
        out["ndcg_ratio_vs_popular"] = round(
            by_name[args.algorithm]["ndcg"] / by_name["popular"]["ndcg"], 4
        )
    if args.html:
        from training.report import write_html_report

        write_html_report(args.html, results, run={**run, "db": config.db_url})
        out["html"] = str(args.html)
        if not args.quiet:
            _stderr(f"report: {args.html}")
    print(json.dumps(out, indent=2))
    return 0


def _evaluate_next_item(args: argparse.Namespace, config: Config) -> int:
    """``evaluate --protocol next-item``: session-based next-click prediction."""
    from sessionrec.store import open_store
    from training.next_item import evaluate_next_item

    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        events = store.item_events(with_sessions=True)
    if not len(events):
        raise SessionrecError("store: no item events to evaluate on (import some first)")
    ks = tuple(sorted(set(args.ks or (10, 20)) | {args.k}))
    results = evaluate_next_item(
        events,
        args.algorithm,
        _model_params(args),
        weights=_weights(args),
        test_days=args.test_days,
        ks=ks,
        live_boost=config.live_session_boost,
        max_predictions=args.max_predictions,
        seed=0 if args.seed is None else args.seed,
        progress=None if args.quiet else _stderr,
    )
    by_name = {r.algorithm: r.metrics for r in results}
    top = ks[-1]
    out: dict[str, Any] = {
        "protocol": "next-item",
        "test_days": args.test_days,
        "ks": list(ks),
        "results": [r.to_dict() for r in results],
        "blend_vs_sknn": {
            name: round(by_name["blend"][name] / by_name["sknn"][name], 4)
            for name in (f"hr@{top}", f"mrr@{top}")
            if by_name["sknn"][name] > 0
        },
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.catalog_import import import_catalog
    from training.importer import ImportFormatError

    config = _config(args)
    try:
        with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
            report = import_catalog(
                store,
                args.file,
                format=args.format,
                show_progress=not args.quiet,
                on_bad_row=lambda bad: _stderr(f"{args.file}:{bad.line}: {bad.reason}"),
            )
    except ImportFormatError as exc:
        raise SessionrecError(f"{args.file}: {exc}") from exc
    print(json.dumps(report.to_dict(max_bad=20), indent=2))
    if report.rows and len(report.bad) == report.rows:
        return 2
    return 0


def _offer_engine(config: Config, store: Any) -> Any:
    from service.catalog import Catalog
    from service.offers import OfferEngine
    from service.recommender import ModelHolder

    models = ModelHolder(config.models_dir)
    models.load_initial()
    catalog = Catalog(store)
    catalog.refresh()
    return OfferEngine(store, models, catalog, holdout_share=config.offer_holdout_share)


def _read_offers(path: str) -> list[Any]:
    """Offers from a JSON or YAML file: a list, or an object with "offers"."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SessionrecError(f"{path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SessionrecError(f"{path}: not valid JSON/YAML ({exc})") from exc
    if isinstance(data, dict) and "offers" in data:
        data = data["offers"]
    if not isinstance(data, list):
        raise SessionrecError(f"{path}: expected a list of offers (or {{'offers': [...]}})")
    return data


def cmd_offers(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store

    config = _config(args, models_dir=getattr(args, "models", None))
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        if args.action == "import":
            engine = _offer_engine(config, store)
            inserted, updated, rejected = engine.upsert(_read_offers(args.file))
            for r in rejected:
                _stderr(f"{args.file}: {r.error}")
            print(json.dumps({"inserted": inserted, "updated": updated, "rejected": len(rejected)}))
        elif args.action == "list":
            print(json.dumps([o.to_dict() for o in store.list_offers()], indent=2))
        else:  # report
            from service.offers import offer_report
            from sessionrec.offer_report import write_html_report

            report = offer_report(store, config.offer_holdout_share)
            if args.html:
                write_html_report(args.html, report)
                _stderr(f"report: {args.html}")
            print(json.dumps(report, indent=2, allow_nan=False))
    return 0


def cmd_push_candidates(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime as dt
    import os
    import secrets

    from service.push import PushCandidate, plan_push
    from service.recommender import RecommendationEngine
    from sessionrec.store import open_store

    config = _config(args, models_dir=args.models)
    quiet: tuple[int, int] | None = (
        getattr(config, "push_quiet_start_hour", 22),
        getattr(config, "push_quiet_end_hour", 8),
    )
    if args.quiet_hours is not None:  # START-END (local hours, [start, end)) or none
        text = args.quiet_hours.strip().lower()
        first, sep, last = text.partition("-")
        if text in {"none", "off"}:
            quiet = None
        elif sep and first.strip().isdigit() and last.strip().isdigit():
            quiet = (int(first), int(last))
        else:
            raise SessionrecError(
                f"--quiet-hours: expected START-END hours like 22-8 or none, got {text!r}"
            )
    max_per_user = args.max_per_user
    if max_per_user is None:
        max_per_user = getattr(config, "push_max_per_user", 1)
    window = args.cap_window_days
    if window is None:
        window = getattr(config, "push_cap_window_days", 7.0)
    out = Path(args.out)
    if not out.parent.is_dir():  # fail before planning
        raise SessionrecError(f"--out: no such directory {out.parent}")
    written: list[bool] = []

    def write(candidates: list[PushCandidate]) -> None:
        """The JSONL file, complete or not at all: a temp file next to it, renamed
        over it. Called before anything is recorded (inside the recording
        transaction), so a file that cannot be written caps nobody."""
        rows = []
        for c in candidates:
            row = dataclasses.asdict(c)
            sent = dt.datetime.fromtimestamp(c.send_at_ms / 1000, dt.UTC)
            row["send_at"] = sent.isoformat().replace("+00:00", "Z")
            rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        # Not mkstemp: its 0600 would replace the usual (umask) mode of the file.
        tmp = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(rows)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(True)

    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        offers = _offer_engine(config, store)
        recommender = RecommendationEngine(
            store,
            offers.models,
            catalog=offers.catalog,
            session_timeout_s=config.session_timeout_s,
        )
        try:
            plan = plan_push(
                store,
                recommender,
                offers,
                lapse_days=args.lapse_days,
                rhythm_factor=args.rhythm_factor,
                min_sessions=args.min_sessions,
                quiet_hours=quiet,
                max_per_user=max_per_user,
                cap_window_days=window,
                limit=args.limit,
                record=not args.dry_run,
                deliver=write,
            )
        except BaseException:
            if written and not args.dry_run:
                # Written, but the recording failed: a file nobody is capped for
                # must not be sent.
                out.unlink(missing_ok=True)
            raise
    now = dt.datetime.fromtimestamp(plan.now_ms / 1000, dt.UTC)
    summary = {
        **plan.summary(),
        "recorded": 0 if args.dry_run else len(plan.candidates),
        "dry_run": bool(args.dry_run),
        "now": now.isoformat().replace("+00:00", "Z"),
        "out": str(out),
    }
    print(json.dumps(summary))
    return 0


def _period(args: argparse.Namespace, parse: Callable[[str], int]) -> tuple[int | None, int | None]:
    """``--from`` and ``--to`` (``args.start``, ``args.end``) in ms, each parsed
    by ``parse`` (None: open); a bad or empty period names the option."""
    bounds: dict[str, int | None] = {}
    for flag, text in (("--from", args.start), ("--to", args.end)):
        bounds[flag] = None
        if text is not None:
            try:
                bounds[flag] = parse(text)
            except ValueError as exc:
                raise SessionrecError(f"{flag}: {exc}") from None
    start, end = bounds["--from"], bounds["--to"]
    if start is not None and end is not None and start >= end:
        raise SessionrecError(f"--from: must be before --to ({args.start} >= {args.end})")
    return start, end


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: the session analytics page of a store (:mod:`sessionrec.analytics_report`)."""
    from sessionrec.isotime import parse_iso_ms
    from sessionrec.store import open_store, sqlite_path_from_url

    start, end = _period(args, parse_iso_ms)
    config = _config(args)
    where = config.db_url
    if config.db_url.startswith("sqlite:"):
        db_file = Path(sqlite_path_from_url(config.db_url))
        if not db_file.is_file():
            raise SessionrecError(f"--db: no store file at {db_file}")
        where = str(db_file)
    else:
        from sessionrec.store.postgres import redact_url

        where = redact_url(config.db_url)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise SessionrecError(f"--out: no such directory {out.parent}")
    from sessionrec.analytics_report import PLATFORMS, write_report

    _stderr(f"report: reading {where}")
    # Opening the store brings its schema up to date; the days the report builds
    # are kept for the next one (and for the server).
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        try:
            stats = write_report(
                out,
                store,
                start_ms=start,
                end_ms=end,
                platform=None if args.platform is None else PLATFORMS[args.platform],
                app_version=args.app_version,
                segment=args.segment,
                cache=store.cache_analytics_days,
            )
        except ValueError as exc:
            raise SessionrecError(str(exc)) from exc
    _stderr(f"report: {out} ({stats['sessions']} sessions)")
    print(json.dumps(stats, indent=2, allow_nan=False))
    return 0


def _iso_ms(ms: int | None) -> str | None:
    from datetime import UTC, datetime

    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def cmd_keys(args: argparse.Namespace) -> int:
    from sessionrec.apikeys import create_key, revoke_key
    from sessionrec.store import ApiKeyRecord, open_store

    def public(k: ApiKeyRecord) -> dict[str, Any]:  # never the secret, nor its hash
        return {
            "key_id": k.key_id,
            "name": k.name,
            "role": k.role,
            "created_at": _iso_ms(k.created_at_ms),
            "revoked_at": _iso_ms(k.revoked_at_ms),
        }

    config = _config(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        if args.action == "create":
            key, record = create_key(store, args.name, args.role)
            print(json.dumps({**public(record), "key": key}, indent=2))
            _stderr(
                "warning: this is the only time the key is shown (only a hash of it is "
                "stored); keep it in a secret store now"
            )
        elif args.action == "list":
            print(json.dumps([public(k) for k in store.list_api_keys()], indent=2))
        else:  # revoke
            print(json.dumps(public(revoke_key(store, args.key_id)), indent=2))
    return 0


_DURATION_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}


def parse_age_ms(text: str) -> int:
    """``365d``, ``12h``, ``30m``, ``90s`` as milliseconds (> 0)."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:]) if value else None
    number = value[:-1]
    if unit is None or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise ValueError(f"expected a positive age like 365d, 12h, 30m or 90s, got {text!r}")
    return int(float(number) * unit)


def cmd_purge(args: argparse.Namespace) -> int:
    """``purge``: retention, removes what is older than ``--older-than``."""
    import time

    from sessionrec.store import open_store

    try:
        age_ms = parse_age_ms(args.older_than)
    except ValueError as exc:
        raise SessionrecError(f"--older-than: {exc}") from None
    before_ms = time.time_ns() // 1_000_000 - age_ms
    config = _config(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        deleted = store.purge_before(
            before_ms, progress=lambda n: _stderr(f"purge: {n:,} sessions removed so far")
        )
    print(json.dumps({"before_ms": before_ms, "deleted": deleted}))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """``quarantine``: the most recently rejected events, with why (JSON lines)."""
    from sessionrec.store import open_store

    if args.limit < 1:
        raise SessionrecError(f"--limit: must be >= 1, got {args.limit}")
    config = _config(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        for q in store.quarantined(args.limit):
            row = {
                "received_at_ms": q.received_at_ms,
                "error": q.error,
                "reason": q.reason,
                "event": json.loads(q.event),
            }
            print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``export``: events, sessions and the catalog as Parquet partitioned by day
    (:mod:`training.export`)."""
    from sessionrec.isotime import parse_iso_ms
    from sessionrec.store import open_store, sqlite_path_from_url
    from training.export import ExportError, check_target, export_parquet

    start, end = _period(args, parse_iso_ms)
    try:  # refused before anything is read
        check_target(args.out, overwrite=args.overwrite)
    except ExportError as exc:
        raise SessionrecError(f"--out: {exc}") from None
    config = _config(args)
    if config.db_url.startswith("sqlite:"):
        db_file = sqlite_path_from_url(config.db_url)
        if db_file != ":memory:" and not Path(db_file).is_file():
            raise SessionrecError(f"--db: no store file at {db_file}")
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        try:
            summary = export_parquet(
                store,
                args.out,
                start_ms=start,
                end_ms=end,
                batch_rows=args.batch_rows,
                overwrite=args.overwrite,
                show_progress=not args.quiet,
                progress=None if args.quiet else _stderr,
            )
        except ExportError as exc:
            raise SessionrecError(f"--out: {exc}") from None
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionrec",
        description="Sessions in, trained models out, real-time recommendations back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "push-candidates",
        help="lapsing users to bring back with a push: when, with which item and offer",
    )
    _add_db(p)
    p.add_argument("--models", default=None, help="models directory (the item to show)")
    p.add_argument("--out", required=True, help="JSONL file: one candidate per line")
    p.add_argument(
        "--lapse-days", type=float, default=7.0, help="no session for this long: lapsing (7)"
    )
    p.add_argument(
        "--rhythm-factor",
        type=float,
        default=3.0,
        help="also lapsing: silent for this many times the user's median gap (3)",
    )
    p.add_argument("--min-sessions", type=int, default=2, help="sessions a user needs (2)")
    p.add_argument(
        "--quiet-hours",
        default=None,
        help="local hours START-END without pushes, e.g. 22-8, or none (default: the config's)",
    )
    p.add_argument("--max-per-user", type=int, default=None, help="pushes per cap window (1)")
    p.add_argument("--cap-window-days", type=float, default=None, help="the cap's window (7)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many candidates (1000)")
    p.add_argument(
        "--dry-run", action="store_true", help="write the file, record nothing in push_log"
    )
    p.set_defaults(func=cmd_push_candidates)

    p = sub.add_parser(
        "report", help="session analytics of a store as one HTML page (stats JSON to stdout)"
    )
    _add_db(p)
    p.add_argument("--out", required=True, metavar="PATH", help="the HTML page to write")
    p.add_argument(
        "--from",
        dest="start",
        default=None,
        metavar="ISO",
        help="sessions starting at or after this date/time (ISO 8601; UTC unless a zone is given)",
    )
    p.add_argument(
        "--to",
        dest="end",
        default=None,
        metavar="ISO",
        help="sessions starting before this date/time (ISO 8601; UTC unless a zone is given)",
    )
    p.add_argument(
        "--platform",
        type=str.upper,
        choices=["IOS", "ANDROID", "WEB", "OTHER"],
        default=None,
        help="only sessions of this platform",
    )
    p.add_argument("--app-version", default=None, help="only sessions of this app version")
    p.add_argument(
        "--segment",
        type=str.upper,
        choices=["NEW_USER", "RETURNING_USER"],
        default=None,
        help="only users' first sessions (NEW_USER) or only their later ones (RETURNING_USER)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "purge",
        help="retention: remove ended sessions (with their events), quarantined events and "
        "offer/push logs older than an age",
    )
    _add_db(p)
    p.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 365d, 12h (d, h, m or s)"
    )
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("quarantine", help="the most recently rejected events and why (JSON lines)")
    _add_db(p)
    p.add_argument("--limit", type=int, default=100, help="how many (default 100)")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("offers", help="offer definitions and the uplift report")
    offers = p.add_subparsers(dest="action", required=True)
    q = offers.add_parser("import", help="insert or replace offers from a JSON or YAML file")
    _add_db(q)
    q.add_argument("--models", default=None, help="models directory (known items for targets)")
    q.add_argument("file")
    q.set_defaults(func=cmd_offers)
    q = offers.add_parser("list", help="print the stored offers as JSON")
    _add_db(q)
    q.set_defaults(func=cmd_offers)
    q = offers.add_parser("report", help="per offer: redemptions, treated vs holdout, uplift")
    _add_db(q)
    q.add_argument("--html", default=None, metavar="PATH", help="also write an HTML report")
    q.set_defaults(func=cmd_offers)

    p = sub.add_parser("serve", help="run the gRPC server")
    _add_db(p)
    p.add_argument("--models", default=None, help="models directory (default models)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 50051; 0: any)")
    p.add_argument("--session-timeout", type=float, default=None, help="seconds (default 1800)")
    p.add_argument(
        "--workers", type=int, default=None, help="gRPC worker threads per process (default 8)"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="server processes sharing the port (default 1; see README, 'Serving')",
    )
    p.add_argument("--log-level", default=None)
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain file")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="TLS private key file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys: create, list, revoke")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("create", help="create a key (printed once: store it now)")
    _add_db(q)
    q.add_argument("--name", required=True, help="who or what uses the key")
    q.add_argument(
        "--role",
        required=True,
        choices=["ingest", "serve", "admin"],
        help="ingest: app clients (sessions, events); serve: app backends; admin: everything",
    )
    q.set_defaults(func=cmd_keys)
    q = actions.add_parser("list", help="every key: id, name, role, created, revoked (no secrets)")
    _add_db(q)
    q.set_defaults(func=cmd_keys)
    q = actions.add_parser("revoke", help="revoke a key (servers refuse it within a second)")
    _add_db(q)
    q.add_argument("key_id")
    q.set_defaults(func=cmd_keys)

    p = sub.add_parser("import", help="import historical events (CSV or a public dataset format)")
    _add_db(p)
    p.add_argument("file")
    p.add_argument(
        "--format",
        default=None,
        choices=["csv", "movielens", "movielens-csv", "diginetica", "yoochoose", "mapped"],
        help="file format (default: mapped with --map, else detected from the header and name)",
    )
    p.add_argument(
        "--min-rating",
        type=float,
        default=None,
        help="movielens formats: skip ratings below this",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="mapped format: the file's column for a canonical field, repeatable",
    )
    p.add_argument(
        "--event-type",
        default=None,
        help="event type of every row (mapped: of rows without one; others: default ITEM_VIEW)",
    )
    p.add_argument(
        "--delimiter",
        default=None,
        help="mapped format: field separator ('\\t' or tab for TSV; default by extension)",
    )
    p.add_argument(
        "--timestamp-unit",
        choices=["s", "ms"],
        default="s",
        help="mapped format: unit of numeric timestamps (default s)",
    )
    p.add_argument(
        "--session-timeout",
        type=float,
        default=None,
        help="gap in seconds that splits sessions (default 1800)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="train a model and write a new artifact version")
    _add_db(p)
    p.add_argument("--models", default=None, help="models directory (default models)")
    _add_model_args(p)
    p.add_argument(
        "--no-promote", action="store_true", help="write the version without making it current"
    )
    p.add_argument(
        "--evaluate",
        type=int,
        default=None,
        metavar="K",
        help="first measure the configuration on the temporal 80/20 split; metrics at K go "
        "into the version (what `models promote` compares)",
    )
    p.add_argument(
        "--every",
        type=_duration_s,
        default=None,
        metavar="DURATION",
        help="retrain every 30m, 1h, ... and promote only a model that is not worse",
    )
    p.add_argument("--max-runs", type=int, default=None, help="with --every: stop after N runs")
    p.add_argument(
        "--no-session-model",
        action="store_true",
        help="skip the session models (session-kNN, sequential rules) blended with live sessions",
    )
    p.add_argument(
        "--blend",
        type=_blend,
        default=None,
        metavar="knn=W,rules=W,model=W",
        help="fix the live-session blend instead of choosing it on the latest training sessions",
    )
    p.add_argument(
        "--ann-min-items",
        type=int,
        default=None,
        metavar="N",
        help="catalogs of at least N items get an approximate nearest-neighbour index "
        "(faiss HNSW, tuned to recall@10 >= 0.96; default 100000)",
    )
    p.add_argument(
        "--events-parquet",
        default=None,
        metavar="DIR",
        help="read the item events from a Parquet export (`sessionrec export --out DIR`) with "
        "Spark instead of the store (needs pyspark; not with --evaluate, --every or "
        "--recency-half-life; no session models)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    from training.splits import SPLITS

    p = sub.add_parser("evaluate", help="offline evaluation on a split by time")
    _add_db(p)
    _add_model_args(p)
    p.add_argument(
        "--split",
        choices=sorted(SPLITS),
        default="temporal-fraction",
        help="per-user last fraction (default), one global time cut, or each user's last session",
    )
    p.add_argument("--k", type=int, default=10, help="the main list length (default 10)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument(
        "--ks",
        type=_ks,
        default=None,
        metavar="K,K,...",
        help="also report every metric at these k (default 5,10,20; next-item: 10,20; "
        "--k is always included)",
    )
    p.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=1000,
        metavar="N",
        help="bootstrap resamples of users for confidence intervals (default 1000; 0: none)",
    )
    p.add_argument("--html", default=None, metavar="PATH", help="also write an HTML report")
    p.add_argument(
        "--protocol",
        choices=("user", "next-item"),
        default="user",
        help="user: rank each user's held-out items (default); next-item: predict every next "
        "click of the sessions of the last --test-days, after training on earlier sessions",
    )
    p.add_argument(
        "--test-days",
        type=_positive_float,
        default=30.0,
        help="next-item: sessions starting in the last D days are the test set (default 30)",
    )
    p.add_argument(
        "--max-predictions",
        type=_positive_int,
        default=None,
        metavar="N",
        help="next-item: evaluate a seeded sample of N predictions (default all)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    from training.tune import DEFAULT_ALGORITHMS

    p = sub.add_parser(
        "tune",
        help="search algorithm, parameters and weighting on a validation split; "
        "report test metrics once; save (and promote) the winner",
    )
    _add_db(p)
    p.add_argument("--models", default=None, help="models directory (default models)")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="search time (default 10)")
    p.add_argument(
        "--trials", type=int, default=None, help="stop after N trials (reproducible runs)"
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--split", choices=sorted(SPLITS), default="temporal-fraction")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--algorithms", default=",".join(DEFAULT_ALGORITHMS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-save", action="store_true", help="report only, write no model")
    p.add_argument("--no-promote", action="store_true", help="save without making it current")
    p.add_argument("--force", action="store_true", help="promote even if it is worse")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("models", help="the model registry: list, show, promote, rollback, diff")
    p.add_argument("--models", default=None, help="models directory (default models)")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every version with its metrics")
    q = actions.add_parser("show", help="one version's metadata")
    q.add_argument("version")
    q = actions.add_parser("promote", help="make a version current (refused if worse)")
    q.add_argument("version")
    q.add_argument("--force", action="store_true")
    actions.add_parser("rollback", help="back to the previously promoted version")
    q = actions.add_parser("diff", help="what differs between two versions")
    q.add_argument("a")
    q.add_argument("b")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("catalog", help="the item catalog: import items")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser(
        "import",
        help="insert or update items from CSV or JSON lines (idempotent; bad rows are reported)",
    )
    _add_db(q)
    q.add_argument("file")
    q.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        default=None,
        help="default: jsonl for .jsonl/.ndjson/.json files, else csv",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser(
        "export",
        help="events, sessions and the item catalog as Parquet, partitioned by UTC day "
        "(for data lakes and Spark)",
    )
    _add_db(p)
    p.add_argument("--format", choices=["parquet"], default="parquet", help="(default parquet)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the export directory (written beside it, then renamed into place)",
    )
    p.add_argument(
        "--from",
        dest="start",
        default=None,
        metavar="DATE",
        help="events (by time) and sessions (by start) at or after this date or ISO date-time "
        "(UTC unless a zone is given)",
    )
    p.add_argument(
        "--to",
        dest="end",
        default=None,
        metavar="DATE",
        help="... and before this one (exclusive)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it holds a previous export"
    )
    p.add_argument(
        "--batch-rows",
        type=_positive_int,
        default=50_000,
        metavar="N",
        help="rows read per batch (bounds memory; default 50000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SessionrecError as exc:
        _stderr(f"sessionrec {args.command}: error: {exc}")
        return 2
    except OSError as exc:  # missing file, port in use, ...
        _stderr(f"sessionrec {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
