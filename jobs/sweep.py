"""Ray job entrypoint: a Ray Tune sweep (objective on validation, best config reported on test).

    ray job submit --working-dir . -- python jobs/sweep.py configs/sweep_rallrec_ml100k.yaml --set num_samples=1

Inside a Ray job RAY_ADDRESS is set, so the sweep's trials run on the cluster. Prints the best
configuration and its metrics as JSON, and the path of results.md.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))


def main(argv=None) -> int:
    from ragrec.cli import add_config_args

    p = argparse.ArgumentParser(prog="jobs/sweep.py", description=__doc__.splitlines()[0])
    add_config_args(
        p,
        "sweep YAML (see configs/sweep_*.yaml)",
        metavar="FIELD=VALUE",
        set_help="override a sweep field (num_samples=2) or a base run-config field (eval.max_valid_samples=100)",
    )
    args = p.parse_args(argv)

    from ragrec.config import ConfigError
    from ragrec.tuning import run_sweep

    try:
        result = run_sweep(args.config, args.overrides)
    except ConfigError as e:
        print(f"jobs/sweep.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"best_config": result.best_config, "valid": result.valid, "test": result.test}, indent=2))
    print(f"results: {result.out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
