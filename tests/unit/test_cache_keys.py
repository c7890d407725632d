"""Cache keys stay stable across refactors: a key changes only when a stage's version or spec does."""

import os
from pathlib import Path

import pytest

from ragrec.artifacts import ArtifactStore, spec_fields
from ragrec.config import LLMConfig, load_config
from ragrec.stages.data import dataset_stage, samples_stage
from ragrec.stages.generate import _engine_spec


def _keys_without_running(cfg, tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    ds = dataset_stage(store, cfg)
    return ds.key, samples_stage(store, cfg, ds).key


def test_demo_data_keys_are_the_ones_existing_caches_hold(tmp_path):
    """The keys the demo's artifacts were written under (2026-11-30); a change here orphans every cache."""
    assert _keys_without_running(load_config("configs/demo.yaml"), tmp_path) == ("1fd3dc7900b92c60", "19461eb0c9b46e8c")


def test_rallrec_slice_lightgcn_key_is_the_one_existing_caches_hold(tmp_path, monkeypatch):
    """RALLRec's ``lightgcn`` stage (now built by ``stages.lightgcn``) keeps its name, spec, inputs and version:
    the key the slice's pinned artifacts were written under."""
    from ragrec.methods.rallrec import lightgcn_stage

    root = os.environ.get("RAGREC_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (Path(root) / "ml-100k" / "u.data").exists():
        pytest.skip("no ml-100k under RAGREC_DATA_DIR or ../shared/data")
    monkeypatch.setenv("RAGREC_DATA_DIR", root)
    cfg = load_config("configs/rallrec_ml100k_slice.yaml")
    store = ArtifactStore(str(tmp_path))
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    ds = dataset_stage(store, cfg)
    samples = samples_stage(store, cfg, ds)
    assert (ds.key, samples.key) == ("65361fad2defce37", "46a1c62c0f51dcce")
    assert lightgcn_stage(store, cfg, ds, samples).key == "f2b39c23dbf785fe"


def test_a_late_field_enters_the_spec_only_away_from_its_default():
    base = LLMConfig(model="m", max_prompt_tokens=64)
    assert _engine_spec(base) == {"model": "m", "max_prompt_tokens": 64}
    assert _engine_spec(base.model_copy(update={"dtype": "bfloat16"}))["dtype"] == "bfloat16"
    assert _engine_spec(base.model_copy(update={"load_in_8bit": True}))["load_in_8bit"] is True
    assert _engine_spec(base.model_copy(update={"batch_size": 3})) == _engine_spec(base)  # not an output field
    assert spec_fields(base, ["model", "dtype"]) == {"model": "m", "dtype": "auto"}  # not late: always in
