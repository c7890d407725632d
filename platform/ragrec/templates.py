"""Prompt templates with named ``{field}`` placeholders, checked when a config loads and filled safely.

A template is text with placeholders ``{name}``; only those are filled (never ``str.format``: a
``{title.__class__}`` is never evaluated, and braces inside the filled values stay text). Checking happens
twice: :func:`check_template` when the config loads (``ragrec.config`` validators: a typo such as
``{titel}`` fails at load with the allowed placeholders), :func:`fill_template` when prompts are built.

Rules: a placeholder is ``{`` + a Python identifier + ``}``; a brace pair holding an identifier followed by
attribute, index, conversion or format syntax (``{title.upper}``, ``{title[0]}``, ``{title!r}``,
``{title:>10}``) is an error; any other brace text (``{"a": 1}``, ``{ }``) is literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TemplateError", "check_template", "fill_template", "placeholders"]

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FORMAT_SYNTAX = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)([.\[!:][^{}]*)\}")


class TemplateError(ValueError):
    """A template names an unknown placeholder, lacks a required one, or uses format syntax."""


def _shown(names: Iterable[str]) -> str:
    return ", ".join("{" + n + "}" for n in names)


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template`` in order of appearance (repeats kept)."""
    return _FIELD.findall(template)


def check_template(template: str, allowed: Iterable[str], required: Iterable[str] = (), where: str = "template") -> str:
    """``template`` when its placeholders are all in ``allowed`` and include every ``required`` one.

    Raises:
        TemplateError: one line naming ``where``, the offending placeholder(s) and the allowed ones.
    """
    allowed = list(allowed)
    fix = f"the placeholders are {_shown(allowed)}"
    syntax = _FORMAT_SYNTAX.search(template)
    if syntax:
        raise TemplateError(
            f"{where}: placeholder {syntax.group(0)!r} uses attribute, index or format syntax, which is not "
            f"filled; write a plain {{{syntax.group(1)}}} ({fix})"
        )
    names = placeholders(template)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise TemplateError(f"{where}: unknown placeholder(s) {_shown(unknown)}; {fix}")
    missing = [r for r in required if r not in names]
    if missing:
        raise TemplateError(f"{where}: the template must contain {_shown(missing)}; {fix}")
    return template


def fill_template(
    template: str, values: Mapping[str, pa.Array], where: str = "template", required: Iterable[str] | None = None
) -> pa.Array:
    """``template`` with each ``{field}`` replaced row by row by ``values[field]`` (``(n,)`` arrays cast to string).

    Only the named fields are substituted (no ``str.format``). A placeholder that ``values`` lacks, format
    syntax, or a ``required`` field (default: every field of ``values``) missing from the template is a
    :class:`TemplateError` naming ``where`` and the fields there are.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    need = list(values) if required is None else list(required)
    try:
        check_template(template, sorted(values), need, where)
    except TemplateError as e:  # keep the wording of the prompt modules' earlier check
        names = placeholders(template)
        unknown = sorted(set(names) - set(values))
        missing = sorted(set(need) - set(names))
        if _FORMAT_SYNTAX.search(template) or not (unknown or missing):
            raise
        raise TemplateError(
            f"{where}: "
            + (f"unknown field(s) {['{' + f + '}' for f in unknown]}; " if unknown else "")
            + (
                f"missing field(s) {['{' + f + '}' for f in missing]} (the template must contain them); "
                if missing
                else ""
            )
            + f"the fields are {['{' + f + '}' for f in sorted(values)]}"
        ) from e
    n = len(next(iter(values.values()))) if values else 1
    pieces: list = []
    for k, chunk in enumerate(_FIELD.split(template)):
        # re.split with one group alternates: text, field name, text, ...
        pieces.append(values[chunk].cast(pa.string()) if k % 2 else pa.scalar(chunk))
    if not any(isinstance(p, pa.Array) for p in pieces):  # no field: the text, once per row
        return pa.array([template] * n, pa.string())
    return pc.binary_join_element_wise(*pieces, "")
