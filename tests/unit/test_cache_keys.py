"""Cache keys stay stable across refactors: a key changes only when a stage's version or spec does."""

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


def test_a_late_field_enters_the_spec_only_away_from_its_default():
    base = LLMConfig(model="m", max_prompt_tokens=64)
    assert _engine_spec(base) == {"model": "m", "max_prompt_tokens": 64}
    assert _engine_spec(base.model_copy(update={"dtype": "bfloat16"}))["dtype"] == "bfloat16"
    assert _engine_spec(base.model_copy(update={"load_in_8bit": True}))["load_in_8bit"] is True
    assert _engine_spec(base.model_copy(update={"batch_size": 3})) == _engine_spec(base)  # not an output field
    assert spec_fields(base, ["model", "dtype"]) == {"model": "m", "dtype": "auto"}  # not late: always in
