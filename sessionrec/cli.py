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


def cmd_import(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.importer import import_csv

    config = _config(args, session_timeout_s=args.session_timeout)
    with open_store(config.db_url, synchronous=config.sqlite_synchronous) as store:
        report = import_csv(
            store,
            args.file,
            session_timeout_s=config.session_timeout_s,
            show_progress=not args.quiet,
            on_bad_row=lambda bad: _stderr(f"{args.file}:{bad.line}: {bad.reason}"),
        )
    print(json.dumps(report.to_dict(max_bad=20), indent=2))
    if report.rows and not report.imported and not report.duplicates:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sessionrec.store import open_store
    from training.evaluate import evaluate

    config = _config(args)
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
    )
    out: dict[str, Any] = {
        "protocol": "per-user temporal fraction",
        "test_fraction": args.test_fraction,
        "k": args.k,
        "results": [r.to_dict() for r in results],
    }
    by_name = {r.algorithm: r.metrics for r in results}
    if "popular" in by_name and args.algorithm != "popular" and by_name["popular"]["ndcg"] > 0:
        out["ndcg_ratio_vs_popular"] = round(
            by_name[args.algorithm]["ndcg"] / by_name["popular"]["ndcg"], 4
        )
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

    p = sub.add_parser("import", help="import a CSV of historical events")
    _add_db(p)
    p.add_argument("file")
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

    p = sub.add_parser("evaluate", help="offline evaluation on a per-user temporal split")
    _add_db(p)
    _add_model_args(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--test-fraction", type=float, default=0.2)
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
