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

* ``mdc_units.csv`` — ``code,refid,ucum``: ISO/IEEE 11073-10101 units (``MDC_DIM_*``) -> UCUM.
* ``analytes.csv`` — molar masses and charge numbers for substance <-> mass conversions (:mod:`vigil.units`).

Coding systems are normalised through :data:`SYSTEM_ALIASES` (``LOINC`` = ``http://loinc.org`` = ``LN`` = its
OID; ``MDC`` = ``urn:iso:std:iso:11073:10101`` = ``MDIL`` = its OID). An MDC code is accepted in numeric
(context-free) form, as its reference id, and in the hex ``partition-code`` form of Philips IntelliVue MDIL
(``0002-4bb8`` = 2 * 65536 + 0x4bb8 = 150456); MDC units likewise (``0004-0aa0`` = 264864 =
``MDC_DIM_BEAT_PER_MIN``). A unit that no table row lists is converted by UCUM (:mod:`vigil.units`) when it is
commensurable with the canonical unit.

A site extends the code table with its own file (``ingest.code_map``, :func:`site_normaliser`): local codes
are validated at start-up and published under the variable's standard code (:meth:`Normaliser.resolve`), so
the worker, which knows only the packaged tables, accepts every event the edge published. See docs/codes.md.

The tables are read once, on first use of :func:`normaliser`; after that a lookup is a few dict hits.

>>> n = normaliser()
>>> n.normalise("LOINC", "8310-5", "[degF]", 98.6)
(2, 37.0, 'vital')
>>> n.normalise("http://loinc.org", "2345-7", "mmol/L", 5.0)[1]
90.08
>>> n.normalise("MDC", "150456", "262688", 97.0)
(1, 97.0, 'vital')
>>> n.normalise("MDIL", "0002-4bb8", "0004-0220", 97.0)
(1, 97.0, 'vital')
>>> n.normalise("LOINC", "26464-8", "{cells}/uL", 7200.0)
(31, 7.2, 'lab')
>>> n.normalise("LOINC", "8867-4", "/min", 400.0)
Traceback (most recent call last):
...
vigil.errors.InvalidEvent: HR 400 outside the plausible range [0, 350] /min (code LOINC 8867-4, sent 400 /min)
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

from vigil import units as ucum
from vigil.data import read_table
from vigil.errors import ConfigError, InvalidEvent
from vigil.variables import CANONICAL_UNITS, VAR_INDEX, VARIABLES, VITALS

__all__ = [
    "Normaliser", "Coded", "normaliser", "site_normaliser", "read_table", "mdc_code", "SYSTEM_ALIASES", "KINDS",
]  # fmt: skip

# The one alias table for coding systems: what a feed may send -> the name codes.csv uses.
SYSTEM_ALIASES: dict[str, str] = {
    "LOINC": "LOINC", "http://loinc.org": "LOINC", "LN": "LOINC", "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "MDC": "MDC", "urn:iso:std:iso:11073:10101": "MDC", "MDIL": "MDC", "urn:oid:2.16.840.1.113883.6.24": "MDC",
}  # fmt: skip
KINDS = ("vital", "lab")
_HEX_MDC = re.compile(r"([0-9A-Fa-f]{4})-([0-9A-Fa-f]{4})")


def mdc_code(code: str) -> str:
    """An MDC code in context-free numeric form: the hex ``partition-code`` form (Philips IntelliVue MDIL)
    becomes ``partition * 65536 + code``; anything else is returned unchanged.

    >>> mdc_code("0002-4bb8"), mdc_code("0004-0AA0"), mdc_code("150456")
    ('150456', '264864', '150456')
    """
    m = _HEX_MDC.fullmatch(code)
    return str(int(m[1], 16) * 65536 + int(m[2], 16)) if m else code


class Coded(NamedTuple):
    """What a (system, code) means: the variable, its kind, the code to publish (a packaged standard code
    the worker knows) and the unit to assume when a message sends none (site code map only, else '')."""

    var: int
    kind: str
    system: str
    code: str
    default_unit: str = ""


@dataclass(frozen=True, slots=True)
class Normaliser:
    """(system, code, unit, value) -> (variable index, canonical value, kind), or :class:`InvalidEvent`.

    Build it with :meth:`from_rows` (validates the tables) or use the cached :func:`normaliser`.
    """

    codes: dict[tuple[str, str], tuple[int, str]]  # (system as sent, code) -> (var index, kind)
    units: dict[tuple[int, str], tuple[float, float]]  # (var index, unit) -> (factor, offset)
    ranges: tuple[tuple[float, float], ...]  # (min, max) per var index, inclusive
    mdc_units: dict[str, str] = field(default_factory=dict)  # MDC unit code / refid -> UCUM
    site: dict[tuple[str, str], Coded] = field(default_factory=dict)  # site code map: (system, code) -> Coded
    refids: dict[str, str] = field(default_factory=dict)  # MDC reference id -> numeric code (codes.csv)

    def resolve(self, system: str, code: str, name: str = "") -> Coded | None:
        """What a coded observation is, or None when no table maps it. ``name`` is the text of the coding
        (HL7 OBX-3.2), where an MDC feed puts the reference id (``MDC_PULS_OXIM_SAT_O2``). The returned
        system/code is what to publish: a packaged code, in the canonical system name and numeric MDC form.

        >>> normaliser().resolve("MDIL", "0002-4bb8")
        Coded(var=1, kind='vital', system='MDC', code='150456', default_unit='')
        >>> normaliser().resolve("MDC", "", "MDC_PULS_OXIM_SAT_O2").code
        '150456'
        """
        system, code, name = system.strip(), code.strip(), name.strip()
        hit = self.site.get((system, code))
        if hit is not None:
            return hit
        canon = SYSTEM_ALIASES.get(system)
        if canon is None:
            return None
        if canon == "MDC":
            code = mdc_code(code)
        for c in (code, name) if name else (code,):
            got = self.codes.get((canon, c))
            if got is not None:
                if c.startswith("MDC_"):
                    c = self.refids.get(c, c)
                return Coded(got[0], got[1], canon, c)
            site = self.site.get((canon, c))
            if site is not None:
                return site
        return None

    def unit_conversion(self, var: int, unit: str) -> tuple[float, float] | None:
        """``(factor, offset)`` for ``unit`` of variable ``var``: a units.csv row, an MDC unit (numeric, hex or
        reference id, via mdc_units.csv), else a UCUM conversion (:func:`vigil.units.conversion`)."""
        conv = self.units.get((var, unit))
        if conv is not None:
            return conv
        unit = unit.strip()
        conv = self.units.get((var, unit))
        if conv is not None or not unit:
            return conv
        mapped = self.mdc_units.get(mdc_code(unit))
        if mapped is not None:
            unit = mapped
            conv = self.units.get((var, unit))
            if conv is not None:
                return conv
        return ucum.conversion(VARIABLES[var], unit)

    def wire_unit(self, var: int, unit: str, value: float) -> tuple[str, float]:
        """The (unit, value) an edge publishes: as sent when units.csv lists the unit, else converted here to
        the canonical unit (an MDC unit, a UCUM-derived one), so the worker never needs the UCUM parser.

        >>> normaliser().wire_unit(VAR_INDEX["WBC"], "{cells}/uL", 7200.0)
        ('10*3/uL', 7.2)
        >>> normaliser().wire_unit(VAR_INDEX["Glucose"], "mmol/L", 5.0)
        ('mmol/L', 5.0)
        """
        if (var, unit) in self.units or (var, unit.strip()) in self.units:
            return unit, value
        conv = self.unit_conversion(var, unit)
        if conv is None:
            return unit, value
        factor, offset = conv
        return CANONICAL_UNITS[VARIABLES[var]], round(value * factor + offset, 6)

    def normalise(self, system: str, code: str, unit: str, value: float) -> tuple[int, float, str]:
        """Map a coded measurement onto its canonical variable and unit; raises :class:`InvalidEvent`
        with reason ``unknown_code``, ``unknown_unit`` or ``implausible_value``."""
        hit = self.codes.get((system, code))
        if hit is None:
            coded = self.resolve(system, code)
            if coded is None:
                msg = f"unknown code {code!r} in system {system!r} (not in codes.csv)"
                raise InvalidEvent("unknown_code", msg, "code")
            hit = coded.var, coded.kind
        var, kind = hit
        conv = self.units.get((var, unit)) or self.unit_conversion(var, unit)
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
        ['2524-7', '32693-4', '2518-9', '2519-7']
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
        mdc_units: Iterable[dict[str, str]] = (),
    ) -> Normaliser:
        """Build and validate: known variables, consistent kinds, an identity unit row and a range for
        every variable, no conflicting duplicates. Raises :class:`ConfigError` naming the bad row."""
        code_map: dict[tuple[str, str], tuple[int, str]] = {}
        refids: dict[str, str] = {}
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
                _put(refids, row["display"], row["code"], "codes.csv")
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
        mdc: dict[str, str] = {}
        for row in mdc_units:
            if not row["code"].isdigit() or not row["refid"].startswith("MDC_DIM_"):
                msg = f"mdc_units.csv: bad row {row}"
                raise ConfigError(msg)
            _put(mdc, row["code"], row["ucum"], "mdc_units.csv")
            _put(mdc, row["refid"], row["ucum"], "mdc_units.csv")
        return cls(code_map, unit_map, tuple(bounds[i] for i in range(len(VARIABLES))), mdc, {}, refids)

    def with_site_map(self, path: Path) -> Normaliser:
        """This normaliser extended with a site's code-map file (CSV: ``system,code,variable,unit,display``;
        ``#`` comments). Each row is validated — a known variable, a unit (if given) that converts to the
        variable's canonical unit, no code listed twice (here or in codes.csv) — and an error is a
        :class:`ConfigError` naming the file and line. A local code is published as the variable's first
        packaged LOINC code; a row's unit is assumed when a message sends no unit for that code."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"ingest.code_map {str(path)!r} cannot be read: {exc}"
            raise ConfigError(msg) from exc
        header: list[str] | None = None
        site: dict[tuple[str, str], Coded] = {}
        where: dict[tuple[str, str], int] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in next(csv.reader([line]))]
            here = f"code map {path.name} line {lineno}"
            if header is None:
                header = cells
                missing = {"system", "code", "variable"} - set(header)
                if missing:
                    msg = f"{here}: the header needs system,code,variable[,unit,display]; missing {sorted(missing)}"
                    raise ConfigError(msg)
                continue
            if len(cells) > len(header):
                msg = f"{here}: {len(cells)} fields, the header has {len(header)}"
                raise ConfigError(msg)
            row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
            system, code, variable, unit = row["system"], row["code"], row["variable"], row.get("unit", "")
            if not system or not code:
                msg = f"{here}: system and code must not be empty"
                raise ConfigError(msg)
            if variable not in VAR_INDEX:
                msg = f"{here}: unknown variable {variable!r} (one of {', '.join(VARIABLES)})"
                raise ConfigError(msg)
            var = VAR_INDEX[variable]
            if unit and self.unit_conversion(var, unit) is None:
                msg = (f"{here}: unknown unit {unit!r} for {variable}: not in units.csv / mdc_units.csv and not "
                       f"a UCUM unit convertible to {CANONICAL_UNITS[variable]!r}")  # fmt: skip
                raise ConfigError(msg)
            canon = SYSTEM_ALIASES.get(system, system)
            key = (canon, mdc_code(code) if canon == "MDC" else code)
            if key in where:
                msg = f"{here}: duplicate code {system} {code} (already on line {where[key]})"
                raise ConfigError(msg)
            packaged = self.codes.get(key)
            if packaged is not None:
                msg = (f"{here}: duplicate code {system} {code}: codes.csv already maps it to "
                       f"{VARIABLES[packaged[0]]}")  # fmt: skip
                raise ConfigError(msg)
            standard = self.codes_for(var, "LOINC")
            kind = "vital" if variable in VITALS else "lab"
            coded = Coded(var, kind, "LOINC", standard[0], unit)
            where[key] = lineno
            site[key] = coded
            for alias, target in SYSTEM_ALIASES.items():
                if target == canon:
                    site[(alias, key[1])] = coded
        if header is None:
            msg = f"code map {path.name}: empty (a header line system,code,variable,unit,display is required)"
            raise ConfigError(msg)
        return Normaliser(self.codes, self.units, self.ranges, self.mdc_units, site, self.refids)


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
    return Normaliser.from_rows(read_table("codes.csv"), read_table("units.csv"), read_table("ranges.csv"),
                                read_table("mdc_units.csv"))  # fmt: skip


@cache
def site_normaliser(path: str | None) -> Normaliser:
    """The packaged tables extended with the site's code-map file (``ingest.code_map``), validated once;
    the packaged normaliser when ``path`` is empty. Raises :class:`ConfigError` naming the bad line."""
    if not path:
        return normaliser()
    return normaliser().with_site_map(Path(path))
