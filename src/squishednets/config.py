"""Configuration as composed, frozen dataclasses: one place for each default.

Every option is a dataclass field declared with :func:`option`, which carries
its help text and whether a resumed run must match it (``resume``). A command
composes the configurations of the stages it runs (``RunConfig`` holds the
ancestor's ``TrainConfig``, an ``EvolveConfig`` with its own ``TrainConfig``
and a ``BenchConfig``), and its command-line options are generated from those
fields (:func:`add_options`), so help, defaults and validation live once.

Values are resolved in one order (timm's ``--config`` then ``args.yaml``,
with nanoGPT's unknown-key check and none of its ``exec``): the dataclass
defaults < ``--config FILE`` (JSON, nested like the dataclasses) < a preset
(a configuration value; what it changes from the defaults applies) <
explicit flags. "Off" is ``None`` (``off`` on the command line), never 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .io import read_json_object

__all__ = ["option", "to_dict", "from_dict", "changes", "apply", "resolve", "add_options", "resume_diff",
           "flag_values", "OFF"]

T = TypeVar("T")
OFF = ("off", "none")


class _Off:
    """What ``--flag off`` parses to: argparse's ``None`` already means "not given"."""

    def __repr__(self) -> str:
        return "off"


_OFF = _Off()


def option(default: Any = dataclasses.MISSING, *, help: str, resume: bool = True,
           default_factory: Any = dataclasses.MISSING, choices: tuple[str, ...] | None = None) -> Any:
    """A configuration field: ``help`` for ``--help``; ``resume=False`` for
    settings a resumed run may change (threads, device, caches)."""
    meta = {"help": help, "resume": resume, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _is_config(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"'{name}' cannot be off (null); give a value")
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{name}' must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{name}' must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{name}' must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{name}' must be a string, got {value!r}")
        return value
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{name}' must be a list, got {value!r}")
        return tuple(value)
    return value


def from_dict(cls: type[T], d: dict[str, Any], where: str = "configuration") -> T:
    """Build ``cls`` from a nested dict; unknown keys are an error, missing keys take the defaults."""
    return apply(cls(), d, where)


def apply(cfg: T, updates: dict[str, Any], where: str = "configuration", _prefix: str = "") -> T:
    """``cfg`` with the nested ``updates`` applied (unknown keys are an error)."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: '{_prefix.rstrip('.') or 'the top level'}' must be a JSON object")
    cls = type(cfg)
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(updates) - fields)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {[_prefix + k for k in unknown]}; "
                          f"allowed: {sorted(_prefix + k for k in fields)}")
    new: dict[str, Any] = {}
    for k, v in updates.items():
        tp = hints[k]
        if _is_config(tp):
            new[k] = apply(getattr(cfg, k), v, where, f"{_prefix}{k}.")
        else:
            new[k] = _coerce(_prefix + k, tp, v)
    try:
        return dataclasses.replace(cfg, **new)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def changes(base: Any, value: Any) -> dict[str, Any]:
    """The nested fields where ``value`` differs from ``base`` (a preset's effect)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        a, b = getattr(base, f.name), getattr(value, f.name)
        if dataclasses.is_dataclass(a):
            sub = changes(a, b)
            if sub:
                out[f.name] = sub
        elif a != b:
            out[f.name] = to_dict(value)[f.name] if dataclasses.is_dataclass(b) else b
    return out


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist or is not a file")
    return read_json_object(p, ConfigError, "write the configuration as one JSON object, nested like the options")


def resolve(cls: type[T], config_file: str | Path | None = None, preset: T | None = None,
            flags: dict[str, Any] | None = None) -> T:
    """Defaults < ``config_file`` < ``preset`` (its changes from the defaults) < ``flags`` (nested dict)."""
    cfg = cls()
    if config_file is not None:
        cfg = apply(cfg, _read_file(config_file), f"config file {config_file}")
    if preset is not None:
        cfg = apply(cfg, changes(cls(), preset), "the preset")
    if flags:
        cfg = apply(cfg, flags, "the command line")
    return cfg


def resume_diff(cls: type, old: dict[str, Any], new: Any, _prefix: str = "") -> list[str]:
    """Dotted names of the fields that a resumed run must match and that differ."""
    diff = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = _prefix + f.name
        value = getattr(new, f.name)
        if _is_config(hints[f.name]):
            diff += resume_diff(hints[f.name], old.get(f.name) or {}, value, name + ".")
        elif f.metadata.get("resume", True):
            plain = list(value) if isinstance(value, tuple) else value
            # An option added after the folder was written counts as its default there.
            stored = old[f.name] if f.name in old else _plain_default(f)
            if stored != plain:
                diff.append(name)
    return diff


def _plain_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:
        d = f.default_factory()
    else:
        return dataclasses.MISSING
    return list(d) if isinstance(d, tuple) else d


# -- command-line options generated from the fields ------------------------------------
def _parse(tp: Any, name: str):
    base, optional = _base_type(tp)

    def parse(text: str) -> Any:
        if optional and text.lower() in OFF:
            return _OFF
        try:
            if typing.get_origin(base) is tuple:
                item = typing.get_args(base)[0]
                return tuple(item(x) for x in text.split(",") if x)
            return base(text)
        except ValueError:
            off = " or 'off'" if optional else ""
            raise argparse.ArgumentTypeError(f"--{name} takes {base.__name__}{off}, got '{text}'") from None
    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def _walk(cls: type, path: tuple[str, ...] = ()):
    """(dotted path, field, type) for every leaf option of ``cls``."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_config(hints[f.name]):
            yield from _walk(hints[f.name], path + (f.name,))
        else:
            yield path + (f.name,), f, hints[f.name]


def _default_at(cfg: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        cfg = getattr(cfg, p)
    return cfg


def add_options(parser: argparse.ArgumentParser, cls: type, defaults: Any = None,
                aliases: dict[str, tuple[str, ...]] | None = None, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per leaf field (nested fields as ``--stage-field``) plus
    ``aliases`` (flag name -> dotted paths it sets together). Help shows the
    default of ``defaults`` (the command's configuration, e.g. a preset's base)."""
    defaults = defaults if defaults is not None else cls()
    dests: dict[str, tuple[str, ...]] = {}
    fields_by_path = {".".join(p): (f, tp) for p, f, tp in _walk(cls)}
    for name, targets in (aliases or {}).items():
        f, tp = fields_by_path[targets[0]]
        shown = ", ".join(targets)
        _add_flag(parser, name, f, tp, _default_at(defaults, tuple(targets[0].split("."))),
                  f"{f.metadata.get('help', '')} [sets {shown}]")
        dests[name.replace("-", "_")] = targets
    taken = {n.replace("-", "_") for n in (aliases or {})}
    for path, f, tp in _walk(cls):
        dotted = ".".join(path)
        name = "-".join(p.replace("_", "-") for p in path)
        if dotted in skip or name.replace("-", "_") in taken:
            continue
        _add_flag(parser, name, f, tp, _default_at(defaults, path), f.metadata.get("help", ""))
        dests[name.replace("-", "_")] = (dotted,)
    parser.set_defaults(_option_paths=dests)


def _add_flag(parser: argparse.ArgumentParser, name: str, f: dataclasses.Field, tp: Any, default: Any,
              help_text: str) -> None:
    shown = "off" if default is None else (",".join(map(str, default)) if isinstance(default, tuple) else default)
    h = f"{help_text} (default {shown})"
    base, _ = _base_type(tp)
    if base is bool:
        parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=h)
    else:
        parser.add_argument(f"--{name}", type=_parse(tp, name), default=None, help=h,
                            choices=f.metadata.get("choices"), metavar=None if f.metadata.get("choices") else
                            name.split("-")[-1].upper())


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given options of ``args`` as a nested dict for :func:`resolve`."""
    out: dict[str, Any] = {}
    for dest, targets in getattr(args, "_option_paths", {}).items():
        v = getattr(args, dest, None)
        if v is None:
            continue
        v = None if v is _OFF else v
        for target in targets:
            node = out
            *parents, leaf = target.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
    return out
