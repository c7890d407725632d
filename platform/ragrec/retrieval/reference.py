"""SLOW REFERENCE — the per-sample Python walk of the original RALLRec / ReLLa code.

Do not use this in pipelines: it exists as the ground truth for the tests of
:func:`ragrec.retrieval.history.select_history` and as the baseline of the retrieval benchmark. For each
sample it computes the similarities of the history items to the target, then sorts the history in a
Python loop, exactly following the rules documented in :mod:`ragrec.retrieval.history`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ragrec.config import RetrievalConfig
from ragrec.retrieval.history import CONTEXT_ITEMS, CONTEXT_RATINGS, rerank_position_scores

__all__ = ["reference_select_history_loop"]


def _by_similarity(hist: list[int], target: int, emb: np.ndarray) -> list[int]:
    """History positions sorted by similarity to the target, ties: later position first."""
    sims = emb[np.asarray(hist, dtype=np.int64)] @ emb[target] if hist else []
    return sorted(range(len(hist)), key=lambda j: (-sims[j], -j))


def _pick(hist: list[int], target: int, cfg: RetrievalConfig, emb, emb_b) -> list[int]:
    k, n = cfg.k, len(hist)
    recent = list(range(n - 1, -1, -1))[:k]
    if cfg.strategy == "recent":
        return recent
    rel = _by_similarity(hist, target, emb)
    if cfg.strategy == "relevance":
        return rel[:k]
    if cfg.strategy == "rerank":
        rel_tab, rec_tab = rerank_position_scores(k, cfg.alpha, cfg.beta)
        score: dict[int, float] = {}
        for r, j in enumerate(rel[:k]):
            score[j] = max(score.get(j, -1.0), rel_tab[r])
        for r, j in enumerate(recent):
            score[j] = max(score.get(j, -1.0), rec_tab[r])
        return sorted(score, key=lambda j: (-score[j], -j))[:k]
    if cfg.strategy == "hybrid":
        k_a = (k + 1) // 2
        rel_b = _by_similarity(hist, target, emb_b)
        from_a = rel[:k_a]
        from_b = [j for j in rel_b[: k - k_a] if j not in from_a]
        chosen = set(from_a) | set(from_b)
        for j in rel[k_a:]:
            if len(chosen) >= min(k, n):
                break
            if j not in chosen:
                from_a.append(j)
                chosen.add(j)
        return from_a + from_b
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def reference_select_history_loop(
    samples: pa.Table, cfg: RetrievalConfig, emb: np.ndarray | None, emb_b: np.ndarray | None = None
) -> pa.Table:
    """Slow per-sample version of :func:`ragrec.retrieval.history.select_history` (same output)."""
    emb = None if emb is None else np.asarray(emb, dtype=np.float32)
    emb_b = None if emb_b is None else np.asarray(emb_b, dtype=np.float32)
    hists = samples.column("history_item_ids").to_pylist()
    rats = samples.column("history_ratings").to_pylist()
    targets = samples.column("item_id").to_pylist()
    out_ids, out_rats = [], []
    for hist, rat, target in zip(hists, rats, targets):
        hist, rat = hist or [], rat or []
        picked = _pick(hist, target, cfg, emb, emb_b)
        out_ids.append([hist[j] for j in picked])
        out_rats.append([rat[j] for j in picked])
    out = samples
    for name, vals, typ in ((CONTEXT_ITEMS, out_ids, pa.int64()), (CONTEXT_RATINGS, out_rats, pa.float32())):
        arr = pa.array(vals, type=pa.list_(typ))
        i = out.schema.get_field_index(name)
        out = out.set_column(i, name, arr) if i >= 0 else out.append_column(name, arr)
    return out
