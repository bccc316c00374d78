"""One alert to one webhook URL: signed POST, outcome classification, retries with backoff and jitter.

Retried: 5xx, 429 and 408 (``Retry-After`` honoured, capped at ``backoff_max_s``), timeouts and connection
errors. Not retried: any other 4xx, 1xx/3xx (redirects are not followed: a signed POST is never re-sent
elsewhere). After ``max_attempts`` attempts the caller dead-letters the alert.

>>> import random
>>> policy = RetryPolicy(max_attempts=5, base_s=1.0, cap_s=8.0, timeout_s=5.0)
>>> [policy.delay(n, None, random.Random(0)) <= min(8.0, 2.0 ** (n - 1)) for n in (1, 2, 3, 4, 5)]
[True, True, True, True, True]
>>> policy.delay(2, 120.0, random.Random(0))  # Retry-After: 120, capped
8.0
>>> classify(503), classify(429), classify(404), classify(204), classify(302)
('http_5xx', 'http_429', 'http_4xx', None, 'http_other')
>>> redact_url("https://user:pw@ehr.example.org:8443/hooks/vigil?token=abc#x")
'https://ehr.example.org:8443/hooks/vigil'
>>> destination_name("https://user:pw@EHR.example.org/hooks/vigil?token=abc").startswith("ehr.example.org-")
True
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from vigil.config import WebhookSettings
from vigil.errors import ConfigError
from vigil.subscribers.signing import SIGNATURE_HEADER, signature_header

__all__ = [
    "REASONS", "PERMANENT", "RetryPolicy", "Attempt", "Outcome", "Deliverer", "RecentIds", "classify",
    "parse_retry_after", "redact_url", "destination_name", "check_url", "delivery_headers", "post_once",
    "stop_aware_sleep",
]  # fmt: skip

# Stable failure reasons (metric labels and alerts-webhook-dead-letter "reason"). Append only.
REASONS: tuple[str, ...] = (
    "http_5xx",  # server error: retried
    "http_429",  # rate limited: retried, Retry-After honoured
    "http_408",  # request timeout reported by the server: retried
    "http_4xx",  # any other client error: permanent (not retried)
    "http_other",  # 1xx or 3xx: permanent (redirects are not followed)
    "timeout",  # no complete response within timeout_s: retried
    "connection_error",  # refused, reset, DNS, TLS: retried
    "invalid_alert",  # the record is not a JSON object with an alert_id: never sent
)
PERMANENT = frozenset({"http_4xx", "http_other", "invalid_alert"})
ERROR_CHARS = 300  # of a response body kept in last_error (dead-letter record only, never logged)
_NAME_RE = re.compile(r"[^a-z0-9.-]+")


def classify(status: int) -> str | None:
    """Failure reason of an HTTP status (None for 2xx)."""
    if 200 <= status < 300:
        return None
    if status >= 500:
        return "http_5xx"
    if status in (429, 408):
        return f"http_{status}"
    return "http_4xx" if status >= 400 else "http_other"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def check_url(url: str) -> URL:
    """The parsed URL; ConfigError unless it is an absolute http(s) URL with a host."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        msg = f"webhook URL must be an absolute http:// or https:// URL with a host, got {redact_url(url)!r}"
        raise ConfigError(msg)
    return parsed


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment (safe for logs and dead-letter records)."""
    parsed = URL(url)
    if not parsed.is_absolute():
        return parsed.path
    return str(parsed.with_user(None).with_password(None).with_query(None).with_fragment(None))


def destination_name(url: str) -> str:
    """A short stable name for a destination: its host and a hash of the redacted URL (no path, no secrets)."""
    host = _NAME_RE.sub("-", (URL(url).host or "unknown").lower()).strip("-")[:40] or "host"
    digest = hashlib.sha256(redact_url(url).encode()).hexdigest()[:8]
    return f"{host}-{digest}"


def delivery_headers(secret: bytes, body: bytes, alert_id: str, now: float | None = None) -> dict[str, str]:
    """Headers of one attempt: JSON content type, idempotency key, HMAC signature, timestamp, alert id."""
    t = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": alert_id,
        SIGNATURE_HEADER: signature_header(secret, body, t),  # signs t and the body together
        "X-Vigil-Timestamp": str(t),
        "X-Vigil-Alert-Id": alert_id,
    }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to try one alert."""

    max_attempts: int
    base_s: float
    cap_s: float
    timeout_s: float

    @classmethod
    def from_settings(cls, ws: WebhookSettings) -> RetryPolicy:
        return cls(ws.max_attempts, ws.backoff_base_s, ws.backoff_max_s, ws.timeout_s)

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Wait after failed attempt ``attempt`` (1-based): Retry-After if given, else exponential with jitter.

        Without Retry-After: uniform in ``[d/2, d]``, ``d = min(cap, base * 2**(attempt-1))`` ("equal jitter":
        concurrent forwarders spread out, yet the wait still grows).
        """
        if retry_after_s is not None:
            return min(self.cap_s, max(0.0, retry_after_s))
        d = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return d / 2 + rng.uniform(0.0, d / 2)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one POST."""

    status: int | None  # None: no response (timeout, connection error)
    reason: str | None  # one of REASONS; None when delivered
    error: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def retryable(self) -> bool:
        return self.reason is not None and self.reason not in PERMANENT


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of delivering one alert: delivered, given up (dead-letter it) or interrupted by a stop."""

    delivered: bool
    stopped: bool
    attempts: int
    last: Attempt
    first_attempt_at: datetime
    seconds: float


class RecentIds:
    """The last ``maxlen`` delivered alert ids (drops replays of an alert within one run)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, alert_id: str) -> None:
        if self.maxlen <= 0:
            return
        self._ids[alert_id] = None
        self._ids.move_to_end(alert_id)
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)


async def post_once(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                    timeout_s: float) -> Attempt:  # fmt: skip
    """One POST; never raises for HTTP or network failures (they become an :class:`Attempt`)."""
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:  # fmt: skip
            reason = classify(resp.status)
            if reason is None:
                return Attempt(resp.status, None)
            snippet = (await resp.content.read(ERROR_CHARS)).decode("utf-8", errors="replace")
            error = f"HTTP {resp.status} {resp.reason or ''}".rstrip() + (f": {snippet}" if snippet else "")
            return Attempt(resp.status, reason, error, parse_retry_after(resp.headers.get("Retry-After")))
    except TimeoutError:  # aiohttp's ServerTimeoutError / ConnectionTimeoutError are TimeoutErrors too
        return Attempt(None, "timeout", f"no response within {timeout_s:g}s")
    except (aiohttp.ClientError, OSError) as exc:
        return Attempt(None, "connection_error", f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])


class Deliverer:
    """Delivers alert bodies to one URL with the retry policy; reports every attempt to ``on_attempt``.

    ``sleep(seconds)`` waits between attempts and returns False when the forwarder is stopping (the alert is
    then left unconfirmed, to be delivered after a restart).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: bytes,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], Awaitable[bool]],
        on_attempt: Callable[[Attempt, float | None], None] = lambda attempt, delay: None,
        rng: random.Random | None = None,
    ) -> None:
        self.session, self.url, self.secret, self.policy = session, url, secret, policy
        self.sleep, self.on_attempt = sleep, on_attempt
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    async def deliver(self, body: bytes, alert_id: str) -> Outcome:
        """POST ``body`` until a 2xx, a permanent failure, ``max_attempts`` attempts or a stop."""
        started, first_at = time.monotonic(), datetime.now(UTC)
        n, last = 0, Attempt(None, "connection_error", "not attempted")
        while n < self.policy.max_attempts:
            n += 1
            headers = delivery_headers(self.secret, body, alert_id)
            last = await post_once(self.session, self.url, body, headers, self.policy.timeout_s)
            more = last.retryable and n < self.policy.max_attempts
            delay = self.policy.delay(n, last.retry_after_s, self.rng) if more else None
            self.on_attempt(last, delay)
            if last.ok or delay is None:
                break
            if not await self.sleep(delay):
                return Outcome(False, True, n, last, first_at, time.monotonic() - started)
        return Outcome(last.ok, False, n, last, first_at, time.monotonic() - started)


async def stop_aware_sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when the full sleep happened."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False
