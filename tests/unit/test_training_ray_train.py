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


def test_balanced_epoch_batches_have_no_small_remainder():
    plain = rt.epoch_batches(3587, 512, seed=0, epoch=0)
    assert [len(b) for b in plain][-1] == 3  # 7 x 512 + a last step on 3 rows
    balanced = rt.epoch_batches(3587, 512, seed=0, epoch=0, balanced=True)
    assert [len(b) for b in balanced] == [449] * 3 + [448] * 5  # ceil(3587 / 512) = 8 near-equal batches
    assert torch.equal(torch.cat(balanced), torch.cat(plain))  # the same permutation, cut elsewhere
    assert [len(b) for b in rt.epoch_batches(1024, 512, seed=0, epoch=0, balanced=True)] == [512, 512]
    shards = [rt.epoch_batches(103, 10, seed=5, epoch=2, rank=r, world_size=3, balanced=True) for r in range(3)]
    assert [[len(b) for b in s] for s in shards] == [[9, 9, 8, 8]] * 3  # every rank the same steps (DDP)


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


def test_fit_reports_are_not_held_back_by_the_controller_poll(ray_session, tmp_path, monkeypatch):
    """Ten per-epoch reports: Ray's default 2 s controller poll holds each back (>= 20 s in all); the interval
    fit() sets by default makes them fast, and a user's own setting is left alone."""

    def reporting_loop(config: dict) -> float:
        import time

        t0 = time.perf_counter()
        for epoch in range(10):
            rt.report({"epoch": epoch})
        return time.perf_counter() - t0

    monkeypatch.delenv(rt.HEALTH_CHECK_ENV, raising=False)
    res = rt.fit(reporting_loop, {}, num_workers=1, storage_path=str(tmp_path / "ray"), name="reports")
    assert res["return_value"] < 10, f"ten reports took {res['return_value']:.1f} s: held back by a 2 s poll"
    assert rt.os.environ[rt.HEALTH_CHECK_ENV] == rt.HEALTH_CHECK_INTERVAL_S
    monkeypatch.setenv(rt.HEALTH_CHECK_ENV, "0.3")
    with pytest.raises(ValueError, match="num_workers=0"):  # fails after the setting step: no second Ray run
        rt.fit(reporting_loop, {}, num_workers=0, storage_path=str(tmp_path / "ray2"), name="reports2")
    assert rt.os.environ[rt.HEALTH_CHECK_ENV] == "0.3"


def _linear_loop(config: dict, stop_at: int | None = None) -> tuple[list[dict], torch.Tensor]:
    """A tiny regression trained through EpochLoop; returns the history and the final weights."""
    torch.manual_seed(config["seed"])
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loop = rt.EpochLoop("linear", config, model, optimizer, epochs=4)

    def step(idx: torch.Tensor):
        if idx.numel() < 2:
            return None
        return torch.nn.functional.mse_loss(model(x[idx]).squeeze(1), y[idx]), idx.numel()

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(40, 8, seed=config["seed"], epoch=epoch)
        loop.stop = epoch == stop_at
        return {"loss": loop.train_batches(epoch, batches, step)}

    history = loop.run(train_epoch, evaluate=lambda epoch: {"evaluated": epoch})
    return history, model.weight.detach().clone()


def test_epoch_loop_resumes_standalone_from_checkpoint_dir(tmp_path, kill_after_epoch):
    opts = rt.TrainOptions(seed=3, out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", report_every=1)
    config = opts.loop_config("linear")
    ref_history, ref_weight = _linear_loop({**config, "checkpoint_dir": None})
    assert [list(h) for h in ref_history] == [["epoch", "loss", "seconds", "evaluated"]] * 4

    kill_after_epoch(lambda: _linear_loop(config), epoch=1)
    state = rt.load_state(tmp_path / "ckpt")
    assert (state["epoch"], state["batch"], len(state["history"])) == (1, 0, 2)

    history, weight = _linear_loop(config)  # resumes at epoch 2 with the saved weights and Adam state
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=1e-6)
    torch.testing.assert_close(weight, ref_weight)


def test_epoch_loop_early_stop_and_train_options(tmp_path):
    config = rt.TrainOptions(seed=0, out_dir=tmp_path).loop_config("linear")
    history, _ = _linear_loop(config, stop_at=1)
    assert [h["epoch"] for h in history] == [0, 1]
    with pytest.raises(ValueError, match="out_dir is required"):
        rt.TrainOptions().loop_config("linear")

    from ragrec.config import load_config

    cfg = load_config(None, ["seed=7", "ray.num_workers=2", "ray.use_gpu=true"])
    opts = rt.TrainOptions.from_config(cfg, out_dir=tmp_path, storage_path="s3://b/x")
    assert opts == rt.TrainOptions(
        use_ray=True, num_workers=2, use_gpu=True, seed=7, storage_path="s3://b/x", out_dir=tmp_path
    )


def _scripted_selection(config: dict, values: list[float], patience: int | None) -> tuple[list[dict], float]:
    """EpochLoop with ``select``: epoch e sets the weight to e and 'validates' to ``values[e]``."""
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loop = rt.EpochLoop("scripted", config, model, optimizer, epochs=len(values), select=("valid", patience))

    def train_epoch(epoch: int) -> dict:
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return {}

    history = loop.run(train_epoch, evaluate=lambda epoch: {"valid": values[epoch]})
    return history, float(model.weight.detach())


def test_epoch_loop_select_keeps_the_best_epoch_and_stops_after_patience(tmp_path, kill_after_epoch):
    config = rt.TrainOptions(seed=0, out_dir=tmp_path / "o").loop_config("scripted")
    values = [0.1, 0.3, 0.2, 0.3, 0.25, 0.5, 0.9]  # a tie (epoch 3) is not a new best
    history, weight = _scripted_selection(config, values, patience=3)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]  # 3 epochs without a new best after epoch 1
    assert (history[-1]["best_epoch"], weight) == (1, 1.0)  # the best epoch's weights, not the last
    history, weight = _scripted_selection(config, [0.1, 0.3, float("nan"), 0.2, 0.4], patience=None)
    assert (len(history), history[-1]["best_epoch"], weight) == (5, 4, 4.0)  # no patience: every epoch, NaN no best

    # the best so far survives a restart from a checkpoint taken after it
    ckpt = {**config, "checkpoint_dir": str(tmp_path / "ckpt"), "report_every": 1}
    kill_after_epoch(lambda: _scripted_selection(ckpt, values, patience=3), epoch=2)
    history, weight = _scripted_selection(ckpt, values, patience=3)
    assert ([h["epoch"] for h in history], history[-1]["best_epoch"], weight) == ([0, 1, 2, 3, 4], 1, 1.0)
