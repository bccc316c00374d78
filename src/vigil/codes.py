"""Code, unit and plausibility tables (``vigil/data/*.csv``): the mapping is data, not code.

* ``codes.csv`` — ``system,code,variable,kind,display``: (system, code) -> canonical variable
  (:data:`vigil.variables.VARIABLES`) and kind (``vital`` | ``lab``). LOINC and ISO/IEEE 11073 MDC codes,
  including vendor variants (cuff pressures 150301-150303, axillary temperature 188496, pulse-oximeter pulse
  rate 149530). An MDC row's reference id (its ``display``, e.g. ``MDC_PULS_OXIM_SAT_O2``) is accepted as a
  code too. The replay sends each variable under its *first* LOINC row, so keep that one first. No comment
  lines in this file (other tools read it with a plain CSV reader).
* ``units.csv`` — ``variable,unit,factor,offset``: canonical = factor * value + offset. Units match exactly
  and case-sensitively (UCUM) after stripping surrounding whitespace; documented aliases and MDC unit codes
  are listed rows. Every variable has an identity row for its canonical unit.
* ``ranges.csv`` — ``variable,min,max``: physiologic plausibility in canonical units, inclusive.

Coding systems are normalised through :data:`SYSTEM_ALIASES` (``LOINC`` = ``http://loinc.org`` = ``LN``;
``MDC`` = ``urn:iso:std:iso:11073:10101``). The tables are read once, on first use of :func:`normaliser`;
after that a lookup is a few dict hits.

>>> n = normaliser()
>>> n.normalise("LOINC", "8310-5", "[degF]", 98.6)
(2, 37.0, 'vital')
>>> n.normalise("http://loinc.org", "2345-7", "mmol/L", 5.0)[1]
90.08
>>> n.normalise("MDC", "150456", "262688", 97.0)
(1, 97.0, 'vital')
>>> n.normalise("LOINC", "8867-4", "/min", 400.0)
Traceback (most recent call last):
...
vigil.errors.InvalidEvent: HR 400 outside the plausible range [0, 350] /min (code LOINC 8867-4, sent 400 /min)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from vigil.errors import ConfigError, InvalidEvent
from vigil.variables import CANONICAL_UNITS, VAR_INDEX, VARIABLES, VITALS

__all__ = ["Normaliser", "normaliser", "read_table", "SYSTEM_ALIASES", "KINDS"]

# The one alias table for coding systems: what a feed may send -> the name codes.csv uses.
SYSTEM_ALIASES: dict[str, str] = {
    "LOINC": "LOINC", "http://loinc.org": "LOINC", "LN": "LOINC",
    "MDC": "MDC", "urn:iso:std:iso:11073:10101": "MDC",
}  # fmt: skip
KINDS = ("vital", "lab")


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of ``vigil/data/<name>`` as dicts; ``#`` comment lines and blank lines are skipped.

    >>> read_table("ranges.csv")[0]
    {'variable': 'HR', 'min': '0', 'max': '350'}
    """
    text = resources.files("vigil.data").joinpath(name).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(lines)]


@dataclass(frozen=True, slots=True)
class Normaliser:
    """(system, code, unit, value) -> (variable index, canonical value, kind), or :class:`InvalidEvent`.

    Build it with :meth:`from_rows` (validates the tables) or use the cached :func:`normaliser`.
    """

    codes: dict[tuple[str, str], tuple[int, str]]  # (system as sent, code) -> (var index, kind)
    units: dict[tuple[int, str], tuple[float, float]]  # (var index, unit) -> (factor, offset)
    ranges: tuple[tuple[float, float], ...]  # (min, max) per var index, inclusive

    def normalise(self, system: str, code: str, unit: str, value: float) -> tuple[int, float, str]:
        """Map a coded measurement onto its canonical variable and unit; raises :class:`InvalidEvent`
        with reason ``unknown_code``, ``unknown_unit`` or ``implausible_value``."""
        hit = self.codes.get((system, code))
        if hit is None:
            hit = self.codes.get((system.strip(), code.strip()))
            if hit is None:
                msg = f"unknown code {code!r} in system {system!r} (not in codes.csv)"
                raise InvalidEvent("unknown_code", msg, "code")
        var, kind = hit
        conv = self.units.get((var, unit))
        if conv is None:
            conv = self.units.get((var, unit.strip()))
            if conv is None:
                msg = (f"unknown unit {unit!r} for {VARIABLES[var]} (code {system} {code}); "
                       f"canonical unit is {CANONICAL_UNITS[VARIABLES[var]]!r}")  # fmt: skip
                raise InvalidEvent("unknown_unit", msg, "unit")
        factor, offset = conv
        canonical = value if factor == 1.0 and offset == 0.0 else round(value * factor + offset, 6)
        lo, hi = self.ranges[var]
        if not lo <= canonical <= hi:
            name = VARIABLES[var]
            msg = (
                f"{name} {canonical:g} outside the plausible range [{lo:g}, {hi:g}] {CANONICAL_UNITS[name]} "
                f"(code {system} {code}, sent {value:g} {unit})"
            )
            raise InvalidEvent("implausible_value", msg, "value")
        return var, canonical, kind

    def codes_for(self, var: int, system: str = "LOINC") -> list[str]:
        """The codes of one system that map to variable ``var``, in table order.

        >>> normaliser().codes_for(VAR_INDEX["Lactate"])
        ['2524-7', '32693-4']
        """
        return [
            c
            for (s, c), (v, _) in self.codes.items()
            if v == var and s == system and not c.startswith("MDC_")
        ]

    @classmethod
    def from_rows(
        cls,
        codes: Iterable[dict[str, str]],
        units: Iterable[dict[str, str]],
        ranges: Iterable[dict[str, str]],
    ) -> Normaliser:
        """Build and validate: known variables, consistent kinds, an identity unit row and a range for
        every variable, no conflicting duplicates. Raises :class:`ConfigError` naming the bad row."""
        code_map: dict[tuple[str, str], tuple[int, str]] = {}
        for row in codes:
            var = _var(row, "codes.csv")
            kind = row["kind"]
            if kind != ("vital" if VARIABLES[var] in VITALS else "lab"):
                msg = f"codes.csv: {row['system']} {row['code']} maps {VARIABLES[var]} with kind {kind!r}"
                raise ConfigError(msg)
            system = SYSTEM_ALIASES.get(row["system"])
            if system is None:
                msg = f"codes.csv: unknown coding system {row['system']!r} (add it to SYSTEM_ALIASES)"
                raise ConfigError(msg)
            keys = [row["code"]]
            if system == "MDC" and row.get("display", "").startswith("MDC_"):
                keys.append(row["display"])  # the MDC reference id, e.g. MDC_PULS_OXIM_SAT_O2
            for code in keys:
                for alias, target in SYSTEM_ALIASES.items():
                    if target == system:
                        _put(code_map, (alias, code), (var, kind), "codes.csv")
        unit_map: dict[tuple[int, str], tuple[float, float]] = {}
        for row in units:
            var = _var(row, "units.csv")
            _put(unit_map, (var, row["unit"]), (float(row["factor"]), float(row["offset"])), "units.csv")
        bounds: dict[int, tuple[float, float]] = {}
        for row in ranges:
            var = _var(row, "ranges.csv")
            lo, hi = float(row["min"]), float(row["max"])
            if not lo <= hi:
                msg = f"ranges.csv: {row['variable']} has min {lo:g} > max {hi:g}"
                raise ConfigError(msg)
            _put(bounds, var, (lo, hi), "ranges.csv")
        for i, name in enumerate(VARIABLES):
            if unit_map.get((i, CANONICAL_UNITS[name])) != (1.0, 0.0):
                msg = f"units.csv: {name} needs the identity row {name},{CANONICAL_UNITS[name]},1,0"
                raise ConfigError(msg)
            if i not in bounds:
                msg = f"ranges.csv: no range for {name}"
                raise ConfigError(msg)
        return cls(code_map, unit_map, tuple(bounds[i] for i in range(len(VARIABLES))))


def _var(row: dict[str, str], table: str) -> int:
    try:
        return VAR_INDEX[row["variable"]]
    except KeyError as exc:
        msg = f"{table}: unknown variable {row.get('variable')!r} in row {row}"
        raise ConfigError(msg) from exc


def _put(d: dict, key: object, value: object, table: str) -> None:  # type: ignore[type-arg]
    old = d.setdefault(key, value)
    if old != value:
        msg = f"{table}: conflicting rows for {key}: {old} and {value}"
        raise ConfigError(msg)


@cache
def normaliser() -> Normaliser:
    """The packaged tables, loaded and validated once, on first use."""
    return Normaliser.from_rows(read_table("codes.csv"), read_table("units.csv"), read_table("ranges.csv"))
