"""``llm.actors: 0`` and ``ray.num_workers: 0``: the stages and trainings in this process, without Ray, with the
outputs of the Ray path and the same cache keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ragrec.artifacts import ArtifactStore
from ragrec.config import LLMConfig, RunConfig
from ragrec.stages import base as stage_base
from ragrec.stages import embed_stage, generate_stage, score_stage
from ragrec.training.ray_train import TrainOptions

PROMPTS = pa.table(
    {
        "item_id": pa.array(range(6), pa.int64()),
        "prompt": [f"Is film number {i} about {'space' if i % 2 else 'love'}? Answer yes or no." for i in range(6)],
    }
)
SAMPLING = {"max_new_tokens": 5, "temperature": 0.8, "top_p": 0.9, "seed": 3}


def _stages(root, actors: int) -> dict:
    store, llm = ArtifactStore(root), LLMConfig(model="tiny-random-llama", batch_size=2, actors=actors)
    common = {"key": "item_id", "llm_cfg": llm}
    arts = {
        "generate": generate_stage(
            store, "gen", PROMPTS, prompt="prompt", sampling=SAMPLING, block_size=2, **common
        ),  # 3 blocks, seeded per block
        "score": score_stage(store, "score", PROMPTS, prompt="prompt", adapter=None, block_size=4, **common),
        "embed": embed_stage(store, "emb", PROMPTS, text="prompt", encoder=None, block_size=4, **common),
    }
    return {op: (a.key, a.read_table()) for op, a in arts.items()}


def test_in_process_stages_equal_the_actor_pool_and_share_its_cache_keys(ray_session, tmp_path, monkeypatch):
    on_ray = _stages(tmp_path / "ray", actors=1)
    stage_base._IN_PROCESS.clear()
    monkeypatch.setattr("ragrec.runtime.init", lambda *a, **k: pytest.fail("actors: 0 must not start Ray"))
    local = _stages(tmp_path / "local", actors=0)
    for op in ("generate", "score", "embed"):
        assert local[op][0] == on_ray[op][0], f"{op}: llm.actors must not enter the cache key"
    assert local["generate"][1].column("text").to_pylist() == on_ray["generate"][1].column("text").to_pylist()
    np.testing.assert_allclose(
        local["score"][1].column("prob").to_numpy(), on_ray["score"][1].column("prob").to_numpy(), atol=1e-5
    )
    emb = [np.stack(t[1].column("embedding").to_numpy(zero_copy_only=False)) for t in (local["embed"], on_ray["embed"])]
    np.testing.assert_allclose(*emb, atol=1e-5)


def test_in_process_engine_is_loaded_once_across_stages(tmp_path, monkeypatch):
    import ragrec.llm

    loads = []
    real = ragrec.llm.load_engine
    monkeypatch.setattr(ragrec.llm, "load_engine", lambda cfg, **kw: loads.append(cfg.model) or real(cfg, **kw))
    stage_base._IN_PROCESS.clear()
    store, llm = ArtifactStore(tmp_path), LLMConfig(model="tiny-random-llama", batch_size=2, actors=0)
    common = {"key": "item_id", "prompt": "prompt", "llm_cfg": llm}
    generate_stage(store, "gen", PROMPTS, sampling=SAMPLING, block_size=3, **common)
    score_stage(store, "score", PROMPTS, adapter=None, **common)
    assert loads == ["tiny-random-llama"], "the second stage must reuse the loaded engine"
    other = LLMConfig(model="tiny-random-llama", batch_size=3, actors=0)
    score_stage(store, "score3", PROMPTS, key="item_id", prompt="prompt", llm_cfg=other, adapter=None)
    assert len(loads) == 2 and len(stage_base._IN_PROCESS) == 1, "another engine config replaces the kept one"


def test_num_workers_zero_trains_in_process_and_vllm_needs_actors():
    cfg = RunConfig.model_validate({"method": "rallrec", "ray": {"num_workers": 0}})
    opts = TrainOptions.from_config(cfg, out_dir="out")
    assert not opts.use_ray and opts.num_workers == 1
    assert TrainOptions.from_config(RunConfig.model_validate({"method": "rallrec"}), out_dir="out").use_ray
    with pytest.raises(ValueError, match=r"llm.actors: 0 .* llm.engine: hf only"):
        LLMConfig(engine="vllm", actors=0)


def test_in_process_stage_training_keeps_its_state_in_staging_and_drops_it_when_done(tmp_path):
    from types import SimpleNamespace

    from ragrec.training.ray_train import run_loop

    art = SimpleNamespace(staging=tmp_path / "key.partial", stage="toy", key="key")
    cfg = RunConfig.model_validate({"method": "rallrec", "ray": {"num_workers": 0}})
    opts = TrainOptions.for_stage(cfg, art, out="model")
    assert not opts.use_ray and opts.checkpoint_dir == art.staging / "train_state"  # a rerun after a kill resumes

    def loop(config: dict) -> str:
        for key in ("checkpoint_dir", "out_dir"):
            Path(config[key]).mkdir(parents=True)
            (Path(config[key]) / "f").write_text(key)
        return "done"

    assert run_loop(loop, opts.loop_config("toy"), opts, name="toy") == "done"
    assert not opts.checkpoint_dir.exists() and (art.staging / "model" / "f").read_text() == "out_dir"
