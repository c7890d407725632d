"""The ``lora`` stage: instruction-tune a LoRA adapter on a method's ``examples`` artifact under Ray
Train (:func:`ragrec.training.lora.train_lora`). Every method that tunes an LLM (RALLRec, SCoRe) calls it;
the adapter and the per-step loss history (``history.json``) are the artifact."""

from __future__ import annotations

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig

VERSION = "2"
"""The stage's code version (part of the cache key): 2 = ``lora.precision`` bfloat16 stores the frozen base
weights in bfloat16 instead of autocasting a float32 model, so no adapter of the old trainer is reused."""

LORA_CHECKPOINT_STEPS = 200
"""The lora stage checkpoints every this many optimizer steps (and after every epoch but the last);
``RAGREC_LORA_CHECKPOINT_STEPS`` overrides, 0 = epoch ends only."""


def lora_stage(store: ArtifactStore, cfg: RunConfig, examples_art: Artifact) -> Artifact:
    """LoRA tuning under Ray Train. Resumable: Ray Train checkpoints at the stage's own place
    (:func:`~ragrec.training.ray_train.stage_storage`: ``ray.storage_path/lora/<key>``, else ``ray_train/`` in
    the artifact's ``<key>.partial/`` folder) every :data:`LORA_CHECKPOINT_STEPS` optimizer steps and every epoch
    end, so a killed run, rerun, continues from its latest checkpoint; removed once the adapter is written."""
    import os

    from ..training.lora import train_lora
    from ..training.ray_train import TrainOptions

    def compute(art: Artifact):
        steps = int(os.environ.get("RAGREC_LORA_CHECKPOINT_STEPS", LORA_CHECKPOINT_STEPS)) or None
        res = train_lora(
            examples_art.read_table(),
            cfg.llm.model,
            cfg.lora,
            opts=TrainOptions.for_stage(cfg, art, out="adapter"),
            load_in_8bit=cfg.llm.load_in_8bit,
            checkpoint_steps=steps,
        )
        art.write_json(res.history, "history")
        return {"rows": examples_art.manifest()["rows"]}

    spec = {"lora": cfg.lora.model_dump(), "model": cfg.llm.model, "seed": cfg.seed}
    return store.run("lora", spec, [examples_art], compute, version=VERSION)
