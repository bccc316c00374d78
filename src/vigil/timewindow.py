"""Plausible event times: one check shared by the edge listeners and the worker.

A bedside monitor with a wrong clock (a reset RTC, a year typed as 9999) must not be able to close a
patient's hourly rows or end their monitoring: an event outside the window is refused where it enters
(HL7 ``AE`` / FHIR ``422``) and dead-lettered by the worker, reason ``time_out_of_range``
(:data:`vigil.errors.REASONS`). See :class:`vigil.config.TimeWindowSettings` for the modes.

>>> from vigil.config import TimeWindowSettings
>>> w = TimeWindowSettings()
>>> check_time(1_000.0, now=1_000.0, window=w) is None
True
>>> check_time(253402300799.0, now=1_000.0, window=w)
'event time 9999-12-31T23:59:59+00:00 is 253402299799 s after the clock (at most 300 s allowed)'
>>> check_time(0.0, now=1e9, window=TimeWindowSettings(mode="replay")) is None
True
>>> check_time(0.0, now=1e9, window=TimeWindowSettings(mode="replay", replay_shift_s=1e8)) is not None
True
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vigil.config import TimeWindowSettings

__all__ = ["check_time", "bounds", "REASON"]

REASON = "time_out_of_range"


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return repr(t)


def bounds(now: float, window: TimeWindowSettings) -> tuple[float, float]:
    """(earliest, latest) plausible event time, POSIX seconds, for wall clock ``now``."""
    if window.mode == "replay":
        if window.replay_shift_s is None:
            return -math.inf, now + window.max_future_s
        ref = now - window.replay_shift_s
        return ref - window.max_past_s, ref + window.max_future_s
    return now - window.max_past_s, now + window.max_future_s


def check_time(t: float, *, now: float, window: TimeWindowSettings, admit_time: float | None = None) -> str | None:
    """``None`` when event time ``t`` is plausible, else a one-line reason (no patient data in it).

    ``admit_time`` (worker): the patient's admission, when known; an event earlier than it minus
    ``window.admit_margin_s`` is refused too."""
    if not math.isfinite(t):
        return f"event time {t!r} is not a finite number"
    lo, hi = bounds(now, window)
    if t > hi:
        return f"event time {_iso(t)} is {t - now:.0f} s after the clock (at most {window.max_future_s:.0f} s allowed)"
    if t < lo:
        return f"event time {_iso(t)} is before the earliest plausible time {_iso(lo)}"
    if admit_time is not None and t < admit_time - window.admit_margin_s:
        return (f"event time {_iso(t)} is more than {window.admit_margin_s:.0f} s before the patient's admission "
                f"{_iso(admit_time)}")
    return None
