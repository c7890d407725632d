"""LoRA instruction tuning: ragrec's trainer vs a plain peft + transformers float32 loop.

    python benchmarks/bench_lora.py [--quick] [--examples N] [--epochs E] [--batch-size B] [--model NAME]

Inputs: N = 64 ReLLa-style CTR examples (prompt + "Yes." / "No.") of the first MovieLens-100K *training*
samples (``$RAGREC_DATA_DIR/ml-100k``; else the synthetic catalog), each prompt with the K = 10 most recent
history items, as in ``bench_scoring.py``. Model: SmolLM2-135M-Instruct (``--quick``: tiny-random-llama).
Both sides: the same examples, LoRA r 8 / alpha 16 on q_proj, v_proj, AdamW lr 5e-4, batch 8, the same epochs.

* reference: what a peft + transformers tutorial writes: float32, per batch ``tokenizer(texts,
  padding=True)`` (right padding to the batch maximum, batches in random order), labels -100 on the prompt
  and padding, ``model(**batch).loss`` (logits on every position), ``loss.backward()``, ``AdamW.step()``.
* ragrec: :func:`ragrec.training.lora.train_lora` standalone (``opts.use_ray=False``) with its defaults:
  examples tokenised once, length-bucketed batches, the LM head on the answer positions only,
  ``lora.precision: auto`` (on CPUs with AVX512-BF16 / AMX: frozen base weights in bfloat16, adapter float32).

Rates: examples/s and real (non-padding) tokens/s of the training loop (model load excluded on both sides).
Fraction of peak: forward + activation-gradient FLOPs, ``4 * n_params * tokens`` (LoRA computes no weight
gradients of the frozen base), against the measured matmul peak in the dtype the trainer used.
Verified: each trained adapter's float32 loss on all N examples after training (evaluated the same way for
both) differs by at most ``LOSS_RTOL`` relative (different batch orders and dtype make them differ a little).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Measurement, Result, lm_matmul_params, machine, matmul_peak_gflops, parse_args, report
from ragrec.config import DataConfig, LoRAConfig, RetrievalConfig, SyntheticConfig

BENCH = "lora"
GOAL = 2.5
K_HISTORY = 10
FULL_EXAMPLES, QUICK_EXAMPLES = 64, 16
FULL_MODEL, QUICK_MODEL = "smollm2-135m-instruct", "tiny-random-llama"
LOSS_RTOL = 0.15
"""Largest allowed relative difference of the two adapters' final float32 loss on the N examples."""


def ml100k_available() -> bool:
    root = os.environ.get("RAGREC_DATA_DIR")
    return bool(root) and (Path(root) / "ml-100k" / "u.data").exists()


def ctr_examples(n: int, quick: bool = False) -> tuple[pa.Table, str]:
    """``(table prompt/answer, source)``: the first ``n`` training samples as ReLLa prompts with K recent items."""
    from ragrec.data import load_dataset, rallrec_samples
    from ragrec.llm.chat import ANSWER_NO, ANSWER_YES
    from ragrec.llm.prompts_ctr import build_ctr_prompts
    from ragrec.retrieval.history import select_history

    if not quick and ml100k_available():
        cfg, source = DataConfig(name="ml-100k"), "MovieLens-100K"
    else:
        cfg = DataConfig(name="synthetic", synthetic=SyntheticConfig(n_users=40, n_items=60, ratings_per_user=25))
        source = "synthetic 40 users x 60 items" + (" (quick)" if quick else " (RAGREC_DATA_DIR has no ml-100k)")
    ds = load_dataset(cfg)
    samples = rallrec_samples(ds.interactions, cfg)
    train = samples.filter(pc.equal(samples.column("split"), "train"))
    if train.num_rows < n:
        raise ValueError(f"{source}: {train.num_rows} training samples, fewer than --examples {n}")
    train = select_history(train.slice(0, n), RetrievalConfig(k=K_HISTORY, strategy="recent"), None)
    labels = train.column("label").to_numpy()
    table = pa.table(
        {
            "prompt": build_ctr_prompts(train, ds.items, ds.users),
            "answer": np.where(labels > 0, ANSWER_YES, ANSWER_NO).tolist(),
        }
    )
    return table, f"{source}: first {n} training samples, K={K_HISTORY} most recent history items"


def reference_train(table: pa.Table, model_name: str, cfg: LoRAConfig, seed: int = 0) -> tuple[object, dict]:
    """The plain peft + transformers float32 loop (see the module docstring); ``(peft model, stats)``."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from ragrec.llm.chat import format_prompt
    from ragrec.llm.registry import load_causal_lm

    torch.manual_seed(seed)
    model, tok = load_causal_lm(model_name, dtype="float32", device="cpu")
    model = get_peft_model(
        model,
        PeftLoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    tok.padding_side = "right"
    prompts = [format_prompt(tok, p) for p in table.column("prompt").to_pylist()]
    answers = [a + tok.eos_token for a in table.column("answer").to_pylist()]
    tokens = losses = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(prompts))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            batch = tok(
                [prompts[i] + answers[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            labels = batch["input_ids"].clone()
            p_len = [len(tok(prompts[i], add_special_tokens=False)["input_ids"]) for i in idx]
            for row, n in enumerate(p_len):
                labels[row, :n] = -100
            labels[batch["attention_mask"] == 0] = -100
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            losses = loss.item()
    return model, {"seconds": time.perf_counter() - t0, "tokens": tokens, "last_loss": losses}


def final_loss(model, tokenizer, table: pa.Table, max_tokens: int) -> float:
    """Float32 mean answer loss of ``model`` over all examples (ragrec's encoding, one example at a time)."""
    import torch

    from ragrec.training.lora import answer_loss, collate, tokenize_examples

    enc = tokenize_examples(
        tokenizer, table.column("prompt").to_pylist(), table.column("answer").to_pylist(), max_tokens
    )
    model.eval()
    with torch.no_grad():
        return float(
            np.mean([answer_loss(model, collate(enc, [i], tokenizer.pad_token_id)).item() for i in range(len(enc.ids))])
        )


@dataclass
class Comparison:
    n: int
    source: str
    model: str
    ref_seconds: float
    ref_tokens: int
    ref_loss: float
    seconds: float
    tokens: int
    loss: float
    precision: str
    n_params: int


def compare(
    quick: bool = False, n: int | None = None, epochs: int = 1, batch_size: int = 8, model: str | None = None
) -> Comparison:
    import torch
    from peft import PeftModel

    from ragrec.llm.registry import load_causal_lm
    from ragrec.training.lora import resolve_precision, train_lora
    from ragrec.training.ray_train import TrainOptions

    n = n or (QUICK_EXAMPLES if quick else FULL_EXAMPLES)
    model = model or (QUICK_MODEL if quick else FULL_MODEL)
    table, source = ctr_examples(n, quick)
    cfg = LoRAConfig(
        r=8,
        alpha=16,
        dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        lr=5e-4,
        epochs=epochs,
        batch_size=batch_size,
        max_tokens=1024,
    )
    ref_model, ref = reference_train(table, model, cfg)
    base, tok = load_causal_lm(model, dtype="float32", device="cpu")
    ref_loss = final_loss(ref_model, tok, table, cfg.max_tokens)
    n_params = lm_matmul_params(base)
    del ref_model
    with tempfile.TemporaryDirectory() as out:
        res = train_lora(table, model, cfg, opts=TrainOptions(seed=0, out_dir=out))
        loss = final_loss(PeftModel.from_pretrained(base, out), tok, table, cfg.max_tokens)
    amp = resolve_precision(cfg.precision, torch.device("cpu"))
    return Comparison(
        n,
        source,
        model,
        ref["seconds"],
        ref["tokens"],
        ref_loss,
        float(sum(h["seconds"] for h in res.history)),
        int(sum(h["tokens"] for h in res.history)),
        loss,
        "bfloat16" if amp is not None else "float32",
        n_params,
    )


def to_result(c: Comparison, quick: bool = False) -> Result:
    peak32 = matmul_peak_gflops(1024, repeat=3) if quick else matmul_peak_gflops()
    peak = (
        peak32
        if c.precision == "float32"
        else (matmul_peak_gflops(1024, repeat=3, dtype="bfloat16") if quick else matmul_peak_gflops(dtype="bfloat16"))
    )
    frac = lambda tokens, s, pk: 4.0 * c.n_params * tokens / s / 1e9 / pk
    diff = abs(c.loss - c.ref_loss) / max(abs(c.ref_loss), 1e-6)
    verified = diff <= LOSS_RTOL
    return Result(
        bench=BENCH,
        case=f"LoRA tuning, {c.n} examples ({c.precision} vs float32 reference)",
        unit="examples",
        reference=Measurement("plain peft + transformers, float32, padded batches", c.n, c.ref_seconds),
        ragrec=Measurement("ragrec train_lora", c.n, c.seconds),
        verified=verified,
        goal=GOAL,
        details={
            "inputs": c.source,
            "model": c.model,
            "machine": machine(),
            "tokens/s": f"ragrec {c.tokens / c.seconds:,.0f}, reference {c.ref_tokens / c.ref_seconds:,.0f} "
            "(real tokens; the reference's padded batches also compute padding)",
            "fraction of matmul peak": f"ragrec {frac(c.tokens, c.seconds, peak):.0%} of the {c.precision} peak "
            f"({peak:.0f} GFLOP/s); reference {frac(c.ref_tokens, c.ref_seconds, peak32):.0%} "
            f"of the float32 peak ({peak32:.0f} GFLOP/s); 4 x {c.n_params / 1e6:.0f}M "
            "params x tokens",
            "final float32 loss on the examples": f"ragrec {c.loss:.4f}, reference {c.ref_loss:.4f} "
            f"(relative difference {diff:.1%}, allowed {LOSS_RTOL:.0%})",
            "verified": "final losses agree" if verified else "final losses DIFFER",
        },
        notes=[] if verified else [f"MISMATCH: final loss {c.loss:.4f} vs reference {c.ref_loss:.4f}"],
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--examples": {
                "type": int,
                "default": None,
                "help": f"examples (default {FULL_EXAMPLES}, quick {QUICK_EXAMPLES})",
            },
            "--epochs": {"type": int, "default": 1},
            "--batch-size": {"type": int, "default": 8},
            "--model": {"default": None, "help": f"registry name (default {FULL_MODEL}, quick {QUICK_MODEL})"},
        },
    )
    c = compare(args.quick, args.examples, args.epochs, args.batch_size, args.model)
    r = to_result(c, args.quick)
    print(f"{r.case}: {r.ratio:.2f}x the reference examples/s; {r.details['verified']}")
    report([r], args)


if __name__ == "__main__":
    main()
