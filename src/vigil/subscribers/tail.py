"""``vigil alerts tail``: a live, filtered, one-line-per-alert view of the ``alerts`` topic for a terminal.

It reads with its own consumer (no consumer group, nothing committed): from now on by default, from the oldest
retained alert with ``from_beginning``. Unknown alert fields are ignored; records that are not JSON objects are
skipped with a warning naming their partition and offset (never their content).

>>> alert = {"time": "2026-01-01T05:00:00+00:00", "severity": "high", "type": "model_risk", "ward": "ICU-MED",
...          "bed": "4", "patient": "3f2a9c1e7b00d4aa", "score": 0.4321, "threshold": 0.3, "news2": {"total": 9},
...          "message": "Sepsis risk 0.432 (alert level 0.300); NEWS2 9"}
>>> print(format_alert(alert))
2026-01-01 05:00:00+00:00  HIGH       model_risk        ICU-MED/4     pt 3f2a9c1e  score 0.432 >= level 0.300  \
NEWS2 9  Sepsis risk 0.432 (alert level 0.300); NEWS2 9
>>> AlertFilter.of(wards=["icu-med"], severities=["HIGH"]).matches(alert)
True
>>> AlertFilter.of(wards=["W2"]).matches(alert)
False
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from vigil import kafka_io
from vigil.config import Settings
from vigil.kafka_io import assign_all

__all__ = ["AlertFilter", "format_alert", "format_time", "short_patient", "parse_alert", "tail_alerts", "tail_topic"]

log = logging.getLogger(__name__)

PATIENT_CHARS = 8  # a pseudonym prefix is enough to tell a ward's patients apart on screen


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts to show: each non-empty set must contain the alert's value (case-insensitive)."""

    wards: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def of(cls, wards: Iterable[str] = (), severities: Iterable[str] = (), types: Iterable[str] = ()) -> AlertFilter:
        """A filter from CLI values (case-folded)."""

        def fold(values: Iterable[str]) -> frozenset[str]:
            return frozenset(v.casefold() for v in values)

        return cls(fold(wards), fold(severities), fold(types))

    def matches(self, alert: Mapping[str, Any]) -> bool:
        """True when the alert passes every filter that is set."""
        for allowed, field in ((self.wards, "ward"), (self.severities, "severity"), (self.types, "type")):
            value = alert.get(field)
            if allowed and (not isinstance(value, str) or value.casefold() not in allowed):
                return False
        return True


def short_patient(pseudonym: object) -> str:
    """The first characters of a patient pseudonym (the terminal view never shows it whole)."""
    return str(pseudonym)[:PATIENT_CHARS] if pseudonym else "-"


def format_time(value: object) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS+00:00`` (the value itself when it is not one)."""
    try:
        return datetime.fromisoformat(str(value)).isoformat(sep=" ", timespec="seconds")
    except ValueError:
        return str(value or "-")


def _score(alert: Mapping[str, Any]) -> str:
    score, threshold = alert.get("score"), alert.get("threshold")
    if not isinstance(score, int | float) or not isinstance(threshold, int | float):
        return "score -"
    op = ">=" if score >= threshold else "<"
    return f"score {score:.3f} {op} level {threshold:.3f}"  # the record's alert level in force (vigil.levels)


def format_alert(alert: Mapping[str, Any]) -> str:
    """One terminal line: time, severity, type, ward/bed, short patient, score vs threshold, NEWS2, message."""
    place = f"{alert.get('ward') or '-'}/{alert.get('bed') or '-'}"
    news2 = alert.get("news2")
    total = news2.get("total", "-") if isinstance(news2, Mapping) else "-"
    return (
        f"{format_time(alert.get('time'))}  {str(alert.get('severity') or '-').upper():<9}  "
        f"{alert.get('type') or '-':<16}  "
        f"{place:<12}  pt {short_patient(alert.get('patient')):<8}  {_score(alert)}  NEWS2 {total}  "
        f"{alert.get('message') or ''}"
    ).rstrip()


def parse_alert(value: bytes | None) -> dict[str, Any] | None:
    """The alert as a dict, or None when the value is not a JSON object."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def _start(settings: Settings, topic: str, from_beginning: bool) -> AIOKafkaConsumer:
    consumer = kafka_io.consumer(
        settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest" if from_beginning else "latest"
    )
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, so "from now on" means from when this returns
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def tail_topic(
    settings: Settings,
    stream: str,
    *,
    keep: Callable[[Mapping[str, Any]], bool],
    render: Callable[[Mapping[str, Any]], str],
    from_beginning: bool = False,
    limit: int | None = None,
    as_json: bool = False,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print the records of ``stream`` that ``keep`` accepts (``out`` gets ``render(record)``, or the value bytes
    as they are on the topic with ``as_json``) until ``stop`` is set or ``limit`` were printed. ``ready`` is set
    once the consumer is positioned (records produced after that are seen). Returns the number printed."""
    stop = stop or asyncio.Event()
    consumer = await _start(settings, settings.topic(stream), from_beginning)
    shown = 0
    try:
        if ready is not None:
            ready.set()
        while not stop.is_set() and (limit is None or shown < limit):
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for rec in sorted((r for recs in batch.values() for r in recs), key=lambda r: (r.timestamp, r.partition)):
                doc = parse_alert(rec.value)
                if doc is None:
                    log.warning("skipping a record that is not a JSON object (partition %d, offset %d)",
                                rec.partition, rec.offset)  # fmt: skip
                    continue
                if keep(doc):
                    out(rec.value.decode("utf-8", errors="replace") if as_json else render(doc))
                    shown += 1
                    if limit is not None and shown >= limit:
                        break
        return shown
    finally:
        await consumer.stop()


async def tail_alerts(
    settings: Settings,
    *,
    flt: AlertFilter | None = None,
    from_beginning: bool = False,
    limit: int | None = None,
    as_json: bool = False,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print matching alerts (``out`` gets one line each) until ``stop`` is set or ``limit`` were printed
    (:func:`tail_topic` on ``alerts``). Returns the number of alerts printed."""
    return await tail_topic(settings, "alerts", keep=(flt or AlertFilter()).matches, render=format_alert,
                            from_beginning=from_beginning, limit=limit, as_json=as_json, out=out, stop=stop,
                            ready=ready)  # fmt: skip
