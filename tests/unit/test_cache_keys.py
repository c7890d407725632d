"""Cache keys stay stable across refactors: a key changes only when a stage's version or spec does."""

import os
from pathlib import Path

import pytest

from ragrec.artifacts import ArtifactStore, spec_fields
from ragrec.config import LLMConfig, load_config
from ragrec.stages.data import dataset_stage, samples_stage
from ragrec.stages.generate import _engine_spec

CONTENT = "c0ffee" * 10 + "0000"
"""A fixed content digest given to the input artifacts: downstream keys derive from their inputs' content
(``ArtifactStore.artifact``), which depends on the bytes pyarrow writes; these tests pin the spec part."""


def _key_store(tmp_path) -> ArtifactStore:
    """A store whose ``run`` returns the unfinished artifact (its key) and gives it the content ``CONTENT``."""
    store = ArtifactStore(str(tmp_path))

    def key_only(stage, spec, inputs, compute, version="1"):
        art = store.artifact(stage, spec, inputs, version)
        art._content = CONTENT
        return art

    store.run = key_only
    return store


def _keys_without_running(cfg, tmp_path):
    store = _key_store(tmp_path)
    ds = dataset_stage(store, cfg)
    return ds.key, samples_stage(store, cfg, ds).key


def test_demo_data_keys_are_the_ones_existing_caches_hold(tmp_path):
    """The demo's dataset key (2026-11-30: the synthetic dataset reads no file) and its samples' key given the
    dataset's content (content-derived input keys, 2026-12); a change here orphans every cache."""
    assert _keys_without_running(load_config("configs/demo.yaml"), tmp_path) == ("1fd3dc7900b92c60", "4a13cab6aa9d72b6")


def test_rallrec_slice_lightgcn_key_is_the_one_existing_caches_hold(tmp_path, monkeypatch):
    """RALLRec's ``lightgcn`` stage (now built by ``stages.lightgcn``) keeps its name, spec, inputs and version:
    the keys of the slice (2026-12: the dataset key holds the files' sha256, inputs enter by content)."""
    from ragrec.methods.rallrec import lightgcn_stage

    root = os.environ.get("RAGREC_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (Path(root) / "ml-100k" / "u.data").exists():
        pytest.skip("no ml-100k under RAGREC_DATA_DIR or ../shared/data")
    monkeypatch.setenv("RAGREC_DATA_DIR", root)
    cfg = load_config("configs/rallrec_ml100k_slice.yaml")
    store = _key_store(tmp_path)
    ds = dataset_stage(store, cfg)  # holds the sha256 of u.data, u.item, u.genre, u.user
    samples = samples_stage(store, cfg, ds)
    assert (ds.key, samples.key) == ("049fdf03074dd673", "4a13cab6aa9d72b6")
    assert lightgcn_stage(store, cfg, ds, samples).key == "9a95cbb26146067b"


def test_a_late_field_enters_the_spec_only_away_from_its_default(monkeypatch):
    monkeypatch.setattr("ragrec.runtime.cpu_has_native_bf16", lambda: True)
    base = LLMConfig(model="m", max_prompt_tokens=64)
    assert _engine_spec(base) == {"model": "m", "max_prompt_tokens": 64}
    assert _engine_spec(base.model_copy(update={"dtype": "bfloat16"}))["dtype"] == "bfloat16"
    assert _engine_spec(base.model_copy(update={"load_in_8bit": True}))["load_in_8bit"] is True
    assert _engine_spec(base.model_copy(update={"batch_size": 3})) == _engine_spec(base)  # not an output field
    assert spec_fields(base, ["model", "dtype"]) == {"model": "m", "dtype": "auto"}  # not late: always in


def test_bfloat16_on_a_cpu_without_native_bf16_is_keyed_and_run_as_float32(monkeypatch, caplog):
    """Such a CPU runs bf16 matmuls through reference kernels (~100x float32's time): the engine runs float32
    there, so the artifact must carry float32's key (shared with a float32 config), while a GPU actor keeps bf16."""
    import torch

    from ragrec import runtime
    from ragrec.llm.registry import resolve_dtype

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_WARNED", set())
    bf16 = LLMConfig(model="m", dtype="bfloat16", device="cpu")
    with caplog.at_level("WARNING", logger="ragrec"):
        assert _engine_spec(bf16) == _engine_spec(LLMConfig(model="m", dtype="float32"))
        assert resolve_dtype("bfloat16", "cpu") is torch.float32
    assert sum("no native bf16" in r.message for r in caplog.records) == 1  # once per process
    gpu = LLMConfig(model="m", dtype="bfloat16", actors=2, num_gpus_per_actor=1)
    assert _engine_spec(gpu)["dtype"] == "bfloat16" and resolve_dtype("bfloat16", "cuda") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32 and resolve_dtype("float16", "cpu") is torch.float16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert _engine_spec(bf16)["dtype"] == "bfloat16" and resolve_dtype("bfloat16", "cpu") is torch.bfloat16
