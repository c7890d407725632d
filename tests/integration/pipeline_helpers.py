"""Helpers of the end-to-end pipeline tests: a slice config pointed at the test's folders, the published keys."""

from __future__ import annotations

from pathlib import Path

from ragrec.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
IN_PROCESS = ("llm.actors=0", "ray.num_workers=0")
"""Overrides that run the stages and trainings in the test process, without a Ray start-up per stage (about 10 s
a stage, 8 s a training on 2 CPUs). RALLRec's pipeline, serving and job tests run on Ray Data and Ray Train; the
other methods' pipelines and every evaluation run in-process, whose outputs and cache keys are the Ray path's
(tests/unit/test_stages_in_process.py, and a Ray-equality unit test per trainer)."""


def cpu_kind() -> str:
    """The numeric platform a pinned slice figure was measured on: ``"bf16"`` (a CPU with AVX512-BF16 / AMX: bf16
    configs run bf16, float32 through AVX-512 kernels) or ``"avx2"`` (no native bf16: bf16 configs run float32,
    :func:`ragrec.runtime.engine_dtype`). The two sample different tokens from the same seed, so every later figure
    of a slice differs between them; a pin is per kind."""
    from ragrec.runtime import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "avx2"


def pinned(table: dict[str, list[tuple[str, float, float]]]) -> list[tuple[str, float, float]]:
    """This machine's :func:`cpu_kind` row of a pin table (an error naming the kind when none was measured)."""
    kind = cpu_kind()
    if kind not in table:
        raise AssertionError(f"no pinned figures measured on a '{kind}' CPU: measure them and add them to the table")
    return table[kind]


def check_pinned(rows: dict[str, dict], table: dict, auc_abs: float, logloss_abs: float = 0.01) -> None:
    """Each pinned row's ``(auc, logloss)`` matches one of the outcomes measured for it on this CPU kind. A row
    may have more than one: an LLM row's sampled text follows the float kernels (torch threads, the CPU model
    behind the kind); the test's comment says where each outcome was measured."""
    outcomes: dict[str, list[tuple[float, float]]] = {}
    for name, auc, logloss in pinned(table):
        outcomes.setdefault(name, []).append((auc, logloss))
    for name, known in outcomes.items():
        got = (rows[name]["auc"], rows[name]["logloss"])
        match = any(abs(got[0] - a) <= auc_abs and abs(got[1] - ll) <= logloss_abs for a, ll in known)
        assert match, f"{name}: AUC {got[0]:.6f} LogLoss {got[1]:.6f}, none of the pinned outcomes {known}"


def slice_config(config: str, artifacts: Path, tmp_path: Path, *extra: str) -> RunConfig:
    """``configs/<config>`` with ``artifacts_dir=artifacts``, ``output_dir=<tmp_path>/runs`` and the ``extra``
    overrides."""
    return load_config(
        REPO / "configs" / config, [f"artifacts_dir={artifacts}", f"output_dir={tmp_path / 'runs'}", *extra]
    )


def stage_keys(root: Path, stages, *, present_only: bool = False) -> dict[str, set[str]]:
    """``{stage: keys}``: the published (not ``.partial``) artifact keys of each stage under ``root``;
    ``present_only`` leaves out the stages without a folder (else a missing one is an error)."""
    return {
        s: {p.name for p in (root / s).iterdir() if not p.name.endswith(".partial")}
        for s in stages
        if not present_only or (root / s).exists()
    }
