"""Instruction tuning with peft LoRA (RALLRec step 8): loss on the answer tokens only.

One training example is ``prompt_text + answer + EOS`` where ``prompt_text`` is
:func:`ragrec.llm.chat.fit_prompts` of the raw prompt (the chat template, shortened from the start
of the user text so the question at the end survives) — the exact input the scorer reads logits
from, left-padded as the scorer pads it.

What makes it fast on a CPU (``benchmarks/bench_lora.py`` measures it against plain peft + transformers):

* every example is tokenised once (:func:`tokenize_examples`), not once per epoch;
* batches hold examples of similar length (:func:`bucketed_batches`), so they carry little padding;
* the LM head runs only on the positions that predict the answer (:func:`answer_loss`), not on every
  prompt token (no (B, L, vocab) logits);
* ``lora.precision: auto`` runs the forward and backward in bfloat16 where the hardware runs it natively
  (AVX512-BF16 / AMX CPUs, bf16 GPUs): the frozen base weights are *stored* in bfloat16 (they are never
  updated, so they need no float32 master copy, and no per-step autocast casts them again), while the
  LoRA weights and AdamW state stay float32 (peft casts each LoRA input to the adapter's dtype).
  With the LM head on the answer positions only (an index, see :func:`answer_loss`), the trainer runs at
  2.7x the examples/s of a plain float32 peft loop on this project's CPU (``benchmarks/bench_lora.py``).

``train_loop(config)`` runs standalone (examples from an Arrow table in ``config``) or under Ray
Train (examples from ``ray.train.get_dataset_shard("train")``); the loop body is the same.
Outputs in ``out_dir``: the adapter (``adapter_config.json``, ``adapter_model.safetensors``) written
by ``save_pretrained`` and ``history.json`` (one row per micro-step: loss, tokens, seconds).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ragrec.config import LoRAConfig
from ragrec.llm.chat import add_special_tokens, fit_prompts
from ragrec.runtime import cpu_has_native_bf16
from ragrec.training import ray_train as rt

log = logging.getLogger("ragrec.training.lora")

COLUMNS = ("prompt", "answer")
IGNORE_INDEX = -100


@dataclass
class LoRAResult:
    adapter_dir: str  # folder for PeftModel.from_pretrained(base_model, adapter_dir)
    history: list[dict]  # per micro-step: step, epoch, loss


# ----------------------------------------------------------------------------- tokenisation, batches


@dataclass
class Encoded:
    """Examples tokenised once: ``ids[i]`` = prompt + answer + EOS (int64), ``prompt_len[i]`` its prompt part."""

    ids: list[np.ndarray]
    prompt_len: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def tokenize_examples(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_tokens: int) -> Encoded:
    """Tokenise every example once (batched tokenizer calls).

    Example i is ``prompt_ids_i + answer_ids_i`` (the answer ends with EOS), at most ``max_tokens`` long: the
    prompt is fitted to ``max_tokens - longest answer`` by :func:`fit_prompts` (dropping the oldest user text)
    and, as a last guard, cut from the left.
    """
    if len(prompts) != len(answers) or not len(prompts):
        raise ValueError(
            f"tokenize_examples: need as many answers as prompts (>0), got {len(prompts)} and {len(answers)}"
        )
    answer_ids = tokenizer([str(a) + tokenizer.eos_token for a in answers], add_special_tokens=False)["input_ids"]
    longest_answer = max(map(len, answer_ids))
    budget = max_tokens - longest_answer
    if budget < 8:
        raise ValueError(
            f"lora.max_tokens={max_tokens} leaves {budget} tokens for the prompt after a {longest_answer}-token "
            f"answer; raise lora.max_tokens"
        )
    texts = fit_prompts(tokenizer, [str(p) for p in prompts], budget)
    prompt_ids = tokenizer(texts, add_special_tokens=add_special_tokens(tokenizer))["input_ids"]
    ids = [np.asarray(p[max(0, len(p) - budget) :] + a, dtype=np.int64) for p, a in zip(prompt_ids, answer_ids)]
    p_len = np.fromiter((min(len(p), budget) for p in prompt_ids), dtype=np.int64, count=len(prompt_ids))
    return Encoded(ids, p_len)


def collate(enc: Encoded, idx: Sequence[int] | np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask``, ``position_ids``, ``labels`` (B, L) of examples ``idx``.

    ``L`` is the longest of them. Padding is on the left, as in scoring (:class:`ragrec.llm.hf_engine.HFEngine`),
    so every answer ends at the last position and the loss needs the logits of the last few positions only
    (:func:`answer_loss`). ``position_ids`` count real tokens only; ``labels`` equal ``input_ids`` on the
    answer and EOS positions and -100 elsewhere.
    """
    idx = np.asarray(idx, dtype=np.int64)
    lens = np.fromiter((len(enc.ids[i]) for i in idx), dtype=np.int64, count=len(idx))
    width = int(lens.max())
    input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    for row, i in enumerate(idx):
        input_ids[row, width - lens[row] :] = enc.ids[i]
    pos = np.arange(width)[None, :]
    start = (width - lens)[:, None]  # first real token of each row
    attention = pos >= start
    labels = np.where(pos >= start + enc.prompt_len[idx][:, None], input_ids, IGNORE_INDEX)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention.astype(np.int64)),
        "position_ids": torch.from_numpy(np.maximum(pos - start, 0)),
        "labels": torch.from_numpy(labels),
    }


def answer_loss(model: Any, batch: dict[str, torch.Tensor], first_token_only: bool = False) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a :func:`collate` batch.

    Only the logits that predict answer tokens are computed (``logits_to_keep``): on a 300-token prompt with
    a 3-token answer that skips the (B, L, vocab) logits tensor and the LM head on every prompt position.
    ``first_token_only``: the loss on the first answer token (the yes/no decision that scoring reads) alone.
    """
    labels = batch["labels"]
    span = int((labels != IGNORE_INDEX).sum(1).max())  # answers end at the last position (left padding)
    width = labels.shape[1]
    # the positions as an index tensor, not the int ``span + 1``: an int slices the hidden states into a
    # non-contiguous (B, span + 1, d) view, which torch's matmul cannot fold into one (B * (span + 1), d) mm
    # and multiplies batched against B expanded copies of the (vocab, d) LM head instead (forward and
    # backward: a third of a SmolLM2 step on CPU); the index gives a contiguous copy of a few rows
    keep = torch.arange(width - span - 1, width, device=labels.device)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
    ).logits[:, :-1]
    targets = labels[:, -span:]
    if first_token_only:
        first = (targets != IGNORE_INDEX).int().argmax(1)
        keep = torch.zeros_like(targets, dtype=torch.bool)
        keep[torch.arange(len(targets)), first] = True
        targets = targets.masked_fill(~keep, IGNORE_INDEX)
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def encode_batch(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_tokens: int
) -> dict[str, torch.Tensor]:
    """:func:`tokenize_examples` + :func:`collate` of all of them, in order (one padded batch)."""
    enc = tokenize_examples(tokenizer, prompts, answers, max_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collate(enc, np.arange(len(enc.ids)), pad)


def bucketed_batches(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of mini-batches of examples of similar length (little padding), in shuffled order.

    Examples are sorted by length with random tie-breaks (so batches differ between epochs), cut into
    ``batch_size`` chunks, and the chunks are shuffled; the permutation depends only on (seed, epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(lengths)), np.asarray(lengths)))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]


def padding_fraction(lengths: np.ndarray, batches: Sequence[np.ndarray]) -> float:
    """Share of the padded (B, L) token slots that are padding."""
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(lengths.sum()) / slots if slots else 0.0


# ----------------------------------------------------------------------------- data


def _check_table(table: pa.Table) -> pa.Table:
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"train_lora: examples lack column(s) {missing}; got {table.column_names}. "
            "Pass a table with string columns 'prompt' and 'answer'"
        )
    if table.num_rows == 0:
        raise ValueError("train_lora: examples table is empty")
    return table.select(list(COLUMNS))


def _worker_examples(config: dict) -> tuple[list[str], list[str]]:
    """This worker's (prompts, answers): its Ray dataset shard, read once, or the local table."""
    if rt.in_train_worker():
        prompts, answers = [], []
        for batch in rt.dataset_shard("train").iter_batches(batch_size=4096, batch_format="numpy"):
            prompts.extend(batch["prompt"].tolist())
            answers.extend(batch["answer"].tolist())
        return prompts, answers
    table: pa.Table = config["examples"]
    return table.column("prompt").to_pylist(), table.column("answer").to_pylist()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``lora.precision`` on ``device`` (None = plain float32).

    ``auto`` is bfloat16 where the hardware runs it natively (a CUDA device with bf16, a CPU with
    AVX512-BF16 or AMX), float32 elsewhere.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


# ----------------------------------------------------------------------------- loop


def train_loop(config: dict) -> list[dict]:
    """LoRA-tune ``config["model_name"]``. Keys: ``cfg`` (LoRAConfig dict), ``seed``, ``out_dir``,
    ``dtype``, optional ``report_every`` and, standalone, ``examples`` (Arrow table with prompt/answer).
    Resume (:class:`ray_train.EpochLoop`): optional ``checkpoint_steps`` (also checkpoint every that many
    optimizer steps inside an epoch) and, standalone, ``checkpoint_dir`` (where the states go; a rerun
    resumes from the latest). Under Ray the states are Ray Train checkpoints in the run's storage.
    Returns the history (one row per optimizer micro-step: step, epoch, loss, tokens, seconds)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from ragrec.llm.registry import load_causal_lm

    cfg = LoRAConfig.model_validate(config["cfg"])
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    dev = rt.torch_device()
    kwargs = {}
    if config.get("load_in_8bit") and dev.type == "cuda":
        from transformers import BitsAndBytesConfig  # bitsandbytes is in the `gpu` extra

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": dev.index or 0}}
    elif config.get("load_in_8bit"):
        log.warning("llm.load_in_8bit needs a GPU; training the LoRA adapter on a %s model instead", dev.type)
    amp = resolve_precision(cfg.precision, dev)
    bf16_base = amp == torch.bfloat16 and not kwargs  # frozen base weights stored in bf16 (see module doc)
    model, tokenizer = load_causal_lm(
        config["model_name"], dtype="bfloat16" if bf16_base else config.get("dtype", "auto"), device=str(dev), **kwargs
    )
    if kwargs:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_cfg)
    if bf16_base:
        for p in model.parameters():
            if p.requires_grad:  # the adapter (and its AdamW state) in float32
                p.data = p.data.float()
    model.train()
    model = rt.prepare_model(model, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    autocast = amp is not None and not bf16_base  # 8-bit base: autocast the float32 parts
    prompts, answers = _worker_examples(config)
    enc = tokenize_examples(tokenizer, prompts, answers, cfg.max_tokens)
    lengths = enc.lengths
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_batches = -(-len(enc.ids) // cfg.batch_size)
    if rt.in_train_worker() and rt.world_size() > 1:  # DDP: every rank takes the same number of steps
        n_batches = len(enc.ids) // cfg.batch_size
    total_steps = max(1, -(-n_batches // cfg.grad_accum) * cfg.epochs)
    scheduler = _schedule(optimizer, cfg, total_steps)
    log.info(
        "lora: %d examples, %d tokens, %s, %d optimizer steps",
        len(enc.ids),
        int(lengths.sum()),
        "bfloat16 base + float32 adapter" if bf16_base else f"autocast {amp}" if autocast else "float32",
        total_steps,
    )
    ckpt_steps = config.get("checkpoint_steps")

    def save() -> dict:
        """Besides the loop's own: the LoRA weights, the schedule and torch's RNG (dropout)."""
        return {
            "adapter": get_peft_model_state_dict(rt.unwrap(model)),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        }

    def load(state: dict) -> None:
        set_peft_model_state_dict(rt.unwrap(model), state["adapter"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state.get("rng"))

    loop = rt.EpochLoop("lora", config, model, optimizer, cfg.epochs, save=save, load=load, step_history=True)
    history = loop.history

    def train_epoch(epoch: int) -> dict:
        batches = bucketed_batches(lengths, cfg.batch_size, seed=seed, epoch=epoch)[:n_batches]
        todo = batches[loop.resume_batch :]  # a resumed epoch skips the batches its checkpoint had done
        bar = rt.LogProgress(todo, total=len(todo), desc=f"lora epoch {epoch}", leave=False)
        pending = 0
        optimizer.zero_grad()
        for i, idx in enumerate(bar, start=len(batches) - len(todo)):
            t_step = time.perf_counter()
            batch = {k: v.to(dev) for k, v in collate(enc, idx, pad).items()}
            with torch.autocast(device_type=dev.type, dtype=amp or torch.float32, enabled=autocast):
                loss = answer_loss(model, batch, cfg.loss == "first_token")
            (loss / cfg.grad_accum).backward()
            pending += 1
            if pending == cfg.grad_accum:
                _step(optimizer, scheduler, params, cfg)
                pending = 0
            history.append(
                {
                    "step": len(history),
                    "epoch": epoch,
                    "loss": loss.item(),
                    "tokens": int(lengths[idx].sum()),
                    "seconds": time.perf_counter() - t_step,
                    "attempt": loop.attempt,  # > 0: computed after a resume from a checkpoint
                }
            )
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if pending == 0 and ckpt_steps and scheduler.last_epoch % ckpt_steps == 0 and i + 1 < len(batches):
                # mid-epoch: the state after epoch - 1 and i + 1 batches of this one
                loop.save({"epoch": epoch, "batch": i + 1, "loss": history[-1]["loss"]}, epoch - 1, batch=i + 1)
        if pending:
            _step(optimizer, scheduler, params, cfg)
        epoch_losses = [h["loss"] for h in history if h["epoch"] == epoch]
        return {
            "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            "padding": padding_fraction(lengths, batches),
        }

    loop.run(train_epoch)

    def write(out: Path) -> None:
        rt.unwrap(model).save_pretrained(str(out))
        (out / "history.json").write_text(json.dumps(history, indent=1))

    loop.publish(write)
    return history


def _rng_state() -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict | None) -> None:
    if rng is None:
        return
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _schedule(optimizer: torch.optim.Optimizer, cfg: LoRAConfig, total_steps: int):
    """``lora.schedule``: constant lr, or linear warm-up over ``warmup`` of the steps then linear decay to 0."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warm = max(1, round(cfg.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step(optimizer, scheduler, params, cfg: LoRAConfig) -> None:
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def train_lora(
    examples: pa.Table | Any,
    model_name: str,
    cfg: LoRAConfig,
    *,
    opts: rt.TrainOptions,
    dtype: str = "auto",
    load_in_8bit: bool = False,
    checkpoint_steps: int | None = None,
) -> LoRAResult:
    """LoRA instruction tuning on ``examples`` (prompt: str, answer: str; Arrow table or Ray Dataset).

    Returns the adapter folder (``opts.out_dir``) and the per-step loss history. Resuming after a kill:
    standalone, states go to ``opts.checkpoint_dir`` (every epoch but the last, and every ``checkpoint_steps``
    optimizer steps) and a rerun with the same folder continues from the latest; under Ray pass a persistent
    ``opts.storage_path`` instead (a rerun on it continues from the run's latest checkpoint).
    """
    import ray.data

    if isinstance(examples, ray.data.Dataset):
        missing = [c for c in COLUMNS if c not in examples.schema().names]
        if missing:
            raise ValueError(f"train_lora: dataset lacks column(s) {missing}; got {examples.schema().names}")
        dataset = examples.select_columns(list(COLUMNS))
        table = None
    elif isinstance(examples, pa.Table):
        table = _check_table(examples)
        dataset = None
    else:
        raise TypeError(
            f"train_lora: examples must be a pyarrow.Table or ray.data.Dataset, got {type(examples).__name__}"
        )
    config = {
        "model_name": model_name,
        "cfg": cfg.model_dump(),
        **opts.loop_config("lora"),
        "dtype": dtype,
        "load_in_8bit": bool(load_in_8bit),
        "checkpoint_steps": checkpoint_steps,
    }
    if opts.use_ray:
        if dataset is None:
            dataset = ray.data.from_arrow(table)
        history = rt.run_loop(train_loop, config, opts, name="lora", datasets={"train": dataset})
    else:
        if table is None:
            table = _check_table(pa.concat_tables(ray.get(dataset.to_arrow_refs())))
        config["examples"] = table
        history = rt.run_loop(train_loop, config, opts, name="lora")
    return LoRAResult(adapter_dir=config["out_dir"], history=history)
