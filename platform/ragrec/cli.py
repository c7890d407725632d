"""``ragrec`` command line: run a method, fetch a dataset, show a config.

    ragrec run configs/rallrec_ml100k.yaml [--set retrieval.k=20] [--force lora]
    ragrec data fetch ml-100k [--dest DIR]
    ragrec data verify ml-100k [--path DIR]
    ragrec config show configs/rallrec_ml100k.yaml [--set ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragrec", description="Retrieval-augmented LLM recommendation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a method end to end (cached stages are reused)")
    _add_config_args(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE; repeatable")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download and verify an official dataset archive")
    f.add_argument("name", choices=["ml-100k", "ml-1m"])
    f.add_argument("--dest", default=os.environ.get("RAGREC_DATA_DIR", "data"),
                   help="parent folder (default: $RAGREC_DATA_DIR or ./data)")
    v = dsub.add_parser("verify", help="check the md5 of an existing dataset folder")
    v.add_argument("name", choices=["ml-100k", "ml-1m"])
    v.add_argument("--path", default=None, help="dataset folder (default: $RAGREC_DATA_DIR/NAME)")

    c = sub.add_parser("config", help="configs")
    csub = c.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser("show", help="print the fully resolved config")
    _add_config_args(s)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load_config
    from .runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "run":
            from .methods import run

            cfg = load_config(args.config, args.overrides)
            result = run(cfg, force=tuple(args.force))
            print(json.dumps(result.metrics["rows"][0], indent=2))
            print(f"report: {result.run_dir / 'report.md'}")
        elif args.command == "config":
            cfg = load_config(args.config, args.overrides)
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
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
