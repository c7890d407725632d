"""LoRA tuning resumes after a kill (standalone path, tiny-random-llama): from an epoch checkpoint or a
mid-epoch one, ending with the adapter of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from ragrec.config import LoRAConfig
from ragrec.llm.registry import TINY_LLAMA
from ragrec.training import lora
from ragrec.training import ray_train as rt
from ragrec.training.ray_train import TrainOptions

# dropout on: the resumed run must also restore torch's RNG to draw the same dropout masks
CFG = LoRAConfig(r=8, alpha=16, dropout=0.05, lr=1e-2, epochs=2, batch_size=4, grad_accum=1, max_tokens=128)
TABLE = pa.table(
    {
        "prompt": [
            "The user watched Alien (5 stars). Will he like Aliens?",
            "The user watched Heat (1 star). Will he like Ronin?",
            "The user watched Fargo (4 stars). Will he like Blood Simple?",
            "The user watched Cats (1 star). Will he like Evita?",
        ]
        * 3,
        "answer": ["Yes.", "No.", "Yes.", "No."] * 3,
    }
)  # 12 rows: 3 batches an epoch


class Killed(Exception):
    pass


def _kill_after(monkeypatch, when):
    """Make the loop die right after it saved the state for which ``when(state)`` is true."""
    original = rt.report_state

    def report_state(metrics, state, local_dir=None):
        original(metrics, state, local_dir)
        if when(state):
            raise Killed

    monkeypatch.setattr(rt, "report_state", report_state)


def _epochs_run(monkeypatch) -> list[int]:
    """Record which epochs the loop builds batches for (a resumed run must skip the finished ones)."""
    seen, original = [], lora.bucketed_batches

    def bucketed(lengths, batch_size, *, seed, epoch):
        seen.append(epoch)
        return original(lengths, batch_size, seed=seed, epoch=epoch)

    monkeypatch.setattr(lora, "bucketed_batches", bucketed)
    return seen


def _adapter(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return lora.train_lora(TABLE, TINY_LLAMA, CFG, opts=TrainOptions(seed=0, out_dir=out))


def _assert_same_run(res, ref):
    assert [(h["step"], h["epoch"]) for h in res.history] == [(h["step"], h["epoch"]) for h in ref.history]
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in ref.history], abs=1e-5)
    a, b = _adapter(res.adapter_dir), _adapter(ref.adapter_dir)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_killed_after_epoch_0_resumes_at_epoch_1_with_the_uninterrupted_adapter(tmp_path, monkeypatch, uninterrupted):
    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        _kill_after(m, lambda s: s["epoch"] == 0 and s["batch"] == 0)
        with pytest.raises(Killed):
            lora.train_lora(
                TABLE, TINY_LLAMA, CFG, opts=TrainOptions(seed=0, out_dir=tmp_path / "killed", checkpoint_dir=ckpt)
            )
    assert (ckpt / rt.STATE_FILE).exists() and not (tmp_path / "killed" / "adapter_model.safetensors").exists()

    epochs = _epochs_run(monkeypatch)
    res = lora.train_lora(
        TABLE, TINY_LLAMA, CFG, opts=TrainOptions(seed=0, out_dir=tmp_path / "resumed", checkpoint_dir=ckpt)
    )
    assert epochs == [1]  # epoch 0 came from the checkpoint
    _assert_same_run(res, uninterrupted)


def test_killed_mid_epoch_resumes_at_the_next_batch(tmp_path, monkeypatch, uninterrupted):
    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        _kill_after(m, lambda s: s["epoch"] == 0 and s["batch"] == 2)  # epoch 1, after 2 of its 3 batches
        with pytest.raises(Killed):
            lora.train_lora(
                TABLE,
                TINY_LLAMA,
                CFG,
                opts=TrainOptions(seed=0, out_dir=tmp_path / "killed", checkpoint_dir=ckpt),
                checkpoint_steps=1,
            )
    state = rt.read_state(ckpt / rt.STATE_FILE)  # weights_only=True
    assert (state["epoch"], state["batch"], len(state["history"])) == (0, 2, 5)

    epochs = _epochs_run(monkeypatch)
    res = lora.train_lora(
        TABLE,
        TINY_LLAMA,
        CFG,
        opts=TrainOptions(seed=0, out_dir=tmp_path / "resumed", checkpoint_dir=ckpt),
        checkpoint_steps=1,
    )
    assert epochs == [1]
    _assert_same_run(res, uninterrupted)


def test_without_a_checkpoint_dir_nothing_is_saved_and_a_rerun_starts_over(tmp_path):
    assert rt.load_state(None) is None and rt.load_state(tmp_path) is None
    rt.report_state({"epoch": 0}, {"epoch": 0, "x": torch.ones(2)}, tmp_path)
    assert rt.load_state(tmp_path)["epoch"] == 0 and not list(tmp_path.glob(".*.tmp"))
