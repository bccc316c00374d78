"""HL7 ACKs (original acknowledgement mode): MSA-1 ``AA`` / ``AE`` / ``AR``, one ERR segment per problem.

Built with python-hl7 (``Message.create_ack``) when the incoming MSH parsed; from a minimal MSH otherwise (an
unparseable message still gets an answer). ERR follows v2.5: ERR-2 location, ERR-3 code from HL7 table 0357,
ERR-4 severity, ERR-8 the user message. MSA-3 carries a one-line summary for receivers that only read MSA.

>>> ack = build_ack(None, "AR", "CTRL-1", [("", "102", "not an HL7 v2 message")], app="VIGIL", facility="ICU")
>>> [seg.split("|")[0] for seg in ack.decode().split("\\r") if seg]
['MSH', 'MSA', 'ERR']
>>> ack.decode().split("\\r")[1]
'MSA|AR|CTRL-1|not an HL7 v2 message'
"""

from __future__ import annotations

from datetime import UTC, datetime

import hl7

__all__ = ["build_ack", "ack_code", "ack_errors", "ERROR_TEXT", "reason_code"]

# HL7 table 0357 (message error condition codes) used here.
ERROR_TEXT = {
    "100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
    "103": "Table value not found", "104": "Value too long", "200": "Unsupported message type",
    "207": "Application internal error",
}  # fmt: skip
_REASON_CODES = {"missing_field": "101", "unknown_code": "103", "unknown_unit": "103"}
_DELIMS = str.maketrans({c: " " for c in "|^~\\&\r\n\x0b\x1c"})
_LOCATION = str.maketrans({c: " " for c in "|~\\&\r\n\x0b\x1c"})  # keeps ^ (ERL components)


def reason_code(reason: str) -> str:
    """The table-0357 code of a vigil rejection reason (``missing_field`` 101, unknown code/unit 103, else 102)."""
    return _REASON_CODES.get(reason, "102")


def _clean(text: str, limit: int = 250) -> str:
    """Text safe inside one HL7 field: delimiters become spaces (no escape sequences to trip receivers)."""
    return text.translate(_DELIMS).strip()[:limit]


def build_ack(
    message: hl7.Message | None, code: str, control_id: str, errors: list[tuple[str, str, str]], *, app: str,
    facility: str, summary: str | None = None,
) -> bytes:  # fmt: skip
    """The ACK (unframed bytes) for a message. ``errors``: (ERR-2 location, table-0357 code, user message)."""
    summary = _clean(summary if summary is not None else (errors[0][2] if errors else ""), 80)
    head = None
    if message is not None:
        try:
            head = str(message.create_ack(code, application=_clean(app, 40), facility=_clean(facility, 40)))
        except Exception:  # noqa: BLE001 - a damaged MSH falls back to the minimal header below
            head = None
    if head is None:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        head = (f"MSH|^~\\&|{_clean(app, 40)}|{_clean(facility, 40)}|||{now}||ACK|{_ack_id()}|P|2.5\r"
                f"MSA|{code}|{_clean(control_id, 199)}\r")  # fmt: skip
    segs = [s for s in head.split("\r") if s]
    segs = [f"{s.rstrip('|')}|{summary}" if s.startswith("MSA") and summary else s for s in segs]
    for location, err, text in errors:
        where, what = location.translate(_LOCATION)[:40], f"{err}^{ERROR_TEXT.get(err, 'Error')}^HL70357"
        segs.append(f"ERR||{where}|{what}|E||||{_clean(text)}")
    return ("\r".join(segs) + "\r").encode("utf-8")


def _ack_id() -> str:
    return hl7.generate_message_control_id()


def ack_code(ack: hl7.Message) -> str:
    """MSA-1 of a parsed ACK (``AA`` / ``AE`` / ``AR``): what a sender reads first."""
    return str(ack.extract_field("MSA", 1, 1, 1, 1))


def ack_errors(ack: hl7.Message) -> list[str]:
    """The ACK's ERR segments as text ([] when there is none)."""
    try:
        return [str(s) for s in ack.segments("ERR")]
    except KeyError:
        return []
