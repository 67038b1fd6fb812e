"""One dataclass per command: defaults, an optional JSON config file, then
command-line overrides. Unknown keys are an error (nanoGPT's check, without
its ``exec``); the resolved configuration is written into the run folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["resolve_config", "config_to_dict"]

T = TypeVar("T")


def _coerce(cls: type, name: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}' must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{name}' must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"config key '{name}' must be a string, got {value!r}")
    return value


def resolve_config(cls: type[T], config_file: str | Path | None = None, **overrides: Any) -> T:
    """``cls`` defaults < ``config_file`` < non-None ``overrides``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file is not None:
        p = Path(config_file)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist or is not a file")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a JSON object")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"config file {p} has unknown key(s) {unknown}; allowed: {sorted(fields)}")
        values.update(data)
    for k, v in overrides.items():
        if k not in fields:
            raise ConfigError(f"unknown option '{k}' for {cls.__name__}")
        if v is not None:
            values[k] = v
    out = {}
    for k, v in values.items():
        f = fields[k]
        default = f.default if f.default is not dataclasses.MISSING else None
        out[k] = _coerce(cls, k, v, default)
    try:
        return cls(**out)
    except TypeError as e:
        raise ConfigError(f"incomplete configuration for {cls.__name__}: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
