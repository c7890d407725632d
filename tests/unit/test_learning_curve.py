"""`ragrec evaluate`'s learning curve (both methods) on fake pipelines: config validation, point order and
overrides, wall time that survives the cache, the report/plot/metrics, curve-only runs; resume timing. And the
shared evaluation engine on the same fakes: variants, sweeps (skip rules, the reused reference point), the
fusion hook's rows and report parts."""

from __future__ import annotations

import json
import time
import typing
import zlib

import numpy as np
import pyarrow as pa
import pytest

from ragrec.artifacts import ArtifactStore
from ragrec.config import ConfigError, load_config
from ragrec.methods import learning_curve as lc

GRID = "eval.learning_curve_grid={lora.lr: [0.001, 0.002]}"
SLEEP = 0.15  # the fake LoRA stage's wall time


# ---------------------------------------------------------------------------------------------------- config
def test_config_accepts_the_curve_and_validates_the_grid_like_overrides():
    cfg = load_config(
        None,
        [
            "eval.learning_curve=[512, 128]",
            "eval.learning_curve_grid={lora.lr: [5e-4, 2e-3], lora.epochs: [1, 2]}",
            "eval.variants=[]",
        ],
    )
    assert cfg.eval.learning_curve == [512, 128] and cfg.eval.variants == []
    assert cfg.eval.learning_curve_grid == {"lora.lr": [0.0005, 0.002], "lora.epochs": [1, 2]}  # parsed as the field
    assert load_config(None).eval.learning_curve is None and load_config(None).eval.learning_curve_grid is None
    for sets, msg in (
        (["eval.learning_curve_grid={lora.lrr: [1]}"], "no config field 'lora.lrr'"),
        (["eval.learning_curve_grid={nosuch.x: [1]}"], "no config field 'nosuch.x'"),
        (["eval.learning_curve_grid={lora.lr: [abc]}"], "lora.lr"),
        (["eval.learning_curve_grid={lora.r: [0.5]}"], "lora.r"),
        (["eval.learning_curve_grid={lora.train_samples: [8]}"], "x axis"),
        (["eval.learning_curve_grid={eval.bootstrap: [8]}"], "cannot be a grid field"),
        (["eval.learning_curve_grid={lora.epochs: []}"], "non-empty list"),
        (["eval.learning_curve=[0, 64]"], "zero-shot point"),
        (["eval.learning_curve=[64, 64]"], "distinct"),
    ):
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(None, sets)
        assert len(str(e.value).splitlines()) == 2  # "<file>: invalid config" + one line naming the field


def test_points_run_n_ascending_then_grid_combinations_with_their_overrides():
    cfg = load_config(
        None,
        ["eval.learning_curve=[512, 128]", "eval.learning_curve_grid={lora.lr: [0.001, 0.002], lora.epochs: [1, 2]}"],
    )
    pts = lc.curve_points(cfg)
    assert [(p.n, p.setting) for p in pts] == [
        (128, "lora.lr=0.001, lora.epochs=1"),
        (128, "lora.lr=0.001, lora.epochs=2"),
        (128, "lora.lr=0.002, lora.epochs=1"),
        (128, "lora.lr=0.002, lora.epochs=2"),
        (512, "lora.lr=0.001, lora.epochs=1"),
        (512, "lora.lr=0.001, lora.epochs=2"),
        (512, "lora.lr=0.002, lora.epochs=1"),
        (512, "lora.lr=0.002, lora.epochs=2"),
    ]
    assert pts[1].overrides == {"lora.train_samples": 128, "lora.lr": 0.001, "lora.epochs": 2}
    assert pts[1].label == "N=128 (lora.lr=0.001, lora.epochs=2)"
    assert lc.CurvePoint(0).overrides == {} and lc.CurvePoint(0).label == "zero-shot (N=0)"
    plain = lc.curve_points(load_config(None, ["eval.learning_curve=[64]"]))
    assert [(p.n, p.overrides, p.label) for p in plain] == [(64, {"lora.train_samples": 64}, "N=64")]


def test_curve_only_skips_the_sweeps_and_runs_the_fusion_only_when_true():
    full = load_config(None)
    assert lc.fusion_on(full) and lc.sweeps_on(full) and not lc.curve_on(full)
    only = load_config(None, ["eval.variants=[]", "eval.learning_curve=[8]", "eval.k_sweep=[3]"])
    assert not lc.fusion_on(only) and not lc.sweeps_on(only) and lc.curve_on(only)
    assert lc.fusion_on(load_config(None, ["eval.variants=[]", "eval.fusion=true"]))
    assert not lc.fusion_on(load_config(None, ["eval.fusion=false"]))


# ---------------------------------------------------------------------------------------------------- fakes
class _FakeBase:
    """Stands in for a method's Pipeline: real artifacts (cached, timed by the store), fake models.

    P(yes) on the test samples gets better with the adapter's ``lora.train_samples`` (and ``lora.lr``)."""

    calls: typing.ClassVar[list] = []  # (stage, overrides) of every computed artifact, across instances
    examples_stage = "examples"

    def __init__(self, cfg, force=()):
        self.cfg, self.store, self.arts = cfg, ArtifactStore(cfg.artifacts_dir, force=force), {}

    def _upstream(self):
        if "samples" in self.arts:
            return
        rng = np.random.default_rng(0)
        users, items = rng.integers(0, 20, 600), rng.integers(0, 30, 600)
        bias = np.linspace(-1.5, 1.5, 20)[users] + np.linspace(-1, 1, 30)[items]
        label = (rng.random(600) < 1 / (1 + np.exp(-bias))).astype(np.int64)
        inter = pa.table(
            {"user_id": users, "item_id": items, "label": label, "rating": 1 + 4 * label, "timestamp": np.arange(600)}
        )
        split = np.array(["train"] * 300 + ["valid"] * 60 + ["test"] * 240)
        samples = inter.append_column("split", pa.array(split)).append_column("sample_id", pa.array(np.arange(600)))
        samples = samples.set_column(
            samples.schema.get_field_index("timestamp"), "timestamp", pa.array(np.where(split == "train", 10, 1000))
        )

        def ds(art):
            art.write_table(inter, "interactions")
            art.write_table(pa.table({"item_id": np.arange(30)}), "items")
            return 600

        def sm(art):
            art.write_table(samples, "samples")
            return {"rows": 600, "splits": {"train": 300, "valid": 60, "test": 240}}

        self.arts["dataset"] = self.store.run("dataset", {"fake": 1}, [], ds)
        self.arts["samples"] = self.store.run("samples", {"fake": 1}, [self.arts["dataset"]], sm)

    def eval_samples(self, split_name="test"):
        s = self.arts["samples"].read_table("samples")
        return s.filter(pa.compute.equal(s.column("split"), split_name))

    def _examples(self, cfg):
        n = cfg.lora.train_samples

        def compute(art):
            self.calls.append(("examples", n))
            art.write_table(pa.table({"i": np.arange(3 * n)}))  # three mixed views
            return 3 * n

        spec = {"n": n, "strategy": cfg.retrieval.strategy, "ks": cfg.ci.ks}
        return self.store.run(self.examples_stage, spec, [self.arts["samples"]], compute)

    def _adapter(self, cfg):
        if not cfg.lora.enabled:
            return None
        ex = self._examples(cfg)

        def compute(art):
            self.calls.append(("lora", cfg.lora.train_samples, cfg.lora.lr, cfg.retrieval.strategy))
            time.sleep(SLEEP)
            art.write_json({"n": cfg.lora.train_samples, "lr": cfg.lora.lr}, "adapter")
            return {"rows": ex.manifest()["rows"]}

        return self.store.run("lora", {"lora": cfg.lora.model_dump()}, [ex], compute)

    def _predict(self, adapter):
        test = self.eval_samples()
        y = test.column("label").to_numpy()

        def compute(art):
            a = adapter.read_json("adapter") if adapter is not None else {"n": 1, "lr": 0.0}
            strength = 0.3 * np.log2(a["n"]) * (1 + 100 * a["lr"])
            noise = np.random.default_rng(zlib.crc32(str(a).encode())).standard_normal(len(y))
            self.calls.append(("scores", a["n"]))
            art.write_table(
                pa.table(
                    {
                        "sample_id": test.column("sample_id"),
                        "prob": (1 / (1 + np.exp(-(strength * (y - 0.5) + noise)))).astype(np.float32),
                    }
                )
            )
            return len(y)

        art = self.store.run("scores", {"adapter": adapter.key if adapter else None}, [self.arts["samples"]], compute)
        return test.append_column("prob", art.read_table().column("prob")), art


class FakeRALLRec(_FakeBase):
    def upstream(self, cfg=None):
        self._upstream()
        return "views"

    def examples(self, cfg=None):
        return self._examples(cfg or self.cfg)

    def adapter(self, cfg=None):
        return self._adapter(cfg or self.cfg)

    def predict(self, adapter, cfg=None, split_name="test", name="scores"):
        assert split_name == "test", "curve-only must not score the validation split (no fusion)"
        return self._predict(adapter)


class FakeSCoRe(_FakeBase):
    examples_stage = "score_examples"

    def upstream(self, cfg=None):
        self._upstream()
        if "sasrec" not in self.arts:
            self.arts["sasrec"] = self.store.run(
                "sasrec", {"fake": 1}, [], lambda art: art.write_json({"ndcg@10": 0.1, "hr@10": 0.2}, "metrics")
            )
        return self.arts

    def adapter(self, cfg=None):
        return self._adapter(cfg or self.cfg)

    def predict(self, adapter, cfg=None, split_name="test", name="scores"):
        return self._predict(adapter)


def _config(tmp_path, method):
    return load_config(
        None,
        [
            f"method={method}",
            f"artifacts_dir={tmp_path / 'artifacts'}",
            f"output_dir={tmp_path / 'runs'}",
            "name=lc",
            "eval.variants=[]",
            "eval.bootstrap=60",
            "eval.learning_curve=[16, 4]",
            GRID,
            "eval.k_sweep=[3]",
            "eval.ke_sweep=[5]",
        ],
    )


def _fake_pipeline(monkeypatch, method: str):
    """The method's evaluation module, its method's ``Pipeline`` replaced by the fake one (no LLM, no Ray)."""
    from ragrec.methods import rallrec, rallrec_evaluate, score, score_evaluate

    if method == "rallrec":
        monkeypatch.setattr(rallrec, "Pipeline", FakeRALLRec)
        return rallrec_evaluate
    monkeypatch.setattr(score, "Pipeline", FakeSCoRe)
    return score_evaluate


@pytest.mark.parametrize("method", ["rallrec", "score"])
def test_curve_only_evaluation_reports_ordered_points_and_cached_points_keep_their_time(tmp_path, monkeypatch, method):
    module = _fake_pipeline(monkeypatch, method)
    _FakeBase.calls = []
    cfg = _config(tmp_path, method)
    curve_rows_at_write = []
    write = module.Evaluation.write

    def spy(self, final=False):
        curve_rows_at_write.append(len(self.curve.rows) if self.curve else 0)
        return write(self, final)

    monkeypatch.setattr(module.Evaluation, "write", spy)
    res = module.evaluate(cfg)
    out = res.run_dir
    metrics = json.loads((out / "metrics.json").read_text())

    # only what the curve needs: zero-shot and the trivial baselines; no sweep, no fusion, no full variant
    assert [r["key"] for r in metrics["rows"]] == ["zero_shot", "item_rate", "item_user_logit"]
    for sweep in ("k_sweep", "alpha_sweep", "ke_sweep", "ks_sweep"):
        assert metrics.get(sweep, []) == []
    assert "fusion" not in metrics

    pts = metrics["learning_curve"]["points"]
    assert [(p["n_train"], p["grid"]) for p in pts] == [
        (0, {}),
        (4, {"lora.lr": 0.001}),
        (4, {"lora.lr": 0.002}),
        (16, {"lora.lr": 0.001}),
        (16, {"lora.lr": 0.002}),
    ]
    # the right overrides reached the tuning: the full variant's retrieval/CI with N and lr of the point
    tuned = [c[1:] for c in _FakeBase.calls if c[0] == "lora"]
    strategy = "rerank" if method == "rallrec" else cfg.retrieval.strategy
    assert tuned == [(4, 0.001, strategy), (4, 0.002, strategy), (16, 0.001, strategy), (16, 0.002, strategy)]
    zs = next(r for r in metrics["rows"] if r["key"] == "zero_shot")
    assert pts[0]["auc"] == zs["auc"] and pts[0]["examples"] is None and pts[0]["train_seconds"] == 0
    for p in pts:
        assert p["n"] == 240 and p["auc_ulo"] <= p["auc"] <= p["auc_uhi"] and 0 <= p["uauc"] <= 1
        assert p["auc_lo"] <= p["auc"] <= p["auc_hi"]
        assert p["seconds"] == pytest.approx(p["train_seconds"] + p["score_seconds"], abs=2e-3)
    for p in pts[1:]:
        assert p["examples"] == 3 * p["n_train"] and p["train_seconds"] >= SLEEP
        assert p["delta"] == pytest.approx(p["auc"] - pts[0]["auc"], abs=1e-9)  # paired against zero-shot
    assert pts[4]["auc"] > pts[0]["auc"]
    base_auc = next(r["auc"] for r in metrics["rows"] if r["key"] == "item_user_logit")
    assert metrics["learning_curve"]["baselines"] == {"zero-shot (N=0)": zs["auc"], "item_user_logit": base_auc}
    for p in pts:  # every point, zero-shot included, paired against the item+user row on the same samples
        assert p["delta_base"] == pytest.approx(p["auc"] - base_auc, abs=1e-9)
        assert p["delta_base_ulo"] <= p["delta_base"] <= p["delta_base_uhi"]

    # outputs: the report section, the plot, one prediction column per point
    report = (out / "report.md").read_text()
    assert "## Learning curve" in report and "| N | setting |" in report and "lora.lr=0.002" in report
    assert "| ΔAUC vs zero-shot [95% CI, users] | ΔAUC vs item+user [95% CI, users] |" in report
    assert "against the item+user baseline (`item_user_logit`" in report
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    import pyarrow.parquet as pq

    cols = pq.read_table(out / "predictions.parquet").column_names
    assert "zero_shot" in cols and "curve:N=16 (lora.lr=0.002)" in cols
    # the report was rewritten after the zero-shot point and after every curve point
    assert [n for n in curve_rows_at_write if n] == [1, 2, 3, 4, 5, 5]

    # rerun: every point is cached, and reports the time it took when it was computed
    _FakeBase.calls = []
    again = json.loads((module.evaluate(cfg).run_dir / "metrics.json").read_text())["learning_curve"]["points"]
    assert _FakeBase.calls == []
    assert [(p["train_seconds"], p["score_seconds"], p["auc"]) for p in again] == [
        (p["train_seconds"], p["score_seconds"], p["auc"]) for p in pts
    ]


def test_plot_and_table_with_one_line_per_setting(tmp_path):
    rows = [
        {
            "n_train": n,
            "setting": s,
            "auc": a,
            "auc_lo": a - 0.01,
            "auc_hi": a + 0.01,
            "auc_ulo": a - 0.03,
            "auc_uhi": a + 0.03,
            "uauc": 0.6,
            "examples": 3 * n or None,
            "train_seconds": 10.0 * n,
            "score_seconds": 30.0,
            "seconds": 10.0 * n + 30,
            **(
                {"delta": a - 0.6, "delta_lo": -0.01, "delta_hi": 0.2, "delta_ulo": 0.01, "delta_uhi": 0.2} if n else {}
            ),
        }
        for n, s, a in (
            (0, "", 0.6),
            (8, "lora.lr=0.001", 0.65),
            (64, "lora.lr=0.001", 0.7),
            (8, "lora.lr=0.002", 0.62),
            (64, "lora.lr=0.002", 0.72),
        )
    ]
    lc.plot_learning_curve(rows, tmp_path / "c.png", {"zero-shot (N=0)": 0.6, "item_user_logit": 0.68})
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    table = lc.format_curve(rows).splitlines()
    assert len(table) == 2 + len(rows) and "setting" in table[0]
    assert table[2].startswith("| 0 | — | 0.6000") and "| — | — | 30 s | 30 s |" in table[2]
    assert "+0.1000 [+0.0100, +0.2000] *" in table[4] and "10.7 min" in table[4]  # 640 s of training


def _curve_row(n, **delta):
    return {
        "n_train": n,
        "setting": "",
        "auc": 0.7,
        "auc_lo": 0.68,
        "auc_hi": 0.72,
        "auc_ulo": 0.66,
        "auc_uhi": 0.74,
        "uauc": 0.6,
        "examples": 3 * n or None,
        "train_seconds": 5.0 if n else 0.0,
        "score_seconds": 1.0,
        "seconds": 6.0 if n else 1.0,
        **delta,
    }


def test_table_shows_the_delta_against_item_user_after_the_zero_shot_delta_with_its_star():
    rows = [
        _curve_row(0, delta_base=-0.05, delta_base_ulo=-0.08, delta_base_uhi=-0.02),  # below the baseline: *
        _curve_row(
            8, delta=0.03, delta_ulo=-0.01, delta_uhi=0.06, delta_base=0.01, delta_base_ulo=-0.02, delta_base_uhi=0.04
        ),  # interval contains 0: no star
        _curve_row(
            64, delta=0.1, delta_ulo=0.05, delta_uhi=0.15, delta_base=0.04, delta_base_ulo=0.01, delta_base_uhi=0.07
        ),  # above it: *
        _curve_row(128, delta=0.1, delta_ulo=0.05, delta_uhi=0.15),  # a row without it
    ]
    table = lc.format_curve(rows).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    i = head.index("ΔAUC vs zero-shot [95% CI, users]")
    assert head[i + 1] == "ΔAUC vs item+user [95% CI, users]" and head[i + 2] == "IT examples"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert all(len(c) == len(head) for c in cells)
    assert [c[i] for c in cells] == ["—", "+0.0300 [-0.0100, +0.0600]", "+0.1000 [+0.0500, +0.1500] *"] + [
        "+0.1000 [+0.0500, +0.1500] *"
    ]
    assert [c[i + 1] for c in cells] == [
        "-0.0500 [-0.0800, -0.0200] *",
        "+0.0100 [-0.0200, +0.0400]",
        "+0.0400 [+0.0100, +0.0700] *",
        "—",
    ]


def test_every_point_gets_a_user_clustered_paired_delta_against_the_baseline(tmp_path):
    from ragrec.evaluation.metrics import bootstrap_delta_ci
    from ragrec.methods.evaluation import Scored

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(12), 10)
    y = np.tile([0, 1], 60)
    base = np.clip(0.5 + 0.15 * (y - 0.5) + rng.normal(0, 0.2, len(y)), 0.01, 0.99)  # a weak baseline
    test = pa.table({"user_id": users, "label": y, "sample_id": np.arange(len(y))})
    cfg = load_config(None, ["eval.bootstrap=200", "seed=7", "eval.learning_curve=[8, 64]"])
    curve = lc.LearningCurve(cfg, ArtifactStore(tmp_path), test, base)
    zs = curve.add(lc.CurvePoint(0), Scored("zero_shot", "zero-shot", "", base.copy()))  # the baseline itself
    assert zs["delta_base"] == 0 and zs["delta_base_ulo"] <= 0 <= zs["delta_base_uhi"]
    assert zs.get("delta") is None  # zero-shot is its own reference
    perfect = curve.add(lc.CurvePoint(64), Scored("p", "N=64", "", y * 0.8 + 0.1))
    assert perfect["delta_base"] > 0 and perfect["delta_base_ulo"] > 0  # the interval excludes 0
    # exactly the user-clustered paired bootstrap of the config: n = eval.bootstrap, seed = cfg.seed, groups = users
    d, lo, hi = bootstrap_delta_ci(y, y * 0.8 + 0.1, base, n=200, seed=7, groups=users)
    assert (perfect["delta_base"], perfect["delta_base_ulo"], perfect["delta_base_uhi"]) == (d, lo, hi)
    assert (lo, hi) != bootstrap_delta_ci(y, y * 0.8 + 0.1, base, n=200, seed=7)[1:]  # not the per-sample one
    table = lc.format_curve(list(curve.rows.values())).splitlines()
    assert table[2].count("+0.0000 [+0.0000, +0.0000]") == 1 and table[3].count(" *") == 2
    extra = curve.report({})[2]["learning_curve"]["points"]
    assert [p["delta_base"] for p in extra] == [0, d]  # the metrics.json points carry it
    without = lc.LearningCurve(cfg, ArtifactStore(tmp_path), test).add(lc.CurvePoint(8), Scored("x", "N=8", "", base))
    assert "delta_base" not in without and lc.format_curve([without]).count("—") >= 1
    with pytest.raises(ValueError, match="baseline has 3 probabilities for 120 test samples"):
        lc.LearningCurve(cfg, ArtifactStore(tmp_path), test, base[:3])


def test_a_resumed_stage_records_the_time_of_every_attempt(tmp_path):
    store = ArtifactStore(tmp_path)

    def killed(art):
        time.sleep(0.3)
        (art.staging / "checkpoint").write_text("kept work")  # the last thing the killed attempt saved
        time.sleep(0.2)  # lost work: not counted
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run("lora", {"a": 1}, [], killed)
    art = store.run("lora", {"a": 1}, [], lambda art: time.sleep(0.1) or 1)
    m = art.manifest()
    assert m["attempts"] == 2 and 0.1 <= m["seconds"] < 0.3
    # 0.1 now + 0.3 up to the checkpoint of the killed attempt (its file time: a few ms coarse, so 0.39)
    assert 0.39 <= m["seconds_total"] < 0.6
    assert lc.artifact_seconds(art) == m["seconds_total"]
    assert not (art.path / "attempts.json").exists()
    plain = store.run("x", {}, [], lambda art: 1).manifest()
    assert "seconds_total" not in plain and "attempts" not in plain
    assert lc.artifact_seconds(store.artifact("x", {})) == plain["seconds"]


# ---------------------------------------------------------------------------------------------------- engine
def _eval_config(tmp_path, method, *sets):
    ref = "rallrec" if method == "rallrec" else "score"
    return load_config(
        None,
        [
            f"method={method}",
            f"artifacts_dir={tmp_path / 'artifacts'}",
            f"output_dir={tmp_path / 'runs'}",
            "name=engine",
            f"eval.variants=[zero_shot, {ref}]",
            "eval.bootstrap=40",
            "eval.fusion=false",
            *sets,
        ],
    )


@pytest.mark.parametrize("method", ["rallrec", "score"])
def test_the_engine_runs_a_methods_variants_and_sweeps_from_its_spec(tmp_path, monkeypatch, method):
    module = _fake_pipeline(monkeypatch, method)
    k = load_config(None).retrieval.k
    sets = (
        [f"eval.k_sweep=[3, {k}]", "eval.alpha_sweep=[0.5]"]
        if method == "rallrec"
        else ["ci.ke=10", "ci.ks=2", "eval.ke_sweep=[1, 5]", "eval.ks_sweep=[1, 50]"]
    )
    cfg = _eval_config(tmp_path, method, *sets)
    out = module.evaluate(cfg).run_dir
    m = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    ref = module.VARIANTS[module.REFERENCE]

    # the reference first, then the other variants, then the trivial baselines; ΔAUC paired against the reference
    assert [r["key"] for r in m["rows"]] == [module.REFERENCE, "zero_shot", "item_rate", "item_user_logit"]
    groups = ["Table 1", "Table 3"] if method == "rallrec" else ["variant", "variant"]
    assert [r["group"] for r in m["rows"]] == [*groups, "trivial", "trivial"]
    assert m["rows"][0]["delta"] is None and m["rows"][1]["delta"] is not None
    assert m["rows"][0]["examples"] == 3 * cfg.lora.train_samples and m["rows"][1]["examples"] is None
    assert report.startswith(f"# {m['title']}") and m["title"].startswith(("RALLRec", "SCoRe")[method == "score"])
    assert m["finished"] and set(m["artifacts"]) == {module.REFERENCE, "zero_shot"}

    if method == "rallrec":
        # a point equal to the full variant's retrieval is its row; every point shares the full adapter
        assert [(r["k"], r["key"]) for r in m["k_sweep"]] == [(3, "K=3"), (k, ref.label)]
        assert m["k_sweep"][1]["delta"] is None and m["k_sweep"][0]["examples"] is None
        assert [(r["alpha"], r["key"]) for r in m["alpha_sweep"]] == [(0.5, "alpha=0.5")]
        assert "## K sweep (Figure 3)" in report and "## α sweep, β = 1 (Figure 4)" in report
        assert "(eval.sweep_adapter=shared: only the retrieval changes at inference)." in report
        assert "model " in report and "K = " in report
        assert (out / "auc_vs_k.png").exists() and not (out / "auc_vs_alpha.png").exists()  # one point: no plot
    else:
        # Ke < Ks and Ks > Ke are skipped; the point equal to the full variant's CI is its row
        assert [(r["ke"], r["key"]) for r in m["ke_sweep"]] == [(5, "Ke=5")]
        assert [(r["ks"], r["key"]) for r in m["ks_sweep"]] == [(1, "Ks=1")]
        assert "## Ke sweep (Figure 4)" in report and "only the inference-time CI changes" in report
        assert m["sasrec"] == {"ndcg@10": 0.1, "hr@10": 0.2} and "SASRec sanity" in report
    import pyarrow.parquet as pq

    cols = pq.read_table(out / "predictions.parquet").column_names
    assert module.REFERENCE in cols and "zero_shot" in cols and ("K=3" in cols or "Ke=5" in cols)

    with pytest.raises(ValueError, match="this evaluation is"):
        module.evaluate(_eval_config(tmp_path, "score" if method == "rallrec" else "rallrec"))


def test_the_engine_adds_a_fusion_hooks_rows_notes_and_metrics(tmp_path, monkeypatch):
    from dataclasses import replace

    from ragrec.evaluation.fusion import fuse, logit
    from ragrec.methods import score, score_evaluate
    from ragrec.methods.evaluation import Evaluation, FusionFit, Scored

    monkeypatch.setattr(score, "Pipeline", FakeSCoRe)
    rng = np.random.default_rng(0)

    def hook(ev, ref):
        y = ev.test.column("label").to_numpy()
        crm = 1.5 * (y - 0.5) + rng.standard_normal(len(y))
        test = {"llm": logit(ref.probs), "crm": crm, "item_user": rng.standard_normal(len(y))}
        vy = rng.integers(0, 2, 200)
        valid = {"llm": vy + rng.standard_normal(200), "crm": vy + rng.standard_normal(200)}
        res = fuse({**valid, "item_user": rng.standard_normal(200)}, vy, test, ev.spec.fusion_names)
        row = Scored("crm", "the CRM", "fusion", res.input_probs("crm"), keys={"crm": "k"})
        return FusionFit(res, {"fusion": "f"}, row, ["a method's fusion note"], {"crm_score": "test"})

    cfg = _eval_config(tmp_path, "score", "eval.fusion=true", "eval.ke_sweep=[]", "eval.ks_sweep=[]")
    out = Evaluation(cfg, (), replace(score_evaluate.SPEC, fusion=hook)).run().run_dir
    m = json.loads((out / "metrics.json").read_text())
    keys = [r["key"] for r in m["rows"]]
    assert keys == ["score", "zero_shot", "crm", "fusion", "fusion_no_llm", "item_rate", "item_user_logit"]
    assert [r["versus"] for r in m["fusion"]["comparisons"]] == ["SCoRe", "SASRec", "item_user_logit", "fusion w/o LLM"]
    assert m["fusion"]["crm_score"] == "test" and m["artifacts"]["fusion"] == {"fusion": "f"}
    report = (out / "report.md").read_text()
    assert "## Fusion: SCoRe + SASRec + item/user, fitted on validation" in report
    assert "a method's fusion note" in report

    def fails(ev, ref):
        raise ValueError("fusion: all 10 validation labels are 1")

    with pytest.raises(ValueError, match="validation labels"):  # eval.fusion: true asks for it
        Evaluation(cfg, (), replace(score_evaluate.SPEC, fusion=fails)).run()
    unset = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fusion": None})})
    out = Evaluation(unset, (), replace(score_evaluate.SPEC, fusion=fails)).run().run_dir
    m = json.loads((out / "metrics.json").read_text())
    assert "fusion" not in m and "fusion skipped: fusion: all 10 validation labels are 1" in m["notes"]
