"""Alert subscribers: ``vigil alerts tail`` (a live terminal view) and ``vigil alerts webhook`` (a signed,
at-least-once HTTP forwarder with retries and a dead-letter topic).

Receivers verify signatures with :func:`vigil.subscribers.signing.verify_signature` (standard library only).
Names are imported lazily: importing this package loads neither aiohttp nor aiokafka.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vigil.subscribers.metrics import WebhookMetrics
    from vigil.subscribers.runner import run_until_signalled
    from vigil.subscribers.signing import signature_header, verify_signature
    from vigil.subscribers.tail import AlertFilter, format_alert, tail_alerts
    from vigil.subscribers.webhook import WebhookForwarder

__all__ = [
    "AlertFilter", "format_alert", "tail_alerts", "WebhookForwarder", "WebhookMetrics", "signature_header",
    "verify_signature", "run_until_signalled",
]  # fmt: skip

_WHERE = {
    "AlertFilter": "tail", "format_alert": "tail", "tail_alerts": "tail", "WebhookForwarder": "webhook",
    "WebhookMetrics": "metrics", "signature_header": "signing", "verify_signature": "signing",
    "run_until_signalled": "runner",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
