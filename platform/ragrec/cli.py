"""``ragrec`` command line: run a method, fetch a dataset, show a config.

ragrec run configs/rallrec_ml100k.yaml [--set retrieval.k=20] [--force lora]
ragrec evaluate configs/rallrec_ml100k.yaml [--set eval.max_test_samples=300]
ragrec sweep configs/sweep_rallrec_ml100k.yaml
ragrec serve runs/rallrec_ml100k [--port 8000] [--no-batching]
ragrec data fetch ml-100k [--dest DIR] [--category C]   # docs/datasets.md: every dataset, its files and URL
ragrec data verify ml-100k [--path DIR]
ragrec data stats CONFIG_OR_NAME [--set ...]   # users, items, interactions, sparsity, positive rate
ragrec data check configs/rallrec_ml100k.yaml [--set ...]   # config + data files + split, nothing run
ragrec config show configs/rallrec_ml100k.yaml [--set ...]
ragrec cache ls|verify|gc [--artifacts DIR] [--runs DIR] [--dry-run]   # the artifact cache
ragrec check-llm [--model smollm2-135m-instruct] [--train 256]   # does tuning + scoring learn?
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml


def add_config_args(
    p: argparse.ArgumentParser,
    config_help: str = "YAML experiment config (see configs/)",
    *,
    metavar: str = "SECTION.FIELD=VALUE",
    set_help: str = "override a config field; repeatable",
) -> None:
    """The positional ``config`` and the repeatable ``--set`` override (``args.overrides``, a list) of ``p``."""
    p.add_argument("config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=set_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragrec", description="Retrieval-augmented LLM recommendation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a method end to end (cached stages are reused)")
    add_config_args(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE; repeatable")

    e = sub.add_parser("evaluate", help="the paper's evaluation: variants, baselines, K and alpha sweeps")
    add_config_args(e)
    e.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE; repeatable")

    w = sub.add_parser("sweep", help="Ray Tune search over a sweep config (objective on the validation split)")
    add_config_args(w)

    v = sub.add_parser("serve", help="serve a finished run with Ray Serve (POST /predict, GET /healthz)")
    v.add_argument("run_dir", help="output folder of a finished `ragrec run` (holds run.json)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--no-batching", action="store_true", help="score each request alone (no @serve.batch)")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    from .config import DATA_DIR_DATASETS as fetchable  # the datasets `data fetch` knows (docs/datasets.md)

    f = dsub.add_parser("fetch", help="download and verify an official dataset archive")
    f.add_argument("name", choices=fetchable)
    f.add_argument("--category", default=None, help="amazon-2018: the category, e.g. Movies_and_TV")
    f.add_argument(
        "--dest",
        default=os.environ.get("RAGREC_DATA_DIR", "data"),
        help="parent folder (default: $RAGREC_DATA_DIR or ./data)",
    )
    v = dsub.add_parser("verify", help="check the md5 of an existing dataset folder")
    v.add_argument("name", choices=fetchable)
    v.add_argument("--path", default=None, help="dataset folder (default: $RAGREC_DATA_DIR/NAME)")
    v.add_argument("--category", default=None, help="amazon-2018: the category whose files to check")
    st = dsub.add_parser("stats", help="users, items, interactions, sparsity and positive rate under the protocol")
    st.add_argument("target", metavar="CONFIG_OR_NAME", help="a YAML config, or a data.name (e.g. ml-10m)")
    st.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (e.g. data.protocol=rerank, data.category=Books); repeatable",
    )
    dc = dsub.add_parser("check", help="validate a config, its data files and its protocol split (runs no stage)")
    add_config_args(dc)

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
    add_config_args(s)

    from .cache_cli import add_parser as add_cache_parser  # standard library only

    add_cache_parser(sub)
    return parser


def _force_unmatched(force: list[str], stages) -> bool:
    """Report a ``--force`` name that matched no stage of the run (it recomputed nothing); True if any."""
    from .artifacts import unmatched_force_message

    err = unmatched_force_message(force, stages)
    if err:
        print(f"ragrec: error: {err}", file=sys.stderr)
    return bool(err)


def _one_line(e: BaseException) -> str:
    """An error message on one line: a ConfigError's field lines joined with '; ' after its first line."""
    first, *rest = str(e).splitlines() or [type(e).__name__]
    rest = [r.strip() for r in rest if r.strip()]
    return f"{first}: {'; '.join(rest)}" if rest else first


def _data_stats(target: str, overrides: list[str]) -> None:
    """Print :func:`ragrec.data.stats.dataset_stats` of a config file, or of the dataset ``target`` by name."""
    from .config import load_config
    from .data import load_dataset
    from .data.stats import dataset_stats, format_dataset_stats

    is_file = target.endswith((".yaml", ".yml")) or os.path.isfile(target)
    cfg = load_config(target, overrides) if is_file else load_config(None, [f"data.name={target}", *overrides])
    ds = load_dataset(cfg.data)
    if cfg.data.max_users:  # as the dataset stage does
        import pyarrow.compute as pc

        ds.interactions = ds.interactions.filter(pc.less(ds.interactions.column("user_id"), cfg.data.max_users))
    print(format_dataset_stats(dataset_stats(ds, cfg.data, seed=cfg.seed)))


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
        elif args.command == "cache":
            from .cache_cli import main as cache_main

            return cache_main(args)
        elif args.command == "config":
            cfg = load_config(args.config, args.overrides)
            from .methods import get_method

            print(yaml.safe_dump(get_method(cfg.method).config_dict(cfg), sort_keys=False))
        elif args.command == "data":
            from .data import fetch
            from .data.fetch import verify

            if args.data_command == "check":
                from .data.check import check_data

                print("\n".join(check_data(load_config(args.config, args.overrides)).lines()))
            elif args.data_command == "fetch":
                path = fetch(args.name, args.dest, category=args.category)
                print(f"{args.name} ready in {path}")
            elif args.data_command == "verify":
                path = args.path or os.path.join(os.environ.get("RAGREC_DATA_DIR", "data"), args.name)
                verify(args.name, path, category=args.category)
                from .data.fetch import archives

                known = any(a.file_md5 for a in archives(args.name, args.category))
                print(f"{args.name} in {path}: " + ("checksums match" if known else "the required files are present"))
            elif args.data_command == "stats":
                _data_stats(args.target, args.overrides)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"ragrec: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk while writing an artifact: one line, nothing half-published
        from .artifacts import ArtifactWriteError

        if not isinstance(e, ArtifactWriteError):
            raise
        print(f"ragrec: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
