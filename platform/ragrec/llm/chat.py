"""Prompt formatting and the yes/no answer tokens: the contract between training and scoring.

The LoRA trainer and every engine agree on one layout::

    prompt_text = format_prompt(tokenizer, user_text)      # ends with the assistant header
    train text  = prompt_text + ANSWER_YES | ANSWER_NO     # loss on the answer tokens only
    scoring     = logits at the LAST token of prompt_text  # i.e. the position that predicts the
                                                           # first answer token
    P(yes)      = softmax([logit[yes_id], logit[no_id]])[0]

``yes_id`` / ``no_id`` come from :func:`yes_no_token_ids`: the first token of ``"Yes."`` / ``"No."``
when tokenised right after the generation prompt (for SmolLM2: ``"Yes"`` = 10539, ``"No"`` = 5230,
each followed by ``"."`` = 30). Tokenise ``prompt_text`` with :func:`add_special_tokens`
(``False`` when the chat template already writes BOS and the role markers).

Over-long prompts are shortened by :func:`fit_prompts`, which drops tokens from the *start of the
user text* (oldest history first) so the template's header and the question at the end survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ANSWER_YES = "Yes."
ANSWER_NO = "No."
PLAIN_SUFFIX = "\nAnswer:"


def has_chat_template(tokenizer: Any) -> bool:
    """True when ``tokenizer`` carries a chat template (instruction-tuned models)."""
    return bool(getattr(tokenizer, "chat_template", None))


def add_special_tokens(tokenizer: Any) -> bool:
    """``add_special_tokens`` to use when tokenising a :func:`format_prompt` output.

    A chat template already writes BOS / role tokens into the text, so the tokenizer must not add
    them again; a plain prompt gets the tokenizer's usual special tokens.
    """
    return not has_chat_template(tokenizer)


def format_prompt(tokenizer: Any, user_text: str) -> str:
    """The model input for one raw user text (the answer follows it directly).

    With a chat template: a single user turn plus the assistant generation prompt. Without one:
    ``user_text + "\\nAnswer:"``.
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return user_text + PLAIN_SUFFIX


def _answer_first_token(tokenizer: Any, answer: str) -> tuple[int, list[int]]:
    prompt = format_prompt(tokenizer, "Is this a question?")
    special = add_special_tokens(tokenizer)
    base = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full = tokenizer(prompt + answer, add_special_tokens=special)["input_ids"]
    if full[: len(base)] != base or len(full) == len(base):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__}: '{answer}' does not start a new token right after "
            f"the prompt (prompt ids are not a prefix of prompt+answer ids); yes/no scoring needs a "
            f"tokenizer that splits the answer at the prompt boundary"
        )
    return full[len(base)], full[len(base) :]


def yes_no_token_ids(tokenizer: Any) -> tuple[int, int]:
    """``(yes_id, no_id)``: first token of ``ANSWER_YES`` / ``ANSWER_NO`` right after the prompt.

    Raises ``ValueError`` when the two coincide (the answer would not be identifiable from one
    position's logits).
    """
    yes_id, yes_tokens = _answer_first_token(tokenizer, ANSWER_YES)
    no_id, no_tokens = _answer_first_token(tokenizer, ANSWER_NO)
    if yes_id == no_id:
        raise ValueError(
            f"'{ANSWER_YES}' and '{ANSWER_NO}' start with the same token {yes_id} "
            f"({yes_tokens} vs {no_tokens}); this tokenizer cannot be used for yes/no scoring"
        )
    return int(yes_id), int(no_id)


def prompt_token_counts(tokenizer: Any, user_texts: Sequence[str]) -> list[int]:
    """Token count of each :func:`format_prompt` output (what ``llm.max_prompt_tokens`` limits), batched."""
    return _token_counts(tokenizer, [format_prompt(tokenizer, t) for t in user_texts])


def _token_counts(tokenizer: Any, prompts: list[str]) -> list[int]:
    """Token count of each already formatted prompt (one batched tokenizer call)."""
    if not prompts:
        return []
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special_tokens(tokenizer))["input_ids"]]


def fit_prompts(tokenizer: Any, user_texts: Sequence[str], max_prompt_tokens: int) -> list[str]:
    """Formatted prompts of at most ``max_prompt_tokens`` tokens, in input order.

    A prompt that is too long keeps the *end* of its user text (tokens are dropped from the left of
    the user text; the chat header and the generation prompt stay intact). Tokenisation is batched.
    """
    prompts = [format_prompt(tokenizer, t) for t in user_texts]
    if not prompts:
        return prompts
    special = add_special_tokens(tokenizer)
    lengths = _token_counts(tokenizer, prompts)
    too_long = [i for i, n in enumerate(lengths) if n > max_prompt_tokens]
    if not too_long:
        return prompts
    overhead = len(tokenizer(format_prompt(tokenizer, ""), add_special_tokens=special)["input_ids"])
    # a margin of 2 tokens absorbs merges at the text/template boundaries
    budget = max_prompt_tokens - overhead - 2
    if budget < 1:
        raise ValueError(
            f"llm.max_prompt_tokens={max_prompt_tokens} leaves no room for text: the prompt template "
            f"alone takes {overhead} tokens; raise llm.max_prompt_tokens"
        )
    text_ids = tokenizer([user_texts[i] for i in too_long], add_special_tokens=False)["input_ids"]
    kept = tokenizer.batch_decode([ids[-budget:] for ids in text_ids], skip_special_tokens=False)
    for i, text in zip(too_long, kept):
        prompts[i] = format_prompt(tokenizer, text.lstrip())
    return prompts
