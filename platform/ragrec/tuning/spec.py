"""Sweep configuration: a base run config, overrides and a search space over dotted run-config fields.

A sweep file (``configs/sweep_*.yaml``)::

    name: sweep_rallrec_ml100k
    base: rallrec_ml100k.yaml          # a run config, relative to the sweep file
    overrides: {eval.max_valid_samples: 500, lora: {train_samples: 64}}
    search_space:
      retrieval.alpha: {grid: [0.5, 0.6666667, 0.8]}
      retrieval.k: {choice: [5, 10]}
      description.temperature: {uniform: [0.6, 1.0]}
    metric: auc          # auc | logloss | acc (CTR), ndcg@10, map@5, ... (rerank), recall@20, ... (full ranking)
    mode: max            # default: max for auc/acc, min for logloss
    num_samples: 1       # repeats of the grid / draws of the random parameters
    max_concurrent_trials: 1

Every value of the space is checked against :class:`ragrec.config.RunConfig` before Ray starts, so a
typo or an out-of-range value fails at once with the field named, not inside trial 7.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..config import ConfigError, RunConfig, _Strict, apply_overrides, read_yaml_mapping

RANKING_METRICS = tuple(f"{m}@{k}" for m in ("ndcg", "map") for k in (1, 5, 10, 20))
# full ranking (ER2ALM): recall / precision / ndcg @ 10, 20, 50 (ndcg@10 and @20 are already ranking metrics)
FULL_RANKING_METRICS = tuple(f"{m}@{k}" for m in ("recall", "precision") for k in (10, 20, 50)) + ("ndcg@50",)
METRICS = ("auc", "logloss", "acc", *RANKING_METRICS, *FULL_RANKING_METRICS)
DEFAULT_MODE = {
    "auc": "max",
    "acc": "max",
    "logloss": "min",
    **dict.fromkeys(RANKING_METRICS, "max"),
    **dict.fromkeys(FULL_RANKING_METRICS, "max"),
}
# run-config fields holding paths: made absolute in the driver because Tune runs trials in their own folder
_PATH_FIELDS = (
    "artifacts_dir",
    "output_dir",
    "data.path",
    "data.interactions_file",
    "data.items_file",
    "data.users_file",
)


class ParamSpace(_Strict):
    """One searched field: exactly one of ``grid`` / ``choice`` (value lists) or ``uniform`` /
    ``loguniform`` (``[low, high]``)."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamSpace:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        if self.kind in ("grid", "choice") and not self.values():
            raise ValueError(f"{self.kind} needs at least one value")
        if self.kind in ("uniform", "loguniform"):
            lo, hi = getattr(self, self.kind)
            if not lo < hi:
                raise ValueError(f"{self.kind} needs [low, high] with low < high, got [{lo}, {hi}]")
            if self.kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs low > 0, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def values(self) -> list[Any]:
        """The values to validate: the listed ones, or the two bounds of a range."""
        return list(getattr(self, self.kind))

    def to_tune(self) -> Any:
        """The ``ray.tune`` search-space object (``grid_search`` / ``choice`` / ``uniform`` / ``loguniform``)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.grid))
        if self.kind == "choice":
            return tune.choice(list(self.choice))
        return getattr(tune, self.kind)(*getattr(self, self.kind))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and _is_section(key):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _field_info(path: str):
    """The pydantic field at dotted ``path`` of RunConfig, or None when no such field exists."""
    model: type[BaseModel] | None = RunConfig
    info = None
    for part in path.split("."):
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        ann = info.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return info


def _is_section(path: str) -> bool:
    info = _field_info(path)
    return info is not None and isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


class SweepConfig(_Strict):
    """The sweep file's schema (see the module docstring)."""

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$", description="results go to <output_dir>/<name>/")
    base: str = Field(..., description="run config YAML, relative to the sweep file")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted run-config fields (nested sections allowed) set in every trial"
    )
    search_space: dict[str, ParamSpace] = Field(..., min_length=1)
    num_samples: int = Field(1, ge=1)
    metric: Literal[METRICS] = Field(  # type: ignore[valid-type]
        "auc",
        description="validation objective: auc | logloss | acc (CTR methods), ndcg@k | map@k (ranking), "
        "recall@k | precision@k | ndcg@k with k in 10, 20, 50 (full ranking, ER2ALM)",
    )
    mode: Literal["max", "min"] | None = None
    max_concurrent_trials: int = Field(1, ge=1, description="1 on a small machine: each trial runs Ray Data/Train")
    trial_cpus: float = Field(
        0.01,
        gt=0,
        description="CPUs held by the trial driver itself; its Ray Data actors and Train workers request their own. "
        "With llm.actors: 0 and ray.num_workers: 0 the trial does that work itself: give it the CPUs it uses",
    )
    seed: int | None = Field(0, description="random state of the search (uniform/choice draws)")

    @field_validator("overrides", mode="before")
    @classmethod
    def _flat_overrides(cls, v: Any) -> Any:
        return _flatten(v) if isinstance(v, dict) else v

    @field_validator("overrides", "search_space")
    @classmethod
    def _known_fields(cls, v: dict) -> dict:
        bad = [k for k in v if _field_info(k) is None]
        if bad:
            raise ValueError(
                f"{bad} are not run-config fields (use dotted paths such as retrieval.alpha; "
                f"sections: {list(RunConfig.model_fields)})"
            )
        return v

    @model_validator(mode="after")
    def _mode(self) -> SweepConfig:
        if self.mode is None:
            self.mode = DEFAULT_MODE[self.metric]
        elif self.mode != DEFAULT_MODE[self.metric]:
            raise ValueError(
                f"mode '{self.mode}' with metric '{self.metric}' would select the worst trial; "
                f"use mode: {DEFAULT_MODE[self.metric]} (or leave mode out)"
            )
        return self


@dataclass
class SweepSpec:
    """A validated sweep: its file, schema and the base run config (raw dict, overrides applied, paths absolute)."""

    path: Path
    config: SweepConfig
    base_raw: dict

    @property
    def params(self) -> list[str]:
        return list(self.config.search_space)

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The run config of one trial: the base with ``params`` (dotted field -> value) applied."""
        return trial_config(self.base_raw, params)

    def out_dir(self) -> Path:
        return Path(self.base_raw.get("output_dir") or RunConfig.model_fields["output_dir"].default) / self.config.name


def _set_args(params: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]  # JSON is YAML: apply_overrides parses it back


def trial_config(base_raw: dict, params: dict[str, Any]) -> RunConfig:
    """``base_raw`` with dotted ``params`` applied, validated (raises ConfigError naming the field)."""
    raw = apply_overrides(base_raw, _set_args(params))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{params}: invalid trial config: {errs}") from None


def _absolute(raw: dict, cwd: Path) -> dict:
    """Relative path fields resolved against ``cwd`` (Tune trials run in their own working directory)."""
    for dotted in _PATH_FIELDS:
        node, *rest = dotted.split(".")
        holder = raw if not rest else raw.get(node)
        key = rest[0] if rest else node
        if not isinstance(holder, dict):
            continue
        value = holder.get(key)
        if value is None and dotted in ("artifacts_dir", "output_dir"):
            value = RunConfig.model_fields[dotted].default
        if isinstance(value, str) and "://" not in value:
            p = Path(os.path.expandvars(os.path.expanduser(value)))
            holder[key] = str(p if p.is_absolute() else (cwd / p).resolve())
    return raw


def _read_yaml(p: Path, what: str) -> dict:
    return read_yaml_mapping(p, what)


def split_overrides(overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """``--set`` items for the sweep file (first key a SweepConfig field) and for the base run config."""
    sweep, run = [], []
    for item in overrides or []:
        head = item.split("=", 1)[0].strip().split(".")[0]
        (sweep if head in SweepConfig.model_fields else run).append(item)
    return sweep, run


def _apply_sweep_sets(raw: dict, items: list[str]) -> dict:
    """Apply sweep ``--set`` items; under ``search_space.`` / ``overrides.`` the rest of the key is one
    dotted run-config field (``search_space.retrieval.k={grid: [5]}``), not nested sections."""
    plain = []
    for item in items:
        key, value = item.split("=", 1)
        head, _, rest = key.strip().partition(".")
        if head in ("search_space", "overrides") and rest:
            section = raw.setdefault(head, {})
            if not isinstance(section, dict):
                raise ConfigError(f"--set {item}: '{head}' in the sweep file is not a mapping")
            section[rest] = yaml.safe_load(value)
        else:
            plain.append(item)
    return apply_overrides(raw, plain)


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None, cwd: Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; ``overrides`` are ``--set`` items (see :func:`split_overrides`).

    Raises ConfigError naming the file and field for: an unknown key, a search field that is not a
    run-config field, a malformed range, a base config that is missing or invalid, and any searched
    value the run config rejects (e.g. ``retrieval.alpha: {grid: [1.5]}``).
    """
    p = Path(path)
    sweep_sets, run_sets = split_overrides(overrides)
    raw = _apply_sweep_sets(_read_yaml(p, "sweep file"), sweep_sets)
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{p}: invalid sweep config\n" + "\n".join(lines)) from None
    base_path = (p.parent / cfg.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{p}: base: run config {base_path} does not exist (the path is relative to the sweep file)")
    base_raw = apply_overrides(_read_yaml(base_path, "base config"), _set_args(cfg.overrides) + run_sets)
    base_raw = _absolute(base_raw, cwd or Path.cwd())
    try:
        trial_config(base_raw, {})
    except ConfigError as e:
        raise ConfigError(f"{p}: base {base_path} with overrides is invalid: {e}") from None
    for field, space in cfg.search_space.items():
        for value in space.values():
            try:
                trial_config(base_raw, {field: value})
            except ConfigError as e:
                raise ConfigError(f"{p}: search_space.{field}: value {value!r} is invalid: {e}") from None
    return SweepSpec(p, cfg, base_raw)
