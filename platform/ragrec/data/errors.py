"""The one error type of the data layer.

A :class:`DataError` is raised for every problem with input data (missing file, wrong separator,
non-numeric field, unknown column, empty split ...). Its message always says *where* (file and,
when known, line), *what* (the field and the offending value) and *how to fix it*.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


class DataError(ValueError):
    """Bad or missing input data.

    Args:
        problem: what is wrong, e.g. ``"rating 'x' is not a number"``.
        file: the file (or dataset name) the problem is in.
        line: 1-based line number in ``file`` when known (for Parquet: the row number).
        field: the column / field concerned.
        fix: what the user should do about it.

    The message reads ``"<file> line <line>: <field>: <problem>. Fix: <fix>"``, leaving out the parts
    that are not known; the parts stay available as attributes for programs.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
        line_word: str = "line",
    ) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.fix = fix
        where = self.file or ""
        if line is not None:
            where = f"{where} {line_word} {line}".strip()
        msg = problem
        if field is not None and f"'{field}'" not in problem and not problem.startswith(field):
            msg = f"{field}: {msg}"
        if where:
            msg = f"{where}: {msg}"
        if fix:
            msg = f"{msg.rstrip('.')}. Fix: {fix}"
        super().__init__(msg)


def require_column(table: pa.Table, column: str, what: str, problem: str, fix: str) -> None:
    """Raise a :class:`DataError` ``problem`` (followed by the columns the table has) when the ``what`` table
    has no ``column``."""
    names = table.schema.names
    if column not in names:
        raise DataError(f"{problem} (columns: {', '.join(names)})", file=f"{what} table", field=column, fix=fix)
