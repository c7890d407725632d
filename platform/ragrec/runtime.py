"""Ray runtime, devices, seeding and logging: the one place that calls ``ray.init``."""

from __future__ import annotations

import functools
import logging
import os
import random
import sys

import numpy as np

log = logging.getLogger("ragrec")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the first call: a
    caller that swapped stderr, such as a test capture since closed, must not break later log lines)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("RAGREC_LOG", "INFO")
    root = logging.getLogger("ragrec")
    if not root.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


_RAY_DEFAULTS: dict[str, object] = {"address": None, "num_cpus": None}


def use_ray_config(ray_cfg) -> None:
    """Make ``ray_cfg`` (a config's ``ray`` section: ``address``, ``num_cpus``) the defaults of :func:`init`,
    so the first stage that needs Ray starts or joins the one the config names. Every command that runs a
    config calls this (``ragrec run / evaluate / sweep / serve``); Ray itself starts only when needed."""
    _RAY_DEFAULTS.update(address=ray_cfg.address, num_cpus=ray_cfg.num_cpus)


def init(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect to ``address`` / the config's ``ray.address`` / ``$RAY_ADDRESS``, else start a local Ray on this
    machine with ``num_cpus`` / the config's ``ray.num_cpus`` / all CPUs (see :func:`use_ray_config`).

    Idempotent: does nothing when Ray is already initialised (tests share one session).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or _RAY_DEFAULTS["address"] or os.environ.get("RAY_ADDRESS")
    num_cpus = num_cpus or _RAY_DEFAULTS["num_cpus"]
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True, **kwargs)
        return
    num_cpus = num_cpus or os.cpu_count()
    warn_other_local_rays()
    log.info("starting a local Ray with %d CPUs", num_cpus)
    # The dashboard hosts the State API; without it Ray Train V2's placement-group cleaner logs a
    # warning every second ("Failed to query Ray Train Controller actor state").
    kwargs.setdefault("include_dashboard", True)
    ray.init(num_cpus=num_cpus, log_to_driver=True, **kwargs)
    _quiet_ray_data()


def local_ray_addresses() -> list[str]:
    """The GCS addresses of the Ray instances running on this machine (Ray's own process scan; [] if it fails)."""
    try:
        from ray._private.services import find_gcs_addresses

        find_gcs_addresses.cache_clear()
        return sorted(find_gcs_addresses())
    except Exception:  # a private API: never fail a run over a diagnostic
        return []


def warn_other_local_rays() -> None:
    """Warn before starting a second local Ray: with two instances on one machine, Ray Train V2's placement-group
    cleaner cannot tell which is its own and fails with "Found multiple active Ray instances"."""
    others = local_ray_addresses()
    if others:
        log.warning(
            "another Ray instance is running on this machine (%s): with two local instances Ray Train's "
            "placement-group cleaner fails ('Found multiple active Ray instances'). Share it "
            "(RAY_ADDRESS=%s or ray.address in the config) or stop it first.",
            ", ".join(others),
            others[0],
        )


def _quiet_ray_data() -> None:
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        ctx.print_on_execution_start = False
    except Exception:  # pragma: no cover - cosmetic only
        pass


def device(preferred: str = "auto") -> str:
    import torch

    if preferred != "auto":
        return preferred
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache  # read once: every LLM stage's cache key asks (stages/base.py: _engine_spec)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (where oneDNN runs bf16 matmuls natively). Elsewhere (AVX2 laptops,
    older servers) torch runs bfloat16 through reference kernels: measured 180x slower than float32 for a
    2048^2 matmul on a 2-core AVX2 EPYC (0.35 s float32, 63 s bfloat16)."""
    from pathlib import Path

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        import torch

        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


_WARNED: set[str] = set()  # warnings given once per process


def engine_dtype(dtype: str, device_name: str) -> str:
    """The dtype an LLM engine runs ``llm.dtype`` in on ``device_name`` ("cpu" / "cuda[:n]").

    ``auto``: float32 on CPU, bfloat16 on GPU. ``bfloat16`` on a CPU without native bf16
    (:func:`cpu_has_native_bf16`): float32, with a warning once per process: the run would otherwise be two
    orders of magnitude slower, and the results (and cache keys, :func:`ragrec.stages.base._engine_spec`) are
    float32's. Anything else as named."""
    on_cpu = device_name == "cpu"
    if dtype == "auto":
        return "float32" if on_cpu else "bfloat16"
    if dtype == "bfloat16" and on_cpu and not cpu_has_native_bf16():
        if "bf16" not in _WARNED:
            log.warning(
                "llm.dtype bfloat16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 matmuls run "
                "~100x slower than float32; the engine runs float32 instead (results and cache keys are float32's; "
                "set llm.dtype: float32 to silence this)"
            )
            _WARNED.add("bf16")
        return "float32"
    return dtype


def cpus_available() -> int:
    import ray

    if ray.is_initialized():
        return int(ray.available_resources().get("CPU", 1))
    return os.cpu_count() or 1


def torch_threads(share: int = 1) -> int:
    """Torch threads of a CPU job that was given none: ``RAGREC_TORCH_THREADS``, else this machine's cores / ``share``
    (at least one). The LLM workers and the training loops both read it, so side-by-side jobs can split the cores."""
    return int(os.environ.get("RAGREC_TORCH_THREADS") or 0) or max(1, (os.cpu_count() or 1) // max(1, share))
