"""benchmarks/bench_scoring.py and bench_generation.py in --quick mode (tiny-random-llama).

Speed ratios are not asserted: on a 2-layer model with a 49k vocabulary the per-call overheads dominate
and the ratio says nothing about the real model. What is asserted: both sides compute the same thing
(scoring probabilities to 1e-4, greedy texts identical or split only at near ties), the reference is
what it claims to be, and the checks catch a real difference.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import bench_generation as G
from benchmarks import bench_scoring as S
from ragrec.llm.prompts_ctr import INSTRUCTION
from ragrec.runtime import cpu_has_native_bf16


@pytest.fixture(scope="module")
def tiny():
    from ragrec.llm import load_causal_lm

    return load_causal_lm("tiny-random-llama", device="cpu")


def test_ctr_prompts_list_k_recent_history_items():
    prompts, source = S.ctr_prompts(6, quick=True)
    assert len(prompts) == 6 and "first 6 test samples, K=10" in source
    for p in prompts:
        lines = p.splitlines()
        numbered = [ln for ln in lines if ln[:1].isdigit()]
        assert [ln.split(".", 1)[0] for ln in numbered] == [str(i) for i in range(S.K_HISTORY)]
        assert lines[-1] == INSTRUCTION and "deduce if" in lines[-2]
    assert len(set(prompts)) == 6


def test_scoring_quick_agrees_with_reference_and_reference_is_first_position_softmax(ray_session, tiny):
    import torch

    s = S.compare(quick=True)
    n = S.QUICK_PROMPTS
    assert s.ref_probs.shape == s.engine_probs.shape == s.stage_probs.shape == (n,)
    assert s.ref_probs.dtype == np.float32
    assert np.all((s.ref_probs > 0) & (s.ref_probs < 1))
    assert np.ptp(s.ref_probs) > 1e-3  # the prompts differ, so must the probabilities
    assert s.engine_diff < 1e-4 and s.stage_diff < 1e-4

    # the reference's number is softmax([yes, no]) of the next-token logits after the whole prompt
    model, tok = tiny
    from ragrec.llm import yes_no_token_ids

    yes, no = yes_no_token_ids(tok)
    prompts, _ = S.ctr_prompts(n, quick=True)
    ids = torch.tensor([S.prompt_token_ids(tok, prompts[:1])[0]])
    with torch.inference_mode():
        last = model(input_ids=ids).logits[0, -1]
    assert abs(torch.softmax(last[[yes, no]], -1)[0].item() - s.ref_probs[0]) < 1e-5

    results = S.to_results(s)
    assert [r.unit for r in results][:2] == ["prompts", "prompts"]
    assert "HFEngine.score_yes_no" in results[0].case and "score_stage" in results[1].case
    assert results[1].ragrec.cpu_seconds is None  # the stage's CPU time is spent in the actor
    assert "fraction of matmul peak" in " ".join(results[0].details)
    assert all(r.verified and r.ragrec.units == r.reference.units == n for r in results)
    off = s.engine_probs.copy()
    off[3] += 2e-3
    diff = float(np.max(np.abs(off - s.ref_probs)))
    assert 1.9e-3 < diff < 2.1e-3
    bad = S.to_results(dataclasses.replace(s, engine_probs=off))[0]
    assert not bad.verified and bad.notes == [f"MISMATCH: max |P(yes) difference| {diff:.1e} >= 0.001"]
    if not cpu_has_native_bf16():  # llm.dtype bfloat16 runs float32 there: no bf16 row to compare
        assert s.bf16 is None and len(results) == 2
        return

    # bfloat16 pass: a bf16 copy of the model, both sides on it; close to but not equal to float32
    assert s.bf16.ref_probs.shape == s.bf16.engine_probs.shape == (n,)
    assert s.bf16.engine_diff < S.BF16_ATOL
    assert 0 < np.max(np.abs(s.bf16.ref_probs - s.ref_probs)) < 0.1  # it really ran in bf16

    assert len(results) == 3 and results[2].unit == "prompts"
    assert results[2].case.endswith("bfloat16") and "bfloat16" in results[2].reference.label
    assert "Spearman" in results[2].details["accuracy cost of bfloat16"]


def test_padded_token_count_pads_each_length_sorted_batch_to_its_longest():
    assert S.padded_token_count([5, 1, 3, 2], 2) == 2 * 5 + 2 * 2  # batches {5, 3} and {2, 1}
    assert S.padded_token_count([4, 4, 4], 8) == 12


def test_generation_quick_outputs_agree_and_a_real_difference_is_caught(tiny):
    g = G.compare(quick=True)
    assert g.n == G.QUICK_ITEMS and len(g.rag_texts) == g.n
    assert all(len(ids) == G.QUICK_NEW_TOKENS for ids in g.ref_ids)  # the tiny model never emits EOS early
    assert all(t for t in g.ref_texts) and len(set(g.ref_texts)) > 1
    assert g.identical >= 0.9  # tiny-random-llama has peaked logits: no near ties to split on
    assert g.problems() == []
    (r,) = [G.to_result(g)]
    assert r.verified and r.unit == "items" and r.ragrec.units == r.reference.units == g.n

    # another item's text in place of item 0's: the split is at a token the reference was sure about
    model, tok = tiny
    prompts, _ = G.description_prompt_texts(g.n, quick=True)
    other = next(t for t in g.ref_texts if t != g.ref_texts[0])
    tampered = [other] + g.ref_texts[1:]
    (d,) = G.find_divergences(model, tok, prompts, g.ref_ids, g.ref_texts, tampered)
    assert d.item == 0 and d.token == G.common_prefix_tokens(tok, g.ref_ids[0], other)
    assert d.gap >= G.NEAR_TIE_LOGIT
    bad = dataclasses.replace(g, rag_texts=tampered, divergences=[d])
    assert len(bad.problems()) == 1 and "not a near tie" in bad.problems()[0]
    assert not G.to_result(bad).verified


def test_common_prefix_tokens_counts_reference_tokens_inside_the_other_text(tiny):
    _, tok = tiny
    ref = tok("The quick brown fox jumps", add_special_tokens=False)["input_ids"]
    head = len(tok("The quick brown", add_special_tokens=False)["input_ids"])
    assert G.common_prefix_tokens(tok, ref, "The quick brown cat sleeps") == head
    assert G.common_prefix_tokens(tok, ref, "The quick brown fox jumps") == len(ref)
    assert G.common_prefix_tokens(tok, ref, "A slow dog") == 0
