"""``ragrec`` command line: run a method, fetch a dataset, show a config.

ragrec run configs/rallrec_ml100k.yaml [--set retrieval.k=20] [--force lora]
ragrec evaluate configs/rallrec_ml100k.yaml [--set eval.max_test_samples=300]
ragrec sweep configs/sweep_rallrec_ml100k.yaml
ragrec serve runs/rallrec_ml100k [--port 8000] [--no-batching]
ragrec data fetch ml-100k [--dest DIR]
ragrec data verify ml-100k [--path DIR]
ragrec config show configs/rallrec_ml100k.yaml [--set ...]
ragrec check-llm [--model smollm2-135m-instruct] [--train 256]   # does tuning + scoring learn?
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragrec", description="Retrieval-augmented LLM recommendation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a method end to end (cached stages are reused)")
    _add_config_args(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE; repeatable")

    e = sub.add_parser("evaluate", help="the paper's evaluation: variants, baselines, K and alpha sweeps")
    _add_config_args(e)
    e.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE; repeatable")

    w = sub.add_parser("sweep", help="Ray Tune search over a sweep config (objective on the validation split)")
    _add_config_args(w)

    v = sub.add_parser("serve", help="serve a finished run with Ray Serve (POST /predict, GET /healthz)")
    v.add_argument("run_dir", help="output folder of a finished `ragrec run` (holds run.json)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--no-batching", action="store_true", help="score each request alone (no @serve.batch)")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download and verify an official dataset archive")
    f.add_argument("name", choices=["ml-100k", "ml-1m"])
    f.add_argument(
        "--dest",
        default=os.environ.get("RAGREC_DATA_DIR", "data"),
        help="parent folder (default: $RAGREC_DATA_DIR or ./data)",
    )
    v = dsub.add_parser("verify", help="check the md5 of an existing dataset folder")
    v.add_argument("name", choices=["ml-100k", "ml-1m"])
    v.add_argument("--path", default=None, help="dataset folder (default: $RAGREC_DATA_DIR/NAME)")

    k = sub.add_parser("check-llm", help="learnability check: tune and score a synthetic task with a known answer")
    k.add_argument("--model", default="smollm2-135m-instruct", help="llm.model (registry name, path or HF id)")
    k.add_argument("--dtype", default="auto", help="llm.dtype")
    k.add_argument("--train", type=int, default=256, help="training examples (default %(default)s)")
    k.add_argument("--test", type=int, default=200, help="held-out prompts (default %(default)s)")
    k.add_argument("--epochs", type=int, default=2)
    k.add_argument("--lr", type=float, default=3e-3)

    c = sub.add_parser("config", help="configs")
    csub = c.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser("show", help="print the fully resolved config")
    _add_config_args(s)
    return parser


def _force_unmatched(force: list[str], stages) -> bool:
    """Report a ``--force`` name that matched no stage of the run (it recomputed nothing); True if any."""
    from .artifacts import unmatched_force_message

    err = unmatched_force_message(force, stages)
    if err:
        print(f"ragrec: error: {err}", file=sys.stderr)
    return bool(err)


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load_config
    from .runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "run":
            from .artifacts import recording_stages
            from .methods import run

            cfg = load_config(args.config, args.overrides)
            with recording_stages() as stages:
                result = run(cfg, force=tuple(args.force))
            print(json.dumps(result.metrics["rows"][0], indent=2))
            print(f"report: {result.run_dir / 'report.md'}")
            if _force_unmatched(args.force, stages):
                return 2
        elif args.command == "evaluate":
            from .artifacts import recording_stages
            from .evaluation.report import format_rows
            from .methods import evaluate, get_method

            cfg = load_config(args.config, args.overrides)
            with recording_stages() as stages:
                result = evaluate(cfg, force=tuple(args.force))
            table = result.metrics.get("table")  # a ranking evaluation's own summary table
            print(table if table is not None else format_rows(result.metrics["rows"], get_method(cfg.method).title))
            print(f"report: {result.run_dir / 'report.md'}")
            if _force_unmatched(args.force, stages):
                return 2
        elif args.command == "sweep":
            from .tuning import run_sweep

            res = run_sweep(args.config, args.overrides)
            print(json.dumps({"best": res.best_config, "valid": res.valid, "test": res.test}, indent=2))
            print(f"results: {res.out_dir / 'results.md'}")
        elif args.command == "serve":
            from .serving import serve_run

            serve_run(args.run_dir, host=args.host, port=args.port, batching=not args.no_batching, blocking=True)
        elif args.command == "check-llm":
            from .config import LLMConfig
            from .evaluation.learnability import DEFAULT_LORA, check_learnability

            lora = DEFAULT_LORA.model_copy(update={"epochs": args.epochs, "lr": args.lr})
            res = check_learnability(
                LLMConfig(model=args.model, dtype=args.dtype), lora, n_train=args.train, n_test=args.test
            )
            print(res.line())
            if res.auc_tuned < 0.9:
                print(
                    "ragrec: the tuned model did not learn a task that its prompts state: check the model's "
                    "chat template and yes/no tokens, or raise --train / --epochs",
                    file=sys.stderr,
                )
                return 1
        elif args.command == "config":
            cfg = load_config(args.config, args.overrides)
            from .methods import get_method

            print(yaml.safe_dump(get_method(cfg.method).config_dict(cfg), sort_keys=False))
        elif args.command == "data":
            from .data import fetch
            from .data.fetch import verify

            if args.data_command == "fetch":
                path = fetch(args.name, args.dest)
                print(f"{args.name} ready in {path}")
            else:
                path = args.path or os.path.join(os.environ.get("RAGREC_DATA_DIR", "data"), args.name)
                verify(args.name, path)
                print(f"{args.name} in {path}: checksums match")
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"ragrec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
