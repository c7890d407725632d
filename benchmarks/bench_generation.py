"""LLM description generation: ragrec's batched ``HFEngine.generate`` vs one item at a time ``model.generate``.

    python benchmarks/bench_generation.py [--quick] [--items N] [--max-new-tokens T] [--batch-size B] [--model NAME]

Inputs: RALLRec description prompts (``ragrec.methods.rallrec.description_prompts`` with the default
``description.template``) of the first N items of MovieLens-100K (``$RAGREC_DATA_DIR/ml-100k``; else
the synthetic catalog). Model: SmolLM2-135M-Instruct from the registry, float32 on CPU (``--quick``:
tiny-random-llama on a small synthetic catalog). Both sides decode greedily for the same
``max_new_tokens`` (so outputs can be compared) and use the same model object.

* ragrec: ``HFEngine.generate`` as the generation stage calls it: prompts tokenised once, sorted by
  length, left-padded batches of ``llm.batch_size``, one ``model.generate`` per batch.
* reference: one ``model.generate`` per item on the unpadded chat-formatted prompt.

Outputs: the fraction of items whose text is identical. Batched greedy decoding with padding computes
the same logits up to float summation order, so an output may leave the reference's path where two
tokens are (nearly) tied. Every differing output is checked: at its first differing token the
reference model's top-2 logit gap (one unpadded forward of prompt + the common prefix) must be below
``NEAR_TIE_LOGIT``; a larger gap means the batched path computed something else, and the result is not
verified. Fraction of matmul peak: ``2 * n_params * (prompt + generated tokens) / seconds`` (decoding
is memory-bound, so expect a small figure); peak memory: RSS growth during the call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scoring import RSS_INTERVAL_S, bench_data, peak_gflops, prompt_token_ids, reference_generate_each
from benchmarks.common import (
    Measurement,
    Result,
    Timing,
    lm_matmul_params,
    lm_peak_fraction,
    machine,
    parse_args,
    report,
    timed_with_rss,
)
from ragrec.config import DescriptionConfig, LLMConfig, SyntheticConfig

BENCH = "generation"
GOAL = 3.0
FULL_ITEMS = 16
QUICK_ITEMS = 10
FULL_NEW_TOKENS = 48
QUICK_NEW_TOKENS = 12
FULL_MODEL = "smollm2-135m-instruct"
QUICK_MODEL = "tiny-random-llama"
QUICK_DATA = SyntheticConfig(n_users=20, n_items=40, ratings_per_user=10)
NEAR_TIE_LOGIT = 0.02
"""A differing output is accepted when the reference's top-2 logits at the first differing token are
closer than this (float32 batch-vs-single differences are ~1e-4 here; real logit gaps are O(1))."""
MIN_IDENTICAL = 0.5
"""Below this fraction of identical outputs the result is not verified, even if every split is a near tie."""


def description_prompt_texts(n: int, quick: bool = False) -> tuple[list[str], str]:
    """``(prompts, source)``: ragrec's description prompts of the first ``n`` items of the catalog."""
    from ragrec.data import load_dataset
    from ragrec.methods.rallrec import description_prompts

    cfg, source = bench_data(quick, QUICK_DATA, lambda shape: f"{shape.n_items} items")
    items = load_dataset(cfg).items
    if items.num_rows < n:
        raise ValueError(f"{source}: {items.num_rows} items, fewer than the {n} asked for; lower --items")
    table = description_prompts(items.slice(0, n), DescriptionConfig().template)
    return table.column("prompt").to_pylist(), f"{source}: first {n} items, default description template"


def reference_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Generated token ids per prompt, one greedy ``model.generate`` call per prompt (no padding)."""
    return [tokens[0, n:].tolist() for n, tokens in reference_generate_each(model, tokenizer, prompts, max_new_tokens)]


def decode(tokenizer, ids: list[int]) -> str:
    """The engine's post-processing: special tokens skipped, whitespace stripped."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def common_prefix_tokens(tokenizer, ref_ids: list[int], text: str) -> int:
    """Number of leading reference tokens whose decoded text is still a prefix of ``text``."""
    k = 0
    while k < len(ref_ids) and text.startswith(tokenizer.decode(ref_ids[: k + 1], skip_special_tokens=True).lstrip()):
        k += 1
    return k


def top2_gap(model, prompt_ids: list[int], prefix: list[int]) -> tuple[float, int]:
    """``(top-1 minus top-2 logit, argmax token)`` of the next token after ``prompt_ids + prefix`` (unpadded)."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([prompt_ids + prefix], dtype=torch.long, device=model.device)
        logits = model(input_ids=ids, logits_to_keep=1, use_cache=False).logits[0, -1].float()
    top = torch.topk(logits, 2)
    return float(top.values[0] - top.values[1]), int(top.indices[0])


@dataclass
class Divergence:
    """Where a ragrec output leaves the reference's: token index, reference top-2 logit gap there."""

    item: int
    token: int
    gap: float


@dataclass
class Generation:
    """One comparison on ``n`` items: texts, token counts and timings of both implementations."""

    source: str
    model: str
    batch_size: int
    max_new_tokens: int
    n_params: int
    peak_gflops: float
    prompt_tokens: int
    ref_ids: list[list[int]]
    ref_texts: list[str]
    rag_texts: list[str]
    ref_timing: Timing
    rag_timing: Timing
    ref_rss: int | None
    rag_rss: int | None
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ref_texts)

    @property
    def identical(self) -> float:
        """Fraction of items with identical text."""
        return float(np.mean([a == b for a, b in zip(self.ref_texts, self.rag_texts)]))

    @property
    def generated_tokens(self) -> int:
        """Tokens the reference generated (the batched side generates the same count where outputs agree)."""
        return int(sum(len(x) for x in self.ref_ids))

    def problems(self) -> list[str]:
        out = [
            f"item {d.item}: outputs split at token {d.token} where the reference's top-2 logit gap is "
            f"{d.gap:.3g} >= {NEAR_TIE_LOGIT:g} (not a near tie)"
            for d in self.divergences
            if d.gap >= NEAR_TIE_LOGIT
        ]
        if self.identical < MIN_IDENTICAL:
            out.append(f"only {self.identical:.0%} of the outputs are identical (< {MIN_IDENTICAL:.0%})")
        return out


def find_divergences(
    model, tokenizer, prompts: list[str], ref_ids: list[list[int]], ref_texts: list[str], rag_texts: list[str]
) -> list[Divergence]:
    """For every item whose texts differ: the first differing token and the reference's top-2 gap there."""
    prompt_ids = prompt_token_ids(tokenizer, prompts)
    out = []
    for i in np.flatnonzero([a != b for a, b in zip(ref_texts, rag_texts)]):
        # a reference that stopped (EOS) where ragrec went on: the split is at the EOS token
        k = min(common_prefix_tokens(tokenizer, ref_ids[i], rag_texts[i]), len(ref_ids[i]) - 1)
        gap, _ = top2_gap(model, prompt_ids[i], ref_ids[i][:k])
        out.append(Divergence(int(i), k, gap))
    return out


def compare(
    quick: bool = False,
    n_items: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    model: str | None = None,
) -> Generation:
    """Generate for the same prompts both ways (untimed warm-ups first), then check the differences."""
    from ragrec.llm.engine import Sampling
    from ragrec.llm.hf_engine import HFEngine

    n = n_items or (QUICK_ITEMS if quick else FULL_ITEMS)
    new = max_new_tokens or (QUICK_NEW_TOKENS if quick else FULL_NEW_TOKENS)
    name = model or (QUICK_MODEL if quick else FULL_MODEL)
    llm_cfg = LLMConfig(model=name, device="cpu", **({"batch_size": batch_size} if batch_size else {}))
    prompts, source = description_prompt_texts(n, quick)
    engine = HFEngine(llm_cfg)
    m, tok = engine.model, engine.tokenizer
    lengths = [len(x) for x in prompt_token_ids(tok, prompts)]
    if max(lengths) > llm_cfg.max_prompt_tokens:
        raise ValueError(f"a prompt has {max(lengths)} tokens > llm.max_prompt_tokens={llm_cfg.max_prompt_tokens}")
    peak = peak_gflops(quick)  # measured before the runs, so it is not disturbed by them
    rag_fn = lambda p: engine.generate(p, Sampling(new))
    reference_generate(m, tok, prompts[:1], 4)
    rag_fn(prompts[: llm_cfg.batch_size][:4])
    ref_ids, ref_timing, ref_rss = timed_with_rss(lambda: reference_generate(m, tok, prompts, new), RSS_INTERVAL_S)
    rag_texts, rag_timing, rag_rss = timed_with_rss(lambda: rag_fn(prompts), RSS_INTERVAL_S)
    ref_texts = [decode(tok, x) for x in ref_ids]
    return Generation(
        source,
        name,
        llm_cfg.batch_size,
        new,
        lm_matmul_params(m),
        peak,
        int(sum(lengths)),
        ref_ids,
        ref_texts,
        rag_texts,
        ref_timing,
        rag_timing,
        ref_rss,
        rag_rss,
        find_divergences(m, tok, prompts, ref_ids, ref_texts, rag_texts),
    )


def to_result(g: Generation) -> Result:
    """The RESULTS.md row: items/s of both sides, identical fraction and the divergence check in the details."""
    problems = g.problems()
    tokens = g.prompt_tokens + g.generated_tokens
    frac = lambda t: lm_peak_fraction(g.n_params, tokens, t.wall, g.peak_gflops)
    gaps = ", ".join(f"item {d.item} @ token {d.token}: {d.gap:.2g}" for d in g.divergences) or "none"
    details = {
        "inputs": f"{g.n} items, {g.source}; {g.prompt_tokens:,} prompt tokens (chat template included)",
        "settings (both)": f"{g.model}, float32 on CPU, greedy, max_new_tokens {g.max_new_tokens}; ragrec batch "
        f"{g.batch_size} (left padding); the reference runs on the engine's model object",
        "outputs": f"{g.identical:.0%} identical ({round(g.identical * g.n)}/{g.n}); reference generated "
        f"{g.generated_tokens:,} tokens",
        f"differing outputs (first differing token: reference top-2 logit gap, accepted < {NEAR_TIE_LOGIT:g})": gaps,
        "fraction of matmul peak (2 x params x (prompt + generated tokens) / s)": (
            f"reference {frac(g.ref_timing):.1%}, ragrec {frac(g.rag_timing):.1%} of {g.peak_gflops:.0f} "
            f"GFLOP/s (decoding reads all weights per step: memory-bound)"
        ),
        "times": f"reference {g.ref_timing.wall:.1f} s, ragrec {g.rag_timing.wall:.1f} s wall",
        "peak memory": "growth of the process RSS during the call, sampled every 5 ms (model weights excluded)",
        "machine": machine(),
    }
    return Result(
        bench=BENCH,
        case=f"description generation, {g.max_new_tokens} new tokens, batch {g.batch_size}",
        unit="items",
        reference=Measurement.of("per-item model.generate", g.n, g.ref_timing, g.ref_rss),
        ragrec=Measurement.of("HFEngine.generate", g.n, g.rag_timing, g.rag_rss),
        verified=not problems,
        goal=GOAL,
        details=details,
        notes=[f"MISMATCH: {p}" for p in problems],
    )


def run(
    quick: bool = False,
    n_items: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    model: str | None = None,
) -> list[Result]:
    """:func:`compare` then :func:`to_result` (one :class:`Result`)."""
    return [to_result(compare(quick, n_items, max_new_tokens, batch_size, model))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--items": {"type": int, "default": None, "help": f"items (default {FULL_ITEMS}, quick {QUICK_ITEMS})"},
            "--max-new-tokens": {
                "type": int,
                "default": None,
                "help": f"tokens per item (default {FULL_NEW_TOKENS}, quick {QUICK_NEW_TOKENS})",
            },
            "--batch-size": {"type": int, "default": None, "help": "llm.batch_size (default: the config default)"},
            "--model": {"default": None, "help": f"registry name (default {FULL_MODEL}, quick {QUICK_MODEL})"},
        },
    )
    results = run(args.quick, args.items, args.max_new_tokens, args.batch_size, args.model)
    for r in results:
        print(f"{r.case}: {r.ratio:.2f}x the reference items/s; {r.details['outputs']}")
    report(results, args)


if __name__ == "__main__":
    main()
