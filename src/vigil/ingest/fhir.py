"""FHIR R4 Observation -> validated vitals/labs events (parsed with fhir.resources, R4B models: R4-compatible).

Accepted: vital-signs profile and laboratory Observations with ``valueQuantity`` (LOINC or MDC code, or a
site-local code of ``ingest.code_map``; UCUM or MDC unit — the code and unit tables are ``vigil/data/*.csv``,
docs/codes.md; a ``comparator`` ``<``/``>``/``<=``/``>=`` value is published at its limit and counted, as
:mod:`vigil.ingest.values` explains), and panels with components (blood pressure 85354-9: one event
per mapped component; unmapped components are skipped). Status must be final, amended, corrected or
preliminary. The Observation is all-or-nothing: any mapped measurement that is invalid rejects it.

Patient: ``subject.identifier.value`` (the MRN), else the identifier of a contained Patient (``#id``), else the
``Patient/<id>`` reference; plus ``encounter`` (identifier value or reference) as the visit -> HMAC pseudonym.
Time: ``effectiveDateTime`` / ``effectiveInstant`` / ``effectivePeriod.start``.

The assigned id (``obs-`` + 16 hex digits) is deterministic: from the resource's ``identifier`` (system|value),
else its ``id``, else its canonical JSON. A re-POST yields the same id and the same event seqs (de-duplicated).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from vigil import records
from vigil.codes import Coded, Normaliser, normaliser
from vigil.errors import InvalidEvent
from vigil.ingest.events import SEQ_SLOTS, Event, aware, observation, patient_key, stable_seq
from vigil.ingest.values import CENSORING
from vigil.timewindow import REASON, check_time

if TYPE_CHECKING:
    from vigil.config import TimeWindowSettings

__all__ = ["ObservationResult", "map_observation", "ACCEPTED_STATUS"]

ACCEPTED_STATUS = ("final", "amended", "corrected", "preliminary")
_SOURCE_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(slots=True)
class ObservationResult:
    """One Observation: its assigned id, the events to publish, or why it was rejected (and where)."""

    id: str
    events: list[Event] = field(default_factory=list)
    invalid: records.Invalid | None = None
    expression: str | None = None  # FHIRPath of the offending element
    patient: str | None = None
    censored: int = 0  # measurements published at a comparator's limit (vigil.ingest.values)


def _assigned_id(d: dict[str, Any]) -> str:
    ident = d.get("identifier")
    if isinstance(ident, list) and ident and isinstance(ident[0], dict) and ident[0].get("value"):
        basis = f"identifier:{ident[0].get('system', '')}|{ident[0]['value']}"
    elif isinstance(d.get("id"), str) and d["id"]:
        basis = f"id:{d['id']}"
    else:
        try:
            basis = "json:" + orjson.dumps(d, option=orjson.OPT_SORT_KEYS).decode()
        except (TypeError, ValueError):  # not JSON-serialisable by orjson (e.g. an int over 64 bits)
            basis = "json:" + json.dumps(d, sort_keys=True, default=str)
    return "obs-" + hashlib.sha256(basis.encode()).hexdigest()[:16]


def _bad(res: ObservationResult, reason: str, detail: str, expression: str | None, error_type: str = "InvalidEvent"
         ) -> ObservationResult:  # fmt: skip
    res.invalid, res.expression, res.events = records.Invalid(reason, error_type, detail, expression), expression, []
    return res


def _identity(obs: Any) -> tuple[str | None, str | None]:
    """(patient identifier, visit) of an Observation, or (None, None)."""
    subj, mrn = obs.subject, None
    if subj is not None:
        if subj.identifier is not None and subj.identifier.value:
            mrn = subj.identifier.value
        elif subj.reference and subj.reference.startswith("#"):
            for c in obs.contained or []:
                if getattr(c, "id", None) == subj.reference[1:] and getattr(c, "identifier", None):
                    mrn = c.identifier[0].value
        elif subj.reference and subj.reference.startswith("Patient/"):
            mrn = subj.reference
    enc, visit = obs.encounter, None
    if enc is not None:
        visit = (enc.identifier.value if enc.identifier is not None else None) or enc.reference
    return mrn, visit


def _measure(codings: Any, codes: Normaliser | None = None) -> Coded | None:
    """What the first coding of ``codings`` that the code tables map means (None if none maps)."""
    table = codes if codes is not None else normaliser()
    for c in codings or []:
        if c.system and c.code:
            coded = table.resolve(c.system, c.code)
            if coded is not None:
                return coded
    return None


def map_observation(d: Any, *, secret: str, zone: tzinfo | None, source: str = "fhir/http",
                    codes: Normaliser | None = None, window: TimeWindowSettings | None = None,
                    now: float | None = None) -> ObservationResult:  # fmt: skip
    """Validate one Observation (a JSON dict) and map it onto events (never raises). With ``window``, an
    effective time outside it (:func:`vigil.timewindow.check_time`, wall clock ``now``) is refused with reason
    ``time_out_of_range``."""
    from fhir.resources.R4B.observation import Observation

    res = ObservationResult(_assigned_id(d) if isinstance(d, dict) else "obs-invalid")
    if not isinstance(d, dict) or d.get("resourceType") != "Observation":
        got = d.get("resourceType") if isinstance(d, dict) else type(d).__name__
        return _bad(res, "bad_type", f"expected an Observation resource, got {got!r}", "resourceType")
    try:
        obs = Observation.model_validate(d)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        reason = "missing_field" if "missing" in err.get("type", "") else "bad_type"
        return _bad(res, reason, f"Observation.{loc}: {err.get('msg', 'invalid')}"[:300], f"Observation.{loc}",
                    "FHIRValidationError")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the library's own errors (bad primitive types, ...)
        return _bad(res, "bad_type", f"invalid Observation: {str(exc)[:200]}", None, type(exc).__name__)
    if obs.status not in ACCEPTED_STATUS:
        return _bad(res, "bad_type", f"status {obs.status!r} is not one of {', '.join(ACCEPTED_STATUS)}",
                    "Observation.status")  # fmt: skip
    mrn, visit = _identity(obs)
    if not mrn:
        return _bad(res, "missing_field", "no patient: subject needs an identifier, a contained Patient with an "
                    "identifier, or a Patient/<id> reference", "Observation.subject")  # fmt: skip
    res.patient = patient_key(mrn, visit, secret)
    stamp = obs.effectiveDateTime or obs.effectiveInstant or (obs.effectivePeriod.start if obs.effectivePeriod
                                                               else None)  # fmt: skip
    if stamp is None:
        return _bad(res, "missing_field", "no effective time (effectiveDateTime, effectiveInstant or "
                    "effectivePeriod.start)", "Observation.effective")  # fmt: skip
    try:
        when = aware(stamp, zone, "Observation.effective")
    except InvalidEvent as exc:
        return _bad(res, exc.reason, str(exc), "Observation.effective")
    if window is not None:
        why = check_time(when.timestamp(), now=time.time() if now is None else now, window=window)
        if why is not None:
            return _bad(res, REASON, f"Observation.effective: {why}", "Observation.effective")
    items: list[tuple[str, Any, Any]] = []  # (FHIRPath, coding list, Quantity)
    if obs.valueQuantity is not None:
        items.append(("Observation.value", obs.code.coding, obs.valueQuantity))
    for i, comp in enumerate(obs.component or []):
        if comp.valueQuantity is not None and _measure(comp.code.coding, codes):
            items.append((f"Observation.component[{i}]", comp.code.coding, comp.valueQuantity))
    if len(items) >= SEQ_SLOTS:
        return _bad(res, "bad_type", f"{len(items)} measurements in one Observation", "Observation.component")
    if not items:
        return _bad(res, "missing_field", "no valueQuantity (nor a component with a supported code and a "
                    "valueQuantity)", "Observation.value")  # fmt: skip
    src = "fhir/" + (_SOURCE_SAFE.sub("_", (obs.meta.source if obs.meta and obs.meta.source else "http"))[:100])
    for pos, (path, codings, qty) in enumerate(items):
        coded = _measure(codings, codes)
        if coded is None:
            sent = ", ".join(f"{c.system}|{c.code}" for c in codings or []) or "no coding"
            return _bad(res, "unknown_code", f"{path}: code not supported ({sent}); see codes.csv", f"{path}.code")
        if qty.value is None:
            return _bad(res, "missing_field", f"{path}: valueQuantity.value is missing", f"{path}.value")
        if qty.comparator is not None and qty.comparator not in CENSORING:
            return _bad(res, "bad_type", f"{path}: comparator {qty.comparator!r} is not a measurement",
                        f"{path}.comparator")  # fmt: skip
        unit = qty.code or qty.unit or coded.default_unit
        ev = observation(res.patient, src, stable_seq(res.id, position=pos), when, coded.system, coded.code, unit,
                         float(qty.value))  # fmt: skip
        if isinstance(ev, records.Invalid) and ev.reason == "unknown_unit" and qty.unit and qty.unit != unit:
            ev = observation(res.patient, src, stable_seq(res.id, position=pos), when, coded.system, coded.code,
                             qty.unit, float(qty.value))  # fmt: skip
        if isinstance(ev, records.Invalid):
            return _bad(res, ev.reason, f"{path}: {ev.detail}", path)
        sent = orjson.loads(ev.value)["unit"]
        wire_unit, wire_value = (codes or normaliser()).wire_unit(coded.var, sent, float(qty.value))
        if wire_unit != sent:  # validated as sent, published in the canonical unit
            ev = observation(res.patient, src, stable_seq(res.id, position=pos), when, coded.system, coded.code,
                             wire_unit, wire_value)  # fmt: skip
            if isinstance(ev, records.Invalid):
                return _bad(res, ev.reason, f"{path}: {ev.detail}", path)
        res.events.append(ev)
        res.censored += qty.comparator is not None
    return res
