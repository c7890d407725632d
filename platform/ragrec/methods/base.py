"""The method contract: what every method implements, and the registry that the CLI, the Serve app and the
Tune sweep use to find one (``get_method(cfg.method)``), so that no layer above knows a method by name.

A method is two things:

* a :class:`MethodPipeline` subclass (its stages behind three calls): ``upstream()`` builds every cached
  stage before instruction tuning, ``adapter(cfg)`` the LoRA adapter of a config, ``predict(adapter, cfg,
  split_name)`` scores a split, and a few class attributes that the shared run and report read;
* a :class:`Method` entry in :data:`METHODS`: its name (the config's ``method:``), its title, the config
  sections it reads, where its pipeline and its paper evaluation live, and whether it can be served.

``ragrec run`` is :func:`ragrec.methods.runner.run` for every method. See ``docs/architecture.md``
("How to add a method").
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig
from ..runtime import seed_everything, setup_logging, use_ray_config
from ..stages import score_stage
from .common import eval_samples, train_interactions

COMMON_SECTIONS = (
    "method",
    "name",
    "seed",
    "artifacts_dir",
    "output_dir",
    "data",
    "llm",
    "lora",
    "eval",
    "ray",
    "tracking",
)
"""Config fields every method reads; a method adds its own sections (:attr:`Method.sections`)."""


@dataclass
class RunFusion:
    """The fusion part of a run (``eval.fusion: true``): result rows (the collaborative model, fusion, fusion
    w/o LLM), report sections and notes, ``metrics.json`` entries and prediction columns (``p_fused``...)."""

    rows: list[dict]
    sections: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)


class MethodPipeline(ABC):
    """The artifacts of one config of one method. Stages are content-addressed, so building them again
    (a variant, a sweep point, a rerun) only computes what its config changes."""

    #: stages whose ``history`` artifact gets a loss plot in the run's report (in this order)
    loss_stages: ClassVar[tuple[str, ...]] = ("lora",)
    #: the stage that writes the instruction-tuning examples (its time counts as training time)
    examples_stage: ClassVar[str | None] = "examples"
    #: what ``predict`` returns: ``ctr`` (P(yes) per sample, AUC), ``rerank`` (:class:`RankingPipeline`) or
    #: ``full_ranking`` (:class:`FullRankingPipeline`)
    task: ClassVar[str] = "ctr"

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        setup_logging()
        seed_everything(cfg.seed)
        use_ray_config(cfg.ray)
        self.cfg = cfg
        self.store = ArtifactStore(cfg.artifacts_dir, force=force)
        self.arts: dict[str, Artifact | None] = {}

    @abstractmethod
    def upstream(self, cfg: RunConfig | None = None) -> Any:
        """Build every stage before instruction tuning that ``cfg`` (default: the pipeline's) needs; the
        artifacts go into ``self.arts`` (at least ``dataset`` and ``samples``)."""

    @abstractmethod
    def adapter(self, cfg: RunConfig | None = None) -> Artifact | None:
        """The LoRA adapter of ``cfg`` (None when ``lora.enabled`` is false); call :meth:`upstream` first."""

    @abstractmethod
    def predict(
        self, adapter: Artifact | None, cfg: RunConfig | None = None, split_name: str = "test", name: str = "scores"
    ) -> tuple[pa.Table, Artifact]:
        """Score the ``split_name`` evaluation samples with ``cfg``'s prompts and ``adapter``: ``(predictions,
        scores artifact)``; predictions = the samples without history lists + ``prob`` (float32 P(yes))."""

    # -- shared -----------------------------------------------------------------------------------
    def samples(self) -> pa.Table:
        return self.arts["samples"].read_table("samples")

    def eval_samples(self, split_name: str = "test") -> pa.Table:
        return eval_samples(self.samples(), self.cfg, split_name)

    def train_interactions(self) -> pa.Table:
        """The interactions before the first valid/test sample (what baselines may count)."""
        return train_interactions(self.arts["dataset"].read_table("interactions"), self.samples())

    def score_prompts(
        self, samples: pa.Table, prompts: pa.Array, adapter: Artifact | None, cfg: RunConfig, name: str
    ) -> Artifact:
        """The ``name`` scores artifact of ``predict``: P(yes) of each sample's prompt under ``cfg.llm`` and
        ``adapter``, keyed by ``sample_id``."""
        rows = pa.table({"sample_id": samples.column("sample_id"), "prompt": prompts})
        return score_stage(
            self.store,
            name,
            rows,
            key="sample_id",
            prompt="prompt",
            llm_cfg=cfg.llm,
            adapter=adapter,
            block_size=cfg.llm.batch_size * 8,
            inputs=[self.arts["samples"]],
        )

    def run_fusion(self, preds: pa.Table, llm_name: str) -> RunFusion:
        """``eval.fusion: true`` in ``ragrec run``: fit the fusion on the validation split, apply it to
        ``preds`` (the test predictions of the tuned model) and add its artifacts to ``self.arts``."""
        raise ValueError(
            f"eval.fusion: true is not available in `ragrec run` for method '{self.cfg.method}'; "
            f"`ragrec evaluate` reports its fusion rows (leave eval.fusion unset or false for `ragrec run`)"
        )

    def report_notes(self) -> list[str]:
        """Method-specific lines for the run's report (e.g. a sanity metric of an upstream model)."""
        return []

    def report_metrics(self) -> dict:
        """Method-specific entries for the run's ``metrics.json``."""
        return {}

    def report_plots(self) -> dict:
        """Method-specific plots of the run's report: ``{name: write(path)}`` (``<name>.png`` in the run folder)."""
        return {}


class ListScorer(ABC):
    """Scores one user's candidate list the way a finished ranking run scored its offline lists."""

    n_users: int
    n_items: int

    @abstractmethod
    def score(
        self,
        user_id: int,
        item_ids: Sequence[int],
        as_of: int | None = None,
        history: Sequence[int] | None = None,
    ) -> np.ndarray:
        """``(len(item_ids),)`` float32 scores of the list, in its given order (higher = ranked first). The
        user's history: ``history`` (item ids, oldest first) when given, else their known positives before
        ``as_of`` (all of them without it)."""


class RankingPipeline(MethodPipeline):
    """A method whose task ranks candidate lists (``data.protocol: rerank``) instead of predicting P(yes).

    It tunes no LLM (``adapter`` is None). ``predict`` returns the evaluated lists with the method's ``scores``
    (list<float32>, one per candidate) and ``rankings`` every row of its run report (``name -> (N, C)``
    scores); the shared runner adds the popularity row, MAP@k / NDCG@k and the user-level intervals.
    """

    task: ClassVar[str] = "rerank"
    examples_stage: ClassVar[str | None] = None

    def adapter(self, cfg: RunConfig | None = None) -> Artifact | None:
        return None

    @abstractmethod
    def rankings(self, cfg: RunConfig | None = None, split_name: str = "test") -> dict[str, np.ndarray]:
        """``row name -> (N, C)`` scores of the evaluated ``split_name`` lists (the order of ``predict``'s)."""

    @classmethod
    def list_scorer(cls, run: Any) -> ListScorer:
        """The :class:`ListScorer` of a finished run (``ragrec serve``'s ``POST /rerank``)."""
        raise ValueError(f"{cls.__module__}: this ranking method has no list scorer for serving")

    def eval_lists(self, split_name: str = "test"):
        """The evaluated lists of ``split_name`` (:class:`~ragrec.data.lists.Lists`)."""
        from .common import eval_lists

        return eval_lists(self.samples(), self.cfg, split_name)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        """``(row, reference row)`` pairs of the report whose paired difference is shown (none by default)."""
        return []

    def train_positive_counts(self) -> np.ndarray:
        """``(num_items,)`` each item's positives in the training split: the trivial popularity ranking."""
        from ..data.rerank import train_positive_counts

        ds = self.arts["dataset"]
        return train_positive_counts(ds.read_table("interactions"), self.cfg.data, num_items=ds.manifest()["items"])


class Recommender(ABC):
    """A finished full-ranking run's top-k for one user: the unseen (non-training) items, best first."""

    n_users: int
    n_items: int

    @abstractmethod
    def recommend(self, user_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(items (k',) int64, scores (k',) float)`` with ``k' = min(k, unseen items)``: the same list and
        scores as the run's offline ranking of that user (``predictions.parquet``)."""

    @abstractmethod
    def unseen(self, user_id: int) -> int:
        """How many items the user can be recommended (the items not in their training positives)."""


class FullRankingPipeline(MethodPipeline):
    """A method whose task ranks every item for every user (``data.protocol: full_ranking``, ER2ALM).

    It tunes no LLM (``adapter`` is None). ``rankings`` gives every model row of the run report as one artifact
    per seed holding ``user_emb.npy`` (U, d) and ``item_emb.npy`` (I, d) (score = inner product); the shared
    runner (:mod:`ragrec.methods.full_ranking`) adds the popularity row, Recall / NDCG / Precision@{10, 20, 50}
    with intervals over seeds and users, and the run folder.
    """

    task: ClassVar[str] = "full_ranking"
    examples_stage: ClassVar[str | None] = None
    loss_stages: ClassVar[tuple[str, ...]] = ()

    def adapter(self, cfg: RunConfig | None = None) -> Artifact | None:
        return None

    @abstractmethod
    def rankings(self, cfg: RunConfig | None = None) -> dict[str, list[Artifact]]:
        """``row name -> [artifact per seed]`` (the first row is the method's own); call :meth:`upstream` first."""

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        """``(row, reference row)`` pairs of the report whose paired difference is shown (none by default)."""
        return []

    def main_models(self, cfg: RunConfig | None = None) -> list[Artifact]:
        """The method's own row of :meth:`rankings` (one artifact per seed) without building the other rows
        (the Tune objective and ``predict`` need only this one); override when the rows train separately."""
        return next(iter(self.rankings(cfg).values()))

    def sizes(self) -> tuple[int, int]:
        """``(num_users, num_items)`` of the dataset (dense id spaces)."""
        import pyarrow.compute as pc

        ds = self.arts["dataset"]
        m = ds.manifest()
        users = m.get("users") or int(pc.max(ds.read_table("interactions").column("user_id")).as_py()) + 1
        return int(users), int(m["items"])

    def split_matrices(self) -> dict:
        """``{"train", "valid", "test"}`` -> ``(U, I)`` CSR positives of the ``full_ranking`` split."""
        from ..data.full_ranking import split_matrices

        return split_matrices(self.samples(), *self.sizes())

    def predict(
        self, adapter: Artifact | None = None, cfg: RunConfig | None = None, split_name: str = "test", name: str = ""
    ) -> tuple[pa.Table, Artifact]:
        """The method's ranked lists (first row, first seed) of every user with a ``split_name`` positive:
        ``user_id, items (top 50), scores, positives`` (the user's ``split_name`` items), and the model artifact."""
        from ..evaluation.full_ranking import DEFAULT_FULL_KS, top_k_items

        art = self.main_models(cfg)[0]
        mats = self.split_matrices()
        target = mats[split_name]
        users = np.flatnonzero(np.diff(target.indptr) > 0)
        ue, ie = np.load(art.path / "user_emb.npy"), np.load(art.path / "item_emb.npy")
        items, scores = top_k_items(ue, ie, mats["train"], users, max(DEFAULT_FULL_KS))
        lists = lambda x, t: pa.array(list(x), pa.list_(t))
        pos = [target.indices[target.indptr[u] : target.indptr[u + 1]].astype(np.int64) for u in users]
        table = pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "items": lists(items, pa.int64()),
                "scores": lists(scores.astype(np.float32), pa.float32()),
                "positives": lists(pos, pa.int64()),
            }
        )
        return table, art

    @classmethod
    def recommender(cls, run: Any) -> Recommender:
        """The :class:`Recommender` of a finished run (``ragrec serve``'s ``POST /recommend``)."""
        raise ValueError(f"{cls.__module__}: this full-ranking method has no recommender for serving")


@dataclass(frozen=True)
class Method:
    """One registered method. ``pipeline`` and ``evaluation`` are ``module:attribute`` paths, imported on
    first use so that importing the registry stays cheap."""

    name: str
    title: str
    sections: tuple[str, ...]
    pipeline_path: str
    evaluation_path: str | None = None
    servable: bool = False
    serving_note: str = ""

    def pipeline(self, cfg: RunConfig, force: tuple[str, ...] = ()) -> MethodPipeline:
        self._require(cfg, "pipeline")
        return _resolve(self.pipeline_path)(cfg, force)

    def evaluation_pipeline(self, cfg: RunConfig, force: tuple[str, ...] = ()) -> MethodPipeline:
        """The pipeline an evaluation of ``cfg`` scores on, its upstream stages run."""
        self._require(cfg, "evaluation")
        pipe = self.pipeline(cfg, force)
        pipe.upstream()
        return pipe

    def _require(self, cfg: RunConfig, what: str) -> None:
        if cfg.method != self.name:
            raise ValueError(f"the {self.title} {what} needs method: {self.name} (got '{cfg.method}')")

    def evaluate(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        """The method's paper evaluation (variants, baselines, sweeps) on ``cfg``'s test samples."""
        if self.evaluation_path is None:
            raise ValueError(f"`ragrec evaluate` is not implemented for method '{self.name}' yet")
        return _resolve(self.evaluation_path)(cfg, force=force)

    @property
    def config_fields(self) -> tuple[str, ...]:
        return COMMON_SECTIONS + self.sections

    def config_dict(self, cfg: RunConfig) -> dict:
        """``cfg`` as JSON-able dict with only the fields this method reads (report, run.json, config show)."""
        return cfg.model_dump(mode="json", include=set(self.config_fields))

    @property
    def task(self) -> str:
        """``ctr``, ``rerank`` or ``full_ranking``: what the method's pipeline predicts (imports its module)."""
        return _resolve(self.pipeline_path).task

    def pipeline_class(self) -> type[MethodPipeline]:
        return _resolve(self.pipeline_path)

    def require_servable(self) -> None:
        if not self.servable:
            raise ValueError(f"serving a {self.title} run is not supported yet: {self.serving_note}")


def _resolve(path: str) -> Callable[..., Any]:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _builtin(name: str, title: str, sections: tuple[str, ...], **kw: Any) -> Method:
    """A method of this package: its pipeline is ``ragrec.methods.<name>:Pipeline``, its evaluation
    ``ragrec.methods.<name>_evaluate:evaluate``."""
    return Method(
        name=name,
        title=title,
        sections=sections,
        pipeline_path=f"ragrec.methods.{name}:Pipeline",
        evaluation_path=f"ragrec.methods.{name}_evaluate:evaluate",
        **kw,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _builtin(
            "rallrec",
            "RALLRec",
            ("description", "embedding", "lightgcn", "projector", "retrieval", "prompt"),
            servable=True,
        ),
        _builtin(
            "score",
            "SCoRe",
            ("sasrec", "user_text", "car", "rationale", "sare", "ci"),
            servable=False,
            serving_note="the Serve chain (retrieve -> rerank -> predict) retrieves items; SCoRe's context is "
            "similar users (CAR + SARE), which the chain has no deployment for. Serve a RALLRec run "
            "(method: rallrec), or score SCoRe offline with `ragrec run`",
        ),
        _builtin("ur4rec", "UR4Rec", ("ur4rec", "reranker"), servable=True),
        _builtin("er2alm", "ER2ALM", ("description", "rag", "profile", "noise", "augment", "gnn"), servable=True),
    )
}


def get_method(name: str) -> Method:
    """The registered method called ``name`` (the config's ``method:``); ValueError listing them otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method '{name}' is not registered; choose from {sorted(METHODS)}") from None


def method_names() -> Sequence[str]:
    return tuple(METHODS)
