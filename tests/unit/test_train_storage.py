"""Where Ray Train checkpoints a stage (``ray.storage_path``): one deterministic place per artifact, local or a
URI, removed after a finished run, refused when local on a multi-node cluster."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ragrec.config import ConfigError, load_config
from ragrec.training import ray_train as rt

REPO = Path(__file__).resolve().parents[2]


def _art(tmp_path: Path, stage: str = "lora", key: str = "0123abcd") -> SimpleNamespace:
    return SimpleNamespace(stage=stage, key=key, staging=tmp_path / stage / f"{key}.partial")


def test_stage_storage_is_per_artifact_and_deterministic(tmp_path):
    a, b = _art(tmp_path), _art(tmp_path, key="ffff0000")
    assert rt.stage_storage(None, a) == str(a.staging / "ray_train")
    assert rt.stage_storage("/ckpt", a) == "/ckpt/lora/0123abcd"
    assert rt.stage_storage("s3://bucket/runs/", a) == "s3://bucket/runs/lora/0123abcd"
    assert rt.stage_storage("s3://bucket/runs", a) == rt.stage_storage("s3://bucket/runs/", a)
    assert rt.stage_storage("/ckpt", a) != rt.stage_storage("/ckpt", b)


def test_for_stage_uses_the_config_storage_and_drops_it_after(tmp_path):
    sets = [f"ray.storage_path={tmp_path / 'ckpt'}", "ray.num_workers=1", "seed=7"]
    cfg = load_config(REPO / "configs" / "demo.yaml", sets)
    art = _art(tmp_path, stage="lightgcn", key="k1")
    opts = rt.TrainOptions.for_stage(cfg, art, out="train")
    assert opts.storage_path == str(tmp_path / "ckpt" / "lightgcn" / "k1")
    assert Path(opts.out_dir) == art.staging / "train"
    assert (opts.seed, opts.use_ray, opts.keep_storage) == (7, True, False)
    default = rt.TrainOptions.for_stage(load_config(REPO / "configs" / "demo.yaml"), art)
    assert default.storage_path == str(art.staging / "ray_train")


def test_empty_storage_path_is_a_config_error():
    with pytest.raises(ConfigError, match="ray.storage_path"):
        load_config(REPO / "configs" / "demo.yaml", ["ray.storage_path=' '"])


def test_drop_storage_local_and_file_uri(tmp_path):
    for target, path in [(tmp_path / "a", str(tmp_path / "a")), (tmp_path / "b", (tmp_path / "b").as_uri())]:
        (target / "lora" / "checkpoint_1").mkdir(parents=True)
        (target / "lora" / "checkpoint_1" / "state.pt").write_bytes(b"x")
        rt.drop_storage(path)
        assert not target.exists()
    rt.drop_storage(tmp_path / "never-existed")  # nothing to remove is fine


def test_local_storage_on_a_multi_node_cluster_is_refused(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    nodes = [{"Alive": True}, {"Alive": True}, {"Alive": False}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    with pytest.raises(ValueError, match=r"local path, but the Ray cluster has 2 nodes.*s3://"):
        rt.check_storage_reachable("/tmp/ckpt")
    rt.check_storage_reachable("s3://bucket/ckpt")  # every node reaches a URI
    nodes[1]["Alive"] = False
    rt.check_storage_reachable("/tmp/ckpt")  # one node: local is fine
