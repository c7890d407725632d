"""cluster.yaml: valid for Ray's own cluster launcher schema; a CPU head and GPU workers installing `.[gpu]`."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _validate(cfg: dict) -> dict:
    """What `ray up` does before launching anything: fill the provider defaults, then check the schema."""
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)  # ray/autoscaler/ray-schema.json + the launcher's own consistency checks
    return full


def test_cluster_yaml_passes_ray_schema(cluster):
    full = _validate(cluster)
    assert full["head_node_type"] in full["available_node_types"]


def test_the_validator_rejects_what_ray_up_would(cluster):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"][bad["head_node_type"]]["resourcez"] = {"CPU": 8}
    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        _validate(bad)
    bad = copy.deepcopy(cluster)
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        _validate(bad)


def test_cpu_head_and_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0 and head["resources"].get("GPU", 0) == 0
    assert head.get("max_workers", 0) == 0
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert sum(v["max_workers"] for v in workers.values()) >= 1


def test_worker_setup_installs_the_gpu_extra(cluster):
    full = _validate(cluster)
    setup = " && ".join(full["worker_setup_commands"])
    assert "pip install" in setup and "'.[gpu]'" in setup
    assert full["file_mounts"], "the source must be mounted for `pip install -e .[gpu]`"
    assert "/.venv" in full["rsync_exclude"] and not any(
        p.strip("/") == "data" and not p.startswith("/") for p in full["rsync_exclude"]
    )
