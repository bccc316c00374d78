"""The model card (``models/<name>/<version>/card.json``), typed: :class:`ModelCard`.

The card carries what serving checks before it serves a version (the feature and sequence schema hashes, the
operating threshold, the canary probabilities, the alert level) and what people read (metrics, training,
provenance, intended use, limitations, evaluation, onboarding). It is validated when the registry loads it
(:meth:`vigil.registry.Registry.get`) and before every write (:func:`write_card`: the trainer, ``vigil evaluate
--update-card``, ``vigil onboard``). Its JSON Schema (:func:`json_schema`) is committed beside the registry as
``models/card.schema.json``; a test keeps the file equal to the model.

The top level is closed (``extra="forbid"``: a misspelt key is an error); every card in the registry, the
trainer's and the onboarded shape (``onboarding`` block, ``metrics: {"site_check": ...}``) validate. The
blocks that serving reads are typed in full for those keys and open for more (``extra="allow"``: training
and evaluation reports add keys as they grow); the descriptive blocks (metrics, training, provenance,
evaluation, onboarding, the drift reference) are free-form objects. ``schema_version`` absent means 1 (the
cards written before the schema existed).

>>> card = ModelCard.from_dict(json.loads((Path(__file__).parents[2] / "models/sepsis-mlp/1/card.json").read_text()))
>>> card.schema_version, 0.0 < card.threshold < 1.0, card.feature_schema.hash.startswith("sha256:")
(1, True, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vigil.errors import ModelError

__all__ = ["ModelCard", "AbstentionSpec", "PriorShiftSpec", "CARD_FILE", "SCHEMA_FILE", "SCHEMA_VERSION",
           "json_schema", "read_card", "write_card", "validate_card", "schema_text"]  # fmt: skip

CARD_FILE = "card.json"
SCHEMA_FILE = "card.schema.json"  # in the registry root (models/)
SCHEMA_VERSION = 1


class _Open(BaseModel):
    """A block whose named keys are typed; further keys are kept as they are."""

    model_config = ConfigDict(extra="allow")


class InputSpec(_Open):
    name: str
    dtype: str
    n_features: int = Field(ge=1)
    sequence: dict[str, Any] | None = None


class OutputSpec(_Open):
    name: str
    kind: str


class FeatureSchema(_Open):
    names: list[str]
    hash: str
    window_h: int | None = None
    featurizer: str | None = None


class SequenceSchema(_Open):
    names: list[str]
    hash: str
    window_h: int


class Canary(_Open):
    probabilities: list[float]
    tolerance: float = Field(gt=0)


class AlertPolicy(_Open):
    raise_at: float | None = None
    rule: str | None = None
    chosen_by: str | None = None


class AbstentionSpec(_Open):
    """When a score is *indeterminate* (:mod:`vigil.abstain`; issue 16, item 4): the measure, its cut-off (a score
    whose measure is above it is indeterminate) and how it was fitted. Versioned by ``version``; further keys
    (the fit's facts and its evaluation) are kept as they are. No block: never indeterminate. Version 2 adds
    ``min_history_h`` (rows with fewer hours of the stay behind them are indeterminate too); a block that sets it
    must say version 2, so a reader that knows only version 1 refuses the card instead of ignoring the key."""

    version: Literal[1, 2] = 1
    measure: Literal["decision_margin_z", "member_logit_sd", "low_coverage"]
    cutoff: float = Field(ge=0.0)
    level: float | None = Field(default=None, gt=0.0, lt=1.0)  # decision_margin_z: measured from this alert level
    min_history_h: float | None = Field(default=None, gt=0.0, le=24.0 * 365)
    fitted_on: str | None = None
    # a site version's block (vigil onboard; vigil.onboarding.abstention): the version the measure and cut-off come
    # from, how the cut-off was set, the base's fit facts (its alert level among them) and evaluation (not this
    # version's figures), and this version's own figures on the site's held-back check stays
    inherited_from: str | None = None
    cutoff_rule: str | None = None
    base_fit: dict[str, Any] | None = None
    base_evaluation: dict[str, Any] | None = None
    site_evaluation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _level_for_margin(self) -> AbstentionSpec:
        if self.measure == "decision_margin_z" and self.level is None:
            raise ValueError("the decision_margin_z measure needs the level it is measured from")
        if self.min_history_h is not None and self.version < 2:
            raise ValueError("min_history_h is a version 2 key: set the block's version to 2")
        return self


class PriorShiftSpec(_Open):
    """How the version's score maps to a row posterior, and the prevalence it was fitted at
    (:mod:`vigil.onboarding.prior`): what ``vigil onboard --unlabelled --prevalence`` moves the threshold with.
    Versioned by ``version``; further keys (counts, what it was fitted on) are kept as they are."""

    version: Literal[1] = 1
    slope: float = Field(gt=0.0)
    intercept: float
    row_prior: float = Field(gt=0.0, lt=1.0)
    stay_prevalence: float = Field(gt=0.0, lt=1.0)
    rows_per_stay: float = Field(gt=0.0)
    positive_rows_per_septic_stay: float = Field(gt=0.0)
    fitted_on: str | None = None


class ModelCard(BaseModel):
    """One model version's card. Field order follows the trainer's card."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created_at: str | None = None
    task: str | None = None
    input: InputSpec
    output: OutputSpec
    feature_schema: FeatureSchema
    sequence_schema: SequenceSchema | None = None
    threshold: float = Field(ge=0.0, le=1.0)
    threshold_rule: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)
    canary: Canary | None = None
    reference: dict[str, Any] | None = None  # the drift monitor's training-time bins (vigil.drift)
    provenance: dict[str, Any] = Field(default_factory=dict)
    intended_use: str | None = None
    limitations: str | None = None
    evaluation: dict[str, Any] | None = None  # by split, written by `vigil evaluate --update-card`
    alert_policy: AlertPolicy | None = None
    onboarding: dict[str, Any] | None = None  # written by `vigil onboard`
    abstention: AbstentionSpec | None = None  # when a score is indeterminate (vigil.abstain); None: never
    prior_shift: PriorShiftSpec | None = None  # score -> row posterior and its prevalence (vigil.onboarding.prior)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "model card") -> ModelCard:
        """Validate ``doc``; :class:`ModelError` naming ``source`` and every bad field otherwise."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(card)'}: {e['msg']}" for e in exc.errors())
            msg = f"{source} is not a valid model card: {errors}"
            raise ModelError(msg) from exc

    @property
    def split_seed(self) -> int | None:
        """The seed of the trainer's patient-level split (``training.split.seed``), None when not recorded."""
        seed = (self.training.get("split") or {}).get("seed")
        return None if seed is None else int(seed)

    @property
    def source_file(self) -> str | None:
        """The training data file's name (``training.source_file``), None when not recorded."""
        source = self.training.get("source_file")
        return None if source is None else str(source)

    @property
    def alert_level(self) -> float:
        """``alert_policy.raise_at`` when set, else the threshold (:attr:`vigil.registry.ModelRef.alert_level`)."""
        level = self.alert_policy.raise_at if self.alert_policy is not None else None
        return float(level) if level is not None else float(self.threshold)


def validate_card(doc: dict[str, Any], source: str = "model card") -> dict[str, Any]:
    """``doc`` itself once it validates as a :class:`ModelCard` (so callers keep the card's exact JSON)."""
    ModelCard.from_dict(doc, source)
    return doc


def read_card(path: Path) -> dict[str, Any]:
    """The card at ``path`` as a dict, validated; :class:`ModelError` when unreadable or invalid."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read the model card {path}: {exc}"
        raise ModelError(msg) from exc
    return validate_card(doc, str(path))


def write_card(path: Path, card: dict[str, Any], *, indent: int = 2) -> Path:
    """Validate ``card`` and write it to ``path`` atomically (a temporary file renamed over it); an invalid card
    raises :class:`ModelError` and leaves the file as it was."""
    path = Path(path)
    validate_card(card, str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(card, indent=indent, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`ModelCard` (draft 2020-12, as pydantic writes it)."""
    schema = ModelCard.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "vigil:model-card:v1", **schema}


def schema_text() -> str:
    """The text of ``models/card.schema.json``."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
