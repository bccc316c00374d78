"""The topic catalogue: streams/topics.yaml, the JSON Schemas, docs/topics.md and topic creation."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from vigil.alerts import alert_id, score_id
from vigil.catalog import (
    CO_PARTITIONED,
    REQUIRED,
    TopicSpec,
    create_topics,
    load_catalog,
    render_markdown,
    schema_for,
)
from vigil.errors import REASONS, ConfigError
from vigil.news2 import news2, news2_parts_dict
from vigil.records import Invalid, dead_letter_record, decode, encode_adt, encode_observation

REPO = Path(__file__).resolve().parents[1]
STREAMS = REPO / "streams"
T0 = datetime(2026, 1, 1, 5, tzinfo=UTC)
ISO = T0.isoformat()


@pytest.fixture(scope="module")
def catalog() -> dict[str, TopicSpec]:
    return load_catalog(STREAMS)


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema_for(name, STREAMS))


def test_required_topics_and_their_policies(catalog: dict[str, TopicSpec]) -> None:
    assert set(REQUIRED) <= set(catalog)
    for spec in catalog.values():
        assert spec.partitions >= 1 and spec.replication_factor >= 1 and spec.key and spec.description
        assert spec.cleanup_policy in ("delete", "compact") and (
            spec.retention_ms > 0 or spec.retention_ms == -1
        )
        assert (STREAMS / spec.schema_file).is_file()
        assert spec.schema_file == f"schemas/{spec.name}.schema.json"
    assert catalog["worker-state-changelog"].cleanup_policy == "compact"
    assert catalog["worker-state-changelog"].retention_ms == -1
    assert all(catalog[n].cleanup_policy == "delete" for n in REQUIRED if n != "worker-state-changelog")
    assert catalog["model-updates"].partitions == 1  # updates stay in order


def test_co_partitioned_topics_share_partition_counts(catalog: dict[str, TopicSpec]) -> None:
    assert {"vitals", "labs", "adt", "worker-state-changelog"} <= set(CO_PARTITIONED)
    assert len({catalog[n].partitions for n in CO_PARTITIONED}) == 1
    assert catalog["vitals"].partitions > 1
    assert all("patient" in catalog[n].key for n in CO_PARTITIONED)


def test_every_schema_is_valid_draft_2020_12(catalog: dict[str, TopicSpec]) -> None:
    for name in catalog:
        schema = schema_for(name, STREAMS)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"{name}.schema.json") and schema["title"]


def test_dead_letter_reasons_match_the_error_hierarchy() -> None:
    assert schema_for("dead-letter", STREAMS)["properties"]["reason"]["enum"] == list(REASONS)


def _score(**over: Any) -> dict[str, Any]:
    n2 = news2(resp=[26.0], spo2=[95.0], sbp=[105.0], hr=[95.0], temp=[38.5], on_oxygen=[True])
    rec = {
        "v": 1, "score_id": score_id("pt-1", "sepsis-mlp", "1", 12, False), "patient": "pt-1",
        "ward": "ICU-MED", "bed": "ICU-MED-01", "unit": "MICU", "time": ISO, "row": 12, "partial": False,
        "model": {"name": "sepsis-mlp", "version": "1", "provider": "CPUExecutionProvider"}, "risk": 0.4321,
        "threshold": 0.3, "above_threshold": True, "news2": news2_parts_dict(n2, 0), "emitted_at": ISO,
        "trigger_time": ISO,
    }  # fmt: skip
    rec.update(over)
    return rec


def _alert(**over: Any) -> dict[str, Any]:
    rec = {
        "v": 1, "alert_id": alert_id("pt-1", "model_risk:sepsis-mlp", "1", 12), "event": "raised",
        "episode_id": alert_id("pt-1", "model_risk:sepsis-mlp", "1", 12), "type": "model_risk", "severity": "high",
        "patient": "pt-1", "ward": None, "bed": None, "unit": "MICU", "time": ISO, "row": 12,
        "model": {"name": "sepsis-mlp", "version": "1"}, "score": 0.4321, "threshold": 0.3, "value": 0.4321,
        "raise_at": 0.3, "news2": _score()["news2"], "ack": None, "emitted_at": ISO,
        "factors": [{"variable": "Temp", "label": "temperature", "value": 39.2, "unit": "Cel", "contribution": 0.08,
                     "trend": "up", "previous": 37.1, "previous_hours_ago": 5,
                     "text": "temperature 39.2 °C, up from 37.1 5 h ago"}],
        "message": "Sepsis risk 0.432 (threshold 0.300); NEWS2 9. Top factors: temperature 39.2 °C, up from 37.1",
    }  # fmt: skip
    rec.update(over)
    return rec


def _samples() -> dict[str, list[Any]]:
    inv = decode(b"{oops", "vitals")
    assert isinstance(inv, Invalid)
    mdc = "urn:iso:std:iso:11073:10101"
    return {
        "vitals": [
            encode_observation(patient="pt-1", source="m", seq=0, time=T0, system="LOINC", code="8867-4",
                               value=88, unit="/min"),
            encode_observation(patient="pt-1", source="m", seq=1, time=T0, system=mdc, code="150456",
                               value=97.5, unit="262688"),
        ],
        "labs": [encode_observation(patient="pt-1", source="lis", seq=3, time=T0, system="http://loinc.org",
                                    code="2345-7", value=5.5, unit="mmol/L")],
        "adt": [
            encode_adt(patient="pt-1", source="adt", seq=0, time=T0, kind="admit", ward="ICU-MED", bed="4",
                       unit="MICU", admit_time=T0, age=71.5, sex="F", hosp_adm_time_h=-12.25),
            encode_adt(patient="pt-1", source="adt", seq=1, time=T0, kind="discharge"),
        ],
        "scores": [_score(), _score(ward=None, bed=None, unit=None, partial=True)],
        "alerts": [
            _alert(), _alert(type="news2_emergency", severity="emergency", ward="ICU-MED", bed="4", factors=[]),
            _alert(event="resolved", severity="info", factors=[], alert_id="b" * 32),
            _alert(event="acknowledged", severity="info", score=None, threshold=None, news2=None, raise_at=None,
                   factors=[], ack={"by": "rn-7", "at": ISO, "action": "acknowledged"}, alert_id="c" * 32),
        ],
        "alert-acks": [
            {"alert_id": "a" * 32, "patient": "pt-1", "by": "nurse", "at": ISO, "action": "acknowledged"},
        ],
        "resource-demand": [
            {"v": 1, "ward": "ICU-MED", "resource": "icu_bed", "horizon_h": 12, "expected": 2.4,
             "p_exceed_capacity": 0.07, "intervals": {"0.9": [1, 5]}, "time": ISO},
        ],
        "model-updates": [{"name": "sepsis-mlp", "version": "2", "action": "promote"}],
        "model-drift": [{"v": 1, "model": "sepsis-tcn", "version": "1", "quantity": "Lactate_locf", "psi": 0.31,
                         "level": 0.25, "rows": 20000, "time": ISO}],
        "dead-letter": [
            dead_letter_record(inv, topic="t-vitals", partition=1, offset=5, raw=b"{oops", key=b"pt-1",
                               received_at=0),
            dead_letter_record(inv, topic="t-vitals", partition=1, offset=6, raw=None, key=None,
                               received_at=0),
        ],
    }  # fmt: skip


def test_sample_events_validate_against_their_schemas() -> None:
    for topic, values in _samples().items():
        validator = _validator(topic)
        for value in values:
            doc = orjson.loads(value) if isinstance(value, bytes) else value
            errors = [e.message for e in validator.iter_errors(doc)]
            assert not errors, (topic, errors)


@pytest.mark.parametrize(
    ("topic", "change"),
    [
        ("vitals", {"time": "2026-01-01T05:00:00"}),  # naive
        ("vitals", {"value": True}),
        ("vitals", {"value": "88"}),
        ("vitals", {"seq": -1}),
        ("vitals", {"patient": ""}),
        ("adt", {"kind": "teleport"}),
        ("adt", {"sex": "female"}),
        ("scores", {"risk": 1.5}),
        ("scores", {"news2": {"total": 3, "parts": {"pulse": 4}, "missing": []}}),
        ("alerts", {"type": "vibes"}),
        ("dead-letter", {"reason": "made_up"}),
    ],
)
def test_schemas_reject_bad_values(topic: str, change: dict[str, Any]) -> None:
    doc = _samples()[topic][0]
    doc = dict(orjson.loads(doc) if isinstance(doc, bytes) else doc)
    doc.update(change)
    assert list(_validator(topic).iter_errors(doc))


def test_schemas_name_every_required_field() -> None:
    for topic, values in _samples().items():
        schema = schema_for(topic, STREAMS)
        doc = orjson.loads(values[0]) if isinstance(values[0], bytes) else values[0]
        for field in schema.get("required", []):
            assert field in schema["properties"], (topic, field)
            partial = {k: v for k, v in doc.items() if k != field}
            assert list(_validator(topic).iter_errors(partial)), (topic, field)


def test_docs_page_is_up_to_date(catalog: dict[str, TopicSpec]) -> None:
    page = render_markdown(catalog, STREAMS)
    current = (REPO / "docs" / "topics.md").read_text(encoding="utf-8")
    assert current.rstrip("\n") == page.rstrip("\n"), "docs/topics.md is stale: run `make topics-doc`"
    for name in REQUIRED:
        assert f"## `{name}`" in page
    assert "`news2.parts.pulse`" in page and "`model.version`" in page  # nested fields are listed


def _copy_streams(tmp_path: Path) -> Path:
    dst = tmp_path / "streams"
    shutil.copytree(STREAMS, dst)
    return dst


def _edit(streams: Path, fn: Any) -> None:
    doc = yaml.safe_load((streams / "topics.yaml").read_text())
    fn(doc)
    (streams / "topics.yaml").write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["topics"]["labs"].update(partitions=4), "co-partitioned"),
        (lambda d: d["topics"].pop("dead-letter"), "lacks"),
        (lambda d: d["topics"]["alerts"].update(cleanup_policy="forever"), "cleanup_policy"),
        (lambda d: d["topics"]["alerts"].pop("key"), "missing or bad field"),
        (lambda d: d["topics"]["alerts"].update(schema="schemas/nope.json"), "not found"),
        (lambda d: d["topics"]["alerts"].update(partitions=0), "partitions"),
    ],
)
def test_bad_catalogues_are_refused(tmp_path: Path, edit: Any, match: str) -> None:
    streams = _copy_streams(tmp_path)
    _edit(streams, edit)
    with pytest.raises(ConfigError, match=match):
        load_catalog(streams)


def test_replication_factor_default_is_overridable(tmp_path: Path) -> None:
    streams = _copy_streams(tmp_path)

    def edit(d: dict[str, Any]) -> None:
        d["defaults"]["replication_factor"] = 3
        d["topics"]["dead-letter"]["replication_factor"] = 2

    _edit(streams, edit)
    cat = load_catalog(streams)
    assert cat["vitals"].replication_factor == 3 and cat["dead-letter"].replication_factor == 2


# ------------------------------------------------------------------------------------ against a broker
async def _describe(bootstrap: str, names: list[str]) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        parts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        configs: dict[str, dict[str, str]] = {}
        for r in resp:
            for res in r.resources:
                configs[res[3]] = {e[0]: e[1] for e in res[4]}
        return parts, configs
    finally:
        await admin.close()


@pytest.mark.broker
def test_create_topics_on_the_broker(broker: str, catalog: dict[str, TopicSpec]) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    made = asyncio.run(create_topics({"bootstrap_servers": broker}, catalog, prefix, 3))
    assert made == [prefix + n for n in catalog]
    parts, configs = asyncio.run(_describe(broker, made))
    for name, spec in catalog.items():
        assert parts[prefix + name] == (3 if spec.partitions > 1 else 1), name
    assert len({parts[prefix + n] for n in CO_PARTITIONED}) == 1
    changelog = configs.get(prefix + "worker-state-changelog", {})
    if changelog:  # the broker reports configs (Tansu and Kafka do)
        assert changelog.get("cleanup.policy") == "compact" and changelog.get("retention.ms") == "-1"
        assert configs[prefix + "vitals"].get("retention.ms") == str(catalog["vitals"].retention_ms)
    # idempotent: a second run (e.g. a second worker starting) finds everything in place
    again = asyncio.run(create_topics({"bootstrap_servers": broker}, catalog, prefix, 3))
    assert again == made


@pytest.mark.broker
def test_create_topics_refuses_broken_co_partitioning(broker: str, catalog: dict[str, TopicSpec]) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    asyncio.run(create_topics({"bootstrap_servers": broker}, {"labs": catalog["labs"]}, prefix, 2))
    with pytest.raises(ConfigError, match="co-partitioned"):
        asyncio.run(create_topics({"bootstrap_servers": broker}, catalog, prefix, 3))


class _ConfigRejectingAdmin:
    """Stands in for AIOKafkaAdminClient: rejects topic configs like a locked-down cluster would."""

    calls: list[list[Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.topics: dict[str, int] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def create_topics(self, new: list[Any]) -> Any:
        type(self).calls.append(new)
        errors = []
        for t in new:
            if t.topic_configs:
                errors.append((t.name, 40, "configs not allowed"))
            else:
                self.topics[t.name] = t.num_partitions
                errors.append((t.name, 0, None))

        class Resp:
            topic_errors = errors

        return Resp()

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "partitions": [{}] * self.topics[n]} for n in names if n in self.topics]


def test_rejected_topic_configs_fall_back_to_plain_topics(
    monkeypatch: pytest.MonkeyPatch, catalog: dict[str, TopicSpec], caplog: pytest.LogCaptureFixture
) -> None:
    import aiokafka.admin

    _ConfigRejectingAdmin.calls = []
    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", _ConfigRejectingAdmin)
    made = asyncio.run(create_topics({}, catalog, "x-", replication_factor=3))
    assert made == ["x-" + n for n in catalog]
    first, second = _ConfigRejectingAdmin.calls
    assert all(t.topic_configs for t in first) and not any(t.topic_configs for t in second)
    assert all(t.replication_factor == 3 for t in first)
    assert "rejected topic configs" in caplog.text
