"""Labelled-line answers by construction: a logits processor that writes the labels itself.

Small models (SmolLM2-135M on a laptop) rarely follow a fixed output format such as ER2ALM's six
``label: text`` lines, and every malformed answer is information lost to the parser. With
``line_labels`` the engine forces the format while the model writes only the values:

* the answer opens with the tokens of ``"<labels[0]>:"``;
* the model then writes free text without special tokens; its first token may not be a line break (no
  empty values);
* the plain line-break token ends the line (other tokens containing a line break are not allowed); the
  next label's tokens are forced after it;
* a line that reaches ``max_line_tokens`` free tokens is ended with a forced line break, so every label
  fits in the answer's token budget (:func:`line_budget`);
* after the last line's break, EOS is forced; EOS (or any special token) is never allowed earlier;
* ``values="number"``: a value is made of digit tokens only, a number in ``1..max_value`` (a pick's candidate
  number); a line that can take no further digit ends.

The answer therefore always has exactly ``len(labels)`` lines, in order, each with a non-empty value:
the parsers (``parse_aspects``, ``parse_profiles``, ``parse_picks``) read it unchanged. Sampling
(temperature, top-p) applies to the free tokens only; a forced token is the only finite logit.

The state is kept as tensors over the batch and updated from the last generated token at each step: no
Python loop over rows. The processor is for transformers' ``generate`` (``hf`` engine); vLLM offers the
same through its structured outputs (a regex: :func:`labelled_lines_regex`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

__all__ = [
    "VALUE_KINDS",
    "LabelledLines",
    "labelled_lines_regex",
    "line_budget",
    "newline_token_mask",
    "number_token_mask",
]


def line_budget(max_new_tokens: int, label_token_counts: Sequence[int]) -> int:
    """Free tokens per line such that the labels, the values and the line breaks fit in ``max_new_tokens``
    (one EOS included); ValueError naming the fix when not even one token per value fits."""
    n = len(label_token_counts)
    free = (max_new_tokens - sum(label_token_counts) - n - 1) // max(n, 1)
    if free < 1:
        need = sum(label_token_counts) + 2 * n + 1
        raise ValueError(
            f"max_new_tokens={max_new_tokens} cannot hold {n} labelled lines ({sum(label_token_counts)} label "
            f"tokens): raise it to at least {need}"
        )
    return free


VALUE_KINDS = ("text", "number")
_NUMBER = re.compile(r"\s*\d+")


@lru_cache(maxsize=8)
def _token_masks(tokenizer: Any, vocab: int) -> dict[str, torch.Tensor]:
    """Per token: ``newline`` (contains a line break), ``number`` (digits, optionally after whitespace),
    ``lead_space`` (a number token that starts with whitespace), ``digits_value`` and ``digits_scale`` (the
    digits' value and 10 ** their count: appending the token to a number ``n`` gives ``n * scale + value``)."""
    pieces = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab))], skip_special_tokens=False)
    out = {k: torch.zeros(vocab, dtype=torch.bool) for k in ("newline", "number", "lead_space")}
    out["digits_value"] = torch.zeros(vocab, dtype=torch.long)
    out["digits_scale"] = torch.ones(vocab, dtype=torch.long)
    out["newline"][[i for i, p in enumerate(pieces) if "\n" in p]] = True
    nums = [(i, p) for i, p in enumerate(pieces) if _NUMBER.fullmatch(p) and len(p.strip()) <= 6]
    if nums:
        idx = torch.tensor([i for i, _ in nums])
        out["number"][idx] = True
        out["lead_space"][idx] = torch.tensor([p[0].isspace() for _, p in nums])
        out["digits_value"][idx] = torch.tensor([int(p.strip()) for _, p in nums])
        out["digits_scale"][idx] = torch.tensor([10 ** len(p.strip()) for _, p in nums])
    return out


def newline_token_mask(tokenizer: Any, vocab: int) -> torch.Tensor:
    """bool ``(vocab,)``: the tokens whose text contains a line break (cached per tokenizer)."""
    return _token_masks(tokenizer, int(vocab))["newline"]


def number_token_mask(tokenizer: Any, vocab: int) -> torch.Tensor:
    """bool ``(vocab,)``: the tokens made of digits, optionally after whitespace (`` 3``, ``12``)."""
    return _token_masks(tokenizer, int(vocab))["number"]


def _number_tokens(tokenizer: Any, vocab: int) -> tuple[torch.Tensor, ...]:
    """``(ids, value, scale, lead_space)`` of the number tokens (the columns a number value may use)."""
    m = _token_masks(tokenizer, int(vocab))
    ids = m["number"].nonzero(as_tuple=True)[0]
    return ids, m["digits_value"][ids], m["digits_scale"][ids], m["lead_space"][ids]


class LabelledLines:
    """transformers ``LogitsProcessor`` (a callable ``(input_ids, scores) -> scores``) forcing
    ``len(labels)`` lines ``"<label>:<free text>\\n"`` (module docstring). One instance per ``generate`` call:
    it keeps the batch's state between steps."""

    def __init__(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        max_line_tokens: int,
        vocab: int,
        values: str = "text",
        max_value: int | None = None,
    ) -> None:
        if not labels:
            raise ValueError("line_labels: give at least one label")
        if values not in VALUE_KINDS:
            raise ValueError(f"line values must be one of {VALUE_KINDS}, got {values!r}")
        if max_value is not None and (values != "number" or max_value < 1):
            raise ValueError(f"max_value {max_value}: only for number values, and at least 1")
        self.numbers = _number_tokens(tokenizer, vocab) if values == "number" else None
        self.max_value = max_value
        ids = [tokenizer.encode(f"{label}:", add_special_tokens=False) for label in labels]
        width = max(len(x) for x in ids)
        self.label_ids = torch.tensor([x + [x[-1]] * (width - len(x)) for x in ids], dtype=torch.long)
        self.label_len = torch.tensor([len(x) for x in ids], dtype=torch.long)
        self.n_labels = len(ids)
        self.max_line = int(max_line_tokens)
        self.newline = newline_token_mask(tokenizer, vocab)
        (self.newline_id,) = tokenizer.encode("\n", add_special_tokens=False)[-1:]
        self.eos_id = int(tokenizer.eos_token_id)
        special = {self.eos_id, *(int(i) for i in tokenizer.all_special_ids)}
        self.special = torch.tensor(sorted(i for i in special if i < vocab), dtype=torch.long)
        self.state: dict[str, torch.Tensor] | None = None

    @staticmethod
    def label_token_counts(tokenizer: Any, labels: Sequence[str]) -> list[int]:
        return [len(tokenizer.encode(f"{label}:", add_special_tokens=False)) for label in labels]

    def _advance(self, last: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state after the token ``last`` (B,) was emitted."""
        s = self.state
        dev = last.device
        line, pos, free, num = s["line"], s["pos"], s["free"], s["num"]
        forcing = pos >= 0
        pos = torch.where(forcing, pos + 1, pos)
        label_done = forcing & (pos >= self.label_len.to(dev)[line.clamp(max=self.n_labels - 1)])
        pos = torch.where(label_done, torch.full_like(pos, -1), pos)
        free = torch.where(label_done, torch.zeros_like(free), free)
        was_free = ~forcing
        broke = was_free & self.newline.to(dev)[last]
        free = torch.where(was_free & ~broke, free + 1, free)
        if self.numbers is not None:  # the running value of the line's number
            _, value, scale, _ = self._number_tables(dev)
            v, sc = self._full(value, dev)[last], self._full(scale, dev)[last]
            num = torch.where(was_free & ~broke, num * sc + v, num)
        line = torch.where(broke, line + 1, line)
        next_label = broke & (line < self.n_labels)
        pos = torch.where(next_label, torch.zeros_like(pos), pos)
        free = torch.where(next_label, torch.zeros_like(free), free)
        num = torch.where(next_label, torch.zeros_like(num), num)
        return {"line": line, "pos": pos, "free": free, "num": num}

    def _number_tables(self, dev) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(dev) for t in self.numbers)

    def _full(self, column: torch.Tensor, dev) -> torch.Tensor:
        """A number-token column as a vocab-sized lookup (zeros elsewhere)."""
        ids = self.numbers[0].to(dev)
        out = torch.zeros(self.newline.shape[0], dtype=column.dtype, device=dev)
        out[ids] = column
        return out

    def _number_mask(self, out, writing, free, num, dev) -> torch.Tensor:
        """Rows writing a number may take a number token that keeps the value in ``1..max_value`` (a token with
        leading whitespace only first), or the line break once a digit is written; nothing else."""
        ids, value, scale, lead = self._number_tables(dev)
        rows = writing.nonzero(as_tuple=True)[0]
        if not len(rows):
            return out
        cand = num[rows, None] * scale[None, :] + value[None, :]  # (R, number tokens)
        ok = cand >= 1
        if self.max_value is not None:
            ok &= cand <= self.max_value
        ok &= ~lead[None, :] | (free[rows, None] == 0)
        allowed = torch.zeros(len(rows), out.shape[1], dtype=torch.bool, device=dev)
        allowed[:, ids] = ok
        allowed[:, self.newline_id] = free[rows] > 0
        out[rows] = out[rows].masked_fill(~allowed, float("-inf"))
        return out

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, dev = scores.shape[0], scores.device
        if self.state is None:  # the first step: every row starts with the first label
            zeros = torch.zeros(b, dtype=torch.long, device=dev)
            self.state = {"line": zeros, "pos": zeros.clone(), "free": zeros.clone(), "num": zeros.clone()}
        else:
            self.state = self._advance(input_ids[:, -1].to(dev))
        line, pos, free = self.state["line"], self.state["pos"], self.state["free"]
        done = line >= self.n_labels
        forcing = (pos >= 0) & ~done
        label_tok = self.label_ids.to(dev)[line.clamp(max=self.n_labels - 1), pos.clamp(min=0)]
        force = torch.full((b,), -1, dtype=torch.long, device=dev)
        force = torch.where(forcing, label_tok, force)
        force = torch.where(done, torch.full_like(force, self.eos_id), force)
        writing = ~forcing & ~done
        force = torch.where(writing & (free >= self.max_line), torch.full_like(force, self.newline_id), force)
        out = scores.clone()
        # free text: no special token (EOS included) before the last line ends, no line break as a value's
        # first token
        out[writing.nonzero(as_tuple=True)[0][:, None], self.special.to(dev)[None, :]] = float("-inf")
        if self.numbers is not None:  # a number value: digit tokens (in 1..max_value), then a line break
            out = self._number_mask(out, writing, free, self.state["num"], dev)
        # a line ends with the plain line-break token only (not "\n   " or ".\n"): the next label starts clean
        other_nl = self.newline.to(dev)[: out.shape[1]].clone()
        other_nl[self.newline_id] = False
        out[writing] = out[writing].masked_fill(other_nl, float("-inf"))
        empty = writing & (free == 0)
        nl_cols = self.newline.to(dev)[: out.shape[1]]
        out[empty] = out[empty].masked_fill(nl_cols, float("-inf"))
        rows = (force >= 0).nonzero(as_tuple=True)[0]
        if len(rows):
            keep = out[rows, force[rows]].clone()
            out[rows] = float("-inf")
            out[rows, force[rows]] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
        return out


def labelled_lines_regex(labels: Sequence[str], max_line_chars: int = 400, values: str = "text") -> str:
    """The same answer shape as a regex (vLLM structured outputs): ``label:`` + 1..max chars (``values``
    ``number``: an optional space and 1-4 digits), one line per label."""
    value = " ?[0-9]{1,4}" if values == "number" else f"[^\\n]{{1,{max_line_chars}}}"
    return "\n".join(f"{re.escape(label)}:{value}" for label in labels)
