"""Generation stage: ``(key, prompt)`` rows -> ``(key, text)`` with the configured LLM engine."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore
from ..config import LLMConfig
from .base import _digest, _engine_spec, llm_table_compute

VERSION = "1"


def generate_stage(
    store: ArtifactStore,
    name: str,
    rows: pa.Table,
    *,
    key: str,
    prompt: str,
    llm_cfg: LLMConfig,
    sampling: dict,
    block_size: int,
    inputs: Iterable[Artifact] = (),
) -> Artifact:
    """Generate one text per row of ``rows[prompt]``; the artifact's table is ``(key, text)``.

    ``sampling``: max_new_tokens, temperature, top_p, seed. Each distinct sampling config (e.g. a
    temperature in a sweep) is its own artifact.
    """
    spec = {
        "llm": _engine_spec(llm_cfg),
        "sampling": sampling,
        "block_size": block_size,
        "n": rows.num_rows,
        "prompts": _digest(rows.column(prompt)),
    }
    compute = llm_table_compute(name, rows, key, prompt, "text", "generate", llm_cfg, block_size, params=sampling)
    return store.run(name, spec, inputs, compute, version=VERSION)
