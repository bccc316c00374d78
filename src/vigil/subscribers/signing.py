"""Webhook signatures over timestamp and body (standard library only), as Stripe-style schemes do:

``X-Vigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``

The signature covers the attempt's timestamp and the exact request body bytes (the alert JSON as read from the
``alerts`` topic), so a captured delivery cannot be replayed with a fresh timestamp: a receiver verifies it
**before** parsing the body, against the raw bytes it received (not a re-serialised copy), with a
constant-time comparison, and refuses a timestamp further than ``tolerance_s`` (default 300 s) from its own
clock. ``X-Vigil-Timestamp`` repeats ``t`` for logging; only the signed ``t`` counts.

>>> body = b'{"alert_id":"a1","type":"model_risk"}'
>>> header = signature_header(b"s3cret", body, timestamp=1_700_000_000)
>>> header.startswith("t=1700000000,v1=") and len(header) == len("t=1700000000,v1=") + 64
True
>>> verify_signature(b"s3cret", body, header, now=1_700_000_060)
True
>>> verify_signature(b"s3cret", body + b" ", header, now=1_700_000_060)  # tampered body
False
>>> verify_signature(b"other", body, header, now=1_700_000_060)  # wrong secret
False
>>> verify_signature(b"s3cret", body, header, now=1_700_000_000 + 301)  # stale: a replayed capture
False
>>> verify_signature(b"s3cret", body, header.replace("t=1700000000", "t=1700000301"), now=1_700_000_301)
False

A receiver, in outline (any framework; the same in any language with HMAC-SHA256)::

    body = await request.read()                      # raw bytes, before any JSON parsing
    if not verify_signature(SECRET, body, request.headers.get("X-Vigil-Signature"), tolerance_s=300):
        return 401                                   # forged, tampered or stale (replayed)
    if already_stored(request.headers["Idempotency-Key"]):
        return 200                                   # a repeated delivery: acknowledge, do not store twice
    store(json.loads(body)); return 200              # 2xx only once the alert is safely stored

Several ``v1=`` values may appear (secret rotation: the sender signs with each active secret); one match is
enough. A receiver still de-duplicates on ``Idempotency-Key`` (the alert id): retries within the tolerance are
legitimate repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "SCHEME", "DEFAULT_TOLERANCE_S", "sign", "signature_header", "parse_header",
           "verify_signature"]  # fmt: skip

SIGNATURE_HEADER = "X-Vigil-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret`` (a str secret is UTF-8 encoded)."""
    return hmac.new(_key(secret), str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes | str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Vigil-Signature`` value: ``t=<timestamp>,v1=<hex>`` (timestamp: now when not given)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},{SCHEME}={sign(secret, body, t)}"


def parse_header(header: str | None) -> tuple[int | None, list[str]]:
    """(timestamp, the ``v1`` signatures) of a header value; (None, []) when malformed."""
    if not header:
        return None, []
    t: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t" and v.isdigit() and len(v) <= 12:
            t = int(v)
        elif k == SCHEME and v:
            sigs.append(v.strip().lower())
    return (t, sigs) if t is not None else (None, [])


def verify_signature(secret: bytes | str, body: bytes, header: str | None, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> bool:  # fmt: skip
    """True when ``header`` carries a timestamp within ``tolerance_s`` of ``now`` (default: the clock) and a
    ``v1`` signature of that timestamp and ``body`` under ``secret`` (constant-time comparison)."""
    t, sigs = parse_header(header)
    if t is None or not sigs:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    want = sign(secret, body, t)
    ok = False
    for given in sigs:
        ok |= hmac.compare_digest(given, want)
    return ok
