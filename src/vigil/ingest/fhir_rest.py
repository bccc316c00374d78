"""FHIR REST conformance pieces of ``vigil ingest fhir``: the CapabilityStatement, content negotiation
(``Content-Type`` / ``Accept`` / ``_format``), the created-resource representation, and the allow-listed
projection a dead letter may keep of a refused resource.

Content negotiation (FHIR R4 http.html#mime-type): requests are JSON only — ``application/fhir+json`` or
``application/json`` (with any parameters such as ``charset`` or ``fhirVersion``); XML or anything else is
``415 Unsupported Media Type``. The response format is ``_format`` when given, else ``Accept``: JSON
(``application/fhir+json`` unless the client asked for ``application/json``); a client that accepts only XML
gets ``406 Not Acceptable``.

>>> request_media_ok("application/fhir+json; charset=utf-8"), request_media_ok("application/fhir+xml")
(True, False)
>>> response_type(None, "application/json"), response_type("xml", None), response_type(None, "*/*")
('application/json', None, 'application/fhir+json')
>>> dead_letter_projection({"resourceType": "Patient", "name": [{"family": "Doe"}], "birthDate": "1970-01-01"})
{'resourceType': 'Patient'}
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from vigil import __version__

__all__ = ["capability_statement", "request_media_ok", "response_type", "created_resource",
           "dead_letter_projection", "FHIR_JSON", "JSON_TYPES"]  # fmt: skip

FHIR_JSON = "application/fhir+json"
JSON_TYPES = (FHIR_JSON, "application/json", "text/json")
_FORMAT_JSON = {"json", "application/json", "application/fhir+json", "text/json"}
_FORMAT_XML = {"xml", "text/xml", "application/xml", "application/fhir+xml", "ttl", "text/turtle",
               "application/fhir+turtle", "html", "text/html"}  # fmt: skip
_VALUE_X = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange",
            "valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod")  # fmt: skip
_LOINC = re.compile(r"^\d{1,7}-\d$")
_MDC = re.compile(r"^(MDC_[A-Z0-9_]{1,60}|\d{1,6}|[0-9a-fA-F]{1,4}-[0-9a-fA-F]{1,4})$")


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def request_media_ok(content_type: str | None) -> bool:
    """True when a request body of this ``Content-Type`` can be read (JSON; an absent header counts as JSON)."""
    if not content_type or _media(content_type) in ("", "application/octet-stream"):
        return True
    return _media(content_type) in JSON_TYPES


def response_type(fmt: str | None, accept: str | None) -> str | None:
    """The response media type for ``_format`` / ``Accept``, or None when only unsupported types are acceptable."""
    if fmt:
        f = fmt.strip().lower()
        if f in _FORMAT_JSON:
            return "application/json" if f in ("application/json", "text/json") else FHIR_JSON
        return None
    if not accept:
        return FHIR_JSON
    ranges = [_media(part) for part in accept.split(",") if part.strip()]
    for r in ranges:
        if r in (FHIR_JSON, "*/*", "application/*", "application/fhir+*"):
            return FHIR_JSON
        if r in ("application/json", "text/json"):
            return "application/json"
    return None


def capability_statement(base_url: str, *, auth: bool, tls: bool) -> dict[str, Any]:
    """The server's CapabilityStatement (FHIR R4 4.0.1): create of Observation, batch and transaction at the
    base, JSON only."""
    security: dict[str, Any] = {"cors": False}
    notes = []
    if auth:
        security["service"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                            "code": "OAuth", "display": "OAuth"}],
                                "text": "Bearer tokens (RFC 6750)"}]  # fmt: skip
        notes.append("every interaction but this CapabilityStatement needs Authorization: Bearer <token>")
    if tls:
        notes.append("HTTPS only")
    if notes:
        security["description"] = "; ".join(notes)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "vigil",
        "kind": "instance",
        "software": {"name": "vigil", "version": __version__},
        "implementation": {"description": "vigil FHIR ingest: Observations onto the vitals and labs topics",
                           "url": base_url},  # fmt: skip
        "fhirVersion": "4.0.1",
        "format": ["json", FHIR_JSON],
        "rest": [{
            "mode": "server",
            "documentation": "Observations (vital signs, laboratory) are validated, pseudonymised and published; "
                             "they are not stored, so read and search are not offered.",
            "security": security,
            "resource": [{
                "type": "Observation",
                "profile": "http://hl7.org/fhir/StructureDefinition/Observation",
                "interaction": [{"code": "create"}],
                "versioning": "no-version",
                "conditionalCreate": False,
            }],
            "interaction": [{"code": "batch"}, {"code": "transaction"}],
        }],
    }  # fmt: skip


def created_resource(d: dict[str, Any], res_id: str, at: datetime) -> dict[str, Any]:
    """The created Observation as returned by a create (``Prefer: return=representation``): the resource as
    received with the server-assigned id and ``meta.versionId`` / ``meta.lastUpdated``."""
    meta = dict(d.get("meta") or {}) if isinstance(d.get("meta"), dict) else {}
    meta.update(versionId="1", lastUpdated=at.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return {**d, "id": res_id, "meta": meta}


def _coding(c: Any) -> dict[str, Any] | None:
    """A coding kept only when its system is a known terminology and its code has that terminology's form."""
    from vigil.codes import SYSTEM_ALIASES

    if not isinstance(c, dict):
        return None
    system, code = c.get("system"), c.get("code")
    if not isinstance(system, str) or system not in SYSTEM_ALIASES or not isinstance(code, str):
        return {"code": "(not kept)"}
    pattern = _LOINC if SYSTEM_ALIASES[system] == "LOINC" else _MDC
    return {"system": system, "code": code if pattern.match(code) else "(not kept)"}


def _unit(q: Any) -> dict[str, Any] | None:
    """The unit of a Quantity, kept only when vigil's unit table knows it."""
    from vigil.codes import normaliser

    if not isinstance(q, dict):
        return None
    known = {u for _, u in normaliser().units}
    out = {}
    for k in ("code", "unit"):
        v = q.get(k)
        if isinstance(v, str):
            out[k] = v if v in known else "(not kept)"
    return out or None


def _measurement(x: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    code = x.get("code")
    if isinstance(code, dict) and isinstance(code.get("coding"), list):
        out["code"] = [c for c in (_coding(c) for c in code["coding"][:8]) if c]
    vt = [k for k in _VALUE_X if k in x]
    if vt:
        out["value_type"] = vt[0]
        unit = _unit(x.get("valueQuantity"))
        if unit:
            out["unit"] = unit
    return out


def dead_letter_projection(d: Any, expression: str | None = None) -> dict[str, Any]:
    """What a dead letter may keep of a refused FHIR resource — an allow-list, never a deny-list: the resource
    type (when it is a FHIR type), for an Observation its status, code, unit and value type (also per component),
    and the FHIRPath of the error. Never names, identifiers, telecom, birth dates, addresses, narrative, notes,
    references or contained resources."""
    from fhir.resources.R4B import get_fhir_model_class

    if not isinstance(d, dict):
        return {"json_type": type(d).__name__, **({"error_at": expression} if expression else {})}
    rt = d.get("resourceType")
    try:
        known = isinstance(rt, str) and get_fhir_model_class(rt) is not None
    except (KeyError, ValueError, AttributeError, ImportError):
        known = False
    out: dict[str, Any] = {"resourceType": rt if known else "(unknown)"}
    if rt == "Observation":
        status = d.get("status")
        if status in ("registered", "preliminary", "final", "amended", "corrected", "cancelled",
                      "entered-in-error", "unknown"):  # fmt: skip
            out["status"] = status
        out.update(_measurement(d))
        comps = d.get("component")
        if isinstance(comps, list):
            out["component"] = [_measurement(c) for c in comps[:32] if isinstance(c, dict)]
    if expression:
        out["error_at"] = expression
    return out
