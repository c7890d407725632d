"""Diagnostic: an ER2ALM evaluation row's GNN retrained with validation Recall@20 after every epoch.

    RAGREC_DATA_DIR=../shared/data python scripts/er2alm_valid_curve.py configs/er2alm_ml100k.yaml \\
        [--seed S] [--noise-seed S] [--no-aug] [--no-side] [--set key=value ...] [--out curve.json]

It takes the row's inputs from the artifact cache (``Pipeline.upstream``: features, candidates, picks; the
noise-control stage of ``--noise-seed``; computing whatever is missing, LLM stages included) and trains the GNN
of ``gnn`` with ``--seed`` (training and augmentation pairs; default: the config's seed, i.e. the row's first
seed) in this process, without writing a cache entry. ``--no-aug``: without the LLM's augmentation pairs;
``--no-side``: without side inputs (``--no-aug --no-side`` is the LightGCN row). Prints the best and the last
epoch's validation Recall@20 (training items masked) and every 20th epoch's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from ragrec.config import load_config
from ragrec.methods.er2alm import Pipeline
from ragrec.stages import er2alm as st
from ragrec.training.er2alm import augmented_pairs, train_er2alm
from ragrec.training.ray_train import TrainOptions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--seed", type=int, default=None, help="training + augmentation seed (default: the config's)")
    p.add_argument("--noise-seed", type=int, default=None, help="noise-control seed (default: --seed)")
    p.add_argument("--no-aug", action="store_true", help="without the augmentation pairs")
    p.add_argument("--no-side", action="store_true", help="without side inputs")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the per-epoch history as JSON here")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.set)
    seed = cfg.seed if args.seed is None else args.seed
    noise_seed = seed if args.noise_seed is None else args.noise_seed
    pipe = Pipeline(cfg)
    up = pipe.upstream()
    ds, samples = up["dataset"], up["samples"]
    n_users, n_items = st.sizes(ds)
    u, i = st.train_pairs(samples)
    t = samples.read_table("samples")
    valid = t.filter(pc.equal(t.column("split"), "valid"))
    eval_pairs = (valid.column("user_id").to_numpy(), valid.column("item_id").to_numpy())

    gnn = cfg.gnn.model_copy(update={"side": cfg.gnn.side and not args.no_side})
    kept = None
    if gnn.side and gnn.use_items:
        kept = np.load(st.noise_stage(pipe.store, cfg, up["features"], noise_seed).path / "kept.npy")
    features = st.load_features(up["features"]) if gnn.side else {}
    user_side, item_side = st.side_inputs(features, kept, gnn)
    pos = neg = None
    if cfg.augment.enabled and not args.no_aug:
        liked, disliked, _ = st.picked_pairs(up["candidates"], up["picks"])
        pos, neg = augmented_pairs(liked, disliked, len(u), cfg.augment.eta, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        res = train_er2alm(
            u, i, n_users, n_items, gnn, user_side=user_side, item_side=item_side, extra_pos=pos, extra_neg=neg,
            eval_pairs=eval_pairs, opts=TrainOptions(use_ray=False, seed=seed, out_dir=d),
        )  # fmt: skip
    curve = [h["recall@20"] for h in res.history]
    best = int(np.argmax(curve))
    what = f"seed {seed}, noise seed {noise_seed}, aug {pos is not None}, side {gnn.side}"
    print(f"{what}: valid Recall@20 best {curve[best]:.4f} (epoch {best}), last {curve[-1]:.4f}")
    print("every 20th epoch:", " ".join(f"{c:.4f}" for c in curve[::20]))
    if args.out:
        args.out.write_text(json.dumps(res.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
