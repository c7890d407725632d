"""vLLM path wiring (no GPU / vllm needed): processor config, row pre/postprocess, logprob scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragrec.config import LLMConfig
from ragrec.llm import vllm_engine as V
from ragrec.llm.chat import fit_prompts, yes_no_token_ids
from ragrec.llm.engine import Sampling
from ragrec.llm.registry import TINY_LLAMA, load_tokenizer, model_path

CFG = LLMConfig(model=TINY_LLAMA, engine="vllm", batch_size=16, actors=2, max_prompt_tokens=64, dtype="bfloat16")


def test_processor_config_fields(monkeypatch):
    monkeypatch.setenv("RAGREC_ALLOW_DOWNLOAD", "1")
    cfg = V.processor_config(CFG, max_new_tokens=32)
    assert cfg.runtime_env["env_vars"]["RAGREC_ALLOW_DOWNLOAD"] == "1"  # workers see the driver's choice
    assert cfg.model_source == model_path(TINY_LLAMA)
    assert cfg.batch_size == 16 and cfg.concurrency == 2
    kw = cfg.engine_kwargs
    assert kw["max_model_len"] == 64 + 32 and kw["dtype"] == "bfloat16" and kw["task_type"] == "generate"
    assert "enable_lora" not in kw and "quantization" not in kw
    # our own template + tokenisation: Ray's stages are off
    assert cfg.chat_template_stage is False and cfg.tokenize_stage is False
    lora = V.processor_config(CFG.model_copy(update={"load_in_8bit": True}), 1, adapter_path="/tmp/a")
    assert lora.engine_kwargs["enable_lora"] is True and lora.engine_kwargs["quantization"] == "bitsandbytes"


def test_hf_ids_go_to_vllm_unresolved():
    assert V.model_source(LLMConfig(model="meta-llama/Llama-3.1-8B-Instruct")) == "meta-llama/Llama-3.1-8B-Instruct"


def test_preprocess_builds_prompt_tokens_and_sampling():
    tok = load_tokenizer(TINY_LLAMA)
    sampling = V.generation_sampling(Sampling(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=3))
    pre, _ = V.generation_functions(CFG, sampling)
    long_text = " ".join(f"w{i}" for i in range(200)) + " Describe Heat."
    row = pre({"text": long_text, "item_id": 7})
    expected_prompt = fit_prompts(tok, [long_text], 64)[0]
    assert row["prompt"] == expected_prompt and "w199 Describe Heat." in row["prompt"]
    assert row["tokenized_prompt"] == tok(expected_prompt, add_special_tokens=False)["input_ids"]
    assert len(row["tokenized_prompt"]) <= 64
    assert row["sampling_params"] == {"max_tokens": 40, "temperature": 0.8, "top_p": 0.9, "seed": 3}
    assert row["item_id"] == 7 and "model" not in row
    pre_lora, _ = V.scoring_functions(CFG, adapter_path="/adapters/a1")
    scored = pre_lora({"text": "Will he like it?"})
    assert scored["sampling_params"] == {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
    assert scored["model"] == "/adapters/a1"
    with pytest.raises(KeyError, match="no 'text' column"):
        pre({"prompt_text": "x"})


def test_generation_postprocess_keeps_caller_columns():
    row = {
        "item_id": 3,
        "text": "Describe Heat.",
        "prompt": "<...>",
        "tokenized_prompt": [1, 2],
        "sampling_params": {},
        "generated_text": "  A heist film.\n",
        "generated_tokens": [5, 6],
        "num_generated_tokens": 2,
        "num_input_tokens": 2,
        "metrics": {},
        "time_taken_llm": 0.1,
    }
    assert V.generation_postprocess(row) == {"item_id": 3, "text": "Describe Heat.", "generated_text": "A heist film."}


def test_yes_probability_and_fallbacks():
    yes, no = 10, 20
    p, found = V.yes_probability({yes: {"logprob": -0.5}, no: {"logprob": -1.5}, 3: {"logprob": -4.0}}, yes, no)
    assert found and p == pytest.approx(math.exp(-0.5) / (math.exp(-0.5) + math.exp(-1.5)))
    # string keys (after Arrow) and bare floats are accepted
    p2, _ = V.yes_probability({str(yes): -0.5, str(no): -1.5}, yes, no)
    assert p2 == pytest.approx(p)
    # No missing: bounded by the smallest listed logprob
    p3, found3 = V.yes_probability({yes: -0.2, 3: -3.0}, yes, no)
    assert found3 and p3 == pytest.approx(1 / (1 + math.exp(-3.0 + 0.2)))
    p4, found4 = V.yes_probability({no: -0.1, 3: -2.0}, yes, no)
    assert found4 and p4 == pytest.approx(1 / (1 + math.exp(-0.1 + 2.0))) and p4 < 0.5
    assert V.yes_probability({3: -0.1}, yes, no) == (0.5, False)
    assert V.yes_probability(None, yes, no) == (0.5, False)


def test_scoring_postprocess_reads_the_first_token_logprobs():
    yes_id, no_id = yes_no_token_ids(load_tokenizer(TINY_LLAMA))
    _, post = V.scoring_functions(CFG)
    row = {
        "sample_id": 9,
        "text": "t",
        "generated_text": "Yes",
        "logprobs": [{yes_id: {"logprob": math.log(0.6), "rank": 1}, no_id: {"logprob": math.log(0.2), "rank": 2}}],
    }
    out = post(row)
    assert set(out) == {"sample_id", "text", "p_yes", "score_found"}
    assert out["p_yes"] == pytest.approx(0.75) and out["score_found"] is True
    assert post({"sample_id": 1, "logprobs": np.array([], dtype=object)})["score_found"] is False


def test_vllm_engine_needs_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install \.\[gpu\]"):
            V.VLLMEngine(CFG)
    else:  # pragma: no cover - GPU nodes
        pytest.skip("vllm is installed: the engine itself is exercised on GPU nodes")


@pytest.mark.ray
def test_build_processors_wire_our_stages(ray_session):
    """Building needs Ray but not vllm (the engine stage imports it only in its actors)."""
    gen = V.build_generation_processor(CFG, V.generation_sampling(Sampling(16)))
    score = V.build_scoring_processor(CFG)
    for proc in (gen, score):
        names = proc.list_stage_names()
        assert names == ["vLLMEngineStage", "DetokenizeStage"], names
        assert proc.config.model_source == model_path(TINY_LLAMA) and proc.config.batch_size == 16
    assert gen.config.engine_kwargs["max_model_len"] == 64 + 16
    assert score.config.engine_kwargs["max_model_len"] == 64 + 1


def test_line_labels_become_vllm_structured_outputs():
    """The hf engine's forced labels have a vLLM twin: a regex in ``structured_outputs`` (the dict form that
    ``ray.data.llm`` converts; ``sampling_params`` converts it for the offline engine)."""
    import re
    from types import SimpleNamespace

    from ragrec.llm.vllm_engine import generation_sampling, sampling_params

    plain = generation_sampling(Sampling(16, seed=3))
    assert "structured_outputs" not in plain
    kw = generation_sampling(Sampling(16, seed=3, line_labels=("liked", "disliked")))
    rx = re.compile(kw["structured_outputs"]["regex"])
    assert rx.fullmatch("liked: 2\ndisliked: 5") and not rx.fullmatch("I liked 2")
    made = {}
    fake = SimpleNamespace(
        SamplingParams=lambda **k: made.setdefault("params", k),
        sampling_params=SimpleNamespace(StructuredOutputsParams=lambda **k: ("structured", k)),
    )
    params = sampling_params(fake, kw)
    assert params["structured_outputs"] == ("structured", kw["structured_outputs"])
    assert params["max_tokens"] == 16 and kw["structured_outputs"]  # the caller's dict is left as it was
