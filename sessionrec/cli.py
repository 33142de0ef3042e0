"""``sessionrec`` command line: serve, import, train, evaluate.

A thin layer over ``service.server`` and the ``training`` package; progress
goes to stderr, results (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from sessionrec.config import DEFAULT_DB_URL, Config
from sessionrec.errors import SessionrecError

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
        "--seed", dest="random_state", type=int, default=None, help="alias of --random-state"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model parameter (JSON value), repeatable",
    )


def _model_params(args: argparse.Namespace) -> dict[str, Any]:
    from training.models import ALGORITHMS

    accepted = ALGORITHMS[args.algorithm].defaults
    params = {k: getattr(args, k) for k in PARAM_FLAGS if getattr(args, k) is not None}
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SessionrecError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SessionrecError(
            f"{unknown[0]}: not a parameter of {args.algorithm} "
            f"(it takes {', '.join(sorted(accepted)) or 'none'})"
        )
    return params


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
        log_level=args.log_level,
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
    from training.pipeline import train

    config = _config(args, models_dir=args.models)
    params = _model_params(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        artifact = train(
            store,
            config.models_dir,
            args.algorithm,
            params,
            make_current=not args.no_promote,
            show_progress=not args.quiet,
            progress=None if args.quiet else _stderr,
        )
    meta = artifact.meta
    print(
        json.dumps(
            {
                "version": artifact.version,
                "algorithm": artifact.algorithm,
                "params": artifact.params,
                "users": meta["users"],
                "items": meta["items"],
                "interactions": meta["interactions"],
                "load_seconds": meta["load_seconds"],
                "fit_seconds": meta["fit_seconds"],
                "current": not args.no_promote,
                "models_dir": config.models_dir,
            },
            indent=2,
        )
    )
    return 0


def _ks(text: str) -> tuple[int, ...]:
    """``--ks 5,10,20``: list lengths, each >= 1."""
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 5,10,20, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 like 5,10,20, got {text!r}")
    return ks


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.evaluate import evaluate
    from training.models import ALGORITHMS

    config = _config(args)
    seed = 0 if args.seed is None else args.seed
    # One --seed for the whole run: the bootstrap and, unless --random-state says
    # otherwise, the model (when it takes a seed).
    if (
        args.seed is not None
        and args.random_state is None
        and "random_state" in ALGORITHMS[args.algorithm].defaults
    ):
        args.random_state = args.seed
    params = _model_params(args)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        events = store.item_events()
    if not len(events):
        raise SessionrecError("store: no item events to evaluate on (import some first)")
    results = evaluate(
        events,
        args.algorithm,
        params,
        k=args.k,
        test_fraction=args.test_fraction,
        progress=None if args.quiet else _stderr,
        ks=args.ks,
        bootstrap=args.bootstrap,
        seed=seed,
    )
    run = results[0].run
    out: dict[str, Any] = {
        "protocol": "per-user temporal fraction",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionrec",
        description="Sessions in, trained models out, real-time recommendations back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server")
    _add_db(p)
    p.add_argument("--models", default=None, help="models directory (default models)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 50051; 0: any)")
    p.add_argument("--session-timeout", type=float, default=None, help="seconds (default 1800)")
    p.add_argument("--workers", type=int, default=None, help="gRPC worker threads")
    p.add_argument("--log-level", default=None)
    p.set_defaults(func=cmd_serve)

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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="offline evaluation on a per-user temporal split",
        conflict_handler="resolve",  # --seed: the run's seed here, not only the model's
    )
    _add_db(p)
    _add_model_args(p)
    p.add_argument("--k", type=int, default=10, help="the main list length (default 10)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument(
        "--ks",
        type=_ks,
        default=(5, 10, 20),
        metavar="K,K,...",
        help="also report every metric at these k (default 5,10,20; --k is always included)",
    )
    p.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=1000,
        metavar="N",
        help="bootstrap resamples of users for confidence intervals (default 1000; 0: none)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the bootstrap, and of the model unless --random-state is given (default 0)",
    )
    p.add_argument("--html", default=None, metavar="PATH", help="also write an HTML report")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)
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
