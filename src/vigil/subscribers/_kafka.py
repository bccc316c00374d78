"""Kafka plumbing of the subscribers: now in :mod:`vigil.kafka_io` (the one Kafka module); re-exported here."""

from __future__ import annotations

from vigil.kafka_io import assign_all, wait_for_topic

__all__ = ["wait_for_topic", "assign_all"]
