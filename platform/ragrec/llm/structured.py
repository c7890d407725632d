"""Labelled-line answers by construction: a logits processor that writes the labels itself.

Small models (SmolLM2-135M on a laptop) rarely follow a fixed output format such as ER2ALM's six
``label: text`` lines, and every malformed answer is information lost to the parser. With
``line_labels`` the engine forces the format while the model writes only the values:

* the answer opens with the tokens of ``"<labels[0]>:"``;
* the model then writes free text without special tokens; the line break is allowed only once the value
  has a non-blank token, and at most one blank token may come before it (no empty or all-blank values:
  SmolLM2-135M wrote ``plot/theme: \n`` when only the first token was checked);
* the plain line-break token ends the line (other tokens containing a line break are not allowed); the
  next label's tokens are forced after it;
* a line that reaches ``max_line_tokens`` free tokens is ended with a forced line break, so every label
  fits in the answer's token budget (:func:`line_budget`);
* after the last line's break, EOS is forced; EOS (or any special token) is never allowed earlier;
* ``values="number"``: a value is made of digit tokens only, a number in ``1..max_value`` (a pick's candidate
  number); a line that can take no further digit ends;
* ``values="weighted"`` (ER2ALM's profiles, Eq. 2-3): a text value, then `` [weight: 0.`` forced, two digits,
  then ``]``: ``plot/theme: dark crime dramas [weight: 0.63]``. The model's wish to end the line opens the
  weight, so it still decides where the text ends. The digits are the model's *expected* weight: its
  distribution over the first digit ``1``..``9`` at that point, E = sum p(d) d, written as round(10 E) (here
  E = 6.3). A sampled or greedy digit would be one value for nearly every answer (SmolLM2-135M wrote 0.7, the
  prompt's example, for all 96 weights of a slice); the expectation keeps what the model believes.

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
    (one EOS included); ValueError naming the fix when not even one token per value fits. ``label_token_counts``
    are the forced tokens of each line (:meth:`LabelledLines.fixed_token_counts`)."""
    n = len(label_token_counts)
    free = (max_new_tokens - sum(label_token_counts) - n - 1) // max(n, 1)
    if free < 1:
        need = sum(label_token_counts) + 2 * n + 1
        raise ValueError(
            f"max_new_tokens={max_new_tokens} cannot hold {n} labelled lines ({sum(label_token_counts)} forced "
            f"tokens): raise it to at least {need}"
        )
    return free


FORMAT_VERSION = 2  # 2: a line break only after a non-blank token (1: not as a value's first token)
"""Part of a forced-format stage's cache key (``line_format`` in its sampling spec): answers written under
another version are not reused."""

VALUE_KINDS = ("text", "number", "weighted")
_TEXT, _NUMBER_KIND, _EXPECTED = 0, 1, 2  # a segment's value: free text, a sampled number, an expected weight
_NUMBER = re.compile(r"\s*\d+")
WEIGHT_OPEN = " ["  # a weighted line's text ends with this token (the model's line break is moved onto it)
WEIGHT_PREFIX = "weight: 0."  # then forced, and the model writes 1-2 digits: a weight 0.1 .. 0.99
WEIGHT_CLOSE = "]"
WEIGHT_DIGITS_MAX = 99


@lru_cache(maxsize=8)
def _token_masks(tokenizer: Any, vocab: int) -> dict[str, torch.Tensor]:
    """Per token: ``newline`` (contains a line break), ``blank`` (only whitespace, or nothing), ``number``
    (digits, optionally after whitespace), ``lead_space`` (a number token that starts with whitespace),
    ``digits_value`` and ``digits_scale`` (the digits' value and 10 ** their count: appending the token to a
    number ``n`` gives ``n * scale + value``)."""
    pieces = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab))], skip_special_tokens=False)
    out = {k: torch.zeros(vocab, dtype=torch.bool) for k in ("newline", "blank", "number", "lead_space")}
    out["blank"][[i for i, p in enumerate(pieces) if not p.strip()]] = True
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


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"weighted lines need {text!r} to be one token of this tokenizer, got {len(ids)}")
    return int(ids[0])


class LabelledLines:
    """transformers ``LogitsProcessor`` (a callable ``(input_ids, scores) -> scores``) forcing
    ``len(labels)`` lines ``"<label>:<free text>\\n"`` (module docstring). One instance per ``generate`` call:
    it keeps the batch's state between steps.

    Internally the answer is a program of *segments*, each a forced prefix, then a value the model writes
    (text or a number) that ends with the segment's terminator token. A ``text`` / ``number`` line is one
    segment (prefix ``"<label>:"``, terminator the line break). A ``weighted`` line is two: the text (prefix
    ``"\\n<label>:"`` after the first line, terminator :data:`WEIGHT_OPEN`) and the weight (prefix
    :data:`WEIGHT_PREFIX`, the two digits of the expected weight, terminator :data:`WEIGHT_CLOSE`):
    ``plot/theme: dark crime [weight: 0.63]``.
    Where a terminator is not the line break, the model's probability of a line break is moved onto it: the
    model ends a value when it wants to, in the format the parser reads."""

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
        self.newline = newline_token_mask(tokenizer, vocab)
        self.blank = _token_masks(tokenizer, int(vocab))["blank"]
        (self.newline_id,) = tokenizer.encode("\n", add_special_tokens=False)[-1:]
        nl = int(self.newline_id)
        big = 10**9
        # the program: (prefix ids, value kind, max_value, terminator, leading-space digits allowed)
        segs: list[tuple[list[int], int, int, int, bool]] = []
        if values == "weighted":
            open_id, close_id = _single_token(tokenizer, WEIGHT_OPEN), _single_token(tokenizer, WEIGHT_CLOSE)
            wprefix = tokenizer.encode(WEIGHT_PREFIX, add_special_tokens=False)
            self.digit_ids = torch.tensor([_single_token(tokenizer, str(d)) for d in range(10)], dtype=torch.long)
            for k, label in enumerate(labels):
                head = ([nl] if k else []) + tokenizer.encode(f"{label}:", add_special_tokens=False)
                segs += [(head, _TEXT, big, open_id, True), (wprefix, _EXPECTED, WEIGHT_DIGITS_MAX, close_id, False)]
        else:
            kind = _NUMBER_KIND if values == "number" else _TEXT
            for label in labels:
                ids = tokenizer.encode(f"{label}:", add_special_tokens=False)
                segs.append((ids, kind, max_value if max_value is not None else big, nl, True))
        self.numbers = _number_tokens(tokenizer, vocab) if any(s[1] == _NUMBER_KIND for s in segs) else None
        width = max(len(s[0]) for s in segs)
        self.label_ids = torch.tensor([s[0] + [s[0][-1]] * (width - len(s[0])) for s in segs], dtype=torch.long)
        self.label_len = torch.tensor([len(s[0]) for s in segs], dtype=torch.long)
        self.seg_kind = torch.tensor([s[1] for s in segs], dtype=torch.long)
        self.seg_max = torch.tensor([s[2] for s in segs], dtype=torch.long)
        self.seg_term = torch.tensor([s[3] for s in segs], dtype=torch.long)
        self.seg_lead = torch.tensor([s[4] for s in segs], dtype=torch.bool)
        self.n_labels = len(segs)  # segments (= lines unless weighted)
        self.max_line = int(max_line_tokens)
        self.eos_id = int(tokenizer.eos_token_id)
        special = {self.eos_id, *(int(i) for i in tokenizer.all_special_ids)}
        self.special = torch.tensor(sorted(i for i in special if i < vocab), dtype=torch.long)
        self.state: dict[str, torch.Tensor] | None = None

    @staticmethod
    def label_token_counts(tokenizer: Any, labels: Sequence[str]) -> list[int]:
        return [len(tokenizer.encode(f"{label}:", add_special_tokens=False)) for label in labels]

    @staticmethod
    def fixed_token_counts(tokenizer: Any, labels: Sequence[str], values: str = "text") -> list[int]:
        """The tokens of each line that the model does not choose freely, for :func:`line_budget` (which adds
        one terminator per line and the EOS): the label, and for ``weighted`` lines the line break before it,
        :data:`WEIGHT_PREFIX`, two digits and :data:`WEIGHT_CLOSE`."""
        counts = LabelledLines.label_token_counts(tokenizer, labels)
        if values != "weighted":
            return counts
        extra = 1 + len(tokenizer.encode(WEIGHT_PREFIX, add_special_tokens=False)) + 2 + 1
        return [c + extra for c in counts]

    def _advance(self, last: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state after the token ``last`` (B,) was emitted."""
        s = self.state
        dev = last.device
        line, pos, free, num, inked = s["line"], s["pos"], s["free"], s["num"], s["inked"]
        seg = line.clamp(max=self.n_labels - 1)
        forcing = pos >= 0
        pos = torch.where(forcing, pos + 1, pos)
        label_done = forcing & (pos >= self.label_len.to(dev)[seg])
        pos = torch.where(label_done, torch.full_like(pos, -1), pos)
        free = torch.where(label_done, torch.zeros_like(free), free)
        num = torch.where(label_done, torch.zeros_like(num), num)
        inked = inked & ~label_done
        was_free = ~forcing & (line < self.n_labels)
        broke = was_free & (last == self.seg_term.to(dev)[seg])
        free = torch.where(was_free & ~broke, free + 1, free)
        inked = inked | (was_free & ~broke & ~self.blank.to(dev)[last])
        if self.numbers is not None:  # the running value of the segment's number
            _, value, scale, _ = self._number_tables(dev)
            v, sc = self._full(value, dev)[last], self._full(scale, dev)[last]
            num = torch.where(was_free & ~broke, num * sc + v, num)
        line = torch.where(broke, line + 1, line)
        next_label = broke & (line < self.n_labels)
        pos = torch.where(next_label, torch.zeros_like(pos), pos)
        free = torch.where(next_label, torch.zeros_like(free), free)
        num = torch.where(next_label, torch.zeros_like(num), num)
        inked = inked & ~next_label
        return {"line": line, "pos": pos, "free": free, "num": num, "inked": inked}

    def _number_tables(self, dev) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(dev) for t in self.numbers)

    def _full(self, column: torch.Tensor, dev) -> torch.Tensor:
        """A number-token column as a vocab-sized lookup (zeros elsewhere)."""
        ids = self.numbers[0].to(dev)
        out = torch.zeros(self.newline.shape[0], dtype=column.dtype, device=dev)
        out[ids] = column
        return out

    def _number_mask(self, out, rows, seg, free, num, dev) -> torch.Tensor:
        """``rows`` (writing a number) may take a number token that keeps the value in ``1..max_value`` (a token
        with leading whitespace only first, and only where the segment allows it), or the terminator once a
        digit is written; nothing else."""
        ids, value, scale, lead = self._number_tables(dev)
        if not len(rows):
            return out
        s = seg[rows]
        cand = num[rows, None] * scale[None, :] + value[None, :]  # (R, number tokens)
        ok = (cand >= 1) & (cand <= self.seg_max.to(dev)[s][:, None])
        ok &= ~lead[None, :] | ((free[rows, None] == 0) & self.seg_lead.to(dev)[s][:, None])
        allowed = torch.zeros(len(rows), out.shape[1], dtype=torch.bool, device=dev)
        allowed[:, ids] = ok
        allowed[torch.arange(len(rows), device=dev), self.seg_term.to(dev)[s]] = free[rows] > 0
        out[rows] = out[rows].masked_fill(~allowed, float("-inf"))
        return out

    def _expected_digits(self, rows, scores, free, term, force) -> torch.Tensor:
        """Force a weight's two digits: at its first digit the model's distribution over ``1``..``9`` gives the
        expected value ``E`` (1..9), written as ``round(10 E)`` (``0.63`` for E = 6.3); then the terminator."""
        dev = scores.device
        digits = self.digit_ids.to(dev)
        first = rows & (free == 0)
        if first.any():
            p = torch.softmax(scores[first][:, digits[1:]].float(), dim=-1)
            e = (p * torch.arange(1, 10, device=dev, dtype=p.dtype)).sum(-1)
            self.weight_value[first] = (e * 10).round().long().clamp(10, 90)
        v = self.weight_value
        force = torch.where(first, digits[v // 10], force)
        force = torch.where(rows & (free == 1), digits[v % 10], force)
        return torch.where(rows & (free >= 2), term, force)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, dev = scores.shape[0], scores.device
        if self.state is None:  # the first step: every row starts with the first label
            zeros = torch.zeros(b, dtype=torch.long, device=dev)
            self.state = {"line": zeros, "pos": zeros.clone(), "free": zeros.clone(), "num": zeros.clone()}
            self.state["inked"] = torch.zeros(b, dtype=torch.bool, device=dev)  # the value has a non-blank token
            self.weight_value = torch.full((b,), 10, dtype=torch.long, device=dev)
        else:
            self.state = self._advance(input_ids[:, -1].to(dev))
        line, pos, free = self.state["line"], self.state["pos"], self.state["free"]
        seg = line.clamp(max=self.n_labels - 1)
        term = self.seg_term.to(dev)[seg]
        kind = self.seg_kind.to(dev)[seg]
        is_num, expected = kind == _NUMBER_KIND, kind == _EXPECTED
        done = line >= self.n_labels
        forcing = (pos >= 0) & ~done
        label_tok = self.label_ids.to(dev)[seg, pos.clamp(min=0)]
        force = torch.full((b,), -1, dtype=torch.long, device=dev)
        force = torch.where(forcing, label_tok, force)
        force = torch.where(done, torch.full_like(force, self.eos_id), force)
        writing = ~forcing & ~done
        force = torch.where(writing & (free >= self.max_line), term, force)
        out = scores.clone()
        r_all = torch.arange(b, device=dev)
        # a terminator other than the line break takes the line break's probability: the model ends the value
        # when it wants to end the line
        moved = writing & (term != self.newline_id)
        if moved.any():
            rows = moved.nonzero(as_tuple=True)[0]
            out[rows, term[rows]] = torch.logaddexp(out[rows, term[rows]], out[rows, self.newline_id])
        # free text: no special token (EOS included) before the last line ends, no line break (but a text
        # line's own terminator), no terminator before the value's first non-blank token
        out[writing.nonzero(as_tuple=True)[0][:, None], self.special.to(dev)[None, :]] = float("-inf")
        if expected.any():  # a weight: the digits of the model's expected value, then the terminator
            force = self._expected_digits(writing & expected, scores, free, term, force)
        num_rows = (writing & is_num).nonzero(as_tuple=True)[0]
        if self.numbers is not None:  # a number value: digit tokens (in 1..max), then its terminator
            out = self._number_mask(out, num_rows, seg, free, self.state["num"], dev)
        text = writing & (kind == _TEXT)
        nl_cols = self.newline.to(dev)[: out.shape[1]]
        if text.any():
            term_score = out[r_all, term]
            out[text] = out[text].masked_fill(nl_cols, float("-inf"))
            inked = self.state["inked"]
            keep_term = text & inked
            out[keep_term, term[keep_term]] = term_score[keep_term]  # the line break, or the moved terminator
            empty = text & ~inked
            out[empty, term[empty]] = float("-inf")
            # one leading blank token at most (two when the line has room for no more), so every value gets
            # a non-blank token within its budget
            spaced = empty & ((free >= 1) | (free >= self.max_line - 1))
            out[spaced] = out[spaced].masked_fill(self.blank.to(dev)[: out.shape[1]], float("-inf"))
        rows = (force >= 0).nonzero(as_tuple=True)[0]
        if len(rows):
            keep = out[rows, force[rows]].clone()
            out[rows] = float("-inf")
            out[rows, force[rows]] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
        return out


def labelled_lines_regex(labels: Sequence[str], max_line_chars: int = 400, values: str = "text") -> str:
    """The same answer shape as a regex (vLLM structured outputs): ``label:`` + a non-blank value of at most
    ``max_line_chars`` chars after its leading blanks (``values``
    ``number``: an optional space and 1-4 digits; ``weighted``: text, then `` [weight: 0.`` and 1-2 digits and
    ``]``), one line per label."""
    text = f"[ \\t]*[^\\s][^\\n]{{0,{max_line_chars - 1}}}"  # not blank
    if values == "weighted":
        weight = f"{re.escape(WEIGHT_OPEN + WEIGHT_PREFIX)}[1-9][0-9]?{re.escape(WEIGHT_CLOSE)}"
        value = f"{text}{weight}"
    else:
        value = " ?[0-9]{1,4}" if values == "number" else text
    return "\n".join(f"{re.escape(label)}:{value}" for label in labels)
