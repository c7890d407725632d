import json

import pyarrow as pa
import pytest

from ragrec.artifacts import ArtifactStore


def _table(n):
    return pa.table({"x": pa.array(range(n), pa.int64())})


def test_run_computes_once_then_reuses(store):
    calls = []

    def compute(art):
        calls.append(1)
        art.write_table(_table(3))
        return 3

    a1 = store.run("s", {"p": 1}, [], compute)
    a2 = store.run("s", {"p": 1}, [], compute)
    assert calls == [1] and a1.key == a2.key and a2.done
    assert a2.read_table().column("x").to_pylist() == [0, 1, 2]
    m = a2.manifest()
    assert m["rows"] == 3 and m["stage"] == "s" and m["spec"]["config"] == {"p": 1}


def test_key_depends_on_config_inputs_and_version(store):
    a = store.artifact("s", {"p": 1})
    assert store.artifact("s", {"p": 2}).key != a.key
    assert store.artifact("s", {"p": 1}, version="2").key != a.key
    with pytest.raises(ValueError, match="not finished"):  # an input enters by its content: it must exist
        store.artifact("t", {"p": 1}, [a])
    a = store.run("s", {"p": 1}, [], lambda art: art.write_table(_table(2)) and None)
    b = store.run("s", {"p": 2}, [], lambda art: art.write_table(_table(3)) and None)
    t_a = store.artifact("t", {"p": 1}, [a])
    assert t_a.spec["inputs"] == [f"s@{a.content[:32]}"] and t_a.inputs == [{"stage": "s", "key": a.key}]
    assert t_a.key != store.artifact("t", {"p": 1}, [b]).key != store.artifact("t", {"p": 1}, ["other"]).key


def test_failed_stage_leaves_nothing_published(store):
    def boom(art):
        art.write_table(_table(2))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.run("s", {}, [], boom)
    art = store.artifact("s", {})
    assert not art.done and not art.path.exists()


def test_force_recomputes(tmp_path):
    calls = []

    def compute(art):
        calls.append(1)
        art.write_json({"n": len(calls)}, "out")
        return

    ArtifactStore(tmp_path).run("s", {}, [], compute)
    art = ArtifactStore(tmp_path, force=["s"]).run("s", {}, [], compute)
    assert len(calls) == 2 and art.read_json("out") == {"n": 2}


def test_blocks_survive_a_failed_attempt_and_are_dropped_on_commit(store):
    art = store.artifact("gen", {})
    art.write_block(0, _table(2))
    art.write_block(3, _table(1))
    assert art.finished_blocks() == {0, 3}
    assert art.read_blocks().num_rows == 3
    art.commit(rows=3)
    assert art.done and not (art.path / "blocks").exists()
    assert json.loads((art.path / "manifest.json").read_text())["rows"] == 3


def test_llm_stage_keys_change_with_precision_but_not_with_throughput_settings(monkeypatch):
    monkeypatch.setattr("ragrec.runtime.cpu_has_native_bf16", lambda: True)  # else bf16 is keyed as float32
    from ragrec.config import LLMConfig
    from ragrec.stages.generate import _engine_spec

    base = _engine_spec(LLMConfig(model="m"))
    assert base == {"model": "m", "max_prompt_tokens": 1024}  # unchanged: earlier artifacts keep their keys
    assert _engine_spec(LLMConfig(model="m", batch_size=64, actors=4, device="cpu")) == base
    assert _engine_spec(LLMConfig(model="m", dtype="bfloat16")) == {**base, "dtype": "bfloat16"}
    assert _engine_spec(LLMConfig(model="m", load_in_8bit=True))["load_in_8bit"] is True
