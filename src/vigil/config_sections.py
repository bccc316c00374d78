"""The settings sections of the edge, the API, the subscribers, the registry and the demand job (part of
:mod:`vigil.config`, which re-exports every class here; split out to keep modules small)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

__all__ = ["DEFAULT_DATA", "ApiSettings", "DemandResource", "DemandSettings", "EdgeTlsSettings", "IngestSettings",
           "RegistrySettings", "WebhookSettings"]  # fmt: skip

# The PhysioNet 2019 training set A beside a checkout (relative to the working directory, as `vigil train --data`):
# the default data of the promotion gate, `vigil evaluate` and `vigil demand calibrate|backtest`.
DEFAULT_DATA = Path("../shared/data/physionet2019/setA.parquet")


class DemandResource(BaseModel):
    """One scarce resource whose demand ``vigil demand`` forecasts (see :mod:`vigil.demand`).

    ``need`` is what needing it within h hours means (a label the calibration was fitted on):
    ``sepsis_onset`` (from the model score) or ``news2_emergency`` (NEWS2 >= 7 ahead, from the current NEWS2).
    ``rule_news2_at``: a current NEWS2 total at or above this gives probability ``rule_p`` (for
    ``news2_emergency``, ``rule_p`` None = the rule group's frequency on validation data). ``capacity``:
    ``free_beds`` (the ward's free beds, from ``demand.beds`` and the census), a fixed number per ward, or
    None (unknown: no P(exceed), no capacity alert).
    """

    name: str = Field(min_length=1, max_length=128)
    need: Literal["sepsis_onset", "news2_emergency"]
    rule_news2_at: int | None = Field(default=None, ge=0, le=20)
    rule_p: float | None = Field(default=None, ge=0.0, le=1.0)
    capacity: Literal["free_beds"] | dict[str, int] | None = "free_beds"

    @model_validator(mode="after")
    def _rule_needs_p(self) -> DemandResource:
        if self.need == "sepsis_onset" and self.rule_news2_at is not None and self.rule_p is None:
            msg = f"demand resource {self.name!r}: a NEWS2 rule on a sepsis_onset need needs rule_p"
            raise ValueError(msg)
        return self


def _default_resources() -> list[DemandResource]:
    return [
        DemandResource(name="sepsis_bundle", need="sepsis_onset", capacity="free_beds"),
        DemandResource(name="critical_care_review", need="news2_emergency", rule_news2_at=7, capacity=None),
    ]


class DemandSettings(BaseModel):
    """``vigil demand run``: ward census from ``adt``, latest scores from ``scores``, and every ``interval_min``
    minutes of event time one forecast per ward x resource x horizon on ``resource-demand`` (see
    :mod:`vigil.demand`). A capacity alert is raised when P(demand > capacity) >= ``capacity_alert_level`` and
    resolved when it falls below ``capacity_alert_level x capacity_clear_ratio``."""

    interval_min: float = Field(default=15.0, gt=0.0, description="forecast cadence, minutes of event time")
    horizons_h: list[int] = Field(default_factory=lambda: [6, 12, 24], min_length=1)
    levels: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.95], min_length=1)
    exact_max: int = Field(default=200, ge=0, description="exact Poisson-binomial up to this many patients")
    beds: dict[str, int] = Field(default_factory=dict, description="beds per ward; other wards: capacity unknown")
    capacity_alert_level: float = Field(default=0.25, gt=0.0, le=1.0)
    capacity_clear_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    resources: list[DemandResource] = Field(default_factory=_default_resources, min_length=1)
    model: str | None = Field(default=None, description="NAME[:VERSION] whose scores are used; None = first serving")
    calibration_file: Path | None = Field(default=None, description="None = <model folder>/demand_calibration.json")
    ttl_h: float = Field(default=48.0, gt=0.0, description="a present patient silent this long is dropped")
    closed_keep_h: float = Field(default=24.0, ge=0.0, description="discharged patients remembered this long")

    @model_validator(mode="after")
    def _check(self) -> DemandSettings:
        if any(h <= 0 for h in self.horizons_h):
            msg = f"demand.horizons_h must be positive hours, got {self.horizons_h}"
            raise ValueError(msg)
        if any(not 0.0 < x < 1.0 for x in self.levels):
            msg = f"demand.levels must be in (0, 1), got {self.levels}"
            raise ValueError(msg)
        names = [r.name for r in self.resources]
        if len(set(names)) != len(names):
            msg = f"demand.resources names must be unique, got {names}"
            raise ValueError(msg)
        if any(n < 0 for n in self.beds.values()):
            msg = "demand.beds must be >= 0 per ward"
            raise ValueError(msg)
        return self


class RegistrySettings(BaseModel):
    """The promotion gate of ``vigil models promote`` (see :mod:`vigil.gate`): a candidate may be worse than
    the serving version by at most these margins, on the validation split of ``gate_data``."""

    margin_utility: float = Field(default=0.01, ge=0.0, description="allowed drop in normalized utility")
    margin_auroc: float = Field(default=0.01, ge=0.0, description="allowed drop in AUROC")
    gate_data: Path = Field(default=DEFAULT_DATA, description="relative paths: to the working directory")
    notify_timeout_s: float = Field(default=30.0, gt=0.0, description="bound on publishing a model-updates event")


class WebhookSettings(BaseModel):
    """``vigil alerts webhook``: retries with exponential backoff and jitter, the HMAC secret, consumer groups.

    Attempt ``n`` (1-based) waits a random delay in ``[d/2, d]`` with ``d = min(backoff_max_s,
    backoff_base_s * 2**(n-1))`` before the next one; a ``Retry-After`` is honoured up to ``backoff_max_s``.
    After ``max_attempts`` failed attempts the alert goes to ``alerts-webhook-dead-letter``.
    """

    max_attempts: int = Field(default=5, ge=1, description="attempts per alert before it is dead-lettered")
    backoff_base_s: float = Field(default=0.5, gt=0.0, description="first retry delay (before jitter)")
    backoff_max_s: float = Field(default=30.0, gt=0.0, description="cap of one retry delay and of Retry-After")
    timeout_s: float = Field(default=10.0, gt=0.0, description="per-request timeout (connect + response)")
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key of X-Vigil-Signature")
    group_prefix: str = Field(default="vigil-webhook-", description="consumer group = prefix + destination name")
    dedupe_window: int = Field(default=10_000, ge=0, description="recently delivered alert ids remembered")
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="consumer group session timeout")


class EdgeTlsSettings(BaseModel):
    """TLS of the edge listeners (MLLP over TLS, HTTPS for FHIR): off while ``certfile`` is unset.
    ``client_cafile`` turns on mutual TLS: a client must present a certificate signed by that CA."""

    certfile: Path | None = Field(default=None, description="server certificate chain (PEM); None = no TLS")
    keyfile: Path | None = Field(default=None, description="its private key (PEM)")
    client_cafile: Path | None = Field(default=None, description="CA bundle for client certificates (mutual TLS)")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


class IngestSettings(BaseModel):
    """``vigil ingest hl7`` (MLLP) and ``vigil ingest fhir`` (HTTP): listeners at the edge (docs/ingest.md)."""

    host: str = Field(default="127.0.0.1", description="address the listeners bind to")
    hl7_port: int = Field(default=2575, ge=0, le=65535, description="MLLP port (0 = a free one)")
    fhir_port: int = Field(default=8080, ge=0, le=65535, description="FHIR HTTP port (0 = a free one)")
    max_message_bytes: int = Field(default=1_048_576, ge=1024, description="largest HL7 message / FHIR body")
    read_timeout_s: float = Field(default=300.0, gt=0.0, description="idle connection closed after this long")
    publish_timeout_s: float = Field(default=30.0, gt=0.0, description="bound on the broker's acks for a message")
    max_obx: int = Field(default=1000, ge=1, le=1023, description="OBX segments accepted per message")
    sending_application: str = Field(default="VIGIL", description="MSH-3 of our ACKs")
    sending_facility: str = Field(default="VIGIL", description="MSH-4 of our ACKs")
    site_timezone: str | None = Field(
        default=None, description="IANA zone for timestamps without a UTC offset; None = reject them"
    )
    code_map: str | None = Field(
        default=None,
        description="site code-map CSV (system,code,variable,unit,display) extending vigil/data/codes.csv; "
        "validated at listener start-up (docs/codes.md)",
    )
    # Edge security (docs/ingest.md "Security"): TLS, FHIR bearer tokens, connection and memory bounds.
    tls: EdgeTlsSettings = Field(default_factory=EdgeTlsSettings)
    fhir_token_sha256: list[SecretStr] = Field(
        default_factory=list, description="hex SHA-256 of each accepted FHIR bearer token; empty = no token auth"
    )
    max_connections: int = Field(default=128, ge=1, description="open connections per listener; more are refused")
    message_deadline_s: float = Field(
        default=60.0, gt=0.0, description="a started message (or HTTP request) must be complete within this"
    )
    max_buffered_bytes: int = Field(
        default=32 * 1_048_576, ge=1024, description="bytes of unfinished messages held (MLLP frames, FHIR bodies)"
    )
    # HL7 ADT and bed association (vigil.ingest.hl7_adt, vigil.ingest.census)
    bed_association: bool = Field(
        default=True, description="attribute an ORU without PID-3 to the occupant of its PV1-3 bed (ADT census)"
    )
    census_lookback_s: float = Field(
        default=30 * 86400.0, gt=0.0, description="on start, the census reads the adt topic back this far"
    )
    census_catchup_s: float = Field(
        default=30.0, ge=0.0, description="on start, wait at most this long for the census to read the adt topic"
    )
    ward_units: dict[str, str] = Field(
        default_factory=dict, description="PV1-3.1 point of care -> ICU unit (MICU, SICU, ...) for ADT events"
    )


class ApiSettings(BaseModel):
    """``vigil api``: the clinicians' HTTP API (docs/api.md). Bearer tokens are stored only as SHA-256 hex digests
    (``vigil api hash-token``); the API keeps the latest state of at most ``max_patients`` patients in memory."""

    host: str = Field(default="127.0.0.1", description="address the API binds to (exactly this one)")
    port: int = Field(default=8090, ge=0, le=65535, description="HTTP port (0 = a free one)")
    tokens_sha256: list[SecretStr] = Field(default_factory=list, description="SHA-256 hex of each accepted token")
    max_patients: int = Field(default=20_000, ge=1, description="patients kept in memory (least recent evicted)")
    max_alerts: int = Field(default=200_000, ge=1, description="alerts and acknowledgements remembered")
    catch_up_timeout_s: float = Field(default=300.0, gt=0.0, description="bound on reading the topics at start")
    publish_timeout_s: float = Field(default=10.0, gt=0.0, description="bound on the broker's acks for an ack")
