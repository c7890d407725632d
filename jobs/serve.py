"""Ray job entrypoint: serve a finished run (retrieve -> rerank -> predict) with Ray Serve.

    ray job submit --working-dir . -- python jobs/serve.py runs/rallrec_ml100k --port 8000

RUN_DIR is the output folder of a finished `ragrec run` (it holds run.json). Blocks until stopped.
The service has no authentication, so it listens on 127.0.0.1 unless --host says otherwise: reach it
through an SSH tunnel (`ray attach cluster.yaml -p 8000`, or `ssh -L 8000:localhost:8000 <head>`), or
pass --host 0.0.0.0 only behind a reverse proxy that authenticates (or on a private network).
Under overload a request gets 503 with Retry-After (--max-ongoing-requests, --max-queued-requests);
Ctrl-C or SIGTERM stops Serve and Ray and exits 0.
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
    p.add_argument(
        "--max-ongoing-requests", type=int, default=None, help="requests one ingress replica runs at once (64)"
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=None,
        help="requests queued beyond those (64; -1 unbounded); more get 503 with Retry-After",
    )
    p.add_argument("--retry-after-s", type=float, default=None, help="Retry-After of the 503 (1 s)")
    args = p.parse_args(argv)

    from ragrec.serving import serve_run  # lazy: the serving stack is only needed here

    names = ("max_ongoing_requests", "max_queued_requests", "retry_after_s")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    try:
        serve_run(args.run_dir, host=args.host, port=args.port, blocking=True, **options)
    except (FileNotFoundError, ValueError) as e:
        print(f"jobs/serve.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
