"""HFEngine on tiny-random-llama: batching, ordering, padding, truncation, scoring, embeddings, LoRA.

Every expected value comes from an independent plain forward of one unpadded prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragrec.config import LLMConfig
from ragrec.llm.chat import add_special_tokens, fit_prompts, format_prompt, yes_no_token_ids
from ragrec.llm.engine import Sampling
from ragrec.llm.hf_engine import HFEngine, length_sorted_batches, pad_left, position_ids_from_mask
from ragrec.llm.registry import TINY_LLAMA

PROMPTS = [
    "Hi",
    "The user watched Toy Story (5 stars), Heat (4 stars), Fargo (5 stars) and Babe (2 stars). "
    "Will he like Casino? You should ONLY tell me yes or no.",
    "Will she like Alien?",
    "A medium length prompt about films, genres and actors that she rated highly.",
    "x y z",
]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=2, max_prompt_tokens=512))


def _single_forward(engine: HFEngine, prompt_text: str) -> torch.Tensor:
    ids = engine.tokenizer(prompt_text, add_special_tokens=add_special_tokens(engine.tokenizer), return_tensors="pt")
    with torch.inference_mode():
        return engine.model(**ids).logits[0, -1]


def _reference_p_yes(engine: HFEngine, texts: list[str]) -> np.ndarray:
    yes_id, no_id = yes_no_token_ids(engine.tokenizer)
    out = []
    for text in fit_prompts(engine.tokenizer, texts, engine.cfg.max_prompt_tokens):
        logits = _single_forward(engine, text)
        out.append(torch.softmax(logits[[yes_id, no_id]], -1)[0].item())
    return np.array(out, dtype=np.float32)


def test_length_sorted_batches_and_left_padding():
    batches = length_sorted_batches([3, 10, 1, 7, 7], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_score_yes_no_matches_independent_forward(engine):
    got = engine.score_yes_no(PROMPTS)
    assert got.dtype == np.float32 and got.shape == (len(PROMPTS),)
    np.testing.assert_allclose(got, _reference_p_yes(engine, PROMPTS), atol=1e-4)
    # batched == one at a time (left padding + position ids are right)
    single = np.concatenate([engine.score_yes_no([p]) for p in PROMPTS])
    np.testing.assert_allclose(got, single, atol=1e-4)
    assert np.ptp(got) > 1e-3  # the prompts are really scored differently
    assert engine.score_yes_no([]).shape == (0,)


def test_score_uses_a_single_forward_and_no_generate(engine, monkeypatch):
    calls = {"forward": 0}
    original = engine.model.forward

    def counting(*args, **kwargs):
        calls["forward"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    monkeypatch.setattr(engine.model, "generate", lambda *a, **k: pytest.fail("score_yes_no must not generate"))
    engine.score_yes_no(PROMPTS)
    assert calls["forward"] == 3  # ceil(5 / batch_size 2)


def test_long_prompts_are_truncated_from_the_left():
    eng = HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=4, max_prompt_tokens=48))
    long_text = " ".join(f"w{i}" for i in range(300)) + " Will he like it?"
    texts = [long_text, "Will she like it?"]
    fitted = fit_prompts(eng.tokenizer, texts, 48)
    assert len(eng.tokenizer(fitted[0], add_special_tokens=False)["input_ids"]) <= 48
    assert "w299 Will he like it?" in fitted[0] and "w0 " not in fitted[0]
    np.testing.assert_allclose(eng.score_yes_no(texts), _reference_p_yes(eng, texts), atol=1e-4)


def test_greedy_generate_batched_equals_single_in_input_order(engine):
    batched = engine.generate(PROMPTS, Sampling(6))
    single = [engine.generate([p], Sampling(6))[0] for p in PROMPTS]
    assert len(batched) == len(PROMPTS) and batched == single
    assert len(set(batched)) == len(PROMPTS)  # different prompts -> different texts: order is checkable
    # greedy = argmax of the independent forward for the first token
    first = engine.tokenizer.decode(
        [int(_single_forward(engine, format_prompt(engine.tokenizer, PROMPTS[2])).argmax())]
    )
    assert batched[2].startswith(first.strip())


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(engine):
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = engine.generate(PROMPTS, Sampling(seed=11, **kw))
    assert torch.equal(torch.rand(3), expected_next)
    b = engine.generate(PROMPTS, Sampling(seed=11, **kw))
    c = engine.generate(PROMPTS, Sampling(seed=12, **kw))
    assert a == b and a != c
    assert engine.generate([], Sampling(**kw)) == []


def test_embed_is_masked_mean_of_lm_head_input(engine):
    texts = ["Toy Story", "a long description of a film about toys that come alive", "Heat"]
    got = engine.embed(texts, pooling="mean", max_tokens=64)
    assert got.shape == (3, engine.model.config.hidden_size) and got.dtype == np.float32

    # independent: right-padded batch, capture the input of lm_head, masked mean
    captured = {}
    hook = engine.model.lm_head.register_forward_pre_hook(lambda m, args: captured.__setitem__("h", args[0]))
    try:
        enc = engine.tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
        with torch.inference_mode():
            engine.model(**enc)
    finally:
        hook.remove()
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = ((captured["h"] * m).sum(1) / m.sum(1)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)

    last = engine.embed(texts, pooling="last", max_tokens=64)
    lengths = enc["attention_mask"].sum(1) - 1
    np.testing.assert_allclose(last, captured["h"][torch.arange(3), lengths].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'last'"):
        engine.embed(texts, pooling="max")


def test_embed_truncates_to_max_tokens(engine):
    text = " ".join(f"w{i}" for i in range(100))
    head = engine.tokenizer.decode(engine.tokenizer(text)["input_ids"][:8])
    np.testing.assert_allclose(engine.embed([text], max_tokens=8), engine.embed([head], max_tokens=64), atol=1e-5)


def test_lora_adapter_is_applied_and_merged(engine, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = engine.model, engine.tokenizer
    torch.manual_seed(0)
    peft_model = get_peft_model(
        HFEngine(LLMConfig(model=TINY_LLAMA)).model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=2), adapter_path=str(tmp_path / "adapter"))
    assert not hasattr(tuned.model, "peft_config")  # merged: a plain model, no adapter overhead

    yes_id, no_id = yes_no_token_ids(engine.tokenizer)
    expected = []
    peft_model.eval()
    for text in fit_prompts(engine.tokenizer, PROMPTS, 512):
        ids = engine.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            logits = peft_model(**ids).logits[0, -1]
        expected.append(torch.softmax(logits[[yes_id, no_id]], -1)[0].item())
    got = tuned.score_yes_no(PROMPTS)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got - engine.score_yes_no(PROMPTS)).max() > 1e-3
    assert base is engine.model


def test_chunked_prefill_gives_the_batchs_outputs(engine):
    """llm.prefill_tokens: prompts read in row chunks under the budget, then decoded as one batch. Outputs equal
    the unchunked engine's (greedy and seeded sampling, scores, embeddings); the chunks are really there."""
    chunked = HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=5, max_prompt_tokens=512, prefill_tokens=150))
    whole = HFEngine(LLMConfig(model=TINY_LLAMA, batch_size=5, max_prompt_tokens=512, prefill_tokens=10_000))
    widths = [len(x) for x in chunked._prompt_ids(PROMPTS)]
    assert chunked.chunk_rows(max(widths), 5) == 150 // max(widths) < 5 and whole.chunk_rows(max(widths), 5) == 5
    assert chunked.chunk_rows(1_000, 5) == 1  # at least one row, however long

    rows = []  # rows of each forward pass, from a hook (a wrapped forward would hide its signature from generate)
    hook = chunked.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        greedy = chunked.generate(PROMPTS, Sampling(6))
        prefill, decode = rows[:-6], rows[-6:]
        assert max(prefill) < 5 and sum(prefill) == 5 and decode == [5] * 6  # chunked prefill, one decode batch
    finally:
        hook.remove()
    assert greedy == whole.generate(PROMPTS, Sampling(6))
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    assert chunked.generate(PROMPTS, Sampling(**kw)) == whole.generate(PROMPTS, Sampling(**kw))
    np.testing.assert_allclose(chunked.score_yes_no(PROMPTS), whole.score_yes_no(PROMPTS), atol=1e-5)
    np.testing.assert_allclose(chunked.embed(PROMPTS), whole.embed(PROMPTS), atol=1e-5)
