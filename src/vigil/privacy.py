"""Pseudonymisation at the edge: patient identifiers become keyed hashes before they reach Kafka.

Whoever holds the HMAC key (``VIGIL_PSEUDONYM_KEY``) can re-identify a patient by hashing a candidate
identifier and comparing; nobody else can. Raw identifiers never enter topics, state, logs or metrics.

>>> pseudonymise("MRN-000123", "k") == pseudonymise("MRN-000123", "k")
True
>>> pseudonymise("MRN-000123", "k") != pseudonymise("MRN-000123", "other-key")
True
>>> pseudonymise("MRN-000123", "k")[:3]
'pt-'
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["pseudonymise"]


def pseudonymise(identifier: str, key: str | bytes, *, length: int = 24) -> str:
    """``pt-`` + the first ``length`` hex digits of HMAC-SHA256(key, identifier)."""
    k = key.encode() if isinstance(key, str) else key
    digest = hmac.new(k, identifier.encode(), hashlib.sha256).hexdigest()
    return "pt-" + digest[:length]
