"""Instruction tuning with peft LoRA (RALLRec step 8): loss on the answer tokens only.

One training example is ``prompt_text + answer + EOS`` where ``prompt_text`` is
:func:`ragrec.llm.chat.fit_prompts` of the raw prompt (the chat template, shortened from the start
of the user text so the question at the end survives) — the exact input the scorer reads logits
from. Labels are -100 on every prompt and padding position.

``train_loop(config)`` runs standalone (examples from an Arrow table in ``config``) or under Ray
Train (examples from ``ray.train.get_dataset_shard("train")``); the loop body is the same.
Outputs in ``out_dir``: the adapter (``adapter_config.json``, ``adapter_model.safetensors``) written
by ``save_pretrained`` and ``history.json`` (one row per optimizer micro-step).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from ragrec.config import LoRAConfig
from ragrec.llm.chat import add_special_tokens, fit_prompts
from ragrec.training import ray_train as rt

log = logging.getLogger("ragrec.training.lora")

COLUMNS = ("prompt", "answer")
IGNORE_INDEX = -100


@dataclass
class LoRAResult:
    adapter_dir: str  # folder for PeftModel.from_pretrained(base_model, adapter_dir)
    history: list[dict]  # per micro-step: step, epoch, loss


# ----------------------------------------------------------------------------- batch encoding


def encode_batch(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_tokens: int
) -> dict[str, torch.Tensor]:
    """Tokenise B examples into right-padded ``input_ids``, ``attention_mask``, ``labels`` (B, L).

    Sequence b is ``prompt_ids_b + answer_ids_b + [eos]``, at most ``max_tokens`` long: the prompt
    is fitted to ``max_tokens - longest answer`` by :func:`fit_prompts` (dropping the oldest user
    text) and, as a last guard, cut from the left. ``labels`` equal ``input_ids`` on the answer and
    EOS positions and -100 elsewhere; ``L`` is the longest sequence in the batch (dynamic padding).
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"encode_batch: need as many answers as prompts (>0), got {len(prompts)} and {len(answers)}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
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
    p_len = np.minimum([len(p) for p in prompt_ids], budget)
    a_len = np.array([len(a) for a in answer_ids])
    lens = p_len + a_len
    b, width = len(lens), int(lens.max())
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.chain(p[len(p) - n :], a) for p, n, a in zip(prompt_ids, p_len, answer_ids)),
        dtype=np.int64,
        count=int(lens.sum()),
    )
    rows = np.repeat(np.arange(b), lens)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
    input_ids = np.full((b, width), pad, dtype=np.int64)
    input_ids[rows, cols] = flat
    pos = np.arange(width)[None, :]
    attention = pos < lens[:, None]
    labels = np.where(attention & (pos >= p_len[:, None]), input_ids, IGNORE_INDEX)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention.astype(np.int64)),
        "labels": torch.from_numpy(labels),
    }


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


def _epoch_batches(config: dict, cfg: LoRAConfig, epoch: int, seed: int) -> Iterator[tuple[list, list]]:
    """(prompts, answers) batches of this worker for one epoch: Ray dataset shard or the local table."""
    if rt.in_train_worker():
        shard = rt.dataset_shard("train")
        for batch in shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=max(cfg.batch_size * 16, 256),
            local_shuffle_seed=seed * 1009 + epoch,
        ):
            yield list(batch["prompt"]), list(batch["answer"])
        return
    table: pa.Table = config["examples"]
    for idx in rt.epoch_batches(table.num_rows, cfg.batch_size, seed=seed, epoch=epoch):
        part = table.take(pa.array(idx.numpy()))
        yield part.column("prompt").to_pylist(), part.column("answer").to_pylist()


# ----------------------------------------------------------------------------- loop


def train_loop(config: dict) -> list[dict]:
    """LoRA-tune ``config["model_name"]``. Keys: ``cfg`` (LoRAConfig dict), ``seed``, ``out_dir``,
    ``num_rows``, ``dtype``, optional ``report_every`` and, standalone, ``examples`` (Arrow table with
    prompt/answer). Returns the history."""
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
    model, tokenizer = load_causal_lm(config["model_name"], dtype=config.get("dtype", "auto"), device=str(dev),
                                      **kwargs)
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
    model.train()
    model = rt.prepare_model(model, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    start_epoch, history = 0, []
    state = rt.load_state()
    if state is not None:
        set_peft_model_state_dict(rt.unwrap(model), state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    steps_per_epoch = math.ceil(int(config["num_rows"]) / rt.world_size() / cfg.batch_size)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        bar = rt.LogProgress(_epoch_batches(config, cfg, epoch, seed), total=steps_per_epoch,
                             desc=f"lora epoch {epoch}")
        pending = 0
        optimizer.zero_grad()
        for prompts, answers in bar:
            batch = {k: v.to(dev) for k, v in encode_batch(tokenizer, prompts, answers, cfg.max_tokens).items()}
            loss = model(**batch).loss
            (loss / cfg.grad_accum).backward()
            pending += 1
            if pending == cfg.grad_accum:
                optimizer.step()
                optimizer.zero_grad()
                pending = 0
            history.append({"step": len(history), "epoch": epoch, "loss": loss.item()})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if pending:
            optimizer.step()
            optimizer.zero_grad()
        epoch_losses = [h["loss"] for h in history if h["epoch"] == epoch]
        row = {"epoch": epoch, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
               "seconds": time.perf_counter() - t0}
        if rt.report_due(epoch, cfg.epochs, config.get("report_every")):
            state = {
                "adapter": get_peft_model_state_dict(rt.unwrap(model)),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
            }
            rt.report_state(row, state)

    def write(out: Path) -> None:
        rt.unwrap(model).save_pretrained(str(out))
        (out / "history.json").write_text(json.dumps(history, indent=1))

    rt.publish(config, row if cfg.epochs > start_epoch else {"epoch": start_epoch - 1}, write)
    return history


def train_lora(
    examples: pa.Table | Any,
    model_name: str,
    cfg: LoRAConfig,
    *,
    use_ray: bool = True,
    seed: int = 0,
    out_dir: str | Path,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: str | None = None,
    dtype: str = "auto",
    load_in_8bit: bool = False,
) -> LoRAResult:
    """LoRA instruction tuning on ``examples`` (prompt: str, answer: str; Arrow table or Ray Dataset).

    Returns the adapter folder (``out_dir``) and the per-step loss history.
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
        raise TypeError(f"train_lora: examples must be a pyarrow.Table or ray.data.Dataset, got {type(examples).__name__}")
    config = {"model_name": model_name, "cfg": cfg.model_dump(), "seed": int(seed), "out_dir": str(out_dir),
              "dtype": dtype, "load_in_8bit": bool(load_in_8bit)}
    if use_ray:
        if dataset is None:
            dataset = ray.data.from_arrow(table)
        config["num_rows"] = dataset.count()
        res = rt.fit(
            train_loop,
            config,
            num_workers=num_workers,
            use_gpu=use_gpu,
            datasets={"train": dataset},
            storage_path=storage_path,
            name="lora",
        )
        history = res["return_value"]
    else:
        if table is None:
            table = _check_table(pa.concat_tables(ray.get(dataset.to_arrow_refs())))
        config["examples"], config["num_rows"] = table, table.num_rows
        history = train_loop(config)
    return LoRAResult(adapter_dir=str(out_dir), history=history)
