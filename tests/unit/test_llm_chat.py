"""The prompt / answer-token contract shared by the LoRA trainer and the scorers."""

from __future__ import annotations

import pytest

from ragrec.llm.chat import ANSWER_NO, ANSWER_YES, PLAIN_SUFFIX, fit_prompts, format_prompt, yes_no_token_ids
from ragrec.llm.registry import SMOLLM2, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SMOLLM2)


class _Plain:
    """A tokenizer without a chat template (duck-typed, only what format_prompt reads)."""

    chat_template = None


def test_format_prompt_chat_template(tok):
    p = format_prompt(tok, "Will he like Toy Story?")
    assert p.endswith("<|im_start|>user\nWill he like Toy Story?<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt(_Plain(), "Will he like it?") == "Will he like it?" + PLAIN_SUFFIX


def test_yes_no_are_single_distinct_tokens_at_the_answer_position(tok):
    yes_id, no_id = yes_no_token_ids(tok)
    assert yes_id != no_id
    assert tok.decode([yes_id]) == "Yes" and tok.decode([no_id]) == "No"
    # the trainer's sequence = prompt ids + answer ids: prompt tokenisation is a prefix and the
    # first answer token is exactly the scored id
    prompt = format_prompt(tok, "Does she like thrillers?")
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    for answer, first in ((ANSWER_YES, yes_id), (ANSWER_NO, no_id)):
        full = tok(prompt + answer, add_special_tokens=False)["input_ids"]
        assert full[: len(base)] == base and full[len(base)] == first
        assert tok.decode(full[len(base) :]) == answer


def test_fit_prompts_truncates_the_start_of_long_texts(tok):
    long_text = " ".join(f"w{i}" for i in range(400)) + " Will he like it?"
    short_text = "Will she like it?"
    limit = 80
    fitted = fit_prompts(tok, [long_text, short_text], limit)
    assert fitted[1] == format_prompt(tok, short_text)  # short prompts untouched, order kept
    ids = tok(fitted[0], add_special_tokens=False)["input_ids"]
    assert len(ids) <= limit
    assert len(ids) >= limit - 6  # uses the budget, not a crude cut
    assert fitted[0].endswith("w399 Will he like it?<|im_end|>\n<|im_start|>assistant\n")
    assert fitted[0].startswith("<|im_start|>system\n")
    assert " w0 " not in fitted[0] and "user\nw0 " not in fitted[0]


def test_fit_prompts_rejects_a_budget_smaller_than_the_template(tok):
    with pytest.raises(ValueError, match="max_prompt_tokens=20 leaves no room"):
        fit_prompts(tok, ["word " * 50], 20)
