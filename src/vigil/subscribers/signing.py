"""Webhook signatures: ``X-Vigil-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` (standard library only).

The signature covers the exact request body bytes (the alert JSON as read from the ``alerts`` topic). A
receiver verifies it **before** parsing the body, against the raw bytes it received (not a re-serialised
copy), with a constant-time comparison:

>>> body = b'{"alert_id":"a1","type":"model_risk"}'
>>> header = signature_header(b"s3cret", body)
>>> header.startswith("sha256=") and len(header) == 7 + 64
True
>>> verify_signature(b"s3cret", body, header)
True
>>> verify_signature(b"s3cret", body + b" ", header)  # tampered body
False
>>> verify_signature(b"other", body, header)  # wrong secret
False

A receiver, in outline (any framework; the same in any language with HMAC-SHA256)::

    body = await request.read()                      # raw bytes, before any JSON parsing
    if not verify_signature(SECRET, body, request.headers.get("X-Vigil-Signature")):
        return 401
    if already_stored(request.headers["Idempotency-Key"]):
        return 200                                   # a repeated delivery: acknowledge, do not store twice
    store(json.loads(body)); return 200              # 2xx only once the alert is safely stored

``X-Vigil-Timestamp`` (Unix seconds of the attempt) is not covered by the signature; a receiver de-duplicates
on ``Idempotency-Key`` (the alert id), which is what makes a replayed delivery harmless.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "SIGNATURE_PREFIX", "sign", "signature_header", "verify_signature"]

SIGNATURE_HEADER = "X-Vigil-Signature"
SIGNATURE_PREFIX = "sha256="


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: bytes | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` under ``secret`` (a str secret is UTF-8 encoded)."""
    return hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes | str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value: ``sha256=<hex>``."""
    return SIGNATURE_PREFIX + sign(secret, body)


def verify_signature(secret: bytes | str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=<hex>`` of ``body`` under ``secret`` (constant-time comparison)."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    given = header[len(SIGNATURE_PREFIX) :].strip().lower()
    return hmac.compare_digest(given, sign(secret, body))
