"""The LLM path learns: tuning + scoring through ragrec's own code learns a task its prompts state.

A synthetic yes/no task whose answer is a function of the prompt text alone (yes exactly when the target's
genre is the genre of the liked history movies, see :mod:`ragrec.evaluation.learnability`), with the real
SmolLM2-135M-Instruct, the CTR prompt builder, ``train_lora`` and the ``HFEngine`` scoring that ``ragrec run``
uses (the adapter loaded from disk). If this fails, something in the path is broken: loss masking, answer vs
scoring position, yes/no ids, padding side, adapter loading.
"""

from __future__ import annotations

import pytest

from ragrec.config import LLMConfig
from ragrec.evaluation.learnability import check_learnability


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 854 s on a 2-core AVX2 EPYC (no native bf16: tuning and scoring in float32)
def test_tuning_learns_a_task_the_prompt_states():
    res = check_learnability(
        LLMConfig(model="smollm2-135m-instruct", batch_size=16, dtype="bfloat16"), n_train=256, n_test=160
    )
    print(res.line())
    assert res.auc_zero_shot < 0.75  # the untuned model does not know the rule
    assert res.auc_tuned >= 0.90, res.line()
    assert res.auc_tuned - res.auc_zero_shot >= 0.15
    lo, hi = res.p_yes_tuned
    assert hi - lo > 0.5  # it separates prompts; a base-rate-only adapter gives a narrow band
