"""Ray Data stages: generation, embedding and yes/no scoring over an actor pool, block-checkpointed."""

from .base import StageOutput, run_llm_stage
from .embed import embed_stage, embed_texts_stage, from_numpy, to_numpy
from .generate import generate_stage
from .score import score_stage

__all__ = [
    "StageOutput",
    "embed_stage",
    "embed_texts_stage",
    "from_numpy",
    "generate_stage",
    "run_llm_stage",
    "score_stage",
    "to_numpy",
]
