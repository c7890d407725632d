"""LoRA instruction tuning on tiny-random-llama: label masking, learning, adapter round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from ragrec.config import LoRAConfig
from ragrec.llm.chat import add_special_tokens, format_prompt
from ragrec.llm.registry import TINY_LLAMA, load_causal_lm, load_tokenizer
from ragrec.training.lora import (
    IGNORE_INDEX,
    answer_loss,
    bucketed_batches,
    collate,
    encode_batch,
    padding_fraction,
    resolve_precision,
    tokenize_examples,
    train_lora,
)
from ragrec.training.ray_train import TrainOptions

CFG = LoRAConfig(r=8, alpha=16, dropout=0.0, lr=1e-2, epochs=3, batch_size=4, grad_accum=2, max_tokens=128)
PROMPTS = [
    "The user watched Alien (5 stars). Will he like Aliens?",
    "The user watched Heat (1 star). Will he like Ronin?",
    "The user watched Fargo (4 stars). Will he like Blood Simple?",
    "The user watched Cats (1 star). Will he like Evita?",
]
ANSWERS = ["Yes.", "No.", "Yes.", "No."]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY_LLAMA)


def test_labels_mask_exactly_the_prompt_tokens(tok):
    enc = encode_batch(tok, PROMPTS[:2], ANSWERS[:2], max_tokens=512)
    ids, mask, labels = enc["input_ids"], enc["attention_mask"], enc["labels"]
    assert ids.shape == labels.shape == mask.shape
    for b in range(2):
        prompt_text = format_prompt(tok, PROMPTS[b])
        p = tok(prompt_text, add_special_tokens=add_special_tokens(tok))["input_ids"]
        a = tok(ANSWERS[b], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # the sequence is the tokenisation of prompt_text + answer + eos
        joint = tok(prompt_text + ANSWERS[b] + tok.eos_token, add_special_tokens=add_special_tokens(tok))["input_ids"]
        assert p + a == joint
        n = len(p) + len(a)
        pad = ids.shape[1] - n  # left padding, as in scoring: every answer ends at the last position
        assert ids[b, pad:].tolist() == joint
        assert mask[b].tolist() == [0] * pad + [1] * n
        assert enc["position_ids"][b, pad:].tolist() == list(range(n))
        assert labels[b, : pad + len(p)].tolist() == [IGNORE_INDEX] * (pad + len(p))
        assert labels[b, pad + len(p) :].tolist() == a
    assert ids.shape[1] == max(int(mask[b].sum()) for b in range(2))  # dynamic padding to the longest


def test_long_prompts_are_cut_from_the_left_keeping_header_and_question(tok):
    long = "The user watched " + ", ".join(f"Film number {k} (3 stars)" for k in range(300)) + ". Will he like Up?"
    enc = encode_batch(tok, [long, PROMPTS[0]], ["No.", "Yes."], max_tokens=64)
    n = int(enc["attention_mask"][0].sum())
    assert n <= 64
    answer_at = int((enc["labels"][0] != IGNORE_INDEX).nonzero()[0])
    kept = tok.decode(enc["input_ids"][0, enc["attention_mask"][0].argmax() : answer_at])
    header = format_prompt(tok, "X").split("X")[0]
    assert kept.startswith(header)  # chat template header survives
    assert "Will he like Up?" in kept and "Film number 299" in kept  # the end (newest) survives
    assert "Film number 0 " not in kept  # the start (oldest) was dropped
    with pytest.raises(ValueError, match="lora.max_tokens=8 leaves"):
        encode_batch(tok, PROMPTS[:1], ANSWERS[:1], max_tokens=8)


def _logits(model, tok, prompts):
    enc = encode_batch(tok, prompts, ["Yes."] * len(prompts), max_tokens=128)
    with torch.no_grad():
        return model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=enc["position_ids"]
        ).logits, enc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    table = pa.table({"prompt": PROMPTS * 4, "answer": ANSWERS * 4})
    return train_lora(table, TINY_LLAMA, CFG, opts=TrainOptions(seed=0, out_dir=out))


def test_loss_decreases_on_a_repeated_tiny_dataset(trained):
    h = trained.history
    assert [r["step"] for r in h] == list(range(12))  # 16 rows / batch 4 x 3 epochs
    first = np.mean([r["loss"] for r in h if r["epoch"] == 0])
    last = np.mean([r["loss"] for r in h if r["epoch"] == 2])
    assert last < 0.75 * first


def test_adapter_is_written_and_reloads_with_peft_and_changes_logits(trained, tok):
    from peft import PeftModel

    files = {p.name for p in Path(trained.adapter_dir).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "history.json"} <= files
    conf = json.loads((Path(trained.adapter_dir) / "adapter_config.json").read_text())
    assert conf["r"] == 8 and conf["lora_alpha"] == 16 and set(conf["target_modules"]) == {"q_proj", "v_proj"}

    base, _ = load_causal_lm(TINY_LLAMA, dtype="float32", device="cpu")
    base_logits, _enc = _logits(base, tok, PROMPTS)
    tuned = PeftModel.from_pretrained(load_causal_lm(TINY_LLAMA, dtype="float32", device="cpu")[0], trained.adapter_dir)
    tuned.eval()
    tuned_logits, _ = _logits(tuned, tok, PROMPTS)
    assert (tuned_logits - base_logits).abs().max() > 1e-2
    # and it is the trained adapter: lower loss on the training answers than the base model
    train_enc = encode_batch(tok, PROMPTS, ANSWERS, max_tokens=128)
    with torch.no_grad():
        assert tuned(**train_enc).loss < 0.7 * base(**train_enc).loss


def test_missing_columns_are_reported(tmp_path):
    with pytest.raises(ValueError, match=r"lack column\(s\) \['answer'\]"):
        train_lora(pa.table({"prompt": ["a"]}), TINY_LLAMA, CFG, opts=TrainOptions(out_dir=tmp_path))


@pytest.mark.ray
def test_ray_path_reads_dataset_shard_and_writes_adapter(ray_session, tmp_path):
    import ray.data

    ds = ray.data.from_items([{"prompt": p, "answer": a} for p, a in zip(PROMPTS * 2, ANSWERS * 2)])
    cfg = CFG.model_copy(update={"epochs": 1})
    on_ray = TrainOptions(use_ray=True, seed=0, out_dir=tmp_path / "out", storage_path=str(tmp_path / "ray"))
    res = train_lora(ds, TINY_LLAMA, cfg, opts=on_ray)
    assert len(res.history) == 2  # 8 rows / batch 4 on one worker
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert all(np.isfinite(r["loss"]) for r in res.history)


def test_answer_loss_equals_the_full_logits_loss_and_first_token_loss_reads_the_decision(tok):
    model, _ = load_causal_lm(TINY_LLAMA, dtype="float32", device="cpu")
    enc = encode_batch(tok, PROMPTS, ANSWERS, max_tokens=128)
    with torch.no_grad():
        full = model(**enc).loss  # transformers' loss over all positions' logits
        fast = answer_loss(model, enc)
        first = answer_loss(model, enc, first_token_only=True)
        logits = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=enc["position_ids"]
        ).logits
    assert abs(float(full) - float(fast)) < 1e-4
    # first-token loss: the cross-entropy of the first answer token only, from the position before it
    rows = torch.arange(len(PROMPTS))
    at = (enc["labels"] != IGNORE_INDEX).int().argmax(1)
    want = torch.nn.functional.cross_entropy(logits[rows, at - 1], enc["input_ids"][rows, at])
    assert abs(float(first) - float(want)) < 1e-4


def test_answer_loss_runs_the_lm_head_as_one_matmul_without_copies_of_its_weight(tok):
    """A sliced (non-contiguous) hidden state made torch multiply it batched against B expanded copies of the
    (vocab, d) LM head, forward and backward: a third of a SmolLM2 training step. No op may see a
    (B, vocab, d)-sized operand."""
    from torch.profiler import ProfilerActivity, profile

    model, _ = load_causal_lm(TINY_LLAMA, dtype="float32", device="cpu")
    model.requires_grad_(False)  # a frozen base, as under LoRA (a trainable head would be folded anyway)
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    enc = encode_batch(tok, PROMPTS, ANSWERS, max_tokens=128)
    vocab, d = model.get_output_embeddings().weight.shape
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        answer_loss(model, enc).backward()
    big = len(PROMPTS) * vocab * d
    shapes = [(e.key, s) for e in prof.key_averages(group_by_input_shape=True) for s in e.input_shapes if s]
    assert [(k, s) for k, s in shapes if int(np.prod(s)) >= big] == []
    assert any(k == "aten::mm" and vocab in s for k, s in shapes)  # the LM head did run, as a 2-D mm


def test_a_prompt_scores_the_same_alone_or_left_padded_in_a_batch(tok):
    model, _ = load_causal_lm(TINY_LLAMA, dtype="float32", device="cpu")
    enc = tokenize_examples(tok, PROMPTS, ANSWERS, max_tokens=128)
    longest = int(np.argmax(enc.lengths))
    short = int(np.argmin(enc.lengths))
    assert enc.lengths[short] < enc.lengths[longest]
    with torch.no_grad():
        alone = answer_loss(model, collate(enc, [short], tok.pad_token_id))
        padded = answer_loss(model, collate(enc, [short, longest], tok.pad_token_id))
        other = answer_loss(model, collate(enc, [longest], tok.pad_token_id))
    assert abs(float(padded) - (float(alone) + float(other)) / 2) < 1e-4  # same answer length: mean of the two


def test_bucketed_batches_cover_every_example_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(50, 400, 1000)
    batches = bucketed_batches(lengths, 8, seed=0, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert max(map(len, batches)) == 8
    random = [np.arange(1000)[i : i + 8] for i in range(0, 1000, 8)]
    assert padding_fraction(lengths, batches) < 0.02 < 0.3 < padding_fraction(lengths, random)
    again = bucketed_batches(lengths, 8, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # depends on (seed, epoch) only
    other = bucketed_batches(lengths, 8, seed=0, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))  # batch order changes each epoch


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) is None
    assert resolve_precision("bfloat16", cpu) is torch.bfloat16
    assert resolve_precision("auto", torch.device("meta")) is None


def test_bf16_training_follows_the_float32_loss_curve(tmp_path):
    table = pa.table({"prompt": PROMPTS * 4, "answer": ANSWERS * 4})
    curves = {}
    for prec in ("float32", "bfloat16"):
        res = train_lora(
            table,
            TINY_LLAMA,
            CFG.model_copy(update={"precision": prec}),
            opts=TrainOptions(seed=0, out_dir=tmp_path / prec),
        )
        curves[prec] = np.array([np.mean([r["loss"] for r in res.history if r["epoch"] == e]) for e in range(3)])
    assert np.all(np.abs(curves["bfloat16"] - curves["float32"]) < 0.02 * curves["float32"])
    # bf16 stores the frozen base in bfloat16 but trains (and saves) the adapter in float32
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "bfloat16" / "adapter_model.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
