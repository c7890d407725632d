"""The method contract: the registry, layers that point down, one config per method, Ray settings honoured."""

import ast
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from ragrec.config import RunConfig, load_config
from ragrec.methods import METHODS, MethodPipeline, get_method
from ragrec.methods.base import COMMON_SECTIONS, FullRankingPipeline, RankingPipeline

PKG = Path(__file__).resolve().parents[2] / "platform" / "ragrec"
METHOD_MODULES = {
    "rallrec",
    "score",
    "ur4rec",
    "er2alm",
    "rallrec_evaluate",
    "score_evaluate",
    "ur4rec_evaluate",
    "er2alm_evaluate",
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from X import a, b`` in ``path`` (relative modules resolved to ragrec.*)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_module_under_methods_imports_a_private_name_from_a_sibling():
    bad = []
    for path in (PKG / "methods").glob("*.py"):
        for mod, names in _imports(path):
            if mod.startswith("ragrec.methods.") and mod != f"ragrec.methods.{path.stem}":
                bad += [f"{path.name}: from {mod} import {n}" for n in names if n.startswith("_")]
    assert not bad, bad


def test_the_scan_sees_private_imports(tmp_path):
    """The scan above would catch one (guards against a scan that finds nothing)."""
    (PKG / "methods" / "_probe_tmp.py").write_text("from .rallrec import _secret\n")
    try:
        mods = _imports(PKG / "methods" / "_probe_tmp.py")
    finally:
        (PKG / "methods" / "_probe_tmp.py").unlink()
    assert mods == [("ragrec.methods.rallrec", ["_secret"])]


@pytest.mark.parametrize("layer", ["serving", "tuning", "cli.py", "stages", "retrieval", "llm", "evaluation"])
def test_layers_above_and_below_know_the_contract_not_a_method(layer):
    paths = [PKG / layer] if layer.endswith(".py") else sorted((PKG / layer).rglob("*.py"))
    bad = [
        f"{p.relative_to(PKG)} imports {mod}"
        for p in paths
        for mod, _ in _imports(p)
        if mod.split(".")[:3] in (["ragrec", "methods", m] for m in METHOD_MODULES)
    ]
    assert not bad, bad


def test_registry_covers_every_method_a_config_accepts_and_names_the_fix():
    accepted = set(RunConfig.model_fields["method"].annotation.__args__)
    assert accepted == set(METHODS)
    assert all(get_method(n).name == n for n in accepted)
    names = r"\['er2alm', 'rallrec', 'score', 'ur4rec'\]"
    with pytest.raises(ValueError, match=rf"method 'ur5rec' is not registered; choose from {names}"):
        get_method("ur5rec")


def test_every_config_section_belongs_to_the_common_part_or_to_a_method():
    owned = set(COMMON_SECTIONS).union(*(m.sections for m in METHODS.values()))
    assert set(RunConfig.model_fields) == owned
    for m in METHODS.values():
        assert not set(m.sections) & set(COMMON_SECTIONS)


@pytest.mark.parametrize(
    ("config", "own", "foreign"),
    [
        ("configs/rallrec_ml100k.yaml", {"lightgcn", "retrieval", "prompt"}, {"car", "ci", "sare", "rationale"}),
        ("configs/score_ml100k.yaml", {"car", "ci", "sare", "sasrec"}, {"lightgcn", "projector", "retrieval"}),
        ("configs/ur4rec_ml100k.yaml", {"ur4rec", "reranker"}, {"lightgcn", "car", "sasrec", "retrieval"}),
        ("configs/er2alm_ml100k.yaml", {"rag", "profile", "noise", "augment", "gnn"}, {"lightgcn", "ur4rec", "car"}),
    ],
)
def test_config_show_prints_only_the_methods_sections(config, own, foreign):
    from ragrec.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["config", "show", config]) == 0
    shown = yaml.safe_load(buf.getvalue())
    assert own <= set(shown) and not foreign & set(shown)
    cfg = load_config(config)
    assert get_method(cfg.method).config_dict(cfg) == shown
    # what a run.json keeps is enough to rebuild the same config
    assert RunConfig.model_validate(shown).model_dump(include=set(shown)) == cfg.model_dump(include=set(shown))


def test_every_pipeline_implements_the_contract():
    import importlib

    for m in METHODS.values():
        module, attr = m.pipeline_path.split(":")
        cls = getattr(importlib.import_module(module), attr)
        assert issubclass(cls, MethodPipeline)
        assert not getattr(cls, "__abstractmethods__", None), f"{m.name}: {cls.__abstractmethods__}"
        assert cls.task in ("ctr", "rerank", "full_ranking")
        if cls.task == "ctr":  # a CTR method tunes an LLM; a ranking one scores candidate lists
            assert "lora" in cls.loss_stages
        elif cls.task == "rerank":
            assert issubclass(cls, RankingPipeline)
        else:  # ranks every item: embeddings per seed
            assert issubclass(cls, FullRankingPipeline)


def test_pipeline_refuses_a_config_of_another_method():
    with pytest.raises(ValueError, match=r"the SCoRe pipeline needs method: score \(got 'rallrec'\)"):
        get_method("score").pipeline(load_config("configs/rallrec_ml100k.yaml"))


def test_ray_section_is_what_the_first_stage_starts_ray_with(monkeypatch):
    import ray

    from ragrec import runtime

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(runtime, "_quiet_ray_data", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_RAY_DEFAULTS", dict(runtime._RAY_DEFAULTS))
    runtime.use_ray_config(load_config(None, ["ray.num_cpus=3"]).ray)
    runtime.init()
    assert seen["num_cpus"] == 3 and "address" not in seen
    seen.clear()
    runtime.use_ray_config(load_config(None, ["ray.address=ray://head:10001"]).ray)
    runtime.init()
    assert seen["address"] == "ray://head:10001" and "num_cpus" not in seen


def test_starting_a_second_local_ray_warns_with_the_address_to_share(monkeypatch, caplog):
    import ray

    from ragrec import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(runtime, "_quiet_ray_data", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_RAY_DEFAULTS", {"address": None, "num_cpus": 1})
    monkeypatch.setattr(runtime, "local_ray_addresses", lambda: ["192.0.2.2:46423"])
    with caplog.at_level("WARNING", logger="ragrec"):
        runtime.init()
    assert "RAY_ADDRESS=192.0.2.2:46423" in caplog.text and "another Ray instance" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "local_ray_addresses", list)
    with caplog.at_level("WARNING", logger="ragrec"):
        runtime.init()
    assert "another Ray instance" not in caplog.text


def test_the_tune_objective_runs_any_registered_method_through_the_contract(monkeypatch):
    """``evaluate_split`` (what every Tune trial calls) builds the config's method, not RALLRec's."""
    import numpy as np
    import pyarrow as pa

    from ragrec.methods import base, evaluate_split

    calls = []

    class FakePipeline:
        task = "ctr"

        def __init__(self, cfg, force=()):
            calls.append(("init", cfg.method))

        def upstream(self, cfg=None):
            calls.append("upstream")

        def adapter(self, cfg=None):
            return "adapter"

        def predict(self, adapter, cfg=None, split_name="test", name="scores"):
            calls.append(("predict", adapter, split_name))
            y = np.array([0, 1, 0, 1, 1])
            return pa.table({"label": y, "prob": np.array([0.1, 0.9, 0.5, 0.4, 0.8])}), None

    monkeypatch.setattr(
        base, "_resolve", lambda path: FakePipeline if path.startswith("ragrec.methods.score") else None
    )
    out = evaluate_split(load_config("configs/score_ml100k.yaml"), "valid")
    assert calls == [("init", "score"), "upstream", ("predict", "adapter", "valid")]
    assert out["auc"] == pytest.approx(5 / 6) and out["n"] == 5 and out["split"] == "valid"


def test_the_tune_objective_of_a_ranking_method_is_its_ranking_metrics(monkeypatch):
    """A ranking pipeline's ``predict`` gives candidate lists; the objective is MAP@k / NDCG@k, not AUC."""
    import numpy as np
    import pyarrow as pa

    from ragrec.methods import base, evaluate_split

    class FakeRanking:
        task = "rerank"

        def __init__(self, cfg, force=()):
            pass

        def upstream(self, cfg=None):
            pass

        def adapter(self, cfg=None):
            return None

        def predict(self, adapter, cfg=None, split_name="test", name="scores"):
            scores = pa.FixedSizeListArray.from_arrays(pa.array([0.9, 0.1, 0.2, 0.1, 0.5, 0.7], pa.float32()), 3)
            # list 0: the target (index 0) ranks first; list 1: the target (index 1) ranks second
            return pa.table({"scores": scores, "target_index": np.array([0, 1])}), None

    monkeypatch.setattr(base, "_resolve", lambda path: FakeRanking)
    out = evaluate_split(load_config("configs/ur4rec_ml100k.yaml"), "valid")
    assert out["ndcg@1"] == pytest.approx(0.5) and out["map@1"] == pytest.approx(0.5)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3)) / 2) and out["map@5"] == pytest.approx(0.75)
    assert out["n"] == 2 and out["split"] == "valid" and "auc" not in out
