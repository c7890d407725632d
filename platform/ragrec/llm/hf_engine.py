"""Transformers engine (CPU or GPU): batched generation, one-pass yes/no scoring, hidden-state embeddings.

Batching: prompts are tokenised once, sorted by length (longest first) and cut into batches of
``llm.batch_size`` so each batch pads little; results are written back in input order. Padding is on
the left, and ``position_ids`` are computed from the attention mask, so a prompt gets the same
logits alone or in a batch. Threads: whatever ``torch.get_num_threads()`` says (set it outside).

Chunked prefill: a forward pass reads at most ``llm.prefill_tokens`` padded tokens (default 4,096 on CPU),
because on CPU the cost per prompt token of one forward grows with the rows x width it holds (an ad-hoc probe
on 2 cores, not kept: 1,200-token prompts cost SmolLM2-135M about 1.7x as much a row in one forward of 16 as
in chunks of 4; at 600 tokens, about the same). So ``generate`` fills the KV cache of a batch chunk by chunk
(every prompt token but the last), joins the chunks and decodes the whole batch at once; ``score_yes_no`` and
``embed`` run their forwards chunk by chunk.
``benchmarks/bench_prefill.py``: 1.14x and 1.21x (two runs) on 64 prompts of 600-1,200 tokens with 32 new
tokens at batch 16. Larger decoding batches did not pay on CPU: batch 64 measured 0.8x there (a batch spans
more prompt lengths, so more padding).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .chat import add_special_tokens, fit_prompts, yes_no_token_ids
from .registry import load_causal_lm

if TYPE_CHECKING:
    import torch

    from ..config import LLMConfig
    from .engine import Sampling

log = logging.getLogger("ragrec.llm.hf")

PREFILL_TOKENS_CPU = 4096  # llm.prefill_tokens when null on CPU


@functools.cache
def cache_kwarg() -> str:
    """``generate``'s name for a prefilled KV cache: ``cache`` from transformers 5 (``past_key_values`` is
    deprecated there), ``past_key_values`` before (the project allows transformers >= 4.56)."""
    import transformers

    return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index arrays of at most ``batch_size`` items, longest first (stable for equal lengths)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_left(id_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 ``(b, max_len)`` with padding on the left."""
    import torch

    width = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, ids in enumerate(id_lists):
        if ids:
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
    return input_ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (0 at each row's first non-pad token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class HFEngine:
    """:class:`ragrec.llm.engine.Engine` on transformers; ``adapter_path`` = a peft LoRA folder (merged)."""

    def __init__(self, llm_cfg: LLMConfig, adapter_path: str | None = None) -> None:
        from ..runtime import device as pick_device

        self.cfg = llm_cfg
        self.device = pick_device(llm_cfg.device)
        kwargs: dict[str, Any] = {}
        if llm_cfg.load_in_8bit and self.device != "cpu":
            from transformers import BitsAndBytesConfig

            kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": self.device}
        self.model, self.tokenizer = load_causal_lm(llm_cfg.model, dtype=llm_cfg.dtype, device=self.device, **kwargs)
        self.tokenizer.truncation_side = "left"
        if adapter_path is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter_path)
            if not kwargs:  # merging into 8-bit weights would lose precision; keep the adapter separate
                self.model = self.model.merge_and_unload()
            self.model.eval()
        self.yes_id, self.no_id = yes_no_token_ids(self.tokenizer)
        self._special = add_special_tokens(self.tokenizer)

    # ------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        texts = fit_prompts(self.tokenizer, prompts, self.cfg.max_prompt_tokens)
        ids = self.tokenizer(texts, add_special_tokens=self._special)["input_ids"]
        limit = self.cfg.max_prompt_tokens
        return [x[-limit:] for x in ids]  # fit_prompts leaves a margin; this is only a guard

    def _batches(
        self, ids: list[list[int]], desc: str, chunked: bool = False
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``(rows, input_ids, mask)`` of each length-sorted batch; ``chunked``: of each row chunk of a batch
        under the prefill budget (:meth:`chunk_rows`), for forward passes only."""
        from tqdm.auto import tqdm

        batches = length_sorted_batches([len(x) for x in ids], self.cfg.batch_size)
        for idx in tqdm(batches, desc=desc, disable=not sys.stderr.isatty() or len(batches) < 2):
            step = self.chunk_rows(len(ids[idx[0]]), len(idx)) if chunked else len(idx)
            for s in range(0, len(idx), step):
                input_ids, mask = pad_left([ids[i] for i in idx[s : s + step]], self.tokenizer.pad_token_id)
                yield idx[s : s + step], input_ids.to(self.device), mask.to(self.device)

    def chunk_rows(self, width: int, rows: int) -> int:
        """Rows of ``width`` padded tokens per forward pass: under ``llm.prefill_tokens`` (module docstring)."""
        limit = self.cfg.prefill_tokens or (PREFILL_TOKENS_CPU if self.device == "cpu" else None)
        return rows if limit is None else max(1, min(rows, limit // max(width, 1)))

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """The KV cache of every prompt token but the last, filled in row chunks (:meth:`chunk_rows`) and joined
        along the batch; None when one chunk holds the batch (``generate`` then prefills it itself)."""
        import torch
        from transformers import DynamicCache

        ids, m = input_ids[:, :-1], mask[:, :-1]
        step = self.chunk_rows(input_ids.shape[1], len(ids))
        if step >= len(ids) or ids.shape[1] == 0:
            return None
        parts = [
            self.model(
                input_ids=ids[s : s + step],
                attention_mask=m[s : s + step],
                position_ids=position_ids_from_mask(m[s : s + step]),
                use_cache=True,
                logits_to_keep=1,
            )
            for s in range(0, len(ids), step)
        ]
        parts = [o["cache"] if "cache" in o.keys() else o["past_key_values"] for o in parts]  # transformers 5 / 4
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(parts[0].layers)):
            keys = torch.cat([p.layers[layer].keys for p in parts])
            values = torch.cat([p.layers[layer].values for p in parts])
            cache.update(keys, values, layer)
        return cache

    # ------------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """One completion per prompt (input order); seeded per batch by ``sampling.seed``; labelled lines
        (``sampling.line_labels``) through :class:`~ragrec.llm.structured.LabelledLines`."""
        import torch

        max_new_tokens, temperature, top_p, seed = (
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            sampling.seed,
        )

        out: list[str] = [""] * len(prompts)
        if not prompts:
            return out
        sample = temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample)
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:  # unset the model's sampling defaults so greedy decoding raises no warnings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.inference_mode():
            for b, (idx, input_ids, mask) in enumerate(self._batches(self._prompt_ids(prompts), "generate")):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed + b)
                    cache = self._prefill(input_ids, mask)
                    tokens = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=mask,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **({} if cache is None else {cache_kwarg(): cache}),
                        **kwargs,
                        **self._structure(sampling),
                    )
                texts = self.tokenizer.batch_decode(tokens[:, input_ids.shape[1] :], skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    out[i] = text.strip()
        return out

    def _structure(self, sampling: Sampling) -> dict[str, Any]:
        """``generate`` kwargs forcing labelled lines (a fresh processor per call: it holds the batch state)."""
        line_labels = sampling.line_labels
        if not line_labels:
            return {}
        from transformers import LogitsProcessorList

        from .structured import LabelledLines, line_budget

        budget = line_budget(
            sampling.max_new_tokens,
            LabelledLines.fixed_token_counts(self.tokenizer, line_labels, sampling.line_values),
        )
        vocab = self.model.get_output_embeddings().weight.shape[0]
        proc = LabelledLines(
            self.tokenizer, line_labels, budget, vocab, values=sampling.line_values, max_value=sampling.line_max
        )
        return {"logits_processor": LogitsProcessorList([proc])}

    def score_yes_no(self, prompts: list[str]) -> np.ndarray:
        """float32 ``(n,)`` P(yes): one forward per batch, logits of the last prompt position only."""
        import torch

        probs = np.zeros(len(prompts), dtype=np.float32)
        if not prompts:
            return probs
        pair = torch.tensor([self.yes_id, self.no_id], device=self.device)
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(self._prompt_ids(prompts), "score", chunked=True):
                logits = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    # an index, not the int 1: a contiguous (B, 1, d) row block for the LM head (see
                    # ragrec.training.lora.answer_loss: a strided slice multiplies against expanded head copies)
                    logits_to_keep=torch.tensor([input_ids.shape[1] - 1], device=input_ids.device),
                    use_cache=False,
                ).logits[:, -1, :]
                p = torch.softmax(logits.index_select(-1, pair).float(), dim=-1)[:, 0]
                probs[idx] = p.cpu().numpy()
        return probs

    def embed(self, texts: list[str], *, pooling: str = "mean", max_tokens: int = 256) -> np.ndarray:
        """float32 ``(n, hidden)``: mean over non-pad tokens (``"mean"``) or the last token (``"last"``)
        of the final hidden state (after the final norm = the input of ``lm_head``); raw texts, no
        template, truncated on the right to ``max_tokens``."""
        import torch

        if pooling not in ("mean", "last"):
            raise ValueError(f"embedding.pooling must be 'mean' or 'last', got '{pooling}'")
        hidden = self.model.config.hidden_size
        out = np.zeros((len(texts), hidden), dtype=np.float32)
        if not texts:
            return out
        # the tokenizer's truncation_side is "left" (prompts); texts keep their start, so cut here
        ids = [x[:max_tokens] or [self.tokenizer.pad_token_id] for x in self.tokenizer(list(texts))["input_ids"]]
        backbone = self.model.base_model
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(ids, "embed", chunked=True):
                h = backbone(
                    input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
                ).last_hidden_state.float()
                if pooling == "mean":
                    m = mask.unsqueeze(-1).to(h.dtype)
                    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
                else:
                    pooled = h[:, -1, :]
                out[idx] = pooled.cpu().numpy()
        return out
