"""Fault recovery, tested by killing things: a SIGKILLed Ray Train worker and a SIGKILLed driver mid-LoRA.

* A worker killed mid-training: Ray Train restarts the worker group (``FailureConfig``), the loop resumes
  from the last checkpoint and repeats no epoch, and the result equals an uninterrupted run.
* The driver of ``lora_stage`` killed mid-run: the checkpoints at the stage's deterministic place
  (``stage_storage``) survive, and rerunning the stage resumes there instead of starting over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
EPOCHS, KILL_AT = 6, 3


def _loop_factory(log: str, marker: str | None):
    """A tiny regression through EpochLoop that checkpoints every epoch; it appends each finished epoch to
    ``log`` and, on its first attempt only (``marker``), SIGKILLs its own worker process as epoch KILL_AT starts."""

    def train_loop(config: dict):
        import os
        import signal
        import time
        from pathlib import Path

        import torch

        from ragrec.training import ray_train as rt

        torch.manual_seed(0)
        x = torch.linspace(-1, 1, 64).unsqueeze(1)
        y = 3 * x - 1
        model = torch.nn.Linear(1, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        loop = rt.EpochLoop("toy", config, model, opt, EPOCHS)

        def train_epoch(epoch: int) -> dict:
            if marker is not None and epoch == KILL_AT and not Path(marker).exists():
                Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            loss = loop.train_batches(epoch, [None] * 8, lambda _: (((model(x) - y) ** 2).mean(), 1))
            if marker is not None:  # an epoch of real length: the controller registers a checkpoint (it polls
                time.sleep(0.5)  # every 0.2 s) before the next one is reported; 1 ms epochs raced it in CI
            with open(log, "a") as f:
                f.write(f"{epoch}\n")
            return {"loss": loss}

        loop.run(train_epoch)
        loop.publish(lambda out: torch.save(model.state_dict(), out / "model.pt"))
        return [float(p.detach().flatten()[0]) for p in model.parameters()]

    return train_loop


def test_killed_train_worker_resumes_without_repeating_epochs(ray_session, tmp_path):
    from ragrec.training import ray_train as rt

    log, marker = tmp_path / "epochs.log", tmp_path / "killed"
    opts = rt.TrainOptions(use_ray=True, out_dir=tmp_path / "out", storage_path=str(tmp_path / "ckpt"), report_every=1)
    got = rt.run_loop(_loop_factory(str(log), str(marker)), opts.loop_config("toy"), opts, name="toy")

    assert marker.exists(), "the worker was never killed"
    epochs = [int(e) for e in log.read_text().split()]
    # resumed from the last checkpoint the controller registered: at most one checkpoint interval (one epoch
    # here) is done again (a report still in flight when the worker died is lost), never a restart from zero
    assert sorted(set(epochs)) == list(range(EPOCHS)), epochs
    assert len(epochs) - EPOCHS <= 1, f"more than one checkpoint interval was repeated: {epochs}"
    assert epochs[: KILL_AT - 1] == list(range(KILL_AT - 1)) and epochs.count(0) == 1, epochs
    ref_log = tmp_path / "ref.log"
    ref_opts = rt.TrainOptions(use_ray=False, out_dir=tmp_path / "ref")
    ref = rt.run_loop(_loop_factory(str(ref_log), None), ref_opts.loop_config("toy"), ref_opts, name="toy")
    assert got == pytest.approx(ref, rel=1e-6)  # same weights as an uninterrupted run


DRIVER = textwrap.dedent("""
    import sys
    import pyarrow as pa
    from ragrec.artifacts import ArtifactStore
    from ragrec.config import load_config
    from ragrec.stages.lora import lora_stage
    sys.path.insert(0, __TESTS__)
    from test_fault_recovery import examples_stage, lora_config
    store = ArtifactStore(__ROOT__)
    cfg = lora_config()
    lora_stage(store, cfg, examples_stage(store))
""")


def lora_config():
    from ragrec.config import load_config

    sets = [
        "llm.model=tiny-random-llama",
        "lora.epochs=8",
        "lora.batch_size=2",
        "lora.grad_accum=1",
        "lora.dropout=0.0",
        "lora.max_tokens=96",
        "ray.num_workers=1",
    ]
    return load_config(REPO / "configs" / "demo.yaml", sets)


def examples_stage(store):
    import pyarrow as pa

    n = 16
    table = pa.table(
        {
            "prompt": [f"The user liked film {i} and film {i + 1}. Will the user like film {i + 2}?" for i in range(n)],
            "answer": ["Yes." if i % 2 else "No." for i in range(n)],
        }
    )

    def compute(art):
        art.write_table(table, "data")
        return table.num_rows

    return store.run("examples", {"n": n}, [], compute)


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the registered checkpoints


def _registered(snapshot: Path) -> bool:
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):  # being rewritten
        return False


def test_killed_lora_driver_resumes_from_the_stage_checkpoint(ray_session, tmp_path):
    import ray

    from ragrec.artifacts import ArtifactStore
    from ragrec.stages.lora import lora_stage

    root = tmp_path / "artifacts"
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, RAGREC_LORA_CHECKPOINT_STEPS="2")
    script = DRIVER.replace("__ROOT__", repr(str(root))).replace("__TESTS__", repr(str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    registered = False
    while time.monotonic() < deadline and proc.poll() is None:
        # kill once Ray Train's controller has *registered* a checkpoint (its snapshot names the latest one): a
        # checkpoint folder alone may still be waiting for the controller's poll, and the rerun would start over
        registered = any(_registered(p) for p in root.glob("lora/*.partial/ray_train/lora/" + SNAPSHOT))
        if registered:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the driver ended before it could be killed: {proc.stderr.read()[-2000:]}"
    assert registered, "no registered LoRA checkpoint within 240 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not [p for p in (root / "lora").iterdir() if not p.name.endswith(".partial")], "nothing is published"

    os.environ["RAGREC_LORA_CHECKPOINT_STEPS"] = "2"
    try:
        store = ArtifactStore(root)
        art = lora_stage(store, lora_config(), examples_stage(store))
    finally:
        del os.environ["RAGREC_LORA_CHECKPOINT_STEPS"]
    history = json.loads(art.file("history.json").read_text())
    steps = [h["step"] for h in history]
    assert steps == list(range(64)), "every optimizer step exactly once (16 examples / batch 2 x 8 epochs)"
    resumed = [h["step"] for h in history if h["attempt"] > 0]
    # the rerun continues from a checkpoint of the killed run (the latest one Ray Train had registered)
    assert resumed and resumed[0] >= 2, f"the rerun started over instead of resuming: first resumed step {resumed[:1]}"
    assert resumed == steps[resumed[0] :], "after the resume point every step is the rerun's"
    assert not list(root.glob("lora/*/ray_train")), "the finished stage's checkpoints are removed"
