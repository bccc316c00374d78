"""Numeric values as feeds send them: HL7 v2 NM and SN (structured numeric), FHIR Quantity with a comparator.

**The rule for censored values** (``<0.5``, ``>10``, ``<=``, ``>=``: a result beyond the analyser's reporting
limit, HL7 SN ``>^10``, FHIR ``valueQuantity.comparator``): the value is published **at the limit**, like any
measurement, and counted as censored by the caller. The limit is the value nearest to normal that the report
allows (the true value lies beyond it), so the risk model sees a value at least as abnormal as the limit and
never a more abnormal one than the report supports: an alert is never raised by the substitution, and an
out-of-range lactate ``>20`` still counts as very high instead of being dropped (dropping it would hide the
most abnormal results of all). The wire format carries no comparator, so the substitution is documented here
and in docs/codes.md.

Refused (``bad_type``, dead-lettered): an SN ratio or range (``^1^:^2``, ``^2^-^5``: two numbers, no one value),
the comparator ``<>``, and anything that is not a finite decimal number.

>>> hl7_value("SN", ["", "182"]), hl7_value("SN", [">", "10"]), hl7_value("NM", ["<0.5"])
((182.0, ''), (10.0, '>'), (0.5, '<'))
>>> hl7_value("SN", ["", "1", ":", "2"])
Traceback (most recent call last):
...
vigil.errors.InvalidEvent: SN value ^1^:^2 is a ratio or range (two numbers), not one measurement
"""

from __future__ import annotations

import math
import re

from vigil.errors import InvalidEvent

__all__ = ["hl7_value", "checked_number", "CENSORING"]

CENSORING = frozenset({"<", ">", "<=", ">="})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NM_CENSORED = re.compile(r"(<=|>=|<|>)\s*(\S+)")


def checked_number(text: str, what: str = "OBX-5") -> float:
    """A finite decimal number (HL7 NM / FHIR decimal), else :class:`InvalidEvent` (``missing_field`` when
    empty, ``bad_type`` otherwise)."""
    text = text.strip()
    if not text:
        raise InvalidEvent("missing_field", f"{what} (value) is empty", what)
    if not _NUMBER.fullmatch(text):
        raise InvalidEvent("bad_type", f"{what} value {text[:40]!r} is not a number", what)
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEvent("bad_type", f"{what} value {text[:40]!r} is not a finite number", what)
    return value


def hl7_value(vtype: str, components: list[str]) -> tuple[float, str]:
    """``(value, comparator)`` of an OBX-5 of type NM or SN (``comparator`` is '' or one of
    :data:`CENSORING`). SN is ``<comparator>^<num1>^<separator/suffix>^<num2>``."""
    comps = [c.strip() for c in components] + ["", "", "", ""]
    if vtype == "SN":
        comparator, number, separator, second = comps[0], comps[1], comps[2], comps[3]
        if separator or second:
            shown = "^".join(c for c in (comparator, number, separator, second))
            msg = f"SN value {shown} is a ratio or range (two numbers), not one measurement"
            raise InvalidEvent("bad_type", msg, "OBX-5")
        if comparator in ("", "="):
            return checked_number(number), ""
        if comparator not in CENSORING:
            msg = f"SN comparator {comparator[:10]!r} is not one of =, <, >, <=, >= (<> is not a measurement)"
            raise InvalidEvent("bad_type", msg, "OBX-5")
        return checked_number(number), comparator
    text = comps[0]
    m = _NM_CENSORED.fullmatch(text)
    if m:
        return checked_number(m[2]), m[1]
    return checked_number(text), ""
