"""ER2ALM (2025): RAG-written item aspects, weighted user profiles, Gumbel noise control and LLM-augmented graph
training, evaluated by full ranking (Recall / NDCG / Precision@{10, 20, 50} over every unseen item).

The chain of cached stages (:mod:`ragrec.stages.er2alm`, ``docs/architecture.md`` §3):

  dataset -> samples (full_ranking: per-user random 8:1:1 of the positives, seeded)
          -> corpus (data.corpus_file | the synthetic catalog's | fallback: metadata + LLM descriptions)
          -> passages (faiss over the rag.encoder) -> aspects (LLM, Eq. 1) -> profiles + weights (LLM, Eq. 2-3)
          -> embeddings (each aspect / profile line, Eq. 4; user vector sum_k w_k e_k, Eq. 5)
          -> per seed: noise control (Eq. 6-12, kept aspects; the rest zeroed)
          -> LightGCN (seed = cfg.seed) -> candidates -> LLM liked / disliked picks -> ceil(eta |E|) pairs
          -> per seed: the enhanced GNN under Ray Train (Eq. 13-14) -> full-ranking evaluation.

The LLM stages run once (seeded by ``seed``); the ``gnn.seeds`` runs differ in noise control, the augmented pair
draw and the GNN's initialisation and negatives. The report rows are ER2ALM and LightGCN (same split, same seeds).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..artifacts import Artifact
from ..config import RunConfig
from ..stages.data import dataset_stage, samples_stage
from ..stages.er2alm import (
    FALLBACK_NOTE,
    aspects_stage,
    candidates_stage,
    corpus_source,
    corpus_stage,
    descriptions_stage,
    features_stage,
    gnn_stage,
    noise_stage,
    passages_stage,
    pick_orders,
    picked_pairs,
    picks_stage,
    profiles_stage,
)
from .base import FullRankingPipeline, Recommender

log = logging.getLogger("ragrec.er2alm")

MAIN, LIGHTGCN, BPR_MF = "ER2ALM", "LightGCN", "BPR-MF"


def seeds_of(cfg: RunConfig, n: int | None = None) -> list[int]:
    """The GNN seeds of a row: ``seed, seed + 1, ...`` (``gnn.seeds`` of them unless ``n`` is given)."""
    return [cfg.seed + s for s in range(n or cfg.gnn.seeds)]


def position_bias(counts: list[int]) -> tuple[int, float]:
    """``(number, share)``: the candidate number (1-based) the LLM wrote most often and its share of the picks."""
    c = np.asarray(counts)
    return int(c.argmax()) + 1, float(c.max() / max(c.sum(), 1))


def picks_notes(stats: dict, order: str) -> list[str]:
    """Report lines on the augmentation picks (:func:`~ragrec.stages.er2alm.picked_pairs`' stats): counts, picks
    per candidate number and per base-model rank, and a warning when one number holds half of a pick's answers
    (a small LLM answering by position rather than by item)."""
    pk = {k: v for k, v in stats.items() if not k.endswith(("_by_position", "_by_rank"))}
    out = [
        f"augmentation picks: {pk}",
        f"augmentation picks per candidate number in the prompt (candidates {order}): liked "
        f"{stats['liked_by_position']}; disliked {stats['disliked_by_position']}",
    ]
    if order != "ranked":
        out.append(
            f"augmentation picks per base-model rank (1 = best): liked {stats['liked_by_rank']}; "
            f"disliked {stats['disliked_by_rank']}"
        )
    for what in ("liked", "disliked"):
        counts = stats[f"{what}_by_position"]
        k, share = position_bias(counts)
        if len(counts) >= 3 and share >= 0.5:
            if order == "ranked":
                then = f"so its {what} pairs are the base model's rank-{k} items (augment.order: shuffled spreads them)"
            elif "rounds" in stats:
                then = (
                    f"so those picks carry little item preference; {stats[f'agreed_{what}']} users' {what} picks "
                    f"agreed across the {stats['rounds']} orders (about 1 in {len(counts)} by chance) and only "
                    "those are used"
                )
            else:
                then = (
                    "so those picks carry little item preference (augment.rounds: 2 or more keeps only the "
                    "picks that survive a reordering)"
                )
            out.append(
                f"warning: the LLM answers by position: candidate {k} is {share:.0%} of its {what} picks, {then}"
            )
    return out


def plot_picks(stats: dict, order: str, path) -> None:
    """Grouped bars of the liked / disliked picks per candidate number in the prompt and, with shuffled
    candidates, per base-model rank: a model that reads the items spreads them, one answering by position
    stacks them on one number."""
    from ..evaluation.report import png_figure

    panels = [("by_position", "candidate number in the prompt")]
    panels += [("by_rank", "base-model rank (1 = best)")] if order != "ranked" else []
    with png_figure(path, (5.5 * len(panels), 3.4), ncols=len(panels)) as axes:
        for a, (key, label) in zip(np.atleast_1d(axes), panels):
            liked, disliked = np.asarray(stats[f"liked_{key}"]), np.asarray(stats[f"disliked_{key}"])
            x = np.arange(1, len(liked) + 1)
            a.bar(x - 0.2, liked, width=0.4, label="liked", color="tab:green")
            a.bar(x + 0.2, disliked, width=0.4, label="disliked", color="tab:red")
            a.set_xticks(x)
            a.set_xlabel(label)
            a.set_ylabel("picks")
            a.legend(fontsize="small")


def pick_rounds(arts: dict[str, Artifact]) -> list[Artifact]:
    """The picks artifacts of every round: ``picks``, ``picks_2``, ... (``augment.rounds``)."""
    out = [arts["picks"]]
    while f"picks_{len(out) + 1}" in arts:
        out.append(arts[f"picks_{len(out) + 1}"])
    return out


class Pipeline(FullRankingPipeline):
    """The ER2ALM artifacts of one config (module docstring)."""

    loss_stages = ("gnn",)

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        super().__init__(cfg, force)
        self._variants: dict[str, dict[str, Artifact]] = {}  # upstream artifacts of variant configs
        self._picks_cache: tuple[tuple[str, ...], dict] | None = None  # (pick artifact keys, their stats)

    def upstream(self, cfg: RunConfig | None = None) -> dict[str, Artifact]:
        """Every stage before the per-seed ones; ``cfg`` other than the pipeline's (a variant) gets its own
        dict, the pipeline's goes into ``self.arts``. ``rag.enabled: false`` skips corpus and retrieval."""
        from ..config import config_hash

        own = cfg is None or cfg is self.cfg
        cfg = cfg or self.cfg
        a: dict[str, Artifact] = self.arts if own else self._variants.setdefault(config_hash(cfg), {})
        if "features" in a:
            return a
        store = self.store
        a["dataset"], a["samples"] = self._data(cfg)
        passages = None
        if cfg.rag.enabled:
            source = corpus_source(cfg)
            desc = descriptions_stage(store, cfg, a["dataset"]) if source == "metadata" else None
            if desc is not None:
                a["er2alm_descriptions"] = desc
            a["corpus"] = corpus_stage(store, cfg, a["dataset"], desc)
            passages = a["passages"] = passages_stage(store, cfg, a["dataset"], a["corpus"])
        a["aspects"] = aspects_stage(store, cfg, a["dataset"], passages)
        a["profiles"] = profiles_stage(store, cfg, a["dataset"], a["samples"], a["aspects"])
        a["features"] = features_stage(store, cfg, a["dataset"], a["aspects"], a["profiles"])
        if cfg.augment.enabled:
            base = self.gnn(cfg, cfg.seed, LIGHTGCN)
            a["candidates"] = candidates_stage(store, cfg, a["samples"], base)
            rounds = picks_stage(store, cfg, a["dataset"], a["samples"], a["candidates"])
            a.update({"picks" if r == 0 else f"picks_{r + 1}": art for r, art in enumerate(rounds)})
        return a

    def _data(self, cfg: RunConfig) -> tuple[Artifact, Artifact]:
        """``(dataset, samples)``: the same for every variant (no variant overrides a ``data`` field)."""
        if "samples" not in self.arts:
            self.arts["dataset"] = dataset_stage(self.store, cfg)
            self.arts["samples"] = samples_stage(self.store, cfg, self.arts["dataset"])
        return self.arts["dataset"], self.arts["samples"]

    def gnn(self, cfg: RunConfig, seed: int, kind: str = MAIN) -> Artifact:
        """The trained model of ``kind``: ``ER2ALM`` (``cfg``'s flags: side / use_users / use_items, noise,
        augment), ``LightGCN`` (no side, no augmentation) or ``BPR-MF`` (LightGCN without propagation)."""
        store = self.store
        ds, samples = self._data(cfg)
        if kind in (LIGHTGCN, BPR_MF):  # no side inputs: the side flags must not change the cache key
            plain = {"side": False, "use_users": True, "use_items": True}
            g = cfg.gnn.model_copy(update=plain | ({"num_layers": 0} if kind == BPR_MF else {}))
            return gnn_stage(store, cfg, ds, samples, seed, g)
        up = self.upstream(cfg)
        noise = noise_stage(store, cfg, up["features"], seed) if cfg.gnn.side and cfg.gnn.use_items else None
        aug = (up["candidates"], *pick_rounds(up)) if cfg.augment.enabled else None
        return gnn_stage(store, cfg, ds, samples, seed, cfg.gnn, features=up["features"], noise=noise, augment=aug)

    def models(self, cfg: RunConfig | None = None, kind: str = MAIN, seeds: int | None = None) -> list[Artifact]:
        cfg = cfg or self.cfg
        return [self.gnn(cfg, s, kind) for s in seeds_of(cfg, seeds)]

    def rankings(self, cfg: RunConfig | None = None) -> dict[str, list[Artifact]]:
        """ER2ALM and LightGCN, one artifact per seed; the first ER2ALM and noise-control artifacts go into
        ``self.arts`` (serving, report notes)."""
        cfg = cfg or self.cfg
        main, base = self.models(cfg, MAIN), self.models(cfg, LIGHTGCN)
        if cfg is self.cfg:
            self.arts["gnn"], self.arts["lightgcn"] = main[0], base[0]
            self.noise_control()
        return {MAIN: main, LIGHTGCN: base}

    def noise_control(self) -> Artifact | None:
        """The first seed's noise-control artifact of the pipeline's config (the kept aspects the report counts),
        also put into ``self.arts``; None when the GNN uses no item side."""
        cfg = self.cfg
        if not (cfg.gnn.side and cfg.gnn.use_items):
            return None
        self.arts["noise"] = noise_stage(self.store, cfg, self.upstream()["features"], cfg.seed)
        return self.arts["noise"]

    def main_models(self, cfg: RunConfig | None = None) -> list[Artifact]:
        return self.models(cfg, MAIN)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        return [(MAIN, LIGHTGCN)] if MAIN in names and LIGHTGCN in names else []

    # -- report -----------------------------------------------------------------------------------
    def report_metrics(self) -> dict:
        """Parse / repair counts of the aspects, profiles and picks, kept aspects per aspect, corpus source."""
        from ..config import ER2ALM_ASPECTS

        a = self.arts
        out: dict[str, Any] = {"corpus_source": a["corpus"].manifest()["source"] if "corpus" in a else "none (rag off)"}
        out.update(a["features"].read_json("stats"))
        if "picks" in a:
            out["picks"] = self._picks_stats()
        if "noise" in a:
            s = a["noise"].read_json("stats")
            out["noise"] = {
                "kept_per_aspect": dict(zip(ER2ALM_ASPECTS, s["kept_per_aspect"])),
                "present_per_aspect": dict(zip(ER2ALM_ASPECTS, s["present_per_aspect"])),
                "bank": s.get("bank"),
            }
        return {"er2alm": out}

    def report_notes(self) -> list[str]:
        m = self.report_metrics()["er2alm"]
        notes = []
        if m["corpus_source"] == "metadata":
            notes.append("RAG source: " + FALLBACK_NOTE)
        elif "corpus" in self.arts:
            c = self.arts["corpus"].manifest()
            notes.append(f"RAG source: {m['corpus_source']} corpus, {c['docs']} documents in {c['rows']} chunks")
        a, p = m["aspects"], m["profiles"]
        notes.append(
            f"aspect answers: {a['parsed']} complete, {a['partial']} partial, {a['failed']} unparsable, "
            f"{a['items_without_answer']} items not asked; missing per aspect {a['missing_per_aspect']}"
        )
        repairs = {k: p[k] for k in p if k.startswith("weight_") or k == "uniform_rows"}
        notes.append(
            f"profile answers: {p['parsed']} complete, {p['partial']} partial, {p['failed']} unparsable; "
            f"weight repairs {repairs}"
        )
        if "noise" in m:
            kept, present = m["noise"]["kept_per_aspect"], m["noise"]["present_per_aspect"]
            notes.append(
                "noise control kept / present per aspect: " + ", ".join(f"{k} {kept[k]}/{present[k]}" for k in kept)
            )
        if "picks" in m:
            notes.extend(picks_notes(m["picks"], self.cfg.augment.order))
        return notes

    def _picks_stats(self) -> dict:
        """:func:`picked_pairs`' stats and pair counts of the pipeline's picks, parsed once per set of pick
        artifacts (the run's notes, metrics and plots all read them)."""
        a = self.arts
        key = tuple(p.key for p in pick_rounds(a))
        if self._picks_cache is None or self._picks_cache[0] != key:
            liked, disliked, stats = picked_pairs(
                a["candidates"], pick_rounds(a), pick_orders(self.cfg, a["candidates"])
            )
            self._picks_cache = (key, {**stats, "liked_pairs": len(liked), "disliked_pairs": len(disliked)})
        return self._picks_cache[1]

    def report_plots(self) -> dict:
        """``picks.png``: the augmentation picks per candidate number (and per base-model rank when shuffled)."""
        m = self.report_metrics()["er2alm"]
        if "picks" not in m:
            return {}
        return {"picks": lambda p: plot_picks(m["picks"], self.cfg.augment.order, p)}

    @classmethod
    def recommender(cls, run) -> Recommender:
        return EmbeddingRecommender(run)


class EmbeddingRecommender(Recommender):
    """A finished run's ER2ALM model (first seed): ``user_emb @ item_emb.T`` over the items the user has no
    training positive of, best first, ties by item id (:func:`~ragrec.evaluation.full_ranking.top_k_items`,
    the function that wrote the run's ``predictions.parquet``)."""

    def __init__(self, run) -> None:
        from ..data.full_ranking import split_matrices
        from ..stages.er2alm import sizes

        missing = [k for k in ("gnn", "samples", "dataset") if k not in run.arts]
        if missing:
            raise FileNotFoundError(f"{run.run_dir}: run.json names no {missing} artifacts; rerun `ragrec run`")
        self.user_emb = np.load(run.arts["gnn"].path / "user_emb.npy")
        self.item_emb = np.load(run.arts["gnn"].path / "item_emb.npy")
        self.n_users, self.n_items = sizes(run.arts["dataset"])
        self.train = split_matrices(run.arts["samples"].read_table("samples"), self.n_users, self.n_items)["train"]

    def unseen(self, user_id: int) -> int:
        return self.n_items - int(self.train.indptr[user_id + 1] - self.train.indptr[user_id])

    def recommend(self, user_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        from ..evaluation.full_ranking import top_k_items

        items, scores = top_k_items(self.user_emb, self.item_emb, self.train, [int(user_id)], int(k))
        keep = items[0] >= 0
        return items[0][keep], scores[0][keep]
