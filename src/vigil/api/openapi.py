"""The OpenAPI 3.0 document of ``vigil api`` (served at ``/openapi.json``; tests validate it and fuzz the live
server against it with schemathesis, so it must describe every status and body the server sends).

>>> doc = document()
>>> sorted(doc["paths"])
['/alerts', '/alerts/{alert_id}/ack', '/healthz', '/openapi.json', '/patients/{pseudonym}', '/wards/{ward}']
"""

from __future__ import annotations

from typing import Any

from vigil.records import ACK_ACTIONS

__all__ = ["document", "ID_PATTERN", "WARD_PATTERN", "BY_PATTERN"]

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # pseudonyms and alert ids
WARD_PATTERN = r"^[A-Za-z0-9 ._:-]{1,128}$"
BY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # a role or pseudonymised staff id: no spaces, so no full names

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_UNAUTHORIZED = _json(_ref("Error"), "missing or wrong bearer token (nothing was done)",
                      {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True,
                                            "description": 'Bearer realm="vigil"'}})  # fmt: skip
_NULL_STR = {"type": "string", "nullable": True}


def _schemas() -> dict[str, Any]:
    news2 = {
        "type": "object", "required": ["total", "parts", "missing", "time"],
        "properties": {
            "total": {"type": "integer", "minimum": 0, "maximum": 20, "description": "NEWS2 aggregate (RCP 2017)"},
            "parts": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "score 0-3 of each parameter"},
            "missing": {"type": "array", "items": {"type": "string"}, "description": "parameters not measured"},
            "time": {"type": "string", "description": "event time of the scored row"},
        },
    }  # fmt: skip
    score = {
        "type": "object", "required": ["model", "risk", "threshold", "above_threshold", "time", "row"],
        "properties": {
            "model": {"type": "object", "required": ["name", "version"],
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
            "risk": {"type": "number", "description": "the model's latest risk"},
            "threshold": {"type": "number", "nullable": True, "description": "the score record's threshold"},
            "above_threshold": {"type": "boolean"},
            "time": {"type": "string", "description": "event time of the scored row (ISO 8601)"},
            "row": {"type": "integer", "nullable": True, "description": "hours since ICU admission"},
        },
    }  # fmt: skip
    ack = {
        "type": "object", "required": ["action", "by", "at"],
        "properties": {"action": {"type": "string"}, "by": {"type": "string"}, "at": {"type": "string"}},
    }  # fmt: skip
    alert = {
        "type": "object",
        "required": ["alert_id", "latest_alert_id", "patient", "type", "event", "severity", "ward", "bed",
                     "raised_at", "time", "score", "threshold", "news2_total", "message", "acknowledgements"],
        "properties": {
            "alert_id": {"type": "string", "description": "the raising alert's id (the episode); acknowledge it"},
            "latest_alert_id": {"type": "string", "description": "the latest raised or escalated alert of it"},
            "patient": {"type": "string", "description": "pseudonymised patient id"},
            "type": {"type": "string", "nullable": True}, "event": {"type": "string", "enum": ["raised", "escalated"]},
            "severity": {"type": "string", "nullable": True}, "ward": _NULL_STR, "bed": _NULL_STR,
            "raised_at": _NULL_STR, "time": _NULL_STR,
            "score": {"type": "number", "nullable": True}, "threshold": {"type": "number", "nullable": True},
            "news2_total": {"type": "integer", "nullable": True},
            "message": {"type": "string"},
            "acknowledgements": {"type": "array", "items": _ref("Acknowledgement")},
        },
    }  # fmt: skip
    patient = {
        "type": "object", "required": ["patient", "ward", "bed", "unit", "present", "scores", "news2", "open_alerts"],
        "properties": {
            "patient": {"type": "string", "description": "pseudonymised patient id (the only identifier served)"},
            "ward": _NULL_STR, "bed": _NULL_STR, "unit": _NULL_STR,
            "present": {"type": "boolean", "description": "false once discharged"},
            "scores": {"type": "array", "items": _ref("Score"), "description": "latest score of each model"},
            "news2": {"allOf": [_ref("News2")], "nullable": True},
            "open_alerts": {"type": "array", "items": _ref("Alert")},
        },
    }  # fmt: skip
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "News2": news2, "Score": score, "Acknowledgement": ack, "Alert": alert, "Patient": patient,
        "Ward": {"type": "object", "required": ["ward", "count", "patients"],
                 "properties": {"ward": {"type": "string"}, "count": {"type": "integer", "minimum": 0},
                                "patients": {"type": "array", "items": _ref("Patient")}}},
        "AlertList": {"type": "object", "required": ["count", "alerts"],
                      "properties": {"count": {"type": "integer", "minimum": 0},
                                     "alerts": {"type": "array", "items": _ref("Alert")}}},
        "AckRequest": {
            "type": "object", "required": ["by", "action"], "additionalProperties": False,
            "properties": {
                "by": {"type": "string", "pattern": BY_PATTERN,
                       "description": "role or pseudonymised staff id (never a name)"},
                "action": {"type": "string", "enum": list(ACK_ACTIONS)},
            },
        },
        "AckResult": {
            "type": "object",
            "required": ["ack_id", "alert_id", "patient", "action", "by", "at", "audit_id"],
            "properties": {
                "ack_id": {"type": "string", "description": "deterministic: the same alert and action, the same id"},
                "alert_id": {"type": "string", "description": "the acknowledged episode (its raising alert's id)"},
                "patient": {"type": "string"},
                "action": {"type": "string", "enum": list(ACK_ACTIONS)}, "by": {"type": "string"},
                "at": {"type": "string", "description": "when it was first recorded (ISO 8601)"},
                "audit_id": {"type": "string", "description": "the audit entry of this acknowledgement"},
            },
        },
        "Health": {"type": "object", "required": ["status", "caught_up", "patients"],
                   "properties": {"status": {"type": "string", "enum": ["ok"]}, "caught_up": {"type": "boolean"},
                                  "patients": {"type": "integer", "minimum": 0}}},
    }  # fmt: skip


def _param(name: str, where: str, pattern: str, description: str, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": {"type": "string", "pattern": pattern}}  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    bad = _err("a parameter or the body is not valid")
    missing = _err("not known to the API (never seen, or no longer in its bounded memory)")
    guarded = {"401": _UNAUTHORIZED}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vigil clinicians' API", "version": "1",
            "description": "Current risk, NEWS2 and open alerts per pseudonymised patient and per ward, and alert "
                           "acknowledgements (published to alert-acks, recorded on the audit topic). See docs/api.md.",
        },  # fmt: skip
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": _schemas()},
        "paths": {
            "/patients/{pseudonym}": {"get": {
                "operationId": "getPatient", "summary": "A patient's latest risk per model, NEWS2 and open alerts",
                "parameters": [_param("pseudonym", "path", ID_PATTERN, "pseudonymised patient id")],
                "responses": {"200": _json(_ref("Patient"), "the patient"), "400": bad, **guarded, "404": missing},
            }},
            "/wards/{ward}": {"get": {
                "operationId": "getWard", "summary": "The patients on a ward with their latest risk, NEWS2 and alerts",
                "parameters": [_param("ward", "path", WARD_PATTERN, "ward name as in ADT")],
                "responses": {"200": _json(_ref("Ward"), "the ward (no patients: an empty list)"), "400": bad,
                              **guarded},
            }},
            "/alerts": {"get": {
                "operationId": "listAlerts", "summary": "Open alerts (raised or escalated, not resolved)",
                "parameters": [_param("ward", "query", WARD_PATTERN, "only this ward", required=False)],
                "responses": {"200": _json(_ref("AlertList"), "open alerts, oldest first"), "400": bad, **guarded},
            }},
            "/alerts/{alert_id}/ack": {"post": {
                "operationId": "ackAlert",
                "summary": "Acknowledge an alert: one alert-acks record and one audit entry per alert and action",
                "parameters": [_param("alert_id", "path", ID_PATTERN,
                                      "an alert's id; an escalation's id acknowledges its episode (raising alert)")],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("AckRequest")}}},
                "responses": {
                    "200": _json(_ref("AckResult"), "recorded (a repeat returns the first result, publishes nothing)"),
                    "400": bad, **guarded, "404": _err("no such alert"),
                    "413": _err("body too large"), "415": _err("the body is not application/json"),
                    "503": _err("the broker did not acknowledge in time; retry (idempotent)"),
                },
            }},
            "/healthz": {"get": {
                "operationId": "health", "summary": "Liveness and catch-up state (no token needed)", "security": [],
                "responses": {"200": _json(_ref("Health"), "serving")},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document (no token needed)", "security": [],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }},
        },
    }  # fmt: skip
