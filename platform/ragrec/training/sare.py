"""SCoRe step 5: the Self-Assessing REranker (SARE), a cross-encoder tuned with InfoNCE.

Paper §3.3: ``L_SARE = -log g(p_t, e_pi(1)) / (g(p_t, e_pi(1)) + sum_{u_i in O_bar} g(p_t, e_i))`` with
``g = exp(score / tau)``. A training query is the basic prompt text ``P^b`` of a (user, item) pair;
its candidates are the documents of its Ke CAR-retrieved users, ORDERED by the self-assessment
ranking (:func:`ragrec.retrieval.users.rank_by_rationale`). The positive is the candidate at rank 0;
each epoch draws K2 negatives uniformly without replacement from ranks >= K1.
(The paper's formula writes ``Sample_K1(O[K2:])``; this module follows the config's naming:
``sare.k1`` = first negative rank, ``sare.k2`` = negatives per query, as in the SCoRe paper.)

Model: ``transformers.AutoModelForSequenceClassification(num_labels=1)`` loaded offline from
``ragrec.llm.registry.model_path(cfg.model)``. For ``minilm-l6`` (a sentence-transformers BERT
folder) this is ``BertForSequenceClassification`` with the pretrained encoder and pooler and a new
1-logit head; any HF reranker folder (e.g. ``BAAI/bge-reranker-large``) loads the same way. The
tuned folder (``out_dir/model``) is a plain HF sequence-classification folder with its tokenizer
(``model_max_length`` = ``sare.max_tokens``), so ``sentence_transformers.CrossEncoder(model_dir)``
loads it too (its ``predict`` applies a sigmoid to the same logit). Inputs are
``[CLS] query [SEP] doc [SEP]`` truncated ``longest_first`` to ``max_tokens``.

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker (see :mod:`ray_train`);
:func:`train_sare` is the public entry point.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragrec.config import SAREConfig
from ragrec.training import ray_train as rt

MODEL_SUBDIR = "model"


@dataclass
class SAREResult:
    model_dir: Path  # HF sequence-classification folder (1 logit) + tokenizer
    history: list[dict]  # one dict per epoch: epoch, loss, acc (positive above all sampled negatives), seconds


# ----------------------------------------------------------------------------- helpers


def load_cross_encoder(name_or_dir: str | Path, device: str | torch.device = "cpu", seed: int = 0):
    """``(tokenizer, model)``: a 1-logit sequence-classification model from a folder or registry name, offline.

    A head missing from the checkpoint (a bi-encoder folder such as ``minilm-l6``) is initialised
    from ``seed`` without touching the global torch RNG, so an untuned reranker is reproducible.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ragrec.llm.registry import model_path

    path = Path(name_or_dir)
    source = str(path) if path.is_dir() else model_path(str(name_or_dir))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, local_files_only=True)
    return tokenizer, model.to(device)


def encode_pairs(tokenizer, queries: Sequence[str], docs: Sequence[str], max_tokens: int, device) -> dict:
    """Tokenised ``(query, doc)`` pairs, truncated ``longest_first`` to ``max_tokens``, padded, on ``device``."""
    enc = tokenizer(
        list(queries),
        list(docs),
        truncation="longest_first",
        max_length=int(max_tokens),
        padding=True,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in enc.items()}


def candidate_lengths(candidates: Sequence[Sequence[str]], k1: int, k2: int) -> np.ndarray:
    """(P,) int64 candidates per query; raises when one has fewer than ``k1 + k2`` (rank 0 + K2 from ranks >= K1)."""
    lengths = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=len(candidates))
    short = np.flatnonzero(lengths < k1 + k2)
    if short.size:
        q = int(short[0])
        raise ValueError(
            f"sare: query {q} has {int(lengths[q])} candidates but sare.k1 + sare.k2 = {k1} + {k2} = {k1 + k2} "
            "are needed "
            f"(positive = rank 0, {k2} negatives from ranks >= {k1}); {short.size} queries are short. "
            "Retrieve more users (ci.ke) or lower sare.k1 / sare.k2"
        )
    return lengths


def sample_negatives(lengths: np.ndarray, k1: int, k2: int, rng: np.random.Generator) -> np.ndarray:
    """(P, k2) int64 ranks drawn uniformly without replacement from ``k1 .. lengths[p]-1`` per row."""
    cols = np.arange(int(lengths.max()))[None, :]
    keys = rng.random((len(lengths), cols.shape[1]))
    keys[(cols < k1) | (cols >= lengths[:, None])] = np.inf  # never drawn
    return np.argsort(keys, axis=1)[:, :k2].astype(np.int64)


# ----------------------------------------------------------------------------- the loop


def train_loop(config: dict) -> list[dict]:
    """Tune the reranker with InfoNCE. ``config`` keys:

    ``queries`` list[str] (P,); ``docs`` list[str] all candidates flattened query by query (rank
    order); ``offsets`` (P,) int64 start of each query's candidates in ``docs``; ``lengths`` (P,)
    int64; ``cfg`` (SAREConfig as dict); ``seed``; ``out_dir``; optional ``checkpoint_dir``, ``report_every``
    (see :class:`ray_train.EpochLoop`).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = SAREConfig.model_validate(config["cfg"])
    queries: list[str] = list(config["queries"])
    docs: list[str] = list(config["docs"])
    offsets = np.asarray(config["offsets"], dtype=np.int64)
    lengths = np.asarray(config["lengths"], dtype=np.int64)
    # the seed drives dropout; the new head's init is seeded too: the same on every rank
    seed, rank, world, dev = rt.worker_setup(config)

    tokenizer, net = load_cross_encoder(cfg.model, seed=seed)
    model = rt.prepare_model(net, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loop = rt.EpochLoop("sare", config, model, optimizer, cfg.epochs)
    group = 1 + cfg.k2  # pairs per query: positive first

    def train_epoch(epoch: int) -> dict:
        negs = sample_negatives(lengths, cfg.k1, cfg.k2, np.random.default_rng([seed, epoch]))  # (P, k2)
        ranks = np.concatenate([np.zeros((len(queries), 1), dtype=np.int64), negs], axis=1)  # (P, 1 + k2)
        flat = offsets[:, None] + ranks  # (P, 1 + k2) positions in docs
        batches = rt.epoch_batches(len(queries), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        hits, count = 0, 0

        def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
            nonlocal hits, count
            sel = idx.numpy()
            q_text = [queries[q] for q in np.repeat(sel, group)]
            d_text = [docs[i] for i in flat[sel].ravel()]
            logits = model(**encode_pairs(tokenizer, q_text, d_text, cfg.max_tokens, dev)).logits.view(len(sel), group)
            hits += int((logits[:, :1] > logits[:, 1:]).all(dim=1).sum())
            count += len(sel)
            loss = F.cross_entropy(logits / cfg.temperature, torch.zeros(len(sel), dtype=torch.long, device=dev))
            return loss, len(sel)

        loss = loop.train_batches(epoch, batches, step)
        return {"loss": loss, "acc": hits / max(count, 1)}

    history = loop.run(train_epoch)

    def write(out: Path) -> None:
        folder = out / MODEL_SUBDIR
        rt.unwrap(model).save_pretrained(str(folder))
        tokenizer.model_max_length = int(cfg.max_tokens)  # score_pairs' default truncation
        tokenizer.save_pretrained(str(folder))
        (out / "history.json").write_text(json.dumps(history, indent=1))

    loop.publish(write)
    return history


# ----------------------------------------------------------------------------- public API


def train_sare(
    queries: list[str],
    candidates: list[list[str]],
    cfg: SAREConfig,
    *,
    opts: rt.TrainOptions,
) -> SAREResult:
    """Tune ``cfg.model`` to put each query's rank-0 candidate above candidates ranked >= K1.

    Args:
        queries: (P,) basic prompts ``P^b`` of the training (user, item) pairs.
        candidates: (P,) lists of retrieved users' documents, each already ordered by the rationale
            ranking (best first), each with at least ``cfg.k1 + cfg.k2`` entries.
        opts: where it runs, seed, ``out_dir`` (:class:`~ragrec.training.ray_train.TrainOptions`).

    Returns the tuned model's folder (``out_dir/model``) and the per-epoch history.
    """
    if len(queries) != len(candidates):
        raise ValueError(f"sare: {len(queries)} queries but {len(candidates)} candidate lists; give one list per query")
    if len(queries) == 0:
        raise ValueError("sare: no training queries (rationale.pairs produced none)")
    lengths = candidate_lengths(candidates, cfg.k1, cfg.k2)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    config = {
        "queries": list(queries),
        "docs": [d for c in candidates for d in c],
        "offsets": offsets,
        "lengths": lengths,
        "cfg": cfg.model_dump(),
        **opts.loop_config("sare"),
    }
    history = rt.run_loop(train_loop, config, opts, name="sare")
    return SAREResult(model_dir=Path(config["out_dir"]) / MODEL_SUBDIR, history=history)


@torch.inference_mode()
def score_pairs(
    model_dir: str | Path,
    queries: list[str],
    docs: list[list[str]],
    batch_size: int = 64,
    max_tokens: int | None = None,
    *,
    device: str = "auto",
    precision: str = "float32",
) -> np.ndarray:
    """(Q, K) float32 reranker logits of ``(queries[q], docs[q][k])`` (higher = more useful).

    All Q*K pairs are flattened, sorted by length (less padding) and scored in batches of
    ``batch_size``; results do not depend on the batch size beyond float rounding. ``max_tokens``
    None uses the folder's ``model_max_length`` (``sare.max_tokens`` for a tuned folder), capped
    at the model's position limit. ``model_dir`` may also be a registry name (an untuned head).
    ``precision`` (``sare.precision``): ``auto`` runs the pass in bfloat16 where the device does natively
    (:func:`~ragrec.training.lora.resolve_precision`), ``bfloat16`` always, ``float32`` never.
    """
    from ragrec.runtime import device as pick_device
    from ragrec.training.lora import resolve_precision

    if len(queries) != len(docs):
        raise ValueError(f"score_pairs: {len(queries)} queries but {len(docs)} candidate lists")
    widths = {len(d) for d in docs}
    if len(widths) > 1:
        raise ValueError(f"score_pairs: every query needs the same number of candidates, got {sorted(widths)}")
    num_q, num_k = len(queries), (widths.pop() if widths else 0)
    if num_q * num_k == 0:
        return np.zeros((num_q, num_k), dtype=np.float32)
    if batch_size < 1:
        raise ValueError(f"score_pairs: batch_size must be >= 1, got {batch_size}")
    dev = torch.device(pick_device(device))
    tokenizer, model = load_cross_encoder(model_dir, dev)
    model.eval()
    if precision != "float32" and resolve_precision(precision, dev) == torch.bfloat16:
        model = model.to(torch.bfloat16)  # logits are cast back to float32 below
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    max_len = min(int(max_tokens or tokenizer.model_max_length or limit), limit)

    q_flat = np.repeat(np.arange(num_q), num_k)  # (Q*K,) query of each pair
    d_flat = [d for row in docs for d in row]
    order = np.argsort(
        -(
            np.fromiter((len(queries[q]) for q in q_flat), dtype=np.int64, count=len(q_flat))
            + np.fromiter((len(d) for d in d_flat), dtype=np.int64, count=len(d_flat))
        ),
        kind="stable",
    )
    out = np.empty(num_q * num_k, dtype=np.float32)
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        enc = encode_pairs(tokenizer, [queries[q] for q in q_flat[sel]], [d_flat[i] for i in sel], max_len, dev)
        out[sel] = model(**enc).logits[:, 0].float().cpu().numpy()
    return out.reshape(num_q, num_k)
