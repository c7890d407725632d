"""Shared fixtures. One Ray session for the whole test run; tests that need no Ray never start it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """A single local Ray (2 CPUs) shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=True,  # hosts the State API that Ray Train V2's cleaner polls
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
            runtime_env={
                "env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAGREC_CACHE": os.environ.get("RAGREC_CACHE", "")}
            },
        )
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
    yield ray
    # the session ends with the process; ray.shutdown() here would race late actor teardown


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$RAGREC_DATA_DIR (the shared raw datasets); tests needing real data skip without it."""
    root = os.environ.get("RAGREC_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.data").exists():
        pytest.skip("RAGREC_DATA_DIR with ml-100k/ is not set (CI sets RAGREC_DATA_DIR=../shared/data)")
    return Path(root)


@pytest.fixture()
def store(tmp_path):
    from ragrec.artifacts import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(scope="session")
def slice_artifacts(tmp_path_factory) -> Path:
    """One artifact store for every test that runs configs/rallrec_ml100k_slice.yaml (pipeline, serve,
    evaluate): the real SmolLM2 stages of the slice are computed once per test session."""
    return tmp_path_factory.mktemp("slice") / "artifacts"


@contextmanager
def _torch_one_thread():
    """One torch intra-op thread, here and in Ray Train workers (``worker_setup`` reads RAGREC_TORCH_THREADS);
    the thread count and the variable are restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGREC_TORCH_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@pytest.fixture()
def one_torch_thread():
    """Tiny models: one torch thread for the test (2 contending threads on the shared 2 CPUs are much slower)."""
    with _torch_one_thread():
        yield


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """:func:`one_torch_thread` for a whole module, module-scoped fixtures (trainings) included."""
    with _torch_one_thread():
        yield


@pytest.fixture()
def kill_after_epoch(monkeypatch):
    """``kill_after_epoch(run, epoch=1)``: calls ``run()`` with ``ray_train.report_state`` raising
    ``RuntimeError("killed")`` right after it saved the state of ``epoch`` (a crash after a checkpoint), and
    checks that the run died of it."""
    from ragrec.training import ray_train as rt

    def kill(run, epoch: int = 1) -> None:
        original = rt.report_state

        def killed_after_epoch(metrics, state, local_dir=None):
            original(metrics, state, local_dir)
            if state["epoch"] == epoch:
                raise RuntimeError("killed")

        with monkeypatch.context() as m:
            m.setattr(rt, "report_state", killed_after_epoch)
            with pytest.raises(RuntimeError, match="killed"):
                run()

    return kill
