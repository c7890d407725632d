"""Scoring stage: CTR prompts -> P(yes) from one forward pass per batch (no ``generate``)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore
from ..config import LLMConfig
from .base import _digest, _engine_spec, llm_table_compute

VERSION = "1"


def score_stage(
    store: ArtifactStore,
    name: str,
    rows: pa.Table,
    *,
    adapter: Artifact | None,
    llm_cfg: LLMConfig,
    key: str,
    prompt: str,
    block_size: int = 64,
    inputs: Iterable[Artifact] = (),
) -> Artifact:
    """The artifact's table is ``(key, prob)`` with prob = softmax([yes, no])[0] at the answer position."""
    spec = {
        "llm": _engine_spec(llm_cfg),
        "adapter": adapter.key if adapter else None,
        "n": rows.num_rows,
        "prompts": _digest(rows.column(prompt)),
    }
    adapter_path = str(adapter.path / "adapter") if adapter is not None else None
    compute = llm_table_compute(
        name, rows, key, prompt, "prob", "score", llm_cfg, block_size, adapter_path=adapter_path
    )
    return store.run(name, spec, list(inputs) + ([adapter] if adapter else []), compute, version=VERSION)
