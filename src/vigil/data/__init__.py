"""The packaged reference tables (CSV) and :func:`read_table`, their one reader. Both :mod:`vigil.codes` and
:mod:`vigil.units` read them, so the reader lives here, below both."""

from __future__ import annotations

import csv
from importlib import resources

__all__ = ["read_table"]


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of ``vigil/data/<name>`` as dicts; ``#`` comment lines and blank lines are skipped.

    >>> read_table("ranges.csv")[0]
    {'variable': 'HR', 'min': '0', 'max': '350'}
    """
    text = resources.files("vigil.data").joinpath(name).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(lines)]
