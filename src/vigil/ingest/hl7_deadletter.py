"""What a dead letter of a rejected HL7 v2 message may keep: an ALLOW-LIST projection, never the message.

A dead letter must let an integration engineer find the original message and see what was wrong with it, and
must never carry a patient identifier (issue 14 item 5). Removing the segments known to carry identifiers (a
deny-list) fails on what nobody listed: a name in an NTE, a phone number in an OBX-5 string, an MRN in OBR-3.
So the dead letter keeps only fields named here, each checked against a pattern, and nothing else:

* per message: the segment names in order (``MSH PID PV1 OBR OBX ...``), MSH-3/MSH-4 (sending application
  and facility), MSH-7 (message time), MSH-9 (type), MSH-10 (control id, to find the message in the sender's
  log), MSH-12 (version), EVN-1; PV1-2 (patient class) and PV1-3.1..3 (ward, room, bed: locations, not
  people);
* per OBX: OBX-1 (set id), OBX-2 (value type), OBX-3.1 / OBX-3.3 (code, coding system; OBX-3.2 only when
  it is an ``MDC_*`` reference id), OBX-5 only when the type is NM/SN and it reads as a number, OBX-6.1/6.2
  (unit), OBX-11 (status), OBX-14 (observation time);
* per OBR: OBR-4.1 / OBR-4.3 (the universal service code) and OBR-7.

Every kept value must match a narrow pattern (codes, numbers, times) or it is replaced by ``"<n chars>"``,
and a kept value that also occurs in a field that is not kept (an MRN used as MSH-10, a birth date sent as an
OBX-5 number) is replaced too. PID, PD1, NK1, PV2, NTE, GT1, IN1, ... contribute their segment name only.
The projection works on text, so unparseable input is projected too.

:func:`scrub` removes from an error message every value of the message that the projection did not keep
(the errors quote offending values, e.g. ``OBX-5 value 'DOE' is not a number``).

>>> p = orjson.loads(project(b"MSH|^~\\\\&|MON|ICU|||20260101||ORU^R01|C1|P|2.6\\rPID|||MRN-1||DOE^JOHN\\r"
...                         b"OBX|1|NM|8867-4^HR^LN||88|/min|||||F"))
>>> p["segments"], p["msh"]["control_id"], p["obx"][0]["value"]
(['MSH', 'PID', 'OBX'], 'C1', '88')
>>> "MRN-1" in str(p) or "DOE" in str(p)
False
>>> scrub("OBX 1: value 'DOE' is not a number", b"MSH|^~\\\\&|A\\rPID|||X||DOE^J")
"OBX 1: value '<redacted>' is not a number"
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import orjson

__all__ = ["project", "project_segment", "scrub", "FORMAT", "silence_hl7_library_logs"]

FORMAT = "hl7v2-allowlist/1"  # the "format" of the projection (a consumer can tell it from a raw message)
_CODE = re.compile(r"^[A-Za-z0-9_.\-:/%\[\]{}*+' ]{1,64}$")  # codes, units, ids, versions (no ^|~&\ )
_MDC = re.compile(r"^MDC_[A-Z0-9_]{1,60}$")
_TIME = re.compile(r"^[0-9]{4,14}(\.[0-9]{1,4})?([+-][0-9]{4})?$")
_NUMBER = re.compile(r"^(<=|>=|<|>|=)?\^?[+-]?[0-9]{1,12}(\.[0-9]{1,8})?$")
_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_MAX_SEGMENTS = 2000
_SUBSTRING = 6  # a sensitive value this long is found inside others too (a birth date in a time); shorter: whole
_MAX_OBX = 50
_TOKENS = re.compile(r"[^A-Za-z0-9]+")  # a dead letter keeps at most this many OBX projections (the count is kept)


def silence_hl7_library_logs() -> None:
    """python-hl7 logs the raw field value when it cannot unescape or decode one ("Error unescaping value
    [<value>]" — a name, an MRN, a birth date) under loggers named after its source files; those loggers are
    disabled so that no patient data reaches the listener's log (the message is answered and dead-lettered
    as usual)."""
    import hl7.containers
    import hl7.util

    for mod in (hl7.util, hl7.containers):
        logging.getLogger(mod.__file__).disabled = True


def _keep(value: str, pattern: re.Pattern[str]) -> str | None:
    if not value:
        return None
    return value if pattern.match(value) else f"<{len(value)} chars>"


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00")


class _Seg:
    """One segment split by the message's separators (field n = HL7 field n; MSH counted as HL7 does)."""

    def __init__(self, text: str, fs: str, cs: str) -> None:
        self.name = text[:3]
        parts = text.split(fs)
        self.fields = [self.name, fs, *parts[1:]] if self.name == "MSH" else parts
        self.cs = cs

    def get(self, n: int, comp: int = 1) -> str:
        if n >= len(self.fields):
            return ""
        value = self.fields[n].split("~", 1)[0]
        if self.name == "MSH" and n <= 2:
            return value
        comps = value.split(self.cs)
        return comps[comp - 1].strip() if comp <= len(comps) else ""


def _separators(text: str) -> tuple[str, str]:
    if text.startswith("MSH") and len(text) >= 5:
        fs = text[3]
        cs = text[4] if len(text) > 4 and text[4] != fs else "^"
        return fs, cs
    return "|", "^"


def _segments(raw: bytes) -> list[_Seg]:
    text = _decode(raw)
    fs, cs = _separators(text)
    return [_Seg(s, fs, cs) for s in text.split("\r")[:_MAX_SEGMENTS] if s]


def _obx(seg: _Seg) -> dict[str, Any]:
    vtype = seg.get(2)
    value = None
    if vtype in ("NM", "SN"):
        v = seg.get(5) if vtype == "NM" else seg.fields[5] if len(seg.fields) > 5 else ""
        value = v if v and _NUMBER.match(v) else (f"<{len(v)} chars>" if v else None)
    name = seg.get(3, 2)
    d = {
        "set_id": _keep(seg.get(1), _CODE), "value_type": _keep(vtype, _CODE), "code": _keep(seg.get(3, 1), _CODE),
        "code_name": name if _MDC.match(name) else None, "system": _keep(seg.get(3, 3), _CODE), "value": value,
        "unit": _keep(seg.get(6, 1), _CODE), "unit_alt": _keep(seg.get(6, 2), _CODE),
        "status": _keep(seg.get(11), _CODE), "time": _keep(seg.get(14), _TIME),
    }  # fmt: skip
    return {k: v for k, v in d.items() if v is not None}


def project_segment(segment: str, raw: bytes) -> bytes:
    """The projection of one OBX segment (text) of message ``raw`` as JSON bytes (what a per-OBX dead letter
    keeps); a value that also occurs in a field of ``raw`` that is not kept is dropped."""
    segs = _segments(segment.encode("utf-8"))
    obx = [_obx(s) for s in segs if s.name == "OBX"]
    out = {"format": FORMAT, "segments": [s.name for s in segs], "obx": obx}
    return orjson.dumps(_drop_sensitive(out, _sensitive(_segments(raw))))


# the fields whose values a projection may keep, per segment (everything else is "sensitive")
_KEPT_FIELDS = {"MSH": {1, 2, 3, 4, 7, 9, 10, 12}, "EVN": {1}, "PV1": {2, 3}, "OBR": {4, 7},
                "OBX": {1, 2, 3, 5, 6, 11, 14}}  # fmt: skip


def _values(seg: _Seg, fields: set[int] | None, keep: bool) -> set[str]:
    """Every value (whole field, repetition, component, sub-component; >= 3 characters) of the fields of
    ``seg`` that are in ``fields`` (``keep``) or not in them (not ``keep``)."""
    out: set[str] = set()
    for n, fld in enumerate(seg.fields):
        if n == 0 or (fields is not None and (n in fields) != keep):
            continue
        for rep in fld.split("~"):
            for comp in rep.split(seg.cs):
                out.update(x.strip() for x in (rep, comp, *comp.split("&")))
    return {v for v in out if len(v) >= 3}


def _sensitive(segs: list[_Seg]) -> set[str]:
    found: set[str] = set()
    for s in segs:
        found |= _values(s, _KEPT_FIELDS.get(s.name, set()), keep=False)
    return found


def _drop_sensitive(v: Any, sensitive: set[str]) -> Any:
    if isinstance(v, dict):
        return {k: _drop_sensitive(x, sensitive) for k, x in v.items()}
    if isinstance(v, list):
        return [_drop_sensitive(x, sensitive) for x in v]
    if isinstance(v, str) and (any(len(x) >= _SUBSTRING and x in v for x in sensitive)
                               or not sensitive.isdisjoint(_TOKENS.split(v))):  # fmt: skip
        return f"<{len(v)} chars>"
    return v


def project(raw: bytes) -> bytes:
    """The allow-list projection of a (possibly unparseable) HL7 v2 message, as JSON bytes."""
    segs = _segments(raw)
    return orjson.dumps(_drop_sensitive(_project(raw, segs), _sensitive(segs)))


def _project(raw: bytes, segs: list[_Seg]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": FORMAT, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
        "segments": [s.name if _NAME.match(s.name) else "?" for s in segs],
    }  # fmt: skip
    if not segs or segs[0].name != "MSH":
        return out
    msh = segs[0]
    kept = {
        "sending_application": _keep(msh.get(3), _CODE), "sending_facility": _keep(msh.get(4), _CODE),
        "time": _keep(msh.get(7), _TIME),
        "type": "^".join(x for x in (_keep(msh.get(9, 1), _CODE), _keep(msh.get(9, 2), _CODE)) if x) or None,
        "control_id": _keep(msh.get(10), _CODE), "version": _keep(msh.get(12), _CODE),
    }  # fmt: skip
    out["msh"] = {k: v for k, v in kept.items() if v is not None}
    for s in segs:
        if s.name == "EVN" and s.get(1):
            out["evn_type"] = _keep(s.get(1), _CODE)
        elif s.name == "PV1" and "pv1" not in out:
            loc = {"class": _keep(s.get(2), _CODE), "ward": _keep(s.get(3, 1), _CODE),
                   "room": _keep(s.get(3, 2), _CODE), "bed": _keep(s.get(3, 3), _CODE)}  # fmt: skip
            out["pv1"] = {k: v for k, v in loc.items() if v is not None}
        elif s.name == "OBR" and "obr" not in out:
            obr = {"service": _keep(s.get(4, 1), _CODE), "system": _keep(s.get(4, 3), _CODE),
                   "time": _keep(s.get(7), _TIME)}  # fmt: skip
            out["obr"] = {k: v for k, v in obr.items() if v is not None}
    obx = [s for s in segs if s.name == "OBX"]
    out["obx_count"] = len(obx)
    out["obx"] = [_obx(s) for s in obx[:_MAX_OBX]]
    return out


def _kept_strings(projection: bytes) -> set[str]:
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            found.add(v)
            found.update(v.split("^"))

    walk(orjson.loads(projection))
    return found


def scrub(detail: str, raw: bytes) -> str:
    """``detail`` without any value of ``raw`` (every field, component and sub-component of every segment)
    that the projection does not keep; values shorter than 3 characters are left (``M``, ``1``, ``NM``)."""
    kept = _kept_strings(project(raw))
    values: set[str] = set()
    for seg in _segments(raw):
        values |= {v for v in _values(seg, None, keep=True) if v not in kept}
    for v in sorted(values, key=len, reverse=True):
        if v in detail:
            if len(v) >= _SUBSTRING:
                detail = detail.replace(v, "<redacted>")
            else:
                detail = re.sub(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])", "<redacted>", detail)
    return detail


silence_hl7_library_logs()
