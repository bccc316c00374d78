"""The topic catalogue (``streams/topics.yaml`` + JSON Schemas): load it, create the topics, render docs.

The catalogue is data: every topic's partitions, replication factor, key, value schema, cleanup policy,
retention, producers and consumers. ``vitals``, ``labs``, ``adt`` and ``worker-state-changelog`` are
co-partitioned by patient (:data:`CO_PARTITIONED`): :func:`load_catalog` refuses a catalogue in which their
partition counts differ, and :func:`create_topics` refuses a cluster in which they already do.

>>> from vigil.config import REPO_ROOT
>>> cat = load_catalog(REPO_ROOT / "streams")
>>> cat["vitals"].partitions == cat["labs"].partitions == cat["adt"].partitions
True
>>> cat["worker-state-changelog"].cleanup_policy
'compact'
>>> schema_for("adt", REPO_ROOT / "streams")["properties"]["kind"]["enum"]
['admit', 'transfer', 'discharge']
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.errors import ConfigError

__all__ = [
    "TopicSpec", "load_catalog", "schema_for", "create_topics", "render_markdown", "REQUIRED",
    "CO_PARTITIONED",
]  # fmt: skip

log = logging.getLogger(__name__)

REQUIRED = ("vitals", "labs", "adt", "scores", "alerts", "alert-acks", "resource-demand", "model-updates",
            "dead-letter", "worker-state-changelog")  # fmt: skip
CO_PARTITIONED = ("vitals", "labs", "adt", "alert-acks", "worker-state-changelog")
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")

# Kafka protocol error codes create_topics handles.
_TOPIC_ALREADY_EXISTS = 36
_INVALID_CONFIG = 40
_POLICY_VIOLATION = 44
_UNSUPPORTED_CONFIG = (_INVALID_CONFIG, _POLICY_VIOLATION)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One catalogue topic (broker-side name = configured prefix + ``name``)."""

    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str  # delete | compact
    retention_ms: int  # -1 = forever
    key: str  # what the Kafka key is
    schema_file: str  # relative to the streams directory
    description: str
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()

    def topic_configs(self) -> dict[str, str]:
        """Broker topic configs to create the topic with."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


CONTROL_SCHEMAS = ("schemas/watermark.schema.json",)  # control records on the input topics (vigil.punctuate)


def load_catalog(streams_dir: Path) -> dict[str, TopicSpec]:
    """Read and validate ``streams_dir/topics.yaml``; raises :class:`ConfigError` naming what is wrong."""
    import yaml

    streams_dir = Path(streams_dir)
    path = streams_dir / "topics.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read the topic catalogue {path}: {exc}"
        raise ConfigError(msg) from exc
    defaults = doc.get("defaults") or {}
    cat: dict[str, TopicSpec] = {}
    for name, t in (doc.get("topics") or {}).items():
        t = {**defaults, **(t or {})}
        try:
            spec = TopicSpec(
                name=str(name), partitions=int(t["partitions"]),
                replication_factor=int(t.get("replication_factor", 1)),
                cleanup_policy=str(t["cleanup_policy"]),
                retention_ms=int(t["retention_ms"]), key=str(t["key"]), schema_file=str(t["schema"]),
                description=str(t["description"]), producers=tuple(map(str, t.get("producers") or ())),
                consumers=tuple(map(str, t.get("consumers") or ())),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"{path}: topic {name!r}: missing or bad field {exc}"
            raise ConfigError(msg) from exc
        if spec.partitions < 1 or spec.replication_factor < 1:
            msg = f"{path}: topic {name!r} needs partitions >= 1 and replication_factor >= 1"
            raise ConfigError(msg)
        if spec.cleanup_policy not in CLEANUP_POLICIES:
            msg = f"{path}: topic {name!r}: cleanup_policy {spec.cleanup_policy!r} not in {CLEANUP_POLICIES}"
            raise ConfigError(msg)
        if not (streams_dir / spec.schema_file).is_file():
            msg = f"{path}: topic {name!r}: schema file {spec.schema_file} not found"
            raise ConfigError(msg)
        cat[spec.name] = spec
    missing = [n for n in REQUIRED if n not in cat]
    if missing:
        msg = f"{path} lacks the topics {missing}"
        raise ConfigError(msg)
    counts = {n: cat[n].partitions for n in CO_PARTITIONED}
    if len(set(counts.values())) != 1:
        msg = f"{path}: co-partitioned topics must have one partition count (keyed by patient), got {counts}"
        raise ConfigError(msg)
    return cat


def schema_for(name: str, streams_dir: Path) -> dict[str, Any]:
    """The JSON Schema (a dict) of topic ``name``'s values."""
    spec = load_catalog(streams_dir)[name]
    schema: dict[str, Any] = json.loads((Path(streams_dir) / spec.schema_file).read_text(encoding="utf-8"))
    return schema


def _partitions(spec: TopicSpec, override: int | None) -> int:
    # The override (tests, small clusters) applies to the partitioned topics only; single-partition topics
    # (model-updates, resource-demand, dead-letter) stay at 1 — they are single on purpose (ordering).
    return override if override is not None and spec.partitions > 1 else spec.partitions


async def create_topics(
    admin_client_kwargs: dict[str, Any],
    catalog: dict[str, TopicSpec],
    prefix: str = "",
    partitions_override: int | None = None,
    *,
    replication_factor: int | None = None,
) -> list[str]:
    """Create every catalogue topic as ``prefix + name``; return the broker-side names.

    Idempotent: topics that already exist are left as they are (a co-partitioned topic whose partition count
    differs from its siblings' raises :class:`ConfigError`; other differences are logged). Topic configs
    (``cleanup.policy``, ``retention.ms``) are sent at creation; a broker that rejects them (INVALID_CONFIG or
    POLICY_VIOLATION) gets the topic without configs and a warning. ``partitions_override`` replaces the
    count of every multi-partition topic (co-partitioning is kept); ``replication_factor`` replaces the
    catalogue's (e.g. 3 on a production cluster).
    """
    from aiokafka.admin import NewTopic

    from vigil.kafka_io import admin as admin_client

    if partitions_override is not None and partitions_override < 1:
        msg = f"partitions_override must be >= 1, got {partitions_override}"
        raise ConfigError(msg)
    admin = admin_client(admin_client_kwargs)
    await admin.start()
    try:
        names = {prefix + spec.name: spec for spec in catalog.values()}
        existing = set(await admin.list_topics())

        def new_topic(name: str, configs: bool) -> Any:
            spec = names[name]
            return NewTopic(
                name, num_partitions=_partitions(spec, partitions_override),
                replication_factor=replication_factor or spec.replication_factor,
                topic_configs=spec.topic_configs() if configs else {},
            )  # fmt: skip

        todo = [n for n in names if n not in existing]
        if todo:
            errors = await _create(admin, [new_topic(n, True) for n in todo])
            retry = [n for n, (code, _) in errors.items() if code in _UNSUPPORTED_CONFIG]
            if retry:
                why = "; ".join(f"{errors[n][0]}: {errors[n][1]}" for n in retry)
                log.warning("broker rejected topic configs for %s (%s); creating them without configs",
                            ", ".join(retry), why)  # fmt: skip
                errors = {n: e for n, e in errors.items() if n not in retry}
                errors.update(await _create(admin, [new_topic(n, False) for n in retry]))
            if errors:
                msg = "create_topics failed: " + "; ".join(
                    f"{n}: error {c} {m}" for n, (c, m) in errors.items()
                )
                raise ConfigError(msg)
        await _check_partitions(admin, names, prefix, partitions_override)
        log.info("topics ready: %s", ", ".join(names))
        return list(names)
    finally:
        await admin.close()


async def _create(admin: Any, topics: list[Any]) -> dict[str, tuple[int, str | None]]:
    """Send one CreateTopics request; return the per-topic errors (already-exists is not an error)."""
    from aiokafka.errors import TopicAlreadyExistsError

    try:
        resp = await admin.create_topics(topics)
    except TopicAlreadyExistsError:  # raised by some aiokafka versions instead of a per-topic code
        return {}
    out: dict[str, tuple[int, str | None]] = {}
    for err in resp.topic_errors:
        name, code = err[0], err[1]
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            out[name] = (code, err[2] if len(err) > 2 else None)
    return out


async def _check_partitions(
    admin: Any, names: dict[str, TopicSpec], prefix: str, override: int | None
) -> None:
    described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(list(names))}
    for name, spec in names.items():
        want, got = _partitions(spec, override), described.get(name)
        if got and got != want:
            log.warning("topic %s exists with %d partitions, the catalogue says %d", name, got, want)
    co = {prefix + n: described.get(prefix + n) for n in CO_PARTITIONED if prefix + n in names}
    if len({c for c in co.values() if c}) > 1:
        msg = f"co-partitioned topics differ in partition count on the broker: {co}; recreate them"
        raise ConfigError(msg)


# ------------------------------------------------------------------------------------------------ docs
def _fmt_retention(ms: int) -> str:
    if ms < 0:
        return "forever"
    days = ms / 86_400_000
    return f"{days:g} d" if days >= 1 else f"{ms / 3_600_000:g} h"


def _type(p: dict[str, Any]) -> str:
    if "const" in p:
        return f"const {json.dumps(p['const'])}"
    if "enum" in p:
        return "one of " + ", ".join(f"`{e}`" for e in p["enum"])
    raw = p.get("type", "any")
    typ = " or ".join(map(str, raw)) if isinstance(raw, list) else str(raw)
    if p.get("format"):
        typ += f" ({p['format']})"
    if typ == "array" and "items" in p:
        typ = f"array of {_type(p['items'])}"
    lo, hi = p.get("minimum"), p.get("maximum")
    if lo is not None and hi is not None:
        typ += f" [{lo}, {hi}]"
    elif lo is not None:
        typ += f" >= {lo}"
    elif hi is not None:
        typ += f" <= {hi}"
    return typ


def _fields(props: dict[str, Any], required: set[str], prefix: str = "") -> list[str]:
    rows = []
    for field, p in props.items():
        desc = str(p.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{prefix}{field}` | {_type(p)} | {'yes' if field in required else ''} | {desc} |")
        if isinstance(p.get("properties"), dict):
            rows += _fields(p["properties"], set(p.get("required", ())), f"{prefix}{field}.")
    return rows


def render_markdown(catalog: dict[str, TopicSpec], streams_dir: Path) -> str:
    """The catalogue as a Markdown page (``docs/topics.md``): a table of topics, then each value schema."""
    lines = [
        "# Topic catalogue",
        "",
        "<!-- Generated from streams/topics.yaml and streams/schemas/ by `make topics-doc`"
        " (`vigil topics docs`); do not edit by hand. -->",
        "",
        "Topic names get the configured prefix (`VIGIL_TOPIC_PREFIX`). Values are UTF-8 JSON unless stated;"
        " unknown extra fields are ignored by consumers. Times are ISO 8601 with a UTC offset.",
        f"`{'`, `'.join(CO_PARTITIONED)}` are co-partitioned by patient: they always have the same partition"
        " count. `vigil topics create` creates every topic (idempotent) with `cleanup.policy` and"
        " `retention.ms`; the embedded Tansu broker accepts and stores these configs (and does not validate"
        " them).",
        "",
        "| topic | partitions | replication | key | cleanup | retention | description |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for s in catalog.values():
        lines.append(f"| `{s.name}` | {s.partitions} | {s.replication_factor} | {s.key} | {s.cleanup_policy}"
                     f" | {_fmt_retention(s.retention_ms)} | {s.description} |")  # fmt: skip
    for s in catalog.values():
        schema = json.loads((Path(streams_dir) / s.schema_file).read_text(encoding="utf-8"))
        lines += [
            "",
            f"## `{s.name}`",
            "",
            f"**{schema.get('title', s.name)}.** {schema.get('description', '')}",
            "",
        ]
        lines += [f"Schema: `streams/{s.schema_file}`. Key: {s.key}.", ""]
        if s.producers or s.consumers:
            lines += [
                f"Producers: {', '.join(s.producers) or '-'}. Consumers: {', '.join(s.consumers) or '-'}.",
                "",
            ]
        props = schema.get("properties")
        if props:
            lines += ["| field | type | required | description |", "|---|---|---|---|"]
            lines += _fields(props, set(schema.get("required", ())))
    for name in CONTROL_SCHEMAS:  # records that share a topic with events but are not events
        schema = json.loads((Path(streams_dir) / name).read_text(encoding="utf-8"))
        lines += ["", f"## Control record: {schema.get('title', name)}", "", schema.get("description", ""), "",
                  f"Schema: `streams/{name}`.", "", "| field | type | required | description |", "|---|---|---|---|"]
        lines += _fields(schema.get("properties", {}), set(schema.get("required", ())))
    return "\n".join(lines).rstrip() + "\n"
