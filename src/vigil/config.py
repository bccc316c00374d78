"""Settings: environment variables (prefix ``VIGIL_``, nested with ``__``) and an optional YAML/JSON file.

``KAFKA_BOOTSTRAP_SERVERS`` (no prefix) is honoured as the standard way to point vigil at a real cluster;
without it the demo and the tests start the embedded broker. Credentials are ``SecretStr`` and never
printed (:meth:`Settings.redacted`).

>>> s = Settings(_env_file=None)
>>> s.scoring.mode
'row'
>>> s.kafka.client_kwargs()["security_protocol"]
'PLAINTEXT'
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from vigil.budget import BudgetSettings
from vigil.config_sections import (
    DEFAULT_DATA,
    ApiSettings,
    DemandResource,
    DemandSettings,
    EdgeTlsSettings,
    IngestSettings,
    RegistrySettings,
    WebhookSettings,
)
from vigil.errors import ConfigError
from vigil.settings_check import nearest, unknown_env, unknown_keys

__all__ = [
    "KafkaSettings", "ScoringSettings", "StateSettings", "TimeWindowSettings", "AlertSettings",
    "RuleSettings", "DriftSettings", "RegistrySettings", "WebhookSettings", "DemandSettings", "DemandResource",
    "IngestSettings", "EdgeTlsSettings", "ApiSettings", "Settings", "SettingsError", "load_settings",
    "DEV_PSEUDONYM_KEY", "DEFAULT_DATA", "packaged_streams_dir",
]  # fmt: skip

# The source checkout this module sits in, when it sits in one (``src/vigil/config.py``): only the tests, the
# doctests and the tools (:mod:`vigil.tools`) use it. No default setting depends on it: an installed wheel has
# no checkout.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_PSEUDONYM_KEY = "vigil-dev-key-change-me"  # public: refused outside development mode


def packaged_streams_dir() -> Path:
    """The topic catalogue (``topics.yaml``) and JSON Schemas shipped as package data ``vigil/streams`` (in a
    checkout ``src/vigil/streams`` is a link to the repository's ``streams/``, the one copy that is edited)."""
    return Path(str(resources.files("vigil").joinpath("streams")))


class KafkaSettings(BaseModel):
    """Connection options passed through to every aiokafka / Faust client."""

    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "vigil"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (security options only when configured)."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol, "client_id": self.client_id}
        if self.bootstrap_servers:
            kw["bootstrap_servers"] = self.bootstrap_servers
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return kw


class ScoringSettings(BaseModel):
    """When a patient is scored.

    ``row``: once per completed hourly row (replayed PhysioNet stays: row t is scored when the first event
    of a later hour, or the discharge, arrives; empty hours in between are scored too, up to
    ``max_gap_rows``). ``interval``: the current hour as it stands, at most once per ``min_interval_s``
    seconds of event time (1 Hz monitor data).
    """

    mode: Literal["row", "interval"] = "row"
    min_interval_s: float = 60.0
    max_gap_rows: int = 72
    providers: list[str] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    intra_op_threads: int = 1
    # rows per inference call when a batch is larger: each full chunk runs on a second thread while the batch's
    # other patients are applied (worker/infer.py; same results); 0 = one call per batch on the event loop's thread
    overlap_rows: int = Field(256, ge=0)
    models: list[str] = Field(default_factory=list, description="NAME[:VERSION]; empty = serving models")
    shadow: list[str] = Field(
        default_factory=list, description="NAME:VERSION candidates scored beside the live models (scores-shadow)"
    )


class StateSettings(BaseModel):
    # A patient is evicted when it has had no event for ttl_s of event time (against the partition's
    # newest event) AND for ttl_wall_s of wall time (so a fast replay or backlog never evicts early).
    ttl_s: float = 48 * 3600.0
    ttl_wall_s: float = 3600.0
    # After a discharge a small closed record is kept this long (wall seconds): late events and
    # duplicates of the finished stay are dropped and counted instead of opening a ghost stay.
    closed_keep_s: float = 3600.0
    # Observations of a patient with no ADT admit yet wait this many wall seconds for it (feeds are
    # independent topics: a fetch can deliver vitals before their admit); then rows are numbered from
    # the first observation and scoring starts without the ADT context.
    admit_grace_s: float = 2.0
    dedupe_window: int = 256  # recent (source, seq) ids remembered per patient
    # A discharge is finalised (last rows scored, state evicted) this many wall seconds after it was
    # applied (on top of the reorder hold below).
    discharge_grace_s: float = 0.0
    # Events wait in a reorder buffer until the partition's event-time watermark (over vitals, labs
    # and adt; a caught-up topic that has delivered nothing for reorder_idle_s does not hold the others
    # back, one that is still delivering does) passes them, so cross-topic skew never closes a row early,
    # and at least reorder_min_hold_s (a wall-clock tolerance for feeds that are not in event-time order
    # per topic-partition, e.g. stays published one after another, and for sparse independent feeds; 0 is
    # safe only for one producer in event-time order: docs/integrity.md "Minimum hold"). There is no
    # wall-clock maximum hold: consumption is paced in event time instead — an
    # input topic-partition more than reorder_slack_s (event time) ahead of its partition's watermark,
    # or ahead at all while the partition holds more than reorder_max_held events, is paused until the
    # watermark catches up. Held memory per partition <= reorder_max_held + one fetch per input
    # topic-partition. The only wall-clock escape is reorder_stall_s: an input that is behind, not
    # paused and makes no fetch progress that long stops holding the others back (counted in
    # vigil_reorder_stalled_inputs_total, logged). See worker/reorder.py and docs/integrity.md.
    reorder_min_hold_s: float = 0.5
    # A caught-up input counts as idle (no longer holds the watermark) only after this many wall seconds
    # without a record: a live feed that produces continuously but lags the others still holds it.
    reorder_idle_s: float = 0.05
    # Producer watermarks (records {"v":1,"source":...,"watermark":...} on every input partition, written by
    # vigil replay and any producer that writes in event-time order; worker/punctuation.py): a topic-partition
    # whose producers publish them is ordered by them, and a partition whose inputs all are needs no minimum
    # hold. A producer silent for edge_watermark_timeout_s no longer counts; a data record below the
    # watermark (a violation, counted) sends its input back to the inferred watermark and the hold that long.
    edge_watermarks: bool = True
    edge_watermark_timeout_s: float = 5.0
    reorder_slack_s: float = 600.0
    reorder_max_held: int = 50_000
    reorder_stall_s: float = 30.0
    # Changelog writes (worker/changelog.py): 0 writes every patient touched by a batch, whole, once per batch;
    # > 0 writes a partition's changed patients at most once per this many seconds (and at once on a
    # discharge, a partition revoke and a stop), while the input commit stays behind the oldest event not yet
    # in a written state, so a crash replays it (docs/integrity.md "Changelog interval").
    changelog_interval_s: float = Field(default=1.0, ge=0.0)
    # TEST ONLY, off by default: processing an event whose seq equals this raises (a RuntimeError inside the
    # worker's per-event processing), to prove the per-patient quarantine (tests/test_faults_poison.py).
    fault_inject_seq: int | None = None


class TimeWindowSettings(BaseModel):
    """Plausible event times (:mod:`vigil.timewindow`): an event outside the window is refused at the edge
    (HL7 AE / FHIR 422) and dead-lettered by the worker with reason ``time_out_of_range``, so one wrong clock
    can never close a patient's rows or end their monitoring.

    ``live``: no later than ``max_future_s`` after the wall clock and no earlier than ``max_past_s`` before it.
    ``replay`` (historical data, the demo, tests): the wall clock is shifted back by ``replay_shift_s`` when
    set; with no shift the past bound is not applied (the future bound still is). In both modes the worker
    also refuses an event earlier than the patient's admission minus ``admit_margin_s``.
    """

    mode: Literal["live", "replay"] = "live"
    max_future_s: float = Field(default=300.0, ge=0.0, description="seconds an event may lie ahead of the clock")
    max_past_s: float = Field(default=30 * 86400.0, gt=0.0, description="seconds an event may lie behind it")
    replay_shift_s: float | None = Field(default=None, ge=0.0, description="replay: the clock moved back this far")
    admit_margin_s: float = Field(default=48 * 3600.0, ge=0.0, description="worker: earliest = admission - this")


class RuleSettings(BaseModel):
    """One alert type's rule (see :mod:`vigil.alerting.rules`)."""

    enabled: bool = True
    raise_at: float | None = None  # model_risk: None = the card's alert level (alert_policy.raise_at, else threshold)
    clear_below: float | None = None  # hysteresis; None = 0.8 x raise_at
    persistence: int = Field(1, ge=1)  # consecutive scored rows at/above raise_at before raising
    refractory_h: float = Field(0.0, ge=0)  # no new alert of the type within this many hours of the last
    escalate_by: float | None = None  # while raised: this much above the raising level -> one escalation
    severity: str = "high"
    escalated_severity: str = "emergency"
    resolve: bool = True  # publish a resolution when the condition clears


# Per-type rule defaults. A partial override (a file, VIGIL_ALERTS__NEWS2_EMERGENCY__ENABLED=true, ...) is
# merged over these, so setting one field never resets the type's other defaults.
RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "model_risk": {"persistence": 1, "refractory_h": 72.0, "escalate_by": 0.25, "severity": "high"},
    "news2_urgent": {"enabled": False, "raise_at": 5, "clear_below": 5, "refractory_h": 12.0, "severity": "urgent"},
    "news2_emergency": {"enabled": False, "raise_at": 7, "clear_below": 5, "refractory_h": 6.0,
                        "severity": "emergency"},
    "news2_single": {"enabled": False, "raise_at": 3, "clear_below": 3, "refractory_h": 12.0,
                     "severity": "low-medium"},
}  # fmt: skip


def _rule(kind: str) -> Any:
    return Field(default_factory=lambda: RuleSettings(**RULE_DEFAULTS[kind]))


class AlertSettings(BaseModel):
    """The alert policy. Defaults chosen on set A validation data (docs/alert-policy.md): a model alert when
    the risk reaches the model card's alert level (chosen per model for a budget of 0.2 alerts per
    patient-day), then nothing new for that patient for 72 h unless it escalates (+0.25); the NEWS2 rules
    exist but are off by default on ICU data, where NEWS2 >= 5 holds most of the time (enable them per
    ward)."""

    model_risk: RuleSettings = _rule("model_risk")
    news2_urgent: RuleSettings = _rule("news2_urgent")
    news2_emergency: RuleSettings = _rule("news2_emergency")
    news2_single: RuleSettings = _rule("news2_single")
    ack_suppress_h: float = Field(4.0, ge=0)  # an acknowledgement silences new alerts of its type this long
    # ward or ICU unit -> alert type -> rule fields to override, e.g. {"W3": {"news2_emergency": {"enabled": true}}}
    overrides: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)  # live alert-budget controller (vigil.budget)

    @model_validator(mode="before")
    @classmethod
    def _merge_rule_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for kind, defaults in RULE_DEFAULTS.items():
                if isinstance(data.get(kind), dict):
                    data[kind] = {**defaults, **data[kind]}
        return data

    @model_validator(mode="after")
    def _overrides_name_rules(self) -> AlertSettings:
        """Each override names an alert type and rule fields that exist (a typo never falls back silently)."""
        problems = []
        for scope, kinds in self.overrides.items():
            for kind, fields in kinds.items():
                if kind not in RULE_DEFAULTS:
                    hint = nearest(kind, RULE_DEFAULTS)
                    problems.append(f"overrides.{scope}.{kind}: no such alert type"
                                    + (f" (did you mean {hint}?)" if hint else ""))  # fmt: skip
                    continue
                for name in fields:
                    if name not in RuleSettings.model_fields:
                        hint = nearest(name, RuleSettings.model_fields)
                        problems.append(f"overrides.{scope}.{kind}.{name}: no such rule field"
                                        + (f" (did you mean {hint}?)" if hint else ""))  # fmt: skip
                RuleSettings(**{**RULE_DEFAULTS[kind], **fields})  # values valid too
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DriftSettings(BaseModel):
    """Population stability of key features and the score against the model card's training reference
    (:mod:`vigil.drift`)."""

    enabled: bool = True
    window_rows: int = Field(20_000, ge=100)  # scored rows in the sliding window
    level: float = Field(0.25, gt=0)  # PSI at which a drift event is published (> 0.25: a real shift)
    min_rows: int = Field(2_000, ge=1)  # no verdict on fewer rows
    cooldown_rows: int = Field(20_000, ge=1)  # at most one event per quantity per this many scored rows


class Settings(BaseSettings):
    """Every setting of vigil. Sources, lowest first: defaults, ``KAFKA_BOOTSTRAP_SERVERS`` (for
    ``kafka.bootstrap_servers`` only), the settings file (YAML or JSON; :func:`load_settings`), ``VIGIL_*``
    environment variables (nested with ``__``), then keyword arguments. A key that names no field, at any
    depth and from any source, is an error that names its path and the nearest valid name."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", extra="forbid", env_file=None
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    demand: DemandSettings = Field(default_factory=DemandSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    time_window: TimeWindowSettings = Field(default_factory=TimeWindowSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pseudonym_key: SecretStr = SecretStr(DEV_PSEUDONYM_KEY)  # HMAC key for patient pseudonyms
    # Development mode (VIGIL_DEV_MODE=1): the only way `vigil worker` / `vigil ingest` start with the public
    # development pseudonym key above (the demo, tests and benchmarks set it). See vigil.ingest.security.
    dev_mode: bool = False
    topic_prefix: str = ""  # prepended to every catalogue topic (tests use a unique prefix each)
    group_id: str = "vigil-worker"
    # the model registry: ./models relative to the working directory unless set (VIGIL_MODELS_DIR)
    models_dir: Path = Path("models")
    # the topic catalogue and its JSON Schemas: the copy shipped in the package unless set (VIGIL_STREAMS_DIR)
    streams_dir: Path = Field(default_factory=packaged_streams_dir)
    metrics_port: int = 0  # 0 = no metrics HTTP endpoint; the worker's Faust web server serves /metrics
    web_port: int = 6066
    # The worker's web server (/metrics, /healthz, /readyz) binds here: loopback by default; containers set
    # VIGIL_WEB_HOST=0.0.0.0 so Prometheus and the health check can reach it.
    web_host: str = "127.0.0.1"
    max_batch: int = 5000
    fetch_timeout_ms: int = 100
    fetch_max_wait_ms: int = 100  # the worker consumer's broker long-poll (see worker/engine.py)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # one format for vigil and Faust (vigil.logs)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, file_secret_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            if path.suffix.lower() == ".json":
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        sources.append(_KafkaBootstrapSource(settings_cls))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = unknown_keys(data, cls)
            if unknown:
                raise ValueError("unknown setting " + "; unknown setting ".join(unknown))
        env = unknown_env(os.environ, cls)  # a top-level VIGIL_* typo never reaches the data: checked here
        if env:
            raise ValueError("environment " + "; environment ".join(env))
        return data

    def topic(self, name: str) -> str:
        """The broker-side name of catalogue topic ``name``."""
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (safe to log)."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


class SettingsError(ConfigError, ValueError):
    """Settings that cannot be used: an unknown key (with the nearest valid name) or an invalid value. The
    message is one line and never shows a secret's value."""


class _KafkaBootstrapSource(PydanticBaseSettingsSource):
    """``KAFKA_BOOTSTRAP_SERVERS`` (no prefix), the standard way to point a client at a cluster: the lowest
    source, so the file, ``VIGIL_KAFKA__BOOTSTRAP_SERVERS`` and ``--bootstrap`` all beat it."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        return {"kafka": {"bootstrap_servers": value}} if value else {}


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("vigil_config_file", default=None)
_SECRET_WORDS = ("password", "secret", "key", "token")


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML or JSON, optional; else ``$VIGIL_CONFIG``), then the environment, then
    ``overrides`` (nested dicts merge into the file's and the environment's values).

    Raises :class:`SettingsError` (one line) for a key that names no setting, in the file, in a ``VIGIL_*``
    variable or in ``overrides``, with the nearest valid name, and for an invalid value."""
    path = path or os.environ.get("VIGIL_CONFIG")
    file = Path(path) if path else None
    problems: list[str] = []
    if file is not None:
        if not file.is_file():
            raise SettingsError(f"settings file {file} not found")
        data = _read_file(file)
        problems += [f"{file}: unknown setting {m}" for m in unknown_keys(data, Settings)]
    problems += [f"environment {m}" for m in unknown_env(os.environ, Settings)]
    problems += [f"override: unknown setting {m}" for m in unknown_keys(overrides, Settings)]
    if problems:
        raise SettingsError("; ".join(problems))
    token = _CONFIG_FILE.set(file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, file)) from None
    finally:
        _CONFIG_FILE.reset(token)


def _read_file(file: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(file.read_text()) or {}  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise SettingsError(f"settings file {file} cannot be read: {detail}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {file} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _one_line(exc: ValidationError, file: Path | None) -> str:
    """A validation error as one line: ``settings: path: message (got value)``; secrets never shown."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = " ".join(str(err["msg"]).split()).removeprefix("Value error, ")
        value = err.get("input")
        shown = ""
        secret = any(w in loc.lower() for w in _SECRET_WORDS)
        if not secret and isinstance(value, str | int | float | bool) and len(str(value)) <= 80:
            shown = f" (got {value!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}")
    where = f"settings ({file}, environment)" if file else "settings (environment)"
    return f"invalid {where}: " + "; ".join(parts)

