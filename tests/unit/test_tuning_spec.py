"""Sweep-file schema: loading, overrides, absolute paths, Tune search spaces and the errors for bad files."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from ragrec.config import ConfigError
from ragrec.tuning import ParamSpace, load_sweep
from ragrec.tuning.spec import split_overrides

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, doc: dict, base: dict | None = None) -> Path:
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(base if base is not None else {"name": "b", "data": {"name": "synthetic"}})
    )
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "base.yaml", "search_space": {"retrieval.k": {"grid": [3, 5]}}, **doc}))
    return p


def test_demo_sweep_loads_with_base_overrides_and_absolute_paths(tmp_path):
    spec = load_sweep(REPO / "configs" / "sweep_demo.yaml", cwd=tmp_path)
    cfg = spec.trial_config({})
    assert cfg.llm.model == "tiny-random-llama"  # dotted override
    assert cfg.lightgcn.dim == 8 and cfg.lightgcn.epochs == 2  # nested section override, flattened
    assert cfg.data.synthetic.n_users == 40
    assert cfg.description.max_items is None  # untouched base value survives
    assert cfg.artifacts_dir == str(tmp_path / "artifacts")  # relative -> absolute against the driver's cwd
    assert spec.out_dir() == tmp_path / "runs" / "sweep_demo"
    assert spec.config.mode == "max" and spec.params == ["retrieval.alpha", "description.temperature"]
    trial = spec.trial_config({"retrieval.alpha": 0.8, "description.temperature": 1.0})
    assert trial.retrieval.alpha == 0.8 and trial.description.temperature == 1.0
    assert trial.lightgcn.dim == 8


def test_ml100k_sweep_has_the_issue_space():
    spec = load_sweep(REPO / "configs" / "sweep_rallrec_ml100k.yaml")
    space = spec.config.search_space
    assert space["retrieval.alpha"].grid == pytest.approx([1 / 2, 2 / 3, 4 / 5], abs=1e-6)
    assert space["retrieval.beta"].grid == [1.0]
    assert space["retrieval.k"].grid == [5, 10]
    assert space["description.temperature"].grid == [0.8, 1.0]
    assert spec.config.max_concurrent_trials == 1 and spec.config.metric == "auc"
    assert spec.trial_config({}).data.name == "ml-100k"


def test_set_items_go_to_the_sweep_or_to_the_run_config(tmp_path):
    assert split_overrides(
        ["num_samples=2", "search_space.retrieval.k={grid: [7]}", "eval.max_valid_samples=9", "retrieval.alpha=0.5"]
    ) == (
        ["num_samples=2", "search_space.retrieval.k={grid: [7]}"],
        ["eval.max_valid_samples=9", "retrieval.alpha=0.5"],
    )
    spec = load_sweep(
        _write(tmp_path, {}), ["num_samples=3", "search_space.retrieval.k={grid: [7]}", "eval.max_valid_samples=9"]
    )
    assert spec.config.num_samples == 3 and spec.config.search_space["retrieval.k"].grid == [7]
    assert spec.trial_config({}).eval.max_valid_samples == 9


def test_tune_objects_per_kind():
    from ray.tune.search.sample import Categorical, Float

    assert ParamSpace(grid=[1, 2]).to_tune() == {"grid_search": [1, 2]}
    c = ParamSpace(choice=["a", "b"]).to_tune()
    assert isinstance(c, Categorical) and c.categories == ["a", "b"]
    u = ParamSpace(uniform=(0.2, 0.9)).to_tune()
    assert isinstance(u, Float) and (u.lower, u.upper) == (0.2, 0.9)
    lu = ParamSpace(loguniform=(1e-4, 1e-2)).to_tune()
    draws = np.asarray(lu.sample(size=4000, random_state=0))
    assert isinstance(lu, Float) and draws.min() >= 1e-4 and draws.max() <= 1e-2
    assert np.median(draws) == pytest.approx(1e-3, rel=0.15)  # log-uniform: median at the geometric mean


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"search_space": {"retrieval.alpah": {"grid": [0.5]}}}, "retrieval.alpah"),
        ({"search_space": {"retrieval.alpha": {"grid": [0.5, 1.5]}}}, "search_space.retrieval.alpha: value 1.5"),
        ({"search_space": {"retrieval.k": {"grid": [3], "choice": [4]}}}, "exactly one of grid, choice"),
        ({"search_space": {"retrieval.alpha": {"uniform": [0.9, 0.1]}}}, "low < high"),
        ({"search_space": {"lora.lr": {"loguniform": [0, 0.1]}}}, "loguniform needs low > 0"),
        ({"search_space": {}}, "search_space"),
        ({"metric": "logloss", "mode": "max"}, "use mode: min"),
        ({"metric": "rmse"}, "metric"),
        ({"trials": 3}, "trials"),
        ({"overrides": {"lora.rank": 4}}, "lora.rank"),
        ({"base": "missing.yaml"}, "base: run config"),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, doc, needle):
    with pytest.raises(ConfigError) as e:
        load_sweep(_write(tmp_path, doc))
    assert needle in str(e.value)
    assert str(tmp_path / "sweep.yaml") in str(e.value)


def test_invalid_base_override_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="retrieval.k"):
        load_sweep(_write(tmp_path, {"overrides": {"retrieval.k": 0}}))


def test_logloss_defaults_to_min(tmp_path):
    assert load_sweep(_write(tmp_path, {"metric": "logloss"})).config.mode == "min"
