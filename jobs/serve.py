"""Ray job entrypoint: serve a finished run (retrieve -> rerank -> predict) with Ray Serve.

    ray job submit --working-dir . -- python jobs/serve.py runs/rallrec_ml100k --port 8000

RUN_DIR is the output folder of a finished `ragrec run` (it holds run.json). Blocks until stopped.
The service has no authentication, so it listens on 127.0.0.1 unless --host says otherwise: reach it
through an SSH tunnel (`ray attach cluster.yaml -p 8000`, or `ssh -L 8000:localhost:8000 <head>`), or
pass --host 0.0.0.0 only behind a reverse proxy that authenticates (or on a private network).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jobs/serve.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="output folder of a finished run (runs/<name>/)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="HTTP host of the Serve proxy (default: 127.0.0.1, this machine only; the API has no "
        "authentication: use 0.0.0.0 only behind an authenticating reverse proxy or on a private network)",
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the Serve proxy (default: 8000)")
    args = p.parse_args(argv)

    from ragrec.serving import serve_run  # lazy: the serving stack is only needed here

    try:
        serve_run(args.run_dir, host=args.host, port=args.port, blocking=True)
    except FileNotFoundError as e:
        print(f"jobs/serve.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
