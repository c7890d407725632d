"""``ragrec evaluate`` for UR4Rec on a fake pipeline: which rows each backbone gets (Table 2 rows everywhere, the
Table 3 ablations only on ``eval.ablation_backbones``), the proxy sweep on ``eval.proxy_sweep_backbones``, and
that each row's metrics come from the scores of the stage it names."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ragrec.config import load_config
from ragrec.methods import ur4rec_evaluate
from ragrec.methods.base import get_method

N_LISTS, N_CAND = 40, 10


class Lists(SimpleNamespace):
    def __len__(self):
        return len(self.target_index)


class FakePipe:
    """Scores per (backbone, kind, proxies, use_cl, use_pim) stage; the target (column 0) ranks at a rank fixed by
    the stage, so every row's NDCG@1 says which stage it read."""

    def __init__(self, tmp_path, rank_of):
        self.tmp, self.rank_of, self.calls, self.arts = tmp_path, rank_of, [], {}
        rng = np.random.default_rng(0)
        self.candidates = np.stack([rng.permutation(50)[:N_CAND] for _ in range(N_LISTS)])

    def eval_lists(self, split):
        return Lists(
            target_index=np.zeros(N_LISTS, dtype=np.int64), users=np.arange(N_LISTS) // 2, candidates=self.candidates
        )

    def train_positive_counts(self):
        return np.arange(50, dtype=np.int64)

    def _art(self, key):
        self.calls.append(key)
        rank = self.rank_of(key)
        s = np.tile(-np.arange(N_CAND, dtype=np.float32), (N_LISTS, 1))  # candidate j has rank j
        s[:, [0, rank]] = s[:, [rank, 0]]  # the target (column 0) at `rank`
        path = self.tmp / "_".join(map(str, key))
        path.mkdir(exist_ok=True)
        np.save(path / "scores_test.npy", s)
        return SimpleNamespace(path=path)

    def base(self, backbone, cfg):
        return self._art((backbone, "none", cfg.ur4rec.proxies, cfg.ur4rec.use_cl, cfg.ur4rec.use_pim))

    def augmented(self, backbone, kind, cfg):
        return self._art((backbone, kind, cfg.ur4rec.proxies, cfg.ur4rec.use_cl, cfg.ur4rec.use_pim))


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    def run(overrides, rank_of=lambda key: 0):
        cfg = load_config(
            "configs/ur4rec_ml100k.yaml",
            [f"output_dir={tmp_path / 'runs'}", "eval.bootstrap=50", *overrides],
        )
        pipe = FakePipe(tmp_path, rank_of)
        monkeypatch.setattr(type(get_method("ur4rec")), "evaluation_pipeline", lambda self, c, force=(): pipe)
        return ur4rec_evaluate.evaluate(cfg), pipe

    return run


def test_ablations_only_on_ablation_backbones_and_sweep_only_on_sweep_backbones(evaluated):
    res, pipe = evaluated(
        [
            "reranker.backbones=[dlcm,prm,sasrec]",
            "eval.ablation_backbones=[prm]",
            "eval.proxy_sweep=[2,8]",
            "eval.proxy_sweep_backbones=[sasrec]",
        ]
    )
    tables = res.metrics["tables"]
    variants = {b: [r["variant"] for r in rows] for b, rows in tables.items()}
    assert variants == {
        "dlcm": ["base", "text", "llm", "ur4rec"],
        "prm": ["base", "text", "llm", "ur4rec", "no_cl", "no_pim"],
        "sasrec": ["base", "text", "llm", "ur4rec"],
    }
    # no ablation retriever was ever asked for outside PRM
    assert {k[0] for k in pipe.calls if k[3] is False or k[4] is False} == {"prm"}
    assert list(res.metrics["sweep"]) == ["sasrec"]
    assert [pt["k"] for pt in res.metrics["sweep"]["sasrec"]] == [2, 8]
    report = (res.run_dir / "report.md").read_text()
    assert "Ablations w/o CL and w/o PIM on PRM only" in report


def test_the_evaluation_writes_beside_the_runs_report_not_over_it(evaluated, tmp_path):
    run_dir = tmp_path / "runs" / "ur4rec_ml100k"
    run_dir.mkdir(parents=True)
    (run_dir / "report.md").write_text("the run's report")
    (run_dir / "metrics.json").write_text("{}")
    res, _ = evaluated(["reranker.backbones=[dlcm]", "eval.proxy_sweep=[]"])
    assert res.run_dir == run_dir / "evaluate"
    assert "UR4Rec evaluation" in (res.run_dir / "report.md").read_text()
    assert (run_dir / "report.md").read_text() == "the run's report"
    assert (run_dir / "metrics.json").read_text() == "{}"


def test_each_row_reads_its_own_stage(evaluated):
    """The stage's target rank decides the row's NDCG@1: 1.0 only where the target ranks first."""
    best = {("gru4rec", "ur4rec", 8, True, True), ("gru4rec", "none", 8, True, True)}
    res, _ = evaluated(
        ["reranker.backbones=[gru4rec]", "eval.proxy_sweep=[4]", "eval.proxy_sweep_backbones=[gru4rec]"],
        rank_of=lambda key: 0 if key in best else 3,
    )
    rows = {r["variant"]: r for r in res.metrics["tables"]["gru4rec"]}
    assert rows["base"]["ndcg@1"] == 1.0 and rows["ur4rec"]["ndcg@1"] == 1.0
    for v in ("text", "llm", "no_cl", "no_pim"):
        assert rows[v]["ndcg@1"] == 0.0 and rows[v]["ndcg@5"] == pytest.approx(1 / np.log2(5))
    k4 = res.metrics["sweep"]["gru4rec"][0]
    assert k4["ndcg@1"] == 0.0  # K=4 is a stage of its own, not K=8's
    # paired with Base on the same lists: the target ranks 4th instead of 1st in every list
    d = pytest.approx(1 / np.log2(5) - 1)
    assert k4["delta"] == d and k4["delta_lo"] == d and k4["delta_hi"] == d  # the same in every resample
    assert f"| GRU4Rec | 4 | {k4['ndcg@5']:.4f} [" in (res.run_dir / "report.md").read_text()
    # UR4Rec - Base on the same lists: both perfect, so the paired difference is exactly 0
    assert rows["ur4rec"]["delta"] == 0.0
