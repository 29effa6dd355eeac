"""Typed configs: dataclasses whose defaults reproduce a paper's recipe, plus named presets.

A plugin class declares ``config_class`` (a dataclass) and ``presets`` (name ->
overrides). ``full`` is always the dataclass defaults; ``tiny`` is the small
configuration the tests and the offline benchmark use.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import types
import typing
from typing import Any, Mapping

from .errors import ConfigError

log = logging.getLogger(__name__)

# Old config key -> current key, for every plugin config (old checkpoints and command lines keep working).
# ``pretrained`` is the one weights key across detectors.
DEPRECATED_KEYS: dict[str, str] = {
    "imagenet_weights": "pretrained",
    "clip_pretrained": "pretrained",
    "lr_step_every": "lr_decay_every",
    "lr_step_gamma": "lr_decay",
}


def _renamed(values: Mapping[str, Any], fields: set[str], config_class: type) -> dict[str, Any]:
    """``values`` with deprecated keys renamed to their current names (a warning for each)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        new = DEPRECATED_KEYS.get(key)
        if key not in fields and new in fields:
            log.warning("config key %r of %s is deprecated; use %r", key, config_class.__name__, new)
            out.setdefault(new, value)
            continue
        out[key] = value
    return out


def _unknown_key_message(unknown: list[str], fields: set[str], config_class: type) -> str:
    """One line naming the unknown keys, the close known one for each (did you mean), and the known keys."""
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r}: did you mean {close[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return (f"unknown config key(s) {', '.join(unknown)} for {config_class.__name__}{hint}; "
            f"known keys: {', '.join(sorted(fields))}")


@dataclasses.dataclass
class EmptyConfig:
    """Config of a plugin that has no options."""


POSITIVE_KEYS = frozenset({"epochs", "batch_size", "lr", "top_k"})
"""Hyper-parameters that mean nothing at zero or below, whatever plugin's config holds them."""


def validate_config(config: Any) -> None:
    """Refuse non-finite floats, non-positive :data:`POSITIVE_KEYS` and values outside a field's declared range."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not math.isfinite(item):
                raise ConfigError(f"config key {field.name!r}: {item!r} is not a finite number")
            positive = field.name in POSITIVE_KEYS or field.name.endswith("temperature")
            if positive and item <= 0:
                raise ConfigError(f"config key {field.name!r}: must be above 0, not {item!r}")
            low, high = field.metadata.get("min"), field.metadata.get("max")
            if (low is not None and item < low) or (high is not None and item > high):
                raise ConfigError(f"config key {field.name!r}: {item!r} is outside [{low}, {high}]")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a value given as a string on the command line (or from JSON) to the field's type."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, Any)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], key) if len(args) == 1 else value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, key) for v in value]
        return tuple(items) if origin is tuple else items
    if not isinstance(value, str):
        if annotation is float and isinstance(value, int):
            return float(value)
        return value
    try:
        if annotation is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float):
            return annotation(value)
    except ValueError:
        raise ConfigError(f"config key {key!r}: {value!r} is not a valid {annotation.__name__}") from None
    return value


def build_config(config_class: type, presets: Mapping[str, Mapping[str, Any]], preset: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Any:
    """Instantiate ``config_class`` from a preset name plus key=value overrides.

    Unknown presets and unknown keys raise :class:`ConfigError` naming the known
    ones, so a typo never silently falls back to a default.
    """
    values: dict[str, Any] = {}
    if preset not in (None, "full"):
        if preset not in presets:
            known = ", ".join(["full", *presets])
            raise ConfigError(f"unknown preset {preset!r}; known presets: {known}")
        values.update(presets[preset])
    fields = {f.name for f in dataclasses.fields(config_class)}
    values.update(_renamed(overrides or {}, fields, config_class))
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(_unknown_key_message(unknown, fields, config_class))
    coerced = {k: _coerce(v, hints.get(k, Any), k) for k, v in values.items()}
    config = config_class(**coerced)
    validate_config(config)
    return config


def config_from_dict(config_class: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a config saved with :func:`config_to_dict` (e.g. from a checkpoint).

    A key the saved config lacks takes the value the class lists for it in ``legacy_values`` (a
    ``ClassVar`` mapping: the value that reproduces what was saved before the key existed), else the
    current default. Why: a field added with a default that changes the model (a new layer) would
    otherwise make every older checkpoint build a model its weights do not fit.
    """
    legacy = {k: v for k, v in getattr(config_class, "legacy_values", {}).items() if k not in data}
    return build_config(config_class, {}, None, {**legacy, **data})


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
