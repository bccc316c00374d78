"""Edge security shared by the listeners: TLS contexts, FHIR bearer tokens, the partial-frame memory budget,
and the refusal to run with the public development pseudonym key (docs/ingest.md, "Security").

Bearer tokens are configured **hashed** (``ingest.fhir_token_sha256``: hex SHA-256 of each token, ``SecretStr``),
so a leaked configuration file does not leak a usable token:

>>> h = hash_token("s3cret-token")
>>> len(h), token_ok("Bearer s3cret-token", [h]), token_ok("Bearer other", [h]), token_ok(None, [h])
(64, True, False, False)
>>> b = BufferBudget(100)
>>> b.take(60), b.take(50), b.held
(True, False, 60)
>>> b.give(60); b.held
0
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from vigil.errors import ConfigError

if TYPE_CHECKING:
    from vigil.config import EdgeTlsSettings, Settings

__all__ = ["hash_token", "token_ok", "server_ssl_context", "require_production_key", "BufferBudget",
           "DEV_MODE_HINT"]  # fmt: skip

DEV_MODE_HINT = (
    "the pseudonym key is the public development key: set VIGIL_PSEUDONYM_KEY to a secret of your site "
    "(at least 32 random bytes), or VIGIL_DEV_MODE=1 for development only"
)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a bearer token: what ``ingest.fhir_token_sha256`` stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_ok(authorization: str | None, hashes: Iterable[SecretStr | str]) -> bool:
    """True when ``authorization`` is ``Bearer <token>`` and the token's SHA-256 is one of ``hashes``
    (constant-time comparisons, every hash compared)."""
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = hash_token(token.strip())
    ok = False
    for h in hashes:
        want = h.get_secret_value() if isinstance(h, SecretStr) else h
        ok |= hmac.compare_digest(given, want.strip().lower())
    return ok


def server_ssl_context(tls: EdgeTlsSettings) -> ssl.SSLContext | None:
    """A server TLS context from the settings (None when TLS is off). With ``client_cafile`` a client must
    present a certificate that chains to it (mutual TLS). Raises :class:`ConfigError` on unreadable files."""
    if tls.certfile is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile) if tls.keyfile else None)
        if tls.client_cafile is not None:
            ctx.load_verify_locations(cafile=str(tls.client_cafile))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        msg = f"ingest.tls: cannot load the certificate, key or client CA: {type(exc).__name__}: {exc}"
        raise ConfigError(msg) from exc
    return ctx


def require_production_key(settings: Settings) -> None:
    """Raise :class:`ConfigError` when the pseudonym key is the public development key and
    ``dev_mode`` is off (``vigil worker`` and ``vigil ingest`` call this before they start)."""
    from vigil.config import DEV_PSEUDONYM_KEY

    if settings.pseudonym_key.get_secret_value() == DEV_PSEUDONYM_KEY and not settings.dev_mode:
        raise ConfigError(DEV_MODE_HINT)


class BufferBudget:
    """Bytes of partial messages held over all connections of a listener, against a fixed budget: a
    connection whose next chunk would exceed it is cut off (the memory an attacker can make the listener
    hold is bounded by ``limit``, whatever the number of connections)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing reserved) when that would exceed the budget."""
        if self.held + n > self.limit:
            return False
        self.held += n
        self.peak = max(self.peak, self.held)
        return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes reserved earlier."""
        self.held = max(0, self.held - n)
