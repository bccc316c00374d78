"""The typed model card (vigil.card): every registered card validates, the committed JSON Schema is current and
accepts them, invalid cards are refused on load and on write."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from vigil.card import CARD_FILE, SCHEMA_FILE, ModelCard, json_schema, read_card, schema_text, write_card
from vigil.config import REPO_ROOT
from vigil.errors import ModelError
from vigil.registry import Registry

MODELS = REPO_ROOT / "models"
CARDS = sorted(MODELS.glob(f"*/*/{CARD_FILE}"))


def _onboarded(card: dict) -> dict:
    """The shape `vigil onboard` writes (vigil.onboarding.run): an onboarding block, site metrics, a site level."""
    out = copy.deepcopy(card)
    for k in ("evaluation", "alert_policy", "metrics"):
        out.pop(k, None)
    out.update(name="sepsis-gbm-site", version="1")
    out["alert_policy"] = {"raise_at": 0.4, "rule": "model_risk raised when risk >= raise_at", "chosen_by": "vigil "
                           "onboard: budget", "site": {"level": 0.4, "burden": 0.1}}  # fmt: skip
    out["onboarding"] = {"base": "sepsis-gbm:1", "mode": "labelled", "site_sample": {"file": "s.parquet"},
                         "gate": {"passed": True}, "site_metrics": {"check": {"base": {}}}}  # fmt: skip
    out["metrics"] = {"site_check": {"auroc": 0.8, "auprc": 0.2, "utility": 0.3}}
    return out


def test_every_registered_card_validates_and_the_schema_accepts_it() -> None:
    assert len(CARDS) >= 5
    schema = json.loads((MODELS / SCHEMA_FILE).read_text())
    for path in CARDS:
        doc = read_card(path)
        card = ModelCard.from_dict(doc)
        assert (card.name, card.version) == (path.parent.parent.name, path.parent.name)
        assert card.schema_version == 1 and 0.0 < card.threshold < 1.0
        jsonschema.validate(doc, schema)
    onboarded = _onboarded(read_card(MODELS / "sepsis-gbm" / "1" / CARD_FILE))
    assert ModelCard.from_dict(onboarded).onboarding["base"] == "sepsis-gbm:1"
    jsonschema.validate(onboarded, schema)


def test_the_committed_schema_is_current() -> None:
    """models/card.schema.json is what vigil.card.json_schema() gives (regenerate with
    `python -c "from vigil.card import schema_text; print(schema_text(), end='')" > models/card.schema.json`)."""
    assert (MODELS / SCHEMA_FILE).read_text(encoding="utf-8") == schema_text()
    assert json_schema()["additionalProperties"] is False  # the top level is closed


def test_invalid_cards_are_refused_with_the_field_named() -> None:
    doc = read_card(MODELS / "sepsis-mlp" / "1" / CARD_FILE)
    for change, field in (({"treshold": 0.3}, "treshold"), ({"threshold": 1.5}, "threshold"),
                          ({"threshold": "high"}, "threshold"), ({"schema_version": 2}, "schema_version"),
                          ({"canary": {"probabilities": [0.1], "tolerance": 0}}, "canary.tolerance")):  # fmt: skip
        with pytest.raises(ModelError, match=rf"not a valid model card: .*{field}"):
            ModelCard.from_dict({**doc, **change})
    bad = copy.deepcopy(doc)
    del bad["feature_schema"]["hash"]
    with pytest.raises(ModelError, match=r"feature_schema\.hash: Field required"):
        ModelCard.from_dict(bad)


def test_registry_refuses_an_invalid_card_and_write_card_leaves_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS / "sepsis-mlp" / "1", models / "sepsis-mlp" / "7")
    path = models / "sepsis-mlp" / "7" / CARD_FILE
    doc = {**json.loads(path.read_text()), "version": "7"}
    write_card(path, doc)
    assert Registry(models).get("sepsis-mlp:7").model_card.version == "7"
    before = path.read_bytes()
    with pytest.raises(ModelError, match="canary"):
        write_card(path, {**doc, "canary": {"probabilities": "none"}})
    assert path.read_bytes() == before and not list(path.parent.glob(".*.tmp"))
    path.write_text(json.dumps({**doc, "thresold": 0.2}))
    with pytest.raises(ModelError, match="thresold"):
        Registry(models).get("sepsis-mlp:7")
