"""Ray Tune sweeps over run-config fields (``ragrec sweep CONFIG``): see :mod:`ragrec.tuning.sweep`."""

from .spec import ParamSpace, SweepConfig, SweepSpec, load_sweep, trial_config
from .sweep import SweepResult, run_sweep

__all__ = ["ParamSpace", "SweepConfig", "SweepResult", "SweepSpec", "load_sweep", "run_sweep", "trial_config"]
