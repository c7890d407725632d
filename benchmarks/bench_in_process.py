"""A whole small ``ragrec run`` in this process (``llm.actors: 0``, ``ray.num_workers: 0``) vs on Ray.

    python benchmarks/bench_in_process.py [--quick] [--config PATH]

Inputs: ``configs/demo.yaml`` (what ``make demo`` runs: RALLRec on the synthetic catalog with SmolLM2-135M;
``--quick``: the tiny-random-llama overrides of ``configs/sweep_demo.yaml``), each side on a fresh artifact
store, so every stage is computed.

* ragrec: ``llm.actors=0 ray.num_workers=0``: the LLM stages call the engine in this process (loaded once and
  kept), the trainings run their loops here.
* reference: the defaults: each LLM stage starts a Ray Data actor that loads the engine, each training starts
  a Ray Train worker group (a local Ray with the machine's CPUs, started before the timing).

The in-process side runs first, so warm file caches favour the reference. Verified: the same stages were
computed on both sides and the test predictions are equal (within 1e-3 in bfloat16, 1e-5 in float32). Cache keys
are not compared across the two stores: a key holds the content digests of the stage's inputs, and a training's
history records its wall times, so separately computed stores differ in the keys below the first training even
when every array is equal (``tests/unit/test_stages_in_process.py`` checks that the same stage on the same inputs
gets the same key either way). Units: the computed stages. Only wall time is compared: on the reference side the
work runs in Ray's worker processes, outside this process's CPU time.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, Measurement, Result, machine, parse_args, report, timed
from ragrec.config import load_config

BENCH = "in_process"
IN_PROCESS = ["llm.actors=0", "ray.num_workers=0"]
QUICK = [
    "data.synthetic={n_users: 40, n_items: 48, n_genres: 6, ratings_per_user: 16, seed: 0}",
    "llm.model=tiny-random-llama",
    "llm.max_prompt_tokens=256",
    "description.max_new_tokens=6",
    "description.block_size=24",
    "embedding.pca_dim=8",
    "embedding.max_tokens=32",
    "lightgcn={dim: 8, num_layers: 1, epochs: 2, batch_size: 256}",
    "projector={hidden_dim: 16, epochs: 2}",
    "lora={train_samples: 4, batch_size: 4, max_tokens: 192}",
    "eval={max_valid_samples: 24, max_test_samples: 24, bootstrap: 50}",
]


def _stage_keys(root: Path) -> dict[str, set[str]]:
    return {
        d.name: {p.name for p in d.iterdir() if (p / "manifest.json").exists()} for d in root.iterdir() if d.is_dir()
    }


def _run(config: Path, sets: list[str], tmp: Path, side: str):
    import pyarrow.parquet as pq

    from ragrec.methods import run

    cfg = load_config(config, [f"artifacts_dir={tmp / side}", f"output_dir={tmp / side / 'runs'}", *sets])
    res, timing = timed(lambda: run(cfg))
    preds = pq.read_table(res.run_dir / "predictions.parquet")
    return cfg, timing, _stage_keys(tmp / side), preds


def run(quick: bool = False, config: str | None = None) -> list[Result]:
    from ragrec.runtime import init

    path = Path(config) if config else REPO / "configs" / "demo.yaml"
    extra = QUICK if quick else []
    with tempfile.TemporaryDirectory(prefix="ragrec-bench-in-process-") as d:
        tmp = Path(d)
        cfg, t_local, keys_local, p_local = _run(path, [*extra, *IN_PROCESS], tmp, "in_process")
        init()  # the reference's Ray is up before its timing starts, as in a session that already uses Ray
        _, t_ray, keys_ray, p_ray = _run(path, extra, tmp, "ray")
    stages = sum(len(v) for v in keys_ray.values())
    tol = 1e-3 if cfg.llm.dtype in ("bfloat16", "float16") else 1e-5
    cols = [c for c in p_ray.column_names if c == "prob"] or [p_ray.column_names[-1]]
    diff = max(float(np.max(np.abs(p_local[c].to_numpy() - p_ray[c].to_numpy()))) for c in cols)
    notes = []
    if {s: len(k) for s, k in keys_local.items()} != {s: len(k) for s, k in keys_ray.items()}:
        notes.append(f"different stages computed: {sorted(keys_local)} vs {sorted(keys_ray)}")
    if diff > tol:
        notes.append(f"test predictions differ by up to {diff:.2e} (tolerance {tol:g})")
    return [
        Result(
            BENCH,
            f"ragrec run {path.name}" + (" --quick" if quick else ""),
            "stages",
            Measurement("Ray Data actors + Ray Train workers", stages, t_ray.wall),
            Measurement("in this process", stages, t_local.wall),
            verified=not notes,
            details={
                "machine": machine(),
                "stages computed (each side)": str(stages),
                "max |Δ prob| on test": f"{diff:.2e}",
                "wall seconds (reference / ragrec)": f"{t_ray.wall:.1f} / {t_local.wall:.1f}",
            },
            notes=notes,
        )
    ]


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, **{"--config": {"default": None, "help": "a config to run"}})
    report(run(args.quick, args.config), args)


if __name__ == "__main__":
    main()
