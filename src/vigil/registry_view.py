"""How ``vigil models list`` and ``vigil models show`` present a version: its card, read through
:class:`vigil.card.ModelCard` (:attr:`vigil.registry.ModelRef.model_card`)."""

from __future__ import annotations

from typing import Any

from vigil.card import CARD_FILE, ModelCard
from vigil.registry import ModelRef

__all__ = ["summary_row", "describe_card"]


def summary_row(ref: ModelRef, serving: bool) -> dict[str, Any]:
    """One line of ``vigil models list``: identity, family, threshold and the card's split metrics.

    >>> from vigil.config import REPO_ROOT
    >>> from vigil.registry import Registry
    >>> row = summary_row(Registry(REPO_ROOT / "models").get("sepsis-mlp:1"), serving=True)
    >>> row["name"], row["version"], row["serving"], 0 < row["threshold"] < 1
    ('sepsis-mlp', '1', True, True)
    """
    card = ref.model_card
    metrics = card.metrics

    def split(name: str) -> dict[str, float | None]:
        m = metrics.get(name) or {}
        return {"utility": m.get("utility"), "auroc": m.get("auroc")}

    return {
        "name": ref.name, "version": ref.version, "serving": serving, "created_at": card.created_at,
        "family": _family(card), "threshold": ref.threshold, "validation": split("validation"),
        "test": split("test"),
    }  # fmt: skip


def _family(card: ModelCard) -> str:
    """``training.family``, else the architecture's layer chain in short (``Dense64-Dense32-Dense1``)."""
    training = card.training
    if training.get("family"):
        return str(training["family"])
    layers = [part.split()[0] for part in str(training.get("architecture") or "").split(";")[0].split("->")
              if part.strip()]  # fmt: skip
    short = "-".join(x for x in layers if x not in ("Normalization", "Dropout")) or "-"
    return short if len(short) <= 24 else short[:23] + "~"


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "-" if x is None else str(x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _wrap(label: str, text: Any) -> list[str]:
    import textwrap

    if not text:
        return []
    return textwrap.wrap(f"{label}: {text}", width=100, subsequent_indent="    ")


def _tree(obj: Any, indent: str = "  ", depth: int = 0) -> list[str]:
    """Nested card sections (e.g. ``evaluation``) as indented ``key: value`` lines."""
    if depth > 4:
        return [f"{indent}..."]
    lines: list[str] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, val in items:
        if isinstance(val, dict | list) and any(isinstance(v, dict | list) for v in _values(val)):
            lines += [f"{indent}{key}:", *_tree(val, indent + "  ", depth + 1)]
        elif isinstance(val, dict):
            lines.append(f"{indent}{key}: " + ", ".join(f"{k} {_num(v)}" for k, v in val.items()))
        elif isinstance(val, list):
            lines.append(f"{indent}{key}: " + ", ".join(_num(v) for v in val))
        else:
            lines.append(f"{indent}{key}: {_num(val)}")
    return lines


def _values(obj: dict[str, Any] | list[Any]) -> list[Any]:
    return list(obj.values()) if isinstance(obj, dict) else list(obj)


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    """Headline, alert burden, subgroups and comparators of each evaluated split (``card.evaluation``);
    a block in another layout is printed as a tree."""
    lines: list[str] = []
    for split, ev in evaluation.items():
        if not (isinstance(ev, dict) and isinstance(ev.get("model"), dict)):
            lines += [f"  {split}:", *(_tree(ev, "    ") if isinstance(ev, dict | list) else [f"    {ev}"])]
            continue
        d, m = ev.get("data") or {}, ev["model"]
        al = (ev.get("alerting") or {}).get("model_risk") or {}
        lead = al.get("lead_time_h") or {}
        lines += [
            f"  {split}: {d.get('file', '-')}, split {d.get('split', '-')}: {d.get('stays', '-')} stays, "
            f"{d.get('rows', '-')} rows, {d.get('septic_stays', '-')} septic (evaluated {ev.get('evaluated_at', '-')})",
            f"    model: AUROC {_num(m.get('auroc'))}, AUPRC {_num(m.get('auprc'))}, utility {_num(m.get('utility'))}"
            f", Brier {_num(m.get('brier'))}, ECE {_num((m.get('calibration') or {}).get('ece'))}",
            f"    alerts: {_num(al.get('alerts_per_patient_day'), 2)} per patient-day, septic stays alerted early "
            f"{_num(al.get('share_septic_alerted_early'), 2)}, median lead {_num(lead.get('median'), 1)} h, "
            f"stay PPV {_num(al.get('ppv_stay'), 2)}",
        ]
        lines += _subgroup_lines(ev.get("subgroups") or {})
        for name, comp in (ev.get("comparators") or {}).items():
            if isinstance(comp, dict):
                burden = (comp.get("alerting") or {}).get("alerts_per_patient_day")
                lines.append(f"    comparator {name}: AUROC {_num(comp.get('auroc'))}, utility "
                             f"{_num(comp.get('utility'))}, {_num(burden, 2)} alerts per patient-day")  # fmt: skip
        lines += [f"    note: {n}" for n in ev.get("notes") or []]
    return lines


def _subgroup_lines(subgroups: dict[str, Any]) -> list[str]:
    cols = ("stays", "septic_stays", "auroc", "utility", "alerts_per_patient_day", "share_septic_alerted_early")
    heads = ("stays", "septic", "AUROC", "utility", "alerts/day", "early")
    rows = [(f"{by} {group}", vals) for by, groups in subgroups.items() if isinstance(groups, dict)
            for group, vals in groups.items() if isinstance(vals, dict)]  # fmt: skip
    if not rows:
        return []
    out = ["    subgroups:      " + "".join(f"{h:>11}" for h in heads)]
    out += [f"      {label:<14}" + "".join(f"{_num(v.get(c)):>11}" for c in cols) for label, v in rows]
    return out


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    cols = ("utility", "auroc", "auprc", "alert_rate", "rows", "stays", "positive_rows")
    lines = ["metrics:     " + "".join(f"{c:>14}" for c in cols)]
    for split, m in metrics.items():
        if isinstance(m, dict):
            lines.append(f"  {split:<11}" + "".join(f"{_num(m.get(c)):>14}" for c in cols))
    return lines


def describe_card(ref: ModelRef, serving: bool = False) -> str:
    """A readable summary of a model card (``vigil models show``).

    >>> from vigil.config import REPO_ROOT
    >>> from vigil.registry import Registry
    >>> text = describe_card(Registry(REPO_ROOT / "models").get("sepsis-mlp:1"))
    >>> "threshold: 0.58" in text and "feature schema:" in text and "limitations:" in text
    True
    """
    c = ref.model_card
    tr, fs, split = c.training, c.feature_schema, c.training.get("split") or {}
    size = ref.onnx_path.stat().st_size if ref.onnx_path.exists() else 0
    lines = [
        f"{ref.name}:{ref.version}" + ("  (serving)" if serving else ""),
        f"files: {ref.onnx_path} ({size / 1024:.0f} KiB), {ref.path / CARD_FILE}",
        f"created: {_or(c.created_at)}",
        *_wrap("task", c.task),
        *_wrap("data", f"{tr.get('data', '-')} (file {tr.get('source_file', '-')})"),
        f"split: by {split.get('by', '-')}, seed {split.get('seed', '-')}: train {split.get('train', '-')} / "
        f"validation {split.get('validation', '-')} / test {split.get('test', '-')} stays",
        f"family: {_family(c)}",
        *_wrap("architecture", tr.get("architecture")),
        f"feature schema: {len(fs.names)} features ({_or(fs.featurizer)}, window {_or(fs.window_h)} h), {fs.hash}",
    ]
    if c.sequence_schema is not None:
        sq = c.sequence_schema
        lines.append(f"sequence schema: {len(sq.names)} x {sq.window_h} h, {sq.hash}")
    lines.append(f"threshold: {ref.threshold:g} ({_or(c.threshold_rule, 'rule not recorded')})")
    lines += _metrics_table(c.metrics)
    if c.evaluation:
        lines += ["evaluation (vigil evaluate):", *_evaluation_lines(c.evaluation)]
    lines += [*_wrap("intended use", c.intended_use), *_wrap("limitations", c.limitations)]
    parity = c.parity
    if parity:
        engine = str(parity.get("reference") or "keras")
        diff = parity.get("max_abs_diff", parity.get(f"{engine}_vs_onnx_max_abs_diff"))
        shown = f"{diff:.3g}" if isinstance(diff, int | float) else "-"
        label = "Keras" if engine == "keras" else "LightGBM" if engine == "lightgbm" else engine
        lines.append(f"parity: {label} vs ONNX max |diff| {shown} on {parity.get('rows', '-')} rows")
    if c.canary is not None:
        lines.append(f"canary: {len(c.canary.probabilities)} probabilities recorded "
                     f"(tolerance {c.canary.tolerance})")  # fmt: skip
    if c.provenance:
        lines.append("provenance: " + ", ".join(f"{k} {v}" for k, v in c.provenance.items()))
    return "\n".join(lines)


def _or(value: Any, missing: str = "-") -> Any:
    """``value``, or ``missing`` when the card does not record it."""
    return missing if value is None else value
