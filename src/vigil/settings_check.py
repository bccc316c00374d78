"""Settings that refuse mistakes: every key of a settings file, every ``VIGIL_*`` environment variable and
every override must name a declared field, else :func:`unknown_keys` reports its full path and the nearest
valid name (difflib). Works for any declared field of any nested model (models, ``X | None``, ``dict[str, M]``
and ``list[M]`` are followed); free-form ``dict[str, Any]`` values are not checked.

>>> from vigil.config import Settings
>>> unknown_keys({"alerts": {"model_risk": {"raise_att": 0.9}}}, Settings)
['alerts.model_risk.raise_att (did you mean alerts.model_risk.raise_at?)']
>>> unknown_keys({"demand": {"resources": [{"name": "x", "ned": "sepsis_onset"}]}}, Settings)
['demand.resources[0].ned (did you mean demand.resources[0].need?)']
>>> unknown_keys({"scorng": {}}, Settings)
['scorng (did you mean scoring?)']
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["unknown_keys", "unknown_env", "nearest", "ENV_NOT_SETTINGS"]

# VIGIL_* environment variables that are not settings fields (read elsewhere, by name).
ENV_NOT_SETTINGS = frozenset({"VIGIL_CONFIG", "VIGIL_TRAIN_DATA", "VIGIL_DASHBOARD_PNG_DIR"})


def nearest(name: str, candidates: typing.Iterable[str]) -> str | None:
    """The closest candidate to ``name`` (case-insensitive), or None when nothing is close."""
    cands = list(candidates)
    lower = {c.lower(): c for c in cands}
    hit = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return lower[hit[0]] if hit else None


def _models_in(annotation: Any) -> tuple[str, Any] | None:
    """What a field's annotation holds: ("model", M), ("dict", V) or ("list", V); None = a leaf."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _models_in(arg)
            if found is not None:
                return found
        return None
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        args = typing.get_args(annotation)
        return ("dict", args[1]) if len(args) == 2 else None
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return ("list", args[0]) if args else None
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(value: Any, annotation: Any, path: str, out: list[str]) -> None:
    kind = _models_in(annotation)
    if kind is None:
        return
    what, inner = kind
    if what == "model":
        if isinstance(value, Mapping):
            _walk_model(value, inner, path, out)
    elif what == "dict" and isinstance(value, Mapping):
        for k, v in value.items():
            _walk(v, inner, _join(path, str(k)), out)
    elif what == "list" and isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _walk(v, inner, f"{path}[{i}]", out)


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    """Accepted input key -> field name (names and aliases)."""
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name] = name
        if isinstance(field.alias, str):
            names[field.alias] = name
    return names


def _walk_model(data: Mapping[str, Any], model: type[BaseModel], path: str, out: list[str]) -> None:
    if model.model_config.get("extra") == "allow":
        return
    names = _field_names(model)
    lowered = {k.lower(): v for k, v in names.items()}
    for key, value in data.items():
        skey = str(key)
        field = names.get(skey) or lowered.get(skey.lower())
        if field is None:
            hint = nearest(skey, model.model_fields)
            out.append(_join(path, skey) + (f" (did you mean {_join(path, hint)}?)" if hint else ""))
            continue
        _walk(value, model.model_fields[field].annotation, _join(path, field), out)


def unknown_keys(data: Mapping[str, Any], model: type[BaseModel], path: str = "") -> list[str]:
    """Every key of ``data`` (nested) that ``model`` does not declare: ``path (did you mean path?)``."""
    out: list[str] = []
    _walk_model(data, model, path, out)
    return out


def unknown_env(environ: Mapping[str, str], model: type[BaseModel], prefix: str = "VIGIL_",
                delimiter: str = "__") -> list[str]:  # fmt: skip
    """Every ``VIGIL_*`` variable that names no setting: ``VIGIL_X__Y: x.y (did you mean x.z?)``.

    Names are case-insensitive (as pydantic-settings reads them); a JSON value of a model field is
    checked too."""
    out: list[str] = []
    for var, raw in sorted(environ.items()):
        if not var.upper().startswith(prefix) or var.upper() in ENV_NOT_SETTINGS:
            continue
        parts = var[len(prefix):].lower().split(delimiter)
        if not parts or not parts[0]:
            out.append(f"{var}: not a setting")
            continue
        data: Any = _parse(raw)
        for part in reversed(parts):
            data = {part: data}
        out.extend(f"{var}: {msg}" for msg in unknown_keys(data, model))
    return out


def _parse(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, dict | list) else raw
