"""Generation stage: ``(key, prompt)`` rows -> ``(key, text)`` with the configured LLM engine."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore, spec_fields
from ..config import LLMConfig
from .base import run_llm_stage

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

    def compute(art: Artifact):
        out = run_llm_stage(
            art,
            rows.column(prompt).combine_chunks(),
            op="generate",
            llm_cfg=llm_cfg,
            params=sampling,
            block_size=block_size,
            desc=name,
        )
        art.write_table(pa.table({key: rows.column(key), "text": out.values}))
        return out.manifest()

    return store.run(name, spec, inputs, compute, version=VERSION)


def _engine_spec(llm_cfg: LLMConfig) -> dict:
    """The parts of the LLM config that change outputs (not batch size, actors or devices).

    ``dtype`` and ``load_in_8bit`` enter only when set away from their defaults, so that the keys of
    artifacts computed before they were part of the spec stay valid.
    """
    fields = ("model", "max_prompt_tokens", "dtype", "load_in_8bit")
    return spec_fields(llm_cfg, fields, late=("dtype", "load_in_8bit"))


def _digest(col: pa.ChunkedArray | pa.Array) -> str:
    import hashlib

    h = hashlib.sha256()
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        for buf in chunk.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    return h.hexdigest()[:16]
