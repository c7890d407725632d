"""Import path of the ragrec Serve application for ``serve run`` / ``serve deploy`` (thin wrapper).

    serve run serve.app:app run_dir=runs/rallrec_ml100k          # local, from the repository root
    RAGREC_RUN_DIR=runs/rallrec_ml100k serve run serve.app:app
    serve deploy serve/config.yaml                                # onto a running cluster

Arguments (``args`` in config.yaml, ``key=value`` for ``serve run``): ``run_dir`` (default:
``$RAGREC_RUN_DIR``), ``batching`` (true), and any field of :class:`ragrec.serving.app.ServeOptions`.
"""

from __future__ import annotations

import os
from typing import Any

from ragrec.serving import build_app
from ragrec.serving.app import ServeOptions

_FIELDS = {name: f.annotation for name, f in ServeOptions.model_fields.items()}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse(name: str, value: Any) -> Any:
    """A ``key=value`` string as the option's type; ValueError naming the option when it does not parse."""
    if not isinstance(value, str):
        return value
    kind = str(_FIELDS[name])
    text = value.strip()
    if "None" in kind and text.lower() in ("", "none", "null"):
        return None
    try:
        if "bool" in kind:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(value)
            return text.lower() in _TRUE
        if "int" in kind:
            return int(text)
        if "float" in kind:
            return float(text)
    except ValueError:
        want = "true or false" if "bool" in kind else "an integer" if "int" in kind else "a number"
        raise ValueError(f"serve argument {name}={value!r} is not {want}") from None
    return value


def app(args: dict[str, Any]):
    """Application builder: ``args`` -> the bound app of :func:`ragrec.serving.build_app`."""
    args = dict(args or {})
    run_dir = args.pop("run_dir", None) or os.environ.get("RAGREC_RUN_DIR")
    if not run_dir:
        raise ValueError(
            "no run to serve: pass run_dir=RUN_DIR (serve run) / args.run_dir (config.yaml) "
            "or set RAGREC_RUN_DIR to the folder of a finished `ragrec run`"
        )
    unknown = sorted(set(args) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown serve argument(s) {unknown}; known: run_dir, {', '.join(_FIELDS)}")
    return build_app(run_dir, **{k: _parse(k, v) for k, v in args.items()})
