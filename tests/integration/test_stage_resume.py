"""A generation run killed mid-stage resumes at the first unfinished block and redoes none of the others."""

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from ragrec.artifacts import ArtifactStore
from ragrec.config import LLMConfig
from ragrec.stages import generate_stage

pytestmark = pytest.mark.ray

N_PROMPTS, BLOCK = 12, 2  # six blocks
LLM = LLMConfig(model="tiny-random-llama", batch_size=2)
SAMPLING = {"max_new_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 7}


def _rows():
    return pa.table(
        {
            "item_id": pa.array(range(N_PROMPTS), pa.int64()),
            "prompt": [f"Describe the film number {i} in a few words." for i in range(N_PROMPTS)],
        }
    )


def _run(root):
    return generate_stage(
        ArtifactStore(root),
        "descriptions",
        _rows(),
        key="item_id",
        prompt="prompt",
        llm_cfg=LLM,
        sampling=SAMPLING,
        block_size=BLOCK,
    )


SCRIPT = textwrap.dedent(f"""
    import pyarrow as pa
    from ragrec.artifacts import ArtifactStore
    from ragrec.config import LLMConfig
    from ragrec.stages import generate_stage
    rows = pa.table({{"item_id": pa.array(range({N_PROMPTS}), pa.int64()),
                     "prompt": [f"Describe the film number {{i}} in a few words." for i in range({N_PROMPTS})]}})
    generate_stage(ArtifactStore(__ROOT__), "descriptions", rows, key="item_id", prompt="prompt",
                   llm_cfg=LLMConfig(model="tiny-random-llama", batch_size=2), sampling={SAMPLING!r},
                   block_size={BLOCK})
""")


def test_killed_generation_resumes_without_redoing_finished_blocks(ray_session, tmp_path):
    import ray

    root = tmp_path / "artifacts"
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, RAGREC_FAULT_KILL_AFTER_BLOCKS="3")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("__ROOT__", repr(str(root)))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILLed mid-stage

    partial = next((root / "descriptions").glob("*.partial"))
    before = {int(p.stem): p.stat().st_mtime_ns for p in (partial / "blocks").glob("*.parquet")}
    assert len(before) == 3, "the killed run should have checkpointed exactly 3 of 6 blocks"
    published = [p for p in (root / "descriptions").iterdir() if not p.name.endswith(".partial")]
    assert published == [], "a killed stage must publish nothing"

    resumed = _run(root)
    m = resumed.manifest()
    assert sorted(m["blocks_reused"]) == sorted(before)
    assert sorted(m["blocks_computed"]) == sorted(set(range(N_PROMPTS // BLOCK)) - set(before))

    fresh = _run(tmp_path / "fresh")  # an uninterrupted run gives the same texts (seeded per block)
    assert fresh.manifest()["blocks_reused"] == []
    assert resumed.read_table().equals(fresh.read_table())
    assert resumed.read_table().column("item_id").to_pylist() == list(range(N_PROMPTS))


def test_finished_stage_is_not_recomputed(ray_session, tmp_path):
    first = _run(tmp_path)
    created = first.manifest()["created"]
    again = _run(tmp_path)
    assert again.key == first.key and again.manifest()["created"] == created
