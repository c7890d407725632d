"""Late fusion: an LLM recommender's logit + a collaborative model's logit + the item/user baseline's logit.

The fusion model is a logistic regression fitted on the **validation** split and applied unchanged to
the test samples (and at serve time). Its inputs are per-sample logits, by name:

* ``llm`` — ``logit(P(yes))`` of the method's full variant (probabilities clipped to [1e-6, 1 - 1e-6]);
* ``crm`` — the collaborative model's logit: DeepFM's for RALLRec, SASRec's raw score of the target
  item given the history before the sample for SCoRe;
* ``item_user`` — the ``item_user_logit`` baseline's log-odds, from training interactions only
  (:class:`ragrec.evaluation.baselines.ItemUserBaseline`).

``fusion w/o LLM`` is the same fit on ``crm`` and ``item_user`` only; the paired AUC difference between
the two is the LLM's marginal value over collaborative filtering.

Scaling and regularisation: every input is standardised with the validation mean and standard
deviation, then scikit-learn's ``LogisticRegression`` (L2, ``C`` = 1.0, lbfgs) is fitted. Standardising
puts the penalty on the same footing for every input (an LLM logit spans a few units, a SASRec dot
product tens) and makes the coefficients comparable: each is the change in the fused log-odds per
standard deviation of its input. With a few hundred validation samples and three inputs, C = 1 barely
shrinks; it only keeps the fit finite when an input separates the validation labels. The JSON form
(:meth:`FusionModel.to_dict`) holds the feature names, the standardised coefficients and intercept, the
scaling, and for reading the same model per unit of raw logit (``raw_coef``, ``raw_intercept``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..artifacts import Artifact, ArtifactStore

__all__ = [
    "DEFAULT_C",
    "EPS",
    "FEATURES",
    "MODEL_FILE",
    "FusionModel",
    "FusionResult",
    "comparison_rows",
    "fit_fusion",
    "fuse",
    "fusion_artifact",
    "logit",
]

EPS = 1e-6
"""Probabilities are clipped to [EPS, 1 - EPS] before the logit."""
DEFAULT_C = 1.0
"""Inverse L2 strength of the logistic regression (on standardised inputs)."""
FEATURES = ("llm", "crm", "item_user")
"""The full fusion's inputs, in this order; ``fusion w/o LLM`` uses ``FEATURES[1:]``."""
MODEL_FILE = "fusion.json"
FORMAT = "ragrec.fusion/1"


def logit(p) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to [EPS, 1 - EPS]; float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def _matrix(features: tuple[str, ...], logits: Mapping[str, Any], n: int | None = None) -> np.ndarray:
    """(n, k) float64 matrix of ``logits`` in ``features`` order; one-line ValueError when malformed."""
    missing = [f for f in features if f not in logits]
    if missing:
        raise ValueError(f"fusion: inputs {missing} missing (have {sorted(logits)}, need {list(features)})")
    cols = []
    for f in features:
        v = np.asarray(logits[f], dtype=np.float64)
        if v.ndim != 1:
            raise ValueError(f"fusion: input '{f}' must be 1-d, got shape {v.shape}")
        if n is None:
            n = len(v)
        if len(v) != n:
            raise ValueError(f"fusion: input '{f}' has {len(v)} values, expected {n} (one per sample)")
        if not np.isfinite(v).all():
            raise ValueError(f"fusion: input '{f}' holds {int((~np.isfinite(v)).sum())} non-finite values")
        cols.append(v)
    return np.stack(cols, axis=1) if cols else np.zeros((n or 0, 0))


@dataclass(frozen=True)
class FusionModel:
    """A fitted fusion: ``P = sigmoid(intercept + sum_k coef_k * (x_k - mean_k) / scale_k)``.

    Attributes:
        features: input names (e.g. ``("llm", "crm", "item_user")``), the order of the arrays below.
        coef: (k,) coefficients on standardised inputs. intercept: on standardised inputs.
        mean, scale: (k,) the validation mean / standard deviation used to standardise (scale 1 for a
            constant input).
        C: the inverse L2 strength of the fit. n_fit: validation samples it was fitted on.
    """

    features: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    C: float = DEFAULT_C
    n_fit: int = 0

    def __post_init__(self) -> None:
        k = len(self.features)
        for name in ("coef", "mean", "scale"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (k,):
                raise ValueError(f"fusion model: {name} has shape {v.shape}, expected ({k},) for {list(self.features)}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "intercept", float(self.intercept))

    # ---- applying --------------------------------------------------------------------------
    def decision(self, logits: Mapping[str, Any]) -> np.ndarray:
        """(n,) fused log-odds of ``logits`` (name -> (n,) array; extra names are ignored)."""
        x = _matrix(self.features, logits)
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, logits: Mapping[str, Any]) -> np.ndarray:
        """(n,) float64 fused probabilities."""
        return _sigmoid(self.decision(logits))

    @property
    def raw_coef(self) -> np.ndarray:
        """(k,) coefficients per unit of each raw input logit."""
        return self.coef / self.scale

    @property
    def raw_intercept(self) -> float:
        return float(self.intercept - (self.coef * self.mean / self.scale).sum())

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "features": list(self.features),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "C": float(self.C),
            "n_fit": int(self.n_fit),
            "standardized": True,
            "raw_coef": self.raw_coef.tolist(),
            "raw_intercept": self.raw_intercept,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> FusionModel:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"fusion model: unknown format {d.get('format')!r} (expected {FORMAT!r})")
        try:
            return cls(
                tuple(d["features"]),
                np.asarray(d["coef"], dtype=np.float64),
                float(d["intercept"]),
                np.asarray(d["mean"], dtype=np.float64),
                np.asarray(d["scale"], dtype=np.float64),
                float(d.get("C", DEFAULT_C)),
                int(d.get("n_fit", 0)),
            )
        except KeyError as e:
            raise ValueError(f"fusion model: JSON lacks {e.args[0]!r}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FusionModel:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        """One line: the standardised coefficients by input name (``names`` relabels them)."""
        names = names or {}
        terms = ", ".join(f"{names.get(f, f)} {c:+.3f}" for f, c in zip(self.features, self.coef))
        return (
            f"logistic regression on {self.n_fit} validation samples, standardised logits (C={self.C:g}): "
            f"{terms}, intercept {self.intercept:+.3f}"
        )


def fit_fusion(
    logits: Mapping[str, Any], labels, *, C: float = DEFAULT_C, features: Iterable[str] | None = None
) -> FusionModel:
    """Fit the fusion on validation ``logits`` (name -> (n,) array) and 0/1 ``labels`` (n,).

    ``features`` picks and orders the inputs (default: every key of ``logits`` in its order).

    Raises:
        ValueError: (one line) no inputs, lengths that differ from the labels', non-finite inputs,
            labels that are not 0/1 or hold a single class.
    """
    from sklearn.linear_model import LogisticRegression

    feats = tuple(features) if features is not None else tuple(logits)
    if not feats:
        raise ValueError("fusion: no inputs to fit on")
    y = np.asarray(labels).ravel()
    x = _matrix(feats, logits, len(y))
    if len(y) == 0:
        raise ValueError("fusion: no validation samples to fit on")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"fusion: labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    if y.min() == y.max():
        raise ValueError(
            f"fusion: all {len(y)} validation labels are {int(y[0])}; the fit needs both classes "
            f"(raise eval.max_valid_samples or use eval.subset=random)"
        )
    if C <= 0:
        raise ValueError(f"fusion: C must be > 0, got {C}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9 * (1.0 + np.abs(mean)), scale, 1.0)  # constant input: leave it unscaled
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=1000)
    lr.fit((x - mean) / scale, y.astype(np.int64))
    return FusionModel(feats, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), mean, scale, C, len(y))


def _digest(arrays: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def fusion_artifact(
    store: ArtifactStore,
    logits: Mapping[str, Any],
    labels,
    inputs: list[Artifact],
    *,
    C: float = DEFAULT_C,
    name: str = "fusion",
) -> Artifact:
    """The fusion model fitted on ``logits`` / ``labels`` as a cached artifact holding :data:`MODEL_FILE`.

    Keyed by the input artifacts, the feature names, ``C`` and a digest of the values (so a changed
    validation subset refits); read it back with ``FusionModel.load(art.path / MODEL_FILE)``.
    """
    feats = list(logits)
    y = np.asarray(labels).ravel()
    spec = {"features": feats, "C": C, "n": len(y), "data": _digest([np.asarray(logits[f]) for f in feats] + [y])}

    def compute(art: Artifact):
        model = fit_fusion(logits, y, C=C)
        model.save(art.staging / MODEL_FILE)
        return {"rows": len(y), "features": feats}

    return store.run(name, spec, inputs, compute)


@dataclass
class FusionResult:
    """The two fits (``model`` on every input, ``without_llm`` on all but ``llm``) and their test outputs.

    ``fused`` / ``fused_without_llm``: (n,) test probabilities; ``test_logits``: the test inputs;
    ``names``: feature -> the label the report uses; ``valid_auc``: validation AUC of every input and of
    both fits (in-sample for the fits); ``artifact``: the cached full model when fitted through a store.
    """

    model: FusionModel
    without_llm: FusionModel
    fused: np.ndarray
    fused_without_llm: np.ndarray
    test_logits: dict[str, np.ndarray]
    names: dict[str, str]
    valid_auc: dict[str, float]
    artifact: Artifact | None = None

    def input_probs(self, feature: str) -> np.ndarray:
        """(n,) ``sigmoid`` of a test input's logit (its probability for a report row)."""
        return _sigmoid(self.test_logits[feature])

    def note(self) -> str:
        """The report's one line: both fits' standardised coefficients."""
        return (
            f"fusion: {self.model.describe(self.names)}; w/o LLM: "
            + ", ".join(
                f"{self.names.get(f, f)} {c:+.3f}" for f, c in zip(self.without_llm.features, self.without_llm.coef)
            )
            + f", intercept {self.without_llm.intercept:+.3f}"
        )

    def summary(self) -> dict:
        """JSON-able block for metrics.json: inputs, both models (coefficients, scaling), validation AUCs."""
        return {
            "inputs": dict(self.names),
            "model": self.model.to_dict(),
            "without_llm": self.without_llm.to_dict(),
            "valid": {"n": self.model.n_fit, "auc": dict(self.valid_auc)},
            "artifact": self.artifact.key if self.artifact is not None else None,
        }


def fuse(
    valid_logits: Mapping[str, Any],
    valid_labels,
    test_logits: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    C: float = DEFAULT_C,
    store: ArtifactStore | None = None,
    inputs: list[Artifact] | None = None,
    llm: str = "llm",
) -> FusionResult:
    """Fit the fusion with and without the ``llm`` input on validation, apply both to the test inputs.

    With ``store`` the full model is the cached :func:`fusion_artifact` (keyed by ``inputs``).
    """
    from sklearn.metrics import roc_auc_score

    feats = [f for f in valid_logits]
    if llm not in feats or len(feats) < 2:
        raise ValueError(f"fusion: inputs {feats} must hold '{llm}' and at least one other")
    y = np.asarray(valid_labels).ravel()
    if store is not None:
        art = fusion_artifact(store, {f: valid_logits[f] for f in feats}, y, list(inputs or []), C=C)
        model = FusionModel.load(art.path / MODEL_FILE)
    else:
        art, model = None, fit_fusion(valid_logits, y, C=C, features=feats)
    rest = [f for f in feats if f != llm]
    without = fit_fusion(valid_logits, y, C=C, features=rest)
    auc = {names.get(f, f): float(roc_auc_score(y, np.asarray(valid_logits[f], dtype=np.float64))) for f in feats}
    auc["fusion"] = float(roc_auc_score(y, model.decision(valid_logits)))
    auc["fusion w/o LLM"] = float(roc_auc_score(y, without.decision(valid_logits)))
    test = {f: np.asarray(test_logits[f], dtype=np.float64) for f in feats}
    return FusionResult(model, without, model.predict(test), without.predict(test), test, dict(names), auc, art)


def comparison_rows(
    row: Callable[[str, np.ndarray, np.ndarray], dict],
    fused_name: str,
    fused: np.ndarray,
    against: Mapping[str, np.ndarray],
) -> list[dict]:
    """Paired rows ``fused`` vs each of ``against`` (label -> probs) built by the method's ``row`` helper.

    ``row(name, probs, ref_probs)`` must return a report row whose ``delta`` is ``AUC(probs) -
    AUC(ref_probs)`` with its paired interval(s); each row is named ``"<fused_name> − <label>"``.
    """
    return [row(f"{fused_name} − {label}", fused, ref) | {"versus": label} for label, ref in against.items()]


def skipped(required: bool | None, err: ValueError) -> str:
    """An evaluation's fusion failed with ``err``: re-raise when ``eval.fusion`` asked for it (``required``),
    else log that the fusion is skipped and return the reason for the report."""
    if required:
        raise err
    import logging

    logging.getLogger("ragrec.evaluate").warning("evaluate: fusion skipped: %s", err)
    return str(err)
