"""One exception hierarchy with structured fields.

Every error vigil raises on purpose is a :class:`VigilError`. Rejected input events carry a stable,
machine-readable ``reason`` (one of :data:`REASONS`; used in dead-letter records and as a metric label)
and the ``field`` at fault. On the hot path the decoder turns these into values
(:class:`vigil.records.Invalid`) instead of letting them propagate.

>>> err = InvalidEvent("missing_field", "required field 'time' is missing", field="time")
>>> err.reason, err.field, str(err)
('missing_field', 'time', "required field 'time' is missing")
>>> isinstance(err, VigilError)
True
"""

from __future__ import annotations

__all__ = ["VigilError", "InvalidEvent", "ConfigError", "ModelError", "REASONS"]

# Stable, machine-readable reasons for rejected events (dead-letter records and metric labels).
# Append only: dashboards, alerts on the dead-letter rate and replay tooling key on these strings.
REASONS: tuple[str, ...] = (
    "malformed_json",  # not JSON at all (or a null / empty record value)
    "not_an_object",  # JSON, but not an object
    "missing_field",  # a required field is absent or null
    "bad_type",  # wrong JSON type, bool where a number is due, NaN/Infinity, over-long string, bad enum
    "naive_timestamp",  # ISO 8601 without a UTC offset
    "bad_timestamp",  # not ISO 8601, or out of range
    "unknown_code",  # (system, code) not in vigil/data/codes.csv
    "unknown_unit",  # unit not in vigil/data/units.csv for the code's variable
    "implausible_value",  # outside vigil/data/ranges.csv (inclusive), after unit conversion
    "unknown_adt_kind",  # ADT kind not admit | transfer | discharge
    "key_mismatch",  # the Kafka key differs from the event's patient
    "unsupported_version",  # "v" other than 1
    "time_out_of_range",  # event time outside the plausible window (vigil.timewindow): a wrong clock
    "processing_error",  # a valid event whose processing raised: quarantined, the rest goes on
    "wrong_partition",  # the record's key belongs to another partition (a foreign partitioner)
    "oversize",  # a record larger than the configured bound
    "unknown_bed",  # an observation without a patient id whose bed has no occupant in the ADT census
)


class VigilError(Exception):
    """Base of every vigil error."""


class InvalidEvent(VigilError):
    """An input event that fails validation at the edge.

    ``reason`` is one of :data:`REASONS`; ``field`` names the offending field (``None`` when the whole
    record is at fault); the message names the field, the value and what was expected.
    """

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field

    @property
    def detail(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[type[InvalidEvent], tuple[str, str, str | None]]:
        return (type(self), (self.reason, self.detail, self.field))


class ConfigError(VigilError):
    """Invalid or missing configuration (settings, catalogue, data tables)."""


class ModelError(VigilError):
    """A model that cannot be loaded, does not match the featurizer, or fails its checks."""
