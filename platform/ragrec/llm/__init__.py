"""LLM engines (transformers, vLLM), the model registry and the prompt / yes-no contract."""

from .chat import ANSWER_NO, ANSWER_YES, fit_prompts, format_prompt, yes_no_token_ids
from .engine import Engine, Sampling, load_engine
from .registry import ModelSource, load_causal_lm, load_tokenizer, model_path, resolve

__all__ = [
    "ANSWER_NO",
    "ANSWER_YES",
    "Engine",
    "ModelSource",
    "Sampling",
    "fit_prompts",
    "format_prompt",
    "load_causal_lm",
    "load_engine",
    "load_tokenizer",
    "model_path",
    "resolve",
    "yes_no_token_ids",
]
