"""Evaluation: CTR metrics, trivial baselines, run reports."""

from ragrec.evaluation.baselines import trivial_baselines
from ragrec.evaluation.metrics import bootstrap_ci, ctr_metrics, uauc

__all__ = ["bootstrap_ci", "ctr_metrics", "trivial_baselines", "uauc"]
