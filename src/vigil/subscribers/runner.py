"""Run a subscriber's coroutine until SIGINT (Ctrl-C) or SIGTERM, then let it finish cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["run_until_signalled"]

T = TypeVar("T")


async def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Await ``main(stop)``; SIGINT and SIGTERM set ``stop`` (the coroutine is expected to return soon after)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await main(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
