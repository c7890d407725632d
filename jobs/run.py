"""Ray job entrypoint: run one experiment config.

    ray job submit --working-dir . -- python jobs/run.py configs/rallrec_ml100k.yaml --set eval.max_test_samples=500

Inside a Ray job RAY_ADDRESS is set, so ``ragrec.runtime.init`` connects to the cluster.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))

from ragrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
