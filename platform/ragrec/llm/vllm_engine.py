"""vLLM backend for GPU clusters: Ray Data LLM processors, plus an in-actor :class:`VLLMEngine`.

Both paths prepare prompts exactly like :class:`ragrec.llm.hf_engine.HFEngine`: our own
:func:`~ragrec.llm.chat.fit_prompts` (chat template + left truncation of the user text to
``llm.max_prompt_tokens``) and our own tokenisation (``add_special_tokens`` from
:func:`~ragrec.llm.chat.add_special_tokens`, so a template that writes BOS does not get a second
one). Ray's chat-template and tokenize stages are therefore disabled; the preprocess function emits
``prompt`` and ``tokenized_prompt`` itself.

Scoring reads next-token logprobs (``max_tokens=1``, ``temperature=0``, ``logprobs=20``) and
renormalises over the Yes/No tokens: ``p = exp(lp_yes) / (exp(lp_yes) + exp(lp_no))``, the same
value as the HF engine's softmax over the two logits. Fallback when a token is missing from the top
20: its logprob is at most the smallest logprob listed, so that bound stands in for it (a
conservative estimate: the listed token wins by at least this margin); when neither is listed the
score is 0.5 and ``score_found`` is False for that row.

``vllm`` is imported only when an engine is actually built (it is in the ``gpu`` extra only).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .chat import add_special_tokens, fit_prompts, yes_no_token_ids
from .registry import allow_download, model_path, resolve

if TYPE_CHECKING:
    from ..config import LLMConfig
    from .engine import Sampling

SCORE_TOP_LOGPROBS = 20
TEXT_COLUMN = "text"
GENERATED_COLUMN = "generated_text"
SCORE_COLUMN = "p_yes"
FOUND_COLUMN = "score_found"

# columns the Ray LLM stages add to a row; postprocess drops them and keeps the caller's columns
_ENGINE_COLUMNS = frozenset(
    {
        "prompt",
        "tokenized_prompt",
        "prompt_token_ids",
        "sampling_params",
        "messages",
        "model",
        "generated_tokens",
        "generated_text",
        "num_generated_tokens",
        "num_input_tokens",
        "logprobs",
        "prompt_logprobs",
        "metrics",
        "embeddings",
        "time_taken_llm",
        "params",
        "request_id",
        "batch_uuid",
        "__inference_error__",
    }
)


# ---------------------------------------------------------------------------------------------
# model source / config
# ---------------------------------------------------------------------------------------------
def model_source(llm_cfg: LLMConfig) -> str:
    """What vLLM loads: a Hugging Face id as is (each node fetches it), else a local folder.

    Registry names resolve to the driver's cache folder: on a multi-node cluster point
    ``RAGREC_CACHE`` at shared storage (the embedded models are meant for laptops / CI anyway).
    """
    src = resolve(llm_cfg.model)
    if not src.builtin and src.path is None:
        return src.name
    return model_path(llm_cfg.model)


def engine_kwargs(llm_cfg: LLMConfig, max_new_tokens: int, adapter_path: str | None = None) -> dict[str, Any]:
    """``vllm.LLM`` / ``AsyncEngineArgs`` kwargs derived from the LLM config."""
    kwargs: dict[str, Any] = dict(
        dtype=llm_cfg.dtype,
        max_model_len=llm_cfg.max_prompt_tokens + max_new_tokens,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        max_num_seqs=max(llm_cfg.batch_size, 1),
    )
    if llm_cfg.load_in_8bit:
        kwargs["quantization"] = "bitsandbytes"
    if adapter_path is not None:
        kwargs.update(enable_lora=True, max_lora_rank=64, max_loras=1)
    return kwargs


def processor_config(llm_cfg: LLMConfig, max_new_tokens: int, adapter_path: str | None = None) -> Any:
    """``ray.data.llm.vLLMEngineProcessorConfig`` for this LLM config (our own prompt preparation)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=model_source(llm_cfg),
        engine_kwargs=engine_kwargs(llm_cfg, max_new_tokens, adapter_path),
        batch_size=llm_cfg.batch_size,
        concurrency=llm_cfg.actors,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=True,
        runtime_env={"env_vars": _forwarded_env()},
    )


def _forwarded_env() -> dict[str, str]:
    """Driver settings the workers' tokenizer loading must see (cache folder, download permission)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    for key in ("RAGREC_CACHE", "RAGREC_ALLOW_DOWNLOAD", "HF_HOME", "HF_HUB_OFFLINE"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


# ---------------------------------------------------------------------------------------------
# row functions (pure, picklable through functools.partial)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=not allow_download())


def prepare_row(
    row: Mapping[str, Any],
    *,
    source: str,
    sampling: Mapping[str, Any],
    max_prompt_tokens: int,
    text_column: str = TEXT_COLUMN,
    adapter_path: str | None = None,
) -> dict[str, Any]:
    """Input row -> row with ``prompt``, ``tokenized_prompt`` and ``sampling_params`` (+ its columns)."""
    if text_column not in row:
        raise KeyError(f"vLLM preprocess: the input row has no '{text_column}' column (columns: {sorted(row)})")
    tok = _tokenizer(source)
    prompt = fit_prompts(tok, [str(row[text_column])], max_prompt_tokens)[0]
    ids = tok(prompt, add_special_tokens=add_special_tokens(tok))["input_ids"][-max_prompt_tokens:]
    out = dict(row)
    out.update(prompt=prompt, tokenized_prompt=list(ids), sampling_params=dict(sampling))
    if adapter_path is not None:
        out["model"] = adapter_path  # a model other than the stage's = a LoRA request
    return out


def _caller_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _ENGINE_COLUMNS}


def generation_postprocess(row: Mapping[str, Any]) -> dict[str, Any]:
    """Engine output row -> caller's columns + ``generated_text`` (stripped)."""
    out = _caller_columns(row)
    out[GENERATED_COLUMN] = str(row.get("generated_text") or "").strip()
    return out


def _entry_logprob(entry: Any) -> float:
    if isinstance(entry, Mapping):
        return float(entry["logprob"])
    if hasattr(entry, "logprob"):
        return float(entry.logprob)
    return float(entry)


def yes_probability(top_logprobs: Mapping[Any, Any] | None, yes_id: int, no_id: int) -> tuple[float, bool]:
    """``(P(yes), found)`` from one position's top logprobs ``{token_id: logprob | {"logprob": ..}}``.

    Keys may be ints or strings (after an Arrow round trip). See the module docstring for the
    fallback when Yes or No is missing from the list.
    """
    if not top_logprobs:
        return 0.5, False
    lps = {int(k): _entry_logprob(v) for k, v in top_logprobs.items()}
    floor = min(lps.values())
    lp_yes, lp_no = lps.get(yes_id), lps.get(no_id)
    if lp_yes is None and lp_no is None:
        return 0.5, False
    lp_yes = floor if lp_yes is None else lp_yes
    lp_no = floor if lp_no is None else lp_no
    return 1.0 / (1.0 + math.exp(lp_no - lp_yes)), True


def scoring_postprocess(row: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Engine output row -> caller's columns + ``p_yes`` (float) + ``score_found`` (bool)."""
    yes_id, no_id = yes_no_token_ids(_tokenizer(source))
    steps = row.get("logprobs")
    first = steps[0] if steps is not None and len(steps) else None
    p, found = yes_probability(first, yes_id, no_id)
    out = _caller_columns(row)
    out[SCORE_COLUMN] = float(p)
    out[FOUND_COLUMN] = bool(found)
    return out


def generation_sampling(s: Sampling) -> dict[str, Any]:
    """vLLM ``SamplingParams`` kwargs for generation (``temperature == 0``: greedy). ``line_labels``: vLLM's
    structured outputs with :func:`~ragrec.llm.structured.labelled_lines_regex` (``ray.data.llm`` turns the
    ``structured_outputs`` dict into ``StructuredOutputsParams``; :func:`sampling_params` does it here)."""
    out = dict(max_tokens=s.max_new_tokens, temperature=float(s.temperature), top_p=float(s.top_p), seed=int(s.seed))
    if s.line_labels:
        from .structured import labelled_lines_regex

        out["structured_outputs"] = {"regex": labelled_lines_regex(s.line_labels, values=s.line_values)}
    return out


def sampling_params(vllm: Any, kwargs: Mapping[str, Any]) -> Any:
    """``vllm.SamplingParams`` of :func:`generation_sampling` kwargs (the ``structured_outputs`` dict converted)."""
    kwargs = dict(kwargs)
    structured = kwargs.pop("structured_outputs", None)
    if structured:
        kwargs["structured_outputs"] = vllm.sampling_params.StructuredOutputsParams(**structured)
    return vllm.SamplingParams(**kwargs)


def scoring_sampling() -> dict[str, Any]:
    """vLLM ``SamplingParams`` kwargs for yes/no scoring: one greedy token, top-20 logprobs."""
    return dict(max_tokens=1, temperature=0.0, logprobs=SCORE_TOP_LOGPROBS)


# ---------------------------------------------------------------------------------------------
# processors
# ---------------------------------------------------------------------------------------------
def generation_functions(
    llm_cfg: LLMConfig, sampling: Mapping[str, Any], text_column: str = TEXT_COLUMN, adapter_path: str | None = None
) -> tuple[Any, Any]:
    """``(preprocess, postprocess)`` row functions of the generation processor."""
    pre = functools.partial(
        prepare_row,
        source=model_source(llm_cfg),
        sampling=dict(sampling),
        max_prompt_tokens=llm_cfg.max_prompt_tokens,
        text_column=text_column,
        adapter_path=adapter_path,
    )
    return pre, generation_postprocess


def scoring_functions(
    llm_cfg: LLMConfig, text_column: str = TEXT_COLUMN, adapter_path: str | None = None
) -> tuple[Any, Any]:
    """``(preprocess, postprocess)`` row functions of the scoring processor."""
    source = model_source(llm_cfg)
    pre = functools.partial(
        prepare_row,
        source=source,
        sampling=scoring_sampling(),
        max_prompt_tokens=llm_cfg.max_prompt_tokens,
        text_column=text_column,
        adapter_path=adapter_path,
    )
    return pre, functools.partial(scoring_postprocess, source=source)


def build_generation_processor(
    llm_cfg: LLMConfig,
    sampling: Mapping[str, Any],
    *,
    text_column: str = TEXT_COLUMN,
    adapter_path: str | None = None,
) -> Any:
    """Ray Data processor: rows with ``text_column`` -> same rows + ``generated_text``.

    ``sampling`` = :func:`generation_sampling` kwargs (``max_tokens``, ``temperature``, ``top_p``,
    ``seed``). Apply it as ``processor(ds)``.
    """
    from ray.data.llm import build_processor

    pre, post = generation_functions(llm_cfg, sampling, text_column, adapter_path)
    config = processor_config(llm_cfg, int(sampling.get("max_tokens", 16)), adapter_path)
    return build_processor(config, preprocess=pre, postprocess=post)


def build_scoring_processor(
    llm_cfg: LLMConfig, *, text_column: str = TEXT_COLUMN, adapter_path: str | None = None
) -> Any:
    """Ray Data processor: rows with ``text_column`` -> same rows + ``p_yes`` + ``score_found``."""
    from ray.data.llm import build_processor

    pre, post = scoring_functions(llm_cfg, text_column, adapter_path)
    return build_processor(processor_config(llm_cfg, 1, adapter_path), preprocess=pre, postprocess=post)


# ---------------------------------------------------------------------------------------------
# in-actor engine (the Engine protocol on vllm.LLM)
# ---------------------------------------------------------------------------------------------
class VLLMEngine:
    """:class:`ragrec.llm.engine.Engine` on an offline ``vllm.LLM`` (one per Ray actor / GPU)."""

    def __init__(self, llm_cfg: LLMConfig, adapter_path: str | None = None, max_new_tokens: int = 512) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "llm.engine='vllm' needs vllm on the GPU nodes: install the gpu extra (`pip install .[gpu]`)"
            ) from e
        self.cfg = llm_cfg
        self.source = model_source(llm_cfg)
        self.llm = vllm.LLM(model=self.source, **engine_kwargs(llm_cfg, max_new_tokens, adapter_path))
        self.tokenizer = _tokenizer(self.source)
        self.yes_id, self.no_id = yes_no_token_ids(self.tokenizer)
        self.lora = None
        if adapter_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("ragrec-adapter", 1, adapter_path)

    def _inputs(self, prompts: list[str]) -> list[dict[str, list[int]]]:
        texts = fit_prompts(self.tokenizer, prompts, self.cfg.max_prompt_tokens)
        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens(self.tokenizer))["input_ids"]
        return [{"prompt_token_ids": x[-self.cfg.max_prompt_tokens :]} for x in ids]

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        import vllm

        params = sampling_params(vllm, generation_sampling(sampling))
        outs = self.llm.generate(self._inputs(prompts), params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    def score_yes_no(self, prompts: list[str]) -> np.ndarray:
        import vllm

        outs = self.llm.generate(
            self._inputs(prompts), vllm.SamplingParams(**scoring_sampling()), lora_request=self.lora, use_tqdm=False
        )
        return np.array(
            [yes_probability(o.outputs[0].logprobs[0], self.yes_id, self.no_id)[0] for o in outs], dtype=np.float32
        )

    def embed(self, texts: list[str], *, pooling: str = "mean", max_tokens: int = 256) -> np.ndarray:
        raise NotImplementedError(
            "the vllm engine does not expose hidden states: embed with llm.engine='hf' or set "
            "embedding.model to a sentence encoder (e.g. minilm-l6)"
        )
