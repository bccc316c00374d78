"""Bearer-token checks: tokens are configured only as SHA-256 hex digests (``vigil api hash-token``), compared in
constant time against every configured digest.

>>> digest = hash_token("s3cret")
>>> len(digest), TokenCheck([digest]).accepts("Bearer s3cret"), TokenCheck([digest]).accepts("Bearer nope")
(64, True, False)
>>> TokenCheck([digest]).accepts(None), TokenCheck([digest]).accepts("Basic s3cret")
(False, False)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from vigil.errors import ConfigError

__all__ = ["hash_token", "TokenCheck"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a token (what ``api.tokens_sha256`` holds)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenCheck:
    """Accepts ``Authorization: Bearer <token>`` when sha256(token) is one of the configured digests."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = [d.strip().lower() for d in digests]
        bad = [i for i, d in enumerate(self._digests) if not _HEX64.fullmatch(d)]
        if bad:
            msg = (f"api.tokens_sha256 entries {bad} are not SHA-256 hex digests (64 hex characters); "
                   "make one with: vigil api hash-token")  # fmt: skip
            raise ConfigError(msg)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer ") or len(header) > 4096:
            return False
        presented = hash_token(header[7:].strip()).encode()
        ok = False
        for d in self._digests:  # every digest is compared: no early exit
            ok |= hmac.compare_digest(presented, d.encode())
        return ok
