"""The engine interface shared by the transformers (``hf``) and ``vllm`` backends.

All methods take *raw user texts*; the engine applies :func:`ragrec.llm.chat.format_prompt` and the
left truncation to ``llm.max_prompt_tokens`` itself (``embed`` embeds the raw text, no template).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..config import LLMConfig


@dataclass(frozen=True)
class Sampling:
    """How :meth:`Engine.generate` samples. ``temperature == 0``: greedy. ``line_labels``: every completion is
    ``len(line_labels)`` lines ``"<label>: <value>"`` by construction, each value free text or
    (``line_values="number"``) a number, in ``1..line_max`` when given, or (``"weighted"``) text ending with
    ``[weight: 0.xx]`` (:mod:`ragrec.llm.structured`)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    line_labels: tuple[str, ...] | None = None
    line_values: str = "text"
    line_max: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], seed_offset: int = 0) -> Sampling:
        """From a generation stage's ``sampling`` dict (its cache-key form), the seed moved by ``seed_offset``."""
        labels = params.get("line_labels")
        return cls(
            max_new_tokens=int(params["max_new_tokens"]),
            temperature=float(params.get("temperature", 0.0)),
            top_p=float(params.get("top_p", 1.0)),
            seed=int(params.get("seed", 0)) + seed_offset,
            line_labels=tuple(labels) if labels else None,
            line_values=params.get("line_values", "text"),
            line_max=params.get("line_max"),
        )


@runtime_checkable
class Engine(Protocol):
    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """One completion per prompt, in input order, sampled as ``sampling`` says."""
        ...

    def score_yes_no(self, prompts: list[str]) -> np.ndarray:
        """float32 ``(n,)``: P(yes) = softmax([logit_yes, logit_no])[0] at the answer position."""
        ...

    def embed(self, texts: list[str], *, pooling: str = "mean", max_tokens: int = 256) -> np.ndarray:
        """float32 ``(n, hidden)``: final hidden state (the input of ``lm_head``) pooled over tokens."""
        ...


def load_engine(llm_cfg: LLMConfig, adapter_path: str | None = None) -> Engine:
    """Build the engine named by ``llm_cfg.engine`` (``hf`` or ``vllm``), optionally with a LoRA adapter."""
    if llm_cfg.engine == "hf":
        from .hf_engine import HFEngine

        return HFEngine(llm_cfg, adapter_path=adapter_path)
    if llm_cfg.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(llm_cfg, adapter_path=adapter_path)
    raise ValueError(f"llm.engine must be 'hf' or 'vllm', got '{llm_cfg.engine}'")
