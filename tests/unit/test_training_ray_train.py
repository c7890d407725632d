"""ray_train helpers: sharding, local reporting, and fit() with a worker failure + resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ragrec.training import ray_train as rt


def test_epoch_batches_partition_rows_equally_across_ranks():
    n, bs, world = 103, 10, 3
    shards = [rt.epoch_batches(n, bs, seed=5, epoch=2, rank=r, world_size=world) for r in range(world)]
    rows = [torch.cat(s) for s in shards]
    assert [len(r) for r in rows] == [n // world] * world  # equal work per rank (DDP barrier safety)
    assert [len(s) for s in shards] == [4, 4, 4]  # 34 rows -> 3 x 10 + 4
    everything = torch.cat(rows)
    assert len(set(everything.tolist())) == len(everything)  # disjoint
    assert everything.min() >= 0 and everything.max() < n


def test_epoch_batches_depend_on_seed_and_epoch_only():
    a = torch.cat(rt.epoch_batches(50, 7, seed=1, epoch=0))
    b = torch.cat(rt.epoch_batches(50, 7, seed=1, epoch=0))
    c = torch.cat(rt.epoch_batches(50, 7, seed=1, epoch=1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(50))


def test_outside_ray_report_logs_and_publish_writes_to_out_dir(tmp_path):
    assert not rt.in_train_worker()
    assert rt.world_rank() == 0 and rt.world_size() == 1
    assert rt.load_state() is None
    before = len(rt.local_history())
    rt.report_state({"epoch": 0, "loss": 1.5}, {"never": "written"})
    rt.publish({"out_dir": str(tmp_path / "o")}, {"epoch": 1}, lambda d: (d / "x.txt").write_text("hi"))
    assert rt.local_history()[before:] == [{"epoch": 0, "loss": 1.5}, {"epoch": 1}]
    assert (tmp_path / "o" / "x.txt").read_text() == "hi"
    assert not (tmp_path / "o" / rt.STATE_FILE).exists()


@pytest.mark.ray
@pytest.mark.slow  # ~35 s: two worker-group starts on 2 CPUs
def test_fit_resumes_from_last_checkpoint_after_a_worker_failure(ray_session, tmp_path):
    # defined here so that cloudpickle ships it by value (test modules are not importable on workers)
    def flaky_loop(config: dict) -> list[int]:
        """Counts epochs; the first attempt dies after epoch 1 has been checkpointed."""
        state = rt.load_state()
        seen = state["seen"] if state else []
        start = state["epoch"] + 1 if state else 0
        for epoch in range(start, 4):
            seen = seen + [epoch]
            if epoch == 2 and not Path(config["marker"]).exists():
                Path(config["marker"]).write_text("failed once")
                raise RuntimeError("simulated worker crash")
            rt.report_state({"epoch": epoch}, {"epoch": epoch, "seen": seen})

        def write(out: Path) -> None:
            (out / "seen.json").write_text(json.dumps(seen))

        rt.publish(config, {"epoch": 3, "rank": rt.world_rank(), "inside": rt.in_train_worker()}, write)
        return seen

    config = {"marker": str(tmp_path / "marker"), "out_dir": str(tmp_path / "out")}
    res = rt.fit(flaky_loop, config, num_workers=1, storage_path=str(tmp_path / "ray"), name="flaky", max_failures=1)
    # epochs 0, 1 ran, epoch 2 crashed, the restart resumed at epoch 2 (not 0) from the checkpoint
    assert res["return_value"] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "out" / "seen.json").read_text()) == [0, 1, 2, 3]
    assert res["metrics"] == {"epoch": 3, "rank": 0, "inside": True}
    assert res["checkpoint_dir"] == str(tmp_path / "out")
